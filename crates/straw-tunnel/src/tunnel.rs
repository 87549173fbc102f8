//! [`Tunnel`]: one session with its local streams, sans IO. The driver
//! feeds it what the sockets deliver and asks it what to send, when to wake
//! it and what happened; every decision is made here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use straw_core::session::{self, Priority, Session, SessionError, reset_code};
use straw_proto::{AccelStats, Accelerator, Activity, Output};
use tracing::{debug, info, warn};

use crate::liveness::{Liveness, LivenessCheck, LivenessConfig};
use crate::local::{Early, LocalOut, LocalStream};

/// Largest single read the tunnel grants a local socket.
pub const READ_CHUNK: usize = 64 * 1024;

/// What the driver must act on ([`Tunnel::poll_event`]).
#[derive(Debug)]
pub enum Event {
    /// Server: connect the real server of `service` for `stream` (with the
    /// stream's first bytes when the service routes by them), then call
    /// [`Tunnel::dialed`] or [`Tunnel::dial_failed`].
    Dial {
        stream: u64,
        service: String,
        first_data: Option<Bytes>,
    },
    /// An accelerator's update for the cache of `stream`'s service.
    CachePut {
        stream: u64,
        key: String,
        value: Vec<u8>,
    },
    /// The stream is gone: drop its socket pumps. `stats` is its
    /// accelerator's counters if it had one and was a program's connection.
    StreamClosed {
        stream: u64,
        stats: Option<AccelStats>,
    },
    /// Nothing came back for too long: the link is dead (the session lives
    /// on for a resume).
    LinkDead(LinkDead),
    /// Idle for the hang-up time: close the link, keep the session.
    IdleHangup,
}

/// One program connection, for the status screen ([`Tunnel::activities`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamActivity {
    pub stream: u64,
    pub service: String,
    /// What its accelerator says it is doing (None: idle, or not told).
    pub activity: Option<Activity>,
}

/// The silence that made [`Event::LinkDead`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkDead {
    pub silent: Duration,
    pub dead_after: Duration,
    pub loaded_rtt: Duration,
}

impl std::fmt::Display for LinkDead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "link silent for {:.1} s (dead after {:.1} s on a loaded RTT of {:.1} s)",
            self.silent.as_secs_f64(),
            self.dead_after.as_secs_f64(),
            self.loaded_rtt.as_secs_f64()
        )
    }
}

/// A session with its local streams. It outlives any one link: between
/// links its streams wait (their grants run out) until [`Tunnel::resume`].
pub struct Tunnel {
    session: Session,
    streams: HashMap<u64, LocalStream>,
    events: VecDeque<Event>,
    label: String,
    /// Server: the peer may open streams.
    accepts_streams: bool,
    /// Services whose dial waits for the stream's first bytes.
    first_data_services: HashSet<String>,
    liveness_cfg: LivenessConfig,
    live: LivenessCheck,
    idle_hangup: Option<Duration>,
    idle_since: Option<Instant>,
    /// Encrypted bytes the driver still holds for the link socket.
    link_backlog: usize,
    /// The server's memory budget is spent (see [`Tunnel::set_memory_pressure`]).
    pressure: bool,
    /// Why new bulk transfers are held back (client: the call's budget).
    bulk_hold: Option<String>,
    scratch: Output,
}

impl Tunnel {
    /// `accepts_streams`: the peer may open streams (the server side).
    pub fn new(session: Session, accepts_streams: bool, label: String, now: Instant) -> Self {
        let liveness_cfg = LivenessConfig::default();
        Self {
            session,
            streams: HashMap::new(),
            events: VecDeque::new(),
            label,
            accepts_streams,
            first_data_services: HashSet::new(),
            liveness_cfg,
            live: LivenessCheck::new(liveness_cfg, now),
            idle_hangup: None,
            idle_since: None,
            link_backlog: 0,
            pressure: false,
            bulk_hold: None,
            scratch: Output::default(),
        }
    }

