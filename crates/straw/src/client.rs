//! `straw client`: listens for the mail program and browser, and carries their
//! connections to the server over one tunnel, redialling when it drops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use straw_core::session::{Role, Session, SessionConfig};
use straw_core::wire::{Hello, Resume};
use straw_proto::partial::SharedStore;
use straw_proto::{http, imap, pop3};
use straw_tunnel::handshake::{
    ResumePlan, Timestamps, check_peer_hello, client_hello, plan_client_resume, unix_nanos,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::accel::{AccelFactory, Side};
use crate::cache;
use crate::config::{ClientConfig, Dial, Protocol, SessionOptions, TcpOptions};
use crate::link::keys::{self, Keypair};
use crate::link::{noise, tcp};
use crate::partial::FileStore;
use crate::status::Board;
use crate::tunnel::{
    LinkEnded, LivenessConfig, OpenRequest, SharedCache, Tunnel, TunnelStats, sleep_until_opt,
};

pub use straw_tunnel::handshake::{LinkCodec, check_codec_model, codec_model_id, set_codec};

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
        user_timeout_min: crate::link::tcp::keepalive_cycle(t),
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
    let keypair = keys::load_private_checked(&cfg.private_key, cfg.allow_insecure_keys)?;
    let server_key = keys::load_public(&cfg.server_public_key)?;
    let (open_tx, opens) = mpsc::channel::<OpenRequest>(64);
    let holds = open_holds(&cfg)?;
    let warm_ups = listen(&cfg, open_tx, holds.as_ref(), &stats)?;
    let board = Arc::new(
        Board::new(
            cfg.server.clone(),
            cfg.link.cost_per_minute,
            cfg.session.initial_rate_bps as f64 / 8.0,
            stats.clone(),
            now(),
        )
        .with_budget(cfg.link.budget_per_call),
    );
    if let Some(h) = holds {
        board.set_holds(h);
    }
    // Removes the socket when the client returns.
    let _control = start_control(&cfg, &board);
    // The status page, if enabled; stops when the client returns. Like the
    // control socket, a page that can't listen doesn't stop the mail.
    let _web = match cfg.web.enabled {
        true => crate::web::serve(cfg.web.listen, board.clone())
            .await
            .inspect_err(|e| warn!("status page: {e:#}; carrying on without it"))
            .ok(),
        false => None,
    };
    let min_backoff = Duration::from_millis(cfg.session.reconnect_min_ms.max(1));
    let mut c = Redialer {
        max_backoff: Duration::from_millis(cfg.session.reconnect_max_ms).max(min_backoff),
        min_backoff,
        backoff: min_backoff,
        grace: Duration::from_secs(cfg.session.resume_grace_secs),
        on_demand: cfg.link.dial == Dial::OnDemand,
        hook_timeout: Duration::from_secs(cfg.link.command_timeout_secs.max(1)),
        kept: None,
        down_since: None,
        pending: None,
        opens,
        warm_ups,
        stats,
        board,
        keypair,
        server_key,
        cfg,
    };
    loop {
        if !c.wait_for_demand().await {
            return Ok(());
        }
        if let Some(cmd) = &c.cfg.link.on_dial
            && let Err(e) = run_hook("on_dial", cmd, c.hook_timeout).await
        {
            warn!("not dialling: {e:#}");
            tokio::time::sleep(c.backoff).await;
            c.backoff = (c.backoff * 2).min(c.max_backoff);
            continue;
        }
        c.expire_kept().await;
        c.board.dialling(now());
        let resume = c.kept.as_ref().map(|(t, r)| Resume {
            records_received: t.records_received(),
            ..r.clone()
        });
        // While a session waits, its grace period bounds each attempt.
        let attempt = tokio::select! {
            r = connect(&c.cfg, &c.keypair, &c.server_key, resume) => r,
            _ = sleep_until_opt(c.grace_end()) => continue,
        };
        match attempt {
            Ok((sock, transport, hello)) => {
                c.backoff = c.min_backoff;
                let granted = hello.resume.clone();
                let Some(tunnel) = c.adopt(transport, &hello).await else {
                    c.down_since = None;
                    tokio::time::sleep(c.backoff).await;
                    continue;
                };
                if !c.carry(tunnel, sock, granted).await {
                    continue;
                }
            }
            Err(e) => {
                warn!("cannot open tunnel to {}: {e:#}", c.cfg.server);
                let why = straw_proto::activity_text(&format!("cannot dial: {e:#}"));
                c.board.waiting(&why, now());
            }
        }
        let wake = tokio::time::Instant::now() + c.backoff;
        tokio::time::sleep_until(c.grace_end().map_or(wake, |d| d.min(wake))).await;
        c.backoff = (c.backoff * 2).min(c.max_backoff);
    }
}

