//! The server's metrics for its operator, in the Prometheus text format, on
//! a small HTTP endpoint of their own (`[metrics] listen`, off by default).
//!
//! Counting happens through one [`Metrics`] per server (no global registry:
//! several servers in one process, as in the tests, keep their own counts),
//! and one [`TunnelMetrics`] per tunnel that the driver calls into with
//! one-line hooks. A tunnel without metrics (the client, or a server with
//! the endpoint off) gets a disabled [`TunnelMetrics`]: its hooks do nothing,
//! not even read a clock.
//!
//! Why the `prometheus` crate and a hand-written listener: it renders the
//! classic text format (`prometheus-client` renders OpenMetrics, whose
//! counters `promtool check metrics` rejects), it has float counters for CPU
//! seconds (the `metrics` facade counts integers only), it adds two small
//! crates and no HTTP stack, and a scrape is one GET answered with one body,
//! which a few lines of tokio serve with bounds on time, size and
//! concurrency.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus::{
    CounterVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TEXT_FORMAT, TextEncoder,
};
use straw_core::session::{
    SessionStats, WIRE_CLASS_CONTROL, WIRE_CLASS_FIRST_SERVICE, WIRE_CLASS_OTHER, WIRE_CLASSES,
};
use straw_proto::AccelStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::ServerConfig;
use crate::link::keys;

/// Scrapes answered at once; more wait for their turn.
const MAX_SCRAPES: usize = 4;
/// A scrape must send its request and take its answer within this.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;

/// The `client` label of a key without a `name=` in authorized_keys: the
/// key's first 8 base64 characters, as in the logs (the server passes
/// [`crate::server::ServerState::client_label`], which prefers the name).
pub fn client_label(key: &[u8; 32]) -> String {
    keys::encode_key(key)[..8].to_owned()
}

/// How a connection's handshake ended (`straw_handshakes_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A fresh session.
    Ok,
    /// The client's parked session, taken back.
    Resumed,
    /// The Noise handshake authenticated a key not in authorized_keys.
    RefusedUnknownKey,
    /// Not a straw handshake, a broken one, or an unacceptable Hello.
    BadMessage,
    /// Nothing, or not all of it, within the handshake deadlines.
    Timeout,
    /// Dropped to make room for newer connections (`[limits]`).
    Evicted,
    /// The session was still attached to an older connection (which was
    /// told to let go; the client retries).
    Busy,
    /// A first message not newer than one already accepted for its key.
    RefusedReplay,
    /// Past `[limits]` max_tunnels or max_sessions_per_key.
    RefusedLimit,
    /// The connection closed or failed during the handshake.
    Closed,
}

impl Handshake {
    pub const ALL: [Handshake; 10] = [
        Handshake::Ok,
        Handshake::Resumed,
        Handshake::RefusedUnknownKey,
        Handshake::BadMessage,
        Handshake::Timeout,
        Handshake::Evicted,
        Handshake::Busy,
        Handshake::RefusedReplay,
        Handshake::RefusedLimit,
        Handshake::Closed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Resumed => "resumed",
            Handshake::RefusedUnknownKey => "refused-unknown-key",
            Handshake::BadMessage => "bad-message",
            Handshake::Timeout => "timeout",
            Handshake::Evicted => "evicted",
            Handshake::Busy => "busy",
            Handshake::RefusedReplay => "refused-replay",
            Handshake::RefusedLimit => "refused-limit",
            Handshake::Closed => "closed",
        }
    }

    /// The outcome of a failed handshake, from its error (the deadline and
    /// eviction are known to the caller, which says so itself).
    pub fn of_error(e: &anyhow::Error) -> Handshake {
        if e.chain().any(|c| c.is::<std::io::Error>()) {
            return Handshake::Closed;
        }
        if e.chain()
            .any(|c| c.is::<straw_tunnel::handshake::ReplayError>())
        {
            return Handshake::RefusedReplay;
        }
        if e.chain().any(|c| c.is::<straw_tunnel::resume::Refusal>()) {
            return Handshake::RefusedLimit;
        }
        let text = format!("{e:#}");
        if text.contains("is not authorised") {
            Handshake::RefusedUnknownKey
        } else if text.contains("still attached") {
            Handshake::Busy
        } else if text.contains("sent nothing within") || text.contains("handshake timed out") {
            Handshake::Timeout
        } else if text.contains("dropped for newer connections") {
            Handshake::Evicted
        } else if text.contains("closed before the handshake") {
            Handshake::Closed
        } else {
            Handshake::BadMessage
        }
    }
}