    pub fn set_liveness(&mut self, cfg: LivenessConfig) {
        self.liveness_cfg = cfg;
        self.live = LivenessCheck::new(cfg, self.live.last_heard());
    }

    pub fn liveness(&self) -> LivenessConfig {
        self.liveness_cfg
    }

    /// Close the link after this long with no local connections and
    /// nothing awaiting an answer ([`Event::IdleHangup`]).
    pub fn set_idle_hangup(&mut self, after: Option<Duration>) {
        self.idle_hangup = after;
    }

    /// Services whose [`Event::Dial`] carries the stream's first bytes (an
    /// HTTP proxy request names its origin).
    pub fn set_first_data_services(&mut self, services: impl IntoIterator<Item = String>) {
        self.first_data_services = services.into_iter().collect();
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The link is gone and the session is put aside: its compression
    /// state goes now (see [`Session::drop_encoder_state`]).
    pub fn drop_encoder_state(&mut self) -> bool {
        self.session.drop_encoder_state()
    }

    /// Records received from the peer so far (for the resume handshake).
    pub fn records_received(&self) -> u64 {
        self.session.records_received()
    }

    /// Local streams attached.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The program connections and what each is doing, by stream id
    /// (straw's own warm-up connections left out). It asks every
    /// accelerator: the driver calls it a few times a second, not per turn.
    pub fn activities(&self) -> Vec<StreamActivity> {
        let mut v: Vec<StreamActivity> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.warm_up)
            .filter_map(|(&stream, s)| {
                let accel = s.accel.as_ref()?;
                Some(StreamActivity {
                    stream,
                    service: s.service.clone(),
                    activity: accel.activity(),
                })
            })
            .collect();
        v.sort_by_key(|a| a.stream);
        v
    }

    /// The memory budget over all tunnels is spent (`true`) or has room
    /// again: while spent, no local socket is read and no stream credit or
    /// new stream is given to the peer, so this tunnel's
    /// [`Tunnel::buffered_bytes`] only shrinks.
    pub fn set_memory_pressure(&mut self, on: bool) {
        self.pressure = on;
        self.session.set_credit_hold(on);
    }

    /// Client: `Some(why)` while new bulk transfers must wait (the call's
    /// budget is spent), for every connection's accelerator, present and
    /// future (see [`Accelerator::hold_bulk`]).
    pub fn set_bulk_hold(&mut self, why: Option<&str>) {
        if self.bulk_hold.as_deref() == why {
            return;
        }
        self.bulk_hold = why.map(str::to_owned);
        for accel in self.streams.values_mut().filter_map(|s| s.accel.as_mut()) {
            accel.hold_bulk(why);
        }
    }

    pub fn memory_pressure(&self) -> bool {
        self.pressure
    }

    /// The host's codec CPU is saturated and this tunnel uses a real part
    /// of it (`true`), or no longer: its session keeps to the fast codec
    /// meanwhile ([`straw_core::session::Session::set_cpu_degraded`]).
    pub fn set_cpu_degraded(&mut self, on: bool) {
        self.session.set_cpu_degraded(on);
    }

    pub fn cpu_degraded(&self) -> bool {
        self.session.cpu_degraded()
    }

    /// Bytes of stream data held on this side of the link: the peer's bytes
    /// not yet written to local sockets (queued, waiting for a dial, or
    /// held by accelerators) and local bytes the session holds for the
    /// link (queued and unacked). What the memory budget counts.
    pub fn buffered_bytes(&self) -> usize {
        let streams: usize = self
            .streams
            .values()
            .map(|s| {
                let early: usize = s
                    .early
                    .iter()
                    .map(|e| match e {
                        Early::Data(b) => b.len(),
                        Early::Fin => 0,
                    })
                    .sum();
                let queued: usize = s.to_local.iter().map(|(b, _)| b.len()).sum();
                let accel = s.accel.as_ref().map_or(0, |a| a.tunnel_bytes_held());
                early + queued + accel
            })
            .sum();
        streams + self.session.held() as usize
    }

