//! Satellite-link emulator: a TCP relay that imposes a bit rate, a one-way
//! delay, a per-segment header overhead, and injectable faults.
//!
//! Model, per direction ("up" = towards the dialled address, "down" = back):
//! data is cut into segments of at most [`LinkParams::mss`] bytes; each
//! segment occupies that direction's link for `(len + overhead) * 8 / rate`
//! seconds, one after another (the link is shared by every connection
//! relayed through the same [`Link`]); it is then delivered after
//! [`LinkParams::delay`]. Segments in flight during the delay pipeline, so the
//! delay does not throttle throughput. The clock and counters are
//! [`straw_linkmodel::Wire`]s; this module moves the bytes and adds faults.
//!
//! The source is only read as the link frees up, so a sender's backlog stays
//! in the sender's own buffers, as on a real slow link.
//!
//! Use it in-process with [`relay`] (any `AsyncRead + AsyncWrite`, e.g.
//! `tokio::io::duplex`, also under `#[tokio::test(start_paused = true)]`), or
//! over TCP with [`serve`] / the `straw linksim` command ([`run_cli`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use straw_tools::linksim::{Link, LinkParams, relay};
//! let link = Link::new(LinkParams::new(2400, Duration::from_millis(500)));
//! let (client, linksim_a) = tokio::io::duplex(64 * 1024);
//! let (linksim_b, server) = tokio::io::duplex(64 * 1024);
//! tokio::spawn(async move { relay(linksim_a, linksim_b, &link).await });
//! // `client` and `server` now talk over a 2400 bit/s, 500 ms link.
//! # drop((client, server)); Ok(()) }
//! ```

use std::fmt;
use std::future::pending;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use straw_linkmodel::{LinkModel, Wire};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{info, warn};

mod cli;
#[cfg(test)]
mod tests;

pub use cli::{LinksimArgs, run_cli};
pub use straw_linkmodel::{DEFAULT_MSS, DEFAULT_OVERHEAD, DirStats};

/// SO_RCVBUF for linksim's own sockets: keeps backlog in the peers' buffers.
pub const SOCKET_RCVBUF: usize = 4096;
/// How far ahead of the link clock a reader may fetch the next segment.
/// Timers have 1 ms granularity; waking exactly at the end of a segment
/// would add that rounding to every segment and lower the rate.
const READ_AHEAD: Duration = Duration::from_millis(2);

/// Faults to inject; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Cut each connection abruptly once this many payload bytes (both
    /// directions together) have been delivered on it.
    pub cut_after_bytes: Option<u64>,
    /// Cut every live connection of the link at this interval (only while
    /// [`serve`] runs; in-process callers use [`Link::cut_all`]).
    pub cut_every: Option<Duration>,
    /// After any cut, [`serve`] refuses new connections for this long.
    pub refuse_for: Option<Duration>,
}

/// Link characteristics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkParams {
    /// Link rate in bits per second (each direction). 0 is treated as 1.
    pub rate_bps: u64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Largest segment payload in bytes. 0 is treated as 1.
    pub mss: usize,
    /// Header bytes charged per segment on top of its payload.
    pub overhead: usize,
    /// Fault injection.
    pub faults: Faults,
}

impl LinkParams {
    /// A link with the given rate and one-way delay, default MSS and
    /// overhead, and no faults.
    pub fn new(rate_bps: u64, delay: Duration) -> Self {
        LinkParams {
            rate_bps,
            delay,
            mss: DEFAULT_MSS,
            overhead: DEFAULT_OVERHEAD,
            faults: Faults::default(),
        }
    }

    /// The link model these parameters describe, faults aside.
    pub fn model(&self) -> LinkModel {
        LinkModel {
            rate_bps: self.rate_bps,
            delay: self.delay,
            mss: self.mss,
            overhead: self.overhead,
        }
    }

    /// Time `payload` bytes occupy the link (one header per segment).
    pub fn serialisation_time(&self, payload: usize) -> Duration {
        self.model().serialisation_time(payload)
    }