/// The client's one tunnel across links: dials, resumes and parks it.
struct Redialer {
    cfg: ClientConfig,
    keypair: Keypair,
    server_key: [u8; 32],
    stats: Arc<TunnelStats>,
    /// What `straw status` shows.
    board: Arc<Board>,
    opens: mpsc::Receiver<OpenRequest>,
    warm_ups: Vec<(String, AccelFactory)>,
    min_backoff: Duration,
    max_backoff: Duration,
    backoff: Duration,
    grace: Duration,
    on_demand: bool,
    hook_timeout: Duration,
    /// The session that outlives a dropped link, with what resumes it.
    kept: Option<(Tunnel, Resume)>,
    /// When the link under `kept`'s streams dropped (its grace runs).
    down_since: Option<tokio::time::Instant>,
    /// Dial on demand: the connection that made us dial, attached once up.
    pending: Option<OpenRequest>,
}

impl Redialer {
    /// Dial on demand: waits for a program's connection unless some are
    /// already waiting. False once no connection can come any more.
    async fn wait_for_demand(&mut self) -> bool {
        let busy = self
            .kept
            .as_ref()
            .is_some_and(|(t, _)| t.stream_count() > 0);
        if !self.on_demand || self.pending.is_some() || busy {
            return true;
        }
        self.board
            .waiting("dial on demand: waiting for a program to connect", now());
        match self.opens.recv().await {
            Some(r) => {
                self.pending = Some(r);
                true
            }
            None => false,
        }
    }

    /// When the kept session's grace period ends, if one runs.
    fn grace_end(&self) -> Option<tokio::time::Instant> {
        self.down_since
            .map(|t| t + self.grace)
            .filter(|_| self.kept.is_some())
    }

    async fn expire_kept(&mut self) {
        if self
            .grace_end()
            .is_none_or(|t| tokio::time::Instant::now() < t)
        {
            return;
        }
        let (t, _) = self
            .kept
            .take()
            .expect("grace runs only for a kept session");
        warn!(
            "no tunnel for {}s: giving up the session, closing {} local connections",
            self.grace.as_secs(),
            t.stream_count()
        );
        t.give_up(GIVE_UP_LINGER).await;
    }

    /// The tunnel for a new link: the kept one resumed if the server still
    /// has its session, else a fresh one. `None`: redial.
    async fn adopt(&mut self, transport: noise::Transport, hello: &Hello) -> Option<Tunnel> {
        let kept = self.kept.take();
        let plan = plan_client_resume(kept.as_ref().map(|(_, r)| r), hello.resume.as_ref());
        let server = &self.cfg.server;
        match (plan, kept) {
            (ResumePlan::Resume, Some((mut t, _))) => {
                let peer_received = hello.resume.as_ref().map_or(0, |r| r.records_received);
                match t.resume(transport, peer_received) {
                    Ok(()) => {
                        info!("tunnel to {server} up, session resumed");
                        return Some(t);
                    }
                    Err(e) => {
                        // Can't happen with an honest server; the
                        // connection's keys are spent, so redial.
                        warn!("tunnel to {server}: {e:#}; closing local connections");
                        t.give_up(GIVE_UP_LINGER).await;
                        return None;
                    }
                }
            }
            (ResumePlan::NoTickets, old) => {
                // A server without resume: never keep a session for it.
                warn!("server sent no session ticket; connections won't survive a drop");
                if let Some((t, _)) = old {
                    t.give_up(GIVE_UP_LINGER).await;
                }
            }
            (_, old) => {
                if let Some((t, _)) = old {
                    warn!(
                        "server no longer has our session: closing {} local connections",
                        t.stream_count()
                    );
                    t.give_up(GIVE_UP_LINGER).await;
                }
                info!("tunnel to {server} up");
            }
        }
        Some(new_tunnel(&self.cfg, transport, hello, &self.stats))
    }

