//! The client's cache file (greetings, CAPABILITY, EHLO per service), as a
//! damaged disk could leave it. Besides "no panic": what decodes holds no
//! more bytes than the file, and encodes back to a file that decodes to the
//! same cache.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cache) = straw::cache::decode(data) {
        let held: usize = cache.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(held <= data.len());
        let again =
            straw::cache::decode(&straw::cache::encode(&cache)).expect("re-encoded cache decodes");
        assert_eq!(cache, again);
    }
});
