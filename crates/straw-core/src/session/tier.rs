//! The codec tier: which codec new records use, chosen by the measured
//! delivery rate so that the codec is never slower than the link.

use super::Session;
use crate::codec::CodecId;

/// Codec tier of new records, chosen by the measured delivery rate so that
/// the codec is never slower than the link (docs/codec.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `SessionConfig::codec` and the bulk lane: slow links.
    Strong,
    /// `SessionConfig::fast_codec` (LZ4).
    Fast,
    /// Faster than LZ4 codes: records go stored.
    Stored,
}

/// Wire bytes a PING or its PONG takes on the link at the least: the record
/// (codec byte, frame, ACK), the link layer's framing and a TCP/IP header.
const PING_WIRE_BYTES: f64 = 64.0;

impl Session {
    /// The slowest link that could have carried a PING and its PONG (or a
    /// record and its ACK) in the shortest round trip seen. Waiting on a busy
    /// CPU only makes round trips longer, so unlike the delivery rate (which
    /// a starved compressor holds down, keeping the strong codec and
    /// starving the CPU further) this can only err low.
    pub(super) fn rtt_rate_floor(&self) -> f64 {
        match self.estimate.recent_min_rtt() {
            Some(rtt) if !rtt.is_zero() => 2.0 * PING_WIRE_BYTES / rtt.as_secs_f64(),
            _ => 0.0,
        }
    }

    /// The driver's word that the host's CPU is saturated by codec work and
    /// that this session takes a real part of it (or no longer: `false`).
    /// While on, new records use at least the fast codec: the rate this
    /// session measures can't say it, because a starved compressor holds it
    /// down (the strong codec then keeps itself, and everyone, starved).
    /// Off, the measured rate decides again, with its hysteresis.
    pub fn set_cpu_degraded(&mut self, on: bool) {
        if on != self.cpu_degraded {
            let was_fast = self.is_fast();
            self.cpu_degraded = on;
            if on {
                self.stats.cpu_degraded += 1;
            }
            self.pick_rate_tier();
            self.count_switch(was_fast);
        }
    }

    pub fn cpu_degraded(&self) -> bool {
        self.cpu_degraded
    }

    /// Picks the codec tier from the measured rate, with hysteresis. The
    /// rate is at least [`Session::rtt_rate_floor`]: a round trip of a
    /// millisecond proves a link far faster than the strong codec. A
    /// [degraded](Self::set_cpu_degraded) session stays off the strong tier.
    pub(super) fn update_fast(&mut self) {
        let was_fast = self.is_fast();
        self.pick_rate_tier();
        self.count_switch(was_fast);
    }

    /// The hysteresis runs on the rate's own choice, not on a tier the CPU
    /// forced: a 64 kbit/s link (between exit and entry) degraded for a
    /// moment must come back to the strong codec, not stay fast.
    fn pick_rate_tier(&mut self) {
        if self.cfg.fast_codec.is_none() {
            return;
        }
        let rate = self.estimate.rate().max(self.rtt_rate_floor());
        let c = &self.cfg;
        self.rate_tier = match self.rate_tier {
            Tier::Strong if rate > c.stored_enter_rate => Tier::Stored,
            Tier::Strong if rate > c.fast_enter_rate => Tier::Fast,
            Tier::Fast | Tier::Stored if rate < c.fast_exit_rate => Tier::Strong,
            Tier::Fast if rate > c.stored_enter_rate => Tier::Stored,
            Tier::Stored if rate < c.stored_exit_rate => Tier::Fast,
            t => t,
        };
    }

    fn count_switch(&mut self, was_fast: bool) {
        match (was_fast, self.is_fast()) {
            (true, false) => self.stats.slow_switches += 1,
            (false, true) => self.stats.fast_switches += 1,
            _ => {}
        }
    }

    /// Whether new records use a cheap codec (the link outruns the strong one).
    pub fn is_fast(&self) -> bool {
        self.tier() != Tier::Strong
    }

    /// The rate's tier, or the fast one while the CPU is degraded.
    pub fn tier(&self) -> Tier {
        match self.rate_tier {
            Tier::Strong if self.cpu_degraded && self.cfg.fast_codec.is_some() => Tier::Fast,
            t => t,
        }
    }

    /// The codec of the next interactive record worth compressing.
    pub fn record_codec(&self) -> CodecId {
        match (self.tier(), self.cfg.fast_codec) {
            (Tier::Strong, _) | (_, None) => self.cfg.codec,
            (Tier::Fast, Some(c)) => c,
            (Tier::Stored, Some(_)) => CodecId::Stored,
        }
    }
}
