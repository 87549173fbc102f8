//! POP3 RETR resume (see [`crate::partial`]).
//!
//! Wire: before `RETR n` the client side may send
//! `XSTRAW-PARTIAL 1 <len> <hash>` (version 1, the length of the body prefix
//! it holds, [`prefix_hash`] of it). The server side answers it, in reply
//! order just before the RETR reply, once it has read that much of the real
//! body: `+OK` means the RETR reply that follows is the real status line and
//! then only the body after the prefix; `-ERR ...` means it is the whole
//! real reply. An older server side passes the line to the real server,
//! whose `-ERR` (unknown command) means the same, so nothing needs
//! negotiating up front and an older client side never sends it.
//!
//! The prefix covers the body as it crosses the stream (dot-stuffed, after
//! the status line), so the client side can splice it back unchanged.

use super::client::{ClientAccel, Disp, Expect, RetrTrack, Track};
use super::reply::{ReplyStart, reply_start};
use crate::Output;
use crate::partial::{RequestError, prefix_hash};
use crate::shared::lines::trim_end;

/// The private command's verb; the first argument is its version.
pub const VERB: &str = "XSTRAW-PARTIAL";
pub const VERSION: u32 = 1;
/// Server side's answers to it.
pub(crate) const RESUMED: &[u8] = b"+OK\r\n";
pub(crate) const DIFFERS: &[u8] = b"-ERR straw: prefix differs, full message follows\r\n";
pub(crate) const NOT_RESUMED: &[u8] = b"-ERR straw: not resumed\r\n";
/// Prefixes shorter than this are not worth a request line.
pub(crate) const MIN_PREFIX: usize = 512;

/// The request line for a stored prefix.
pub(crate) fn request(prefix: &[u8]) -> Vec<u8> {
    format!(
        "{VERB} {VERSION} {} {}\r\n",
        prefix.len(),
        prefix_hash(prefix)
    )
    .into_bytes()
}

/// Parses the arguments of a request line: `(len, hash)`, or why not.
pub(crate) fn parse_request(line: &[u8]) -> Result<(usize, String), RequestError> {
    let text = String::from_utf8_lossy(trim_end(line)).into_owned();
    let mut w = text.split_ascii_whitespace().skip(1);
    let version = w.next().and_then(|v| v.parse::<u32>().ok());
    if version != Some(VERSION) {
        return Err(RequestError::UnsupportedVersion {
            verb: VERB,
            line: text,
        });
    }
    let len = w.next().and_then(|v| v.parse::<usize>().ok());
    let hash = w
        .next()
        .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    match (len, hash, w.next()) {
        (Some(len), Some(hash), None) if len > 0 => Ok((len, hash.to_ascii_lowercase())),
        _ => Err(RequestError::Malformed { line: text }),
    }
}

/// The store key of a message: account and UIDL. The driver's store adds
/// the service name.
pub(crate) fn key(user: &str, uidl: &str) -> String {
    format!("pop3\0{user}\0{uidl}")
}

/// The account part of [`key`], to ask whether the store holds anything
/// for this user at all.
pub(crate) fn account_prefix(user: &str) -> String {
    format!("pop3\0{user}\0")
}

/// `(msg, uidl)` pairs from a UIDL reply: the `+OK n uid` of `UIDL n` or
/// the listing of a bare `UIDL`. Lines that don't parse are skipped.
pub(crate) fn parse_uidl(reply: &[u8], multi: bool) -> Vec<(u32, String)> {
    let mut lines = reply.split_inclusive(|&b| b == b'\n');
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    if !first.starts_with(b"+OK") {
        return Vec::new();
    }
    let one = |l: &[u8]| -> Option<(u32, String)> {
        let t = std::str::from_utf8(trim_end(l)).ok()?;
        let mut w = t.split_ascii_whitespace();
        let n = w.next()?.parse().ok()?;
        let uid = w.next()?;
        // RFC 1939: 0x21..0x7E, at most 70 characters.
        (uid.len() <= 70 && w.next().is_none()).then(|| (n, uid.to_owned()))
    };
    if !multi {
        return one(&first[3..]).into_iter().collect();
    }
    lines
        .take_while(|l| trim_end(l) != b".")
        .filter_map(one)
        .collect()
}

/// Server side: one RETR whose reply is checked against a client's prefix.
#[derive(Debug)]
pub(crate) struct ServerResume {
    want: usize,
    hash: String,
    status: Option<Vec<u8>>,
    prefix: Vec<u8>,
    decided: bool,
    /// The prefix matched and was left out (bytes), not yet counted.
    resumed: Option<usize>,
}

impl ServerResume {
    pub(crate) fn new(want: usize, hash: String) -> Self {
        Self {
            want,
            hash,
            status: None,
            prefix: Vec::new(),
            decided: false,
            resumed: None,
        }
    }

