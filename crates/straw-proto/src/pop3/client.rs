//! The client side of the POP3 pair, next to the mail program: answers
//! what commits nothing, forwards the rest, and checks every real reply it
//! already answered (see the [module docs](super)).

use std::collections::{HashMap, HashSet, VecDeque};

use super::hold::{HoldConfig, HoldView};
use super::prefetch::RetrPrefetch;
use super::reply::{ReplyReader, is_continuation, multi_if_ok};
use super::{
    FIRST_RETR_KEY, GREETING_KEY, LINK_LOST, PREFETCH, Pop3Config, QUIT_OK, has_apop_timestamp,
    msg_arg, resume,
};
use crate::partial::SharedStore;
use crate::shared::lines::{MAX_LINE, take_line, trim_end, verb};
use crate::shared::owed::OwedReplies;
use crate::{AccelStats, Accelerator, Activity, Cache, Output, hold_words};

/// Commands that commit nothing at QUIT: after only these, QUIT may be
/// answered locally. Anything else (`DELE`, or a command straw doesn't know)
/// sends QUIT's real reply to the program.
const READ_ONLY: [&str; 14] = [
    "STAT", "LIST", "UIDL", "RETR", "TOP", "NOOP", "CAPA", "USER", "PASS", "APOP", "AUTH", "RSET",
    "STLS", "QUIT",
];

/// What to do with the next real reply arriving over the stream.
#[derive(Debug)]
pub(super) enum Disp {
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
        /// The message a `RETR` reply carries (for the status screen).
        retr: Option<u32>,
        /// A held message's stub is expected (for the status screen).
        stub: bool,
        /// What hold records once the reply is delivered.
        hold: HoldMark,
    },
    /// The server side's answer to a hold request (see [`super::hold`]).
    Hold,
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
pub(super) enum Track {
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
    /// A held message's stub: read whole (it is small), then recorded.
    Stub,
    /// A STAT reply, rewritten by hold.
    Stat,
}

/// What hold records when a reply was delivered (see [`super::hold`]).
#[derive(Debug, Default)]
pub(super) enum HoldMark {
    #[default]
    None,
    /// The stub of a held message.
    Stub { uid: String, size: u64 },
    /// A released message (UIDL), once at least this many body bytes were
    /// delivered (a RETR: 0; a `TOP n x`: its LIST size, so that only a
    /// TOP that brought it whole counts).
    Released(String, u64),
}

/// A RETR whose body is kept in the partial store as it arrives.
#[derive(Debug)]
pub(super) struct RetrTrack {
    pub(super) msg: u32,
    /// Known once the UIDL is (it may arrive with our own `UIDL n`).
    pub(super) key: Option<String>,
    /// The prefix offered with a resume request.
    pub(super) offered: Option<Vec<u8>>,
    /// The server side agreed: the stored prefix goes to the program after
    /// the status line, then the remainder from the stream.
    pub(super) resumed: bool,
    pub(super) spliced: bool,
    /// The store holds this transfer's body so far.
    pub(super) storing: bool,
    /// Keep the body in the store (off for a discarded prefetch: an abort
    /// may end it with bytes that are not the message's).
    pub(super) record: bool,
}

impl RetrTrack {
    /// A RETR of `msg` to be kept in the store under `key` (or the key its
    /// UIDL gives once known), offering `offered` as a stored prefix.
    pub(super) fn track(msg: u32, key: Option<String>, offered: Option<Vec<u8>>) -> Track {
        Track::Retr(Box::new(RetrTrack {
            msg,
            key,
            offered,
            resumed: false,
            spliced: false,
            storing: false,
            record: true,
        }))
    }
}

#[derive(Debug)]
pub(super) struct Expect {
    pub(super) multi: bool,
    pub(super) disp: Disp,
    /// Input parsing waits for this reply (AUTH exchanges).
    pub(super) unblocks: bool,
}

