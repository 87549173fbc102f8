//! `RETR n` takes `RETR n+1` (and up to the configured depth, `n+2`, ...)
//! along: the program reads its mail in order, and the next messages'
//! replies, asked for early, are on their way while the program still reads
//! this one. With one message ahead, a message shorter on the link than a
//! round trip leaves the link idle (the program asks for `n+1` only once `n`
//! is in, and only then is `n+2` asked): a 350-byte message at 2,400 bit/s
//! is 1.2 s, about one Iridium round trip. RETR commits nothing, so asking early
//! changes nothing on the server. A prefetch that turns useless while it
//! still streams (QUIT, DELE of it, a RETR elsewhere) is cut short in-band
//! with `XSTRAW-ABORT n` (answered by the [server side](super::server)).

use super::client::{ClientAccel, Disp, Expect, RetrTrack, Track};
use super::{ABORT_VERB, FIRST_RETR_KEY, UPTO_VERB, resume};
use crate::Output;

/// One `RETR` sent ahead of the program (pipelined behind its `RETR n`).
/// Its real reply is kept here until the program asks for it; it then
/// becomes an ordinary owed reply and streams on as it comes. Bounded: only
/// sent when LIST says the messages asked ahead fit the configured cap
/// together, and all dropped if a reply outgrows its [`Self::limit`].
///
/// Link waits: the program's `RETR n+1` counts as one only if none of the
/// prefetched reply has arrived and nothing else is owed to the program (it
/// then waits on bytes already on their way); otherwise it is a local reply.
#[derive(Debug)]
pub(crate) struct RetrPrefetch {
    pub(super) msg: u32,
    /// The reply's id (like an owed reply's, but owed to no one yet).
    pub(super) id: u64,
    pub(super) buf: Vec<u8>,
    pub(super) done: bool,
    /// Its LIST size.
    pub(super) size: u64,
    /// Most bytes held: LIST sizes count octets before dot-stuffing.
    pub(super) limit: usize,
    /// Asked with the login as `XSTRAW-RETR-UPTO`, before LIST was known:
    /// its reply may be the server side's refusal, which the program's own
    /// `RETR` must not get (see [`ClientAccel::prefetch_first`]).
    pub(super) conditional: bool,
}

impl RetrPrefetch {
    /// The reply's status line, once it is complete.
    pub(super) fn status(&self) -> Option<&[u8]> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        Some(&self.buf[..=end])
    }
}

impl ClientAccel {
    /// After the program's `RETR after`: asks for the messages after it too,
    /// as many as the depth allows, while each is likely wanted and all fit
    /// the cap together (see [`RetrPrefetch`]); stops at the first that
    /// doesn't. Skipped while a partial of it may be stored: the program's
    /// own RETR then resumes it through the one resume path.
    pub(super) fn prefetch_retr(&mut self, after: u32, out: &mut Output) {
        let depth = self.cfg.prefetch_retr_depth.max(1) as usize;
        while self.pf_retr.len() < depth {
            let last = self.pf_retr.back().map_or(after, |p| p.msg);
            if !self.prefetch_one(last, out) {
                break;
            }
        }
    }

    /// Sends `RETR last+1` ahead if it may go; false if it may not.
    fn prefetch_one(&mut self, last: u32, out: &mut Output) -> bool {
        let cap = self.cfg.prefetch_retr_max_bytes;
        if cap == 0 || self.failed || self.bulk_held.is_some() {
            return false;
        }
        let Some(n) = last.checked_add(1) else {
            return false;
        };
        let Some(&size) = self.sizes.get(&n) else {
            return false;
        };
        let ahead: u64 = self.pf_retr.iter().map(|p| p.size).sum();
        if ahead.saturating_add(size) > cap
            || self.deleted.contains(&n)
            || self.retrieved.contains(&n)
            || self.would_hold(size)
        {
            return false;
        }
        let mut track = Track::None;
        if let (Some(store), Some(user)) = (self.store.clone(), self.user.clone()) {
            let key = match self.uidls.get(&n) {
                Some(Some(uid)) => {
                    let key = resume::key(&user, uid);
                    if store.get(&key).is_some() {
                        return false;
                    }
                    Some(key)
                }
                Some(None) => None,
                None => {
                    if store.any_with_prefix(&resume::account_prefix(&user)) {
                        return false;
                    }
                    if !self.prefetch_uidl_pending() {
                        // Keys the body in the store, as for the program's RETR.
                        self.ask_uidl(n, out);
                    }
                    None
                }
            };
            if key.is_some() || !matches!(self.uidls.get(&n), Some(None)) {
                track = RetrTrack::track(n, key, None);
            }
        }
        self.ask_ahead(format!("RETR {n}\r\n"), n, size, false, track, out);
        true
    }

