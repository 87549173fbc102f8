//! The server side of the IMAP pair, next to the real server: passes
//! commands on (literals made synchronising again where the server wants
//! that), forwards every response, and answers resume requests.

use super::framer::{Ev, Framed, Framer, Lit, content, with_literal};
use super::reply::{caps_of, upper, word};
use super::select::{COND_SELECT, COND_SELECT_DECLINED, COND_SELECT_VERB};
use super::{BULK_RESP_LITERAL, ImapConfig, LITERAL_MINUS_MAX, resume};
use crate::partial::prefix_hash;
use crate::{AccelStats, Accelerator, Output};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RespKind {
    Greeting,
    Cont,
    Untagged { flush: bool },
    Tagged,
}

/// Server side: next to the real IMAP server.
#[derive(Debug)]
pub struct ServerAccel {
    cmds: Framer,
    resps: Framer,
    greeted: bool,
    literal_plus: bool,
    literal_minus: bool,
    /// Sent a synchronising literal to the real server; waiting for its `+`
    /// (or a refusal) for the command with this tag.
    waiting: Option<Vec<u8>>,
    /// The current command was refused: drop the rest of it.
    swallow: bool,
    cur_tag: Vec<u8>,
    cont_tag: Option<Vec<u8>>,
    idle_tag: Option<Vec<u8>>,
    resp_kind: RespKind,
    /// The current response is forwarded (else dropped).
    resp_pass: bool,
    resp_bulk: bool,
    failed: bool,
    /// A resume request waiting for its FETCH (see [`resume`]).
    offer_next: Option<resume::Offer>,
    /// The request bound to a FETCH, and that FETCH's tag.
    active: Option<(resume::Offer, Vec<u8>)>,
    /// Answers to requests, sent at the next point between responses.
    answers: Vec<u8>,
    /// A FETCH response held while it may carry the offered literal.
    hold: Option<Hold>,
    stats: AccelStats,
    /// The tag of the last command if it was a LOGIN.
    last_login: Option<Vec<u8>>,
    /// A LOGIN with the client side's `SELECT INBOX` right behind it: its
    /// tagged reply is not flushed alone, so that the program, once it
    /// has it, finds the SELECT's reply there too.
    login_cork: Option<Vec<u8>>,
    /// That LOGIN's tagged reply, held here until the SELECT's response
    /// starts (the real server is close) so that both cross in one record:
    /// the session's cork alone is a fraction of a millisecond on a fast
    /// link, less than the real server takes to answer the SELECT.
    login_held: Vec<u8>,
    /// The client side's [`COND_SELECT`] behind a LOGIN: (its tag, the
    /// LOGIN's tag). Commands stop here until LOGIN's reply decides it.
    cond_select: Option<(Vec<u8>, Vec<u8>)>,
    /// Whether the last capability list seen since then lists UNSELECT
    /// (Dovecot sends `* CAPABILITY` before LOGIN's OK when the client asked
    /// for them before, else a `[CAPABILITY ...]` code in it).
    cond_unselect: Option<bool>,
    /// A LOGOUT sent: its BYE and tagged reply are not flushed, since the
    /// real server closes right behind them and the stream's end joins them
    /// in one record (the session's cork bounds the wait should it not).
    logging_out: bool,
}

#[derive(Debug, Default)]
pub(super) struct Hold {
    /// The response up to the offered literal's line.
    buf: Vec<u8>,
    uid: Option<u32>,
    /// The line announcing the offered literal, and its literal.
    line: Option<(Vec<u8>, Lit)>,
    /// The literal so far.
    prefix: Vec<u8>,
}

impl Default for ServerAccel {
    fn default() -> Self {
        Self::new(ImapConfig::default())
    }
}

