//! Drives one [`Session`] over one encrypted link, and pumps bytes between
//! the session's streams and local sockets (the mail program's on the client,
//! the real servers' on the server).
//!
//! One task owns the session and the link. Each attached socket has a reader
//! task and a writer task that talk to it over channels. A reader only reads
//! as many bytes as the session granted it, so when the link is the
//! bottleneck, the program's writes block: that is the backpressure.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use straw_core::session::{Event, Priority, Session, reset_code};
use straw_proto::{Accelerator, Output};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};

use crate::link::noise::{MessageReader, Transport};

/// Largest single read from a local socket.
const READ_CHUNK: usize = 64 * 1024;
/// Encrypted bytes we let queue in user space before waiting for the socket.
const WRITE_AHEAD: usize = 64 * 1024;

pub trait LocalIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> LocalIo for T {}

/// A local connection to attach to a new outgoing stream.
pub struct OpenRequest {
    pub service: String,
    pub io: Box<dyn LocalIo>,
    pub accel: Box<dyn Accelerator>,
    /// Where the accelerator's `cache_put`s go (the client's per-service cache).
    pub cache: Option<SharedCache>,
    /// straw's own connection that fills the cache (greeting, capabilities),
    /// not a mail program's: kept out of the wait counts.
    pub warm_up: bool,
}

pub type SharedCache = Arc<std::sync::Mutex<straw_proto::Cache>>;

/// A dialled upstream: its socket and the accelerator for the stream.
pub type Dialed = (Box<dyn LocalIo>, Box<dyn Accelerator>);
pub type DialFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Dialed>> + Send>>;

/// Decides what to do with a stream the peer opened (server side).
pub trait Dialer: Send + Sync + 'static {
    /// Whether dialing `service` needs the stream's first bytes (e.g. an HTTP
    /// proxy request naming its origin) rather than happening at OPEN.
    fn needs_first_data(&self, _service: &str) -> bool {
        false
    }

    /// Connects to the upstream for `service`; `Err` resets the stream.
    fn dial(&self, service: &str, first_data: Option<Bytes>) -> DialFuture;
}

/// Counters shared with tests, metrics and `straw status`.
#[derive(Debug, Default)]
pub struct TunnelStats {
    pub wire_bytes_sent: AtomicU64,
    pub wire_bytes_received: AtomicU64,
    pub raw_bytes_sent: AtomicU64,
    pub raw_bytes_received: AtomicU64,
    /// Peak of bytes held ahead of the link (session pending + unacked).
    pub max_held: AtomicU64,
    /// The session's bound on that, when it peaked.
    pub held_bound: AtomicU64,
    pub streams_opened: AtomicU64,
    pub codec_memory: AtomicU64,
    /// Times a local program waited for a reply that crossed the link
    /// (summed over finished connections), and replies answered locally.
    pub link_waits: AtomicU64,
    pub local_replies: AtomicU64,
    /// Times the session resumed on a new connection, and the wire bytes it
    /// re-sent because the old connection lost them.
    pub resumes: AtomicU64,
    pub wire_bytes_resent: AtomicU64,
    /// Client: links dialled that completed their handshake.
    pub dials: AtomicU64,
    /// Raw stream bytes by the codec of the records that carried them,
    /// indexed by `CodecId as usize`.
    pub raw_bytes_sent_by_codec: [AtomicU64; 8],
    pub raw_bytes_received_by_codec: [AtomicU64; 8],
    /// The session's delivery-rate estimate, wire bytes per second.
    pub rate_estimate: AtomicU64,
}

/// What a socket's pump tasks tell the tunnel.
enum PumpMsg {
    Data {
        stream: u64,
        bytes: Vec<u8>,
        flush: bool,
        bulk: bool,
    },
    /// The reader used its grant and waits for the next.
    GrantUsed {
        stream: u64,
    },
    Eof {
        stream: u64,
    },
    Failed {
        stream: u64,
    },
    Written {
        stream: u64,
        n: usize,
    },
    /// The writer delivered the peer's FIN (shut down the socket's write side).
    Closed {
        stream: u64,
    },
    Dialed {
        stream: u64,
        result: Result<Dialed>,
    },
}

/// What a socket's writer task is asked to do.
enum Inbound {
    /// Stream bytes from the peer, through the accelerator.
    Data(Bytes),
    /// The accelerator queued bytes for the local socket ([`PumpCtx::outq`]).
    Wake,
    Fin,
    /// The tunnel is given up: let the accelerator say so, then close.
    LinkLost,
}

type SharedAccel = Arc<std::sync::Mutex<Box<dyn Accelerator>>>;
/// Bytes for a local socket, each with the stream bytes consumed to make them.
type LocalQueue = std::collections::VecDeque<(Vec<u8>, usize)>;

