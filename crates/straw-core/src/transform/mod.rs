//! Lossless base64 transform for stream bytes (mail attachments).
//!
//! The [`Encoder`] replaces each canonical base64 run (≥ [`MIN_RUN_LINES`]
//! lines of one length and line ending, optionally closed by a shorter padded
//! line) by its decoded bytes plus the layout; the [`Decoder`] re-encodes them
//! byte for byte. Everything else passes through unchanged. Both are sans-IO
//! and streaming: any split of the input decodes to the same bytes. The
//! encoder holds back at most [`MAX_HELD`] bytes: the open line, a line that
//! may start a run, and a run's decoded bytes until a chunk is full
//! ([`Encoder::cut`] emits them early, [`Encoder::flush`] emits everything).
//!
//! Encoded stream (docs/wire.md §4):
//! - any byte other than [`ESC`] is itself;
//! - `ESC` followed by a byte outside the tag range `0x80..=0x83` is a literal
//!   `ESC` (the following byte is read normally), so literal `ESC` costs
//!   nothing unless a tag-range byte follows it;
//! - `ESC 0x80` is a literal `ESC`;
//! - `ESC 0x81 flags varint(L) varint(D) D bytes` is a chunk of a run: the
//!   base64 of the D bytes (`=` padded), cut into lines of L characters, each
//!   followed by CRLF (flags bit 0 clear) or LF (set). Flags bits 4–7 are the
//!   [`ContentClass`] of the run's decoded bytes; bits 1–3 are zero.
//! - `0x82`, `0x83` are reserved tags (an error today).
//!
//! `ESC` is 0xF7: never in UTF-8, rare in the SpamAssassin corpus and never
//! followed by a tag there, and the pairs `F7 80..83` are far rarer in binary
//! data than `00 xx` or `FF xx` pairs (measured; docs/wire.md §4).

mod decoder;
mod encoder;

#[cfg(test)]
pub(crate) mod tests;

pub use decoder::Decoder;
pub use encoder::Encoder;

use thiserror::Error;

use crate::byte_enum::byte_enum;

/// Escape byte of the encoded stream.
pub const ESC: u8 = 0xF7;
/// `ESC T_LIT`: a literal ESC.
const T_LIT: u8 = 0x80;
/// `ESC T_B64 ...`: a base64 chunk.
const T_B64: u8 = 0x81;
/// Bytes after ESC that are tags rather than data.
const TAG_RANGE: std::ops::RangeInclusive<u8> = 0x80..=0x83;

const FLAG_LF: u8 = 0x01;

/// A run needs this many lines (the last may be short). 2 keeps false hits
/// on prose (single words of 16+ letters on two equal lines) at zero on the
/// corpus while costing at most one held line.
pub const MIN_RUN_LINES: usize = 2;
/// Shortest full line of a run, in base64 characters.
pub const MIN_LINE: usize = 16;
/// Longest line of a run (base64 characters, a multiple of 4).
pub const MAX_LINE: usize = 1000;
/// The encoder cuts runs into chunks of at most this many decoded bytes, so
/// a big attachment streams.
pub const MAX_CHUNK: usize = 4096;
/// Most bytes an [`Encoder`] holds back between flushes.
pub const MAX_HELD: usize = MAX_CHUNK + MIN_RUN_LINES * (MAX_LINE + 2) + 1;
/// The decoder refuses chunks longer than this.
pub const MAX_CHUNK_DECODE: u64 = 64 * 1024;

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

byte_enum! {
/// What the decoded bytes of a run look like, from their magic bytes: a hint
/// for codecs to route already-compressed data away from the text model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentClass {
    Unknown = 0,
    Jpeg = 1,
    Png = 2,
    Gif = 3,
    Zip = 4,
    Gzip = 5,
    Pdf = 6,
}
}

impl ContentClass {
    pub fn sniff(data: &[u8]) -> Self {
        const MAGIC: &[(&[u8], ContentClass)] = &[
            (b"\xff\xd8\xff", ContentClass::Jpeg),
            (b"\x89PNG\r\n\x1a\n", ContentClass::Png),
            (b"GIF8", ContentClass::Gif),
            (b"PK\x03\x04", ContentClass::Zip),
            (b"\x1f\x8b", ContentClass::Gzip),
            (b"%PDF-", ContentClass::Pdf),
        ];
        MAGIC
            .iter()
            .find(|(m, _)| data.starts_with(m))
            .map_or(ContentClass::Unknown, |(_, c)| *c)
    }

    /// Already compressed (PDF streams mostly are): not worth a text model.
    pub fn is_compressed(self) -> bool {
        self != ContentClass::Unknown
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransformError {
    #[error("unknown transform tag 0x{0:02x}")]
    UnknownTag(u8),
    #[error("bad base64 chunk flags 0x{0:02x}")]
    BadFlags(u8),
    #[error("bad base64 line length {0}")]
    BadLineLength(u64),
    #[error("bad base64 chunk length {0}")]
    BadChunkLength(u64),
    #[error("malformed varint in a base64 chunk header")]
    BadVarint,
    #[error("transformed stream ends inside an item")]
    Truncated,
    #[error("decoder failed earlier")]
    Poisoned,
}
