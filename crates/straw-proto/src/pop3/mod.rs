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

pub(crate) mod text;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::VecDeque;

use crate::{AccelStats, Accelerator, Cache, Output};
use text::{DotScanner, MAX_LINE, take_line, verb};

/// Cache key of the last real greeting (empty: don't serve one).
pub const GREETING_KEY: &str = "pop3.greeting";
/// The program's next reply when the tunnel is gone for good.
pub const LINK_LOST: &[u8] = b"-ERR straw: link lost\r\n";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pop3Config {
    /// Ask for `STAT`, `UIDL` and `LIST` together with `PASS`.
    pub prefetch: bool,
}

const PREFETCH: [&[u8]; 3] = [b"STAT\r\n", b"UIDL\r\n", b"LIST\r\n"];

/// Does this command get a multi-line reply when the answer is `+OK`?
fn multi_if_ok(verb: &str, has_arg: bool) -> bool {
    match verb {
        "RETR" | "TOP" | "CAPA" => true,
        // Without an argument these list everything; AUTH lists mechanisms.
        "LIST" | "UIDL" | "AUTH" => !has_arg,
        _ => false,
    }
}

/// A SASL continuation (`+ data` or a bare `+`) rather than `+OK`.
fn is_continuation(first: &[u8]) -> bool {
    first.starts_with(b"+ ") || text::trim_end(first) == b"+"
}

/// A `<...@...>` APOP timestamp: greeting differs every connection.
fn has_apop_timestamp(greeting: &[u8]) -> bool {
    let Some(lt) = greeting.iter().position(|&b| b == b'<') else {
        return false;
    };
    let rest = &greeting[lt..];
    rest.iter()
        .position(|&b| b == b'>')
        .is_some_and(|gt| rest[..gt].contains(&b'@'))
}

/// Incremental reader of one POP3 reply at a time.
#[derive(Debug, Default)]
pub(crate) struct ReplyReader {
    line: Vec<u8>,
    body: Option<DotScanner>,
    /// Status line of the reply being (or last) read.
    pub(crate) first: Vec<u8>,
}

impl ReplyReader {
    /// Appends the reply bytes found in `data` to `sink` (the status line only
    /// once complete). Returns bytes consumed and whether the reply ended.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        multi_if_ok: bool,
        sink: &mut Vec<u8>,
    ) -> Result<(usize, bool), String> {
        if let Some(sc) = &mut self.body {
            return Ok(match sc.scan(data) {
                Some(n) => {
                    sink.extend_from_slice(&data[..n]);
                    self.body = None;
                    (n, true)
                }
                None => {
                    sink.extend_from_slice(data);
                    (data.len(), false)
                }
            });
        }
        let Some(p) = data.iter().position(|&b| b == b'\n') else {
            self.line.extend_from_slice(data);
            if self.line.len() > MAX_LINE {
                return Err(format!("POP3 reply line longer than {MAX_LINE} bytes"));
            }
            return Ok((data.len(), false));
        };
        self.line.extend_from_slice(&data[..=p]);
        if self.line.len() > MAX_LINE {
            return Err(format!("POP3 reply line longer than {MAX_LINE} bytes"));
        }
        if !matches!(self.line.first(), Some(b'+' | b'-')) {
            return Err(format!(
                "not a POP3 reply: {:?}",
                String::from_utf8_lossy(text::trim_end(&self.line))
            ));
        }
        self.first = std::mem::take(&mut self.line);
        sink.extend_from_slice(&self.first);
        if multi_if_ok && self.first.starts_with(b"+OK") {
            self.body = Some(DotScanner::at_line_start());
            let (n, done) = self.feed(&data[p + 1..], true, sink)?;
            Ok((p + 1 + n, done))
        } else {
            Ok((p + 1, true))
        }
    }
}

// ---------------------------------------------------------------- client

/// What to do with the next real reply arriving over the stream.
#[derive(Debug)]
enum Disp {
    /// The real greeting; `served` is the cached one the program already has.
    Greeting {
        served: Option<Vec<u8>>,
        id: Option<u64>,
    },
    /// Stream to the program; `capa` replies are rewritten first.
    Deliver {
        id: u64,
        capa: bool,
    },
    /// The real reply to a `USER` answered locally.
    VerifyUser,
    Pass {
        id: u64,
    },
    Prefetch(usize),
}