impl ServerAccel {
    pub fn new(cfg: ImapConfig) -> Self {
        ServerAccel {
            cmds: Framer::new(cfg.max_line, cfg.max_literal),
            resps: Framer::new(cfg.max_line, cfg.max_literal),
            greeted: false,
            literal_plus: false,
            literal_minus: false,
            waiting: None,
            swallow: false,
            cur_tag: Vec::new(),
            cont_tag: None,
            idle_tag: None,
            resp_kind: RespKind::Greeting,
            resp_pass: true,
            resp_bulk: false,
            failed: false,
            offer_next: None,
            active: None,
            answers: Vec::new(),
            hold: None,
            stats: AccelStats::default(),
            last_login: None,
            login_cork: None,
            login_held: Vec::new(),
            cond_select: None,
            cond_unselect: None,
            logging_out: false,
        }
    }

    /// Queues a tagged answer to a resume request.
    fn answer(&mut self, tag: &[u8], text: &str) {
        self.answers.extend_from_slice(tag);
        self.answers.push(b' ');
        self.answers.extend_from_slice(text.as_bytes());
        self.answers.extend_from_slice(b"\r\n");
    }

    /// Sends queued answers if the stream is between responses.
    fn flush_answers(&mut self, out: &mut Output) {
        if !self.answers.is_empty() && self.hold.is_none() && self.resps.between_messages() {
            out.to_tunnel.append(&mut self.login_held);
            out.to_tunnel.append(&mut self.answers);
            out.flush = true;
        }
    }

    /// A command line from the client side: a resume request is kept (not
    /// for the real server) and bound to the next command. Returns whether
    /// the line is ours.
    fn resume_cmd(&mut self, raw: &[u8], verb: &str, out: &mut Output) -> bool {
        let line = content(raw);
        if verb == resume::VERB {
            match resume::parse_request(line) {
                Ok(o) => {
                    if let Some(old) = self.offer_next.replace(o) {
                        self.answer(&old.tag, resume::NOT_RESUMED);
                    }
                }
                Err(e) => {
                    out.notes.push(format!("IMAP resume request refused: {e}"));
                    self.answer(word(line).0, resume::REFUSED);
                }
            }
            return true;
        }
        if let Some(o) = self.offer_next.take() {
            let (tag, rest) = word(line);
            let (v, rest) = word(rest);
            let fetch = v.eq_ignore_ascii_case(b"FETCH")
                || (v.eq_ignore_ascii_case(b"UID") && word(rest).0.eq_ignore_ascii_case(b"FETCH"));
            if fetch {
                if let Some((old, _)) = self.active.replace((o, tag.to_vec())) {
                    self.answer(&old.tag, resume::NOT_RESUMED);
                }
            } else {
                self.answer(&o.tag, resume::NOT_RESUMED);
            }
        }
        false
    }

    /// The offered literal's first `len` bytes are in (or it is shorter):
    /// send the answer and the held response, without the prefix if it
    /// matched.
    fn decide(&mut self, out: &mut Output) {
        let (Some(h), Some((o, _))) = (self.hold.take(), self.active.take()) else {
            return;
        };
        let Some((line, lit)) = h.line else { return };
        let matched = h.prefix.len() >= o.len && prefix_hash(&h.prefix[..o.len]) == o.hash;
        let mut answer = o.tag.clone();
        answer.push(b' ');
        if matched {
            answer.extend_from_slice(resume::RESUMED.as_bytes());
            answer.extend_from_slice(b"\r\n");
            out.to_tunnel.extend_from_slice(&answer);
            out.to_tunnel.extend_from_slice(&h.buf);
            let rest = Lit {
                n: lit.n - o.len as u64,
                ..lit
            };
            out.to_tunnel
                .extend_from_slice(&with_literal(&line, &rest, false));
            out.to_tunnel.extend_from_slice(&h.prefix[o.len..]);
            self.stats.message_resumes += 1;
            self.stats.message_resume_bytes += o.len as u64;
            out.notes.push(format!(
                "IMAP FETCH {} of UID {} resumed: {} bytes the client holds not sent again",
                o.item, o.uid, o.len
            ));
        } else {
            answer.extend_from_slice(resume::DIFFERS.as_bytes());
            answer.extend_from_slice(b"\r\n");
            out.to_tunnel.extend_from_slice(&answer);
            out.to_tunnel.extend_from_slice(&h.buf);
            out.to_tunnel.extend_from_slice(&line);
            out.to_tunnel.extend_from_slice(&h.prefix);
            out.notes.push(format!(
                "IMAP FETCH {} of UID {} resume: the client's {}-byte prefix differs from the {}-byte literal now on the server; sending it whole",
                o.item, o.uid, o.len, lit.n
            ));
        }
    }

