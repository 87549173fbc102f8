//! `authorized_keys` changes without a restart: removed keys' tunnels (and
//! parked sessions) close, added keys get in, other tunnels carry on
//! byte-exact, a broken file keeps the old set; `services=` refuses streams
//! to other services without touching the tunnel. The reload here is
//! `ServerState::reload_keys` (what SIGHUP calls) and the file poll; the
//! signal itself is tested against the real binary in
//! crates/straw-cli/tests/sighup.rs.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use straw::config::{ClientConfig, ServerConfig};
use straw::link::keys::{self, AuthorizedKeys};
use straw::server::ServerState;
use straw::tunnel::TunnelStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo upstream that counts the connections it accepted and saw end.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start() -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (acc, clo) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let clo = clo.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                    clo.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            accepted,
            closed,
        }
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A boat: its key dir (client.key, server.key.pub) and public key.
struct Boat {
    dir: PathBuf,
    public: [u8; 32],
}

fn boat(root: &Path, name: &str) -> Boat {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root.join("server.key.pub"), dir.join("server.key.pub")).unwrap();
    let kp = keys::generate();
    let key = dir.join("client.key");
    std::fs::write(&key, keys::encode_key(&kp.private)).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Boat {
        dir,
        public: kp.public,
    }
}

/// A dir with a server key.
fn server_dir(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let kp = keys::generate();
    let key = dir.join("server.key");
    std::fs::write(&key, keys::encode_key(&kp.private)).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("server.key.pub"), keys::encode_key(&kp.public)).unwrap();
    dir
}

fn server_cfg(
    dir: &Path,
    listen: SocketAddr,
    services: &[(&str, SocketAddr)],
    extra: &str,
) -> ServerConfig {
    let services: String = services
        .iter()
        .map(|(n, a)| format!("{n} = {{ upstream = \"{a}\" }}\n"))
        .collect();
    let text = format!(
        "listen = \"{listen}\"\nprivate_key = \"server.key\"\nauthorized_keys = \"authorized_clients\"\n{extra}\n[services]\n{services}"
    );
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    let mut cfg = ServerConfig::load(&path).unwrap();
    // An unknown key gets no answer until the handshake deadline (one
    // failure behaviour for probers): a short one lets a boat whose key is
    // added later get in within the test's patience.
    cfg.session.handshake_timeout_secs = 2;
    cfg
}

/// A running client of `b` for `services` (name → local port).
struct Client {
    locals: Vec<(String, SocketAddr)>,
    stats: Arc<TunnelStats>,
}

impl Client {
    fn local(&self, service: &str) -> SocketAddr {
        self.locals.iter().find(|(n, _)| n == service).unwrap().1
    }
}

