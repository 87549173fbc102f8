//! The server's side of session resume, sans IO: which sessions live, who
//! may take each back (with a ticket that changes on every resume), whether
//! a connection still carries it, and the bounds on how many there are.

use std::collections::{BTreeMap, HashMap};

use straw_core::wire::{RESUME_ID_LEN, Resume};
use thiserror::Error;

use crate::handshake::ct_eq;

pub type SessionId = [u8; RESUME_ID_LEN];

/// Bounds on a [`ResumeTable`] (the server's `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sessions carried by a connection (live tunnels, handshakes that
    /// passed authentication included); past it new ones are refused.
    pub max_running: usize,
    /// Sessions, live and parked, of one client key; past it the key's
    /// oldest parked session is evicted (refused if all are live).
    pub max_per_key: usize,
    /// Parked sessions over all keys; past it the oldest parked is evicted.
    pub max_parked: usize,
    /// Memory of the parked sessions together, as reported when each was
    /// parked ([`ResumeTable::park_sized`]); past it the oldest parked are
    /// evicted.
    pub max_parked_bytes: u64,
}

impl Limits {
    /// No bounds.
    pub const NONE: Limits = Limits {
        max_running: usize::MAX,
        max_per_key: usize::MAX,
        max_parked: usize::MAX,
        max_parked_bytes: u64::MAX,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::NONE
    }
}

/// Sessions by id. `T` is a parked session (its tunnel); `R` is how to make
/// the connection that carries a running one let go.
pub struct ResumeTable<T, R> {
    entries: HashMap<SessionId, Entry<T, R>>,
    limits: Limits,
    /// Parked sessions by parking number: the first is the oldest parked.
    parked: BTreeMap<u64, SessionId>,
    /// Sessions (live and parked) per client key.
    per_key: HashMap<[u8; 32], usize>,
    running: usize,
    /// Numbers parkings, over the whole table.
    parkings: u64,
    /// The sizes of the parked sessions, added up.
    parked_bytes: u64,
}

struct Entry<T, R> {
    /// Only the client key that created the session may resume it: Noise IK
    /// authenticates that key, while a first handshake message (and the
    /// ticket in it) can be replayed by anyone who saw it.
    client: [u8; 32],
    /// The ticket granted last.
    ticket: SessionId,
    /// The ticket before it, while the client may not have received the new
    /// one (the reply carrying it can be lost with the link): it resumes a
    /// parked session but never makes a live connection let go. Dead once
    /// the client used the new ticket or the connection it was granted on
    /// carried a record from the client (proof that the reply arrived).
    previous: Option<SessionId>,
    slot: Slot<T, R>,
    /// The parking number while parked, so that an expiry timer only drops
    /// the parking it was started for.
    parking: u64,
    /// Its size while parked (0 while running).
    bytes: u64,
}

enum Slot<T, R> {
    /// A connection carries the session.
    Running(R),
    /// No connection: waiting for the client, until the grace period ends.
    Parked(T),
}

/// What a client's resume offer gets ([`ResumeTable::claim`]).
pub enum Claim<T, R> {
    /// Its session, now marked running; grant `ticket`, the new one (the
    /// offered one resumes nothing any more once the client used `ticket`).
    Resume { parked: T, ticket: SessionId },
    /// Its session is still attached to an older connection: tell that one
    /// to let go (`R`); the client's next attempt finds it parked.
    Busy(R),
    /// The offer carries the ticket before the current one while a
    /// connection carries the session: refuse this handshake and leave that
    /// connection alone (an old ticket never stops a live tunnel); once it
    /// drops and is parked, the offer resumes it.
    Wait,
    /// Resuming would pass a bound: refuse the handshake.
    Refused(Refusal),
    /// No such session for this key and ticket: start a fresh one.
    Fresh,
}

/// Why a session cannot start or resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("{max} tunnels live (limits.max_tunnels)")]
    Tunnels { max: usize },
    #[error("this key already has {max} live sessions (limits.max_sessions_per_key)")]
    KeySessions { max: usize },
}

/// Why a parked session was dropped before its grace period ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its key reached `max_per_key` and this was the key's oldest parked.
    KeySessions,
    /// `max_parked` was reached and this was the oldest parked.
    Parked,
    /// The parked sessions' memory passed `max_parked_bytes` and this was
    /// the oldest parked.
    ParkedBytes,
}