struct Attached {
    /// Grants to the reader: "you may read up to n bytes".
    grant_tx: Option<mpsc::UnboundedSender<usize>>,
    grant_outstanding: bool,
    inbound_tx: mpsc::UnboundedSender<Inbound>,
    /// Receiver kept until the socket exists (server side, while dialing).
    inbound_rx: Option<mpsc::UnboundedReceiver<Inbound>>,
    /// The local socket reached EOF / the writer delivered the peer's FIN.
    reader_done: bool,
    writer_done: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The socket's writer task, awaited by [`Tunnel::give_up`].
    writer: Option<tokio::task::JoinHandle<()>>,
    accel: Option<SharedAccel>,
    service: String,
    /// Server side: the dial waits for the stream's first bytes.
    dial_pending_data: bool,
    /// See [`OpenRequest::warm_up`].
    warm_up: bool,
    /// The stream's data goes through the bulk lane (it never goes back).
    bulk: bool,
}

impl Attached {
    fn new(service: String) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        Self {
            grant_tx: None,
            grant_outstanding: false,
            inbound_tx,
            inbound_rx: Some(inbound_rx),
            reader_done: false,
            writer_done: false,
            tasks: Vec::new(),
            writer: None,
            accel: None,
            service,
            dial_pending_data: false,
            warm_up: false,
            bulk: false,
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.writer) {
            t.abort();
        }
    }
}

/// How [`Tunnel::run_link`] ended without a protocol error.
#[derive(Debug)]
pub enum LinkEnded {
    /// `opens` closed and every stream finished: nothing left to carry.
    Closed,
    /// The connection failed; the session and streams live on, ready for
    /// [`Tunnel::resume`] over a new connection.
    Lost(anyhow::Error),
    /// Another connection took the session over ([`Tunnel::set_stop`]).
    Stopped,
    /// Idle for the hang-up time ([`Tunnel::set_idle_hangup`]): the link was
    /// closed on purpose; the session is kept for the next dial.
    Idle,
}

/// Dead-link detection: when to probe a quiet link with a PING and when to
/// give it up. See [`LivenessCheck`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessConfig {
    /// Never call a link dead after less silence than this.
    pub min_dead: Duration,
    /// With nothing awaiting an answer, probe after this much silence
    /// (zero: never; a later send finds out instead).
    pub idle_probe: Duration,
    /// Upper bound for the tunnel socket's `TCP_USER_TIMEOUT`, which follows
    /// the link's dead-after time (zero: leave the socket alone).
    pub user_timeout_max: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            min_dead: Duration::from_secs(10),
            idle_probe: Duration::from_secs(60),
            user_timeout_max: Duration::from_secs(60),
        }
    }
}

/// What [`LivenessCheck::poll`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Fine,
    /// Send a PING: the link has been quiet for a loaded round trip.
    Probe,
    /// Nothing came back for the dead-after time since the probe.
    Dead,
}

/// Added to the dead-after time for scheduling jitter and ack delays.
const LIVENESS_MARGIN: Duration = Duration::from_secs(2);
/// RTT assumed before the first sample: a satellite hop, generously.
const UNMEASURED_RTT: Duration = Duration::from_secs(3);

/// Sans-IO dead-link detector. Anything received proves the link alive. A
/// reply to what we send may be late by a *loaded* round trip: the RTT plus
/// the time to drain what can sit ahead of our PING (our in-flight window and
/// a record) and ahead of the peer's PONG (the same on its side). After that
/// much silence while awaiting an answer (or `idle_probe` when not), PING;
/// if still nothing after the dead-after time, the link is dead.
#[derive(Debug, Clone)]
pub struct LivenessCheck {
    cfg: LivenessConfig,
    last_rx: Instant,
    probed_at: Option<Instant>,
}

impl LivenessCheck {
    pub fn new(cfg: LivenessConfig, now: Instant) -> Self {
        Self {
            cfg,
            last_rx: now,
            probed_at: None,
        }
    }

    /// Bytes arrived from the peer.
    pub fn received(&mut self, now: Instant) {
        self.last_rx = now;
        self.probed_at = None;
    }

    /// `srtt` as measured (it already includes some queueing), plus twice
    /// `queue_secs`: the link time of what one side may hold ahead of a
    /// probe or its answer.
    pub fn loaded_rtt(srtt: Option<Duration>, queue_secs: f64) -> Duration {
        let q = Duration::from_secs_f64(queue_secs.clamp(0.0, 3600.0));
        srtt.unwrap_or(UNMEASURED_RTT) + q * 2
    }

    /// Silence after a probe that means the link is dead.
    pub fn dead_after(&self, loaded_rtt: Duration) -> Duration {
        (loaded_rtt * 3 + LIVENESS_MARGIN).max(self.cfg.min_dead)
    }

    /// Longest silence before [`Liveness::Dead`] while awaiting an answer.
    pub fn detection_bound(&self, loaded_rtt: Duration) -> Duration {
        loaded_rtt + self.dead_after(loaded_rtt)
    }

    /// `expecting`: something we sent asks for an answer (data, PING).
    pub fn poll(&mut self, now: Instant, loaded_rtt: Duration, expecting: bool) -> Liveness {
        if let Some(p) = self.probed_at {
            return if now.saturating_duration_since(p) >= self.dead_after(loaded_rtt) {
                Liveness::Dead
            } else {
                Liveness::Fine
            };
        }
        match self.probe_at(loaded_rtt, expecting) {
            Some(t) if now >= t => {
                self.probed_at = Some(now);
                Liveness::Probe
            }
            _ => Liveness::Fine,
        }
    }

