//! Hold ashore: a POP3 message larger than a threshold is not carried; the
//! program gets a small stub instead (see [`super::stub`]), and the whole
//! message once the user releases it.
//!
//! What the program sees (only with the login's STAT/UIDL/LIST prefetch,
//! which the rewriting needs):
//! - message numbers and LIST sizes of the real mailbox, unchanged;
//! - the UIDL of a message over the threshold gets [`UIDL_SUFFIX`] (long
//!   UIDLs are cut and hashed, see [`held_uidl`]): the stub is not the
//!   original, and programs keeping "leave on server" state must not take
//!   one for the other;
//! - `RETR n` of such a message: the stub; `TOP n x`: the stub's header
//!   and x lines of it; `DELE n`: `+OK` answered here, never sent (the
//!   original stays on the server);
//! - each released message as one more number after the real ones, with
//!   its own UIDL and real size (in LIST and STAT too). Commands on those
//!   numbers go to the real message (found by UIDL at login); a released
//!   message no longer in the mailbox is dropped from the store.
//!
//! Wire, client side → server side, in-band before `RETR n`:
//! `XSTRAW-HOLD 1 <id> <over> <secs> <cost_cents> [address...]`. The server
//! side does the real RETR and answers the request line in reply order just
//! before the RETR reply: [`HELD`] then a stub in place of the reply,
//! [`SENT_WHOLE`] then the real reply (the sender is on the allow-list:
//! decided on the header, then streamed), or [`NOT_HELD`] then the real
//! reply. An older server side passes the line to the real server, whose
//! `-ERR` means the real reply follows: the message is carried, never lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::client::{ClientAccel, Disp, Expect, HoldMark, Track};
use super::reply::{ReplyStart, reply_start};
use super::stub::{self, StubInfo};
use super::{msg_arg, resume};
use crate::Output;
use crate::partial::prefix_hash;
use crate::shared::lines::{MAX_LINE, trim_end, verb};

pub const VERB: &str = "XSTRAW-HOLD";
pub const VERSION: u32 = 1;
pub(crate) const HELD: &[u8] = b"+OK straw: held ashore\r\n";
pub(crate) const SENT_WHOLE: &[u8] = b"+OK straw: sender allowed, sent whole\r\n";
pub(crate) const NOT_HELD: &[u8] = b"-ERR straw: not held\r\n";
/// Added to the UIDL of a message over the threshold.
pub const UIDL_SUFFIX: &str = "~straw-held";
/// Longest UIDL (RFC 1939).
pub const UIDL_MAX: usize = 70;
/// Most allow-list addresses (they travel in the request line).
pub const EXCEPT_MAX: usize = 32;
/// Longest allow-list address.
pub const ADDRESS_MAX: usize = 254;
/// The server side looks for the sender in this much of a message.
const HEAD_MAX: usize = 64 * 1024;

/// Where held messages are recorded, per service (the driver's is a file
/// the user's `straw hold` commands read and change).
pub trait HoldStore: Send + Sync + std::fmt::Debug {
    /// The short id `straw hold release` takes for this message.
    fn id(&self, user: &str, uidl: &str) -> String;
    /// A stub of it was delivered: recorded as held (again).
    fn stub_delivered(&self, user: &str, uidl: &str, info: &HeldInfo);
    /// UIDLs of this account the user released and that were not yet
    /// delivered in full.
    fn released(&self, user: &str) -> Vec<String>;
    /// A released message was delivered in full: no longer presented.
    fn fetched(&self, user: &str, uidl: &str);
    /// No longer in the mailbox: forgotten.
    fn gone(&self, user: &str, uidl: &str);
}

pub type SharedHolds = Arc<dyn HoldStore>;

/// What the store keeps of a held message, read from its stub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldInfo {
    pub size: u64,
    pub from: String,
    pub subject: String,
    pub date: String,
}

/// The client side's hold settings.
#[derive(Debug, Clone)]
pub struct HoldConfig {
    /// Messages whose LIST size is larger are held (0: off).
    pub over_bytes: u64,
    /// Senders never held (addresses, compared case-insensitively).
    pub except_from: Vec<String>,
    /// For the stub's estimate of what fetching the original costs.
    pub bits_per_sec: u64,
    pub cost_per_minute: f64,
    pub store: SharedHolds,
}

