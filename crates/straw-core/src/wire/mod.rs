//! The tunnel's byte layout: varints, frames and records (see `docs/wire.md`).

mod frame;
mod hello;
mod varint;

pub use frame::{Frame, FrameDecoder, FrameType, OpenFrame};
pub use hello::{Hello, PROTOCOL_VERSION, RESUME_ID_LEN, Resume, TIMESTAMP_BLOCK_LEN};
pub use varint::{get_varint, put_varint, varint_len};

use thiserror::Error;

/// Everything that can be wrong with bytes from the peer. Each one closes the tunnel.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated frame")]
    Truncated,
    #[error("varint longer than 10 bytes or overflowing u64")]
    BadVarint,
    /// A type no frame has (9, once PROTO, is reserved), or flags on a
    /// type that has none (the whole first byte).
    #[error("unknown or reserved frame type {0:#04x}")]
    UnknownType(u8),
    #[error("frame length {0} exceeds the record")]
    BadLength(u64),
    #[error("malformed OPEN payload")]
    BadOpen,
}
