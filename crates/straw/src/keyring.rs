//! The server's live set of authorised keys: replaced whole on reload, with
//! a registry of the tunnels running for each key so that removing a key
//! closes them (and only them).
//!
//! The set sits behind a mutex as an `Arc`: it is read once per handshake
//! and once per stream open, and replaced on reload, so a lock held for an
//! `Arc` clone costs nothing worth a dependency (arc-swap). The same lock
//! orders reloads against tunnels registering: a tunnel registered before a
//! reload is told by it; one registered after sees the new set. Either way
//! a removed key's tunnel cannot slip through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::authorized::{AuthorizedKeys, ClientOptions};

/// The authorised keys now, and the tunnels of each key.
pub struct KeyRing {
    inner: Mutex<Inner>,
}

struct Inner {
    current: Arc<AuthorizedKeys>,
    /// Per key, per registration: set to `true` when the key is removed.
    live: HashMap<[u8; 32], HashMap<u64, watch::Sender<bool>>>,
    next_id: u64,
}

/// What a [`KeyRing::replace`] changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Keys in the new set.
    pub total: usize,
    pub added: usize,
    /// Keys no longer authorised, with what log lines called them.
    pub removed: Vec<([u8; 32], String)>,
    /// Keys kept whose options (name, services) changed.
    pub changed: usize,
    /// Running tunnels told to close (their keys were removed).
    pub tunnels_closed: usize,
}

