use proptest::prelude::*;

use super::*;
use crate::fixtures::noise;

fn text_2k() -> Vec<u8> {
    let mut s = String::new();
    let mut i = 0u32;
    while s.len() < 2048 {
        // Varied enough that a single record compresses only moderately.
        s.push_str(&format!(
            "Received: from mx{i}.example.org (host-{h}.net [10.{a}.{b}.{c}]) id {h:x}\r\n",
            h = i.wrapping_mul(2_654_435_761),
            a = i % 251,
            b = (i * 7) % 253,
            c = (i * 13) % 247,
        ));
        i += 1;
    }
    s.into_bytes()
}

fn pair() -> (RecordEncoder, RecordDecoder) {
    (
        RecordEncoder::new(&CodecParams::default()),
        RecordDecoder::new(&DecoderLimits::default()),
    )
}

fn encode(enc: &mut RecordEncoder, codec: CodecId, data: &[u8]) -> Vec<u8> {
    let mut rec = Vec::new();
    enc.encode(codec, data, &mut rec).unwrap();
    rec
}

/// Three valid zstd records, for the hostile-input tests to mangle.
fn valid_zstd_records() -> Vec<Vec<u8>> {
    let (mut enc, _) = pair();
    let t = text_2k();
    vec![
        encode(&mut enc, CodecId::Zstd, &t),
        encode(&mut enc, CodecId::Zstd, &t[..700]),
        encode(&mut enc, CodecId::Zstd, b"DATA frame payload 123"),
    ]
}

#[test]
fn stored_and_zstd_round_trip_basic() {
    let (mut enc, mut dec) = pair();
    let mut out = Vec::new();
    for codec in [CodecId::Stored, CodecId::Zstd] {
        for data in [&b""[..], b"x", b"hello hello hello hello"] {
            let rec = encode(&mut enc, codec, data);
            assert_eq!(rec[0], codec as u8);
            println!("{codec:?} {} B -> record {} B", data.len(), rec.len());
            dec.decode(&rec, &mut out).unwrap();
            assert_eq!(out, data);
        }
    }
}

#[test]
fn history_is_shared_across_records() {
    let (mut enc, mut dec) = pair();
    let t = text_2k();
    let mut out = Vec::new();
    let first = encode(&mut enc, CodecId::Zstd, &t);
    dec.decode(&first, &mut out).unwrap();
    assert_eq!(out, t);
    // Unrelated record in between: history must survive it too.
    let mid = encode(&mut enc, CodecId::Zstd, b"PING 12345");
    dec.decode(&mid, &mut out).unwrap();
    let second = encode(&mut enc, CodecId::Zstd, &t);
    dec.decode(&second, &mut out).unwrap();
    assert_eq!(out, t);
    println!(
        "2 KB text: first record {} B, repeat {} B",
        first.len(),
        second.len()
    );
    assert!(
        first.len() > 400,
        "first copy should not be tiny: {}",
        first.len()
    );
    assert!(
        second.len() * 20 < first.len(),
        "repeat {} B vs first {} B",
        second.len(),
        first.len()
    );
}

#[test]
fn reset_drops_state_and_restarts_in_step() {
    let (mut enc, mut dec) = pair();
    let t = text_2k();
    let mut out = Vec::new();
    assert_eq!(enc.memory_bytes(), 0, "no context before first use");
    assert_eq!(dec.memory_bytes(), 0);
    dec.decode(&encode(&mut enc, CodecId::Zstd, &t), &mut out)
        .unwrap();
    assert!(enc.memory_bytes() > 0 && dec.memory_bytes() > 0);
    enc.reset();
    dec.reset();
    assert_eq!(enc.memory_bytes(), 0);
    assert_eq!(dec.memory_bytes(), 0);
    // After reset there is no history: the repeat costs a full record again.
    let again = encode(&mut enc, CodecId::Zstd, &t);
    assert!(again.len() > 400);
    dec.decode(&again, &mut out).unwrap();
    assert_eq!(out, t);
}

#[test]
fn stored_records_leave_zstd_unallocated() {
    let (mut enc, mut dec) = pair();
    let mut out = Vec::new();
    dec.decode(&encode(&mut enc, CodecId::Stored, b"jpeg"), &mut out)
        .unwrap();
    assert_eq!(enc.memory_bytes(), 0);
    assert_eq!(dec.memory_bytes(), 0);
}

#[test]
fn memory_figures_default_params() {
    let (mut enc, mut dec) = pair();
    let mut out = Vec::new();
    // Push more than a window's worth so every table is in use.
    let mut data = Vec::new();
    while data.len() < 200_000 {
        data.extend_from_slice(&text_2k());
    }
    for chunk in data.chunks(16 * 1024) {
        dec.decode(&encode(&mut enc, CodecId::Zstd, chunk), &mut out)
            .unwrap();
        assert_eq!(out, chunk);
    }
    let (e, d) = (enc.memory_bytes(), dec.memory_bytes());
    println!(
        "default params: encoder {e} B ({:.2} MiB), decoder {d} B ({:.2} MiB)",
        e as f64 / 1048576.0,
        d as f64 / 1048576.0
    );
    assert!(e > 100_000, "implausibly small: {e}");
    assert!(e < 2 * 1024 * 1024, "encoder uses {e} B");
    assert!(d < 1024 * 1024, "decoder uses {d} B");
}

#[test]
fn level_only_params_would_be_huge() {
    // Guards the reason for explicit hash/chain logs (DESIGN §4): without them
    // the level's own tables are used. Measured, not assumed.
    let p = CodecParams {
        hash_log: 0,
        chain_log: 0,
        ..CodecParams::default()
    };
    // 0 means "use the level's default" in zstd.
    let mut enc = RecordEncoder::new(&p);
    let mut rec = Vec::new();
    enc.encode(CodecId::Zstd, &text_2k(), &mut rec).unwrap();
    println!(
        "level 19, windowLog 16, default hash/chain: {} B",
        enc.memory_bytes()
    );
    assert!(enc.memory_bytes() > 4 * 1024 * 1024);
}

