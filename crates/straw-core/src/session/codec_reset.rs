//! Idle codec reset: after a while without compressed records both sides
//! drop their compression contexts at the same record boundary, so an idle
//! tunnel holds no codec state.

use std::time::Instant;

use bytes::Bytes;

use super::Session;
use crate::codec::CodecId;
use crate::wire::Frame;

impl Session {
    /// When the idle codec contexts are to be reset, if they hold anything
    /// and nothing waits to be sent (which would use them again).
    pub(super) fn codec_reset_due(&self) -> Option<Instant> {
        let idle = self.cfg.codec_idle_reset;
        // Cheapest first: this runs on every poll_timeout.
        if idle.is_zero()
            || !self.bulk_out.is_empty()
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
        self.stats.codec_resets += 1;
        self.stats.wire_bytes_sent_by_class[super::WIRE_CLASS_CONTROL] += wire.len() as u64;
        self.finish_record(now, wire)
    }
}
