//! The server side of the POP3 pair, next to the real server: sends one
//! command at a time and forwards each reply whole and in order, holding
//! a batch's replies back so that they cross the link together.

use super::reply::{ReplyReader, is_continuation, multi_if_ok};
use super::{
    ABORT_ACK, ABORT_VERB, ACK_LINE, PREFETCH_ABORTED, SKIP_LINE, UPTO_REFUSED, UPTO_VERB, hold,
    msg_arg, resume,
};
use crate::shared::lines::{take_line, unasked, verb};
use crate::{AccelStats, Accelerator, Output};

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
    /// A resume request waiting for its RETR, and the RETR being resumed.
    resume_req: Option<(usize, String)>,
    resume: Option<resume::ServerResume>,
    /// A hold request waiting for its RETR, and the RETR being held.
    hold_req: Option<hold::HoldRequest>,
    hold: Option<hold::ServerHold>,
    /// The message number of the RETR awaiting its reply.
    inflight_retr: Option<u32>,
    /// The reply in flight was aborted: read and dropped to its end.
    dropping: bool,
    dropped: usize,
    /// A bulk reply's end is held (or was sent) without its flush yet.
    flush_owed: bool,
    /// An `XSTRAW-RETR-UPTO` whose `LIST n` is in flight.
    probe: Option<Probe>,
    stats: AccelStats,
}

/// `XSTRAW-RETR-UPTO n max` while the real server answers our `LIST n`.
#[derive(Debug)]
struct Probe {
    msg: u32,
    max: u64,
    /// The client side gave it up meanwhile: answered as an aborted prefetch.
    aborted: bool,
    reply: Vec<u8>,
}

/// `XSTRAW-RETR-UPTO n max` → `(n, max)`.
fn parse_upto(line: &[u8]) -> Option<(u32, u64)> {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_ascii_whitespace().skip(1);
    let n = words.next()?.parse().ok()?;
    let max = words.next()?.parse().ok()?;
    words.next().is_none().then_some((n, max))
}

impl ServerAccel {
    pub fn new() -> Self {
        Self::default()
    }

    fn fail(&mut self, out: &mut Output, why: impl std::fmt::Display) {
        self.failed = true;
        out.fail_once(why);
    }

    fn send_next(&mut self, out: &mut Output) {
        if !self.greeted || self.inflight.is_some() || self.failed {
            return;
        }
        let line = loop {
            let line = match take_line(&mut self.inbuf) {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => return self.fail(out, format!("POP3 command from client: {e}")),
            };
            if self.sasl_next {
                break line;
            }
            let (v, arg) = verb(&line);
            if let Some(req) = self.resume_req.take() {
                if v == "RETR" && arg {
                    self.resume = Some(resume::ServerResume::new(req.0, req.1));
                } else {
                    self.held.extend_from_slice(resume::NOT_RESUMED);
                }
            }
            if let Some(req) = self.hold_req.take() {
                let words: Vec<u64> = String::from_utf8_lossy(&line)
                    .split_ascii_whitespace()
                    .skip(1)
                    .map_while(|w| w.parse().ok())
                    .collect();
                match (v.as_str(), words.as_slice()) {
                    ("RETR", [_]) if self.resume.is_none() => {
                        self.hold = Some(hold::ServerHold::new(req, None));
                    }
                    ("TOP", [n, x]) if self.resume.is_none() => {
                        // The stub needs the whole original: asked as RETR
                        // (the real server is close), cut to x lines here.
                        self.hold = Some(hold::ServerHold::new(req, Some(*x)));
                        let retr = format!("RETR {n}\r\n").into_bytes();
                        out.to_local.extend_from_slice(&retr);
                        self.inflight = Some((true, true));
                        self.inflight_retr = None;
                        return;
                    }
                    _ => self.held.extend_from_slice(hold::NOT_HELD),
                }
            }
            if line == SKIP_LINE {
                self.held.extend_from_slice(PREFETCH_ABORTED);
                continue;
            }
            if line == ACK_LINE {
                self.held.extend_from_slice(ABORT_ACK);
                continue;
            }
            if v == hold::VERB {
                // Ours: answered with the next RETR's reply.
                match hold::parse_request(&line) {
                    Ok(req) => self.hold_req = Some(req),
                    Err(e) => {
                        out.notes.push(format!("POP3 hold request refused: {e}"));
                        self.held.extend_from_slice(hold::NOT_HELD);
                    }
                }
                continue;
            }
            if v == UPTO_VERB {
                // Ours: `LIST n` first (the real server is close), then
                // `RETR n` or a refusal, in this line's place.
                let Some((msg, max)) = parse_upto(&line) else {
                    out.notes.push("POP3: malformed RETR-UPTO line".into());
                    self.held.extend_from_slice(UPTO_REFUSED);
                    continue;
                };
                out.to_local
                    .extend_from_slice(format!("LIST {msg}\r\n").as_bytes());
                self.inflight = Some((false, false));
                self.inflight_retr = None;
                self.probe = Some(Probe {
                    msg,
                    max,
                    aborted: false,
                    reply: Vec::new(),
                });
                return;
            }
            if v != resume::VERB {
                break line;
            }
            // Ours, never the real server's: answered with the next RETR.
            match resume::parse_request(&line) {
                Ok(req) => self.resume_req = Some(req),
                Err(e) => {
                    out.notes.push(format!("POP3 resume request refused: {e}"));
                    self.held.extend_from_slice(resume::NOT_RESUMED);
                }
            }
        };
        self.inflight_retr = None;
        let kind = if std::mem::take(&mut self.sasl_next) {
            (false, false)
        } else {
            let (v, arg) = verb(&line);
            if v == "RETR" {
                self.inflight_retr = msg_arg(&line);
            }
            (multi_if_ok(&v, arg), matches!(v.as_str(), "RETR" | "TOP"))
        };
        out.to_local.extend_from_slice(&line);
        self.inflight = Some(kind);
    }

