//! straw: the tokio drivers around the sans-IO cores (the `straw` command
//! is crates/straw-cli; linksim and the benches are in straw-tools).
//!
//! - [`link`]: TCP socket options, Noise IK, keys.
//! - [`tunnel`]: drives one sans-IO `straw_tunnel::Tunnel` over one link;
//!   `pump`: the byte movers of each local socket.
//! - [`client`] / [`server`]: local listeners and upstream dialers.
//! - [`gate`]: bounds on unauthenticated connections, rate-limited logs.
//! - [`upstream`]: TLS (implicit or STARTTLS) towards the real servers.

#![deny(unsafe_code)]

pub mod accel;
mod bounded;
pub mod cache;
pub mod cli_docs;
pub mod client;
pub mod config;
mod dialogue;
pub mod gate;
pub mod link;
pub mod logging;
pub mod memory;
pub mod partial;
mod pump;
pub mod relay_store;
pub mod server;
pub mod tunnel;
pub mod upstream;
