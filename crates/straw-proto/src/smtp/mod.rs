//! SMTP accelerator pair.
//!
//! The stream carries plain SMTP: commands and message bodies one way, every
//! real reply the other, in order. The client side answers what commits
//! nothing — the cached greeting and EHLO reply, `MAIL FROM`, `DATA`'s 354
//! once a recipient was accepted, and `QUIT` once every message is
//! confirmed — and checks each against the real reply when it arrives. RCPT,
//! end-of-data and AUTH results are always the real server's.
//!
//! One private line crosses the stream: [`SYNTH_DATA`] stands for a `DATA`
//! whose 354 the program already has, so its body follows at once. The
//! server side sends `DATA`; if the real server refuses it, the server side
//! swallows the body and the client shows the refusal as the end-of-data
//! reply. A failed `MAIL` shows as the reply to each `RCPT` after it.

pub mod resume;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use crate::partial::{SharedStore, prefix_hash};
use resume::Answer;

use crate::pop3::text::{DotScanner, MAX_LINE, take_line, trim_end, verb};
use crate::{AccelStats, Accelerator, Cache, Output};

pub const GREETING_KEY: &str = "smtp.greeting";
/// The real EHLO reply, as the server sent it.
pub const EHLO_KEY: &str = "smtp.ehlo";

/// Stream-only stand-in for a DATA answered locally (see module docs).
pub const SYNTH_DATA: &[u8] = b"XSTRAW-DATA\r\n";

const MAIL_OK: &[u8] = b"250 2.1.0 Ok\r\n";
const DATA_GO: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
const BYE: &[u8] = b"221 2.0.0 Bye\r\n";
/// The program's next reply when the tunnel is gone for good: a 4xx, so a
/// message whose end-of-data was not confirmed is retried, never lost.
pub const LINK_LOST: &[u8] = b"421 4.4.2 straw: link to server lost, try again later\r\n";
/// Longest reply (all lines) accepted.
const MAX_REPLY: usize = 64 * 1024;
/// Bodies past this are scheduled as bulk.
const BULK_AFTER: usize = 16 * 1024;

/// Incremental reader of SMTP replies (`250-...` lines up to `250 ...`).
#[derive(Debug, Default)]
pub(crate) struct ReplyReader {
    buf: Vec<u8>,
    line_start: usize,
}

impl ReplyReader {
    /// Bytes consumed, and the whole reply if it ended.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<Vec<u8>>), String> {
        for (i, &b) in data.iter().enumerate() {
            self.buf.push(b);
            if self.buf.len() - self.line_start > MAX_LINE || self.buf.len() > MAX_REPLY {
                return Err("SMTP reply too long".into());
            }
            if b != b'\n' {
                continue;
            }
            let line = &self.buf[self.line_start..];
            let ok = line.len() >= 5
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-' | b'\r')
                && line[..3] == self.buf[..3];
            if !ok {
                return Err(format!(
                    "not an SMTP reply: {:?}",
                    String::from_utf8_lossy(trim_end(line))
                ));
            }
            if line[3] == b'-' {
                self.line_start = self.buf.len();
            } else {
                self.line_start = 0;
                return Ok((i + 1, Some(std::mem::take(&mut self.buf))));
            }
        }
        Ok((data.len(), None))
    }
}