/// A [`HoldStore`] in memory (tests).
#[derive(Debug, Default)]
pub struct MemHolds {
    /// (user, uidl) → (released, info)
    map: Mutex<BTreeMap<(String, String), (bool, HeldInfo)>>,
}

impl MemHolds {
    /// The user released it.
    pub fn release(&self, user: &str, uidl: &str) {
        if let Some(e) = self.lock().get_mut(&(user.into(), uidl.into())) {
            e.0 = true;
        }
    }

    pub fn entries(&self) -> Vec<(String, String, bool, HeldInfo)> {
        self.lock()
            .iter()
            .map(|((u, id), (r, i))| (u.clone(), id.clone(), *r, i.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), (bool, HeldInfo)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl HoldStore for MemHolds {
    fn id(&self, user: &str, uidl: &str) -> String {
        short_id(&format!("{user}\0{uidl}"))
    }
    fn stub_delivered(&self, user: &str, uidl: &str, info: &HeldInfo) {
        self.lock()
            .insert((user.into(), uidl.into()), (false, info.clone()));
    }
    fn released(&self, user: &str) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|((u, _), (r, _))| u == user && *r)
            .map(|((_, id), _)| id.clone())
            .collect()
    }
    fn fetched(&self, user: &str, uidl: &str) {
        self.lock().remove(&(user.into(), uidl.into()));
    }
    fn gone(&self, user: &str, uidl: &str) {
        self.lock().remove(&(user.into(), uidl.into()));
    }
}

/// Eight hex digits naming a held message (a hash of what names it).
pub fn short_id(key: &str) -> String {
    prefix_hash(key.as_bytes())[..8].to_owned()
}

/// The UIDL the program sees for a held message: distinct from the
/// original's, at most [`UIDL_MAX`] characters, the same every session.
pub fn held_uidl(uid: &str) -> String {
    if uid.len() + UIDL_SUFFIX.len() <= UIDL_MAX {
        return format!("{uid}{UIDL_SUFFIX}");
    }
    // Cut, with a hash of the whole so that two long UIDLs sharing a
    // prefix stay apart: 42 + 1 + 16 + 11 = 70.
    let keep = &uid[..uid.floor_char_boundary(UIDL_MAX - UIDL_SUFFIX.len() - 17)];
    format!("{keep}~{}{UIDL_SUFFIX}", &prefix_hash(uid.as_bytes())[..16])
}

/// The request line.
pub(crate) fn request(id: &str, over: u64, secs: u64, cents: u64, except: &[String]) -> Vec<u8> {
    let mut l = format!("{VERB} {VERSION} {id} {over} {secs} {cents}");
    for a in except.iter().take(EXCEPT_MAX) {
        if l.len() + a.len() + 3 > MAX_LINE {
            break;
        }
        l.push(' ');
        l.push_str(a);
    }
    l.push_str("\r\n");
    l.into_bytes()
}

/// A parsed request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HoldRequest {
    pub(crate) info: StubInfoParts,
    pub(crate) except: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StubInfoParts {
    id: String,
    over: u64,
    secs: u64,
    cents: u64,
}

pub(crate) fn parse_request(line: &[u8]) -> Result<HoldRequest, String> {
    let text = String::from_utf8_lossy(trim_end(line)).into_owned();
    let mut w = text.split_ascii_whitespace().skip(1);
    if w.next().and_then(|v| v.parse::<u32>().ok()) != Some(VERSION) {
        return Err(format!("unsupported {VERB} version in {text:?}"));
    }
    let id = w
        .next()
        .filter(|i| i.len() <= 40 && i.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let mut num = || w.next().and_then(|v| v.parse::<u64>().ok());
    let (over, secs, cents) = (num(), num(), num());
    let (Some(id), Some(over), Some(secs), Some(cents)) = (id, over, secs, cents) else {
        return Err(format!("malformed {text:?}"));
    };
    let except = w.take(EXCEPT_MAX).map(|a| a.to_ascii_lowercase()).collect();
    Ok(HoldRequest {
        info: StubInfoParts {
            id: id.to_owned(),
            over,
            secs,
            cents,
        },
        except,
    })
}

/// The addresses in a From header (`Name <a@b>` or bare), lowercased.
pub fn addresses(from: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in from.split(',') {
        let a = match (part.find('<'), part.rfind('>')) {
            (Some(l), Some(r)) if l < r => &part[l + 1..r],
            _ => part
                .split_ascii_whitespace()
                .find(|w| w.contains('@'))
                .unwrap_or(""),
        };
        let a = a.trim().trim_matches(|c| c == '"' || c == '(' || c == ')');
        if a.contains('@') {
            out.push(a.to_ascii_lowercase());
        }
    }
    out
}

/// What the server side does with the real reply of a held RETR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the header for the sender.
    Undecided,
    /// Allowed sender: the real reply goes through as it comes.
    Pass,
    /// Allowed sender, asked with `TOP n x`: kept whole, then cut.
    PassTop,
    /// The stub goes in its place.
    Stub,
}

/// Server side: one RETR (or `TOP n x`, asked upstream as `RETR n`) whose
/// reply becomes a stub, or for an allowed sender goes through as it is.
/// Holds at most [`stub::SCAN_MAX`] bytes of the original; past that it
/// only reads to the end.
#[derive(Debug)]
pub(crate) struct ServerHold {
    req: HoldRequest,
    /// The program asked `TOP n x`: the reply is cut to x body lines.
    top: Option<u64>,
    status: Option<Vec<u8>>,
    buf: Vec<u8>,
    total: u64,
    mode: Mode,
}

impl ServerHold {
    pub(crate) fn new(req: HoldRequest, top: Option<u64>) -> Self {
        Self {
            req,
            top,
            status: None,
            buf: Vec::new(),
            total: 0,
            mode: Mode::Undecided,
        }
    }

