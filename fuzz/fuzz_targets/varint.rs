//! `get_varint` on any bytes: never reads past 10 bytes, and what it accepts
//! re-encodes to at most what it consumed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use straw_core::wire::{get_varint, put_varint, varint_len};

fuzz_target!(|data: &[u8]| {
    let mut s = data;
    if let Ok(v) = get_varint(&mut s) {
        let used = data.len() - s.len();
        assert!((1..=10).contains(&used), "varint used {used} bytes");
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v));
        assert!(out.len() <= used, "canonical form longer than the input");
        let mut back = &out[..];
        assert_eq!(get_varint(&mut back).unwrap(), v);
    }
});