/// A server's counters and gauges, and what renders them.
pub struct Metrics {
    enabled: bool,
    /// The configured services: a stream naming another (a client's OPEN
    /// says what it likes) is counted as `other`, so labels stay bounded.
    services: BTreeSet<String>,
    registry: Registry,
    tunnels_connected: IntGauge,
    tunnels_parked: IntGauge,
    /// Counts parked sessions at scrape time (set by the server).
    parked_source: Mutex<Option<Box<dyn Fn() -> usize + Send + Sync>>>,
    codec_queue: IntGauge,
    /// Counts bulk units waiting for a codec thread at scrape time.
    codec_queue_source: Mutex<Option<Box<dyn Fn() -> usize + Send + Sync>>>,
    handshakes: IntCounterVec,
    streams_opened: IntCounterVec,
    raw_bytes: IntCounterVec,
    tunnel_wire_bytes: IntCounterVec,
    tunnel_raw_bytes: IntCounterVec,
    wire_bytes: IntCounterVec,
    /// The `service` label of each wire accounting class (the session's
    /// classes: control, other, then [`Metrics::accounting_services`]).
    class_labels: Vec<String>,
    waits_saved: IntCounterVec,
    codec_cpu: CounterVec,
    resumes: IntCounterVec,
    message_resume_bytes: IntCounter,
    resident_memory: IntGauge,
    open_fds: IntGauge,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// `enabled`: whether tunnels count (a server with the endpoint off
    /// skips the per-record work).
    pub fn new(enabled: bool, services: impl IntoIterator<Item = String>) -> Arc<Metrics> {
        let r = Registry::new();
        let services: BTreeSet<String> = services.into_iter().collect();
        let mut class_labels = vec![String::new(); WIRE_CLASSES];
        class_labels[WIRE_CLASS_CONTROL] = "control".into();
        class_labels[WIRE_CLASS_OTHER] = "other".into();
        for (i, s) in services
            .iter()
            .take(WIRE_CLASSES - WIRE_CLASS_FIRST_SERVICE)
            .enumerate()
        {
            class_labels[WIRE_CLASS_FIRST_SERVICE + i] = s.clone();
        }
        let codec_cpu = CounterVec::new(
            Opts::new(
                "straw_codec_cpu_seconds_total",
                "CPU seconds of the tunnel tasks building and compressing records (op=encode) \
                 and decompressing and dispatching them to the streams (op=decode); \
                 encryption excluded",
            ),
            &["op"],
        )
        .expect("valid metric");
        r.register(Box::new(codec_cpu.clone()))
            .expect("unique metric");
        let m = Metrics {
            enabled,
            services,
            class_labels,
            tunnels_connected: gauge(
                &r,
                "straw_tunnels_connected",
                "Tunnels with a client connection now",
            ),
            tunnels_parked: gauge(
                &r,
                "straw_tunnels_parked",
                "Sessions without a connection, kept for a resume",
            ),
            parked_source: Mutex::new(None),
            codec_queue: gauge(
                &r,
                "straw_codec_queue",
                "Bulk units waiting for a codec thread (at most one per tunnel)",
            ),
            codec_queue_source: Mutex::new(None),
            handshakes: counter_vec(
                &r,
                "straw_handshakes_total",
                "Tunnel handshakes by outcome",
                &["outcome"],
            ),
            streams_opened: counter_vec(
                &r,
                "straw_streams_opened_total",
                "Streams the clients opened, by service",
                &["service"],
            ),
            raw_bytes: counter_vec(
                &r,
                "straw_raw_bytes_total",
                "Application bytes at the upstream sockets, by service; direction=up is \
                 written to the real server, down is read from it",
                &["service", "direction"],
            ),
            tunnel_wire_bytes: counter_vec(
                &r,
                "straw_tunnel_wire_bytes_total",
                "Encrypted tunnel bytes on the client's TCP connection (handshakes excluded), \
                 by client; direction=up is received from the client, down is sent to it",
                &["client", "direction"],
            ),
            tunnel_raw_bytes: counter_vec(
                &r,
                "straw_tunnel_raw_bytes_total",
                "Stream bytes the tunnel carried before compression, by client; \
                 direction=up is from the client, down is to it",
                &["client", "direction"],
            ),
            wire_bytes: counter_vec(
                &r,
                "straw_wire_bytes_total",
                "Tunnel record bytes by service: each record's bytes are shared among the \
                 services whose stream bytes it carried, by their share of them; \
                 service=control counts records without stream bytes (ACKs, credit, opens, \
                 pings), bulk slice headers and records re-sent after a resume. The 18 bytes \
                 of encryption framing per record are in straw_tunnel_wire_bytes_total only. \
                 direction=up is received from the clients, down is sent to them",
                &["service", "direction"],
            ),
            waits_saved: counter_vec(
                &r,
                "straw_accel_link_waits_saved_total",
                "Commands that reached the server side of an accelerator already queued \
                 behind one still awaiting the real server's reply (POP3, SMTP) or its \
                 literal continuation (IMAP): each is a round trip over the link that the \
                 mail program did not wait for, because the client side answered locally or \
                 sent ahead. Counted when the stream ends",
                &["service"],
            ),
            codec_cpu,
            resumes: counter_vec(
                &r,
                "straw_resumes_total",
                "Resumes: kind=tunnel, a session taken back on a new connection; \
                 kind=message, a POP3/IMAP message or SMTP body continued after a cut \
                 (counted when its connection ends)",
                &["kind"],
            ),
            message_resume_bytes: {
                let c = IntCounter::new(
                    "straw_message_resume_bytes_saved_total",
                    "Bytes of resumed messages not sent again (the part the other side held)",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            resident_memory: gauge(
                &r,
                "straw_process_resident_memory_bytes",
                "Resident memory of the server process",
            ),
            open_fds: gauge(
                &r,
                "straw_process_open_fds",
                "Open file descriptors of the server process",
            ),
            registry: r,
        };
        // Every outcome and op shows from the start, at zero.
        for h in Handshake::ALL {
            m.handshakes.with_label_values(&[h.label()]);
        }
        for op in ["encode", "decode"] {
            m.codec_cpu.with_label_values(&[op]);
        }
        for kind in ["tunnel", "message"] {
            m.resumes.with_label_values(&[kind]);
        }
        // Per-service series show at zero only where tunnels count.
        for label in m.class_labels.iter().filter(|l| enabled && !l.is_empty()) {
            for d in ["up", "down"] {
                m.wire_bytes.with_label_values(&[label, d]);
            }
        }
        for s in m
            .services
            .iter()
            .map(String::as_str)
            .chain(["other"])
            .filter(|_| enabled)
        {
            m.waits_saved.with_label_values(&[s]);
        }
        Arc::new(m)
    }

    pub fn handshake(&self, outcome: Handshake) {
        self.handshakes.with_label_values(&[outcome.label()]).inc();
    }

    /// Counts a tunnel as connected until the guard is dropped.
    pub fn tunnel_up(self: &Arc<Self>) -> ConnectedGuard {
        self.tunnels_connected.inc();
        ConnectedGuard(self.clone())
    }

    /// The services the sessions count wire bytes for, in class order
    /// ([`straw_core::session::SessionConfig::accounting_services`]); the
    /// labels of [`Metrics::tunnel`]'s counters follow the same order.
    pub fn accounting_services(&self) -> Vec<Vec<u8>> {
        self.class_labels[WIRE_CLASS_FIRST_SERVICE..]
            .iter()
            .take_while(|l| !l.is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect()
    }

    /// Where the parked-session count comes from at each scrape.
    pub fn set_parked_source(&self, f: impl Fn() -> usize + Send + Sync + 'static) {
        *self.parked_source.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// Where the codec threads' queue length comes from at each scrape.
    pub fn set_codec_queue_source(&self, f: impl Fn() -> usize + Send + Sync + 'static) {
        *self
            .codec_queue_source
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// The counters of one tunnel of the client labelled `c` (disabled if
    /// this is).
    pub fn tunnel(self: &Arc<Self>, c: &str) -> TunnelMetrics {
        if !self.enabled {
            return TunnelMetrics::default();
        }
        let wire = |d| self.tunnel_wire_bytes.with_label_values(&[c, d]);
        let raw = |d| self.tunnel_raw_bytes.with_label_values(&[c, d]);
        let by_class = |d: &str| {
            self.class_labels
                .iter()
                .map(|l| (!l.is_empty()).then(|| self.wire_bytes.with_label_values(&[l, d])))
                .collect()
        };
        TunnelMetrics {
            on: Some(Box::new(Active {
                wire_up: wire("up"),
                wire_down: wire("down"),
                raw_up: raw("up"),
                raw_down: raw("down"),
                encode: self.codec_cpu.with_label_values(&["encode"]),
                decode: self.codec_cpu.with_label_values(&["decode"]),
                seen_raw_up: 0,
                seen_raw_down: 0,
                class_up: by_class("up"),
                class_down: by_class("down"),
                seen_class_up: [0; WIRE_CLASSES],
                seen_class_down: [0; WIRE_CLASSES],
                streams: HashMap::new(),
                m: self.clone(),
            })),
        }
    }

    /// The text a scrape gets; the process gauges are read now.
    pub fn render(&self) -> String {
        if let Some(f) = &*self.parked_source.lock().unwrap_or_else(|e| e.into_inner()) {
            self.tunnels_parked.set(f() as i64);
        }
        let queue = self
            .codec_queue_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(f) = &*queue {
            self.codec_queue.set(f() as i64);
        }
        drop(queue);
        if let Some(rss) = resident_memory() {
            self.resident_memory.set(rss as i64);
        }
        if let Some(n) = open_fds() {
            self.open_fds.set(n as i64);
        }
        let mut out = String::new();
        if let Err(e) = TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out) {
            warn!("metrics: cannot render: {e}");
        }
        out
    }
}

/// Keeps a tunnel counted in `straw_tunnels_connected`.
pub struct ConnectedGuard(Arc<Metrics>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.tunnels_connected.dec();
    }
}

/// Resident set size in bytes, from `/proc/self/statm` (Linux).
#[allow(unsafe_code)]
fn resident_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * u64::try_from(page).ok()?)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Open file descriptors, from `/proc/self/fd` (Linux).
fn open_fds() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
        // The listing's own descriptor is in it.
        Some(n.saturating_sub(1))
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// CPU time this thread has used, where the platform tells it cheaply.
#[allow(unsafe_code)]
pub fn thread_cpu() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    None
}

/// One tunnel's counters, with the labels resolved once. Default: disabled.
#[derive(Default)]
pub struct TunnelMetrics {
    on: Option<Box<Active>>,
}

struct Active {
    m: Arc<Metrics>,
    wire_up: IntCounter,
    wire_down: IntCounter,
    raw_up: IntCounter,
    raw_down: IntCounter,
    encode: prometheus::Counter,
    decode: prometheus::Counter,
    /// Session raw totals already added (the session counts cumulatively).
    seen_raw_up: u64,
    seen_raw_down: u64,
    /// Wire bytes by accounting class (None: a class no service has), and
    /// the session's cumulative counts already added.
    class_up: Vec<Option<IntCounter>>,
    class_down: Vec<Option<IntCounter>>,
    seen_class_up: [u64; WIRE_CLASSES],
    seen_class_down: [u64; WIRE_CLASSES],
    /// Each dialled stream's counters of its service.
    streams: HashMap<u64, StreamCounters>,
}

struct StreamCounters {
    up: IntCounter,
    down: IntCounter,
    waits_saved: IntCounter,
}

/// Adds to `counters` what `now` has beyond `seen` (both cumulative).
fn add_new(counters: &[Option<IntCounter>], now: &[u64], seen: &mut [u64]) {
    for ((c, &n), s) in counters.iter().zip(now).zip(seen.iter_mut()) {
        if let Some(c) = c {
            c.inc_by(n.saturating_sub(*s));
        }
        *s = (*s).max(n);
    }
}

/// Runs `f`, and says how much CPU time this thread spent in it (None
/// where the platform doesn't tell cheaply).
pub fn cpu_timed<T>(f: impl FnOnce() -> T) -> (T, Option<Duration>) {
    let Some(start) = thread_cpu() else {
        return (f(), None);
    };
    let out = f();
    (out, thread_cpu().map(|end| end.saturating_sub(start)))
}

impl TunnelMetrics {
    /// Whether the counters are on (else their updates cost nothing).
    pub fn enabled(&self) -> bool {
        self.on.is_some()
    }

