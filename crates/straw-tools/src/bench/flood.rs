//! `straw bench flood`: an authorised client floods a real server (the
//! `straw` binary, as a separate process) while another tunnel's echo is
//! timed (issue 12's benchmark line). The flooder is a raw Noise client
//! that writes crafted records as fast as the socket takes them: OPENs to a
//! service whose upstream never reads, each filled to its window (what the
//! memory budget bounds), then PINGs, empty DATA frames and OPENs past the
//! stream budget. A closed flooding tunnel reconnects and goes on. Reported:
//! the server's peak RSS against its configured budget, the echo's p50/p99
//! and whether the flooding tunnel was closed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use clap::Args;
use straw::client::session_config;
use straw::config::SessionOptions;
use straw::link::keys::{self, Keypair};
use straw::link::noise;
use straw_core::codec::CodecId;
use straw_core::session::Role;
use straw_core::wire::{Frame, OpenFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::common::{free_port, rss, wait_for_port, write_keys};

#[derive(Args, Debug, Clone)]
pub struct FloodArgs {
    /// How long the flood lasts, seconds.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// The server's `[limits] total_buffer_bytes`.
    #[arg(long, default_value_t = 64 << 20)]
    pub total_buffer_bytes: u64,
    /// The server's `[limits] tunnel_buffer_bytes`.
    #[arg(long, default_value_t = 4 << 20)]
    pub tunnel_buffer_bytes: u64,
    /// Streams the flooder opens to the non-reading upstream, each filled
    /// to its window.
    #[arg(long, default_value_t = 64)]
    pub sink_streams: u64,
    /// Time between echo probes, milliseconds.
    #[arg(long, default_value_t = 20)]
    pub probe_ms: u64,
    /// The `straw` binary to run as the server and the probe's client
    /// (default: this one).
    #[arg(long)]
    pub straw: Option<PathBuf>,
}

#[derive(Debug)]
pub struct FloodReport {
    pub baseline_rss: u64,
    pub peak_rss: u64,
    pub budget: u64,
    pub echo_p50_ms: f64,
    pub echo_p99_ms: f64,
    pub echo_max_ms: f64,
    pub probes: usize,
    pub probe_failures: usize,
    pub flood_records: u64,
    pub flood_wire_bytes: u64,
    pub flood_closed: u64,
    /// The server's first reason for closing a flooding tunnel, and the
    /// memory-budget warnings it logged.
    pub close_reason: Option<String>,
    pub budget_warnings: usize,
}

pub fn run_cli(args: &FloodArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_millis(500));
    let r = r?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "server RSS: baseline {:.1} MiB, peak {:.1} MiB (+{:.1} MiB) vs total_buffer_bytes {:.1} MiB: {}",
        mib(r.baseline_rss),
        mib(r.peak_rss),
        mib(r.peak_rss.saturating_sub(r.baseline_rss)),
        mib(r.budget),
        if r.peak_rss.saturating_sub(r.baseline_rss) <= r.budget {
            "within"
        } else {
            "OVER"
        }
    );
    println!(
        "echo (100 B, other tunnel): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} probes ({} failed): {}",
        r.echo_p50_ms,
        r.echo_p99_ms,
        r.echo_max_ms,
        r.probes,
        r.probe_failures,
        if r.echo_p99_ms < 100.0 && r.probe_failures == 0 {
            "p99 < 100 ms"
        } else {
            "MISSED"
        }
    );
    println!(
        "flood: {} records, {:.1} MiB of wire; flooding tunnel closed by the server {} times",
        r.flood_records,
        mib(r.flood_wire_bytes),
        r.flood_closed
    );
    if let Some(why) = &r.close_reason {
        println!("server's first close: {why}");
    }
    println!(
        "server logged the memory budget biting {} times (rate-limited)",
        r.budget_warnings
    );
    Ok(())
}

/// A stored record of `frames`.
fn record(frames: &[Frame]) -> Vec<u8> {
    let mut rec = vec![CodecId::Stored as u8];
    for f in frames {
        f.encode(&mut rec);
    }
    rec
}

