//! The static match model: a static text of typical mail, held once per
//! process and shared read-only by every context, and per context a second
//! match model that predicts from it, so templates and attachments seen in
//! training are found however long ago.

use super::counters::{LIMIT_DIRECT, ctr_update};
use super::match_model::{MatchModel, length_bucket, match_inputs};
use super::{hash32, knob};

/// Minimum match the static model looks up (the hash covers this many bytes).
pub(super) const STATIC_MIN: usize = 8;

/// The shared text. The index maps a hash of the 8 bytes before each
/// position to the last position with that hash.
pub(crate) struct StaticText {
    text: Vec<u8>,
    idx: Vec<u32>,
}

impl StaticText {
    pub(super) fn new(text: Vec<u8>) -> Self {
        // Between a half and one entry per text byte, a power of two.
        let bits = ((usize::BITS - (text.len() | 1).leading_zeros()) as i32 - 1 + knob(8, 0))
            .clamp(10, 24) as u32;
        let mut idx = vec![0u32; 1usize << bits];
        let (mut c4, mut c8) = (0u32, 0u32);
        for (i, &b) in text.iter().enumerate() {
            c8 = c8 << 8 | c4 >> 24;
            c4 = c4 << 8 | b as u32;
            if i + 1 >= STATIC_MIN {
                idx[static_hash(c4, c8, bits)] = (i + 1) as u32;
            }
        }
        Self { text, idx }
    }

    fn bits(&self) -> u32 {
        self.idx.len().trailing_zeros()
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.text.capacity() + 4 * self.idx.capacity()
    }
}

#[inline]
fn static_hash(c4: u32, c8: u32, bits: u32) -> usize {
    (hash32(c4, c8 ^ 0x5A5A_0000) >> (32 - bits)) as usize
}

/// One context's follower of the shared text: position of the predicted
/// byte, length, and adaptive counters by (length bucket, bit).
#[derive(Clone)]
pub(super) struct StaticMatch {
    st: Option<&'static StaticText>,
    sptr: u32,
    pub(super) slen: u32,
    sctx: usize,
    sm_s: Vec<u16>,
    /// Shortest verified match it follows.
    min_len: usize,
}

impl StaticMatch {
    pub(super) fn new(st: Option<&'static StaticText>, min_len: usize) -> Self {
        Self {
            st,
            sptr: 0,
            slen: 0,
            sctx: 0,
            sm_s: vec![0; 64],
            min_len,
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        2 * self.sm_s.capacity()
    }

    /// Its two mixer inputs, like the match model's; `None` without a text
    /// (the inputs keep their values: always 0).
    pub(super) fn predict(&mut self, c0: u32, bitpos: u32) -> Option<[i32; 2]> {
        let st = self.st?;
        if self.slen > 0 {
            let pb = st.text[self.sptr as usize] as u32 | 0x100;
            if pb >> (8 - bitpos) != c0 {
                self.slen = 0;
            }
        }
        if self.slen > 0 {
            let bit = (st.text[self.sptr as usize] as u32 >> (7 - bitpos)) & 1;
            let lq = length_bucket(self.slen);
            self.sctx = (lq as usize) << 1 | bit as usize;
            Some(match_inputs(self.sm_s[self.sctx], lq, bit))
        } else {
            Some([0, 0])
        }
    }

    pub(super) fn update(&mut self, bit: u32) {
        if self.slen > 0 {
            ctr_update(&mut self.sm_s[self.sctx], bit, LIMIT_DIRECT);
        }
    }

    /// After a byte: extends the static match or looks one up (verified
    /// against the context's own history, which must hold at least
    /// `STATIC_MIN` bytes).
    pub(super) fn byte(&mut self, c4: u32, c8: u32, history: &MatchModel) {
        let Some(st) = self.st else {
            return;
        };
        if self.slen > 0 {
            self.slen = (self.slen + 1).min(65535);
            self.sptr += 1;
            if self.sptr as usize >= st.text.len() {
                self.slen = 0;
            }
        }
        if self.slen == 0 {
            let cand = st.idx[static_hash(c4, c8, st.bits())] as usize;
            if cand >= STATIC_MIN && cand < st.text.len() {
                let mut n = 0;
                while n < 32 && n < cand && st.text[cand - n - 1] == history.history(n + 1) {
                    n += 1;
                }
                if n >= self.min_len {
                    self.slen = n as u32;
                    self.sptr = cand as u32;
                }
            }
        }
    }
}