    /// Like [`resume::ServerResume::feed`]: a piece of the real reply in,
    /// what the client side gets into `held`.
    pub(crate) fn feed(
        &mut self,
        piece: &[u8],
        status_len: usize,
        done: bool,
        held: &mut Vec<u8>,
        notes: &mut Vec<String>,
    ) {
        if self.mode == Mode::Pass {
            held.extend_from_slice(piece);
            return;
        }
        let rest = match reply_start(&mut self.status, piece, status_len) {
            ReplyStart::Wait => return,
            ReplyStart::Refused => {
                self.mode = Mode::Pass;
                held.extend_from_slice(NOT_HELD);
                held.extend_from_slice(piece);
                return;
            }
            ReplyStart::Body(body) => body,
        };
        self.total += rest.len() as u64;
        let room = stub::SCAN_MAX.saturating_sub(self.buf.len());
        let fits = rest.len() <= room;
        if self.mode == Mode::Undecided {
            if fits {
                self.buf.extend_from_slice(rest);
            }
            // The sender is in the header: decided once it ended (looked
            // for in the first 64 KB only), or the reply did.
            let probe = &self.buf[..self.buf.len().min(HEAD_MAX)];
            let head_done = probe.windows(4).any(|w| w == b"\r\n\r\n")
                || probe.windows(2).any(|w| w == b"\n\n")
                || self.buf.len() >= HEAD_MAX;
            if !head_done && !done && fits {
                return;
            }
            let from = stub::summarize(&stub::unstuff(probe)).from;
            let allowed = addresses(&from)
                .iter()
                .any(|a| self.req.except.iter().any(|e| e == a));
            if allowed {
                notes.push(format!(
                    "POP3 hold: sender {from:?} is on the allow-list; message sent whole"
                ));
            }
            self.mode = match (allowed, self.top) {
                (true, None) => {
                    held.extend_from_slice(SENT_WHOLE);
                    held.extend_from_slice(&self.status.take().unwrap_or_default());
                    held.append(&mut self.buf);
                    if !fits {
                        held.extend_from_slice(rest);
                    }
                    self.mode = Mode::Pass;
                    return;
                }
                (true, Some(_)) => Mode::PassTop,
                (false, _) => Mode::Stub,
            };
            if !fits {
                self.buf.extend_from_slice(&rest[..room]);
            }
        } else {
            self.buf.extend_from_slice(&rest[..rest.len().min(room)]);
        }
        if !done {
            return;
        }
        let original = stub::unstuff(&self.buf);
        let cut = (self.total as usize) > self.buf.len();
        let status = self.status.take().unwrap_or_default();
        self.buf = Vec::new();
        if self.mode == Mode::PassTop {
            if cut {
                // Never a cut message in a reply that says it is whole.
                held.extend_from_slice(NOT_HELD);
                held.extend_from_slice(b"-ERR straw: message too large to answer TOP\r\n");
            } else {
                held.extend_from_slice(SENT_WHOLE);
                held.extend_from_slice(&status);
                let lines = self.top.unwrap_or(u64::MAX);
                held.extend_from_slice(&stub::stuff(&stub::top_of(&original, lines)));
            }
            return;
        }
        let i = &self.req.info;
        // The size as LIST counts it: the original with CRLF line ends,
        // not dot-stuffed (close enough past the scan cap).
        let size = if cut {
            self.total
        } else {
            original.len() as u64
        };
        let mut stub = stub::build_stub(
            &original,
            &StubInfo {
                id: i.id.clone(),
                size,
                over: i.over,
                secs: i.secs,
                cost_cents: i.cents,
            },
        );
        if let Some(lines) = self.top {
            stub = stub::top_of(&stub, lines);
        }
        notes.push(format!(
            "POP3 hold: {size}-byte message held ashore, {}-byte stub sent",
            stub.len()
        ));
        held.extend_from_slice(HELD);
        held.extend_from_slice(format!("+OK {} octets (straw stub)\r\n", stub.len()).as_bytes());
        held.extend_from_slice(&stub::stuff(&stub));
    }
}

/// The client's picture of the mailbox, from the login's UIDL and LIST.
#[derive(Debug, Default)]
pub(super) struct HoldView {
    /// Highest real message number.
    pub(super) last: u32,
    pub(super) uids: HashMap<u32, String>,
    pub(super) sizes: HashMap<u32, u64>,
    /// Released messages, shown as `last + 1 + index`.
    pub(super) extras: Vec<Extra>,
}

#[derive(Debug, Clone)]
pub(super) struct Extra {
    pub(super) real: u32,
    pub(super) uid: String,
    pub(super) size: u64,
}

impl HoldView {
    /// From the real UIDL and LIST listings and the released UIDLs; also
    /// returns the released UIDLs no longer in the mailbox.
    pub(super) fn new(uidl: &[u8], list: &[u8], released: &[String]) -> (Self, Vec<String>) {
        let mut v = HoldView::default();
        for (n, uid) in resume::parse_uidl(uidl, true) {
            v.last = v.last.max(n);
            v.uids.insert(n, uid);
        }
        for (n, size) in resume::parse_uidl(list, true) {
            if let Ok(s) = size.parse() {
                v.last = v.last.max(n);
                v.sizes.insert(n, s);
            }
        }
        let by_uid: HashMap<&str, u32> = v.uids.iter().map(|(n, u)| (u.as_str(), *n)).collect();
        let mut gone = Vec::new();
        let mut seen = HashSet::new();
        let mut extras = Vec::new();
        for uid in released {
            match by_uid.get(uid.as_str()) {
                Some(&real) if seen.insert(real) => extras.push(Extra {
                    real,
                    uid: uid.clone(),
                    size: v.sizes.get(&real).copied().unwrap_or(0),
                }),
                Some(_) => {}
                None => gone.push(uid.clone()),
            }
        }
        extras.sort_by_key(|e| e.real);
        v.extras = extras;
        (v, gone)
    }