fn open(stream: u64, service: &'static [u8]) -> Frame {
    Frame::Open(OpenFrame {
        stream,
        service: Bytes::from_static(service),
        meta: Bytes::new(),
    })
}

struct FloodCounters {
    records: AtomicU64,
    wire: AtomicU64,
    closed: AtomicU64,
}

/// One flooding connection: handshake, then records until `until` or the
/// server closes it.
async fn flood_once(
    server: SocketAddr,
    me: &Keypair,
    server_key: &[u8; 32],
    sink_streams: u64,
    until: Instant,
    c: &FloodCounters,
) -> Result<()> {
    let mut sock = TcpStream::connect(server).await?;
    sock.set_nodelay(true)?;
    let ours = session_config(Role::Client, &SessionOptions::default());
    let hello = straw_tunnel::handshake::client_hello(&ours, None, straw::client::next_timestamp());
    let (mut transport, payload) =
        noise::client_handshake(&mut sock, me, server_key, &hello.encode()).await?;
    let theirs = straw_tunnel::handshake::check_peer_hello(&ours, &payload)?;
    let window = theirs.stream_window as usize;
    let (mut rd, mut wr) = sock.into_split();
    let closed = Arc::new(AtomicBool::new(false));
    let reader = {
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
            closed.store(true, Ordering::Relaxed);
        })
    };
    let mut out = Vec::new();
    let mut send = |frames: &[Frame], out: &mut Vec<u8>| -> Result<()> {
        transport.encrypt(&record(frames), out)?;
        c.records.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    // Streams to the upstream that never reads, each filled to its window.
    let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
    for i in 0..sink_streams {
        let id = 2 * i + 1;
        send(&[open(id, b"sink")], &mut out)?;
        for _ in 0..window / chunk.len() {
            let data = Frame::Data {
                stream: id,
                flags: 0,
                payload: chunk.clone(),
            };
            send(&[data], &mut out)?;
        }
        wr.write_all(&out).await?;
        c.wire.fetch_add(out.len() as u64, Ordering::Relaxed);
        out.clear();
    }
    // Then frames that cost no credit, and OPENs past the stream budget.
    let mut next = 2 * sink_streams + 1;
    let mut stamp = 0u64;
    while Instant::now() < until && !closed.load(Ordering::Relaxed) {
        for _ in 0..16 {
            let mut frames = Vec::with_capacity(64);
            for _ in 0..32 {
                stamp += 1;
                frames.push(Frame::Ping { stamp });
            }
            for _ in 0..15 {
                frames.push(Frame::Data {
                    stream: 1,
                    flags: 0,
                    payload: Bytes::new(),
                });
            }
            frames.push(open(next, b"sink"));
            next += 2;
            send(&frames, &mut out)?;
        }
        if wr.write_all(&out).await.is_err() {
            break;
        }
        c.wire.fetch_add(out.len() as u64, Ordering::Relaxed);
        out.clear();
    }
    if Instant::now() < until {
        // Give the reader a moment to see the close.
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
        if closed.load(Ordering::Relaxed) {
            c.closed.fetch_add(1, Ordering::Relaxed);
        }
    } else {
        reader.abort();
    }
    Ok(())
}

