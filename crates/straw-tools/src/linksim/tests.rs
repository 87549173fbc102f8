use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;

const RATE: u64 = 2400;
const DELAY: Duration = Duration::from_millis(500);

fn iridium() -> LinkParams {
    LinkParams::new(RATE, DELAY)
}

/// client <-> relay <-> server over in-memory pipes with room to spare, so
/// only the link paces.
fn pair(link: &Arc<Link>) -> (DuplexStream, DuplexStream, JoinHandle<io::Result<()>>) {
    let (client, a) = duplex(1 << 20);
    let (b, server) = duplex(1 << 20);
    let link = link.clone();
    let h = tokio::spawn(async move { relay(a, b, &link).await });
    (client, server, h)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Expected time to push `len` bytes through an idle link and deliver them.
fn transfer_secs(p: &LinkParams, len: usize) -> f64 {
    let segs = len.div_ceil(p.mss);
    ((len + segs * p.overhead) * 8) as f64 / p.rate_bps as f64 + p.delay.as_secs_f64()
}

fn assert_close(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "took {actual:.4} s, expected {expected:.4} s ± {tolerance:.4}"
    );
}

/// Writes `data` then half-closes, while reading everything from the peer.
async fn exchange(mut s: DuplexStream, data: Vec<u8>) -> (Vec<u8>, f64) {
    let start = Instant::now();
    let (mut r, mut w) = tokio::io::split(&mut s);
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        (got, start.elapsed().as_secs_f64())
    };
    tokio::join!(send, recv).1
}

#[tokio::test(start_paused = true)]
async fn small_write_arrives_after_delay_plus_serialisation() {
    let link = Link::new(iridium());
    let (mut client, mut server, _h) = pair(&link);
    let start = Instant::now();
    client.write_all(b"0123456789").await.unwrap();
    let mut buf = [0u8; 10];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"0123456789");
    let expected = 0.5 + (10.0 + 40.0) * 8.0 / 2400.0;
    assert_close(start.elapsed().as_secs_f64(), expected, 0.003);
}

#[tokio::test(start_paused = true)]
async fn bulk_transfer_takes_rate_time_and_arrives_exactly() {
    let link = Link::new(iridium());
    let (client, server, h) = pair(&link);
    let data = pattern(24_000, 1);
    let up = tokio::spawn(exchange(client, data.clone()));
    let (got, _) = exchange(server, Vec::new()).await;
    up.await.unwrap();
    assert_eq!(got, data);
    h.await.unwrap().unwrap();
    let expected = (24_000.0 + 45.0 * 40.0) * 8.0 / 2400.0 + 0.5;
    assert_close(transfer_secs(link.params(), 24_000), expected, 1e-9);
    let s = link.stats().snapshot();
    assert_eq!((s.up.bytes, s.up.segments), (24_000, 45));
    assert_eq!((s.down.bytes, s.down.segments), (0, 0));
    assert_close(s.up.link_time.as_secs_f64(), expected - 0.5, 1e-6);
}

#[tokio::test(start_paused = true)]
async fn bulk_transfer_duration_within_two_percent() {
    let link = Link::new(iridium());
    let (mut client, mut server, _h) = pair(&link);
    let data = pattern(24_000, 2);
    let start = Instant::now();
    client.write_all(&data).await.unwrap();
    let mut got = vec![0u8; data.len()];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, data);
    let expected = transfer_secs(link.params(), 24_000);
    assert_close(start.elapsed().as_secs_f64(), expected, expected * 0.02);
}

#[tokio::test(start_paused = true)]
async fn directions_are_independent() {
    let link = Link::new(iridium());
    let (client, server, h) = pair(&link);
    let up_data = pattern(2400, 3);
    let down_data = pattern(2400, 4);
    let c = tokio::spawn(exchange(client, up_data.clone()));
    let (at_server, t_server) = exchange(server, down_data.clone()).await;
    let (at_client, t_client) = c.await.unwrap();
    assert_eq!(at_server, up_data);
    assert_eq!(at_client, down_data);
    h.await.unwrap().unwrap();
    // Each direction alone: not twice that, as a half-duplex link would be.
    let one = transfer_secs(link.params(), 2400);
    assert_close(t_server, one, one * 0.02);
    assert_close(t_client, one, one * 0.02);
}