#[test]
fn zstd_bomb_is_too_large() {
    let mut enc = RecordEncoder::new(&CodecParams::default());
    let zeros = vec![0u8; 10 * 1024 * 1024];
    let rec = encode(&mut enc, CodecId::Zstd, &zeros);
    assert!(rec.len() < 10_000, "bomb is {} B", rec.len());
    let limits = DecoderLimits {
        max_record_bytes: 256 * 1024,
        ..DecoderLimits::default()
    };
    let mut dec = RecordDecoder::new(&limits);
    let mut out = Vec::new();
    let err = dec.decode(&rec, &mut out).unwrap_err();
    assert!(
        matches!(err, CodecError::TooLarge(n) if n == 256 * 1024),
        "{err:?}"
    );
    assert!(
        out.capacity() <= 2 * 256 * 1024,
        "allocated {}",
        out.capacity()
    );
}

#[test]
fn exactly_max_record_bytes_is_accepted() {
    let limits = DecoderLimits {
        max_record_bytes: 100_000,
        ..DecoderLimits::default()
    };
    let mut enc = RecordEncoder::new(&CodecParams::default());
    let mut dec = RecordDecoder::new(&limits);
    let mut out = Vec::new();
    let data = vec![7u8; 100_000];
    dec.decode(&encode(&mut enc, CodecId::Zstd, &data), &mut out)
        .unwrap();
    assert_eq!(out, data);
    let err = dec
        .decode(
            &encode(&mut enc, CodecId::Zstd, &vec![7u8; 100_001]),
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, CodecError::TooLarge(_)), "{err:?}");
    let mut dec = RecordDecoder::new(&limits);
    let err = dec
        .decode(
            &encode(&mut enc, CodecId::Stored, &vec![7u8; 100_001]),
            &mut out,
        )
        .unwrap_err();
    assert!(matches!(err, CodecError::TooLarge(_)), "{err:?}");
}

#[test]
fn window_above_limit_is_rejected() {
    let params = CodecParams {
        window_log: 22,
        ..CodecParams::default()
    };
    let mut enc = RecordEncoder::new(&params);
    let rec = encode(
        &mut enc,
        CodecId::Zstd,
        b"small but the frame asks for 4 MiB",
    );
    let mut dec = RecordDecoder::new(&DecoderLimits {
        max_window_log: 20,
        ..DecoderLimits::default()
    });
    let mut out = Vec::new();
    let err = dec.decode(&rec, &mut out).unwrap_err();
    assert!(matches!(err, CodecError::Corrupt(_)), "{err:?}");
    println!("window 22 vs max 20: {err}");
    // The same window within the limit decodes.
    let mut dec = RecordDecoder::new(&DecoderLimits {
        max_window_log: 22,
        ..DecoderLimits::default()
    });
    dec.decode(&rec, &mut out).unwrap();
    println!(
        "decoder memory for a window-22 stream: {} B",
        dec.memory_bytes()
    );
}

#[test]
fn bad_params_are_errors_not_panics() {
    let p = CodecParams {
        window_log: 99,
        ..CodecParams::default()
    };
    assert!(matches!(p.validate(), Err(CodecError::Params(_))));
    let mut enc = RecordEncoder::new(&p);
    let mut out = vec![1, 2];
    assert!(matches!(
        enc.encode(CodecId::Zstd, b"x", &mut out),
        Err(CodecError::Params(_))
    ));
    assert_eq!(out, [1, 2], "failed encode leaves out untouched");
    assert!(CodecParams::default().validate().is_ok());
    assert!(DecoderLimits::default().validate().is_ok());
    let l = DecoderLimits {
        max_window_log: 99,
        ..DecoderLimits::default()
    };
    assert!(matches!(l.validate(), Err(CodecError::Params(_))));
}

#[test]
fn empty_and_unknown_records() {
    let (_, mut dec) = pair();
    let mut out = vec![9];
    assert!(matches!(dec.decode(&[], &mut out), Err(CodecError::Empty)));
    assert!(out.is_empty());
    dec.reset();
    assert!(matches!(
        dec.decode(&[7, 1, 2], &mut out),
        Err(CodecError::UnknownCodec(7))
    ));
}

#[test]
fn errors_are_final_until_reset() {
    let (mut enc, mut dec) = pair();
    let mut out = Vec::new();
    assert!(dec.decode(&[9], &mut out).is_err());
    let ok = encode(&mut enc, CodecId::Stored, b"fine");
    assert!(matches!(
        dec.decode(&ok, &mut out),
        Err(CodecError::Corrupt(_))
    ));
    dec.reset();
    dec.decode(&ok, &mut out).unwrap();
    assert_eq!(out, b"fine");
}

#[test]
fn truncated_record_is_corrupt() {
    let recs = valid_zstd_records();
    let (_, mut dec) = pair();
    let mut out = Vec::new();
    let r = &recs[0];
    let err = dec.decode(&r[..r.len() - 1], &mut out).unwrap_err();
    assert!(matches!(err, CodecError::Corrupt(_)), "{err:?}");
}

/// Encodes and decodes each record in turn, both sides reset before record
/// `reset_at`: every record comes back as it was.
fn round_trip_records(
    enc: &mut RecordEncoder,
    dec: &mut RecordDecoder,
    recs: &[(CodecId, Vec<u8>)],
    reset_at: Option<usize>,
) -> Result<(), TestCaseError> {
    let mut out = Vec::new();
    for (i, (codec, data)) in recs.iter().enumerate() {
        if reset_at == Some(i) {
            enc.reset();
            dec.reset();
        }
        let mut rec = Vec::new();
        enc.encode(*codec, data, &mut rec).unwrap();
        dec.decode(&rec, &mut out).unwrap();
        prop_assert_eq!(&out, data);
    }
    Ok(())
}

/// Flips bit `bit` of the byte at each `at` after the codec byte.
fn flip_bits(rec: &mut [u8], flips: Vec<(prop::sample::Index, u8)>) {
    for (at, bit) in flips {
        let i = 1 + at.index(rec.len() - 1);
        rec[i] ^= 1 << bit;
    }
}

/// A record of `codec` with one bit flipped and cut short decodes to an
/// error or to at most the cap, never a panic.
fn mangled_record_stays_capped(
    pair: impl Fn() -> (RecordEncoder, RecordDecoder),
    codec: CodecId,
    flip: usize,
    bit: u8,
    cut: usize,
) -> Result<(), TestCaseError> {
    let (mut enc, _) = pair();
    let mut rec = encode(&mut enc, codec, &mail_message());
    let i = 1 + flip % (rec.len() - 1);
    rec[i] ^= 1 << bit;
    let cut = 1 + cut % rec.len();
    let (_, mut dec) = pair();
    let mut out = Vec::new();
    if dec.decode(&rec[..cut], &mut out).is_ok() {
        prop_assert!(out.len() <= DecoderLimits::default().max_record_bytes);
    }
    Ok(())
}

