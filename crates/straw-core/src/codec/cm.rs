//! A context-mixing text codec (after Matt Mahoney's public-domain lpaq1
//! design, written from scratch): per bit, predictions from hashed order-2,
//! 3, 4 and word contexts, direct order-0/1 tables, a match model over the
//! context's own history and a static match model over a shared text of
//! training mail ([`StaticText`], held once per process) are mixed by small
//! neural networks, refined by two APM stages and coded by a 32-bit
//! carry-less binary arithmetic coder.
//!
//! The model carries across records; only the coder is flushed per segment
//! (one byte). All arithmetic is integer, so both peers compute bit-identical
//! predictions on any platform.
//!
//! Segment layout: `varint (n << 1 | raw)`, then for a coded segment (bulk
//! units only) `varint clen` and `clen` coded bytes; a raw segment is `n`
//! plain bytes (incompressible data; the model still learns them). A
//! per-record segment takes the rest of the record as its coded bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::CodecError;

/// Bumped whenever the model's arithmetic changes: part of the model id.
pub const CM_ALGORITHM_VERSION: u32 = 4;

/// Id of the built-in priming text `dicts/mail-cm-v1.zst`.
pub const PRIMING_MAIL_V1: u32 = 1;

/// The same priming text plus the static match text
/// `dicts/mail-static-v1.zst` (the static match model).
pub const PRIMING_MAIL_V2: u32 = 2;

/// `PRIMING_MAIL_V2`, then the protocol dialogue `dicts/dialogue-v1.txt`
/// (IMAP/POP3/SMTP replies and commands, HTTP headers of common servers and
/// clients): for the interactive lanes, which carry the dialogue.
pub const PRIMING_DIALOGUE_V1: u32 = 3;

static DIALOGUE_V1: &[u8] = include_bytes!("../../../../dicts/dialogue-v1.txt");

static PRIMING_MAIL_V1_ZST: &[u8] = include_bytes!("../../../../dicts/mail-cm-v1.zst");
static STATIC_MAIL_V1_ZST: &[u8] = include_bytes!("../../../../dicts/mail-static-v1.zst");

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
    pub(super) fn fingerprint(&self, h: &mut u32) {
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

/// A registered priming text and its static match text, if any.
type Registered = (&'static [u8], Option<&'static StaticText>);

fn registered() -> &'static Mutex<HashMap<u32, Registered>> {
    static R: OnceLock<Mutex<HashMap<u32, Registered>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn priming_known(id: u32) -> bool {
    id == PRIMING_MAIL_V1
        || id == PRIMING_MAIL_V2
        || id == PRIMING_DIALOGUE_V1
        || registered()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
}

/// A priming text by id: built in, or registered at run time (the
/// dialogue of `PRIMING_DIALOGUE_V1` is learned after it, see `primed`).
pub fn priming_text(id: u32) -> Option<Vec<u8>> {
    if matches!(id, PRIMING_MAIL_V1 | PRIMING_MAIL_V2 | PRIMING_DIALOGUE_V1) {
        return ::zstd::decode_all(PRIMING_MAIL_V1_ZST).ok();
    }
    let map = registered().lock().unwrap_or_else(|e| e.into_inner());
    map.get(&id).map(|t| t.0.to_vec())
}

/// Makes `text` a priming text for this process (benches, experiments) and
/// returns its id. Its bytes are kept for the life of the process.
pub fn register_priming_text(text: Vec<u8>) -> u32 {
    register(text, None)
}

/// Like [`register_priming_text`], with a static match text (indexed now,
/// kept for the life of the process).
pub fn register_priming_with_static(text: Vec<u8>, static_text: Vec<u8>) -> u32 {
    let st: &'static StaticText = Box::leak(Box::new(StaticText::new(static_text)));
    register(text, Some(st))
}

fn register(text: Vec<u8>, st: Option<&'static StaticText>) -> u32 {
    let mut map = registered().lock().unwrap_or_else(|e| e.into_inner());
    let id = 0x8000_0000 + map.len() as u32;
    map.insert(id, (Box::leak(text.into_boxed_slice()), st));
    id
}

static BUILTIN_STATIC: OnceLock<Option<StaticText>> = OnceLock::new();

/// The built-in static match text, decompressed and indexed once per process.
fn builtin_static() -> Option<&'static StaticText> {
    BUILTIN_STATIC
        .get_or_init(|| {
            ::zstd::decode_all(STATIC_MAIL_V1_ZST)
                .ok()
                .map(StaticText::new)
        })
        .as_ref()
}

/// The static match text that goes with a priming id, if any.
fn static_for(priming: Option<u32>) -> Option<&'static StaticText> {
    match priming? {
        PRIMING_MAIL_V2 | PRIMING_DIALOGUE_V1 => builtin_static(),
        PRIMING_MAIL_V1 => None,
        id => registered()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .and_then(|t| t.1),
    }
}

/// Bytes of the static match texts built so far in this process (text plus
/// index), shared by all tunnels.
pub fn shared_static_bytes() -> usize {
    let mut n = BUILTIN_STATIC
        .get()
        .and_then(Option::as_ref)
        .map_or(0, |s| s.memory_bytes());
    let map = registered().lock().unwrap_or_else(|e| e.into_inner());
    n += map
        .values()
        .filter_map(|t| t.1)
        .map(|s| s.memory_bytes())
        .sum::<usize>();
    n
}

