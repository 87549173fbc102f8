//! The tunnel without sockets: two [`Tunnel`]s hand each other records
//! directly, with time passed in.

use std::time::{Duration, Instant};

use straw_core::session::{Role, Session, SessionConfig};
use straw_proto::passthrough::Passthrough;
use straw_proto::{Accelerator, Output};

use crate::{Event, LivenessConfig, LocalOut, Tunnel};

fn pair(t0: Instant) -> (Tunnel, Tunnel) {
    let client = Tunnel::new(
        Session::new(SessionConfig::new(Role::Client), t0),
        false,
        "client".into(),
        t0,
    );
    let server = Tunnel::new(
        Session::new(SessionConfig::new(Role::Server), t0),
        true,
        "server".into(),
        t0,
    );
    (client, server)
}

/// Moves records both ways until neither side has any, time stepping on.
fn shuttle(a: &mut Tunnel, b: &mut Tunnel, now: &mut Instant) {
    for _ in 0..200 {
        let mut moved = false;
        while let Some(r) = a.poll_transmit(*now) {
            b.handle_record(*now, &r).unwrap();
            moved = true;
        }
        while let Some(r) = b.poll_transmit(*now) {
            a.handle_record(*now, &r).unwrap();
            moved = true;
        }
        if !moved
            && a.poll_timeout()
                .is_none_or(|t| t > *now + Duration::from_secs(30))
        {
            return;
        }
        *now += Duration::from_millis(100);
    }
}

fn events(t: &mut Tunnel) -> Vec<Event> {
    std::iter::from_fn(|| t.poll_event()).collect()
}

/// Opens a `service` connection on `c` through `accel`, sends `first`, and
/// has `s` dial it (a passthrough upstream). Returns the client's id and the
/// server's stream.
fn open_and_dial(
    c: &mut Tunnel,
    s: &mut Tunnel,
    now: &mut Instant,
    service: &str,
    accel: Box<dyn Accelerator>,
    first: &[u8],
) -> (u64, u64) {
    let id = c.open_local(service, accel, false).unwrap();
    c.handle_local(id, first, true);
    shuttle(c, s, now);
    let Some(Event::Dial { stream, .. }) = s.poll_event() else {
        panic!("no dial")
    };
    s.dialed(stream, Box::new(Passthrough::default()));
    (id, stream)
}

fn local_bytes(t: &mut Tunnel, stream: u64) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some((id, out)) = t.poll_local() {
        assert_eq!(id, stream);
        if let LocalOut::Data(b) = out {
            t.local_written(id, b.len());
            got.extend(b);
        }
    }
    got
}

#[test]
fn bytes_cross_and_the_server_dials_on_open() {
    let mut now = Instant::now();
    let (mut c, mut s) = pair(now);
    let id = c
        .open_local("echo", Box::new(Passthrough::default()), false)
        .unwrap();
    let (gid, grant) = c.poll_grant().expect("a grant for the new stream");
    assert_eq!(gid, id);
    assert!(grant > 0 && c.poll_grant().is_none(), "one grant at a time");
    c.handle_local(id, b"hello\r\n", true);
    shuttle(&mut c, &mut s, &mut now);
    let ev = events(&mut s);
    let Some(Event::Dial {
        stream, first_data, ..
    }) = ev.first()
    else {
        panic!("no dial: {ev:?}")
    };
    assert!(first_data.is_none());
    // Data that came while dialing goes through the accelerator once attached.
    assert!(s.poll_local().is_none());
    assert!(s.dialed(*stream, Box::new(Passthrough::default())));
    assert_eq!(local_bytes(&mut s, *stream), b"hello\r\n");
    assert!(c.poll_grant().is_some(), "the grant came back");
}

#[test]
fn http_dial_waits_for_the_first_request() {
    let mut now = Instant::now();
    let (mut c, mut s) = pair(now);
    s.set_first_data_services(["web".to_owned()]);
    let id = c
        .open_local("web", Box::new(Passthrough::default()), false)
        .unwrap();
    shuttle(&mut c, &mut s, &mut now);
    assert!(events(&mut s).is_empty(), "dialed before the request");
    c.handle_local(id, b"GET http://example.org/ HTTP/1.1\r\n\r\n", true);
    shuttle(&mut c, &mut s, &mut now);
    match events(&mut s).as_slice() {
        [Event::Dial { first_data, .. }] => {
            assert!(first_data.as_ref().unwrap().starts_with(b"GET http://"))
        }
        ev => panic!("{ev:?}"),
    }
}

