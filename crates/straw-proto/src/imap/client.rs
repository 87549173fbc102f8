//! The client side of the IMAP pair, next to the mail program: answers
//! what commits nothing (see the [module docs](super)), passes the rest,
//! and checks every real reply it already answered.

use std::collections::HashMap;

use super::framer::{Ev, Framed, Framer, content, with_literal};
use super::reply::{cap_set, caps_of, greeting_sig, rewrite_caps, rewrite_line, show, upper, word};
use super::resume::ClientOffer;
use super::select::{Prefetch, Tagged};
use super::{
    AUTHED_CAPABILITY_KEY, BULK_LITERAL, CAPABILITY_KEY, COND_SELECT_DECLINED_KEY, GREETING_KEY,
    ImapConfig, LINK_LOST, resume,
};
use crate::partial::SharedStore;
use crate::{AccelStats, Accelerator, Activity, Cache, Output, activity_text, hold_words};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Greeting {
    /// Waiting for the real greeting; `served` if the cached one was shown.
    Awaiting {
        served: bool,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PendKind {
    /// Forwarded; the program waits for the real reply.
    Plain { auth: bool },
    /// Answered from cache; the real reply is checked and swallowed.
    LocalCap { seen: bool },
    /// Answered locally; the real reply is checked and swallowed.
    LocalLogout,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) tag: Vec<u8>,
    pub(super) kind: PendKind,
}

/// Client side: next to the mail program.
#[derive(Debug)]
pub struct ClientAccel {
    pub(super) cached_greeting: Option<Vec<u8>>,
    pub(super) cached_caps: Option<Vec<String>>,
    pub(super) cmds: Framer,
    pub(super) resps: Framer,
    pub(super) greeting: Greeting,
    pub(super) authed: bool,
    pub(super) pending: Vec<Pending>,
    /// Forwarded commands the program is waiting on.
    pub(super) awaited: usize,
    /// IDLE/AUTHENTICATE in progress: program lines are continuation data.
    pub(super) cont_tag: Option<Vec<u8>>,
    pub(super) cmd_bulk: bool,
    pub(super) unflushed: bool,
    /// The current response is passed to the program (else swallowed).
    pub(super) resp_pass: bool,
    pub(super) resp_bulk: bool,
    pub(super) stats: AccelStats,
    pub(super) failed: bool,
    /// Message resume (see [`resume`]); None: off.
    pub(super) store: Option<SharedStore>,
    /// The LOGIN name: part of a partial's key.
    pub(super) user: Option<String>,
    /// Selected mailbox and its UIDVALIDITY.
    pub(super) mailbox: Option<(String, u32)>,
    /// A SELECT/EXAMINE in flight: tag, mailbox, UIDVALIDITY once seen.
    pub(super) selecting: Option<(Vec<u8>, String, Option<u32>)>,
    /// Sequence number → UID, learned from FETCH responses.
    pub(super) seq_uids: HashMap<u32, u32>,
    /// The server side doesn't know resume requests (an older straw).
    pub(super) resume_refused: bool,
    pub(super) own_seq: u64,
    /// Offers sent, waiting for their answer.
    pub(super) offers: Vec<ClientOffer>,
    /// Offer the server side took: the next literal of its item carries
    /// only the remainder.
    pub(super) armed: Option<ClientOffer>,
    /// `armed` was set by the response that just ended.
    pub(super) armed_fresh: bool,
    /// Own `FETCH n (UID)` lookups in flight: tag, sequence number.
    pub(super) lookups: Vec<(Vec<u8>, u32)>,
    /// A program FETCH waiting for its UID lookup.
    pub(super) stashed: Option<Vec<u8>>,
    pub(super) lookup_wait: bool,
    /// The stashed FETCH is being handled: no second lookup.
    pub(super) replaying: bool,
    /// A CLOSE/UNSELECT in flight: its tag.
    pub(super) closing: Option<Vec<u8>>,
    /// Commands wait for a SELECT's answer (see `drain_cmds`).
    pub(super) select_wait: bool,
    /// The untagged FETCH response being read: sequence number, UID if seen.
    pub(super) fetch_resp: Option<(u32, Option<u32>)>,
    /// Literal being kept in the store: key, bytes still to come.
    pub(super) keeping: Option<(String, u64)>,
    /// For the status screen: the response literal passing to the program,
    /// the command literal going up (APPEND), the last command's verb.
    pub(super) resp_lit: Option<Activity>,
    pub(super) cmd_lit: Option<Activity>,
    pub(super) last_verb: String,
    /// The program sent LOGOUT: an end of input after it is a goodbye, not
    /// an abandoned reply.
    pub(super) logout_sent: bool,
    /// The response being read: sequence number and UID, for naming its
    /// literal.
    pub(super) resp_msg: (Option<u32>, Option<u32>),
    /// Why message bodies are held back (the call's budget is spent), if so.
    pub(super) bulk_held: Option<String>,
    /// `SELECT INBOX` asked for with the login (see [`super::select`]).
    pub(super) prefetch_select: bool,
    pub(super) prefetch_tried: bool,
    pub(super) prefetch: Option<Prefetch>,
    /// The LOGIN just begun takes the prefetch behind it.
    pub(super) prefetch_now: bool,
    /// Cached post-login capabilities.
    pub(super) authed_caps: Option<Vec<String>>,
    /// This connection's post-login capabilities list UNSELECT, once known.
    pub(super) unselect_now: Option<bool>,
    /// A `* CAPABILITY` that came within the login's response.
    login_caps: Option<Vec<u8>>,
    /// The conditional SELECT is not asked (see [`COND_SELECT_DECLINED_KEY`]).
    pub(super) cond_declined: bool,
    /// Our UNSELECT in flight: its tag, and whether our SELECT succeeded
    /// (None: not known yet).
    pub(super) unselecting: Option<(Vec<u8>, Option<bool>)>,
    /// A program command waits for that UNSELECT (it is in `stashed`).
    pub(super) unselect_wait: bool,
    /// Tagged replies to come before untagged mailbox updates stop being
    /// about the prefetched INBOX (they are swallowed till then).
    pub(super) stale: usize,
    /// The current response is kept for the prefetch.
    pub(super) resp_keep: bool,
}

impl ClientAccel {
    pub fn new(cache: &Cache) -> Self {
        Self::with_config(cache, ImapConfig::default())
    }

    pub fn with_config(cache: &Cache, cfg: ImapConfig) -> Self {
        let cached_caps = cache.get(CAPABILITY_KEY).and_then(|l| caps_of(content(l)));
        let authed_caps = cache
            .get(AUTHED_CAPABILITY_KEY)
            .and_then(|l| caps_of(content(l)));
        ClientAccel {
            cond_declined: cache.get(COND_SELECT_DECLINED_KEY).is_some(),
            cached_greeting: cache.get(GREETING_KEY).map(|g| content(g).to_vec()),
            cached_caps,
            cmds: Framer::new(cfg.max_line, cfg.max_literal),
            resps: Framer::new(cfg.max_line, cfg.max_literal),
            greeting: Greeting::Awaiting { served: false },
            authed: false,
            pending: Vec::new(),
            logout_sent: false,
            awaited: 0,
            cont_tag: None,
            cmd_bulk: false,
            unflushed: false,
            resp_pass: true,
            resp_bulk: false,
            stats: AccelStats::default(),
            failed: false,
            store: None,
            user: None,
            mailbox: None,
            selecting: None,
            seq_uids: HashMap::new(),
            resume_refused: false,
            own_seq: 0,
            offers: Vec::new(),
            armed: None,
            armed_fresh: false,
            lookups: Vec::new(),
            stashed: None,
            lookup_wait: false,
            replaying: false,
            closing: None,
            select_wait: false,
            fetch_resp: None,
            keeping: None,
            resp_lit: None,
            cmd_lit: None,
            last_verb: String::new(),
            resp_msg: (None, None),
            bulk_held: None,
            prefetch_select: cfg.prefetch_select,
            prefetch_tried: false,
            prefetch: None,
            prefetch_now: false,
            authed_caps,
            unselect_now: None,
            login_caps: None,
            unselecting: None,
            unselect_wait: false,
            stale: 0,
            resp_keep: false,
        }
    }

    /// Keeps interrupted FETCH body literals in `store` and resumes them.
    pub fn with_store(mut self, store: SharedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Answers command `tag` here: `untagged`, then the tag and `done`, go
    /// to the program; the server's own answer is expected as `kind`.
    /// Returns true (the command is handled).
    fn answer_here(
        &mut self,
        tag: &[u8],
        untagged: &[u8],
        done: &[u8],
        kind: PendKind,
        out: &mut Output,
    ) -> bool {
        out.to_local.extend_from_slice(untagged);
        out.to_local.extend_from_slice(tag);
        out.to_local.extend_from_slice(done);
        self.stats.local_replies += 1;
        self.pending.push(Pending {
            tag: tag.to_vec(),
            kind,
        });
        true
    }

    pub(super) fn fail(&mut self, out: &mut Output, why: impl std::fmt::Display) {
        self.failed = true;
        out.fail_once(why);
    }

    fn begin_command(&mut self, raw: &[u8], has_lit: bool, out: &mut Output) -> bool {
        let line = content(raw);
        let (tag, rest) = word(line);
        let (verb, args) = word(rest);
        let verb = upper(verb);
        let auth_pending = self
            .pending
            .iter()
            .any(|p| p.kind == PendKind::Plain { auth: true });
        self.logout_sent |= verb == "LOGOUT";
        let greeted = self.greeting != Greeting::Awaiting { served: false };
        if verb == "CAPABILITY"
            && !has_lit
            && !self.authed
            && !auth_pending
            && greeted
            && let Some(caps) = &self.cached_caps
        {
            let untagged = format!("* CAPABILITY {}\r\n", rewrite_caps(caps).join(" "));
            let done = b" OK CAPABILITY completed\r\n";
            let kind = PendKind::LocalCap { seen: false };
            return self.answer_here(tag, untagged.as_bytes(), done, kind, out);
        }
        if verb == "LOGOUT" && !has_lit && self.awaited == 0 && greeted {
            // Nothing is outstanding, so the program learns every result
            // before it goes; LOGOUT itself commits nothing (no expunge).
            let done = b" OK Logout completed.\r\n";
            return self.answer_here(
                tag,
                b"* BYE Logging out\r\n",
                done,
                PendKind::LocalLogout,
                out,
            );
        }
        self.track_command(line, &verb, args, has_lit, out);
        self.last_verb = match verb.as_str() {
            "UID" => activity_text(&format!("UID {}", upper(word(args).0))),
            v => activity_text(v),
        };
        let auth = verb == "LOGIN" || verb == "AUTHENTICATE";
        if verb == "LOGIN" && !has_lit && !self.authed && self.want_prefetch() {
            // Sent right behind the LOGIN line (see on_cmd).
            self.prefetch_now = true;
        }
        self.pending.push(Pending {
            tag: tag.to_vec(),
            kind: PendKind::Plain { auth },
        });
        if self.awaited == 0 {
            self.stats.link_waits += 1;
        }
        self.awaited += 1;
        if verb == "IDLE" || verb == "AUTHENTICATE" {
            self.cont_tag = Some(tag.to_vec());
        }
        false
    }

    /// Hands the program's commands on, pausing after a SELECT while it is
    /// in flight if the store holds partials for this account: a FETCH
    /// pipelined behind it can only be offered once UIDVALIDITY is known.
    fn drain_cmds(&mut self, out: &mut Output) {
        loop {
            if self.lookup_wait || self.unselect_wait {
                return;
            }
            if self.selecting.is_some()
                && self.cmds.between_messages()
                && self.cont_tag.is_none()
                && let (Some(store), Some(user)) = (&self.store, &self.user)
                && store.any_with_prefix(&resume::account_prefix(user))
            {
                self.select_wait = true;
                return;
            }
            if !self.step(|a| &mut a.cmds, Self::on_cmd, "the mail program", out) {
                return;
            }
        }
    }

    /// Follows what a partial's key is made of (account, mailbox,
    /// UIDVALIDITY) and offers a stored prefix before a FETCH.
    fn track_command(
        &mut self,
        line: &[u8],
        verb: &str,
        args: &[u8],
        has_lit: bool,
        out: &mut Output,
    ) {
        if self.store.is_none() {
            return;
        }
        match verb {
            "LOGIN" => self.user = resume::astring(args).map(|(u, _)| u),
            // The account name is inside SASL: no message resume.
            "AUTHENTICATE" => self.user = None,
            // Responses to earlier commands still belong to the old
            // mailbox: it changes with the tagged reply.
            "SELECT" | "EXAMINE" => {
                let tag = word(line).0.to_vec();
                let name = resume::astring(args).map(|(m, _)| {
                    if m.eq_ignore_ascii_case("INBOX") {
                        "INBOX".into()
                    } else {
                        m
                    }
                });
                self.selecting = Some((tag, name.unwrap_or_default(), None));
            }
            "CLOSE" | "UNSELECT" => self.closing = Some(word(line).0.to_vec()),
            "FETCH" | "UID" if !has_lit => self.offer(line, out),
            _ => {}
        }
    }

    /// Untagged responses that change what keys mean.
    fn track_untagged(&mut self, line: &[u8]) {
        if self.store.is_none() {
            return;
        }
        if let Some(seq) = resume::fetch_seq(line) {
            self.fetch_resp = Some((seq, resume::uid_in(line)));
            return;
        }
        let (_, rest) = word(line);
        let (a, b) = word(rest);
        if let Some(sel) = &mut self.selecting
            && a.eq_ignore_ascii_case(b"OK")
            && let Some(uv) = resume::uidvalidity_in(line)
        {
            sel.2 = Some(uv);
        }
        let (b, _) = word(b);
        if b.eq_ignore_ascii_case(b"EXPUNGE")
            && let Some(n) = std::str::from_utf8(a)
                .ok()
                .and_then(|a| a.parse::<u32>().ok())
        {
            self.seq_uids = std::mem::take(&mut self.seq_uids)
                .into_iter()
                .filter(|&(s, _)| s != n)
                .map(|(s, u)| (if s > n { s - 1 } else { s }, u))
                .collect();
        } else if a.eq_ignore_ascii_case(b"VANISHED") {
            self.seq_uids.clear();
        }
    }

    /// A FETCH of message bodies while the call's budget is spent: refused
    /// here with a tagged `NO [UNAVAILABLE]` (RFC 5530: temporary), not
    /// sent. Only between responses, so that the line never lands inside
    /// another reply; headers, flags and sizes still go.
    fn held_back(&mut self, raw: &[u8], out: &mut Output) -> bool {
        let Some(why) = &self.bulk_held else {
            return false;
        };
        let (tag, rest) = word(content(raw));
        let (verb, args) = word(rest);
        let args = match upper(verb).as_str() {
            "FETCH" => args,
            "UID" if upper(word(args).0) == "FETCH" => word(args).1,
            _ => return false,
        };
        if !fetches_bodies(args) || !self.resps.between_messages() || tag.is_empty() {
            return false;
        }
        let done = format!(" NO [UNAVAILABLE] straw: {}\r\n", hold_words(why));
        out.to_local.extend_from_slice(tag);
        out.to_local.extend_from_slice(done.as_bytes());
        self.stats.local_replies += 1;
        true
    }

    fn on_cmd(&mut self, ev: Ev, out: &mut Output) {
        match ev {
            Ev::Line { raw, first, lit } => {
                if first
                    && lit.is_none()
                    && self.cont_tag.is_none()
                    && !std::mem::take(&mut self.replaying)
                    && self.uid_lookup(&raw, out)
                {
                    // Sent on once the UID is known.
                    self.stashed = Some(raw);
                    self.lookup_wait = true;
                    return;
                }
                if first && self.cont_tag.is_none() && lit.is_none() && self.held_back(&raw, out) {
                    return;
                }
                if first && self.cont_tag.is_none() {
                    if self.prefetch_cmd(&raw, lit.is_some(), out) {
                        return;
                    }
                    self.begin_command(&raw, lit.is_some(), out);
                }
                if let Some(l) = lit {
                    let what = format!("IMAP {} upload", self.last_verb);
                    self.cmd_lit = (l.n > 0).then(|| Activity::new(what, 0, Some(l.n)).upload());
                }
                match lit {
                    Some(l) => {
                        if l.plus {
                            out.to_tunnel.extend_from_slice(&raw);
                        } else {
                            // The continuation commits nothing; the server
                            // side deals with a refusal.
                            out.to_local.extend_from_slice(b"+ OK\r\n");
                            self.stats.local_replies += 1;
                            out.to_tunnel
                                .extend_from_slice(&with_literal(&raw, &l, true));
                        }
                        self.cmd_bulk = l.n > BULK_LITERAL;
                    }
                    None => {
                        out.to_tunnel.extend_from_slice(&raw);
                        self.unflushed = true;
                        if std::mem::take(&mut self.prefetch_now) {
                            let tag = word(content(&raw)).0.to_vec();
                            self.send_prefetch(&tag, out);
                        }
                    }
                }
            }
            Ev::Lit(data) => {
                out.to_tunnel.extend_from_slice(&data);
                out.bulk |= self.cmd_bulk;
                advance(&mut self.cmd_lit, data.len());
            }
        }
    }

    /// The first line of a response: decide whether it reaches the program.
    fn on_resp_start(&mut self, raw: &[u8], out: &mut Output) -> bool {
        let line = content(raw);
        if let Greeting::Awaiting { served } = self.greeting {
            self.greeting = Greeting::Done;
            if !served {
                out.cache_put.push((GREETING_KEY.into(), line.to_vec()));
                self.authed = greeting_sig(line).0 == "PREAUTH";
                out.to_local.extend_from_slice(&rewrite_line(raw));
                return true;
            }
            let cached = self.cached_greeting.clone().unwrap_or_default();
            let (cached_status, cached_caps) = greeting_sig(&cached);
            let (real_status, real_caps) = greeting_sig(line);
            // A greeting without a CAPABILITY code (Dovecot's "Waiting for
            // authentication process") contradicts nothing: capabilities are
            // then verified when the CAPABILITY reply arrives.
            let caps_differ = matches!((&cached_caps, &real_caps), (Some(a), Some(b)) if a != b);
            if real_caps.is_some() && cached_caps.is_none() {
                out.cache_put.push((GREETING_KEY.into(), line.to_vec()));
            }
            if cached_status != real_status || caps_differ {
                out.cache_put.push((GREETING_KEY.into(), line.to_vec()));
                self.fail(
                    out,
                    format!(
                        "IMAP greeting changed: cached {:?}, real {:?}",
                        show(&cached),
                        show(line)
                    ),
                );
            }
            return false;
        }
        if line.first() == Some(&b'+') {
            out.to_local.extend_from_slice(raw);
            return true;
        }
        let (tag, rest) = word(line);
        let (w, _) = word(rest);
        let w = upper(w);
        if tag == b"*" {
            if let Some(pass) = self.prefetch_untagged(raw, out) {
                return pass;
            }
            self.track_untagged(line);
            if let Some((seq, Some(uid))) = self.fetch_resp
                && self.lookups.iter().any(|l| l.1 == seq)
                && line == format!("* {seq} FETCH (UID {uid})").as_bytes()
            {
                // The answer to our own UID lookup.
                return false;
            }
            if w == "CAPABILITY" {
                let real = caps_of(line).unwrap_or_default();
                let local = self
                    .pending
                    .iter_mut()
                    .find(|p| p.kind == PendKind::LocalCap { seen: false });
                if let Some(p) = local {
                    p.kind = PendKind::LocalCap { seen: true };
                    let cached = self.cached_caps.clone().unwrap_or_default();
                    if cap_set(&cached) != cap_set(&real) {
                        out.cache_put.push((CAPABILITY_KEY.into(), line.to_vec()));
                        self.fail(
                            out,
                            format!(
                                "IMAP capabilities changed: cached [{}], real [{}]",
                                cached.join(" "),
                                real.join(" ")
                            ),
                        );
                    }
                    return false;
                }
                let auth_pending = self
                    .pending
                    .iter()
                    .any(|p| p.kind == PendKind::Plain { auth: true });
                if !self.authed && !auth_pending {
                    out.cache_put.push((CAPABILITY_KEY.into(), line.to_vec()));
                } else if self.authed {
                    self.learn_authed_caps(line, out);
                } else if self
                    .pending
                    .first()
                    .is_some_and(|p| p.kind == PendKind::Plain { auth: true })
                {
                    // Part of the login's response (Dovecot, when the
                    // program asked for capabilities before): the
                    // post-login list, once the login succeeds.
                    self.login_caps = Some(line.to_vec());
                }
            }
            if w == "BYE" && self.pending.iter().any(|p| p.kind == PendKind::LocalLogout) {
                return false;
            }
            out.to_local.extend_from_slice(&rewrite_line(raw));
            return true;
        }
        match self.prefetch_tagged(raw, out) {
            Tagged::Other => {}
            Tagged::Ours => return false,
            // Not ours any more: nothing of the prefetch is left to match.
            Tagged::As(raw) => return self.on_resp_start(&raw, out),
        }
        if let Some(i) = self.lookups.iter().position(|l| l.0 == tag) {
            self.lookups.remove(i);
            if self.lookups.is_empty() {
                self.lookup_wait = false;
            }
            return false;
        }
        if let Some(i) = self.offers.iter().position(|o| o.tag == tag) {
            let o = self.offers.remove(i);
            let (_, rest) = word(line);
            let (status, _) = word(rest);
            self.offer_answered(o, status, line, out);
            return false;
        }
        if self.selecting.as_ref().is_some_and(|s| s.0 == tag) {
            // A failed SELECT leaves no mailbox selected.
            let (_, name, uv) = self.selecting.take().unwrap_or_default();
            let ok = w == "OK" && !name.is_empty();
            self.mailbox = uv.filter(|_| ok).map(|uv| (name, uv));
            self.seq_uids.clear();
        }
        if self.closing.as_deref() == Some(tag) {
            self.closing = None;
            if w == "OK" {
                self.mailbox = None;
                self.seq_uids.clear();
            }
        }
        if self.cont_tag.as_deref() == Some(tag) {
            self.cont_tag = None;
        }
        let Some(i) = self.pending.iter().position(|p| p.tag == tag) else {
            out.to_local.extend_from_slice(&rewrite_line(raw));
            return true;
        };
        let p = self.pending.remove(i);
        match p.kind {
            PendKind::LocalCap { seen } => {
                if w != "OK" || !seen {
                    self.fail(
                        out,
                        format!(
                            "IMAP CAPABILITY was answered from cache but the real server said {:?}",
                            show(line)
                        ),
                    );
                }
                false
            }
            PendKind::LocalLogout => {
                if w != "OK" {
                    self.fail(
                        out,
                        format!(
                            "IMAP LOGOUT was answered locally but the real server said {:?}",
                            show(line)
                        ),
                    );
                }
                false
            }
            PendKind::Plain { auth } => {
                self.awaited -= 1;
                let login_caps = self.login_caps.take();
                if auth && w == "OK" {
                    self.authed = true;
                    match login_caps {
                        Some(caps) if caps_of(line).is_none() => self.learn_authed_caps(&caps, out),
                        _ => self.learn_authed_caps(line, out),
                    }
                }
                out.to_local.extend_from_slice(&rewrite_line(raw));
                true
            }
        }
    }

    fn on_resp(&mut self, ev: Ev, out: &mut Output) {
        match ev {
            Ev::Line { raw, first, lit } => {
                let mark = out.to_local.len();
                if first {
                    let line = content(&raw);
                    self.resp_msg = (resume::fetch_seq(line), resume::uid_in(line));
                } else if self.resp_msg.1.is_none() {
                    self.resp_msg.1 = resume::uid_in(content(&raw));
                }
                self.resp_lit = None;
                if let Some(l) = lit.filter(|l| l.n > 0) {
                    let what = literal_activity(&raw[..l.open], self.resp_msg);
                    self.resp_lit = Some(Activity::new(what, 0, Some(l.n)));
                }
                if first {
                    self.fetch_resp = None;
                    self.resp_keep = false;
                    self.resp_pass = self.on_resp_start(&raw, out);
                } else if self.resp_pass {
                    if let Some((_, uid @ None)) = &mut self.fetch_resp {
                        *uid = resume::uid_in(content(&raw));
                    }
                    out.to_local.extend_from_slice(&raw);
                } else if self.resp_keep {
                    self.keep_prefetched(&raw, out);
                }
                self.resp_bulk = lit.is_some_and(|l| l.n > BULK_LITERAL);
                match lit {
                    Some(l) if self.resp_pass => self.fetch_literal(&raw, l, mark, out),
                    Some(_) => {}
                    None => {
                        // The response ended.
                        if let Some((seq, Some(uid))) = self.fetch_resp.take() {
                            self.seq_uids.insert(seq, uid);
                        }
                        // The resumed literal comes in the response right
                        // after the answer, or the stream is not ours to
                        // splice: better no bytes than wrong ones.
                        if self.armed.is_some() && !std::mem::take(&mut self.armed_fresh) {
                            self.fail(
                                out,
                                "IMAP resume: the server side's resumed literal never came",
                            );
                        }
                    }
                }
            }
            Ev::Lit(data) => {
                if self.resp_pass {
                    out.to_local.extend_from_slice(&data);
                    out.bulk |= self.resp_bulk;
                } else if self.resp_keep {
                    self.keep_prefetched(&data, out);
                }
                advance(&mut self.resp_lit, data.len());
                if let (Some((key, left)), Some(store)) = (&mut self.keeping, &self.store) {
                    store.append(key, &data);
                    *left -= data.len() as u64;
                    if *left == 0 {
                        // Complete: nothing left to resume.
                        store.remove(key);
                        self.keeping = None;
                    }
                }
            }
        }
    }
}

impl Framed for ClientAccel {
    fn failed_flag(&mut self) -> &mut bool {
        &mut self.failed
    }
}

impl Accelerator for ClientAccel {
    /// Called once at connection start: serves the cached greeting, if any.
    fn start(&mut self, out: &mut Output) {
        match &self.cached_greeting {
            Some(g) => {
                let mut raw = g.clone();
                raw.extend_from_slice(b"\r\n");
                out.to_local.extend_from_slice(&rewrite_line(&raw));
                self.greeting = Greeting::Awaiting { served: true };
                self.stats.local_replies += 1;
                self.authed = greeting_sig(g).0 == "PREAUTH";
            }
            // The program waits for the real greeting to cross the link.
            None => self.stats.link_waits += 1,
        }
    }

    /// An untagged BYE may come at any time between responses (also as the
    /// greeting). Commands in flight get no tagged reply, so the program
    /// can't take them as done. Within a response (a FETCH literal cut
    /// short) the connection just closes.
    fn link_lost(&mut self, out: &mut Output) {
        if self.failed {
            return;
        }
        self.failed = true;
        if self.resps.between_messages() {
            out.to_local.extend_from_slice(LINK_LOST);
        }
    }

    /// The program closed while a command's reply was still on its way and
    /// without LOGOUT (a long FETCH dropped): nothing will read the rest,
    /// and the real server would end the session too.
    fn local_eof(&mut self, out: &mut Output) {
        if !self.failed && !self.logout_sent && self.awaited > 0 {
            out.abandoned = true;
        }
    }

    fn from_local(&mut self, data: &[u8], drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.cmds.push(data);
        self.drain_cmds(out);
        out.flush_if_drained(drained, &mut self.unflushed);
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.resps.push(data);
        while self.step(|a| &mut a.resps, Self::on_resp, "the server side", out) {}
        if self.failed {
            return;
        }
        if self.select_wait || (self.stashed.is_some() && !self.lookup_wait && !self.unselect_wait)
        {
            self.select_wait = false;
            if let Some(raw) = self.stashed.take() {
                self.replaying = true;
                let ev = Ev::Line {
                    raw,
                    first: true,
                    lit: None,
                };
                self.on_cmd(ev, out);
            }
            self.drain_cmds(out);
            if self.unflushed {
                out.flush = true;
                self.unflushed = false;
            }
        }
    }

    fn hold_bulk(&mut self, why: Option<&str>) {
        self.bulk_held = why.map(str::to_owned);
    }

    fn stats(&self) -> AccelStats {
        self.stats
    }

    /// A literal on its way (a FETCH body down, an APPEND up) with its
    /// announced size; else the command the program waits on (`SELECT`
    /// also when it takes the rest of the one asked for with the login,
    /// `UNSELECT (straw)` while a command waits for straw's own UNSELECT).
    fn activity(&self) -> Option<Activity> {
        if let Some(a) = self.resp_lit.as_ref().or(self.cmd_lit.as_ref()) {
            return Some(a.clone());
        }
        (self.awaited > 0 || self.unselect_wait)
            .then(|| Activity::new(format!("IMAP {}", self.last_verb), 0, None))
    }
}

/// Counts `n` more bytes of a literal; gone once it is complete.
/// FETCH items that carry message text: `BODY[...]`/`BODY.PEEK[...]`
/// (but not a `HEADER` section), `RFC822`, `RFC822.TEXT`, `BINARY[...]`.
fn fetches_bodies(items: &[u8]) -> bool {
    let items = upper(items);
    let sections = ["BODY[", "BODY.PEEK[", "BINARY[", "BINARY.PEEK["];
    let body = sections.iter().any(|open| {
        items
            .match_indices(open)
            .any(|(i, _)| !items[i + open.len()..].starts_with("HEADER"))
    });
    let rfc822 = items
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .any(|w| w == "RFC822" || w == "RFC822.TEXT");
    body || rfc822
}

fn advance(lit: &mut Option<Activity>, n: usize) {
    if let Some(a) = lit {
        a.done = a.done.saturating_add(n as u64);
        if a.total.is_some_and(|t| a.done >= t) {
            *lit = None;
        }
    }
}

/// `IMAP FETCH BODY[] uid 4417` for a literal announced after
/// `before_brace` in a response about message `(seq, uid)`.
fn literal_activity(before_brace: &[u8], (seq, uid): (Option<u32>, Option<u32>)) -> String {
    let text = String::from_utf8_lossy(before_brace);
    let item = text
        .trim_end_matches('~')
        .trim_end()
        .rsplit([' ', '('])
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    let what = match (seq, uid) {
        (_, Some(u)) => format!("IMAP FETCH {item} uid {u}"),
        (Some(n), None) => format!("IMAP FETCH {item} message {n}"),
        (None, None) => format!("IMAP {item} literal"),
    };
    activity_text(&what)
}

#[cfg(test)]
mod activity_tests {
    use super::*;

    fn logged_in() -> (ClientAccel, Output) {
        let mut c = ClientAccel::new(&Cache::new());
        let mut out = Output::default();
        c.start(&mut out);
        c.from_tunnel(b"* OK ready\r\n", &mut out);
        (c, out)
    }

    #[test]
    fn fetch_literal_shows_item_uid_and_progress() {
        let (mut c, mut out) = logged_in();
        assert_eq!(c.activity(), None);
        c.from_local(b"a1 UID FETCH 4417 (BODY.PEEK[])\r\n", true, &mut out);
        assert_eq!(c.activity(), Some(Activity::new("IMAP UID FETCH", 0, None)));
        c.from_tunnel(b"* 12 FETCH (UID 4417 BODY[] {20}\r\n0123456789", &mut out);
        assert_eq!(
            c.activity(),
            Some(Activity::new("IMAP FETCH BODY[] uid 4417", 10, Some(20)))
        );
        c.from_tunnel(b"0123456789)\r\n", &mut out);
        // The literal is complete; the tagged reply is still awaited.
        assert_eq!(c.activity(), Some(Activity::new("IMAP UID FETCH", 0, None)));
        c.from_tunnel(b"a1 OK done\r\n", &mut out);
        assert_eq!(c.activity(), None);
    }

    #[test]
    fn a_literal_without_uid_is_named_by_sequence_number() {
        let (mut c, mut out) = logged_in();
        c.from_local(b"a1 FETCH 3 (FLAGS BODY[TEXT])\r\n", true, &mut out);
        c.from_tunnel(b"* 3 FETCH (FLAGS (\\Seen) BODY[TEXT] {5}\r\nab", &mut out);
        assert_eq!(
            c.activity(),
            Some(Activity::new("IMAP FETCH BODY[TEXT] message 3", 2, Some(5)))
        );
    }

    #[test]
    fn append_upload_counts_the_literal() {
        let (mut c, mut out) = logged_in();
        c.from_local(b"a2 APPEND Sent {8}\r\nabcd", true, &mut out);
        assert_eq!(
            c.activity(),
            Some(Activity::new("IMAP APPEND upload", 4, Some(8)).upload())
        );
        c.from_local(b"efgh\r\n", true, &mut out);
        assert_eq!(c.activity(), Some(Activity::new("IMAP APPEND", 0, None)));
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn body_items_are_told_from_headers_flags_and_sizes() {
        for bulk in [
            "1:5 (BODY[])",
            "4417 (UID BODY.PEEK[] FLAGS)",
            "3 (BODY[TEXT])",
            "3 (BODY.PEEK[1.2])",
            "3 RFC822",
            "3 (RFC822.TEXT)",
            "3 (binary.peek[1])",
            "3 (BODY.PEEK[HEADER] BODY[])",
        ] {
            assert!(fetches_bodies(bulk.as_bytes()), "{bulk}");
        }
        for small in [
            "1:* (FLAGS UID RFC822.SIZE)",
            "1:* (UID BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)])",
            "3 (RFC822.HEADER)",
            "3 BODYSTRUCTURE",
            "3 (ENVELOPE INTERNALDATE)",
        ] {
            assert!(!fetches_bodies(small.as_bytes()), "{small}");
        }
    }

    #[test]
    fn a_spent_budget_refuses_body_fetches_here_and_lets_the_rest_go() {
        let mut c = ClientAccel::new(&Cache::new());
        let mut out = Output::default();
        c.start(&mut out);
        c.from_tunnel(b"* OK ready\r\n", &mut out);
        c.from_local(b"a1 LOGIN u p\r\n", true, &mut out);
        // No UNSELECT in sight: the server side declines straw's SELECT.
        c.from_tunnel(
            b"a1 OK done\r\nxstraw.1 NO [XSTRAW-NOT-SELECTED] straw: not selected\r\n",
            &mut out,
        );
        out.to_local.clear();
        out.to_tunnel.clear();

        c.hold_bulk(Some("call budget spent"));
        c.from_local(b"a2 UID FETCH 4417 (BODY.PEEK[])\r\n", true, &mut out);
        assert!(out.to_tunnel.is_empty(), "nothing went over the link");
        assert_eq!(
            out.to_local,
            b"a2 NO [UNAVAILABLE] straw: call budget spent\r\n"
        );
        out.to_local.clear();
        c.from_local(b"a3 UID FETCH 1:* (FLAGS RFC822.SIZE)\r\n", true, &mut out);
        assert_eq!(out.to_tunnel, b"a3 UID FETCH 1:* (FLAGS RFC822.SIZE)\r\n");
        c.from_tunnel(
            b"* 1 FETCH (UID 4417 FLAGS () RFC822.SIZE 9)\r\na3 OK\r\n",
            &mut out,
        );
        out.to_tunnel.clear();

        c.hold_bulk(None);
        c.from_local(b"a4 UID FETCH 4417 (BODY.PEEK[])\r\n", true, &mut out);
        assert!(
            out.to_tunnel
                .ends_with(b"a4 UID FETCH 4417 (BODY.PEEK[])\r\n")
        );
    }
}
