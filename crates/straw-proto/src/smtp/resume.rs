//! SMTP DATA resume (see [`crate::partial`] and `docs/wire.md` §5).
//!
//! With a store, the server side keeps each body as it arrives and only
//! talks `DATA` to the real server once the terminating dot is in, so a cut
//! never delivers half a message. Both sides name a message by
//! [`message_id`]: the envelope lines and the first [`ID_PREFIX`] bytes of
//! the body as they cross the stream. The client side marks a message in its
//! own store while its end-of-data reply is outstanding; on a later send of
//! a marked message it asks `XSTRAW-RESUME 1 <id>` instead of sending the
//! body at once, and the server side says what it holds:
//! - `250 PARTIAL <len> <hash>`: the first `len` body bytes; if the
//!   program's body starts with them the client sends `XSTRAW-REST 1 <len>`
//!   and the bytes after them, else `XSTRAW-DATA` and all of it.
//! - `250 DONE <len> <hash>`: that message (whole body `len` bytes) was
//!   delivered and its end-of-data reply recorded; if the program's body is
//!   exactly it, the client sends `XSTRAW-DONE 1` and the server side
//!   answers with the recorded reply (and `RSET`s the real server) instead
//!   of delivering it again.
//! - anything else (`550` from the server side, or the real server's `500`
//!   when an older server side passed the line on): send it all.

use super::SYNTH_DATA;
use super::client::{ClientAccel, Disp};
use super::server::{Await, NO_RCPT, ServerAccel, too_big};
use crate::Output;
use crate::partial::prefix_hash;
use crate::shared::lines::{DotScanner, trim_end, verb};

pub const RESUME_VERB: &str = "XSTRAW-RESUME";
pub const REST_VERB: &str = "XSTRAW-REST";
pub const DONE_VERB: &str = "XSTRAW-DONE";
pub const VERSION: u32 = 1;
/// Body bytes that name a message, with its envelope.
pub const ID_PREFIX: usize = 1024;
/// The server side's answer when it holds nothing for an id.
pub(crate) const NOTHING: &[u8] = b"550 5.0.0 straw: nothing held\r\n";

/// The id of a message: [`prefix_hash`] of its envelope lines (`MAIL` and
/// `RCPT`, as sent) and the first [`ID_PREFIX`] bytes of its body.
pub fn message_id(envelope: &[u8], body: &[u8]) -> String {
    let mut v = (envelope.len() as u64).to_be_bytes().to_vec();
    v.extend_from_slice(envelope);
    v.extend_from_slice(&body[..body.len().min(ID_PREFIX)]);
    prefix_hash(&v)
}

/// Client store key: a message whose end-of-data reply is outstanding.
pub(crate) fn mark_key(id: &str) -> String {
    format!("smtp\0mark\0{id}")
}

/// Server store keys, per client (the driver passes the client's key).
pub(crate) fn part_key(client: &str, id: &str) -> String {
    format!("smtp\0{client}\0part\0{id}")
}

pub(crate) fn done_key(client: &str, id: &str) -> String {
    format!("smtp\0{client}\0done\0{id}")
}

/// What the server side offered for an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Nothing,
    Partial(usize, String),
    Done(usize, String),
}

