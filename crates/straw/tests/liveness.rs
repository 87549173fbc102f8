//! Dead-link detection with paused time over the in-process link emulator:
//! a link that silently stops forwarding is noticed within a few loaded
//! round trips, and a long bulk transfer at 2,400 bit/s and 1.5 s RTT never
//! trips it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::paused::{open_passthrough, tunnels_over};
use straw::client::liveness_config;
use straw::config::{SessionOptions, TcpOptions};
use straw::tunnel::{
    DialFuture, Dialer, LinkEnded, LivenessCheck, LivenessConfig, LocalIo, OpenRequest, Tunnel,
};
use straw_proto::Accelerator;
use straw_proto::passthrough::Passthrough;
use straw_tools::linksim::{Link, LinkParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Every stream is an echo.
struct Echo;

impl Dialer for Echo {
    fn dial(&self, _service: &str, _first: Option<bytes::Bytes>) -> DialFuture {
        Box::pin(async move {
            let (ours, theirs) = duplex(4096);
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(theirs);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
            Ok((
                Box::new(ours) as Box<dyn LocalIo>,
                Box::new(Passthrough::default()) as Box<dyn Accelerator>,
            ))
        })
    }
}

struct Pair {
    link: Arc<Link>,
    opens: mpsc::Sender<OpenRequest>,
    /// Never used, but open: the server's tunnel waits for streams.
    _server_opens: mpsc::Sender<OpenRequest>,
    /// When each side's run_link ended, and how.
    client_end: oneshot::Receiver<(Instant, String)>,
    server_end: oneshot::Receiver<(Instant, String)>,
}

fn describe(r: anyhow::Result<LinkEnded>) -> String {
    match r {
        Ok(LinkEnded::Lost(e)) => format!("lost: {e:#}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error: {e:#}"),
    }
}

/// Client and server tunnels over a 2,400 bit/s link with 750 ms one way.
async fn pair() -> Pair {
    let link = Link::new(LinkParams::new(2400, Duration::from_millis(750)));
    let opts = SessionOptions::default();
    let live = liveness_config(&opts, &TcpOptions::default());
    let t = tunnels_over(&link, Arc::new(Echo), &opts).await;
    let (_server_opens, server_end) = run_link(t.server, t.server_io, live);
    let (opens, client_end) = run_link(t.client, t.client_io, live);
    Pair {
        link,
        opens,
        _server_opens,
        client_end,
        server_end,
    }
}

/// Runs `tunnel` over `io` with liveness checks; returns where to open
/// streams and when and how its link ended.
fn run_link(
    mut tunnel: Tunnel,
    io: DuplexStream,
    live: LivenessConfig,
) -> (
    mpsc::Sender<OpenRequest>,
    oneshot::Receiver<(Instant, String)>,
) {
    tunnel.set_liveness(live);
    let (opens, mut open_rx) = mpsc::channel(4);
    let (end_tx, end) = oneshot::channel();
    tokio::spawn(async move {
        let r = tunnel.run_link(io, &mut open_rx).await;
        let _ = end_tx.send((Instant::now(), describe(r)));
        // Keep the streams alive while the test looks.
        tokio::time::sleep(Duration::from_secs(100_000)).await;
    });
    (opens, end)
}

async fn open(p: &Pair) -> DuplexStream {
    open_passthrough(&p.opens, "echo").await
}

#[tokio::test(start_paused = true)]
async fn silent_dead_link_is_detected_within_the_bound() {
    let mut p = pair().await;
    let mut app = open(&p).await;
    app.write_all(b"ping me\r\n").await.unwrap();
    let mut buf = [0u8; 9];
    app.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping me\r\n");
    // Let RTT samples settle.
    tokio::time::sleep(Duration::from_secs(5)).await;

    p.link.set_black_hole(true);
    let dead_at = Instant::now();
    app.write_all(b"anyone there?\r\n").await.unwrap();
    let (t, how) = tokio::time::timeout(Duration::from_secs(600), &mut p.client_end)
        .await
        .expect("client never noticed the dead link")
        .unwrap();
    let took = t - dead_at;
    // Unloaded: RTT 1.5 s (plus serialisation); a side may hold its
    // in-flight window (2 s) and a record (1 s) of link time ahead of a probe.
    let loaded = LivenessCheck::loaded_rtt(Some(Duration::from_millis(1700)), 3.0);
    let bound =
        LivenessCheck::new(Default::default(), Instant::now().into_std()).detection_bound(loaded);
    eprintln!("client noticed the black hole after {took:?} (bound {bound:?}): {how}");
    assert!(how.starts_with("lost: link silent"), "{how}");
    assert!(took <= bound, "{took:?} > {bound:?}");
    assert!(
        took >= Duration::from_secs(10),
        "faster than the floor: {took:?}"
    );

    // The server awaited nothing: its idle probe finds out.
    let (t, how) = tokio::time::timeout(Duration::from_secs(600), &mut p.server_end)
        .await
        .expect("server never noticed the dead link")
        .unwrap();
    let took = t - dead_at;
    eprintln!("server noticed after {took:?}: {how}");
    assert!(how.starts_with("lost: link silent"), "{how}");
    assert!(took <= Duration::from_secs(60) + bound, "{took:?}");
}

/// 14 KB each way: over a minute of link (12 KB took 59.6 s once the link
/// clock kept the link busy, no longer "long").
#[tokio::test(start_paused = true)]
async fn long_bulk_transfer_on_a_slow_link_raises_no_false_alarm() {
    bulk_echo(14_000).await;
}

/// 24 KB each way: once found the session reporting a cork deadline in the
/// past after the bulk lane had drained (the tunnel loop spun at one instant).
#[tokio::test(start_paused = true)]
async fn bulk_echo_24kb_each_way_finishes_without_spinning() {
    bulk_echo(24_000).await;
}

async fn bulk_echo(len: usize) {
    let mut p = pair().await;
    let mut app = open(&p).await;
    // Incompressible, `len` bytes each way at once (14 KB: ~70 s at 2,400 bit/s).
    let data = common::random_bytes(len, 1);
    let start = Instant::now();
    let (mut r, mut w) = tokio::io::split(&mut app);
    let send = async {
        w.write_all(&data).await.unwrap();
    };
    let recv = async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.unwrap();
        got
    };
    let (_, got) = tokio::time::timeout(Duration::from_secs(3600), async {
        tokio::join!(send, recv)
    })
    .await
    .expect("echo did not finish");
    assert!(got == data, "echoed bytes differ");
    eprintln!(
        "{len} B echoed in {:?}; {}",
        start.elapsed(),
        p.link.stats().snapshot()
    );
    assert!(
        start.elapsed() > Duration::from_secs(60),
        "not a long transfer"
    );
    assert!(
        p.client_end.try_recv().is_err(),
        "client dropped the link during bulk"
    );
    assert!(
        p.server_end.try_recv().is_err(),
        "server dropped the link during bulk"
    );
}