fn arb_codec() -> impl Strategy<Value = CodecId> {
    prop_oneof![Just(CodecId::Stored), Just(CodecId::Zstd)]
}

/// Mostly compressible data: repeats from a small alphabet, plus noise.
fn arb_data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        prop::collection::vec(prop::sample::select(b"abc \r\n".to_vec()), 0..3000),
        (any::<u8>(), 0usize..70_000).prop_map(|(b, n)| vec![b; n]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip_mixed_codecs(
        recs in prop::collection::vec((arb_codec(), arb_data()), 1..24),
        reset_at in prop::option::of(0usize..24),
    ) {
        let (mut enc, mut dec) = pair();
        round_trip_records(&mut enc, &mut dec, &recs, reset_at)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn prop_arbitrary_bytes_never_panic(
        recs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
    ) {
        let mut dec = RecordDecoder::new(&DecoderLimits::default());
        let mut out = Vec::new();
        for r in recs {
            let _ = dec.decode(&r, &mut out);
            prop_assert!(out.len() <= DecoderLimits::default().max_record_bytes);
        }
    }

    #[test]
    fn prop_arbitrary_zstd_body_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        // Start with a valid header so the fuzz reaches the block decoder.
        let recs = valid_zstd_records();
        let mut dec = RecordDecoder::new(&DecoderLimits::default());
        let mut out = Vec::new();
        let mut rec = recs[0][..8.min(recs[0].len())].to_vec();
        rec.extend_from_slice(&body);
        let _ = dec.decode(&rec, &mut out);
        let mut rec = vec![CodecId::Zstd as u8];
        rec.extend_from_slice(&body);
        let _ = RecordDecoder::new(&DecoderLimits::default()).decode(&rec, &mut out);
    }

    #[test]
    fn prop_mangled_records_never_panic(
        which in 0usize..3,
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut recs = valid_zstd_records();
        let r = &mut recs[which];
        flip_bits(r, flips);
        if truncate {
            let n = 1 + cut.index(r.len() - 1);
            r.truncate(n);
        }
        let mut dec = RecordDecoder::new(&DecoderLimits::default());
        let mut out = Vec::new();
        for r in &recs {
            if dec.decode(r, &mut out).is_err() {
                break;
            }
        }
    }
}

// ---- Dictionaries ---------------------------------------------------------

fn with_dict(d: Option<Dictionary>) -> (RecordEncoder, RecordDecoder) {
    (
        RecordEncoder::new(&CodecParams {
            dictionary: d,
            ..CodecParams::default()
        }),
        RecordDecoder::new(&DecoderLimits {
            dictionary: d,
            ..DecoderLimits::default()
        }),
    )
}

/// A message shaped like the mail the built-in dictionary was made from.
fn mail_message() -> Vec<u8> {
    b"Return-Path: <yyyy@example.com>\r\nDelivered-To: zzzz@localhost.example.com\r\n\
Received: from localhost (localhost [127.0.0.1])\r\n\tby phobos.labs.example.com (Postfix) with ESMTP id 1A2B3C4D5E\r\n\
\tfor <zzzz@localhost>; Thu, 22 Aug 2002 12:36:23 -0400 (EDT)\r\nMessage-ID: <1234.5678@example.com>\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\nContent-Transfer-Encoding: 7bit\r\n\
Subject: Re: New Sequences Window\r\n\r\nI think the problem is that the list is not being updated when you\r\n\
unsubscribe from the mailing list. Please let me know if you have any questions.\r\n"
        .to_vec()
}

#[test]
fn builtin_dictionary_round_trips_and_shrinks_cold_records() {
    let m = mail_message();
    let mut sizes = Vec::new();
    for d in [None, Some(MAIL_V1)] {
        let (mut enc, mut dec) = with_dict(d);
        let mut out = Vec::new();
        let rec = encode(&mut enc, CodecId::Zstd, &m);
        dec.decode(&rec, &mut out).unwrap();
        assert_eq!(out, m);
        // History keeps working on top of the dictionary.
        let again = encode(&mut enc, CodecId::Zstd, b"second record, after the first");
        dec.decode(&again, &mut out).unwrap();
        assert_eq!(out, b"second record, after the first");
        sizes.push(rec.len());
    }
    println!(
        "cold mail record: {} B without, {} B with dictionary",
        sizes[0], sizes[1]
    );
    assert!(sizes[1] * 10 < sizes[0] * 9, "{sizes:?}");
}

#[test]
fn dictionary_is_shared_not_copied() {
    let (mut e0, mut d0) = with_dict(None);
    let (mut e1, mut d1) = with_dict(Some(MAIL_V1));
    let mut out = Vec::new();
    let m = mail_message();
    d0.decode(&encode(&mut e0, CodecId::Zstd, &m), &mut out)
        .unwrap();
    d1.decode(&encode(&mut e1, CodecId::Zstd, &m), &mut out)
        .unwrap();
    // The 1 MiB prefix is referenced: contexts grow by far less than it.
    let grow = (e1.memory_bytes() + d1.memory_bytes())
        .saturating_sub(e0.memory_bytes() + d0.memory_bytes());
    assert!(grow < MAIL_V1.bytes().len() / 4, "grew {grow} B");
}

#[test]
fn dictionary_survives_reset() {
    let (mut enc, mut dec) = with_dict(Some(MAIL_V1));
    let mut out = Vec::new();
    let m = mail_message();
    let first = encode(&mut enc, CodecId::Zstd, &m);
    dec.decode(&first, &mut out).unwrap();
    enc.reset();
    dec.reset();
    // After a reset both sides start again from the dictionary alone.
    let after = encode(&mut enc, CodecId::Zstd, &m);
    assert_eq!(after, first);
    dec.decode(&after, &mut out).unwrap();
    assert_eq!(out, m);
}

#[test]
fn mismatched_dictionary_never_yields_the_message() {
    let m = mail_message();
    let (mut enc, _) = with_dict(Some(MAIL_V1));
    let rec = encode(&mut enc, CodecId::Zstd, &m);
    let other =
        Dictionary::leak(99, DictKind::Prefix, b"unrelated priming text ".repeat(500)).unwrap();
    for d in [None, Some(other)] {
        let (_, mut dec) = with_dict(d);
        let mut out = Vec::new();
        // zstd has no checksum here: a wrong dictionary is either an error or
        // different bytes, never a panic. The handshake must agree on the id.
        if dec.decode(&rec, &mut out).is_ok() {
            assert_ne!(out, m);
        }
    }
}