    /// CPU time spent building records (encode).
    pub fn encode_cpu(&self, cpu: Duration) {
        if let Some(a) = &self.on {
            a.encode.inc_by(cpu.as_secs_f64());
        }
    }

    /// CPU time spent taking records in (decode).
    pub fn decode_cpu(&self, cpu: Duration) {
        if let Some(a) = &self.on {
            a.decode.inc_by(cpu.as_secs_f64());
        }
    }

    /// `n` bytes read from the tunnel's connection.
    pub fn wire_read(&self, n: usize) {
        if let Some(a) = &self.on {
            a.wire_up.inc_by(n as u64);
        }
    }

    /// `n` bytes written to the tunnel's connection.
    pub fn wire_written(&self, n: usize) {
        if let Some(a) = &self.on {
            a.wire_down.inc_by(n as u64);
        }
    }

    /// The session's cumulative counts (called as the driver publishes them).
    pub fn session(&mut self, st: &SessionStats) {
        if let Some(a) = &mut self.on {
            a.raw_up
                .inc_by(st.raw_bytes_received.saturating_sub(a.seen_raw_up));
            a.raw_down
                .inc_by(st.raw_bytes_sent.saturating_sub(a.seen_raw_down));
            a.seen_raw_up = a.seen_raw_up.max(st.raw_bytes_received);
            a.seen_raw_down = a.seen_raw_down.max(st.raw_bytes_sent);
            add_new(
                &a.class_up,
                &st.wire_bytes_received_by_class,
                &mut a.seen_class_up,
            );
            add_new(
                &a.class_down,
                &st.wire_bytes_sent_by_class,
                &mut a.seen_class_down,
            );
        }
    }

