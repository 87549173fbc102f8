//! The real `straw server` process re-reads `authorized_keys` on SIGHUP: a
//! removed key's tunnel closes (one log line), an added key gets in, and a
//! broken file is refused with file:line while the server keeps running.
#![cfg(unix)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use straw::link::keys;
use straw::tunnel::TunnelStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Writes `dir/NAME` (0600) and `dir/NAME.pub`; returns the public key.
fn keypair(dir: &Path, name: &str) -> [u8; 32] {
    let kp = keys::generate();
    let key = dir.join(name);
    std::fs::write(&key, keys::encode_key(&kp.private)).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.join(format!("{name}.pub")),
        keys::encode_key(&kp.public),
    )
    .unwrap();
    kp.public
}

/// The server process, killed when the test ends either way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP failed");
    }
}

async fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// An in-process client with key `name` in `dir`; returns its local port
/// and stats.
fn client(dir: &Path, name: &str, server: SocketAddr) -> (SocketAddr, Arc<TunnelStats>) {
    let local = free_port();
    let text = format!(
        "server = \"{server}\"\nserver_public_key = \"server.key.pub\"\nprivate_key = \"{name}.key\"\n\
         [session]\nresume_grace_secs = 1\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n\
         [cache]\npersist = false\n[partial]\ndir = \"partial-{name}\"\n\
         [[service]]\nname = \"echo\"\nprotocol = \"tcp\"\nlisten = \"{local}\"\n"
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    let cfg = straw::config::ClientConfig::load(&path).unwrap();
    let stats = Arc::new(TunnelStats::default());
    let st = stats.clone();
    tokio::spawn(async move {
        let _ = straw::client::run_with_stats(cfg, st).await;
    });
    (local, stats)
}

async fn echo(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.unwrap();
    let mut got = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("no echo within 10 s")
        .unwrap();
    got
}

fn log(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_authorized_keys_in_the_real_binary() {
    let dir = std::env::temp_dir().join(format!("straw-sighup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    keypair(&dir, "server.key");
    let a = keypair(&dir, "a.key");
    let b = keypair(&dir, "b.key");
    let file = dir.join("authorized_clients");
    std::fs::write(&file, format!("name=boat-a {}\n", keys::encode_key(&a))).unwrap();
    let upstream = echo_upstream().await;
    let listen = free_port();
    // Only the signal reloads: the file poll is off. An unknown key gets no
    // answer until the handshake deadline: a short one lets B, refused
    // before the reload, get in soon after it.
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "listen = \"{listen}\"\nprivate_key = \"server.key\"\nauthorized_keys = \"authorized_clients\"\n\
             authorized_keys_poll_ms = 0\n[services]\necho = {{ upstream = \"{upstream}\" }}\n\
             [session]\nhandshake_timeout_secs = 2\n"
        ),
    )
    .unwrap();
    let log_path = dir.join("server.log");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_straw"))
            .args(["server", "--config"])
            .arg(dir.join("server.toml"))
            .env("STRAW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the server to listen", || {
        log(&log_path).contains("listening on")
    })
    .await;

    let (local_a, stats_a) = client(&dir, "a", listen);
    let (local_b, stats_b) = client(&dir, "b", listen);
    wait_for("A's tunnel", || stats_a.dials.load(Ordering::Relaxed) == 1).await;
    assert_eq!(echo(local_a, b"A before").await, b"A before");
    let mut held_a = TcpStream::connect(local_a).await.unwrap();
    held_a.write_all(b"held").await.unwrap();
    let mut got = [0u8; 4];
    held_a.read_exact(&mut got).await.unwrap();
    assert_eq!(
        stats_b.dials.load(Ordering::Relaxed),
        0,
        "B got in unlisted"
    );

    // A out, B in; SIGHUP.
    std::fs::write(&file, format!("name=boat-b {}\n", keys::encode_key(&b))).unwrap();
    server.hangup();
    wait_for("B's tunnel", || stats_b.dials.load(Ordering::Relaxed) == 1).await;
    assert_eq!(echo(local_b, b"B after").await, b"B after");
    let mut buf = [0u8; 8];
    let ended = tokio::time::timeout(Duration::from_secs(10), held_a.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "A still connected: {ended:?}"
    );
    let text = log(&log_path);
    assert!(
        text.contains("reloaded (SIGHUP): 1 keys; 1 added, 1 removed (1 tunnels closed)"),
        "{text}"
    );
    let closed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("key removed from authorized_keys: tunnel closed"))
        .collect();
    assert_eq!(closed.len(), 1, "{text}");
    assert!(closed[0].contains("boat-a"), "{}", closed[0]);

    // A broken file: refused with file:line, B stays in, the server runs on.
    std::fs::write(&file, format!("colour=red {}\n", keys::encode_key(&b))).unwrap();
    server.hangup();
    let want = format!("{}:1: unknown option `colour`", file.display());
    wait_for("the refused reload's log line", || {
        log(&log_path).contains(&want)
    })
    .await;
    assert!(log(&log_path).contains("not reloaded (SIGHUP), keeping the 1 keys loaded before"));
    assert_eq!(echo(local_b, b"B still").await, b"B still");
    assert_eq!(stats_b.dials.load(Ordering::Relaxed), 1);
    let mut server = server;
    assert!(server.0.try_wait().unwrap().is_none(), "server exited");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