    /// After one response event wrote `out.to_tunnel[mark..]`: hold it
    /// while an offered literal may be in this response.
    fn hold_step(&mut self, ev: &Ev, mark: usize, out: &mut Output) {
        let (Some(h), Some((o, _))) = (&mut self.hold, &self.active) else {
            return;
        };
        let new: Vec<u8> = out.to_tunnel.drain(mark..).collect();
        let decide = match ev {
            Ev::Line { raw, lit, .. } => {
                if h.uid.is_none() {
                    h.uid = resume::uid_in(content(raw));
                }
                let offered = |l: &Lit| {
                    resume::literal_item(&raw[..l.open]).as_deref() == Some(o.item.as_str())
                        && h.uid.is_none_or(|u| u == o.uid)
                };
                match lit {
                    Some(l) if h.line.is_none() && offered(l) => {
                        h.line = Some((new, *l));
                        l.n < o.len as u64
                    }
                    _ => {
                        h.buf.extend_from_slice(&new);
                        if lit.is_none() {
                            // The response ended without it.
                            out.to_tunnel.append(&mut h.buf);
                            self.hold = None;
                        }
                        false
                    }
                }
            }
            Ev::Lit(_) if h.line.is_some() => {
                h.prefix.extend_from_slice(&new);
                h.prefix.len() >= o.len
            }
            Ev::Lit(_) => {
                h.buf.extend_from_slice(&new);
                false
            }
        };
        if decide {
            self.decide(out);
        }
    }

    pub(super) fn fail(&mut self, out: &mut Output, why: impl std::fmt::Display) {
        self.failed = true;
        out.fail_once(why);
    }

    fn learn_caps(&mut self, line: &[u8]) {
        if let Some(c) = caps_of(line) {
            if self.cond_select.is_some() {
                self.cond_unselect = Some(c.iter().any(|a| a.eq_ignore_ascii_case("UNSELECT")));
            }
            self.literal_plus = c.iter().any(|a| a.eq_ignore_ascii_case("LITERAL+"));
            self.literal_minus = c.iter().any(|a| a.eq_ignore_ascii_case("LITERAL-"));
        }
    }

