//! straw: the tokio drivers around the sans-IO cores (the `straw` command
//! is crates/straw-cli; linksim and the benches are in straw-tools).
//!
//! - [`link`]: TCP socket options, Noise IK, keys.
//! - [`tunnel`]: drives one `straw_core::session::Session` over one link.
//! - [`client`] / [`server`]: local listeners and upstream dialers.
//! - [`upstream`]: TLS (implicit or STARTTLS) towards the real servers.

#![deny(unsafe_code)]

mod bounded;
pub mod cache;
pub mod cli_docs;
pub mod client;
pub mod config;
pub mod link;
pub mod logging;
pub mod partial;
pub mod relay_store;
pub mod server;
pub mod tunnel;
pub mod upstream;