    /// When [`LivenessCheck::poll`] has something to do, if nothing arrives.
    pub fn next_check(&self, loaded_rtt: Duration, expecting: bool) -> Option<Instant> {
        match self.probed_at {
            Some(p) => Some(p + self.dead_after(loaded_rtt)),
            None => self.probe_at(loaded_rtt, expecting),
        }
    }

    fn probe_at(&self, loaded_rtt: Duration, expecting: bool) -> Option<Instant> {
        if expecting {
            Some(self.last_rx + loaded_rtt)
        } else if !self.cfg.idle_probe.is_zero() {
            Some(self.last_rx + self.cfg.idle_probe)
        } else {
            None
        }
    }
}

/// Whether the peer answers this (plaintext) record: any frame but ACK.
/// Compressed records carry data, so they count.
fn ack_eliciting(record: &[u8]) -> bool {
    match record.split_first() {
        Some((0, frames)) => straw_core::wire::FrameDecoder::new(Bytes::copy_from_slice(frames))
            .any(|f| !matches!(f, Ok(straw_core::wire::Frame::Ack { .. }))),
        Some(_) => true,
        None => false,
    }
}

/// A session with its local streams. It outlives any one connection: when the
/// link drops, [`Tunnel::run_link`] returns and the pump tasks wait (their
/// grants run out), until [`Tunnel::resume`] puts it on a new connection.
pub struct Tunnel {
    transport: Transport,
    stop: Arc<Notify>,
    session: Session,
    streams: HashMap<u64, Attached>,
    pump_tx: mpsc::UnboundedSender<PumpMsg>,
    pump_rx: mpsc::UnboundedReceiver<PumpMsg>,
    dialer: Option<Arc<dyn Dialer>>,
    stats: Arc<TunnelStats>,
    label: String,
    liveness: LivenessConfig,
    /// A handle on the current connection's socket, to tune its
    /// `TCP_USER_TIMEOUT` to the link (see [`Tunnel::set_link_socket`]).
    link_socket: Option<socket2::Socket>,
    user_timeout_set: Option<Duration>,
    idle_hangup: Option<Duration>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Tunnel {
    pub fn new(
        transport: Transport,
        session: Session,
        dialer: Option<Arc<dyn Dialer>>,
        stats: Arc<TunnelStats>,
        label: String,
    ) -> Self {
        let (pump_tx, pump_rx) = mpsc::unbounded_channel();
        Self {
            transport,
            stop: Arc::new(Notify::new()),
            session,
            streams: HashMap::new(),
            pump_tx,
            pump_rx,
            dialer,
            stats,
            label,
            liveness: LivenessConfig::default(),
            link_socket: None,
            user_timeout_set: None,
            idle_hangup: None,
        }
    }

    /// Close the link after this long with no local connections and
    /// nothing awaiting an answer ([`LinkEnded::Idle`]).
    pub fn set_idle_hangup(&mut self, after: Option<Duration>) {
        self.idle_hangup = after;
    }

    /// Attaches a local connection now, even between links (dial on
    /// demand): its bytes wait in the session for the next link.
    pub fn attach(&mut self, req: OpenRequest) {
        self.open_local(req);
    }

    pub fn set_liveness(&mut self, cfg: LivenessConfig) {
        self.liveness = cfg;
    }

    /// The socket the next [`Tunnel::run_link`] runs over (a duplicate
    /// handle), so its `TCP_USER_TIMEOUT` can follow the measured link.
    pub fn set_link_socket(&mut self, sock: Option<socket2::Socket>) {
        self.link_socket = sock;
        self.user_timeout_set = None;
    }

    /// A reply may take this long on the link as measured now. What waits
    /// ahead of a probe is our unacked bytes and a record; the rate is the
    /// configured one when the estimate is lower (an interactive session's
    /// samples are app-limited and say little about the link).
    pub fn loaded_rtt(&self) -> Duration {
        let est = self.session.estimate();
        let ahead = self.session.unacked_bytes() + self.session.record_target() as u64;
        let rate = est.rate().max(self.session.config().initial_rate).max(1.0);
        LivenessCheck::loaded_rtt(est.srtt(), ahead as f64 / rate)
    }

    /// Something sent is still unanswered (not counting bare ACKs).
    fn expecting_reply(&self) -> bool {
        self.session.unacked_records().any(|r| ack_eliciting(r))
    }

    /// Keeps the kernel's own dead-link timer near ours (a bit longer, so
    /// that ours, with its clearer message, normally fires first).
    fn tune_user_timeout(&mut self, live: &LivenessCheck, loaded_rtt: Duration) {
        let max = self.liveness.user_timeout_max;
        let Some(sock) = &self.link_socket else {
            return;
        };
        if max.is_zero() {
            return;
        }
        let want = (live.detection_bound(loaded_rtt) * 3 / 2).min(max);
        let close = self.user_timeout_set.is_some_and(|t| {
            let (a, b) = (t.as_secs_f64(), want.as_secs_f64());
            (a - b).abs() <= 0.2 * b
        });
        if close {
            return;
        }
        match sock.set_tcp_user_timeout(Some(want)) {
            Ok(()) => {
                debug!(tunnel = %self.label, ms = want.as_millis() as u64, "TCP_USER_TIMEOUT tuned");
                self.user_timeout_set = Some(want);
            }
            Err(e) => {
                debug!(tunnel = %self.label, "TCP_USER_TIMEOUT: {e}");
                self.link_socket = None;
            }
        }
    }

    /// Runs until the link fails or `opens` closes and all streams are done,
    /// then drops everything. Local connections to forward arrive on `opens`.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        io: S,
        opens: &mut mpsc::Receiver<OpenRequest>,
    ) -> Result<()> {
        match self.run_link(io, opens).await? {
            LinkEnded::Closed => Ok(()),
            LinkEnded::Lost(e) => Err(e),
            LinkEnded::Stopped => Err(anyhow!("taken over by another connection")),
            LinkEnded::Idle => Ok(()),
        }
    }

