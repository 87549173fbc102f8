//! POP3 accelerator pair.
//!
//! The stream between the two sides carries plain POP3: commands one way,
//! the real server's replies the other, in order, every reply included. The
//! client side answers what commits nothing (cached greeting, `USER`,
//! prefetched `STAT`/`UIDL`/`LIST`), swallows the real replies it already
//! answered and checks them. The server side runs the real dialogue in
//! lockstep.
//!
//! `USER` is answered `+OK` locally and held until `PASS`, so both cross the
//! link together. If the real server rejects `USER`, its `-ERR` becomes the
//! reply to `PASS` (and the real `PASS` reply, which is then meaningless, is
//! swallowed): the program sees a failed login, which is the truth.
//!
//! `RETR n` takes `RETR n+1` along (see [`prefetch`]): its real reply is
//! held on the client side and serves the program's `RETR n+1` without a
//! round trip. RETR commits nothing, so asking early changes nothing on the
//! server. A prefetch that turns useless while it still streams (QUIT, DELE
//! of it, a RETR elsewhere) is cut short in-band with `XSTRAW-ABORT n`.
//!
//! The files follow the layers: [`reply`] reads the real server's replies,
//! [`client`] is the program's side, [`server`] the real server's side,
//! [`prefetch`] the `RETR n+1` sent ahead and [`resume`] message resume.
//! [`StartTls`] and [`WarmUp`] are the runtime's own short dialogues (STLS
//! upstream, and the cache warm-up), bytes in and bytes out.

pub mod client;
pub mod hold;
pub mod prefetch;
pub mod reply;
pub mod resume;
pub mod server;
pub mod starttls;
pub mod stub;
pub mod warm_up;

#[cfg(test)]
mod tests;

pub use client::ClientAccel;
pub use hold::{HoldConfig, HoldStore, MemHolds, SharedHolds};
pub use server::ServerAccel;
pub use starttls::StartTls;
pub use warm_up::WarmUp;

#[cfg(test)]
use crate::shared::lines::{self as text, MAX_LINE};
#[cfg(test)]
use crate::{Accelerator, Cache, Output};
#[cfg(test)]
use client::rewrite_capa;

use crate::shared::lines::trim_end;

/// Cache key of the last real greeting (empty: don't serve one).
pub const GREETING_KEY: &str = "pop3.greeting";
/// Cache key prefix, then the account: `1` if the program's first `RETR`
/// of that account's last session was `RETR 1` (see
/// [`Pop3Config::prefetch_first`]).
pub const FIRST_RETR_KEY: &str = "pop3.first-retr.";
/// The local reply to a `QUIT` that commits nothing.
pub(crate) const QUIT_OK: &[u8] = b"+OK Logging out.\r\n";
/// The program's next reply when the tunnel is gone for good.
pub const LINK_LOST: &[u8] = b"-ERR straw: link lost\r\n";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pop3Config {
    /// Ask for `STAT`, `UIDL` and `LIST` together with `PASS`.
    pub prefetch: bool,
    /// With `RETR n`, also send `RETR n+1` when LIST says it is at most this
    /// many bytes (0: never). See [`prefetch`]. With a depth over 1, it also
    /// bounds the LIST sizes of all messages asked ahead together.
    pub prefetch_retr_max_bytes: u64,
    /// How many messages may be asked ahead of the program (0 counts as 1).
    pub prefetch_retr_depth: u32,
    /// With the login, also ask for message 1 if it is at most
    /// `prefetch_retr_max_bytes` (`XSTRAW-RETR-UPTO`, see [`prefetch`]),
    /// when the program began the account's last session with `RETR 1`.
    pub prefetch_first: bool,
}

/// The config's default for [`Pop3Config::prefetch_retr_max_bytes`].
pub const DEFAULT_PREFETCH_RETR_MAX_BYTES: u64 = 64 * 1024;
/// The config's default for [`Pop3Config::prefetch_retr_depth`]: one message
/// ahead leaves the link idle for a round trip whenever a message takes less
/// link time than that (small mail at 2,400 bit/s); three cover it.
pub const DEFAULT_PREFETCH_RETR_DEPTH: u32 = 3;

/// Client side → server side, in-band: `XSTRAW-ABORT <n>` cuts short the
/// prefetched `RETR n` sent before it (see [`ServerAccel`]). Answered
/// [`ABORT_ACK`] in its place in reply order; an older server side passes
/// it to the real server, whose `-ERR` tells the client side not to send
/// another.
pub const ABORT_VERB: &str = "XSTRAW-ABORT";
pub(crate) const ABORT_ACK: &[u8] = b"+OK\r\n";
/// Client side → server side, in-band: `XSTRAW-RETR-UPTO <n> <max>` asks
/// for `RETR n` if `LIST n` says it is at most `max` octets; otherwise it is
/// answered [`UPTO_REFUSED`]. Sent with the login, before the listing is
/// known (see [`prefetch`]).
pub const UPTO_VERB: &str = "XSTRAW-RETR-UPTO";
pub(crate) const UPTO_REFUSED: &[u8] = b"-ERR straw: not prefetched\r\n";
/// The reply to an aborted prefetch whose status line was not sent yet.
pub(crate) const PREFETCH_ABORTED: &[u8] = b"-ERR straw: prefetch aborted\r\n";
/// Server side's internal stand-ins in its command queue (never upstream):
/// a queued RETR that was aborted, and the abort line itself.
pub(crate) const SKIP_LINE: &[u8] = b"XSTRAW-INTERNAL-SKIP\r\n";
pub(crate) const ACK_LINE: &[u8] = b"XSTRAW-INTERNAL-ACK\r\n";

/// Asked for together with `PASS` when [`Pop3Config::prefetch`] is on.
pub(crate) const PREFETCH: [&[u8]; 3] = [b"STAT\r\n", b"UIDL\r\n", b"LIST\r\n"];

/// A `<...@...>` APOP timestamp: greeting differs every connection.
pub(crate) fn has_apop_timestamp(greeting: &[u8]) -> bool {
    let Some(lt) = greeting.iter().position(|&b| b == b'<') else {
        return false;
    };
    let rest = &greeting[lt..];
    rest.iter()
        .position(|&b| b == b'>')
        .is_some_and(|gt| rest[..gt].contains(&b'@'))
}

/// The message number argument of `RETR n`, `DELE n`, `XSTRAW-ABORT n`...
pub(crate) fn msg_arg(line: &[u8]) -> Option<u32> {
    String::from_utf8_lossy(trim_end(line))
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
}
