//! straw-core: the sans-IO heart of straw.
//!
//! Nothing here touches sockets, threads or clocks: every state machine takes
//! bytes (and the current time as a value) in, and hands bytes and events out.
//! - [`wire`]: varints, frames and records, the byte layout on the tunnel.
//! - [`codec`]: per-direction compression contexts, chosen per record.
//! - [`session`]: streams, credit, scheduling, cork/flush, acks and replay.
//! - [`transform`]: the lossless base64 transform on stream data.

#![forbid(unsafe_code)]

mod byte_enum;
pub mod codec;
pub mod session;
pub mod transform;
pub mod wire;

#[cfg(test)]
mod fixtures;