    /// Checks the parameters make sense; the CLI reports this error.
    pub fn validate(&self) -> Result<(), String> {
        if self.rate_bps == 0 {
            return Err("rate must be at least 1 bit/s".into());
        }
        if self.mss == 0 {
            return Err("mss must be at least 1 byte".into());
        }
        if self.faults.cut_every == Some(Duration::ZERO) {
            return Err("cut-every must be positive".into());
        }
        Ok(())
    }
}

impl Default for LinkParams {
    /// An Iridium-like link: 2,400 bit/s, 500 ms one way.
    fn default() -> Self {
        LinkParams::new(2400, Duration::from_millis(500))
    }
}

/// A direction through the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the accepting side (`--listen`) to the dialled side (`--to`).
    Up,
    /// From the dialled side back to the accepting side.
    Down,
}

impl Direction {
    fn idx(self) -> usize {
        match self {
            Direction::Up => 0,
            Direction::Down => 1,
        }
    }
}

/// Live counters of a [`Link`], updated as segments go onto the link.
#[derive(Debug, Clone, Copy)]
pub struct LinkStats<'a>(&'a Link);

impl LinkStats<'_> {
    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            up: lock(&self.0.wires[0]).stats(),
            down: lock(&self.0.wires[1]).stats(),
        }
    }
}

/// Both directions' counters. `Display` gives the one-line form printed by
/// `straw linksim`:
/// `linksim up bytes=N segments=N link_secs=F down bytes=N segments=N link_secs=F`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatsSnapshot {
    pub up: DirStats,
    pub down: DirStats,
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "linksim up bytes={} segments={} link_secs={:.3} down bytes={} segments={} link_secs={:.3}",
            self.up.bytes,
            self.up.segments,
            self.up.link_time.as_secs_f64(),
            self.down.bytes,
            self.down.segments,
            self.down.link_time.as_secs_f64(),
        )
    }
}

/// One emulated link: per-direction serialisation clocks and stats,
/// parameters and fault state, shared by all connections relayed through it.
#[derive(Debug)]
pub struct Link {
    params: LinkParams,
    /// Each direction's clock and counters.
    wires: [Mutex<Wire>; 2],
    cut_tx: watch::Sender<u64>,
    refuse_until: Mutex<Option<Instant>>,
    next_conn: AtomicU64,
    queue_cap: usize,
    black_hole: AtomicBool,
}

impl Link {
    /// A new idle link. Zero rate or MSS are raised to 1 (see
    /// [`LinkParams::validate`] to reject them instead).
    pub fn new(mut params: LinkParams) -> Arc<Link> {
        params.rate_bps = params.rate_bps.max(1);
        params.mss = params.mss.max(1);
        // Enough queue for everything in flight during the delay.
        let seg = params
            .serialisation_time(params.mss)
            .max(Duration::from_nanos(1));
        let in_flight = (params.delay + READ_AHEAD * 2).as_nanos() / seg.as_nanos();
        let queue_cap = usize::try_from(in_flight)
            .unwrap_or(usize::MAX)
            .clamp(0, 1 << 16)
            + 4;
        let wire = || Mutex::new(Wire::new(params.model()));
        Arc::new(Link {
            wires: [wire(), wire()],
            params,
            cut_tx: watch::Sender::new(0),
            refuse_until: Mutex::new(None),
            next_conn: AtomicU64::new(1),
            queue_cap,
            black_hole: AtomicBool::new(false),
        })
    }

