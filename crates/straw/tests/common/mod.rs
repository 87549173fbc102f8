//! In-process harness: a straw server and client on loopback with fresh keys.
#![allow(dead_code)]

/// Tunnels over a simulated link on tokio's paused clock.
pub mod paused;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use straw::config::{ClientConfig, ServerConfig};
use straw::link::keys;
use straw::tunnel::TunnelStats;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A loopback port nobody listens on, for a server the test starts later.
/// Taken below Linux's ephemeral range (32768-60999): a port from
/// `bind(:0)` is an ephemeral one, and before the test binds it another
/// test's outgoing connection could take it (seen in CI: one test's server
/// failed with "address in use" and the other's transfer came up short).
/// Each call goes on with this process's walk through 20000-31999, which
/// starts at a place set by the process id.
pub fn free_port() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            n < SPAN,
            "no free loopback port left in {BASE}-{}",
            BASE + SPAN - 1
        );
        let port = (BASE + (start + n) % SPAN) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("straw-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Keys {
    pub dir: PathBuf,
}

/// Writes server and client key files plus the server's authorised list.
pub fn make_keys(name: &str) -> Keys {
    let dir = temp_dir(name);
    for who in ["server", "client"] {
        let kp = keys::generate();
        let key = dir.join(format!("{who}.key"));
        std::fs::write(&key, keys::encode_key(&kp.private)).unwrap();
        // Private keys others can read are refused.
        #[cfg(unix)]
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::write(
            dir.join(format!("{who}.key.pub")),
            keys::encode_key(&kp.public),
        )
        .unwrap();
    }
    let client_pub = std::fs::read_to_string(dir.join("client.key.pub")).unwrap();
    std::fs::write(dir.join("authorized_clients"), client_pub).unwrap();
    Keys { dir }
}

pub fn server_config(keys: &Keys, listen: SocketAddr, upstream: SocketAddr) -> ServerConfig {
    server_config_proto(keys, listen, upstream, "tcp")
}

pub fn server_config_proto(
    keys: &Keys,
    listen: SocketAddr,
    upstream: SocketAddr,
    protocol: &str,
) -> ServerConfig {
    server_config_services(keys, listen, &[("test", upstream, protocol)])
}

/// A server config with the given services: (name, upstream, protocol).
pub fn server_config_services(
    keys: &Keys,
    listen: SocketAddr,
    services: &[(&str, SocketAddr, &str)],
) -> ServerConfig {
    let services: String = services
        .iter()
        .map(|(name, upstream, protocol)| {
            format!("{name} = {{ upstream = \"{upstream}\", protocol = \"{protocol}\" }}\n")
        })
        .collect();
    let text = format!(
        r#"
listen = "{listen}"
private_key = "server.key"
authorized_keys = "authorized_clients"
[services]
{services}"#
    );
    let path = keys.dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    ServerConfig::load(&path).unwrap()
}

pub fn client_config(
    keys: &Keys,
    server: SocketAddr,
    local: SocketAddr,
    extra: &str,
) -> ClientConfig {
    client_config_proto(keys, server, local, "tcp", extra)
}

pub fn client_config_proto(
    keys: &Keys,
    server: SocketAddr,
    local: SocketAddr,
    protocol: &str,
    extra: &str,
) -> ClientConfig {
    // The partial store stays in the test's dir, not the user's state dir.
    let partial = if extra.contains("[partial]") {
        ""
    } else {
        "[partial]\ndir = \"partial\"\n"
    };
    let text = format!(
        r#"
server = "{server}"
server_public_key = "server.key.pub"
private_key = "client.key"
[cache]
persist = false
{partial}[[service]]
name = "test"
protocol = "{protocol}"
listen = "{local}"
{extra}
"#
    );
    let path = keys.dir.join("client.toml");
    std::fs::write(&path, text).unwrap();
    ClientConfig::load(&path).unwrap()
}