/// Client side: next to the mail program.
#[derive(Debug)]
pub struct ClientAccel {
    pub(super) cfg: Pop3Config,
    pub(super) cached_greeting: Option<Vec<u8>>,
    pub(super) inbuf: Vec<u8>,
    pub(super) expect: VecDeque<Expect>,
    pub(super) owed: OwedReplies,
    pub(super) reader: ReplyReader,
    pub(super) cur: Vec<u8>,
    pub(super) held_user: Option<Vec<u8>>,
    pub(super) user_err: Option<Vec<u8>>,
    pub(super) blocked: bool,
    pub(super) sasl_next: bool,
    pub(super) prefetched: bool,
    pub(super) pf_usable: [bool; 3],
    pub(super) pf_val: [Option<Vec<u8>>; 3],
    pub(super) failed: bool,
    /// Replies owed from `pf_val` slots that have not arrived yet.
    pub(super) pf_waiters: [Vec<u64>; 3],
    /// Where interrupted RETR bodies are kept (none: no message resume).
    pub(super) store: Option<SharedStore>,
    /// The login name given with `USER`/`APOP`: half of a partial's key.
    pub(super) user: Option<String>,
    /// msg number → UIDL, as far as known (None: the server has none).
    pub(super) uidls: HashMap<u32, Option<String>>,
    /// The server side doesn't know resume requests (an older straw).
    pub(super) resume_refused: bool,
    /// msg number → size, from LIST (the prefetched one or the program's).
    pub(super) sizes: HashMap<u32, u64>,
    /// Messages the program marked deleted or asked for: not prefetched.
    pub(super) deleted: HashSet<u32>,
    /// The session sent a command that may commit at QUIT (a `DELE`, or
    /// anything straw doesn't know to be read-only, such as `DELE\t1`). Never
    /// cleared, not even by a new login: the real server's UPDATE state is
    /// what counts, and only its reply to QUIT may confirm it.
    may_commit: bool,
    pub(super) retrieved: HashSet<u32>,
    /// `RETR`s asked ahead of the program, in order: a run of consecutive
    /// messages after the last one it asked for.
    pub(super) pf_retr: VecDeque<RetrPrefetch>,
    /// The server side doesn't know abort lines (an older straw).
    pub(super) abort_refused: bool,
    /// Body bytes of the reply at the front of `expect` received so far.
    pub(super) reply_bytes: u64,
    /// Why new RETRs are held back (the call's budget is spent), if they are.
    pub(super) bulk_held: Option<String>,
    /// ... and of the last complete reply.
    pub(super) last_reply_bytes: u64,
    /// Hold ashore (see [`super::hold`]): settings, this login's view of
    /// the mailbox, the prefetched STAT/UIDL kept until LIST is here.
    pub(super) hold: Option<HoldConfig>,
    pub(super) hold_view: Option<HoldView>,
    pub(super) pf_raw: [Option<Vec<u8>>; 2],
    /// The server side doesn't know hold requests (an older straw).
    pub(super) hold_refused: bool,
    /// The program sent QUIT: an end of input after it is a goodbye, not
    /// an abandoned reply.
    quit_sent: bool,
    /// The program's `RETR` waits for a conditional prefetch's status line.
    pub(super) pf_status_wait: bool,
    /// Accounts whose last session began with `RETR 1` (from the cache).
    pub(super) first_was_1: HashSet<String>,
    /// This login's first `RETR` was seen (and remembered).
    pub(super) first_retr_seen: bool,
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
            owed: OwedReplies::default(),
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
            pf_waiters: Default::default(),
            store: None,
            user: None,
            uidls: HashMap::new(),
            resume_refused: false,
            sizes: HashMap::new(),
            deleted: HashSet::new(),
            may_commit: false,
            retrieved: HashSet::new(),
            pf_retr: VecDeque::new(),
            abort_refused: false,
            reply_bytes: 0,
            bulk_held: None,
            last_reply_bytes: 0,
            hold: None,
            hold_view: None,
            pf_raw: [None, None],
            hold_refused: false,
            quit_sent: false,
            pf_status_wait: false,
            first_was_1: cache
                .iter()
                .filter(|(_, v)| v.as_slice() == b"1")
                .filter_map(|(k, _)| k.strip_prefix(FIRST_RETR_KEY).map(str::to_owned))
                .collect(),
            first_retr_seen: false,
        }
    }

    /// Holds big messages ashore (see [`super::hold`]).
    pub fn with_hold(mut self, hold: HoldConfig) -> Self {
        self.hold = Some(hold);
        self
    }

    /// Keeps interrupted RETR bodies in `store` and resumes them.
    pub fn with_store(mut self, store: SharedStore) -> Self {
        self.store = Some(store);
        self
    }

    /// A `STAT`/`UIDL`/`LIST` answered from what was asked for with `PASS`:
    /// a local reply, and a link wait too while that is still on its way
    /// and nothing else is.
    fn owe_prefetched(&mut self, slot: usize) {
        match &self.pf_val[slot] {
            Some(v) => self.owed.owe_local(v.clone()),
            None => {
                if !self.owed.waiting() {
                    self.owed.stats.link_waits += 1;
                }
                self.owed.stats.local_replies += 1;
                let id = self.owed.owe_uncounted(Vec::new(), false);
                self.pf_waiters[slot].push(id);
            }
        }
    }

    pub(super) fn deliver(&mut self, id: u64, bytes: &[u8], end: bool) {
        if self.owed.deliver(id, bytes, end) {
            return;
        }
        if let Some(p) = self.pf_retr.iter_mut().find(|p| p.id == id) {
            p.buf.extend_from_slice(bytes);
            p.done = end;
            if self.pf_status_wait && p.status().is_some() {
                self.pf_status_wait = false;
                self.blocked = false;
            }
        }
        // Otherwise a discarded prefetch: dropped.
    }

    /// Writes every reply the program can have now, in order.
    fn pump(&mut self, out: &mut Output) {
        self.owed.pump(&mut out.to_local);
    }

    pub(super) fn fail(&mut self, out: &mut Output, why: impl std::fmt::Display) {
        self.failed = true;
        out.fail_once(why);
    }

    pub(super) fn forward(
        &mut self,
        line: &[u8],
        multi: bool,
        capa: bool,
        out: &mut Output,
    ) -> u64 {
        self.forward_tracked(line, multi, capa, Track::None, out)
    }

    pub(super) fn forward_tracked(
        &mut self,
        line: &[u8],
        multi: bool,
        capa: bool,
        track: Track,
        out: &mut Output,
    ) -> u64 {
        out.to_tunnel.extend_from_slice(line);
        out.flush = true;
        let id = self.owed.owe_remote();
        let retr = (verb(line).0 == "RETR").then(|| msg_arg(line)).flatten();
        self.expect.push_back(Expect {
            multi,
            disp: Disp::Deliver {
                id,
                capa,
                track,
                retr,
                stub: false,
                hold: HoldMark::None,
            },
            unblocks: false,
        });
        id
    }

    /// Sends our own `UIDL n` (its reply is swallowed), to key message `n`'s
    /// partial.
    pub(super) fn ask_uidl(&mut self, n: u32, out: &mut Output) {
        out.to_tunnel
            .extend_from_slice(format!("UIDL {n}\r\n").as_bytes());
        self.expect.push_back(Expect {
            multi: false,
            disp: Disp::OwnUidl(n),
            unblocks: false,
        });
    }

    /// Learns msg → size pairs from a LIST reply.
    pub(super) fn learn_sizes(&mut self, reply: &[u8], multi: bool) {
        for (n, size) in resume::parse_uidl(reply, multi) {
            if let Ok(size) = size.parse() {
                self.sizes.insert(n, size);
            }
        }
    }

    /// Learns msg → UIDL pairs from a UIDL reply.
    pub(super) fn learn_uidls(&mut self, reply: &[u8], multi: bool) {
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
        let Some(line) = self.hold_command(line, out) else {
            return;
        };
        let (verb, arg) = verb(&line);
        if !READ_ONLY.contains(&verb.as_str()) && !verb.starts_with("XSTRAW-") {
            self.may_commit = true;
        }
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
            self.user = String::from_utf8_lossy(trim_end(&line))
                .split_ascii_whitespace()
                .nth(1)
                .map(str::to_owned);
            self.uidls.clear();
        }
        self.quit_sent |= verb == "QUIT";
        let msg = msg_arg(&line);
        if let Some(front) = self.pf_retr.front().map(|p| p.msg) {
            let useless = match verb.as_str() {
                "QUIT" | "USER" | "PASS" | "APOP" | "AUTH" => true,
                // A prefetched reply would no longer be what RETR says.
                "DELE" => msg.is_some_and(|m| self.pf_retr.iter().any(|p| p.msg == m)),
                // The program went elsewhere; prefetch after that instead.
                "RETR" => msg != Some(front),
                _ => false,
            };
            if useless {
                self.discard_prefetch(out);
            }
        }
        if verb == "RETR" && arg {
            if !self.first_retr_seen {
                self.remember_first_retr(msg == Some(1), out);
            }
            self.drop_refused_front(msg);
        }
        match verb.as_str() {
            "USER" | "APOP" | "AUTH" => {
                self.first_retr_seen = false;
                self.sizes.clear();
                self.deleted.clear();
                self.retrieved.clear();
                self.hold_view = None;
            }
            "DELE" => self.deleted.extend(msg),
            _ => {}
        }
        match verb.as_str() {
            v if v.starts_with("XSTRAW-") => {
                // Straw's own in-band lines: never from the program.
                self.owed.owe_local(b"-ERR Unknown command.\r\n".to_vec());
            }
            "USER" => {
                self.held_user = Some(line);
                self.owed.owe_local(b"+OK\r\n".to_vec());
            }
            "PASS" if self.held_user.is_some() => {
                self.release_user(out);
                out.to_tunnel.extend_from_slice(&line);
                out.flush = true;
                let id = self.owed.owe_remote();
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
                    self.prefetch_first(out);
                }
            }
            "QUIT" if !self.may_commit && self.held_user.is_none() => {
                // With no DELE in this session, QUIT commits nothing (RFC
                // 1939's UPDATE state has nothing to remove): answered here,
                // like IMAP LOGOUT and SMTP QUIT; the real reply is checked.
                out.to_tunnel.extend_from_slice(&line);
                out.flush = true;
                self.owed.owe_local(QUIT_OK.to_vec());
                self.expect.push_back(Expect {
                    multi: false,
                    disp: Disp::VerifyQuit,
                    unblocks: false,
                });
            }
            "STLS" => {
                // Not offered: the tunnel is encrypted; TLS upstream is ours.
                self.owed
                    .owe_local(b"-ERR STLS not available through straw\r\n".to_vec());
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
            "RETR" if arg && self.front_status_pending(msg) => {
                // Asked with the login: whether it came or was refused is
                // in its status line, which is still on its way.
                self.inbuf.splice(0..0, line);
                self.blocked = true;
                self.pf_status_wait = true;
            }
            "RETR" if arg => match msg {
                Some(m) if self.pf_retr.front().is_some_and(|p| p.msg == m) => {
                    self.claim_prefetch();
                    self.retrieved.insert(m);
                    self.prefetch_retr(m, out);
                }
                _ if let Some(why) = &self.bulk_held => {
                    // [SYS/TEMP] (RFC 3206): a temporary failure, so the
                    // program keeps the message for a later session and
                    // deletes nothing.
                    let reply = format!("-ERR [SYS/TEMP] straw: {}\r\n", hold_words(why));
                    self.owed.owe_local(reply.into_bytes());
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
            "STAT" if self.hold_view.is_some() => {
                self.forward_tracked(&line, false, false, Track::Stat, out);
            }
            _ => {
                self.forward(&line, multi_if_ok(&verb, arg), verb == "CAPA", out);
            }
        }
    }

    pub(super) fn block_on_last(&mut self) {
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
                                String::from_utf8_lossy(trim_end(&reply))
                            ),
                        );
                    }
                    if apop {
                        out.cache_put.push((GREETING_KEY.into(), Vec::new()));
                        return self.fail(
                            out,
                            "POP3 server greeting now carries an APOP timestamp; cached greeting was served",
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
            Disp::Deliver {
                id,
                capa,
                track,
                hold,
                ..
            } => {
                let mut reply = reply;
                match track {
                    Track::Uidl { multi } => {
                        self.learn_uidls(&reply, multi);
                        if multi {
                            reply = self.hold_rewrite(reply, 1);
                        }
                    }
                    Track::List { multi } => {
                        self.learn_sizes(&reply, multi);
                        if multi {
                            reply = self.hold_rewrite(reply, 2);
                        }
                    }
                    Track::Stat => reply = self.hold_rewrite(reply, 0),
                    Track::Retr(t) => self.retr_done(&t),
                    Track::None | Track::Stub => {}
                }
                self.hold_delivered(hold, &reply);
                if capa && ok {
                    let mut capa = rewrite_capa(&reply);
                    if self.hold_on() {
                        capa = super::hold::drop_sasl(&capa);
                    }
                    self.deliver(id, &capa, true);
                } else {
                    self.deliver(id, &reply, true);
                }
            }
            Disp::Hold => self.hold_answer(&reply, out),
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
                        String::from_utf8_lossy(trim_end(&reply))
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
                                String::from_utf8_lossy(trim_end(&reply))
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
                let mut reply = reply;
                if s == 1 {
                    self.learn_uidls(&reply, true);
                }
                if s == 2 {
                    self.learn_sizes(&reply, true);
                }
                if self.hold_prefetched(s, &mut reply) {
                    for id in std::mem::take(&mut self.pf_waiters[s]) {
                        self.deliver(id, &reply, true);
                    }
                    self.pf_val[s] = Some(reply)
                }
            }
        }
        if e.unblocks {
            self.blocked = false;
            self.sasl_next = is_continuation(&self.reader.first);
        }
    }
}