    // ---- the link ----

    /// A new link starts carrying the session: liveness starts over.
    pub fn start_link(&mut self, now: Instant) {
        self.live = LivenessCheck::new(self.liveness_cfg, now);
        self.idle_since = None;
        self.link_backlog = 0;
    }

    /// Moves the session onto a new link, the peer having received
    /// `peer_received` records: the unacked rest is re-sent first.
    pub fn resume(&mut self, now: Instant, peer_received: u64) -> Result<(), SessionError> {
        self.session.resume(now, peer_received)?;
        info!(
            tunnel = %self.label,
            resend = self.session.resend_pending(),
            streams = self.streams.len(),
            "session resumed"
        );
        Ok(())
    }

    /// Bytes arrived on the link (maybe only part of a record): it is alive.
    pub fn link_heard(&mut self, now: Instant) {
        self.live.received(now);
    }

    /// A decrypted record from the peer.
    pub fn handle_record(&mut self, now: Instant, record: &[u8]) -> Result<(), SessionError> {
        self.session.handle_record(now, record)?;
        while let Some(ev) = self.session.poll_event() {
            self.handle_session_event(ev);
        }
        Ok(())
    }

    /// The next plaintext record for the link. The driver asks only once the
    /// socket took what it had, so that priorities apply to data still here.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        let record = self.session.poll_transmit(now);
        if let Some(r) = &record {
            // Which records cross, to read against linksim's segment trace.
            tracing::trace!(
                tunnel = %self.label,
                len = r.len(),
                codec = ?r.first(),
                rate = self.session.estimate().rate() as u64,
                unacked = self.session.unacked_bytes(),
                window = self.session.inflight_limit(),
                pipe = self.session.pipe_limit(),
                queued_ms = self.session.link_queued(now).as_millis() as u64,
                "record out"
            );
        }
        record
    }

    /// Bulk units leave as jobs for other threads
    /// ([`Session::set_bulk_offload`]).
    pub fn set_bulk_offload(&mut self, on: bool) {
        self.session.set_bulk_offload(on);
    }

    /// A bulk unit to compress elsewhere ([`Session::poll_bulk_job`]).
    pub fn poll_bulk_job(&mut self) -> Option<straw_core::codec::BulkJob> {
        self.session.poll_bulk_job()
    }

    /// A job from [`Tunnel::poll_bulk_job`] is back.
    pub fn bulk_job_done(&mut self, job: straw_core::codec::BulkJob) {
        self.session.bulk_job_done(job);
    }

    /// How many encrypted bytes still wait for the link socket.
    pub fn set_link_backlog(&mut self, bytes: usize) {
        self.link_backlog = bytes;
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

    /// Longest silence before the link is called dead while awaiting an answer.
    pub fn detection_bound(&self) -> Duration {
        self.live.detection_bound(self.loaded_rtt())
    }

    /// Something sent is still unanswered (not counting bare ACKs).
    fn expecting_reply(&self) -> bool {
        self.session.awaiting_answer()
    }

    /// Runs the timers due at `now`: liveness probes, dead link, idle
    /// hang-up. Cheap; the driver calls it on every turn.
    pub fn handle_timeout(&mut self, now: Instant) {
        let loaded_rtt = self.loaded_rtt();
        let expecting = self.expecting_reply();
        match self.live.poll(now, loaded_rtt, expecting) {
            Liveness::Fine => {}
            Liveness::Probe => self.session.schedule_ping(now),
            Liveness::Dead => self.events.push_back(Event::LinkDead(LinkDead {
                silent: now.saturating_duration_since(self.live.last_heard()),
                dead_after: self.live.dead_after(loaded_rtt),
                loaded_rtt,
            })),
        }
        let idle = self.streams.is_empty() && !expecting && self.link_backlog == 0;
        if !idle {
            self.idle_since = None;
        } else if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
        if self.hangup_at().is_some_and(|h| now >= h) {
            self.idle_since = None;
            self.events.push_back(Event::IdleHangup);
        }
    }

    fn hangup_at(&self) -> Option<Instant> {
        self.idle_hangup.zip(self.idle_since).map(|(d, s)| s + d)
    }

    /// When [`Tunnel::handle_timeout`] next has something to do. While the
    /// socket still has our bytes, the session's own timers wait for it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let session = (self.link_backlog == 0)
            .then(|| self.session.poll_timeout())
            .flatten();
        let live = self
            .live
            .next_check(self.loaded_rtt(), self.expecting_reply());
        [session, live, self.hangup_at()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- local streams ----

    /// Opens a stream for a local connection (the client side); its bytes
    /// wait in the session for a link if there is none.
    pub fn open_local(
        &mut self,
        service: &str,
        accel: Box<dyn Accelerator>,
        warm_up: bool,
    ) -> Result<u64, SessionError> {
        let id = self
            .session
            .open_stream(service.as_bytes(), b"", Priority::Interactive)?;
        debug!(tunnel = %self.label, stream = id, service, "stream opened");
        let mut s = LocalStream::new(service.to_owned(), None);
        s.warm_up = warm_up;
        self.streams.insert(id, s);
        self.attach_accel(id, accel);
        Ok(id)
    }

    /// The server's dial for `stream` connected: the peer's bytes that came
    /// meanwhile go through `accel` now. False if the stream is gone (drop
    /// the socket).
    pub fn dialed(&mut self, stream: u64, accel: Box<dyn Accelerator>) -> bool {
        if !self.streams.contains_key(&stream) {
            return false;
        }
        self.attach_accel(stream, accel);
        let early = self
            .streams
            .get_mut(&stream)
            .map(|s| std::mem::take(&mut s.early))
            .unwrap_or_default();
        for e in early {
            match e {
                Early::Data(bytes) => self.peer_data(stream, &bytes),
                Early::Fin => self.peer_fin(stream),
            }
        }
        self.streams.contains_key(&stream)
    }

    pub fn dial_failed(&mut self, stream: u64) {
        self.session.reset(stream, reset_code::UNREACHABLE);
        self.forget(stream);
    }

    fn attach_accel(&mut self, stream: u64, mut accel: Box<dyn Accelerator>) {
        // A cached greeting goes out before anything else.
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        if self.bulk_hold.is_some() {
            accel.hold_bulk(self.bulk_hold.as_deref());
        }
        accel.start(&mut out);
        if let Some(s) = self.streams.get_mut(&stream) {
            s.accel = Some(accel);
        }
        self.apply(stream, &mut out, 0);
        self.scratch = out;
    }

    /// How much the reader of `stream`'s socket may read next, once per
    /// grant: what the session can take from it (backpressure). `None`
    /// while a grant is out or there is no room.
    pub fn poll_grant(&mut self) -> Option<(u64, usize)> {
        if self.pressure {
            return None;
        }
        for (&id, s) in self.streams.iter_mut() {
            if s.grant_out || s.reader_done || s.accel.is_none() {
                continue;
            }
            let cap = self.session.send_capacity(id).min(READ_CHUNK);
            if cap > 0 {
                s.grant_out = true;
                return Some((id, cap));
            }
        }
        None
    }

    /// Bytes read from the local socket (`drained`: a short read, the
    /// socket had nothing more just now). Ends the reader's grant.
    pub fn handle_local(&mut self, stream: u64, bytes: &[u8], drained: bool) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.grant_out = false;
        self.run_accel(stream, 0, |a, out| a.from_local(bytes, drained, out));
    }

    /// The local socket reached EOF.
    pub fn local_eof(&mut self, stream: u64) {
        self.run_accel(stream, 0, |a, out| a.local_eof(out));
        if let Some(s) = self.streams.get_mut(&stream) {
            s.reader_done = true;
            self.session.finish(stream);
            self.forget_if_done(stream);
        }
    }

    /// Reading or writing the local socket failed: abort the stream.
    pub fn local_failed(&mut self, stream: u64) {
        self.session.reset(stream, reset_code::ABORTED);
        self.forget(stream);
    }

    /// What the writer of a local socket should do next, over all streams;
    /// each stream's bytes come in the order its accelerator made them.
    pub fn poll_local(&mut self) -> Option<(u64, LocalOut)> {
        self.streams
            .iter_mut()
            .find_map(|(&id, s)| s.next_out().map(|o| (id, o)))
    }

    /// The writer put `n` bytes of what [`Tunnel::poll_local`] gave it on
    /// the socket: their stream credit goes back to the peer.
    pub fn local_written(&mut self, stream: u64, n: usize) {
        if let Some(s) = self.streams.get_mut(&stream) {
            let credit = s.written(n);
            if credit > 0 {
                self.session.consumed(stream, credit);
            }
        }
    }

    /// The writer delivered [`LocalOut::Close`].
    pub fn local_closed(&mut self, stream: u64) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.writer_done = true;
            self.forget_if_done(stream);
        }
    }

    /// Ends the tunnel for good: each local connection hears it in its
    /// protocol's terms ([`Accelerator::link_lost`]) after whatever was
    /// already queued for it, then a [`LocalOut::Close`]. Returns the
    /// streams whose writers to wait for; then [`Tunnel::close_all`].
    pub fn give_up(&mut self) -> Vec<u64> {
        let mut waiting = Vec::new();
        let mut out = Output::default();
        for (&id, s) in self.streams.iter_mut() {
            let Some(accel) = s.accel.as_mut() else {
                continue;
            };
            if s.writer_done || s.close_handed {
                continue;
            }
            if !s.closing {
                out.clear();
                accel.link_lost(&mut out);
                let bytes = std::mem::take(&mut out.to_local);
                s.queue(bytes, 0);
                s.closing = true;
            }
            waiting.push(id);
        }
        waiting
    }

    /// Forgets every stream ([`Event::StreamClosed`] for each).
    pub fn close_all(&mut self) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.forget(id);
        }
    }

    // ---- inside ----

    fn handle_session_event(&mut self, ev: session::Event) {
        match ev {
            session::Event::Opened {
                stream, service, ..
            } => self.peer_opened(stream, &service),
            session::Event::Data {
                stream, payload, ..
            } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return;
                };
                if std::mem::take(&mut s.awaiting_first_data) {
                    self.events.push_back(Event::Dial {
                        stream,
                        service: s.service.clone(),
                        first_data: Some(payload.clone()),
                    });
                }
                self.peer_data(stream, &payload);
            }
            session::Event::Fin { stream } => self.peer_fin(stream),
            session::Event::Reset { stream, code } => {
                debug!(tunnel = %self.label, stream, code, "stream reset by peer");
                self.forget(stream);
            }
        }
    }

    fn peer_opened(&mut self, stream: u64, service: &[u8]) {
        if !self.accepts_streams {
            self.session.reset(stream, reset_code::REFUSED);
            return;
        }
        let service = String::from_utf8_lossy(service).into_owned();
        let mut s = LocalStream::new(service.clone(), None);
        s.awaiting_first_data = self.first_data_services.contains(&service);
        if !s.awaiting_first_data {
            self.events.push_back(Event::Dial {
                stream,
                service,
                first_data: None,
            });
        }
        self.streams.insert(stream, s);
    }

    fn peer_data(&mut self, stream: u64, bytes: &Bytes) {
        tracing::trace!(tunnel = %self.label, stream, len = bytes.len(), "stream data in");
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.accel.is_none() {
            s.early.push_back(Early::Data(bytes.clone()));
            return;
        }
        self.run_accel(stream, bytes.len(), |a, out| a.from_tunnel(bytes, out));
    }

    fn peer_fin(&mut self, stream: u64) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.accel.is_none() {
            s.early.push_back(Early::Fin);
        } else {
            s.closing = true;
        }
    }

    /// Runs the stream's accelerator and routes what it made; `received`
    /// is the peer's bytes handed to it. Credit goes back (once the output
    /// is written) only for bytes that left the accelerator: what it still
    /// holds ([`Accelerator::tunnel_bytes_held`]) stays charged to the
    /// peer's window, so a peer cannot grow an accelerator's buffers past
    /// it; bytes it held before and let go now are credited with this
    /// output.
    fn run_accel(
        &mut self,
        stream: u64,
        received: usize,
        f: impl FnOnce(&mut dyn Accelerator, &mut Output),
    ) {
        let Some(accel) = self.streams.get_mut(&stream).and_then(|s| s.accel.as_mut()) else {
            return;
        };
        let before = accel.tunnel_bytes_held();
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        f(accel.as_mut(), &mut out);
        let after = accel.tunnel_bytes_held();
        let consumed = (received + before).saturating_sub(after);
        self.apply(stream, &mut out, consumed);
        self.scratch = out;
    }

    /// Routes an accelerator's output: bytes for the peer into the session,
    /// bytes for the local socket behind those queued before (the one queue
    /// per stream is what keeps e.g. a served prefetch from being passed by
    /// the rest of a reply), cache updates out as events.
    fn apply(&mut self, stream: u64, out: &mut Output, consumed: usize) {
        for (key, value) in out.cache_put.drain(..) {
            self.events
                .push_back(Event::CachePut { stream, key, value });
        }
        for note in out.notes.drain(..) {
            info!(stream, "{note}");
        }
        if let Some(reason) = out.fail.take() {
            warn!(stream, "closing connection: {reason}");
            self.local_failed(stream);
            return;
        }
        if std::mem::take(&mut out.abandoned) {
            info!(
                stream,
                "the program left mid-reply: stream reset, the rest dropped"
            );
            self.local_failed(stream);
            return;
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if !out.to_tunnel.is_empty() || out.flush {
            tracing::trace!(
                tunnel = %self.label,
                stream,
                len = out.to_tunnel.len(),
                flush = out.flush,
                bulk = out.bulk,
                "stream data out"
            );
            // A stream the peer reset is gone from the session; drop quietly.
            let _ = self.session.send(stream, &out.to_tunnel);
            if out.bulk && !std::mem::replace(&mut s.bulk, true) {
                debug!(tunnel = %self.label, stream, "stream is bulk from here on");
                self.session.set_priority(stream, Priority::Bulk);
            }
            if out.flush {
                self.session.flush(stream);
            }
        }
        if !out.to_local.is_empty() {
            tracing::trace!(tunnel = %self.label, stream, len = out.to_local.len(), "stream data to program");
        }
        s.queue(std::mem::take(&mut out.to_local), consumed);
    }

    fn forget_if_done(&mut self, stream: u64) {
        if self
            .streams
            .get(&stream)
            .is_some_and(|s| s.reader_done && s.writer_done)
        {
            self.forget(stream);
        }
    }

    /// Drops a stream, handing its accelerator's counters out.
    fn forget(&mut self, stream: u64) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        let mut stats = s.accel.as_ref().map(|a| a.stats());
        if s.warm_up && stats.is_some() {
            debug!(tunnel = %self.label, stream, service = %s.service, "cache warm-up done");
            stats = None;
        }
        if let Some(st) = stats
            && st.link_waits + st.local_replies > 0
        {
            info!(
                tunnel = %self.label,
                stream,
                service = %s.service,
                link_waits = st.link_waits,
                local_replies = st.local_replies,
                "connection done"
            );
        }
        self.events.push_back(Event::StreamClosed { stream, stats });
    }
}