/// A parked session dropped to make room ([`ResumeTable::insert`],
/// [`ResumeTable::park`]); the caller closes `parked` and logs.
pub struct Evicted<T> {
    pub id: SessionId,
    pub client: [u8; 32],
    pub parked: T,
    pub why: Eviction,
}

impl<T, R> Default for ResumeTable<T, R> {
    fn default() -> Self {
        Self::new(Limits::NONE)
    }
}

impl<T, R> ResumeTable<T, R> {
    pub fn new(limits: Limits) -> Self {
        Self {
            entries: HashMap::new(),
            limits,
            parked: BTreeMap::new(),
            per_key: HashMap::new(),
            running: 0,
            parkings: 0,
            parked_bytes: 0,
        }
    }
}

impl<T, R: Clone> ResumeTable<T, R> {
    /// A client authenticated as `client` offers `offer`; `running` is the
    /// new connection's handle, stored if it takes the session over, and
    /// `new_ticket` (fresh random bytes) replaces the offered ticket then.
    pub fn claim(
        &mut self,
        client: &[u8; 32],
        offer: &Resume,
        running: R,
        new_ticket: SessionId,
    ) -> Claim<T, R> {
        let Some(e) = self.entries.get_mut(&offer.session_id) else {
            return Claim::Fresh;
        };
        if e.client != *client {
            return Claim::Fresh;
        }
        let current = ct_eq(&e.ticket, &offer.ticket);
        let previous = e.previous.is_some_and(|p| ct_eq(&p, &offer.ticket));
        if !current && !previous {
            return Claim::Fresh;
        }
        match &e.slot {
            Slot::Running(old) if current => return Claim::Busy(old.clone()),
            Slot::Running(_) => return Claim::Wait,
            Slot::Parked(_) if self.running >= self.limits.max_running => {
                return Claim::Refused(Refusal::Tunnels {
                    max: self.limits.max_running,
                });
            }
            Slot::Parked(_) => {}
        }
        self.parked.remove(&e.parking);
        self.parked_bytes -= std::mem::take(&mut e.bytes);
        self.running += 1;
        if current {
            // The client has the current ticket: the one before it is dead.
            e.previous = Some(e.ticket);
        }
        e.ticket = new_ticket;
        match std::mem::replace(&mut e.slot, Slot::Running(running)) {
            Slot::Parked(parked) => Claim::Resume {
                parked,
                ticket: new_ticket,
            },
            Slot::Running(_) => unreachable!("matched Parked above"),
        }
    }