/// An upstream that echoes every connection back.
pub async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A scripted line server standing in for an upstream. For each connection
/// `connect` gives the greeting and the connection's answerer, which is
/// handed every line the client sends (line end included) and returns the
/// reply and whether to hang up after it. A connection also ends when the
/// client closes it or a write fails.
pub async fn line_server<C, A>(mut connect: C) -> SocketAddr
where
    C: FnMut() -> (Vec<u8>, A) + Send + 'static,
    A: FnMut(&str) -> (Vec<u8>, bool) + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (greeting, mut answer) = connect();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                if w.write_all(&greeting).await.is_err() {
                    return;
                }
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let (reply, hang_up) = answer(&line);
                    if w.write_all(&reply).await.is_err() || hang_up {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The first word of a command line, upper-cased (a POP3 or SMTP verb).
pub fn verb(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

pub struct Running {
    pub local: SocketAddr,
    pub server_addr: SocketAddr,
    pub client_stats: Arc<TunnelStats>,
}

/// Starts server and client; the client dials `via` (e.g. a linksim) or the server directly.
pub async fn start(
    name: &str,
    upstream: SocketAddr,
    via: Option<SocketAddr>,
    client_extra: &str,
) -> Running {
    start_with_server(name, upstream, free_port(), via, client_extra).await
}

/// As [`start`], for a service of the given protocol.
pub async fn start_proto(name: &str, upstream: SocketAddr, protocol: &str) -> Running {
    start_full(name, upstream, free_port(), None, protocol, "").await
}

/// As [`start`], with the server's tunnel address chosen by the caller.
pub async fn start_with_server(
    name: &str,
    upstream: SocketAddr,
    server_addr: SocketAddr,
    via: Option<SocketAddr>,
    client_extra: &str,
) -> Running {
    start_full(name, upstream, server_addr, via, "tcp", client_extra).await
}

pub async fn start_full(
    name: &str,
    upstream: SocketAddr,
    server_addr: SocketAddr,
    via: Option<SocketAddr>,
    protocol: &str,
    client_extra: &str,
) -> Running {
    init_tracing();
    let keys = make_keys(name);
    let local = free_port();
    let scfg = server_config_proto(&keys, server_addr, upstream, protocol);
    let ccfg = client_config_proto(
        &keys,
        via.unwrap_or(server_addr),
        local,
        protocol,
        client_extra,
    );
    let client_stats = spawn_pair(scfg, ccfg, server_addr, local).await;
    Running {
        local,
        server_addr,
        client_stats,
    }
}

/// Runs a server and a client from their configs; returns once both listen.
pub async fn spawn_pair(
    scfg: ServerConfig,
    ccfg: ClientConfig,
    server_addr: SocketAddr,
    local: SocketAddr,
) -> Arc<TunnelStats> {
    tokio::spawn(async move {
        if let Err(e) = straw::server::run(scfg).await {
            panic!("server failed: {e:#}");
        }
    });
    wait_for_port(server_addr).await;
    let client_stats = Arc::new(TunnelStats::default());
    let st = client_stats.clone();
    tokio::spawn(async move {
        let _ = straw::client::run_with_stats(ccfg, st).await;
    });
    wait_for_port(local).await;
    client_stats
}

pub async fn wait_for_port(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr} never came up");
}

/// Polls `ok` until it holds; panics after 10 s (of tokio time).
pub async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..200 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Sends `data` through `addr` and returns what comes back before EOF.
pub async fn roundtrip(addr: SocketAddr, data: Vec<u8>) -> Vec<u8> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    back
}

/// Logs to the test's output at `STRAW_LOG` (default `warn`); once per process.
pub fn init_tracing() {
    straw::logging::init_for_tests();
}

/// Link bytes both ways so far.
pub fn link_bytes(link: &straw_tools::linksim::Link) -> u64 {
    let s = link.stats().snapshot();
    s.up.bytes + s.down.bytes
}