    /// The link's parameters.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// The link's live counters.
    pub fn stats(&self) -> LinkStats<'_> {
        LinkStats(self)
    }

    /// Cuts every connection currently relayed through this link (their
    /// [`relay`] calls end with `ConnectionAborted`), and starts the refusal
    /// period if one is configured.
    pub fn cut_all(&self) {
        self.cut_tx.send_modify(|g| *g += 1);
        self.note_cut();
    }

    /// Black hole: while on, segments still occupy the link (and count in
    /// the stats) but are never delivered, and nothing is closed, as when a
    /// satellite link dies silently. Bytes lost this way are gone for good,
    /// so a connection that lived through it is useless afterwards.
    pub fn set_black_hole(&self, on: bool) {
        self.black_hole.store(on, Ordering::Relaxed);
    }

    pub fn is_black_hole(&self) -> bool {
        self.black_hole.load(Ordering::Relaxed)
    }

    /// Whether [`serve`] is currently refusing new connections after a cut.
    pub fn is_refusing(&self) -> bool {
        let until = *lock(&self.refuse_until);
        until.is_some_and(|t| Instant::now() < t)
    }

    fn note_cut(&self) {
        if let Some(d) = self.params.faults.refuse_for {
            *lock(&self.refuse_until) = Some(Instant::now() + d);
        }
    }

    /// Books the link for one segment of `payload` bytes, starting when the
    /// link is free (or now, if later), counted in the stats if `count`.
    /// Returns when it leaves the link.
    fn reserve(&self, dir: Direction, payload: usize, count: bool) -> Instant {
        // The model takes std time; tokio's (paused or not) converts exactly.
        let now = Instant::now().into_std();
        let mut wire = lock(&self.wires[dir.idx()]);
        let transit = if count {
            tracing::trace!(?dir, payload, "segment");
            wire.send(now, payload)
        } else {
            wire.occupy(now, payload)
        };
        Instant::from_std(transit.end)
    }

    /// When `dir`'s link is next free (`None`: nothing sent yet).
    fn free_at(&self, dir: Direction) -> Option<Instant> {
        lock(&self.wires[dir.idx()])
            .free_at()
            .map(Instant::from_std)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data; a panicking holder can't corrupt them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a relay stopped early.
#[derive(Debug)]
enum Stop {
    Cut,
    Io(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

impl From<Stop> for io::Error {
    fn from(s: Stop) -> Self {
        match s {
            Stop::Cut => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "linksim: connection cut (fault injection)",
            ),
            Stop::Io(e) => e,
        }
    }
}

/// Per-connection state.
#[derive(Debug)]
struct Conn {
    /// Bytes this connection may still put on the link before its cut.
    budget: Option<AtomicU64>,
    limit: Option<u64>,
    delivered: [AtomicU64; 2],
    /// Neither direction reads before this (TCP handshake emulation).
    not_before: [Option<Instant>; 2],
}

impl Conn {
    fn new(params: &LinkParams) -> Self {
        let limit = params.faults.cut_after_bytes;
        Conn {
            budget: limit.map(AtomicU64::new),
            limit,
            delivered: Default::default(),
            not_before: [None, None],
        }
    }

    /// Takes up to `n` bytes from the cut budget; returns how many may pass.
    fn take_budget(&self, n: usize) -> usize {
        let Some(budget) = &self.budget else { return n };
        let mut rem = budget.load(Ordering::Relaxed);
        loop {
            let take = rem.min(n as u64);
            match budget.compare_exchange(rem, rem - take, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return take as usize,
                Err(now) => rem = now,
            }
        }
    }

    fn delivered_total(&self) -> u64 {
        self.delivered
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .sum()
    }
}

/// One queued segment, or the end of the stream (`data: None`).
struct Seg {
    at: Instant,
    data: Option<Vec<u8>>,
}

/// Relays between `a` (the "listen" side) and `b` (the "to" side) through
/// `link` until both directions have ended.
///
/// End of stream is forwarded as a half-close (`shutdown` of the other
/// side's write half), after the link delay. Returns `Ok` once both
/// directions have closed cleanly; the first I/O error in either direction
/// ends both. A cut (see [`Faults`], [`Link::cut_all`]) returns an error of
/// kind `ConnectionAborted`. Both streams are dropped on return.
///
/// Uses `tokio::time`, so it runs under a paused test clock.
pub async fn relay<A, B>(mut a: A, mut b: B, link: &Link) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let conn = Conn::new(&link.params);
    relay_conn(&mut a, &mut b, link, &conn, link.cut_tx.subscribe())
        .await
        .map_err(io::Error::from)
}

/// `cut_rx` is subscribed by the caller, so cuts since then count.
async fn relay_conn<A, B>(
    a: &mut A,
    b: &mut B,
    link: &Link,
    conn: &Conn,
    mut cut_rx: watch::Receiver<u64>,
) -> Result<(), Stop>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if conn.limit == Some(0) {
        link.note_cut();
        return Err(Stop::Cut);
    }
    if cut_rx.has_changed().unwrap_or(false) {
        return Err(Stop::Cut);
    }
    let (a_read, a_write) = tokio::io::split(a);
    let (b_read, b_write) = tokio::io::split(b);
    let (up_tx, up_rx) = mpsc::channel(link.queue_cap);
    let (down_tx, down_rx) = mpsc::channel(link.queue_cap);
    let pumps = async {
        tokio::try_join!(
            read_side(a_read, Direction::Up, link, conn, up_tx),
            write_side(b_write, Direction::Up, link, conn, up_rx),
            read_side(b_read, Direction::Down, link, conn, down_tx),
            write_side(a_write, Direction::Down, link, conn, down_rx),
        )
    };
    tokio::select! {
        r = pumps => r.map(|_| ()),
        Ok(()) = cut_rx.changed() => Err(Stop::Cut),
    }
}