    /// Carries `tunnel` over `sock` until the link ends, then keeps the
    /// session (if the server granted a ticket) or gives it up. False:
    /// redial at once, without the backoff.
    async fn carry(
        &mut self,
        mut tunnel: Tunnel,
        sock: tokio::net::TcpStream,
        granted: Option<Resume>,
    ) -> bool {
        self.down_since = None;
        tunnel.set_link_socket(socket_handle(&sock));
        if granted.is_some() && self.on_demand && self.cfg.link.idle_hangup_secs > 0 {
            tunnel.set_idle_hangup(Some(Duration::from_secs(self.cfg.link.idle_hangup_secs)));
        }
        let trigger = self.pending.as_ref().map(|r| r.service.clone());
        if let Some(r) = self.pending.take() {
            tunnel.attach(r);
        }
        attach_warm_ups(&mut tunnel, &self.warm_ups, trigger.as_deref());
        let call = Call::start(&self.stats);
        tunnel.set_board(self.board.clone());
        self.board.call_started(now());
        let ended = tunnel.run_link(sock, &mut self.opens).await;
        call.report(&self.stats, self.cfg.link.cost_per_minute);
        tunnel.publish_status(true);
        let why = match &ended {
            Ok(LinkEnded::Closed) => "closed".to_owned(),
            Ok(LinkEnded::Idle) => "hung up when idle".to_owned(),
            Ok(LinkEnded::Stopped) => "taken over by another connection".to_owned(),
            Ok(LinkEnded::Lost(e)) => format!("lost: {e:#}"),
            Err(e) => format!("failed: {e:#}"),
        };
        self.board
            .call_ended(&straw_proto::activity_text(&why), now());
        if let Some(cmd) = &self.cfg.link.on_hangup
            && let Err(e) = run_hook("on_hangup", cmd, self.hook_timeout).await
        {
            warn!("{e:#}");
        }
        let server = &self.cfg.server;
        let Some(granted) = granted else {
            let result = match ended {
                Ok(LinkEnded::Closed | LinkEnded::Idle) => Ok(()),
                Ok(LinkEnded::Lost(e)) => Err(e),
                Ok(LinkEnded::Stopped) => Err(anyhow!("stopped")),
                Err(e) => Err(e),
            };
            warn!(
                "tunnel to {server} down: {}",
                describe_end(&result, &self.stats)
            );
            tunnel.give_up(GIVE_UP_LINGER).await;
            tokio::time::sleep(self.backoff).await;
            return false;
        };
        match ended {
            Ok(LinkEnded::Idle) => {
                info!(
                    "idle for {}s: hung up, session parked for the next dial",
                    self.cfg.link.idle_hangup_secs
                );
                self.kept = Some((tunnel, granted));
                self.backoff = self.min_backoff;
                return false;
            }
            Ok(LinkEnded::Lost(e)) if self.on_demand && tunnel.stream_count() == 0 => {
                info!("link dropped with nothing in it: {e:#}; redial on demand");
                self.kept = Some((tunnel, granted));
                return false;
            }
            Ok(LinkEnded::Lost(e)) => {
                warn!(
                    "tunnel to {server} down, keeping {} local connections for {}s: {}",
                    tunnel.stream_count(),
                    self.grace.as_secs(),
                    describe_end(&Err(e), &self.stats)
                );
                self.kept = Some((tunnel, granted));
                self.down_since = Some(tokio::time::Instant::now());
            }
            Ok(LinkEnded::Stopped) => {
                self.kept = Some((tunnel, granted));
                self.down_since = Some(tokio::time::Instant::now());
            }
            Ok(LinkEnded::Closed) => {
                info!(
                    "tunnel to {server} closed: {}",
                    describe_end(&Ok(()), &self.stats)
                );
            }
            Err(e) => {
                warn!(
                    "tunnel to {server} failed, closing local connections: {}",
                    describe_end(&Err(e), &self.stats)
                );
                tunnel.give_up(GIVE_UP_LINGER).await;
            }
        }
        true
    }
}