    pub(super) fn held(&self, n: u32, over: u64) -> bool {
        self.sizes.get(&n).is_some_and(|&s| s > over)
    }

    pub(super) fn extra(&self, n: u32) -> Option<&Extra> {
        let i = n.checked_sub(self.last)?.checked_sub(1)?;
        self.extras.get(usize::try_from(i).ok()?)
    }

    /// Released messages still shown: (program number, extra).
    fn shown<'a>(&'a self, deleted: &'a HashSet<u32>) -> impl Iterator<Item = (u32, &'a Extra)> {
        self.extras
            .iter()
            .enumerate()
            .filter(|(_, e)| !deleted.contains(&e.real))
            .map(|(i, e)| (self.last.saturating_add(1 + i as u32), e))
    }

    pub(super) fn rewrite_stat(&self, reply: &[u8], deleted: &HashSet<u32>) -> Vec<u8> {
        let t = String::from_utf8_lossy(trim_end(reply));
        let mut w = t.split_ascii_whitespace();
        let (Some("+OK"), Some(Ok(n)), Some(Ok(s))) = (
            w.next(),
            w.next().map(str::parse::<u64>),
            w.next().map(str::parse::<u64>),
        ) else {
            return reply.to_vec();
        };
        let (xn, xs) = self
            .shown(deleted)
            .fold((0u64, 0u64), |(c, z), (_, e)| (c + 1, z + e.size));
        format!("+OK {} {}\r\n", n + xn, s + xs).into_bytes()
    }

