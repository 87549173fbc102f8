//! Session tests over a deterministic in-memory link: two sessions, each
//! direction serialised at a rate with a one-way delay, time stepped by hand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use straw_linkmodel::{LinkModel, Pipe};

use super::*;
use crate::codec::{CodecId, DecoderLimits};
use crate::fixtures::noise;
use crate::wire::{FrameDecoder, OpenFrame};

/// One direction of the emulated link: `rate` bytes/s, each record one
/// packet charged Noise's length and tag plus a share of the TCP/IP header
/// (records sent back to back share segments).
fn link(rate: f64, delay: Duration) -> Pipe<Bytes> {
    Pipe::new(LinkModel::per_packet(
        (rate * 8.0).round() as u64,
        delay,
        18 + 12,
    ))
}

struct Sim {
    now: Instant,
    client: Session,
    server: Session,
    up: Pipe<Bytes>,
    down: Pipe<Bytes>,
    /// When the up link was busy, for utilisation checks.
    up_busy: Vec<(Instant, Instant)>,
    /// Events seen by each side, in order.
    client_events: Vec<(Instant, Event)>,
    server_events: Vec<(Instant, Event)>,
    /// Worst excess of unacked bytes over the in-flight limit at that moment.
    max_client_overshoot: i64,
    max_client_unacked: u64,
    client_max_record: usize,
    /// Wire sizes of the client's bulk-lane records (bulk slices), in order.
    client_bulk_records: Vec<usize>,
    /// When each client record was handed over, and whether it was a slice.
    client_records: Vec<(Instant, bool)>,
    /// The server's offloaded bulk jobs (`Session::set_bulk_offload`), with
    /// when each was taken; they come back after `job_delay`, or never
    /// while it is `None` (busy codec threads).
    server_jobs: VecDeque<(Instant, crate::codec::BulkJob)>,
    job_delay: Option<Duration>,
}

impl Sim {
    fn new(rate: f64, delay: Duration) -> Self {
        Self::with_configs(
            rate,
            delay,
            SessionConfig::new(Role::Client),
            SessionConfig::new(Role::Server),
        )
    }

    /// As `new`, with sessions that assume `initial` until they measure.
    fn with_initial_rate(rate: f64, delay: Duration, initial: f64) -> Self {
        let mut sim = Self::with_configs(
            rate,
            delay,
            SessionConfig::new(Role::Client),
            SessionConfig::new(Role::Server),
        );
        let now = sim.now;
        let mut c = SessionConfig::new(Role::Client);
        let mut s = SessionConfig::new(Role::Server);
        c.initial_rate = initial;
        s.initial_rate = initial;
        sim.client = Session::new(c, now);
        sim.server = Session::new(s, now);
        sim
    }

    /// Both sides transform what they send on every service used here.
    fn with_transform(rate: f64, delay: Duration) -> Self {
        let mut c = SessionConfig::new(Role::Client);
        let mut s = SessionConfig::new(Role::Server);
        for cfg in [&mut c, &mut s] {
            cfg.transform_services = vec![b"test".to_vec(), b"pop3".to_vec()];
        }
        Self::with_configs(rate, delay, c, s)
    }

    fn with_configs(
        rate: f64,
        delay: Duration,
        mut c: SessionConfig,
        mut s: SessionConfig,
    ) -> Self {
        let now = Instant::now();
        c.initial_rate = rate;
        s.initial_rate = rate;
        Self {
            now,
            client: Session::new(c, now),
            server: Session::new(s, now),
            up: link(rate, delay),
            down: link(rate, delay),
            up_busy: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            max_client_overshoot: i64::MIN,
            max_client_unacked: 0,
            client_max_record: 0,
            client_bulk_records: Vec::new(),
            client_records: Vec::new(),
            server_jobs: VecDeque::new(),
            job_delay: Some(Duration::ZERO),
        }
    }

    /// Opens a bulk stream on the client and hands it `data`, flushed.
    fn send_bulk(&mut self, data: &[u8]) -> u64 {
        let id = self
            .client
            .open_stream(b"test", b"", Priority::Bulk)
            .unwrap();
        self.client.send(id, data).unwrap();
        self.client.flush(id);
        id
    }

    fn step(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        while let Some(r) = self.up.pop(now) {
            self.server.handle_record(now, &r).unwrap();
        }
        while let Some(r) = self.down.pop(now) {
            self.client.handle_record(now, &r).unwrap();
        }
        // A sender hands over a record only when the link is idle, as with
        // a small TCP_NOTSENT_LOWAT.
        while self.up.is_idle(now) {
            match self.client.poll_transmit(now) {
                Some(r) => {
                    self.client_max_record = self.client_max_record.max(r.len());
                    let bulk = crate::codec::CodecId::from_u8(r[0]).is_some_and(|c| c.is_bulk());
                    if bulk {
                        self.client_bulk_records.push(r.len());
                    }
                    self.client_records.push((now, bulk));
                    let t = self.up.push(now, r);
                    self.up_busy.push((t.start, t.end));
                }
                None => break,
            }
        }
        while let Some(delay) = self.job_delay
            && self
                .server_jobs
                .front()
                .is_some_and(|(t, _)| *t + delay <= now)
        {
            let (_, mut job) = self.server_jobs.pop_front().expect("front");
            job.run();
            self.server.bulk_job_done(job);
        }
        while self.down.is_idle(now) {
            match self.server.poll_transmit(now) {
                Some(r) => {
                    self.down.push(now, r);
                }
                None => break,
            }
        }
        while let Some(job) = self.server.poll_bulk_job() {
            self.server_jobs.push_back((now, job));
        }
        let overshoot = self.client.unacked_bytes() as i64 - self.client.inflight_limit() as i64;
        self.max_client_overshoot = self.max_client_overshoot.max(overshoot);
        self.max_client_unacked = self.max_client_unacked.max(self.client.unacked_bytes());
        while let Some(e) = self.client.poll_event() {
            self.client_events.push((now, e));
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push((now, e));
        }
    }

    /// Fraction of `[from, to)` the up link spent serialising records.
    fn up_utilisation(&self, from: Instant, to: Instant) -> f64 {
        let busy: Duration = self
            .up_busy
            .iter()
            .map(|&(a, b)| b.min(to).saturating_duration_since(a.max(from)))
            .sum();
        busy.as_secs_f64() / (to - from).as_secs_f64()
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(Duration::from_millis(1));
        }
    }

    /// The local program reads at once every byte `events` delivered since
    /// `seen`: `session` gets the stream credit back.
    fn consume_new(events: &[(Instant, Event)], seen: &mut usize, session: &mut Session) {
        for (_, e) in &events[*seen..] {
            if let Event::Data {
                stream, payload, ..
            } = e
            {
                session.consumed(*stream, payload.len());
            }
        }
        *seen = events.len();
    }

    fn received(events: &[(Instant, Event)], stream: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (_, e) in events {
            if let Event::Data {
                stream: s, payload, ..
            } = e
                && *s == stream
            {
                out.extend_from_slice(payload);
            }
        }
        out
    }
}

#[test]
fn stream_roundtrip_open_data_fin() {
    let mut sim = Sim::new(100_000.0, Duration::from_millis(10));
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Interactive)
        .unwrap();
    let payload = noise(50_000, 7);
    sim.client.send(id, &payload).unwrap();
    sim.client.finish(id);
    sim.run_for(Duration::from_secs(2));
    assert!(matches!(
        &sim.server_events[0].1,
        Event::Opened { stream, service, .. } if *stream == id && &service[..] == b"test"
    ));
    assert_eq!(Sim::received(&sim.server_events, id), payload);
    assert!(matches!(
        sim.server_events.last().unwrap().1,
        Event::Fin { .. }
    ));
}

#[test]
fn credit_exhaustion_stops_sender_until_consumed() {
    let mut sim = Sim::new(1_000_000.0, Duration::from_millis(5));
    let window = sim.client.config().stream_window as usize;
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    let payload = noise(window * 2, 3);
    sim.client.send(id, &payload).unwrap();
    sim.client.flush(id);
    sim.run_for(Duration::from_secs(2));
    // The server application consumed nothing: exactly one window arrives.
    assert_eq!(Sim::received(&sim.server_events, id).len(), window);
    assert_eq!(sim.client.send_capacity(id), 0);
    sim.server.consumed(id, window);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(Sim::received(&sim.server_events, id), payload);
}

#[test]
fn inflight_stays_within_rate_times_target() {
    let rate = 300.0;
    let mut sim = Sim::new(rate, Duration::from_millis(500));
    let id = sim.send_bulk(&noise(20_000, 5));
    sim.run_for(Duration::from_secs(30));
    // At most one record beyond the limit: the one that was sent while under it.
    let record = sim.client_max_record as i64;
    let slice = sim
        .client
        .record_target()
        .max(sim.client.bulk_slice_target());
    assert!(record <= (slice * 3 / 2) as i64 + 16);
    assert!(
        sim.max_client_overshoot <= record,
        "unacked exceeded the limit by {} (record {record})",
        sim.max_client_overshoot
    );
    // The window is large enough to keep the link busy: ~30 s at 300 B/s.
    let got = Sim::received(&sim.server_events, id).len();
    assert!(got > 5_000, "only {got} bytes in 30 s");
}

/// On Iridium a record's ack comes back ~2.5 s after it was handed over (its
/// own serialisation, 1 s round trip, the ack's record on the way up): longer
/// than `inflight_secs`. The window must still keep the link busy.
#[test]
fn bulk_keeps_a_long_ack_loop_link_busy() {
    let mut sim = Sim::new(240.0, Duration::from_millis(500));
    sim.up.model_mut().overhead = 18 + 40; // every record its own packet
    sim.down.model_mut().overhead = 18 + 40;
    sim.client.cfg.record_secs = 1.0; // as straw's default config
    let id = sim.send_bulk(&noise(40_000, 7));
    sim.run_for(Duration::from_secs(15));
    let (from, got_before) = (sim.now, Sim::received(&sim.server_events, id).len());
    sim.run_for(Duration::from_secs(60));
    let u = sim.up_utilisation(from, sim.now);
    let goodput = (Sim::received(&sim.server_events, id).len() - got_before) as f64 / 60.0;
    eprintln!(
        "busy {:.0}%, goodput {goodput:.0} B/s of 240, rate estimate {:.0}, min rtt {:?}, window {} B",
        u * 100.0,
        sim.client.estimate().rate(),
        sim.client.estimate().min_rtt(),
        sim.client.inflight_limit()
    );
    assert!(u > 0.9, "link busy only {:.0}% of the time", u * 100.0);
    // Headers (58 B) take a quarter of a one-second record at 240 B/s.
    assert!(goodput > 0.7 * 240.0, "goodput {goodput:.0} B/s");
}

#[test]
fn held_bytes_respect_bound_when_driver_obeys_capacity() {
    let mut sim = Sim::new(300.0, Duration::from_millis(250));
    sim.up.model_mut().rate_bps = 240 * 8;
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    let data = noise(100_000, 9);
    let mut offset = 0;
    for _ in 0..20_000 {
        let cap = sim.client.send_capacity(id).min(data.len() - offset);
        if cap > 0 {
            sim.client.send(id, &data[offset..offset + cap]).unwrap();
            offset += cap;
        }
        sim.step(Duration::from_millis(1));
    }
    let st = sim.client.stats();
    assert!(st.max_held <= st.held_bound_at_max, "{st:?}");
    // Bound is a few seconds of link time, not the 100 KB the program offered.
    assert!(st.max_held < 3_000, "{st:?}");
    assert!(
        offset < 20_000,
        "accepted {offset} bytes in 20 s at 300 B/s"
    );
}