/// CAPA towards the program: no STLS (the tunnel is encrypted), PIPELINING
/// added (straw keeps replies in order whatever the program sends).
pub(crate) fn rewrite_capa(reply: &[u8]) -> Vec<u8> {
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
    /// Call once when the program connects: serves the cached greeting, or
    /// waits for the real one.
    fn start(&mut self, out: &mut Output) {
        let (served, id) = self.owed.owe_cached(self.cached_greeting.clone());
        self.expect.push_back(Expect {
            multi: false,
            disp: Disp::Greeting { served, id },
            unblocks: false,
        });
        self.pump(out);
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
        if !self.owed.mid_reply() {
            out.to_local.extend_from_slice(LINK_LOST);
        }
        self.owed.clear();
        self.pf_waiters = Default::default();
        self.expect.clear();
        self.pf_retr.clear();
    }

    /// The program closed while a reply was still on its way and without
    /// QUIT (a mail program dropping a long RETR): nothing will read the
    /// rest, and the real server would end the session too.
    fn local_eof(&mut self, out: &mut Output) {
        if self.failed {
            return;
        }
        // After a QUIT that commits nothing (answered here), what may still
        // come is replies no one will read: prefetched messages, the rest
        // of a RETR the program stopped reading. The reset stops them; the
        // real server, dropped without QUIT, has nothing to commit either.
        let after_idle_quit = self.quit_sent
            && !self.may_commit
            && self
                .expect
                .iter()
                .any(|e| matches!(e.disp, Disp::Deliver { .. }));
        if (!self.quit_sent && self.owed.waiting()) || after_idle_quit {
            out.abandoned = true;
        }
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
                return self.fail(out, "POP3 reply with no command outstanding");
            };
            let (multi, streamed) = match &e.disp {
                Disp::Deliver {
                    id,
                    capa: false,
                    track: Track::None | Track::Retr(_),
                    ..
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
            // Body bytes only: a LIST size counts the message, not the
            // status line.
            let body = if was_body {
                n
            } else if self.reader.in_body() || done {
                n.saturating_sub(self.reader.first.len())
            } else {
                0
            };
            self.reply_bytes = self.reply_bytes.saturating_add(body as u64);
            if let Err(err) = self.track_retr(was_body, &mut done) {
                return self.fail(out, err);
            }
            if let Some(id) = streamed {
                // Stream long replies (RETR) to the program as they come.
                let piece = std::mem::take(&mut self.cur);
                self.deliver(id, &piece, false);
                if self.pf_retr.iter().any(|p| p.buf.len() > p.limit) {
                    out.notes
                        .push("POP3 prefetched RETR is longer than LIST said: dropped".into());
                    self.discard_prefetch(out);
                }
            }
            if done {
                self.last_reply_bytes = std::mem::take(&mut self.reply_bytes);
                let e = self.expect.pop_front().expect("front checked");
                let reply = std::mem::take(&mut self.cur);
                self.reply_done(e, reply, out);
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

    /// The RETR whose reply is arriving (a prefetch too: it costs link
    /// time all the same), with its LIST size.
    fn activity(&self) -> Option<Activity> {
        let e = self.expect.front()?;
        let Disp::Deliver {
            retr: Some(msg),
            stub,
            ..
        } = &e.disp
        else {
            return None;
        };
        let count = self.sizes.len() + self.hold_view.as_ref().map_or(0, |v| v.extras.len());
        let of = match count {
            0 => String::new(),
            n => format!(" of {n}"),
        };
        if *stub {
            // The stub is small; the LIST size is the original's.
            let what = format!("POP3 RETR {msg}{of} (held ashore, stub)");
            return Some(Activity::new(what, self.reply_bytes, None));
        }
        let total = match self.hold_view.as_ref().and_then(|v| v.extra(*msg)) {
            Some(x) => Some(x.size),
            None => self.sizes.get(msg).copied(),
        };
        let done = total.map_or(self.reply_bytes, |t| self.reply_bytes.min(t));
        Some(Activity::new(format!("POP3 RETR {msg}{of}"), done, total))
    }
}

#[cfg(test)]
mod activity_tests {
    use super::*;

    fn accel(prefetch_retr: u64) -> (ClientAccel, Output) {
        let cfg = Pop3Config {
            prefetch: false,
            prefetch_retr_max_bytes: prefetch_retr,
            prefetch_retr_depth: 1,
            prefetch_first: false,
        };
        let mut c = ClientAccel::new(cfg, &Cache::new());
        let mut out = Output::default();
        c.start(&mut out);
        c.from_tunnel(b"+OK ready\r\n", &mut out);
        c.from_local(b"LIST\r\n", true, &mut out);
        c.from_tunnel(
            b"+OK 3 messages\r\n1 100\r\n2 300\r\n3 50\r\n.\r\n",
            &mut out,
        );
        (c, out)
    }

    #[test]
    fn retr_shows_message_number_count_and_progress() {
        let (mut c, mut out) = accel(0);
        assert_eq!(c.activity(), None, "idle");
        c.from_local(b"RETR 2\r\n", true, &mut out);
        assert_eq!(
            c.activity(),
            Some(Activity::new("POP3 RETR 2 of 3", 0, Some(300)))
        );
        // The status line is not message bytes.
        c.from_tunnel(b"+OK 300 octets\r\nabcdefghij", &mut out);
        assert_eq!(c.activity().unwrap().done, 10);
        c.from_tunnel(&[b'x'; 100], &mut out);
        assert_eq!(c.activity().unwrap().done, 110);
        // More than LIST said (dot-stuffing, the end line): capped at it.
        c.from_tunnel(&[b'y'; 400], &mut out);
        assert_eq!(c.activity().unwrap().done, 300);
        c.from_tunnel(b"\r\n.\r\n", &mut out);
        assert_eq!(c.activity(), None, "reply complete");
    }

    #[test]
    fn a_prefetched_retr_is_shown_as_such_and_unknown_sizes_stay_unknown() {
        let (mut c, mut out) = accel(64 * 1024);
        c.from_local(b"RETR 9\r\n", true, &mut out);
        assert_eq!(
            c.activity(),
            Some(Activity::new("POP3 RETR 9 of 3", 0, None))
        );
        c.from_tunnel(b"-ERR no such message\r\n", &mut out);
        assert_eq!(c.activity(), None);
        c.from_local(b"RETR 2\r\n", true, &mut out);
        c.from_tunnel(b"+OK\r\nbody\r\n.\r\n", &mut out);
        // RETR 3 went out behind it (LIST: 50 bytes): its reply is next.
        assert_eq!(
            c.activity(),
            Some(Activity::new("POP3 RETR 3 of 3", 0, Some(50)))
        );
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_spent_budget_holds_back_retr_but_not_interactive_commands() {
        let cfg = Pop3Config {
            prefetch: false,
            prefetch_retr_max_bytes: 64 * 1024,
            prefetch_retr_depth: 1,
            prefetch_first: false,
        };
        let mut c = ClientAccel::new(cfg, &Cache::new());
        let mut out = Output::default();
        c.start(&mut out);
        c.from_tunnel(b"+OK ready\r\n", &mut out);
        c.from_local(b"LIST\r\n", true, &mut out);
        c.from_tunnel(b"+OK 2 messages\r\n1 100\r\n2 50\r\n.\r\n", &mut out);
        out.to_local.clear();
        out.to_tunnel.clear();

        c.hold_bulk(Some("budget $3.00\r\nper call\nspent"));
        c.from_local(b"RETR 1\r\n", true, &mut out);
        assert!(out.to_tunnel.is_empty(), "nothing asked over the link");
        assert_eq!(
            out.to_local,
            b"-ERR [SYS/TEMP] straw: budget $3.00??per call?spent\r\n"
        );
        out.to_local.clear();
        // Interactive commands still go over the link.
        c.from_local(b"NOOP\r\n", true, &mut out);
        assert_eq!(out.to_tunnel, b"NOOP\r\n");
        c.from_tunnel(b"+OK\r\n", &mut out);
        assert_eq!(out.to_local, b"+OK\r\n");
        out.to_local.clear();
        out.to_tunnel.clear();

        // Budget lifted (a new call): RETR goes, and so does its prefetch.
        c.hold_bulk(None);
        c.from_local(b"RETR 1\r\n", true, &mut out);
        assert_eq!(out.to_tunnel, b"RETR 1\r\nRETR 2\r\n");
    }
}
