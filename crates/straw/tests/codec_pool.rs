//! Issue 11's fairness rule with whole tunnels: an interactive reply never
//! waits for bulk compression, neither another tunnel's nor its own. Two
//! server tunnels share one codec thread, which a job holds busy: their
//! bulk units can't be compressed, yet both answer a command in about one
//! round trip. Paused tokio time, 2,400 bit/s and 500 ms one way.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::paused::{Tunnels, open_passthrough, read_line, tunnels_over};
use straw::codec_pool::CodecPool;
use straw::config::SessionOptions;
use straw::tunnel::{DialFuture, Dialer, LocalIo, OpenRequest};
use straw_proto::Accelerator;
use straw_proto::passthrough::Passthrough;
use straw_tools::linksim::{Link, LinkParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Mail-like text, words in a pseudo-random order: the strong codec has
/// work to do, and the download takes minutes at 2,400 bit/s.
fn mail(len: usize) -> Vec<u8> {
    let words = [
        "Received: ",
        "from ",
        "mail.example.org ",
        "by ",
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

const BULK: usize = 200_000;

/// `bulk` streams [`BULK`] bytes of mail; `chat` answers a line.
struct TestDialer;

impl Dialer for TestDialer {
    fn dial(&self, service: &str, _first: Option<bytes::Bytes>) -> DialFuture {
        let service = service.to_owned();
        Box::pin(async move {
            let (ours, mut theirs) = duplex(4096);
            tokio::spawn(async move {
                if service == "bulk" {
                    let _ = theirs.write_all(&mail(BULK)).await;
                } else {
                    read_line(&mut theirs).await;
                    theirs.write_all(b"a1 OK NOOP done\r\n").await.unwrap();
                    let _ = theirs.read(&mut [0u8; 64]).await;
                }
            });
            Ok((
                Box::new(ours) as Box<dyn LocalIo>,
                Box::new(Passthrough::default()) as Box<dyn Accelerator>,
            ))
        })
    }
}

/// Runs a tunnel pair whose server compresses bulk on `pool`; returns the
/// client's opener.
async fn pair(pool: &Arc<CodecPool>) -> mpsc::Sender<OpenRequest> {
    let link = Link::new(LinkParams::new(2400, Duration::from_millis(500)));
    let t: Tunnels = tunnels_over(&link, Arc::new(TestDialer), &SessionOptions::default()).await;
    let (mut server, server_io) = (t.server, t.server_io);
    server.set_codec_pool(pool);
    tokio::spawn(async move {
        let (_tx, mut rx) = mpsc::channel(1);
        let _ = server.run(server_io, &mut rx).await;
    });
    let (client, client_io) = (t.client, t.client_io);
    let (open_tx, mut open_rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _ = client.run(client_io, &mut open_rx).await;
    });
    open_tx
}

fn read_all(mut app: DuplexStream) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = app.read_to_end(&mut got).await;
        got
    })
}

async fn chat(opens: &mpsc::Sender<OpenRequest>) -> Duration {
    let asked = Instant::now();
    let mut app = open_passthrough(opens, "chat").await;
    app.write_all(b"a1 NOOP\r\n").await.unwrap();
    assert_eq!(read_line(&mut app).await, b"a1 OK NOOP done\r\n");
    asked.elapsed()
}

#[tokio::test(start_paused = true)]
async fn interactive_replies_never_wait_for_bulk_compression() {
    let pool = CodecPool::new(1);
    let busy = pair(&pool).await;
    let other = pair(&pool).await;

    // The bulk download starts; its first units are compressed.
    let bulk = read_all(open_passthrough(&busy, "bulk").await);
    tokio::time::sleep(Duration::from_secs(15)).await;

    // Now the codec thread is taken (by other tunnels' units, say).
    let taken = pool.turn().await;
    // What was compressed before drains; then the bulk is stuck.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(pool.queued() >= 1, "the busy tunnel's next unit waits");
    assert!(!bulk.is_finished());

    // Both tunnels answer in a round trip and a little: 1 s of RTT, the
    // OPEN, command and reply records, and at most a slice already on the
    // link ahead of them.
    let allowed = Duration::from_millis(2_600);
    for opens in [&other, &busy] {
        let took = tokio::time::timeout(Duration::from_secs(60), chat(opens))
            .await
            .expect("a reply while the codec thread is busy");
        eprintln!("reply while the codec thread is busy: {took:?}");
        assert!(took <= allowed, "reply took {took:?} > {allowed:?}");
    }
    assert!(pool.queued() >= 1, "the unit still waits");

    // The thread is free again: the download ends, byte-exact.
    drop(taken);
    let got = bulk.await.unwrap();
    assert!(got == mail(BULK), "{} of {BULK} bytes", got.len());
}
