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
//!
//! `RETR n` takes `RETR n+1` along (see [`RetrPrefetch`]): its real reply is
//! held on the client side and serves the program's `RETR n+1` without a
//! round trip. RETR commits nothing, so asking early changes nothing on the
//! server. A prefetch that turns useless while it still streams (QUIT, DELE
//! of it, a RETR elsewhere) is cut short in-band with `XSTRAW-ABORT n`.

pub mod resume;
pub(crate) mod text;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{HashMap, HashSet, VecDeque};

use crate::partial::SharedStore;
use crate::{AccelStats, Accelerator, Cache, Output};
use text::{DotScanner, MAX_LINE, take_line, verb};

/// Cache key of the last real greeting (empty: don't serve one).
pub const GREETING_KEY: &str = "pop3.greeting";
/// The local reply to a `QUIT` that commits nothing.
const QUIT_OK: &[u8] = b"+OK Logging out.\r\n";
/// The program's next reply when the tunnel is gone for good.
pub const LINK_LOST: &[u8] = b"-ERR straw: link lost\r\n";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pop3Config {
    /// Ask for `STAT`, `UIDL` and `LIST` together with `PASS`.
    pub prefetch: bool,
    /// With `RETR n`, also send `RETR n+1` when LIST says it is at most this
    /// many bytes (0: never). See [`RetrPrefetch`].
    pub prefetch_retr_max_bytes: u64,
}

/// The config's default for [`Pop3Config::prefetch_retr_max_bytes`].
pub const DEFAULT_PREFETCH_RETR_MAX_BYTES: u64 = 64 * 1024;

/// Client side → server side, in-band: `XSTRAW-ABORT <n>` cuts short the
/// prefetched `RETR n` sent before it (see [`ServerAccel`]). Answered
/// [`ABORT_ACK`] in its place in reply order; an older server side passes
/// it to the real server, whose `-ERR` tells the client side not to send
/// another.
pub const ABORT_VERB: &str = "XSTRAW-ABORT";
pub(crate) const ABORT_ACK: &[u8] = b"+OK\r\n";
/// The reply to an aborted prefetch whose status line was not sent yet.
pub(crate) const PREFETCH_ABORTED: &[u8] = b"-ERR straw: prefetch aborted\r\n";
/// Server side's internal stand-ins in its command queue (never upstream):
/// a queued RETR that was aborted, and the abort line itself.
const SKIP_LINE: &[u8] = b"XSTRAW-INTERNAL-SKIP\r\n";
const ACK_LINE: &[u8] = b"XSTRAW-INTERNAL-ACK\r\n";

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
    /// Past a `+OK` status line, inside a multi-line body.
    pub(crate) fn in_body(&self) -> bool {
        self.body.is_some()
    }

    /// Inside a body: the bytes that would end it right here.
    pub(crate) fn closing(&self) -> Option<&'static [u8]> {
        self.body.as_ref().map(DotScanner::closing)
    }

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
        track: Track,
    },
    /// Our own `UIDL n`, to key a RETR's partial: swallowed.
    OwnUidl(u32),
    /// The server side's answer to a resume request (see [`resume`]).
    Resume,
    /// The server side's answer to an abort line.
    AbortAck,
    /// The real reply to a `USER` answered locally.
    VerifyUser,
    /// The real reply to a `QUIT` answered locally (no `DELE` to commit).
    VerifyQuit,
    Pass {
        id: u64,
    },
    Prefetch(usize),
}

/// What else a delivered reply is watched for.
#[derive(Debug, Default)]
enum Track {
    #[default]
    None,
    /// A UIDL listing or `UIDL n`: learn msg → UIDL (`multi`: a listing).
    Uidl {
        multi: bool,
    },
    /// A LIST listing or `LIST n`: learn message sizes.
    List {
        multi: bool,
    },
    Retr(Box<RetrTrack>),
}