/// Answers the program locally at once (a served prefetch) and passes the
/// peer's bytes through: the socket must get them in the order made.
struct Prefetcher;

impl Accelerator for Prefetcher {
    fn from_local(&mut self, data: &[u8], _drained: bool, out: &mut Output) {
        out.to_local.extend_from_slice(b"[served]");
        out.to_tunnel.extend_from_slice(data);
    }
    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        out.to_local.extend_from_slice(data);
    }
}

#[test]
fn local_bytes_keep_the_order_the_accelerator_made_them() {
    let mut now = Instant::now();
    let (mut c, mut s) = pair(now);
    let (id, stream) = open_and_dial(&mut c, &mut s, &mut now, "pop3", Box::new(Prefetcher), b"x");
    assert_eq!(local_bytes(&mut s, stream), b"x");
    s.handle_local(stream, b"reply-1 ", true);
    shuttle(&mut c, &mut s, &mut now);
    // The peer's bytes were queued; the program's next command makes the
    // accelerator serve something, and it comes after them, not before.
    c.handle_local(id, b"y", true);
    s.handle_local(stream, b"reply-2", true);
    shuttle(&mut c, &mut s, &mut now);
    assert_eq!(local_bytes(&mut c, id), b"[served]reply-1 [served]reply-2");
}

#[test]
fn a_program_that_does_not_read_stops_the_peer() {
    let mut now = Instant::now();
    let (mut c, mut s) = pair(now);
    let _ = open_and_dial(
        &mut c,
        &mut s,
        &mut now,
        "bulk",
        Box::new(Passthrough::default()),
        b"go",
    );
    // The server's upstream sends as fast as it is granted; the client's
    // program never takes what is queued for it.
    let chunk = vec![7u8; 4096];
    let mut sent = 0usize;
    for _ in 0..2000 {
        while let Some((sid, n)) = s.poll_grant() {
            s.handle_local(sid, &chunk[..n.min(chunk.len())], true);
            sent += n.min(chunk.len());
        }
        shuttle(&mut c, &mut s, &mut now);
        while c.poll_local().is_some() {} // handed, never reported written
    }
    let window = SessionConfig::new(Role::Client).stream_window as usize;
    assert!(sent <= window + 2 * chunk.len(), "{sent} > window {window}");
    assert!(sent >= window / 2, "only {sent} sent");
}

#[test]
fn a_silent_link_is_declared_dead_and_an_idle_one_hangs_up() {
    let t0 = Instant::now();
    let (mut c, _s) = pair(t0);
    c.set_liveness(LivenessConfig {
        idle_probe: Duration::ZERO,
        ..LivenessConfig::default()
    });
    c.set_idle_hangup(Some(Duration::from_secs(30)));
    c.start_link(t0);
    let id = c
        .open_local("echo", Box::new(Passthrough::default()), false)
        .unwrap();
    c.handle_local(id, b"anyone?\r\n", true);
    let mut now = t0;
    let mut dead = None;
    while dead.is_none() && now < t0 + Duration::from_secs(600) {
        while c.poll_transmit(now).is_some() {}
        c.handle_timeout(now);
        dead = std::iter::from_fn(|| c.poll_event()).find_map(|e| match e {
            Event::LinkDead(d) => Some(d),
            _ => None,
        });
        now = c
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .max(now);
        now += Duration::from_millis(1);
    }
    let dead = dead.expect("never declared dead");
    assert!(dead.silent >= dead.dead_after, "{dead}");
    assert!(
        dead.silent <= c.detection_bound() + Duration::from_secs(1),
        "{dead}"
    );

    // No streams, nothing unanswered: hang up after 30 s of that.
    let (mut idle, _) = pair(t0);
    idle.set_idle_hangup(Some(Duration::from_secs(30)));
    idle.start_link(t0);
    idle.handle_timeout(t0);
    assert!(
        idle.poll_timeout()
            .is_some_and(|t| t <= t0 + Duration::from_secs(30)),
        "the hang-up time is a wake-up"
    );
    idle.handle_timeout(t0 + Duration::from_secs(29));
    assert!(idle.poll_event().is_none());
    idle.handle_timeout(t0 + Duration::from_secs(30));
    assert!(matches!(idle.poll_event(), Some(Event::IdleHangup)));
}

