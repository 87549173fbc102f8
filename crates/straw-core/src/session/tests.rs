//! Session tests over a deterministic in-memory link: two sessions, each
//! direction serialised at a rate with a one-way delay, time stepped by hand.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// One direction of an emulated link. Records queue behind each other, each
/// occupying the link for (len + per-packet overhead) / rate.
struct Pipe {
    rate: f64,
    delay: Duration,
    overhead: usize,
    free_at: Instant,
    in_flight: VecDeque<(Instant, Bytes)>,
}

impl Pipe {
    fn new(now: Instant, rate: f64, delay: Duration) -> Self {
        Self {
            rate,
            delay,
            // Noise length + tag per record, plus a share of the TCP/IP header:
            // records sent back to back share segments.
            overhead: 18 + 12,
            free_at: now,
            in_flight: VecDeque::new(),
        }
    }

    /// The sender may hand over a record only when the link is idle, as with a
    /// small TCP_NOTSENT_LOWAT.
    fn idle(&self, now: Instant) -> bool {
        self.free_at <= now
    }

    fn push(&mut self, now: Instant, rec: Bytes) {
        let start = self.free_at.max(now);
        let busy = Duration::from_secs_f64((rec.len() + self.overhead) as f64 / self.rate);
        self.free_at = start + busy;
        self.in_flight.push_back((self.free_at + self.delay, rec));
    }

    fn pop(&mut self, now: Instant) -> Option<Bytes> {
        if self.in_flight.front().is_some_and(|(t, _)| *t <= now) {
            return self.in_flight.pop_front().map(|(_, r)| r);
        }
        None
    }
}

struct Sim {
    now: Instant,
    client: Session,
    server: Session,
    up: Pipe,
    down: Pipe,
    /// Events seen by each side, in order.
    client_events: Vec<(Instant, Event)>,
    server_events: Vec<(Instant, Event)>,
    /// Worst excess of unacked bytes over the in-flight limit at that moment.
    max_client_overshoot: i64,
    max_client_unacked: u64,
    client_max_record: usize,
}

impl Sim {
    fn new(rate: f64, delay: Duration) -> Self {
        Self::with_initial_rate(rate, delay, rate)
    }

    /// As `new`, with sessions that assume `initial` until they measure.
    fn with_initial_rate(rate: f64, delay: Duration, initial: f64) -> Self {
        let now = Instant::now();
        let mut c = SessionConfig::new(Role::Client);
        let mut s = SessionConfig::new(Role::Server);
        c.initial_rate = initial;
        s.initial_rate = initial;
        Self {
            now,
            client: Session::new(c, now),
            server: Session::new(s, now),
            up: Pipe::new(now, rate, delay),
            down: Pipe::new(now, rate, delay),
            client_events: Vec::new(),
            server_events: Vec::new(),
            max_client_overshoot: i64::MIN,
            max_client_unacked: 0,
            client_max_record: 0,
        }
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
        while self.up.idle(now) {
            match self.client.poll_transmit(now) {
                Some(r) => {
                    self.client_max_record = self.client_max_record.max(r.len());
                    self.up.push(now, r)
                }
                None => break,
            }
        }
        while self.down.idle(now) {
            match self.server.poll_transmit(now) {
                Some(r) => self.down.push(now, r),
                None => break,
            }
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

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(Duration::from_millis(1));
        }
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

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    sim.client.send(id, &noise(20_000, 5)).unwrap();
    sim.client.flush(id);
    sim.run_for(Duration::from_secs(30));
    // At most one record beyond the limit: the one that was sent while under it.
    let record = sim.client_max_record as i64;
    assert!(record <= 2 * sim.client.record_target() as i64);
    assert!(
        sim.max_client_overshoot <= record,
        "unacked exceeded the limit by {} (record {record})",
        sim.max_client_overshoot
    );
    // The window is large enough to keep the link busy: ~30 s at 300 B/s.
    let got = Sim::received(&sim.server_events, id).len();
    assert!(got > 5_000, "only {got} bytes in 30 s");
}

#[test]
fn held_bytes_respect_bound_when_driver_obeys_capacity() {
    let mut sim = Sim::new(300.0, Duration::from_millis(500));
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
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    sim.client.send(id, b"hello").unwrap();
    sim.client.flush(id);
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
    let id = sim
        .client
        .open_stream(b"test", b"", Priority::Bulk)
        .unwrap();
    sim.client.send(id, &noise(3_000, 2)).unwrap();
    sim.client.flush(id);
    sim.run_for(Duration::from_secs(15));
    let rtt = sim.client.estimate().min_rtt().unwrap();
    assert!(
        rtt >= Duration::from_secs(1) && rtt < Duration::from_millis(1600),
        "{rtt:?}"
    );
    let rate = sim.client.estimate().rate();
    assert!(rate > 150.0 && rate < 450.0, "rate {rate}");
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
        self.up.in_flight.clear();
        self.down.in_flight.clear();
        self.now += gap;
        self.up.free_at = self.now;
        self.down.free_at = self.now;
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
    let mut sim = Sim::new(200_000.0, Duration::from_millis(20));
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
        for (events, seen, session) in [
            (&sim.server_events, &mut s_seen, &mut sim.server),
            (&sim.client_events, &mut c_seen, &mut sim.client),
        ] {
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
    let (got_up, got_down, sim) = transfer_with_cuts(&up, &down, &[300, 800, 1500]);
    assert_eq!(got_up.len(), up.len());
    assert!(got_up == up, "upstream bytes differ");
    assert!(got_down == down, "downstream bytes differ");
    let st = sim.client.stats();
    assert!(st.records_resent > 0, "the cuts lost nothing?");
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
    // The receiving side, sending only ACKs and credit, never switched.
    assert!(!sim.server.is_fast());
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
        p.rate = 2_000.0;
        p.delay = Duration::from_millis(300);
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