#[derive(Debug)]
struct Expect {
    multi: bool,
    disp: Disp,
    /// Input parsing waits for this reply (AUTH exchanges).
    unblocks: bool,
}

/// A reply owed to the program, in program order.
#[derive(Debug)]
enum Owed {
    Local(Vec<u8>),
    Remote { id: u64, buf: Vec<u8>, done: bool },
    Prefetched(usize),
}

/// Client side: next to the mail program.
#[derive(Debug)]
pub struct ClientAccel {
    cfg: Pop3Config,
    cached_greeting: Option<Vec<u8>>,
    inbuf: Vec<u8>,
    expect: VecDeque<Expect>,
    owed: VecDeque<Owed>,
    next_id: u64,
    reader: ReplyReader,
    cur: Vec<u8>,
    held_user: Option<Vec<u8>>,
    user_err: Option<Vec<u8>>,
    blocked: bool,
    sasl_next: bool,
    prefetched: bool,
    pf_usable: [bool; 3],
    pf_val: [Option<Vec<u8>>; 3],
    failed: bool,
    /// Part of the front reply (a multi-line one) is already with the program.
    partial: bool,
    stats: AccelStats,
}

impl ClientAccel {
    pub fn new(cfg: Pop3Config, cache: &Cache) -> Self {
        let cached_greeting = cache
            .get(GREETING_KEY)
            .filter(|g| g.starts_with(b"+OK") && g.ends_with(b"\r\n"))
            .filter(|g| g.len() <= MAX_LINE && g.iter().filter(|&&b| b == b'\n').count() == 1)
            .filter(|g| !has_apop_timestamp(g))
            .cloned();
        Self {
            cfg,
            cached_greeting,
            inbuf: Vec::new(),
            expect: VecDeque::new(),
            owed: VecDeque::new(),
            next_id: 0,
            reader: ReplyReader::default(),
            cur: Vec::new(),
            held_user: None,
            user_err: None,
            blocked: false,
            sasl_next: false,
            prefetched: false,
            pf_usable: [false; 3],
            pf_val: [None, None, None],
            failed: false,
            partial: false,
            stats: AccelStats::default(),
        }
    }

    /// Call once when the program connects: serves the cached greeting, or
    /// waits for the real one.
    pub fn start(&mut self, out: &mut Output) {
        match self.cached_greeting.clone() {
            Some(g) => {
                self.owe_local(g.clone());
                self.expect.push_back(Expect {
                    multi: false,
                    disp: Disp::Greeting {
                        served: Some(g),
                        id: None,
                    },
                    unblocks: false,
                });
            }
            None => {
                let id = self.owe_remote();
                self.expect.push_back(Expect {
                    multi: false,
                    disp: Disp::Greeting {
                        served: None,
                        id: Some(id),
                    },
                    unblocks: false,
                });
            }
        }
        self.pump(out);
    }

    fn program_waiting(&self) -> bool {
        self.owed.iter().any(|o| match o {
            Owed::Remote { done, .. } => !done,
            Owed::Prefetched(s) => self.pf_val[*s].is_none(),
            Owed::Local(_) => false,
        })
    }

    fn owe_local(&mut self, reply: Vec<u8>) {
        self.stats.local_replies += 1;
        self.owed.push_back(Owed::Local(reply));
    }

    fn owe_remote(&mut self) -> u64 {
        if !self.program_waiting() {
            self.stats.link_waits += 1;
        }
        self.next_id += 1;
        self.owed.push_back(Owed::Remote {
            id: self.next_id,
            buf: Vec::new(),
            done: false,
        });
        self.next_id
    }

    fn owe_prefetched(&mut self, slot: usize) {
        if self.pf_val[slot].is_none() && !self.program_waiting() {
            self.stats.link_waits += 1;
        }
        self.stats.local_replies += 1;
        self.owed.push_back(Owed::Prefetched(slot));
    }

