//! One context's predictor: per bit, the probability that the next bit is
//! 1, from hashed and direct contexts, the two match models, the mixers and
//! the APMs; then it learns the bit.

use super::apm::Apm;
use super::bit_history::{sm_update, states};
use super::counters::{LIMIT_DIRECT, ctr_input, ctr_update};
use super::logistic::stretch_table;
use super::match_model::MatchModel;
use super::mixer::Mixer;
use super::params::CmParams;
use super::priming::static_for;
use super::static_match::{STATIC_MIN, StaticMatch};
use super::{hash32, hash64, knob};

/// Hashed contexts: orders 2, 3, 4, the current word, word bigram and the
/// line's first token (mail header field name). Order 6, a sparse context
/// and the byte above in the previous line lost more to table pressure than
/// they gained (the match model covers long contexts).
pub(super) const NH: usize = 6;
/// Mixer inputs: hashed contexts (2 each), order 1, order 0, match (2),
/// static match (2), bias.
pub(super) const NI: usize = 2 * NH + 7;
/// First input after the hashed contexts'.
const XO: usize = 2 * NH;
/// Weight sets: 256 by partial byte, then (hits, match bucket, bit position),
/// then the previous byte, then the line context (column bucket, what the line
/// starts with, header field name done).
pub(super) const MIXER_SETS: usize = 256 + (NH + 1) * 4 * 2 * 8 + 256 + 64;
/// Mixers.
pub(super) const NM: usize = 4;
/// Most a state map entry's count reaches (its slowest rate 1/(n+1.5)).
const SM_LIMIT: i32 = 1023;
/// Mixer learning rate (x * err * rate >> 16) and the final mixer's.
const MIXER_RATE: i32 = 32;
const FINAL_RATE: i32 = 4;
/// APM rate shift (7 is the fastest: bins are u16 and must not overflow).
const APM_SHIFT: i32 = 7;
/// Scale of the run (confidence) inputs, /16.
const RUN_SCALE: i32 = 16;

#[derive(Clone)]
pub(super) struct Model {
    /// Slots of 16 bytes: a check byte, then 15 bit histories for a
    /// nibble's tree.
    t: Vec<u8>,
    /// State maps of the hashed contexts.
    sm: Vec<u32>,
    slot_mask: usize,
    o1: Vec<u16>,
    o0: Vec<u16>,
    matches: MatchModel,
    statics: StaticMatch,
    mixer: Mixer,
    apm: Apm,
    // Byte state.
    c0: u32,
    c4: u32,
    c8: u32,
    bitpos: u32,
    nib: usize,
    hashes: [u32; NH],
    slots: [usize; NH],
    /// The history of each hashed context for the current bit.
    hist: [u8; NH],
    word: u32,
    word1: u32,
    /// Hash of the current line's first token (a header's field name); a
    /// continuation line (leading white space) keeps the previous one.
    field: u32,
    field_done: bool,
    /// What the line starts with: 0 letter, 1 space, 2 '<' or '>', 3 other.
    line_class: u8,
    col: u32,
    // Bit state: the inputs of the last prediction, and the prediction.
    x: [i32; NI],
    pr: i32,
    /// Rates and switches (see `knob`): state map limit, mixer rate, APM
    /// shift, run scale, unused, final rate, context mask, match index shift,
    /// unused, static match mixer selector, static match minimum.
    k: [i32; 11],
}

impl Model {
    pub(super) fn new(p: &CmParams) -> Self {
        let t_len = 1usize << p.table_log;
        let k = [
            knob(0, SM_LIMIT),
            knob(1, MIXER_RATE),
            knob(2, APM_SHIFT),
            knob(3, RUN_SCALE),
            0,
            knob(5, FINAL_RATE),
            knob(6, 0x3F),
            knob(7, 0),
            0,
            knob(9, 1),
            knob(10, STATIC_MIN as i32),
        ];
        let mut m = Self {
            t: vec![0; t_len],
            slot_mask: (t_len >> 4) - 1,
            sm: (0..NH * 256)
                .map(|i| states().init[i & 255] << 10)
                .collect(),
            o1: vec![0; 1 << 16],
            o0: vec![0; 256],
            matches: MatchModel::new(p.match_log, knob(7, 2)),
            statics: StaticMatch::new(static_for(p.priming), k[10] as usize),
            mixer: Mixer::new(MIXER_SETS),
            apm: Apm::new(),
            c0: 1,
            c4: 0,
            c8: 0,
            bitpos: 0,
            nib: 1,
            hashes: [0; NH],
            slots: [0; NH],
            hist: [0; NH],
            word: 0,
            word1: 0,
            field: 0,
            field_done: false,
            line_class: 0,
            col: 0,
            x: [0; NI],
            pr: 2048,
            k,
        };
        m.byte_contexts();
        m.find_slots();
        m.predict();
        m
    }

