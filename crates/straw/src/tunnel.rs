//! Drives one sans-IO [`straw_tunnel::Tunnel`] over one encrypted link.
//!
//! One task per tunnel owns the `Tunnel` and the link socket: it moves
//! records between the socket (through Noise) and the `Tunnel`, hands each
//! local socket's pumps ([`crate::pump`]) what the `Tunnel` says, and sleeps
//! until its next timer. The pumps only move bytes. A reader only reads as
//! much as the session granted it, so when the link is the bottleneck, the
//! program's writes block: that is the backpressure.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use straw_core::session::Session;
use straw_proto::Accelerator;
use straw_tunnel::{Event, LocalOut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::link::noise::{MessageReader, Transport};
use crate::pump::{self, PumpMsg};

pub use straw_tunnel::{Liveness, LivenessCheck, LivenessConfig};

/// Encrypted bytes we let queue in user space before waiting for the socket.
const WRITE_AHEAD: usize = 64 * 1024;

/// The link's read buffer: small while the tunnel is idle, doubled each time
/// a read fills it, back to small after [`BUFFERS_QUIET`] without a full
/// read. A server holds thousands of idle tunnels; 64 KiB each would be most
/// of their memory.
const READ_BUF_MIN: usize = 2 * 1024;
const READ_BUF_MAX: usize = 64 * 1024;
/// After this long without a full read, the link's buffers give back what a
/// burst made them hold.
const BUFFERS_QUIET: Duration = Duration::from_secs(5);
/// Buffers whose capacity is above this are dropped when quiet and empty.
const IDLE_BUF_CAPACITY: usize = 4 * 1024;

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

/// Connects the streams the peer opens (server side).
pub trait Dialer: Send + Sync + 'static {
    /// Services whose dial needs the stream's first bytes (e.g. an HTTP
    /// proxy request naming its origin) rather than happening at OPEN.
    fn first_data_services(&self) -> Vec<String> {
        Vec::new()
    }

    /// Connects to the upstream for `service`; `Err` resets the stream.
    fn dial(&self, service: &str, first_data: Option<Bytes>) -> DialFuture;
}

/// A [`Dialer`] refusing a stream by policy (not a failed dial): the stream
/// is reset and logged as refused, the tunnel carries on.
#[derive(Debug)]
pub struct DialRefused(pub String);

impl std::fmt::Display for DialRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DialRefused {}

/// Counters shared with tests, the bench and the hang-up cost line.
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
    /// The session's smoothed RTT in microseconds (0: not measured yet).
    pub srtt_us: AtomicU64,
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

/// The tasks and channels of one local socket (and of its dial).
#[derive(Default)]
struct Pumps {
    grants: Option<mpsc::UnboundedSender<usize>>,
    to_local: Option<mpsc::UnboundedSender<LocalOut>>,
    /// Where the accelerator's cache updates go.
    cache: Option<SharedCache>,
    tasks: Vec<JoinHandle<()>>,
    /// The socket's writer task, awaited by [`Tunnel::give_up`].
    writer: Option<JoinHandle<()>>,
}

impl Drop for Pumps {
    fn drop(&mut self) {
        for t in self.tasks.iter().chain(&self.writer) {
            t.abort();
        }
    }
}

