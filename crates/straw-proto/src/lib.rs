//! straw-proto: sans-IO protocol accelerators.
//!
//! An accelerator sits between a local socket and a tunnel stream. On the
//! client the local socket is the mail program; on the server it is the real
//! server. It turns bytes from one side into bytes for the other (and may
//! answer locally, where the answer commits nothing), with hints for the
//! session: flush now, or treat as bulk. Accelerators come in pairs, one per
//! side, and may rewrite what crosses the stream between them.
//!
//! One folder per protocol ([`pop3`], [`smtp`], [`imap`], [`http`]), split
//! the same way: `reply` reads what the real server says, `client` is the
//! mail program's side, `server` the real server's side, and `prefetch` and
//! `resume` where the protocol has them. What several protocols share (the
//! queue of replies owed to the program, the line reader) is in `shared`.
//! The mail protocols also hold the runtime's own short dialogues as small
//! state machines, bytes in and bytes out: `starttls` (TLS upstream) and
//! `warm_up` (filling the cache before a program connects).

#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod imap;
pub mod partial;
pub mod passthrough;
pub mod pop3;
mod shared;
pub mod smtp;
#[cfg(test)]
mod test_util;

pub use shared::dialogue::{Dialogue, DialogueError, Script, Scripted, Step};
pub use shared::lines::LineTooLong;

/// What an accelerator wants done after one call.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Bytes to send to the peer accelerator over the stream.
    pub to_tunnel: Vec<u8>,
    /// Bytes to write to the local socket.
    pub to_local: Vec<u8>,
    /// `to_tunnel` completes a unit that needs an answer: don't cork it.
    pub flush: bool,
    /// Large transfer: schedule behind interactive traffic.
    pub bulk: bool,
    /// Give up on this connection with this reason (e.g. a synthesised reply
    /// turned out to differ from the real one). The stream is reset.
    pub fail: Option<String>,
    /// The program went away in the middle of an exchange (it closed its
    /// connection before QUIT while a reply was still on its way): the
    /// stream is reset, so that the peer stops sending what no one will
    /// read. Nothing the program sent is lost by it: a real server drops a
    /// session whose client left before QUIT just the same.
    pub abandoned: bool,
    /// Values to remember for the next connection to this service (e.g. the
    /// real greeting and capability list), as (key, value).
    pub cache_put: Vec<(String, Vec<u8>)>,
    /// Lines for the log (e.g. why a resume fell back to a full transfer).
    pub notes: Vec<String>,
}

impl Output {
    /// The program paused (`drained`): bytes held back for more of its
    /// bytes (`unflushed`) go now.
    pub fn flush_if_drained(&mut self, drained: bool, unflushed: &mut bool) {
        if drained && *unflushed {
            self.flush = true;
            *unflushed = false;
        }
    }

    pub fn clear(&mut self) {
        self.to_tunnel.clear();
        self.to_local.clear();
        self.flush = false;
        self.bulk = false;
        self.fail = None;
        self.abandoned = false;
        self.cache_put.clear();
        self.notes.clear();
    }

    /// Gives up with `why`, unless a reason was already given: the first
    /// failure is the one that explains the rest.
    pub(crate) fn fail_once(&mut self, why: impl std::fmt::Display) {
        if self.fail.is_none() {
            self.fail = Some(why.to_string());
        }
    }
}

/// Counters an accelerator keeps for the logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AccelStats {
    /// Times the local program had to wait for a reply that crossed the link.
    pub link_waits: u64,
    /// Replies answered locally.
    pub local_replies: u64,
    /// Server side: messages continued after a cut (a POP3 RETR or IMAP
    /// FETCH sent without the prefix the client held, an SMTP body
    /// completed on top of the part kept), and their bytes not sent again.
    pub message_resumes: u64,
    pub message_resume_bytes: u64,
    /// Server side: commands that arrived already queued behind one still
    /// awaiting the real server's reply (or, IMAP, a literal behind its
    /// continuation): round trips over the link the program did not wait for.
    pub link_waits_saved: u64,
}