/// Starts a client for `b`; `authorized`: wait for its tunnel, else only
/// for its ports (probed by connecting).
async fn client(b: &Boat, server: SocketAddr, services: &[&str], authorized: bool) -> Client {
    let locals: Vec<(String, SocketAddr)> = services
        .iter()
        .map(|s| (s.to_string(), free_port()))
        .collect();
    let svc: String = locals
        .iter()
        .map(|(n, a)| {
            format!("[[service]]\nname = \"{n}\"\nprotocol = \"tcp\"\nlisten = \"{a}\"\n")
        })
        .collect();
    let text = format!(
        "server = \"{server}\"\nserver_public_key = \"server.key.pub\"\nprivate_key = \"client.key\"\n\
         [session]\nresume_grace_secs = 1\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n\
         [cache]\npersist = false\n[partial]\ndir = \"partial\"\n{svc}"
    );
    let path = b.dir.join("client.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = ClientConfig::load(&path).unwrap();
    let stats = Arc::new(TunnelStats::default());
    let st = stats.clone();
    tokio::spawn(async move {
        let _ = straw::client::run_with_stats(cfg, st).await;
    });
    if authorized {
        // Listening, and its tunnel is up (no probe connection: it would
        // open a stream, and the upstream counts matter here).
        wait_for("the client's tunnel", || {
            stats.dials.load(Ordering::Relaxed) >= 1
        })
        .await;
    } else {
        for (_, a) in &locals {
            wait_for_port(*a).await;
        }
    }
    Client { locals, stats }
}

fn line(opts: &str, b: &Boat) -> String {
    format!("{opts} {} a comment\n", keys::encode_key(&b.public))
}

/// Starts an in-process server on `dir`'s config; returns its state.
async fn serve(cfg: ServerConfig) -> Arc<ServerState> {
    let keypair = keys::load_private(&cfg.private_key).unwrap();
    let authorized = AuthorizedKeys::load(&cfg.authorized_keys).unwrap();
    let listener = TcpListener::bind(cfg.listen).await.unwrap();
    let state = Arc::new(ServerState::new(cfg, keypair, authorized));
    tokio::spawn(straw::server::serve(listener, state.clone()));
    state
}

/// Sends `data` and returns the echo, or what came before the connection
/// closed; `None` if nothing at all came within `wait`.
async fn echo(addr: SocketAddr, data: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(data).await.ok()?;
    let mut got = vec![0u8; data.len()];
    let mut n = 0;
    let read = async {
        while n < got.len() {
            match s.read(&mut got[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok()?;
    got.truncate(n);
    Some(got)
}

/// A connection whose echo was seen: a stream open through the tunnel.
async fn held(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut got))
        .await
        .expect("no echo through the tunnel")
        .unwrap();
    assert_eq!(&got, b"ping");
    s
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_and_adding_keys_while_a_transfer_runs() {
    init_tracing();
    let dir = server_dir("keys-reload");
    let (a, b, c, d) = (
        boat(&dir, "a"),
        boat(&dir, "b"),
        boat(&dir, "c"),
        boat(&dir, "d"),
    );
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let [up_a, up_b, up_c, up_d] = &ups;
    let listen = free_port();
    let mut cfg = server_cfg(
        &dir,
        listen,
        &[
            ("a", up_a.addr),
            ("b", up_b.addr),
            ("c", up_c.addr),
            ("d", up_d.addr),
        ],
        "authorized_keys_poll_ms = 0",
    );
    // A parked session stays for ten minutes unless its key goes.
    cfg.session.resume_grace_secs = 600;
    let file = dir.join("authorized_clients");
    std::fs::write(
        &file,
        format!(
            "# boats\n{}{}{}",
            line("name=boat-a", &a),
            line("name=boat-b", &b),
            line("name=boat-d", &d)
        ),
    )
    .unwrap();
    let state = serve(cfg).await;
    assert_eq!(state.client_label(&a.public), "boat-a");

    // D goes through a link that we cut and keep refusing: its session parks.
    let (link_d, via_d) = cutting_link(listen, Duration::from_secs(600));
    let ca = client(&a, listen, &["a"], true).await;
    let cb = client(&b, listen, &["b"], true).await;
    let cc = client(&c, listen, &["c"], false).await;
    let cd = client(&d, via_d, &["d"], true).await;
    let mut held_b = held(cb.local("b")).await;
    let _held_d = held(cd.local("d")).await;
    link_d.cut_all();
    wait_for("D's session to park", || {
        state.authorized.live_tunnels(&d.public) == 0
    })
    .await;
    assert_eq!(state.authorized.live_tunnels(&b.public), 1);
    assert_eq!((up_b.closed(), up_d.closed()), (0, 0));
    // C is not authorised yet.
    assert_eq!(state.authorized.live_tunnels(&c.public), 0);

    // A's transfer: the first half is through when the keys change.
    let data = random_bytes(2_000_000, 7);
    let half = data.len() / 2;
    let s = TcpStream::connect(ca.local("a")).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let to_send = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&to_send[..half]).await.unwrap();
        go_rx.await.unwrap();
        w.write_all(&to_send[half..]).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = vec![0u8; half];
    tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got))
        .await
        .expect("first half did not come back")
        .unwrap();

    // B removed, C added, D (parked) removed.
    std::fs::write(
        &file,
        format!("{}{}", line("name=boat-a", &a), line("name=boat-c", &c)),
    )
    .unwrap();
    let changes = state.reload_keys().unwrap();
    assert_eq!(changes.total, 2);
    assert_eq!(changes.added, 1);
    assert_eq!(changes.removed.len(), 2);
    assert_eq!(changes.tunnels_closed, 1, "B's running tunnel");

    // B's tunnel closes: its upstream connection is closed, the tunnel gone.
    wait_for("B's upstream connection to close", || up_b.closed() == 1).await;
    wait_for("B's tunnel to go", || {
        state.authorized.live_tunnels(&b.public) == 0
    })
    .await;
    // D's parked session is dropped, not kept for its 600 s.
    wait_for("D's parked session to drop", || up_d.closed() == 1).await;

    // A's transfer carries on over the same tunnel, byte-exact.
    go.send(()).unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut rest))
        .await
        .expect("second half did not come back")
        .unwrap();
    writer.await.unwrap();
    got.extend_from_slice(&rest);
    assert!(
        got == data,
        "A's transfer not byte-exact ({} of {} bytes)",
        got.len(),
        data.len()
    );
    assert_eq!(
        ca.stats.dials.load(Ordering::Relaxed),
        1,
        "A's tunnel was re-dialled"
    );
    assert_eq!(state.authorized.live_tunnels(&a.public), 1);
    wait_for("A's finished transfer to close upstream", || {
        up_a.closed() == 1
    })
    .await;

    // C gets in.
    let echoed = echo(cc.local("c"), b"hello from C", Duration::from_secs(10)).await;
    assert_eq!(echoed.as_deref(), Some(&b"hello from C"[..]));
    assert_eq!(state.authorized.live_tunnels(&c.public), 1);

    // B's client sees its connection end (its own grace is 1 s) and cannot
    // get back in: nothing reaches B's upstream again.
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(Duration::from_secs(10), held_b.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "B's connection still open: {ended:?}"
    );
    let echoed = echo(cb.local("b"), b"still here?", Duration::from_secs(2)).await;
    assert!(
        echoed.as_ref().is_none_or(|e| e.is_empty()),
        "B got through: {echoed:?}"
    );
    assert_eq!(up_b.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(state.authorized.live_tunnels(&b.public), 0);

    // A broken file keeps the old set, and says where it is broken.
    std::fs::write(
        &file,
        format!("{}{}", line("name=boat-a", &a), line("colour=red", &b)),
    )
    .unwrap();
    let err = state.reload_keys().unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{}:2: unknown option `colour`", file.display())),
        "{err}"
    );
    std::fs::write(
        &file,
        format!("{}{}", line("name=boat-a", &a), line("services=c,nope", &b)),
    )
    .unwrap();
    let err = state.reload_keys().unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}:2: services=: no service \"nope\"",
            file.display()
        )),
        "{err}"
    );
    let now = state.authorized.current();
    assert!(now.contains(&a.public) && now.contains(&c.public) && !now.contains(&b.public));
    assert_eq!(state.client_label(&c.public), "boat-c");
    let echoed = echo(cc.local("c"), b"C again", Duration::from_secs(10)).await;
    assert_eq!(echoed.as_deref(), Some(&b"C again"[..]));
    let echoed = echo(ca.local("a"), b"A again", Duration::from_secs(10)).await;
    assert_eq!(echoed.as_deref(), Some(&b"A again"[..]));
    assert_eq!(up_b.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(cc.stats.dials.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_option_limits_new_streams() {
    init_tracing();
    let dir = server_dir("keys-services");
    let e = boat(&dir, "e");
    let (up_mail, up_web) = (Upstream::start().await, Upstream::start().await);
    let listen = free_port();
    let cfg = server_cfg(
        &dir,
        listen,
        &[("mail", up_mail.addr), ("web", up_web.addr)],
        "authorized_keys_poll_ms = 0",
    );
    let file = dir.join("authorized_clients");
    std::fs::write(&file, line("name=boat-e services=mail", &e)).unwrap();
    let state = serve(cfg).await;
    let ce = client(&e, listen, &["mail", "web"], true).await;

    let echoed = echo(ce.local("mail"), b"mail ok", Duration::from_secs(10)).await;
    assert_eq!(echoed.as_deref(), Some(&b"mail ok"[..]));
    // "web" is refused: the stream is reset before any upstream is dialled.
    let echoed = echo(ce.local("web"), b"web?", Duration::from_secs(10)).await;
    assert_eq!(echoed.as_deref(), Some(&b""[..]), "web stream not closed");
    assert_eq!(up_web.accepted.load(Ordering::SeqCst), 0);
    // The tunnel stays up.
    let mut kept = held(ce.local("mail")).await;
    assert_eq!(ce.stats.dials.load(Ordering::Relaxed), 1);
    assert_eq!(state.authorized.live_tunnels(&e.public), 1);

    // New options apply to new streams; the open mail stream stays.
    std::fs::write(&file, line("name=boat-e services=web", &e)).unwrap();
    let changes = state.reload_keys().unwrap();
    assert_eq!((changes.changed, changes.tunnels_closed), (1, 0));
    let echoed = echo(ce.local("web"), b"web ok", Duration::from_secs(10)).await;
    assert_eq!(echoed.as_deref(), Some(&b"web ok"[..]));
    let echoed = echo(ce.local("mail"), b"mail?", Duration::from_secs(10)).await;
    assert_eq!(
        echoed.as_deref(),
        Some(&b""[..]),
        "new mail stream not refused"
    );
    kept.write_all(b"still open").await.unwrap();
    let mut got = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), kept.read_exact(&mut got))
        .await
        .expect("the open mail stream was cut")
        .unwrap();
    assert_eq!(&got, b"still open");
    assert_eq!(up_mail.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(ce.stats.dials.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_without_a_signal() {
    init_tracing();
    let dir = server_dir("keys-poll");
    let (a, c) = (boat(&dir, "a"), boat(&dir, "c"));
    let (up, up_c) = (Upstream::start().await, Upstream::start().await);
    let listen = free_port();
    let cfg = server_cfg(
        &dir,
        listen,
        &[("s", up.addr), ("t", up_c.addr)],
        "authorized_keys_poll_ms = 100",
    );
    let file = dir.join("authorized_clients");
    std::fs::write(&file, line("", &a)).unwrap();
    tokio::spawn(async move {
        if let Err(e) = straw::server::run(cfg).await {
            panic!("server failed: {e:#}");
        }
    });
    wait_for_port(listen).await;
    let ca = client(&a, listen, &["s"], true).await;
    let cc = client(&c, listen, &["t"], false).await;
    let mut held_a = held(ca.local("s")).await;
    assert_eq!(cc.stats.dials.load(Ordering::Relaxed), 0);

    // Swapped in by rename, as editors and config tools do: C in, A out.
    let tmp = dir.join("authorized_clients.new");
    std::fs::write(&tmp, line("name=boat-c", &c)).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    wait_for("C's tunnel", || cc.stats.dials.load(Ordering::Relaxed) == 1).await;
    let echoed = echo(cc.local("t"), b"C by poll", Duration::from_secs(10)).await;
    assert_eq!(echoed.as_deref(), Some(&b"C by poll"[..]));
    wait_for("A's upstream connection to close", || up.closed() == 1).await;
    let mut buf = [0u8; 4];
    let ended = tokio::time::timeout(Duration::from_secs(10), held_a.read(&mut buf)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "A's connection still open: {ended:?}"
    );

    // A broken edit is not loaded: C stays in.
    std::fs::write(&file, format!("name=boat-c\n{}", line("", &c))).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let echoed = echo(cc.local("t"), b"C kept", Duration::from_secs(10)).await;
    assert_eq!(echoed.as_deref(), Some(&b"C kept"[..]));
    assert_eq!(cc.stats.dials.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
