//! Frames: `type|flags` byte, then fields as varints, then an optional payload.
//!
//! The low nibble of the first byte is the [`FrameType`], the high nibble is
//! per-type flags (for DATA: content class and transform, opaque to the session).
//! A small DATA frame costs 3 bytes of header: type, stream id, length.

use bytes::{Buf, Bytes};

use super::WireError;
use super::varint::{get_varint, put_varint};
use crate::byte_enum::byte_enum;

byte_enum! {
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Data = 0,
    Open = 1,
    Fin = 2,
    Reset = 3,
    Credit = 4,
    Ack = 5,
    Ping = 6,
    Pong = 7,
    Caps = 8,
    // 9 was PROTO (accelerator control): reserved, rejected as unknown.
    // Accelerator control travels in-band as `XSTRAW-*` lines, where its
    // order relative to the stream's data is exact (docs/wire.md §3).
    CodecReset = 10,
}
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFrame {
    pub stream: u64,
    /// Service name as configured on both sides (e.g. `pop3`, `test`).
    pub service: Bytes,
    /// Free-form metadata for the service's accelerator pair.
    pub meta: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Stream bytes. `flags` (4 bits) carry content class / transform.
    Data {
        stream: u64,
        flags: u8,
        payload: Bytes,
    },
    Open(OpenFrame),
    /// Half-close: the sender will send no more DATA on this stream.
    Fin {
        stream: u64,
    },
    /// Abort the stream in both directions.
    Reset {
        stream: u64,
        code: u64,
    },
    /// The receiver may now send DATA up to this absolute byte offset.
    Credit {
        stream: u64,
        limit: u64,
    },
    /// All records up to and including this sequence number were received.
    Ack {
        record: u64,
    },
    Ping {
        stamp: u64,
    },
    Pong {
        stamp: u64,
    },
    Caps {
        payload: Bytes,
    },
    /// The sender's compression contexts go back to their primed state after
    /// this record; the receiver resets its decoders at the same boundary.
    /// Sent after an idle period so that idle tunnels hold no codec state.
    CodecReset,
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Data { .. } => FrameType::Data,
            Frame::Open(_) => FrameType::Open,
            Frame::Fin { .. } => FrameType::Fin,
            Frame::Reset { .. } => FrameType::Reset,
            Frame::Credit { .. } => FrameType::Credit,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::Caps { .. } => FrameType::Caps,
            Frame::CodecReset => FrameType::CodecReset,
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let flags = match self {
            Frame::Data { flags, .. } => (flags & 0x0f) << 4,
            _ => 0,
        };
        out.push(self.frame_type() as u8 | flags);
        match self {
            Frame::Data {
                stream, payload, ..
            } => {
                put_varint(out, *stream);
                put_varint(out, payload.len() as u64);
                out.extend_from_slice(payload);
            }
            Frame::Open(open) => {
                put_varint(out, open.stream);
                let len = super::varint_len(open.service.len() as u64)
                    + open.service.len()
                    + open.meta.len();
                put_varint(out, len as u64);
                put_varint(out, open.service.len() as u64);
                out.extend_from_slice(&open.service);
                out.extend_from_slice(&open.meta);
            }
            Frame::Fin { stream } => put_varint(out, *stream),
            Frame::Reset { stream, code } => {
                put_varint(out, *stream);
                put_varint(out, *code);
            }
            Frame::Credit { stream, limit } => {
                put_varint(out, *stream);
                put_varint(out, *limit);
            }
            Frame::Ack { record } => put_varint(out, *record),
            Frame::Ping { stamp } | Frame::Pong { stamp } => put_varint(out, *stamp),
            Frame::Caps { payload } => {
                put_varint(out, payload.len() as u64);
                out.extend_from_slice(payload);
            }
            Frame::CodecReset => {}
        }
    }

    pub fn encoded_len(&self) -> usize {
        let mut v = Vec::new();
        self.encode(&mut v);
        v.len()
    }
}

/// Iterates over the frames of one decoded record. Payloads are zero-copy
/// slices of the record buffer.
pub struct FrameDecoder {
    buf: Bytes,
}

impl FrameDecoder {
    pub fn new(record: Bytes) -> Self {
        Self { buf: record }
    }