#[test]
fn trained_dictionary_round_trip_and_magic_check() {
    let samples: Vec<Vec<u8>> = (0..400)
        .map(|i| {
            format!(
                "Subject: order {i}\r\nFrom: shop{}@example.com\r\n\r\nYour order {} has shipped.\r\n",
                i % 17,
                i * 7919
            )
            .into_bytes()
        })
        .collect();
    let bytes = ::zstd::dict::from_samples(&samples, 4096).unwrap();
    let d = Dictionary::leak(7, DictKind::Trained, bytes).unwrap();
    assert_eq!((d.id(), d.kind()), (7, DictKind::Trained));
    let (mut enc, mut dec) = with_dict(Some(d));
    let mut out = Vec::new();
    let m = b"Subject: order 5000\r\nFrom: shop3@example.com\r\n\r\nYour order 1 has shipped.\r\n";
    let rec = encode(&mut enc, CodecId::Zstd, m);
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, m);
    assert!(rec.len() < m.len() / 2, "{} B", rec.len());
    // Raw text is not a trained dictionary.
    assert!(matches!(
        Dictionary::leak(8, DictKind::Trained, b"plain text".to_vec()),
        Err(CodecError::Params(_))
    ));
    assert!(Dictionary::trained(8, b"plain text").is_err());
}

#[test]
fn builtin_lookup_and_slow_link_profile() {
    assert_eq!(Dictionary::builtin(MAIL_V1_ID), Some(MAIL_V1));
    assert_eq!(Dictionary::builtin(12345), None);
    assert!(Dictionary::builtin_ids().contains(&MAIL_V1_ID));
    assert!(
        MAIL_V1.bytes().len() > 512 * 1024,
        "dicts/mail-v1.prefix missing?"
    );
    let p = CodecParams::slow_link();
    let l = DecoderLimits::slow_link();
    p.validate().unwrap();
    l.validate().unwrap();
    assert_eq!(p.dictionary, l.dictionary);
    assert_eq!(p.window_log, l.max_window_log);
    // Budget (docs/codec.md): both directions of a tunnel within 8 MiB.
    let mut enc = RecordEncoder::new(&p);
    let mut dec = RecordDecoder::new(&l);
    let mut out = Vec::new();
    let mut data = Vec::new();
    while data.len() < 3 << 20 {
        data.extend_from_slice(&text_2k());
        data.extend_from_slice(&(data.len() as u64).to_le_bytes());
    }
    for c in data.chunks(64 * 1024) {
        dec.decode(&encode(&mut enc, CodecId::Zstd, c), &mut out)
            .unwrap();
        assert_eq!(out, c);
    }
    let total = enc.memory_bytes() + dec.memory_bytes();
    println!("slow_link: {total} B per tunnel (encoder + decoder)");
    assert!(total <= 8 << 20, "{total} B");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn prop_dictionary_round_trip(
        recs in prop::collection::vec((arb_codec(), arb_data()), 1..12),
        reset_at in prop::option::of(0usize..12),
    ) {
        let (mut enc, mut dec) = with_dict(Some(MAIL_V1));
        round_trip_records(&mut enc, &mut dec, &recs, reset_at)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn prop_hostile_records_with_dictionary_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..400),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 0..4),
    ) {
        let limits = DecoderLimits { dictionary: Some(MAIL_V1), ..DecoderLimits::default() };
        let mut out = Vec::new();
        // Arbitrary bytes after the codec byte.
        let mut rec = vec![CodecId::Zstd as u8];
        rec.extend_from_slice(&body);
        let _ = RecordDecoder::new(&limits).decode(&rec, &mut out);
        prop_assert!(out.len() <= limits.max_record_bytes);
        // A valid dictionary record with bits flipped: offsets may now point
        // anywhere into (or before) the dictionary.
        let (mut enc, _) = with_dict(Some(MAIL_V1));
        let mut good = encode(&mut enc, CodecId::Zstd, &mail_message());
        flip_bits(&mut good, flips);
        let _ = RecordDecoder::new(&limits).decode(&good, &mut out);
        prop_assert!(out.len() <= limits.max_record_bytes);
    }
}

// ---- CM codec ------------------------------------------------------------------

/// Small and unprimed, so that tests run fast.
pub(super) const SMALL_CM: CmParams = CmParams {
    table_log: 16,
    match_log: 12,
    priming: None,
};

pub(super) fn cm_pair(cm: CmParams) -> (RecordEncoder, RecordDecoder) {
    let p = CodecParams {
        cm: Some(cm),
        ..CodecParams::default()
    };
    let l = DecoderLimits {
        cm: Some(cm),
        ..DecoderLimits::default()
    };
    (
        RecordEncoder::with_bulk(&p, &p),
        RecordDecoder::with_bulk(&l, &l),
    )
}

/// Sends `data` as one bulk unit cut at `cuts` (offsets into the compressed
/// unit) and returns what the decoder produced after each slice.
fn bulk_through(
    enc: &mut RecordEncoder,
    dec: &mut RecordDecoder,
    data: &[u8],
    cuts: &[usize],
) -> Vec<Vec<u8>> {
    assert_eq!(enc.bulk_codec(), CodecId::CmBulk);
    let mut unit = Vec::new();
    enc.encode_bulk_unit(data, &mut unit).unwrap();
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (unit.len() + 1)).collect();
    at.push(0);
    at.push(unit.len());
    at.sort_unstable();
    at.dedup();
    let mut outs = Vec::new();
    let mut out = Vec::new();
    for w in at.windows(2) {
        let mut rec = vec![CodecId::CmBulk as u8];
        rec.extend_from_slice(&unit[w[0]..w[1]]);
        dec.decode(&rec, &mut out).unwrap();
        outs.push(out.clone());
    }
    outs
}

