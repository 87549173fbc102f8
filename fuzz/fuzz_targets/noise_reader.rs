//! The length-prefixed message reader of the tunnel: pushed any bytes in any
//! chunks, it returns messages of at most 65,535 bytes, never more message
//! bytes than were pushed, and holds no more than what was pushed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use straw::link::noise::MessageReader;

fuzz_target!(|data: &[u8]| {
    let mut r = MessageReader::new();
    let mut pushed = 0usize;
    let mut out = 0usize;
    for chunk in data.chunks(97) {
        r.push(chunk);
        pushed += chunk.len();
        while let Some(m) = r.next_message() {
            assert!(m.len() <= u16::MAX as usize);
            out += m.len() + 2;
        }
        assert_eq!(out + r.buffered(), pushed);
    }
});
