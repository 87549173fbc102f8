//! straw: the tokio drivers and command line around the sans-IO cores.
//!
//! - [`link`]: TCP socket options, Noise IK, keys.
//! - [`tunnel`]: drives one sans-IO `straw_tunnel::Tunnel` over one link;
//!   `pump`: the byte movers of each local socket.
//! - [`client`] / [`server`]: local listeners and upstream dialers.
//! - [`upstream`]: TLS (implicit or STARTTLS) towards the real servers.
//! - [`linksim`]: the satellite-link emulator used by tests and benchmarks.

pub mod accel;
pub mod bench;
pub mod cache;
pub mod client;
pub mod config;
pub mod link;
pub mod linksim;
pub mod partial;
mod pump;
pub mod relay_store;
pub mod server;
pub mod tunnel;
pub mod upstream;