fn hex32(h: &str) -> bool {
    h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn request(id: &str) -> Vec<u8> {
    format!("{RESUME_VERB} {VERSION} {id}\r\n").into_bytes()
}

/// The id of a request line, if it is one this version understands.
pub(crate) fn parse_request(line: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(trim_end(line)).ok()?;
    let w: Vec<&str> = t.split_ascii_whitespace().collect();
    match w.as_slice() {
        [_, v, id] if *v == "1" && hex32(id) => Some(id.to_ascii_lowercase()),
        _ => None,
    }
}

pub(crate) fn answer_line(a: &Answer) -> Vec<u8> {
    match a {
        Answer::Nothing => NOTHING.to_vec(),
        Answer::Partial(len, h) => format!("250 PARTIAL {len} {h}\r\n").into_bytes(),
        Answer::Done(len, h) => format!("250 DONE {len} {h}\r\n").into_bytes(),
    }
}

/// Reads the server side's answer; anything unexpected means nothing held.
pub(crate) fn parse_answer(reply: &[u8]) -> Answer {
    let t = String::from_utf8_lossy(trim_end(reply)).into_owned();
    let w: Vec<&str> = t.split_ascii_whitespace().collect();
    match w.as_slice() {
        ["250", kind, len, h] if hex32(h) => match (*kind, len.parse::<usize>()) {
            ("PARTIAL", Ok(n)) if n > 0 => Answer::Partial(n, h.to_ascii_lowercase()),
            ("DONE", Ok(n)) => Answer::Done(n, h.to_ascii_lowercase()),
            _ => Answer::Nothing,
        },
        _ => Answer::Nothing,
    }
}

pub(crate) fn rest_line(len: usize) -> Vec<u8> {
    format!("{REST_VERB} {VERSION} {len}\r\n").into_bytes()
}

/// The length of an `XSTRAW-REST` line.
pub(crate) fn parse_rest(line: &[u8]) -> Option<usize> {
    let t = std::str::from_utf8(trim_end(line)).ok()?;
    let w: Vec<&str> = t.split_ascii_whitespace().collect();
    match w.as_slice() {
        [_, "1", n] => n.parse().ok(),
        _ => None,
    }
}

pub(crate) fn done_line() -> Vec<u8> {
    format!("{DONE_VERB} {VERSION}\r\n").into_bytes()
}

/// A delivered message as the server side records it: body length and
/// hash, then the real end-of-data reply.
pub(crate) fn done_record(body: &[u8], reply: &[u8]) -> Vec<u8> {
    let mut v = format!("{} {}\n", body.len(), prefix_hash(body)).into_bytes();
    v.extend_from_slice(reply);
    v
}

/// `(len, hash, reply)` of a record; `None` if damaged.
pub(crate) fn parse_done_record(rec: &[u8]) -> Option<(usize, String, Vec<u8>)> {
    let nl = rec.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&rec[..nl]).ok()?;
    let (len, h) = head.split_once(' ')?;
    let reply = rec[nl + 1..].to_vec();
    (hex32(h) && reply.ends_with(b"\r\n")).then_some((len.parse().ok()?, h.to_owned(), reply))
}

// The client side's part: name a held body, ask the server side what it
// holds of it, and send only what it lacks.

/// The start of a body held back while resume is decided.
#[derive(Debug, Default)]
pub(crate) struct Hold {
    pub(super) buf: Vec<u8>,
    /// `buf` ends with the terminator.
    pub(super) complete: bool,
    pub(super) id: Option<String>,
    /// What the server side holds, once known.
    pub(super) answer: Option<Answer>,
}

pub(super) enum Send {
    Full,
    Rest(usize),
    Done,
}

impl ClientAccel {
    /// Sends the held start of a body once it is known how: returns false
    /// while that still waits for body bytes or the server side's answer.
    pub(super) fn release(&mut self, out: &mut Output) -> bool {
        let Some(h) = &mut self.hold else {
            return true;
        };
        let id = match &h.id {
            Some(id) => id.clone(),
            None => {
                if h.buf.len() < ID_PREFIX && !h.complete {
                    return false;
                }
                let id = message_id(&self.envelope, &h.buf);
                h.id = Some(id.clone());
                let marked = self
                    .store
                    .as_ref()
                    .is_some_and(|s| s.get(&mark_key(&id)).is_some());
                if marked {
                    out.to_tunnel.extend(request(&id));
                    out.flush = true;
                    self.expect.push_back(Disp::Resume);
                } else {
                    h.answer = Some(Answer::Nothing);
                }
                id
            }
        };
        let send = match &h.answer {
            None => return false,
            Some(Answer::Nothing) => Send::Full,
            Some(Answer::Partial(len, hash)) => {
                if h.buf.len() <= *len && !h.complete {
                    return false;
                }
                if h.buf.len() > *len && prefix_hash(&h.buf[..*len]) == *hash {
                    Send::Rest(*len)
                } else {
                    Send::Full
                }
            }
            Some(Answer::Done(len, hash)) => {
                if !h.complete {
                    return false;
                }
                if h.buf.len() == *len && prefix_hash(&h.buf) == *hash {
                    Send::Done
                } else {
                    Send::Full
                }
            }
        };
        let h = self.hold.take().expect("checked");
        let offered = h.answer != Some(Answer::Nothing);
        match send {
            Send::Full => {
                if offered {
                    out.notes.push(format!(
                        "SMTP resume: the message differs from what the server side holds ({:?}); sending it whole",
                        h.answer
                    ));
                }
                out.to_tunnel.extend_from_slice(SYNTH_DATA);
                out.to_tunnel.extend_from_slice(&h.buf);
                self.expect.push_back(Disp::SynthData);
            }
            Send::Rest(len) => {
                out.notes.push(format!(
                    "SMTP DATA resumed: {len} bytes the server side holds not sent again"
                ));
                out.to_tunnel.extend(rest_line(len));
                out.to_tunnel.extend_from_slice(&h.buf[len..]);
                self.expect.push_back(Disp::SynthData);
            }
            Send::Done => {
                out.notes.push(
                    "SMTP resume: this message was delivered before; showing its recorded reply"
                        .into(),
                );
                out.to_tunnel.extend(done_line());
                out.flush = true;
            }
        }
        if let Some(s) = &self.store {
            s.put(&mark_key(&id), b"");
        }
        self.mark = Some(id);
        true
    }

