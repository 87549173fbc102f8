use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proptest::prelude::*;

use super::*;

/// Base64 of `data` in lines of `len` characters, each ended by `eol`.
fn wrap(data: &[u8], len: usize, eol: &[u8]) -> Vec<u8> {
    let b = STANDARD.encode(data);
    let mut out = Vec::new();
    for l in b.as_bytes().chunks(len) {
        out.extend_from_slice(l);
        out.extend_from_slice(eol);
    }
    out
}

/// Encodes `input` cut at `cuts` (flushing where `flushes` says), then
/// decodes the result cut at other points.
fn roundtrip(input: &[u8], cuts: &[usize], flushes: &[bool]) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    let mut at = 0;
    for (i, &c) in cuts.iter().enumerate() {
        let end = (at + c).min(input.len());
        enc.push(&input[at..end], &mut wire);
        assert!(enc.held() <= MAX_HELD);
        if flushes.get(i).copied().unwrap_or(false) {
            enc.flush(&mut wire);
            assert_eq!(enc.held(), 0);
        }
        at = end;
    }
    enc.push(&input[at..], &mut wire);
    enc.flush(&mut wire);
    assert_eq!(enc.held(), 0);

    let mut dec = Decoder::new();
    let mut back = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().rev() {
        let end = (at + c).min(wire.len());
        dec.push(&wire[at..end], &mut back).unwrap();
        at = end;
    }
    dec.push(&wire[at..], &mut back).unwrap();
    dec.finish().unwrap();
    assert!(back == input, "roundtrip differs");
    wire
}

fn encode_all(input: &[u8]) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    enc.push(input, &mut wire);
    enc.flush(&mut wire);
    wire
}

/// Pieces that exercise every path: random bytes, ESC and tags, base64 runs
/// of any layout (some damaged), text lines, dot-stuffing.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(
            prop_oneof![Just(ESC), Just(T_LIT), Just(T_B64), Just(0x83), Just(b'\n')],
            0..8
        ),
        (
            proptest::collection::vec(any::<u8>(), 0..400),
            1usize..30,
            any::<bool>(),
        )
            .prop_map(|(d, q, lf)| wrap(&d, q * 4, if lf { b"\n" } else { b"\r\n" })),
        (
            proptest::collection::vec(any::<u8>(), 1..200),
            any::<u8>(),
            any::<usize>()
        )
            .prop_map(|(d, b, at)| {
                let mut w = wrap(&d, 76, b"\r\n");
                let i = at % w.len();
                w[i] = b;
                w
            }),
        "[A-Za-z0-9+/=.\r\n ]{0,120}".prop_map(|s| s.into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_any_splits_roundtrip(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(0usize..50, 0..20),
        flushes in proptest::collection::vec(any::<bool>(), 0..20),
    ) {
        roundtrip(&data, &cuts, &flushes);
    }

    #[test]
    fn mixed_mail_like_input_roundtrips(
        pieces in proptest::collection::vec(piece(), 0..12),
        cuts in proptest::collection::vec(0usize..200, 0..30),
        flushes in proptest::collection::vec(any::<bool>(), 0..30),
    ) {
        let data: Vec<u8> = pieces.concat();
        roundtrip(&data, &cuts, &flushes);
    }

    #[test]
    fn garbage_never_panics_and_memory_stays_bounded(
        data in proptest::collection::vec(any::<u8>(), 0..800),
        cut in 0usize..800,
    ) {
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let cut = cut.min(data.len());
        if dec.push(&data[..cut], &mut out).is_ok() {
            let _ = dec.push(&data[cut..], &mut out);
        }
        prop_assert!(dec.line.capacity() <= 4 * MAX_LINE);
        // Output grows at most ~1.5× for valid chunks (L ≥ 4: 4+2 chars per 3 bytes → 2×).
        prop_assert!(out.len() <= 2 * data.len() + 8);
    }
}

