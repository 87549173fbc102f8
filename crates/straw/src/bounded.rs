//! The bookkeeping shared by straw's partial-transfer stores (the client's
//! files in [`crate::partial`], the server's SMTP resume memory in
//! [`crate::relay_store`]): entries by key with a size each, a bound on the
//! total, least-recently-written eviction and an optional time to live.
//!
//! Sans-IO: the stores hold the values (a path, a body) and do the I/O; this
//! core decides what goes and hands the evicted values back so that the
//! caller can release them (delete the file). Times come from the caller.
//!
//! Every eviction is O(log n): besides the map by key there is an index by
//! write order, so the least recently written entry is its first one. The
//! same index serves the time to live, because write times only grow along
//! it (callers pass a monotonic clock).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Slot<V> {
    value: V,
    /// What the entry costs against the bound, as its store counts it.
    bytes: u64,
    /// Position in `by_write`: larger is more recent.
    stamp: u64,
    written: Instant,
}

/// Entries the bound or the time to live pushed out, oldest first, for the
/// caller to release.
pub type Evicted<V> = Vec<(String, V)>;

/// A bounded, least-recently-written-first map from keys to values.
#[derive(Debug)]
pub struct Bounded<V> {
    max_bytes: u64,
    ttl: Option<Duration>,
    entries: BTreeMap<String, Slot<V>>,
    /// Keys by last write, oldest first.
    by_write: BTreeMap<u64, String>,
    total: u64,
    clock: u64,
}