    /// The message's outcome reached the program: no more to resume.
    pub(super) fn unmark(&mut self) {
        if let (Some(id), Some(s)) = (self.mark.take(), &self.store) {
            s.remove(&mark_key(&id));
        }
    }
}

// The server side's part: keep a body until it is whole, answer resume
// requests from what is kept.

/// A body being kept before it goes to the real server.
#[derive(Debug)]
pub(super) struct Kept {
    pub(super) sc: DotScanner,
    pub(super) buf: Vec<u8>,
    pub(super) id: Option<String>,
}

/// What the server side offered in answer to `XSTRAW-RESUME`.
#[derive(Debug)]
pub(super) enum Offered {
    Partial(String, Vec<u8>),
    /// The recorded end-of-data reply.
    Done(Vec<u8>),
}

impl ServerAccel {
    pub(super) fn part_key(&self, id: &str) -> String {
        part_key(&self.client, id)
    }

    /// Takes body bytes into the kept body; true once it is complete and
    /// `DATA` went to the real server.
    pub(super) fn keep(&mut self, out: &mut Output) -> bool {
        let limit = self.kept_limit();
        let Some(k) = &mut self.kept else {
            return false;
        };
        let end = k.sc.scan(&self.inbuf);
        let n = end.unwrap_or(self.inbuf.len());
        if (k.buf.len() + n) as u64 > limit {
            // Refused as the real server would refuse it; the rest of the
            // body is read and dropped, nothing more is kept.
            let k = self.kept.take().expect("checked");
            if let (Some(id), Some(store)) = (&k.id, &self.store) {
                store.remove(&part_key(&self.client, id));
            }
            out.notes.push(format!(
                "SMTP body refused: more than {limit} bytes (SIZE {}, limit {})",
                self.size, self.max_message
            ));
            out.to_tunnel.extend(too_big(limit));
            out.flush = true;
            self.rcpt_ok = false;
            // The scanner has seen these; the rest of the body follows them.
            self.inbuf.drain(..n);
            if end.is_none() {
                self.body = Some((k.sc, false));
            }
            return true;
        }
        let from = k.buf.len();
        k.buf.extend(self.inbuf.drain(..n));
        let store = self.store.as_ref().expect("kept bodies only with a store");
        match &k.id {
            Some(id) => {
                let key = part_key(&self.client, id);
                if end.is_some() {
                    store.remove(&key);
                } else {
                    store.append(&key, &k.buf[from..]);
                }
            }
            None if end.is_some() || k.buf.len() >= ID_PREFIX => {
                let id = message_id(&self.envelope, &k.buf);
                if end.is_none() {
                    store.put(&part_key(&self.client, &id), &k.buf);
                }
                k.id = Some(id);
            }
            None => {}
        }
        if end.is_none() {
            return false;
        }
        let k = self.kept.take().expect("checked");
        self.rcpt_ok = false;
        out.notes.push(format!(
            "SMTP body complete ({} bytes): DATA to the real server",
            k.buf.len()
        ));
        out.to_local.extend_from_slice(b"DATA\r\n");
        self.inflight = Some(Await::KeptData);
        self.sending = Some((k.buf, k.id));
        true
    }

