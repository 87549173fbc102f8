//! The header of a partial-transfer file (`STRAWPART1`, key length, key), as
//! a damaged disk or another local user could leave it in the partial
//! directory. Besides "no panic": a bad file is an error, never a huge
//! allocation (the key is bounded whatever the length field says), and what
//! parses is a key the file really holds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    if let Ok(key) = straw::partial::read_header(&mut r) {
        assert!(key.len() <= 4096);
        assert!(data.len() >= 15 + key.len());
        assert_eq!(&data[15..15 + key.len()], key.as_bytes());
    }
});
