//! The CM ratio cap: a few coded bytes may not declare a huge output.

use std::time::{Duration, Instant};

use super::*;
use crate::wire::put_varint;

use super::tests::{SMALL_CM, cm_pair};

/// `codec | varint (n << 1) | [varint clen] | coded` of all zeros.
fn hostile_record(codec: CodecId, n: u64, coded: usize) -> Vec<u8> {
    let mut rec = vec![codec as u8];
    put_varint(&mut rec, n << 1);
    if codec == CodecId::CmBulk {
        put_varint(&mut rec, coded as u64);
    }
    rec.resize(rec.len() + coded, 0);
    rec
}

#[test]
fn cm_record_of_20_bytes_declaring_256k_is_refused_quickly() {
    let (_, mut dec) = cm_pair(SMALL_CM);
    let rec = hostile_record(CodecId::Cm, 256 * 1024, 16);
    assert!(rec.len() <= 20, "{}", rec.len());
    let mut out = Vec::new();
    let start = Instant::now();
    let res = dec.decode(&rec, &mut out);
    assert!(
        matches!(res, Err(CodecError::RatioTooHigh { declared, coded: 16 }) if declared == 256 * 1024),
        "{res:?}"
    );
    assert!(out.is_empty());
    assert!(
        start.elapsed() < Duration::from_millis(50),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn cm_bulk_segment_declaring_too_much_is_refused() {
    let (_, mut dec) = cm_pair(SMALL_CM);
    let rec = hostile_record(CodecId::CmBulk, 200 * 1024, 20);
    let mut out = Vec::new();
    let res = dec.decode(&rec, &mut out);
    assert!(
        matches!(res, Err(CodecError::RatioTooHigh { coded: 20, .. })),
        "{res:?}"
    );
}

#[test]
fn cm_ratio_floor_and_cap_are_exact() {
    // Up to the floor anything goes; above it one coded byte per 256.
    for (n, coded, ok) in [
        (4096, 1, true),
        (4097, 16, false),
        (4097, 17, true),
        (256 * 256, 255, false),
        (256 * 256, 256, true),
    ] {
        let (_, mut dec) = cm_pair(SMALL_CM);
        let res = dec.decode(&hostile_record(CodecId::Cm, n, coded), &mut Vec::new());
        let refused = matches!(res, Err(CodecError::RatioTooHigh { .. }));
        assert_eq!(!refused, ok, "n {n} coded {coded}: {res:?}");
    }
}

#[test]
fn cm_encoder_pads_long_runs_so_its_own_records_pass() {
    let (mut enc, mut dec) = cm_pair(SMALL_CM);
    let mut out = Vec::new();
    for data in [
        vec![0u8; 256 * 1024],
        vec![b'a'; 60 * 1024],
        vec![7u8; 4097],
    ] {
        let mut rec = Vec::new();
        enc.encode(CodecId::Cm, &data, &mut rec).unwrap();
        // Padded up to the cap, and still far smaller than the data.
        let (n, c) = (data.len(), rec.len());
        assert!(
            c * 256 >= n && c * 200 < n,
            "{n} -> {c}: ratio not in (200, 256]"
        );
        dec.decode(&rec, &mut out).unwrap();
        assert!(out == data);
    }
    // Bulk units too, cut into slices anywhere.
    let data = vec![0u8; 200 * 1024];
    let mut unit = Vec::new();
    enc.encode_bulk_unit(&data, &mut unit).unwrap();
    assert!(unit.len() * 256 >= data.len(), "{}", unit.len());
    let mut got = Vec::new();
    for slice in unit.chunks(100) {
        let mut rec = vec![CodecId::CmBulk as u8];
        rec.extend_from_slice(slice);
        dec.decode(&rec, &mut out).unwrap();
        got.extend_from_slice(&out);
    }
    assert!(got == data);
    // And the model stays in step afterwards.
    let text = b"A0001 FETCH 1 (FLAGS (\\Seen))\r\n".repeat(20);
    let mut rec = Vec::new();
    enc.encode(CodecId::Cm, &text, &mut rec).unwrap();
    dec.decode(&rec, &mut out).unwrap();
    assert_eq!(out, text);
}