/// Minimum match the static model looks up (the hash covers this many bytes).
const STATIC_MIN: usize = 8;

/// A static text of typical mail, held once per process and shared
/// read-only by every context: a second match model predicts from it, so
/// templates and attachments seen in training are found however long ago.
/// The index maps a hash of the 8 bytes before each position to the last
/// position with that hash.
pub(super) struct StaticText {
    text: Vec<u8>,
    idx: Vec<u32>,
}

impl StaticText {
    fn new(text: Vec<u8>) -> Self {
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

// ---- Fixed-point helpers -------------------------------------------------------

/// 4096 / (1 + e^-(k/2)) for k = -16..=16: the logistic function at the
/// interpolation points of `squash`.
const SQUASH_POINTS: [i32; 33] = [
    1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048, 2550, 2994, 3349,
    3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095,
];

/// Logistic function: stretch domain (±2047, 256 per nat) to a 12-bit probability.
fn squash(d: i32) -> i32 {
    if d > 2047 {
        return 4095;
    }
    if d < -2047 {
        return 1;
    }
    let w = d & 127;
    let i = ((d >> 7) + 16) as usize;
    (SQUASH_POINTS[i] * (128 - w) + SQUASH_POINTS[i + 1] * w + 64) >> 7
}

fn stretch_table() -> &'static [i16; 4096] {
    static T: OnceLock<Box<[i16; 4096]>> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Box::new([0i16; 4096]);
        let mut pi = 0usize;
        for x in -2047..=2047 {
            let v = squash(x) as usize;
            for slot in t.iter_mut().take(v + 1).skip(pi) {
                *slot = x as i16;
            }
            pi = pi.max(v + 1);
        }
        for slot in t.iter_mut().skip(pi) {
            *slot = 2047;
        }
        t
    })
}

/// Adaptive probability counters (direct order 0/1, match) are u16s: 12-bit
/// p(1) above a 4-bit count. The count sets the rate 1/(n+1.5), so young
/// contexts learn fast: 65536 * 2 / (2n + 3).
const RATE: [i32; 16] = {
    let mut r = [0i32; 16];
    let mut n = 0;
    while n < 16 {
        r[n] = 131072 / (2 * n as i32 + 3);
        n += 1;
    }
    r
};

#[inline]
fn ctr_update(v: &mut u16, bit: u32, limit: u16) {
    let n = *v & 15;
    let p = if n == 0 { 2048 } else { (*v >> 4) as i32 };
    let target = if bit != 0 { 4095 } else { 0 };
    let np = (p + (((target - p) * RATE[n as usize]) >> 16)).clamp(0, 4095);
    *v = ((np as u16) << 4) | (n + 1).min(limit);
}

// ---- Bit histories -------------------------------------------------------------

/// A nonstationary bit history in one byte: an index into a table of
/// (n0, n1) count pairs. On each bit its count grows and the opposite count
/// is partly discarded (old evidence counts less once the bits disagree).
/// Adaptive `StateMap`s turn a state into a probability per context kind.
struct States {
    next: [[u8; 2]; 256],
    /// Total count of each state: the slot replacement priority.
    total: [u8; 256],
    /// Initial p(1) of each state for the state maps, 22 bits.
    init: [u32; 256],
    /// Confidence input: +k for a run of ones, -k for zeros, else 0.
    run: [i16; 256],
}

/// Most a count may reach while the opposite count is `min` (index).
const STATE_CAP: [u8; 8] = [50, 37, 25, 15, 10, 7, 6, 5];

fn discount(n: u8) -> u8 {
    if n > 2 { n / 2 + 1 } else { n }
}

/// Brings a pair within the caps, giving up counts of the larger side.
fn fit(mut a: u8, mut b: u8) -> (u8, u8) {
    loop {
        let m = a.min(b) as usize;
        if m < STATE_CAP.len() && a.max(b) <= STATE_CAP[m] {
            return (a, b);
        }
        if a > b {
            a -= 1;
        } else {
            b -= 1;
        }
    }
}

fn states() -> &'static States {
    static S: OnceLock<Box<States>> = OnceLock::new();
    S.get_or_init(|| {
        let mut pairs: Vec<(u8, u8)> = vec![(0, 0)];
        let mut index: HashMap<(u8, u8), u8> = HashMap::new();
        index.insert((0, 0), 0);
        let mut next = [[0u8; 2]; 256];
        let mut i = 0;
        while i < pairs.len() {
            let (n0, n1) = pairs[i];
            for (y, nx) in next[i].iter_mut().enumerate() {
                let (a, b) = if y == 1 { (n1, n0) } else { (n0, n1) };
                let (a, b) = fit(a + 1, discount(b));
                let pair = if y == 1 { (b, a) } else { (a, b) };
                let id = match index.get(&pair) {
                    Some(&id) => id,
                    None => {
                        let id = pairs.len();
                        assert!(id < 256, "too many bit-history states");
                        pairs.push(pair);
                        index.insert(pair, id as u8);
                        id as u8
                    }
                };
                *nx = id;
            }
            i += 1;
        }
        let mut total = [0u8; 256];
        let mut init = [1u32 << 21; 256];
        let mut run = [0i16; 256];
        for (i, &(n0, n1)) in pairs.iter().enumerate() {
            total[i] = n0.saturating_add(n1);
            init[i] = ((2 * n1 as u64 + 1) << 22) as u32 / (2 * (n0 as u32 + n1 as u32) + 2);
            let k = (n0.max(n1) as i16 * 64).min(1024);
            run[i] = match (n0, n1) {
                (0, 0) => 0,
                (0, _) => k,
                (_, 0) => -k,
                _ => 0,
            };
        }
        Box::new(States {
            next,
            total,
            init,
            run,
        })
    })
}

