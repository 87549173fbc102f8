//! The cheap codec for fast links: LZ4 block format, one independent block
//! per record (`varint raw length || block`). No shared history, so it costs
//! no memory and never has to stay in step with the peer; its speed (hundreds
//! of MB/s) keeps the CPU off the critical path when the link is fast.

use super::CodecError;
use crate::wire::{get_varint, put_varint};

/// Appends `varint len || lz4 block` and returns true, or leaves `out` as it
/// was and returns false when the block would not be smaller than `frames`
/// (the caller then sends the record stored).
pub(super) fn encode(frames: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    put_varint(out, frames.len() as u64);
    let head = out.len();
    out.resize(
        head + lz4_flex::block::get_maximum_output_size(frames.len()),
        0,
    );
    match lz4_flex::block::compress_into(frames, &mut out[head..]) {
        Ok(n) if head - start + n < frames.len() => {
            out.truncate(head + n);
            true
        }
        _ => {
            out.truncate(start);
            false
        }
    }
}

/// Decodes one record body into `out`. The declared length is checked
/// against `max` before anything is allocated (bomb guard), and the block
/// must fill exactly that length.
pub(super) fn decode(mut body: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let len = get_varint(&mut body).map_err(|e| CodecError::Corrupt(format!("lz4 length: {e}")))?;
    if len > max as u64 {
        return Err(CodecError::TooLarge(max));
    }
    let len = len as usize;
    let start = out.len();
    out.resize(start + len, 0);
    match lz4_flex::block::decompress_into(body, &mut out[start..]) {
        Ok(n) if n == len => Ok(()),
        Ok(n) => Err(CodecError::Corrupt(format!(
            "lz4 block holds {n} bytes, header says {len}"
        ))),
        Err(e) => Err(CodecError::Corrupt(format!("lz4: {e}"))),
    }
}
