//! The handshake payload each side sends inside the Noise handshake.

use super::WireError;
use super::varint::{get_varint, put_varint};

/// 2: the client's Hello carries a timestamp (replay guard) and every
/// resume grants a new ticket.
pub const PROTOCOL_VERSION: u8 = 2;

/// Length of a session id and of a resume ticket.
pub const RESUME_ID_LEN: usize = 16;

/// Tags of the optional blocks after the fixed fields, in this order.
const RESUME_TAG: u8 = 1;
const CODEC_MODEL_TAG: u8 = 2;
const TIMESTAMP_TAG: u8 = 3;
/// Bytes of the timestamp block: tag and a big-endian u64.
pub const TIMESTAMP_BLOCK_LEN: usize = 1 + 8;

/// Session resumption state carried in a Hello.
///
/// Server → client: the session this connection carries (new or resumed),
/// the ticket to resume it with, and how many records the server has
/// received on it. Client → server, on reconnect: the session to resume,
/// its ticket, and how many records the client has received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub session_id: [u8; RESUME_ID_LEN],
    pub ticket: [u8; RESUME_ID_LEN],
    pub records_received: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u8,
    /// The sender's per-stream receive window: the peer's initial credit.
    pub stream_window: u64,
    /// Most decompressed bytes per record the sender accepts.
    pub max_record: u64,
    /// Absent in a client's first Hello.
    pub resume: Option<Resume>,
    /// Id of the sender's compression model (`codec::model_id`): peers with
    /// different ids cannot decode each other's CM records.
    pub codec_model: Option<u32>,
    /// Client → server: nanoseconds since the Unix epoch, strictly
    /// increasing per client (the server refuses a first message whose
    /// timestamp is not newer than the last it accepted from that key, so a
    /// replayed message does nothing). A server sends none.
    pub timestamp: Option<u64>,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.version];
        put_varint(&mut out, self.stream_window);
        put_varint(&mut out, self.max_record);
        if let Some(r) = &self.resume {
            out.push(RESUME_TAG);
            out.extend_from_slice(&r.session_id);
            out.extend_from_slice(&r.ticket);
            put_varint(&mut out, r.records_received);
        }
        if let Some(id) = self.codec_model {
            out.push(CODEC_MODEL_TAG);
            put_varint(&mut out, id as u64);
        }
        if let Some(t) = self.timestamp {
            out.push(TIMESTAMP_TAG);
            out.extend_from_slice(&t.to_be_bytes());
        }
        out
    }

    /// Unknown trailing bytes are allowed so later versions can add fields:
    /// an unknown tag after the fixed fields is ignored with the rest.
    pub fn decode(mut buf: &[u8]) -> Result<Self, WireError> {
        let (&version, rest) = buf.split_first().ok_or(WireError::Truncated)?;
        buf = rest;
        let stream_window = get_varint(&mut buf)?;
        let max_record = get_varint(&mut buf)?;
        let resume = match buf.split_first() {
            Some((&RESUME_TAG, rest)) => {
                if rest.len() < 2 * RESUME_ID_LEN {
                    return Err(WireError::Truncated);
                }
                let (sid, rest) = rest.split_at(RESUME_ID_LEN);
                let (ticket, mut rest) = rest.split_at(RESUME_ID_LEN);
                let records_received = get_varint(&mut rest)?;
                buf = rest;
                Some(Resume {
                    session_id: sid.try_into().expect("split at length"),
                    ticket: ticket.try_into().expect("split at length"),
                    records_received,
                })
            }
            _ => None,
        };
        let codec_model = match buf.split_first() {
            Some((&CODEC_MODEL_TAG, mut rest)) => {
                let id = get_varint(&mut rest)?;
                buf = rest;
                Some(u32::try_from(id).map_err(|_| WireError::BadLength(id))?)
            }
            _ => None,
        };
        let timestamp = match buf.split_first() {
            Some((&TIMESTAMP_TAG, rest)) => {
                let bytes: [u8; 8] = rest
                    .get(..8)
                    .ok_or(WireError::Truncated)?
                    .try_into()
                    .expect("8 bytes");
                Some(u64::from_be_bytes(bytes))
            }
            _ => None,
        };
        Ok(Self {
            version,
            stream_window,
            max_record,
            resume,
            codec_model,
            timestamp,
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
            resume: None,
            codec_model: None,
            timestamp: None,
        };
        let enc = h.encode();
        assert_eq!(enc.len(), 7);
        assert_eq!(Hello::decode(&enc).unwrap(), h);
        assert!(Hello::decode(&enc[..3]).is_err());
        assert!(Hello::decode(&[]).is_err());
    }

    #[test]
    fn resume_block_roundtrips_and_is_checked() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            stream_window: 256 * 1024,
            max_record: 1 << 18,
            resume: Some(Resume {
                session_id: [7; RESUME_ID_LEN],
                ticket: [9; RESUME_ID_LEN],
                records_received: 300,
            }),
            codec_model: None,
            timestamp: None,
        };
        let enc = h.encode();
        assert_eq!(enc.len(), 7 + 1 + 32 + 2);
        assert_eq!(Hello::decode(&enc).unwrap(), h);
        for cut in 8..enc.len() {
            assert!(Hello::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        // Extra bytes after the block, or an unknown tag, are ignored.
        let mut longer = enc.clone();
        longer.extend_from_slice(b"future");
        assert_eq!(Hello::decode(&longer).unwrap(), h);
        let mut unknown = enc[..7].to_vec();
        unknown.extend_from_slice(&[0xee, 1, 2, 3]);
        assert_eq!(Hello::decode(&unknown).unwrap().resume, None);
    }

    #[test]
    fn codec_model_block_roundtrips_with_and_without_resume() {
        for resume in [
            None,
            Some(Resume {
                session_id: [1; RESUME_ID_LEN],
                ticket: [2; RESUME_ID_LEN],
                records_received: 5,
            }),
        ] {
            let h = Hello {
                version: PROTOCOL_VERSION,
                stream_window: 1000,
                max_record: 1000,
                resume,
                codec_model: Some(0xDEAD_BEEF),
                timestamp: None,
            };
            let enc = h.encode();
            assert_eq!(Hello::decode(&enc).unwrap(), h);
            // Cut inside the id: an error, not a missing id.
            assert!(Hello::decode(&enc[..enc.len() - 1]).is_err());
        }
        // An id beyond 32 bits is malformed.
        let mut enc = Hello {
            version: PROTOCOL_VERSION,
            stream_window: 1,
            max_record: 1,
            resume: None,
            codec_model: None,
            timestamp: None,
        }
        .encode();
        enc.push(CODEC_MODEL_TAG);
        put_varint(&mut enc, 1 << 40);
        assert!(Hello::decode(&enc).is_err());
    }

    #[test]
    fn timestamp_block_roundtrips_after_the_others_and_is_checked() {
        for (resume, model) in [
            (None, None),
            (None, Some(7)),
            (
                Some(Resume {
                    session_id: [1; RESUME_ID_LEN],
                    ticket: [2; RESUME_ID_LEN],
                    records_received: 5,
                }),
                Some(0xDEAD_BEEF),
            ),
        ] {
            let without = Hello {
                version: PROTOCOL_VERSION,
                stream_window: 1000,
                max_record: 1000,
                resume,
                codec_model: model,
                timestamp: None,
            };
            let h = Hello {
                timestamp: Some(1_796_000_000_123_456_789),
                ..without.clone()
            };
            let enc = h.encode();
            assert_eq!(enc.len(), without.encode().len() + TIMESTAMP_BLOCK_LEN);
            assert_eq!(Hello::decode(&enc).unwrap(), h);
            // Every cut inside the timestamp is an error, not a missing one.
            for cut in enc.len() - 8..enc.len() {
                assert!(Hello::decode(&enc[..cut]).is_err(), "cut at {cut}");
            }
        }
    }
}