#[tokio::test(start_paused = true)]
async fn connections_share_the_link_rate() {
    let link = Link::new(iridium());
    let (c1, s1, _h1) = pair(&link);
    let (c2, s2, _h2) = pair(&link);
    let d1 = pattern(2400, 5);
    let d2 = pattern(2400, 6);
    tokio::spawn(exchange(c1, d1.clone()));
    tokio::spawn(exchange(c2, d2.clone()));
    let r1 = tokio::spawn(exchange(s1, Vec::new()));
    let (got2, t2) = exchange(s2, Vec::new()).await;
    let (got1, t1) = r1.await.unwrap();
    assert_eq!((got1, got2), (d1, d2));
    // Together they need the time of 4,800 bytes, and they interleave, so
    // neither finishes anywhere near the 2,400-byte time.
    let p = link.params();
    let both = 2.0 * (transfer_secs(p, 2400) - 0.5) + 0.5;
    let last = t1.max(t2);
    let first = t1.min(t2);
    assert_close(last, both, both * 0.02);
    assert!(
        first > both * 0.85,
        "first finished at {first:.3} of {both:.3}"
    );
}

#[tokio::test(start_paused = true)]
async fn backlog_stays_with_the_sender() {
    let link = Link::new(iridium());
    let (mut client, a) = duplex(1000);
    let (b, mut server) = duplex(1 << 20);
    let l = link.clone();
    tokio::spawn(async move { relay(a, b, &l).await });
    let data = pattern(24_000, 12);
    let mut written = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(n) = tokio::time::timeout_at(deadline, client.write(&data[written..])).await {
        written += n.unwrap();
    }
    // 5 s of link is under 3 full segments; plus the 1,000-byte pipe, the
    // sender can't have got rid of much more: linksim isn't soaking it up.
    assert!(
        (2000..4000).contains(&written),
        "sender wrote {written} bytes"
    );
    let mut got = vec![0u8; 536];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(got, data[..536]);
}

#[tokio::test(start_paused = true)]
async fn half_close_propagates_and_relay_ends_cleanly() {
    let link = Link::new(iridium());
    let (mut client, mut server, h) = pair(&link);
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut req = Vec::new();
    server.read_to_end(&mut req).await.unwrap();
    assert_eq!(req, b"request");
    // The other direction still works after the half-close.
    server.write_all(b"response").await.unwrap();
    server.shutdown().await.unwrap();
    let mut resp = Vec::new();
    client.read_to_end(&mut resp).await.unwrap();
    assert_eq!(resp, b"response");
    h.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn stats_line_format() {
    let link = Link::new(iridium());
    let (mut client, mut server, _h) = pair(&link);
    client.write_all(&[1; 10]).await.unwrap();
    server.write_all(&[2; 20]).await.unwrap();
    let mut buf = [0u8; 20];
    server.read_exact(&mut buf[..10]).await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        link.stats().snapshot().to_string(),
        "linksim up bytes=10 segments=1 link_secs=0.167 down bytes=20 segments=1 link_secs=0.200"
    );
    assert_eq!(
        StatsSnapshot::default().to_string(),
        "linksim up bytes=0 segments=0 link_secs=0.000 down bytes=0 segments=0 link_secs=0.000"
    );
}

