//! A context-mixing text codec (after Matt Mahoney's public-domain lpaq1
//! design, written from scratch): per bit, predictions from hashed order-2,
//! 3, 4 and word contexts, direct order-0/1 tables, a match model over the
//! context's own history and a static match model over a shared text of
//! training mail (`StaticText`, held once per process) are mixed by small
//! neural networks, refined by two APM stages and coded by a 32-bit
//! carry-less binary arithmetic coder.
//!
//! The model carries across records; only the coder is flushed per segment
//! (one byte). All arithmetic is integer, so both peers compute bit-identical
//! predictions on any platform.
//!
//! The files, from the wire inwards:
//! - `params`: the sizes both peers agree on, and the model id;
//! - `encoder`, `decoder`, `segment`: records and bulk units of segments;
//! - `coder`: the binary arithmetic coder;
//! - `priming`, `primed`: priming texts, and the primed model each context
//!   copies;
//! - `model`: one context's predictor, made of `bit_history` + `counters`
//!   (hashed and direct contexts), `match_model`, `static_match`, `mixer`
//!   and `apm`, over `logistic` fixed-point helpers.

mod apm;
mod bit_history;
mod coder;
mod counters;
mod decoder;
mod encoder;
mod logistic;
mod match_model;
mod mixer;
mod model;
mod params;
mod primed;
mod priming;
mod segment;
mod static_match;

pub(super) use self::decoder::{CmBulkDecoder, CmDecoder};
pub(super) use self::encoder::CmEncoder;
pub use self::params::{CM_ALGORITHM_VERSION, CmParams, model_id};
pub use self::priming::{
    PRIMING_DIALOGUE_V1, PRIMING_MAIL_V1, PRIMING_MAIL_V2, priming_text, register_priming_text,
    register_priming_with_static, shared_static_bytes,
};
#[cfg(test)]
pub(super) use self::segment::is_binary;

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

/// Context hashing: a 64-bit mix of two words (splitmix64's finaliser).
fn hash64(a: u32, b: u32) -> u64 {
    let z = ((a as u64) << 32 | b as u64).wrapping_add(0x632B_E59B_D9B4_E019);
    let z = (z ^ (z >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 32)
}

fn hash32(a: u32, b: u32) -> u32 {
    (hash64(a, b) >> 32) as u32
}