#[test]
fn base64_run_is_decoded_and_shrinks() {
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    let mut msg = b"Content-Transfer-Encoding: base64\r\n\r\n".to_vec();
    msg.extend_from_slice(&wrap(&data, 76, b"\r\n"));
    msg.extend_from_slice(b"\r\n--boundary--\r\n");
    let wire = roundtrip(&msg, &[], &[]);
    assert!(
        wire.len() < data.len() + 100,
        "{} vs {}",
        wire.len(),
        data.len()
    );
}

#[test]
fn runs_survive_every_split_point() {
    let data: Vec<u8> = (0..500u32).map(|i| (i * 31) as u8).collect();
    let mut msg = b"hello\r\n".to_vec();
    msg.extend_from_slice(&wrap(&data, 76, b"\r\n"));
    msg.extend_from_slice(b".\r\n");
    let whole = encode_all(&msg);
    assert!(whole.len() < 520);
    for cut in 0..msg.len() {
        // A split costs at most one more chunk header.
        let wire = roundtrip(&msg, &[cut], &[]);
        assert!(
            wire.len() <= whole.len() + 8,
            "split at {cut}: {}",
            wire.len()
        );
    }
}

#[test]
fn layouts_lf_and_long_lines_and_short_last_lines() {
    for len in [16, 64, 72, 76, 100, 996, 1000] {
        for n in [12, 100, 749, 750, 751, 2000, 5000] {
            for eol in [&b"\n"[..], &b"\r\n"[..]] {
                let data: Vec<u8> = (0..n as u32).map(|i| (i ^ (i >> 3)) as u8).collect();
                let msg = wrap(&data, len, eol);
                let lines = msg.len().div_ceil(len + eol.len());
                let wire = roundtrip(&msg, &[7, 300], &[false, true]);
                if lines >= MIN_RUN_LINES {
                    assert!(
                        wire.len() < n + 2 * (len + 2) + 40,
                        "len {len} n {n}: {} bytes",
                        wire.len()
                    );
                }
            }
        }
    }
}

#[test]
fn non_canonical_base64_travels_as_text() {
    // "QQ==" is canonical for "A"; "QR==" has non-zero padding bits.
    let mut msg = wrap(&[7u8; 114], 76, b"\r\n"); // two full lines
    msg.extend_from_slice(b"QR==\r\n");
    let wire = roundtrip(&msg, &[], &[]);
    assert!(wire.windows(6).any(|w| w == b"QR==\r\n"));
    // Mixed line endings within a run: the odd line is text.
    let mut msg = wrap(&[9u8; 57 * 3], 76, b"\r\n");
    let odd = msg.len() - 2;
    msg.remove(odd); // last line ends in LF only
    let wire = roundtrip(&msg, &[], &[]);
    assert!(wire.len() > 114);
    // Padding inside a line, lines of unequal length: text.
    roundtrip(b"QUJD=EFG\r\nQUJDREVG\r\n", &[], &[]);
    let wire = roundtrip(
        b"QUJDREVGR0hJSktMTU5P\r\nQUJDREVGR0hJSktMTU5PUFFS\r\n",
        &[],
        &[],
    );
    assert_eq!(
        wire,
        b"QUJDREVGR0hJSktMTU5P\r\nQUJDREVGR0hJSktMTU5PUFFS\r\n"
    );
}

#[test]
fn dot_stuffed_pop3_body_keeps_terminator_as_text() {
    let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8).collect();
    let mut msg = b"+OK message follows\r\nSubject: x\r\n\r\n..leading dot\r\n".to_vec();
    msg.extend_from_slice(&wrap(&data, 76, b"\r\n"));
    msg.extend_from_slice(b"..\r\n.\r\n");
    let wire = roundtrip(&msg, &[5, 100, 1000], &[false, false, false]);
    assert!(wire.ends_with(b"..\r\n.\r\n"));
    assert!(wire.starts_with(b"+OK message follows\r\nSubject: x\r\n\r\n..leading dot\r\n"));
    assert!(wire.len() < msg.len() * 80 / 100);
}