    /// The client opened `stream` for `service` (the server dials it).
    pub fn stream_opened(&mut self, stream: u64, service: &str) {
        if let Some(a) = &mut self.on {
            let service = if a.m.services.contains(service) {
                service
            } else {
                "other"
            };
            a.m.streams_opened.with_label_values(&[service]).inc();
            let c = |d| a.m.raw_bytes.with_label_values(&[service, d]);
            let counters = StreamCounters {
                up: c("up"),
                down: c("down"),
                waits_saved: a.m.waits_saved.with_label_values(&[service]),
            };
            a.streams.insert(stream, counters);
        }
    }

    /// `n` bytes read from `stream`'s upstream socket.
    pub fn local_read(&self, stream: u64, n: usize) {
        if let Some(c) = self.on.as_ref().and_then(|a| a.streams.get(&stream)) {
            c.down.inc_by(n as u64);
        }
    }

    /// `n` bytes written to `stream`'s upstream socket.
    pub fn local_written(&self, stream: u64, n: usize) {
        if let Some(c) = self.on.as_ref().and_then(|a| a.streams.get(&stream)) {
            c.up.inc_by(n as u64);
        }
    }

    /// `stream` is gone; `stats`: its accelerator's counters.
    pub fn stream_closed(&mut self, stream: u64, stats: Option<&AccelStats>) {
        if let Some(a) = &mut self.on {
            let counters = a.streams.remove(&stream);
            if let (Some(c), Some(st)) = (counters, stats) {
                c.waits_saved.inc_by(st.link_waits_saved);
            }
            if let Some(st) = stats.filter(|st| st.message_resumes > 0) {
                a.m.resumes
                    .with_label_values(&["message"])
                    .inc_by(st.message_resumes);
                a.m.message_resume_bytes.inc_by(st.message_resume_bytes);
            }
        }
    }