#[test]
fn giving_up_tells_each_connection_after_what_was_queued() {
    struct Polite;
    impl Accelerator for Polite {
        fn from_local(&mut self, _: &[u8], _: bool, _: &mut Output) {}
        fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
            out.to_local.extend_from_slice(data);
        }
        fn start(&mut self, out: &mut Output) {
            out.to_local.extend_from_slice(b"+OK hello\r\n");
        }
        fn link_lost(&mut self, out: &mut Output) {
            out.to_local.extend_from_slice(b"-ERR link lost\r\n");
        }
    }
    let t0 = Instant::now();
    let (mut c, _) = pair(t0);
    let id = c.open_local("pop3", Box::new(Polite), false).unwrap();
    assert_eq!(c.give_up(), vec![id]);
    assert_eq!(
        c.poll_local(),
        Some((id, LocalOut::Data(b"+OK hello\r\n".to_vec())))
    );
    assert_eq!(
        c.poll_local(),
        Some((id, LocalOut::Data(b"-ERR link lost\r\n".to_vec())))
    );
    assert_eq!(c.poll_local(), Some((id, LocalOut::Close)));
    c.close_all();
    assert!(matches!(
        c.poll_event(),
        Some(Event::StreamClosed { stream, stats: Some(_) }) if stream == id
    ));
    assert_eq!(c.stream_count(), 0);
}

#[test]
fn a_resumed_session_resends_what_the_lost_link_swallowed() {
    let mut now = Instant::now();
    let (mut c, mut s) = pair(now);
    let (id, stream) = open_and_dial(
        &mut c,
        &mut s,
        &mut now,
        "echo",
        Box::new(Passthrough::default()),
        b"first\r\n",
    );
    assert_eq!(local_bytes(&mut s, stream), b"first\r\n");
    // The link drops with a record on it: the server never sees it.
    c.handle_local(id, b"second\r\n", true);
    now += Duration::from_secs(1);
    while c.poll_transmit(now).is_some() {}
    let (c_got, s_got) = (c.records_received(), s.records_received());
    c.resume(now, s_got).unwrap();
    s.resume(now, c_got).unwrap();
    shuttle(&mut c, &mut s, &mut now);
    assert_eq!(local_bytes(&mut s, stream), b"second\r\n");
}

/// Issue 12, item 2: a client sends on behind a command the real server
/// never answers. Credit comes back only for bytes the server side's
/// accelerator let go, so what it holds stays within the stream window
/// (before, credit came back on accept: all 4 MiB were held).
#[test]
fn accelerator_buffers_are_bounded_by_the_window() {
    // POP3 and SMTP: commands pipelined behind one in flight.
    bounded_behind(
        Box::new(straw_proto::pop3::ServerAccel::new()),
        b"+OK ready\r\n",
        b"NOOP\r\n",
        b"NOOP\r\n",
    );
    bounded_behind(
        Box::new(straw_proto::smtp::ServerAccel::new()),
        b"220 ready\r\n",
        b"NOOP\r\n",
        b"NOOP\r\n",
    );
    // IMAP: a literal waiting for the real server's `+`.
    bounded_behind(
        Box::new(straw_proto::imap::ServerAccel::default()),
        b"* OK ready\r\n",
        b"a APPEND INBOX {50000000}\r\n",
        b"xxxxxx",
    );
}

/// `first` goes to the real server (which greeted with `greeting`) and is
/// never answered; then the client sends `unit`s as fast as credit allows.
fn bounded_behind(accel: Box<dyn Accelerator>, greeting: &[u8], first: &[u8], unit: &[u8]) {
    let mut now = Instant::now();
    let (mut c, mut s) = pair(now);
    let id = c
        .open_local("svc", Box::new(Passthrough::default()), false)
        .unwrap();
    c.handle_local(id, first, true);
    shuttle(&mut c, &mut s, &mut now);
    let Some(Event::Dial { stream, .. }) = s.poll_event() else {
        panic!("no dial")
    };
    assert!(s.dialed(stream, accel));
    s.handle_local(stream, greeting, true);
    assert_eq!(local_bytes(&mut s, stream), first);
    let window = SessionConfig::new(Role::Server).stream_window as usize;
    let flood = 4 * 1024 * 1024;
    let mut sent = 0;
    for _ in 0..10_000 {
        let Some((gid, cap)) = c.poll_grant() else {
            shuttle(&mut c, &mut s, &mut now);
            let _ = local_bytes(&mut s, stream);
            if c.poll_grant().is_none() {
                break;
            }
            continue;
        };
        assert_eq!(gid, id);
        let n = cap.min(flood - sent) / unit.len() * unit.len();
        c.handle_local(id, &unit.repeat(n / unit.len()), false);
        sent += n;
        shuttle(&mut c, &mut s, &mut now);
        let _ = local_bytes(&mut s, stream);
        if sent >= flood {
            break;
        }
    }
    let held = s.buffered_bytes();
    assert!(
        held <= window,
        "server holds {held} bytes of a {sent}-byte flood (window {window})"
    );
    assert!(sent < flood, "the client could send all {sent} bytes");
}

