//! A cached IMAP greeting that no longer matches the real server is detected,
//! the connection is closed loudly, and the next connection is right.
//! The upstream here is a scripted stand-in whose capabilities change between
//! connections (a real Dovecot can't be reconfigured mid-test).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OLD: &str = "* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN] ready\r\n";
const NEW: &str = "* OK [CAPABILITY IMAP4rev1 IDLE MOVE AUTH=PLAIN] ready\r\n";

/// Greets with OLD until `upgraded` is set, then with NEW; answers NOOP.
async fn changing_server(upgraded: Arc<AtomicBool>) -> std::net::SocketAddr {
    line_server(move || {
        let greeting = if upgraded.load(Ordering::SeqCst) {
            NEW
        } else {
            OLD
        };
        let answer = |line: &str| {
            let tag = line.split(' ').next().unwrap_or("*");
            (format!("{tag} OK done\r\n").into_bytes(), false)
        };
        (greeting.as_bytes().to_vec(), answer)
    })
    .await
}

/// Connects, reads the greeting, sends a NOOP; returns what the program saw.
async fn session(local: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(local).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the greeting");
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"a1 NOOP\r\n").await.unwrap();
    // Until the reply, or until straw closes the connection.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"a1 OK done\r\n") {
                        return;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(start_paused = true)]
async fn changed_greeting_is_detected_reported_and_healed() {
    let upgraded = Arc::new(AtomicBool::new(false));
    let upstream = changing_server(upgraded.clone()).await;
    let r = start_proto("heal", upstream, "imap").await;
    // Cold: the real OLD greeting is shown and cached.
    let first = session(r.local).await;
    assert!(first.ends_with("a1 OK done\r\n"), "{first}");
    // The server gains a capability. Served OLD from the cache, the real
    // greeting is NEW: straw must close rather than go on.
    upgraded.store(true, Ordering::SeqCst);
    let second = session(r.local).await;
    assert!(
        second.starts_with("* OK [CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN"),
        "{second}"
    );
    assert!(!second.contains("a1 OK done"), "a lie went on: {second}");
    // Healed: the next connection is served the new greeting and works.
    let third = session(r.local).await;
    assert!(third.contains("MOVE"), "{third}");
    assert!(third.ends_with("a1 OK done\r\n"), "{third}");
}
