//! `straw bench idle-flood`: how long a legitimate client's tunnel takes to
//! come up while strangers hold thousands of idle, unauthenticated TCP
//! connections to the server (issue 12: "with 2,000 idle unauthenticated
//! connections held open and the fd soft limit at 1,024, a legitimate
//! client's tunnel comes up in under 2 s").
//!
//! A real `straw server` process (this binary, or `--server-bin`) runs with
//! fresh keys under an open-files limit of `--fd-limit` for both the soft AND
//! the hard limit, set in the child before exec: the server raises its soft
//! limit to the hard one at start (`gate::raise_fd_limit`), so a soft limit
//! alone would not be the condition measured. The bench then opens
//! `--connections` idle TCP connections (they send nothing) and holds them,
//! and times a client's TCP connect plus Noise IK handshake (with a real
//! Hello, the code `straw client` uses) until the server's reply Hello is
//! checked: the tunnel is up. Every wait has a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::Serialize;
use straw_core::session::Role;
use tokio::net::TcpStream;

use straw::client::session_config;
use straw::config::{SessionOptions, TcpOptions};
use straw::link::{keys, noise, tcp};

use super::common::{fd_room, write_keys};

#[derive(Args, Debug, Clone)]
pub struct IdleFloodArgs {
    /// The `straw` binary to run as the server (default: this one).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Idle unauthenticated connections to open and hold.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// The server's open-files limit, soft and hard.
    #[arg(long, default_value_t = 1024)]
    pub fd_limit: u64,
    /// Loopback port for the server (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Tunnels to bring up one after another through the flood.
    #[arg(long, default_value_t = 3)]
    pub tries: usize,
    /// Source addresses the flood comes from: 127.0.0.2 onwards (the client
    /// connects from 127.0.0.1, as a boat's address differs from an
    /// attacker's).
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// Keep the flood up this many seconds after it is opened, reopening
    /// every idle connection the server closes (as an attacker would), with
    /// the tries spread over that time (0: tries back to back, at once).
    #[arg(long, default_value_t = 0)]
    pub reopen_secs: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct IdleFloodReport {
    /// Idle connections asked for, and how many connected.
    pub connections: usize,
    pub connected: usize,
    /// Of those, how many the server had closed when the first tunnel came up.
    pub closed_by_server: usize,
    /// Idle connections reopened after the server closed them (`--reopen-secs`).
    pub reopened: u64,
    /// Source addresses of the flood (127.0.0.2 onwards).
    pub sources: u8,
    /// The server's RLIMIT_NOFILE, soft = hard, as set before exec.
    pub fd_limit: u64,
    /// The limit the server says it runs with (its start-up log line).
    pub server_fd_limit_logged: Option<u64>,
    /// Seconds to open the idle connections.
    pub flood_secs: f64,
    /// Seconds from connect to tunnel up, per try.
    pub tunnel_up_secs: Vec<f64>,
    /// The slowest try.
    pub tunnel_up_max_secs: f64,
    /// The target for the slowest.
    pub target_secs: f64,
}

pub fn run_cli(args: &IdleFloodArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(args.timeout), run(args))
            .await
            .map_err(|_| anyhow!("bench did not finish within {} s", args.timeout))?
    });
    rt.shutdown_timeout(Duration::from_millis(500));
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let tries: Vec<String> = report
            .tunnel_up_secs
            .iter()
            .map(|s| format!("{:.3}", s))
            .collect();
        println!(
            "idle-flood: {} idle connections from {} addresses held ({} connected, {} closed by the server, {} reopened), \
             server fd limit {} soft and hard (server logs {}): tunnel up in {} s (max {:.3} s, target < {} s)",
            report.connections,
            report.sources,
            report.connected,
            report.closed_by_server,
            report.reopened,
            report.fd_limit,
            report
                .server_fd_limit_logged
                .map_or("nothing".to_owned(), |n| n.to_string()),
            tries.join(", "),
            report.tunnel_up_max_secs,
            report.target_secs
        );
    }
    if report.tunnel_up_max_secs >= report.target_secs {
        bail!(
            "tunnel took {:.3} s, over the {} s target",
            report.tunnel_up_max_secs,
            report.target_secs
        );
    }
    Ok(())
}

/// The server process; killed and waited for when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin server` under the fd limit, logging to `dir/server.log`.
fn spawn_server(bin: &Path, dir: &Path, listen: SocketAddr, fd_limit: u64) -> Result<Server> {
    write_keys(dir, "server")?;
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\nprivate_key = \"server.key\"\n\
             authorized_keys = \"authorized_clients\"\n\
             [services]\nbench = {{ upstream = \"127.0.0.1:9\" }}\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("server")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let lim = libc::rlimit {
            rlim_cur: fd_limit as libc::rlim_t,
            rlim_max: fd_limit as libc::rlim_t,
        };
        // SAFETY: setrlimit is async-signal-safe and only reads `lim`, which
        // the closure owns; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(unix))]
    let _ = fd_limit;
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    Ok(Server(child))
}