/// What `run` returns, and the link bytes (both ways) that went by meanwhile.
pub async fn link_bytes_during<T>(
    link: &straw_tools::linksim::Link,
    run: impl std::future::Future<Output = T>,
) -> (T, u64) {
    let before = link_bytes(link);
    let out = run.await;
    (out, link_bytes(link) - before)
}

/// A resumed second run moves at most the share of the clean run's link
/// bytes that `remaining` of the message is, plus 10% of the clean run;
/// both runs together pay for the message about once (at most 110%).
pub fn assert_resume_cost(full_wire: u64, first_wire: u64, second_wire: u64, remaining: f64) {
    let bound = remaining * full_wire as f64 + 0.10 * full_wire as f64;
    eprintln!(
        "  second run {second_wire} link B: bound {bound:.0} = {:.1}% remaining + 10% of clean",
        100.0 * remaining
    );
    assert!(
        (second_wire as f64) <= bound,
        "second run moved {second_wire} link bytes, bound {bound:.0}"
    );
    assert!(
        first_wire + second_wire <= full_wire + full_wire / 10,
        "cut run {first_wire} + second run {second_wire} > 110% of {full_wire}"
    );
}

/// A linksim to `server` on a free port; returns the link and the address
/// to dial.
pub fn linksim_to(
    server: SocketAddr,
    params: straw_tools::linksim::LinkParams,
) -> (Arc<straw_tools::linksim::Link>, SocketAddr) {
    use straw_tools::linksim::{Link, bind_listener, serve};
    let link = Link::new(params);
    let l = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve(l, server, link.clone()));
    (link, addr)
}

/// A 1 Mbit/s, 5 ms linksim to `server` that refuses reconnects for
/// `refuse` after a cut; returns the link and the address to dial.
pub fn cutting_link(
    server: SocketAddr,
    refuse: Duration,
) -> (Arc<straw_tools::linksim::Link>, SocketAddr) {
    let mut params = straw_tools::linksim::LinkParams::new(1_000_000, Duration::from_millis(5));
    params.faults.refuse_for = Some(refuse);
    linksim_to(server, params)
}

/// Client settings of the message-resume tests: a 1 s grace period, quick
/// reconnects, the partial store in `dir` (`partial_more`: more lines of
/// its section).
pub fn resume_client_extra(dir: &std::path::Path, partial_more: &str) -> String {
    format!(
        "[session]\nresume_grace_secs = 1\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n[partial]\ndir = {dir:?}\n{partial_more}"
    )
}

/// A server (grace 1 s, one `protocol` service to `upstream`) behind a
/// [`cutting_link`] that refuses reconnects for 2 s after a cut, and the
/// partial dir its clients share: the message-resume tests' setting.
pub struct CutSetup {
    pub keys: Keys,
    pub link: Arc<straw_tools::linksim::Link>,
    pub linksim: SocketAddr,
    pub partial_dir: PathBuf,
}

impl CutSetup {
    /// Link bytes of a clean run: `fetch` must return `expected` and leave
    /// no partial file. Stops the client `c` after.
    pub async fn clean_run_wire(
        &self,
        fetch: impl std::future::Future<Output = Vec<u8>>,
        expected: &[u8],
        c: Client,
    ) -> u64 {
        let (got, wire) = link_bytes_during(&self.link, fetch).await;
        assert!(got == expected, "clean run not byte-exact");
        assert_eq!(partial_files(&self.partial_dir), 0);
        c.task.abort();
        wire
    }

    /// A refetch of a message that changed under its partial file: `fetch`
    /// must return `expected` in a full transfer (at least 80% of the clean
    /// run's `clean` link bytes), and leave no partial file.
    pub async fn assert_full_refetch(
        &self,
        label: &str,
        fetch: impl std::future::Future<Output = Vec<u8>>,
        expected: &[u8],
        clean: u64,
    ) {
        let (got, wire) = link_bytes_during(&self.link, fetch).await;
        assert!(got == expected, "fallback not byte-exact");
        eprintln!(
            "{label} changed prefix: full transfer, {wire} link B (clean run {clean} link B)"
        );
        assert!(wire * 10 >= clean * 8, "must have been a full transfer");
        assert_eq!(partial_files(&self.partial_dir), 0);
    }
}

