//! straw: the tokio drivers around the sans-IO cores (the `straw` command
//! is crates/straw-cli; linksim and the benches are in straw-tools).
//!
//! - [`link`]: TCP socket options, Noise IK, keys.
//! - [`authorized`]: the server's authorised-keys file and its options.
//! - [`tunnel`]: drives one sans-IO `straw_tunnel::Tunnel` over one link;
//!   `pump`: the byte movers of each local socket.
//! - [`client`] / [`server`]: local listeners and upstream dialers.
//! - [`gate`]: bounds on unauthenticated connections, rate-limited logs.
//! - [`origin`]: where the HTTP proxy may connect (ports, SSRF, one lookup).
//! - [`upstream`]: TLS (implicit or STARTTLS) towards the real servers.
//! - [`metrics`]: the server's Prometheus endpoint for its operator.
//! - [`status`] / [`control`]: what the client knows for `straw status`,
//!   and the local socket that answers it.
//! - [`setup`] / [`check`]: `straw init` (first configs and keys) and
//!   `straw check` (load a config, try its keys and upstreams).

#![deny(unsafe_code)]

pub mod accel;
pub mod authorized;
mod bounded;
pub mod cache;
pub mod check;
pub mod cli_docs;
pub mod client;
pub mod codec_load;
pub mod codec_pool;
pub mod config;
pub mod control;
mod dialogue;
pub mod gate;
pub mod holds;
pub mod keyring;
pub mod link;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod origin;
pub mod partial;
mod pump;
pub mod relay_store;
pub mod server;
pub mod setup;
pub mod status;
pub mod tunnel;
pub mod upstream;
pub mod web;