    /// Takes the next piece of the real reply (`status_len`: length of its
    /// status line, once complete) and appends what the client side should
    /// get to `held`: the answer to the request line first, then the reply
    /// with the prefix left out if it matched. `done`: the reply ended.
    /// Bytes left out because the client's prefix matched, once.
    pub(crate) fn take_resumed(&mut self) -> Option<usize> {
        self.resumed.take()
    }

    pub(crate) fn feed(
        &mut self,
        piece: &[u8],
        status_len: usize,
        done: bool,
        held: &mut Vec<u8>,
        notes: &mut Vec<String>,
    ) {
        if self.decided {
            held.extend_from_slice(piece);
            return;
        }
        let rest = match reply_start(&mut self.status, piece, status_len) {
            ReplyStart::Wait => return,
            ReplyStart::Refused => {
                self.decided = true;
                held.extend_from_slice(NOT_RESUMED);
                held.extend_from_slice(piece);
                return;
            }
            ReplyStart::Body(body) => body,
        };
        self.prefix.extend_from_slice(rest);
        if self.prefix.len() < self.want && !done {
            return;
        }
        self.decided = true;
        let status = self.status.take().unwrap_or_default();
        let matched =
            self.prefix.len() >= self.want && prefix_hash(&self.prefix[..self.want]) == self.hash;
        if matched {
            self.resumed = Some(self.want);
            held.extend_from_slice(RESUMED);
            held.extend_from_slice(&status);
            held.extend_from_slice(&self.prefix[self.want..]);
            notes.push(format!(
                "POP3 RETR resumed: {} bytes the client holds not sent again",
                self.want
            ));
        } else {
            notes.push(format!(
                "POP3 RETR resume: the client's {}-byte prefix differs from the message now on the server; sending it whole ({} bytes so far)",
                self.want,
                self.prefix.len()
            ));
            held.extend_from_slice(DIFFERS);
            held.extend_from_slice(&status);
            held.extend_from_slice(&self.prefix);
        }
        self.prefix = Vec::new();
    }
}

/// Why a resumed RETR cannot go on: the connection fails rather than show
/// the program a message that is not the server's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetrError {
    #[error("POP3 RETR: server side agreed to resume, then the reply failed")]
    FailedAfterAgreeing,
    #[error("POP3 RETR: stored prefix runs past the end of the message")]
    PrefixPastEnd,
    #[error(transparent)]
    Reply(#[from] super::reply::ReplyError),
}

