//! End-to-end tunnel tests on loopback: real sockets, real Noise, real codec.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_random_payload_is_byte_exact() {
    let echo = echo_server().await;
    let r = start("mib", echo, None, "").await;
    let data = random_bytes(1 << 20, 42);
    let back = tokio::time::timeout(Duration::from_secs(60), roundtrip(r.local, data.clone()))
        .await
        .expect("1 MiB echo took over 60 s");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "payload corrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_streams_are_byte_exact() {
    let echo = echo_server().await;
    let r = start("fifty", echo, None, "").await;
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let local = r.local;
        tasks.push(tokio::spawn(async move {
            let data = random_bytes(20_000 + (i as usize) * 997, i + 1);
            let back = roundtrip(local, data.clone()).await;
            assert!(back == data, "stream {i} corrupted");
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("50 streams took over 60 s");
    assert!(r.client_stats.streams_opened.load(Ordering::Relaxed) >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_unknown_keys_are_rejected_and_server_stays_up() {
    let echo = echo_server().await;
    let r = start("garbage", echo, None, "").await;
    // Plain garbage, an HTTP request, and a truncated handshake.
    for junk in [
        random_bytes(5000, 9),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0, 200, 1, 2, 3],
    ] {
        let mut s = TcpStream::connect(r.server_addr).await.unwrap();
        let _ = s.write_all(&junk).await;
        let mut buf = [0u8; 64];
        // The server never replies; it closes at the handshake deadline
        // (30 s, see hostile_probe.rs), so a second of silence is enough here.
        let res = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
        if let Ok(Ok(n)) = res {
            assert_eq!(n, 0, "server answered garbage");
        }
    }
    // A client with a key the server doesn't know.
    let stranger = make_keys("stranger");
    std::fs::copy(
        r_keys_dir("garbage").join("server.key.pub"),
        stranger.dir.join("server.key.pub"),
    )
    .unwrap();
    let local = free_port();
    let ccfg = client_config(&stranger, r.server_addr, local, "");
    tokio::spawn(async move {
        let _ = straw::client::run(ccfg).await;
    });
    wait_for_port(local).await;
    let mut s = TcpStream::connect(local).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(
        !matches!(got, Ok(Ok(n)) if n > 0),
        "unauthorised client got data through"
    );
    // The legitimate client still works.
    let back = roundtrip(r.local, b"still here".to_vec()).await;
    assert_eq!(back, b"still here");
}

fn r_keys_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("straw-test-{name}-{}", std::process::id()))
}