/// Listens for each service's programs (their connections go to `opens`);
/// returns the factories of the services whose caches warm-ups may fill.
fn listen(
    cfg: &ClientConfig,
    opens: mpsc::Sender<OpenRequest>,
    holds: Option<&Arc<crate::holds::HoldFile>>,
    stats: &Arc<TunnelStats>,
) -> Result<Vec<(String, AccelFactory)>> {
    let partials = open_partials(cfg);
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
        let over = cfg.hold_over_bytes(svc);
        let factory = AccelFactory {
            protocol: svc.protocol,
            side: Side::Client {
                pop3: pop3::Pop3Config {
                    prefetch: cfg.pop3.prefetch,
                    prefetch_retr_max_bytes: cfg.pop3.prefetch_retr_max_bytes,
                    prefetch_retr_depth: cfg.pop3.prefetch_retr_depth,
                    prefetch_first: cfg.pop3.prefetch_first,
                },
                imap: imap::ImapConfig {
                    prefetch_select: cfg.imap.prefetch_select,
                    ..Default::default()
                },
                http: http::HttpPolicy {
                    blocked_hosts: cfg.http.blocked_hosts.clone(),
                    ..Default::default()
                },
                cache,
                partials: partials
                    .as_ref()
                    .map(|p| p.for_service(&svc.name) as SharedStore),
                hold: holds.filter(|_| over > 0).map(|h| pop3::HoldConfig {
                    over_bytes: over,
                    except_from: cfg
                        .pop3
                        .hold_except_from
                        .iter()
                        .map(|a| a.to_ascii_lowercase())
                        .collect(),
                    bits_per_sec: cfg.pop3.hold_estimate_bits_per_sec,
                    cost_per_minute: cfg.link.cost_per_minute,
                    store: h.for_service(&svc.name),
                }),
            },
        };
        if cfg.cache.warm_up {
            warm_ups.push((svc.name.clone(), factory.clone()));
        }
        tokio::spawn(accept_loop(
            listener,
            svc.name.clone(),
            factory,
            opens.clone(),
            cfg.tcp.clone(),
            stats.clone(),
        ));
    }
    Ok(warm_ups)
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
        let (minutes, cost) = crate::status::billed(secs, cost_per_minute);
        info!(
            "dial-up ended: connected {secs:.1} s, {} bytes up, {} bytes down, cost {cost:.2} ({minutes} started minutes at {cost_per_minute:.2})",
            stats.wire_bytes_sent.load(Ordering::Relaxed) - self.sent,
            stats.wire_bytes_received.load(Ordering::Relaxed) - self.received,
        );
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Opens the control socket for `straw status`, if enabled. Without it the
/// client still works: a warning, not an error.
fn start_control(cfg: &ClientConfig, board: &Arc<Board>) -> Option<crate::control::Listening> {
    if !cfg.control.enabled {
        return None;
    }
    let Some(path) = cfg.control.socket() else {
        warn!("no [control] socket and no HOME: straw status won't reach this client");
        return None;
    };
    match crate::control::serve(&path, board.clone()) {
        Ok(l) => {
            info!("control socket {} (straw status)", path.display());
            Some(l)
        }
        Err(e) => {
            warn!("control socket: {e:#}; straw status won't reach this client");
            None
        }
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
    scfg.accounting_services = cfg
        .services
        .iter()
        .map(|s| s.name.as_bytes().to_vec())
        .collect();
    let session = Session::new(scfg, tokio::time::Instant::now().into_std());
    let mut t = Tunnel::new(transport, session, None, stats.clone(), cfg.server.clone());
    t.set_liveness(liveness_config(&cfg.session, &cfg.tcp));
    t
}

/// The timestamp of this process's next first handshake message: the
/// server refuses one that is not newer than the last it accepted from our
/// key, so a replayed message gets nothing.
pub fn next_timestamp() -> u64 {
    static TIMESTAMPS: Timestamps = Timestamps::new();
    TIMESTAMPS.next(unix_nanos(std::time::SystemTime::now()))
}

async fn connect(
    cfg: &ClientConfig,
    keypair: &Keypair,
    server_key: &[u8; 32],
    resume: Option<Resume>,
) -> Result<(tokio::net::TcpStream, noise::Transport, Hello)> {
    let mut sock = tcp::connect_tunnel(&cfg.server, &cfg.tcp).await?;
    let ours = session_config(Role::Client, &cfg.session);
    let hello = client_hello(&ours, resume, next_timestamp());
    let (transport, payload) = tokio::time::timeout(
        Duration::from_secs(cfg.session.handshake_timeout_secs),
        noise::client_handshake(&mut sock, keypair, server_key, &hello.encode()),
    )
    .await
    .map_err(|_| {
        anyhow!("handshake timed out (a server that doesn't know our key, or whose key we have wrong, answers nothing)")
    })??;
    let server_hello = check_peer_hello(&ours, &payload)?;
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
        let Some(cache) = f.cache() else { continue };
        if Some(name.as_str()) == trigger
            || !cache::needs_warm_up(f.protocol, &cache.lock().expect("cache lock"))
        {
            continue;
        }
        let (ours, program) = tokio::io::duplex(16 * 1024);
        tunnel.attach(OpenRequest {
            service: name.clone(),
            io: Box::new(ours),
            accel: f.make(),
            cache: Some(cache.clone()),
            warm_up: true,
        });
        tokio::spawn(cache::warm_up(f.protocol, name.clone(), program));
    }
}