#[tokio::test(start_paused = true)]
async fn cut_after_bytes_closes_both_ends() {
    let mut p = iridium();
    p.faults.cut_after_bytes = Some(1000);
    p.faults.refuse_for = Some(Duration::from_secs(3));
    let link = Link::new(p);
    let (mut client, mut server, h) = pair(&link);
    // 600 each way: exactly 1,000 bytes in total get through, then the cut.
    client.write_all(&pattern(600, 7)).await.unwrap();
    server.write_all(&pattern(600, 8)).await.unwrap();
    let err = h.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    let mut at_server = Vec::new();
    let mut at_client = Vec::new();
    server.read_to_end(&mut at_server).await.unwrap();
    client.read_to_end(&mut at_client).await.unwrap();
    assert_eq!(at_server.len() + at_client.len(), 1000);
    assert_eq!(at_server, pattern(600, 7)[..at_server.len()]);
    assert_eq!(at_client, pattern(600, 8)[..at_client.len()]);
    // Both ends are closed for writing too.
    assert!(client.write_all(b"x").await.is_err());
    assert!(server.write_all(b"x").await.is_err());
    assert!(link.is_refusing());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!link.is_refusing());
}

#[tokio::test(start_paused = true)]
async fn cut_all_aborts_every_live_relay() {
    let link = Link::new(iridium());
    let (_c1, _s1, h1) = pair(&link);
    let (mut c2, mut s2, h2) = pair(&link);
    tokio::time::sleep(Duration::from_secs(1)).await;
    link.cut_all();
    for h in [h1, h2] {
        let err = h.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }
    assert_eq!(c2.read(&mut [0; 8]).await.unwrap(), 0);
    assert_eq!(s2.read(&mut [0; 8]).await.unwrap(), 0);
    // No refusal configured.
    assert!(!link.is_refusing());
    // A relay started after the cut is unaffected.
    let (mut c3, mut s3, _h3) = pair(&link);
    c3.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    s3.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
}

// ---- Real TCP on loopback (real time). ----

fn fast(delay_ms: u64) -> LinkParams {
    LinkParams::new(10_000_000, Duration::from_millis(delay_ms))
}

/// Starts linksim in front of a fresh upstream listener.
async fn tcp_setup(params: LinkParams, opts: ServeOptions) -> (SocketAddr, TcpListener, Arc<Link>) {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let front_addr = front.local_addr().unwrap();
    let link = Link::new(params);
    let to = upstream.local_addr().unwrap();
    tokio::spawn(serve_with(front, to, link.clone(), opts));
    (front_addr, upstream, link)
}

/// Sends `data`, half-closes, and returns everything received.
async fn tcp_exchange(mut s: TcpStream, data: Vec<u8>) -> io::Result<Vec<u8>> {
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await?;
        w.shutdown().await
    };
    let recv = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.map(|_| got)
    };
    let (sent, got) = tokio::join!(send, recv);
    sent?;
    got
}

#[tokio::test]
async fn tcp_relays_one_mib_each_way_exactly() {
    let (front, upstream, link) = tcp_setup(fast(1), ServeOptions::default()).await;
    let up_data = pattern(1 << 20, 9);
    let down_data = pattern(1 << 20, 10);
    let server = {
        let down_data = down_data.clone();
        tokio::spawn(async move {
            let (s, _) = upstream.accept().await.unwrap();
            tcp_exchange(s, down_data).await.unwrap()
        })
    };
    let client = TcpStream::connect(front).await.unwrap();
    let start = std::time::Instant::now();
    let at_client = tcp_exchange(client, up_data.clone()).await.unwrap();
    let at_server = server.await.unwrap();
    // Both directions done, so a stalled direction shows up here.
    let elapsed = start.elapsed().as_secs_f64();
    assert!(at_client == down_data, "down bytes differ");
    assert!(at_server == up_data, "up bytes differ");
    let s = link.stats().snapshot();
    assert_eq!((s.up.bytes, s.down.bytes), (1 << 20, 1 << 20));
    // Paced by the link: not faster, and no stalls (slack for a busy CI box).
    let expected = transfer_secs(link.params(), 1 << 20);
    assert!(
        elapsed > expected * 0.95 && elapsed < expected * 3.0,
        "took {elapsed:.3} s, link time {expected:.3} s"
    );
}

