//! The server side of the SMTP pair, next to the real server: runs the
//! dialogue in lockstep and forwards every reply; with a store it keeps each
//! body whole before the real server sees it (see [`resume`]).

use super::reply::{ReplyReader, code};
use super::resume::{Kept, Offered};
use super::{SYNTH_DATA, resume};
use crate::partial::SharedStore;
use crate::shared::lines::{DotScanner, take_line, unasked, verb};
use crate::{AccelStats, Accelerator, Output};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Await {
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
    /// `EHLO`: its reply may announce `SIZE`.
    Ehlo,
    /// `RCPT`: a 2xx makes a kept body possible.
    Rcpt,
    /// `QUIT`: the real server closes behind its reply (not flushed).
    Quit,
}

/// An end-of-data reply: it commits a message, so it is never held behind
/// a slower next command (a cut meanwhile would leave the program unsure).
fn end_of_data(a: Option<Await>) -> bool {
    matches!(a, Some(Await::Eod | Await::KeptEod))
}

/// A `DATA` whose 354 the client side gave the program itself.
fn stood_in(a: Option<Await>) -> bool {
    matches!(a, Some(Await::SynthData | Await::KeptData))
}

/// Default of [`ServerAccel::with_max_message`]: the largest body kept for
/// resume when the real server announces no smaller `SIZE` (50 MiB, past
/// what common servers accept: Postfix 10 MB, Gmail 25 MB, Exchange 35 MB).
pub const MAX_KEPT_MESSAGE: u64 = 50 << 20;

/// What the program hears for a kept body past the limit (RFC 5321
/// §4.5.3.1.10); the rest of the body is read and dropped.
pub(super) fn too_big(limit: u64) -> Vec<u8> {
    format!("552 5.3.4 straw: message exceeds the limit of {limit} bytes\r\n").into_bytes()
}

/// At most this much of replies is held for the next one (a long pipeline
/// of commands still crosses in records of about this size).
const HOLD_MAX: usize = 4096;

/// The program's reply to a body with no accepted recipient.
pub(super) const NO_RCPT: &[u8] = b"503 5.5.1 straw: no valid recipients\r\n";

/// Server side: next to the real SMTP server; runs the dialogue in lockstep
/// and forwards every reply.
#[derive(Debug)]
pub struct ServerAccel {
    pub(super) inbuf: Vec<u8>,
    pub(super) greeted: bool,
    pub(super) inflight: Option<Await>,
    pub(super) reader: ReplyReader,
    /// In a body: `true` forwards it to the real server, `false` swallows it.
    pub(super) body: Option<(DotScanner, bool)>,
    pub(super) sasl_next: bool,
    pub(super) failed: bool,
    /// Message resume: partial bodies and delivered-message records,
    /// keyed under `client` (see [`resume`]).
    pub(super) store: Option<SharedStore>,
    pub(super) client: String,
    pub(super) envelope: Vec<u8>,
    pub(super) kept: Option<Kept>,
    /// A whole kept body on its way to the real server, and its id.
    pub(super) sending: Option<(Vec<u8>, Option<String>)>,
    pub(super) offered: Option<Offered>,
    pub(super) stats: AccelStats,
    /// The real server accepted a `RCPT` of the current transaction.
    pub(super) rcpt_ok: bool,
    /// `SIZE` from the real server's EHLO reply (0: none or no limit).
    pub(super) size: u64,
    /// Largest body kept for resume (see [`MAX_KEPT_MESSAGE`]).
    pub(super) max_message: u64,
    /// A reply held while the command behind it, already here, is with the
    /// real server: it rides with that one's reply instead of taking an IP
    /// packet of its own. The client side sent both without waiting, so it
    /// either answered this one itself (greeting, EHLO, MAIL) or the program
    /// pipelines; the hold is the real server's answer time, which is
    /// close. The 354 to [`SYNTH_DATA`] (answered by the client side too,
    /// also when the server side keeps the body) waits for the end-of-data
    /// reply.
    pub(super) held: Vec<u8>,
}

impl Default for ServerAccel {
    fn default() -> Self {
        Self {
            inbuf: Vec::new(),
            greeted: false,
            inflight: None,
            reader: ReplyReader::default(),
            body: None,
            sasl_next: false,
            failed: false,
            store: None,
            client: String::new(),
            envelope: Vec::new(),
            kept: None,
            sending: None,
            offered: None,
            stats: AccelStats::default(),
            rcpt_ok: false,
            size: 0,
            max_message: MAX_KEPT_MESSAGE,
            held: Vec::new(),
        }
    }
}