#[test]
fn literal_esc_costs_nothing_unless_a_tag_follows() {
    let text = [b'a', ESC, b'b', ESC, ESC, b'c'];
    assert_eq!(encode_all(&text), text);
    // ESC before a tag byte, and ESC at a flush, are escaped.
    let wire = roundtrip(&[ESC, T_B64, ESC], &[], &[]);
    assert_eq!(wire, [ESC, T_LIT, T_B64, ESC, T_LIT]);
    // ESC split from the byte after it by a push.
    roundtrip(&[b'x', ESC, 0x81, ESC, 0x80], &[2, 1, 1], &[]);
}

#[test]
fn encoder_streams_long_runs_and_holds_at_most_a_chunk() {
    let data: Vec<u8> = (0..60_000u32).map(|i| (i * 13 + (i >> 8)) as u8).collect();
    let msg = wrap(&data, 76, b"\r\n");
    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    let mut dec = Decoder::new();
    let mut back = Vec::new();
    let mut fed = 0;
    for piece in msg.chunks(1000) {
        let before = wire.len();
        enc.push(piece, &mut wire);
        fed += piece.len();
        assert!(enc.held() <= MAX_CHUNK + 2 * 78, "held {}", enc.held());
        dec.push(&wire[before..], &mut back).unwrap();
        // It streams: at most a chunk (≈ 5.6 KB of base64) and a line behind.
        assert!(back.len() + 5700 >= fed, "{} of {fed}", back.len());
    }
    let before = wire.len();
    enc.flush(&mut wire);
    assert_eq!(enc.held(), 0);
    dec.push(&wire[before..], &mut back).unwrap();
    assert_eq!(back, msg);
    // Chunks of MAX_CHUNK decoded bytes: few headers.
    let headers = wire.windows(2).filter(|w| w == &[ESC, T_B64]).count();
    assert_eq!(headers, data.len().div_ceil(MAX_CHUNK / 57 * 57));
}

#[test]
fn content_class_from_magic() {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend((0..300u32).map(|i| i as u8));
    let wire = encode_all(&wrap(&png, 76, b"\r\n"));
    assert_eq!(wire[..3], [ESC, T_B64, (ContentClass::Png as u8) << 4]);
    let mut dec = Decoder::new();
    dec.push(&wire, &mut Vec::new()).unwrap();
    assert_eq!(dec.last_class(), ContentClass::Png);
    assert!(dec.last_class().is_compressed());
    assert_eq!(ContentClass::sniff(b"%PDF-1.4"), ContentClass::Pdf);
    assert_eq!(ContentClass::sniff(b"hello"), ContentClass::Unknown);
}

#[test]
fn decoder_errors_are_clear_and_final() {
    let mut out = Vec::new();
    let mut d = Decoder::new();
    assert_eq!(
        d.push(&[ESC, 0x83], &mut out),
        Err(TransformError::UnknownTag(0x83))
    );
    assert_eq!(d.push(b"x", &mut out), Err(TransformError::Poisoned));
    let mut d = Decoder::new();
    assert_eq!(
        d.push(&[ESC, T_B64, 0x02], &mut out),
        Err(TransformError::BadFlags(2))
    );
    let mut d = Decoder::new();
    assert_eq!(
        d.push(&[ESC, T_B64, 0, 6], &mut out),
        Err(TransformError::BadLineLength(6))
    );
    let mut d = Decoder::new();
    assert_eq!(
        d.push(&[ESC, T_B64, 0, 76, 0x80, 0x80, 0x80, 0x01], &mut out),
        Err(TransformError::BadChunkLength(1 << 21))
    );
    let mut d = Decoder::new();
    assert_eq!(
        d.push(
            &[
                ESC, T_B64, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
            ],
            &mut out
        ),
        Err(TransformError::BadVarint)
    );
    let mut d = Decoder::new();
    d.push(&[ESC, T_B64, 0, 76, 10, 1, 2], &mut out).unwrap();
    assert!(!d.is_clean());
    assert_eq!(d.finish(), Err(TransformError::Truncated));
}

