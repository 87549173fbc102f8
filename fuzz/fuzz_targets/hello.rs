//! The handshake payload: whatever decodes re-encodes and decodes to the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use straw_core::wire::Hello;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Hello::decode(data) {
        let again = Hello::decode(&h.encode()).expect("re-encoded Hello decodes");
        assert_eq!(h, again);
    }
});
