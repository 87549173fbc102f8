//! The server's store for SMTP message resume (`straw_proto::smtp::resume`):
//! partial bodies and delivered-message records, in memory.
//!
//! Memory, not disk: the server is a well-connected host whose partials only
//! need to outlive one cut-off send until the mail program retries (minutes
//! to hours), and writing every message that passes to disk would cost more
//! than the rare restart that loses them (which only means a full resend;
//! see the caveat on delivered records in docs/design.md). Entries expire
//! after `ttl`; past `max_bytes` the least recently written go first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use straw_proto::partial::PartialStore;

#[derive(Debug)]
struct Entry {
    data: Vec<u8>,
    written: Instant,
    stamp: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Entry>,
    total: usize,
    clock: u64,
}

/// A bounded in-memory [`PartialStore`] whose entries expire.
#[derive(Debug)]
pub struct RelayStore {
    max_bytes: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl RelayStore {
    pub fn new(max_bytes: usize, ttl: Duration) -> Self {
        Self {
            max_bytes,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn total_bytes(&self) -> usize {
        self.lock().total
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired entries, then the oldest written until the total fits
    /// (`keep` last).
    fn trim(&self, ix: &mut Inner, keep: Option<&str>) {
        let now = Instant::now();
        let expired: Vec<String> = ix
            .map
            .iter()
            .filter(|(_, e)| now.duration_since(e.written) > self.ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            Self::drop_entry(ix, &k);
        }
        while ix.total > self.max_bytes {
            let victim = ix
                .map
                .iter()
                .filter(|(k, _)| Some(k.as_str()) != keep)
                .min_by_key(|(_, e)| e.stamp)
                .map(|(k, _)| k.clone())
                .or_else(|| keep.map(str::to_owned));
            let Some(k) = victim else { return };
            Self::drop_entry(ix, &k);
        }
    }

    fn drop_entry(ix: &mut Inner, key: &str) {
        if let Some(e) = ix.map.remove(key) {
            ix.total -= e.data.len();
        }
    }
}

impl PartialStore for RelayStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut ix = self.lock();
        self.trim(&mut ix, None);
        ix.map.get(key).map(|e| e.data.clone())
    }

    fn put(&self, key: &str, data: &[u8]) {
        let mut ix = self.lock();
        Self::drop_entry(&mut ix, key);
        ix.clock += 1;
        let stamp = ix.clock;
        ix.total += data.len();
        ix.map.insert(
            key.to_owned(),
            Entry {
                data: data.to_vec(),
                written: Instant::now(),
                stamp,
            },
        );
        self.trim(&mut ix, Some(key));
    }

    fn append(&self, key: &str, data: &[u8]) {
        let mut ix = self.lock();
        ix.clock += 1;
        let stamp = ix.clock;
        let Some(e) = ix.map.get_mut(key) else {
            return;
        };
        e.data.extend_from_slice(data);
        e.written = Instant::now();
        e.stamp = stamp;
        ix.total += data.len();
        self.trim(&mut ix, Some(key));
    }

    fn remove(&self, key: &str) {
        Self::drop_entry(&mut self.lock(), key);
    }

    fn any_with_prefix(&self, prefix: &str) -> bool {
        self.lock().map.keys().any(|k| k.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let s = RelayStore::new(1000, Duration::from_secs(3600));
        s.put("a", &[1; 400]);
        s.put("b", &[2; 400]);
        s.append("a", &[1; 10]);
        s.put("c", &[3; 400]);
        assert_eq!(s.get("b"), None, "least recently written goes first");
        assert_eq!(s.get("a").unwrap().len(), 410);
        assert!(s.total_bytes() <= 1000);
        s.append("c", &[3; 2000]);
        assert_eq!(s.get("c"), None, "an entry alone past the bound goes too");
        let s = RelayStore::new(1000, Duration::from_millis(20));
        s.put("a", b"x");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(s.get("a"), None, "expired");
        assert!(s.is_empty());
    }
}
