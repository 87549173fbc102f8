//! Replayed handshakes (issue 12 item 5): a captured first message, fresh or
//! resuming, sent again any number of times gets no reply, starts no
//! session and leaves the client's live tunnel alone. And the session
//! limits of `[limits]` (issue 11) on a real server.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP relay in front of the server that keeps a copy of every
/// connection's first message (the client's Noise message 1) and can cut
/// the connections it carries.
#[derive(Clone, Default)]
struct Recorder {
    first_messages: Arc<Mutex<Vec<Vec<u8>>>>,
    relays: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Recorder {
    async fn start(server: SocketAddr) -> (Recorder, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let rec = Recorder::default();
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let r2 = r.clone();
                let relay = tokio::spawn(async move { r2.relay(client, server).await });
                r.relays.lock().unwrap().push(relay);
            }
        });
        (rec, addr)
    }

    async fn relay(self, mut client: TcpStream, server: SocketAddr) {
        let Ok(mut up) = TcpStream::connect(server).await else {
            return;
        };
        let mut prefix = [0u8; 2];
        if client.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let mut msg = prefix.to_vec();
        msg.resize(2 + u16::from_be_bytes(prefix) as usize, 0);
        if client.read_exact(&mut msg[2..]).await.is_err() {
            return;
        }
        self.first_messages.lock().unwrap().push(msg.clone());
        if up.write_all(&msg).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
    }

    /// Drops every connection relayed so far (both ends see them close).
    fn cut(&self) {
        for r in self.relays.lock().unwrap().drain(..) {
            r.abort();
        }
    }

    fn captured(&self) -> Vec<Vec<u8>> {
        self.first_messages.lock().unwrap().clone()
    }
}

/// Sends `msg` to the server as a new connection; returns the reply bytes
/// the server sends before closing or going quiet for 2 s (today's server
/// answers a replay with its message 2 and starts a session; a guarded one
/// closes without a byte).
async fn replay(server: SocketAddr, msg: &[u8]) -> usize {
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(msg).await.unwrap();
    let mut got = 0;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return got,
            Ok(Ok(n)) => got += n,
        }
    }
}

/// Writes `data` on the held local connection and reads it back.
async fn echo(conn: &mut TcpStream, data: &[u8]) {
    conn.write_all(data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(20), conn.read_exact(&mut back))
        .await
        .expect("echo through the live tunnel timed out")
        .unwrap();
    assert_eq!(back, data);
}

const REPLAYS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_first_and_resume_messages_get_nothing_and_touch_nothing() {
    init_tracing();
    let keys = make_keys("replay");
    let upstream = echo_server().await;
    let server_addr = free_port();
    let local = free_port();
    tokio::spawn({
        let scfg = server_config(&keys, server_addr, upstream);
        async move { straw::server::run(scfg).await.unwrap() }
    });
    wait_for_port(server_addr).await;
    let (rec, relay_addr) = Recorder::start(server_addr).await;
    let ccfg = client_config(
        &keys,
        relay_addr,
        local,
        "[session]\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n",
    );
    let stats = Arc::new(straw::tunnel::TunnelStats::default());
    tokio::spawn({
        let stats = stats.clone();
        async move { straw::client::run_with_stats(ccfg, stats).await }
    });
    wait_for_port(local).await;
    let mut conn = TcpStream::connect(local).await.unwrap();
    echo(&mut conn, b"before any replay").await;
    let first = rec.captured();
    assert_eq!(first.len(), 1, "one dial so far");
    let dials = stats.dials.load(Ordering::Relaxed);

    // The client's first message, replayed: no reply, no session.
    for i in 0..REPLAYS {
        assert_eq!(
            replay(server_addr, &first[0]).await,
            0,
            "replay {i} answered"
        );
    }
    echo(&mut conn, b"after replaying the first message").await;
    assert_eq!(
        stats.dials.load(Ordering::Relaxed),
        dials,
        "tunnel redialled"
    );

    // Cut the link: the client resumes its session with a resume message.
    rec.cut();
    wait_until("the client to resume", || {
        stats.resumes.load(Ordering::Relaxed) >= 1 && rec.captured().len() >= 2
    })
    .await;
    echo(&mut conn, b"after the resume").await;
    let resume_msg = rec.captured().last().unwrap().clone();
    let dials = stats.dials.load(Ordering::Relaxed);
    let resumes = stats.resumes.load(Ordering::Relaxed);

    // The resume message, replayed while its session runs: today that
    // ticket makes the server stop the live connection (the client has to
    // redial); now it gets no reply and the tunnel never notices.
    for i in 0..REPLAYS {
        assert_eq!(
            replay(server_addr, &resume_msg).await,
            0,
            "resume replay {i} answered"
        );
    }
    // And once more after the first message: both are old.
    assert_eq!(replay(server_addr, &first[0]).await, 0);
    echo(&mut conn, b"after replaying the resume message").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo(&mut conn, b"still the same tunnel").await;
    assert_eq!(
        stats.dials.load(Ordering::Relaxed),
        dials,
        "live tunnel was stopped"
    );
    assert_eq!(stats.resumes.load(Ordering::Relaxed), resumes);
    assert_eq!(rec.captured().len(), 2, "the client never dialled again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_tunnels_a_client_is_refused_and_the_live_one_carries_on() {
    init_tracing();
    let keys = make_keys("max-tunnels");
    let upstream = echo_server().await;
    let server_addr = free_port();
    let mut scfg = server_config(&keys, server_addr, upstream);
    scfg.limits.max_tunnels = 1;
    tokio::spawn(async move { straw::server::run(scfg).await.unwrap() });
    wait_for_port(server_addr).await;
    let extra = "[session]\nreconnect_min_ms = 50\nreconnect_max_ms = 100\n";
    let mut clients = Vec::new();
    for _ in 0..2 {
        let local = free_port();
        let ccfg = client_config(&keys, server_addr, local, extra);
        let stats = Arc::new(straw::tunnel::TunnelStats::default());
        tokio::spawn({
            let stats = stats.clone();
            async move { straw::client::run_with_stats(ccfg, stats).await }
        });
        wait_for_port(local).await;
        if clients.is_empty() {
            wait_until("the first tunnel", || {
                stats.dials.load(Ordering::Relaxed) == 1
            })
            .await;
        }
        clients.push((local, stats));
    }
    let mut conn = TcpStream::connect(clients[0].0).await.unwrap();
    echo(&mut conn, b"first tunnel").await;
    // The second client has tried (every 100 ms) for a while: never up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        clients[1].1.dials.load(Ordering::Relaxed),
        0,
        "second tunnel came up"
    );
    assert_eq!(clients[0].1.dials.load(Ordering::Relaxed), 1);
    echo(&mut conn, b"first tunnel, still").await;
}