    /// A UIDL (`uidl`) or LIST listing as the program sees it.
    pub(super) fn rewrite_listing(
        &self,
        reply: &[u8],
        uidl: bool,
        over: u64,
        deleted: &HashSet<u32>,
    ) -> Vec<u8> {
        if !reply.starts_with(b"+OK") || !reply.ends_with(b"\n.\r\n") {
            return reply.to_vec();
        }
        let body = &reply[..reply.len() - 3];
        let mut out = Vec::with_capacity(reply.len() + 64);
        for (i, l) in body.split_inclusive(|&b| b == b'\n').enumerate() {
            let row = (i > 0)
                .then(|| std::str::from_utf8(trim_end(l)).ok())
                .flatten()
                .and_then(|t| t.split_once(' '))
                .and_then(|(n, u)| Some((n.parse::<u32>().ok()?, u)));
            match row {
                Some((n, uid)) if uidl && self.held(n, over) => {
                    out.extend_from_slice(format!("{n} {}\r\n", held_uidl(uid)).as_bytes());
                }
                _ => out.extend_from_slice(l),
            }
        }
        for (n, e) in self.shown(deleted) {
            let v = if uidl {
                e.uid.clone()
            } else {
                e.size.to_string()
            };
            out.extend_from_slice(format!("{n} {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b".\r\n");
        out
    }
}

/// CAPA towards the program with hold on: no `SASL` line, so that it logs
/// in with USER/PASS, the login whose STAT/UIDL/LIST straw prefetches
/// (without them nothing can be held, and big messages come whole).
pub(crate) fn drop_sasl(capa: &[u8]) -> Vec<u8> {
    capa.split_inclusive(|&b| b == b'\n')
        .enumerate()
        .filter(|(i, l)| *i == 0 || verb(l).0 != "SASL")
        .flat_map(|(_, l)| l.iter().copied())
        .collect()
}

/// From, Subject and Date of a delivered stub (the mark taken off).
fn stub_info(reply: &[u8], size: u64) -> HeldInfo {
    let body = reply
        .iter()
        .position(|&b| b == b'\n')
        .map_or(&[][..], |p| &reply[p + 1..]);
    let s = stub::summarize(&stub::unstuff(body));
    let subject = s.subject.strip_prefix(stub::MARK).unwrap_or(&s.subject);
    HeldInfo {
        size,
        from: s.from,
        subject: subject.trim_start().to_owned(),
        date: s.date,
    }
}

impl ClientAccel {
    /// Hold applies: configured, and the login's listings are prefetched.
    pub(super) fn hold_on(&self) -> bool {
        self.cfg.prefetch && self.hold.as_ref().is_some_and(|h| h.over_bytes > 0)
    }

    /// Never prefetch a message that would be held.
    pub(super) fn would_hold(&self, size: u64) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| h.over_bytes > 0 && size > h.over_bytes)
    }

    /// The prefetched STAT/UIDL/LIST with hold on: kept until LIST (the
    /// last) is here, then rewritten together. Returns false for a slot
    /// kept back.
    pub(super) fn hold_prefetched(&mut self, slot: usize, reply: &mut Vec<u8>) -> bool {
        if !self.hold_on() {
            return true;
        }
        if slot < 2 {
            self.pf_raw[slot] = Some(std::mem::take(reply));
            return false;
        }
        let (stat, uidl) = (self.pf_raw[0].take(), self.pf_raw[1].take());
        let (Some(h), Some(mut stat), Some(mut uidl)) = (self.hold.clone(), stat, uidl) else {
            return true;
        };
        let mut list = std::mem::take(reply);
        if [&stat, &uidl, &list].iter().all(|r| r.starts_with(b"+OK")) {
            let user = self.user.clone().unwrap_or_default();
            let released = h.store.released(&user);
            let (view, gone) = HoldView::new(&uidl, &list, &released);
            for uid in gone {
                h.store.gone(&user, &uid);
            }
            let none = HashSet::new();
            stat = view.rewrite_stat(&stat, &none);
            uidl = view.rewrite_listing(&uidl, true, h.over_bytes, &none);
            list = view.rewrite_listing(&list, false, h.over_bytes, &none);
            self.hold_view = Some(view);
        }
        for (s, r) in [(0, stat), (1, uidl)] {
            for id in std::mem::take(&mut self.pf_waiters[s]) {
                self.deliver(id, &r, true);
            }
            self.pf_val[s] = Some(r);
        }
        *reply = list;
        true
    }

    /// A real STAT reply or UIDL/LIST listing on its way to the program.
    pub(super) fn hold_rewrite(&self, reply: Vec<u8>, kind: u8) -> Vec<u8> {
        let (Some(v), Some(h)) = (&self.hold_view, &self.hold) else {
            return reply;
        };
        match kind {
            0 => v.rewrite_stat(&reply, &self.deleted),
            1 => v.rewrite_listing(&reply, true, h.over_bytes, &self.deleted),
            _ => v.rewrite_listing(&reply, false, h.over_bytes, &self.deleted),
        }
    }

    /// A program command seen first by hold: `None` if handled here, else
    /// the line to go on with (maybe renumbered to a real message).
    pub(super) fn hold_command(&mut self, line: Vec<u8>, out: &mut Output) -> Option<Vec<u8>> {
        if !self.hold_on() {
            return Some(line);
        }
        let (v, arg) = verb(&line);
        if !arg || !matches!(v.as_str(), "RETR" | "TOP" | "DELE" | "LIST" | "UIDL") {
            return Some(line);
        }
        let n = msg_arg(&line)?;
        if self.hold_view.is_none() {
            // The login's listings are on their way: wait for them (they
            // come with the PASS reply) to know what this number is.
            if let Some(e) = self
                .expect
                .iter_mut()
                .find(|e| matches!(e.disp, Disp::Prefetch(2)))
            {
                e.unblocks = true;
                self.blocked = true;
                self.inbuf.splice(0..0, line);
                return None;
            }
            return Some(line);
        }
        let over = self.hold.as_ref().map_or(0, |h| h.over_bytes);
        let view = self.hold_view.as_ref()?;
        if let Some(x) = view.extra(n).cloned() {
            let rest: String = String::from_utf8_lossy(trim_end(&line))
                .split_ascii_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
                .join(" ");
            match v.as_str() {
                "LIST" => self
                    .owed
                    .owe_local(format!("+OK {n} {}\r\n", x.size).into_bytes()),
                "UIDL" => self
                    .owed
                    .owe_local(format!("+OK {n} {}\r\n", x.uid).into_bytes()),
                "RETR" | "TOP" => {
                    self.discard_prefetch(out);
                    let (line, min) = if v == "RETR" {
                        self.retrieved.insert(x.real);
                        (format!("RETR {}\r\n", x.real), 0)
                    } else {
                        (format!("TOP {} {rest}\r\n", x.real), x.size.max(1))
                    };
                    self.forward(line.as_bytes(), true, false, out);
                    if let Some(Expect {
                        disp: Disp::Deliver { retr, hold, .. },
                        ..
                    }) = self.expect.back_mut()
                    {
                        *retr = Some(n);
                        *hold = HoldMark::Released(x.uid, min);
                    }
                }
                _ => {
                    let sep = if rest.is_empty() { "" } else { " " };
                    return Some(format!("{v} {}{sep}{rest}\r\n", x.real).into_bytes());
                }
            }
            return None;
        }
        if !view.held(n, over) {
            return Some(line);
        }
        let uid = view.uids.get(&n).cloned();
        let size = view.sizes.get(&n).copied().unwrap_or(0);
        match (v.as_str(), uid) {
            ("UIDL", Some(uid)) => {
                self.owed
                    .owe_local(format!("+OK {n} {}\r\n", held_uidl(&uid)).into_bytes());
                None
            }
            ("DELE", _) => {
                // Never sent: the program deletes the stub, the original
                // stays on the server.
                self.owed.owe_local(
                    format!(
                        "+OK straw: message {n} stays on the server (held ashore; only its stub was delivered)\r\n"
                    )
                    .into_bytes(),
                );
                None
            }
            ("RETR" | "TOP", Some(uid)) if !self.hold_refused => {
                if self.pf_retr.front().is_some_and(|p| p.msg != n) {
                    self.discard_prefetch(out);
                }
                self.hold_retr(&line, n, uid, size, out);
                if v == "RETR" {
                    // The program reads on: the next message as usual.
                    self.retrieved.insert(n);
                    self.prefetch_retr(n, out);
                }
                None
            }
            _ => Some(line),
        }
    }

    /// Asks for the stub of message `n` in place of its RETR (or of its
    /// `TOP n x`: the stub cut to x lines; fetchmail reads whole messages
    /// with `TOP n 99999999`). A header-only TOP records nothing.
    fn hold_retr(&mut self, line: &[u8], n: u32, uid: String, size: u64, out: &mut Output) {
        let Some(h) = self.hold.clone() else { return };
        let user = self.user.clone().unwrap_or_default();
        let id = h.store.id(&user, &uid);
        let bits = h.bits_per_sec.max(1);
        let secs = size.saturating_mul(8).div_ceil(bits);
        let cents = (secs.div_ceil(60) as f64 * h.cost_per_minute * 100.0).round() as u64;
        out.to_tunnel
            .extend_from_slice(&request(&id, h.over_bytes, secs, cents, &h.except_from));
        self.expect.push_back(Expect {
            multi: false,
            disp: Disp::Hold,
            unblocks: false,
        });
        let header_only = verb(line).0 == "TOP"
            && String::from_utf8_lossy(trim_end(line))
                .split_ascii_whitespace()
                .nth(2)
                .is_some_and(|x| x.parse::<u64>() == Ok(0));
        self.forward_tracked(line, true, false, Track::Stub, out);
        if let Some(Expect {
            disp: Disp::Deliver {
                hold, stub, retr, ..
            },
            ..
        }) = self.expect.back_mut()
        {
            *stub = true;
            *retr = Some(n);
            if !header_only {
                *hold = HoldMark::Stub { uid, size };
            }
        }
    }

    /// The server side's answer to a hold request: whether a stub follows.
    pub(super) fn hold_answer(&mut self, reply: &[u8], out: &mut Output) {
        let stub = reply.starts_with(HELD);
        if !stub && !reply.starts_with(b"+OK straw:") && !reply.starts_with(b"-ERR straw:") {
            // An older server side passed it on: the original follows.
            self.hold_refused = true;
            out.notes.push(
                "POP3 hold: the server side does not know it (older straw); messages are carried whole"
                    .into(),
            );
        }
        if let Some(Expect {
            disp:
                Disp::Deliver {
                    track,
                    stub: s,
                    hold,
                    ..
                },
            ..
        }) = self.expect.front_mut()
            && !stub
        {
            *track = Track::None;
            *s = false;
            *hold = HoldMark::None;
        }
    }

    /// A reply marked by hold was delivered whole.
    pub(super) fn hold_delivered(&mut self, mark: HoldMark, reply: &[u8]) {
        let (Some(h), Some(user)) = (self.hold.clone(), self.user.clone()) else {
            return;
        };
        if !self.reader.first.starts_with(b"+OK") {
            return;
        }
        match mark {
            HoldMark::None => {}
            HoldMark::Stub { uid, size } => {
                h.store.stub_delivered(&user, &uid, &stub_info(reply, size));
            }
            HoldMark::Released(uid, min) if self.last_reply_bytes >= min => {
                h.store.fetched(&user, &uid)
            }
            HoldMark::Released(..) => {}
        }
    }
}
