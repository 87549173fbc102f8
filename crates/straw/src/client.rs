//! `straw client`: listens for the mail program and browser, and carries their
//! connections to the server over one tunnel, redialling when it drops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use straw_core::session::{Role, Session, SessionConfig};
use straw_core::wire::{Hello, PROTOCOL_VERSION, Resume};
use straw_proto::partial::SharedStore;
use straw_proto::passthrough::Passthrough;
use straw_proto::{Accelerator, http, imap, pop3, smtp};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cache;
use crate::config::{ClientConfig, Dial, Protocol, SessionOptions, TcpOptions};
use crate::link::keys::{self, Keypair};
use crate::link::{noise, tcp};
use crate::partial::FileStore;
use crate::tunnel::{LinkEnded, LivenessConfig, OpenRequest, SharedCache, Tunnel, TunnelStats};

/// How long the local connections of a given-up tunnel get to hear why.
const GIVE_UP_LINGER: Duration = Duration::from_secs(5);

/// Session parameters from the config file.
pub fn session_config(role: Role, o: &SessionOptions) -> SessionConfig {
    let mut c = SessionConfig::new(role);
    c.initial_rate = o.initial_rate_bps as f64 / 8.0;
    c.inflight_secs = o.inflight_secs;
    c.record_secs = o.record_secs;
    c.stream_window = o.stream_window;
    c.max_streams = o.max_streams;
    c.codec_idle_reset = Duration::from_secs(o.codec_idle_reset_secs);
    set_codec(&mut c, role, LinkCodec::Cm);
    c
}

/// Dead-link detection settings from the config file.
pub fn liveness_config(s: &SessionOptions, t: &TcpOptions) -> LivenessConfig {
    LivenessConfig {
        min_dead: Duration::from_secs_f64(s.dead_after_min_secs.clamp(0.0, 86_400.0)),
        idle_probe: Duration::from_secs(s.idle_ping_secs),
        user_timeout_max: Duration::from_millis(t.user_timeout_ms.into()),
    }
}

/// A second handle on the tunnel socket, for tuning its options later.
pub fn socket_handle(sock: &tokio::net::TcpStream) -> Option<socket2::Socket> {
    socket2::SockRef::from(sock).try_clone().ok()
}

/// Services whose outgoing data takes the base64 transform: mail and HTTP
/// carry base64 attachments; plain TCP streams are left alone.
pub fn transform_services<'a>(
    services: impl Iterator<Item = (&'a String, Protocol)>,
) -> Vec<Vec<u8>> {
    services
        .filter(|(_, p)| *p != Protocol::Tcp)
        .map(|(name, _)| name.clone().into_bytes())
        .collect()
}

/// Which codec family a tunnel's records use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCodec {
    /// zstd: interactive records in a small default context; bulk in a
    /// 512 KiB window primed with the shipped MAIL_V1 dictionary.
    Zstd,
    /// Context mixing for both lanes, primed with the shipped mail text,
    /// sized per direction and lane (docs/codec.md).
    Cm,
}

/// Sets the codec of both lanes for `role`'s side of the tunnel.
pub fn set_codec(c: &mut SessionConfig, role: Role, codec: LinkCodec) {
    use straw_core::codec::{CodecId, CodecParams, DecoderLimits, Direction, Lane};
    match codec {
        LinkCodec::Zstd => {
            c.codec = CodecId::Zstd;
            c.codec_params = CodecParams::default();
            c.decoder_limits = DecoderLimits::default();
            let mut bulk = CodecParams::slow_link();
            bulk.window_log = 19;
            (bulk.hash_log, bulk.chain_log) = CodecParams::tables_for_window(19);
            c.bulk_codec_params = bulk;
            c.bulk_decoder_limits = DecoderLimits {
                max_window_log: 19,
                ..DecoderLimits::slow_link()
            };
        }
        LinkCodec::Cm => {
            let (send, recv) = match role {
                Role::Client => (Direction::ClientToServer, Direction::ServerToClient),
                Role::Server => (Direction::ServerToClient, Direction::ClientToServer),
            };
            c.codec = CodecId::Cm;
            c.codec_params = CodecParams::slow_link_cm(send, Lane::Interactive);
            c.decoder_limits = DecoderLimits::slow_link_cm(recv, Lane::Interactive);
            c.bulk_codec_params = CodecParams::slow_link_cm(send, Lane::Bulk);
            c.bulk_decoder_limits = DecoderLimits::slow_link_cm(recv, Lane::Bulk);
        }
    }
}