/// 65536 * 2 / (2n + 3): the state maps' adaptation rate 1/(n + 1.5).
const SM_RATE: [i32; 1024] = {
    let mut r = [0i32; 1024];
    let mut n = 0;
    while n < 1024 {
        r[n] = 131072 / (2 * n as i32 + 3);
        n += 1;
    }
    r
};

/// A state map entry: p(1) in the top 22 bits, a count in the low 10.
#[inline]
fn sm_update(e: &mut u32, bit: u32, limit: u32) {
    let n = *e & 1023;
    let p = (*e >> 10) as i64;
    let target = if bit != 0 { (1i64 << 22) - 1 } else { 0 };
    let np = (p + (((target - p) * SM_RATE[n as usize] as i64) >> 16)).clamp(0, (1 << 22) - 1);
    *e = (np as u32) << 10 | (n + 1).min(limit);
}

/// Tuning hook: with the `tune` feature, `CM_K<i>` overrides a constant
/// (`benches/cm_tune.rs`); in any other build, the constant.
#[cfg(feature = "tune")]
fn knob(i: usize, d: i32) -> i32 {
    std::env::var(format!("CM_K{i}"))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

#[cfg(not(feature = "tune"))]
fn knob(_: usize, d: i32) -> i32 {
    d
}

// ---- The model ---------------------------------------------------------------

/// Hashed contexts: orders 2, 3, 4, the current word, word bigram and the
/// line's first token (mail header field name). Order 6, a sparse context
/// and the byte above in the previous line lost more to table pressure than
/// they gained (the match model covers long contexts).
const NH: usize = 6;
/// Mixer inputs: hashed contexts (2 each), order 1, order 0, match (2),
/// static match (2), bias.
const NI: usize = 2 * NH + 7;
/// First input after the hashed contexts'.
const XO: usize = 2 * NH;
/// Weight sets: 256 by partial byte, then (hits, match bucket, bit position),
/// then the previous byte, then the line context (column bucket, what the line
/// starts with, header field name done).
const MIXER_SETS: usize = 256 + (NH + 1) * 4 * 2 * 8 + 256 + 64;
/// Mixers.
const NM: usize = 4;
const MINLEN: u32 = 6;
const A2_LOG: u32 = 10;
/// Most a state map entry's count reaches (its slowest rate 1/(n+1.5)).
const SM_LIMIT: i32 = 1023;
/// Mixer learning rate (x * err * rate >> 16) and the final mixer's.
const MIXER_RATE: i32 = 32;
const FINAL_RATE: i32 = 4;
/// APM rate shift (7 is the fastest: bins are u16 and must not overflow).
const APM_SHIFT: i32 = 7;
/// Scale of the run (confidence) inputs, /16.
const RUN_SCALE: i32 = 16;
const LIMIT_DIRECT: u16 = 15;
/// Mixer weights stay within ±64.0 whatever the input.
const W_MAX: i32 = 1 << 22;

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
    buf: Vec<u8>,
    mtab: Vec<u32>,
    mm: Vec<u16>,
    w: Vec<i32>,
    a1: Vec<u16>,
    a2: Vec<u16>,
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
    pos: u32,
    mptr: u32,
    mlen: u32,
    /// Static match model: the shared text, position of the predicted byte,
    /// length, and adaptive counters by (length bucket, bit).
    st: Option<&'static StaticText>,
    sptr: u32,
    slen: u32,
    sctx: usize,
    sm_s: Vec<u16>,
    // Bit state: what the last prediction was made of.
    x: [i32; NI],
    mctx: usize,
    pr_mix: i32,
    /// Weight set of each mixer and its output.
    wb: [usize; NM],
    /// Final mixer: weights, the set in use, its inputs.
    fw: Vec<i32>,
    fb: usize,
    d: [i32; NM],
    pr_m: [i32; NM],
    a1i: usize,
    a2i: usize,
    a_w: i32,
    pr: i32,
    /// Rates and switches (see `knob`): state map limit, mixer rate, APM
    /// shift, run scale, unused, final rate, context mask, match index shift,
    /// unused, static match mixer selector, static match minimum.
    k: [i32; 11],
}

