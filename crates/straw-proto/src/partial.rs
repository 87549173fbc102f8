//! Message-level resume: what an interrupted transfer leaves behind.
//!
//! When a message transfer dies with the tunnel (grace period over, or the
//! mail program gave up), the client side keeps the bytes it got, keyed by
//! what names the message across sessions (for POP3: account and UIDL). On
//! the next request for the same message it offers the length and a hash of
//! that prefix; the server side checks it against the real server's reply
//! and sends only the remainder. The accelerators use a [`PartialStore`];
//! the driver supplies one on disk, tests the in-memory [`MemStore`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Where partial transfers are kept, by key. Implementations bound their
/// size and may drop entries at any time: a missing or damaged prefix only
/// costs a full transfer, because the server side checks the hash.
pub trait PartialStore: Send + Sync + std::fmt::Debug {
    /// The stored prefix for `key`, if any.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Starts `key` over with `data`.
    fn put(&self, key: &str, data: &[u8]);
    /// Adds to an existing entry; does nothing if `key` has none (it may
    /// have been evicted, and a tail alone is no prefix).
    fn append(&self, key: &str, data: &[u8]);
    /// The transfer completed (or the prefix is useless).
    fn remove(&self, key: &str);
    /// Whether any entry's key starts with `prefix` (e.g. one account's).
    fn any_with_prefix(&self, prefix: &str) -> bool;
}

pub type SharedStore = Arc<dyn PartialStore>;

/// Why a resume request line (POP3's or IMAP's `XSTRAW-PARTIAL`) was not
/// taken: the server side then sends the whole message, as if none came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A version this side does not speak (a newer client side).
    #[error("unsupported {verb} version in {line:?}")]
    UnsupportedVersion { verb: &'static str, line: String },
    #[error("malformed {line:?}")]
    Malformed { line: String },
}

/// Hash of a prefix as it travels: SHA-256 cut to 128 bits, in hex. Not a
/// security boundary (both ends trust each other); 128 bits make an
/// accidental match impossible in practice at half the wire cost.
pub fn prefix_hash(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A [`PartialStore`] in memory, unbounded: for tests and for clients
/// configured without a directory.
#[derive(Debug, Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held over all entries.
    pub fn bytes(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

impl PartialStore for MemStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().get(key).cloned()
    }

    fn put(&self, key: &str, data: &[u8]) {
        self.lock().insert(key.to_owned(), data.to_vec());
    }

    fn append(&self, key: &str, data: &[u8]) {
        if let Some(v) = self.lock().get_mut(key) {
            v.extend_from_slice(data);
        }
    }

    fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    fn any_with_prefix(&self, prefix: &str) -> bool {
        self.lock().keys().any(|k| k.starts_with(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_short() {
        assert_eq!(prefix_hash(b"abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert_ne!(prefix_hash(b"abc"), prefix_hash(b"abd"));
    }

    #[test]
    fn mem_store_appends_only_to_existing_entries() {
        let s = MemStore::new();
        s.append("k", b"tail");
        assert_eq!(s.get("k"), None, "a tail alone is no prefix");
        s.put("k", b"ab");
        s.append("k", b"cd");
        assert_eq!(s.get("k").unwrap(), b"abcd");
        assert!(s.any_with_prefix("k") && !s.any_with_prefix("x"));
        s.remove("k");
        assert!(s.is_empty());
    }
}
