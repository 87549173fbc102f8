//! How much the session may hold ahead of the link, and how big its records
//! and bulk units are: all in link time, from the measured rate.

use std::time::{Duration, Instant};

use super::{Priority, Session};

/// What a bulk slice's record adds before its compressed bytes: codec byte,
/// length varint and a piggybacked ACK, typically.
const SLICE_HEADER_ROOM: usize = 8;

impl Session {
    /// Unacked wire bytes allowed on the link: `inflight_secs` of link time,
    /// but never less than the ack loop needs to keep the link busy: the
    /// bytes in the pipe (rate × round trip) plus one record queued behind
    /// the one on the link. Any more only queues ahead of interactive records;
    /// any less starves the link, the delivery rate it measures falls, and
    /// the window with it (seen: 56% busy on Iridium at 2 s).
    pub fn inflight_limit(&self) -> u64 {
        let rate = self.estimate.rate();
        let by_rate = rate * self.cfg.inflight_secs;
        let record = self.record_target() as f64;
        // min_rtt: round trips less the acked record's own link time.
        // Not widened for a bulk slice's own link time: that kept a 2,400
        // bit/s link busier (tests/interactive.rs moved 13.8-14.7 KB of bulk
        // instead of 12.1-12.2, the bench's mail session ~1.5 s faster) but
        // queued it ahead of interactive replies (worst 5.7-7.4 s, was 5.2).
        let ack_loop = self
            .estimate
            .min_rtt()
            .map_or(0.0, |rtt| rate * rtt.as_secs_f64() + record);
        // Room for a bulk slice and the next one behind it (a record may be
        // sent while the window is open).
        let slice = self.bulk_slice_target() as u64 + 1;
        (by_rate.max(ack_loop) as u64)
            .min(self.cfg.max_inflight)
            .max(2 * record as u64)
            .max(slice)
    }

    /// The most the session holds ahead of the link: the in-flight window plus
    /// one record's (or bulk unit's) worth of raw bytes waiting to be framed.
    pub fn held_bound(&self) -> u64 {
        self.pipe_limit() + self.record_target_raw().max(self.bulk_unit_raw()) as u64
    }

    /// Unacked wire bytes allowed while the link clock
    /// (`session/link_clock.rs`) says the link is about to free: what the ack
    /// loop holds with the link busy, a round trip (and the peer's ACK delay) of
    /// link time plus the record about to leave, and a small record's margin
    /// (the next one may go while under it). Never less than
    /// [`Self::inflight_limit`]; `max_inflight` bounds it as well.
    pub fn pipe_limit(&self) -> u64 {
        let Some(rtt) = self.estimate.min_rtt() else {
            return self.inflight_limit();
        };
        let rate = self.estimate.rate();
        let record = self.record_target();
        let leaving = self.bulk_slice_target().max(record);
        let pipe = rate * (rtt + self.cfg.ack_delay).as_secs_f64() + (leaving + record) as f64;
        (pipe as u64)
            .min(self.cfg.max_inflight)
            .max(self.inflight_limit())
    }

    /// Link time still queued ahead of a record handed over now, as the
    /// link clock sees it.
    pub fn link_queued(&self, now: Instant) -> Duration {
        self.link_clock.queued(now)
    }

    /// Bytes currently held ahead of the link: waiting raw bytes, a compressed
    /// bulk unit not yet sent, and sent but unacked records.
    pub fn held(&self) -> u64 {
        self.unacked_bytes
            + self.pending_raw
            + self.transform_held
            + self.bulk_out.len() as u64
            + self.bulk_frames_out()
    }

    /// What an interactive stream's room counts against: [`Self::held`]
    /// without the bulk bytes not yet on the link (queued on bulk streams,
    /// out in a unit, or compressed and not yet cut). Together with those,
    /// at most two held bounds.
    pub(super) fn held_ahead_of_interactive(&self) -> u64 {
        let bulk_queued: u64 = self
            .streams
            .values()
            .filter(|s| s.priority == Priority::Bulk)
            .map(|s| s.pending.len() as u64)
            .sum();
        self.held()
            .saturating_sub(bulk_queued + self.bulk_out.len() as u64 + self.bulk_frames_out())
    }

    pub(super) fn note_held(&mut self) {
        let held = self.held();
        if held > self.stats.max_held {
            self.stats.max_held = held;
            self.stats.held_bound_at_max = self.held_bound();
        }
    }

    /// Target wire size of one record: about `record_secs` of link time,
    /// headers included.
    pub fn record_target(&self) -> usize {
        let t = (self.estimate.rate() * self.cfg.record_secs) as usize;
        t.saturating_sub(self.record_overhead())
            .clamp(self.cfg.min_record, self.cfg.max_record)
    }

    /// Wire bytes of one bulk slice: a record, but bounded so that a link cut
    /// (which wastes the record in flight) costs little on faster links. On
    /// a slow link, where a record is smaller than a segment, a slice fills
    /// one segment instead: its header and the record's framing are then
    /// ~10% of the link rather than ~20%. An interactive record waits behind
    /// at most one such slice (1.8 s at 2,400 bit/s) on top of the window.
    pub(super) fn bulk_slice_target(&self) -> usize {
        let by_time = (self.estimate.rate() * self.cfg.bulk_slice_secs) as usize;
        let segment = self
            .cfg
            .segment_payload
            .saturating_sub(self.cfg.frame_overhead + SLICE_HEADER_ROOM);
        self.record_target()
            .max(segment)
            .min(by_time.max(self.cfg.min_bulk_slice))
    }

    /// Link bytes each record costs beyond its own: packet and Noise headers.
    pub(super) fn record_overhead(&self) -> usize {
        self.cfg.packet_overhead + self.cfg.frame_overhead
    }

    /// What a record costs on the link: the estimate's rate is measured in
    /// these, so that small records can't talk it down.
    pub(super) fn link_bytes(&self, wire: &[u8]) -> u64 {
        (wire.len() + self.record_overhead()) as u64
    }

    /// The raw bytes that compress to about one record target.
    pub(super) fn record_target_raw(&self) -> usize {
        let raw = self.record_target() as f64 / self.estimate.compression_ratio();
        (raw as usize).min(self.cfg.max_record)
    }

    /// Raw bytes compressed as one bulk unit: about `bulk_unit_secs` of link time.
    pub(super) fn bulk_unit_raw(&self) -> usize {
        let raw =
            self.estimate.rate() * self.cfg.bulk_unit_secs / self.estimate.compression_ratio();
        (raw as usize)
            .clamp(self.record_target_raw(), self.cfg.max_record)
            .min(self.cfg.max_bulk_unit.max(1))
    }
}
