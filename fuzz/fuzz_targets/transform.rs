//! The base64 transform decoder on any stream, pushed in the chunks the
//! fuzzer's first bytes choose: output is at most twice the input (a 4-char
//! line of 3 bytes plus CRLF is the worst layout), and any split of the input
//! decodes to the same bytes as one push.
#![no_main]
use libfuzzer_sys::fuzz_target;
use straw_core::transform::Decoder;

fuzz_target!(|data: &[u8]| {
    let (cuts, stream) = data.split_at(data.len().min(4));
    let mut whole = Vec::new();
    let whole_ok = Decoder::new().push(stream, &mut whole).is_ok();
    assert!(whole.len() <= 2 * stream.len() + 8, "{} B out of {} B in", whole.len(), stream.len());

    let mut dec = Decoder::new();
    let mut split = Vec::new();
    let mut rest = stream;
    let mut ok = true;
    for &c in cuts {
        let (a, b) = rest.split_at((c as usize).min(rest.len()));
        ok &= dec.push(a, &mut split).is_ok();
        rest = b;
    }
    ok &= dec.push(rest, &mut split).is_ok();
    assert_eq!(ok, whole_ok, "a split changed whether the stream decodes");
    if ok {
        assert_eq!(split, whole, "a split changed the output");
    }
});