    /// Records received from the peer so far (for the resume handshake).
    pub fn records_received(&self) -> u64 {
        self.session.records_received()
    }

    /// Local streams attached.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    pub fn stats(&self) -> Arc<TunnelStats> {
        self.stats.clone()
    }

    /// Makes the next [`Tunnel::run_link`] return [`LinkEnded::Stopped`] once
    /// `stop` is notified (`notify_one`), e.g. when the client reconnected
    /// while its old connection still looks alive to us.
    pub fn set_stop(&mut self, stop: Arc<Notify>) {
        self.stop = stop;
    }

    /// Moves the session onto a new connection whose handshake produced
    /// `transport`, the peer having received `peer_received` records: the
    /// unacked rest is re-sent first, unchanged. An error means the peer's
    /// count is impossible; the tunnel must then be dropped.
    pub fn resume(&mut self, transport: Transport, peer_received: u64) -> Result<()> {
        self.transport = transport;
        self.session
            .resume(now(), peer_received)
            .context("cannot resume session")?;
        self.stats.resumes.fetch_add(1, Ordering::Relaxed);
        info!(
            tunnel = %self.label,
            resend = self.session.resend_pending(),
            streams = self.streams.len(),
            "session resumed"
        );
        Ok(())
    }

    /// Carries the session over `io` until the link fails ([`LinkEnded::Lost`],
    /// resumable), is stopped, or `opens` closes with all streams done. `Err`
    /// means the peer broke the protocol: drop the tunnel.
    pub async fn run_link<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: S,
        opens: &mut mpsc::Receiver<OpenRequest>,
    ) -> Result<LinkEnded> {
        let stop = self.stop.clone();
        let mut reader = MessageReader::new();
        let mut rbuf = vec![0u8; 64 * 1024];
        let mut out: Vec<u8> = Vec::new();
        let mut out_pos = 0usize;
        let mut plain = Vec::new();
        let mut opens_open = true;
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut live = LivenessCheck::new(self.liveness, now());
        let mut idle_since: Option<Instant> = None;
        loop {
            let t = now();
            self.dispatch_events()?;
            let loaded_rtt = self.loaded_rtt();
            let expecting = self.expecting_reply();
            match live.poll(t, loaded_rtt, expecting) {
                Liveness::Fine => {}
                Liveness::Probe => self.session.schedule_ping(t),
                Liveness::Dead => {
                    return Ok(LinkEnded::Lost(anyhow!(
                        "link silent for {:.1} s (dead after {:.1} s on a loaded RTT of {:.1} s)",
                        t.saturating_duration_since(live.last_rx).as_secs_f64(),
                        live.dead_after(loaded_rtt).as_secs_f64(),
                        loaded_rtt.as_secs_f64()
                    )));
                }
            }
            self.tune_user_timeout(&live, loaded_rtt);
            let idle = self.streams.is_empty() && !expecting && out_pos == out.len();
            if !idle {
                idle_since = None;
            } else if idle_since.is_none() {
                idle_since = Some(t);
            }
            let hangup_at = self.idle_hangup.zip(idle_since).map(|(d, s)| s + d);
            if hangup_at.is_some_and(|h| t >= h) {
                let _ = wr.shutdown().await;
                return Ok(LinkEnded::Idle);
            }
            // Only build records when the socket has taken what we had, so that
            // priorities apply to data still in our hands.
            if out_pos == out.len() {
                out.clear();
                out_pos = 0;
                while out.len() < WRITE_AHEAD {
                    let Some(rec) = self.session.poll_transmit(t) else {
                        break;
                    };
                    self.transport.encrypt(&rec, &mut out)?;
                }
            }
            self.grant_capacity();
            self.publish_stats();
            if !opens_open && self.streams.is_empty() && out_pos == out.len() {
                return Ok(LinkEnded::Closed);
            }
            // While the socket still has our bytes, only its progress matters.
            let deadline = if out_pos == out.len() {
                self.session
                    .poll_timeout()
                    .map(tokio::time::Instant::from_std)
            } else {
                None
            };
            let live_check = live
                .next_check(loaded_rtt, expecting)
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                r = rd.read(&mut rbuf) => {
                    let n = match r {
                        Ok(0) => return Ok(LinkEnded::Lost(anyhow!("link closed by peer"))),
                        Ok(n) => n,
                        Err(e) => return Ok(LinkEnded::Lost(anyhow!(e).context("link read failed"))),
                    };
                    live.received(now());
                    reader.push(&rbuf[..n]);
                    while let Some(msg) = reader.next_message() {
                        self.transport.decrypt(&msg, &mut plain)?;
                        self.session.handle_record(now(), &plain)?;
                    }
                }
                r = wr.write(&out[out_pos..]), if out_pos < out.len() => {
                    match r {
                        Ok(0) => return Ok(LinkEnded::Lost(anyhow!("link write returned 0"))),
                        Ok(n) => out_pos += n,
                        Err(e) => return Ok(LinkEnded::Lost(anyhow!(e).context("link write failed"))),
                    }
                }
                msg = self.pump_rx.recv() => {
                    // We hold a sender ourselves, so this never yields None.
                    if let Some(msg) = msg {
                        self.handle_pump(msg);
                    }
                }
                req = opens.recv(), if opens_open => match req {
                    Some(req) => self.open_local(req),
                    None => opens_open = false,
                },
                _ = stop.notified() => return Ok(LinkEnded::Stopped),
                _ = sleep_until_opt(deadline) => {}
                _ = sleep_until_opt(live_check) => {}
                _ = sleep_until_opt(hangup_at.map(tokio::time::Instant::from_std)) => {}
            }
        }
    }

    fn publish_stats(&self) {
        let st = self.session.stats();
        let s = &self.stats;
        s.wire_bytes_sent
            .store(st.wire_bytes_sent, Ordering::Relaxed);
        s.wire_bytes_received
            .store(st.wire_bytes_received, Ordering::Relaxed);
        s.raw_bytes_sent.store(st.raw_bytes_sent, Ordering::Relaxed);
        s.raw_bytes_received
            .store(st.raw_bytes_received, Ordering::Relaxed);
        s.max_held.store(st.max_held, Ordering::Relaxed);
        s.wire_bytes_resent
            .store(st.wire_bytes_resent, Ordering::Relaxed);
        s.held_bound.store(st.held_bound_at_max, Ordering::Relaxed);
        s.codec_memory
            .store(self.session.codec_memory_bytes() as u64, Ordering::Relaxed);
        s.rate_estimate
            .store(self.session.estimate().rate() as u64, Ordering::Relaxed);
        for i in 0..8 {
            s.raw_bytes_sent_by_codec[i].store(st.raw_bytes_by_codec[i], Ordering::Relaxed);
            s.raw_bytes_received_by_codec[i]
                .store(st.raw_bytes_received_by_codec[i], Ordering::Relaxed);
        }
    }

    fn open_local(&mut self, req: OpenRequest) {
        match self
            .session
            .open_stream(req.service.as_bytes(), b"", Priority::Interactive)
        {
            Ok(id) => {
                self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                debug!(tunnel = %self.label, stream = id, service = %req.service, "stream opened");
                let mut a = Attached::new(req.service);
                a.warm_up = req.warm_up;
                self.start_pumps(id, &mut a, req.io, req.accel, req.cache);
                self.streams.insert(id, a);
            }
            Err(e) => warn!(tunnel = %self.label, "refusing local connection: {e}"),
        }
    }

    fn start_pumps(
        &self,
        stream: u64,
        a: &mut Attached,
        io: Box<dyn LocalIo>,
        mut accel: Box<dyn Accelerator>,
        cache: Option<SharedCache>,
    ) {
        let (rd, wr) = tokio::io::split(io);
        // A cached greeting goes out before anything else.
        let mut out = Output::default();
        accel.start(&mut out);
        let ctx = PumpCtx {
            stream,
            accel: Arc::new(std::sync::Mutex::new(accel)),
            tx: self.pump_tx.clone(),
            local: a.inbound_tx.clone(),
            outq: Arc::default(),
            cache,
        };
        ctx.route(&mut out);
        a.accel = Some(ctx.accel.clone());
        let (grant_tx, grant_rx) = mpsc::unbounded_channel();
        a.grant_tx = Some(grant_tx);
        let inbound_rx = a.inbound_rx.take().expect("pumps start once");
        a.tasks
            .push(tokio::spawn(read_pump(ctx.clone(), rd, grant_rx)));
        a.writer = Some(tokio::spawn(write_pump(ctx, wr, inbound_rx)));
    }

    /// Ends the tunnel for good: each local connection hears it in its
    /// protocol's terms ([`Accelerator::link_lost`]) after whatever was
    /// already on its way to it, and is closed. Waits up to `linger` for the
    /// writes (a program that doesn't read can't hold us up).
    pub async fn give_up(mut self, linger: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + linger;
        let mut writers = Vec::new();
        for a in self.streams.values_mut() {
            if a.writer_done {
                continue;
            }
            if let Some(w) = a.writer.take()
                && a.inbound_tx.send(Inbound::LinkLost).is_ok()
            {
                writers.push(w);
            }
        }
        let n = writers.len();
        for w in writers {
            let abort = w.abort_handle();
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                abort.abort();
            }
        }
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.forget(id);
        }
        info!(tunnel = %self.label, connections = n, "tunnel given up: local connections told and closed");
    }

    /// Drops a stream's sockets and tasks, keeping its accelerator's counters.
    fn forget(&mut self, stream: u64) {
        let Some(a) = self.streams.remove(&stream) else {
            return;
        };
        if let Some(accel) = &a.accel {
            let st = accel.lock().expect("accelerator lock").stats();
            if a.warm_up {
                debug!(tunnel = %self.label, stream, service = %a.service, "cache warm-up done");
                return;
            }
            self.stats
                .link_waits
                .fetch_add(st.link_waits, Ordering::Relaxed);
            self.stats
                .local_replies
                .fetch_add(st.local_replies, Ordering::Relaxed);
            if st.link_waits + st.local_replies > 0 {
                info!(
                    tunnel = %self.label,
                    stream,
                    service = %a.service,
                    link_waits = st.link_waits,
                    local_replies = st.local_replies,
                    "connection done"
                );
            }
        }
    }

    fn handle_pump(&mut self, msg: PumpMsg) {
        match msg {
            PumpMsg::Data {
                stream,
                bytes,
                flush,
                bulk,
            } => {
                if let Some(a) = self.streams.get_mut(&stream) {
                    // A stream the peer reset is gone from the session; drop quietly.
                    let _ = self.session.send(stream, &bytes);
                    if bulk && !std::mem::replace(&mut a.bulk, true) {
                        debug!(tunnel = %self.label, stream, "stream is bulk from here on");
                        self.session.set_priority(stream, Priority::Bulk);
                    }
                    if flush {
                        self.session.flush(stream);
                    }
                }
            }
            PumpMsg::GrantUsed { stream } => {
                if let Some(a) = self.streams.get_mut(&stream) {
                    a.grant_outstanding = false;
                }
            }
            PumpMsg::Eof { stream } => {
                if let Some(a) = self.streams.get_mut(&stream) {
                    a.grant_tx = None;
                    a.reader_done = true;
                    self.session.finish(stream);
                }
            }
            PumpMsg::Closed { stream } => {
                if let Some(a) = self.streams.get_mut(&stream) {
                    a.writer_done = true;
                }
            }
            PumpMsg::Failed { stream } => {
                self.session.reset(stream, reset_code::ABORTED);
                self.forget(stream);
            }
            PumpMsg::Written { stream, n } => self.session.consumed(stream, n),
            PumpMsg::Dialed { stream, result } => match result {
                Ok((io, accel)) => {
                    if let Some(mut a) = self.streams.remove(&stream) {
                        self.start_pumps(stream, &mut a, io, accel, None);
                        self.streams.insert(stream, a);
                    }
                }
                Err(e) => {
                    warn!(tunnel = %self.label, stream, "upstream unreachable: {e:#}");
                    self.session.reset(stream, reset_code::UNREACHABLE);
                    self.forget(stream);
                }
            },
        }
        // Both directions done: the sockets are closed, forget the stream.
        let done: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, a)| a.reader_done && a.writer_done)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.forget(id);
        }
    }

    /// Hands each idle reader a grant of what the session can take from it.
    fn grant_capacity(&mut self) {
        for (id, a) in self.streams.iter_mut() {
            if a.grant_outstanding {
                continue;
            }
            let Some(tx) = &a.grant_tx else { continue };
            let cap = self.session.send_capacity(*id).min(READ_CHUNK);
            if cap > 0 && tx.send(cap).is_ok() {
                a.grant_outstanding = true;
            }
        }
    }

    fn dispatch_events(&mut self) -> Result<()> {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Opened {
                    stream, service, ..
                } => self.open_remote(stream, &service),
                Event::Data {
                    stream, payload, ..
                } => {
                    if let Some(a) = self.streams.get_mut(&stream) {
                        if a.dial_pending_data {
                            a.dial_pending_data = false;
                            let service = a.service.clone();
                            self.spawn_dial(stream, service, Some(payload.clone()));
                        }
                        if let Some(a) = self.streams.get(&stream) {
                            let _ = a.inbound_tx.send(Inbound::Data(payload));
                        }
                    }
                }
                Event::Fin { stream } => {
                    if let Some(a) = self.streams.get(&stream) {
                        let _ = a.inbound_tx.send(Inbound::Fin);
                    }
                }
                Event::Reset { stream, code } => {
                    debug!(tunnel = %self.label, stream, code, "stream reset by peer");
                    self.forget(stream);
                }
            }
        }
        Ok(())
    }

    fn open_remote(&mut self, stream: u64, service: &[u8]) {
        let Some(dialer) = self.dialer.clone() else {
            self.session.reset(stream, reset_code::REFUSED);
            return;
        };
        let service = String::from_utf8_lossy(service).into_owned();
        self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        let mut a = Attached::new(service.clone());
        a.dial_pending_data = dialer.needs_first_data(&service);
        let dial_now = !a.dial_pending_data;
        self.streams.insert(stream, a);
        if dial_now {
            self.spawn_dial(stream, service, None);
        }
    }

    fn spawn_dial(&mut self, stream: u64, service: String, first: Option<Bytes>) {
        let Some(dialer) = self.dialer.clone() else {
            return;
        };
        let tx = self.pump_tx.clone();
        let task = tokio::spawn(async move {
            let result = dialer.dial(&service, first).await;
            let _ = tx.send(PumpMsg::Dialed { stream, result });
        });
        if let Some(a) = self.streams.get_mut(&stream) {
            a.tasks.push(task);
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What both pump tasks of one socket share.
#[derive(Clone)]
struct PumpCtx {
    stream: u64,
    accel: SharedAccel,
    /// To the tunnel task.
    tx: mpsc::UnboundedSender<PumpMsg>,
    /// To this socket's writer.
    local: mpsc::UnboundedSender<Inbound>,
    /// The accelerator's bytes for the local socket, in the order it made
    /// them (queued under its lock by both pumps), with the stream bytes
    /// consumed to make them (credit returned once written).
    outq: Arc<std::sync::Mutex<LocalQueue>>,
    cache: Option<SharedCache>,
}

impl PumpCtx {
    /// Runs `f` on the accelerator. With `consumed`, its bytes for the
    /// local socket are queued to the writer (with that much stream credit)
    /// before the lock goes too.
    fn with_accel(
        &self,
        f: impl FnOnce(&mut dyn Accelerator, &mut Output),
        out: &mut Output,
        consumed: Option<usize>,
    ) {
        out.clear();
        let mut guard = self.accel.lock().expect("accelerator lock");
        f(guard.as_mut(), out);
        // Queued before the lock goes: the other pump's output must not
        // overtake it (e.g. a body chunk read meanwhile passing the line the
        // accelerator released from `from_tunnel`, or a reply the program's
        // command released from `from_local` being passed by the rest of it
        // streaming in).
        if out.fail.is_none() && (!out.to_tunnel.is_empty() || out.flush) {
            let _ = self.tx.send(PumpMsg::Data {
                stream: self.stream,
                bytes: std::mem::take(&mut out.to_tunnel),
                flush: std::mem::take(&mut out.flush),
                bulk: out.bulk,
            });
        }
        if let Some(n) = consumed
            && out.fail.is_none()
            && (!out.to_local.is_empty() || n > 0)
        {
            self.queue_local(std::mem::take(&mut out.to_local), n);
        }
    }

    fn queue_local(&self, bytes: Vec<u8>, consumed: usize) {
        self.outq
            .lock()
            .expect("outq lock")
            .push_back((bytes, consumed));
        let _ = self.local.send(Inbound::Wake);
    }

    /// Routes an accelerator's output: bytes for the peer go to the tunnel
    /// task, bytes for the local socket to the writer, cache updates to the
    /// cache. Returns false if the connection must close.
    fn route(&self, out: &mut Output) -> bool {
        if let Some(cache) = &self.cache
            && !out.cache_put.is_empty()
        {
            let mut c = cache.lock().expect("cache lock");
            for (k, v) in out.cache_put.drain(..) {
                c.insert(k, v);
            }
        }
        for note in out.notes.drain(..) {
            info!(stream = self.stream, "{note}");
        }
        if let Some(reason) = out.fail.take() {
            warn!(stream = self.stream, "closing connection: {reason}");
            let _ = self.tx.send(PumpMsg::Failed {
                stream: self.stream,
            });
            return false;
        }
        if !out.to_local.is_empty() {
            self.queue_local(std::mem::take(&mut out.to_local), 0);
        }
        if !out.to_tunnel.is_empty() || out.flush {
            let _ = self.tx.send(PumpMsg::Data {
                stream: self.stream,
                bytes: std::mem::take(&mut out.to_tunnel),
                flush: out.flush,
                bulk: out.bulk,
            });
        }
        true
    }
}

async fn read_pump(
    ctx: PumpCtx,
    mut rd: tokio::io::ReadHalf<Box<dyn LocalIo>>,
    mut grants: mpsc::UnboundedReceiver<usize>,
) {
    let stream = ctx.stream;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Output::default();
    while let Some(grant) = grants.recv().await {
        let want = grant.min(buf.len()).max(1);
        match rd.read(&mut buf[..want]).await {
            Ok(0) => {
                ctx.with_accel(|a, out| a.local_eof(out), &mut out, Some(0));
                if !ctx.route(&mut out) {
                    return;
                }
                let _ = ctx.tx.send(PumpMsg::Eof { stream });
                return;
            }
            Ok(n) => {
                // A short read means the socket had nothing more just now.
                let drained = n < want;
                ctx.with_accel(
                    |a, out| a.from_local(&buf[..n], drained, out),
                    &mut out,
                    Some(0),
                );
                if !ctx.route(&mut out) {
                    return;
                }
                // Answer every grant, even if nothing went to the tunnel.
                let _ = ctx.tx.send(PumpMsg::GrantUsed { stream });
            }
            Err(e) => {
                debug!(stream, "local read failed: {e}");
                let _ = ctx.tx.send(PumpMsg::Failed { stream });
                return;
            }
        }
    }
}

async fn write_pump(
    ctx: PumpCtx,
    mut wr: tokio::io::WriteHalf<Box<dyn LocalIo>>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
) {
    let stream = ctx.stream;
    let mut out = Output::default();
    while let Some(msg) = inbound.recv().await {
        match msg {
            Inbound::Data(bytes) => {
                ctx.with_accel(
                    |a, out| a.from_tunnel(&bytes, out),
                    &mut out,
                    Some(bytes.len()),
                );
                if !ctx.route(&mut out) {
                    return;
                }
            }
            Inbound::Wake => {}
            Inbound::LinkLost => {
                if !write_queued(&ctx, &mut wr).await {
                    return;
                }
                ctx.with_accel(|a, out| a.link_lost(out), &mut out, None);
                if !out.to_local.is_empty() {
                    let _ = wr.write_all(&out.to_local).await;
                }
                let _ = wr.shutdown().await;
                return;
            }
            Inbound::Fin => {
                if !write_queued(&ctx, &mut wr).await {
                    return;
                }
                let _ = wr.shutdown().await;
                let _ = ctx.tx.send(PumpMsg::Closed { stream });
                return;
            }
        }
        if !write_queued(&ctx, &mut wr).await {
            return;
        }
    }
}

/// Writes what the accelerator queued for the local socket, in order, and
/// returns the stream credit for it. False if the socket failed.
async fn write_queued(ctx: &PumpCtx, wr: &mut tokio::io::WriteHalf<Box<dyn LocalIo>>) -> bool {
    loop {
        let next = ctx.outq.lock().expect("outq lock").pop_front();
        let Some((bytes, consumed)) = next else {
            return true;
        };
        if !bytes.is_empty()
            && let Err(e) = wr.write_all(&bytes).await
        {
            debug!(stream = ctx.stream, "local write failed: {e}");
            let _ = ctx.tx.send(PumpMsg::Failed { stream: ctx.stream });
            return false;
        }
        if consumed > 0 {
            let _ = ctx.tx.send(PumpMsg::Written {
                stream: ctx.stream,
                n: consumed,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use straw_core::wire::Frame;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn liveness_probes_after_a_loaded_rtt_then_declares_dead() {
        let t0 = Instant::now();
        let mut l = LivenessCheck::new(LivenessConfig::default(), t0);
        // 1.5 s RTT, 3 s of link time queued on a side.
        let rtt = LivenessCheck::loaded_rtt(Some(secs(1.5)), 3.0);
        assert_eq!(rtt, secs(7.5));
        let dead = l.dead_after(rtt);
        assert_eq!(dead, secs(24.5));
        assert_eq!(l.next_check(rtt, true), Some(t0 + rtt));
        assert_eq!(l.poll(t0 + secs(7.0), rtt, true), Liveness::Fine);
        assert_eq!(l.poll(t0 + rtt, rtt, true), Liveness::Probe);
        assert_eq!(l.next_check(rtt, true), Some(t0 + rtt + dead));
        assert_eq!(
            l.poll(t0 + rtt + dead - secs(0.1), rtt, true),
            Liveness::Fine
        );
        // Anything received starts over.
        let t1 = t0 + rtt + secs(1.0);
        l.received(t1);
        assert_eq!(l.poll(t1 + secs(7.0), rtt, true), Liveness::Fine);
        assert_eq!(l.poll(t1 + rtt, rtt, true), Liveness::Probe);
        assert_eq!(l.poll(t1 + rtt + dead, rtt, true), Liveness::Dead);
        assert_eq!(l.detection_bound(rtt), rtt + dead);
    }

    #[test]
    fn liveness_idle_link_probes_rarely_or_never() {
        let t0 = Instant::now();
        let cfg = LivenessConfig::default();
        let mut l = LivenessCheck::new(cfg, t0);
        let rtt = LivenessCheck::loaded_rtt(None, 0.0);
        assert_eq!(rtt, UNMEASURED_RTT);
        assert_eq!(l.poll(t0 + secs(59.0), rtt, false), Liveness::Fine);
        assert_eq!(l.poll(t0 + secs(60.0), rtt, false), Liveness::Probe);
        // A short RTT still gets the floor.
        let fast = LivenessCheck::loaded_rtt(Some(secs(0.01)), 0.0);
        assert_eq!(l.dead_after(fast), cfg.min_dead);

        let mut never = LivenessCheck::new(
            LivenessConfig {
                idle_probe: Duration::ZERO,
                ..cfg
            },
            t0,
        );
        assert_eq!(never.next_check(rtt, false), None);
        assert_eq!(never.poll(t0 + secs(1e6), rtt, false), Liveness::Fine);
    }

    #[test]
    fn only_records_with_more_than_acks_await_an_answer() {
        let mut ack_only = vec![0u8];
        Frame::Ack { record: 300 }.encode(&mut ack_only);
        assert!(!ack_eliciting(&ack_only));
        let mut ping = ack_only.clone();
        Frame::Ping { stamp: 5 }.encode(&mut ping);
        assert!(ack_eliciting(&ping));
        assert!(ack_eliciting(&[1, 2, 3]), "compressed records carry data");
        assert!(!ack_eliciting(&[]));
    }
}
