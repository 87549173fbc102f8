//! The replies owed to the local program, in the order it asked.
//!
//! A client-side accelerator answers some commands itself (a cached
//! greeting, `USER`, a `MAIL FROM` that commits nothing) and forwards the
//! rest; the program must still see every reply in the order of its
//! commands. Each command therefore takes a place in this queue when it is
//! parsed: a local reply is complete at once, a remote one fills in as the
//! real reply crosses the link (whole, or streamed piece by piece for a long
//! one like `RETR`). [`OwedReplies::pump`] writes out whatever the program can
//! have now, never passing a reply that is still on its way.
//!
//! The queue also keeps the two counters every accelerator reports: a
//! *link wait* is a remote reply owed while nothing else was (the program
//! now waits on the link), a *local reply* one answered without it.

use std::collections::VecDeque;

use crate::AccelStats;

/// One reply's place in the queue.
#[derive(Debug)]
enum Owed {
    Local(Vec<u8>),
    /// `buf` holds what arrived and is not yet written; `done` once it ended.
    Remote {
        id: u64,
        buf: Vec<u8>,
        done: bool,
    },
}

/// Replies owed to the program, in program order (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct OwedReplies {
    queue: VecDeque<Owed>,
    next_id: u64,
    /// Part of the front reply is already with the program.
    partial: bool,
    pub(crate) stats: AccelStats,
}

impl OwedReplies {
    /// A reply still (partly) on its way is owed: the program is waiting.
    pub(crate) fn waiting(&self) -> bool {
        self.queue
            .iter()
            .any(|o| matches!(o, Owed::Remote { done: false, .. }))
    }

    /// A reply answered here.
    pub(crate) fn owe_local(&mut self, reply: Vec<u8>) {
        self.stats.local_replies += 1;
        self.push_local(reply);
    }

    /// A reply known here that the caller does not count as answered here
    /// (e.g. a real refusal that arrived earlier, shown in its place).
    pub(crate) fn push_local(&mut self, reply: Vec<u8>) {
        self.queue.push_back(Owed::Local(reply));
    }

    /// Nothing is owed.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A reply that must cross the link; returns its id for [`Self::deliver`].
    pub(crate) fn owe_remote(&mut self) -> u64 {
        if !self.waiting() {
            self.stats.link_waits += 1;
        }
        self.owe_uncounted(Vec::new(), false)
    }

    /// A reply whose id was taken with [`Self::fresh_id`] before it was owed
    /// (e.g. a prefetched one, with what has arrived of it so far). Counts
    /// nothing: the caller knows whether the program waits on the link.
    pub(crate) fn owe_with_id(&mut self, id: u64, buf: Vec<u8>, done: bool) {
        self.queue.push_back(Owed::Remote { id, buf, done });
    }

    /// A reply that may be served from the cache (a greeting): `cached`
    /// is answered here, else the real one is owed. Returns what the real
    /// reply is then checked against (the served one) or delivered to (the
    /// id it is owed under).
    pub(crate) fn owe_cached(&mut self, cached: Option<Vec<u8>>) -> (Option<Vec<u8>>, Option<u64>) {
        match cached {
            Some(reply) => {
                self.owe_local(reply.clone());
                (Some(reply), None)
            }
            None => (None, Some(self.owe_remote())),
        }
    }

    /// An id for a reply not owed to the program (yet).
    pub(crate) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A remote reply counted by the caller (see [`Self::owe_with_id`]).
    pub(crate) fn owe_uncounted(&mut self, buf: Vec<u8>, done: bool) -> u64 {
        let id = self.fresh_id();
        self.owe_with_id(id, buf, done);
        id
    }

    /// Adds `bytes` to the reply `id`; `end` says it is complete. Returns
    /// false if no reply with that id is owed.
    pub(crate) fn deliver(&mut self, id: u64, bytes: &[u8], end: bool) -> bool {
        for o in &mut self.queue {
            if let Owed::Remote { id: i, buf, done } = o
                && *i == id
            {
                buf.extend_from_slice(bytes);
                *done = end;
                return true;
            }
        }
        false
    }

    /// Writes every reply the program can have now, in order, to `to_local`.
    pub(crate) fn pump(&mut self, to_local: &mut Vec<u8>) {
        while let Some(front) = self.queue.front_mut() {
            match front {
                Owed::Local(r) => to_local.append(r),
                Owed::Remote { buf, done, .. } => {
                    self.partial |= !buf.is_empty();
                    to_local.append(buf);
                    if !*done {
                        return;
                    }
                }
            }
            self.queue.pop_front();
            self.partial = false;
        }
    }

    /// Part of a reply is with the program and the rest is not: nothing may
    /// be written now that would read as the rest of it.
    pub(crate) fn mid_reply(&self) -> bool {
        self.partial
    }

    /// Forgets every reply still owed (the link is gone for good).
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_leave_in_program_order() {
        let mut q = OwedReplies::default();
        q.owe_local(b"a\r\n".to_vec());
        let r = q.owe_remote();
        q.owe_local(b"c\r\n".to_vec());
        let mut out = Vec::new();
        q.pump(&mut out);
        assert_eq!(out, b"a\r\n", "the local reply after a remote one waits");
        assert!(q.waiting());
        assert!(q.deliver(r, b"b1", false));
        q.pump(&mut out);
        assert_eq!(out, b"a\r\nb1");
        assert!(q.mid_reply());
        q.deliver(r, b"b2\r\n", true);
        q.pump(&mut out);
        assert_eq!(out, b"a\r\nb1b2\r\nc\r\n");
        assert!(!q.waiting() && !q.mid_reply());
        assert!(!q.deliver(r, b"late", true), "a written reply is gone");
        assert_eq!(q.stats.local_replies, 2);
        assert_eq!(q.stats.link_waits, 1);
    }

    #[test]
    fn a_second_remote_reply_is_no_second_wait() {
        let mut q = OwedReplies::default();
        q.owe_remote();
        q.owe_remote();
        assert_eq!(q.stats.link_waits, 1);
    }
}