async fn echo_server(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Accepts and never reads.
async fn sink_server(l: TcpListener) {
    let mut held = Vec::new();
    while let Ok((s, _)) = l.accept().await {
        held.push(s);
    }
}

pub async fn run(args: &FloodArgs) -> Result<FloodReport> {
    let dir = std::env::temp_dir().join(format!("straw-bench-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run_in(args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(args: &FloodArgs, dir: &Path) -> Result<FloodReport> {
    let straw = match &args.straw {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let server_kp = write_keys(dir, "server")?;
    let flooder = write_keys(dir, "flooder")?;
    let prober = write_keys(dir, "prober")?;
    std::fs::write(
        dir.join("authorized_clients"),
        format!(
            "{}\n{}\n",
            keys::encode_key(&flooder.public),
            keys::encode_key(&prober.public)
        ),
    )?;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(echo_server(echo));
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?;
    tokio::spawn(sink_server(sink));
    let tunnel = free_port()?;
    let local = free_port()?;
    std::fs::write(
        dir.join("server.toml"),
        format!(
            "listen = \"{tunnel}\"\nprivate_key = \"server.key\"\n\
             authorized_keys = \"authorized_clients\"\n\
             [services]\necho = {{ upstream = \"{echo_addr}\", protocol = \"tcp\" }}\n\
             sink = {{ upstream = \"{sink_addr}\", protocol = \"tcp\" }}\n\
             [limits]\ntunnel_buffer_bytes = {}\ntotal_buffer_bytes = {}\n",
            args.tunnel_buffer_bytes, args.total_buffer_bytes
        ),
    )?;
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "server = \"{tunnel}\"\nserver_public_key = \"server.key.pub\"\n\
             private_key = \"prober.key\"\n\
             [cache]\npersist = false\n[partial]\nenabled = false\n\
             [[service]]\nname = \"echo\"\nprotocol = \"tcp\"\nlisten = \"{local}\"\n"
        ),
    )?;
    let spawn = |what: &str| -> Result<tokio::process::Child> {
        tokio::process::Command::new(&straw)
            .arg(what)
            .arg("--config")
            .arg(dir.join(format!("{what}.toml")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                dir.join(format!("{what}.log")),
            )?))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {what}", straw.display()))
    };
    let server = spawn("server")?;
    let server_pid = server.id().ok_or_else(|| anyhow!("server has no pid"))?;
    wait_for_port(tunnel).await?;
    let _client = spawn("client")?;
    wait_for_port(local).await?;

    // The probe's connection, up and warm before the flood.
    let mut probe = TcpStream::connect(local).await?;
    probe.set_nodelay(true)?;
    let msg = [b'p'; 100];
    let mut back = [0u8; 100];
    for _ in 0..20 {
        probe.write_all(&msg).await?;
        probe.read_exact(&mut back).await?;
    }
    let baseline_rss = rss(server_pid)?.0;

    let until = Instant::now() + Duration::from_secs(args.secs);
    let counters = Arc::new(FloodCounters {
        records: AtomicU64::new(0),
        wire: AtomicU64::new(0),
        closed: AtomicU64::new(0),
    });
    let flood = {
        let c = counters.clone();
        let key = server_kp.public;
        let sinks = args.sink_streams;
        tokio::spawn(async move {
            while Instant::now() < until {
                if let Err(e) = flood_once(tunnel, &flooder, &key, sinks, until, &c).await {
                    // A refused or cut handshake: the server is defending itself.
                    c.closed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("flood connection: {e:#}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };

    let mut samples = Vec::new();
    let mut failures = 0;
    while Instant::now() < until {
        let t = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(5), async {
            probe.write_all(&msg).await?;
            probe.read_exact(&mut back).await?;
            anyhow::Ok(())
        })
        .await;
        match ok {
            Ok(Ok(())) => samples.push(t.elapsed().as_secs_f64() * 1000.0),
            _ => {
                failures += 1;
                probe = TcpStream::connect(local).await?;
                probe.set_nodelay(true)?;
            }
        }
        tokio::time::sleep(Duration::from_millis(args.probe_ms)).await;
    }
    flood.abort();
    let peak_rss = rss(server_pid)?.1;
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let close_reason = log
        .lines()
        .find(|l| l.contains("tunnel failed"))
        .map(|l| l.chars().take(300).collect());
    let budget_warnings = log
        .lines()
        .filter(|l| l.contains("memory budget spent"))
        .count();
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if samples.is_empty() {
            return f64::NAN;
        }
        samples[((samples.len() - 1) as f64 * p).round() as usize]
    };
    Ok(FloodReport {
        baseline_rss,
        peak_rss,
        budget: args.total_buffer_bytes,
        echo_p50_ms: pct(0.5),
        echo_p99_ms: pct(0.99),
        echo_max_ms: samples.last().copied().unwrap_or(f64::NAN),
        probes: samples.len(),
        probe_failures: failures,
        flood_records: counters.records.load(Ordering::Relaxed),
        flood_wire_bytes: counters.wire.load(Ordering::Relaxed),
        flood_closed: counters.closed.load(Ordering::Relaxed),
        close_reason,
        budget_warnings,
    })
}
