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

impl Session {
    /// Picks the codec tier from the measured rate, with hysteresis.
    pub(super) fn update_fast(&mut self) {
        if self.cfg.fast_codec.is_none() {
            return;
        }
        let (rate, c) = (self.estimate.rate(), &self.cfg);
        let tier = match self.tier {
            Tier::Strong if rate > c.stored_enter_rate => Tier::Stored,
            Tier::Strong if rate > c.fast_enter_rate => Tier::Fast,
            Tier::Fast | Tier::Stored if rate < c.fast_exit_rate => Tier::Strong,
            Tier::Fast if rate > c.stored_enter_rate => Tier::Stored,
            Tier::Stored if rate < c.stored_exit_rate => Tier::Fast,
            t => t,
        };
        if (self.tier == Tier::Strong) != (tier == Tier::Strong) {
            if tier == Tier::Strong {
                self.stats.slow_switches += 1;
            } else {
                self.stats.fast_switches += 1;
            }
        }
        self.tier = tier;
    }

    /// Whether new records use a cheap codec (the link outruns the strong one).
    pub fn is_fast(&self) -> bool {
        self.tier != Tier::Strong
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// The codec of the next interactive record worth compressing.
    pub fn record_codec(&self) -> CodecId {
        match (self.tier, self.cfg.fast_codec) {
            (Tier::Strong, _) | (_, None) => self.cfg.codec,
            (Tier::Fast, Some(c)) => c,
            (Tier::Stored, Some(_)) => CodecId::Stored,
        }
    }
}