    pub(super) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.t.capacity()
            + 4 * self.sm.capacity()
            + 2 * (self.o1.capacity() + self.o0.capacity())
            + self.matches.memory_bytes()
            + self.statics.memory_bytes()
            + self.mixer.memory_bytes()
            + self.apm.memory_bytes()
    }

    /// Probability (12 bits) that the next bit is 1.
    #[inline]
    pub(super) fn p(&self) -> u32 {
        self.pr as u32
    }

    pub(super) fn learn(&mut self, data: &[u8]) {
        for &b in data {
            for i in (0..8).rev() {
                self.update(((b >> i) & 1) as u32);
            }
        }
    }

    /// Column bucket x the class of the line's first byte x field done.
    fn line_ctx(&self) -> usize {
        let col = match self.col {
            0 => 0,
            1 => 1,
            2..=3 => 2,
            4..=7 => 3,
            8..=15 => 4,
            16..=31 => 5,
            32..=63 => 6,
            _ => 7,
        };
        (col * 4 + self.line_class as usize) * 2 + self.field_done as usize
    }

    fn byte_contexts(&mut self) {
        let c4 = self.c4;
        self.hashes = [
            hash32(c4 & 0xFFFF, 2),
            hash32(c4 & 0xFF_FFFF, 3),
            hash32(c4, 4),
            hash32(self.word, (c4 & 0xFF) | 7 << 24),
            hash32(
                self.word ^ self.word1.rotate_left(16),
                (c4 & 0xFF) | 8 << 24,
            ),
            hash32(
                self.field,
                (c4 & 0xFFFF) | (self.field_done as u32) << 16 | 10 << 24,
            ),
        ];
    }

    /// Finds (or claims) the slot of each hashed context for this nibble.
    fn find_slots(&mut self) {
        let key = if self.bitpos == 0 { 0 } else { self.c0 };
        let st = states();
        for i in 0..NH {
            if self.k[6] >> i & 1 == 0 {
                continue;
            }
            let h = hash64(self.hashes[i], key);
            let chk = (h & 0xFF) as u8;
            let base = (h >> 32) as usize;
            let mut best = usize::MAX;
            let mut best_prio = u8::MAX;
            let mut found = None;
            for j in 0..4 {
                let s = ((base ^ j) & self.slot_mask) << 4;
                if self.t[s] == chk {
                    found = Some(s);
                    break;
                }
                let prio = st.total[self.t[s + 1] as usize];
                if prio < best_prio {
                    best_prio = prio;
                    best = s;
                }
            }
            self.slots[i] = match found {
                Some(s) => s,
                None => {
                    self.t[best] = chk;
                    self.t[best + 1..best + 16].fill(0);
                    best
                }
            };
        }
    }

    fn predict(&mut self) {
        let st = stretch_table();
        let ss = states();
        for i in 0..NH {
            if self.k[6] >> i & 1 == 0 {
                continue;
            }
            let h = self.t[self.slots[i] + self.nib];
            self.hist[i] = h;
            let p = self.sm[i << 8 | h as usize] >> 20;
            self.x[2 * i] = st[p as usize] as i32;
            self.x[2 * i + 1] = (ss.run[h as usize] as i32 * self.k[3]) >> 4;
        }
        let c1 = (self.c4 & 0xFF) as usize;
        self.x[XO] = ctr_input(self.o1[c1 << 8 | self.c0 as usize]);
        self.x[XO + 1] = ctr_input(self.o0[self.c0 as usize]);
        // Match model: the bit the longest earlier occurrence predicts.
        [self.x[XO + 2], self.x[XO + 3]] = self.matches.predict(self.c0, self.bitpos);
        if let Some(inputs) = self.statics.predict(self.c0, self.bitpos) {
            [self.x[XO + 4], self.x[XO + 5]] = inputs;
        }
        self.x[XO + 6] = 256;
        // Four mixers, weights chosen by the partial byte; by how many
        // hashed contexts were seen before with the match length; by the
        // previous byte; by the line context.
        let hits = self.hist.iter().filter(|&&h| h != 0).count();
        let mb = match self.matches.mlen {
            0 => 0,
            1..=15 => 1,
            16..=31 => 2,
            _ => 3,
        };
        let sb = match self.k[9] {
            0 => 0,
            1 => (self.statics.slen > 0) as usize,
            _ => (self.statics.slen >= 16) as usize,
        };
        let sets = [
            self.c0 as usize,
            256 + ((hits * 4 + mb) * 2 + sb) * 8 + self.bitpos as usize,
            MIXER_SETS - 320 + c1,
            MIXER_SETS - 64 + self.line_ctx(),
        ];
        let dot = self.mixer.mix(&self.x, sets, self.c0);
        // APMs: refine by order 0 and by a hash of order 1.
        self.pr = self.apm.refine(dot, self.mixer.pr(), self.c0, c1);
    }

    pub(super) fn update(&mut self, bit: u32) {
        let ss = states();
        for i in 0..NH {
            if self.k[6] >> i & 1 == 0 {
                continue;
            }
            let h = self.hist[i] as usize;
            sm_update(&mut self.sm[i << 8 | h], bit, self.k[0] as u32);
            self.t[self.slots[i] + self.nib] = ss.next[h][bit as usize];
        }
        let c1 = (self.c4 & 0xFF) as usize;
        ctr_update(&mut self.o1[c1 << 8 | self.c0 as usize], bit, LIMIT_DIRECT);
        ctr_update(&mut self.o0[self.c0 as usize], bit, LIMIT_DIRECT);
        self.matches.update(bit);
        self.statics.update(bit);
        self.mixer.update(&self.x, bit, self.k[1], self.k[5]);
        self.apm.update(bit, self.k[2]);
        // Next bit.
        self.c0 = self.c0 << 1 | bit;
        self.nib = self.nib << 1 | bit as usize;
        self.bitpos += 1;
        if self.bitpos == 8 {
            let byte = self.c0 & 0xFF;
            self.end_byte(byte as u8);
            self.c0 = 1;
            self.bitpos = 0;
            self.nib = 1;
            self.find_slots();
        } else if self.bitpos == 4 {
            self.nib = 1;
            self.find_slots();
        }
        self.predict();
    }

    fn end_byte(&mut self, byte: u8) {
        self.c8 = self.c8 << 8 | self.c4 >> 24;
        self.c4 = self.c4 << 8 | byte as u32;
        if byte.is_ascii_alphabetic() {
            self.word = (self.word ^ byte.to_ascii_lowercase() as u32).wrapping_mul(0x2F0F_3D4B);
        } else if self.word != 0 {
            self.word1 = self.word;
            self.word = 0;
        }
        self.line_byte(byte);
        self.byte_contexts();
        self.matches.byte(byte, self.c4, self.c8);
        self.statics.byte(self.c4, self.c8, &self.matches);
    }

    /// Lines: column, what the line starts with, its first token.
    fn line_byte(&mut self, byte: u8) {
        if byte == b'\n' {
            self.col = 0;
            return;
        }
        if self.col == 0 {
            self.line_class = match byte {
                b'a'..=b'z' | b'A'..=b'Z' => 0,
                b' ' | b'\t' => 1,
                b'<' | b'>' => 2,
                _ => 3,
            };
        }
        if self.col == 0 && !(byte == b' ' || byte == b'\t') {
            self.field = 0;
            self.field_done = false;
        } else if self.col == 0 {
            self.field_done = true;
        }
        self.col += 1;
        if !self.field_done {
            if byte == b':' || byte == b' ' || self.col > 24 {
                self.field_done = true;
            } else {
                self.field = (self.field ^ byte as u32).wrapping_mul(0x0100_0193);
            }
        }
    }
}
