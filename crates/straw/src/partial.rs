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
//! The total is bounded (see [`crate::bounded`]): an entry counts its whole
//! file, and past `max_bytes` the least recently written entries go first.
//! The directory and the files are the owner's only (0700, 0600 on Unix).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use straw_proto::partial::{PartialStore, SharedStore};
use tracing::{info, warn};

use crate::bounded::{Bounded, Evicted};

const MAGIC: &[u8] = b"STRAWPART1\n";
const SUFFIX: &str = "part";
/// Longest key accepted from a file.
const MAX_KEY: usize = 4096;

/// A bounded directory of partial transfers. The index maps each key to its
/// file; an entry costs its file's length (header and message bytes).
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    index: Mutex<Bounded<PathBuf>>,
}

fn header(key: &str) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&(key.len() as u32).to_be_bytes());
    h.extend_from_slice(key.as_bytes());
    h
}

fn header_len(key: &str) -> u64 {
    (MAGIC.len() + 4 + key.len()) as u64
}

/// The key of a partial file, or why it is unusable. Reads at most the
/// header (`MAX_KEY` bounds what a damaged or hostile file can make it
/// allocate); public for the fuzz target.
pub fn read_header(f: &mut impl Read) -> Result<String, String> {
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
    String::from_utf8(key).map_err(|_| "key is not UTF-8".into())
}

/// Creates `dir` (and missing parents) for the owner only, and narrows it
/// if it was open to others (made by an older straw): the files in it are
/// mail bodies.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            match fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700)) {
                Ok(()) => info!("partial store {}: now private to its owner", dir.display()),
                Err(e) => warn!(
                    "partial store {}: cannot make it private: {e}",
                    dir.display()
                ),
            }
        }
    }
    Ok(())
}

/// Creates (or truncates) a file readable by the owner only.
fn create_private_file(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Deletes the files of entries evicted past `max_bytes`.
fn release(evicted: Evicted<PathBuf>, max_bytes: u64) {
    for (_, path) in evicted {
        info!("partial store over {max_bytes} bytes: dropping an interrupted transfer");
        let _ = fs::remove_file(path);
    }
}

impl FileStore {
    /// Opens (creating) `dir` and indexes the files in it.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        create_private_dir(dir)?;
        let mut found: Vec<(std::time::SystemTime, String, PathBuf, u64)> = Vec::new();
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
                    let key = read_header(&mut f)?;
                    let meta = f.metadata().map_err(|e| e.to_string())?;
                    let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    Ok((key, meta.len(), mtime))
                });
            match parsed {
                Ok((key, size, mtime)) if path == Self::path_in(dir, &key) => {
                    found.push((mtime, key, path, size));
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
        // Oldest first, so that the bound drops the least recently written.
        found.sort_by_key(|(t, ..)| *t);
        let (count, bytes) = (found.len(), found.iter().map(|f| f.3).sum::<u64>());
        if count > 0 {
            info!(
                "partial store {}: {count} interrupted transfers, {bytes} bytes",
                dir.display()
            );
        }
        let mut index = Bounded::new(max_bytes, None);
        let now = Instant::now();
        for (_, key, path, size) in found {
            match index.insert(&key, path, size, now) {
                Ok(evicted) => release(evicted, max_bytes),
                Err(path) => release(vec![(key, path)], max_bytes),
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            index: Mutex::new(index),
        })
    }

    fn path_in(dir: &Path, key: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(key.as_bytes());
        let name: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("{name}.{SUFFIX}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bounded<PathBuf>> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held (file lengths), over all entries.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn drop_entry(ix: &mut Bounded<PathBuf>, key: &str) {
        if let Some(path) = ix.remove(key) {
            let _ = fs::remove_file(path);
        }
    }

    fn write_new(&self, key: &str, data: &[u8]) -> std::io::Result<PathBuf> {
        let path = Self::path_in(&self.dir, key);
        let tmp = path.with_extension("tmp");
        let mut f = create_private_file(&tmp)?;
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
        let path = self.lock().get(key)?.clone();
        let read = File::open(&path).and_then(|mut f| {
            let k = read_header(&mut f).map_err(std::io::Error::other)?;
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
        let bytes = header_len(key) + data.len() as u64;
        if !ix.fits(bytes) {
            return;
        }
        match self.write_new(key, data) {
            Ok(path) => match ix.insert(key, path, bytes, Instant::now()) {
                Ok(evicted) => release(evicted, ix.max_bytes()),
                Err(path) => release(vec![(key.to_owned(), path)], ix.max_bytes()),
            },
            Err(e) => warn!("partial store {}: cannot write: {e}", self.dir.display()),
        }
    }

    fn append(&self, key: &str, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut ix = self.lock();
        let Some(path) = ix.get(key) else {
            return;
        };
        let res = OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(data));
        match res {
            Ok(()) => {
                let evicted = ix.grow(key, data.len() as u64, Instant::now());
                release(evicted, ix.max_bytes());
            }
            Err(err) => {
                warn!("partial store: {}: {err}; dropped", path.display());
                Self::drop_entry(&mut ix, key);
            }
        }
    }

    fn remove(&self, key: &str) {
        Self::drop_entry(&mut self.lock(), key);
    }

    fn any_with_prefix(&self, prefix: &str) -> bool {
        self.lock().any_with_prefix(prefix)
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

    /// A fresh directory holding these entries, its store closed again.
    fn stored(name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
        let d = dir(name);
        let s = FileStore::open(&d, 1 << 20).unwrap();
        for (key, body) in entries {
            s.put(key, body);
        }
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
        assert_eq!(
            s.total_bytes(),
            header_len("a") + 11,
            "the whole file counts"
        );
        assert!(s.any_with_prefix("a") && !s.any_with_prefix("b"));
        s.remove("a");
        assert!(s.is_empty());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
    }

    #[test]
    fn damaged_files_are_ignored_and_removed() {
        let d = stored("damaged", &[("good", b"data"), ("cut", b"data")]);
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

    #[cfg(unix)]
    #[test]
    fn the_directory_and_files_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let d = dir("modes");
        let s = FileStore::open(&d.join("sub"), 1 << 20).unwrap();
        s.put("k", b"mail body");
        s.append("k", b" and more");
        assert_eq!(mode(&d), 0o700, "created parents too");
        assert_eq!(mode(s.dir()), 0o700);
        assert_eq!(mode(&FileStore::path_in(s.dir(), "k")), 0o600);
        // A directory an older straw left open is narrowed on open.
        drop(s);
        fs::set_permissions(d.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        FileStore::open(&d.join("sub"), 1 << 20).unwrap();
        assert_eq!(mode(&d.join("sub")), 0o700);
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
