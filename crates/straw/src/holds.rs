//! The client's record of POP3 messages held ashore (see
//! `straw_proto::pop3::hold`): one small JSON file, read at start, rewritten
//! whole (temporary file, sync, rename: a crash leaves the old or the new
//! one) at each change. `straw hold list|release` and the status snapshot
//! read it through the control socket.
//!
//! Bounded: at most [`ENTRIES_MAX`] entries; past that, fetched ones go
//! first, then the oldest. Losing an entry loses nothing on the server: the
//! message is still there, and its stub comes again on the next RETR.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use straw_proto::pop3::hold::{HeldInfo, HoldStore, SharedHolds, short_id};
use tracing::warn;

/// Most entries kept.
pub const ENTRIES_MAX: usize = 200;
/// Largest file read (entries are a few hundred bytes each).
const FILE_MAX: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldState {
    /// Its stub was delivered; the original waits on the server.
    Held,
    /// The user asked for it: presented on the next session.
    Released,
    /// Delivered in full after its release: no longer presented.
    Fetched,
}

/// One held message, as `straw hold list` and the web page show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldEntry {
    /// What `straw hold release` takes.
    pub id: String,
    pub service: String,
    pub user: String,
    pub uidl: String,
    /// The original's size (its LIST size).
    pub size: u64,
    pub from: String,
    pub subject: String,
    pub date: String,
    pub state: HoldState,
    pub updated_unix: u64,
}