    /// The real server answered the `LIST n` of an `XSTRAW-RETR-UPTO`: ask
    /// for the message if it fits, else refuse in the line's place.
    fn after_probe(&mut self, p: Probe, out: &mut Output) {
        self.inflight = None;
        let size = String::from_utf8_lossy(&p.reply)
            .strip_prefix("+OK")
            .and_then(|rest| rest.split_ascii_whitespace().nth(1).map(str::to_owned))
            .and_then(|w| w.parse::<u64>().ok());
        if p.aborted {
            self.held.extend_from_slice(PREFETCH_ABORTED);
        } else if size.is_some_and(|size| size <= p.max) {
            out.to_local
                .extend_from_slice(format!("RETR {}\r\n", p.msg).as_bytes());
            self.inflight = Some((true, true));
            self.inflight_retr = Some(p.msg);
            return;
        } else {
            self.held.extend_from_slice(UPTO_REFUSED);
        }
        self.send_next(out);
    }

    /// Acts on abort lines as soon as they arrive, ahead of the commands
    /// queued before them: the aborted `RETR n` is the last one sent before
    /// the line (the client side never asks again for a prefetch it has not
    /// given up). Still queued, it is answered [`PREFETCH_ABORTED`] without
    /// asking; in flight, its reply is ended right where it is and the rest
    /// read and dropped. The line itself is answered in its place in order.
    fn take_aborts(&mut self, out: &mut Output) {
        let pat = ABORT_VERB.as_bytes();
        if !self.inbuf.windows(pat.len()).any(|w| w == pat) {
            return;
        }
        let mut rest = std::mem::take(&mut self.inbuf);
        let mut lines: Vec<Vec<u8>> = Vec::new();
        while let Some(p) = rest.iter().position(|&b| b == b'\n') {
            lines.push(rest.drain(..=p).collect());
        }
        for i in 0..lines.len() {
            if verb(&lines[i]).0 != ABORT_VERB {
                continue;
            }
            let n = msg_arg(&lines[i]);
            lines[i] = ACK_LINE.to_vec();
            let Some(n) = n else {
                out.notes
                    .push("POP3: abort line without a message number".into());
                continue;
            };
            let queued = (0..i).rev().find(|&j| {
                let v = verb(&lines[j]).0;
                (v == "RETR" || v == UPTO_VERB) && msg_arg(&lines[j]) == Some(n)
            });
            if let Some(j) = queued {
                lines[j] = SKIP_LINE.to_vec();
            } else if let Some(p) = self.probe.as_mut().filter(|p| p.msg == n) {
                p.aborted = true;
            } else if self.inflight_retr == Some(n)
                && !self.dropping
                && self.resume.is_none()
                && self.hold.is_none()
            {
                let end = self.reader.closing().unwrap_or(PREFETCH_ABORTED);
                self.held.extend_from_slice(end);
                self.dropping = true;
            }
        }
        self.inbuf = lines.concat();
        self.inbuf.append(&mut rest);
    }
}

