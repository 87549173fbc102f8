//! Link drops: the session resumes on a new connection without the local
//! program noticing, and a drop longer than the grace period closes the
//! local connections instead of leaving them hanging.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use straw::tunnel::TunnelStats;
use straw_tools::linksim::{Faults, Link, LinkParams, bind_listener, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Setup {
    local: SocketAddr,
    link: Arc<Link>,
    client_stats: Arc<TunnelStats>,
}

/// Server and client on loopback, the client dialling through a linksim.
async fn setup(name: &str, upstream: SocketAddr, params: LinkParams, grace_secs: u64) -> Setup {
    init_tracing();
    let keys = make_keys(name);
    let server_addr = free_port();
    let local = free_port();
    let link = Link::new(params);
    let linksim = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let linksim_addr = linksim.local_addr().unwrap();
    tokio::spawn(serve(linksim, server_addr, link.clone()));
    let rate = link.params().rate_bps;
    let mut scfg = server_config(&keys, server_addr, upstream);
    scfg.session.resume_grace_secs = grace_secs;
    scfg.session.initial_rate_bps = rate;
    let ccfg = client_config(
        &keys,
        linksim_addr,
        local,
        &format!(
            "[session]\ninitial_rate_bps = {rate}\nresume_grace_secs = {grace_secs}\n\
             reconnect_min_ms = 50\nreconnect_max_ms = 200\n"
        ),
    );
    let client_stats = spawn_pair(scfg, ccfg, server_addr, local).await;
    Setup {
        local,
        link,
        client_stats,
    }
}

/// Echoes 1 MiB through the tunnel; returns link bytes (both directions).
async fn echo_mib(name: &str, faults: Faults) -> (u64, u64) {
    let upstream = echo_server().await;
    let mut params = LinkParams::new(20_000_000, Duration::from_millis(5));
    params.faults = faults;
    let s = setup(name, upstream, params, 600).await;
    let data = random_bytes(1 << 20, 77);
    let t = Instant::now();
    // `roundtrip` panics on any I/O error the program sees.
    let back = tokio::time::timeout(Duration::from_secs(60), roundtrip(s.local, data.clone()))
        .await
        .expect("echo through resuming tunnel timed out");
    assert_eq!(back.len(), data.len(), "length differs");
    assert!(back == data, "echoed bytes differ");
    let snap = s.link.stats().snapshot();
    let resumes = s.client_stats.resumes.load(Ordering::Relaxed);
    eprintln!(
        "{name}: 1 MiB echoed in {:.2} s, {resumes} resumes, client re-sent {} B, {snap}",
        t.elapsed().as_secs_f64(),
        s.client_stats.wire_bytes_resent.load(Ordering::Relaxed),
    );
    (snap.up.bytes + snap.down.bytes, resumes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_survives_three_cuts_byte_exact() {
    let (clean, clean_resumes) = echo_mib("resume-clean", Faults::default()).await;
    assert_eq!(clean_resumes, 0);
    // About 2.1 MB cross the link in all: three cuts, then a clean finish.
    let faults = Faults {
        cut_after_bytes: Some(600_000),
        cut_every: None,
        refuse_for: Some(Duration::from_millis(300)),
    };
    let (cut, resumes) = echo_mib("resume-cut", faults).await;
    eprintln!(
        "link bytes: {clean} without cuts, {cut} with {resumes} cuts ({:.3}x)",
        cut as f64 / clean as f64
    );
    assert!(resumes >= 3, "only {resumes} resumes");
    // Only what was in flight at each cut travels twice. At 20 Mbit/s that
    // is up to a few 60 KiB records per side sitting in socket buffers: 3
    // cuts cost 1.03-1.12x here (30 runs). Issue 5's 1.1x is for a 300 KB
    // RETR at 64 kbit/s, in scripts/e2e-cuts (1.02-1.05x). This test met
    // 1.1x only while a re-send skipped after an ACK made some runs cheaper
    // by a whole record, and 61,440 bytes short.
    assert!(
        cut as f64 <= 1.2 * clean as f64,
        "{cut} link bytes with cuts vs {clean} without"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_longer_than_grace_closes_local_connections() {
    // An upstream that echoes and reports when its connection closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = l.local_addr().unwrap();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(Instant::now());
            });
        }
    });
    let mut params = LinkParams::new(1_000_000, Duration::from_millis(5));
    params.faults.refuse_for = Some(Duration::from_secs(4));
    let s = setup("resume-grace", upstream, params, 1).await;

    let mut prog = TcpStream::connect(s.local).await.unwrap();
    prog.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), prog.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello");

    let cut_at = Instant::now();
    s.link.cut_all();
    // The program sees its connection end (EOF or reset), not a hang.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), prog.read_to_end(&mut rest)).await;
    let program_closed = cut_at.elapsed();
    assert!(r.is_ok(), "local connection still open 10 s after the cut");
    assert!(rest.is_empty());
    // (The harness's port probe opened and closed a stream before the cut.)
    let upstream_closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let t = closed_rx.recv().await.unwrap();
            if t > cut_at {
                return t;
            }
        }
    })
    .await
    .expect("upstream connection still open 10 s after the cut");
    eprintln!(
        "grace 1 s: program's connection closed {:.2} s after the cut, upstream's {:.2} s",
        program_closed.as_secs_f64(),
        upstream_closed.duration_since(cut_at).as_secs_f64()
    );
    // Not before the grace period: a short drop must not close anything.
    assert!(program_closed >= Duration::from_millis(900));
    assert!(upstream_closed.duration_since(cut_at) >= Duration::from_millis(900));
}