/// Reads segments from `src` as the link frees up and queues them for
/// delivery.
async fn read_side<R: AsyncRead + Unpin>(
    mut src: R,
    dir: Direction,
    link: &Link,
    conn: &Conn,
    tx: mpsc::Sender<Seg>,
) -> Result<(), Stop> {
    if let Some(t) = conn.not_before[dir.idx()] {
        sleep_until(t).await;
    }
    let delay = link.params.delay;
    loop {
        let mut buf = vec![0u8; link.params.mss];
        let n = src.read(&mut buf).await?;
        if n == 0 {
            // The reader only runs READ_AHEAD before the link clock, so the
            // FIN may need to wait for the last segment to leave.
            let last = link.free_at(dir).unwrap_or_else(Instant::now);
            let at = last.max(Instant::now()) + delay;
            let _ = tx.send(Seg { at, data: None }).await;
            return Ok(());
        }
        let n = conn.take_budget(n);
        if n == 0 {
            // Cut budget spent: the writer that delivers the last bytes cuts.
            return pending().await;
        }
        buf.truncate(n);
        let end = link.reserve(dir, n, true);
        let seg = Seg {
            at: end + delay,
            data: Some(buf),
        };
        if tx.send(seg).await.is_err() {
            // The writer stopped, which only happens when the relay is ending.
            return Ok(());
        }
        sleep_until(end.checked_sub(READ_AHEAD).unwrap_or(end)).await;
    }
}

/// Delivers queued segments to `dst` at their due times.
async fn write_side<W: AsyncWrite + Unpin>(
    mut dst: W,
    dir: Direction,
    link: &Link,
    conn: &Conn,
    mut rx: mpsc::Receiver<Seg>,
) -> Result<(), Stop> {
    while let Some(seg) = rx.recv().await {
        sleep_until(seg.at).await;
        if link.is_black_hole() {
            continue;
        }
        let Some(data) = seg.data else {
            dst.shutdown().await?;
            return Ok(());
        };
        dst.write_all(&data).await?;
        dst.flush().await?;
        conn.delivered[dir.idx()].fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(limit) = conn.limit
            && conn.delivered_total() >= limit
        {
            link.note_cut();
            return Err(Stop::Cut);
        }
    }
    Ok(())
}

/// Options for [`serve_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Emulate the TCP three-way handshake over the link: the upstream
    /// connection is opened one delay after accepting, client data starts
    /// flowing once the SYN-ACK would have arrived, server data once the
    /// final ACK would have, so the first byte either way costs a real
    /// connection's 1.5 or 2 round trips. On by default.
    pub emulate_handshake: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            emulate_handshake: true,
        }
    }
}