fn hash64(a: u32, b: u32) -> u64 {
    let z = ((a as u64) << 32 | b as u64).wrapping_add(0x632B_E59B_D9B4_E019);
    let z = (z ^ (z >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 32)
}

fn hash32(a: u32, b: u32) -> u32 {
    (hash64(a, b) >> 32) as u32
}

fn apm_init(contexts: usize) -> Vec<u16> {
    let mut t = vec![0u16; contexts * 33];
    for (i, v) in t.iter_mut().enumerate() {
        *v = (squash(((i % 33) as i32 - 16) * 128) * 16) as u16;
    }
    t
}

impl Model {
    pub(super) fn new(p: &CmParams) -> Self {
        let t_len = 1usize << p.table_log;
        let buf_len = 1usize << p.match_log;
        let mut m = Self {
            t: vec![0; t_len],
            slot_mask: (t_len >> 4) - 1,
            sm: (0..NH * 256)
                .map(|i| states().init[i & 255] << 10)
                .collect(),
            o1: vec![0; 1 << 16],
            o0: vec![0; 256],
            buf: vec![0; buf_len],
            mtab: vec![0; buf_len >> knob(7, 2)],
            mm: vec![0; 64],
            w: vec![20_000; NI * MIXER_SETS],
            wb: [0; NM],
            fw: vec![65536 / NM as i32; 256 * NM],
            fb: 0,
            d: [0; NM],
            pr_m: [2048; NM],
            a1: apm_init(256),
            a2: apm_init(1 << A2_LOG),
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
            pos: 0,
            mptr: 0,
            mlen: 0,
            st: static_for(p.priming),
            sptr: 0,
            slen: 0,
            sctx: 0,
            sm_s: vec![0; 64],
            x: [0; NI],
            mctx: 0,
            pr_mix: 2048,
            a1i: 0,
            a2i: 0,
            a_w: 0,
            pr: 2048,
            k: [
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
            ],
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
            + 2 * (self.o1.capacity()
                + self.o0.capacity()
                + self.mm.capacity()
                + self.sm_s.capacity()
                + self.a1.capacity()
                + self.a2.capacity())
            + self.buf.capacity()
            + 4 * (self.mtab.capacity() + self.w.capacity() + self.fw.capacity())
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
        let input = |v: u16| {
            if v & 15 == 0 {
                0
            } else {
                st[(v >> 4) as usize] as i32
            }
        };
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
        self.x[XO] = input(self.o1[c1 << 8 | self.c0 as usize]);
        self.x[XO + 1] = input(self.o0[self.c0 as usize]);
        // Match model: the bit the longest earlier occurrence predicts.
        if self.mlen > 0 {
            let pb = self.buf[self.mptr as usize & (self.buf.len() - 1)] as u32 | 0x100;
            if pb >> (8 - self.bitpos) != self.c0 {
                self.mlen = 0;
            }
        }
        if self.mlen > 0 {
            let pb = self.buf[self.mptr as usize & (self.buf.len() - 1)] as u32;
            let bit = (pb >> (7 - self.bitpos)) & 1;
            let lq = if self.mlen < 16 {
                self.mlen
            } else {
                (16 + (self.mlen - 16) / 8).min(31)
            };
            self.mctx = (lq as usize) << 1 | bit as usize;
            self.x[XO + 2] = input(self.mm[self.mctx]);
            let conf = (lq as i32 * 64).min(2047);
            self.x[XO + 3] = if bit != 0 { conf } else { -conf };
        } else {
            self.mctx = 0;
            self.x[XO + 2] = 0;
            self.x[XO + 3] = 0;
        }
        self.predict_static();
        self.x[XO + 6] = 256;
        // Two mixers, weights chosen by the partial byte and by how many
        // hashed contexts were seen before with the match length; their
        // outputs are averaged in the stretch domain.
        let hits = self.hist.iter().filter(|&&h| h != 0).count();
        let mb = match self.mlen {
            0 => 0,
            1..=15 => 1,
            16..=31 => 2,
            _ => 3,
        };
        let sb = match self.k[9] {
            0 => 0,
            1 => (self.slen > 0) as usize,
            _ => (self.slen >= 16) as usize,
        };
        self.wb = [
            self.c0 as usize * NI,
            (256 + ((hits * 4 + mb) * 2 + sb) * 8 + self.bitpos as usize) * NI,
            (MIXER_SETS - 320 + c1) * NI,
            (MIXER_SETS - 64 + self.line_ctx()) * NI,
        ];
        let mut d = [0i32; NM];
        for (j, &wb) in self.wb.iter().enumerate() {
            let w = &self.w[wb..wb + NI];
            let dot: i64 = w
                .iter()
                .zip(&self.x)
                .map(|(&w, &x)| w as i64 * x as i64)
                .sum();
            d[j] = ((dot >> 16) as i32).clamp(-2047, 2047);
            self.pr_m[j] = squash(d[j]);
        }
        // Final mixer over the four, by partial byte.
        self.fb = self.c0 as usize * NM;
        let mut dot: i64 = 0;
        self.d = d;
        for (&d, &w) in d.iter().zip(&self.fw[self.fb..self.fb + NM]) {
            dot += d as i64 * w as i64;
        }
        let dot = ((dot >> 16) as i32).clamp(-2047, 2047);
        self.pr_mix = squash(dot);
        // APMs: refine by order 0 and by a hash of order 1.
        let s = dot + 2048;
        self.a_w = s & 127;
        let lo = (s >> 7) as usize;
        self.a1i = self.c0 as usize * 33 + lo;
        let a2c = (hash32(c1 as u32, self.c0) >> (32 - A2_LOG)) as usize;
        self.a2i = a2c * 33 + lo;
        let ap =
            |t: &[u16], i: usize, w: i32| (t[i] as i32 * (128 - w) + t[i + 1] as i32 * w) >> 11;
        let p1 = ap(&self.a1, self.a1i, self.a_w);
        let p2 = ap(&self.a2, self.a2i, self.a_w);
        self.pr = ((self.pr_mix + p1 + 2 * p2 + 2) >> 2).clamp(1, 4095);
    }

    /// The static match model's two inputs: like the match model's.
    fn predict_static(&mut self) {
        let Some(st) = self.st else {
            return;
        };
        if self.slen > 0 {
            let pb = st.text[self.sptr as usize] as u32 | 0x100;
            if pb >> (8 - self.bitpos) != self.c0 {
                self.slen = 0;
            }
        }
        if self.slen > 0 {
            let bit = (st.text[self.sptr as usize] as u32 >> (7 - self.bitpos)) & 1;
            let lq = if self.slen < 16 {
                self.slen
            } else {
                (16 + (self.slen - 16) / 8).min(31)
            };
            self.sctx = (lq as usize) << 1 | bit as usize;
            let v = self.sm_s[self.sctx];
            self.x[XO + 4] = if v & 15 == 0 {
                0
            } else {
                stretch_table()[(v >> 4) as usize] as i32
            };
            let conf = (lq as i32 * 64).min(2047);
            self.x[XO + 5] = if bit != 0 { conf } else { -conf };
        } else {
            self.x[XO + 4] = 0;
            self.x[XO + 5] = 0;
        }
    }

    /// After a byte: extends the static match or looks one up (verified
    /// against our own history, which must hold at least `STATIC_MIN` bytes).
    fn static_byte(&mut self) {
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
            let cand = st.idx[static_hash(self.c4, self.c8, st.bits())] as usize;
            if cand >= STATIC_MIN && cand < st.text.len() {
                let mask = self.buf.len() - 1;
                let mut n = 0;
                while n < 32
                    && n < cand
                    && st.text[cand - n - 1]
                        == self.buf[self.pos.wrapping_sub(n as u32 + 1) as usize & mask]
                {
                    n += 1;
                }
                if n >= self.k[10] as usize {
                    self.slen = n as u32;
                    self.sptr = cand as u32;
                }
            }
        }
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
        if self.mlen > 0 {
            ctr_update(&mut self.mm[self.mctx], bit, LIMIT_DIRECT);
        }
        if self.slen > 0 {
            ctr_update(&mut self.sm_s[self.sctx], bit, LIMIT_DIRECT);
        }
        // Mixer: gradient step on coding cost.
        let err = ((bit as i32) << 12) - self.pr_mix;
        for j in 0..NM {
            let v = &mut self.fw[self.fb + j];
            *v = (*v + ((self.d[j] * err * self.k[5]) >> 16)).clamp(-W_MAX, W_MAX);
        }
        for j in 0..NM {
            let e = (((bit as i32) << 12) - self.pr_m[j]) * self.k[1];
            let wb = self.wb[j];
            let w = &mut self.w[wb..wb + NI];
            for (w, &x) in w.iter_mut().zip(&self.x) {
                *w = (*w + ((x * e) >> 16)).clamp(-W_MAX, W_MAX);
            }
        }
        // APMs: both neighbouring bins move towards the bit.
        let g = ((bit as i32) << 16) + ((bit as i32) << 7) - bit as i32 - bit as i32;
        for (t, i) in [(&mut self.a1, self.a1i), (&mut self.a2, self.a2i)] {
            for v in &mut t[i..i + 2] {
                *v = (*v as i32 + ((g - *v as i32) >> self.k[2])) as u16;
            }
        }
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
        let mask = self.buf.len() - 1;
        self.buf[self.pos as usize & mask] = byte;
        self.pos = self.pos.wrapping_add(1);
        // Lines: column, previous line, first token.
        if byte == b'\n' {
            self.col = 0;
        } else {
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
        self.byte_contexts();
        // Match model.
        if self.mlen > 0 {
            self.mlen = (self.mlen + 1).min(65535);
            self.mptr = self.mptr.wrapping_add(1);
        }
        let h = (hash32(self.c4, (self.c8 & 0xFFFF) | 0xAA << 24) >> 8) as usize
            & (self.mtab.len() - 1);
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
        self.static_byte();
    }
}

// ---- Primed models -------------------------------------------------------------

type Cache = Mutex<HashMap<CmParams, Arc<OnceLock<Arc<Model>>>>>;

/// The part of a priming text a context of `table_log` learns: small tables
/// hold little of 1 MiB, so they learn the tails of its two halves (ham and
/// spam in the built-in text), 4 bytes per table byte, at a quarter of the
/// CPU or less.
fn priming_part(text: &[u8], table_log: u8) -> Vec<u8> {
    let n = (1usize << (table_log as u32 + 2).min(40)) / 2;
    if 2 * n >= text.len() {
        return text.to_vec();
    }
    let mid = text.len() / 2;
    [&text[mid - n..mid], &text[text.len() - n..]].concat()
}

/// The model for `p`, primed once per process and shared read-only.
fn primed(p: &CmParams) -> Result<Arc<Model>, CodecError> {
    p.validate()?;
    if matches!(p.priming, Some(PRIMING_MAIL_V2 | PRIMING_DIALOGUE_V1))
        && builtin_static().is_none()
    {
        // Never silently model without it: the peer's model would differ.
        return Err(CodecError::Internal(
            "built-in cm static text does not decode".into(),
        ));
    }
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cell = {
        let mut map = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(*p).or_default().clone()
    };
    Ok(cell
        .get_or_init(|| {
            let mut m = Model::new(p);
            if let Some(text) = p.priming.and_then(priming_text) {
                m.learn(&priming_part(&text, p.table_log));
            }
            if p.priming == Some(PRIMING_DIALOGUE_V1) {
                // Whole and last: the freshest history, whatever the table.
                m.learn(DIALOGUE_V1);
            }
            Arc::new(m)
        })
        .clone())
}

/// A per-tunnel copy of the primed model, made on first use.
struct Slot {
    params: CmParams,
    model: Option<Box<Model>>,
}

impl Slot {
    fn new(params: CmParams) -> Result<Self, CodecError> {
        params.validate()?;
        Ok(Self {
            params,
            model: None,
        })
    }

    fn get(&mut self) -> Result<&mut Model, CodecError> {
        match &mut self.model {
            Some(m) => Ok(m),
            slot => Ok(slot.insert(Box::new(Model::clone(&*primed(&self.params)?)))),
        }
    }

    fn memory_bytes(&self) -> usize {
        self.model.as_ref().map_or(0, |m| m.memory_bytes())
    }
}

// ---- Arithmetic coder ----------------------------------------------------------

struct ArithEncoder {
    x1: u32,
    x2: u32,
}

impl ArithEncoder {
    fn new() -> Self {
        Self {
            x1: 0,
            x2: u32::MAX,
        }
    }

    #[inline]
    fn encode(&mut self, bit: u32, p: u32, out: &mut Vec<u8>) {
        let xmid = self.x1 + ((self.x2 - self.x1) >> 12) * p;
        if bit != 0 {
            self.x2 = xmid;
        } else {
            self.x1 = xmid + 1;
        }
        while (self.x1 ^ self.x2) & 0xFF00_0000 == 0 {
            out.push((self.x2 >> 24) as u8);
            self.x1 <<= 8;
            self.x2 = self.x2 << 8 | 0xFF;
        }
    }

    /// One byte whose value, followed by zeros, lies in [x1, x2]: the decoder
    /// reads zeros past the end of a segment.
    fn flush(&self, out: &mut Vec<u8>) {
        let top = self.x1 >> 24;
        out.push(if self.x1 & 0xFF_FFFF == 0 {
            top
        } else {
            top + 1
        } as u8);
    }
}

/// Already-compressed bytes (JPEG, PNG, ZIP, gzip, PDF streams, ciphertext):
/// byte values nearly uniform, i.e. a collision probability within 1.5× of
/// 1/256. Such segments travel raw and the model does not learn them, so
/// they never pollute the text history. Both peers apply it to the same raw
/// segment, so no flag is needed. Integer-only: bit-identical everywhere.
pub(super) fn is_binary(data: &[u8]) -> bool {
    if data.len() < 512 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as u64;
    let sum_sq: u64 = counts.iter().map(|&c| u64::from(c) * u64::from(c)).sum();
    256 * sum_sq <= 3 * n * n / 2 + 256 * n
}

/// Splits a unit into runs of like content: 4 KiB blocks classed by
/// [`is_binary`], neighbours of one class merged, a short tail kept with the
/// run before it.
fn content_runs(data: &[u8]) -> Vec<&[u8]> {
    const BLOCK: usize = 4096;
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let end = (at + BLOCK).min(data.len());
        let bin = if end - at < BLOCK && !runs.is_empty() {
            runs.last().expect("not empty").2
        } else {
            is_binary(&data[at..end])
        };
        match runs.last_mut() {
            Some(last) if last.2 == bin => last.1 = end,
            _ => runs.push((at, end, bin)),
        }
        at = end;
    }
    runs.into_iter().map(|(a, b, _)| &data[a..b]).collect()
}

/// Encodes `data` with `m` as one segment. Returns false (and leaves `out`
/// as it was) if coding did not pay, in which case the caller sends it raw;
/// the model has learnt `data` either way.
fn encode_segment(m: &mut Model, data: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut ac = ArithEncoder::new();
    for &b in data {
        for i in (0..8).rev() {
            let bit = ((b >> i) & 1) as u32;
            ac.encode(bit, m.p(), out);
            m.update(bit);
        }
    }
    ac.flush(out);
    if out.len() - start >= data.len() {
        out.truncate(start);
        return false;
    }
    true
}

/// Decoding state of one segment whose coded bytes arrive piecemeal.
struct SegDecoder {
    /// Plain bytes still to produce.
    left: usize,
    /// Coded bytes in the segment; past them the decoder reads zeros.
    clen: usize,
    /// Coded bytes consumed (real or virtual).
    read: usize,
    x1: u32,
    x2: u32,
    x: u32,
    /// Bytes still to load into `x` before the first bit.
    fill: u8,
    byte: u32,
    bits: u32,
}

impl SegDecoder {
    fn new(n: usize, clen: usize) -> Self {
        Self {
            left: n,
            clen,
            read: 0,
            x1: 0,
            x2: u32::MAX,
            x: 0,
            fill: 4,
            byte: 0,
            bits: 0,
        }
    }

    fn next_byte(&mut self, inp: &[u8], ip: &mut usize) -> Option<u32> {
        let b = if self.read >= self.clen {
            0
        } else {
            let b = *inp.get(*ip)?;
            *ip += 1;
            b as u32
        };
        self.read += 1;
        Some(b)
    }

    /// Decodes while input lasts, appending plain bytes to `out` (at most
    /// `room` of them). Returns true when the segment's bytes are all out.
    fn run(
        &mut self,
        m: &mut Model,
        inp: &[u8],
        ip: &mut usize,
        out: &mut Vec<u8>,
        room: &mut usize,
    ) -> bool {
        while self.fill > 0 {
            let Some(b) = self.next_byte(inp, ip) else {
                return false;
            };
            self.x = self.x << 8 | b;
            self.fill -= 1;
        }
        while self.left > 0 && *room > 0 {
            // Normalise lazily, so a bit is decoded only once its bytes are here.
            while (self.x1 ^ self.x2) & 0xFF00_0000 == 0 {
                let Some(b) = self.next_byte(inp, ip) else {
                    return false;
                };
                self.x1 <<= 8;
                self.x2 = self.x2 << 8 | 0xFF;
                self.x = self.x << 8 | b;
            }
            let xmid = self.x1 + ((self.x2 - self.x1) >> 12) * m.p();
            let bit = (self.x <= xmid) as u32;
            if bit != 0 {
                self.x2 = xmid;
            } else {
                self.x1 = xmid + 1;
            }
            m.update(bit);
            self.byte = self.byte << 1 | bit;
            self.bits += 1;
            if self.bits == 8 {
                out.push(self.byte as u8);
                self.byte = 0;
                self.bits = 0;
                self.left -= 1;
                *room -= 1;
            }
        }
        self.left == 0
    }

    /// Coded bytes of the segment not consumed by decoding.
    fn unread(&self) -> usize {
        self.clen.saturating_sub(self.read)
    }
}

fn take_varint(inp: &[u8], ip: &mut usize) -> Result<Option<u64>, CodecError> {
    let mut v: u64 = 0;
    for (i, &b) in inp[*ip..].iter().enumerate() {
        if i >= 9 {
            break;
        }
        v |= ((b & 0x7F) as u64) << (7 * i);
        if b & 0x80 == 0 {
            *ip += i + 1;
            return Ok(Some(v));
        }
    }
    if inp.len() - *ip >= 9 {
        return Err(CodecError::Corrupt("cm segment header too long".into()));
    }
    Ok(None)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

// ---- Encoder and decoders --------------------------------------------------------

/// One CM context on the sending side.
pub(super) struct CmEncoder {
    slot: Slot,
}

impl CmEncoder {
    pub(super) fn new(p: &CmParams) -> Result<Self, CodecError> {
        Ok(Self {
            slot: Slot::new(*p)?,
        })
    }

    /// A whole record's body: `varint (n<<1|raw)` and the coded bytes.
    pub(super) fn encode_record(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let m = self.slot.get()?;
        let mut coded = Vec::with_capacity(data.len() / 2 + 8);
        if !is_binary(data) && encode_segment(m, data, &mut coded) {
            put_varint(out, (data.len() as u64) << 1);
            out.extend_from_slice(&coded);
        } else {
            put_varint(out, (data.len() as u64) << 1 | 1);
            out.extend_from_slice(data);
        }
        Ok(())
    }

    /// A bulk unit, one segment per run of like content ([`content_runs`]):
    /// `varint (n<<1|raw)`, `varint clen` if coded, the bytes.
    pub(super) fn encode_unit(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        let m = self.slot.get()?;
        for run in content_runs(data) {
            let mut coded = Vec::with_capacity(run.len() / 2 + 8);
            if !is_binary(run) && encode_segment(m, run, &mut coded) {
                put_varint(out, (run.len() as u64) << 1);
                put_varint(out, coded.len() as u64);
                out.extend_from_slice(&coded);
            } else {
                put_varint(out, (run.len() as u64) << 1 | 1);
                out.extend_from_slice(run);
            }
        }
        Ok(())
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.slot.memory_bytes()
    }
}

/// One CM context on the receiving side, for whole records.
pub(super) struct CmDecoder {
    slot: Slot,
}

impl CmDecoder {
    pub(super) fn new(p: &CmParams) -> Result<Self, CodecError> {
        Ok(Self {
            slot: Slot::new(*p)?,
        })
    }

    pub(super) fn decode_record(
        &mut self,
        body: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut ip = 0;
        let head = take_varint(body, &mut ip)?
            .ok_or_else(|| CodecError::Corrupt("truncated cm record".into()))?;
        let n = head >> 1;
        if n > max as u64 {
            return Err(CodecError::TooLarge(max));
        }
        let n = n as usize;
        let m = self.slot.get()?;
        let rest = &body[ip..];
        if head & 1 == 1 {
            if rest.len() != n {
                return Err(CodecError::Corrupt(
                    "raw cm record of the wrong length".into(),
                ));
            }
            if !is_binary(rest) {
                m.learn(rest);
            }
            out.extend_from_slice(rest);
            return Ok(());
        }
        let mut seg = SegDecoder::new(n, rest.len());
        let mut rp = 0;
        let mut room = n;
        // All coded bytes are here and the rest reads as zeros: it completes.
        if !seg.run(m, rest, &mut rp, out, &mut room) {
            return Err(CodecError::Internal("cm record decoder stalled".into()));
        }
        Ok(())
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.slot.memory_bytes()
    }
}

enum BulkState {
    Header,
    Coded(SegDecoder),
    Raw(usize),
    Skip(usize),
}

/// One CM context on the receiving side, for bulk units cut into slices
/// that may end anywhere: decodes as far as the bytes so far allow.
pub(super) struct CmBulkDecoder {
    slot: Slot,
    state: BulkState,
    /// Received bytes not yet consumed (a header's start, coder lookahead).
    pending: Vec<u8>,
    /// The raw segment being received (at most one unit).
    raw_segment: Vec<u8>,
}

impl CmBulkDecoder {
    pub(super) fn new(p: &CmParams) -> Result<Self, CodecError> {
        Ok(Self {
            slot: Slot::new(*p)?,
            state: BulkState::Header,
            pending: Vec::new(),
            raw_segment: Vec::new(),
        })
    }

    /// Feeds one slice; appends what it decodes to `out` (at most `max`
    /// bytes, beyond that `TooLarge`; a unit may not exceed `max` either).
    pub(super) fn decode_slice(
        &mut self,
        slice: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        self.pending.extend_from_slice(slice);
        let inp = std::mem::take(&mut self.pending);
        let mut ip = 0;
        let res = self.run(&inp, &mut ip, max, out);
        self.pending = inp;
        self.pending.drain(..ip);
        res
    }

    fn run(
        &mut self,
        inp: &[u8],
        ip: &mut usize,
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut room = max;
        loop {
            match &mut self.state {
                BulkState::Header => {
                    let start = *ip;
                    let Some(head) = take_varint(inp, ip)? else {
                        return Ok(());
                    };
                    let n = head >> 1;
                    if n > max as u64 {
                        return Err(CodecError::TooLarge(max));
                    }
                    if head & 1 == 1 {
                        self.state = BulkState::Raw(n as usize);
                    } else {
                        let Some(clen) = take_varint(inp, ip)? else {
                            *ip = start;
                            return Ok(());
                        };
                        if clen > (n + 1) * 2 {
                            return Err(CodecError::Corrupt(
                                "cm unit longer coded than plain".into(),
                            ));
                        }
                        self.state = BulkState::Coded(SegDecoder::new(n as usize, clen as usize));
                    }
                }
                BulkState::Raw(left) => {
                    let k = (*left).min(inp.len() - *ip);
                    if k > room {
                        return Err(CodecError::TooLarge(max));
                    }
                    let bytes = &inp[*ip..*ip + k];
                    // Learnt (or not) as a whole once complete: the class
                    // is decided on the whole segment, as the sender did.
                    self.raw_segment.extend_from_slice(bytes);
                    out.extend_from_slice(bytes);
                    room -= k;
                    *ip += k;
                    *left -= k;
                    if *left > 0 {
                        return Ok(());
                    }
                    let seg = std::mem::take(&mut self.raw_segment);
                    if !is_binary(&seg) {
                        self.slot.get()?.learn(&seg);
                    }
                    self.state = BulkState::Header;
                }
                BulkState::Coded(seg) => {
                    let m = match &mut self.slot.model {
                        Some(m) => m,
                        slot => slot.insert(Box::new(Model::clone(&*primed(&self.slot.params)?))),
                    };
                    if room == 0 && seg.left > 0 {
                        return Err(CodecError::TooLarge(max));
                    }
                    if !seg.run(m, inp, ip, out, &mut room) {
                        if seg.left > 0 && room == 0 {
                            return Err(CodecError::TooLarge(max));
                        }
                        return Ok(());
                    }
                    self.state = BulkState::Skip(seg.unread());
                }
                BulkState::Skip(left) => {
                    let k = (*left).min(inp.len() - *ip);
                    *ip += k;
                    *left -= k;
                    if *left > 0 {
                        return Ok(());
                    }
                    self.state = BulkState::Header;
                }
            }
            if *ip == inp.len() && matches!(self.state, BulkState::Header) {
                return Ok(());
            }
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        self.slot.memory_bytes() + self.pending.capacity() + self.raw_segment.capacity()
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
