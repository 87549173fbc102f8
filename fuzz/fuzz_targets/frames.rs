//! The frames of one decoded record: never more frames than bytes, payloads
//! are slices of the record (no copy, so nothing grows with the input), and
//! every decoded frame re-encodes to at most the bytes it came from.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use straw_core::wire::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let mut dec = FrameDecoder::new(Bytes::copy_from_slice(data));
    let mut frames = 0usize;
    let mut consumed = 0usize;
    loop {
        let before = dec.remaining();
        match dec.next() {
            Some(Ok(frame)) => {
                frames += 1;
                let used = before - dec.remaining();
                assert!(used >= 1, "a frame consumed no bytes");
                assert!(frame.encoded_len() <= used, "frame grew on re-encode");
                consumed += used;
            }
            Some(Err(_)) | None => break,
        }
    }
    assert!(frames <= data.len());
    assert!(consumed <= data.len());
});
