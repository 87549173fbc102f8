//! Hostile peers at the server's door: idle connections that never
//! authenticate, and insecure keys refused at start.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use straw::config::{ClientConfig, ServerConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Whether the server closed `s` (EOF or reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn spawn_server(scfg: ServerConfig) {
    tokio::spawn(async move {
        if let Err(e) = straw::server::run(scfg).await {
            panic!("server failed: {e:#}");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_does_not_lock_out_a_client() {
    init_tracing();
    const IDLE: usize = 300;
    let echo = echo_server().await;
    let keys = make_keys("gate-flood");
    let server_addr = free_port();
    let local = free_port();
    // Default limits: 16 pending per address, 5 s for the first message.
    let scfg = server_config(&keys, server_addr, echo);
    let per_ip = scfg.limits.max_pending_per_ip;
    spawn_server(scfg);
    wait_for_port(server_addr).await;

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(server_addr).await.unwrap());
    }

    let ccfg = client_config(&keys, server_addr, local, "");
    let started = Instant::now();
    tokio::spawn(async move {
        let _ = straw::client::run(ccfg).await;
    });
    wait_for_port(local).await;
    let back = tokio::time::timeout(
        Duration::from_secs(10),
        roundtrip(local, b"through the flood".to_vec()),
    )
    .await
    .expect("no tunnel through the idle flood");
    let took = started.elapsed();
    assert_eq!(back, b"through the flood");
    println!("tunnel up and echoing {took:?} after {IDLE} idle connections");
    assert!(took < Duration::from_secs(2), "tunnel took {took:?}");

    // Each address holds at most its own few pending places: the older
    // idle connections were dropped long before the first-message deadline.
    let mut closed = 0;
    for s in &mut idle {
        if closed_within(s, Duration::from_millis(20)).await {
            closed += 1;
        }
    }
    println!("{closed} of {IDLE} idle connections closed by the server");
    assert!(closed >= IDLE - per_ip, "only {closed} of {IDLE} closed");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_first_message_deadline() {
    init_tracing();
    let keys = make_keys("gate-silent");
    let server_addr = free_port();
    let mut scfg = server_config(&keys, server_addr, free_port());
    scfg.limits.first_message_timeout_ms = 300;
    scfg.session.handshake_timeout_secs = 3;
    spawn_server(scfg);
    wait_for_port(server_addr).await;

    let mut silent = TcpStream::connect(server_addr).await.unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(2)).await,
        "a silent connection was kept past the first-message deadline"
    );
    let took = started.elapsed();
    println!("silent connection closed after {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "closed too soon: {took:?}"
    );

    // One that has started its handshake gets the whole handshake timeout.
    let mut slow = TcpStream::connect(server_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut slow, &[0])
        .await
        .unwrap();
    assert!(
        !closed_within(&mut slow, Duration::from_millis(1000)).await,
        "a started handshake was cut at the first-message deadline"
    );
    assert!(
        closed_within(&mut slow, Duration::from_secs(4)).await,
        "a stalled handshake outlived the handshake timeout"
    );
}

/// `who` (server or client) must refuse to start, with an error containing
/// `why` and naming the override.
async fn refuses(who: &str, run: impl std::future::Future<Output = anyhow::Result<()>>, why: &str) {
    let err = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap_or_else(|_| panic!("{who} started"))
        .expect_err("insecure key accepted");
    let err = format!("{err:#}");
    println!("{who}: {err}");
    assert!(
        err.contains(why) && err.contains("allow_insecure_keys"),
        "{err}"
    );
}

/// Both the server and the client refuse to start from these configs.
async fn both_refuse(scfg: ServerConfig, ccfg: ClientConfig, why: &str) {
    refuses("server", straw::server::run(scfg), why).await;
    refuses("client", straw::client::run(ccfg), why).await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_private_key_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let keys = make_keys("gate-mode");
    for who in ["server", "client"] {
        let key = keys.dir.join(format!("{who}.key"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let scfg = server_config(&keys, free_port(), free_port());
    let ccfg = client_config(&keys, free_port(), free_port(), "");
    both_refuse(scfg, ccfg, "readable by other users").await;
}

#[tokio::test]
async fn the_example_keys_are_refused_without_the_opt_in() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    // The example configs opt in, loudly.
    let mut scfg = ServerConfig::load(&examples.join("server.toml")).unwrap();
    let mut ccfg = ClientConfig::load(&examples.join("client.toml")).unwrap();
    assert!(scfg.allow_insecure_keys && ccfg.allow_insecure_keys);

    // Copies with safe file modes, so only their being published counts.
    let keys = make_keys("gate-example");
    for who in ["server", "client"] {
        let text = std::fs::read_to_string(examples.join(format!("keys/{who}.key"))).unwrap();
        let copy = keys.dir.join(format!("{who}.key"));
        std::fs::write(&copy, text).unwrap();
        #[cfg(unix)]
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    scfg.private_key = keys.dir.join("server.key");
    ccfg.private_key = keys.dir.join("client.key");
    scfg.allow_insecure_keys = false;
    ccfg.allow_insecure_keys = false;
    scfg.listen = free_port();
    both_refuse(scfg, ccfg, "published example key").await;

    // A server of its own key that lets the example client in is refused too.
    let own = make_keys("gate-example-auth");
    let mut scfg = server_config(&own, free_port(), free_port());
    scfg.authorized_keys = examples.join("keys/authorized_clients");
    refuses(
        "server",
        straw::server::run(scfg),
        "published example client key",
    )
    .await;
}
