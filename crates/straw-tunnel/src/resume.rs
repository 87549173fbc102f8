//! The server's side of session resume, sans IO: which sessions live, who
//! may take each back, and whether a connection still carries it.

use std::collections::HashMap;

use straw_core::wire::{RESUME_ID_LEN, Resume};

use crate::handshake::ct_eq;

pub type SessionId = [u8; RESUME_ID_LEN];

/// Sessions by id. `T` is a parked session (its tunnel); `R` is how to make
/// the connection that carries a running one let go.
pub struct ResumeTable<T, R> {
    entries: HashMap<SessionId, Entry<T, R>>,
}

struct Entry<T, R> {
    /// Only the client key that created the session may resume it: Noise IK
    /// authenticates that key, while a first handshake message (and the
    /// ticket in it) can be replayed by anyone who saw it.
    client: [u8; 32],
    ticket: SessionId,
    slot: Slot<T, R>,
    /// Counts parkings, so that an expiry timer only drops the parking it
    /// was started for.
    parks: u64,
}

enum Slot<T, R> {
    /// A connection carries the session.
    Running(R),
    /// No connection: waiting for the client, until the grace period ends.
    Parked(T),
}

/// What a client's resume offer gets ([`ResumeTable::claim`]).
pub enum Claim<T, R> {
    /// Its session, now marked running; grant `ticket` again.
    Resume { parked: T, ticket: SessionId },
    /// Its session is still attached to an older connection: tell that one
    /// to let go (`R`); the client's next attempt finds it parked.
    Busy(R),
    /// No such session for this key and ticket: start a fresh one.
    Fresh,
}

impl<T, R> Default for ResumeTable<T, R> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }
}

impl<T, R: Clone> ResumeTable<T, R> {
    /// A client authenticated as `client` offers `offer`; `running` is the
    /// new connection's handle, stored if it takes the session over.
    pub fn claim(&mut self, client: &[u8; 32], offer: &Resume, running: R) -> Claim<T, R> {
        let Some(e) = self.entries.get_mut(&offer.session_id) else {
            return Claim::Fresh;
        };
        if e.client != *client || !ct_eq(&e.ticket, &offer.ticket) {
            return Claim::Fresh;
        }
        match &e.slot {
            Slot::Running(old) => Claim::Busy(old.clone()),
            Slot::Parked(_) => match std::mem::replace(&mut e.slot, Slot::Running(running)) {
                Slot::Parked(parked) => Claim::Resume {
                    parked,
                    ticket: e.ticket,
                },
                Slot::Running(_) => unreachable!("matched Parked above"),
            },
        }
    }

    /// A fresh session `id` for `client`, resumable with `ticket`, carried
    /// by the connection `running`.
    pub fn insert(&mut self, id: SessionId, ticket: SessionId, client: [u8; 32], running: R) {
        self.entries.insert(
            id,
            Entry {
                client,
                ticket,
                slot: Slot::Running(running),
                parks: 0,
            },
        );
    }

    /// Parks session `id` (its link dropped); returns which parking this is,
    /// for [`ResumeTable::expire`]. `None`: the session was removed meanwhile
    /// (`parked` is dropped).
    pub fn park(&mut self, id: &SessionId, parked: T) -> Option<u64> {
        let e = self.entries.get_mut(id)?;
        e.parks += 1;
        e.slot = Slot::Parked(parked);
        Some(e.parks)
    }

    /// The grace period of parking `parks` ended: the session, if it is
    /// still parked from then (not resumed, not parked again).
    pub fn expire(&mut self, id: &SessionId, parks: u64) -> Option<T> {
        match self.entries.get(id) {
            Some(e) if e.parks == parks && matches!(e.slot, Slot::Parked(_)) => self.remove(id),
            _ => None,
        }
    }

    /// Forgets session `id`; returns it if it was parked.
    pub fn remove(&mut self, id: &SessionId) -> Option<T> {
        match self.entries.remove(id)?.slot {
            Slot::Parked(t) => Some(t),
            Slot::Running(_) => None,
        }
    }

    /// The handle of the connection carrying session `id`, if one does.
    pub fn running(&self, id: &SessionId) -> Option<&R> {
        match &self.entries.get(id)?.slot {
            Slot::Running(r) => Some(r),
            Slot::Parked(_) => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sessions waiting without a connection (for the operator's metrics).
    pub fn parked(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.slot, Slot::Parked(_)))
            .count()
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

    #[test]
    fn only_the_same_key_and_ticket_take_a_parked_session_back() {
        let (alice, mallory) = ([1u8; 32], [2u8; 32]);
        let mut t: ResumeTable<&str, u32> = ResumeTable::default();
        t.insert([7; RESUME_ID_LEN], [9; RESUME_ID_LEN], alice, 1);
        // Still running: the old connection is told to let go.
        assert!(matches!(t.claim(&alice, &offer(7, 9), 2), Claim::Busy(1)));
        assert_eq!(t.parked(), 0);
        let parks = t.park(&[7; RESUME_ID_LEN], "tunnel").unwrap();
        assert_eq!(t.parked(), 1);
        assert!(matches!(t.claim(&mallory, &offer(7, 9), 2), Claim::Fresh));
        assert!(matches!(t.claim(&alice, &offer(7, 8), 2), Claim::Fresh));
        assert!(matches!(t.claim(&alice, &offer(6, 9), 2), Claim::Fresh));
        match t.claim(&alice, &offer(7, 9), 3) {
            Claim::Resume { parked, ticket } => {
                assert_eq!((parked, ticket), ("tunnel", [9; RESUME_ID_LEN]))
            }
            _ => panic!("not resumed"),
        }
        assert_eq!(t.running(&[7; RESUME_ID_LEN]), Some(&3));
        assert_eq!(t.parked(), 0, "taken back");
        // The first parking's timer finds it resumed: nothing to drop.
        assert_eq!(t.expire(&[7; RESUME_ID_LEN], parks), None);
        let again = t.park(&[7; RESUME_ID_LEN], "tunnel 2").unwrap();
        assert_eq!(t.expire(&[7; RESUME_ID_LEN], parks), None, "an older timer");
        assert_eq!(t.expire(&[7; RESUME_ID_LEN], again), Some("tunnel 2"));
        assert!(t.is_empty());
        assert_eq!(t.park(&[7; RESUME_ID_LEN], "late"), None);
    }
}
