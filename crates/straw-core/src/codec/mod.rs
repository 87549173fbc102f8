//! Compression contexts, one streaming context per codec per direction.
//!
//! A record is `codec byte || compressed frames`. The encoder flushes at the end
//! of every record, so the peer can decode it at once, while the history stays
//! shared across records and streams.
//!
//! (Placeholder: only `Stored` so far; zstd is being added.)

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CodecId {
    Stored = 0,
    Zstd = 1,
}

impl CodecId {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Stored),
            1 => Some(Self::Zstd),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unknown codec byte {0}")]
    UnknownCodec(u8),
    #[error("record decompresses to more than {0} bytes")]
    TooLarge(usize),
    #[error("corrupt compressed data: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone)]
pub struct CodecParams {
    pub zstd_level: i32,
    pub window_log: u32,
    pub hash_log: u32,
    pub chain_log: u32,
}

impl Default for CodecParams {
    fn default() -> Self {
        Self {
            zstd_level: 19,
            window_log: 16,
            hash_log: 15,
            chain_log: 15,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecoderLimits {
    pub max_window_log: u32,
    pub max_record_bytes: usize,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        Self {
            max_window_log: 20,
            max_record_bytes: 256 * 1024,
        }
    }
}

pub struct RecordEncoder {}

impl RecordEncoder {
    pub fn new(_params: &CodecParams) -> Self {
        Self {}
    }

    /// Appends `codec byte || compressed(frames)` to `out`, flushed.
    pub fn encode(
        &mut self,
        _codec: CodecId,
        frames: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.push(CodecId::Stored as u8);
        out.extend_from_slice(frames);
        Ok(())
    }

    /// Bytes of compression state currently allocated.
    pub fn memory_bytes(&self) -> usize {
        0
    }
}

pub struct RecordDecoder {
    limits: DecoderLimits,
}

impl RecordDecoder {
    pub fn new(limits: &DecoderLimits) -> Self {
        Self {
            limits: limits.clone(),
        }
    }

    /// Decodes one record into `out` (which is cleared first).
    pub fn decode(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.clear();
        let (&codec, body) = record.split_first().ok_or(CodecError::Empty)?;
        match CodecId::from_u8(codec) {
            Some(CodecId::Stored) => {
                if body.len() > self.limits.max_record_bytes {
                    return Err(CodecError::TooLarge(self.limits.max_record_bytes));
                }
                out.extend_from_slice(body);
                Ok(())
            }
            _ => Err(CodecError::UnknownCodec(codec)),
        }
    }

    pub fn memory_bytes(&self) -> usize {
        0
    }
}