    /// With the login: asks the server side for message 1 if LIST says it
    /// fits the prefetch cap (`XSTRAW-RETR-UPTO 1 cap`). The program's first
    /// `RETR` nearly always follows LIST at once, and without this its body
    /// starts a round trip after the listing: the link idles meanwhile
    /// (~2 s on Iridium). The server side asks `LIST 1` itself, then `RETR 1`
    /// or answers [`UPTO_REFUSED`](super::UPTO_REFUSED); an older server
    /// side passes the line on and the real server's `-ERR` says the same.
    /// Not with hold ashore (its numbering and stubs come from LIST) nor
    /// while a partial of this account may be stored (resume has one path).
    ///
    /// Only for an account whose last session began with `RETR 1`: a
    /// program that deletes what it fetched (fetchmail's default) does so
    /// every time, while one that leaves mail on the server asks for the
    /// new messages at the end of the list, and message 1's bytes would
    /// cross ahead of them (bench: a big RETR 11's first byte 3.2 s → 6.3 s).
    pub(super) fn prefetch_first(&mut self, out: &mut Output) {
        let cap = self.cfg.prefetch_retr_max_bytes;
        let remembered = self
            .user
            .as_ref()
            .is_some_and(|u| self.first_was_1.contains(u));
        if !self.cfg.prefetch_first
            || !remembered
            || cap == 0
            || self.failed
            || self.bulk_held.is_some()
            || self.hold.is_some()
        {
            return;
        }
        let mut track = Track::None;
        if let Some(store) = &self.store {
            let Some(user) = &self.user else {
                return;
            };
            if store.any_with_prefix(&resume::account_prefix(user)) {
                return;
            }
            // Keyed by the prefetched UIDL listing, which arrives first.
            track = RetrTrack::track(1, None, None);
        }
        self.ask_ahead(format!("{UPTO_VERB} 1 {cap}\r\n"), 1, cap, true, track, out);
    }

    /// Sends `line`, a RETR of `msg` asked ahead of the program, and keeps
    /// its reply (at most twice `bound`, LIST's size or the cap, plus a
    /// little: LIST sizes count octets before dot-stuffing) until asked.
    fn ask_ahead(
        &mut self,
        line: String,
        msg: u32,
        bound: u64,
        conditional: bool,
        track: Track,
        out: &mut Output,
    ) {
        out.to_tunnel.extend_from_slice(line.as_bytes());
        out.flush = true;
        let id = self.owed.fresh_id();
        self.expect.push_back(Expect {
            multi: true,
            disp: Disp::Deliver {
                id,
                capa: false,
                track,
                retr: Some(msg),
                stub: false,
                hold: super::client::HoldMark::None,
            },
            unblocks: false,
        });
        let limit =
            usize::try_from(bound.saturating_mul(2).saturating_add(1024)).unwrap_or(usize::MAX);
        self.pf_retr.push_back(RetrPrefetch {
            msg,
            id,
            buf: Vec::new(),
            done: false,
            size: if conditional { 0 } else { bound },
            limit,
            conditional,
        });
    }

    /// The program's first `RETR` of this login: kept for the account's
    /// next session (cache [`FIRST_RETR_KEY`]).
    pub(super) fn remember_first_retr(&mut self, was_1: bool, out: &mut Output) {
        self.first_retr_seen = true;
        let Some(user) = self.user.clone() else {
            return;
        };
        if was_1 == self.first_was_1.contains(&user) {
            return;
        }
        let value = if was_1 { b"1".to_vec() } else { Vec::new() };
        out.cache_put
            .push((format!("{FIRST_RETR_KEY}{user}"), value));
        if was_1 {
            self.first_was_1.insert(user);
        } else {
            self.first_was_1.remove(&user);
        }
    }

    /// The front prefetch is `msg`'s, asked with the login, and its status
    /// line (came, or refused) is still on its way.
    pub(super) fn front_status_pending(&self, msg: Option<u32>) -> bool {
        self.pf_retr
            .front()
            .is_some_and(|p| Some(p.msg) == msg && p.conditional && p.status().is_none())
    }

    /// The front prefetch is `msg`'s and the server side refused it:
    /// dropped, so the program's own `RETR` crosses as usual.
    pub(super) fn drop_refused_front(&mut self, msg: Option<u32>) {
        let refused = self.pf_retr.front().is_some_and(|p| {
            Some(p.msg) == msg
                && p.conditional
                && p.status().is_some_and(|s| !s.starts_with(b"+OK"))
        });
        if refused {
            self.pf_retr.pop_front();
        }
    }

    /// The program asks for the first prefetched message: owe it its real
    /// reply, what has arrived now and the rest as it comes.
    pub(super) fn claim_prefetch(&mut self) {
        let Some(p) = self.pf_retr.pop_front() else {
            return;
        };
        if !p.buf.is_empty() || p.done {
            self.owed.stats.local_replies += 1;
        } else if !self.owed.waiting() {
            self.owed.stats.link_waits += 1;
        }
        self.owed.owe_with_id(p.id, p.buf, p.done);
    }

    /// The prefetched messages won't be asked for (or one outgrew its
    /// bound): forget them, and for each still arriving, stop recording it
    /// and ask the server side to cut it short.
    pub(super) fn discard_prefetch(&mut self, out: &mut Output) {
        if std::mem::take(&mut self.pf_status_wait) {
            self.blocked = false;
        }
        for p in std::mem::take(&mut self.pf_retr) {
            if !p.done {
                self.abort_prefetch(p, out);
            }
        }
    }

    fn abort_prefetch(&mut self, p: RetrPrefetch, out: &mut Output) {
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

    /// The UIDL listing prefetched with the login is still on its way.
    pub(super) fn prefetch_uidl_pending(&self) -> bool {
        self.expect
            .iter()
            .any(|e| matches!(e.disp, Disp::Prefetch(1)))
    }
}