    /// The resume lines (see [`resume`]); false if `line` is none of them.
    pub(super) fn resume_command(&mut self, line: &[u8], out: &mut Output) -> bool {
        let Some(store) = self.store.clone() else {
            return false;
        };
        if line == SYNTH_DATA {
            self.offered = None;
            if !self.rcpt_ok {
                // No transaction to keep a body for: refused as the real
                // server would, and the body read and dropped.
                out.notes
                    .push("SMTP body refused: no recipient accepted".into());
                out.to_tunnel.extend_from_slice(NO_RCPT);
                out.flush = true;
                self.body = Some((DotScanner::at_line_start(), false));
                return true;
            }
            self.kept = Some(Kept {
                sc: DotScanner::at_line_start(),
                buf: Vec::new(),
                id: None,
            });
            return true;
        }
        let (v, _) = verb(line);
        match v.as_str() {
            RESUME_VERB => {
                let id = parse_request(line);
                let done = id.as_ref().and_then(|id| {
                    store
                        .get(&done_key(&self.client, id))
                        .and_then(|r| parse_done_record(&r))
                });
                let part = id
                    .as_ref()
                    .and_then(|id| store.get(&self.part_key(id)))
                    .filter(|p| !p.is_empty());
                let answer = match (id, done, part) {
                    (Some(_), Some((len, hash, reply)), _) => {
                        self.offered = Some(Offered::Done(reply));
                        Answer::Done(len, hash)
                    }
                    (Some(id), None, Some(p)) => {
                        let a = Answer::Partial(p.len(), prefix_hash(&p));
                        self.offered = Some(Offered::Partial(id, p));
                        a
                    }
                    _ => Answer::Nothing,
                };
                out.notes.push(format!("SMTP resume asked: {answer:?}"));
                out.to_tunnel.extend(answer_line(&answer));
                out.flush = true;
            }
            REST_VERB => match (parse_rest(line), self.offered.take()) {
                _ if !self.rcpt_ok => self.fail(out, format!("{REST_VERB} with no recipient")),
                (Some(n), Some(Offered::Partial(id, p))) if n == p.len() => {
                    let mut sc = DotScanner::at_line_start();
                    if sc.scan(&p).is_some() {
                        self.fail(out, "SMTP resume: held body is already complete");
                    } else {
                        out.notes.push(format!(
                            "SMTP DATA resumed: {n} bytes held, the rest follows"
                        ));
                        self.stats.message_resumes += 1;
                        self.stats.message_resume_bytes += n as u64;
                        self.kept = Some(Kept {
                            sc,
                            buf: p,
                            id: Some(id),
                        });
                    }
                }
                _ => self.fail(out, format!("{} without a matching offer", REST_VERB)),
            },
            DONE_VERB => match self.offered.take() {
                Some(Offered::Done(reply)) => {
                    // Delivered before: its reply again, and the real
                    // server's open transaction dropped.
                    out.notes
                        .push("SMTP resume: message delivered before; not sent again".into());
                    out.to_tunnel.extend_from_slice(&reply);
                    out.flush = true;
                    out.to_local.extend_from_slice(b"RSET\r\n");
                    self.inflight = Some(Await::Swallow);
                }
                _ => self.fail(out, format!("{} without a matching offer", DONE_VERB)),
            },
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_junk_means_nothing() {
        let id = message_id(b"MAIL FROM:<a>\r\n", b"body");
        assert_ne!(id, message_id(b"MAIL FROM:<b>\r\n", b"body"));
        assert_eq!(
            message_id(b"M", &[1; 2000]),
            message_id(b"M", &[1; ID_PREFIX])
        );
        assert_eq!(parse_request(&request(&id)), Some(id.clone()));
        assert_eq!(parse_request(b"XSTRAW-RESUME 2 00\r\n"), None);
        let a = Answer::Partial(12, id.clone());
        assert_eq!(parse_answer(&answer_line(&a)), a);
        let d = Answer::Done(0, id.clone());
        assert_eq!(parse_answer(&answer_line(&d)), d);
        assert_eq!(parse_answer(NOTHING), Answer::Nothing);
        assert_eq!(
            parse_answer(b"500 5.5.1 Invalid command: Command unrecognized\r\n"),
            Answer::Nothing
        );
        assert_eq!(
            parse_answer(b"250 PARTIAL 0 0123456789abcdef0123456789abcdef\r\n"),
            Answer::Nothing
        );
        assert_eq!(parse_rest(&rest_line(77)), Some(77));
        let rec = done_record(b"body", b"250 ok\r\n");
        assert_eq!(
            parse_done_record(&rec),
            Some((4, prefix_hash(b"body"), b"250 ok\r\n".to_vec()))
        );
        assert_eq!(parse_done_record(b"4 zz\n250 ok\r\n"), None);
    }
}
