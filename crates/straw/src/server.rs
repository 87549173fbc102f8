//! `straw server`: accepts tunnels from authorised clients and dials the real
//! servers for the streams they open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use straw_core::session::{Role, Session, SessionConfig};
use straw_core::wire::{Hello, RESUME_ID_LEN, Resume};
use straw_proto::http;
use straw_proto::partial::SharedStore;
use straw_tunnel::handshake;
use straw_tunnel::handshake::ReplayGuard;
use straw_tunnel::resume::{self, Claim, Eviction, Refusal, ResumeTable, SessionId};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::accel::{AccelFactory, Side};
use crate::config::{Protocol, ServerConfig, ServerHttp, ServerLimits, ServerService, TcpOptions};
use crate::gate::{Evicted, Failed, Gate, LogLimiter, Ticket};
use crate::keyring::{Changes, KeyRing};
use crate::link::keys::{self, AuthorizedKeys, Keypair};
use crate::link::{noise, tcp};
use crate::metrics::{Handshake, Metrics};
use crate::tunnel::{DialFuture, DialRefused, Dialer, LinkEnded, Tunnel, TunnelStats};
use crate::warn_limited;

/// How long upstream connections of a dropped session get to be closed politely.
const GIVE_UP_LINGER: Duration = Duration::from_secs(5);

/// How long dialing a real server may take before the stream is reset.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServerState {
    pub cfg: ServerConfig,
    pub keypair: Keypair,
    /// The authorised keys (replaced on reload) and each key's tunnels.
    pub authorized: Arc<KeyRing>,
    /// Sessions alive on this server (running or parked for resume).
    sessions: Sessions,
}

impl ServerState {
    pub fn new(cfg: ServerConfig, keypair: Keypair, authorized: AuthorizedKeys) -> ServerState {
        ServerState {
            sessions: Sessions::new(&cfg.limits),
            cfg,
            keypair,
            authorized: KeyRing::new(authorized),
        }
    }

    /// How log lines (and metrics) call the client with `key`: its
    /// `name=` in `authorized_keys`, else the first characters of its key.
    pub fn client_label(&self, key: &[u8; 32]) -> String {
        self.authorized.label(key)
    }

    /// Re-reads `authorized_keys` (what SIGHUP and the file watch do). An
    /// error (named `PATH:LINE`) keeps the keys loaded before.
    pub fn reload_keys(&self) -> Result<Changes> {
        let keys = load_authorized(&self.cfg)?;
        Ok(self.set_keys(keys))
    }

    /// Makes `keys` the authorised set: removed keys' tunnels close and
    /// their parked sessions are dropped; the others are untouched.
    pub fn set_keys(&self, keys: AuthorizedKeys) -> Changes {
        let changes = self.authorized.replace(keys);
        for (key, label) in &changes.removed {
            self.sessions.drop_client(key, label);
        }
        changes
    }

    /// [`ServerState::reload_keys`], logged: one line either way.
    fn reload_keys_logged(&self, why: &str) {
        let path = self.cfg.authorized_keys.display();
        match self.reload_keys() {
            Ok(c) => info!(
                "{path} reloaded ({why}): {} keys; {} added, {} removed ({} tunnels closed), {} with new options",
                c.total,
                c.added,
                c.removed.len(),
                c.tunnels_closed,
                c.changed
            ),
            Err(e) => warn!(
                "{path} not reloaded ({why}), keeping the {} keys loaded before: {e:#}",
                self.authorized.current().len()
            ),
        }
    }
}

/// Loads and checks `authorized_keys`: `services=` must name configured
/// services, and a published example key needs `allow_insecure_keys`.
fn load_authorized(cfg: &ServerConfig) -> Result<AuthorizedKeys> {
    let path = &cfg.authorized_keys;
    let authorized = AuthorizedKeys::load(path)?;
    authorized
        .check_services(|s| cfg.services.contains_key(s))
        .map_err(|e| anyhow!("{}:{}: {}", path.display(), e.line, e.problem))?;
    if authorized.has_example_key() {
        let what = format!(
            "{}: holds a published example client key, so anyone can connect",
            path.display()
        );
        if !cfg.allow_insecure_keys {
            bail!("{what}; refusing it (allow_insecure_keys = true overrides, for demos only)");
        }
        warn!("INSECURE: {what}; accepted because allow_insecure_keys = true");
    }
    Ok(authorized)
}

/// Size, modification and change times, inode: what tells a replaced or
/// edited file (`None`: it cannot be read now).
#[derive(Clone, PartialEq, Eq, Debug)]
struct FileStamp(Option<(u64, Option<std::time::SystemTime>, u64, u64, i64, i64)>);

impl FileStamp {
    fn of(path: &std::path::Path) -> FileStamp {
        FileStamp(std::fs::metadata(path).ok().map(|m| {
            #[cfg(unix)]
            let (dev, ino, ctime, ctime_ns) = {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
            };
            #[cfg(not(unix))]
            let (dev, ino, ctime, ctime_ns) = (0, 0, 0, 0);
            (m.len(), m.modified().ok(), dev, ino, ctime, ctime_ns)
        }))
    }
}

