//! The sizes of one CM context, and the model id both peers must share.

use super::apm::A2_LOG;
use super::model::{MIXER_SETS, Model, NH, NI, NM};
use super::primed::primed;
use super::priming::priming_known;
use crate::codec::CodecError;

/// Bumped whenever the model's arithmetic changes: part of the model id.
pub const CM_ALGORITHM_VERSION: u32 = 4;

/// Sizes of one CM context. Both peers must use the same for a direction and
/// lane (agreed through the model id in the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmParams {
    /// log2 of the hashed context table in bytes.
    pub table_log: u8,
    /// log2 of the match model's history in bytes (its index costs as much).
    pub match_log: u8,
    /// Built-in priming text (`PRIMING_*`), or none.
    pub priming: Option<u32>,
}

impl CmParams {
    pub fn validate(&self) -> Result<(), CodecError> {
        if !(12..=28).contains(&self.table_log) || !(10..=26).contains(&self.match_log) {
            return Err(CodecError::Params(format!(
                "cm table_log {} / match_log {} out of range (12..=28 / 10..=26)",
                self.table_log, self.match_log
            )));
        }
        if let Some(id) = self.priming
            && !priming_known(id)
        {
            return Err(CodecError::Params(format!("unknown cm priming text {id}")));
        }
        Ok(())
    }

    /// Primes the shared model now (it is otherwise primed on first use,
    /// which costs about a second of CPU).
    pub fn warm_up(&self) -> Result<(), CodecError> {
        primed(self).map(drop)
    }

    /// Bytes a context of these sizes allocates.
    pub fn memory_bytes(&self) -> usize {
        let buf = 1usize << self.match_log;
        std::mem::size_of::<Model>()
            + (1usize << self.table_log)
            + 4 * NH * 256
            + 2 * ((1 << 16) + 256 + 128 + 33 * (256 + (1 << A2_LOG)))
            + buf
            + 4 * (buf / 4 + NI * MIXER_SETS + NM * 256)
    }

    /// Feeds the fingerprint of these parameters into an FNV-1a hash.
    fn fingerprint(&self, h: &mut u32) {
        let mut eat = |b: u32| {
            for byte in b.to_le_bytes() {
                *h ^= byte as u32;
                *h = h.wrapping_mul(0x0100_0193);
            }
        };
        eat(self.table_log as u32);
        eat(self.match_log as u32);
        eat(self.priming.map_or(0, |p| p + 1));
    }
}

/// A fingerprint of everything both peers must share to use CM contexts:
/// the algorithm version, and the parameters of each direction and lane.
pub fn model_id(contexts: &[Option<CmParams>]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for b in CM_ALGORITHM_VERSION.to_le_bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    for c in contexts {
        match c {
            Some(p) => p.fingerprint(&mut h),
            None => h = (h ^ 0xFF).wrapping_mul(0x0100_0193),
        }
    }
    h
}