    /// Feed the real server commands from the stream, stopping at a
    /// synchronising literal until the real server answers it.
    fn pump_cmds(&mut self, out: &mut Output) {
        while self.waiting.is_none() && self.cond_select.is_none() && !self.failed {
            let ev = match self.cmds.next_ev() {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(e) => return self.fail(out, format!("from the client side: {e}")),
            };
            match ev {
                Ev::Line { raw, first, lit } => {
                    if first && self.cont_tag.is_none() {
                        self.swallow = false;
                        let (tag, rest) = word(content(&raw));
                        let (verb, _) = word(rest);
                        self.cur_tag = tag.to_vec();
                        let verb = upper(verb);
                        if lit.is_none() && self.resume_cmd(&raw, &verb, out) {
                            continue;
                        }
                        let login = self.last_login.take();
                        if tag.starts_with(resume::TAG_PREFIX.as_bytes())
                            && verb == COND_SELECT_VERB
                        {
                            self.cond_select_cmd(&raw, lit.is_some(), login, out);
                            continue;
                        }
                        if verb == "LOGIN" {
                            self.last_login = Some(tag.to_vec());
                        } else if verb == "SELECT" && tag.starts_with(resume::TAG_PREFIX.as_bytes())
                        {
                            self.login_cork = login;
                        }
                        if verb == "IDLE" {
                            self.idle_tag = Some(tag.to_vec());
                        }
                        self.logging_out |= verb == "LOGOUT";
                        if verb == "IDLE" || verb == "AUTHENTICATE" {
                            self.cont_tag = Some(tag.to_vec());
                        }
                    }
                    if self.swallow {
                        // A refused command's remaining segments.
                        continue;
                    }
                    match lit {
                        Some(l) => {
                            let plus = self.literal_plus
                                || (self.literal_minus && l.n <= LITERAL_MINUS_MAX);
                            out.to_local
                                .extend_from_slice(&with_literal(&raw, &l, plus));
                            if !plus {
                                self.waiting = Some(self.cur_tag.clone());
                            }
                        }
                        None => out.to_local.extend_from_slice(&raw),
                    }
                }
                Ev::Lit(data) => {
                    if !self.swallow {
                        out.to_local.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The client side's [`COND_SELECT`]: kept until LOGIN's reply when it
    /// follows a LOGIN as it should; else declined at once.
    fn cond_select_cmd(
        &mut self,
        raw: &[u8],
        has_lit: bool,
        login: Option<Vec<u8>>,
        out: &mut Output,
    ) {
        let tag = self.cur_tag.clone();
        match login {
            Some(login) if !has_lit && content(raw).ends_with(COND_SELECT.as_bytes()) => {
                self.cond_select = Some((tag, login));
                self.cond_unselect = None;
            }
            _ => {
                // Malformed or out of place: its literal, if any, is dropped.
                self.swallow = has_lit;
                out.notes.push(format!(
                    "IMAP conditional SELECT not behind a LOGIN, or malformed: {:?}",
                    String::from_utf8_lossy(&raw[..raw.len().min(80)])
                ));
                self.answer(&tag, COND_SELECT_DECLINED);
            }
        }
    }

    /// LOGIN's tagged reply with a [`COND_SELECT`] behind it: `SELECT
    /// INBOX` under its tag if the login worked and this server offers
    /// UNSELECT (the client side undoes a selection the program never asked
    /// for with it), else our answer right behind the reply. The commands
    /// held behind it go on either way. Returns whether the reply went on
    /// (then it is flushed as any tagged reply).
    fn decide_cond_select(&mut self, raw: &[u8], out: &mut Output) -> bool {
        let Some((tag, _)) = self.cond_select.take() else {
            return true;
        };
        let ok = word(word(content(raw)).1).0.eq_ignore_ascii_case(b"OK");
        let select = ok && self.cond_unselect == Some(true);
        if select {
            out.to_local.extend_from_slice(&tag);
            out.to_local.extend_from_slice(b" SELECT INBOX\r\n");
            self.hold_login_reply(raw);
        } else {
            out.to_tunnel.extend_from_slice(raw);
            self.answer(&tag, COND_SELECT_DECLINED);
            out.to_tunnel.append(&mut self.answers);
        }
        self.pump_cmds(out);
        !select
    }

    /// LOGIN's tagged reply with straw's SELECT behind it: kept in
    /// [`Self::login_held`] until the SELECT's response starts.
    fn hold_login_reply(&mut self, raw: &[u8]) {
        self.resp_kind = RespKind::Untagged { flush: false };
        self.login_held = raw.to_vec();
    }

    fn on_resp_start(&mut self, raw: &[u8], out: &mut Output) -> bool {
        let line = content(raw);
        self.learn_caps(line);
        if !self.greeted {
            self.greeted = true;
            self.resp_kind = RespKind::Greeting;
            out.to_tunnel.extend_from_slice(raw);
            return true;
        }
        if line.first() == Some(&b'+') {
            if self.waiting.take().is_some() {
                // The answer to our own synchronising literal. The literal
                // already here was sent ahead (LITERAL+ emulated by the
                // client side): one wait for a `+` over the link saved.
                self.resp_kind = RespKind::Untagged { flush: false };
                let before = out.to_local.len();
                self.pump_cmds(out);
                self.stats.link_waits_saved += u64::from(out.to_local.len() > before);
                return false;
            }
            self.resp_kind = RespKind::Cont;
            out.to_tunnel.extend_from_slice(raw);
            return true;
        }
        let (tag, rest) = word(line);
        let (w, text) = word(rest);
        if tag == b"*" {
            let idling = self.idle_tag.is_some();
            if idling && w.eq_ignore_ascii_case(b"OK") && text.first() != Some(&b'[') {
                // IDLE keep-alive: meaningless across the link.
                self.resp_kind = RespKind::Untagged { flush: false };
                return false;
            }
            let bye = w.eq_ignore_ascii_case(b"BYE");
            self.resp_kind = RespKind::Untagged {
                flush: idling || (bye && !self.logging_out),
            };
            out.to_tunnel.extend_from_slice(raw);
            return true;
        }
        self.resp_kind = RespKind::Tagged;
        if self
            .cond_select
            .as_ref()
            .is_some_and(|(_, login)| login == tag)
        {
            return self.decide_cond_select(raw, out);
        }
        if self.login_cork.as_deref() == Some(tag) {
            self.login_cork = None;
            self.hold_login_reply(raw);
            return false;
        }
        if self.idle_tag.as_deref() == Some(tag) {
            self.idle_tag = None;
        }
        if self.cont_tag.as_deref() == Some(tag) {
            self.cont_tag = None;
        }
        if self.logging_out {
            self.resp_kind = RespKind::Untagged { flush: false };
        }
        if self.waiting.as_deref() == Some(tag) {
            // The real server refused the literal: it will not read it, so
            // the rest of the command never reaches it.
            self.waiting = None;
            self.swallow = true;
            out.to_tunnel.extend_from_slice(raw);
            self.pump_cmds(out);
            return true;
        }
        out.to_tunnel.extend_from_slice(raw);
        true
    }

    fn on_resp(&mut self, ev: Ev, out: &mut Output) {
        let mut mark = out.to_tunnel.len();
        if let Ev::Line {
            raw, first: true, ..
        } = &ev
        {
            // Between responses: the place for answers (after a held LOGIN
            // reply, which this response now joins).
            out.to_tunnel.append(&mut self.login_held);
            out.to_tunnel.append(&mut self.answers);
            let line = content(raw);
            if let Some((o, ctag)) = &self.active {
                if word(line).0 == ctag.as_slice() {
                    let tag = o.tag.clone();
                    self.active = None;
                    self.answer(&tag, resume::NOT_RESUMED);
                    out.to_tunnel.append(&mut self.answers);
                } else if resume::fetch_seq(line).is_some() {
                    self.hold = Some(Hold::default());
                }
            }
            mark = out.to_tunnel.len();
        }
        self.on_resp_inner(&ev, out);
        self.hold_step(&ev, mark, out);
    }

    fn on_resp_inner(&mut self, ev: &Ev, out: &mut Output) {
        match ev {
            Ev::Line { raw, first, lit } => {
                let (first, lit) = (*first, *lit);
                if first {
                    self.resp_pass = self.on_resp_start(raw, out);
                } else if self.resp_pass {
                    out.to_tunnel.extend_from_slice(raw);
                }
                self.resp_bulk = lit.is_some_and(|l| l.n > BULK_RESP_LITERAL);
                if lit.is_none() && self.resp_pass {
                    out.flush |= match self.resp_kind {
                        RespKind::Greeting | RespKind::Cont | RespKind::Tagged => true,
                        RespKind::Untagged { flush } => flush,
                    };
                }
            }
            Ev::Lit(data) => {
                if self.resp_pass {
                    out.to_tunnel.extend_from_slice(data);
                    out.bulk |= self.resp_bulk;
                }
            }
        }
    }
}

impl Framed for ServerAccel {
    fn failed_flag(&mut self) -> &mut bool {
        &mut self.failed
    }
}

impl Accelerator for ServerAccel {
    fn stats(&self) -> AccelStats {
        self.stats
    }

    /// Bytes from the real server.
    fn from_local(&mut self, data: &[u8], _drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.resps.push(data);
        while self.step(|a| &mut a.resps, Self::on_resp, "the real server", out) {}
    }

    /// Commands from the client side.
    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.cmds.push(data);
        self.pump_cmds(out);
        self.flush_answers(out);
    }

    fn tunnel_bytes_held(&self) -> usize {
        self.cmds.held()
    }

    /// The real server closed: a LOGIN reply still held goes now.
    fn local_eof(&mut self, out: &mut Output) {
        if !self.login_held.is_empty() {
            out.to_tunnel.append(&mut self.login_held);
            out.flush = true;
        }
    }
}
