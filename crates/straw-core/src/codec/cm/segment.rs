//! Segments: the unit the coder flushes. Layout `varint (n << 1 | raw)`,
//! then for a coded segment (bulk units only) `varint clen` and `clen`
//! coded bytes; a raw segment is `n` plain bytes (incompressible data; the
//! model still learns them unless they are binary). A per-record segment
//! takes the rest of the record as its coded bytes.

use super::coder::encode_segment;
use super::model::Model;
use crate::codec::CodecError;
use crate::wire::put_varint;

/// CM decodes ~0.5 MB/s of highly predictable output (a run of one byte),
/// and a few coded bytes can declare any amount of it: 20 bytes once cost
/// 0.55 s of CPU. A coded segment of more than [`CM_RATIO_FLOOR`] bytes must
/// carry at least one coded byte per [`MAX_CM_RATIO`] plain bytes, so a
/// wire byte costs at most ~0.5 ms of decoding. New mail codes at 10-25x,
/// mail the model already holds (history, or the static training text) at up
/// to ~240x (the corpus, slow-link profile); only long runs of one byte go
/// higher (256 KiB of zeros codes to 97 bytes). Whatever goes higher, the
/// encoder pads with zeros, which the decoder reads past the end of a
/// segment anyway ([`min_coded_len`]): its records always pass.
pub(crate) const MAX_CM_RATIO: u64 = 256;
/// Segments up to this size may code to anything (a small record's cost is
/// bounded anyway).
pub(crate) const CM_RATIO_FLOOR: u64 = 4096;

/// Fewest coded bytes a segment of `n` plain bytes may have.
pub(super) fn min_coded_len(n: u64) -> u64 {
    if n <= CM_RATIO_FLOOR {
        0
    } else {
        n.div_ceil(MAX_CM_RATIO)
    }
}

/// Refuses a coded segment whose declared size exceeds the ratio cap.
pub(super) fn check_ratio(n: u64, coded: u64) -> Result<(), CodecError> {
    if coded < min_coded_len(n) {
        return Err(CodecError::RatioTooHigh { declared: n, coded });
    }
    Ok(())
}

/// Already-compressed bytes (JPEG, PNG, ZIP, gzip, PDF streams, ciphertext):
/// byte values nearly uniform, i.e. a collision probability within 1.5× of
/// 1/256. Such segments travel raw and the model does not learn them, so
/// they never pollute the text history. Both peers apply it to the same raw
/// segment, so no flag is needed. Integer-only: bit-identical everywhere.
pub(crate) fn is_binary(data: &[u8]) -> bool {
    if data.len() < 512 {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[b as usize] += 1;
    }
    let n = data.len() as u64;
    let sum_sq: u64 = counts.iter().map(|&c| u64::from(c) * u64::from(c)).sum();
    256 * sum_sq <= 3 * n * n / 2 + 256 * n
}

/// Splits a unit into runs of like content: 4 KiB blocks classed by
/// [`is_binary`], neighbours of one class merged, a short tail kept with the
/// run before it.
pub(super) fn content_runs(data: &[u8]) -> Vec<&[u8]> {
    const BLOCK: usize = 4096;
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let end = (at + BLOCK).min(data.len());
        let bin = if end - at < BLOCK && !runs.is_empty() {
            runs.last().expect("not empty").2
        } else {
            is_binary(&data[at..end])
        };
        match runs.last_mut() {
            Some(last) if last.2 == bin => last.1 = end,
            _ => runs.push((at, end, bin)),
        }
        at = end;
    }
    runs.into_iter().map(|(a, b, _)| &data[a..b]).collect()
}

/// Appends `data` as one segment: coded by `m` if it is text and coding
/// pays, else raw. `with_clen`: a bulk unit's segment says its coded length
/// (a record's segment takes the rest of the record).
pub(super) fn put_segment(m: &mut Model, data: &[u8], with_clen: bool, out: &mut Vec<u8>) {
    let mut coded = Vec::with_capacity(data.len() / 2 + 8);
    if !is_binary(data) && encode_segment(m, data, &mut coded) {
        // Trailing zeros decode as the implicit ones past the end did.
        let floor = min_coded_len(data.len() as u64) as usize;
        if coded.len() < floor {
            coded.resize(floor, 0);
        }
        put_varint(out, (data.len() as u64) << 1);
        if with_clen {
            put_varint(out, coded.len() as u64);
        }
        out.extend_from_slice(&coded);
    } else {
        put_varint(out, (data.len() as u64) << 1 | 1);
        out.extend_from_slice(data);
    }
}

/// A segment header's varint, if the input holds all of it.
pub(super) fn take_varint(inp: &[u8], ip: &mut usize) -> Result<Option<u64>, CodecError> {
    let mut v: u64 = 0;
    for (i, &b) in inp[*ip..].iter().enumerate() {
        if i >= 9 {
            break;
        }
        v |= ((b & 0x7F) as u64) << (7 * i);
        if b & 0x80 == 0 {
            *ip += i + 1;
            return Ok(Some(v));
        }
    }
    if inp.len() - *ip >= 9 {
        return Err(CodecError::Corrupt("cm segment header too long".into()));
    }
    Ok(None)
}