    fn deliver(&mut self, id: u64, bytes: &[u8], end: bool) {
        for o in &mut self.owed {
            if let Owed::Remote { id: i, buf, done } = o
                && *i == id
            {
                buf.extend_from_slice(bytes);
                *done = end;
                return;
            }
        }
    }

    /// Writes every reply the program can have now, in order.
    fn pump(&mut self, out: &mut Output) {
        while let Some(front) = self.owed.front_mut() {
            match front {
                Owed::Local(r) => out.to_local.append(r),
                Owed::Remote { buf, done, .. } => {
                    self.partial |= !buf.is_empty();
                    out.to_local.append(buf);
                    if !*done {
                        return;
                    }
                }
                Owed::Prefetched(s) => match &self.pf_val[*s] {
                    Some(v) => out.to_local.extend_from_slice(v),
                    None => return,
                },
            }
            self.owed.pop_front();
            self.partial = false;
        }
    }

    fn fail(&mut self, out: &mut Output, why: String) {
        self.failed = true;
        if out.fail.is_none() {
            out.fail = Some(why);
        }
    }

    fn forward(&mut self, line: &[u8], multi: bool, capa: bool, out: &mut Output) -> u64 {
        out.to_tunnel.extend_from_slice(line);
        out.flush = true;
        let id = self.owe_remote();
        self.expect.push_back(Expect {
            multi,
            disp: Disp::Deliver { id, capa },
            unblocks: false,
        });
        id
    }

    fn release_user(&mut self, out: &mut Output) {
        if let Some(u) = self.held_user.take() {
            out.to_tunnel.extend_from_slice(&u);
            self.expect.push_back(Expect {
                multi: false,
                disp: Disp::VerifyUser,
                unblocks: false,
            });
        }
    }

    fn parse(&mut self, out: &mut Output) {
        while !self.blocked && !self.failed {
            let line = match take_line(&mut self.inbuf) {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => return self.fail(out, format!("POP3 command: {e}")),
            };
            self.command(line, out);
        }
    }

    fn command(&mut self, line: Vec<u8>, out: &mut Output) {
        if std::mem::take(&mut self.sasl_next) {
            // A SASL response: opaque, whatever it looks like.
            self.forward(&line, false, false, out);
            self.block_on_last();
            return;
        }
        let (verb, arg) = verb(&line);
        if verb != "PASS" {
            self.release_user(out);
        }
        if !matches!(
            verb.as_str(),
            "STAT" | "LIST" | "UIDL" | "RETR" | "TOP" | "NOOP" | "CAPA" | "STLS"
        ) {
            // May change what STAT/UIDL/LIST would say.
            self.pf_usable = [false; 3];
        }
        let slot = match (verb.as_str(), arg) {
            ("STAT", false) => Some(0),
            ("UIDL", false) => Some(1),
            ("LIST", false) => Some(2),
            _ => None,
        };
        match verb.as_str() {
            "USER" => {
                self.held_user = Some(line);
                self.owe_local(b"+OK\r\n".to_vec());
            }
            "PASS" if self.held_user.is_some() => {
                self.release_user(out);
                out.to_tunnel.extend_from_slice(&line);
                out.flush = true;
                let id = self.owe_remote();
                self.expect.push_back(Expect {
                    multi: false,
                    disp: Disp::Pass { id },
                    unblocks: false,
                });
                if self.cfg.prefetch && !self.prefetched {
                    self.prefetched = true;
                    for (s, cmd) in PREFETCH.iter().enumerate() {
                        out.to_tunnel.extend_from_slice(cmd);
                        self.expect.push_back(Expect {
                            multi: s > 0,
                            disp: Disp::Prefetch(s),
                            unblocks: false,
                        });
                    }
                    self.pf_usable = [true; 3];
                }
            }
            "STLS" => {
                // Not offered: the tunnel is encrypted; TLS upstream is ours.
                self.owe_local(b"-ERR STLS not available through straw\r\n".to_vec());
            }
            _ if slot.is_some_and(|s| self.pf_usable[s]) => {
                self.owe_prefetched(slot.unwrap_or_default());
            }
            "AUTH" => {
                self.forward(&line, !arg, false, out);
                self.block_on_last();
            }
            _ => {
                self.forward(&line, multi_if_ok(&verb, arg), verb == "CAPA", out);
            }
        }
    }