#[test]
fn cm_records_round_trip_and_learn_across_records() {
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let m = mail_message();
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    // Many records: the model must stay in step all the way.
    for i in 0..200 {
        let data = if i % 3 == 0 {
            m.clone()
        } else {
            format!("A{i:04} FETCH {i} (FLAGS (\\Seen) UID {})\r\n", i * 7).into_bytes()
        };
        let rec = encode(&mut enc, CodecId::Cm, &data);
        assert_eq!(rec[0], CodecId::Cm as u8);
        dec.decode(&rec, &mut out).unwrap();
        assert_eq!(out, data, "record {i}");
        if i % 3 == 0 {
            sizes.push(rec.len());
        }
    }
    println!("mail message {} B: records {sizes:?}", m.len());
    // Seen before: far smaller than the first time.
    assert!(sizes[10] * 4 < sizes[0], "{sizes:?}");
    for data in [&b""[..], b"x"] {
        let rec = encode(&mut enc, CodecId::Cm, data);
        dec.decode(&rec, &mut out).unwrap();
        assert_eq!(out, data);
    }
}

#[test]
fn cm_bulk_units_decode_incrementally_from_any_slices() {
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let m = mail_message().repeat(3);
    for round in 0..5 {
        let outs = bulk_through(&mut enc, &mut dec, &m, &[7, 100, 101, 350, 351, 352]);
        let all: Vec<u8> = outs.concat();
        assert_eq!(all, m, "round {round}");
        // Bytes come out before the unit is complete (the first, cold unit
        // is long enough for the cuts to fall inside it).
        if round == 0 {
            assert!(!outs[1].is_empty() && !outs[2].is_empty());
        }
    }
    // Interactive records between bulk slices use their own context.
    let rec = encode(&mut enc, CodecId::Cm, b"* OK still here");
    let mut out = Vec::new();
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, b"* OK still here");
    // Several units in one slice, and a unit split in its header.
    let mut two = Vec::new();
    enc.encode_bulk_unit(b"first unit ", &mut two).unwrap();
    enc.encode_bulk_unit(b"second unit", &mut two).unwrap();
    let mut got = Vec::new();
    for part in [&two[..1], &two[1..]] {
        let mut rec = vec![CodecId::CmBulk as u8];
        rec.extend_from_slice(part);
        dec.decode(&rec, &mut out).unwrap();
        got.extend_from_slice(&out);
    }
    assert_eq!(got, b"first unit second unit");
}

#[test]
fn cm_incompressible_data_goes_raw_and_stays_in_step() {
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let noise = noise(3000, 0x1234_5678);
    let mut out = Vec::new();
    let rec = encode(&mut enc, CodecId::Cm, &noise);
    assert!(rec.len() <= noise.len() + 4, "{}", rec.len());
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, noise);
    let outs = bulk_through(&mut enc, &mut dec, &noise, &[1, 2, 1000]);
    assert_eq!(outs.concat(), noise);
    let m = mail_message();
    let rec = encode(&mut enc, CodecId::Cm, &m);
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, m);
}

/// Compressed content (a PNG's bytes, say) inside a bulk unit travels raw
/// and never enters the text model: text after it codes exactly as if the
/// binary had never been sent, and everything decodes byte-exact.
#[test]
fn cm_binary_runs_bypass_the_text_model() {
    // Runs are classed in 4 KiB blocks: align the parts to them.
    let mut m = mail_message().repeat(4096 / mail_message().len() + 1);
    m.truncate(4096);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&noise(5 * 4096 - 8, 99));
    let mut mixed = m.clone();
    mixed.extend_from_slice(&png);
    mixed.extend_from_slice(&m);

    let (mut enc, _) = cm_pair(SMALL_CM);
    let (mut twin, _) = cm_pair(SMALL_CM);
    let mut unit = Vec::new();
    enc.encode_bulk_unit(&mixed, &mut unit).unwrap();
    // The twin sees the same text without the binary in between.
    let mut twin_unit = Vec::new();
    twin.encode_bulk_unit(&[&m[..], &m[..]].concat(), &mut twin_unit)
        .unwrap();
    // Binary goes raw: the unit is hardly bigger than text + binary.
    assert!(
        unit.len() <= twin_unit.len() + png.len() + 16,
        "{} vs {} + {}",
        unit.len(),
        twin_unit.len(),
        png.len()
    );
    let mut twin_out = Vec::new();
    twin.encode_bulk_unit(&m, &mut twin_out).unwrap();
    let mut again = Vec::new();
    enc.encode_bulk_unit(&m, &mut again).unwrap();
    assert_eq!(again, twin_out, "the binary changed the text model");
    // The decoder stays in step through the raw run, from any slices.
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    for _ in 0..2 {
        let outs = bulk_through(&mut enc, &mut dec, &mixed, &[5, 3000, 3001, 9000, 20_000]);
        assert_eq!(outs.concat(), mixed);
    }
    let rec = encode(&mut enc, CodecId::Cm, &png);
    let mut out = Vec::new();
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, png);
}

#[test]
fn binary_class_is_near_uniform_bytes_only() {
    use super::cm::is_binary;
    assert!(is_binary(&noise(600, 5)));
    assert!(is_binary(&noise(100_000, 6)));
    assert!(!is_binary(&noise(400, 7)), "too short to tell");
    assert!(!is_binary(&mail_message()));
    let b64 = noise(3000, 8)
        .iter()
        .map(|b| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(*b & 63) as usize]
        })
        .collect::<Vec<u8>>();
    assert!(!is_binary(&b64), "base64 text has 64 symbols");
}

#[test]
fn cm_reset_matches_a_fresh_context() {
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let m = mail_message();
    let mut out = Vec::new();
    dec.decode(&encode(&mut enc, CodecId::Cm, &m), &mut out)
        .unwrap();
    bulk_through(&mut enc, &mut dec, &m, &[50]);
    assert!(enc.memory_bytes() > 0 && dec.memory_bytes() > 0);
    enc.reset();
    dec.reset();
    assert_eq!(enc.memory_bytes(), 0);
    assert_eq!(dec.memory_bytes(), 0);
    let (mut fresh, _) = cm_pair(SMALL_CM);
    let a = encode(&mut enc, CodecId::Cm, &m);
    let b = encode(&mut fresh, CodecId::Cm, &m);
    assert_eq!(a, b);
    dec.decode(&a, &mut out).unwrap();
    assert_eq!(out, m);
}

#[test]
fn cm_memory_bytes_is_the_allocation() {
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let mut out = Vec::new();
    dec.decode(&encode(&mut enc, CodecId::Cm, b"hello there"), &mut out)
        .unwrap();
    let want = SMALL_CM.memory_bytes();
    // The hashed table alone is 2^table_log bytes.
    assert!(want > 1 << SMALL_CM.table_log);
    assert_eq!(enc.memory_bytes(), want);
    assert_eq!(dec.memory_bytes(), want);
    let big = CmParams::slow_link(Direction::ServerToClient, Lane::Bulk);
    assert!(big.memory_bytes() >= (1 << big.table_log) + (2 << big.match_log));
}