#[test]
fn interactive_goes_before_bulk() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::new(Role::Client), now);
    let bulk = s.open_stream(b"bulk", b"", Priority::Bulk).unwrap();
    let chat = s.open_stream(b"chat", b"", Priority::Interactive).unwrap();
    s.poll_transmit(now); // OPEN frames
    s.send(bulk, &noise(10_000, 1)).unwrap();
    s.flush(bulk);
    s.send(chat, b"NOOP\r\n").unwrap();
    s.flush(chat);
    let rec = s.poll_transmit(now).unwrap();
    let mut d = RecordDecoder::new(&DecoderLimits::default());
    let mut out = Vec::new();
    d.decode(&rec, &mut out).unwrap();
    let frames: Vec<_> = FrameDecoder::new(Bytes::from(out))
        .collect::<Result<_, _>>()
        .unwrap();
    let first_data = frames
        .iter()
        .find_map(|f| match f {
            Frame::Data { stream, .. } => Some(*stream),
            _ => None,
        })
        .unwrap();
    assert_eq!(first_data, chat);
}

#[test]
fn cork_batches_small_writes_and_flush_sends_at_once() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::new(Role::Client), now);
    let id = s.open_stream(b"pop3", b"", Priority::Interactive).unwrap();
    s.poll_transmit(now);
    s.send(id, b"+OK user\r\n").unwrap();
    // Not flushed: corked.
    assert!(s.poll_transmit(now).is_none());
    let deadline = s.poll_timeout().expect("cork timer");
    assert!(deadline > now && deadline <= now + Duration::from_millis(50));
    s.send(id, b"+OK logged in\r\n").unwrap();
    let t = now + Duration::from_millis(5);
    assert!(s.poll_transmit(t).is_none());
    // Timer fires: both writes leave in one record.
    let rec = s.poll_transmit(deadline).expect("record at cork deadline");
    assert!(s.poll_transmit(deadline).is_none());
    let mut d = RecordDecoder::new(&DecoderLimits::default());
    let mut out = Vec::new();
    d.decode(&rec, &mut out).unwrap();
    let data: Vec<u8> = FrameDecoder::new(Bytes::from(out))
        .filter_map(|f| match f.unwrap() {
            Frame::Data { payload, .. } => Some(payload.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(data, b"+OK user\r\n+OK logged in\r\n");
    // A flushed write leaves immediately.
    s.send(id, b"STAT\r\n").unwrap();
    s.flush(id);
    assert!(s.poll_transmit(deadline).is_some());
}

#[test]
fn interactive_reply_not_starved_by_bulk() {
    // 2,400 bit/s, 500 ms one way: RTT 1 s.
    let rate = 300.0;
    let mut sim = Sim::new(rate, Duration::from_millis(500));
    let bulk = sim
        .client
        .open_stream(b"bulk", b"", Priority::Bulk)
        .unwrap();
    let chat = sim
        .client
        .open_stream(b"chat", b"", Priority::Interactive)
        .unwrap();
    sim.run_for(Duration::from_secs(2));
    // The server pushes 200 KB of bulk towards the client, obeying capacity.
    let data = noise(200_000, 11);
    let mut offset = 0;
    let pump = |sim: &mut Sim, offset: &mut usize| {
        let cap = sim.server.send_capacity(bulk).min(data.len() - *offset);
        if cap > 0 {
            sim.server
                .send(bulk, &data[*offset..*offset + cap])
                .unwrap();
            sim.server.flush(bulk);
            *offset += cap;
        }
    };
    for _ in 0..20_000 {
        pump(&mut sim, &mut offset);
        sim.step(Duration::from_millis(1));
    }
    assert!(offset > 3_000 && offset < data.len(), "bulk is running");
    let asked = sim.now;
    sim.client.send(chat, b"a1 NOOP\r\n").unwrap();
    sim.client.flush(chat);
    let mut replied = None;
    for _ in 0..20_000 {
        pump(&mut sim, &mut offset);
        sim.step(Duration::from_millis(1));
        let got_request = Sim::received(&sim.server_events, chat) == b"a1 NOOP\r\n";
        if got_request && replied.is_none() {
            sim.server.send(chat, b"a1 OK\r\n").unwrap();
            sim.server.flush(chat);
            replied = Some(());
        }
        if Sim::received(&sim.client_events, chat) == b"a1 OK\r\n" {
            break;
        }
    }
    let took = sim.now - asked;
    let rtt = Duration::from_secs(1);
    let record = Duration::from_secs_f64(sim.server.record_target() as f64 / rate);
    // One RTT of slack covers the bulk already in flight ahead of the reply.
    let allowed = rtt * 2 + record + Duration::from_millis(1200);
    assert!(
        took <= allowed,
        "reply took {took:?}, allowed {allowed:?} (record {record:?})"
    );
    eprintln!("interactive reply under bulk: {took:?} (allowed {allowed:?})");
}

#[test]
fn peer_overrunning_credit_is_an_error() {
    let now = Instant::now();
    let mut server = Session::new(SessionConfig::new(Role::Server), now);
    let mut frames = Vec::new();
    Frame::Open(OpenFrame {
        stream: 1,
        service: Bytes::from_static(b"x"),
        meta: Bytes::new(),
    })
    .encode(&mut frames);
    Frame::Data {
        stream: 1,
        flags: 0,
        payload: Bytes::from(vec![0u8; 300 * 1024]),
    }
    .encode(&mut frames);
    let mut rec = vec![CodecId::Stored as u8];
    rec.extend_from_slice(&frames);
    let mut cfg = SessionConfig::new(Role::Server);
    cfg.decoder_limits.max_record_bytes = 1 << 20;
    let mut server2 = Session::new(cfg, now);
    assert!(matches!(
        server2.handle_record(now, &rec),
        Err(SessionError::CreditExceeded { .. })
    ));
    // And the default decoder limit rejects such a record outright.
    assert!(server.handle_record(now, &rec).is_err());
}

#[test]
fn bad_ack_and_wrong_parity_are_errors() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::new(Role::Server), now);
    let mut frames = Vec::new();
    Frame::Ack { record: 5 }.encode(&mut frames);
    let mut rec = vec![0u8];
    rec.extend_from_slice(&frames);
    assert!(matches!(
        s.handle_record(now, &rec),
        Err(SessionError::BadAck(5))
    ));
    let mut frames = Vec::new();
    Frame::Open(OpenFrame {
        stream: 2,
        service: Bytes::new(),
        meta: Bytes::new(),
    })
    .encode(&mut frames);
    let mut rec = vec![0u8];
    rec.extend_from_slice(&frames);
    assert!(matches!(
        s.handle_record(now, &rec),
        Err(SessionError::BadStreamId(2))
    ));
}

#[test]
fn reset_reaches_peer_and_drops_stream() {
    let mut sim = Sim::new(100_000.0, Duration::from_millis(10));
    let id = sim.send_bulk(b"hello");
    sim.run_for(Duration::from_millis(200));
    sim.client.reset(id, reset_code::ABORTED);
    sim.run_for(Duration::from_millis(200));
    assert!(sim.server_events.iter().any(|(_, e)| matches!(
        e,
        Event::Reset { stream, code } if *stream == id && *code == reset_code::ABORTED
    )));
    assert_eq!(sim.server.stream_count(), 0);
    assert_eq!(sim.client.stream_count(), 0);
}

#[test]
fn rtt_and_rate_are_measured() {
    let mut sim = Sim::new(300.0, Duration::from_millis(500));
    sim.send_bulk(&noise(3_000, 2));
    sim.run_for(Duration::from_secs(15));
    let rtt = sim.client.estimate().min_rtt().unwrap();
    assert!(
        rtt >= Duration::from_secs(1) && rtt < Duration::from_millis(1600),
        "{rtt:?}"
    );
    let rate = sim.client.estimate().rate();
    assert!(rate > 150.0 && rate < 450.0, "rate {rate}");
}

/// An upload that starts with the session never lets the link idle: every
/// ack comes behind the acked record's own bytes and those queued ahead of
/// it. The round trip the windows are sized by must not keep the acked
/// record's own link time (it held the windows 1 s of link too wide, and
/// kept them so: each record, queued behind the last, measured the same).
#[test]
fn an_upload_from_the_start_measures_the_loop_without_its_own_records() {
    let mut sim = Sim::new(300.0, Duration::from_millis(250));
    sim.up.model_mut().overhead = 18 + 40;
    sim.down.model_mut().overhead = 18 + 40;
    // The opening PING rides behind the handshake's last message and the
    // first data in one packet (seen: 2.6-3.0 s on this link): no sample
    // here either.
    sim.client.ping_due = None;
    sim.send_bulk(&noise(20_000, 3));
    sim.run_for(Duration::from_secs(20));
    let rtt = sim.client.estimate().min_rtt().unwrap();
    eprintln!(
        "min rtt {rtt:?}, window {} B, pipe {} B",
        sim.client.inflight_limit(),
        sim.client.pipe_limit()
    );
    // The bare loop is 0.8 s: 0.5 s of delay, the ACK delay and an
    // ACK-only record down (61 B, 0.2 s). Measured 0.94 s; with the acked
    // record's own link time in it, 1.02 s.
    assert!(
        rtt >= Duration::from_millis(500) && rtt < Duration::from_millis(1000),
        "{rtt:?}"
    );
}

proptest! {
    #[test]
    fn garbage_records_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let now = Instant::now();
        let mut s = Session::new(SessionConfig::new(Role::Server), now);
        let _ = s.handle_record(now, &data);
        let _ = s.poll_transmit(now);
    }
}

// ---- Resume ---------------------------------------------------------------

impl Sim {
    /// The link dies: everything in flight is lost. A new link comes up after
    /// `gap` and both sides resume from the counts exchanged in the handshake.
    fn cut_and_resume(&mut self, gap: Duration) {
        self.now += gap;
        self.up.cut(self.now);
        self.down.cut(self.now);
        let (c_got, s_got) = (
            self.client.records_received(),
            self.server.records_received(),
        );
        self.client.resume(self.now, s_got).unwrap();
        self.server.resume(self.now, c_got).unwrap();
    }
}

/// Client sends `up` on one stream, the server answers with `down` on it,
/// both drivers keeping to `send_capacity` and consuming what arrives; the
/// link is cut at each step number in `cuts`. Returns what each side got.
fn transfer_with_cuts(up: &[u8], down: &[u8], cuts: &[usize]) -> (Vec<u8>, Vec<u8>, Sim) {
    transfer_with_cuts_in(
        Sim::new(200_000.0, Duration::from_millis(20)),
        up,
        down,
        cuts,
    )
}

fn transfer_with_cuts_in(
    mut sim: Sim,
    up: &[u8],
    down: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, Vec<u8>, Sim) {
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    let (mut up_off, mut down_off) = (0usize, 0usize);
    let (mut c_seen, mut s_seen) = (0usize, 0usize);
    let mut server_open = false;
    for step in 0..20_000 {
        if cuts.contains(&step) {
            sim.cut_and_resume(Duration::from_millis(300));
        }
        let cap = sim.client.send_capacity(id).min(up.len() - up_off);
        if cap > 0 {
            sim.client.send(id, &up[up_off..up_off + cap]).unwrap();
            up_off += cap;
            if up_off == up.len() {
                sim.client.finish(id);
            }
        }
        if server_open {
            let cap = sim.server.send_capacity(id).min(down.len() - down_off);
            if cap > 0 {
                sim.server
                    .send(id, &down[down_off..down_off + cap])
                    .unwrap();
                down_off += cap;
                if down_off == down.len() {
                    sim.server.finish(id);
                }
            }
        }
        sim.step(Duration::from_millis(1));
        server_open |= !sim.server_events.is_empty();
        // The local programs read everything at once.
        Sim::consume_new(&sim.server_events, &mut s_seen, &mut sim.server);
        Sim::consume_new(&sim.client_events, &mut c_seen, &mut sim.client);
        let done = |ev: &[(Instant, Event)]| ev.iter().any(|(_, e)| matches!(e, Event::Fin { .. }));
        if done(&sim.server_events) && done(&sim.client_events) {
            break;
        }
    }
    let got_up = Sim::received(&sim.server_events, id);
    let got_down = Sim::received(&sim.client_events, id);
    (got_up, got_down, sim)
}