/// The codec model id this side announces in its Hello: both peers must
/// have the same CM model (algorithm, priming text, sizes per direction).
pub fn codec_model_id(c: &SessionConfig) -> u32 {
    let (sent, received) = (
        [c.codec_params.cm, c.bulk_codec_params.cm],
        [c.decoder_limits.cm, c.bulk_decoder_limits.cm],
    );
    let (c2s, s2c) = match c.role {
        Role::Client => (sent, received),
        Role::Server => (received, sent),
    };
    straw_core::codec::model_id(&[c2s[0], c2s[1], s2c[0], s2c[1]])
}

/// Primes the CM models of `role`'s config in the background, so the first
/// record of a tunnel does not wait for it.
pub fn warm_up_codec(role: Role, o: &SessionOptions) {
    let c = session_config(role, o);
    // Small (interactive) contexts first: a tunnel's first records use them,
    // and priming the big bulk context takes seconds.
    let cms = [
        c.codec_params.cm,
        c.decoder_limits.cm,
        c.bulk_codec_params.cm,
        c.bulk_decoder_limits.cm,
    ];
    std::thread::spawn(move || {
        for cm in cms.into_iter().flatten() {
            if let Err(e) = cm.warm_up() {
                warn!("codec warm-up: {e}");
            }
        }
    });
}

/// Refuses a peer whose codec model differs from ours.
pub fn check_codec_model(ours: u32, theirs: Option<u32>) -> Result<()> {
    match theirs {
        Some(id) if id == ours => Ok(()),
        Some(id) => bail!(
            "peer's codec model {id:08x} differs from ours {ours:08x}: run the same straw version on both ends"
        ),
        None => bail!("peer announced no codec model (older straw?); ours is {ours:08x}"),
    }
}

/// One line for the log when a tunnel ends.
pub fn describe_end(result: &Result<()>, stats: &TunnelStats) -> String {
    let how = match result {
        Ok(()) => "closed".to_owned(),
        Err(e) => format!("{e:#}"),
    };
    format!(
        "{how}; sent {} raw / {} wire bytes, received {} raw / {} wire bytes",
        stats.raw_bytes_sent.load(Ordering::Relaxed),
        stats.wire_bytes_sent.load(Ordering::Relaxed),
        stats.raw_bytes_received.load(Ordering::Relaxed),
        stats.wire_bytes_received.load(Ordering::Relaxed),
    )
}

pub async fn run(cfg: ClientConfig) -> Result<()> {
    run_with_stats(cfg, Arc::new(TunnelStats::default())).await
}

