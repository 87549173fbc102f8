//! IMAP accelerator pair (DESIGN §6).
//!
//! The stream between the pair carries plain IMAP, with two differences:
//! every command literal crosses as non-synchronising (`{N+}`), and IDLE
//! keep-alives never cross. The client answers locally only what commits
//! nothing (cached greeting and pre-login CAPABILITY, literal continuations,
//! LOGOUT once nothing else is outstanding) and checks each of those against
//! the real reply when it arrives.

mod framer;
pub mod resume;
#[cfg(test)]
mod resume_tests;
pub mod starttls;
#[cfg(test)]
mod tests;
pub mod warm_up;

use crate::partial::{SharedStore, prefix_hash};
use crate::{AccelStats, Accelerator, Cache, Output};
use framer::{Ev, Framer, Lit, content, with_literal};
use std::collections::{BTreeSet, HashMap};

pub use starttls::StartTls;
pub use warm_up::WarmUp;

/// Cache key: the real greeting line (no CRLF), as the real server sent it.
pub const GREETING_KEY: &str = "imap.greeting";
/// Cache key: the real pre-login `* CAPABILITY ...` line (no CRLF).
pub const CAPABILITY_KEY: &str = "imap.capability";
/// Told to the program when the tunnel is gone for good.
pub const LINK_LOST: &[u8] = b"* BYE straw: link lost\r\n";

/// Literals bigger than this are scheduled as bulk.
const BULK_LITERAL: u64 = 16 * 1024;
/// Response literals bigger than this (message bodies, not header fields)
/// go through the bulk lane whatever their size: its big mail context codes
/// mail text best, and has seen what POP3 or earlier FETCHes brought.
const BULK_RESP_LITERAL: u64 = 1024;
/// LITERAL- (RFC 7888) allows non-synchronising literals up to this size.
const LITERAL_MINUS_MAX: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImapConfig {
    /// Largest literal accepted in either direction.
    pub max_literal: u64,
    /// Longest line (outside literals) accepted in either direction.
    pub max_line: usize,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            max_literal: 64 << 20,
            max_line: 1 << 20,
        }
    }
}

// ---------------------------------------------------------------- helpers