/// The file and its entries.
#[derive(Debug)]
pub struct HoldFile {
    path: PathBuf,
    entries: Mutex<Vec<HeldEntry>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl HoldFile {
    /// Reads `path` if it exists. A file that doesn't parse is set aside
    /// (`.bad`) with a log line, and the record starts empty.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        let entries = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            Ok(m) if m.len() > FILE_MAX => {
                warn!("{}: too large, set aside", path.display());
                let _ = std::fs::rename(path, path.with_extension("bad"));
                Vec::new()
            }
            Ok(_) => {
                let text =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                match serde_json::from_slice::<Vec<HeldEntry>>(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        warn!("{}: {e}; set aside", path.display());
                        let _ = std::fs::rename(path, path.with_extension("bad"));
                        Vec::new()
                    }
                }
            }
        };
        Ok(Arc::new(Self {
            path: path.to_owned(),
            entries: Mutex::new(entries),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HeldEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `entries` atomically; a failure is logged (the record in
    /// memory stays right for this run).
    fn save(&self, entries: &[HeldEntry]) {
        if let Err(e) = self.try_save(entries) {
            warn!("hold record {}: {e:#}", self.path.display());
        }
    }

    fn try_save(&self, entries: &[HeldEntry]) -> Result<()> {
        use std::io::Write;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(entries)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// Changes the entries and saves them.
    fn change(&self, f: impl FnOnce(&mut Vec<HeldEntry>)) {
        let mut e = self.lock();
        let before = e.clone();
        f(&mut e);
        if *e != before {
            self.save(&e);
        }
    }

    /// Every entry, newest first.
    pub fn list(&self) -> Vec<HeldEntry> {
        let mut v = self.lock().clone();
        v.sort_by_key(|e| std::cmp::Reverse(e.updated_unix));
        v
    }

    /// Entries not fetched yet (held or released), newest first.
    pub fn pending(&self) -> Vec<HeldEntry> {
        let mut v = self.list();
        v.retain(|e| e.state != HoldState::Fetched);
        v
    }

    /// The user asks for message `id`: presented on the next session.
    pub fn release(&self, id: &str) -> Result<HeldEntry, String> {
        let mut found = Err(format!("no held message {id:?} (see straw hold list)"));
        self.change(|v| {
            if let Some(e) = v.iter_mut().find(|e| e.id.eq_ignore_ascii_case(id.trim())) {
                if e.state == HoldState::Fetched {
                    found = Err(format!("message {} was already fetched in full", e.id));
                    return;
                }
                e.state = HoldState::Released;
                e.updated_unix = now_unix();
                found = Ok(e.clone());
            }
        });
        found
    }

    /// One service's view, for its POP3 accelerators.
    pub fn for_service(self: &Arc<Self>, service: &str) -> SharedHolds {
        Arc::new(ServiceHolds {
            file: self.clone(),
            service: service.to_owned(),
        })
    }
}

/// Drops entries past [`ENTRIES_MAX`]: fetched first, then the oldest.
fn bound(v: &mut Vec<HeldEntry>) {
    while v.len() > ENTRIES_MAX {
        let victim = v
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| (e.state != HoldState::Fetched, e.updated_unix))
            .map(|(i, _)| i)
            .unwrap_or(0);
        v.remove(victim);
    }
}

#[derive(Debug)]
struct ServiceHolds {
    file: Arc<HoldFile>,
    service: String,
}

impl ServiceHolds {
    fn is(&self, e: &HeldEntry, user: &str, uidl: &str) -> bool {
        e.service == self.service && e.user == user && e.uidl == uidl
    }
}

impl HoldStore for ServiceHolds {
    fn id(&self, user: &str, uidl: &str) -> String {
        short_id(&format!("{}\0{user}\0{uidl}", self.service))
    }

    fn stub_delivered(&self, user: &str, uidl: &str, info: &HeldInfo) {
        let id = self.id(user, uidl);
        self.file.change(|v| {
            v.retain(|e| !self.is(e, user, uidl));
            v.push(HeldEntry {
                id,
                service: self.service.clone(),
                user: user.to_owned(),
                uidl: uidl.to_owned(),
                size: info.size,
                from: info.from.clone(),
                subject: info.subject.clone(),
                date: info.date.clone(),
                state: HoldState::Held,
                updated_unix: now_unix(),
            });
            bound(v);
        });
    }

    fn released(&self, user: &str) -> Vec<String> {
        self.file
            .lock()
            .iter()
            .filter(|e| e.service == self.service && e.user == user)
            .filter(|e| e.state == HoldState::Released)
            .map(|e| e.uidl.clone())
            .collect()
    }

    fn fetched(&self, user: &str, uidl: &str) {
        self.file.change(|v| {
            for e in v.iter_mut().filter(|e| self.is(e, user, uidl)) {
                e.state = HoldState::Fetched;
                e.updated_unix = now_unix();
            }
        });
    }

    fn gone(&self, user: &str, uidl: &str) {
        self.file.change(|v| v.retain(|e| !self.is(e, user, uidl)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("straw-holds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("state").join("holds.json")
    }

    #[test]
    fn survives_a_restart_and_walks_held_released_fetched() {
        let p = path("walk");
        let f = HoldFile::open(&p).unwrap();
        let s = f.for_service("pop3");
        let info = HeldInfo {
            size: 300_000,
            from: "a@b".into(),
            subject: "plot".into(),
            date: "today".into(),
        };
        s.stub_delivered("bob", "u1", &info);
        let id = s.id("bob", "u1");
        assert_eq!(id.len(), 8);
        assert_ne!(id, f.for_service("other").id("bob", "u1"));
        assert!(s.released("bob").is_empty());
        assert!(f.release("nope").is_err());

        let f = HoldFile::open(&p).unwrap();
        let s = f.for_service("pop3");
        assert_eq!(f.pending()[0].state, HoldState::Held);
        assert_eq!(f.release(&id.to_uppercase()).unwrap().subject, "plot");
        assert_eq!(s.released("bob"), vec!["u1".to_owned()]);
        assert!(f.for_service("other").released("bob").is_empty());
        s.fetched("bob", "u1");
        assert!(s.released("bob").is_empty());
        assert!(f.pending().is_empty());
        assert!(f.release(&id).unwrap_err().contains("already fetched"));
        // A new stub of it makes it held again.
        s.stub_delivered("bob", "u1", &info);
        assert_eq!(HoldFile::open(&p).unwrap().pending().len(), 1);
        s.gone("bob", "u1");
        assert!(HoldFile::open(&p).unwrap().list().is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bounded_and_a_damaged_file_is_set_aside() {
        let p = path("bound");
        let f = HoldFile::open(&p).unwrap();
        let s = f.for_service("pop3");
        for i in 0..ENTRIES_MAX + 5 {
            s.stub_delivered("bob", &format!("u{i}"), &HeldInfo::default());
        }
        assert_eq!(f.list().len(), ENTRIES_MAX);
        std::fs::write(&p, b"{not json").unwrap();
        assert!(HoldFile::open(&p).unwrap().list().is_empty());
        assert!(p.with_extension("bad").exists());
    }
}