impl KeyRing {
    pub fn new(keys: AuthorizedKeys) -> Arc<KeyRing> {
        Arc::new(KeyRing {
            inner: Mutex::new(Inner {
                current: Arc::new(keys),
                live: HashMap::new(),
                next_id: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; keep serving if something did.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys as of now.
    pub fn current(&self) -> Arc<AuthorizedKeys> {
        self.lock().current.clone()
    }

    /// How log lines (and metrics) call the client with `key`: its
    /// `name=`, else the first characters of its key.
    pub fn label(&self, key: &[u8; 32]) -> String {
        self.current().label(key)
    }

    /// The options of `key` now; `None` if it is not authorised (any more).
    pub fn options(&self, key: &[u8; 32]) -> Option<(ClientOptions, usize)> {
        let keys = self.current();
        keys.get(key).map(|e| (e.options.clone(), e.line))
    }

    /// Registers a running tunnel of `key`: the returned handle learns when
    /// the key is removed (at once if it already is), and unregisters when
    /// dropped.
    pub fn register(self: &Arc<Self>, key: &[u8; 32]) -> LiveTunnel {
        let mut inner = self.lock();
        let revoked = !inner.current.contains(key);
        let (tx, rx) = watch::channel(revoked);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.live.entry(*key).or_default().insert(id, tx);
        LiveTunnel {
            ring: self.clone(),
            key: *key,
            id,
            revoked: rx,
        }
    }

    /// Running tunnels registered for `key`.
    pub fn live_tunnels(&self, key: &[u8; 32]) -> usize {
        self.lock().live.get(key).map_or(0, HashMap::len)
    }

    /// Makes `new` the set; the running tunnels of keys it lacks are told
    /// to close.
    pub fn replace(&self, new: AuthorizedKeys) -> Changes {
        let mut inner = self.lock();
        let old = std::mem::replace(&mut inner.current, Arc::new(new));
        let new = inner.current.clone();
        let mut changes = Changes {
            total: new.len(),
            ..Changes::default()
        };
        for key in new.keys() {
            match old.get(key) {
                None => changes.added += 1,
                Some(before) if Some(&before.options) != new.get(key).map(|e| &e.options) => {
                    changes.changed += 1
                }
                Some(_) => {}
            }
        }
        for key in old.keys().filter(|k| !new.contains(k)) {
            for tx in inner.live.get(key).into_iter().flat_map(HashMap::values) {
                if !*tx.borrow() {
                    changes.tunnels_closed += 1;
                }
                tx.send_replace(true);
            }
            changes.removed.push((*key, old.label(key)));
        }
        changes
    }
}

/// A running tunnel's registration ([`KeyRing::register`]).
pub struct LiveTunnel {
    ring: Arc<KeyRing>,
    key: [u8; 32],
    id: u64,
    revoked: watch::Receiver<bool>,
}

impl LiveTunnel {
    /// Whether the key was removed since (or before) registering.
    pub fn is_revoked(&self) -> bool {
        *self.revoked.borrow()
    }

    /// Runs `work` until it ends (`Some`), or until the key is removed
    /// (`None`; `work` is dropped).
    pub async fn unless_revoked<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let revoked = async {
            // The sender lives as long as this registration.
            if self.revoked.wait_for(|r| *r).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            () = revoked => None,
            out = work => Some(out),
        }
    }
}

impl Drop for LiveTunnel {
    fn drop(&mut self) {
        let mut inner = self.ring.lock();
        if let Some(regs) = inner.live.get_mut(&self.key) {
            regs.remove(&self.id);
            if regs.is_empty() {
                inner.live.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::keys::encode_key;

    fn keys(lines: &[String]) -> AuthorizedKeys {
        AuthorizedKeys::parse(&lines.join("\n")).unwrap()
    }

    #[tokio::test]
    async fn removing_a_key_revokes_only_its_tunnels() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let ring = KeyRing::new([a, b].into_iter().collect());
        let mut ta = ring.register(&a);
        let mut tb1 = ring.register(&b);
        let tb2 = ring.register(&b);
        assert_eq!(ring.live_tunnels(&b), 2);
        assert!(!ta.is_revoked() && !tb1.is_revoked());

        let changes = ring.replace(keys(&[
            encode_key(&a),
            format!("name=new {}", encode_key(&c)),
        ]));
        assert_eq!(changes.total, 2);
        assert_eq!(changes.added, 1);
        assert_eq!(changes.changed, 0);
        assert_eq!(changes.tunnels_closed, 2);
        assert_eq!(changes.removed, vec![(b, encode_key(&b)[..8].to_owned())]);
        assert!(tb1.is_revoked() && tb2.is_revoked() && !ta.is_revoked());
        assert_eq!(tb1.unless_revoked(std::future::pending::<()>()).await, None);
        // A's work is not interrupted.
        assert_eq!(ta.unless_revoked(async { 7 }).await, Some(7));

        // Registering a removed key is revoked from the start.
        assert!(ring.register(&b).is_revoked());
        drop((tb1, tb2));
        assert_eq!(ring.live_tunnels(&b), 0);
        assert_eq!(ring.label(&c), "new");

        // Options changed on a kept key are counted, nothing is closed.
        let changes = ring.replace(keys(&[
            format!("services=pop3 {}", encode_key(&a)),
            format!("name=new {}", encode_key(&c)),
        ]));
        assert_eq!(
            (changes.added, changes.changed, changes.tunnels_closed),
            (0, 1, 0)
        );
        assert!(changes.removed.is_empty());
        assert!(!ta.is_revoked());
        let (opts, line) = ring.options(&a).unwrap();
        assert!(opts.allows("pop3") && !opts.allows("smtp"));
        assert_eq!(line, 1);
        assert!(ring.options(&b).is_none());
    }

    #[tokio::test]
    async fn a_revocation_wakes_a_waiting_tunnel() {
        let a = [1u8; 32];
        let ring = KeyRing::new([a].into_iter().collect());
        let mut t = ring.register(&a);
        let r2 = ring.clone();
        let remover = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            r2.replace(AuthorizedKeys::default())
        });
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            t.unless_revoked(std::future::pending::<()>()),
        )
        .await
        .expect("revocation did not wake the tunnel");
        assert_eq!(out, None);
        assert_eq!(remover.await.unwrap().tunnels_closed, 1);
    }
}