/// Waits until the server accepts (its codec warm-up comes first).
async fn wait_listening(addr: SocketAddr, server: &mut Server, log: &Path) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(st) = server.0.try_wait()? {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("server exited ({st}) before listening:\n{log}");
        }
        if Instant::now() > until {
            bail!("server not listening on {addr} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One tunnel: TCP connect plus the Noise IK handshake with a real Hello,
/// until the server's reply Hello is checked. Seconds taken.
async fn tunnel_up(
    addr: SocketAddr,
    me: &keys::Keypair,
    server_key: &[u8; 32],
) -> Result<Duration> {
    let ours = session_config(Role::Client, &SessionOptions::default());
    let hello = straw_tunnel::handshake::client_hello(&ours, None, straw::client::next_timestamp());
    let started = Instant::now();
    let mut sock = tcp::connect_tunnel(&addr.to_string(), &TcpOptions::default()).await?;
    let (_transport, payload) = tokio::time::timeout(
        Duration::from_secs(30),
        noise::client_handshake(&mut sock, me, server_key, &hello.encode()),
    )
    .await
    .map_err(|_| anyhow!("handshake timed out after 30 s"))??;
    straw_tunnel::handshake::check_peer_hello(&ours, &payload)?;
    Ok(started.elapsed())
}

/// Whether the server has closed `s` (EOF or reset); never waits.
fn closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.try_read(&mut b) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// One idle connection from 127.0.0.(2 + i % sources).
async fn idle_connect(addr: SocketAddr, i: usize, sources: u8) -> std::io::Result<TcpStream> {
    let src = std::net::Ipv4Addr::new(127, 0, 0, 2 + (i % sources.clamp(1, 250) as usize) as u8);
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))?;
    sock.connect(addr).await
}

/// Reopens every idle connection the server closed, until `stop`; returns
/// how many were reopened.
async fn keep_open(mut idle: Vec<TcpStream>, addr: SocketAddr, sources: u8, stop: Instant) -> u64 {
    let mut reopened = 0;
    while Instant::now() < stop {
        for (i, s) in idle.iter_mut().enumerate() {
            let reopen = idle_connect(addr, i, sources);
            if closed(s)
                && let Ok(Ok(new)) = tokio::time::timeout(Duration::from_millis(200), reopen).await
            {
                *s = new;
                reopened += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reopened
}

pub async fn run(args: &IdleFloodArgs) -> Result<IdleFloodReport> {
    // This process holds the idle connections itself.
    fd_room(
        args.connections as u64 + 64,
        &format!("{} connections", args.connections),
    )?;
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this binary")?,
    };
    let dir = std::env::temp_dir().join(format!("straw-bench-idle-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(args, &bin, &dir).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn measure(args: &IdleFloodArgs, bin: &Path, dir: &Path) -> Result<IdleFloodReport> {
    let client = write_keys(dir, "client")?;
    std::fs::write(
        dir.join("authorized_clients"),
        keys::encode_key(&client.public),
    )?;
    let port = match args.port {
        0 => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
        p => p,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = spawn_server(bin, dir, addr, args.fd_limit)?;
    let server_key = keys::load_private(&dir.join("server.key"))?.public;
    wait_listening(addr, &mut server, &dir.join("server.log")).await?;

    // The flood: all at once, each connect bounded (a full accept queue
    // drops SYNs, and the kernel retries them).
    let flood_started = Instant::now();
    let connects: Vec<_> = (0..args.connections)
        .map(|i| {
            let sources = args.sources;
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), idle_connect(addr, i, sources)).await
            })
        })
        .collect();
    let mut idle = Vec::with_capacity(args.connections);
    for c in connects {
        if let Ok(Ok(Ok(s))) = c.await {
            idle.push(s);
        }
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();

    let connected = idle.len();
    let mut tunnel_up_secs = Vec::new();
    let closed_by_server;
    let mut reopened = 0;
    if args.reopen_secs == 0 {
        let took = tunnel_up(addr, &client, &server_key)
            .await
            .context("tunnel 1 through the flood")?;
        closed_by_server = idle.iter().filter(|s| closed(s)).count();
        tunnel_up_secs.push(took.as_secs_f64());
        for i in 1..args.tries.max(1) {
            let took = tunnel_up(addr, &client, &server_key)
                .await
                .with_context(|| format!("tunnel {} through the flood", i + 1))?;
            tunnel_up_secs.push(took.as_secs_f64());
        }
        drop(idle);
    } else {
        closed_by_server = idle.iter().filter(|s| closed(s)).count();
        let hold = Duration::from_secs(args.reopen_secs);
        let stop = Instant::now() + hold;
        let flood = tokio::spawn(keep_open(idle, addr, args.sources, stop));
        let tries = args.tries.max(1);
        for i in 0..tries {
            let took = tunnel_up(addr, &client, &server_key)
                .await
                .with_context(|| format!("tunnel {} through the flood", i + 1))?;
            tunnel_up_secs.push(took.as_secs_f64());
            tokio::time::sleep(hold / tries as u32).await;
        }
        reopened = flood.await?;
    }
    if let Some(st) = server.0.try_wait()? {
        bail!("server exited during the bench: {st}");
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let server_fd_limit_logged = log.split("open-files limit ").nth(1).and_then(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    });
    if server_fd_limit_logged.is_some_and(|n| n > args.fd_limit) {
        bail!(
            "the server raised its fd limit past {}: not the condition asked for",
            args.fd_limit
        );
    }
    Ok(IdleFloodReport {
        connections: args.connections,
        connected,
        closed_by_server,
        reopened,
        sources: args.sources,
        fd_limit: args.fd_limit,
        server_fd_limit_logged,
        flood_secs,
        tunnel_up_max_secs: tunnel_up_secs.iter().copied().fold(0.0, f64::max),
        tunnel_up_secs,
        target_secs: 2.0,
    })
}
