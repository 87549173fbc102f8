//! The client side of the SMTP pair, next to the mail program: answers
//! what commits nothing, forwards the rest, and checks every real reply it
//! already answered (see the [module docs](super)).

use std::collections::VecDeque;

use super::reply::{ReplyReader, code, ehlo_caps, is_complete_reply, rewrite_ehlo};
use super::resume::Hold;
use super::{
    BULK_AFTER, BYE, DATA_GO, EHLO_KEY, GREETING_KEY, LINK_LOST, MAIL_OK, SYNTH_DATA, resume,
};
use crate::partial::SharedStore;
use crate::shared::lines::{DotScanner, take_line, trim_end, verb};
use crate::shared::owed::OwedReplies;
use crate::{AccelStats, Accelerator, Activity, Cache, Output, hold_words};

#[derive(Debug)]
pub(super) enum Disp {
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

/// Client side: next to the mail program.
#[derive(Debug)]
pub struct ClientAccel {
    pub(super) greeting: Option<Vec<u8>>,
    pub(super) ehlo: Option<Vec<u8>>,
    pub(super) inbuf: Vec<u8>,
    pub(super) expect: VecDeque<Disp>,
    pub(super) owed: OwedReplies,
    pub(super) reader: ReplyReader,
    /// Parsing waits for a reply (plain DATA, AUTH).
    pub(super) blocked: bool,
    pub(super) sasl_next: bool,
    /// Inside a message body from the program.
    pub(super) body: Option<DotScanner>,
    pub(super) body_len: usize,
    /// The last body's length, while its end-of-data reply is awaited.
    pub(super) sent_len: usize,
    /// Transaction counter (MAIL/RSET/HELO/EHLO start a new one).
    pub(super) txn: u64,
    /// Message resume (see [`resume`]): marks of unconfirmed messages.
    pub(super) store: Option<SharedStore>,
    /// This transaction's MAIL and RCPT lines, as sent.
    pub(super) envelope: Vec<u8>,
    /// The start of a body held back until it is known whether the server
    /// side has some of it.
    pub(super) hold: Option<Hold>,
    /// The mark of the message whose end-of-data reply is outstanding.
    pub(super) mark: Option<String>,
    pub(super) rcpt_ok_txn: Option<u64>,
    /// The real reply to a locally accepted MAIL, if it was a refusal.
    pub(super) mail_err: Option<Vec<u8>>,
    /// The real refusal of a locally accepted DATA, for the body's end.
    pub(super) data_err: Option<Vec<u8>>,
    pub(super) failed: bool,
    /// QUIT was answered: the program is done and expects nothing more.
    pub(super) quit_answered: bool,
    /// Why new messages are held back (the call's budget is spent), if so.
    pub(super) bulk_held: Option<String>,
    /// The transaction whose MAIL was refused here for that: its RCPT and
    /// DATA get the same temporary refusal, nothing goes over the link.
    pub(super) held_txn: Option<u64>,
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
            owed: OwedReplies::default(),
            reader: ReplyReader::default(),
            blocked: false,
            sasl_next: false,
            body: None,
            body_len: 0,
            sent_len: 0,
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
            bulk_held: None,
            held_txn: None,
        }
    }

    /// Resumes cut-off messages with marks kept in `store` (see [`resume`]).
    pub fn with_store(mut self, store: SharedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Replies arrive whole: each completes its place in the queue.
    fn deliver(&mut self, id: u64, r: Vec<u8>) {
        self.owed.deliver(id, &r, true);
    }

    fn pump(&mut self, out: &mut Output) {
        self.owed.pump(&mut out.to_local);
    }

    pub(super) fn fail(&mut self, out: &mut Output, why: impl std::fmt::Display) {
        self.failed = true;
        out.fail_once(why);
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

    pub(super) fn forward(
        &mut self,
        line: &[u8],
        out: &mut Output,
        mk: impl FnOnce(u64) -> Disp,
    ) -> u64 {
        out.to_tunnel.extend_from_slice(line);
        out.flush = true;
        let id = self.owed.owe_remote();
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
                self.sent_len = std::mem::take(&mut self.body_len);
                out.flush = true;
                match self.data_err.take() {
                    // DATA was refused: that refusal is the answer.
                    Some(err) => self.owed.push_local(err),
                    None => {
                        let id = self.owed.owe_remote();
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
                        self.owed.owe_local(rewrite_ehlo(&e));
                        self.expect.push_back(Disp::Ehlo {
                            served: Some(e),
                            id: None,
                        });
                    }
                    None => {
                        out.flush = true;
                        let id = self.owed.owe_remote();
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
            "MAIL" if self.bulk_held.is_some() => {
                // 451 (temporary): the program keeps the message queued and
                // tries again later; nothing was sent, nothing bounces.
                self.txn += 1;
                self.envelope.clear();
                self.held_txn = Some(self.txn);
                let why = hold_words(self.bulk_held.as_deref().unwrap_or_default());
                self.owed
                    .owe_local(format!("451 4.7.0 straw: {why}\r\n").into_bytes());
            }
            "RCPT" | "DATA" if self.held_txn == Some(self.txn) => {
                // Pipelined behind the refused MAIL (RFC 2920): refused the
                // same temporary way, never a 5xx that could bounce.
                self.owed.owe_local(
                    b"451 4.7.0 straw: no transaction (MAIL was held back)\r\n".to_vec(),
                );
            }
            "MAIL" => {
                // Commits nothing; its real reply is checked, and a refusal
                // shows at RCPT. Not flushed: it rides with the RCPT.
                self.txn += 1;
                self.envelope = line.clone();
                out.to_tunnel.extend_from_slice(&line);
                self.owed.owe_local(MAIL_OK.to_vec());
                self.expect.push_back(Disp::Mail);
            }
            "RCPT" => {
                self.envelope.extend_from_slice(&line);
                let txn = self.txn;
                self.forward(&line, out, |id| Disp::Rcpt { id, txn });
            }
            "DATA" if self.rcpt_ok_txn == Some(self.txn) => {
                self.owed.owe_local(DATA_GO.to_vec());
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
                self.owed.owe_local(BYE.to_vec());
                self.quit_answered = true;
                self.expect.push_back(Disp::Swallow);
            }
            "AUTH" => {
                self.forward(&line, out, |id| Disp::Auth { id });
                self.blocked = true;
            }
            "STARTTLS" => self
                .owed
                .owe_local(b"454 4.7.0 TLS not available through straw\r\n".to_vec()),
            "BDAT" => self.fail(
                out,
                "SMTP BDAT (CHUNKING) was not offered; straw can't frame it",
            ),
            _ if v.starts_with("XSTRAW") => self
                .owed
                .owe_local(b"500 5.5.1 Command unrecognized\r\n".to_vec()),
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
    /// Call once when the program connects: serves the cached greeting, or
    /// waits for the real one.
    fn start(&mut self, out: &mut Output) {
        let (served, id) = self.owed.owe_cached(self.greeting.clone());
        self.expect.push_back(Disp::Greeting { served, id });
        self.pump(out);
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

    fn hold_bulk(&mut self, why: Option<&str>) {
        self.bulk_held = why.map(str::to_owned);
    }

    fn stats(&self) -> AccelStats {
        self.owed.stats
    }

    /// A message body on its way up, with the size MAIL FROM announced
    /// (`SIZE=`), until the real server's end-of-data reply.
    fn activity(&self) -> Option<Activity> {
        let (rcpts, size) = envelope_shape(&self.envelope);
        let to = match rcpts {
            1 => "to 1 recipient".to_owned(),
            n => format!("to {n} recipients"),
        };
        if self.body.is_some() {
            let done = self.body_len as u64;
            return Some(Activity::new(format!("SMTP DATA {to}"), done, size).upload());
        }
        if self.expect.iter().any(|d| matches!(d, Disp::Eod { .. })) {
            // All sent; the same transfer until the reply says it is done.
            let done = self.sent_len as u64;
            let what = format!("SMTP DATA {to}");
            return Some(Activity::new(what, done, size.or(Some(done))).upload());
        }
        None
    }
}

/// Recipients in a transaction's MAIL and RCPT lines, and the `SIZE=` its
/// MAIL FROM gave.
fn envelope_shape(envelope: &[u8]) -> (usize, Option<u64>) {
    let mut rcpts = 0;
    let mut size = None;
    for line in envelope.split_inclusive(|&b| b == b'\n') {
        let (v, _) = verb(line);
        if v == "RCPT" {
            rcpts += 1;
        } else if v == "MAIL" {
            size = String::from_utf8_lossy(trim_end(line))
                .split_ascii_whitespace()
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.eq_ignore_ascii_case("SIZE"))
                .and_then(|(_, n)| n.parse().ok());
        }
    }
    (rcpts, size)
}

#[cfg(test)]
mod activity_tests {
    use super::*;

    #[test]
    fn data_shows_recipients_and_the_announced_size() {
        let mut c = ClientAccel::new(&Cache::new());
        let mut out = Output::default();
        c.start(&mut out);
        c.from_tunnel(b"220 mx ready\r\n", &mut out);
        c.from_local(b"EHLO boat\r\n", true, &mut out);
        c.from_tunnel(b"250-mx\r\n250 SIZE 1000000\r\n", &mut out);
        assert_eq!(c.activity(), None);
        c.from_local(
            b"MAIL FROM:<a@boat> size=40\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\n",
            true,
            &mut out,
        );
        c.from_tunnel(b"250 ok\r\n250 ok\r\n250 ok\r\n", &mut out);
        c.from_local(b"DATA\r\nSubject: hi\r\n\r\n", true, &mut out);
        assert_eq!(
            c.activity(),
            Some(Activity::new("SMTP DATA to 2 recipients", 15, Some(40)).upload())
        );
        c.from_local(b"0123456789\r\n.\r\n", true, &mut out);
        assert_eq!(
            c.activity(),
            Some(Activity::new("SMTP DATA to 2 recipients", 30, Some(40)).upload())
        );
        c.from_tunnel(b"354 go\r\n250 queued\r\n", &mut out);
        assert_eq!(c.activity(), None);
    }

    #[test]
    fn without_size_the_total_is_unknown() {
        assert_eq!(
            envelope_shape(b"MAIL FROM:<a>\r\nRCPT TO:<b>\r\n"),
            (1, None)
        );
        assert_eq!(envelope_shape(b"MAIL FROM:<a> SIZE=x\r\n"), (0, None));
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_spent_budget_refuses_new_mail_temporarily_and_sends_nothing() {
        let mut c = ClientAccel::new(&Cache::new());
        let mut out = Output::default();
        c.start(&mut out);
        c.from_tunnel(b"220 mx ready\r\n", &mut out);
        c.from_local(b"EHLO boat\r\n", true, &mut out);
        c.from_tunnel(b"250-mx\r\n250 PIPELINING\r\n", &mut out);
        out.to_local.clear();
        out.to_tunnel.clear();

        c.hold_bulk(Some("call budget spent"));
        // A pipelined transaction: every reply temporary (4xx), none sent.
        c.from_local(
            b"MAIL FROM:<a@boat>\r\nRCPT TO:<b@x>\r\nDATA\r\n",
            true,
            &mut out,
        );
        assert!(out.to_tunnel.is_empty(), "nothing went over the link");
        let replies = String::from_utf8(out.to_local.clone()).unwrap();
        let codes: Vec<&str> = replies.lines().map(|l| &l[..9]).collect();
        assert_eq!(codes, ["451 4.7.0"; 3], "{replies}");
        assert!(replies.starts_with("451 4.7.0 straw: call budget spent\r\n"));
        out.to_local.clear();

        // Interactive commands still go; RSET ends the refused transaction.
        c.from_local(b"NOOP\r\n", true, &mut out);
        assert_eq!(out.to_tunnel, b"NOOP\r\n");
        c.from_tunnel(b"250 ok\r\n", &mut out);
        out.to_tunnel.clear();
        c.hold_bulk(None);
        c.from_local(b"MAIL FROM:<a@boat>\r\nRCPT TO:<b@x>\r\n", true, &mut out);
        assert_eq!(out.to_tunnel, b"MAIL FROM:<a@boat>\r\nRCPT TO:<b@x>\r\n");
    }
}