/// Runs the client; `stats` is updated live (tests read the backpressure bound from it).
pub async fn run_with_stats(cfg: ClientConfig, stats: Arc<TunnelStats>) -> Result<()> {
    warm_up_codec(Role::Client, &cfg.session);
    let keypair = keys::load_private(&cfg.private_key)?;
    let server_key = keys::load_public(&cfg.server_public_key)?;
    let (open_tx, mut opens) = mpsc::channel::<OpenRequest>(64);
    let partials = open_partials(&cfg);
    let cache_dir = cfg.cache.dir();
    let mut warm_ups = Vec::new();
    for svc in &cfg.services {
        let listener = tcp::bind_local_listener(svc.listen, &cfg.tcp)
            .with_context(|| format!("service {}: cannot listen on {}", svc.name, svc.listen))?;
        info!(
            "service {} ({:?}) on {}",
            svc.name, svc.protocol, svc.listen
        );
        let cache = match &cache_dir {
            Some(dir) => {
                let c = SharedCache::new(std::sync::Mutex::new(cache::load(dir, &svc.name)));
                tokio::spawn(cache::keep_saved(dir.clone(), svc.name.clone(), c.clone()));
                c
            }
            None => SharedCache::default(),
        };
        let factory = AccelFactory {
            protocol: svc.protocol,
            cfg: cfg.clone(),
            cache,
            partials: partials.as_ref().map(|p| p.for_service(&svc.name)),
        };
        if cfg.cache.warm_up {
            warm_ups.push((svc.name.clone(), factory.clone()));
        }
        tokio::spawn(accept_loop(
            listener,
            svc.name.clone(),
            factory,
            open_tx.clone(),
            cfg.tcp.clone(),
        ));
    }
    drop(open_tx);
    let min_backoff = Duration::from_millis(cfg.session.reconnect_min_ms.max(1));
    let max_backoff = Duration::from_millis(cfg.session.reconnect_max_ms).max(min_backoff);
    let grace = Duration::from_secs(cfg.session.resume_grace_secs);
    let mut backoff = min_backoff;
    // The session that outlives a dropped link, with what resumes it.
    let mut kept: Option<(Tunnel, Resume)> = None;
    let mut down_since: Option<tokio::time::Instant> = None;
    let on_demand = cfg.link.dial == Dial::OnDemand;
    let idle_hangup = (on_demand && cfg.link.idle_hangup_secs > 0)
        .then(|| Duration::from_secs(cfg.link.idle_hangup_secs));
    let hook_timeout = Duration::from_secs(cfg.link.command_timeout_secs.max(1));
    // Dial on demand: the connection that made us dial, attached once up.
    let mut pending: Option<OpenRequest> = None;
    loop {
        if on_demand
            && pending.is_none()
            && kept.as_ref().is_none_or(|(t, _)| t.stream_count() == 0)
        {
            match opens.recv().await {
                Some(r) => pending = Some(r),
                None => return Ok(()),
            }
        }
        if let Some(cmd) = &cfg.link.on_dial
            && let Err(e) = run_hook("on_dial", cmd, hook_timeout).await
        {
            warn!("not dialling: {e:#}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max_backoff);
            continue;
        }
        let grace_end = down_since.map(|t| t + grace);
        if kept.is_some() && grace_end.is_some_and(|t| tokio::time::Instant::now() >= t) {
            let (t, _) = kept.take().expect("checked");
            warn!(
                "no tunnel for {}s: giving up the session, closing {} local connections",
                grace.as_secs(),
                t.stream_count()
            );
            t.give_up(GIVE_UP_LINGER).await;
        }
        let resume = kept.as_ref().map(|(t, r)| Resume {
            records_received: t.records_received(),
            ..r.clone()
        });
        // While a session waits, its grace period bounds each attempt.
        let deadline = grace_end.filter(|_| kept.is_some());
        let attempt = tokio::select! {
            r = connect(&cfg, &keypair, &server_key, resume) => Some(r),
            _ = sleep_until_opt(deadline) => None,
        };
        let Some(attempt) = attempt else { continue };
        match attempt {
            Ok((sock, transport, hello)) => {
                backoff = min_backoff;
                let Some(granted) = hello.resume.clone() else {
                    // A server without resume: never keep a session for it.
                    warn!("server sent no session ticket; connections won't survive a drop");
                    if let Some((t, _)) = kept.take() {
                        t.give_up(GIVE_UP_LINGER).await;
                    }
                    let mut tunnel = new_tunnel(&cfg, transport, &hello, &stats);
                    tunnel.set_link_socket(socket_handle(&sock));
                    let trigger = pending.as_ref().map(|r| r.service.clone());
                    if let Some(r) = pending.take() {
                        tunnel.attach(r);
                    }
                    attach_warm_ups(&mut tunnel, &warm_ups, trigger.as_deref());
                    let result = match tunnel.run_link(sock, &mut opens).await {
                        Ok(LinkEnded::Closed | LinkEnded::Idle) => Ok(()),
                        Ok(LinkEnded::Lost(e)) => Err(e),
                        Ok(LinkEnded::Stopped) => Err(anyhow!("stopped")),
                        Err(e) => Err(e),
                    };
                    warn!(
                        "tunnel to {} down: {}",
                        cfg.server,
                        describe_end(&result, &stats)
                    );
                    tunnel.give_up(GIVE_UP_LINGER).await;
                    down_since = None;
                    tokio::time::sleep(backoff).await;
                    continue;
                };
                let mut tunnel = match kept.take() {
                    Some((mut t, old)) if old.session_id == granted.session_id => {
                        match t.resume(transport, granted.records_received) {
                            Ok(()) => {
                                info!("tunnel to {} up, session resumed", cfg.server);
                                t
                            }
                            Err(e) => {
                                // Can't happen with an honest server; the
                                // connection's keys are spent, so redial.
                                warn!("tunnel to {}: {e:#}; closing local connections", cfg.server);
                                t.give_up(GIVE_UP_LINGER).await;
                                down_since = None;
                                tokio::time::sleep(backoff).await;
                                continue;
                            }
                        }
                    }
                    old => {
                        if let Some((t, _)) = old {
                            warn!(
                                "server no longer has our session: closing {} local connections",
                                t.stream_count()
                            );
                            t.give_up(GIVE_UP_LINGER).await;
                        }
                        info!("tunnel to {} up", cfg.server);
                        new_tunnel(&cfg, transport, &hello, &stats)
                    }
                };
                down_since = None;
                tunnel.set_link_socket(socket_handle(&sock));
                tunnel.set_idle_hangup(idle_hangup);
                let trigger = pending.as_ref().map(|r| r.service.clone());
                if let Some(r) = pending.take() {
                    tunnel.attach(r);
                }
                attach_warm_ups(&mut tunnel, &warm_ups, trigger.as_deref());
                let call = Call::start(&stats);
                let ended = tunnel.run_link(sock, &mut opens).await;
                call.report(&stats, cfg.link.cost_per_minute);
                if let Some(cmd) = &cfg.link.on_hangup
                    && let Err(e) = run_hook("on_hangup", cmd, hook_timeout).await
                {
                    warn!("{e:#}");
                }
                match ended {
                    Ok(LinkEnded::Idle) => {
                        info!(
                            "idle for {}s: hung up, session parked for the next dial",
                            cfg.link.idle_hangup_secs
                        );
                        kept = Some((tunnel, granted));
                        down_since = None;
                        backoff = min_backoff;
                        continue;
                    }
                    Ok(LinkEnded::Lost(e)) if on_demand && tunnel.stream_count() == 0 => {
                        info!("link dropped with nothing in it: {e:#}; redial on demand");
                        kept = Some((tunnel, granted));
                        down_since = None;
                        continue;
                    }
                    Ok(LinkEnded::Lost(e)) => {
                        warn!(
                            "tunnel to {} down, keeping {} local connections for {}s: {}",
                            cfg.server,
                            tunnel.stream_count(),
                            grace.as_secs(),
                            describe_end(&Err(e), &stats)
                        );
                        kept = Some((tunnel, granted));
                        down_since = Some(tokio::time::Instant::now());
                    }
                    Ok(LinkEnded::Stopped) => {
                        kept = Some((tunnel, granted));
                        down_since = Some(tokio::time::Instant::now());
                    }
                    Ok(LinkEnded::Closed) => {
                        info!(
                            "tunnel to {} closed: {}",
                            cfg.server,
                            describe_end(&Ok(()), &stats)
                        );
                    }
                    Err(e) => {
                        warn!(
                            "tunnel to {} failed, closing local connections: {}",
                            cfg.server,
                            describe_end(&Err(e), &stats)
                        );
                        tunnel.give_up(GIVE_UP_LINGER).await;
                    }
                }
            }
            Err(e) => warn!("cannot open tunnel to {}: {e:#}", cfg.server),
        }
        let wake = tokio::time::Instant::now() + backoff;
        let deadline = down_since.map(|t| t + grace).filter(|_| kept.is_some());
        tokio::time::sleep_until(deadline.map_or(wake, |d| d.min(wake))).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// One dial-up: for the log line (and cost) at hang-up.
struct Call {
    start: tokio::time::Instant,
    sent: u64,
    received: u64,
}

impl Call {
    fn start(stats: &TunnelStats) -> Self {
        stats.dials.fetch_add(1, Ordering::Relaxed);
        Self {
            start: tokio::time::Instant::now(),
            sent: stats.wire_bytes_sent.load(Ordering::Relaxed),
            received: stats.wire_bytes_received.load(Ordering::Relaxed),
        }
    }

    /// Billed per started minute, as satellite airtime usually is.
    fn report(&self, stats: &TunnelStats, cost_per_minute: f64) {
        let secs = self.start.elapsed().as_secs_f64();
        let minutes = (secs / 60.0).ceil().max(1.0);
        info!(
            "dial-up ended: connected {secs:.1} s, {} bytes up, {} bytes down, cost {:.2} ({minutes} started minutes at {cost_per_minute:.2})",
            stats.wire_bytes_sent.load(Ordering::Relaxed) - self.sent,
            stats.wire_bytes_received.load(Ordering::Relaxed) - self.received,
            minutes * cost_per_minute,
        );
    }
}

/// Runs a hook with `sh -c`; an error if it fails or takes too long.
async fn run_hook(name: &str, cmd: &str, timeout: Duration) -> Result<()> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("{name}: cannot run {cmd:?}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => bail!("{name} {cmd:?} failed: {st}"),
        Ok(Err(e)) => bail!("{name} {cmd:?}: {e}"),
        Err(_) => bail!("{name} {cmd:?} timed out after {}s", timeout.as_secs()),
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn new_tunnel(
    cfg: &ClientConfig,
    transport: noise::Transport,
    hello: &Hello,
    stats: &Arc<TunnelStats>,
) -> Tunnel {
    let mut scfg = session_config(Role::Client, &cfg.session);
    scfg.peer_stream_window = hello.stream_window;
    scfg.transform_services =
        transform_services(cfg.services.iter().map(|s| (&s.name, s.protocol)));
    let session = Session::new(scfg, tokio::time::Instant::now().into_std());
    let mut t = Tunnel::new(transport, session, None, stats.clone(), cfg.server.clone());
    t.set_liveness(liveness_config(&cfg.session, &cfg.tcp));
    t
}

async fn connect(
    cfg: &ClientConfig,
    keypair: &Keypair,
    server_key: &[u8; 32],
    resume: Option<Resume>,
) -> Result<(tokio::net::TcpStream, noise::Transport, Hello)> {
    let mut sock = tcp::connect_tunnel(&cfg.server, &cfg.tcp).await?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        stream_window: cfg.session.stream_window,
        max_record: straw_core::codec::DecoderLimits::default().max_record_bytes as u64,
        resume,
        codec_model: Some(codec_model_id(&session_config(Role::Client, &cfg.session))),
    };
    let (transport, payload) = tokio::time::timeout(
        Duration::from_secs(cfg.session.handshake_timeout_secs),
        noise::client_handshake(&mut sock, keypair, server_key, &hello.encode()),
    )
    .await
    .map_err(|_| anyhow!("handshake timed out"))??;
    let server_hello = Hello::decode(&payload).map_err(|e| anyhow!("bad server hello: {e}"))?;
    if server_hello.version != PROTOCOL_VERSION {
        bail!(
            "server speaks protocol {}, we speak {PROTOCOL_VERSION}",
            server_hello.version
        );
    }
    check_codec_model(
        codec_model_id(&session_config(Role::Client, &cfg.session)),
        server_hello.codec_model,
    )?;
    Ok((sock, transport, server_hello))
}

/// Opens a warm-up connection ([`cache::warm_up`]) for each mail service
/// whose cache lacks something, except `trigger`'s: the program connection
/// that made us dial fills that one itself.
fn attach_warm_ups(
    tunnel: &mut Tunnel,
    services: &[(String, AccelFactory)],
    trigger: Option<&str>,
) {
    for (name, f) in services {
        if Some(name.as_str()) == trigger
            || !cache::needs_warm_up(f.protocol, &f.cache.lock().expect("cache lock"))
        {
            continue;
        }
        let (ours, program) = tokio::io::duplex(16 * 1024);
        tunnel.attach(OpenRequest {
            service: name.clone(),
            io: Box::new(ours),
            accel: f.make(),
            cache: Some(f.cache.clone()),
            warm_up: true,
        });
        tokio::spawn(cache::warm_up(f.protocol, name.clone(), program));
    }
}

/// Makes the client side of a service's accelerator pair, handing it what
/// earlier connections cached (greetings, capabilities).
#[derive(Clone)]
struct AccelFactory {
    protocol: Protocol,
    cfg: ClientConfig,
    cache: SharedCache,
    partials: Option<SharedStore>,
}

/// The store of interrupted transfers, if enabled and usable (a store that
/// can't be opened only costs full transfers: warn and go on).
fn open_partials(cfg: &ClientConfig) -> Option<Arc<FileStore>> {
    if !cfg.partial.enabled {
        return None;
    }
    let Some(dir) = cfg.partial.dir() else {
        warn!("no [partial] dir and no HOME: interrupted messages will be fetched whole again");
        return None;
    };
    match FileStore::open(&dir, cfg.partial.max_bytes) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            warn!(
                "partial store {}: {e}; interrupted messages will be fetched whole again",
                dir.display()
            );
            None
        }
    }
}

impl AccelFactory {
    fn make(&self) -> Box<dyn Accelerator> {
        let cache = self.cache.lock().expect("cache lock").clone();
        match self.protocol {
            Protocol::Tcp => Box::new(Passthrough::default()),
            Protocol::Pop3 => {
                let a = pop3::ClientAccel::new(
                    pop3::Pop3Config {
                        prefetch: self.cfg.pop3.prefetch,
                        prefetch_retr_max_bytes: self.cfg.pop3.prefetch_retr_max_bytes,
                    },
                    &cache,
                );
                match &self.partials {
                    Some(p) => Box::new(a.with_store(p.clone())),
                    None => Box::new(a),
                }
            }
            Protocol::Smtp => {
                let a = smtp::ClientAccel::new(&cache);
                match &self.partials {
                    Some(p) => Box::new(a.with_store(p.clone())),
                    None => Box::new(a),
                }
            }
            Protocol::Imap => {
                let a = imap::ClientAccel::new(&cache);
                match &self.partials {
                    Some(p) => Box::new(a.with_store(p.clone())),
                    None => Box::new(a),
                }
            }
            Protocol::Http => Box::new(http::ClientAccel::new(http::HttpPolicy {
                blocked_hosts: self.cfg.http.blocked_hosts.clone(),
                ..Default::default()
            })),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: String,
    accel: AccelFactory,
    opens: mpsc::Sender<OpenRequest>,
    tcp_opts: TcpOptions,
) {
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("service {service}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp::configure_local(&sock, &tcp_opts);
        let req = OpenRequest {
            service: service.clone(),
            io: Box::new(sock),
            accel: accel.make(),
            cache: Some(accel.cache.clone()),
            warm_up: false,
        };
        if opens.send(req).await.is_err() {
            return;
        }
    }
}