/// The store of interrupted transfers, if enabled and usable (a store that
/// can't be opened only costs full transfers: warn and go on).
/// The hold record, if `[pop3] hold_over_bytes` is set. Holding without
/// a record would deliver stubs nobody can release: an error.
fn open_holds(cfg: &ClientConfig) -> Result<Option<Arc<crate::holds::HoldFile>>> {
    if !cfg.holds_any() {
        return Ok(None);
    }
    let path = cfg
        .pop3
        .hold_file()
        .context("[pop3] hold_over_bytes: no HOME or XDG_STATE_HOME for the hold record; set [pop3] hold_file")?;
    let f = crate::holds::HoldFile::open(&path)?;
    for svc in &cfg.services {
        match cfg.hold_over_bytes(svc) {
            0 => {}
            over => info!(
                "{}: POP3 messages over {over} bytes are held ashore; record {}",
                svc.name,
                path.display()
            ),
        }
    }
    Ok(Some(f))
}

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

async fn accept_loop(
    listener: TcpListener,
    service: String,
    accel: AccelFactory,
    opens: mpsc::Sender<OpenRequest>,
    tcp_opts: TcpOptions,
    stats: Arc<TunnelStats>,
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
            io: Box::new(LocalSocket::new(sock, &tcp_opts, stats.clone())),
            accel: accel.make(),
            cache: accel.cache().cloned(),
            warm_up: false,
        };
        if opens.send(req).await.is_err() {
            return;
        }
    }
}

/// Seconds of measured link time a program's socket may hold in our kernel
/// once the link is fast (see [`LocalSocket`]).
const LOCAL_BUFFER_SECS: f64 = 1.0;

/// The receive buffer a program's socket should have for a link measured
/// at `rate` wire bytes/s: `LOCAL_BUFFER_SECS` of it, never below `[tcp]
/// local_recv_buffer` (slow links: backpressure) nor above
/// `local_recv_buffer_max`.
pub fn local_buffer_for(rate: u64, opts: &TcpOptions) -> usize {
    let by_rate = (rate as f64 * LOCAL_BUFFER_SECS) as usize;
    by_rate
        .min(opts.local_recv_buffer_max)
        .max(opts.local_recv_buffer)
}

/// A program's socket whose receive buffer follows the link. It starts at
/// `[tcp] local_recv_buffer` (set on the listener: at 2,400 bit/s 4 KiB is
/// already 13 s of link, and what the kernel holds the scheduler can't
/// see), and grows before a read when the measured rate asks for more: on
/// loopback a 4 KiB buffer let one upload through at 46-95 MB/s. It never
/// shrinks (that stalls loopback transfers), so a link that slows down
/// keeps what it had; new connections start small again.
struct LocalSocket {
    inner: tokio::net::TcpStream,
    stats: Arc<TunnelStats>,
    opts: TcpOptions,
    size: usize,
}

impl LocalSocket {
    fn new(inner: tokio::net::TcpStream, opts: &TcpOptions, stats: Arc<TunnelStats>) -> Self {
        Self {
            inner,
            stats,
            size: opts.local_recv_buffer,
            opts: opts.clone(),
        }
    }
}

impl tokio::io::AsyncRead for LocalSocket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let want = local_buffer_for(self.stats.rate_estimate.load(Ordering::Relaxed), &self.opts);
        if want > self.size {
            // A refusal costs speed only; don't try again for this size.
            let _ = tcp::grow_local_recv_buffer(&self.inner, want);
            self.size = want;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LocalSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_buffers_stay_small_on_slow_links_and_grow_on_fast_ones() {
        let o = TcpOptions::default();
        // 2,400 bit/s: the 4 KiB floor (already 13 s of link).
        assert_eq!(local_buffer_for(300, &o), o.local_recv_buffer);
        // 1 Mbit/s: one second of it.
        assert_eq!(local_buffer_for(125_000, &o), 125_000);
        // Loopback: the cap.
        assert_eq!(local_buffer_for(300_000_000, &o), o.local_recv_buffer_max);
        // A cap at or below the floor: never grows.
        let fixed = TcpOptions {
            local_recv_buffer_max: 0,
            ..TcpOptions::default()
        };
        assert_eq!(
            local_buffer_for(300_000_000, &fixed),
            fixed.local_recv_buffer
        );
    }
}