/// What the poll knows of the file: as loaded, and as seen last time.
struct FilePoll {
    loaded: FileStamp,
    seen: FileStamp,
}

impl FilePoll {
    fn new(loaded: FileStamp) -> FilePoll {
        FilePoll {
            seen: loaded.clone(),
            loaded,
        }
    }

    /// Another look found `now`: whether to reload (it changed since it was
    /// loaded, and not since the last look).
    fn look(&mut self, now: FileStamp) -> bool {
        if now == self.loaded || now != self.seen {
            self.seen = now;
            return false;
        }
        self.loaded = now;
        true
    }

    /// Loaded at `now` (SIGHUP).
    fn loaded(&mut self, now: FileStamp) {
        *self = FilePoll::new(now);
    }
}

/// Reloads `authorized_keys` on SIGHUP, and when the file changed and then
/// held still for one poll interval (`authorized_keys_poll_ms`; a file
/// caught half-written is not loaded). Polling a stat every couple of
/// seconds is free for one small file and, unlike inotify watches (the
/// `notify` crate), sees a file replaced by rename, a symlink re-pointed
/// (configuration management, Kubernetes) and network file systems alike.
/// The SIGHUP handler is in place when this returns.
pub fn watch_keys(state: Arc<ServerState>) -> Result<()> {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    let path = state.cfg.authorized_keys.clone();
    let poll = Duration::from_millis(state.cfg.authorized_keys_poll_ms);
    tokio::spawn(async move {
        let mut file = FilePoll::new(FileStamp::of(&path));
        let mut tick = (!poll.is_zero()).then(|| {
            let mut t = tokio::time::interval(poll);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            #[cfg(unix)]
            let hangup = hup.recv();
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            let polled = async {
                match tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(()) = hangup => {
                    file.loaded(FileStamp::of(&path));
                    state.reload_keys_logged("SIGHUP");
                }
                _ = polled => {
                    if file.look(FileStamp::of(&path)) {
                        state.reload_keys_logged("file changed");
                    }
                }
            }
        }
    });
    Ok(())
}

pub async fn run(cfg: ServerConfig) -> Result<()> {
    let r = &cfg.smtp_resume;
    let relay: Option<SharedStore> = r.enabled.then(|| {
        Arc::new(crate::relay_store::RelayStore::new(
            r.max_bytes as usize,
            Duration::from_secs(r.ttl_secs),
        )) as SharedStore
    });
    run_with_relay(cfg, relay).await
}

/// As [`run`], with the SMTP resume store given (tests look into it).
pub async fn run_with_relay(cfg: ServerConfig, relay: Option<SharedStore>) -> Result<()> {
    crate::client::warm_up_codec(Role::Server, &cfg.session);
    let keypair = keys::load_private_checked(&cfg.private_key, cfg.allow_insecure_keys)?;
    let authorized = load_authorized(&cfg)?;
    #[cfg(unix)]
    match crate::gate::raise_fd_limit() {
        Ok(n) => info!("open-files limit {n}"),
        Err(e) => warn!("cannot raise the open-files limit: {e}"),
    }
    for (name, upstream) in cfg.plaintext_upstreams() {
        warn!(
            "service {name}: upstream {upstream} is not on loopback and has tls = \"none\": \
             passwords and mail cross that hop IN CLEAR (set tls = \"implicit\" or \"starttls\")"
        );
    }
    let listener = tcp::bind_listener(cfg.listen, cfg.tcp.recv_buffer)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let count = authorized.len();
    let state = Arc::new(ServerState::new(cfg, keypair, authorized));
    // SIGHUP is handled from here on (before "listening" is logged).
    watch_keys(state.clone())?;
    let cfg = &state.cfg;
    info!(
        "straw server listening on {} ({count} authorised clients, services: {})",
        cfg.listen,
        cfg.services.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    serve_with_relay(listener, state, relay).await
}

/// Accept loop; each tunnel runs in its own task.
pub async fn serve(listener: TcpListener, state: Arc<ServerState>) -> Result<()> {
    serve_with_relay(listener, state, None).await
}

/// As [`serve`], with the SMTP resume store, which outlives sessions (a
/// resumed send usually comes on a new one).
pub async fn serve_with_relay(
    listener: TcpListener,
    state: Arc<ServerState>,
    relay: Option<SharedStore>,
) -> Result<()> {
    let sessions = state.sessions.clone();
    let (metrics, _endpoint) = crate::metrics::start(&state.cfg).await?;
    let parked = sessions.clone();
    metrics.set_parked_source(move || parked.lock().parked_count());
    let limits = &state.cfg.limits;
    let gate = Gate::new(limits.max_pending_handshakes, limits.max_pending_per_ip);
    let logs = Arc::new(LogLimiter::new(Duration::from_secs(
        limits.log_interval_secs,
    )));
    let memory = crate::memory::MemoryAccount::new(
        limits.total_buffer_bytes,
        Duration::from_secs(limits.log_interval_secs),
    );
    let codecs = Codecs {
        load: crate::codec_load::CodecLoad::for_host(crate::tunnel::now()),
        pool: crate::codec_pool::CodecPool::for_host(),
    };
    let pool = codecs.pool.clone();
    metrics.set_codec_queue_source(move || pool.queued());
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin.
                warn_limited!(logs, "accept", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (ticket, dropped) = gate.admit(peer.ip());
        for why in dropped {
            match why {
                Evicted::PerIp => warn_limited!(
                    logs,
                    "evicted-ip",
                    "too many pending handshakes from {}: dropped its oldest",
                    peer.ip()
                ),
                Evicted::Total => warn_limited!(
                    logs,
                    "evicted-total",
                    "{} handshakes pending: dropped the oldest",
                    limits.max_pending_handshakes
                ),
            }
        }
        let state = state.clone();
        let sessions = sessions.clone();
        let relay = relay.clone();
        let logs = logs.clone();
        let metrics = metrics.clone();
        let memory = memory.clone();
        let codecs = codecs.clone();
        tokio::spawn(async move {
            let r = handle(
                sock, peer, ticket, state, sessions, relay, &logs, metrics, memory, codecs,
            )
            .await;
            if let Err(e) = r {
                warn!("tunnel from {peer}: {e:#}");
            }
        });
    }
}

/// Waits until the connection has sent something: a client sends its first
/// handshake message at once, so silence means an idle or hostile peer.
async fn first_bytes(sock: &TcpStream, deadline: Duration) -> Result<()> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(deadline, sock.peek(&mut byte)).await {
        Ok(Ok(0)) => bail!("closed before the handshake"),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("sent nothing within {} ms", deadline.as_millis()),
    }
}

fn our_session_config(cfg: &ServerConfig) -> SessionConfig {
    crate::client::session_config(Role::Server, &cfg.session)
}

fn our_hello(cfg: &ServerConfig, resume: Resume) -> Hello {
    handshake::our_hello(&our_session_config(cfg), Some(resume))
}

/// Sessions alive on this server, by id, so that a reconnecting client can
/// take its own back. A running session's handle makes its connection let go.
/// With them, the replay guard on first handshake messages.
#[derive(Clone)]
struct Sessions {
    table: Arc<std::sync::Mutex<ResumeTable<Box<Tunnel>, Arc<Notify>>>>,
    replay: Arc<std::sync::Mutex<ReplayGuard>>,
    logs: Arc<LogLimiter>,
}

impl Sessions {
    fn new(limits: &ServerLimits) -> Self {
        Self {
            table: Arc::new(std::sync::Mutex::new(ResumeTable::new(limits.sessions()))),
            replay: Arc::new(std::sync::Mutex::new(ReplayGuard::new(limits.clock_skew()))),
            logs: Arc::new(LogLimiter::new(Duration::from_secs(
                limits.log_interval_secs,
            ))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ResumeTable<Box<Tunnel>, Arc<Notify>>> {
        // A panic elsewhere can't leave the table inconsistent: keep serving.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses a replayed (or not newer) first message from `client`.
    fn check_replay(&self, client: &[u8; 32], hello: &Hello) -> Result<()> {
        let now = handshake::unix_nanos(std::time::SystemTime::now());
        let mut guard = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        Ok(guard.check(client, hello.timestamp, now)?)
    }

    /// Closes parked sessions dropped to make room, with a log line.
    fn evicted(&self, evicted: Vec<resume::Evicted<Box<Tunnel>>>) {
        for e in evicted {
            let key = &keys::encode_key(&e.client)[..8];
            match e.why {
                Eviction::KeySessions => warn_limited!(
                    self.logs,
                    "evicted-key-session",
                    "client {key} reached limits.max_sessions_per_key: dropped its oldest parked session ({} streams)",
                    e.parked.stream_count()
                ),
                Eviction::Parked => warn_limited!(
                    self.logs,
                    "evicted-parked",
                    "limits.max_parked_sessions reached: dropped the oldest parked session (client {key}, {} streams)",
                    e.parked.stream_count()
                ),
                Eviction::ParkedBytes => warn_limited!(
                    self.logs,
                    "evicted-parked-bytes",
                    "limits.max_parked_bytes reached: dropped the oldest parked session (client {key}, {} streams, {} bytes)",
                    e.parked.stream_count(),
                    e.parked.memory_bytes()
                ),
            }
            tokio::spawn(e.parked.give_up(GIVE_UP_LINGER));
        }
    }

    /// Puts a tunnel whose link dropped aside for `grace`, then drops it
    /// (closing its upstream connections) unless a client took it back.
    /// `confirmed`: the link carried a record from the client, which so
    /// holds the ticket granted on it (the one before it dies).
    fn park(&self, id: SessionId, tunnel: Tunnel, grace: Duration, label: String, confirmed: bool) {
        // The compressor state stays: a redial resumes warm (tests/dial.rs).
        let bytes = tunnel.memory_bytes();
        let parked = self
            .lock()
            .park_sized(&id, Box::new(tunnel), confirmed, bytes);
        let Some((parks, evicted)) = parked else {
            return;
        };
        self.evicted(evicted);
        let sessions = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let expired = sessions.lock().expire(&id, parks);
            if let Some(t) = expired {
                info!(
                    tunnel = %label,
                    streams = t.stream_count(),
                    "resume grace period over: session dropped"
                );
                t.give_up(GIVE_UP_LINGER).await;
            }
        });
    }

    fn remove(&self, id: &SessionId) {
        // Dropped outside the lock: that closes its pumps.
        let parked = self.lock().remove(id);
        drop(parked);
    }

    /// Forgets every session of a client whose key was removed; the parked
    /// ones are given up (one log line each).
    fn drop_client(&self, key: &[u8; 32], label: &str) {
        let parked = self.lock().remove_client(key);
        for t in parked {
            let label = label.to_owned();
            tokio::spawn(async move {
                let n = t.give_up_quietly(GIVE_UP_LINGER).await;
                info!(
                    client = %label,
                    connections = n,
                    "key removed from authorized_keys: parked session dropped"
                );
            });
        }
    }
}

/// A running tunnel whose key was removed: forget its session, close its
/// connections and the link, in one log line.
async fn close_revoked(sessions: &Sessions, id: SessionId, tunnel: Tunnel, label: &str) {
    sessions.remove(&id);
    let streams = tunnel.stream_count();
    warn!(tunnel = %label, streams, "key removed from authorized_keys: tunnel closed");
    tunnel.give_up_quietly(GIVE_UP_LINGER).await;
}

fn random_id() -> Result<SessionId> {
    let mut id = [0u8; RESUME_ID_LEN];
    getrandom::fill(&mut id).map_err(|e| anyhow!("no system randomness: {e}"))?;
    Ok(id)
}

/// What the handshake decided for this connection.
enum Plan {
    Fresh {
        id: SessionId,
        stop: Arc<Notify>,
        client_hello: Hello,
    },
    Resume {
        id: SessionId,
        tunnel: Box<Tunnel>,
        peer_received: u64,
    },
}

/// Chooses, inside the handshake, between resuming the client's session and
/// starting a fresh one, and builds the reply Hello.
fn plan(
    sessions: &Sessions,
    cfg: &ServerConfig,
    client: &[u8; 32],
    payload: &[u8],
) -> Result<(Plan, Vec<u8>)> {
    let client_hello = handshake::check_peer_hello(&our_session_config(cfg), payload)?;
    // Before anything else: a replayed first message gets nothing more.
    sessions.check_replay(client, &client_hello)?;
    if let Some(r) = &client_hello.resume {
        let stop = Arc::new(Notify::new());
        let claim = sessions.lock().claim(client, r, stop.clone(), random_id()?);
        match claim {
            Claim::Resume { mut parked, ticket } => {
                parked.set_stop(stop);
                let reply = our_hello(
                    cfg,
                    Resume {
                        session_id: r.session_id,
                        ticket,
                        records_received: parked.records_received(),
                    },
                );
                return Ok((
                    Plan::Resume {
                        id: r.session_id,
                        tunnel: parked,
                        peer_received: r.records_received,
                    },
                    reply.encode(),
                ));
            }
            Claim::Busy(old) => {
                // Its old connection still looks alive to us: make it let
                // go; the client's next attempt finds the session parked.
                old.notify_one();
                bail!("session still attached to an older connection; closing that one, retry");
            }
            Claim::Wait => {
                // The ticket before the current one: the client may have
                // missed the reply that granted the new one. It resumes the
                // session once parked; it never stops a live connection.
                bail!("resume with the previous ticket while the session is attached; retry");
            }
            Claim::Refused(why) => return Err(why.into()),
            Claim::Fresh => {}
        }
    }
    let id = random_id()?;
    let ticket = random_id()?;
    let stop = Arc::new(Notify::new());
    let inserted = sessions.lock().insert(id, ticket, *client, stop.clone());
    sessions.evicted(inserted?);
    let reply = our_hello(
        cfg,
        Resume {
            session_id: id,
            ticket,
            records_received: 0,
        },
    );
    Ok((
        Plan::Fresh {
            id,
            stop,
            client_hello,
        },
        reply.encode(),
    ))
}

/// The host's codec CPU account and the threads bulk units are compressed on.
#[derive(Clone)]
struct Codecs {
    load: Arc<crate::codec_load::CodecLoad>,
    pool: Arc<crate::codec_pool::CodecPool>,
}

// What one connection needs from the server, each from its own owner.
//
// Its future is every idle tunnel's task, so the futures of the ends that
// take a `Tunnel` by value (refusal, revocation, give-up) are boxed: inline
// they made each task 18.9 KB, boxed 2.6 KB (idle RSS per tunnel 30.5 ->
// 12.4 KiB at 2,000 tunnels).
#[allow(clippy::too_many_arguments)]
async fn handle(
    mut sock: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    state: Arc<ServerState>,
    sessions: Sessions,
    relay: Option<SharedStore>,
    logs: &LogLimiter,
    metrics: Arc<Metrics>,
    memory: Arc<crate::memory::MemoryAccount>,
    codecs: Codecs,
) -> Result<()> {
    let cfg = &state.cfg;
    if let Err(e) = tcp::configure_tunnel(&sock, &cfg.tcp) {
        warn_limited!(logs, "sockopt", "tunnel from {peer}: socket options: {e}");
    }
    let mut decided: Option<Plan> = None;
    let mut failed = Failed::default();
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(cfg.session.handshake_timeout_secs);
    let handshake = async {
        let first = Duration::from_millis(cfg.limits.first_message_timeout_ms);
        first_bytes(&sock, first).await?;
        failed.spoke = true;
        let authorized = state.authorized.current();
        let handshake =
            noise::server_handshake(&mut sock, &state.keypair, &authorized, |key, payload| {
                failed.authenticated = true;
                let (p, reply) = plan(&sessions, cfg, key, payload)?;
                decided = Some(p);
                Ok(reply)
            });
        handshake.await
    };
    // The first-message deadline is the shorter one, inside the whole
    // handshake's.
    let handshake = tokio::time::timeout_at(deadline, handshake);
    let outcome = tokio::select! {
        r = handshake => r.unwrap_or_else(|_| Err(anyhow!("handshake timed out"))),
        () = ticket.evicted.notified() => {
            failed.evicted = true;
            Err(anyhow!("dropped for newer connections"))
        }
    };
    let grace = Duration::from_secs(cfg.session.resume_grace_secs);
    let (transport, client_key) = match outcome {
        Ok((transport, key, _)) => {
            // Authenticated: it no longer holds a pending place.
            drop(ticket);
            (transport, key)
        }
        Err(e) => {
            metrics.handshake(Handshake::of_error(&e));
            if e.downcast_ref::<Refusal>().is_some() {
                warn_limited!(logs, "refused-limit", "refused tunnel from {peer}: {e:#}");
            } else if e.downcast_ref::<handshake::ReplayError>().is_some() {
                warn_limited!(logs, "replay", "refused first message from {peer}: {e:#}");
            } else {
                warn_limited!(logs, "rejected", "rejected connection from {peer}: {e:#}");
            }
            // The reply may have been decided but never delivered.
            match decided {
                Some(Plan::Resume { id, tunnel, .. }) => {
                    sessions.park(id, *tunnel, grace, peer.to_string(), false)
                }
                Some(Plan::Fresh { id, .. }) => sessions.remove(&id),
                None => {}
            }
            Box::pin(crate::gate::refuse(
                &mut sock,
                failed,
                deadline,
                &ticket.evicted,
            ))
            .await;
            return Ok(());
        }
    };
    let name = state.client_label(&client_key);
    let label = format!("{peer}/{name}");
    let (id, mut tunnel) = match decided.ok_or_else(|| anyhow!("handshake without a plan"))? {
        Plan::Resume {
            id,
            mut tunnel,
            peer_received,
        } => {
            if let Err(e) = tunnel.resume(transport, peer_received) {
                metrics.handshake(Handshake::BadMessage);
                sessions.remove(&id);
                return Err(e);
            }
            metrics.handshake(Handshake::Resumed);
            info!(tunnel = %label, "tunnel up, session resumed");
            (id, tunnel)
        }
        Plan::Fresh {
            id,
            stop,
            client_hello,
        } => {
            metrics.handshake(Handshake::Ok);
            info!(tunnel = %label, "tunnel up");
            let mut scfg = crate::client::session_config(Role::Server, &cfg.session);
            scfg.peer_stream_window = client_hello.stream_window;
            scfg.recv_budget = cfg.limits.tunnel_buffer_bytes;
            scfg.transform_services = crate::client::transform_services(
                cfg.services.iter().map(|(n, s)| (n, s.protocol)),
            );
            scfg.accounting_services = metrics.accounting_services();
            let session = Session::new(scfg, tokio::time::Instant::now().into_std());
            let dialer = Arc::new(ServiceDialer {
                services: cfg.services.clone(),
                tcp: cfg.tcp.clone(),
                http: cfg.http.clone(),
                smtp_store: relay.map(|r| {
                    let max = cfg.smtp_resume.max_message_bytes;
                    (r, keys::encode_key(&client_key), max)
                }),
                client: Some(ClientPolicy {
                    keys: state.authorized.clone(),
                    key: client_key,
                    label: name.clone(),
                }),
            });
            let stats = Arc::new(TunnelStats::default());
            let mut tunnel = Tunnel::new(transport, session, Some(dialer), stats, label.clone());
            tunnel.set_stop(stop);
            tunnel.set_metrics(metrics.tunnel(&name));
            tunnel.set_memory_account(&memory);
            tunnel.set_codec_load(&codecs.load);
            tunnel.set_codec_pool(&codecs.pool);
            (id, Box::new(tunnel))
        }
    };
    let _connected = metrics.tunnel_up();
    tunnel.set_liveness(crate::client::liveness_config(&cfg.session, &cfg.tcp));
    tunnel.set_link_socket(crate::client::socket_handle(&sock));
    // The server never opens streams of its own.
    let (_tx, mut opens) = mpsc::channel(1);
    let received = tunnel.records_received();
    // Runs while the key stays authorised (a reload may remove it).
    let mut live = state.authorized.register(&client_key);
    let Some(result) = live.unless_revoked(tunnel.run_link(sock, &mut opens)).await else {
        Box::pin(close_revoked(&sessions, id, *tunnel, &label)).await;
        return Ok(());
    };
    // A record from the client on this link: it got the ticket granted here.
    let confirmed = tunnel.records_received() > received;
    let stats = tunnel.stats();
    match result {
        Ok(LinkEnded::Lost(e)) => {
            // With no connections inside (a client's idle hang-up), keeping
            // the session costs only memory and makes the next dial warm.
            let keep = if tunnel.stream_count() == 0 {
                Duration::from_secs(cfg.session.hangup_park_secs).max(grace)
            } else {
                grace
            };
            info!(
                tunnel = %label,
                "link lost, session kept {}s for resume: {}",
                keep.as_secs(),
                crate::client::describe_end(&Err(e), &stats)
            );
            sessions.park(id, *tunnel, keep, label, confirmed);
        }
        Ok(LinkEnded::Idle) => sessions.park(id, *tunnel, grace, label, confirmed),
        Ok(LinkEnded::Stopped) => {
            info!(tunnel = %label, "client reconnected; handing the session over");
            sessions.park(id, *tunnel, grace, label, confirmed);
        }
        Ok(LinkEnded::Closed) => {
            sessions.remove(&id);
            info!(tunnel = %label, "tunnel closed: {}", crate::client::describe_end(&Ok(()), &stats));
        }
        Err(e) => {
            sessions.remove(&id);
            warn!(tunnel = %label, "tunnel failed: {}", crate::client::describe_end(&Err(e), &stats));
            Box::pin(tunnel.give_up(GIVE_UP_LINGER)).await;
        }
    }
    if live.is_revoked() {
        // Removed as the link ended: what was just parked goes too.
        sessions.drop_client(&client_key, &name);
    }
    Ok(())
}

/// Maps service names from OPEN frames to the configured upstreams, and
/// pairs each with the server side of its accelerator.
pub struct ServiceDialer {
    pub services: BTreeMap<String, ServerService>,
    pub tcp: TcpOptions,
    pub http: ServerHttp,
    /// SMTP resume store, the client's identity to key it by, and the
    /// largest body kept.
    pub smtp_store: Option<(SharedStore, String, u64)>,
    /// The client's `authorized_keys` options, read at each stream open.
    pub client: Option<ClientPolicy>,
}

/// Which services a tunnel's client may open, as `authorized_keys` says now:
/// a reload applies to the next stream opened (streams already open stay).
pub struct ClientPolicy {
    pub keys: Arc<KeyRing>,
    pub key: [u8; 32],
    /// What log lines call the client.
    pub label: String,
}

impl ClientPolicy {
    /// `Err` ([`DialRefused`]) if the client may not open `service`.
    pub fn may_open(&self, service: &str) -> std::result::Result<(), DialRefused> {
        let Some((options, line)) = self.keys.options(&self.key) else {
            return Err(DialRefused(format!(
                "service {service:?}: client {} is no longer in authorized_keys",
                self.label
            )));
        };
        if options.allows(service) {
            return Ok(());
        }
        let allowed: Vec<&str> = options
            .services
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        Err(DialRefused(format!(
            "service {service:?} is not allowed for client {} (authorized_keys line {line}: services={})",
            self.label,
            allowed.join(",")
        )))
    }
}

impl ServiceDialer {
    fn http_policy(&self) -> http::HttpPolicy {
        http::HttpPolicy {
            allow_private: self.http.allow_private,
            ..Default::default()
        }
    }
}

impl Dialer for ServiceDialer {
    fn first_data_services(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|(_, s)| s.protocol == Protocol::Http)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn dial(&self, service: &str, first_data: Option<Bytes>) -> DialFuture {
        if let Some(refused) = self.client.as_ref().and_then(|c| c.may_open(service).err()) {
            return Box::pin(async move { Err(refused.into()) });
        }
        let svc = self.services.get(service).cloned();
        let service = service.to_owned();
        let tcp_opts = self.tcp.clone();
        let policy = self.http_policy();
        let http = self.http.clone();
        let smtp_store = self.smtp_store.clone();
        Box::pin(async move {
            let svc = svc.ok_or_else(|| anyhow!("service {service:?} is not configured"))?;
            let (sock, upstream) = if svc.protocol == Protocol::Http {
                crate::origin::dial(first_data.as_deref(), &http, &tcp_opts, DIAL_TIMEOUT).await?
            } else {
                let upstream = svc
                    .upstream
                    .clone()
                    .ok_or_else(|| anyhow!("service {service} has no upstream"))?;
                let connect = tcp::connect_local(&upstream, &tcp_opts);
                let sock = tokio::time::timeout(DIAL_TIMEOUT, connect)
                    .await
                    .map_err(|_| anyhow!("{service}: connecting to {upstream} timed out"))?
                    .with_context(|| format!("service {service}"))?;
                (sock, upstream)
            };
            let sock =
                tokio::time::timeout(DIAL_TIMEOUT, crate::upstream::secure(sock, &svc, &upstream))
                    .await
                    .map_err(|_| anyhow!("{service}: TLS with {upstream} timed out"))?
                    .with_context(|| format!("service {service}"))?;
            let accel = AccelFactory {
                protocol: svc.protocol,
                side: Side::Server {
                    http: policy,
                    smtp_store,
                },
            };
            Ok((sock, accel.make()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use straw_core::wire::PROTOCOL_VERSION;

    fn cfg() -> ServerConfig {
        toml::from_str(
            r#"
listen = "127.0.0.1:1"
private_key = "k"
authorized_keys = "a"
[services]
test = { upstream = "127.0.0.1:2" }
"#,
        )
        .unwrap()
    }

    fn hello(resume: Option<Resume>) -> Vec<u8> {
        Hello {
            version: PROTOCOL_VERSION,
            stream_window: 1000,
            max_record: 1000,
            resume,
            codec_model: Some(handshake::codec_model_id(&our_session_config(&cfg()))),
            timestamp: Some(crate::client::next_timestamp()),
        }
        .encode()
    }

    fn sessions() -> Sessions {
        Sessions::new(&cfg().limits)
    }

    /// Fresh session from a first Hello; returns the resume block granted.
    fn fresh(sessions: &Sessions, key: &[u8; 32]) -> Resume {
        let (p, reply) = plan(sessions, &cfg(), key, &hello(None)).unwrap();
        assert!(matches!(p, Plan::Fresh { .. }));
        Hello::decode(&reply).unwrap().resume.unwrap()
    }

    #[test]
    fn ticket_only_resumes_for_its_own_key() {
        let sessions = sessions();
        let alice = [1u8; 32];
        let mallory = [2u8; 32];
        let granted = fresh(&sessions, &alice);
        assert_eq!(granted.records_received, 0);
        let other = fresh(&sessions, &alice);
        assert_ne!(granted.session_id, other.session_id);
        assert_ne!(granted.ticket, other.ticket);

        // Another authorised key replaying alice's ticket gets a new session.
        let (p, reply) = plan(&sessions, &cfg(), &mallory, &hello(Some(granted.clone()))).unwrap();
        assert!(matches!(p, Plan::Fresh { .. }));
        assert_ne!(
            Hello::decode(&reply).unwrap().resume.unwrap().session_id,
            granted.session_id
        );

        // A wrong ticket, even from alice, too.
        let mut forged = granted.clone();
        forged.ticket[0] ^= 1;
        let (p, _) = plan(&sessions, &cfg(), &alice, &hello(Some(forged))).unwrap();
        assert!(matches!(p, Plan::Fresh { .. }));

        // The right key and ticket while the old connection still runs: that
        // connection is told to stop, and this attempt is refused (retry).
        let stop = sessions
            .lock()
            .running(&granted.session_id)
            .expect("not parked yet")
            .clone();
        assert!(plan(&sessions, &cfg(), &alice, &hello(Some(granted))).is_err());
        let notified = stop.notified();
        tokio::pin!(notified);
        // The permit was stored: the old connection's next poll sees it.
        assert!(
            futures_poll_ready(notified.as_mut()),
            "old connection not told to stop"
        );
    }

    fn futures_poll_ready<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.poll(&mut cx).is_ready()
    }

    #[test]
    fn the_poll_reloads_a_changed_file_once_it_holds_still() {
        let stamp = |n: u64| FileStamp(Some((n, None, 0, 0, 0, 0)));
        let mut poll = FilePoll::new(stamp(1));
        assert!(!poll.look(stamp(1)), "unchanged");
        assert!(!poll.look(stamp(2)), "just changed: maybe half-written");
        assert!(!poll.look(stamp(3)), "still changing");
        assert!(poll.look(stamp(3)), "held still for one look");
        assert!(!poll.look(stamp(3)), "loaded once");
        // Gone (mid-rename): loaded (and refused, keeping the keys) once
        // it stays gone; loaded again when it is back.
        assert!(!poll.look(FileStamp(None)));
        assert!(poll.look(FileStamp(None)));
        assert!(!poll.look(stamp(4)));
        assert!(poll.look(stamp(4)));
        // A change back to the loaded state is nothing to do.
        assert!(!poll.look(stamp(5)));
        assert!(!poll.look(stamp(4)));
        assert!(!poll.look(stamp(4)));
        // SIGHUP loaded it: the poll starts from there.
        poll.loaded(stamp(6));
        assert!(!poll.look(stamp(6)));
    }

    #[test]
    fn a_file_stamp_sees_a_rewrite_and_a_rename() {
        let d = std::env::temp_dir().join(format!("straw-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("f");
        std::fs::write(&p, "one").unwrap();
        let a = FileStamp::of(&p);
        assert!(a.0.is_some());
        assert_eq!(a, FileStamp::of(&p));
        std::fs::write(&p, "two!").unwrap();
        let b = FileStamp::of(&p);
        assert_ne!(a, b, "size and times");
        // Same size, same content, but a new file renamed over it.
        #[cfg(unix)]
        {
            std::fs::write(d.join("g"), "two!").unwrap();
            std::fs::rename(d.join("g"), &p).unwrap();
            assert_ne!(b, FileStamp::of(&p), "inode");
        }
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(FileStamp::of(&p), FileStamp(None));
    }

    #[test]
    fn bad_hellos_are_refused() {
        let sessions = sessions();
        assert!(plan(&sessions, &cfg(), &[1; 32], b"").is_err());
        let mut h = hello(None);
        h[0] = 99;
        assert!(plan(&sessions, &cfg(), &[1; 32], &h).is_err());
        // Another codec model, or none announced: refused with a clear error.
        let ours = handshake::codec_model_id(&our_session_config(&cfg()));
        for model in [None, Some(ours ^ 1)] {
            let h = Hello {
                version: PROTOCOL_VERSION,
                stream_window: 1000,
                max_record: 1000,
                resume: None,
                codec_model: model,
                timestamp: Some(crate::client::next_timestamp()),
            };
            let err = plan(&sessions, &cfg(), &[1; 32], &h.encode())
                .err()
                .unwrap();
            assert!(format!("{err:#}").contains("codec model"), "{err:#}");
        }
        assert!(sessions.lock().is_empty());
        // A Hello without a timestamp (protocol 1 had none) is refused.
        let mut h = Hello::decode(&hello(None)).unwrap();
        h.timestamp = None;
        let err = plan(&sessions, &cfg(), &[1; 32], &h.encode())
            .err()
            .unwrap();
        assert!(
            err.downcast_ref::<handshake::ReplayError>().is_some(),
            "{err:#}"
        );
        assert!(sessions.lock().is_empty());
    }

    #[test]
    fn a_replayed_first_message_starts_no_session() {
        let sessions = sessions();
        let alice = [1u8; 32];
        let captured = hello(None);
        assert!(matches!(
            plan(&sessions, &cfg(), &alice, &captured).unwrap().0,
            Plan::Fresh { .. }
        ));
        for _ in 0..1000 {
            let err = plan(&sessions, &cfg(), &alice, &captured).err().unwrap();
            assert!(format!("{err:#}").contains("not newer"), "{err:#}");
        }
        assert_eq!(sessions.lock().len(), 1, "replays parked sessions");
        // The client's next, newer message is fine.
        fresh(&sessions, &alice);
        assert_eq!(sessions.lock().len(), 2);
    }

    #[test]
    fn a_replayed_resume_message_never_stops_the_live_connection() {
        let sessions = sessions();
        let alice = [1u8; 32];
        let granted = fresh(&sessions, &alice);
        let stop = sessions
            .lock()
            .running(&granted.session_id)
            .unwrap()
            .clone();
        // A resume message while the session runs makes the old connection
        // let go (the client's own, after a link it thinks dead)...
        let captured = hello(Some(granted.clone()));
        assert!(plan(&sessions, &cfg(), &alice, &captured).is_err());
        // ... once: replayed, it is refused before the session is looked up.
        let notified = stop.notified();
        tokio::pin!(notified);
        assert!(futures_poll_ready(notified.as_mut()));
        for _ in 0..100 {
            let err = plan(&sessions, &cfg(), &alice, &captured).err().unwrap();
            assert!(
                err.downcast_ref::<handshake::ReplayError>().is_some(),
                "{err:#}"
            );
        }
        let again = stop.notified();
        tokio::pin!(again);
        assert!(
            !futures_poll_ready(again.as_mut()),
            "a replay stopped it again"
        );
        assert_eq!(sessions.lock().len(), 1);
    }

    #[test]
    fn limits_refuse_past_max_tunnels_and_a_keys_live_sessions() {
        let mut c = cfg();
        c.limits.max_tunnels = 3;
        c.limits.max_sessions_per_key = 2;
        let sessions = Sessions::new(&c.limits);
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        for key in [alice, alice, bob] {
            assert!(matches!(
                plan(&sessions, &c, &key, &hello(None)).unwrap().0,
                Plan::Fresh { .. }
            ));
        }
        let refused = |key: &[u8; 32]| {
            let err = plan(&sessions, &c, key, &hello(None)).err().unwrap();
            *err.downcast_ref::<Refusal>().expect("a limit refusal")
        };
        assert_eq!(refused(&[3u8; 32]), Refusal::Tunnels { max: 3 });
        assert_eq!(refused(&bob), Refusal::Tunnels { max: 3 });
        c.limits.max_tunnels = 10;
        let sessions2 = Sessions::new(&c.limits);
        for _ in 0..2 {
            plan(&sessions2, &c, &alice, &hello(None)).unwrap();
        }
        let err = plan(&sessions2, &c, &alice, &hello(None)).err().unwrap();
        assert_eq!(
            *err.downcast_ref::<Refusal>().unwrap(),
            Refusal::KeySessions { max: 2 }
        );
        assert_eq!(sessions.lock().running_count(), 3);
        assert_eq!(sessions2.lock().sessions_of(&alice), 2);
    }
}
