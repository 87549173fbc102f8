//! straw's tunnel, sans IO: one [`Tunnel`] owns a session, the accelerator
//! of each local connection, dead-link detection and idle hang-up; the
//! [`handshake`] module builds and checks the Hellos and plans resumes.
//!
//! Nothing here touches a socket or a clock. A driver (the `straw` crate's
//! tokio tasks) moves bytes: records between the link and
//! [`Tunnel::handle_record`]/[`Tunnel::poll_transmit`], local bytes between
//! each program socket and [`Tunnel::handle_local`]/[`Tunnel::poll_local`],
//! and wakes the tunnel at [`Tunnel::poll_timeout`]. Because one owner runs
//! every accelerator call, a stream's bytes for its socket are queued in the
//! order the accelerator made them, without a lock.

#![forbid(unsafe_code)]

pub mod handshake;
pub mod liveness;
mod local;
pub mod resume;
mod tunnel;

pub use liveness::{Liveness, LivenessCheck, LivenessConfig};
pub use local::LocalOut;
pub use tunnel::{Event, LinkDead, READ_CHUNK, StreamActivity, Tunnel};

#[cfg(test)]
mod tests;
