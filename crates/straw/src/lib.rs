//! straw: the tokio drivers and command line around the sans-IO cores.
//!
//! - [`link`]: TCP socket options, Noise IK, keys.
//! - [`tunnel`]: drives one `straw_core::session::Session` over one link.
//! - [`client`] / [`server`]: local listeners and upstream dialers.
//! - [`upstream`]: TLS (implicit or STARTTLS) towards the real servers.
//! - [`linksim`]: the satellite-link emulator used by tests and benchmarks.

#![deny(unsafe_code)]

pub mod bench;
pub mod cache;
pub mod cli_docs;
pub mod client;
pub mod config;
pub mod link;
pub mod linksim;
pub mod logging;
pub mod partial;
pub mod relay_store;
pub mod server;
pub mod tunnel;
pub mod upstream;