    /// The session resumed on a new connection.
    pub fn resumed(&self) {
        if let Some(a) = &self.on {
            a.m.resumes.with_label_values(&["tunnel"]).inc();
        }
    }
}

/// The endpoint's task; dropping it stops the endpoint.
pub struct Endpoint(Option<JoinHandle<()>>);

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// A server's metrics, with the endpoint listening if `cfg` asks for one.
pub async fn start(cfg: &ServerConfig) -> Result<(Arc<Metrics>, Endpoint)> {
    let services = cfg.services.keys().cloned();
    let Some(addr) = cfg.metrics.listen else {
        return Ok((Metrics::new(false, services), Endpoint(None)));
    };
    let metrics = Metrics::new(true, services);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    info!("metrics on http://{}/metrics", listener.local_addr()?);
    let task = tokio::spawn(serve(listener, metrics.clone()));
    Ok((metrics, Endpoint(Some(task))))
}

/// Answers each connection with the rendered metrics.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(SCRAPE_TIMEOUT, answer(sock, &metrics)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("metrics: scrape from {peer}: {e:#}"),
                Err(_) => warn!("metrics: scrape from {peer} timed out"),
            }
        });
    }
}

/// Reads a request head, answers it and closes: GET (or HEAD) on any path
/// gets the metrics, anything else 405.
async fn answer(mut sock: TcpStream, metrics: &Metrics) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(head.len() < MAX_REQUEST, "request head too long");
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let method = head.split(|&b| b == b' ').next().unwrap_or_default();
    let (status, body, head_only) = match method {
        b"GET" => ("200 OK", metrics.render(), false),
        b"HEAD" => ("200 OK", metrics.render(), true),
        _ => ("405 Method Not Allowed", String::new(), false),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {TEXT_FORMAT}; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    sock.write_all(&out).await?;
    sock.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::keys::generate;
    use crate::link::noise;

    #[test]
    fn client_label_is_the_logged_key_prefix() {
        let key = [7u8; 32];
        let label = client_label(&key);
        assert_eq!(label.len(), 8);
        assert!(keys::encode_key(&key).starts_with(&label));
    }

    /// A real server handshake with a key not in authorized_keys, and one
    /// with garbage, are told apart (the outcome follows the error text, so
    /// this catches a reworded error).
    #[tokio::test]
    async fn handshake_errors_are_classified() {
        let server = generate();
        let stranger = generate();
        let authorized = keys::AuthorizedKeys::default();
        let (mut c, mut s) = tokio::io::duplex(4096);
        let client = tokio::spawn(async move {
            let _ = noise::client_handshake(&mut c, &stranger, &server.public, b"").await;
        });
        let server2 = generate();
        let e = noise::server_handshake(&mut s, &server2, &authorized, |_, _| Ok(Vec::new()))
            .await
            .err()
            .unwrap();
        drop(s);
        let _ = client.await;
        // The client used another server key: that fails to authenticate.
        assert_eq!(Handshake::of_error(&e), Handshake::BadMessage, "{e:#}");

        let server = generate();
        let stranger = generate();
        let public = server.public;
        let (mut c, mut s) = tokio::io::duplex(4096);
        let client = tokio::spawn(async move {
            let _ = noise::client_handshake(&mut c, &stranger, &public, b"").await;
        });
        let e = noise::server_handshake(&mut s, &server, &authorized, |_, _| Ok(Vec::new()))
            .await
            .err()
            .unwrap();
        drop(s);
        let _ = client.await;
        assert_eq!(
            Handshake::of_error(&e),
            Handshake::RefusedUnknownKey,
            "{e:#}"
        );

        // The peer hangs up mid-message.
        let (mut c, mut s) = tokio::io::duplex(4096);
        c.write_all(&[0, 200, 1, 2]).await.unwrap();
        drop(c);
        let e = noise::server_handshake(&mut s, &server2, &authorized, |_, _| Ok(Vec::new()))
            .await
            .err()
            .unwrap();
        assert_eq!(Handshake::of_error(&e), Handshake::Closed, "{e:#}");
    }

    #[test]
    fn replay_and_limit_refusals_have_their_own_outcomes() {
        let replay =
            anyhow::Error::new(straw_tunnel::handshake::ReplayError::NotNewer { behind_ms: 5 })
                .context("noise handshake");
        assert_eq!(Handshake::of_error(&replay), Handshake::RefusedReplay);
        let limit = anyhow::Error::new(straw_tunnel::resume::Refusal::Tunnels { max: 3 });
        assert_eq!(Handshake::of_error(&limit), Handshake::RefusedLimit);
    }

    #[test]
    fn rendering_names_every_metric_with_help() {
        let m = Metrics::new(true, ["pop3".to_owned()]);
        m.set_parked_source(|| 3);
        m.set_codec_queue_source(|| 2);
        let mut t = m.tunnel(&client_label(&[1; 32]));
        t.stream_opened(1, "pop3");
        // A service the client made up: one bounded label for all of them.
        t.stream_opened(3, "made-up-1");
        t.stream_opened(4, "made-up-2");
        t.local_written(1, 10);
        t.local_read(1, 25);
        t.local_read(2, 99); // not a dialled stream: not counted
        let st = SessionStats {
            raw_bytes_received: 10,
            raw_bytes_sent: 25,
            ..Default::default()
        };
        let mut st = st;
        st.wire_bytes_sent_by_class[WIRE_CLASS_CONTROL] = 7;
        st.wire_bytes_sent_by_class[WIRE_CLASS_FIRST_SERVICE] = 11;
        st.wire_bytes_received_by_class[WIRE_CLASS_OTHER] = 5;
        t.session(&st);
        t.session(&st); // cumulative: counted once
        t.wire_read(40);
        t.wire_written(50);
        let resumed = AccelStats {
            message_resumes: 1,
            message_resume_bytes: 700,
            link_waits_saved: 4,
            ..Default::default()
        };
        t.stream_closed(1, Some(&resumed));
        t.local_read(1, 5); // closed: no longer counted
        let text = m.render();
        let c = client_label(&[1; 32]);
        for line in [
            "straw_tunnels_parked 3".to_owned(),
            "straw_codec_queue 2".to_owned(),
            "straw_streams_opened_total{service=\"pop3\"} 1".to_owned(),
            "straw_streams_opened_total{service=\"other\"} 2".to_owned(),
            "straw_raw_bytes_total{direction=\"up\",service=\"pop3\"} 10".to_owned(),
            "straw_raw_bytes_total{direction=\"down\",service=\"pop3\"} 25".to_owned(),
            format!("straw_tunnel_raw_bytes_total{{client=\"{c}\",direction=\"up\"}} 10"),
            format!("straw_tunnel_raw_bytes_total{{client=\"{c}\",direction=\"down\"}} 25"),
            format!("straw_tunnel_wire_bytes_total{{client=\"{c}\",direction=\"up\"}} 40"),
            format!("straw_tunnel_wire_bytes_total{{client=\"{c}\",direction=\"down\"}} 50"),
            "straw_handshakes_total{outcome=\"refused-unknown-key\"} 0".to_owned(),
            "straw_resumes_total{kind=\"message\"} 1".to_owned(),
            "straw_resumes_total{kind=\"tunnel\"} 0".to_owned(),
            "straw_message_resume_bytes_saved_total 700".to_owned(),
            "straw_wire_bytes_total{direction=\"down\",service=\"control\"} 7".to_owned(),
            "straw_wire_bytes_total{direction=\"down\",service=\"pop3\"} 11".to_owned(),
            "straw_wire_bytes_total{direction=\"up\",service=\"other\"} 5".to_owned(),
            "straw_wire_bytes_total{direction=\"up\",service=\"pop3\"} 0".to_owned(),
            "straw_accel_link_waits_saved_total{service=\"pop3\"} 4".to_owned(),
            "straw_accel_link_waits_saved_total{service=\"other\"} 0".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("made-up"), "{text}");
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = family.split(' ').next().unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        #[cfg(target_os = "linux")]
        {
            let rss = text
                .lines()
                .find_map(|l| l.strip_prefix("straw_process_resident_memory_bytes "))
                .unwrap();
            assert!(rss.parse::<u64>().unwrap() > 1 << 20, "rss {rss}");
        }
    }

    #[test]
    fn a_disabled_tunnel_counts_nothing() {
        let m = Metrics::new(false, ["pop3".to_owned()]);
        let mut t = m.tunnel(&client_label(&[1; 32]));
        t.stream_opened(1, "pop3");
        t.local_written(1, 10);
        assert!(!t.enabled());
        t.encode_cpu(Duration::from_secs(1));
        assert!(!m.render().contains("pop3"));
    }
}
