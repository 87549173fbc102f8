//! The client's on-disk store of interrupted message transfers (see
//! `straw_proto::partial`): one file per message, surviving restarts.
//!
//! File format: `STRAWPART1\n`, the key's length (u32, big-endian), the key
//! (UTF-8), then the message bytes received so far. The name is a hash of
//! the key. A new entry is written to a temporary file, synced and renamed
//! into place; later bytes are appended as they arrive (not synced each
//! time: a tail lost in a crash only shortens the prefix, and a damaged one
//! fails the server side's hash check, which means a full transfer, never
//! wrong bytes). Files that don't parse are removed with a log line.
//!
//! The total is bounded: past `max_bytes` the least recently written
//! entries go first.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use straw_proto::partial::{PartialStore, SharedStore};
use tracing::{info, warn};

const MAGIC: &[u8] = b"STRAWPART1\n";
const SUFFIX: &str = "part";
/// Longest key accepted from a file.
const MAX_KEY: usize = 4096;

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    /// Message bytes (without the header).
    size: u64,
    /// Larger is more recent.
    stamp: u64,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
}

/// A bounded directory of partial transfers.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

fn header(key: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&(key.len() as u32).to_be_bytes());
    h.extend_from_slice(key.as_bytes());
    h
}

/// The key and the header length of a partial file, or why it is unusable.
fn read_header(f: &mut File) -> Result<(String, u64), String> {
    let mut magic = [0u8; MAGIC.len()];
    f.read_exact(&mut magic).map_err(|_| "truncated header")?;
    if magic != MAGIC {
        return Err("not a straw partial file".into());
    }
    let mut len = [0u8; 4];
    f.read_exact(&mut len).map_err(|_| "truncated header")?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_KEY {
        return Err(format!("key length {len} out of range"));
    }
    let mut key = vec![0u8; len];
    f.read_exact(&mut key).map_err(|_| "truncated key")?;
    let key = String::from_utf8(key).map_err(|_| "key is not UTF-8")?;
    Ok((key, (MAGIC.len() + 4 + len) as u64))
}

impl FileStore {
    /// Opens (creating) `dir` and indexes the files in it.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut index = Index::default();
        let mut found: Vec<(std::time::SystemTime, String, Entry)> = Vec::new();
        for de in fs::read_dir(dir)? {
            let path = de?.path();
            let ext = path.extension().and_then(|e| e.to_str());
            if ext == Some("tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if ext != Some(SUFFIX) {
                continue;
            }
            let parsed = File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|mut f| {
                    let (key, hlen) = read_header(&mut f)?;
                    let meta = f.metadata().map_err(|e| e.to_string())?;
                    let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    Ok((key, meta.len().saturating_sub(hlen), mtime))
                });
            match parsed {
                Ok((key, size, mtime)) if path == Self::path_in(dir, &key) => {
                    let e = Entry {
                        path,
                        size,
                        stamp: 0,
                    };
                    found.push((mtime, key, e));
                }
                Ok(_) => {
                    warn!("partial store: {} is misnamed; removed", path.display());
                    let _ = fs::remove_file(&path);
                }
                Err(e) => {
                    warn!("partial store: {}: {e}; removed", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|(t, ..)| *t);
        for (_, key, mut e) in found {
            index.clock += 1;
            e.stamp = index.clock;
            index.total += e.size;
            index.entries.insert(key, e);
        }
        let store = Self {
            dir: dir.to_owned(),
            max_bytes,
            index: Mutex::new(index),
        };
        {
            let mut ix = store.lock();
            if !ix.entries.is_empty() {
                info!(
                    "partial store {}: {} interrupted transfers, {} bytes",
                    dir.display(),
                    ix.entries.len(),
                    ix.total
                );
            }
            store.evict(&mut ix, None);
        }
        Ok(store)
    }

    fn path_in(dir: &Path, key: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(key.as_bytes());
        let name: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("{name}.{SUFFIX}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held, over all entries.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn drop_entry(ix: &mut Index, key: &str) {
        if let Some(e) = ix.entries.remove(key) {
            ix.total -= e.size;
            let _ = fs::remove_file(&e.path);
        }
    }

    /// Removes the least recently written entries until the total fits;
    /// `keep` goes last (and only if it alone is too big).
    fn evict(&self, ix: &mut Index, keep: Option<&str>) {
        while ix.total > self.max_bytes {
            let victim = ix
                .entries
                .iter()
                .filter(|(k, _)| Some(k.as_str()) != keep)
                .min_by_key(|(_, e)| e.stamp)
                .map(|(k, _)| k.clone())
                .or_else(|| keep.map(str::to_owned));
            let Some(k) = victim else { return };
            info!(
                "partial store over {} bytes: dropping an interrupted transfer",
                self.max_bytes
            );
            Self::drop_entry(ix, &k);
        }
    }

    fn write_new(&self, key: &str, data: &[u8]) -> std::io::Result<PathBuf> {
        let path = Self::path_in(&self.dir, key);
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&header(key))?;
        f.write_all(data)?;
        f.sync_data()?;
        fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// This store for one service: keys get the service name in front.
    pub fn for_service(self: &Arc<Self>, service: &str) -> SharedStore {
        Arc::new(ServiceStore {
            store: self.clone(),
            prefix: format!("{service}\0"),
        })
    }
}

impl PartialStore for FileStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.lock().entries.get(key)?.path.clone();
        let read = File::open(&path).and_then(|mut f| {
            let (k, _) = read_header(&mut f).map_err(std::io::Error::other)?;
            if k != key {
                return Err(std::io::Error::other("holds another key"));
            }
            let mut data = Vec::new();
            f.read_to_end(&mut data)?;
            Ok(data)
        });
        match read {
            Ok(d) => Some(d),
            Err(e) => {
                warn!("partial store: {}: {e}; removed", path.display());
                Self::drop_entry(&mut self.lock(), key);
                None
            }
        }
    }