    fn block_on_last(&mut self) {
        if let Some(e) = self.expect.back_mut() {
            e.unblocks = true;
            self.blocked = true;
        }
    }

    fn reply_done(&mut self, e: Expect, reply: Vec<u8>, out: &mut Output) {
        let ok = reply.starts_with(b"+OK");
        match e.disp {
            Disp::Greeting { served, id } => {
                let apop = has_apop_timestamp(&reply);
                if let Some(s) = &served {
                    if !ok {
                        return self.fail(
                            out,
                            format!(
                                "POP3 server greeting is now {:?}, not the cached +OK",
                                String::from_utf8_lossy(text::trim_end(&reply))
                            ),
                        );
                    }
                    if apop {
                        out.cache_put.push((GREETING_KEY.into(), Vec::new()));
                        return self.fail(
                            out,
                            "POP3 server greeting now carries an APOP timestamp; cached greeting was served".into(),
                        );
                    }
                    if *s != reply {
                        out.cache_put.push((GREETING_KEY.into(), reply.clone()));
                    }
                } else if ok {
                    let v = if apop { Vec::new() } else { reply.clone() };
                    out.cache_put.push((GREETING_KEY.into(), v));
                }
                if let Some(id) = id {
                    self.deliver(id, &reply, true);
                }
            }
            Disp::Deliver { id, capa } => {
                if capa && ok {
                    self.deliver(id, &rewrite_capa(&reply), true);
                } else {
                    self.deliver(id, &reply, true);
                }
            }
            Disp::VerifyUser => {
                if !ok {
                    if !matches!(
                        self.expect.front(),
                        Some(Expect {
                            disp: Disp::Pass { .. },
                            ..
                        })
                    ) {
                        return self.fail(
                            out,
                            format!(
                                "POP3 server rejected USER after straw answered +OK: {:?}",
                                String::from_utf8_lossy(text::trim_end(&reply))
                            ),
                        );
                    }
                    self.user_err = Some(reply);
                }
            }
            Disp::Pass { id } => {
                // A rejected USER makes PASS fail; say why with its own words.
                let shown = self.user_err.take().unwrap_or(reply);
                if !shown.starts_with(b"+OK") {
                    self.pf_usable = [false; 3];
                }
                self.deliver(id, &shown, true);
            }
            Disp::Prefetch(s) => self.pf_val[s] = Some(reply),
        }
        if e.unblocks {
            self.blocked = false;
            self.sasl_next = is_continuation(&self.reader.first);
        }
    }
}

/// CAPA towards the program: no STLS (the tunnel is encrypted), PIPELINING
/// added (straw keeps replies in order whatever the program sends).
fn rewrite_capa(reply: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = reply.split_inclusive(|&b| b == b'\n').collect();
    let Some(last) = lines.pop() else {
        return reply.to_vec();
    };
    let mut out = Vec::with_capacity(reply.len() + 12);
    let mut pipelining = false;
    for (i, l) in lines.iter().enumerate() {
        let (v, _) = verb(l);
        if i > 0 && v == "STLS" {
            continue;
        }
        pipelining |= i > 0 && v == "PIPELINING";
        out.extend_from_slice(l);
    }
    if !pipelining {
        out.extend_from_slice(b"PIPELINING\r\n");
    }
    out.extend_from_slice(last);
    out
}

impl Accelerator for ClientAccel {
    fn start(&mut self, out: &mut Output) {
        ClientAccel::start(self, out)
    }

