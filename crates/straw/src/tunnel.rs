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
use std::time::Instant;

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
    /// Bytes the accelerator produced for the local socket itself.
    Local(Vec<u8>),
    Fin,
}

type SharedAccel = Arc<std::sync::Mutex<Box<dyn Accelerator>>>;

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
    accel: Option<SharedAccel>,
    service: String,
    /// Server side: the dial waits for the stream's first bytes.
    dial_pending_data: bool,
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
            accel: None,
            service,
            dial_pending_data: false,
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        for t in &self.tasks {
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
        loop {
            let t = now();
            self.dispatch_events()?;
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
            tokio::select! {
                r = rd.read(&mut rbuf) => {
                    let n = match r {
                        Ok(0) => return Ok(LinkEnded::Lost(anyhow!("link closed by peer"))),
                        Ok(n) => n,
                        Err(e) => return Ok(LinkEnded::Lost(anyhow!(e).context("link read failed"))),
                    };
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
            cache,
        };
        ctx.route(&mut out);
        a.accel = Some(ctx.accel.clone());
        let (grant_tx, grant_rx) = mpsc::unbounded_channel();
        a.grant_tx = Some(grant_tx);
        let inbound_rx = a.inbound_rx.take().expect("pumps start once");
        a.tasks
            .push(tokio::spawn(read_pump(ctx.clone(), rd, grant_rx)));
        a.tasks.push(tokio::spawn(write_pump(ctx, wr, inbound_rx)));
    }

    /// Drops a stream's sockets and tasks, keeping its accelerator's counters.
    fn forget(&mut self, stream: u64) {
        let Some(a) = self.streams.remove(&stream) else {
            return;
        };
        if let Some(accel) = &a.accel {
            let st = accel.lock().expect("accelerator lock").stats();
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
                if self.streams.contains_key(&stream) {
                    // A stream the peer reset is gone from the session; drop quietly.
                    let _ = self.session.send(stream, &bytes);
                    if bulk {
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
                Event::Proto { .. } => {}
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
    cache: Option<SharedCache>,
}

impl PumpCtx {
    fn with_accel(&self, f: impl FnOnce(&mut dyn Accelerator, &mut Output), out: &mut Output) {
        out.clear();
        let mut guard = self.accel.lock().expect("accelerator lock");
        f(guard.as_mut(), out);
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
        if let Some(reason) = out.fail.take() {
            warn!(stream = self.stream, "closing connection: {reason}");
            let _ = self.tx.send(PumpMsg::Failed {
                stream: self.stream,
            });
            return false;
        }
        if !out.to_local.is_empty() {
            let _ = self
                .local
                .send(Inbound::Local(std::mem::take(&mut out.to_local)));
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
                ctx.with_accel(|a, out| a.local_eof(out), &mut out);
                if !ctx.route(&mut out) {
                    return;
                }
                let _ = ctx.tx.send(PumpMsg::Eof { stream });
                return;
            }
            Ok(n) => {
                // A short read means the socket had nothing more just now.
                let drained = n < want;
                ctx.with_accel(|a, out| a.from_local(&buf[..n], drained, out), &mut out);
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
        let (bytes, consumed) = match msg {
            Inbound::Data(bytes) => {
                ctx.with_accel(|a, out| a.from_tunnel(&bytes, out), &mut out);
                let to_local = std::mem::take(&mut out.to_local);
                if !ctx.route(&mut out) {
                    return;
                }
                (to_local, bytes.len())
            }
            Inbound::Local(bytes) => (bytes, 0),
            Inbound::Fin => {
                let _ = wr.shutdown().await;
                let _ = ctx.tx.send(PumpMsg::Closed { stream });
                return;
            }
        };
        if !bytes.is_empty()
            && let Err(e) = wr.write_all(&bytes).await
        {
            debug!(stream, "local write failed: {e}");
            let _ = ctx.tx.send(PumpMsg::Failed { stream });
            return;
        }
        if consumed > 0 {
            let _ = ctx.tx.send(PumpMsg::Written {
                stream,
                n: consumed,
            });
        }
    }
}