/// Real mail round-trips; text-only mail is unchanged (no false runs), and
/// mail with base64 parts shrinks.
#[test]
fn corpus_roundtrips_and_shrinks() {
    let mut files = crate::fixtures::corpus_messages("easy-ham-1");
    files.extend(crate::fixtures::corpus_messages("spam-1"));
    let (mut raw, mut enc, mut b64_raw, mut b64_enc, mut false_hits) = (0, 0, 0, 0, 0);
    for (i, f) in files.iter().enumerate() {
        let msg = std::fs::read(f).unwrap();
        let cut = [1 + i % 97, 300 + i % 1000, 4000];
        let wire = roundtrip(&msg, &cut, &[false, i % 3 == 0, false]);
        raw += msg.len();
        enc += wire.len();
        let has_b64 = msg
            .windows(25)
            .any(|w| w.eq_ignore_ascii_case(b"transfer-encoding: base64"));
        if has_b64 {
            b64_raw += msg.len();
            b64_enc += wire.len();
        } else if wire.len() != msg.len() && !msg.windows(14).any(|w| w == b"-----BEGIN PGP") {
            // PGP armour is base64 too; anything else would be prose.
            false_hits += 1;
        }
    }
    eprintln!(
        "corpus: {} files, {raw} -> {enc} bytes; with base64 parts {b64_raw} -> {b64_enc}; \
         {false_hits} text-only files changed",
        files.len()
    );
    assert!(b64_enc < b64_raw * 85 / 100);
    assert!(false_hits * 200 < files.len(), "{false_hits} false hits");
}

/// A message as Python's `email` writes it: 76-character CRLF lines.
pub(crate) fn gpl_mime_message() -> Vec<u8> {
    let gpl = crate::fixtures::gpl3();
    let mut m = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: licence\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"===============0123456789==\"\r\n\r\n\
--===============0123456789==\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\r\nThe licence is attached.\r\n\r\n\
--===============0123456789==\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\
Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"GPL-3\"\r\n\r\n"
        .to_vec();
    m.extend_from_slice(&wrap(&gpl, 76, b"\r\n"));
    m.extend_from_slice(b"\r\n--===============0123456789==--\r\n");
    m
}

#[test]
fn gpl_attachment_roundtrips_and_shrinks_by_a_quarter() {
    let msg = gpl_mime_message();
    let wire = roundtrip(&msg, &[100, 777, 5000, 13], &[false, false, true]);
    eprintln!("GPL-3 message: {} -> {} bytes", msg.len(), wire.len());
    assert!(wire.len() * 100 < msg.len() * 76);
}

#[test]
fn cut_emits_the_gathered_chunk_and_the_run_goes_on() {
    let data: Vec<u8> = (0..1140u32).map(|i| (i * 7) as u8).collect();
    let msg = wrap(&data, 76, b"\r\n");
    let (a, b) = msg.split_at(780); // ten lines, then the rest
    let mut enc = Encoder::new();
    let mut wire = Vec::new();
    enc.push(a, &mut wire);
    assert!(wire.is_empty(), "gathered, not emitted");
    assert_eq!(enc.held(), 570);
    assert_eq!(enc.held_lines(), 0);
    enc.cut(&mut wire);
    assert_eq!(wire.len(), 6 + 570); // ESC tag flags L(1) D(2)
    enc.push(b, &mut wire);
    enc.flush(&mut wire);
    // Two chunks, no text.
    assert_eq!(wire.len(), 2 * 6 + data.len());
    let mut back = Vec::new();
    Decoder::new().push(&wire, &mut back).unwrap();
    assert_eq!(back, msg);
}