#[test]
fn cm_slow_link_profile_fits_8_mib_per_tunnel() {
    let mut total = 0;
    for dir in [Direction::ClientToServer, Direction::ServerToClient] {
        for lane in [Lane::Interactive, Lane::Bulk] {
            let p = CmParams::slow_link(dir, lane);
            p.validate().unwrap();
            total += p.memory_bytes();
        }
    }
    println!("cm slow link: {total} B per tunnel");
    assert!(total <= 8 << 20, "{total}");
    assert_eq!(
        CodecParams::slow_link_cm(Direction::ServerToClient, Lane::Bulk).bulk_codec(),
        CodecId::CmBulk
    );
    assert_eq!(CodecParams::slow_link().bulk_codec(), CodecId::ZstdBulk);
}

#[test]
fn cm_primed_model_compresses_cold_mail_and_is_shared() {
    let p = CmParams {
        priming: Some(PRIMING_MAIL_V1),
        ..SMALL_CM
    };
    let (mut cold, _) = cm_pair(SMALL_CM);
    let (mut enc, mut dec) = cm_pair(p);
    let m = mail_message();
    let unprimed = encode(&mut cold, CodecId::Cm, &m);
    let primed = encode(&mut enc, CodecId::Cm, &m);
    println!(
        "cold mail {} B: unprimed {} B, primed {} B",
        m.len(),
        unprimed.len(),
        primed.len()
    );
    assert!(primed.len() < unprimed.len());
    let mut out = Vec::new();
    dec.decode(&primed, &mut out).unwrap();
    assert_eq!(out, m);
    // A second tunnel starts from the same primed copy.
    let (mut enc2, _) = cm_pair(p);
    assert_eq!(encode(&mut enc2, CodecId::Cm, &m), primed);
    assert!(priming_text(PRIMING_MAIL_V1).unwrap().len() > 100_000);
}

#[test]
fn cm_bad_params_and_missing_model_are_errors() {
    let bad = CmParams {
        table_log: 40,
        ..SMALL_CM
    };
    assert!(bad.validate().is_err());
    let unknown = CmParams {
        priming: Some(77),
        ..SMALL_CM
    };
    assert!(unknown.validate().is_err());
    let (mut enc, _) = cm_pair(bad);
    let mut out = Vec::new();
    assert!(enc.encode(CodecId::Cm, b"x", &mut out).is_err());
    assert!(out.is_empty());
    // A decoder without CM parameters refuses CM records.
    let (mut enc, _) = cm_pair(SMALL_CM);
    let rec = encode(&mut enc, CodecId::Cm, b"hello");
    let (_, mut plain) = pair();
    assert!(matches!(
        plain.decode(&rec, &mut out),
        Err(CodecError::UnknownCodec(3))
    ));
    assert_ne!(
        model_id(&[Some(SMALL_CM)]),
        model_id(&[Some(CmParams {
            match_log: 13,
            ..SMALL_CM
        })])
    );
}

#[test]
fn cm_oversized_records_are_too_large() {
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let mut out = Vec::new();
    let zeros = vec![0u8; 300_000];
    let rec = encode(&mut enc, CodecId::Cm, &zeros);
    assert!(rec.len() < 2000, "{}", rec.len());
    assert!(matches!(
        dec.decode(&rec, &mut out),
        Err(CodecError::TooLarge(_))
    ));
    assert!(out.is_empty());
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let mut unit = vec![CodecId::CmBulk as u8];
    enc.encode_bulk_unit(&zeros, &mut unit).unwrap();
    assert!(matches!(
        dec.decode(&unit, &mut out),
        Err(CodecError::TooLarge(_))
    ));
}

fn arb_cm_codec() -> impl Strategy<Value = CodecId> {
    prop_oneof![
        Just(CodecId::Stored),
        Just(CodecId::Cm),
        Just(CodecId::CmBulk)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn prop_cm_round_trip_records_and_sliced_units(
        items in proptest::collection::vec(
            (arb_cm_codec(), arb_data(), proptest::collection::vec(any::<usize>(), 0..6)),
            1..12,
        )
    ) {
        let (mut enc, mut dec) = cm_pair(SMALL_CM);
        let mut out = Vec::new();
        for (codec, data, cuts) in items {
            if codec == CodecId::CmBulk {
                let outs = bulk_through(&mut enc, &mut dec, &data, &cuts);
                let mut so_far = Vec::new();
                for o in &outs {
                    so_far.extend_from_slice(o);
                    prop_assert!(data.starts_with(&so_far));
                }
                prop_assert_eq!(so_far, data);
            } else {
                let rec = encode(&mut enc, codec, &data);
                dec.decode(&rec, &mut out).unwrap();
                prop_assert_eq!(&out, &data);
            }
        }
    }

    #[test]
    fn prop_cm_hostile_input_never_panics_and_stays_capped(
        records in proptest::collection::vec(
            (prop_oneof![Just(3u8), Just(4u8)], proptest::collection::vec(any::<u8>(), 0..300)),
            1..8,
        )
    ) {
        let cm = SMALL_CM;
        let l = DecoderLimits {
            cm: Some(cm),
            max_record_bytes: 4096,
            ..DecoderLimits::default()
        };
        let mut dec = RecordDecoder::with_bulk(&l, &l);
        let mut out = Vec::new();
        for (codec, body) in records {
            let mut rec = vec![codec];
            rec.extend_from_slice(&body);
            match dec.decode(&rec, &mut out) {
                Ok(()) => prop_assert!(out.len() <= 4096),
                Err(_) => prop_assert!(out.is_empty()),
            }
        }
    }

    #[test]
    fn prop_cm_mangled_records_never_panic(flip in any::<usize>(), bit in 0u8..8, cut in any::<usize>()) {
        mangled_record_stays_capped(|| cm_pair(SMALL_CM), CodecId::Cm, flip, bit, cut)?;
    }
}

// ---- LZ4 (fast links) -------------------------------------------------------

#[test]
fn lz4_round_trips_shrinks_text_and_stores_noise() {
    let (mut enc, mut dec) = pair();
    let mut out = Vec::new();
    let m = [mail_message(), text_2k(), mail_message()].concat();
    let rec = encode(&mut enc, CodecId::Lz4, &m);
    assert_eq!(rec[0], CodecId::Lz4 as u8);
    assert!(rec.len() < m.len() * 3 / 4, "{} of {}", rec.len(), m.len());
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, m);
    // Noise does not shrink: it goes stored, one byte of overhead.
    let noise = noise(5000, 0x9e37_79b9_7f4a_7c15);
    let rec = encode(&mut enc, CodecId::Lz4, &noise);
    assert_eq!(rec[0], CodecId::Stored as u8);
    assert_eq!(rec.len(), noise.len() + 1);
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, noise);
    for data in [&b""[..], b"x"] {
        let rec = encode(&mut enc, CodecId::Lz4, data);
        dec.decode(&rec, &mut out).unwrap();
        assert_eq!(out, data);
    }
    // No state: nothing allocated.
    assert_eq!(enc.memory_bytes() + dec.memory_bytes(), 0);
}

