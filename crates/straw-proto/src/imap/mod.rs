//! IMAP accelerator pair (DESIGN §6).
//!
//! The stream between the pair carries plain IMAP, with two differences:
//! every command literal crosses as non-synchronising (`{N+}`), and IDLE
//! keep-alives never cross. The client answers locally only what commits
//! nothing (cached greeting and pre-login CAPABILITY, literal continuations,
//! LOGOUT once nothing else is outstanding) and checks each of those against
//! the real reply when it arrives.
//!
//! The files follow the layers: `framer` cuts lines and literals,
//! [`reply`] reads capability lists and greetings, [`client`] is the
//! program's side, [`server`] the real server's side, and [`resume`]
//! FETCH resume. [`StartTls`] and [`WarmUp`] are the runtime's own short
//! dialogues (STARTTLS upstream, and the cache warm-up), bytes in and out.

pub mod client;
mod framer;
pub mod reply;
pub mod resume;
#[cfg(test)]
mod resume_tests;
pub mod server;
pub mod starttls;
#[cfg(test)]
mod tests;
pub mod warm_up;

pub use client::ClientAccel;
pub use framer::FrameError;
pub use reply::rewrite_caps;
pub use server::ServerAccel;
pub use starttls::StartTls;
pub use warm_up::WarmUp;

/// Cache key: the real greeting line (no CRLF), as the real server sent it.
pub const GREETING_KEY: &str = "imap.greeting";
/// Cache key: the real pre-login `* CAPABILITY ...` line (no CRLF).
pub const CAPABILITY_KEY: &str = "imap.capability";
/// Told to the program when the tunnel is gone for good.
pub const LINK_LOST: &[u8] = b"* BYE straw: link lost\r\n";

/// Literals bigger than this are scheduled as bulk.
pub(crate) const BULK_LITERAL: u64 = 16 * 1024;
/// Response literals bigger than this (message bodies, not header fields)
/// go through the bulk lane whatever their size: its big mail context codes
/// mail text best, and has seen what POP3 or earlier FETCHes brought.
pub(crate) const BULK_RESP_LITERAL: u64 = 1024;
/// LITERAL- (RFC 7888) allows non-synchronising literals up to this size.
pub(crate) const LITERAL_MINUS_MAX: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImapConfig {
    /// Largest literal accepted in either direction.
    pub max_literal: u64,
    /// Longest line (outside literals) accepted in either direction.
    pub max_line: usize,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            max_literal: 64 << 20,
            max_line: 1 << 20,
        }
    }
}