#[test]
fn resume_after_cut_delivers_everything_once() {
    let up = noise(300_000, 11);
    let down = noise(200_000, 12);
    let (clean_up, clean_down, _) = transfer_with_cuts(&up, &down, &[]);
    assert_eq!(clean_up, up);
    assert_eq!(clean_down, down);
    // Early enough to fall inside the transfer (16 KiB bulk units let it
    // reach the fast tier sooner than 60 KiB ones did; 8 KiB sooner still).
    let (got_up, got_down, sim) = transfer_with_cuts(&up, &down, &[50, 150, 300]);
    assert_eq!(got_up.len(), up.len());
    assert!(got_up == up, "upstream bytes differ");
    assert!(got_down == down, "downstream bytes differ");
    let st = sim.client.stats();
    assert!(st.records_resent > 0, "the cuts lost nothing? {st:?}");
    // Only what was in flight at each cut travels twice.
    assert!(st.wire_bytes_resent < st.wire_bytes_sent / 2, "{st:?}");
    // Each side saw exactly one OPEN and one FIN.
    let count =
        |ev: &[(Instant, Event)], f: fn(&Event) -> bool| ev.iter().filter(|(_, e)| f(e)).count();
    assert_eq!(
        count(&sim.server_events, |e| matches!(e, Event::Opened { .. })),
        1
    );
    assert_eq!(
        count(&sim.server_events, |e| matches!(e, Event::Fin { .. })),
        1
    );
    assert_eq!(
        count(&sim.client_events, |e| matches!(e, Event::Fin { .. })),
        1
    );
}

#[test]
fn resume_rejects_impossible_counts() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::new(Role::Client), now);
    let id = s.open_stream(b"x", b"", Priority::Interactive).unwrap();
    s.send(id, b"hello").unwrap();
    s.flush(id);
    assert!(s.poll_transmit(now).is_some());
    // One record sent: the peer can't have two.
    assert!(matches!(
        s.resume(now, 2),
        Err(SessionError::BadResume { .. })
    ));
    s.resume(now, 0).unwrap();
    assert_eq!(s.resend_pending(), 1);
    let again = s.poll_transmit(now).unwrap();
    assert_eq!(Some(&again), s.unacked_records().next());
    s.resume(now, 1).unwrap();
    assert_eq!(s.unacked_bytes(), 0);
    // Acked records can't be asked for again.
    assert!(s.resume(now, 0).is_err());
}

/// After a resume the driver takes re-sends a socketful at a time, so the
/// peer's ACK of the first can arrive before the rest leave. It must not
/// cost one of them (seen: a 60 KB record skipped and the stream 61,440
/// bytes short with its FIN, in tests/resume.rs about one run in ten).
#[test]
fn an_ack_between_resends_skips_no_record() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::new(Role::Client), now);
    let id = s.open_stream(b"x", b"", Priority::Interactive).unwrap();
    let mut sent = Vec::new();
    for i in 0..3 {
        s.send(id, format!("record {i}").as_bytes()).unwrap();
        s.flush(id);
        sent.push(s.poll_transmit(now).unwrap());
    }
    s.resume(now, 0).unwrap();
    assert_eq!(s.resend_pending(), 3);
    assert_eq!(s.poll_transmit(now).as_ref(), Some(&sent[0]));
    // The peer has the first again and says so.
    let mut ack = vec![CodecId::Stored as u8];
    crate::wire::Frame::Ack { record: 1 }.encode(&mut ack);
    s.handle_record(now, &ack).unwrap();
    assert_eq!(s.resend_pending(), 2);
    assert_eq!(s.poll_transmit(now).as_ref(), Some(&sent[1]));
    assert_eq!(s.poll_transmit(now).as_ref(), Some(&sent[2]));
    assert_eq!(s.resend_pending(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn resume_at_any_moment_is_byte_exact(
        cuts in proptest::collection::vec(1usize..700, 1..4),
        seed in any::<u64>(),
    ) {
        let up = noise(120_000, seed);
        let down = noise(90_000, seed ^ 0x5555);
        let (got_up, got_down, _) = transfer_with_cuts(&up, &down, &cuts);
        prop_assert!(got_up == up, "up: got {} of {} bytes", got_up.len(), up.len());
        prop_assert!(got_down == down, "down: got {} of {} bytes", got_down.len(), down.len());
    }
}

fn mail_text(len: usize) -> Vec<u8> {
    let words = [
        "Received: ",
        "from ",
        "mail.example.org ",
        "by ",
        "localhost ",
        "with ",
        "ESMTP ",
        "id ",
        "Subject: ",
        "Re: ",
        "meeting ",
        "tomorrow\r\n",
        "the ",
        "list ",
        "is ",
        "at ",
        "http://lists.example.org/ ",
        "thanks,\r\n",
    ];
    let mut x: u64 = 7;
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % words.len() as u64) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn bulk_is_compressed_in_units_and_sliced_byte_exact() {
    let mut sim = Sim::new(300.0, Duration::from_millis(500));
    let id = sim
        .client
        .open_stream(b"bulk", b"", Priority::Bulk)
        .unwrap();
    let data = mail_text(30_000);
    let mut offset = 0;
    for _ in 0..120_000 {
        let cap = sim.client.send_capacity(id).min(data.len() - offset);
        if cap > 0 {
            sim.client.send(id, &data[offset..offset + cap]).unwrap();
            sim.client.flush(id);
            offset += cap;
        }
        sim.step(Duration::from_millis(1));
        if Sim::received(&sim.server_events, id).len() == data.len() {
            break;
        }
    }
    assert_eq!(Sim::received(&sim.server_events, id), data);
    let st = sim.client.stats();
    // Units compress far better than a flush per small record would.
    assert!(
        st.wire_bytes_sent * 3 < data.len() as u64,
        "wire {} for {} raw",
        st.wire_bytes_sent,
        data.len()
    );
    assert!(st.max_held <= st.held_bound_at_max, "{st:?}");
}

#[test]
fn idle_peers_do_not_ack_each_others_acks() {
    let mut sim = Sim::new(300.0, Duration::from_millis(500));
    let id = sim
        .client
        .open_stream(b"x", b"", Priority::Interactive)
        .unwrap();
    sim.client.send(id, b"hello").unwrap();
    sim.client.flush(id);
    sim.run_for(Duration::from_secs(5));
    let (c, s) = (
        sim.client.stats().records_sent,
        sim.server.stats().records_sent,
    );
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.client.stats().records_sent, c, "client kept sending");
    assert_eq!(sim.server.stats().records_sent, s, "server kept sending");
}

/// The driver sleeps until `poll_timeout`: a deadline already past while
/// `poll_transmit` has nothing would make it spin at one instant.
#[test]
fn no_past_deadline_once_bulk_has_drained() {
    let mut sim = Sim::new(300.0, Duration::from_millis(500));
    let id = sim
        .client
        .open_stream(b"bulk", b"", Priority::Bulk)
        .unwrap();
    let data = noise(3_000, 7);
    let mut offset = 0;
    let mut spins = 0;
    for _ in 0..60_000 {
        let cap = sim.client.send_capacity(id).min(data.len() - offset);
        if cap > 0 {
            sim.client.send(id, &data[offset..offset + cap]).unwrap();
            offset += cap;
        }
        sim.step(Duration::from_millis(1));
        let now = sim.now;
        if sim.up.is_idle(now)
            && sim.client.poll_timeout().is_some_and(|t| t <= now)
            && sim.client.poll_transmit(now).is_none()
        {
            spins += 1;
        }
    }
    assert_eq!(Sim::received(&sim.server_events, id), data);
    assert_eq!(spins, 0, "poll_timeout was due but nothing was sent");
}

// ---- Base64 transform on the data path ----------------------------------------

