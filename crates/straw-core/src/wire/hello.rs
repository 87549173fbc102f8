//! The handshake payload each side sends inside the Noise handshake.

use super::WireError;
use super::varint::{get_varint, put_varint};

pub const PROTOCOL_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    /// The sender's per-stream receive window: the peer's initial credit.
    pub stream_window: u64,
    /// Most decompressed bytes per record the sender accepts.
    pub max_record: u64,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.version];
        put_varint(&mut out, self.stream_window);
        put_varint(&mut out, self.max_record);
        out
    }

    /// Unknown trailing bytes are allowed so later versions can add fields.
    pub fn decode(mut buf: &[u8]) -> Result<Self, WireError> {
        let (&version, rest) = buf.split_first().ok_or(WireError::Truncated)?;
        buf = rest;
        Ok(Self {
            version,
            stream_window: get_varint(&mut buf)?,
            max_record: get_varint(&mut buf)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            stream_window: 256 * 1024,
            max_record: 1 << 18,
        };
        let enc = h.encode();
        assert_eq!(enc.len(), 7);
        assert_eq!(Hello::decode(&enc).unwrap(), h);
        assert!(Hello::decode(&enc[..3]).is_err());
        assert!(Hello::decode(&[]).is_err());
    }
}
