//! The match model: finds the longest recent occurrence of the last bytes in
//! the context's own history and predicts the byte that followed it.

use super::counters::{LIMIT_DIRECT, ctr_input, ctr_update};
use super::hash32;

/// Shortest match the model follows.
const MINLEN: u32 = 6;

#[derive(Clone)]
pub(super) struct MatchModel {
    /// The history, a ring of 2^match_log bytes, and where the next byte goes.
    pub(super) buf: Vec<u8>,
    pub(super) pos: u32,
    /// Hash of the last 6 bytes → position after them.
    mtab: Vec<u32>,
    /// Adaptive counters by (length bucket, predicted bit).
    mm: Vec<u16>,
    mptr: u32,
    pub(super) mlen: u32,
    mctx: usize,
}

/// Length bucket of a match: exact below 16, then by 8s up to 31.
pub(super) fn length_bucket(len: u32) -> u32 {
    if len < 16 {
        len
    } else {
        (16 + (len - 16) / 8).min(31)
    }
}

/// The two mixer inputs of a match predicting `bit` with a length bucket
/// `lq`: its counter's stretch(p), and a confidence that grows with `lq`.
pub(super) fn match_inputs(counter: u16, lq: u32, bit: u32) -> [i32; 2] {
    let conf = (lq as i32 * 64).min(2047);
    [ctr_input(counter), if bit != 0 { conf } else { -conf }]
}

impl MatchModel {
    /// `index_shift`: the index has one entry per 2^index_shift history bytes.
    pub(super) fn new(match_log: u8, index_shift: i32) -> Self {
        let buf_len = 1usize << match_log;
        Self {
            buf: vec![0; buf_len],
            pos: 0,
            mtab: vec![0; buf_len >> index_shift],
            mm: vec![0; 64],
            mptr: 0,
            mlen: 0,
            mctx: 0,
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.buf.capacity() + 2 * self.mm.capacity() + 4 * self.mtab.capacity()
    }

    /// The inputs for the next bit, given the partial byte `c0` of `bitpos`
    /// bits; a match whose byte disagrees with `c0` ends.
    pub(super) fn predict(&mut self, c0: u32, bitpos: u32) -> [i32; 2] {
        if self.mlen > 0 {
            let pb = self.buf[self.mptr as usize & (self.buf.len() - 1)] as u32 | 0x100;
            if pb >> (8 - bitpos) != c0 {
                self.mlen = 0;
            }
        }
        if self.mlen > 0 {
            let pb = self.buf[self.mptr as usize & (self.buf.len() - 1)] as u32;
            let bit = (pb >> (7 - bitpos)) & 1;
            let lq = length_bucket(self.mlen);
            self.mctx = (lq as usize) << 1 | bit as usize;
            match_inputs(self.mm[self.mctx], lq, bit)
        } else {
            self.mctx = 0;
            [0, 0]
        }
    }

    pub(super) fn update(&mut self, bit: u32) {
        if self.mlen > 0 {
            ctr_update(&mut self.mm[self.mctx], bit, LIMIT_DIRECT);
        }
    }

    /// Appends `byte` to the history (`c4`, `c8`: the last 8 bytes, it
    /// included); extends the match or looks one up.
    pub(super) fn byte(&mut self, byte: u8, c4: u32, c8: u32) {
        let mask = self.buf.len() - 1;
        self.buf[self.pos as usize & mask] = byte;
        self.pos = self.pos.wrapping_add(1);
        if self.mlen > 0 {
            self.mlen = (self.mlen + 1).min(65535);
            self.mptr = self.mptr.wrapping_add(1);
        }
        let h = (hash32(c4, (c8 & 0xFFFF) | 0xAA << 24) >> 8) as usize & (self.mtab.len() - 1);
        if self.mlen == 0 {
            let cand = self.mtab[h];
            let age = self.pos.wrapping_sub(cand);
            if cand != 0 && age > 0 && (age as usize) < self.buf.len() - 64 {
                let mut n = 0;
                while n < 32
                    && self.buf[cand.wrapping_sub(n + 1) as usize & mask]
                        == self.buf[self.pos.wrapping_sub(n + 1) as usize & mask]
                {
                    n += 1;
                }
                if n >= MINLEN {
                    self.mlen = n;
                    self.mptr = cand;
                }
            }
        }
        self.mtab[h] = self.pos;
    }

    /// The history byte `back` bytes before the next one (1: the last).
    pub(super) fn history(&self, back: usize) -> u8 {
        self.buf[self.pos.wrapping_sub(back as u32) as usize & (self.buf.len() - 1)]
    }
}