pub async fn cut_setup(name: &str, upstream: SocketAddr, protocol: &str) -> CutSetup {
    init_tracing();
    let keys = make_keys(name);
    let server_addr = free_port();
    let (link, linksim) = cutting_link(server_addr, Duration::from_secs(2));
    let mut scfg = server_config_proto(&keys, server_addr, upstream, protocol);
    scfg.session.resume_grace_secs = 1;
    tokio::spawn(async move {
        let _ = straw::server::run(scfg).await;
    });
    wait_for_port(server_addr).await;
    let partial_dir = keys.dir.join("partial");
    CutSetup {
        keys,
        link,
        linksim,
        partial_dir,
    }
}

/// A program's pipelined `session`; everything it got until the close.
pub async fn fetch_session(local: SocketAddr, session: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(local).await.unwrap();
    s.write_all(session).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut got))
        .await
        .expect("fetch took over 30 s")
        .unwrap();
    got
}

/// The same session, with the link cut once the program has `cut_at`
/// bytes; returns what it got before its connection closed.
pub async fn fetch_cut(
    local: SocketAddr,
    link: &straw_tools::linksim::Link,
    cut_at: usize,
    session: &[u8],
) -> Vec<u8> {
    let mut s = TcpStream::connect(local).await.unwrap();
    s.write_all(session).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut cut = false;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("connection neither moved nor closed for 20 s")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !cut && got.len() >= cut_at {
            link.cut_all();
            cut = true;
        }
    }
    assert!(cut, "the fetch ended before the cut point");
    got
}

/// Waits for a client to have dialled `n` links (the session after a
/// given-up one), so that the next fetch doesn't race the redial.
pub async fn wait_dials(stats: &TunnelStats, n: u64) {
    for _ in 0..400 {
        if stats.dials.load(std::sync::atomic::Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("client never redialled");
}

/// The partial files in `dir`.
pub fn partial_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "part")
            })
            .count()
        })
        .unwrap_or(0)
}

/// A `straw client` running in this process.
pub struct Client {
    pub local: SocketAddr,
    pub stats: Arc<TunnelStats>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts a client for one `protocol` service on a free local port.
pub async fn spawn_client(keys: &Keys, server: SocketAddr, protocol: &str, extra: &str) -> Client {
    let local = free_port();
    let ccfg = client_config_proto(keys, server, local, protocol, extra);
    let stats = Arc::new(TunnelStats::default());
    let st = stats.clone();
    let task = tokio::spawn(async move {
        let _ = straw::client::run_with_stats(ccfg, st).await;
    });
    wait_for_port(local).await;
    Client { local, stats, task }
}

/// A ~300 KB MIME mail, CRLF: `headers` (each line ending CRLF), a text part
/// with `text`, a base64 random "PNG" from `png_seed`, a base64 licence text.
pub fn attachment_mail(headers: &str, text: &str, png_seed: u64) -> Vec<u8> {
    use base64::Engine;
    let b64 = |data: &[u8]| -> String {
        let s = base64::engine::general_purpose::STANDARD.encode(data);
        s.as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect()
    };
    let licence: Vec<u8> = (0..1500)
        .flat_map(|i| {
            format!("{i}. Everyone is permitted to copy and distribute verbatim copies.\n")
                .into_bytes()
        })
        .collect();
    let mut png = random_bytes(150_000, png_seed);
    png[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    format!(
        "From: alice@example.org\r\nTo: bob@example.org\r\n{headers}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{text}--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n{}--b--\r\n",
        b64(&png),
        b64(&licence)
    )
    .into_bytes()
}

/// `msg` as a POP3 body or SMTP DATA carries it: dot-stuffed, terminated.
pub fn dot_stuffed(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in msg.split_inclusive(|&b| b == b'\n') {
        if l.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(l);
    }
    out.extend_from_slice(b".\r\n");
    out
}