fn word(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == b' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

fn upper(s: &[u8]) -> String {
    String::from_utf8_lossy(s).to_ascii_uppercase()
}

fn show(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

/// Capability atoms of a `* CAPABILITY` line or a `[CAPABILITY ...]` code.
fn caps_of(line: &[u8]) -> Option<Vec<String>> {
    let (star, rest) = word(line);
    if star == b"*" {
        let (w, atoms) = word(rest);
        if w.eq_ignore_ascii_case(b"CAPABILITY") {
            return Some(atoms_of(atoms));
        }
    }
    let (start, end) = cap_code_span(line)?;
    Some(atoms_of(&line[start..end]))
}

/// Span of the atoms inside a `[CAPABILITY ...]` response code.
fn cap_code_span(line: &[u8]) -> Option<(usize, usize)> {
    let pat = b"[CAPABILITY ";
    let i = line
        .windows(pat.len())
        .position(|w| w.eq_ignore_ascii_case(pat))?;
    let start = i + pat.len();
    let end = start + line[start..].iter().position(|&b| b == b']')?;
    Some((start, end))
}

fn atoms_of(s: &[u8]) -> Vec<String> {
    s.split(|&b| b == b' ')
        .filter(|a| !a.is_empty())
        .map(show)
        .collect()
}

/// The capability list the mail program sees: no STARTTLS (the tunnel is
/// encrypted), no LOGINDISABLED when only TLS would lift it, no COMPRESS
/// (it would blind the pair), and LITERAL+ (which the pair provides).
pub fn rewrite_caps(atoms: &[String]) -> Vec<String> {
    let starttls = atoms.iter().any(|a| a.eq_ignore_ascii_case("STARTTLS"));
    let mut v: Vec<String> = atoms
        .iter()
        .filter(|a| {
            let u = a.to_ascii_uppercase();
            !(u == "STARTTLS"
                || (u == "LOGINDISABLED" && starttls)
                || u.starts_with("COMPRESS=")
                || u == "LITERAL-")
        })
        .cloned()
        .collect();
    if !v.iter().any(|a| a.eq_ignore_ascii_case("LITERAL+")) {
        v.push("LITERAL+".into());
    }
    v
}

fn cap_set(atoms: &[String]) -> BTreeSet<String> {
    rewrite_caps(atoms)
        .iter()
        .map(|a| a.to_ascii_uppercase())
        .collect()
}

/// `raw` (a whole line) with any capability list in it rewritten.
fn rewrite_line(raw: &[u8]) -> Vec<u8> {
    let line = content(raw);
    let (star, rest) = word(line);
    let (w, atoms) = word(rest);
    if star == b"*" && w.eq_ignore_ascii_case(b"CAPABILITY") {
        let mut v = line[..line.len() - atoms.len()].to_vec();
        if atoms.is_empty() {
            v.push(b' ');
        }
        v.extend_from_slice(rewrite_caps(&atoms_of(atoms)).join(" ").as_bytes());
        v.extend_from_slice(b"\r\n");
        return v;
    }
    match cap_code_span(line) {
        Some((s, e)) => {
            let mut v = line[..s].to_vec();
            v.extend_from_slice(rewrite_caps(&atoms_of(&line[s..e])).join(" ").as_bytes());
            v.extend_from_slice(&line[e..]);
            v.extend_from_slice(b"\r\n");
            v
        }
        None => raw.to_vec(),
    }
}

/// What matters in a greeting: its status and capability list. The text may
/// carry a date or host name, which commits nothing.
fn greeting_sig(line: &[u8]) -> (String, Option<BTreeSet<String>>) {
    let (_, rest) = word(line);
    let (status, _) = word(rest);
    (upper(status), caps_of(line).map(|c| cap_set(&c)))
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greeting {
    /// Waiting for the real greeting; `served` if the cached one was shown.
    Awaiting {
        served: bool,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendKind {
    /// Forwarded; the program waits for the real reply.
    Plain { auth: bool },
    /// Answered from cache; the real reply is checked and swallowed.
    LocalCap { seen: bool },
    /// Answered locally; the real reply is checked and swallowed.
    LocalLogout,
}

#[derive(Debug)]
struct Pending {
    tag: Vec<u8>,
    kind: PendKind,
}

/// Client side: next to the mail program.
#[derive(Debug)]
pub struct ClientAccel {
    cached_greeting: Option<Vec<u8>>,
    cached_caps: Option<Vec<String>>,
    cmds: Framer,
    resps: Framer,
    greeting: Greeting,
    authed: bool,
    pending: Vec<Pending>,
    /// Forwarded commands the program is waiting on.
    awaited: usize,
    /// IDLE/AUTHENTICATE in progress: program lines are continuation data.
    cont_tag: Option<Vec<u8>>,
    cmd_bulk: bool,
    unflushed: bool,
    /// The current response is passed to the program (else swallowed).
    resp_pass: bool,
    resp_bulk: bool,
    stats: AccelStats,
    failed: bool,
    /// Message resume (see [`resume`]); None: off.
    store: Option<SharedStore>,
    /// The LOGIN name: part of a partial's key.
    user: Option<String>,
    /// Selected mailbox and its UIDVALIDITY.
    mailbox: Option<(String, u32)>,
    /// A SELECT/EXAMINE in flight: tag, mailbox, UIDVALIDITY once seen.
    selecting: Option<(Vec<u8>, String, Option<u32>)>,
    /// Sequence number → UID, learned from FETCH responses.
    seq_uids: HashMap<u32, u32>,
    /// The server side doesn't know resume requests (an older straw).
    resume_refused: bool,
    own_seq: u64,
    /// Offers sent, waiting for their answer.
    offers: Vec<ClientOffer>,
    /// Offer the server side took: the next literal of its item carries
    /// only the remainder.
    armed: Option<ClientOffer>,
    /// `armed` was set by the response that just ended.
    armed_fresh: bool,
    /// Own `FETCH n (UID)` lookups in flight: tag, sequence number.
    lookups: Vec<(Vec<u8>, u32)>,
    /// A program FETCH waiting for its UID lookup.
    stashed: Option<Vec<u8>>,
    lookup_wait: bool,
    /// The stashed FETCH is being handled: no second lookup.
    replaying: bool,
    /// A CLOSE/UNSELECT in flight: its tag.
    closing: Option<Vec<u8>>,
    /// Commands wait for a SELECT's answer (see `drain_cmds`).
    select_wait: bool,
    /// The untagged FETCH response being read: sequence number, UID if seen.
    fetch_resp: Option<(u32, Option<u32>)>,
    /// Literal being kept in the store: key, bytes still to come.
    keeping: Option<(String, u64)>,
}

#[derive(Debug)]
struct ClientOffer {
    tag: Vec<u8>,
    uid: u32,
    item: String,
    key: String,
    prefix: Vec<u8>,
}

impl ClientAccel {
    pub fn new(cache: &Cache) -> Self {
        Self::with_config(cache, ImapConfig::default())
    }

    pub fn with_config(cache: &Cache, cfg: ImapConfig) -> Self {
        let cached_caps = cache.get(CAPABILITY_KEY).and_then(|l| caps_of(content(l)));
        ClientAccel {
            cached_greeting: cache.get(GREETING_KEY).map(|g| content(g).to_vec()),
            cached_caps,
            cmds: Framer::new(cfg.max_line, cfg.max_literal),
            resps: Framer::new(cfg.max_line, cfg.max_literal),
            greeting: Greeting::Awaiting { served: false },
            authed: false,
            pending: Vec::new(),
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
        }
    }

    /// Keeps interrupted FETCH body literals in `store` and resumes them.
    pub fn with_store(mut self, store: SharedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Called once at connection start: serves the cached greeting, if any.
    pub fn start(&mut self, out: &mut Output) {
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

    fn fail(&mut self, out: &mut Output, why: String) {
        if out.fail.is_none() {
            out.fail = Some(why);
        }
        self.failed = true;
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
        let greeted = self.greeting != Greeting::Awaiting { served: false };
        if verb == "CAPABILITY"
            && !has_lit
            && !self.authed
            && !auth_pending
            && greeted
            && let Some(caps) = &self.cached_caps
        {
            let mut r = b"* CAPABILITY ".to_vec();
            r.extend_from_slice(rewrite_caps(caps).join(" ").as_bytes());
            r.extend_from_slice(b"\r\n");
            r.extend_from_slice(tag);
            r.extend_from_slice(b" OK CAPABILITY completed\r\n");
            out.to_local.extend_from_slice(&r);
            self.stats.local_replies += 1;
            self.pending.push(Pending {
                tag: tag.to_vec(),
                kind: PendKind::LocalCap { seen: false },
            });
            return true;
        }
        if verb == "LOGOUT" && !has_lit && self.awaited == 0 && greeted {
            // Nothing is outstanding, so the program learns every result
            // before it goes; LOGOUT itself commits nothing (no expunge).
            let mut r = b"* BYE Logging out\r\n".to_vec();
            r.extend_from_slice(tag);
            r.extend_from_slice(b" OK Logout completed.\r\n");
            out.to_local.extend_from_slice(&r);
            self.stats.local_replies += 1;
            self.pending.push(Pending {
                tag: tag.to_vec(),
                kind: PendKind::LocalLogout,
            });
            return true;
        }
        self.track_command(line, &verb, args, has_lit, out);
        let auth = verb == "LOGIN" || verb == "AUTHENTICATE";
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
            if self.lookup_wait {
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
            match self.cmds.next_ev() {
                Ok(Some(ev)) => self.on_cmd(ev, out),
                Ok(None) => return,
                Err(e) => return self.fail(out, format!("from the mail program: {e}")),
            }
            if self.failed {
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

    /// A FETCH by number of one message whose UID is unknown: asks the
    /// server for it (own tag, pipelined) so its literal can be kept.
    /// Returns true if the FETCH must wait for the answer: the store holds
    /// something for this mailbox, so there may be a prefix to offer.
    fn uid_lookup(&mut self, raw: &[u8], out: &mut Output) -> bool {
        let (Some(store), Some(user)) = (&self.store, &self.user) else {
            return false;
        };
        // Behind a SELECT in flight the lookup still runs in the new
        // mailbox; the store then holds nothing for this account, or the
        // FETCH would have waited for the SELECT.
        if self.closing.is_some() || (self.mailbox.is_none() && self.selecting.is_none()) {
            return false;
        }
        let Some((false, n, _)) = resume::fetch_command(content(raw)) else {
            return false;
        };
        if self.selecting.is_none() && self.seq_uids.contains_key(&n) {
            return false;
        }
        let wait = !self.resume_refused
            && self.selecting.is_none()
            && self.mailbox.as_ref().is_some_and(|(mb, uv)| {
                store.any_with_prefix(&resume::mailbox_prefix(user, mb, *uv))
            });
        self.own_seq += 1;
        let tag = format!("{}{}", resume::TAG_PREFIX, self.own_seq);
        out.to_tunnel
            .extend_from_slice(format!("{tag} FETCH {n} (UID)\r\n").as_bytes());
        out.flush |= wait;
        self.lookups.push((tag.into_bytes(), n));
        wait
    }

    fn offer(&mut self, line: &[u8], out: &mut Output) {
        let (Some(store), Some(user), Some((mb, uv))) = (&self.store, &self.user, &self.mailbox)
        else {
            return;
        };
        if self.resume_refused || self.selecting.is_some() || self.closing.is_some() {
            return;
        }
        let Some((by_uid, n, item)) = resume::fetch_command(line) else {
            return;
        };
        let uid = if by_uid {
            n
        } else {
            match self.seq_uids.get(&n) {
                Some(&u) => u,
                None => return,
            }
        };
        let key = resume::key(user, mb, *uv, uid, &item);
        let Some(prefix) = store.get(&key).filter(|p| p.len() >= resume::MIN_PREFIX) else {
            return;
        };
        self.own_seq += 1;
        let tag = format!("{}{}", resume::TAG_PREFIX, self.own_seq);
        out.to_tunnel
            .extend_from_slice(&resume::request(&tag, uid, &item, &prefix));
        self.offers.push(ClientOffer {
            tag: tag.into_bytes(),
            uid,
            item,
            key,
            prefix,
        });
    }

    /// The server side's answer to an offer (swallowed).
    fn offer_answered(&mut self, o: ClientOffer, status: &[u8], line: &[u8], out: &mut Output) {
        let text = String::from_utf8_lossy(line);
        if status.eq_ignore_ascii_case(b"OK") && text.contains("[XSTRAW-RESUMED]") {
            self.armed = Some(o);
            self.armed_fresh = true;
        } else if !text.contains("[XSTRAW-") {
            // Not from a straw server side: the real server refused it.
            out.notes.push(format!(
                "IMAP resume not supported by the server side ({}); fetching whole",
                show(line)
            ));
            self.resume_refused = true;
        }
    }

    /// A literal inside an untagged FETCH response: splice a resumed one,
    /// keep a body item's bytes in the store. `mark`: where this line
    /// starts in `out.to_local`.
    fn fetch_literal(&mut self, raw: &[u8], lit: Lit, mark: usize, out: &mut Output) {
        self.keeping = None;
        let Some((_, uid)) = self.fetch_resp else {
            return;
        };
        let Some(store) = self.store.clone() else {
            return;
        };
        let Some(item) = resume::literal_item(&raw[..lit.open]) else {
            return;
        };
        // Same rule as the server side: the first literal of the item whose
        // response shows no other UID before it.
        if let Some(a) = &self.armed
            && a.item == item
            && uid.is_none_or(|u| u == a.uid)
        {
            let Some(a) = self.armed.take() else { return };
            let real = Lit {
                n: lit.n + a.prefix.len() as u64,
                plus: false,
                open: lit.open,
            };
            out.to_local.truncate(mark);
            out.to_local
                .extend_from_slice(&with_literal(raw, &real, false));
            out.to_local.extend_from_slice(&a.prefix);
            if lit.n == 0 {
                store.remove(&a.key);
            } else {
                self.keeping = Some((a.key, lit.n));
            }
            return;
        }
        let uid = uid.or_else(|| {
            self.fetch_resp
                .and_then(|(s, _)| self.seq_uids.get(&s).copied())
        });
        let (Some(user), Some((mb, uv)), Some(uid)) = (&self.user, &self.mailbox, uid) else {
            return;
        };
        if lit.n >= resume::STORE_MIN {
            let key = resume::key(user, mb, *uv, uid, &item);
            store.put(&key, b"");
            self.keeping = Some((key, lit.n));
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
                if first && self.cont_tag.is_none() {
                    self.begin_command(&raw, lit.is_some(), out);
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
                    }
                }
            }
            Ev::Lit(data) => {
                out.to_tunnel.extend_from_slice(&data);
                out.bulk |= self.cmd_bulk;
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
                }
            }
            if w == "BYE" && self.pending.iter().any(|p| p.kind == PendKind::LocalLogout) {
                return false;
            }
            out.to_local.extend_from_slice(&rewrite_line(raw));
            return true;
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
                if auth && w == "OK" {
                    self.authed = true;
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
                    self.fetch_resp = None;
                    self.resp_pass = self.on_resp_start(&raw, out);
                } else if self.resp_pass {
                    if let Some((_, uid @ None)) = &mut self.fetch_resp {
                        *uid = resume::uid_in(content(&raw));
                    }
                    out.to_local.extend_from_slice(&raw);
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
                                "IMAP resume: the server side's resumed literal never came".into(),
                            );
                        }
                    }
                }
            }
            Ev::Lit(data) => {
                if self.resp_pass {
                    out.to_local.extend_from_slice(&data);
                    out.bulk |= self.resp_bulk;
                }
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

impl Accelerator for ClientAccel {
    fn start(&mut self, out: &mut Output) {
        ClientAccel::start(self, out)
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

    fn from_local(&mut self, data: &[u8], drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.cmds.push(data);
        self.drain_cmds(out);
        if drained && self.unflushed {
            out.flush = true;
            self.unflushed = false;
        }
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.resps.push(data);
        loop {
            match self.resps.next_ev() {
                Ok(Some(ev)) => self.on_resp(ev, out),
                Ok(None) => break,
                Err(e) => return self.fail(out, format!("from the server side: {e}")),
            }
            if self.failed {
                return;
            }
        }
        if self.select_wait || (self.stashed.is_some() && !self.lookup_wait) {
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

    fn stats(&self) -> AccelStats {
        self.stats
    }
}

// ---------------------------------------------------------------- server

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespKind {
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
}

#[derive(Debug, Default)]
struct Hold {
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

    /// Nothing to do at start on this side; present for symmetry.
    pub fn start(&mut self, _out: &mut Output) {}

    fn fail(&mut self, out: &mut Output, why: String) {
        if out.fail.is_none() {
            out.fail = Some(why);
        }
        self.failed = true;
    }

    fn learn_caps(&mut self, line: &[u8]) {
        if let Some(c) = caps_of(line) {
            self.literal_plus = c.iter().any(|a| a.eq_ignore_ascii_case("LITERAL+"));
            self.literal_minus = c.iter().any(|a| a.eq_ignore_ascii_case("LITERAL-"));
        }
    }

    /// Feed the real server commands from the stream, stopping at a
    /// synchronising literal until the real server answers it.
    fn pump_cmds(&mut self, out: &mut Output) {
        while self.waiting.is_none() && !self.failed {
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
                        if verb == "IDLE" {
                            self.idle_tag = Some(tag.to_vec());
                        }
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
                // The answer to our own synchronising literal.
                self.resp_kind = RespKind::Untagged { flush: false };
                self.pump_cmds(out);
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
                flush: idling || bye,
            };
            out.to_tunnel.extend_from_slice(raw);
            return true;
        }
        self.resp_kind = RespKind::Tagged;
        if self.idle_tag.as_deref() == Some(tag) {
            self.idle_tag = None;
        }
        if self.cont_tag.as_deref() == Some(tag) {
            self.cont_tag = None;
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
            // Between responses: the place for answers.
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

impl Accelerator for ServerAccel {
    fn start(&mut self, out: &mut Output) {
        ServerAccel::start(self, out)
    }

    /// Bytes from the real server.
    fn from_local(&mut self, data: &[u8], _drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.resps.push(data);
        loop {
            match self.resps.next_ev() {
                Ok(Some(ev)) => self.on_resp(ev, out),
                Ok(None) => break,
                Err(e) => return self.fail(out, format!("from the real server: {e}")),
            }
            if self.failed {
                return;
            }
        }
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
}