impl<V> Bounded<V> {
    /// A store holding at most `max_bytes` in all; entries last written
    /// more than `ttl` ago expire (`None`: never).
    pub fn new(max_bytes: u64, ttl: Option<Duration>) -> Self {
        Self {
            max_bytes,
            ttl,
            entries: BTreeMap::new(),
            by_write: BTreeMap::new(),
            total: 0,
            clock: 0,
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Whether an entry of `bytes` can be held at all.
    pub fn fits(&self, bytes: u64) -> bool {
        bytes <= self.max_bytes
    }

    /// What all entries cost, together.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).map(|s| &s.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.entries.get_mut(key).map(|s| &mut s.value)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|s| &s.value)
    }

    /// Whether any key starts with `prefix`: O(log n), keys are ordered.
    pub fn any_with_prefix(&self, prefix: &str) -> bool {
        self.entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    fn next_stamp(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Stores `value` under `key` as the most recently written entry,
    /// costing `bytes`, and evicts the oldest others until the total fits.
    /// An entry already under `key` is replaced (dropped, not returned: take
    /// it out with [`remove`](Self::remove) first if it needs releasing). A
    /// value that can never fit is refused and handed back, and nothing is
    /// evicted for it.
    pub fn insert(
        &mut self,
        key: &str,
        value: V,
        bytes: u64,
        now: Instant,
    ) -> Result<Evicted<V>, V> {
        self.remove(key);
        if !self.fits(bytes) {
            return Err(value);
        }
        let stamp = self.next_stamp();
        self.by_write.insert(stamp, key.to_owned());
        self.entries.insert(
            key.to_owned(),
            Slot {
                value,
                bytes,
                stamp,
                written: now,
            },
        );
        self.total += bytes;
        Ok(self.evict_over_bound(key))
    }

    /// Records that `key`'s entry just grew by `bytes` (the caller changed
    /// its value): it becomes the most recently written, and the oldest
    /// others go until the total fits, or the entry itself if it alone no
    /// longer fits. Nothing happens if there is no such entry.
    pub fn grow(&mut self, key: &str, bytes: u64, now: Instant) -> Evicted<V> {
        let stamp = self.next_stamp();
        let Some(slot) = self.entries.get_mut(key) else {
            return Vec::new();
        };
        self.by_write.remove(&slot.stamp);
        self.by_write.insert(stamp, key.to_owned());
        slot.stamp = stamp;
        slot.written = now;
        slot.bytes += bytes;
        self.total += bytes;
        if slot.bytes > self.max_bytes {
            // Too big alone: evicting others would not make it fit.
            return self
                .remove(key)
                .map(|v| (key.to_owned(), v))
                .into_iter()
                .collect();
        }
        self.evict_over_bound(key)
    }

    /// Takes `key`'s entry out.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.by_write.remove(&slot.stamp);
        self.total -= slot.bytes;
        Some(slot.value)
    }

    /// Takes out the entries last written more than the time to live
    /// before `now`.
    pub fn expire(&mut self, now: Instant) -> Evicted<V> {
        let Some(ttl) = self.ttl else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        while let Some(key) = self.oldest() {
            let written = self.entries[key].written;
            if now.saturating_duration_since(written) <= ttl {
                break;
            }
            let key = key.to_owned();
            let value = self.remove(&key).expect("indexed key has an entry");
            gone.push((key, value));
        }
        gone
    }

    fn oldest(&self) -> Option<&str> {
        self.by_write.first_key_value().map(|(_, k)| k.as_str())
    }

    /// Evicts the least recently written entries other than `keep` (which
    /// fits alone: callers check) until the total fits.
    fn evict_over_bound(&mut self, keep: &str) -> Evicted<V> {
        let mut gone = Vec::new();
        while self.total > self.max_bytes {
            let Some(key) = self.by_write.values().find(|k| k.as_str() != keep).cloned() else {
                break;
            };
            let value = self.remove(&key).expect("indexed key has an entry");
            gone.push((key, value));
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<V>(e: &Evicted<V>) -> Vec<&str> {
        e.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn the_bound_holds_and_the_least_recently_written_go_first() {
        let t = Instant::now();
        let mut b = Bounded::new(100, None);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert!(b.insert(k, i, 20, t).unwrap().is_empty());
        }
        // "a" written again: now "b" is the oldest.
        assert!(b.grow("a", 5, t).is_empty());
        assert_eq!(b.total_bytes(), 85);
        let gone = b.insert("e", 4, 40, t).unwrap();
        assert_eq!(keys(&gone), ["b", "c"]);
        assert_eq!(gone[0].1, 1, "the evicted value is handed back");
        assert_eq!(b.total_bytes(), 85);
        assert!(b.get("a").is_some() && b.get("d").is_some() && b.get("e").is_some());
        // Growing one entry evicts the oldest others, never itself while it fits.
        let gone = b.grow("e", 60, t);
        assert_eq!(keys(&gone), ["d", "a"]);
        assert_eq!((b.len(), b.total_bytes()), (1, 100));
    }

    #[test]
    fn an_entry_too_big_alone_goes_alone_and_one_that_never_fits_is_refused() {
        let t = Instant::now();
        let mut b = Bounded::new(100, None);
        b.insert("old", (), 10, t).unwrap();
        b.insert("big", (), 80, t).unwrap();
        assert_eq!(keys(&b.grow("big", 30, t)), ["big"]);
        assert_eq!((b.len(), b.total_bytes()), (1, 10), "'old' stays");
        assert!(matches!(b.insert("huge", (), 101, t), Err(())));
        assert!(
            matches!(b.insert("old", (), 101, t), Err(())),
            "replaced, then refused"
        );
        assert!(b.is_empty());
        assert!(b.grow("missing", 1, t).is_empty());
        assert_eq!(b.total_bytes(), 0);
    }

    #[test]
    fn entries_expire_oldest_first_by_last_write() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let mut b = Bounded::new(1000, Some(ttl));
        b.insert("a", (), 1, t0).unwrap();
        b.insert("b", (), 1, t0 + Duration::from_secs(10)).unwrap();
        b.insert("c", (), 1, t0 + Duration::from_secs(20)).unwrap();
        b.grow("a", 1, t0 + Duration::from_secs(30));
        assert!(
            b.expire(t0 + ttl).is_empty(),
            "exactly the ttl is not over it"
        );
        assert_eq!(keys(&b.expire(t0 + Duration::from_secs(75))), ["b"]);
        assert_eq!(keys(&b.expire(t0 + Duration::from_secs(95))), ["c", "a"]);
        assert!(b.is_empty());
        let mut forever = Bounded::new(1000, None);
        forever.insert("k", (), 1, t0).unwrap();
        assert!(forever.expire(t0 + Duration::from_secs(1 << 30)).is_empty());
    }

    #[test]
    fn prefix_lookup_and_removal() {
        let t = Instant::now();
        let mut b = Bounded::new(1000, None);
        b.insert("pop3\0bob\0uid1", 1, 5, t).unwrap();
        b.insert("pop3-work\0x", 2, 5, t).unwrap();
        assert!(b.any_with_prefix("pop3\0bob\0") && b.any_with_prefix("pop3"));
        assert!(!b.any_with_prefix("pop3\0alice") && !b.any_with_prefix("z"));
        assert_eq!(b.remove("pop3\0bob\0uid1"), Some(1));
        assert_eq!(b.remove("pop3\0bob\0uid1"), None);
        assert!(!b.any_with_prefix("pop3\0"));
        assert_eq!((b.len(), b.total_bytes()), (1, 5));
        assert_eq!(b.values().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn many_entries_evict_in_write_order() {
        let t = Instant::now();
        let mut b = Bounded::new(10 * 1000, None);
        let mut evicted = Vec::new();
        for i in 0..5000u32 {
            for (k, _) in b.insert(&format!("k{i}"), i, 10, t).unwrap() {
                evicted.push(k);
            }
        }
        assert_eq!(b.len(), 1000);
        assert!(b.total_bytes() <= b.max_bytes());
        let want: Vec<String> = (0..4000).map(|i| format!("k{i}")).collect();
        assert_eq!(evicted, want);
    }
}
