//! The server's store for SMTP message resume (`straw_proto::smtp::resume`):
//! partial bodies and delivered-message records, in memory.
//!
//! Memory, not disk: the server is a well-connected host whose partials only
//! need to outlive one cut-off send until the mail program retries (minutes
//! to hours), and writing every message that passes to disk would cost more
//! than the rare restart that loses them (which only means a full resend;
//! see the caveat on delivered records in docs/design.md). Entries expire
//! `ttl` after their last write; past `max_bytes` (bodies, keys and a
//! per-entry overhead) the least recently written go first (see
//! [`crate::bounded`]).

use std::sync::Mutex;
use std::time::Duration;

use straw_proto::partial::PartialStore;
use tokio::time::Instant;

use crate::bounded::Bounded;

/// What an entry costs besides its body and key: its slot in the map by key
/// and in the index by write order (with the key's second copy), and the
/// allocators' rounding, as a round upper estimate.
const ENTRY_OVERHEAD: usize = 192;

/// What holding `body` bytes under `key` costs against the bound. (A body's
/// spare capacity from growing is not counted: it is at most its length.)
fn cost(key: &str, body: usize) -> u64 {
    (body + 2 * key.len() + ENTRY_OVERHEAD) as u64
}

/// A bounded in-memory [`PartialStore`] whose entries expire.
#[derive(Debug)]
pub struct RelayStore {
    inner: Mutex<Bounded<Vec<u8>>>,
}

/// The clock of the expiry: tokio's, so that tests can pause it.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl RelayStore {
    pub fn new(max_bytes: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Bounded::new(max_bytes as u64, Some(ttl))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bounded<Vec<u8>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the entries cost against the bound: bodies, keys and overhead.
    pub fn total_bytes(&self) -> usize {
        self.lock().total_bytes() as usize
    }

    /// The body bytes held, over all entries.
    pub fn body_bytes(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

// Evicted bodies are simply dropped: memory is all they hold.
impl PartialStore for RelayStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut ix = self.lock();
        ix.expire(now());
        ix.get(key).cloned()
    }

    fn put(&self, key: &str, data: &[u8]) {
        let mut ix = self.lock();
        let now = now();
        ix.expire(now);
        let _ = ix.insert(key, data.to_vec(), cost(key, data.len()), now);
    }

    fn append(&self, key: &str, data: &[u8]) {
        let mut ix = self.lock();
        let now = now();
        ix.expire(now);
        let Some(body) = ix.get_mut(key) else {
            return;
        };
        body.extend_from_slice(data);
        ix.grow(key, data.len() as u64, now);
    }

    fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    fn any_with_prefix(&self, prefix: &str) -> bool {
        self.lock().any_with_prefix(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_with_keys_and_overhead_counted() {
        let per = cost("a", 0) as usize;
        let s = RelayStore::new(1000 + 2 * per, Duration::from_secs(3600));
        s.put("a", &[1; 400]);
        s.put("b", &[2; 400]);
        assert_eq!(s.total_bytes(), 800 + 2 * per, "keys and overhead count");
        assert_eq!(s.body_bytes(), 800);
        s.append("a", &[1; 10]);
        s.put("c", &[3; 400]);
        assert_eq!(s.get("b"), None, "least recently written goes first");
        assert_eq!(s.get("a").unwrap().len(), 410);
        assert!(s.total_bytes() <= 1000 + 2 * per);
        s.append("c", &[3; 2000]);
        assert_eq!(s.get("c"), None, "an entry alone past the bound goes too");
        // Many small entries: the overhead alone reaches the bound.
        let s = RelayStore::new(100 * per, Duration::from_secs(3600));
        for i in 0..1000 {
            s.put(&i.to_string(), b"");
        }
        assert!(s.total_bytes() <= 100 * per && s.len() >= 90, "{}", s.len());
        assert_eq!(s.get("0"), None, "oldest first");
        assert!(s.get("999").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl_since_their_last_write() {
        let s = RelayStore::new(1 << 20, Duration::from_secs(60));
        s.put("a", b"x");
        s.put("b", b"y");
        tokio::time::advance(Duration::from_secs(40)).await;
        s.append("a", b"x");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(s.get("b"), None, "expired");
        assert_eq!(s.get("a").unwrap(), b"xx", "written again 30 s ago");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(s.get("a"), None, "expired");
        assert!(s.is_empty());
    }
}