    /// A fresh session `id` for `client`, resumable with `ticket`, carried
    /// by the connection `running`. Makes room under `max_per_key` by
    /// evicting the key's oldest parked sessions (returned: close them);
    /// refused past `max_running`, or when the key's live sessions alone
    /// reach `max_per_key`.
    pub fn insert(
        &mut self,
        id: SessionId,
        ticket: SessionId,
        client: [u8; 32],
        running: R,
    ) -> Result<Vec<Evicted<T>>, Refusal> {
        if self.running >= self.limits.max_running {
            return Err(Refusal::Tunnels {
                max: self.limits.max_running,
            });
        }
        let max = self.limits.max_per_key;
        let mut ours = self.per_key.get(&client).copied().unwrap_or(0);
        let parked_of_key: Vec<SessionId> = if ours >= max {
            self.parked
                .values()
                .filter(|id| self.entries.get(*id).is_some_and(|e| e.client == client))
                .take(ours + 1 - max)
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        if ours >= max && ours - parked_of_key.len() >= max {
            return Err(Refusal::KeySessions { max });
        }
        let mut evicted = Vec::new();
        for old in parked_of_key {
            if let Some(parked) = self.remove(&old) {
                ours -= 1;
                evicted.push(Evicted {
                    id: old,
                    client,
                    parked,
                    why: Eviction::KeySessions,
                });
            }
        }
        debug_assert!(ours < max);
        let replaced = self.entries.insert(
            id,
            Entry {
                client,
                ticket,
                previous: None,
                slot: Slot::Running(running),
                parking: 0,
                bytes: 0,
            },
        );
        debug_assert!(replaced.is_none(), "session ids are random");
        self.running += 1;
        *self.per_key.entry(client).or_insert(0) += 1;
        Ok(evicted)
    }

    /// Parks session `id` (its link dropped); returns which parking this is,
    /// for [`ResumeTable::expire`], and the parked sessions evicted to stay
    /// within `max_parked` (the oldest first). `confirmed`: the connection
    /// carried a record from the client, so it holds the ticket granted on
    /// that connection and the one before is dead. `None`: the session was
    /// removed meanwhile (`parked` is dropped).
    pub fn park(
        &mut self,
        id: &SessionId,
        parked: T,
        confirmed: bool,
    ) -> Option<(u64, Vec<Evicted<T>>)> {
        self.park_sized(id, parked, confirmed, 0)
    }

    /// [`ResumeTable::park`] for a session that holds `bytes` of memory,
    /// counted against `max_parked_bytes` until it is resumed or dropped.
    pub fn park_sized(
        &mut self,
        id: &SessionId,
        parked: T,
        confirmed: bool,
        bytes: u64,
    ) -> Option<(u64, Vec<Evicted<T>>)> {
        let e = self.entries.get_mut(id)?;
        match e.slot {
            Slot::Running(_) => self.running -= 1,
            Slot::Parked(_) => {
                self.parked.remove(&e.parking);
                self.parked_bytes -= e.bytes;
            }
        }
        self.parkings += 1;
        e.parking = self.parkings;
        e.bytes = bytes;
        self.parked_bytes += bytes;
        e.slot = Slot::Parked(parked);
        if confirmed {
            e.previous = None;
        }
        self.parked.insert(self.parkings, *id);
        let mut evicted = Vec::new();
        loop {
            let why = if self.parked.len() > self.limits.max_parked {
                Eviction::Parked
            } else if self.parked_bytes > self.limits.max_parked_bytes {
                Eviction::ParkedBytes
            } else {
                break;
            };
            let Some((_, oldest)) = self.parked.first_key_value().map(|(k, v)| (*k, *v)) else {
                break;
            };
            let client = self.entries.get(&oldest).map(|e| e.client);
            if let (Some(parked), Some(client)) = (self.remove(&oldest), client) {
                evicted.push(Evicted {
                    id: oldest,
                    client,
                    parked,
                    why,
                });
            }
        }
        Some((self.parkings, evicted))
    }

    /// The grace period of parking `parking` ended: the session, if it is
    /// still parked from then (not resumed, not parked again).
    pub fn expire(&mut self, id: &SessionId, parking: u64) -> Option<T> {
        match self.entries.get(id) {
            Some(e) if e.parking == parking && matches!(e.slot, Slot::Parked(_)) => self.remove(id),
            _ => None,
        }
    }

    /// Forgets session `id`; returns it if it was parked.
    pub fn remove(&mut self, id: &SessionId) -> Option<T> {
        let e = self.entries.remove(id)?;
        if let Some(n) = self.per_key.get_mut(&e.client) {
            *n -= 1;
            if *n == 0 {
                self.per_key.remove(&e.client);
            }
        }
        match e.slot {
            Slot::Parked(t) => {
                self.parked.remove(&e.parking);
                self.parked_bytes -= e.bytes;
                Some(t)
            }
            Slot::Running(_) => {
                self.running -= 1;
                None
            }
        }
    }

    /// Forgets every session of `client` (its key was withdrawn); returns
    /// the parked ones.
    pub fn remove_client(&mut self, client: &[u8; 32]) -> Vec<T> {
        let ids: Vec<SessionId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.client == *client)
            .map(|(id, _)| *id)
            .collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// The handle of the connection carrying session `id`, if one does.
    pub fn running(&self, id: &SessionId) -> Option<&R> {
        match &self.entries.get(id)?.slot {
            Slot::Running(r) => Some(r),
            Slot::Parked(_) => None,
        }
    }

    /// Sessions carried by a connection.
    pub fn running_count(&self) -> usize {
        self.running
    }

    /// Sessions parked, waiting for their clients.
    pub fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// Memory of the parked sessions, as reported when they were parked.
    pub fn parked_bytes(&self) -> u64 {
        self.parked_bytes
    }

    /// Sessions, live and parked, of `client`.
    pub fn sessions_of(&self, client: &[u8; 32]) -> usize {
        self.per_key.get(client).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: u8, ticket: u8) -> Resume {
        Resume {
            session_id: [id; RESUME_ID_LEN],
            ticket: [ticket; RESUME_ID_LEN],
            records_received: 0,
        }
    }

    fn sid(n: u8) -> SessionId {
        [n; RESUME_ID_LEN]
    }

    /// The counters agree with the entries.
    fn consistent<T, R: Clone>(t: &ResumeTable<T, R>) {
        let running = t
            .entries
            .values()
            .filter(|e| matches!(e.slot, Slot::Running(_)))
            .count();
        assert_eq!(t.running_count(), running);
        assert_eq!(t.parked_count(), t.len() - running);
        assert_eq!(t.per_key.values().sum::<usize>(), t.len());
        for (n, id) in &t.parked {
            assert_eq!(t.entries[id].parking, *n);
        }
        let bytes: u64 = t.parked.values().map(|id| t.entries[id].bytes).sum();
        assert_eq!(t.parked_bytes(), bytes);
        assert!(
            t.entries
                .values()
                .all(|e| matches!(e.slot, Slot::Parked(_)) || e.bytes == 0)
        );
    }

    #[test]
    fn max_parked_bytes_evicts_the_oldest_parked_until_within() {
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let mut t: ResumeTable<u8, u32> = ResumeTable::new(Limits {
            max_parked_bytes: 1000,
            ..Limits::NONE
        });
        for n in 1..=5u8 {
            let key = if n % 2 == 0 { bob } else { alice };
            t.insert(sid(n), sid(n), key, n.into()).unwrap();
        }
        assert!(t.park_sized(&sid(1), 1, false, 400).unwrap().1.is_empty());
        assert!(t.park_sized(&sid(2), 2, false, 400).unwrap().1.is_empty());
        consistent(&t);
        // 400 + 400 + 700 > 1000: the two oldest go.
        let (_, ev) = t.park_sized(&sid(3), 3, false, 700).unwrap();
        let gone: Vec<_> = ev.iter().map(|e| (e.parked, e.why)).collect();
        assert_eq!(
            gone,
            [(1, Eviction::ParkedBytes), (2, Eviction::ParkedBytes)]
        );
        assert_eq!(t.parked_bytes(), 700);
        consistent(&t);
        // A resumed session no longer counts; parked again, its new size does.
        assert!(matches!(
            t.claim(&alice, &offer(3, 3), 30, sid(33)),
            Claim::Resume { parked: 3, .. }
        ));
        assert_eq!(t.parked_bytes(), 0);
        assert!(t.park_sized(&sid(3), 3, true, 100).unwrap().1.is_empty());
        assert!(t.park_sized(&sid(4), 4, false, 100).unwrap().1.is_empty());
        assert_eq!(t.parked_bytes(), 200);
        assert_eq!(t.remove(&sid(3)), Some(3));
        assert_eq!(t.parked_bytes(), 100);
        // One session alone over the bound is not kept either.
        let (_, ev) = t.park_sized(&sid(5), 5, false, 5000).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(t.parked_bytes(), 0);
        consistent(&t);
    }

    #[test]
    fn only_the_same_key_and_ticket_take_a_parked_session_back() {
        let (alice, mallory) = ([1u8; 32], [2u8; 32]);
        let mut t: ResumeTable<&str, u32> = ResumeTable::default();
        assert!(t.insert(sid(7), sid(9), alice, 1).unwrap().is_empty());
        // Still running: the old connection is told to let go.
        assert!(matches!(
            t.claim(&alice, &offer(7, 9), 2, sid(10)),
            Claim::Busy(1)
        ));
        let (parks, _) = t.park(&sid(7), "tunnel", false).unwrap();
        assert!(matches!(
            t.claim(&mallory, &offer(7, 9), 2, sid(10)),
            Claim::Fresh
        ));
        assert!(matches!(
            t.claim(&alice, &offer(7, 8), 2, sid(10)),
            Claim::Fresh
        ));
        assert!(matches!(
            t.claim(&alice, &offer(6, 9), 2, sid(10)),
            Claim::Fresh
        ));
        match t.claim(&alice, &offer(7, 9), 3, sid(10)) {
            Claim::Resume { parked, ticket } => assert_eq!((parked, ticket), ("tunnel", sid(10))),
            _ => panic!("not resumed"),
        }
        assert_eq!(t.running(&sid(7)), Some(&3));
        consistent(&t);
        // The first parking's timer finds it resumed: nothing to drop.
        assert_eq!(t.expire(&sid(7), parks), None);
        let (again, _) = t.park(&sid(7), "tunnel 2", true).unwrap();
        assert_eq!(t.expire(&sid(7), parks), None, "an older timer");
        assert_eq!(t.expire(&sid(7), again), Some("tunnel 2"));
        assert!(t.is_empty());
        consistent(&t);
        assert!(t.park(&sid(7), "late", false).is_none());
    }

    #[test]
    fn a_ticket_resumes_once_then_only_its_successor_does() {
        let alice = [1u8; 32];
        let mut t: ResumeTable<&str, u32> = ResumeTable::default();
        t.insert(sid(7), sid(1), alice, 1).unwrap();
        t.park(&sid(7), "tunnel", false).unwrap();
        let Claim::Resume { ticket, .. } = t.claim(&alice, &offer(7, 1), 2, sid(2)) else {
            panic!("first use of ticket 1 resumes");
        };
        assert_eq!(ticket, sid(2));
        // The connection that got ticket 2 carried client records: ticket 1
        // is dead, even on a parked session.
        t.park(&sid(7), "tunnel", true).unwrap();
        for _ in 0..100 {
            assert!(matches!(
                t.claim(&alice, &offer(7, 1), 9, sid(3)),
                Claim::Fresh
            ));
        }
        assert!(t.running(&sid(7)).is_none(), "replays left it parked");
        let Claim::Resume { ticket, .. } = t.claim(&alice, &offer(7, 2), 3, sid(3)) else {
            panic!("ticket 2 resumes");
        };
        assert_eq!(ticket, sid(3));
        // Ticket 2 is now the one before: while connection 3 runs, it never
        // makes that connection let go; the current one (3) does.
        for _ in 0..100 {
            assert!(matches!(
                t.claim(&alice, &offer(7, 2), 9, sid(4)),
                Claim::Wait
            ));
        }
        assert_eq!(t.running(&sid(7)), Some(&3));
        assert!(matches!(
            t.claim(&alice, &offer(7, 3), 9, sid(4)),
            Claim::Busy(3)
        ));
        consistent(&t);
    }

    #[test]
    fn a_lost_reply_does_not_lose_the_session() {
        // The reply granting ticket 2 never reached the client, so the link
        // carried nothing from it: ticket 1 still resumes, once more.
        let alice = [1u8; 32];
        let mut t: ResumeTable<&str, u32> = ResumeTable::default();
        t.insert(sid(7), sid(1), alice, 1).unwrap();
        t.park(&sid(7), "tunnel", false).unwrap();
        assert!(matches!(
            t.claim(&alice, &offer(7, 1), 2, sid(2)),
            Claim::Resume { .. }
        ));
        t.park(&sid(7), "tunnel", false).unwrap();
        let Claim::Resume { ticket, .. } = t.claim(&alice, &offer(7, 1), 3, sid(3)) else {
            panic!("the previous ticket resumes a parked session");
        };
        assert_eq!(ticket, sid(3));
        // Ticket 2 was never used: dead now that 3 replaced it.
        t.park(&sid(7), "tunnel", false).unwrap();
        assert!(matches!(
            t.claim(&alice, &offer(7, 2), 4, sid(4)),
            Claim::Fresh
        ));
        // The client used ticket 3: 1 is dead for good.
        assert!(matches!(
            t.claim(&alice, &offer(7, 3), 4, sid(4)),
            Claim::Resume { .. }
        ));
        t.park(&sid(7), "tunnel", false).unwrap();
        assert!(matches!(
            t.claim(&alice, &offer(7, 1), 5, sid(5)),
            Claim::Fresh
        ));
        consistent(&t);
    }

    #[test]
    fn max_running_refuses_new_and_resumed_sessions() {
        let alice = [1u8; 32];
        let mut t: ResumeTable<&str, u32> = ResumeTable::new(Limits {
            max_running: 2,
            ..Limits::NONE
        });
        t.insert(sid(1), sid(1), alice, 1).unwrap();
        t.insert(sid(2), sid(2), alice, 2).unwrap();
        assert_eq!(
            t.insert(sid(3), sid(3), alice, 3).err(),
            Some(Refusal::Tunnels { max: 2 })
        );
        t.park(&sid(1), "one", false).unwrap();
        t.insert(sid(3), sid(3), alice, 3).unwrap();
        // Full again: the parked one cannot come back until one drops.
        assert!(matches!(
            t.claim(&alice, &offer(1, 1), 4, sid(9)),
            Claim::Refused(Refusal::Tunnels { max: 2 })
        ));
        assert!(t.running(&sid(1)).is_none());
        t.remove(&sid(2));
        assert!(matches!(
            t.claim(&alice, &offer(1, 1), 4, sid(9)),
            Claim::Resume { .. }
        ));
        assert_eq!(t.running_count(), 2);
        consistent(&t);
    }

    #[test]
    fn max_per_key_evicts_the_keys_oldest_parked_then_refuses() {
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let mut t: ResumeTable<&str, u32> = ResumeTable::new(Limits {
            max_per_key: 3,
            ..Limits::NONE
        });
        for n in 1..=3 {
            t.insert(sid(n), sid(n), alice, n.into()).unwrap();
        }
        t.insert(sid(10), sid(10), bob, 10).unwrap();
        t.park(&sid(10), "bob's", false).unwrap();
        // Parked in the order 2, 1: 2 is alice's oldest parked.
        t.park(&sid(2), "two", false).unwrap();
        t.park(&sid(1), "one", false).unwrap();
        let ev = t.insert(sid(4), sid(4), alice, 4).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].id, ev[0].parked, ev[0].why),
            (sid(2), "two", Eviction::KeySessions)
        );
        assert_eq!(ev[0].client, alice);
        assert_eq!(t.sessions_of(&alice), 3);
        assert!(
            t.expire(&sid(2), 2).is_none(),
            "evicted: its timer finds nothing"
        );
        let ev = t.insert(sid(5), sid(5), alice, 5).unwrap();
        assert_eq!(ev[0].id, sid(1));
        // Three live, none parked: a fourth is refused, nothing evicted.
        assert_eq!(
            t.insert(sid(6), sid(6), alice, 6).err(),
            Some(Refusal::KeySessions { max: 3 })
        );
        assert_eq!(t.sessions_of(&alice), 3);
        // Bob's parked session was never touched.
        assert_eq!(t.sessions_of(&bob), 1);
        assert!(matches!(
            t.claim(&bob, &offer(10, 10), 11, sid(11)),
            Claim::Resume {
                parked: "bob's",
                ..
            }
        ));
        consistent(&t);
    }

    #[test]
    fn max_parked_evicts_the_oldest_parked_over_all_keys() {
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let mut t: ResumeTable<u8, u32> = ResumeTable::new(Limits {
            max_parked: 2,
            ..Limits::NONE
        });
        for n in 1..=4u8 {
            let key = if n % 2 == 0 { bob } else { alice };
            t.insert(sid(n), sid(n), key, n.into()).unwrap();
        }
        assert!(t.park(&sid(3), 3, false).unwrap().1.is_empty());
        assert!(t.park(&sid(2), 2, false).unwrap().1.is_empty());
        let (_, ev) = t.park(&sid(1), 1, false).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(
            (ev[0].id, ev[0].parked, ev[0].why),
            (sid(3), 3, Eviction::Parked)
        );
        // A resumed and re-parked session counts from its new parking.
        assert!(matches!(
            t.claim(&bob, &offer(2, 2), 9, sid(20)),
            Claim::Resume { parked: 2, .. }
        ));
        t.park(&sid(2), 2, false).unwrap();
        let (_, ev) = t.park(&sid(4), 4, false).unwrap();
        assert_eq!(ev[0].id, sid(1));
        assert_eq!(t.parked_count(), 2);
        assert_eq!((t.len(), t.running_count()), (2, 0));
        consistent(&t);
    }

    #[test]
    fn removing_a_client_forgets_only_its_sessions() {
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let mut t: ResumeTable<&str, u32> = ResumeTable::default();
        t.insert(sid(1), sid(9), alice, 1).unwrap();
        t.insert(sid(2), sid(9), alice, 2).unwrap();
        t.insert(sid(3), sid(9), bob, 3).unwrap();
        t.park(&sid(1), "alice parked", true).unwrap();
        t.park(&sid(3), "bob parked", true).unwrap();
        // Parked ones are handed back; the running one is forgotten too.
        assert_eq!(t.remove_client(&alice), vec!["alice parked"]);
        assert_eq!(t.running(&sid(2)), None);
        consistent(&t);
        assert!(matches!(
            t.claim(&alice, &offer(1, 9), 4, sid(10)),
            Claim::Fresh
        ));
        match t.claim(&bob, &offer(3, 9), 5, sid(11)) {
            Claim::Resume { parked, .. } => assert_eq!(parked, "bob parked"),
            _ => panic!("bob's session went too"),
        }
        assert!(t.remove_client(&alice).is_empty());
        consistent(&t);
    }
}