    /// `-ERR` stands for the first reply still owed. In the middle of a
    /// multi-line reply (a RETR cut short) the connection just closes: the
    /// missing terminating dot is the program's sign of failure, and an
    /// `-ERR` line would read as message text.
    fn link_lost(&mut self, out: &mut Output) {
        if self.failed {
            return;
        }
        self.failed = true;
        self.pump(out);
        if !self.partial {
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
            let Some(e) = self.expect.front() else {
                return self.fail(out, "POP3 reply with no command outstanding".into());
            };
            let (multi, streamed) = match e.disp {
                Disp::Deliver { id, capa: false } => (e.multi, Some(id)),
                _ => (e.multi, None),
            };
            let (n, done) = match self.reader.feed(data, multi, &mut self.cur) {
                Ok(r) => r,
                Err(err) => return self.fail(out, err),
            };
            data = &data[n..];
            if let Some(id) = streamed {
                // Stream long replies (RETR) to the program as they come.
                let piece = std::mem::take(&mut self.cur);
                self.deliver(id, &piece, false);
            }
            if done {
                let e = self.expect.pop_front().expect("front checked");
                let reply = std::mem::take(&mut self.cur);
                self.reply_done(e, reply, out);
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

/// Most reply bytes the server side holds back to merge a batch's replies.
const HOLD_LIMIT: usize = 16 * 1024;

/// Server side: next to the real POP3 server. Sends one command at a time
/// and forwards each reply whole and in order. Lockstep costs nothing here:
/// the real server is close.
#[derive(Debug, Default)]
pub struct ServerAccel {
    inbuf: Vec<u8>,
    /// Replies held back while more commands of the same batch are queued, so
    /// that e.g. the PASS reply and the prefetched STAT/UIDL/LIST replies
    /// cross the link together.
    held: Vec<u8>,
    greeted: bool,
    /// Multi-line-if-OK and bulk flags of the command awaiting its reply.
    inflight: Option<(bool, bool)>,
    reader: ReplyReader,
    sasl_next: bool,
    failed: bool,
}

impl ServerAccel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call once when the real server is connected (nothing to do: its
    /// greeting comes by itself).
    pub fn start(&mut self, _out: &mut Output) {}

    fn fail(&mut self, out: &mut Output, why: String) {
        self.failed = true;
        if out.fail.is_none() {
            out.fail = Some(why);
        }
    }

    fn send_next(&mut self, out: &mut Output) {
        if !self.greeted || self.inflight.is_some() || self.failed {
            return;
        }
        let line = match take_line(&mut self.inbuf) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => return self.fail(out, format!("POP3 command from client: {e}")),
        };
        let kind = if std::mem::take(&mut self.sasl_next) {
            (false, false)
        } else {
            let (v, arg) = verb(&line);
            (multi_if_ok(&v, arg), matches!(v.as_str(), "RETR" | "TOP"))
        };
        out.to_local.extend_from_slice(&line);
        self.inflight = Some(kind);
    }
}

impl Accelerator for ServerAccel {
    fn start(&mut self, out: &mut Output) {
        ServerAccel::start(self, out)
    }

    /// Bytes from the real server.
    fn from_local(&mut self, mut data: &[u8], drained: bool, out: &mut Output) {
        let mut completed = false;
        let mut completed_bulk = false;
        while !data.is_empty() && !self.failed {
            let (multi, bulk) = match (self.greeted, self.inflight) {
                (false, _) => (false, false),
                (true, Some(k)) => k,
                (true, None) => {
                    return self.fail(
                        out,
                        format!(
                            "POP3 server said something unasked: {:?}",
                            String::from_utf8_lossy(&data[..data.len().min(200)])
                        ),
                    );
                }
            };
            let (n, done) = match self.reader.feed(data, multi, &mut self.held) {
                Ok(r) => r,
                Err(e) => return self.fail(out, e),
            };
            data = &data[n..];
            out.bulk |= bulk;
            if done {
                completed = true;
                completed_bulk |= bulk;
                if !self.greeted {
                    self.greeted = true;
                } else {
                    self.inflight = None;
                    self.sasl_next = is_continuation(&self.reader.first);
                }
                self.send_next(out);
            }
        }
        // Release what we hold when the batch is answered, when a bulk reply
        // (RETR/TOP) is streaming, or when holding would cost memory.
        let batch_done = self.inflight.is_none();
        let streaming = matches!(self.inflight, Some((_, true)));
        if batch_done || streaming || completed_bulk || self.held.len() >= HOLD_LIMIT {
            out.to_tunnel.append(&mut self.held);
            out.flush |= (batch_done && completed)
                || completed_bulk
                || (drained && !out.to_tunnel.is_empty());
        }
    }

    /// Commands from the client side.
    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.inbuf.extend_from_slice(data);
        self.send_next(out);
    }
}