// The client side's part: offer a stored prefix with `RETR n`, keep the
// body in the store as it arrives, and splice the prefix back in.
impl ClientAccel {
    /// `RETR n` with a partial store: learn the message's UIDL if needed,
    /// offer a stored prefix, and watch the body. Returns false if the line
    /// was put back to wait for our own `UIDL n`.
    pub(super) fn retr(&mut self, line: Vec<u8>, out: &mut Output) -> bool {
        let msg = String::from_utf8_lossy(trim_end(&line))
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u32>().ok());
        let (Some(store), Some(user), Some(msg)) = (self.store.clone(), self.user.clone(), msg)
        else {
            self.forward(&line, true, false, out);
            return true;
        };
        let key = match self.uidls.get(&msg) {
            Some(Some(uid)) => Some(key(&user, uid)),
            Some(None) => {
                // The server gives no UIDL for it: nothing to key a partial by.
                self.forward(&line, true, false, out);
                return true;
            }
            None if self.prefetch_uidl_pending() => {
                // The prefetched listing arrives before the RETR reply.
                if store.any_with_prefix(&account_prefix(&user)) {
                    if let Some(e) = self
                        .expect
                        .iter_mut()
                        .find(|e| matches!(e.disp, Disp::Prefetch(1)))
                    {
                        e.unblocks = true;
                        self.blocked = true;
                    }
                    self.inbuf.splice(0..0, line);
                    return false;
                }
                None
            }
            None => {
                self.ask_uidl(msg, out);
                if store.any_with_prefix(&account_prefix(&user)) {
                    // A partial of this account may be this message: wait
                    // for the UIDL (one round trip) before asking for it.
                    out.flush = true;
                    self.block_on_last();
                    self.inbuf.splice(0..0, line);
                    return false;
                }
                None
            }
        };
        let offered = key
            .as_ref()
            .filter(|_| !self.resume_refused)
            .and_then(|k| store.get(k))
            .filter(|p| p.len() >= MIN_PREFIX);
        if let Some(p) = &offered {
            out.to_tunnel.extend_from_slice(&request(p));
            self.expect.push_back(Expect {
                multi: false,
                disp: Disp::Resume,
                unblocks: false,
            });
        }
        let track = RetrTrack::track(msg, key, offered);
        self.forward_tracked(&line, true, false, track, out);
        true
    }

    /// For the RETR at the front, after a piece of its reply went into
    /// `cur`: keeps the body (as it came over the stream) in the store, and
    /// splices the stored prefix in after the status line of a resumed one.
    pub(super) fn track_retr(&mut self, was_body: bool, done: &mut bool) -> Result<(), RetrError> {
        let Some(Expect {
            disp:
                Disp::Deliver {
                    track: Track::Retr(t),
                    ..
                },
            ..
        }) = self.expect.front_mut()
        else {
            return Ok(());
        };
        let Some(store) = &self.store else {
            return Ok(());
        };
        if !t.record {
            return Ok(());
        }
        let ok = self.reader.first.starts_with(b"+OK");
        let status_now = !was_body && !self.cur.is_empty();
        let body_from = if status_now {
            self.reader.first.len()
        } else {
            0
        };
        if !ok || self.cur.len() < body_from {
            if t.resumed && status_now {
                return Err(RetrError::FailedAfterAgreeing);
            }
            return Ok(());
        }
        if t.key.is_none() {
            let user = self.user.clone().unwrap_or_default();
            t.key = self
                .uidls
                .get(&t.msg)
                .cloned()
                .flatten()
                .map(|u| key(&user, &u));
        }
        let Some(key) = t.key.clone() else {
            return Ok(());
        };
        let body = &self.cur[body_from..];
        if t.resumed {
            if status_now && !t.spliced {
                // Our prefix is the body's start; it's in the store already.
                t.spliced = true;
                let prefix = t.offered.take().unwrap_or_default();
                let (n, end) = self.reader.feed(&prefix, true, &mut self.cur)?;
                if n != prefix.len() {
                    return Err(RetrError::PrefixPastEnd);
                }
                t.storing = true;
                *done |= end;
            } else if t.storing {
                store.append(&key, body);
            }
        } else if status_now {
            store.put(&key, body);
            t.storing = true;
        } else if t.storing {
            store.append(&key, body);
        }
        Ok(())
    }

    /// A RETR reply ended: its partial is no longer needed.
    pub(super) fn retr_done(&mut self, t: &RetrTrack) {
        if let (Some(store), Some(key)) = (&self.store, &t.key)
            && t.storing
        {
            store.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_rejects_junk() {
        let line = request(b"hello");
        let (len, hash) = parse_request(&line).unwrap();
        assert_eq!((len, hash.as_str()), (5, prefix_hash(b"hello").as_str()));
        assert!(parse_request(b"XSTRAW-PARTIAL 2 5 00\r\n").is_err());
        assert!(parse_request(b"XSTRAW-PARTIAL 1 x 00\r\n").is_err());
        assert!(parse_request(b"XSTRAW-PARTIAL 1 5 zz\r\n").is_err());
        let bad = format!("XSTRAW-PARTIAL 1 0 {}\r\n", prefix_hash(b""));
        assert!(parse_request(bad.as_bytes()).is_err());
    }

    #[test]
    fn uidl_replies_parse() {
        assert_eq!(
            parse_uidl(b"+OK 3 abc\r\n", false),
            vec![(3, "abc".to_owned())]
        );
        assert_eq!(
            parse_uidl(b"+OK\r\n1 a\r\njunk\r\n2 b\r\n.\r\n", true),
            vec![(1, "a".to_owned()), (2, "b".to_owned())]
        );
        assert!(parse_uidl(b"-ERR no\r\n", false).is_empty());
    }

    fn run(want: &[u8], reply: &[&[u8]]) -> (Vec<u8>, Vec<String>) {
        let mut r = ServerResume::new(want.len(), prefix_hash(want));
        let (mut held, mut notes) = (Vec::new(), Vec::new());
        let status_len = reply[0].iter().position(|&b| b == b'\n').unwrap() + 1;
        for (i, p) in reply.iter().enumerate() {
            r.feed(p, status_len, i + 1 == reply.len(), &mut held, &mut notes);
        }
        (held, notes)
    }

    #[test]
    fn matching_prefix_is_left_out() {
        let (held, notes) = run(b"abc", &[b"+OK 9\r\nab", b"cdef\r\n", b".\r\n"]);
        assert_eq!(held, b"+OK\r\n+OK 9\r\ndef\r\n.\r\n");
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn differing_or_longer_prefix_sends_all() {
        let (held, _) = run(b"abX", &[b"+OK 9\r\nabcdef\r\n.\r\n"]);
        assert_eq!(held, [DIFFERS, b"+OK 9\r\nabcdef\r\n.\r\n"].concat());
        let (held, _) = run(b"abcdef\r\n.\r\nmore", &[b"+OK\r\nab", b"cdef\r\n.\r\n"]);
        assert_eq!(held, [DIFFERS, b"+OK\r\nabcdef\r\n.\r\n"].concat());
        let (held, _) = run(b"abc", &[b"-ERR no such message\r\n"]);
        assert_eq!(held, [NOT_RESUMED, b"-ERR no such message\r\n"].concat());
    }
}