/// Mail with base64 attachments of several layouts, text and stray ESC bytes.
fn mail_with_attachments(seed: u64) -> Vec<u8> {
    use base64::Engine;
    let mut out = mail_text(3000);
    for (i, len) in [76usize, 72, 64, 76].into_iter().enumerate() {
        out.extend_from_slice(b"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
        // Text attachments (where base64 hides repeats from the codec) and
        // one of noise.
        let data = if i == 1 {
            noise(5000, seed)
        } else {
            let mut t = mail_text(4000 + 1234 * i);
            t.extend_from_slice(&seed.to_le_bytes());
            t
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        for l in b64.as_bytes().chunks(len) {
            out.extend_from_slice(l);
            out.extend_from_slice(if i == 2 { b"\n" } else { b"\r\n" });
        }
        out.extend_from_slice(&[crate::transform::ESC, 0x81, b'\r', b'\n']);
        out.extend_from_slice(&mail_text(500 + i * 100));
    }
    out.extend_from_slice(b"\r\n.\r\n");
    out
}

#[test]
fn transform_roundtrips_both_ways_and_saves_bytes() {
    let up = mail_with_attachments(1);
    let down = mail_with_attachments(2);
    let (got_up, got_down, sim) = transfer_with_cuts_in(
        Sim::with_transform(200_000.0, Duration::from_millis(20)),
        &up,
        &down,
        &[],
    );
    assert!(got_up == up, "upstream bytes differ");
    assert!(got_down == down, "downstream bytes differ");
    let (_, _, plain) = transfer_with_cuts(&up, &down, &[]);
    let (t, p) = (sim.client.stats(), plain.client.stats());
    assert_eq!(t.raw_bytes_sent, up.len() as u64);
    assert!(
        t.wire_bytes_sent * 100 < p.wire_bytes_sent * 80,
        "{} vs {}",
        t.wire_bytes_sent,
        p.wire_bytes_sent
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn transform_survives_resume_at_any_moment(
        cuts in proptest::collection::vec(1usize..400, 1..4),
        seed in any::<u64>(),
    ) {
        let up = mail_with_attachments(seed);
        let down = mail_with_attachments(seed ^ 0x5555);
        let (got_up, got_down, _) = transfer_with_cuts_in(
            Sim::with_transform(200_000.0, Duration::from_millis(20)),
            &up,
            &down,
            &cuts,
        );
        prop_assert!(got_up == up, "up: got {} of {} bytes", got_up.len(), up.len());
        prop_assert!(got_down == down, "down: got {} of {} bytes", got_down.len(), down.len());
    }
}

/// Credit stays in stream bytes: a receiver that consumes nothing gets
/// exactly one window of decoded bytes, never more, even though far fewer
/// bytes crossed the link.
#[test]
fn transform_credit_counts_stream_bytes() {
    let mut sim = Sim::with_transform(1_000_000.0, Duration::from_millis(5));
    let window = sim.client.config().stream_window as usize;
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    let mut payload = Vec::new();
    while payload.len() < window * 2 {
        payload.extend_from_slice(&mail_with_attachments(payload.len() as u64));
    }
    payload.truncate(window * 2);
    sim.client.send(id, &payload).unwrap();
    sim.client.flush(id);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(Sim::received(&sim.server_events, id).len(), window);
    assert_eq!(sim.client.send_capacity(id), 0);
    sim.server.consumed(id, window);
    sim.run_for(Duration::from_secs(2));
    assert!(Sim::received(&sim.server_events, id) == payload);
}

/// A line held back by the encoder leaves within the cork delay even when the
/// driver never flushes, and held bytes stay within the bound.
#[test]
fn transform_releases_held_lines_on_cork_and_keeps_bound() {
    let mut sim = Sim::with_transform(300.0, Duration::from_millis(500));
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Interactive)
        .unwrap();
    // A candidate line and a half: all of it is held at first.
    sim.client
        .send(id, b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldY\r\nQUJD")
        .unwrap();
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        Sim::received(&sim.server_events, id),
        b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldY\r\nQUJD"
    );
    let data = mail_with_attachments(9);
    let mut off = 0;
    for _ in 0..400_000 {
        let cap = sim.client.send_capacity(id).min(data.len() - off);
        if cap > 0 {
            sim.client.send(id, &data[off..off + cap]).unwrap();
            off += cap;
        }
        sim.step(Duration::from_millis(1));
        if off == data.len() && sim.client.stats().raw_bytes_sent as usize == data.len() + 38 {
            break;
        }
    }
    sim.run_for(Duration::from_secs(5));
    let got = Sim::received(&sim.server_events, id);
    assert!(
        got[38..] == data[..],
        "got {} of {}",
        got.len() - 38,
        data.len()
    );
    let st = sim.client.stats();
    assert!(st.max_held <= st.held_bound_at_max, "{st:?}");
}

#[test]
fn bad_transformed_data_is_an_error() {
    let now = Instant::now();
    let frames = |data: &[Frame]| {
        let mut rec = vec![CodecId::Stored as u8];
        for f in data {
            f.encode(&mut rec);
        }
        rec
    };
    let open = Frame::Open(OpenFrame {
        stream: 1,
        service: Bytes::from_static(b"test"),
        meta: Bytes::new(),
    });
    let data = |flags, payload: &'static [u8]| Frame::Data {
        stream: 1,
        flags,
        payload: Bytes::from_static(payload),
    };
    let t = data_flags::TRANSFORM;
    let mut s = Session::new(SessionConfig::new(Role::Server), now);
    let r = s.handle_record(now, &frames(&[open.clone(), data(t, &[0xF7, 0x83])]));
    assert!(
        matches!(r, Err(SessionError::Transform { stream: 1, .. })),
        "{r:?}"
    );
    // FIN, or plain DATA, in the middle of a chunk.
    let mut s = Session::new(SessionConfig::new(Role::Server), now);
    let r = s.handle_record(
        now,
        &frames(&[
            open.clone(),
            data(t, &[0xF7, 0x81, 0, 76, 9, 1]),
            Frame::Fin { stream: 1 },
        ]),
    );
    assert!(
        matches!(r, Err(SessionError::Transform { stream: 1, .. })),
        "{r:?}"
    );
    let mut s = Session::new(SessionConfig::new(Role::Server), now);
    let r = s.handle_record(
        now,
        &frames(&[open.clone(), data(t, &[0xF7, 0x81, 0, 76]), data(0, b"x")]),
    );
    assert!(
        matches!(r, Err(SessionError::Transform { stream: 1, .. })),
        "{r:?}"
    );
    // A valid chunk decodes, and the flag is not passed on.
    let mut s = Session::new(SessionConfig::new(Role::Server), now);
    s.handle_record(
        now,
        &frames(&[open, data(t, &[0xF7, 0x81, 0, 4, 3, b'a', b'b', b'c'])]),
    )
    .unwrap();
    s.poll_event();
    assert_eq!(
        s.poll_event(),
        Some(Event::Data {
            stream: 1,
            flags: 0,
            payload: Bytes::from_static(b"YWJj\r\n")
        })
    );
}

/// POP3 RETR of a message with the GPL-3 as a base64 text attachment
/// (Python `email` layout) at 2,400 bit/s, codec settings as `straw client`
/// uses them; wire bytes with and without the transform, and `xz -9e` of the
/// raw message for scale. `cargo test -p straw-core gpl -- --nocapture`.
#[test]
fn pop3_gpl_attachment_wire_bytes() {
    let msg = crate::transform::tests::gpl_mime_message();
    let pop3 = |msg: &[u8]| {
        let mut reply = b"+OK message follows\r\n".to_vec();
        reply.extend_from_slice(msg); // no line starts with '.': no stuffing
        reply.extend_from_slice(b".\r\n");
        reply
    };
    let reply = pop3(&msg);
    let run = |reply: &[u8], transform: bool, cm: bool| {
        let cfg = |role| {
            let mut c = SessionConfig::new(role);
            if cm {
                // The shipped slow-link codec (straw::client::set_codec).
                c.use_slow_link_cm();
            } else {
                c.use_slow_link_zstd();
            }
            if transform {
                c.transform_services = vec![b"pop3".to_vec()];
            }
            c
        };
        let mut sim = Sim::with_configs(
            240.0,
            Duration::from_millis(500),
            cfg(Role::Client),
            cfg(Role::Server),
        );
        let id = sim
            .client
            .open_stream(b"pop3", b"", Priority::Interactive)
            .unwrap();
        sim.client.send(id, b"RETR 1\r\n").unwrap();
        sim.client.flush(id);
        let mut off = 0;
        let mut seen = 0;
        for _ in 0..2_000_000 {
            sim.step(Duration::from_millis(2));
            if off == 0 && !sim.server_events.is_empty() {
                sim.server.set_priority(id, Priority::Bulk);
            }
            if !sim.server_events.is_empty() && off < reply.len() {
                let cap = sim.server.send_capacity(id).min(reply.len() - off);
                if cap > 0 {
                    sim.server.send(id, &reply[off..off + cap]).unwrap();
                    off += cap;
                    if off == reply.len() {
                        sim.server.flush(id);
                    }
                }
            }
            for (_, e) in &sim.client_events[seen..] {
                if let Event::Data { payload, .. } = e {
                    sim.client.consumed(id, payload.len());
                }
            }
            seen = sim.client_events.len();
            if Sim::received(&sim.client_events, id).len() == reply.len() {
                break;
            }
        }
        let got = Sim::received(&sim.client_events, id);
        assert!(
            got == reply,
            "got {} of {} bytes, transform {transform}",
            got.len(),
            reply.len()
        );
        sim.server.stats().wire_bytes_sent
    };
    let (with, without) = (run(&reply, true, false), run(&reply, false, false));
    let cm = run(&reply, true, true);
    // The floor: the same message with the licence as plain 8-bit text.
    let gpl = crate::fixtures::gpl3();
    let mut plain = msg[..msg.len() - 600].to_vec();
    plain.truncate(plain.windows(7).rposition(|w| w == b"base64\r").unwrap());
    plain.extend_from_slice(b"8bit\r\n\r\n");
    plain.extend_from_slice(&gpl);
    let floor = run(&pop3(&plain), false, false);
    let x = crate::fixtures::xz_9e_size(&reply);
    eprintln!(
        "POP3 RETR, {} raw bytes: zstd wire {with} with the transform, {without} without, \
         {floor} for the licence as 8-bit text; CM (shipped) + transform {cm}; xz -9e {x} \
         (CM+transform/xz {:.2}, zstd+transform/xz {:.2}, zstd plain/xz {:.2})",
        reply.len(),
        cm as f64 / x as f64,
        with as f64 / x as f64,
        without as f64 / x as f64
    );
    // The issue's bar: at most 0.7x xz -9e of the raw message.
    assert!(cm * 10 <= x * 7, "CM + transform {cm} B vs xz {x} B");
    assert!(with * 100 < without * 85, "{with} vs {without}");
}

/// A bulk stream whose source stops in the middle of a run, without flush or
/// FIN: the chunk and the open line the encoder gathered still arrive.
#[test]
fn transform_bulk_source_pausing_mid_run_is_delivered() {
    use base64::Engine;
    let mut sim = Sim::with_transform(300.0, Duration::from_millis(500));
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    let mut data = b"Content-Transfer-Encoding: base64\r\n\r\n".to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(mail_text(9000));
    for l in b64.as_bytes().chunks(76) {
        data.extend_from_slice(l);
        data.extend_from_slice(b"\r\n");
    }
    data.truncate(data.len() - 30); // mid-line
    let mut off = 0;
    for _ in 0..200_000 {
        let cap = sim.client.send_capacity(id).min(data.len() - off);
        if cap > 0 {
            sim.client.send(id, &data[off..off + cap]).unwrap();
            off += cap;
        }
        sim.step(Duration::from_millis(1));
        if Sim::received(&sim.server_events, id).len() == data.len() {
            break;
        }
    }
    let got = Sim::received(&sim.server_events, id);
    assert!(got == data, "got {} of {}", got.len(), data.len());
    // It travelled decoded: well under the base64 size.
    assert!(sim.client.stats().wire_bytes_sent < data.len() as u64 / 3);
}

/// Credit runs out while the encoder holds part of a run: the session does
/// not spin on the held bytes (its timer lies ahead), and once the receiver
/// consumes and grants more, the rest arrives although the source is silent.
#[test]
fn transform_held_bytes_at_credit_limit_neither_spin_nor_stall() {
    use base64::Engine;
    let mut c = SessionConfig::new(Role::Client);
    let mut s = SessionConfig::new(Role::Server);
    c.transform_services = vec![b"test".to_vec()];
    s.stream_window = 6000;
    c.peer_stream_window = 6000;
    let mut sim = Sim::with_configs(5_000.0, Duration::from_millis(50), c, s);
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    let mut data = Vec::new();
    let b64 = base64::engine::general_purpose::STANDARD.encode(mail_text(12_000));
    for l in b64.as_bytes().chunks(76) {
        data.extend_from_slice(l);
        data.extend_from_slice(b"\r\n");
    }
    data.truncate(data.len() - 10);
    let mut off = 0;
    let mut consumed = 0;
    for step in 0..20_000 {
        let cap = sim.client.send_capacity(id).min(data.len() - off);
        if cap > 0 {
            sim.client.send(id, &data[off..off + cap]).unwrap();
            off += cap;
        }
        sim.step(Duration::from_millis(1));
        if step == 3_000 {
            // Stuck at the credit limit: nothing due, and no busy timer.
            let got = Sim::received(&sim.server_events, id).len();
            assert!(got <= 6000 && got < data.len(), "{got}");
            assert!(sim.client.poll_transmit(sim.now).is_none());
            assert!(sim.client.poll_timeout().is_none_or(|t| t > sim.now));
        }
        if step >= 3_000 {
            let got = Sim::received(&sim.server_events, id).len();
            sim.server.consumed(id, got - consumed);
            consumed = got;
            if got == data.len() {
                break;
            }
        }
    }
    assert!(Sim::received(&sim.server_events, id) == data);
}

/// A cut wastes the record in flight: on a 64 kbit/s link (a record is
/// 8 KB) bulk slices stay near `min_bulk_slice`, and the bytes arrive exactly.
#[test]
fn bulk_slices_stay_small_on_faster_links() {
    // 64 kbit/s with straw's 1 s records: below the fast-codec threshold,
    // so bulk goes through the strong codec's units and slices.
    let mut c = SessionConfig::new(Role::Client);
    let mut s = SessionConfig::new(Role::Server);
    c.record_secs = 1.0;
    s.record_secs = 1.0;
    let mut sim = Sim::with_configs(8_000.0, Duration::from_millis(100), c, s);
    push_stream(
        &mut sim,
        &noise(60_000, 3),
        Priority::Bulk,
        Duration::from_secs(60),
    );
    let min_slice = sim.client.config().min_bulk_slice;
    // One slice plus a short tail (≤ half a slice) and the record header.
    assert!(
        sim.client_max_record <= min_slice * 3 / 2 + 64,
        "largest record {} B",
        sim.client_max_record
    );
    // Without the bound, slices would be a whole record.
    assert!(sim.client.record_target() > min_slice * 3 / 2 + 64);
}

/// At 2,400 bit/s a 1 s record is ~240 B, under half a 536-byte segment:
/// bulk slices fill a segment instead, so bulk pays one packet header and
/// one record's framing per segment. Exact, and fewer records.
#[test]
fn bulk_slices_fill_a_segment_on_a_slow_link() {
    let run = |segment_payload: usize| {
        let mut c = SessionConfig::new(Role::Client);
        let mut s = SessionConfig::new(Role::Server);
        c.record_secs = 1.0;
        s.record_secs = 1.0;
        c.segment_payload = segment_payload;
        let mut sim = Sim::with_configs(300.0, Duration::from_millis(500), c, s);
        push_stream(
            &mut sim,
            &mail_text(40_000),
            Priority::Bulk,
            Duration::from_secs(120),
        );
        let st = sim.client.stats();
        // Link bytes with the packet headers (the sim charges 40 B each).
        let link = sim.up.wire().stats();
        let link_bytes = link.bytes + 40 * link.segments;
        let slices = sim.client_bulk_records.clone();
        (
            sim.client_max_record,
            st.records_sent,
            link_bytes,
            sim.client.record_target(),
            slices,
        )
    };
    let (largest, records, wire, record_target, slices) = run(536);
    // Once a slice of half a segment or more is on the link, units are
    // topped up behind what is left of the last one and a short rest waits
    // for more, so no slice but the last is mostly header (a unit is ~1.2
    // segments here). Before, while the link is idle at the start, short
    // slices go at once. (This text compresses 30x, so the held bound, in
    // raw bytes, caps a unit: slices grow to a full segment over ~8 slices
    // while the link clock hands each over as the link frees.)
    let full = slices
        .iter()
        .position(|&n| n >= 536 / 2)
        .expect("a slice of half a segment");
    let short: Vec<usize> = slices[full..slices.len() - 1]
        .iter()
        .copied()
        .filter(|&n| n < 536 / 2)
        .collect();
    assert!(short.is_empty(), "short slices {short:?} of {slices:?}");
    assert!(slices.len() - full > 5, "{slices:?}");
    // A slice is a segment less the framing; a short tail may ride along.
    assert!(
        largest > record_target * 3 / 2,
        "largest record {largest} B"
    );
    assert!(
        largest <= (536 - 18) * 3 / 2 + 16,
        "largest record {largest} B"
    );
    // A segment as small as a record: slices are records, as before.
    let (small_largest, small_records, small_wire, _, _) = run(0);
    assert!(small_largest < largest, "{small_largest} vs {largest}");
    eprintln!(
        "segment slices: {records} records, {wire} link B; record slices: {small_records}, {small_wire} link B"
    );
    assert!(
        records < small_records,
        "records {records} vs {small_records} with record-sized slices"
    );
    // Each record saved is a packet header (and, on the real link, 18 B of
    // Noise framing the sim does not charge).
    assert!(
        wire + 40 * (small_records - records) <= small_wire + 64,
        "{wire} vs {small_wire} link bytes"
    );
}

/// After `codec_idle_reset` without compressed records, each side resets its
/// encoder and tells the peer: an idle tunnel then holds no codec state on
/// either side (the issue's bound is 64 KiB), and later traffic still
/// decodes, so both ends reset at the same record.
fn idle_reset_frees_codec_state(c: SessionConfig, s: SessionConfig) {
    let mut sim = Sim::with_configs(2_000.0, Duration::from_millis(200), c, s);
    let idle = sim.client.config().codec_idle_reset;
    let id = sim
        .client
        .open_stream(b"mail", b"", Priority::Interactive)
        .unwrap();
    let mut sent = Vec::new();
    let mut echo = |sim: &mut Sim, text: &[u8]| {
        sim.client.send(id, text).unwrap();
        sim.client.flush(id);
        sent.extend_from_slice(text);
        sim.run_for(Duration::from_secs(5));
        let got = Sim::received(&sim.server_events, id);
        assert!(got == sent, "{} of {} bytes", got.len(), sent.len());
        let sid = id;
        sim.server.send(sid, text).unwrap();
        sim.server.flush(sid);
        sim.run_for(Duration::from_secs(5));
    };
    echo(&mut sim, &mail_text(3000));
    let busy = (
        sim.client.codec_memory_bytes(),
        sim.server.codec_memory_bytes(),
    );
    assert!(busy.0 > 64 * 1024 && busy.1 > 64 * 1024, "{busy:?}");
    sim.run_for(idle + Duration::from_secs(5));
    let idle_mem = (
        sim.client.codec_memory_bytes(),
        sim.server.codec_memory_bytes(),
    );
    eprintln!("codec memory busy {busy:?}, idle {idle_mem:?}");
    assert!(
        idle_mem.0 <= 64 * 1024 && idle_mem.1 <= 64 * 1024,
        "{idle_mem:?}"
    );
    assert_eq!(sim.client.stats().codec_resets, 1);
    assert_eq!(sim.server.stats().codec_resets, 1);
    // Both ends start again from the primed state, in step.
    echo(&mut sim, &mail_text(2000));
    let back = Sim::received(&sim.client_events, id);
    assert_eq!(back.len(), 5000);
}

#[test]
fn idle_reset_frees_zstd_state() {
    let mut c = SessionConfig::new(Role::Client);
    let mut s = SessionConfig::new(Role::Server);
    for cfg in [&mut c, &mut s] {
        cfg.codec_idle_reset = Duration::from_secs(60);
    }
    idle_reset_frees_codec_state(c, s);
}

#[test]
fn idle_reset_frees_cm_state() {
    use crate::codec::{CmParams, CodecParams, DecoderLimits};
    let cm = CmParams {
        table_log: 16,
        match_log: 14,
        priming: None,
    };
    let mut c = SessionConfig::new(Role::Client);
    let mut s = SessionConfig::new(Role::Server);
    for cfg in [&mut c, &mut s] {
        cfg.codec = CodecId::Cm;
        cfg.codec_params = CodecParams {
            cm: Some(cm),
            ..CodecParams::default()
        };
        cfg.decoder_limits = DecoderLimits {
            cm: Some(cm),
            ..DecoderLimits::default()
        };
        cfg.codec_idle_reset = Duration::from_secs(60);
    }
    idle_reset_frees_codec_state(c, s);
}

#[test]
fn codec_reset_inside_a_bulk_record_is_an_error() {
    let now = Instant::now();
    let mut s = Session::new(SessionConfig::new(Role::Server), now);
    let mut plain = Vec::new();
    Frame::CodecReset.encode(&mut plain);
    let mut rec = vec![CodecId::ZstdBulk as u8];
    crate::wire::put_varint(&mut rec, plain.len() as u64);
    rec.extend_from_slice(&plain);
    assert!(s.handle_record(now, &rec).is_err());
}

// ---- Fast links: the cheap codec ---------------------------------------------

/// Sends `data` client→server on a new stream as a program would (keeping to
/// `send_capacity`, the server consuming what arrives), for at most `limit`
/// of simulated time, and checks it arrived intact. Returns the time taken.
fn push_stream(sim: &mut Sim, data: &[u8], priority: Priority, limit: Duration) -> Duration {
    let id = sim.client.open_stream(b"bulk", b"", priority).unwrap();
    let start = sim.now;
    let (mut offset, mut seen) = (0, sim.server_events.len());
    let mut got = Vec::new();
    while got.len() < data.len() && sim.now - start < limit {
        let cap = sim.client.send_capacity(id).min(data.len() - offset);
        if cap > 0 {
            sim.client.send(id, &data[offset..offset + cap]).unwrap();
            sim.client.flush(id);
            offset += cap;
        }
        sim.step(Duration::from_millis(1));
        let new = Sim::received(&sim.server_events[seen..], id);
        seen = sim.server_events.len();
        sim.server.consumed(id, new.len());
        got.extend_from_slice(&new);
    }
    assert!(got == data, "{} of {} bytes arrived", got.len(), data.len());
    sim.now - start
}

fn by_codec(st: &SessionStats, c: CodecId) -> u64 {
    st.raw_bytes_by_codec[c as usize]
}

#[test]
fn fast_link_switches_to_cheap_codec() {
    // 10 MB/s, 1 ms each way; the sessions start out assuming 300 B/s.
    let mut sim = Sim::with_initial_rate(10e6, Duration::from_millis(1), 300.0);
    let data = mail_text(4 << 20);
    let took = push_stream(&mut sim, &data, Priority::Bulk, Duration::from_secs(5));
    let c = &sim.client;
    let st = c.stats();
    assert!(c.is_fast());
    assert_eq!((st.fast_switches, st.slow_switches), (1, 0));
    // All but the first few records went LZ4 (the bulk lane skipped).
    let cheap = by_codec(st, CodecId::Lz4);
    assert!(cheap > data.len() as u64 * 95 / 100, "{st:?}");
    assert!(st.wire_bytes_sent < data.len() as u64 * 3 / 4, "{st:?}");
    // The window opens fast: quick ACKs, not a 100 ms ack delay per round.
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(c.inflight_limit() <= MAX_INFLIGHT);
    assert!(st.max_held <= MAX_INFLIGHT + 64 * 1024, "{st:?}");
    // (The receiving side sends only ACKs and credit; since its rate is
    // measured in link bytes, headers included, it may see the fast link too.)
}

#[test]
fn slow_link_never_switches() {
    // Iridium: 240 B/s, 0.5 s each way.
    let mut sim = Sim::new(240.0, Duration::from_millis(500));
    push_stream(
        &mut sim,
        &mail_text(12_000),
        Priority::Bulk,
        Duration::from_secs(200),
    );
    push_stream(
        &mut sim,
        &mail_text(3_000),
        Priority::Interactive,
        Duration::from_secs(100),
    );
    for s in [&sim.client, &sim.server] {
        assert!(!s.is_fast());
        assert_eq!(s.stats().fast_switches, 0);
        assert_eq!(by_codec(s.stats(), CodecId::Lz4), 0);
    }
    let st = sim.client.stats();
    assert!(by_codec(st, CodecId::ZstdBulk) >= 12_000, "{st:?}");
    assert!(by_codec(st, CodecId::Zstd) > 0, "{st:?}");
}

#[test]
fn link_slowing_down_goes_back_to_strong_codec() {
    let mut sim = Sim::with_initial_rate(10e6, Duration::from_millis(1), 300.0);
    push_stream(
        &mut sim,
        &mail_text(1 << 20),
        Priority::Bulk,
        Duration::from_secs(5),
    );
    assert!(sim.client.is_fast());
    // The link drops to 2 KB/s with a satellite's delay.
    for p in [&mut sim.up, &mut sim.down] {
        p.model_mut().rate_bps = 2_000 * 8;
        p.model_mut().delay = Duration::from_millis(300);
    }
    push_stream(
        &mut sim,
        &mail_text(600_000),
        Priority::Bulk,
        Duration::from_secs(300),
    );
    let st = sim.client.stats().clone();
    assert!(!sim.client.is_fast(), "{st:?}");
    assert_eq!((st.fast_switches, st.slow_switches), (1, 1));
    // New data goes through the strong bulk codec again, every byte arriving
    // intact across the switches (checked by push_stream).
    let data = mail_text(50_000);
    push_stream(&mut sim, &data, Priority::Bulk, Duration::from_secs(100));
    let now = sim.client.stats();
    assert_eq!(by_codec(now, CodecId::Lz4), by_codec(&st, CodecId::Lz4));
    let strong = by_codec(now, CodecId::ZstdBulk) - by_codec(&st, CodecId::ZstdBulk);
    assert_eq!(strong, data.len() as u64, "{now:?}");
    assert!(!sim.client.is_fast());
}

#[test]
fn inflight_is_capped_however_fast_the_link() {
    // A session that believes in 1 GB/s: x 2 s would be 2 GB in flight.
    let mut sim = Sim::new(1e9, Duration::from_millis(50));
    assert_eq!(sim.client.inflight_limit(), MAX_INFLIGHT);
    assert!(sim.client.held_bound() <= MAX_INFLIGHT + 64 * 1024);
    // Stream credit for a whole second, so only the in-flight cap binds.
    sim.server.cfg.stream_window = 64 << 20;
    sim.client.cfg.peer_stream_window = 64 << 20;
    push_stream(
        &mut sim,
        &noise(8 << 20, 9),
        Priority::Bulk,
        Duration::from_secs(5),
    );
    let st = sim.client.stats();
    assert!(st.wire_bytes_sent > MAX_INFLIGHT, "{st:?}");
    assert!(st.max_held <= MAX_INFLIGHT + 64 * 1024, "{st:?}");
    // Never more than one record beyond the cap.
    let unacked = sim.max_client_unacked;
    assert!(
        unacked > MAX_INFLIGHT / 2 && unacked <= MAX_INFLIGHT + 64 * 1024,
        "{unacked}"
    );
}

#[test]
fn tiers_follow_the_rate_with_hysteresis() {
    let mut s = Session::new(SessionConfig::new(Role::Client), Instant::now());
    let feed = |s: &mut Session, rate: f64| {
        // Eight samples flush the max filter.
        for _ in 0..8 {
            s.estimate.rate_sample(rate as u64, Duration::from_secs(1));
        }
        s.update_fast();
        (s.tier(), s.record_codec())
    };
    assert_eq!(s.record_codec(), CodecId::Zstd);
    assert_eq!(feed(&mut s, 240.0), (Tier::Strong, CodecId::Zstd));
    assert_eq!(feed(&mut s, 12_000.0), (Tier::Strong, CodecId::Zstd));
    assert_eq!(feed(&mut s, 20_000.0), (Tier::Fast, CodecId::Lz4));
    assert_eq!(feed(&mut s, 5_000.0), (Tier::Fast, CodecId::Lz4));
    assert_eq!(feed(&mut s, 200e6), (Tier::Stored, CodecId::Stored));
    assert_eq!(feed(&mut s, 60e6), (Tier::Stored, CodecId::Stored));
    assert_eq!(feed(&mut s, 40e6), (Tier::Fast, CodecId::Lz4));
    assert_eq!(feed(&mut s, 3_000.0), (Tier::Strong, CodecId::Zstd));
    assert_eq!(feed(&mut s, 1e9), (Tier::Stored, CodecId::Stored));
    assert_eq!(feed(&mut s, 1_000.0), (Tier::Strong, CodecId::Zstd));
    let st = s.stats();
    assert_eq!((st.fast_switches, st.slow_switches), (2, 2));
    // Without a fast codec the strong one stays.
    let mut c = SessionConfig::new(Role::Client);
    c.fast_codec = None;
    let mut s = Session::new(c, Instant::now());
    assert_eq!(feed(&mut s, 1e9), (Tier::Strong, CodecId::Zstd));
}

/// Wire bytes by service: a bulk POP3 reply down and SMTP commands up over
/// a 2,400 bit/s link. Each side's shares add up to its wire total, the
/// receiver sees exactly the sender's shares, and each service's share is
/// its own stream's.
#[test]
fn wire_bytes_are_shared_by_service_and_add_up() {
    let services = vec![b"smtp".to_vec(), b"pop3".to_vec()];
    let cfg = |role| {
        let mut c = SessionConfig::new(role);
        c.use_slow_link_zstd();
        c.accounting_services = services.clone();
        c.transform_services = vec![b"pop3".to_vec()];
        c
    };
    let mut sim = Sim::with_configs(
        240.0,
        Duration::from_millis(500),
        cfg(Role::Client),
        cfg(Role::Server),
    );
    let pop3 = sim
        .client
        .open_stream(b"pop3", b"", Priority::Interactive)
        .unwrap();
    let smtp = sim
        .client
        .open_stream(b"smtp", b"", Priority::Interactive)
        .unwrap();
    let unknown = sim
        .client
        .open_stream(b"gopher", b"", Priority::Interactive)
        .unwrap();
    sim.client.send(pop3, b"RETR 1\r\n").unwrap();
    sim.client.flush(pop3);
    let mut reply = b"+OK\r\n".to_vec();
    for i in 0..400 {
        reply.extend_from_slice(format!("Line {i} of a message body, about mail.\r\n").as_bytes());
    }
    reply.extend_from_slice(b".\r\n");
    let commands = b"EHLO boat\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n";
    let mut off = 0;
    let mut seen = 0;
    for i in 0..200_000 {
        sim.step(Duration::from_millis(5));
        if i == 10 {
            sim.client.send(smtp, commands).unwrap();
            sim.client.flush(smtp);
            sim.client.send(unknown, b"hello").unwrap();
            sim.client.flush(unknown);
        }
        if off == 0 && !sim.server_events.is_empty() {
            sim.server.set_priority(pop3, Priority::Bulk);
        }
        if !sim.server_events.is_empty() && off < reply.len() {
            let cap = sim.server.send_capacity(pop3).min(reply.len() - off);
            if cap > 0 {
                sim.server.send(pop3, &reply[off..off + cap]).unwrap();
                off += cap;
                if off == reply.len() {
                    sim.server.flush(pop3);
                }
            }
        }
        Sim::consume_new(&sim.client_events, &mut seen, &mut sim.client);
        let up_done = Sim::received(&sim.server_events, smtp).len() == commands.len()
            && Sim::received(&sim.server_events, unknown).len() == 5;
        if up_done && Sim::received(&sim.client_events, pop3) == reply {
            break;
        }
    }
    assert!(
        Sim::received(&sim.client_events, pop3) == reply,
        "reply not delivered"
    );
    // Let the last ACKs cross.
    for _ in 0..1000 {
        sim.step(Duration::from_millis(5));
    }
    let (c, s) = (sim.client.stats(), sim.server.stats());
    assert!(
        s.raw_bytes_by_codec[CodecId::ZstdBulk as usize] > 0,
        "bulk lane unused: {s:?}"
    );
    for (st, side) in [(c, "client"), (s, "server")] {
        assert_eq!(
            st.wire_bytes_sent_by_class.iter().sum::<u64>(),
            st.wire_bytes_sent,
            "{side}"
        );
        assert_eq!(
            st.wire_bytes_received_by_class.iter().sum::<u64>(),
            st.wire_bytes_received,
            "{side}"
        );
    }
    assert_eq!(s.wire_bytes_sent_by_class, c.wire_bytes_received_by_class);
    assert_eq!(c.wire_bytes_sent_by_class, s.wire_bytes_received_by_class);
    let (smtp_c, pop3_c) = (WIRE_CLASS_FIRST_SERVICE, WIRE_CLASS_FIRST_SERVICE + 1);
    let down = &s.wire_bytes_sent_by_class;
    // The reply compresses; its share is most of the down link and less
    // than its raw size.
    assert!(down[pop3_c] > s.wire_bytes_sent / 2, "{down:?}");
    assert!(down[pop3_c] < reply.len() as u64 / 2, "{down:?}");
    assert_eq!(down[smtp_c], 0, "{down:?}");
    let up = &c.wire_bytes_sent_by_class;
    assert!(
        up[smtp_c] > 0 && up[pop3_c] > 0 && up[WIRE_CLASS_OTHER] > 0,
        "{up:?}"
    );
    assert!(up[WIRE_CLASS_CONTROL] > 0, "ACKs travel up: {up:?}");
    eprintln!("wire by class, down {down:?}, up {up:?}");
}

/// A parked session drops its encoder state; after the resume the re-sent
/// records come first, then a CodecReset, and new records decode on a peer
/// that had compressed history, byte-exact. The peer's decoder lets its
/// state go too.
#[test]
fn dropping_the_encoder_while_parked_keeps_the_stream_exact() {
    let mut sim = Sim::new(8_000.0, Duration::from_millis(100));
    let id = sim
        .client
        .open_stream(b"mail", b"", Priority::Interactive)
        .unwrap();
    sim.client.send(id, b"RETR 1\r\n").unwrap();
    sim.client.flush(id);
    sim.run_for(Duration::from_secs(2));
    let first = mail_text(20_000);
    sim.server.send(id, &first[..12_000]).unwrap();
    sim.server.flush(id);
    // Cut while some of it is in flight: those records are re-sent.
    sim.run_for(Duration::from_millis(150));
    assert!(sim.server.codec_memory_bytes() > 0);
    assert!(sim.server.drop_encoder_state());
    assert_eq!(
        sim.server.codec_memory_bytes(),
        0,
        "parked with codec state"
    );
    sim.cut_and_resume(Duration::from_secs(5));
    sim.server.send(id, &first[12_000..]).unwrap();
    sim.server.flush(id);
    for _ in 0..400 {
        sim.run_for(Duration::from_millis(50));
        if Sim::received(&sim.client_events, id).len() >= first.len() {
            break;
        }
    }
    let got = Sim::received(&sim.client_events, id);
    assert!(
        got == first,
        "{} of {} bytes, or corrupt",
        got.len(),
        first.len()
    );
    assert!(
        sim.server.stats().records_resent > 0,
        "nothing was in flight at the cut"
    );
    assert_eq!(sim.server.stats().codec_resets, 1);
}

/// A round trip far shorter than any slow link allows moves the tunnel to
/// the fast codec even when its delivery-rate estimate is low (as a starved
/// compressor keeps it). A slow link's round trip changes nothing.
#[test]
fn a_short_round_trip_picks_the_fast_codec_whatever_the_rate_estimate() {
    for (rtt, fast) in [
        (Duration::from_micros(100), true),
        (Duration::from_millis(5), true),
        (Duration::from_millis(20), false),
        (Duration::from_millis(900), false),
    ] {
        let mut c = SessionConfig::new(Role::Server);
        c.initial_rate = 300.0;
        let mut s = Session::new(c, Instant::now());
        s.estimate.rtt_sample(rtt);
        s.update_fast();
        assert!(s.estimate().rate() < FAST_EXIT_RATE);
        assert_eq!(s.is_fast(), fast, "{rtt:?}");
    }
}

/// A record that left with nothing else waiting (app-limited) shows what we
/// had to send, not the link: its low delivery-rate sample must not replace
/// the configured rate (BBR's rule). A record sent with more waiting counts.
#[test]
fn app_limited_samples_do_not_lower_the_rate() {
    let mut sim = Sim::new(300.0, Duration::from_millis(500));
    let id = sim
        .client
        .open_stream(b"mail", b"", Priority::Interactive)
        .unwrap();
    // A few small commands, each alone: app-limited records.
    for _ in 0..10 {
        sim.client.send(id, b"NOOP\r\n").unwrap();
        sim.client.flush(id);
        sim.run_for(Duration::from_secs(2));
    }
    let r = sim.client.estimate().rate();
    assert!(r >= 300.0, "the configured 300 B/s fell to {r:.0} B/s");
}

// ---- Abandoned transfers -------------------------------------------------------

/// A POP3 RETR reply like the bench's big message: headers and text, then a
/// base64 PNG (incompressible), then more text.
fn big_retr_reply() -> Vec<u8> {
    use base64::Engine;
    let mut out = b"+OK 300000 octets\r\n".to_vec();
    out.extend_from_slice(&mail_text(3000));
    out.extend_from_slice(b"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&noise(200_000, 5));
    let b64 = base64::engine::general_purpose::STANDARD.encode(png);
    for l in b64.as_bytes().chunks(76) {
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&mail_text(40_000));
    out.extend_from_slice(b"\r\n.\r\n");
    out
}

/// The server side streams `data` on `id` as the tunnel does (within
/// `send_capacity`), the client consuming it, until `until` says stop.
fn serve_bulk(sim: &mut Sim, id: u64, data: &[u8], offset: &mut usize, seen: &mut usize) -> usize {
    let cap = sim.server.send_capacity(id).min(data.len() - *offset);
    if cap > 0 {
        sim.server.send(id, &data[*offset..*offset + cap]).unwrap();
        *offset += cap;
    }
    sim.step(Duration::from_millis(1));
    let new = Sim::received(&sim.client_events[*seen..], id);
    *seen = sim.client_events.len();
    sim.client.consumed(id, new.len());
    new.len()
}

#[test]
fn an_abandoned_bulk_stream_stops_soon_and_another_reply_gets_through() {
    let cfg = |role| {
        let mut c = SessionConfig::new(role);
        c.use_slow_link_cm();
        c.transform_services = vec![b"pop3".to_vec()];
        c
    };
    // 2,400 bit/s, 500 ms one way.
    let rate = 300.0;
    let mut sim = Sim::with_configs(
        rate,
        Duration::from_millis(500),
        cfg(Role::Client),
        cfg(Role::Server),
    );
    // A first message of text: the codec's ratio on mail (~0.1) is what
    // the next unit is sized by.
    let first = sim
        .client
        .open_stream(b"pop3", b"", Priority::Interactive)
        .unwrap();
    sim.run_for(Duration::from_secs(2));
    sim.server.set_priority(first, Priority::Bulk);
    let text = mail_text(30_000);
    let (mut offset, mut seen, mut got) = (0, 0, 0);
    while got < text.len() {
        got += serve_bulk(&mut sim, first, &text, &mut offset, &mut seen);
    }
    let ratio = sim.server.estimate().compression_ratio();

    // The big one; the program drops it once the attachment has begun.
    let big = sim
        .client
        .open_stream(b"pop3", b"", Priority::Interactive)
        .unwrap();
    sim.run_for(Duration::from_secs(2));
    sim.server.set_priority(big, Priority::Bulk);
    let reply = big_retr_reply();
    let (mut offset, mut got) = (0, 0);
    let mut max_unit = 0;
    let asked = sim.now;
    let mut first_byte = None;
    while got < 3100 {
        got += serve_bulk(&mut sim, big, &reply, &mut offset, &mut seen);
        max_unit = max_unit.max(sim.server.bulk_out.len());
        if got > 0 && first_byte.is_none() {
            first_byte = Some(sim.now - asked);
        }
    }
    eprintln!("first byte of the big reply after {first_byte:?}");
    sim.client.reset(big, reset_code::ABORTED);
    let dropped = sim.now;
    let wire_before = sim.server.stats().wire_bytes_sent;
    let bound =
        sim.server.inflight_limit() + 2 * (rate * sim.server.config().bulk_unit_secs) as u64;

    // Another connection asks something the moment the big one is gone.
    let ask = sim
        .client
        .open_stream(b"pop3", b"", Priority::Interactive)
        .unwrap();
    sim.client.send(ask, b"STAT\r\n").unwrap();
    sim.client.flush(ask);
    let mut answered = false;
    while Sim::received(&sim.client_events, ask).is_empty() {
        if !answered && Sim::received(&sim.server_events, ask) == b"STAT\r\n" {
            sim.server.send(ask, b"+OK 13 345916\r\n").unwrap();
            sim.server.flush(ask);
            answered = true;
        }
        // The server side goes on feeding the big stream while it exists.
        if sim.server.send_capacity(big) > 0 && offset < reply.len() {
            let cap = sim.server.send_capacity(big).min(reply.len() - offset);
            sim.server.send(big, &reply[offset..offset + cap]).unwrap();
            offset += cap;
        }
        sim.step(Duration::from_millis(1));
        assert!(sim.now - dropped < Duration::from_secs(60), "no reply");
    }
    let took = sim.now - dropped;
    // Then whatever was committed for the dropped stream drains.
    while sim.server.held() > sim.server.unacked_bytes() || !sim.down.is_idle(sim.now) {
        sim.step(Duration::from_millis(1));
    }
    let after = sim.server.stats().wire_bytes_sent - wire_before;
    eprintln!(
        "abandoned at ratio {ratio:.2}, largest bulk unit {max_unit} B: server sent {after} B \
         after the drop (bound {bound} B), reply after {took:?}"
    );
    assert!(after <= bound, "{after} B after the drop, bound {bound} B");
    // Two round trips (the drop reaching the server, the question and its
    // reply) plus what was already committed, at the link's rate.
    let allowed = Duration::from_secs(2) + Duration::from_secs_f64(bound as f64 / rate);
    assert!(took <= allowed, "reply after {took:?}, allowed {allowed:?}");
}

/// The driver says the host's codec CPU is saturated and this session uses
/// a real share of it: new records go LZ4 at any measured rate, both sides
/// drop the strong codec's contexts at once (a CodecReset, not after the
/// idle reset), and when the pressure ends a slow link's rate brings the
/// strong codec back. Every byte arrives exact throughout.
#[test]
fn cpu_degraded_session_goes_fast_and_frees_the_strong_contexts() {
    let mut sim = Sim::new(2_000.0, Duration::from_millis(200));
    let id = sim
        .client
        .open_stream(b"mail", b"", Priority::Interactive)
        .unwrap();
    let mut sent = Vec::new();
    let send = |sim: &mut Sim, sent: &mut Vec<u8>, text: &[u8]| {
        sim.client.send(id, text).unwrap();
        sim.client.flush(id);
        sent.extend_from_slice(text);
        sim.run_for(Duration::from_secs(5));
        let got = Sim::received(&sim.server_events, id);
        assert!(got == *sent, "{} of {} bytes", got.len(), sent.len());
    };
    send(&mut sim, &mut sent, &mail_text(3000));
    assert_eq!(sim.client.tier(), Tier::Strong);
    assert!(sim.client.codec_memory_bytes() > 64 * 1024);
    assert!(sim.server.codec_memory_bytes() > 64 * 1024);

    sim.client.set_cpu_degraded(true);
    assert!(sim.client.cpu_degraded());
    assert_eq!(
        (sim.client.tier(), sim.client.record_codec()),
        (Tier::Fast, CodecId::Lz4)
    );
    send(&mut sim, &mut sent, &mail_text(3000));
    assert_eq!(sim.client.stats().codec_resets, 1);
    assert_eq!(
        sim.server.stats().codec_resets,
        0,
        "the server's own encoder is its own"
    );
    assert_eq!(sim.client.codec_memory_bytes(), 0);
    assert!(
        sim.server.codec_memory_bytes() <= 64 * 1024,
        "the peer's decoder too: {}",
        sim.server.codec_memory_bytes()
    );
    assert!(
        sim.client.stats().raw_bytes_by_codec[CodecId::Lz4 as usize] > 0,
        "{:?}",
        sim.client.stats().raw_bytes_by_codec
    );
    // Degraded on a slow link: the rate alone would say strong.
    assert_eq!(sim.client.tier(), Tier::Fast);
    assert_eq!(sim.client.stats().cpu_degraded, 1);

    sim.client.set_cpu_degraded(false);
    assert_eq!(
        (sim.client.tier(), sim.client.record_codec()),
        (Tier::Strong, CodecId::Zstd)
    );
    let before = sim.client.stats().raw_bytes_by_codec[CodecId::Zstd as usize];
    send(&mut sim, &mut sent, &mail_text(2000));
    assert!(sim.client.stats().raw_bytes_by_codec[CodecId::Zstd as usize] > before);
}

/// A link between the fast codec's exit and entry rates (8 KB/s: 64
/// kbit/s) keeps the strong codec by its rate. A moment of CPU pressure
/// must not leave it on the fast one for good: the rate's hysteresis runs
/// on the rate's own choice (seen: one 240 ms burst made a 300 KB RETR
/// cost 1.26x the link bytes).
#[test]
fn a_degraded_moment_between_the_fast_rates_goes_back_to_strong() {
    let mut sim = Sim::new(8_000.0, Duration::from_millis(100));
    let id = sim
        .client
        .open_stream(b"mail", b"", Priority::Interactive)
        .unwrap();
    let text = mail_text(20_000);
    sim.client.send(id, &text).unwrap();
    sim.client.flush(id);
    sim.run_for(Duration::from_secs(10));
    assert_eq!(Sim::received(&sim.server_events, id), text);
    let rate = sim.client.estimate().rate();
    assert!(
        (FAST_EXIT_RATE..FAST_ENTER_RATE).contains(&rate),
        "measured {rate} B/s"
    );
    assert_eq!(sim.client.tier(), Tier::Strong);
    sim.client.set_cpu_degraded(true);
    assert_eq!(sim.client.tier(), Tier::Fast);
    sim.client.set_cpu_degraded(false);
    assert_eq!(sim.client.tier(), Tier::Strong);
}

/// The strong codec compresses a bulk unit in one go on the runtime's
/// thread, so a unit's size bounds how long another tunnel's reply can wait
/// behind it: at rates just below the fast tier a unit would otherwise be
/// `max_record` (60 KiB, ~150 ms of CM).
#[test]
fn bulk_units_never_pass_max_bulk_unit() {
    let mut sim = Sim::new(12_000.0, Duration::from_millis(50));
    let id = sim
        .client
        .open_stream(b"mail", b"", Priority::Bulk)
        .unwrap();
    let text = mail_text(400_000);
    let (mut off, mut most, mut seen) = (0, 0, 0);
    for _ in 0..20_000 {
        let cap = sim.client.send_capacity(id).min(text.len() - off);
        if cap > 0 {
            sim.client.send(id, &text[off..off + cap]).unwrap();
            off += cap;
        }
        sim.step(Duration::from_millis(1));
        // The program reads everything at once.
        Sim::consume_new(&sim.server_events, &mut seen, &mut sim.server);
        most = most.max(sim.client.bulk_unit_raw());
        if Sim::received(&sim.server_events, id).len() == text.len() {
            break;
        }
    }
    assert_eq!(
        sim.client.tier(),
        Tier::Strong,
        "12 kB/s is below the fast tier"
    );
    let cfg = sim.client.config();
    assert!(most <= cfg.max_bulk_unit, "{most}");
    // Without the bound the rate would have asked for more.
    let unbounded = (sim.client.estimate().rate() * cfg.bulk_unit_secs
        / sim.client.estimate().compression_ratio()) as usize;
    assert!(unbounded > cfg.max_bulk_unit, "{unbounded}");
    let got = Sim::received(&sim.server_events, id);
    assert!(got == text, "{} of {} bytes", got.len(), text.len());
}

/// The server pushes `data` on bulk stream `id` as far as credit allows.
fn push_bulk(sim: &mut Sim, id: u64, data: &[u8], offset: &mut usize) {
    let cap = sim.server.send_capacity(id).min(data.len() - *offset);
    if cap > 0 {
        sim.server.send(id, &data[*offset..*offset + cap]).unwrap();
        sim.server.flush(id);
        *offset += cap;
    }
}

/// Offloaded units (a server's codec threads) arrive byte-exact and as
/// compressed as inline ones, whatever the jobs' delay.
#[test]
fn offloaded_bulk_units_are_byte_exact() {
    use crate::codec::{CmParams, CodecParams, DecoderLimits};
    let cm = CmParams {
        table_log: 16,
        match_log: 14,
        priming: None,
    };
    for (strong, delay_ms) in [(false, 0), (false, 7), (true, 0), (true, 40)] {
        let mut c = SessionConfig::new(Role::Client);
        let mut s = SessionConfig::new(Role::Server);
        if strong {
            for cfg in [&mut c, &mut s] {
                cfg.bulk_codec_params = CodecParams {
                    cm: Some(cm),
                    ..CodecParams::default()
                };
                cfg.bulk_decoder_limits = DecoderLimits {
                    cm: Some(cm),
                    ..DecoderLimits::default()
                };
            }
        }
        let mut sim = Sim::with_configs(12_000.0, Duration::from_millis(50), c, s);
        sim.server.set_bulk_offload(true);
        sim.job_delay = Some(Duration::from_millis(delay_ms));
        let id = sim
            .client
            .open_stream(b"bulk", b"", Priority::Bulk)
            .unwrap();
        sim.run_for(Duration::from_millis(200));
        sim.server.set_priority(id, Priority::Bulk);
        let data = mail_text(300_000);
        let (mut off, mut seen) = (0, 0);
        for _ in 0..60_000 {
            push_bulk(&mut sim, id, &data, &mut off);
            sim.step(Duration::from_millis(1));
            Sim::consume_new(&sim.client_events, &mut seen, &mut sim.client);
            if Sim::received(&sim.client_events, id).len() == data.len() {
                break;
            }
        }
        let got = Sim::received(&sim.client_events, id);
        assert!(
            got == data,
            "{delay_ms} ms: {} of {}",
            got.len(),
            data.len()
        );
        let st = sim.server.stats();
        let bulk_codec = if strong {
            CodecId::CmBulk
        } else {
            CodecId::ZstdBulk
        };
        assert!(by_codec(st, bulk_codec) > 200_000, "{delay_ms} ms: {st:?}");
        assert!(
            st.wire_bytes_sent * 3 < data.len() as u64,
            "{delay_ms} ms: wire {}",
            st.wire_bytes_sent
        );
        assert!(st.max_held <= st.held_bound_at_max, "{st:?}");
        assert!(!sim.server.bulk_job_pending());
    }
}

/// The fairness rule in the session: while a bulk unit is out being
/// compressed, and its job does not come back at all (the codec threads are
/// busy with other tunnels), an interactive reply still leaves at once, and
/// the session does not spin on a past deadline meanwhile.
#[test]
fn interactive_reply_never_waits_for_a_bulk_job() {
    let mut sim = Sim::new(12_000.0, Duration::from_millis(50));
    sim.server.set_bulk_offload(true);
    let bulk = sim
        .client
        .open_stream(b"bulk", b"", Priority::Bulk)
        .unwrap();
    let chat = sim
        .client
        .open_stream(b"chat", b"", Priority::Interactive)
        .unwrap();
    sim.run_for(Duration::from_millis(200));
    sim.server.set_priority(bulk, Priority::Bulk);
    let data = mail_text(200_000);
    let (mut off, mut seen) = (0, 0);
    for _ in 0..300 {
        push_bulk(&mut sim, bulk, &data, &mut off);
        sim.step(Duration::from_millis(1));
        Sim::consume_new(&sim.client_events, &mut seen, &mut sim.client);
    }
    assert!(Sim::received(&sim.client_events, bulk).len() > 10_000);
    // From now on, no job comes back. What was compressed before the job
    // that is out still goes; then the bulk lane is stuck.
    sim.job_delay = None;
    for _ in 0..1_000 {
        push_bulk(&mut sim, bulk, &data, &mut off);
        sim.step(Duration::from_millis(1));
        Sim::consume_new(&sim.client_events, &mut seen, &mut sim.client);
    }
    assert!(sim.server.bulk_job_pending(), "a unit is out with its job");
    let stalled_at = Sim::received(&sim.client_events, bulk).len();
    // The bulk lane is stuck; the session must not ask to be woken for it.
    assert!(
        sim.server.poll_timeout().is_none_or(|t| t > sim.now),
        "a deadline in the past while only the job can move things"
    );
    let asked = sim.now;
    sim.client.send(chat, b"a1 NOOP\r\n").unwrap();
    sim.client.flush(chat);
    let mut replied = false;
    for _ in 0..1_000 {
        sim.step(Duration::from_millis(1));
        if !replied && Sim::received(&sim.server_events, chat) == b"a1 NOOP\r\n" {
            sim.server.send(chat, b"a1 OK\r\n").unwrap();
            sim.server.flush(chat);
            replied = true;
        }
        if Sim::received(&sim.client_events, chat) == b"a1 OK\r\n" {
            break;
        }
    }
    let took = sim.now - asked;
    assert_eq!(Sim::received(&sim.client_events, chat), b"a1 OK\r\n");
    // One round trip (100 ms) and a little serialisation, no bulk compression.
    assert!(took <= Duration::from_millis(130), "reply took {took:?}");
    assert!(sim.server.bulk_job_pending(), "the job is still out");
    assert_eq!(Sim::received(&sim.client_events, bulk).len(), stalled_at);
    // The jobs come back: the bulk goes on, byte-exact.
    sim.job_delay = Some(Duration::ZERO);
    for _ in 0..60_000 {
        push_bulk(&mut sim, bulk, &data, &mut off);
        sim.step(Duration::from_millis(1));
        Sim::consume_new(&sim.client_events, &mut seen, &mut sim.client);
        if Sim::received(&sim.client_events, bulk).len() == data.len() {
            break;
        }
    }
    assert!(Sim::received(&sim.client_events, bulk) == data);
}

/// No codec reset falls while a unit is out (its context would come back
/// with the old state): the idle reset and the parked drop wait for it.
#[test]
fn no_codec_reset_while_a_bulk_job_is_out() {
    let mut c = SessionConfig::new(Role::Client);
    let mut s = SessionConfig::new(Role::Server);
    c.codec_idle_reset = Duration::from_millis(50);
    s.codec_idle_reset = Duration::from_millis(50);
    let mut sim = Sim::with_configs(300.0, Duration::from_millis(100), c, s);
    sim.server.set_bulk_offload(true);
    sim.job_delay = None;
    let id = sim
        .client
        .open_stream(b"bulk", b"", Priority::Bulk)
        .unwrap();
    sim.run_for(Duration::from_millis(500));
    sim.server.set_priority(id, Priority::Bulk);
    let data = mail_text(3_000);
    sim.server.send(id, &data).unwrap();
    sim.server.finish(id);
    sim.run_for(Duration::from_millis(300));
    assert!(sim.server.bulk_job_pending());
    assert!(!sim.server.drop_encoder_state(), "parked drop must wait");
    let resets = sim.server.stats().codec_resets;
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.server.stats().codec_resets, resets, "idle reset waited");
    sim.job_delay = Some(Duration::ZERO);
    sim.run_for(Duration::from_secs(30));
    assert!(Sim::received(&sim.client_events, id) == data);
    assert!(sim.server.stats().codec_resets > resets, "then it came");
}

/// Mail-like bulk on Iridium: replies of a few KB, each flushed at its end,
/// read from the program as fast as the session takes them (a POP3 server
/// side with prefetched RETRs). Slices are about a segment (1.8 s of link),
/// longer than the round trip: with the ack window alone, the next slice
/// waited for an ack that comes a round trip after the link had idled.
#[test]
fn mail_bulk_keeps_the_link_busy_with_slices_longer_than_the_round_trip() {
    let mut sim = Sim::new(300.0, Duration::from_millis(500));
    let id = sim
        .client
        .open_stream(b"bulk", b"", Priority::Bulk)
        .unwrap();
    let data = mail_text(200_000);
    let mut offset = 0;
    let mut next_flush = 3_000;
    let from = sim.now + Duration::from_secs(10);
    for _ in 0..70_000 {
        let cap = sim
            .client
            .send_capacity(id)
            .min(data.len() - offset)
            .min(next_flush - offset);
        if cap > 0 {
            sim.client.send(id, &data[offset..offset + cap]).unwrap();
            offset += cap;
            if offset == next_flush {
                sim.client.flush(id);
                next_flush += 3_000;
            }
        }
        sim.step(Duration::from_millis(1));
    }
    let u = sim.up_utilisation(from, sim.now);
    eprintln!(
        "busy {:.1}%, {} B sent, window {} pipe {}",
        u * 100.0,
        offset,
        sim.client.inflight_limit(),
        sim.client.pipe_limit()
    );
    assert!(u > 0.95, "link busy only {:.1}% of the time", u * 100.0);
}

/// A program that leaves mid-reply often starts its next session at once
/// (the bench's POP3 QUIT, then IMAP LOGIN). What is left of a unit whose
/// stream the peer reset is read by no one: it waits a round trip behind
/// the new session's records, then still crosses, so the codec's history
/// stays in step and later bulk decodes.
#[test]
fn a_unit_left_by_a_reset_stream_waits_behind_the_next_reply() {
    let mut sim = Sim::new(300.0, Duration::from_millis(500));
    let bulk = sim
        .client
        .open_stream(b"bulk", b"", Priority::Bulk)
        .unwrap();
    // Four bits a byte: units of several slices each.
    let text: Vec<u8> = noise(20_000, 3).iter().map(|b| b'a' + (b & 15)).collect();
    sim.client.send(bulk, &text).unwrap();
    sim.client.flush(bulk);
    sim.run_for(Duration::from_secs(3));
    // Right after a slice left, with more of its unit still here.
    let slices = sim.client_bulk_records.len();
    while sim.client_bulk_records.len() == slices || !sim.client.bulk_unit_unsent() {
        sim.step(Duration::from_millis(1));
    }
    // The peer gives the stream up; the reset arrives ~0.5 s before that
    // slice has left (1.9 s of link) and the next would go.
    sim.run_for(Duration::from_millis(900));
    sim.server.reset(bulk, 1);
    while !sim
        .client_events
        .iter()
        .any(|(_, e)| matches!(e, Event::Reset { .. }))
    {
        sim.step(Duration::from_millis(1));
    }
    assert!(sim.client.bulk_unit_dead());
    let reset_at = sim.now;
    // The program's next session asks just after the link freed.
    sim.run_for(Duration::from_millis(750));
    let asked = sim.now;
    let chat = sim
        .client
        .open_stream(b"chat", b"", Priority::Interactive)
        .unwrap();
    sim.client.send(chat, b"a1 LOGIN x y\r\n").unwrap();
    sim.client.flush(chat);
    sim.run_for(Duration::from_secs(30));
    // No slice nobody reads went out while the link was free, and the reply
    // went first: it crossed in about a one-way trip (with the slice ahead
    // of it, 2.3 s).
    let dead_slices: Vec<_> = sim
        .client_records
        .iter()
        .filter(|(t, bulk)| *bulk && *t >= reset_at && *t < asked)
        .collect();
    assert!(dead_slices.is_empty(), "{dead_slices:?}");
    let first = sim
        .client_records
        .iter()
        .find(|(t, _)| *t >= asked)
        .expect("a record after the ask");
    assert!(
        !first.1,
        "a dead slice went first: {:?}",
        sim.client_records
    );
    let (arrived, _) = sim
        .server_events
        .iter()
        .find(|(_, e)| matches!(e, Event::Data { stream, .. } if *stream == chat))
        .expect("the reply arrived");
    assert!(
        *arrived - asked < Duration::from_secs(1),
        "the reply took {:?}",
        *arrived - asked
    );
    assert_eq!(Sim::received(&sim.server_events, chat), b"a1 LOGIN x y\r\n");
    // The dead unit did cross: nothing is left, and a new bulk stream's
    // data decodes on the other side.
    assert!(!sim.client.bulk_unit_unsent());
    let next = sim
        .client
        .open_stream(b"bulk", b"", Priority::Bulk)
        .unwrap();
    let data = mail_text(6_000);
    sim.client.send(next, &data).unwrap();
    sim.client.flush(next);
    sim.run_for(Duration::from_secs(60));
    assert_eq!(Sim::received(&sim.server_events, next), data);
}
