//! `straw bench throughput`: one stream through a real `straw server` and
//! `straw client` on loopback, no link simulator, to show that a fast link is
//! not capped by the codec or the tunnel. Prints MB/s and which codecs
//! carried the bytes.
//!
//! The bench runs an upstream service on loopback that the server dials for
//! the passthrough service `bench`. Over the client's local port it asks the
//! upstream (a 9-byte command) to send N bytes (`down`, like a mail
//! download) or to take N bytes (`up`), and checks every byte. Every wait
//! has a deadline: the bench ends with an error, never hangs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::Serialize;
use straw_core::codec::{CodecId, CodecParams, DecoderLimits, RecordDecoder, RecordEncoder};
use straw_core::session::{
    FAST_ENTER_RATE, FAST_EXIT_RATE, MAX_INFLIGHT, Role, STORED_ENTER_RATE, STORED_EXIT_RATE,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use straw::client::session_config;
use straw::config::{ClientConfig, ServerConfig, SessionOptions};
use straw::link::keys;
use straw::tunnel::TunnelStats;

/// No byte moved for this long: the bench fails instead of waiting on.
const STALL: Duration = Duration::from_secs(10);
const CHUNK: usize = 256 * 1024;

#[derive(Args, Debug, Clone)]
pub struct ThroughputArgs {
    /// Bytes to move through the tunnel.
    #[arg(long, default_value_t = 512 << 20)]
    pub bytes: u64,
    /// `down` (server to client, as mail downloads) or `up`.
    #[arg(long, default_value = "down")]
    pub direction: String,
    /// First of three loopback ports: tunnel, upstream, local service
    /// (0: any free ports).
    #[arg(long, default_value_t = 17800)]
    pub port: u16,
    /// Give up after this many seconds (and after 10 s without progress).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Override the client's `tcp.local_recv_buffer` (small by default so
    /// that backpressure reaches the mail program on slow links; it caps
    /// `up`). Also lifts `local_max_segment`.
    #[arg(long)]
    pub local_recv_buffer: Option<usize>,
    /// Override the client's `tcp.local_recv_buffer_max`, how far that
    /// buffer grows on a fast link (at or below `local_recv_buffer`: it
    /// never grows, as before it could).
    #[arg(long)]
    pub local_recv_buffer_max: Option<usize>,
    /// Also time each codec alone on the same text (the fast-link threshold
    /// rests on these speeds).
    #[arg(long)]
    pub codec_speeds: bool,
}

#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    pub direction: String,
    pub bytes: u64,
    /// From the request to the last byte checked.
    pub seconds: f64,
    pub mb_per_s: f64,
    /// From the first byte to the last (without tunnel ramp-up).
    pub mb_per_s_after_first_byte: f64,
    /// Raw bytes received by the client (`down`) or sent by it (`up`, with
    /// the 9-byte request), by the codec of the record that carried them.
    pub codec_raw_bytes: Vec<(String, u64)>,
    pub wire_bytes: u64,
    /// The sender's delivery-rate estimate at the end, wire bytes/s.
    pub sender_rate_estimate: u64,
    pub fast_enter_rate: f64,
    pub fast_exit_rate: f64,
    pub stored_enter_rate: f64,
    pub stored_exit_rate: f64,
    pub max_inflight: u64,
    pub codec_speeds: Vec<CodecSpeed>,
}

#[derive(Debug, Serialize)]
pub struct CodecSpeed {
    pub codec: String,
    pub raw_bytes: usize,
    pub ratio_raw_to_wire: f64,
    pub encode_mb_per_s: f64,
    pub decode_mb_per_s: f64,
    /// Wire bytes per second the encoder produces: a link faster than this
    /// waits for the codec.
    pub encode_wire_kb_per_s: f64,
}

/// Mail-like text: the shipped mail dictionary (~1 MiB of real messages),
/// repeated. Repeats are far beyond LZ4's 64 KiB window.
pub fn pattern() -> Arc<Vec<u8>> {
    Arc::new(straw_core::codec::MAIL_V1.bytes().to_vec())
}