    fn put(&self, key: &str, data: &[u8]) {
        let mut ix = self.lock();
        Self::drop_entry(&mut ix, key);
        if data.len() as u64 > self.max_bytes {
            return;
        }
        match self.write_new(key, data) {
            Ok(path) => {
                ix.clock += 1;
                let stamp = ix.clock;
                ix.total += data.len() as u64;
                ix.entries.insert(
                    key.to_owned(),
                    Entry {
                        path,
                        size: data.len() as u64,
                        stamp,
                    },
                );
                self.evict(&mut ix, Some(key));
            }
            Err(e) => warn!("partial store {}: cannot write: {e}", self.dir.display()),
        }
    }

    fn append(&self, key: &str, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut ix = self.lock();
        ix.clock += 1;
        let stamp = ix.clock;
        let Some(e) = ix.entries.get_mut(key) else {
            return;
        };
        let res = OpenOptions::new()
            .append(true)
            .open(&e.path)
            .and_then(|mut f| f.write_all(data));
        match res {
            Ok(()) => {
                e.size += data.len() as u64;
                e.stamp = stamp;
                ix.total += data.len() as u64;
                self.evict(&mut ix, Some(key));
            }
            Err(err) => {
                warn!("partial store: {}: {err}; dropped", e.path.display());
                Self::drop_entry(&mut ix, key);
            }
        }
    }

    fn remove(&self, key: &str) {
        Self::drop_entry(&mut self.lock(), key);
    }

    fn any_with_prefix(&self, prefix: &str) -> bool {
        self.lock().entries.keys().any(|k| k.starts_with(prefix))
    }
}

/// A [`FileStore`] seen by one service's connections.
#[derive(Debug)]
struct ServiceStore {
    store: Arc<FileStore>,
    prefix: String,
}

impl ServiceStore {
    fn k(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl PartialStore for ServiceStore {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.store.get(&self.k(key))
    }
    fn put(&self, key: &str, data: &[u8]) {
        self.store.put(&self.k(key), data)
    }
    fn append(&self, key: &str, data: &[u8]) {
        self.store.append(&self.k(key), data)
    }
    fn remove(&self, key: &str) {
        self.store.remove(&self.k(key))
    }
    fn any_with_prefix(&self, prefix: &str) -> bool {
        self.store.any_with_prefix(&self.k(prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("straw-partial-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn entries_survive_reopen_and_are_removed_when_done() {
        let d = dir("reopen");
        let s = FileStore::open(&d, 1 << 20).unwrap();
        s.put("a", b"hello ");
        s.append("a", b"world");
        s.append("missing", b"tail");
        assert_eq!(s.get("missing"), None);
        drop(s);
        let s = FileStore::open(&d, 1 << 20).unwrap();
        assert_eq!(s.get("a").unwrap(), b"hello world");
        assert_eq!(s.total_bytes(), 11);
        assert!(s.any_with_prefix("a") && !s.any_with_prefix("b"));
        s.remove("a");
        assert!(s.is_empty());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
    }

    #[test]
    fn damaged_files_are_ignored_and_removed() {
        let d = dir("damaged");
        let s = FileStore::open(&d, 1 << 20).unwrap();
        s.put("good", b"data");
        s.put("cut", b"data");
        drop(s);
        let cut = FileStore::path_in(&d, "cut");
        let bytes = fs::read(&cut).unwrap();
        fs::write(&cut, &bytes[..MAGIC.len() + 2]).unwrap();
        fs::write(d.join("junk.part"), b"not ours").unwrap();
        fs::write(d.join("x.tmp"), b"half written").unwrap();
        fs::write(d.join("readme.txt"), b"left alone").unwrap();
        let s = FileStore::open(&d, 1 << 20).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("good").unwrap(), b"data");
        assert_eq!(s.get("cut"), None);
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A file damaged after indexing: dropped on read.
        fs::write(FileStore::path_in(&d, "good"), b"STRAW").unwrap();
        assert_eq!(s.get("good"), None);
        assert!(s.is_empty());
    }

    #[test]
    fn oldest_entries_are_evicted_past_the_bound() {
        let d = dir("evict");
        let s = FileStore::open(&d, 1000).unwrap();
        s.put("old", &[1; 400]);
        s.put("mid", &[2; 400]);
        s.append("old", &[1; 10]); // now the most recent
        s.put("new", &[3; 400]);
        assert_eq!(s.get("mid"), None, "least recently written goes first");
        assert!(s.get("old").is_some() && s.get("new").is_some());
        assert!(s.total_bytes() <= 1000);
        // The entry being written goes last: others first, then itself
        // once it alone is past the bound.
        s.append("new", &[3; 500]);
        assert_eq!(s.get("old"), None);
        assert_eq!(s.get("new").unwrap().len(), 900);
        s.append("new", &[3; 200]);
        assert_eq!(s.get("new"), None);
        assert_eq!(s.total_bytes(), 0);
        s.put("old", &[1; 10]);
        s.put("huge", &[0; 2000]);
        assert!(s.get("old").is_some(), "a too-big put evicts nothing");
        assert_eq!(s.get("huge"), None);
        // The bound also applies to what a restart finds.
        drop(s);
        let s = FileStore::open(&d, 5).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn service_views_do_not_see_each_other() {
        let d = dir("svc");
        let s = Arc::new(FileStore::open(&d, 1 << 20).unwrap());
        let a = s.for_service("pop3");
        let b = s.for_service("pop3-work");
        a.put("k", b"x");
        assert_eq!(b.get("k"), None);
        assert!(a.any_with_prefix("k") && !b.any_with_prefix("k"));
    }
}