#[tokio::test]
async fn tcp_handshake_costs_round_trips() {
    let delay = 100;
    let (front, upstream, _link) = tcp_setup(fast(delay), ServeOptions::default()).await;
    let start = std::time::Instant::now();
    let mut client = TcpStream::connect(front).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let (mut s, _) = upstream.accept().await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    // SYN, SYN-ACK, then the data: 3 one-way delays.
    let t_up = start.elapsed().as_secs_f64();
    assert!(
        (0.295..0.45).contains(&t_up),
        "client data took {t_up:.3} s"
    );
    s.write_all(b"greet").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"greet");
    // A server's first byte can't leave before the final ACK (3 delays).
    let t_down = start.elapsed().as_secs_f64();
    assert!(
        (0.395..0.6).contains(&t_down),
        "server data took {t_down:.3} s"
    );
}

#[tokio::test]
async fn tcp_cut_every_resets_live_connections() {
    let mut p = fast(1);
    p.faults.cut_every = Some(Duration::from_millis(200));
    let opts = ServeOptions {
        emulate_handshake: false,
    };
    let (front, upstream, _link) = tcp_setup(p, opts).await;
    let start = std::time::Instant::now();
    let mut client = TcpStream::connect(front).await.unwrap();
    let (_s, _) = upstream.accept().await.unwrap();
    // Idle connection: the periodic cut still ends it.
    let r = client.read(&mut [0u8; 8]).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let t = start.elapsed().as_secs_f64();
    assert!((0.15..0.4).contains(&t), "cut after {t:.3} s");
}

#[tokio::test]
async fn tcp_cut_after_bytes_then_refuse() {
    let mut p = fast(1);
    p.faults.cut_after_bytes = Some(1000);
    p.faults.refuse_for = Some(Duration::from_millis(300));
    let opts = ServeOptions {
        emulate_handshake: false,
    };
    let (front, upstream, _link) = tcp_setup(p, opts).await;
    let server = tokio::spawn(async move {
        let (s, _) = upstream.accept().await.unwrap();
        let r = tcp_exchange(s, Vec::new()).await;
        (upstream, r)
    });
    let client = TcpStream::connect(front).await.unwrap();
    // The cut turns into a reset or an early EOF; either way not all 5,000.
    let r = tcp_exchange(client, pattern(5000, 11)).await;
    let (upstream, at_server) = server.await.unwrap();
    assert!(r.map_or(true, |got| got.is_empty()));
    assert!(at_server.map_or(true, |got| got.len() <= 1000));

    // Refused during the refusal period: accepted, then closed at once.
    let mut refused = TcpStream::connect(front).await.unwrap();
    let r = refused.read(&mut [0u8; 8]).await;
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");

    // Afterwards connections work again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let server = tokio::spawn(async move {
        let (s, _) = upstream.accept().await.unwrap();
        tcp_exchange(s, b"pong".to_vec()).await.unwrap()
    });
    let client = TcpStream::connect(front).await.unwrap();
    let got = tcp_exchange(client, b"ping".to_vec()).await.unwrap();
    assert_eq!(got, b"pong");
    assert_eq!(server.await.unwrap(), b"ping");
}

#[tokio::test(start_paused = true)]
async fn black_hole_swallows_without_closing() {
    let link = Link::new(iridium());
    let (mut client, mut server, h) = pair(&link);
    client.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    link.set_black_hole(true);
    client.write_all(b"lost").await.unwrap();
    server.write_all(b"lost too").await.unwrap();
    let mut one = [0u8; 1];
    // Nothing arrives either way, and neither side sees an end.
    assert!(
        tokio::time::timeout(Duration::from_secs(30), server.read(&mut one))
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(30), client.read(&mut one))
            .await
            .is_err()
    );
    assert!(!h.is_finished(), "the relay still runs");
    // The swallowed bytes still took link time.
    assert_eq!(link.stats().snapshot().up.bytes, 10);
}