/// Records switch codecs as the link speeds up and slows down: the strong
/// codecs' histories only see their own records, in the same order on both
/// sides, so interleaved LZ4 records never put them out of step.
#[test]
fn lz4_interleaved_with_cm_and_zstd_keeps_histories_in_step() {
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let m = mail_message();
    let mut out = Vec::new();
    let codecs = [
        CodecId::Cm,
        CodecId::Lz4,
        CodecId::Zstd,
        CodecId::Lz4,
        CodecId::Cm,
        CodecId::Lz4,
        CodecId::Lz4,
        CodecId::Zstd,
        CodecId::Cm,
    ];
    let mut cm_sizes = Vec::new();
    for (i, &c) in codecs.iter().enumerate() {
        let data = [&m[..], format!("record {i}\r\n").as_bytes()].concat();
        let rec = encode(&mut enc, c, &data);
        if c == CodecId::Cm {
            cm_sizes.push(rec.len());
        }
        dec.decode(&rec, &mut out).unwrap();
        assert_eq!(out, data, "record {i} ({c:?})");
    }
    // The CM history learnt across the LZ4 records in between.
    assert!(cm_sizes[2] < cm_sizes[0] / 2, "{cm_sizes:?}");
}

#[test]
fn lz4_length_above_cap_is_refused_before_allocating() {
    let l = DecoderLimits {
        max_record_bytes: 4096,
        ..DecoderLimits::default()
    };
    let mut dec = RecordDecoder::new(&l);
    let mut out = Vec::new();
    // A valid block of 4097 zeros: refused on its declared length.
    let mut enc = RecordEncoder::new(&CodecParams::default());
    let rec = encode(&mut enc, CodecId::Lz4, &[0u8; 4097]);
    assert_eq!(rec[0], CodecId::Lz4 as u8);
    let err = dec.decode(&rec, &mut out).unwrap_err();
    assert!(matches!(err, CodecError::TooLarge(4096)), "{err:?}");
    // A huge declared length with a tiny body: refused, nothing allocated.
    let mut dec = RecordDecoder::new(&l);
    let mut rec = vec![CodecId::Lz4 as u8];
    crate::wire::put_varint(&mut rec, u64::MAX / 3);
    rec.extend_from_slice(&[0x1f, 0, 0x01, 0x00]);
    let err = dec.decode(&rec, &mut out).unwrap_err();
    assert!(matches!(err, CodecError::TooLarge(4096)), "{err:?}");
    assert!(out.capacity() < 4096);
    // Exactly the cap is fine.
    let mut dec = RecordDecoder::new(&l);
    let rec = encode(&mut enc, CodecId::Lz4, &[7u8; 4096]);
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, vec![7u8; 4096]);
}

#[test]
fn lz4_length_mismatch_and_truncation_are_corrupt() {
    let (mut enc, _) = pair();
    let m = mail_message();
    let rec = encode(&mut enc, CodecId::Lz4, &m);
    let mut out = Vec::new();
    // Declared length one more than the block holds.
    let mut body = &rec[1..];
    let n = crate::wire::get_varint(&mut body).unwrap();
    let mut lied = vec![CodecId::Lz4 as u8];
    crate::wire::put_varint(&mut lied, n + 1);
    lied.extend_from_slice(body);
    let (_, mut dec) = pair();
    assert!(matches!(
        dec.decode(&lied, &mut out),
        Err(CodecError::Corrupt(_))
    ));
    let (_, mut dec) = pair();
    assert!(dec.decode(&rec[..rec.len() - 3], &mut out).is_err());
    assert!(out.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn prop_lz4_round_trip(data in arb_data()) {
        let (mut enc, mut dec) = pair();
        let rec = encode(&mut enc, CodecId::Lz4, &data);
        prop_assert!(rec.len() <= data.len() + 1);
        let mut out = Vec::new();
        dec.decode(&rec, &mut out).unwrap();
        prop_assert_eq!(out, data);
    }

    /// Arbitrary bodies, with and without a plausible length prefix: an
    /// error or at most the cap, never a panic.
    #[test]
    fn prop_lz4_hostile_bodies_never_panic(
        len in prop_oneof![0u64..5000, any::<u64>()],
        prefixed in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 0..2000),
    ) {
        let l = DecoderLimits {
            max_record_bytes: 4096,
            ..DecoderLimits::default()
        };
        let mut dec = RecordDecoder::new(&l);
        let mut rec = vec![CodecId::Lz4 as u8];
        if prefixed {
            crate::wire::put_varint(&mut rec, len);
        }
        rec.extend_from_slice(&body);
        let mut out = Vec::new();
        match dec.decode(&rec, &mut out) {
            Ok(()) => prop_assert!(out.len() <= 4096),
            Err(_) => prop_assert!(out.is_empty()),
        }
    }

    #[test]
    fn prop_lz4_mangled_records_never_panic(flip in any::<usize>(), bit in 0u8..8, cut in any::<usize>()) {
        mangled_record_stays_capped(pair, CodecId::Lz4, flip, bit, cut)?;
    }
}

/// SMALL_CM with a static match text (registered once per test process):
/// long lines no other test text has, so only the static model knows them.
fn static_cm() -> (CmParams, Vec<u8>) {
    fn template() -> Vec<u8> {
        let mut t = String::new();
        for i in 0..400u32 {
            t.push_str(&format!(
                "<tr><td class=\"q{}\">offer {} zebra-{}</td></tr>\r\n",
                i.wrapping_mul(2_654_435_761) % 9973,
                i * 31 % 1000,
                i.wrapping_mul(40_503) % 65_521
            ));
        }
        t.into_bytes()
    }
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let id = *ID.get_or_init(|| {
        let mut st = text_2k();
        st.extend_from_slice(&template());
        st.extend_from_slice(&mail_message());
        register_priming_with_static(mail_message(), st)
    });
    (
        CmParams {
            priming: Some(id),
            ..SMALL_CM
        },
        template(),
    )
}

