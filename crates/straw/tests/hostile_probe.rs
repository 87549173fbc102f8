//! Active probing: a stranger who sends bad first messages of every kind
//! must see one behaviour (no reset, the connection closed at the handshake
//! deadline), so straw can't be told apart by how it fails.

mod common;

use std::time::{Duration, Instant};

use common::*;
use straw::link::{keys, noise};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The handshake deadline the server gets in this test.
const DEADLINE: Duration = Duration::from_secs(2);

/// A well-formed Noise first message for the server's key from `me`.
async fn first_message(me: &keys::Keypair, server: &[u8; 32]) -> Vec<u8> {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let me = me.clone();
    let server = *server;
    // It waits for a reply that never comes: only its first message counts.
    let client =
        tokio::spawn(async move { noise::client_handshake(&mut a, &me, &server, b"hi").await });
    let mut prefix = [0u8; 2];
    b.read_exact(&mut prefix).await.unwrap();
    let mut msg = vec![0u8; u16::from_be_bytes(prefix) as usize];
    b.read_exact(&mut msg).await.unwrap();
    client.abort();
    [&prefix[..], &msg].concat()
}

/// How the server ended a probe: reset or not, and when (from connect).
#[derive(Debug)]
struct Ending {
    reset: bool,
    after: Duration,
}

/// Connects, sends `probe` and more junk while the server waits (so it holds
/// unread data), then waits for the server to end the connection.
async fn probe(server: std::net::SocketAddr, probe: Vec<u8>) -> Ending {
    let mut s = TcpStream::connect(server).await.unwrap();
    let started = Instant::now();
    s.write_all(&probe).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let junk = tokio::spawn(async move {
        // Stops well before the deadline: data that arrives after the
        // server's close is answered with a reset by any TCP stack.
        for i in 0..3u8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(&[i; 700]).await.is_err() {
                break;
            }
        }
        wr
    });
    let mut buf = [0u8; 1024];
    let reset = match tokio::time::timeout(DEADLINE * 3, rd.read(&mut buf)).await {
        Ok(Ok(0)) => false,
        Ok(Ok(n)) => panic!("server answered a probe with {n} bytes"),
        Ok(Err(e)) => {
            println!("read: {e}");
            true
        }
        Err(_) => panic!(
            "server kept a failed handshake open past {:?}",
            DEADLINE * 3
        ),
    };
    let after = started.elapsed();
    drop(junk.await);
    Ending { reset, after }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_first_message_ends_the_same_way() {
    init_tracing();
    let keys = make_keys("probe");
    let server_addr = free_port();
    let mut scfg = server_config(&keys, server_addr, free_port());
    scfg.session.handshake_timeout_secs = DEADLINE.as_secs();
    scfg.limits.first_message_timeout_ms = 1000;
    let server_key = keys::decode_key(
        std::fs::read_to_string(keys.dir.join("server.key.pub"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    tokio::spawn(async move {
        if let Err(e) = straw::server::run(scfg).await {
            panic!("server failed: {e:#}");
        }
    });
    wait_for_port(server_addr).await;

    let stranger = keys::generate();
    let mut garbage_msg = 150u16.to_be_bytes().to_vec();
    garbage_msg.extend((0..150).map(|i| (i * 37 + 11) as u8));
    let probes: Vec<(&str, Vec<u8>)> = vec![
        // Length prefix "GE" = 18245: out of range.
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: straw.example\r\n\r\n".to_vec(),
        ),
        // Length 0: below range.
        ("zero length", vec![0, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
        // In range, but not a Noise message for this server.
        ("bad noise message", garbage_msg),
        // In range, announced long, sent short: the handshake runs out.
        (
            "short message",
            [&200u16.to_be_bytes()[..], &[9; 40]].concat(),
        ),
        // A real first message from a key that is not authorised.
        ("unknown key", first_message(&stranger, &server_key).await),
    ];
    // All at once: each waits for the deadline.
    let runs: Vec<_> = probes
        .into_iter()
        .map(|(what, bytes)| tokio::spawn(async move { (what, probe(server_addr, bytes).await) }))
        .collect();
    let mut endings = Vec::new();
    for r in runs {
        endings.push(r.await.unwrap());
    }
    for (what, e) in &endings {
        println!("{what}: {e:?}");
    }
    for (what, e) in &endings {
        assert!(!e.reset, "{what}: reset: {e:?}");
        assert!(
            e.after >= DEADLINE - Duration::from_millis(100),
            "{what}: closed before the deadline: {e:?}"
        );
        assert!(
            e.after <= DEADLINE + Duration::from_millis(700),
            "{what}: closed long after the deadline: {e:?}"
        );
    }
}
