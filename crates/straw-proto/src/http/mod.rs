//! HTTP accelerator pair (DESIGN §6): a forward proxy.
//!
//! The client side takes absolute-URI requests from the browser; blocked hosts
//! get a local 403 that never crosses the link. The server side rewrites each
//! request to origin form, asks the origin for gzip, and decodes it, so that
//! the tunnel codec sees plain bytes; every response crosses framed with
//! `Content-Length` or chunked. CONNECT is tunnelled raw.
//!
//! The driver dials lazily: it reads the first request from the stream,
//! calls [`parse_target`], checks the resolved addresses with
//! [`is_private_ip`] (unless private targets are allowed), connects, and only
//! then feeds the request to [`ServerAccel`]. One origin per connection: the
//! client side answers 502 to a request naming another origin.
//!
//! The files follow the layers: [`policy`] says which targets are allowed,
//! [`message`] reads heads and frames bodies, [`client`] is the browser's
//! side, [`server`] the origin's side.

pub mod client;
pub mod message;
pub mod policy;
pub mod server;
#[cfg(test)]
mod tests;

pub use client::ClientAccel;
pub use message::HttpError;
pub use policy::{HttpPolicy, is_private_host, is_private_ip, parse_target};
pub use server::ServerAccel;

#[cfg(test)]
use crate::{Accelerator, Output};
#[cfg(test)]
use message::*;
#[cfg(test)]
use std::io::Write;

/// Bodies bigger than this are scheduled as bulk.
pub(crate) const BULK_BODY: u64 = 16 * 1024;
/// Decoded gzip bodies up to this size are held to be sent with a length.
pub(crate) const HOLD_DECODED: usize = 64 * 1024;
/// Gzip input fed per step, so one step cannot inflate past the guard by much.
pub(crate) const GZ_STEP: usize = 1024;