    /// Bytes not yet decoded.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take_payload(&mut self, len: u64) -> Result<Bytes, WireError> {
        if len > self.buf.len() as u64 {
            return Err(WireError::BadLength(len));
        }
        Ok(self.buf.split_to(len as usize))
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut s = &self.buf[..];
        let v = get_varint(&mut s)?;
        let used = self.buf.len() - s.len();
        self.buf.advance(used);
        Ok(v)
    }

    fn next_frame(&mut self) -> Result<Frame, WireError> {
        let head = self.buf[0];
        self.buf.advance(1);
        let ty = FrameType::from_u8(head & 0x0f).ok_or(WireError::UnknownType(head & 0x0f))?;
        let flags = head >> 4;
        if flags != 0 && ty != FrameType::Data {
            return Err(WireError::UnknownType(head));
        }
        Ok(match ty {
            FrameType::Data => {
                let stream = self.varint()?;
                let len = self.varint()?;
                Frame::Data {
                    stream,
                    flags,
                    payload: self.take_payload(len)?,
                }
            }
            FrameType::Open => {
                let stream = self.varint()?;
                let len = self.varint()?;
                let mut body = self.take_payload(len)?;
                let mut s = &body[..];
                let name_len = get_varint(&mut s).map_err(|_| WireError::BadOpen)?;
                if name_len > s.len() as u64 {
                    return Err(WireError::BadOpen);
                }
                body.advance(body.len() - s.len());
                let service = body.split_to(name_len as usize);
                Frame::Open(OpenFrame {
                    stream,
                    service,
                    meta: body,
                })
            }
            FrameType::Fin => Frame::Fin {
                stream: self.varint()?,
            },
            FrameType::CodecReset => Frame::CodecReset,
            FrameType::Reset => Frame::Reset {
                stream: self.varint()?,
                code: self.varint()?,
            },
            FrameType::Credit => Frame::Credit {
                stream: self.varint()?,
                limit: self.varint()?,
            },
            FrameType::Ack => Frame::Ack {
                record: self.varint()?,
            },
            FrameType::Ping => Frame::Ping {
                stamp: self.varint()?,
            },
            FrameType::Pong => Frame::Pong {
                stamp: self.varint()?,
            },
            FrameType::Caps => {
                let len = self.varint()?;
                Frame::Caps {
                    payload: self.take_payload(len)?,
                }
            }
        })
    }
}

impl Iterator for FrameDecoder {
    type Item = Result<Frame, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let r = self.next_frame();
        if r.is_err() {
            // A malformed frame poisons the rest of the record.
            self.buf.clear();
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u64>(), 0u8..16, bytes()).prop_map(|(stream, flags, payload)| Frame::Data {
                stream,
                flags,
                payload
            }),
            (any::<u64>(), bytes(), bytes()).prop_map(|(stream, service, meta)| Frame::Open(
                OpenFrame {
                    stream,
                    service,
                    meta
                }
            )),
            any::<u64>().prop_map(|stream| Frame::Fin { stream }),
            (any::<u64>(), any::<u64>()).prop_map(|(stream, code)| Frame::Reset { stream, code }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(stream, limit)| Frame::Credit { stream, limit }),
            any::<u64>().prop_map(|record| Frame::Ack { record }),
            any::<u64>().prop_map(|stamp| Frame::Ping { stamp }),
            any::<u64>().prop_map(|stamp| Frame::Pong { stamp }),
            bytes().prop_map(|payload| Frame::Caps { payload }),
            Just(Frame::CodecReset),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(frames in proptest::collection::vec(frame(), 0..20)) {
            let mut buf = Vec::new();
            for f in &frames {
                let before = buf.len();
                f.encode(&mut buf);
                prop_assert_eq!(buf.len() - before, f.encoded_len());
            }
            let decoded: Result<Vec<_>, _> = FrameDecoder::new(Bytes::from(buf)).collect();
            prop_assert_eq!(decoded.unwrap(), frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            for f in FrameDecoder::new(Bytes::from(data)) {
                let _ = f;
            }
        }
    }

    #[test]
    fn small_data_frame_costs_three_bytes() {
        let f = Frame::Data {
            stream: 5,
            flags: 0,
            payload: Bytes::from_static(b"+OK\r\n"),
        };
        assert_eq!(f.encoded_len(), 3 + 5);
    }

    /// Type 9 (the former PROTO) and the unassigned types close the tunnel
    /// like any malformed frame; nothing after them is decoded.
    #[test]
    fn reserved_and_unknown_types_are_rejected() {
        for ty in [9u8, 11, 15] {
            let mut frames = FrameDecoder::new(Bytes::from(vec![ty, 1, 2, b'h', b'i']));
            assert_eq!(frames.next(), Some(Err(WireError::UnknownType(ty))));
            assert_eq!(frames.next(), None);
        }
    }

    #[test]
    fn rejects_lengths_beyond_record() {
        let mut buf = Vec::new();
        Frame::Data {
            stream: 1,
            flags: 0,
            payload: Bytes::from_static(b"hello"),
        }
        .encode(&mut buf);
        buf.truncate(buf.len() - 1);
        let r: Result<Vec<_>, _> = FrameDecoder::new(Bytes::from(buf)).collect();
        assert_eq!(r, Err(WireError::BadLength(5)));
    }
}