/// Issue 12, item 6: under memory pressure the tunnel reads no local
/// socket and grants the peer nothing; lifted, both resume.
#[test]
fn memory_pressure_stops_reads_and_credit() {
    let mut now = Instant::now();
    let (mut c, mut s) = pair(now);
    let (id, stream) = open_and_dial(
        &mut c,
        &mut s,
        &mut now,
        "echo",
        Box::new(Passthrough::default()),
        b"hi",
    );
    assert_eq!(local_bytes(&mut s, stream), b"hi");
    s.set_memory_pressure(true);
    assert!(s.poll_grant().is_none(), "no upstream reads under pressure");
    // The client fills the window; the server writes it all out upstream,
    // but grants nothing back while the pressure lasts.
    let window = SessionConfig::new(Role::Server).stream_window as usize;
    let mut sent = 2;
    while let Some((_, cap)) = c.poll_grant() {
        c.handle_local(id, &vec![b'x'; cap], false);
        sent += cap;
        shuttle(&mut c, &mut s, &mut now);
        let _ = local_bytes(&mut s, stream);
    }
    assert_eq!(sent, window, "the client stops at one window");
    let held = s.buffered_bytes();
    assert!(held < 1024, "{held} bytes held: all was written upstream");
    s.set_memory_pressure(false);
    assert!(s.poll_grant().is_some(), "upstream reads again");
    shuttle(&mut c, &mut s, &mut now);
    assert!(c.poll_grant().is_some(), "credit came back once lifted");
}

/// An accelerator that says what it does.
struct Busy;

impl Accelerator for Busy {
    fn from_local(&mut self, _: &[u8], _: bool, _: &mut Output) {}
    fn from_tunnel(&mut self, _: &[u8], _: &mut Output) {}
    fn activity(&self) -> Option<straw_proto::Activity> {
        Some(straw_proto::Activity::new("busy", 1, Some(2)))
    }
}

#[test]
fn activities_list_program_connections_not_warm_ups() {
    let t0 = Instant::now();
    let (mut c, _s) = pair(t0);
    let a = c.open_local("pop", Box::new(Busy), false).unwrap();
    c.open_local("imap", Box::new(Busy), true).unwrap();
    let b = c
        .open_local("web", Box::new(Passthrough::default()), false)
        .unwrap();
    let got = c.activities();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].stream, got[0].service.as_str()), (a, "pop"));
    assert_eq!(got[0].activity.as_ref().map(|x| x.done), Some(1));
    assert_eq!((got[1].stream, got[1].activity.clone()), (b, None));
}

/// Passes bytes through, and says the program left mid-reply at its end of
/// input (as the POP3 client side does without QUIT).
struct Leaves;

impl Accelerator for Leaves {
    fn from_local(&mut self, data: &[u8], _drained: bool, out: &mut Output) {
        out.to_tunnel.extend_from_slice(data);
        out.flush = true;
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        out.to_local.extend_from_slice(data);
    }

    fn local_eof(&mut self, out: &mut Output) {
        out.abandoned = true;
    }
}

#[test]
fn a_program_leaving_mid_reply_resets_the_stream_and_the_peer_drops_it() {
    let mut now = Instant::now();
    let (mut c, mut s) = pair(now);
    let (id, stream) = open_and_dial(
        &mut c,
        &mut s,
        &mut now,
        "pop3",
        Box::new(Leaves),
        b"RETR 1\r\n",
    );
    assert_eq!(local_bytes(&mut s, stream), b"RETR 1\r\n");
    s.handle_local(stream, b"+OK 300000 octets\r\n", true);
    shuttle(&mut s, &mut c, &mut now);
    assert_eq!(local_bytes(&mut c, id), b"+OK 300000 octets\r\n");
    c.local_eof(id);
    // Reset at once, not a FIN that waits for a write to fail.
    assert!(
        events(&mut c)
            .iter()
            .any(|e| matches!(e, Event::StreamClosed { stream, .. } if *stream == id))
    );
    shuttle(&mut c, &mut s, &mut now);
    assert!(
        events(&mut s)
            .iter()
            .any(|e| matches!(e, Event::StreamClosed { stream: st, .. } if *st == stream))
    );
    assert_eq!(
        s.stream_count(),
        0,
        "the server side let go of the real server"
    );
}
