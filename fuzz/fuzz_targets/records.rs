//! A run of records from a hostile peer through one `RecordDecoder`, under
//! each decoder profile the tunnel uses (the first byte picks it): every
//! record's output stays within `max_record_bytes`, the decoder's memory
//! within its profile's bound, and after the first error every later record
//! is refused (the stream is out of step).
//!
//! The CM profiles are unprimed and small so that one input runs in
//! microseconds; priming changes the model's numbers, not the code paths.
#![no_main]
use libfuzzer_sys::fuzz_target;
use straw_core::codec::{CmParams, DecoderLimits, RecordDecoder};

const MAX_RECORD: usize = 16 * 1024;

fn limits(pick: u8) -> (DecoderLimits, usize) {
    let cm = CmParams {
        table_log: 16,
        match_log: 15,
        priming: None,
    };
    let base = DecoderLimits {
        max_record_bytes: MAX_RECORD,
        ..DecoderLimits::default()
    };
    match pick % 3 {
        0 => (base, 4 << 20),
        1 => (
            DecoderLimits {
                max_record_bytes: MAX_RECORD,
                ..DecoderLimits::slow_link()
            },
            8 << 20,
        ),
        _ => (DecoderLimits { cm: Some(cm), ..base }, 8 << 20),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let (lim, mem_bound) = limits(pick);
    let mut dec = RecordDecoder::with_bulk(&lim, &lim);
    let mut out = Vec::new();
    let mut failed = false;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize * 4 + 1).min(tail.len());
        let (record, tail) = tail.split_at(n);
        rest = tail;
        match dec.decode(record, &mut out) {
            Ok(()) => {
                assert!(!failed, "a record decoded after an error");
                assert!(out.len() <= MAX_RECORD, "{} B out", out.len());
            }
            Err(_) => {
                failed = true;
                assert!(out.is_empty());
            }
        }
        assert!(dec.memory_bytes() <= mem_bound, "{} B held", dec.memory_bytes());
    }
});