impl Accelerator for ServerAccel {
    fn stats(&self) -> AccelStats {
        self.stats
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
                    return self.fail(out, unasked("POP3 server", data));
                }
            };
            if let Some(p) = &mut self.probe {
                let (n, done) = match self.reader.feed(data, false, &mut p.reply) {
                    Ok(r) => r,
                    Err(e) => return self.fail(out, e),
                };
                data = &data[n..];
                if done {
                    let p = self.probe.take().expect("checked");
                    self.after_probe(p, out);
                    completed = true;
                    self.stats.link_waits_saved += u64::from(self.inflight.is_some());
                }
                continue;
            }
            let mut dropped = Vec::new();
            let sink = if self.dropping {
                &mut dropped
            } else {
                &mut self.held
            };
            if let Some(h) = &mut self.hold {
                let mut piece = Vec::new();
                let (n, done) = match self.reader.feed(data, multi, &mut piece) {
                    Ok(r) => r,
                    Err(e) => return self.fail(out, e),
                };
                let status_len = self.reader.first.len();
                h.feed(&piece, status_len, done, &mut self.held, &mut out.notes);
                if done {
                    self.hold = None;
                }
                data = &data[n..];
                out.bulk |= bulk;
                if done {
                    completed = true;
                    completed_bulk |= bulk;
                    self.inflight = None;
                    self.inflight_retr = None;
                    self.sasl_next = false;
                    self.send_next(out);
                    self.stats.link_waits_saved += u64::from(self.inflight.is_some());
                }
                continue;
            }
            let (n, done) = match &mut self.resume {
                None => match self.reader.feed(data, multi, sink) {
                    Ok(r) => r,
                    Err(e) => return self.fail(out, e),
                },
                Some(r) => {
                    let mut piece = Vec::new();
                    let (n, done) = match self.reader.feed(data, multi, &mut piece) {
                        Ok(r) => r,
                        Err(e) => return self.fail(out, e),
                    };
                    let status_len = self.reader.first.len();
                    r.feed(&piece, status_len, done, &mut self.held, &mut out.notes);
                    if let Some(n) = r.take_resumed() {
                        self.stats.message_resumes += 1;
                        self.stats.message_resume_bytes += n as u64;
                    }
                    if done {
                        self.resume = None;
                    }
                    (n, done)
                }
            };
            data = &data[n..];
            self.dropped += dropped.len();
            out.bulk |= bulk;
            if done {
                completed = true;
                completed_bulk |= bulk;
                if !self.greeted {
                    self.greeted = true;
                } else {
                    if std::mem::take(&mut self.dropping) {
                        out.notes.push(format!(
                            "POP3 prefetched RETR cut short: {} bytes of it not sent",
                            std::mem::take(&mut self.dropped)
                        ));
                    }
                    self.inflight = None;
                    self.inflight_retr = None;
                    self.sasl_next = is_continuation(&self.reader.first);
                }
                self.send_next(out);
                // The next command was already here: the client side sent
                // it without waiting for this reply to cross the link.
                self.stats.link_waits_saved += u64::from(self.inflight.is_some());
            }
        }
        // Release what we hold when the batch is answered, when a bulk reply
        // (RETR/TOP) is streaming, or when holding would cost memory.
        let batch_done = self.inflight.is_none();
        let streaming = matches!(self.inflight, Some((_, true)));
        self.flush_owed |= completed_bulk;
        // A bulk reply ended and the next command is a bulk one (a pipelined
        // or prefetched RETR): keep the end until the next status line is
        // here (the real server is close), so both cross together and the
        // program, asking as soon as it has the end, finds the next reply
        // already there.
        let join_next = streaming && !self.reader.in_body() && !self.dropping;
        if join_next && self.flush_owed && self.held.len() < HOLD_LIMIT {
            return;
        }
        if batch_done || streaming || completed_bulk || self.held.len() >= HOLD_LIMIT {
            out.to_tunnel.append(&mut self.held);
            out.flush |= (batch_done && completed)
                || std::mem::take(&mut self.flush_owed)
                || (drained && !out.to_tunnel.is_empty());
        }
    }

    /// Commands from the client side.
    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.inbuf.extend_from_slice(data);
        self.take_aborts(out);
        self.send_next(out);
        // An abort's own bytes (a reply's end, answers in place of commands)
        // go now: nothing else would send them soon.
        let streaming = matches!(self.inflight, Some((_, true)));
        if self.greeted && (self.inflight.is_none() || streaming) && !self.held.is_empty() {
            out.to_tunnel.append(&mut self.held);
            out.flush = true;
            self.flush_owed = false;
        }
    }

    fn tunnel_bytes_held(&self) -> usize {
        self.inbuf.len()
    }
}