impl ServerAccel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the next command is here whole and [`Self::step`] sends it
    /// to the real server at once (not a body, a SASL line or one of the
    /// pair's own lines, which may answer on the stream themselves).
    fn next_command_here(&self) -> bool {
        let own = b"XSTRAW-";
        self.inflight.is_none()
            && self.body.is_none()
            && !self.sasl_next
            && self.inbuf.contains(&b'\n')
            && !(self.inbuf.len() >= own.len() && self.inbuf[..own.len()].eq_ignore_ascii_case(own))
    }

    /// Keeps no body for resume past `max` bytes (nor past the real
    /// server's `SIZE`, if smaller): the program gets a 552 instead.
    pub fn with_max_message(mut self, max: u64) -> Self {
        self.max_message = max;
        self
    }

    /// The most body bytes kept for one message.
    pub(super) fn kept_limit(&self) -> u64 {
        match self.size {
            0 => self.max_message,
            s => s.min(self.max_message),
        }
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

    pub(super) fn fail(&mut self, out: &mut Output, why: impl std::fmt::Display) {
        self.failed = true;
        out.fail_once(why);
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
                "MAIL" => {
                    self.envelope = line.clone();
                    self.rcpt_ok = false;
                }
                "RCPT" => self.envelope.extend_from_slice(&line),
                "RSET" | "HELO" | "EHLO" => {
                    self.envelope.clear();
                    self.rcpt_ok = false;
                }
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
                    "EHLO" => Await::Ehlo,
                    "RCPT" => Await::Rcpt,
                    "QUIT" => Await::Quit,
                    _ => Await::Reply,
                }
            };
            self.inflight = Some(wait);
        }
    }
}

impl Accelerator for ServerAccel {
    fn stats(&self) -> AccelStats {
        self.stats
    }

    /// Bytes from the real server.
    fn from_local(&mut self, mut data: &[u8], _drained: bool, out: &mut Output) {
        while !data.is_empty() && !self.failed {
            if self.greeted && self.inflight.is_none() {
                return self.fail(out, unasked("SMTP server", data));
            }
            let (n, reply) = match self.reader.feed(data) {
                Ok(r) => r,
                Err(e) => return self.fail(out, e),
            };
            data = &data[n..];
            let Some(r) = reply else { continue };
            let c = code(&r);
            let inflight = std::mem::take(&mut self.inflight);
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
                Some(Await::Ehlo) if c / 100 == 2 => self.size = ehlo_size(&r),
                Some(Await::Rcpt) => self.rcpt_ok |= c / 100 == 2,
                Some(_) => {}
            }
            if inflight == Some(Await::Swallow) {
                out.flush |= !self.held.is_empty();
                out.to_tunnel.append(&mut self.held);
            } else if ((self.next_command_here() && !end_of_data(inflight))
                || (stood_in(inflight) && c == 354))
                && self.held.len() + r.len() <= HOLD_MAX
            {
                self.held.extend_from_slice(&r);
            } else {
                out.to_tunnel.append(&mut self.held);
                out.to_tunnel.extend_from_slice(&r);
                // QUIT's reply: the real server closes right behind it, and
                // the stream's end joins it in one record (the cork bounds
                // the wait should it not).
                out.flush |= inflight != Some(Await::Quit);
            }
            let idle = self.inflight.is_none();
            self.step(out);
            // A command of the program's was already here: sent ahead by the
            // client side without waiting for this reply to cross the link.
            let ours = matches!(self.inflight, None | Some(Await::Swallow));
            self.stats.link_waits_saved += u64::from(idle && !ours);
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

    fn tunnel_bytes_held(&self) -> usize {
        self.inbuf.len()
    }

    /// The real server closed: a reply still held goes now.
    fn local_eof(&mut self, out: &mut Output) {
        if !self.held.is_empty() {
            out.to_tunnel.append(&mut self.held);
            out.flush = true;
        }
    }
}

/// The `SIZE` an EHLO reply announces (RFC 1870), 0 if none.
fn ehlo_size(reply: &[u8]) -> u64 {
    reply
        .split(|&b| b == b'\n')
        .filter_map(|l| l.get(4..))
        .find_map(|kw| {
            let kw = String::from_utf8_lossy(kw);
            let mut w = kw.split_whitespace();
            w.next()
                .filter(|k| k.eq_ignore_ascii_case("SIZE"))
                .and_then(|_| w.next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
