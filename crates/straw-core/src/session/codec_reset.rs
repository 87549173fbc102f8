//! Idle codec reset: after a while without compressed records both sides
//! drop their compression contexts at the same record boundary, so an idle
//! tunnel holds no codec state.

use std::time::Instant;

use bytes::Bytes;

use super::Session;
use crate::codec::CodecId;
use crate::wire::Frame;

impl Session {
    /// The link is gone and the session waits for its peer (the server
    /// parks it): drops the compression contexts now rather than hold them
    /// while parked. The peer's decoder is told by a CodecReset that goes
    /// ahead of any new record, right after the re-sent ones (which need no
    /// encoder). Not while a bulk unit is half sent: a reset may not fall
    /// inside a unit. Returns whether the state was dropped.
    pub fn drop_encoder_state(&mut self) -> bool {
        if self.bulk_unit_unsent() {
            return false;
        }
        if self.encoder.memory_bytes() > 0 {
            self.encoder.reset();
            self.codec_reset_owed = true;
        }
        true
    }

    /// When the idle codec contexts are to be reset, if they hold anything
    /// and nothing waits to be sent (which would use them again).
    pub(super) fn codec_reset_due(&self) -> Option<Instant> {
        let idle = self.cfg.codec_idle_reset;
        // Cheapest first: this runs on every poll_timeout.
        if idle.is_zero()
            || self.bulk_unit_unsent()
            || self.has_sendable_data()
            || self.encoder.memory_bytes() == 0
        {
            return None;
        }
        Some(self.last_codec_use + idle)
    }

    /// A stored record with any pending control frames and a CodecReset;
    /// the encoder starts from its primed state with the next record.
    pub(super) fn send_codec_reset(&mut self, now: Instant) -> Bytes {
        let mut wire = vec![CodecId::Stored as u8];
        self.ack_due = None;
        self.encode_ack(&mut wire);
        self.drain_control(&mut wire);
        Frame::CodecReset.encode(&mut wire);
        self.encoder.reset();
        self.codec_reset_owed = false;
        self.stats.codec_resets += 1;
        self.stats.wire_bytes_sent_by_class[super::WIRE_CLASS_CONTROL] += wire.len() as u64;
        self.finish_record(now, wire)
    }
}
