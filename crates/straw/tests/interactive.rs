//! With paused tokio time: the whole tunnel (Noise, codec, session, pumps)
//! over the in-process link emulator at 2,400 bit/s and 500 ms one way.

use std::sync::Arc;
use std::time::Duration;

use straw::client::session_config;
use straw::config::SessionOptions;
use straw::link::keys::{self, AuthorizedKeys};
use straw::link::noise;
use straw::linksim::{Link, LinkParams, relay};
use straw::tunnel::{DialFuture, Dialer, LocalIo, OpenRequest, Tunnel, TunnelStats};
use straw_core::session::{Role, Session};
use straw_proto::Accelerator;
use straw_proto::passthrough::Passthrough;
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
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
    let (bulk_local, mut bulk_app) = duplex(4096);
    open_tx
        .send(OpenRequest {
            service: "bulk".into(),
            io: Box::new(bulk_local),
            accel: Box::new(Passthrough::default()),
            cache: None,
        })
        .await
        .unwrap();
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

    // Now a short command on a second stream.
    let (chat_local, mut chat_app) = duplex(4096);
    let asked = Instant::now();
    open_tx
        .send(OpenRequest {
            service: "chat".into(),
            io: Box::new(chat_local),
            accel: Box::new(Passthrough::default()),
            cache: None,
        })
        .await
        .unwrap();
    chat_app.write_all(b"a1 NOOP\r\n").await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = chat_app.read(&mut buf).await.unwrap();
        assert!(n > 0, "chat stream closed");
        reply.extend_from_slice(&buf[..n]);
    }
    let took = asked.elapsed();
    assert_eq!(reply, b"a1 OK NOOP done\r\n");

    // One record is at most about 0.5 s of link time. The stream's OPEN
    // travels with the command, so this is 2 RTT + one record, plus the
    // bulk already in flight ahead of the reply (the in-flight window).
    let record = Duration::from_millis(500);
    let allowed = rtt * 2 + record + Duration::from_millis(1500);
    let bulk_bytes = stats
        .raw_bytes_received
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "interactive reply under bulk took {took:?} (allowed {allowed:?}); bulk received so far {bulk_bytes} B"
    );
    eprintln!("link: {}", link.stats().snapshot());
    assert!(
        bulk_bytes > 1_500,
        "bulk transfer was not running ({bulk_bytes} B)"
    );
    assert!(took <= allowed, "reply took {took:?} > {allowed:?}");
    drop(bulk_reader);
}