fn code(reply: &[u8]) -> u16 {
    std::str::from_utf8(&reply[..3.min(reply.len())])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Text of each line of a reply, without code and separator.
fn reply_lines(reply: &[u8]) -> Vec<&[u8]> {
    reply
        .split_inclusive(|&b| b == b'\n')
        .map(|l| trim_end(l.get(4..).unwrap_or(b"")))
        .collect()
}

/// EHLO keywords, upper-cased, in order: what the verification compares
/// (the first line only echoes names).
fn ehlo_caps(reply: &[u8]) -> Vec<String> {
    reply_lines(reply)
        .iter()
        .skip(1)
        .map(|l| String::from_utf8_lossy(l).to_ascii_uppercase())
        .collect()
}

fn build_reply(code: u16, lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.extend_from_slice(format!("{code}{sep}").as_bytes());
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// EHLO towards the program: no STARTTLS (the tunnel is encrypted), no
/// CHUNKING/BINARYMIME (straw frames DATA only), PIPELINING added.
fn rewrite_ehlo(reply: &[u8]) -> Vec<u8> {
    let lines = reply_lines(reply);
    let mut keep: Vec<Vec<u8>> = vec![lines.first().copied().unwrap_or(b"").to_vec()];
    let mut pipelining = false;
    for l in lines.iter().skip(1) {
        let (v, _) = verb(l);
        match v.as_str() {
            "STARTTLS" | "CHUNKING" | "BINARYMIME" => continue,
            "PIPELINING" => pipelining = true,
            _ => {}
        }
        keep.push(l.to_vec());
    }
    if !pipelining {
        keep.push(b"PIPELINING".to_vec());
    }
    build_reply(250, &keep)
}

fn is_complete_reply(r: &[u8], want: u16) -> bool {
    let mut rd = ReplyReader::default();
    matches!(rd.feed(r), Ok((n, Some(_))) if n == r.len()) && code(r) == want
}

// ---------------------------------------------------------------- client

#[derive(Debug)]
enum Disp {
    Greeting {
        served: Option<Vec<u8>>,
        id: Option<u64>,
    },
    Ehlo {
        served: Option<Vec<u8>>,
        id: Option<u64>,
    },
    Mail,
    Rcpt {
        id: u64,
        txn: u64,
    },
    SynthData,
    PlainData {
        id: u64,
    },
    Eod {
        id: u64,
    },
    /// AUTH or a SASL response: a 334 makes the next line a SASL response.
    Auth {
        id: u64,
    },
    Deliver {
        id: u64,
        resets: bool,
    },
    Swallow,
    /// The server side's answer to `XSTRAW-RESUME`.
    Resume,
}

/// The start of a body held back while resume is decided.
#[derive(Debug, Default)]
struct Hold {
    buf: Vec<u8>,
    /// `buf` ends with the terminator.
    complete: bool,
    id: Option<String>,
    /// What the server side holds, once known.
    answer: Option<Answer>,
}

enum Send {
    Full,
    Rest(usize),
    Done,
}

#[derive(Debug)]
enum Owed {
    Local(Vec<u8>),
    Remote { id: u64, reply: Option<Vec<u8>> },
}

/// Client side: next to the mail program.
#[derive(Debug)]
pub struct ClientAccel {
    greeting: Option<Vec<u8>>,
    ehlo: Option<Vec<u8>>,
    inbuf: Vec<u8>,
    expect: VecDeque<Disp>,
    owed: VecDeque<Owed>,
    next_id: u64,
    reader: ReplyReader,
    /// Parsing waits for a reply (plain DATA, AUTH).
    blocked: bool,
    sasl_next: bool,
    /// Inside a message body from the program.
    body: Option<DotScanner>,
    body_len: usize,
    /// Transaction counter (MAIL/RSET/HELO/EHLO start a new one).
    txn: u64,
    /// Message resume (see [`resume`]): marks of unconfirmed messages.
    store: Option<SharedStore>,
    /// This transaction's MAIL and RCPT lines, as sent.
    envelope: Vec<u8>,
    /// The start of a body held back until it is known whether the server
    /// side has some of it.
    hold: Option<Hold>,
    /// The mark of the message whose end-of-data reply is outstanding.
    mark: Option<String>,
    rcpt_ok_txn: Option<u64>,
    /// The real reply to a locally accepted MAIL, if it was a refusal.
    mail_err: Option<Vec<u8>>,
    /// The real refusal of a locally accepted DATA, for the body's end.
    data_err: Option<Vec<u8>>,
    failed: bool,
    /// QUIT was answered: the program is done and expects nothing more.
    quit_answered: bool,
    stats: AccelStats,
}

impl ClientAccel {
    pub fn new(cache: &Cache) -> Self {
        Self {
            greeting: cache
                .get(GREETING_KEY)
                .filter(|g| is_complete_reply(g, 220))
                .cloned(),
            ehlo: cache
                .get(EHLO_KEY)
                .filter(|e| is_complete_reply(e, 250))
                .cloned(),
            inbuf: Vec::new(),
            expect: VecDeque::new(),
            owed: VecDeque::new(),
            next_id: 0,
            reader: ReplyReader::default(),
            blocked: false,
            sasl_next: false,
            body: None,
            body_len: 0,
            txn: 0,
            store: None,
            envelope: Vec::new(),
            hold: None,
            mark: None,
            rcpt_ok_txn: None,
            mail_err: None,
            data_err: None,
            failed: false,
            quit_answered: false,
            stats: AccelStats::default(),
        }
    }

    /// Resumes cut-off messages with marks kept in `store` (see [`resume`]).
    pub fn with_store(mut self, store: SharedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Call once when the program connects: serves the cached greeting, or
    /// waits for the real one.
    pub fn start(&mut self, out: &mut Output) {
        match self.greeting.clone() {
            Some(g) => {
                self.owe_local(g.clone());
                self.expect.push_back(Disp::Greeting {
                    served: Some(g),
                    id: None,
                });
            }
            None => {
                let id = self.owe_remote();
                self.expect.push_back(Disp::Greeting {
                    served: None,
                    id: Some(id),
                });
            }
        }
        self.pump(out);
    }

    fn owe_local(&mut self, r: Vec<u8>) {
        self.stats.local_replies += 1;
        self.owed.push_back(Owed::Local(r));
    }

    fn owe_remote(&mut self) -> u64 {
        let waiting = self
            .owed
            .iter()
            .any(|o| matches!(o, Owed::Remote { reply: None, .. }));
        if !waiting {
            self.stats.link_waits += 1;
        }
        self.next_id += 1;
        self.owed.push_back(Owed::Remote {
            id: self.next_id,
            reply: None,
        });
        self.next_id
    }

    fn deliver(&mut self, id: u64, r: Vec<u8>) {
        for o in &mut self.owed {
            if let Owed::Remote { id: i, reply } = o
                && *i == id
            {
                *reply = Some(r);
                return;
            }
        }
    }

    fn pump(&mut self, out: &mut Output) {
        while let Some(front) = self.owed.front_mut() {
            match front {
                Owed::Local(r) => out.to_local.append(r),
                Owed::Remote { reply: Some(r), .. } => out.to_local.append(r),
                Owed::Remote { reply: None, .. } => return,
            }
            self.owed.pop_front();
        }
    }

    fn fail(&mut self, out: &mut Output, why: String) {
        self.failed = true;
        if out.fail.is_none() {
            out.fail = Some(why);
        }
    }

    /// Commands not yet confirmed that commit something.
    fn commits_pending(&self) -> bool {
        self.body.is_some()
            || self.expect.iter().any(|d| {
                matches!(
                    d,
                    Disp::SynthData | Disp::PlainData { .. } | Disp::Eod { .. }
                )
            })
    }

    fn forward(&mut self, line: &[u8], out: &mut Output, mk: impl FnOnce(u64) -> Disp) -> u64 {
        out.to_tunnel.extend_from_slice(line);
        out.flush = true;
        let id = self.owe_remote();
        self.expect.push_back(mk(id));
        id
    }

    fn parse(&mut self, out: &mut Output) {
        while !self.blocked && !self.failed {
            if let Some(sc) = &mut self.body {
                // The body passes as is (dot-stuffing included).
                let (n, end) = match &self.hold {
                    Some(h) if h.complete => (0, true),
                    _ => {
                        let end = sc.scan(&self.inbuf);
                        (end.unwrap_or(self.inbuf.len()), end.is_some())
                    }
                };
                match &mut self.hold {
                    Some(h) => {
                        h.buf.extend(self.inbuf.drain(..n));
                        h.complete = end;
                        if !self.release(out) {
                            return;
                        }
                    }
                    None => out.to_tunnel.extend(self.inbuf.drain(..n)),
                }
                self.body_len += n;
                out.bulk |= self.body_len > BULK_AFTER;
                if !end {
                    return;
                }
                self.body = None;
                self.body_len = 0;
                out.flush = true;
                match self.data_err.take() {
                    // DATA was refused: that refusal is the answer.
                    Some(err) => self.owed.push_back(Owed::Local(err)),
                    None => {
                        let id = self.owe_remote();
                        self.expect.push_back(Disp::Eod { id });
                    }
                }
                continue;
            }
            let line = match take_line(&mut self.inbuf) {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => return self.fail(out, format!("SMTP command: {e}")),
            };
            self.command(line, out);
        }
    }

    /// Sends the held start of a body once it is known how: returns false
    /// while that still waits for body bytes or the server side's answer.
    fn release(&mut self, out: &mut Output) -> bool {
        let Some(h) = &mut self.hold else {
            return true;
        };
        let id = match &h.id {
            Some(id) => id.clone(),
            None => {
                if h.buf.len() < resume::ID_PREFIX && !h.complete {
                    return false;
                }
                let id = resume::message_id(&self.envelope, &h.buf);
                h.id = Some(id.clone());
                let marked = self
                    .store
                    .as_ref()
                    .is_some_and(|s| s.get(&resume::mark_key(&id)).is_some());
                if marked {
                    out.to_tunnel.extend(resume::request(&id));
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
                out.to_tunnel.extend(resume::rest_line(len));
                out.to_tunnel.extend_from_slice(&h.buf[len..]);
                self.expect.push_back(Disp::SynthData);
            }
            Send::Done => {
                out.notes.push(
                    "SMTP resume: this message was delivered before; showing its recorded reply"
                        .into(),
                );
                out.to_tunnel.extend(resume::done_line());
                out.flush = true;
            }
        }
        if let Some(s) = &self.store {
            s.put(&resume::mark_key(&id), b"");
        }
        self.mark = Some(id);
        true
    }

    /// The message's outcome reached the program: no more to resume.
    fn unmark(&mut self) {
        if let (Some(id), Some(s)) = (self.mark.take(), &self.store) {
            s.remove(&resume::mark_key(&id));
        }
    }

    fn command(&mut self, line: Vec<u8>, out: &mut Output) {
        if std::mem::take(&mut self.sasl_next) {
            self.forward(&line, out, |id| Disp::Auth { id });
            self.blocked = true;
            return;
        }
        let (v, _) = verb(&line);
        match v.as_str() {
            "EHLO" => {
                self.txn += 1;
                self.envelope.clear();
                out.to_tunnel.extend_from_slice(&line);
                match self.ehlo.clone() {
                    Some(e) => {
                        self.owe_local(rewrite_ehlo(&e));
                        self.expect.push_back(Disp::Ehlo {
                            served: Some(e),
                            id: None,
                        });
                    }
                    None => {
                        out.flush = true;
                        let id = self.owe_remote();
                        self.expect.push_back(Disp::Ehlo {
                            served: None,
                            id: Some(id),
                        });
                    }
                }
            }
            "HELO" | "RSET" => {
                self.txn += 1;
                self.envelope.clear();
                self.forward(&line, out, |id| Disp::Deliver { id, resets: true });
            }
            "MAIL" => {
                // Commits nothing; its real reply is checked, and a refusal
                // shows at RCPT. Not flushed: it rides with the RCPT.
                self.txn += 1;
                self.envelope = line.clone();
                out.to_tunnel.extend_from_slice(&line);
                self.owe_local(MAIL_OK.to_vec());
                self.expect.push_back(Disp::Mail);
            }
            "RCPT" => {
                self.envelope.extend_from_slice(&line);
                let txn = self.txn;
                self.forward(&line, out, |id| Disp::Rcpt { id, txn });
            }
            "DATA" if self.rcpt_ok_txn == Some(self.txn) => {
                self.owe_local(DATA_GO.to_vec());
                if self.store.is_some() {
                    // Sent once it is known whether to resume (`release`).
                    self.hold = Some(Hold::default());
                } else {
                    out.to_tunnel.extend_from_slice(SYNTH_DATA);
                    self.expect.push_back(Disp::SynthData);
                }
                self.body = Some(DotScanner::at_line_start());
            }
            "DATA" => {
                self.forward(&line, out, |id| Disp::PlainData { id });
                self.blocked = true;
            }
            "QUIT" if !self.commits_pending() => {
                out.to_tunnel.extend_from_slice(&line);
                out.flush = true;
                self.owe_local(BYE.to_vec());
                self.quit_answered = true;
                self.expect.push_back(Disp::Swallow);
            }
            "AUTH" => {
                self.forward(&line, out, |id| Disp::Auth { id });
                self.blocked = true;
            }
            "STARTTLS" => self.owe_local(b"454 4.7.0 TLS not available through straw\r\n".to_vec()),
            "BDAT" => self.fail(
                out,
                "SMTP BDAT (CHUNKING) was not offered; straw can't frame it".into(),
            ),
            _ if v.starts_with("XSTRAW") => {
                self.owe_local(b"500 5.5.1 Command unrecognized\r\n".to_vec())
            }
            _ => {
                self.forward(&line, out, |id| Disp::Deliver { id, resets: false });
            }
        }
    }

    fn reply_done(&mut self, d: Disp, reply: Vec<u8>, out: &mut Output) {
        let c = code(&reply);
        let show = |r: &[u8]| String::from_utf8_lossy(trim_end(r)).to_string();
        match d {
            Disp::Greeting { served, id } => {
                if let Some(s) = served {
                    if c != code(&s) {
                        out.cache_put.push((GREETING_KEY.into(), reply.clone()));
                        return self.fail(
                            out,
                            format!(
                                "SMTP greeting is now {:?}, not the cached {:?}",
                                show(&reply),
                                show(&s)
                            ),
                        );
                    }
                    if s != reply {
                        out.cache_put.push((GREETING_KEY.into(), reply));
                    }
                } else {
                    if c == 220 && self.greeting.as_ref() != Some(&reply) {
                        out.cache_put.push((GREETING_KEY.into(), reply.clone()));
                    }
                    if let Some(id) = id {
                        self.deliver(id, reply);
                    }
                }
            }
            Disp::Ehlo { served, id } => {
                self.mail_err = None;
                if let Some(s) = served {
                    if c != 250 || ehlo_caps(&s) != ehlo_caps(&reply) {
                        if c == 250 {
                            out.cache_put.push((EHLO_KEY.into(), reply.clone()));
                        }
                        self.fail(
                            out,
                            format!(
                                "SMTP EHLO reply changed: {:?}, cached {:?}",
                                show(&reply),
                                show(&s)
                            ),
                        );
                    }
                } else {
                    if c == 250 {
                        out.cache_put.push((EHLO_KEY.into(), reply.clone()));
                    }
                    if let Some(id) = id {
                        let shown = if c == 250 {
                            rewrite_ehlo(&reply)
                        } else {
                            reply
                        };
                        self.deliver(id, shown);
                    }
                }
            }
            Disp::Mail => self.mail_err = (c / 100 != 2).then_some(reply),
            Disp::Rcpt { id, txn } => {
                let shown = match &self.mail_err {
                    Some(e) => e.clone(),
                    None => {
                        if c / 100 == 2 {
                            self.rcpt_ok_txn = Some(txn);
                        }
                        reply
                    }
                };
                self.deliver(id, shown);
            }
            Disp::SynthData => {
                if c != 354 {
                    self.unmark();
                    // The body was (or will be) swallowed by the server side.
                    if let Some(Disp::Eod { .. }) = self.expect.front() {
                        if let Some(Disp::Eod { id }) = self.expect.pop_front() {
                            self.deliver(id, reply);
                        }
                    } else {
                        self.data_err = Some(reply);
                    }
                }
            }
            Disp::PlainData { id } => {
                self.blocked = false;
                if c == 354 {
                    self.body = Some(DotScanner::at_line_start());
                }
                self.deliver(id, reply);
            }
            Disp::Auth { id } => {
                self.blocked = false;
                self.sasl_next = c == 334;
                self.deliver(id, reply);
            }
            Disp::Eod { id } => {
                self.unmark();
                self.deliver(id, reply)
            }
            Disp::Resume => {
                if let Some(h) = &mut self.hold {
                    h.answer = Some(resume::parse_answer(&reply));
                }
            }
            Disp::Deliver { id, resets } => {
                if resets {
                    self.mail_err = None;
                }
                self.deliver(id, reply);
            }
            Disp::Swallow => {}
        }
    }
}

impl Accelerator for ClientAccel {
    fn start(&mut self, out: &mut Output) {
        ClientAccel::start(self, out)
    }

    /// Replies already complete go out first; the 421 then stands for the
    /// first reply still owed (and ends the session, so none follow). A 354
    /// answered locally is no commitment: the end-of-data reply is the 421.
    fn link_lost(&mut self, out: &mut Output) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.pump(out);
        if !self.quit_answered || !self.owed.is_empty() {
            out.to_local.extend_from_slice(LINK_LOST);
        }
        self.owed.clear();
        self.expect.clear();
    }

    fn from_local(&mut self, data: &[u8], _drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.inbuf.extend_from_slice(data);
        self.parse(out);
        self.pump(out);
    }

    fn from_tunnel(&mut self, mut data: &[u8], out: &mut Output) {
        while !data.is_empty() && !self.failed {
            if self.expect.is_empty() {
                return self.fail(
                    out,
                    format!(
                        "SMTP reply with no command outstanding: {:?}",
                        String::from_utf8_lossy(&data[..data.len().min(200)])
                    ),
                );
            }
            let (n, reply) = match self.reader.feed(data) {
                Ok(r) => r,
                Err(e) => return self.fail(out, e),
            };
            data = &data[n..];
            if let Some(r) = reply {
                let d = self.expect.pop_front().expect("checked non-empty");
                self.reply_done(d, r, out);
            }
        }
        self.parse(out);
        self.pump(out);
    }

    fn stats(&self) -> AccelStats {
        self.stats
    }
}

// ---------------------------------------------------------------- server

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Await {
    Reply,
    SynthData,
    PlainData,
    Auth,
    Eod,
    /// `DATA` for a kept body: on 354 the body goes.
    KeptData,
    KeptEod,
    /// A command of the server side's own: the reply is not forwarded.
    Swallow,
}

/// A body being kept before it goes to the real server.
#[derive(Debug)]
struct Kept {
    sc: DotScanner,
    buf: Vec<u8>,
    id: Option<String>,
}

/// What the server side offered in answer to `XSTRAW-RESUME`.
#[derive(Debug)]
enum Offered {
    Partial(String, Vec<u8>),
    /// The recorded end-of-data reply.
    Done(Vec<u8>),
}

/// Server side: next to the real SMTP server; runs the dialogue in lockstep
/// and forwards every reply.
#[derive(Debug, Default)]
pub struct ServerAccel {
    inbuf: Vec<u8>,
    greeted: bool,
    inflight: Option<Await>,
    reader: ReplyReader,
    /// In a body: `true` forwards it to the real server, `false` swallows it.
    body: Option<(DotScanner, bool)>,
    sasl_next: bool,
    failed: bool,
    /// Message resume: partial bodies and delivered-message records,
    /// keyed under `client` (see [`resume`]).
    store: Option<SharedStore>,
    client: String,
    envelope: Vec<u8>,
    kept: Option<Kept>,
    /// A whole kept body on its way to the real server, and its id.
    sending: Option<(Vec<u8>, Option<String>)>,
    offered: Option<Offered>,
}

impl ServerAccel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps bodies in `store` (under `client`, the tunnel's client
    /// identity) and sends them to the real server only once complete, so
    /// that a cut-off send can be resumed and a confirmed one is never
    /// delivered again (see [`resume`]).
    pub fn with_store(mut self, store: SharedStore, client: &str) -> Self {
        self.store = Some(store);
        self.client = client.to_owned();
        self
    }

    fn part_key(&self, id: &str) -> String {
        resume::part_key(&self.client, id)
    }

    /// Takes body bytes into the kept body; true once it is complete and
    /// `DATA` went to the real server.
    fn keep(&mut self, out: &mut Output) -> bool {
        let Some(k) = &mut self.kept else {
            return false;
        };
        let end = k.sc.scan(&self.inbuf);
        let n = end.unwrap_or(self.inbuf.len());
        let from = k.buf.len();
        k.buf.extend(self.inbuf.drain(..n));
        let store = self.store.as_ref().expect("kept bodies only with a store");
        match &k.id {
            Some(id) => {
                let key = resume::part_key(&self.client, id);
                if end.is_some() {
                    store.remove(&key);
                } else {
                    store.append(&key, &k.buf[from..]);
                }
            }
            None if end.is_some() || k.buf.len() >= resume::ID_PREFIX => {
                let id = resume::message_id(&self.envelope, &k.buf);
                if end.is_none() {
                    store.put(&resume::part_key(&self.client, &id), &k.buf);
                }
                k.id = Some(id);
            }
            None => {}
        }
        if end.is_none() {
            return false;
        }
        let k = self.kept.take().expect("checked");
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
    fn resume_command(&mut self, line: &[u8], out: &mut Output) -> bool {
        let Some(store) = self.store.clone() else {
            return false;
        };
        if line == SYNTH_DATA {
            self.offered = None;
            self.kept = Some(Kept {
                sc: DotScanner::at_line_start(),
                buf: Vec::new(),
                id: None,
            });
            return true;
        }
        let (v, _) = verb(line);
        match v.as_str() {
            resume::RESUME_VERB => {
                let id = resume::parse_request(line);
                let done = id.as_ref().and_then(|id| {
                    store
                        .get(&resume::done_key(&self.client, id))
                        .and_then(|r| resume::parse_done_record(&r))
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
                out.to_tunnel.extend(resume::answer_line(&answer));
                out.flush = true;
            }
            resume::REST_VERB => match (resume::parse_rest(line), self.offered.take()) {
                (Some(n), Some(Offered::Partial(id, p))) if n == p.len() => {
                    let mut sc = DotScanner::at_line_start();
                    if sc.scan(&p).is_some() {
                        self.fail(out, "SMTP resume: held body is already complete".into());
                    } else {
                        out.notes.push(format!(
                            "SMTP DATA resumed: {n} bytes held, the rest follows"
                        ));
                        self.kept = Some(Kept {
                            sc,
                            buf: p,
                            id: Some(id),
                        });
                    }
                }
                _ => self.fail(
                    out,
                    format!("{} without a matching offer", resume::REST_VERB),
                ),
            },
            resume::DONE_VERB => match self.offered.take() {
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
                _ => self.fail(
                    out,
                    format!("{} without a matching offer", resume::DONE_VERB),
                ),
            },
            _ => return false,
        }
        true
    }

    /// Call once when the real server is connected (its greeting comes by itself).
    pub fn start(&mut self, _out: &mut Output) {}

    fn fail(&mut self, out: &mut Output, why: String) {
        self.failed = true;
        if out.fail.is_none() {
            out.fail = Some(why);
        }
    }

    fn step(&mut self, out: &mut Output) {
        while self.greeted && self.inflight.is_none() && !self.failed {
            if self.kept.is_some() {
                if self.keep(out) {
                    continue;
                }
                return;
            }
            if let Some((sc, pass)) = &mut self.body {
                let end = sc.scan(&self.inbuf);
                let n = end.unwrap_or(self.inbuf.len());
                let chunk = self.inbuf.drain(..n);
                if *pass {
                    out.to_local.extend(chunk);
                } else {
                    drop(chunk);
                }
                if end.is_none() {
                    return;
                }
                if *pass {
                    self.inflight = Some(Await::Eod);
                }
                self.body = None;
                continue;
            }
            let line = match take_line(&mut self.inbuf) {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => return self.fail(out, format!("SMTP command from client: {e}")),
            };
            if std::mem::take(&mut self.sasl_next) {
                out.to_local.extend_from_slice(&line);
                self.inflight = Some(Await::Auth);
                continue;
            }
            let (v, _) = verb(&line);
            match v.as_str() {
                "MAIL" => self.envelope = line.clone(),
                "RCPT" => self.envelope.extend_from_slice(&line),
                "RSET" | "HELO" | "EHLO" => self.envelope.clear(),
                _ => {}
            }
            if self.resume_command(&line, out) {
                continue;
            }
            let wait = if line == SYNTH_DATA {
                out.to_local.extend_from_slice(b"DATA\r\n");
                Await::SynthData
            } else {
                out.to_local.extend_from_slice(&line);
                match v.as_str() {
                    "DATA" => Await::PlainData,
                    "AUTH" => Await::Auth,
                    _ => Await::Reply,
                }
            };
            self.inflight = Some(wait);
        }
    }
}

impl Accelerator for ServerAccel {
    fn start(&mut self, out: &mut Output) {
        ServerAccel::start(self, out)
    }

    /// Bytes from the real server.
    fn from_local(&mut self, mut data: &[u8], _drained: bool, out: &mut Output) {
        while !data.is_empty() && !self.failed {
            if self.greeted && self.inflight.is_none() {
                return self.fail(
                    out,
                    format!(
                        "SMTP server said something unasked: {:?}",
                        String::from_utf8_lossy(&data[..data.len().min(200)])
                    ),
                );
            }
            let (n, reply) = match self.reader.feed(data) {
                Ok(r) => r,
                Err(e) => return self.fail(out, e),
            };
            data = &data[n..];
            let Some(r) = reply else { continue };
            let c = code(&r);
            let inflight = std::mem::take(&mut self.inflight);
            if inflight != Some(Await::Swallow) {
                out.to_tunnel.extend_from_slice(&r);
                out.flush = true;
            }
            match inflight {
                None => self.greeted = true,
                Some(Await::KeptData) if c == 354 => {
                    if let Some((body, _)) = &self.sending {
                        out.to_local.extend_from_slice(body);
                    }
                    self.inflight = Some(Await::KeptEod);
                }
                Some(Await::KeptData) => self.sending = None,
                Some(Await::KeptEod) => {
                    if let (Some((body, Some(id))), Some(store)) =
                        (self.sending.take(), &self.store)
                        && c / 100 == 2
                    {
                        store.put(
                            &resume::done_key(&self.client, &id),
                            &resume::done_record(&body, &r),
                        );
                    }
                }
                // A refused DATA whose 354 the program already has: swallow the body.
                Some(Await::SynthData) => self.body = Some((DotScanner::at_line_start(), c == 354)),
                Some(Await::PlainData) if c == 354 => {
                    self.body = Some((DotScanner::at_line_start(), true))
                }
                Some(Await::Auth) => self.sasl_next = c == 334,
                Some(_) => {}
            }
            self.step(out);
        }
    }

    /// Commands and bodies from the client side.
    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.inbuf.extend_from_slice(data);
        self.step(out);
    }
}
