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
use straw_tunnel::resume::{Claim, ResumeTable, SessionId};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::accel::{AccelFactory, Side};
use crate::config::{Protocol, ServerConfig, ServerHttp, ServerService, TcpOptions};
use crate::gate::{Evicted, Gate, LogLimiter, Ticket};
use crate::link::keys::{self, AuthorizedKeys, Keypair};
use crate::link::{noise, tcp};
use crate::tunnel::{DialFuture, Dialer, LinkEnded, Tunnel, TunnelStats};
use crate::warn_limited;

/// How long upstream connections of a dropped session get to be closed politely.
const GIVE_UP_LINGER: Duration = Duration::from_secs(5);

/// How long dialing a real server may take before the stream is reset.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServerState {
    pub cfg: ServerConfig,
    pub keypair: Keypair,
    pub authorized: AuthorizedKeys,
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
    let authorized = AuthorizedKeys::load(&cfg.authorized_keys)?;
    if authorized.has_example_key() {
        let what = format!(
            "{}: holds a published example client key, so anyone can connect",
            cfg.authorized_keys.display()
        );
        if !cfg.allow_insecure_keys {
            bail!("{what}; refusing it (allow_insecure_keys = true overrides, for demos only)");
        }
        warn!("INSECURE: {what}; accepted because allow_insecure_keys = true");
    }
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
    info!(
        "straw server listening on {} ({} authorised clients, services: {})",
        cfg.listen,
        authorized.len(),
        cfg.services.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    serve_with_relay(
        listener,
        Arc::new(ServerState {
            cfg,
            keypair,
            authorized,
        }),
        relay,
    )
    .await
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
    let sessions = Sessions::default();
    let limits = &state.cfg.limits;
    let gate = Gate::new(limits.max_pending_handshakes, limits.max_pending_per_ip);
    let logs = Arc::new(LogLimiter::new(Duration::from_secs(
        limits.log_interval_secs,
    )));
    let memory = crate::memory::MemoryAccount::new(
        limits.total_buffer_bytes,
        Duration::from_secs(limits.log_interval_secs),
    );
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
        let memory = memory.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sock, peer, ticket, state, sessions, relay, &logs, memory).await
            {
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
#[derive(Clone, Default)]
struct Sessions(Arc<std::sync::Mutex<ResumeTable<Box<Tunnel>, Arc<Notify>>>>);

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, ResumeTable<Box<Tunnel>, Arc<Notify>>> {
        // A panic elsewhere can't leave the table inconsistent: keep serving.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a tunnel whose link dropped aside for `grace`, then drops it
    /// (closing its upstream connections) unless a client took it back.
    fn park(&self, id: SessionId, tunnel: Tunnel, grace: Duration, label: String) {
        let Some(parks) = self.lock().park(&id, Box::new(tunnel)) else {
            return;
        };
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
    if let Some(r) = &client_hello.resume {
        let stop = Arc::new(Notify::new());
        let claim = sessions.lock().claim(client, r, stop.clone());
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
            Claim::Fresh => {}
        }
    }
    let id = random_id()?;
    let ticket = random_id()?;
    let stop = Arc::new(Notify::new());
    sessions.lock().insert(id, ticket, *client, stop.clone());
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

// What one connection needs from the server, each from its own owner.
#[allow(clippy::too_many_arguments)]
async fn handle(
    mut sock: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    state: Arc<ServerState>,
    sessions: Sessions,
    relay: Option<SharedStore>,
    logs: &LogLimiter,
    memory: Arc<crate::memory::MemoryAccount>,
) -> Result<()> {
    let cfg = &state.cfg;
    if let Err(e) = tcp::configure_tunnel(&sock, &cfg.tcp) {
        warn_limited!(logs, "sockopt", "tunnel from {peer}: socket options: {e}");
    }
    let mut decided: Option<Plan> = None;
    let handshake = async {
        let first = Duration::from_millis(cfg.limits.first_message_timeout_ms);
        first_bytes(&sock, first).await?;
        let handshake = noise::server_handshake(
            &mut sock,
            &state.keypair,
            &state.authorized,
            |key, payload| {
                let (p, reply) = plan(&sessions, cfg, key, payload)?;
                decided = Some(p);
                Ok(reply)
            },
        );
        handshake.await
    };
    // The first-message deadline is the shorter one, inside the whole
    // handshake's.
    let handshake = tokio::time::timeout(
        Duration::from_secs(cfg.session.handshake_timeout_secs),
        handshake,
    );
    let outcome = tokio::select! {
        r = handshake => r.unwrap_or_else(|_| Err(anyhow!("handshake timed out"))),
        () = ticket.evicted.notified() => Err(anyhow!("dropped for newer connections")),
    };
    // Authenticated or not, it no longer holds a pending place.
    drop(ticket);
    let grace = Duration::from_secs(cfg.session.resume_grace_secs);
    let (transport, client_key) = match outcome {
        Ok((transport, key, _)) => (transport, key),
        Err(e) => {
            warn_limited!(logs, "rejected", "rejected connection from {peer}: {e:#}");
            // The reply may have been decided but never delivered.
            match decided {
                Some(Plan::Resume { id, tunnel, .. }) => {
                    sessions.park(id, *tunnel, grace, peer.to_string())
                }
                Some(Plan::Fresh { id, .. }) => sessions.remove(&id),
                None => {}
            }
            return Ok(());
        }
    };
    let label = format!("{peer}/{}", &keys::encode_key(&client_key)[..8]);
    let (id, mut tunnel) = match decided.ok_or_else(|| anyhow!("handshake without a plan"))? {
        Plan::Resume {
            id,
            mut tunnel,
            peer_received,
        } => {
            if let Err(e) = tunnel.resume(transport, peer_received) {
                sessions.remove(&id);
                return Err(e);
            }
            info!(tunnel = %label, "tunnel up, session resumed");
            (id, tunnel)
        }
        Plan::Fresh {
            id,
            stop,
            client_hello,
        } => {
            info!(tunnel = %label, "tunnel up");
            let mut scfg = crate::client::session_config(Role::Server, &cfg.session);
            scfg.peer_stream_window = client_hello.stream_window;
            scfg.recv_budget = cfg.limits.tunnel_buffer_bytes;
            scfg.transform_services = crate::client::transform_services(
                cfg.services.iter().map(|(n, s)| (n, s.protocol)),
            );
            let session = Session::new(scfg, tokio::time::Instant::now().into_std());
            let dialer = Arc::new(ServiceDialer {
                services: cfg.services.clone(),
                tcp: cfg.tcp.clone(),
                http: cfg.http.clone(),
                smtp_store: relay.map(|r| {
                    let max = cfg.smtp_resume.max_message_bytes;
                    (r, keys::encode_key(&client_key), max)
                }),
            });
            let stats = Arc::new(TunnelStats::default());
            let mut tunnel = Tunnel::new(transport, session, Some(dialer), stats, label.clone());
            tunnel.set_stop(stop);
            tunnel.set_memory_account(&memory);
            (id, Box::new(tunnel))
        }
    };
    tunnel.set_liveness(crate::client::liveness_config(&cfg.session, &cfg.tcp));
    tunnel.set_link_socket(crate::client::socket_handle(&sock));
    // The server never opens streams of its own.
    let (_tx, mut opens) = mpsc::channel(1);
    let result = tunnel.run_link(sock, &mut opens).await;
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
            sessions.park(id, *tunnel, keep, label);
        }
        Ok(LinkEnded::Idle) => sessions.park(id, *tunnel, grace, label),
        Ok(LinkEnded::Stopped) => {
            info!(tunnel = %label, "client reconnected; handing the session over");
            sessions.park(id, *tunnel, grace, label);
        }
        Ok(LinkEnded::Closed) => {
            sessions.remove(&id);
            info!(tunnel = %label, "tunnel closed: {}", crate::client::describe_end(&Ok(()), &stats));
        }
        Err(e) => {
            sessions.remove(&id);
            warn!(tunnel = %label, "tunnel failed: {}", crate::client::describe_end(&Err(e), &stats));
            tunnel.give_up(GIVE_UP_LINGER).await;
        }
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
        let svc = self.services.get(service).cloned();
        let service = service.to_owned();
        let tcp_opts = self.tcp.clone();
        let policy = self.http_policy();
        let smtp_store = self.smtp_store.clone();
        Box::pin(async move {
            let svc = svc.ok_or_else(|| anyhow!("service {service:?} is not configured"))?;
            let upstream = match svc.protocol {
                Protocol::Http => http_origin(first_data.as_deref(), &policy).await?,
                _ => svc
                    .upstream
                    .clone()
                    .ok_or_else(|| anyhow!("service {service} has no upstream"))?,
            };
            let sock = tokio::time::timeout(DIAL_TIMEOUT, tcp::connect_local(&upstream, &tcp_opts))
                .await
                .map_err(|_| anyhow!("{service}: connecting to {upstream} timed out"))?
                .with_context(|| format!("service {service}"))?;
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

/// The origin an HTTP proxy stream's first request names, checked against
/// the SSRF policy after DNS resolution (a name may point anywhere).
async fn http_origin(first: Option<&[u8]>, policy: &http::HttpPolicy) -> Result<String> {
    let first = first.ok_or_else(|| anyhow!("http: stream ended before a request"))?;
    let (host, port) =
        http::parse_target(first).ok_or_else(|| anyhow!("http: no absolute-URI request"))?;
    let target = format!("{host}:{port}");
    if !policy.allow_private {
        for addr in tokio::net::lookup_host(&target)
            .await
            .with_context(|| format!("resolving {target}"))?
        {
            if http::is_private_ip(addr.ip()) {
                bail!("http: {target} resolves to private address {}", addr.ip());
            }
        }
    }
    Ok(target)
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
        }
        .encode()
    }

    /// Fresh session from a first Hello; returns the resume block granted.
    fn fresh(sessions: &Sessions, key: &[u8; 32]) -> Resume {
        let (p, reply) = plan(sessions, &cfg(), key, &hello(None)).unwrap();
        assert!(matches!(p, Plan::Fresh { .. }));
        Hello::decode(&reply).unwrap().resume.unwrap()
    }

    #[test]
    fn ticket_only_resumes_for_its_own_key() {
        let sessions = Sessions::default();
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
    fn bad_hellos_are_refused() {
        let sessions = Sessions::default();
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
            };
            let err = plan(&sessions, &cfg(), &[1; 32], &h.encode())
                .err()
                .unwrap();
            assert!(format!("{err:#}").contains("codec model"), "{err:#}");
        }
        assert!(sessions.lock().is_empty());
    }
}
