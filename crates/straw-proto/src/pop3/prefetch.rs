//! `RETR n` takes `RETR n+1` along: the program reads its mail in order,
//! and the next message's reply, asked for early, is on its way while the
//! program still reads this one. RETR commits nothing, so asking early
//! changes nothing on the server. A prefetch that turns useless while it
//! still streams (QUIT, DELE of it, a RETR elsewhere) is cut short in-band
//! with `XSTRAW-ABORT n` (answered by the [server side](super::server)).

use super::client::{ClientAccel, Disp, Expect, RetrTrack, Track};
use super::{ABORT_VERB, resume};
use crate::Output;

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
pub(crate) struct RetrPrefetch {
    pub(super) msg: u32,
    /// The reply's id (like an owed reply's, but owed to no one yet).
    pub(super) id: u64,
    pub(super) buf: Vec<u8>,
    pub(super) done: bool,
    /// Most bytes held: LIST sizes count octets before dot-stuffing.
    pub(super) limit: usize,
}

impl ClientAccel {
    /// After the program's `RETR after`: sends `RETR after+1` too if it is
    /// likely wanted and small (see [`RetrPrefetch`]). Skipped while a
    /// partial of it may be stored: the program's own RETR then resumes it
    /// through the one resume path.
    pub(super) fn prefetch_retr(&mut self, after: u32, out: &mut Output) {
        let cap = self.cfg.prefetch_retr_max_bytes;
        if cap == 0 || self.pf_retr.is_some() || self.failed || self.bulk_held.is_some() {
            return;
        }
        let Some(n) = after.checked_add(1) else {
            return;
        };
        let Some(&size) = self.sizes.get(&n) else {
            return;
        };
        if size > cap
            || self.deleted.contains(&n)
            || self.retrieved.contains(&n)
            || self.would_hold(size)
        {
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
                        self.ask_uidl(n, out);
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
        let id = self.owed.fresh_id();
        self.expect.push_back(Expect {
            multi: true,
            disp: Disp::Deliver {
                id,
                capa: false,
                track,
                retr: Some(n),
                stub: false,
                hold: super::client::HoldMark::None,
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
    pub(super) fn claim_prefetch(&mut self) {
        let Some(p) = self.pf_retr.take() else {
            return;
        };
        if !p.buf.is_empty() || p.done {
            self.owed.stats.local_replies += 1;
        } else if !self.owed.waiting() {
            self.owed.stats.link_waits += 1;
        }
        self.owed.owe_with_id(p.id, p.buf, p.done);
    }

    /// The prefetched message won't be asked for (or outgrew its bound):
    /// forget it, and if it is still arriving, stop recording it and ask the
    /// server side to cut it short.
    pub(super) fn discard_prefetch(&mut self, out: &mut Output) {
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

    /// The UIDL listing prefetched with the login is still on its way.
    pub(super) fn prefetch_uidl_pending(&self) -> bool {
        self.expect
            .iter()
            .any(|e| matches!(e.disp, Disp::Prefetch(1)))
    }
}