pub fn run_cli(args: &ThroughputArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(args.timeout), run(args))
            .await
            .map_err(|_| anyhow!("bench did not finish within {} s", args.timeout))?
    });
    // Server and client tasks run forever: don't wait for them.
    rt.shutdown_timeout(Duration::from_millis(500));
    let mut report = report?;
    if args.codec_speeds {
        report.codec_speeds = codec_speeds(&pattern())?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn codec_name(i: usize) -> String {
    match CodecId::from_u8(i as u8) {
        Some(c) => format!("{c:?}"),
        None => format!("codec {i}"),
    }
}

/// Starts upstream, server and client, moves the bytes, and reports.
pub async fn run(args: &ThroughputArgs) -> Result<ThroughputReport> {
    let up = match args.direction.as_str() {
        "down" => false,
        "up" => true,
        d => bail!("--direction {d}: want down or up"),
    };
    let port = |i: u16| -> SocketAddr {
        let p = if args.port == 0 { 0 } else { args.port + i };
        SocketAddr::from(([127, 0, 0, 1], p))
    };
    // The CM models are primed once per process; a running server or client
    // has long done so. Don't let it compete with the transfer.
    tokio::task::spawn_blocking(|| {
        for role in [Role::Server, Role::Client] {
            let c = session_config(role, &SessionOptions::default());
            for cm in [c.codec_params.cm, c.bulk_codec_params.cm]
                .into_iter()
                .flatten()
            {
                cm.warm_up()?;
            }
        }
        anyhow::Ok(())
    })
    .await??;

    let pat = pattern();
    let upstream = TcpListener::bind(port(1))
        .await
        .with_context(|| format!("upstream: cannot listen on {}", port(1)))?;
    let upstream_addr = upstream.local_addr()?;
    tokio::spawn(serve_upstream(upstream, pat.clone()));

    let dir = TempDir::new()?;
    let tunnel = straw::link::tcp::bind_listener(port(0), None)
        .with_context(|| format!("tunnel: cannot listen on {}", port(0)))?;
    let tunnel_addr = tunnel.local_addr()?;
    let local = std::net::TcpListener::bind(port(2))
        .with_context(|| format!("local service: cannot listen on {}", port(2)))?
        .local_addr()?;
    let (scfg, mut ccfg) = configs(&dir.0, tunnel_addr, upstream_addr, local)?;
    if let Some(b) = args.local_recv_buffer {
        ccfg.tcp.local_recv_buffer = b;
        ccfg.tcp.local_max_segment = 0;
    }
    if let Some(b) = args.local_recv_buffer_max {
        ccfg.tcp.local_recv_buffer_max = b;
    }
    let keypair = keys::load_private(&scfg.private_key)?;
    let authorized = keys::AuthorizedKeys::load(&scfg.authorized_keys)?;
    let state = Arc::new(straw::server::ServerState::new(scfg, keypair, authorized));
    tokio::spawn(straw::server::serve(tunnel, state));
    let stats = Arc::new(TunnelStats::default());
    tokio::spawn(straw::client::run_with_stats(ccfg, stats.clone()));

    // A small transfer first: brings the tunnel up.
    transfer(local, 4096, false, &pat)
        .await
        .context("warm-up transfer")?;
    let before = snapshot(&stats, up);
    let t = transfer(local, args.bytes, up, &pat).await?;
    let after = snapshot(&stats, up);
    let sender_rate_estimate = if up {
        stats.rate_estimate.load(Ordering::Relaxed)
    } else {
        0 // the server's session: not visible from here
    };
    let secs = t.done.as_secs_f64();
    let mb = args.bytes as f64 / 1e6;
    Ok(ThroughputReport {
        direction: args.direction.clone(),
        bytes: args.bytes,
        seconds: secs,
        mb_per_s: mb / secs,
        mb_per_s_after_first_byte: mb / (t.done - t.first).as_secs_f64().max(1e-9),
        codec_raw_bytes: (0..8)
            .filter(|&i| after.0[i] > before.0[i])
            .map(|i| (codec_name(i), after.0[i] - before.0[i]))
            .collect(),
        wire_bytes: after.1 - before.1,
        sender_rate_estimate,
        fast_enter_rate: FAST_ENTER_RATE,
        fast_exit_rate: FAST_EXIT_RATE,
        stored_enter_rate: STORED_ENTER_RATE,
        stored_exit_rate: STORED_EXIT_RATE,
        max_inflight: MAX_INFLIGHT,
        codec_speeds: Vec::new(),
    })
}

/// Per-codec raw bytes and wire bytes of the direction that carries the data.
fn snapshot(s: &TunnelStats, up: bool) -> ([u64; 8], u64) {
    let by = if up {
        &s.raw_bytes_sent_by_codec
    } else {
        &s.raw_bytes_received_by_codec
    };
    let wire = if up {
        &s.wire_bytes_sent
    } else {
        &s.wire_bytes_received
    };
    (
        std::array::from_fn(|i| by[i].load(Ordering::Relaxed)),
        wire.load(Ordering::Relaxed),
    )
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let d = std::env::temp_dir().join(format!("straw-bench-tp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(Self(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fresh keys and configs with default session and TCP options: the
/// passthrough service `bench`.
fn configs(
    dir: &std::path::Path,
    tunnel: SocketAddr,
    upstream: SocketAddr,
    local: SocketAddr,
) -> Result<(ServerConfig, ClientConfig)> {
    for who in ["server", "client"] {
        super::common::write_keys(dir, who)?;
    }
    std::fs::copy(dir.join("client.key.pub"), dir.join("authorized_clients"))?;
    let server = dir.join("server.toml");
    std::fs::write(
        &server,
        format!(
            "listen = \"{tunnel}\"\nprivate_key = \"server.key\"\n\
             authorized_keys = \"authorized_clients\"\n\
             [services]\nbench = {{ upstream = \"{upstream}\", protocol = \"tcp\" }}\n"
        ),
    )?;
    let client = dir.join("client.toml");
    std::fs::write(
        &client,
        format!(
            "server = \"{tunnel}\"\nserver_public_key = \"server.key.pub\"\n\
             private_key = \"client.key\"\n\
             [cache]\npersist = false\n[partial]\nenabled = false\n\
             [[service]]\nname = \"bench\"\nprotocol = \"tcp\"\nlisten = \"{local}\"\n"
        ),
    )?;
    Ok((ServerConfig::load(&server)?, ClientConfig::load(&client)?))
}

struct Timing {
    first: Duration,
    done: Duration,
}

/// One stream through the client's local port: `n` bytes down from the
/// upstream, or up to it, every byte checked.
async fn transfer(local: SocketAddr, n: u64, up: bool, pat: &[u8]) -> Result<Timing> {
    let mut s = connect_retry(local).await?;
    s.set_nodelay(true)?;
    let mut cmd = [0u8; 9];
    cmd[0] = if up { b'U' } else { b'D' };
    cmd[1..].copy_from_slice(&n.to_le_bytes());
    let start = Instant::now();
    s.write_all(&cmd).await?;
    if up {
        let (mut rd, mut wr) = s.into_split();
        let sender = tokio::spawn(async move { send_pattern(&mut wr, n, &pattern()).await });
        // The count comes only at the end: the overall timeout bounds this
        // wait, and the sender's writes fail on a stall.
        let mut ack = [0u8; 8];
        rd.read_exact(&mut ack)
            .await
            .context("waiting for the upstream's count")?;
        let done = start.elapsed();
        sender.await??;
        let got = u64::from_le_bytes(ack);
        if got != n {
            bail!("upstream received {got} of {n} bytes");
        }
        Ok(Timing {
            first: Duration::ZERO,
            done,
        })
    } else {
        let first = recv_pattern(&mut s, n, pat).await?;
        let done = start.elapsed();
        // Then EOF: the FIN crossed too.
        let mut b = [0u8; 1];
        match with_stall(s.read(&mut b)).await? {
            0 => {}
            _ => bail!("more than {n} bytes arrived"),
        }
        Ok(Timing {
            first: first - start,
            done,
        })
    }
}

async fn connect_retry(addr: SocketAddr) -> Result<TcpStream> {
    let mut last = None;
    for _ in 0..200 {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(anyhow!("cannot connect to {addr}: {last:?}"))
}

async fn with_stall<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T> {
    tokio::time::timeout(STALL, f)
        .await
        .map_err(|_| anyhow!("no progress for {} s", STALL.as_secs()))?
        .map_err(Into::into)
}

async fn send_pattern(w: &mut (impl AsyncWrite + Unpin), n: u64, pat: &[u8]) -> Result<()> {
    let mut sent = 0u64;
    while sent < n {
        let off = (sent % pat.len() as u64) as usize;
        let len = (pat.len() - off).min(CHUNK).min((n - sent) as usize);
        with_stall(w.write_all(&pat[off..off + len])).await?;
        sent += len as u64;
    }
    with_stall(w.shutdown()).await?;
    Ok(())
}

/// Reads exactly `n` bytes and checks them against the pattern; returns
/// when the first byte came.
async fn recv_pattern(r: &mut (impl AsyncRead + Unpin), n: u64, pat: &[u8]) -> Result<Instant> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let mut first = None;
    while got < n {
        let want = buf.len().min((n - got) as usize);
        let k = with_stall(r.read(&mut buf[..want])).await?;
        if k == 0 {
            bail!("stream ended after {got} of {n} bytes");
        }
        first.get_or_insert_with(Instant::now);
        let mut checked = 0;
        while checked < k {
            let off = ((got + checked as u64) % pat.len() as u64) as usize;
            let len = (pat.len() - off).min(k - checked);
            if buf[checked..checked + len] != pat[off..off + len] {
                bail!("wrong bytes near offset {}", got + checked as u64);
            }
            checked += len;
        }
        got += k as u64;
    }
    Ok(first.unwrap_or_else(Instant::now))
}

/// The upstream: `D n` sends n pattern bytes then closes; `U n` takes n
/// bytes, checks them, and answers with the count.
async fn serve_upstream(listener: TcpListener, pat: Arc<Vec<u8>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let pat = pat.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut cmd = [0u8; 9];
            if with_stall(s.read_exact(&mut cmd)).await.is_err() {
                return;
            }
            let n = u64::from_le_bytes(cmd[1..].try_into().expect("8 bytes"));
            let r = match cmd[0] {
                b'D' => send_pattern(&mut s, n, &pat).await,
                b'U' => match recv_pattern(&mut s, n, &pat).await {
                    Ok(_) => with_stall(s.write_all(&n.to_le_bytes())).await.map(drop),
                    Err(e) => Err(e),
                },
                _ => Err(anyhow!("bad command")),
            };
            if let Err(e) = r {
                tracing::warn!("bench upstream: {e:#}");
            }
        });
    }
}

/// Each codec alone on `text`, in records of 60 KiB (as on a fast link).
/// The text is rot13'd so that it matches neither the zstd dictionary nor
/// the CM priming (it is those texts' source): same match structure, so LZ4
/// is unaffected, while zstd and CM ratios come out on the low side.
pub fn codec_speeds(text: &[u8]) -> Result<Vec<CodecSpeed>> {
    let text: Vec<u8> = text
        .iter()
        .map(|&b| match b {
            b'a'..=b'z' => (b - b'a' + 13) % 26 + b'a',
            b'A'..=b'Z' => (b - b'A' + 13) % 26 + b'A',
            _ => b,
        })
        .collect();
    let server = session_config(Role::Server, &SessionOptions::default());
    let client = session_config(Role::Client, &SessionOptions::default());
    let cm = (server.codec_params.clone(), client.decoder_limits.clone());
    let zstd = (CodecParams::slow_link(), DecoderLimits::slow_link());
    let plain = (CodecParams::default(), DecoderLimits::default());
    let runs = [
        // Never more than the text once: the strong codecs would find the repeats.
        ("cm", CodecId::Cm, cm, text.len().min(1 << 20)),
        ("zstd-19", CodecId::Zstd, zstd, text.len()),
        ("lz4", CodecId::Lz4, plain, 64 << 20),
    ];
    let mut out = Vec::new();
    for (name, id, (p, l), len) in runs {
        let data: Vec<u8> = text.iter().copied().cycle().take(len).collect();
        let mut enc = RecordEncoder::new(&p);
        let mut dec = RecordDecoder::new(&l);
        // Priming and first allocations are not what we time.
        let mut rec = Vec::new();
        enc.encode(id, b"warm up", &mut rec)?;
        let mut plain = Vec::new();
        dec.decode(&rec, &mut plain)?;
        let mut recs = Vec::new();
        let t = Instant::now();
        for chunk in data.chunks(60 * 1024) {
            let mut r = Vec::new();
            enc.encode(id, chunk, &mut r)?;
            recs.push(r);
        }
        let enc_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for r in &recs {
            dec.decode(r, &mut plain)?;
        }
        let dec_s = t.elapsed().as_secs_f64();
        let wire: usize = recs.iter().map(Vec::len).sum();
        out.push(CodecSpeed {
            codec: name.into(),
            raw_bytes: len,
            ratio_raw_to_wire: len as f64 / wire as f64,
            encode_mb_per_s: len as f64 / 1e6 / enc_s,
            decode_mb_per_s: len as f64 / 1e6 / dec_s,
            encode_wire_kb_per_s: wire as f64 / 1e3 / enc_s,
        });
    }
    Ok(out)
}

fn print_report(r: &ThroughputReport) {
    println!(
        "one stream {} through straw on loopback: {} B in {:.2} s",
        r.direction, r.bytes, r.seconds
    );
    println!(
        "throughput  {:.1} MB/s ({:.1} MB/s after the first byte)",
        r.mb_per_s, r.mb_per_s_after_first_byte
    );
    let total: u64 = r.codec_raw_bytes.iter().map(|(_, b)| b).sum();
    for (c, b) in &r.codec_raw_bytes {
        println!(
            "codec       {c:<8} carried {b:>12} raw B ({:.1}%)",
            100.0 * *b as f64 / total.max(1) as f64
        );
    }
    println!(
        "wire        {} B (raw/wire {:.2})",
        r.wire_bytes,
        r.bytes as f64 / r.wire_bytes.max(1) as f64
    );
    println!(
        "tiers       lz4 above {:.0} kB/s measured (back below {:.0}), stored above {:.0} MB/s (back below {:.0}); in flight <= {} MiB",
        r.fast_enter_rate / 1e3,
        r.fast_exit_rate / 1e3,
        r.stored_enter_rate / 1e6,
        r.stored_exit_rate / 1e6,
        r.max_inflight >> 20
    );
    if r.sender_rate_estimate > 0 {
        println!(
            "estimate    sender measured {:.1} MB/s of wire",
            r.sender_rate_estimate as f64 / 1e6
        );
    }
    for s in &r.codec_speeds {
        println!(
            "alone       {:<8} encode {:>8.2} MB/s  decode {:>8.2} MB/s  raw/wire {:.2}  -> {:.0} kB/s of wire",
            s.codec,
            s.encode_mb_per_s,
            s.decode_mb_per_s,
            s.ratio_raw_to_wire,
            s.encode_wire_kb_per_s
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole bench, small: it terminates, checks the bytes, and the
    /// loopback link (fast) picks a cheap codec for nearly all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_moves_checked_bytes_through_a_cheap_codec() {
        straw::logging::init_for_tests();
        for direction in ["down", "up"] {
            let args = ThroughputArgs {
                bytes: 8 << 20,
                direction: direction.into(),
                port: 0,
                timeout: 60,
                json: false,
                codec_speeds: false,
                local_recv_buffer: None,
                local_recv_buffer_max: None,
            };
            let r = tokio::time::timeout(Duration::from_secs(60), run(&args))
                .await
                .expect("bench finished")
                .unwrap();
            let total: u64 = r.codec_raw_bytes.iter().map(|(_, b)| b).sum();
            // `up` also counts the 9-byte request.
            assert!((r.bytes..=r.bytes + 9).contains(&total), "{r:?}");
            let cheap: u64 = r
                .codec_raw_bytes
                .iter()
                .filter(|(c, _)| c == "Lz4" || c == "Stored")
                .map(|(_, b)| b)
                .sum();
            assert!(cheap > r.bytes * 9 / 10, "{r:?}");
            assert!(r.mb_per_s > 0.0 && r.wire_bytes > 0);
        }
    }

    #[tokio::test]
    async fn short_or_wrong_streams_are_errors() {
        let pat = pattern();
        let (mut a, mut b) = tokio::io::duplex(1024);
        let p = pat.clone();
        tokio::spawn(async move {
            let _ = b.write_all(&p[..100]).await;
        });
        let e = recv_pattern(&mut a, 200, &pat).await.unwrap_err();
        assert!(e.to_string().contains("ended after 100"), "{e}");
        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = b.write_all(b"not the pattern").await;
        });
        let e = recv_pattern(&mut a, 15, &pat).await.unwrap_err();
        assert!(e.to_string().contains("wrong bytes"), "{e}");
    }

    #[test]
    fn bad_direction_is_an_error() {
        let args = ThroughputArgs {
            bytes: 1,
            direction: "sideways".into(),
            port: 0,
            timeout: 5,
            json: false,
            codec_speeds: false,
            local_recv_buffer: None,
            local_recv_buffer_max: None,
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert!(rt.block_on(run(&args)).is_err());
    }
}
