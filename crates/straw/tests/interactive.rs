//! With paused tokio time: the whole tunnel (Noise, codec, session, pumps)
//! over the in-process link emulator at 2,400 bit/s and 500 ms one way.

use std::sync::Arc;
use std::time::Duration;

use straw::client::session_config;
use straw::config::SessionOptions;
use straw::link::keys::{self, AuthorizedKeys};
use straw::link::noise;
use straw::tunnel::{DialFuture, Dialer, LocalIo, OpenRequest, Tunnel, TunnelStats};
use straw_core::session::{Role, Session};
use straw_proto::Accelerator;
use straw_proto::passthrough::Passthrough;
use straw_tools::linksim::{Link, LinkParams, relay};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Upstream "servers": `bulk` streams 200 KB of noise, `chat` answers a line.
struct TestDialer;

impl Dialer for TestDialer {
    fn dial(&self, service: &str, _first: Option<bytes::Bytes>) -> DialFuture {
        let service = service.to_owned();
        Box::pin(async move {
            let (ours, mut theirs) = duplex(4096);
            tokio::spawn(async move {
                if service == "bulk" {
                    let mut x: u64 = 0x9e3779b97f4a7c15;
                    let data: Vec<u8> = (0..200_000)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            (x >> 32) as u8
                        })
                        .collect();
                    let _ = theirs.write_all(&data).await;
                } else {
                    let mut buf = [0u8; 64];
                    let mut got = Vec::new();
                    while !got.ends_with(b"\r\n") {
                        let n = theirs.read(&mut buf).await.unwrap();
                        assert!(n > 0);
                        got.extend_from_slice(&buf[..n]);
                    }
                    theirs.write_all(b"a1 OK NOOP done\r\n").await.unwrap();
                    let _ = theirs.read(&mut buf).await;
                }
            });
            Ok((
                Box::new(ours) as Box<dyn LocalIo>,
                Box::new(Passthrough::default()) as Box<dyn Accelerator>,
            ))
        })
    }
}

/// Opens a stream to `service` on the client tunnel; returns the program's end.
async fn open_passthrough(open_tx: &mpsc::Sender<OpenRequest>, service: &str) -> DuplexStream {
    let (local, app) = duplex(4096);
    open_tx
        .send(OpenRequest {
            service: service.into(),
            io: Box::new(local),
            accel: Box::new(Passthrough::default()),
            cache: None,
            warm_up: false,
        })
        .await
        .unwrap();
    app
}

#[tokio::test(start_paused = true)]
async fn interactive_reply_is_not_starved_by_bulk() {
    let rtt = Duration::from_secs(1);
    let link = Link::new(LinkParams::new(2400, rtt / 2));
    let (client_io, sim_a) = duplex(64 * 1024);
    let (sim_b, mut server_io) = duplex(64 * 1024);
    let l = link.clone();
    tokio::spawn(async move {
        let _ = relay(sim_a, sim_b, &l).await;
    });

    let server_keys = keys::generate();
    let client_keys = keys::generate();
    let mut authorized = AuthorizedKeys::default();
    authorized.insert(client_keys.public);
    let opts = SessionOptions::default();

    let sk = server_keys.clone();
    let sopts = opts.clone();
    tokio::spawn(async move {
        let (transport, _, _) =
            noise::server_handshake(&mut server_io, &sk, &authorized, |_, _| Ok(Vec::new()))
                .await
                .unwrap();
        let session = Session::new(
            session_config(Role::Server, &sopts),
            Instant::now().into_std(),
        );
        let tunnel = Tunnel::new(
            transport,
            session,
            Some(Arc::new(TestDialer)),
            Arc::new(TunnelStats::default()),
            "server".into(),
        );
        let (_tx, mut rx) = mpsc::channel(1);
        let _ = tunnel.run(server_io, &mut rx).await;
    });

    let mut client_io = client_io;
    let (transport, _) =
        noise::client_handshake(&mut client_io, &client_keys, &server_keys.public, &[])
            .await
            .unwrap();
    let session = Session::new(
        session_config(Role::Client, &opts),
        Instant::now().into_std(),
    );
    let stats = Arc::new(TunnelStats::default());
    let tunnel = Tunnel::new(transport, session, None, stats.clone(), "client".into());
    let (open_tx, mut open_rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _ = tunnel.run(client_io, &mut open_rx).await;
    });

    // Start the bulk download and let it run for a while.
    let mut bulk_app = open_passthrough(&open_tx, "bulk").await;
    let bulk_reader = tokio::spawn(async move {
        let mut total = 0usize;
        let mut buf = vec![0u8; 8192];
        loop {
            match bulk_app.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(20)).await;

    // Short commands on new streams, at different phases of the bulk
    // records (a reply's wait depends on where the record on the link is).
    let mut waits = Vec::new();
    for k in 0..5u64 {
        tokio::time::sleep(Duration::from_millis(1300 + 370 * k)).await;
        let asked = Instant::now();
        let mut chat_app = open_passthrough(&open_tx, "chat").await;
        chat_app.write_all(b"a1 NOOP\r\n").await.unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 64];
        while !reply.ends_with(b"\r\n") {
            let n = chat_app.read(&mut buf).await.unwrap();
            assert!(n > 0, "chat stream closed");
            reply.extend_from_slice(&buf[..n]);
        }
        waits.push(asked.elapsed());
        assert_eq!(reply, b"a1 OK NOOP done\r\n");
    }

    // A record is about `record_secs` of link time (headers included; the
    // rate estimate runs up to ~15% high). To keep the link busy one record
    // waits behind the one on the link, so a reply may find up to two ahead
    // of it: 2 RTT + 2 records + its own. (With a window that queued nothing
    // the reply took 2.8 s, but the link idled 44% of the time.)
    let record = Duration::from_secs_f64(opts.record_secs * 1.15);
    let allowed = rtt * 2 + record * 3;
    let bulk_bytes = stats
        .raw_bytes_received
        .load(std::sync::atomic::Ordering::Relaxed);
    let worst = *waits.iter().max().unwrap();
    let mean = waits.iter().sum::<Duration>() / waits.len() as u32;
    eprintln!(
        "interactive replies under bulk: {waits:?}, mean {mean:?}, worst {worst:?} \
         (allowed {allowed:?}); bulk received so far {bulk_bytes} B"
    );
    eprintln!("link: {}", link.stats().snapshot());
    // The link stayed busy with bulk: at least 75% of 2,400 bit/s.
    let secs = 20.0 + waits.iter().map(|w| w.as_secs_f64()).sum::<f64>() + 9.5;
    assert!(
        bulk_bytes as f64 > 0.75 * 300.0 * secs * 0.8,
        "bulk transfer was starved ({bulk_bytes} B in {secs:.0} s)"
    );
    assert!(worst <= allowed, "reply took {worst:?} > {allowed:?}");
    drop(bulk_reader);
}