#[test]
fn cm_static_match_model_finds_text_beyond_the_history() {
    let (p, tpl) = static_cm();
    let plain = CmParams {
        priming: Some(register_priming_text(mail_message())),
        ..SMALL_CM
    };
    let (mut enc0, _) = cm_pair(plain);
    let (mut enc, mut dec) = cm_pair(p);
    let without = encode(&mut enc0, CodecId::Cm, &tpl);
    let with = encode(&mut enc, CodecId::Cm, &tpl);
    println!(
        "template {} B: without static {} B, with {} B",
        tpl.len(),
        without.len(),
        with.len()
    );
    assert!(with.len() * 5 < without.len());
    let mut out = Vec::new();
    dec.decode(&with, &mut out).unwrap();
    assert_eq!(out, tpl);
    // Incremental bulk decoding stays in step, and a fresh pair codes alike.
    let mut data = tpl.clone();
    data.extend_from_slice(b"\r\nsomething else entirely, then the template again\r\n");
    data.extend_from_slice(&tpl[1000..]);
    let outs = bulk_through(&mut enc, &mut dec, &data, &[1, 7, 50, 51, 300]);
    assert_eq!(outs.concat(), data);
    let (mut enc2, _) = cm_pair(p);
    assert_eq!(encode(&mut enc2, CodecId::Cm, &tpl), with);
    assert!(shared_static_bytes() >= 4 * tpl.len());
    // The model id tells a static model from a plain one.
    assert_ne!(model_id(&[Some(p)]), model_id(&[Some(plain)]));
    assert_ne!(
        model_id(&[Some(CmParams::slow_link(
            Direction::ServerToClient,
            Lane::Bulk
        ))]),
        model_id(&[Some(CmParams {
            priming: Some(PRIMING_MAIL_V1),
            ..CmParams::slow_link(Direction::ServerToClient, Lane::Bulk)
        })])
    );
}

#[test]
fn cm_static_hostile_input_never_panics() {
    let (p, _) = static_cm();
    let l = DecoderLimits {
        cm: Some(p),
        max_record_bytes: 4096,
        ..DecoderLimits::default()
    };
    let mut x: u32 = 12345;
    for round in 0..64 {
        let mut dec = RecordDecoder::with_bulk(&l, &l);
        let mut out = Vec::new();
        for _ in 0..4 {
            let mut rec = vec![if round % 2 == 0 { 3u8 } else { 4u8 }];
            for _ in 0..(x % 300) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                rec.push((x >> 16) as u8);
            }
            // Errors are fine; panics and overruns are not.
            let _ = dec.decode(&rec, &mut out);
            assert!(out.len() <= 4096 * 4);
        }
    }
}

#[test]
fn cm_builtin_static_text_is_shared_once() {
    let p = CmParams {
        priming: Some(PRIMING_MAIL_V2),
        ..SMALL_CM
    };
    p.warm_up().unwrap();
    let shared = shared_static_bytes();
    // 11 MB of text and its 32 MiB index, whatever other tests registered.
    assert!(shared >= 11_000_000 + (4 << 23), "{shared}");
    assert_eq!(priming_text(PRIMING_MAIL_V2), priming_text(PRIMING_MAIL_V1));
    // More contexts and tunnels: nothing more shared, a few bytes each.
    let big = CmParams::slow_link(Direction::ClientToServer, Lane::Interactive);
    assert_eq!(big.priming, Some(PRIMING_DIALOGUE_V1));
    let bulk = CmParams::slow_link(Direction::ServerToClient, Lane::Bulk);
    assert_eq!(bulk.priming, Some(PRIMING_MAIL_V2));
    let (mut enc, mut dec) = cm_pair(p);
    let m = mail_message();
    let rec = encode(&mut enc, CodecId::Cm, &m);
    let mut out = Vec::new();
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, m);
    assert!(shared_static_bytes() < shared + 1_000_000);
}

/// The interactive lanes are primed with protocol dialogue too: a server's
/// replies of a first IMAP and SMTP session (other numbers, names and tags
/// than in the dialogue text) cost fewer wire bytes, and decode exactly.
#[test]
fn cm_dialogue_priming_shrinks_first_replies() {
    let replies: [&[u8]; 8] = [
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot (Ubuntu) ready.\r\n",
        b"* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN\r\nK7 OK Pre-login capabilities listed, post-login capabilities have more.\r\n",
        b"K8 OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ NOTIFY SPECIAL-USE] Logged in\r\n",
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n* 57 EXISTS\r\n* 2 RECENT\r\n* OK [UNSEEN 41] First unseen.\r\n* OK [UIDVALIDITY 1623456789] UIDs valid\r\n* OK [UIDNEXT 412] Predicted next UID\r\nK9 OK [READ-WRITE] Select completed (0.002 + 0.000 + 0.001 secs).\r\n",
        b"K10 OK Logout completed (0.001 + 0.000 secs).\r\n",
        b"220 mx.example.net ESMTP Postfix (Ubuntu)\r\n",
        b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n",
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 9C1E2A0F3B\r\n221 2.0.0 Bye\r\n",
    ];
    let wire = |priming| {
        let p = CmParams {
            priming: Some(priming),
            ..CmParams::slow_link(Direction::ServerToClient, Lane::Interactive)
        };
        let (mut enc, mut dec) = cm_pair(p);
        let mut n = 0;
        for r in replies {
            let rec = encode(&mut enc, CodecId::Cm, r);
            n += rec.len();
            let mut out = Vec::new();
            dec.decode(&rec, &mut out).unwrap();
            assert_eq!(out, r);
        }
        n
    };
    let raw: usize = replies.iter().map(|r| r.len()).sum();
    let (mail, dialogue) = (wire(PRIMING_MAIL_V2), wire(PRIMING_DIALOGUE_V1));
    eprintln!("first-session replies: raw {raw} B, mail priming {mail} B, + dialogue {dialogue} B");
    assert!(
        dialogue * 10 < mail * 8,
        "dialogue {dialogue} vs mail {mail}"
    );
}