/// Accept loop: relays every connection accepted on `listener` to `to`
/// through `link`, with default [`ServeOptions`]. Runs until the listener
/// fails (transient accept errors are logged and retried); cancel it by
/// dropping the future.
pub async fn serve(listener: TcpListener, to: SocketAddr, link: Arc<Link>) -> io::Result<()> {
    serve_with(listener, to, link, ServeOptions::default()).await
}

/// [`serve`] with explicit options.
pub async fn serve_with(
    listener: TcpListener,
    to: SocketAddr,
    link: Arc<Link>,
    opts: ServeOptions,
) -> io::Result<()> {
    // Accepted sockets inherit this; best effort, `run_cli` sets it pre-listen.
    let _ = socket2::SockRef::from(&listener).set_recv_buffer_size(SOCKET_RCVBUF);
    let _ticker = link.params.faults.cut_every.map(|every| {
        let link = link.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            loop {
                tick.tick().await;
                info!("linksim: cutting all connections (cut-every)");
                link.cut_all();
            }
        }))
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) if is_transient_accept_error(&e) => {
                warn!("linksim: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if link.is_refusing() {
            info!(%peer, "linksim: refusing connection (after a cut)");
            reset(&stream);
            continue;
        }
        let id = link.next_conn.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(handle_conn(stream, peer, to, link.clone(), id, opts));
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// No Nagle, so segments leave when the link says. The small receive buffer
/// comes from the listener: setting it on an established socket stalls
/// loopback transfers (the window already advertised no longer fits).
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Makes the coming drop send RST instead of FIN.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Binds a listener for [`serve`] with linksim's small receive buffer set
/// before `listen`, so that accepted connections get it from their first
/// advertised window.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_recv_buffer_size(SOCKET_RCVBUF as u32)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

async fn connect_upstream(to: SocketAddr) -> io::Result<TcpStream> {
    let sock = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Before connect, so the advertised window is small from the start.
    sock.set_recv_buffer_size(SOCKET_RCVBUF as u32)?;
    sock.set_nodelay(true)?;
    sock.connect(to).await
}

async fn handle_conn(
    mut a: TcpStream,
    peer: SocketAddr,
    to: SocketAddr,
    link: Arc<Link>,
    id: u64,
    opts: ServeOptions,
) {
    tune(&a);
    info!(id, %peer, %to, "linksim: connection open");
    // Subscribed now so that a cut during the handshake also applies.
    let cut_rx = link.cut_tx.subscribe();
    let mut conn = Conn::new(&link.params);
    if opts.emulate_handshake {
        // SYN up, SYN-ACK down, ACK up (header-only segments, not counted
        // in the stats but occupying the link).
        let d = link.params.delay;
        sleep_until(link.reserve(Direction::Up, 0, false) + d).await;
    }
    let mut b = match connect_upstream(to).await {
        Ok(b) => b,
        Err(e) => {
            warn!(id, %to, "linksim: upstream connect failed: {e}");
            reset(&a);
            return;
        }
    };
    if opts.emulate_handshake {
        let d = link.params.delay;
        let synack_at = link.reserve(Direction::Down, 0, false) + d;
        sleep_until(synack_at).await;
        let ack_at = link.reserve(Direction::Up, 0, false) + d;
        conn.not_before = [Some(synack_at), Some(ack_at)];
    }
    let result = relay_conn(&mut a, &mut b, &link, &conn, cut_rx).await;
    let up = conn.delivered[0].load(Ordering::Relaxed);
    let down = conn.delivered[1].load(Ordering::Relaxed);
    match result {
        Ok(()) => info!(id, up, down, "linksim: connection closed"),
        Err(Stop::Cut) => {
            reset(&a);
            reset(&b);
            info!(id, up, down, "linksim: connection cut");
        }
        Err(Stop::Io(e)) => info!(id, up, down, "linksim: connection closed on error: {e}"),
    }
}