/// What a connection is doing now, for the user (`straw status`): a short
/// description in the protocol's words and the progress of the reply or
/// upload under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// E.g. `POP3 RETR 3 of 12`, `SMTP DATA to 2 recipients`,
    /// `IMAP FETCH BODY[] uid 4417`, `GET http://host/path`.
    pub what: String,
    /// Bytes of the current reply (or upload) that went through so far.
    pub done: u64,
    /// Its size when the protocol announced it (a LIST size, a literal's
    /// `{n}`, Content-Length, SMTP `SIZE=`).
    pub total: Option<u64>,
    /// The bytes go from the program to the link (SMTP DATA, IMAP APPEND),
    /// not towards the program.
    pub upload: bool,
}

impl Activity {
    pub fn new(what: impl Into<String>, done: u64, total: Option<u64>) -> Self {
        Self {
            what: what.into(),
            done,
            total,
            upload: false,
        }
    }

    /// The same, going up.
    pub fn upload(mut self) -> Self {
        self.upload = true;
        self
    }
}

/// Longest description an accelerator puts in an [`Activity`] (a URL can be
/// long; the status screen has one line per stream).
pub const ACTIVITY_MAX: usize = 96;

/// `s` cut to [`ACTIVITY_MAX`] characters, with `...` if it was longer, and
/// control characters shown as `?` (they come from the peer's bytes).
pub fn activity_text(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(ACTIVITY_MAX + 1)
        .collect();
    if out.chars().count() > ACTIVITY_MAX {
        out = out.chars().take(ACTIVITY_MAX - 3).collect();
        out.push_str("...");
    }
    out
}

/// What the client side remembered from earlier connections to a service:
/// key → value, as put by [`Output::cache_put`]. Handed to a new accelerator.
pub type Cache = std::collections::HashMap<String, Vec<u8>>;

/// One side of an accelerator pair.
// `from_*` reads as "bytes from the local side", not a conversion.
#[allow(clippy::wrong_self_convention)]
pub trait Accelerator: Send {
    /// Bytes read from the local socket. `drained` says the socket had nothing
    /// more to read right now.
    fn from_local(&mut self, data: &[u8], drained: bool, out: &mut Output);

    /// Bytes that arrived from the peer accelerator over the stream.
    fn from_tunnel(&mut self, data: &[u8], out: &mut Output);

    /// Called once when the connection starts, before any bytes (e.g. to
    /// serve a cached greeting).
    fn start(&mut self, _out: &mut Output) {}

    /// The local socket reached end of input.
    fn local_eof(&mut self, _out: &mut Output) {}

    /// The tunnel is gone for good (resume grace over, or the session was
    /// lost): say so in the protocol's own terms in `out.to_local`, if the
    /// local side is at a point where a reply may go. The connection closes
    /// right after. Nothing that was not confirmed may look successful, and
    /// nothing is written in the middle of a reply (a truncated reply is an
    /// honest failure; a terminated one would not be).
    fn link_lost(&mut self, _out: &mut Output) {}

    fn stats(&self) -> AccelStats {
        AccelStats::default()
    }

    /// Bytes that came [`Accelerator::from_tunnel`] and are still held here,
    /// neither forwarded nor dropped (a command waiting behind the one in
    /// flight, a literal waiting for the real server's `+`). The tunnel
    /// returns stream credit only for bytes that left: what an accelerator
    /// holds counts against the peer's window, so it is bounded by it.
    /// Bytes kept on purpose under their own cap (an SMTP body kept for
    /// resume) are not counted.
    fn tunnel_bytes_held(&self) -> usize {
        0
    }

    /// What the program is doing on this connection, for the status screen
    /// (client side). `None`: nothing worth saying (idle, or a side that
    /// doesn't track it).
    fn activity(&self) -> Option<Activity> {
        None
    }

    /// Client side: `Some(why)` while new bulk transfers must not start
    /// (the call's budget is spent), `None` again when they may. A program
    /// asking for one meanwhile gets a temporary error in its protocol's
    /// terms, chosen so that no mail program deletes or bounces anything;
    /// interactive commands and transfers already under way go on.
    fn hold_bulk(&mut self, _why: Option<&str>) {}
}

/// Words for a held-back transfer's error reply: `why` on one line, cut
/// short, with nothing that could end the reply early.
pub fn hold_words(why: &str) -> String {
    activity_text(why).replace(['\r', '\n'], " ")
}