/// A session with its local streams. It outlives any one connection: when the
/// link drops, [`Tunnel::run_link`] returns and the pump tasks wait (their
/// grants run out), until [`Tunnel::resume`] puts it on a new connection.
pub struct Tunnel {
    core: straw_tunnel::Tunnel,
    transport: Transport,
    stop: Arc<Notify>,
    pumps: HashMap<u64, Pumps>,
    pump_tx: mpsc::UnboundedSender<PumpMsg>,
    pump_rx: mpsc::UnboundedReceiver<PumpMsg>,
    dialer: Option<Arc<dyn Dialer>>,
    stats: Arc<TunnelStats>,
    label: String,
    /// A handle on the current connection's socket, to tune its
    /// `TCP_USER_TIMEOUT` to the link (see [`Tunnel::set_link_socket`]).
    link_socket: Option<socket2::Socket>,
    user_timeout_set: Option<Duration>,
    /// The operator's counters (the server's; disabled elsewhere).
    metrics: crate::metrics::TunnelMetrics,
    /// This tunnel's part of the server's memory budget, if it has one.
    memory: Option<crate::memory::Share>,
    /// This tunnel's codec CPU in the server's account (None: not counted).
    codec_load: Option<crate::codec_load::CodecShare>,
    /// The server's codec threads, where bulk units are compressed (None:
    /// inline, as a client does), and where their jobs come back (made
    /// with the first job: a channel costs an idle tunnel ~1 KiB).
    codec_pool: Option<Arc<crate::codec_pool::CodecPool>>,
    bulk_done: Option<(
        mpsc::UnboundedSender<BulkDone>,
        mpsc::UnboundedReceiver<BulkDone>,
    )>,
    /// The client's status board, and when (with how many connections) it
    /// last heard from us.
    board: Option<Arc<crate::status::Board>>,
    board_told: Option<(Instant, usize)>,
}

/// A bulk job back from the codec threads, with the CPU it took.
type BulkDone = Box<(straw_core::codec::BulkJob, Option<Duration>)>;

/// How often a tunnel held back by the memory budget looks whether it has
/// room again.
const MEMORY_RECHECK: Duration = Duration::from_millis(50);

pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `deadline`, or forever without one (a `select!` arm).
pub(crate) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The next message of a channel not made yet: never.
async fn recv_opt<T, S>(ch: &mut Option<(S, mpsc::UnboundedReceiver<T>)>) -> Option<T> {
    match ch {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
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
        let mut core = straw_tunnel::Tunnel::new(session, dialer.is_some(), label.clone(), now());
        if let Some(d) = &dialer {
            core.set_first_data_services(d.first_data_services());
        }
        Self {
            core,
            transport,
            stop: Arc::new(Notify::new()),
            pumps: HashMap::new(),
            pump_tx,
            pump_rx,
            dialer,
            stats,
            label,
            link_socket: None,
            user_timeout_set: None,
            metrics: Default::default(),
            memory: None,
            codec_load: None,
            codec_pool: None,
            bulk_done: None,
            board: None,
            board_told: None,
        }
    }

    /// Tells `board` what each program connection is doing (the client's
    /// `straw status`).
    pub fn set_board(&mut self, board: Arc<crate::status::Board>) {
        self.board = Some(board);
        self.board_told = None;
    }

    /// Publishes the connections' activities to the board: at most every
    /// [`crate::status::PUBLISH_EVERY`], and at once when a connection came
    /// or went (`force`: now).
    pub fn publish_status(&mut self, force: bool) {
        let Some(board) = &self.board else {
            return;
        };
        let t = now();
        // Each turn, before the next command is read: cheap, and a budget
        // reached between two status publications still holds.
        self.core.set_bulk_hold(board.bulk_hold(t).as_deref());
        let count = self.core.stream_count();
        let due = match self.board_told {
            None => true,
            Some((at, n)) => {
                n != count || t.saturating_duration_since(at) >= crate::status::PUBLISH_EVERY
            }
        };
        if force || due {
            board.publish(t, self.core.activities());
            self.board_told = Some((t, count));
        }
    }

    /// Counts this tunnel in the server's metrics.
    pub fn set_metrics(&mut self, metrics: crate::metrics::TunnelMetrics) {
        self.metrics = metrics;
    }

    /// Close the link after this long with no local connections and
    /// nothing awaiting an answer ([`LinkEnded::Idle`]).
    pub fn set_idle_hangup(&mut self, after: Option<Duration>) {
        self.core.set_idle_hangup(after);
    }

    /// Attaches a local connection now, even between links (dial on
    /// demand): its bytes wait in the session for the next link.
    pub fn attach(&mut self, req: OpenRequest) {
        self.open_local(req);
    }

    pub fn set_liveness(&mut self, cfg: LivenessConfig) {
        self.core.set_liveness(cfg);
    }

    /// Counts what this tunnel buffers in the server's memory budget and
    /// holds it back while the budget is spent.
    pub fn set_memory_account(&mut self, account: &Arc<crate::memory::MemoryAccount>) {
        self.memory = Some(account.share());
    }

    /// Counts this tunnel's codec CPU in the server's account; while codec
    /// work saturates the cores and this tunnel takes a real share of it,
    /// its session keeps to the fast codec (see [`crate::codec_load`]).
    pub fn set_codec_load(&mut self, load: &Arc<crate::codec_load::CodecLoad>) {
        self.codec_load = Some(load.share(now()));
    }

    /// Compresses this tunnel's bulk units on `pool`'s threads instead of
    /// in this task ([`crate::codec_pool`]).
    pub fn set_codec_pool(&mut self, pool: &Arc<crate::codec_pool::CodecPool>) {
        self.codec_pool = Some(pool.clone());
        self.core.set_bulk_offload(true);
    }

    /// Hands the session's next bulk unit to the codec threads.
    fn submit_bulk_jobs(&mut self) {
        let Some(pool) = &self.codec_pool else {
            return;
        };
        while let Some(mut job) = self.core.poll_bulk_job() {
            let done = self
                .bulk_done
                .get_or_insert_with(mpsc::unbounded_channel)
                .0
                .clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                let done_job = pool
                    .run(move || {
                        let ((), cpu) = crate::metrics::cpu_timed(|| job.run());
                        Box::new((job, cpu))
                    })
                    .await;
                // A tunnel gone meanwhile no longer needs its unit.
                let _ = done.send(done_job);
            });
        }
    }

    /// Counts `cpu` of building (`encode`) or taking in records.
    fn codec_cpu(&mut self, cpu: Option<Duration>, encode: bool) {
        let Some(cpu) = cpu else {
            return;
        };
        if encode {
            self.metrics.encode_cpu(cpu);
        } else {
            self.metrics.decode_cpu(cpu);
        }
        if let Some(share) = self.codec_load.as_mut() {
            share.add(cpu);
        }
    }

    fn account_codec_load(&mut self, t: std::time::Instant) {
        if let Some(share) = self.codec_load.as_mut() {
            let on = share.degraded(t);
            if on != self.core.cpu_degraded() {
                self.core.set_cpu_degraded(on);
            }
        }
    }

    /// Reports what the tunnel buffers; under pressure it reads and grants
    /// nothing ([`straw_tunnel::Tunnel::set_memory_pressure`]).
    fn account_memory(&mut self) {
        let Some(share) = self.memory.as_mut() else {
            return;
        };
        let over = share.set(self.core.buffered_bytes() as u64);
        if over != self.core.memory_pressure() {
            self.core.set_memory_pressure(over);
            if over {
                share.account().log_pressure(&self.label);
            }
        }
    }

    /// The socket the next [`Tunnel::run_link`] runs over (a duplicate
    /// handle), so its `TCP_USER_TIMEOUT` can follow the measured link.
    pub fn set_link_socket(&mut self, sock: Option<socket2::Socket>) {
        self.link_socket = sock;
        self.user_timeout_set = None;
    }

    /// A reply may take this long on the link as measured now.
    pub fn loaded_rtt(&self) -> Duration {
        self.core.loaded_rtt()
    }

    /// Keeps the kernel's own dead-link timer near ours (a bit longer, so
    /// that ours, with its clearer message, normally fires first).
    fn tune_user_timeout(&mut self) {
        let Some(sock) = &self.link_socket else {
            return;
        };
        let Some(want) = self
            .core
            .liveness()
            .user_timeout(self.core.detection_bound())
        else {
            return;
        };
        let close = self.user_timeout_set.is_some_and(|t| {
            let (a, b) = (t.as_secs_f64(), want.as_secs_f64());
            (a - b).abs() <= 0.2 * b
        });
        if close {
            return;
        }
        match crate::link::tcp::set_user_timeout(sock.into(), want) {
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
        self.core.records_received()
    }

    /// Drops the compression state of a tunnel put aside for a resume.
    pub fn drop_encoder_state(&mut self) -> bool {
        self.core.drop_encoder_state()
    }

    /// Memory the tunnel holds: codec state and buffered stream bytes.
    pub fn memory_bytes(&self) -> u64 {
        (self.core.buffered_bytes() + self.core.session().codec_memory_bytes()) as u64
    }

    /// Local streams attached.
    pub fn stream_count(&self) -> usize {
        self.core.stream_count()
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
        self.core
            .resume(now(), peer_received)
            .context("cannot resume session")?;
        self.stats.resumes.fetch_add(1, Ordering::Relaxed);
        self.metrics.resumed();
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
        let mut rbuf = vec![0u8; READ_BUF_MIN];
        let mut last_full_read = tokio::time::Instant::now();
        let mut out: Vec<u8> = Vec::new();
        let mut out_pos = 0usize;
        let mut plain = Vec::new();
        let mut opens_open = true;
        let (mut rd, mut wr) = tokio::io::split(io);
        self.core.start_link(now());
        loop {
            let t = now();
            self.core.set_link_backlog(out.len() - out_pos);
            self.core.handle_timeout(t);
            match self.handle_events() {
                Some(LinkEnded::Idle) => {
                    let _ = wr.shutdown().await;
                    return Ok(LinkEnded::Idle);
                }
                Some(ended) => return Ok(ended),
                None => {}
            }
            self.tune_user_timeout();
            // Only build records when the socket has taken what we had, so that
            // priorities apply to data still in our hands.
            if out_pos == out.len() {
                out.clear();
                out_pos = 0;
                let timing = self.metrics.enabled() || self.codec_load.is_some();
                while out.len() < WRITE_AHEAD {
                    let rec = if timing {
                        let (rec, cpu) = crate::metrics::cpu_timed(|| self.core.poll_transmit(t));
                        self.codec_cpu(cpu, true);
                        rec
                    } else {
                        self.core.poll_transmit(t)
                    };
                    let Some(rec) = rec else {
                        break;
                    };
                    self.transport.encrypt(&rec, &mut out)?;
                }
                self.core.set_link_backlog(out.len());
            }
            self.submit_bulk_jobs();
            self.account_memory();
            self.account_codec_load(t);
            self.send_grants();
            self.send_local();
            self.publish_stats();
            self.publish_status(false);
            if !opens_open
                && self.core.stream_count() == 0
                && out_pos == out.len()
                && !self.core.session().bulk_job_pending()
            {
                return Ok(LinkEnded::Closed);
            }
            if rbuf.len() > READ_BUF_MIN && last_full_read.elapsed() >= BUFFERS_QUIET {
                rbuf = vec![0u8; READ_BUF_MIN];
                if out_pos == out.len() && out.capacity() > IDLE_BUF_CAPACITY {
                    out = Vec::new();
                    out_pos = 0;
                }
                if plain.capacity() > IDLE_BUF_CAPACITY {
                    plain = Vec::new();
                }
            }
            let mut deadline = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            if rbuf.len() > READ_BUF_MIN {
                // Wake to shrink the buffers even if nothing else is due.
                let shrink = last_full_read + BUFFERS_QUIET;
                deadline = Some(deadline.map_or(shrink, |d| d.min(shrink)));
            }
            if self.core.memory_pressure() {
                // Others drain the account without waking us: look again soon.
                let soon = tokio::time::Instant::now() + MEMORY_RECHECK;
                deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
            }
            tokio::select! {
                r = rd.read(&mut rbuf) => {
                    let n = match r {
                        Ok(0) => return Ok(LinkEnded::Lost(anyhow!("link closed by peer"))),
                        Ok(n) => n,
                        Err(e) => return Ok(LinkEnded::Lost(anyhow!(e).context("link read failed"))),
                    };
                    self.core.link_heard(now());
                    self.metrics.wire_read(n);
                    reader.push(&rbuf[..n]);
                    if n == rbuf.len() {
                        last_full_read = tokio::time::Instant::now();
                        if rbuf.len() < READ_BUF_MAX {
                            rbuf = vec![0u8; (rbuf.len() * 2).min(READ_BUF_MAX)];
                        }
                    }
                    while let Some(msg) = reader.next_message() {
                        self.transport.decrypt(&msg, &mut plain)?;
                        let (r, cpu) =
                            crate::metrics::cpu_timed(|| self.core.handle_record(now(), &plain));
                        self.codec_cpu(cpu, false);
                        r?;
                    }
                }
                r = wr.write(&out[out_pos..]), if out_pos < out.len() => {
                    match r {
                        Ok(0) => return Ok(LinkEnded::Lost(anyhow!("link write returned 0"))),
                        Ok(n) => {
                            out_pos += n;
                            self.metrics.wire_written(n);
                        }
                        Err(e) => return Ok(LinkEnded::Lost(anyhow!(e).context("link write failed"))),
                    }
                }
                done = recv_opt(&mut self.bulk_done) => {
                    // We hold a sender ourselves, so this never yields None.
                    if let Some(done) = done {
                        let (job, cpu) = *done;
                        self.codec_cpu(cpu, true);
                        self.core.bulk_job_done(job);
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
            }
        }
    }

    /// Acts on what the tunnel decided; returns how the link ends if it does.
    fn handle_events(&mut self) -> Option<LinkEnded> {
        let mut ended = None;
        while let Some(ev) = self.core.poll_event() {
            match ev {
                Event::Dial {
                    stream,
                    service,
                    first_data,
                } => self.spawn_dial(stream, service, first_data),
                Event::CachePut { stream, key, value } => {
                    if let Some(cache) = self.pumps.get(&stream).and_then(|p| p.cache.as_ref()) {
                        cache.lock().expect("cache lock").insert(key, value);
                    }
                }
                Event::StreamClosed { stream, stats } => {
                    self.pumps.remove(&stream);
                    self.metrics.stream_closed(stream, stats.as_ref());
                    if let Some(st) = stats {
                        self.stats
                            .link_waits
                            .fetch_add(st.link_waits, Ordering::Relaxed);
                        self.stats
                            .local_replies
                            .fetch_add(st.local_replies, Ordering::Relaxed);
                    }
                }
                Event::LinkDead(dead) => {
                    ended.get_or_insert(LinkEnded::Lost(anyhow!("{dead}")));
                }
                Event::IdleHangup => {
                    ended.get_or_insert(LinkEnded::Idle);
                }
            }
        }
        ended
    }

    /// Hands each idle reader a grant of what the session can take from it.
    fn send_grants(&mut self) {
        while let Some((stream, n)) = self.core.poll_grant() {
            if let Some(tx) = self.pumps.get(&stream).and_then(|p| p.grants.as_ref()) {
                let _ = tx.send(n);
            }
        }
    }

    /// Hands the writers what the tunnel has for their sockets.
    fn send_local(&mut self) {
        while let Some((stream, out)) = self.core.poll_local() {
            if let Some(tx) = self.pumps.get(&stream).and_then(|p| p.to_local.as_ref()) {
                let _ = tx.send(out);
            }
        }
    }

    fn publish_stats(&mut self) {
        let session = self.core.session();
        let st = session.stats();
        self.metrics.session(st);
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
            .store(session.codec_memory_bytes() as u64, Ordering::Relaxed);
        s.rate_estimate
            .store(session.estimate().rate() as u64, Ordering::Relaxed);
        let srtt = session
            .estimate()
            .srtt()
            .map_or(0, |d| d.as_micros().max(1));
        s.srtt_us
            .store(srtt.min(u64::MAX as u128) as u64, Ordering::Relaxed);
        for i in 0..8 {
            s.raw_bytes_sent_by_codec[i].store(st.raw_bytes_by_codec[i], Ordering::Relaxed);
            s.raw_bytes_received_by_codec[i]
                .store(st.raw_bytes_received_by_codec[i], Ordering::Relaxed);
        }
    }

    fn open_local(&mut self, req: OpenRequest) {
        match self.core.open_local(&req.service, req.accel, req.warm_up) {
            Ok(id) => {
                self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                self.start_pumps(id, req.io, req.cache);
            }
            Err(e) => warn!(tunnel = %self.label, "refusing local connection: {e}"),
        }
    }

    fn start_pumps(&mut self, stream: u64, io: Box<dyn LocalIo>, cache: Option<SharedCache>) {
        let (rd, wr) = tokio::io::split(io);
        let (grants_tx, grants_rx) = mpsc::unbounded_channel();
        let (local_tx, local_rx) = mpsc::unbounded_channel();
        let p = self.pumps.entry(stream).or_default();
        p.grants = Some(grants_tx);
        p.to_local = Some(local_tx);
        p.cache = cache;
        p.tasks.push(tokio::spawn(pump::read(
            stream,
            rd,
            grants_rx,
            self.pump_tx.clone(),
        )));
        p.writer = Some(tokio::spawn(pump::write(
            stream,
            wr,
            local_rx,
            self.pump_tx.clone(),
        )));
    }

    /// Ends the tunnel for good: each local connection hears it in its
    /// protocol's terms ([`Accelerator::link_lost`]) after whatever was
    /// already on its way to it, and is closed. Waits up to `linger` for the
    /// writes (a program that doesn't read can't hold us up).
    pub async fn give_up(self, linger: std::time::Duration) {
        let label = self.label.clone();
        let n = self.give_up_quietly(linger).await;
        info!(tunnel = %label, connections = n, "tunnel given up: local connections told and closed");
    }

    /// As [`Tunnel::give_up`], without its log line (the caller logs why);
    /// returns the local connections told.
    pub async fn give_up_quietly(mut self, linger: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + linger;
        let waiting = self.core.give_up();
        self.send_local();
        let writers: Vec<_> = waiting
            .iter()
            .filter_map(|id| self.pumps.get_mut(id).and_then(|p| p.writer.take()))
            .collect();
        let n = writers.len();
        for w in writers {
            let abort = w.abort_handle();
            if tokio::time::timeout_at(deadline, w).await.is_err() {
                abort.abort();
            }
        }
        self.core.close_all();
        self.handle_events();
        n
    }

    fn handle_pump(&mut self, msg: PumpMsg) {
        match msg {
            PumpMsg::Read {
                stream,
                bytes,
                drained,
            } => {
                self.metrics.local_read(stream, bytes.len());
                self.core.handle_local(stream, &bytes, drained)
            }
            PumpMsg::Eof { stream } => self.core.local_eof(stream),
            PumpMsg::Failed { stream } => self.core.local_failed(stream),
            PumpMsg::Written { stream, n } => {
                self.metrics.local_written(stream, n);
                self.core.local_written(stream, n)
            }
            PumpMsg::Closed { stream } => self.core.local_closed(stream),
            PumpMsg::Dialed { stream, result } => match result {
                Ok((io, accel)) => {
                    if self.core.dialed(stream, accel) {
                        self.start_pumps(stream, io, None);
                    }
                }
                Err(e) if e.is::<DialRefused>() => {
                    warn!(tunnel = %self.label, stream, "stream refused: {e}");
                    self.core.dial_failed(stream);
                }
                Err(e) => {
                    warn!(tunnel = %self.label, stream, "upstream unreachable: {e:#}");
                    self.core.dial_failed(stream);
                }
            },
        }
    }

    fn spawn_dial(&mut self, stream: u64, service: String, first: Option<Bytes>) {
        let Some(dialer) = self.dialer.clone() else {
            return;
        };
        self.stats.streams_opened.fetch_add(1, Ordering::Relaxed);
        self.metrics.stream_opened(stream, &service);
        let tx = self.pump_tx.clone();
        let task = tokio::spawn(async move {
            let result = dialer.dial(&service, first).await;
            let _ = tx.send(PumpMsg::Dialed { stream, result });
        });
        self.pumps.entry(stream).or_default().tasks.push(task);
    }
}