/// A RETR whose body is kept in the partial store as it arrives.
#[derive(Debug)]
struct RetrTrack {
    msg: u32,
    /// Known once the UIDL is (it may arrive with our own `UIDL n`).
    key: Option<String>,
    /// The prefix offered with a resume request.
    offered: Option<Vec<u8>>,
    /// The server side agreed: the stored prefix goes to the program after
    /// the status line, then the remainder from the stream.
    resumed: bool,
    spliced: bool,
    /// The store holds this transfer's body so far.
    storing: bool,
    /// Keep the body in the store (off for a discarded prefetch: an abort
    /// may end it with bytes that are not the message's).
    record: bool,
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

/// The one `RETR n+1` sent ahead of the program (pipelined behind its
/// `RETR n`). Its real reply is kept here until the program asks for it; it
/// then becomes an ordinary owed reply and streams on as it comes. Bounded:
/// only sent when LIST says the message fits the configured cap, and
/// dropped if the reply outgrows [`Self::limit`].
///
/// Link waits: the program's `RETR n+1` counts as one only if none of the
/// prefetched reply has arrived and nothing else is owed to the program (it
/// then waits on bytes already on their way); otherwise it is a local reply.
#[derive(Debug)]
struct RetrPrefetch {
    msg: u32,
    /// The reply's id (like an owed reply's, but owed to no one yet).
    id: u64,
    buf: Vec<u8>,
    done: bool,
    /// Most bytes held: LIST sizes count octets before dot-stuffing.
    limit: usize,
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
    /// Where interrupted RETR bodies are kept (none: no message resume).
    store: Option<SharedStore>,
    /// The login name given with `USER`/`APOP`: half of a partial's key.
    user: Option<String>,
    /// msg number → UIDL, as far as known (None: the server has none).
    uidls: HashMap<u32, Option<String>>,
    /// The server side doesn't know resume requests (an older straw).
    resume_refused: bool,
    /// msg number → size, from LIST (the prefetched one or the program's).
    sizes: HashMap<u32, u64>,
    /// Messages the program marked deleted or asked for: not prefetched.
    deleted: HashSet<u32>,
    retrieved: HashSet<u32>,
    pf_retr: Option<RetrPrefetch>,
    /// The server side doesn't know abort lines (an older straw).
    abort_refused: bool,
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
            store: None,
            user: None,
            uidls: HashMap::new(),
            resume_refused: false,
            sizes: HashMap::new(),
            deleted: HashSet::new(),
            retrieved: HashSet::new(),
            pf_retr: None,
            abort_refused: false,
        }
    }

    /// Keeps interrupted RETR bodies in `store` and resumes them.
    pub fn with_store(mut self, store: SharedStore) -> Self {
        self.store = Some(store);
        self
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
        if let Some(p) = &mut self.pf_retr
            && p.id == id
        {
            p.buf.extend_from_slice(bytes);
            p.done = end;
        }
        // Otherwise a discarded prefetch: dropped.
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
        self.forward_tracked(line, multi, capa, Track::None, out)
    }

    fn forward_tracked(
        &mut self,
        line: &[u8],
        multi: bool,
        capa: bool,
        track: Track,
        out: &mut Output,
    ) -> u64 {
        out.to_tunnel.extend_from_slice(line);
        out.flush = true;
        let id = self.owe_remote();
        self.expect.push_back(Expect {
            multi,
            disp: Disp::Deliver { id, capa, track },
            unblocks: false,
        });
        id
    }

    /// `RETR n` with a partial store: learn the message's UIDL if needed,
    /// offer a stored prefix, and watch the body. Returns false if the line
    /// was put back to wait for our own `UIDL n`.
    fn retr(&mut self, line: Vec<u8>, out: &mut Output) -> bool {
        let msg = String::from_utf8_lossy(text::trim_end(&line))
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u32>().ok());
        let (Some(store), Some(user), Some(msg)) = (self.store.clone(), self.user.clone(), msg)
        else {
            self.forward(&line, true, false, out);
            return true;
        };
        let key = match self.uidls.get(&msg) {
            Some(Some(uid)) => Some(resume::key(&user, uid)),
            Some(None) => {
                // The server gives no UIDL for it: nothing to key a partial by.
                self.forward(&line, true, false, out);
                return true;
            }
            None if self.prefetch_uidl_pending() => {
                // The prefetched listing arrives before the RETR reply.
                if store.any_with_prefix(&resume::account_prefix(&user)) {
                    if let Some(e) = self
                        .expect
                        .iter_mut()
                        .find(|e| matches!(e.disp, Disp::Prefetch(1)))
                    {
                        e.unblocks = true;
                        self.blocked = true;
                    }
                    self.inbuf.splice(0..0, line);
                    return false;
                }
                None
            }
            None => {
                out.to_tunnel
                    .extend_from_slice(format!("UIDL {msg}\r\n").as_bytes());
                self.expect.push_back(Expect {
                    multi: false,
                    disp: Disp::OwnUidl(msg),
                    unblocks: false,
                });
                if store.any_with_prefix(&resume::account_prefix(&user)) {
                    // A partial of this account may be this message: wait
                    // for the UIDL (one round trip) before asking for it.
                    out.flush = true;
                    self.block_on_last();
                    self.inbuf.splice(0..0, line);
                    return false;
                }
                None
            }
        };
        let offered = key
            .as_ref()
            .filter(|_| !self.resume_refused)
            .and_then(|k| store.get(k))
            .filter(|p| p.len() >= resume::MIN_PREFIX);
        if let Some(p) = &offered {
            out.to_tunnel.extend_from_slice(&resume::request(p));
            self.expect.push_back(Expect {
                multi: false,
                disp: Disp::Resume,
                unblocks: false,
            });
        }
        let track = Track::Retr(Box::new(RetrTrack {
            msg,
            key,
            offered,
            resumed: false,
            spliced: false,
            storing: false,
            record: true,
        }));
        self.forward_tracked(&line, true, false, track, out);
        true
    }

    /// After the program's `RETR after`: sends `RETR after+1` too if it is
    /// likely wanted and small (see [`RetrPrefetch`]). Skipped while a
    /// partial of it may be stored: the program's own RETR then resumes it
    /// through the one resume path.
    fn prefetch_retr(&mut self, after: u32, out: &mut Output) {
        let cap = self.cfg.prefetch_retr_max_bytes;
        if cap == 0 || self.pf_retr.is_some() || self.failed {
            return;
        }
        let Some(n) = after.checked_add(1) else {
            return;
        };
        let Some(&size) = self.sizes.get(&n) else {
            return;
        };
        if size > cap || self.deleted.contains(&n) || self.retrieved.contains(&n) {
            return;
        }
        let mut track = Track::None;
        if let (Some(store), Some(user)) = (self.store.clone(), self.user.clone()) {
            let key = match self.uidls.get(&n) {
                Some(Some(uid)) => {
                    let key = resume::key(&user, uid);
                    if store.get(&key).is_some() {
                        return;
                    }
                    Some(key)
                }
                Some(None) => None,
                None => {
                    if store.any_with_prefix(&resume::account_prefix(&user)) {
                        return;
                    }
                    if !self.prefetch_uidl_pending() {
                        // Keys the body in the store, as for the program's RETR.
                        out.to_tunnel
                            .extend_from_slice(format!("UIDL {n}\r\n").as_bytes());
                        self.expect.push_back(Expect {
                            multi: false,
                            disp: Disp::OwnUidl(n),
                            unblocks: false,
                        });
                    }
                    None
                }
            };
            if key.is_some() || !matches!(self.uidls.get(&n), Some(None)) {
                track = Track::Retr(Box::new(RetrTrack {
                    msg: n,
                    key,
                    offered: None,
                    resumed: false,
                    spliced: false,
                    storing: false,
                    record: true,
                }));
            }
        }
        out.to_tunnel
            .extend_from_slice(format!("RETR {n}\r\n").as_bytes());
        out.flush = true;
        self.next_id += 1;
        let id = self.next_id;
        self.expect.push_back(Expect {
            multi: true,
            disp: Disp::Deliver {
                id,
                capa: false,
                track,
            },
            unblocks: false,
        });
        let limit =
            usize::try_from(size.saturating_mul(2).saturating_add(1024)).unwrap_or(usize::MAX);
        self.pf_retr = Some(RetrPrefetch {
            msg: n,
            id,
            buf: Vec::new(),
            done: false,
            limit,
        });
    }

    /// The program asks for the prefetched message: owe it its real reply,
    /// what has arrived now and the rest as it comes.
    fn claim_prefetch(&mut self) {
        let Some(p) = self.pf_retr.take() else {
            return;
        };
        if !p.buf.is_empty() || p.done {
            self.stats.local_replies += 1;
        } else if !self.program_waiting() {
            self.stats.link_waits += 1;
        }
        self.owed.push_back(Owed::Remote {
            id: p.id,
            buf: p.buf,
            done: p.done,
        });
    }

    /// The prefetched message won't be asked for (or outgrew its bound):
    /// forget it, and if it is still arriving, stop recording it and ask the
    /// server side to cut it short.
    fn discard_prefetch(&mut self, out: &mut Output) {
        let Some(p) = self.pf_retr.take() else {
            return;
        };
        if p.done {
            return;
        }
        for e in &mut self.expect {
            if let Disp::Deliver {
                id,
                track: Track::Retr(t),
                ..
            } = &mut e.disp
                && *id == p.id
            {
                t.record = false;
                if let (Some(store), Some(key), true) = (&self.store, &t.key, t.storing) {
                    store.remove(key);
                }
                t.storing = false;
            }
        }
        if !self.abort_refused {
            out.to_tunnel
                .extend_from_slice(format!("{ABORT_VERB} {}\r\n", p.msg).as_bytes());
            out.flush = true;
            self.expect.push_back(Expect {
                multi: false,
                disp: Disp::AbortAck,
                unblocks: false,
            });
        }
    }

    /// Learns msg → size pairs from a LIST reply.
    fn learn_sizes(&mut self, reply: &[u8], multi: bool) {
        for (n, size) in resume::parse_uidl(reply, multi) {
            if let Ok(size) = size.parse() {
                self.sizes.insert(n, size);
            }
        }
    }

    /// The UIDL listing prefetched with the login is still on its way.
    fn prefetch_uidl_pending(&self) -> bool {
        self.expect
            .iter()
            .any(|e| matches!(e.disp, Disp::Prefetch(1)))
    }

    /// Learns msg → UIDL pairs from a UIDL reply.
    fn learn_uidls(&mut self, reply: &[u8], multi: bool) {
        for (n, uid) in resume::parse_uidl(reply, multi) {
            self.uidls.insert(n, Some(uid));
        }
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
        if matches!(verb.as_str(), "USER" | "APOP") {
            self.user = String::from_utf8_lossy(text::trim_end(&line))
                .split_ascii_whitespace()
                .nth(1)
                .map(str::to_owned);
            self.uidls.clear();
        }
        let msg = msg_arg(&line);
        if let Some(p) = &self.pf_retr {
            let useless = match verb.as_str() {
                "QUIT" | "USER" | "PASS" | "APOP" | "AUTH" => true,
                // The prefetched reply would no longer be what RETR says.
                "DELE" => msg == Some(p.msg),
                // The program went elsewhere; prefetch after that instead.
                "RETR" => msg != Some(p.msg),
                _ => false,
            };
            if useless {
                self.discard_prefetch(out);
            }
        }
        match verb.as_str() {
            "USER" | "APOP" | "AUTH" => {
                self.sizes.clear();
                self.deleted.clear();
                self.retrieved.clear();
            }
            "DELE" => self.deleted.extend(msg),
            _ => {}
        }
        match verb.as_str() {
            v if v.starts_with("XSTRAW-") => {
                // Straw's own in-band lines: never from the program.
                self.owe_local(b"-ERR Unknown command.\r\n".to_vec());
            }
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
            "QUIT" if self.deleted.is_empty() && self.held_user.is_none() => {
                // With no DELE in this session, QUIT commits nothing (RFC
                // 1939's UPDATE state has nothing to remove): answered here,
                // like IMAP LOGOUT and SMTP QUIT; the real reply is checked.
                out.to_tunnel.extend_from_slice(&line);
                out.flush = true;
                self.owe_local(QUIT_OK.to_vec());
                self.expect.push_back(Expect {
                    multi: false,
                    disp: Disp::VerifyQuit,
                    unblocks: false,
                });
            }
            "STLS" => {
                // Not offered: the tunnel is encrypted; TLS upstream is ours.
                self.owe_local(b"-ERR STLS not available through straw\r\n".to_vec());
            }
            _ if slot.is_some_and(|s| self.pf_usable[s]) => {
                self.owe_prefetched(slot.unwrap_or_default());
            }
            "AUTH" => {
                // The account name is inside SASL: no message resume.
                self.user = None;
                self.forward(&line, !arg, false, out);
                self.block_on_last();
            }
            "RETR" if arg => match msg {
                Some(m) if self.pf_retr.as_ref().is_some_and(|p| p.msg == m) => {
                    self.claim_prefetch();
                    self.retrieved.insert(m);
                    self.prefetch_retr(m, out);
                }
                _ => {
                    if self.retr(line, out)
                        && let Some(m) = msg
                    {
                        self.retrieved.insert(m);
                        self.prefetch_retr(m, out);
                    }
                }
            },
            "UIDL" => {
                let track = Track::Uidl { multi: !arg };
                self.forward_tracked(&line, !arg, false, track, out);
            }
            "LIST" => {
                let track = Track::List { multi: !arg };
                self.forward_tracked(&line, !arg, false, track, out);
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
            Disp::Deliver { id, capa, track } => {
                match track {
                    Track::Uidl { multi } => self.learn_uidls(&reply, multi),
                    Track::List { multi } => self.learn_sizes(&reply, multi),
                    Track::Retr(t) => self.retr_done(&t),
                    Track::None => {}
                }
                if capa && ok {
                    self.deliver(id, &rewrite_capa(&reply), true);
                } else {
                    self.deliver(id, &reply, true);
                }
            }
            Disp::OwnUidl(n) => {
                let uid = resume::parse_uidl(&reply, false)
                    .into_iter()
                    .find(|(m, _)| *m == n)
                    .map(|(_, u)| u);
                self.uidls.insert(n, uid);
                if e.unblocks {
                    self.blocked = false;
                }
                return;
            }
            Disp::Resume => {
                if reply.starts_with(resume::RESUMED) {
                    if let Some(Expect {
                        disp:
                            Disp::Deliver {
                                track: Track::Retr(t),
                                ..
                            },
                        ..
                    }) = self.expect.front_mut()
                    {
                        t.resumed = t.offered.is_some();
                    }
                } else if !reply.starts_with(b"-ERR straw:") {
                    // Not from a straw server side: it passed the line on.
                    self.resume_refused = true;
                }
            }
            Disp::AbortAck => {
                if !reply.starts_with(b"+OK") {
                    // An older server side passed it to the real server.
                    self.abort_refused = true;
                }
            }
            Disp::VerifyQuit => {
                if !ok {
                    // The program has its +OK and is gone; nothing was to be
                    // committed, so nothing was lost.
                    out.notes.push(format!(
                        "POP3 QUIT was answered locally (no DELE); the real reply was {:?}",
                        String::from_utf8_lossy(text::trim_end(&reply))
                    ));
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
            Disp::Prefetch(s) => {
                if s == 1 {
                    self.learn_uidls(&reply, true);
                }
                if s == 2 {
                    self.learn_sizes(&reply, true);
                }
                self.pf_val[s] = Some(reply)
            }
        }
        if e.unblocks {
            self.blocked = false;
            self.sasl_next = is_continuation(&self.reader.first);
        }
    }
}

/// The message number argument of `RETR n`, `DELE n`, `XSTRAW-ABORT n`...
fn msg_arg(line: &[u8]) -> Option<u32> {
    String::from_utf8_lossy(text::trim_end(line))
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
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
        self.pf_retr = None;
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
            let (multi, streamed) = match &e.disp {
                Disp::Deliver {
                    id,
                    capa: false,
                    track: Track::None | Track::Retr(_),
                } => (e.multi, Some(*id)),
                _ => (e.multi, None),
            };
            // A resumed RETR's status line is read alone: the stored prefix
            // goes right after it.
            let splice = matches!(&e.disp, Disp::Deliver { track: Track::Retr(t), .. } if t.resumed && !t.spliced);
            let was_body = self.reader.in_body();
            let limit = match data.iter().position(|&b| b == b'\n') {
                Some(p) if splice && !was_body => p + 1,
                _ => data.len(),
            };
            let (n, mut done) = match self.reader.feed(&data[..limit], multi, &mut self.cur) {
                Ok(r) => r,
                Err(err) => return self.fail(out, err),
            };
            data = &data[n..];
            if let Err(err) = self.track_retr(was_body, &mut done) {
                return self.fail(out, err);
            }
            if let Some(id) = streamed {
                // Stream long replies (RETR) to the program as they come.
                let piece = std::mem::take(&mut self.cur);
                self.deliver(id, &piece, false);
                if self.pf_retr.as_ref().is_some_and(|p| p.buf.len() > p.limit) {
                    out.notes
                        .push("POP3 prefetched RETR is longer than LIST said: dropped".into());
                    self.discard_prefetch(out);
                }
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

impl ClientAccel {
    /// For the RETR at the front, after a piece of its reply went into
    /// `cur`: keeps the body (as it came over the stream) in the store, and
    /// splices the stored prefix in after the status line of a resumed one.
    fn track_retr(&mut self, was_body: bool, done: &mut bool) -> Result<(), String> {
        let Some(Expect {
            disp:
                Disp::Deliver {
                    track: Track::Retr(t),
                    ..
                },
            ..
        }) = self.expect.front_mut()
        else {
            return Ok(());
        };
        let Some(store) = &self.store else {
            return Ok(());
        };
        if !t.record {
            return Ok(());
        }
        let ok = self.reader.first.starts_with(b"+OK");
        let status_now = !was_body && !self.cur.is_empty();
        let body_from = if status_now {
            self.reader.first.len()
        } else {
            0
        };
        if !ok || self.cur.len() < body_from {
            if t.resumed && status_now {
                return Err(
                    "POP3 RETR: server side agreed to resume, then the reply failed".into(),
                );
            }
            return Ok(());
        }
        if t.key.is_none() {
            let user = self.user.clone().unwrap_or_default();
            t.key = self
                .uidls
                .get(&t.msg)
                .cloned()
                .flatten()
                .map(|u| resume::key(&user, &u));
        }
        let Some(key) = t.key.clone() else {
            return Ok(());
        };
        let body = &self.cur[body_from..];
        if t.resumed {
            if status_now && !t.spliced {
                // Our prefix is the body's start; it's in the store already.
                t.spliced = true;
                let prefix = t.offered.take().unwrap_or_default();
                let (n, end) = self.reader.feed(&prefix, true, &mut self.cur)?;
                if n != prefix.len() {
                    return Err("POP3 RETR: stored prefix runs past the end of the message".into());
                }
                t.storing = true;
                *done |= end;
            } else if t.storing {
                store.append(&key, body);
            }
        } else if status_now {
            store.put(&key, body);
            t.storing = true;
        } else if t.storing {
            store.append(&key, body);
        }
        Ok(())
    }

    /// A RETR reply ended: its partial is no longer needed.
    fn retr_done(&mut self, t: &RetrTrack) {
        if let (Some(store), Some(key)) = (&self.store, &t.key)
            && t.storing
        {
            store.remove(key);
        }
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
    /// A resume request waiting for its RETR, and the RETR being resumed.
    resume_req: Option<(usize, String)>,
    resume: Option<resume::ServerResume>,
    /// The message number of the RETR awaiting its reply.
    inflight_retr: Option<u32>,
    /// The reply in flight was aborted: read and dropped to its end.
    dropping: bool,
    dropped: usize,
    /// A bulk reply's end is held (or was sent) without its flush yet.
    flush_owed: bool,
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
            if line == SKIP_LINE {
                self.held.extend_from_slice(PREFETCH_ABORTED);
                continue;
            }
            if line == ACK_LINE {
                self.held.extend_from_slice(ABORT_ACK);
                continue;
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
            let queued = (0..i)
                .rev()
                .find(|&j| verb(&lines[j]).0 == "RETR" && msg_arg(&lines[j]) == Some(n));
            if let Some(j) = queued {
                lines[j] = SKIP_LINE.to_vec();
            } else if self.inflight_retr == Some(n) && !self.dropping && self.resume.is_none() {
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
            let mut dropped = Vec::new();
            let sink = if self.dropping {
                &mut dropped
            } else {
                &mut self.held
            };
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
}
