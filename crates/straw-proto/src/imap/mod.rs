//! IMAP accelerator pair (DESIGN §6).
//!
//! The stream between the pair carries plain IMAP, with two differences:
//! every command literal crosses as non-synchronising (`{N+}`), and IDLE
//! keep-alives never cross. The client answers locally only what commits
//! nothing (cached greeting and pre-login CAPABILITY, literal continuations,
//! LOGOUT once nothing else is outstanding) and checks each of those against
//! the real reply when it arrives.
//!
//! # SELECT INBOX with the login
//!
//! Nearly every program logs in and then selects INBOX (imaplib, mutt,
//! Thunderbird; CAPABILITY, LIST or NAMESPACE may come between). So with
//! a program `LOGIN` (one line, no literal; not AUTHENTICATE, whose SASL
//! exchange may take continuation lines that a command behind it would be
//! read as) the client side sends `xstraw.<n> SELECT INBOX` of its own in
//! the same flush, and the program's `SELECT INBOX` (`"INBOX"`, any case,
//! no parameters, once LOGIN's OK has come) is answered with that real
//! response: its untagged lines as the server sent them and its tagged
//! completion under the program's tag, response code and text unchanged
//! (`[READ-WRITE]`); what has not come yet follows as it comes. One round
//! trip saved. It is asked only once per connection. The server side holds
//! LOGIN's tagged reply when straw's SELECT is right behind it, until the
//! SELECT's response starts (or the real server closes), so the program
//! finds the SELECT response here as soon as it has its login.
//!
//! SELECT, not EXAMINE: EXAMINE would select read-only, and the program's
//! SELECT needs `[READ-WRITE]`, so it could not be answered from it. SELECT
//! commits nothing a later SELECT, EXAMINE, UNSELECT or LOGOUT would not
//! leave as it was: no expunge; the one trace is that this session takes
//! the `\Recent` flags of new messages even when the program then opens
//! another mailbox.
//!
//! Until the program selects, the server has a mailbox selected that the
//! program does not know of, and the rule is:
//! - LOGIN refused: the server answers our SELECT with BAD; swallowed.
//! - The program's commands whose meaning and answer are the same with a
//!   mailbox selected (CAPABILITY, NOOP, ID, NAMESPACE, LIST, LSUB, XLIST,
//!   STATUS, CREATE, SUBSCRIBE, UNSUBSCRIBE, APPEND, quota/ACL/metadata
//!   reads) go as they are. The untagged INBOX updates the server may add
//!   (`* n EXISTS/RECENT/EXPUNGE/FETCH`, `* FLAGS`, `* VANISHED`) are held
//!   after the prefetched response, where a real SELECT response may carry
//!   them too, so the program learns them if it selects INBOX.
//! - SELECT or EXAMINE of anything else (or of INBOX with parameters, or
//!   before LOGIN's reply), EXAMINE INBOX, LOGOUT: they replace or end the
//!   selection themselves without expunging (RFC 3501 6.3.1), so they go
//!   as they are; the rest of the prefetched response, and INBOX updates
//!   until the replies to everything sent before them are in, are dropped.
//! - Anything else first gets an UNSELECT of straw's own (RFC 3691: no
//!   expunge). Commands that act on the selected mailbox (CLOSE, EXPUNGE,
//!   CHECK, FETCH, STORE, COPY, MOVE, SEARCH, SORT, THREAD, UID, UNSELECT)
//!   wait for its OK, so a program's CLOSE can never expunge an INBOX it did
//!   not select (it gets the server's answer for no mailbox selected); the
//!   rest (ENABLE, IDLE, DELETE, RENAME, unknown ones) go right behind it.
//!   An UNSELECT refused after our SELECT succeeded fails the connection.
//!
//! So the prefetch is only made when UNSELECT is known to be there: listed
//! in the cached post-login capabilities (learned from LOGIN's
//! `[CAPABILITY ...]` code or a CAPABILITY once logged in, [`AUTHED_CAPABILITY_KEY`])
//! or the cached pre-login ones. Should this connection's post-login list
//! lack it after all, a command that needs the selection undone fails the
//! connection instead. While the post-login list is not known (a fresh
//! install: servers list UNSELECT only once logged in), the client side
//! sends `xstraw.<n> XSTRAW-SELECT 1 INBOX` instead: the server side keeps
//! it and the commands behind it until LOGIN's tagged reply, then sends
//! `SELECT INBOX` under that tag if the login worked and the reply's
//! `[CAPABILITY ...]` lists UNSELECT, or else answers `xstraw.<n> NO
//! [XSTRAW-NOT-SELECTED]` right behind it, which the client side swallows
//! as it would a failed SELECT (an older server side passes the line on, and
//! the real server's `BAD` means the same). A decline after a good login
//! whose reply listed no capabilities at all is remembered
//! ([`COND_SELECT_DECLINED_KEY`]): that server would be asked in vain at
//! every login. The prefetched response and the updates held behind
//! it are kept up to 64 KiB; past that they are dropped and the program's
//! SELECT INBOX crosses as usual (INBOX already selected is no harm to it).
//! The program's SELECT INBOX counts as a local reply if anything of the
//! response had come, else as a link wait; the prefetched UIDVALIDITY keys
//! message resume exactly as that of a program SELECT. `prefetch_select`
//! in [`ImapConfig`] turns it off.
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
mod select;
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
/// Cache key: the post-login capability list as a `* CAPABILITY ...` line.
pub const AUTHED_CAPABILITY_KEY: &str = "imap.capability.authed";
/// Cache key, set when the server side declined straw's conditional SELECT
/// after a good login whose reply showed no capability list: that server
/// would be asked in vain at every login (see the module docs).
pub const COND_SELECT_DECLINED_KEY: &str = "imap.select-ahead.declined";
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
    /// Client side: send `SELECT INBOX` along with the program's LOGIN and
    /// answer its own `SELECT INBOX` from that (see the module docs).
    pub prefetch_select: bool,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            max_literal: 64 << 20,
            max_line: 1 << 20,
            prefetch_select: true,
        }
    }
}
