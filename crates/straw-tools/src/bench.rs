//! `straw bench codec`: a mail corpus through the real session, record and
//! codec path, next to what deflate and xz make of the same bytes.
//!
//! A server and a client [`Session`] run back to back in memory over a
//! simulated link (a [`straw_linkmodel::Pipe`] each way: rate, one-way delay,
//! Noise's bytes per record), so record sizes, acks and flushes are those the
//! tunnel would produce. Each message is sent server→client with a
//! flush after it, as a POP3 RETR answer would be.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde::Serialize;
use straw_core::codec::{CmParams, CodecParams, DictKind, Dictionary};
use straw_core::session::{Event, Priority, Role, Session, SessionConfig};
use straw_linkmodel::{LinkModel, Pipe};

use straw::client::{LinkCodec, session_config, set_codec};
use straw::config::SessionOptions;

mod common;
pub mod flood;
pub mod idle_flood;
pub mod load;
pub mod throughput;

/// Bytes Noise adds to every record: a 2-byte length and a 16-byte tag.
pub const NOISE_OVERHEAD: usize = 18;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Compress a corpus of messages through the real record and codec path.
    Codec(CodecBenchArgs),
    /// Build a dictionary from training corpora (used by scripts/train-dicts).
    TrainDict(TrainDictArgs),
    /// One stream through a real server and client on loopback: MB/s and
    /// the codec that carried it (see docs/codec.md).
    Throughput(throughput::ThroughputArgs),
    /// A client's tunnel coming up while thousands of idle unauthenticated
    /// connections are held against a real server at a low fd limit.
    IdleFlood(idle_flood::IdleFloodArgs),
    /// An authorised client floods a real server while another tunnel's
    /// echo is timed: peak RSS vs the memory budget, echo p50/p99.
    Flood(flood::FloodArgs),
    /// Many real tunnels against a real server at its defaults (issue 11):
    /// handshakes/s, RSS per idle and busy tunnel, echo p50/p99, MB/s.
    Load(load::LoadArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TrainDictArgs {
    /// Where to write the dictionary.
    #[arg(long)]
    pub out: PathBuf,
    /// `prefix` (raw sample text), `trained` (zstd's ZDICT trainer),
    /// `prime` (a CM priming text: a prefix, zstd-compressed) or `static`
    /// (the CM static match text: the messages the 1 MiB prefix leaves out).
    #[arg(long, default_value = "prefix")]
    pub kind: String,
    /// Dictionary size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub size: usize,
    /// Training directories of `*.txt` messages. Never the evaluation sets.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
}

/// How many messages at the end of `msgs` fit in `budget` bytes together.
fn tail_fitting(msgs: &[Vec<u8>], budget: usize) -> usize {
    let mut n = 0;
    msgs.iter()
        .rev()
        .take_while(|m| {
            n += m.len();
            n <= budget
        })
        .count()
}

/// A prefix dictionary: whole messages from the end of each corpus (taken in
/// equal shares, in name order), so the bytes nearest the data - which zstd
/// reaches with the cheapest offsets - are typical recent mail.
pub fn build_prefix(corpora: &[Vec<Vec<u8>>], size: usize) -> Vec<u8> {
    let share = size / corpora.len().max(1);
    corpora
        .iter()
        .map(|msgs| msgs[msgs.len() - tail_fitting(msgs, share)..].concat())
        .collect::<Vec<_>>()
        .concat()
}

/// The CM static match text: every message of each corpus that the 1 MiB
/// priming text (`build_prefix`) does not hold, in name order, up to `size`
/// bytes in equal shares (nearest the priming messages first). Keeping the
/// priming messages out means priming teaches the mixer how far to trust
/// the static matches on text it has not seen verbatim.
pub fn build_static(corpora: &[Vec<Vec<u8>>], size: usize) -> Vec<u8> {
    let share = size / corpora.len().max(1);
    let prime_share = (1usize << 20) / corpora.len().max(1);
    corpora
        .iter()
        .map(|msgs| {
            let rest = &msgs[..msgs.len() - tail_fitting(msgs, prime_share)];
            rest[rest.len() - tail_fitting(rest, share)..].concat()
        })
        .collect::<Vec<_>>()
        .concat()
}

pub fn run_train_cli(args: &TrainDictArgs) -> anyhow::Result<()> {
    let corpora = args
        .dirs
        .iter()
        .map(|d| load_corpus(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dict = match args.kind.as_str() {
        "prefix" => build_prefix(&corpora, args.size),
        "prime" => zstd::bulk::compress(&build_prefix(&corpora, args.size), 19)?,
        "static" => build_static(&corpora, args.size),
        "trained" => {
            let samples: Vec<&Vec<u8>> = corpora.iter().flatten().collect();
            zstd::dict::from_samples(&samples, args.size).context("training")?
        }
        k => bail!("--kind {k}: want prefix, prime, static or trained"),
    };
    std::fs::write(&args.out, &dict).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {} ({} B)", args.out.display(), dict.len());
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct CodecBenchArgs {
    /// Directory of messages (`*.txt`), sent in name order.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Codec of both lanes: `cm` (the slow-link default) or `zstd`.
    #[arg(long, default_value = "cm")]
    pub codec: String,
    /// CM: override the server→client bulk context's table / match logs.
    #[arg(long)]
    pub cm_table_log: Option<u8>,
    #[arg(long)]
    pub cm_match_log: Option<u8>,
    /// CM priming: `builtin`, `none`, or a text file (all contexts).
    #[arg(long, default_value = "builtin")]
    pub prime: String,
    /// CM: also print wire bytes for these bulk table logs (e.g. 18,20,22).
    #[arg(long, value_delimiter = ',')]
    pub cm_curve: Vec<u8>,
    /// zstd dictionary: `builtin`, `none`, `prefix:FILE` or `trained:FILE`.
    #[arg(long, default_value = "builtin")]
    pub dict: String,
    /// Override the zstd window log of the shipped parameters.
    #[arg(long)]
    pub window_log: Option<u32>,
    #[arg(long)]
    pub hash_log: Option<u32>,
    #[arg(long)]
    pub chain_log: Option<u32>,
    #[arg(long)]
    pub level: Option<i32>,
    /// Also print wire bytes and memory for these window logs (e.g. 16,18,20).
    #[arg(long, value_delimiter = ',')]
    pub curve: Vec<u32>,
    /// Experiment: also print the codec alone with records of these raw sizes
    /// (0 = one record per message), without the session.
    #[arg(long, value_delimiter = ',')]
    pub chunks: Vec<usize>,
    /// Skip xz -9e (slow on big corpora).
    #[arg(long)]
    pub no_xz: bool,
    /// Simulated link rate, bytes per second (to the nearest bit/s).
    #[arg(long, default_value_t = 240.0)]
    pub rate: f64,
    /// Simulated one-way delay, seconds.
    #[arg(long, default_value_t = 0.5)]
    pub delay: f64,
}

/// What one corpus cost through a simulated tunnel.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelRun {
    pub raw_bytes: u64,
    /// Server→client records, codec byte included.
    pub wire_bytes: u64,
    pub records: u64,
    /// `wire_bytes` plus Noise's length and tag per record.
    pub wire_bytes_with_noise: u64,
    pub server_codec_memory_bytes: usize,
    pub client_codec_memory_bytes: usize,
    /// Simulated link time until the client had every byte.
    pub link_seconds: f64,
}

/// The bench's link: `rate_bps` and `delay`, each record one packet carrying
/// Noise's length and tag (TCP/IP headers left out, as in `wire_bytes`).
pub fn bench_link(rate_bps: u64, delay: Duration) -> LinkModel {
    LinkModel::per_packet(rate_bps, delay, NOISE_OVERHEAD)
}

/// Puts every record the session has ready on the link while it is free, as
/// with a small TCP_NOTSENT_LOWAT.
fn transmit(pipe: &mut Pipe<Bytes>, s: &mut Session, now: Instant) -> bool {
    let mut sent = false;
    while pipe.is_idle(now) {
        let Some(r) = s.poll_transmit(now) else { break };
        pipe.push(now, r);
        sent = true;
    }
    sent
}

/// Hands every record that has arrived by `now` to `s`.
fn deliver(pipe: &mut Pipe<Bytes>, s: &mut Session, now: Instant) -> anyhow::Result<bool> {
    let mut any = false;
    while let Some(r) = pipe.pop(now) {
        s.handle_record(now, &r)?;
        any = true;
    }
    Ok(any)
}

/// Sends `messages` server→client through two sessions over `link`, each
/// message flushed, and checks the client got exactly those bytes. `cfg`
/// makes each side's session config.
pub fn run_tunnel(
    messages: &[Vec<u8>],
    cfg: &dyn Fn(Role) -> SessionConfig,
    link: LinkModel,
) -> anyhow::Result<TunnelRun> {
    let t0 = Instant::now();
    let mut now = t0;
    let mut server = Session::new(cfg(Role::Server), now);
    let mut client = Session::new(cfg(Role::Client), now);
    let cstream = client.open_stream(b"pop3", b"", Priority::Interactive)?;
    let (mut s2c, mut c2s) = (Pipe::new(link), Pipe::new(link));
    let expected: Vec<u8> = messages.concat();
    let mut received = 0usize;
    let mut sstream = None;
    let (mut msg, mut off) = (0usize, 0usize);

    while received < expected.len() {
        let mut progress =
            deliver(&mut s2c, &mut client, now)? | deliver(&mut c2s, &mut server, now)?;
        while let Some(ev) = server.poll_event() {
            if let Event::Opened { stream, .. } = ev {
                // As the POP3 accelerator marks RETR replies.
                server.set_priority(stream, Priority::Bulk);
                sstream = Some(stream);
            }
        }
        while let Some(ev) = client.poll_event() {
            if let Event::Data {
                stream, payload, ..
            } = ev
            {
                let end = received + payload.len();
                if stream != cstream || expected.get(received..end) != Some(&payload[..]) {
                    bail!("client received wrong bytes at offset {received}");
                }
                received = end;
                client.consumed(stream, payload.len());
                progress = true;
            }
        }
        if let Some(st) = sstream {
            while msg < messages.len() {
                let m = &messages[msg];
                let n = server.send_capacity(st).min(m.len() - off);
                if n == 0 && !m.is_empty() {
                    break;
                }
                server.send(st, &m[off..off + n])?;
                off += n;
                progress = true;
                if off == m.len() {
                    server.flush(st);
                    msg += 1;
                    off = 0;
                }
            }
        }
        progress |= transmit(&mut s2c, &mut server, now);
        progress |= transmit(&mut c2s, &mut client, now);
        if progress {
            continue;
        }
        let next = [
            s2c.next_arrival(),
            c2s.next_arrival(),
            s2c.wire().free_at(),
            c2s.wire().free_at(),
            server.poll_timeout(),
            client.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min();
        now = next.ok_or_else(|| anyhow!("tunnel stalled after {received} bytes"))?;
    }
    let s2c = s2c.stats();
    Ok(TunnelRun {
        raw_bytes: expected.len() as u64,
        wire_bytes: s2c.bytes,
        records: s2c.segments,
        wire_bytes_with_noise: s2c.bytes + s2c.segments * NOISE_OVERHEAD as u64,
        server_codec_memory_bytes: server.codec_memory_bytes(),
        client_codec_memory_bytes: client.codec_memory_bytes(),
        link_seconds: (now - t0).as_secs_f64(),
    })
}

/// The codec alone, no session: each message cut into records of at most
/// `chunk` raw bytes (0: one record per message). Returns the record bytes.
pub fn codec_only_bytes(
    messages: &[Vec<u8>],
    params: &CodecParams,
    chunk: usize,
) -> anyhow::Result<u64> {
    let mut enc = straw_core::codec::RecordEncoder::new(params);
    let mut total = 0u64;
    let mut rec = Vec::new();
    for m in messages {
        let n = if chunk == 0 { m.len().max(1) } else { chunk };
        for c in m.chunks(n) {
            rec.clear();
            enc.encode(straw_core::codec::CodecId::Zstd, c, &mut rec)?;
            total += rec.len() as u64;
        }
    }
    Ok(total)
}

/// One deflate stream (level 9) with a sync flush after every message, as
/// IMAP COMPRESS or `ssh -C` would send it.
pub fn deflate_stream_bytes(messages: &[Vec<u8>]) -> anyhow::Result<u64> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    for m in messages {
        enc.write_all(m)?;
        enc.flush()?;
    }
    Ok(enc.finish()?.len() as u64)
}

/// `xz -9e` on the whole concatenation, no flushes (runs the xz binary).
pub fn xz_bytes(messages: &[Vec<u8>]) -> anyhow::Result<u64> {
    let mut child = Command::new("xz")
        .args(["-9e", "-T1", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running xz (install xz-utils, or pass --no-xz)")?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = messages.concat();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow!("xz writer panicked"))??;
    if !out.status.success() {
        bail!("xz failed: {}", out.status);
    }
    Ok(out.stdout.len() as u64)
}

/// The `*.txt` files of `dir`, in name order.
pub fn load_corpus(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "txt") && p.is_file() {
            paths.push(p);
        }
    }
    paths.sort();
    if paths.is_empty() {
        bail!("no *.txt messages in {}", dir.display());
    }
    paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

/// Parses `--dict`.
pub fn parse_dict(spec: &str) -> anyhow::Result<Option<Dictionary>> {
    let load = |kind, path: &str| -> anyhow::Result<Option<Dictionary>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        Ok(Some(Dictionary::leak(0xFFFF_FFFF, kind, bytes)?))
    };
    match spec.split_once(':') {
        _ if spec == "builtin" => Ok(Some(straw_core::codec::MAIL_V1)),
        _ if spec == "none" => Ok(None),
        Some(("prefix", path)) => load(DictKind::Prefix, path),
        Some(("trained", path)) => load(DictKind::Trained, path),
        _ => bail!("--dict: want builtin, none, prefix:FILE or trained:FILE"),
    }
}

#[derive(Debug, Serialize)]
struct Report {
    corpus: String,
    messages: usize,
    codec: String,
    /// The model id the Hello would carry.
    codec_model_id: u32,
    /// CM sizes of the server→client bulk context.
    cm_table_log: Option<u8>,
    cm_match_log: Option<u8>,
    cm_priming: Option<u32>,
    dictionary_id: Option<u32>,
    dictionary_shared_bytes: usize,
    window_log: u32,
    hash_log: u32,
    chain_log: u32,
    level: i32,
    raw_bytes: u64,
    wire_bytes: u64,
    wire_bytes_with_noise: u64,
    records: u64,
    deflate_stream_bytes: u64,
    xz_bytes: Option<u64>,
    ratio_raw_to_wire: f64,
    wire_vs_xz: Option<f64>,
    wire_with_noise_vs_xz: Option<f64>,
    wire_vs_deflate: f64,
    wire_with_noise_vs_deflate: f64,
    /// What the server holds per tunnel with every context in use: for CM the
    /// four contexts' allocation (encoder and decoder, both lanes); for zstd
    /// the server encoder plus a decoder of the same parameters, measured.
    codec_memory_bytes_per_tunnel: usize,
    /// CM static match texts and their indexes: held once per process,
    /// shared by every tunnel.
    shared_static_bytes: usize,
    server_encoder_memory_bytes: usize,
    client_decoder_memory_bytes: usize,
    link_seconds: f64,
    /// Raw megabytes per second of the whole simulated run (both sides).
    throughput_mb_per_s: f64,
    curve: Vec<CurvePoint>,
}

#[derive(Debug, Serialize)]
struct CurvePoint {
    window_log: u32,
    hash_log: u32,
    chain_log: u32,
    cm_table_log: Option<u8>,
    wire_bytes: u64,
    wire_bytes_with_noise: u64,
    codec_memory_bytes_per_tunnel: usize,
}

/// What the bench changes in the shipped slow-link session config.
#[derive(Debug, Clone)]
struct Overrides {
    codec: LinkCodec,
    /// CM sizes of the server→client bulk context.
    cm_table_log: Option<u8>,
    cm_match_log: Option<u8>,
    /// `Some(p)`: priming of every CM context.
    prime: Option<Option<u32>>,
    dict: Option<Dictionary>,
    window_log: Option<u32>,
    hash_log: Option<u32>,
    chain_log: Option<u32>,
    level: Option<i32>,
}

impl Overrides {
    fn from_args(args: &CodecBenchArgs) -> anyhow::Result<Self> {
        let codec = match args.codec.as_str() {
            "cm" => LinkCodec::Cm,
            "zstd" => LinkCodec::Zstd,
            c => bail!("--codec {c}: want cm or zstd"),
        };
        let prime = match args.prime.as_str() {
            "builtin" => None,
            "none" => Some(None),
            path => {
                let text = std::fs::read(path).with_context(|| format!("reading {path}"))?;
                Some(Some(straw_core::codec::register_priming_text(text)))
            }
        };
        Ok(Self {
            codec,
            cm_table_log: args.cm_table_log,
            cm_match_log: args.cm_match_log,
            prime,
            dict: parse_dict(&args.dict)?,
            window_log: args.window_log,
            hash_log: args.hash_log,
            chain_log: args.chain_log,
            level: args.level,
        })
    }

    /// The slow-link session config for `role` with these changes.
    fn config(&self, role: Role) -> SessionConfig {
        let mut c = session_config(role, &SessionOptions::default());
        set_codec(&mut c, role, self.codec);
        // As `straw server` sends a POP3 service's replies: base64 decoded.
        c.transform_services = vec![b"pop3".to_vec()];
        let cms = [
            &mut c.codec_params.cm,
            &mut c.bulk_codec_params.cm,
            &mut c.decoder_limits.cm,
            &mut c.bulk_decoder_limits.cm,
        ];
        for cm in cms.into_iter().flatten() {
            if let Some(p) = self.prime {
                cm.priming = p;
            }
        }
        // The server→client bulk context: the server's encoder, the client's decoder.
        let (enc, dec) = (&mut c.bulk_codec_params, &mut c.bulk_decoder_limits);
        let s2c_cm = match role {
            Role::Server => &mut enc.cm,
            Role::Client => &mut dec.cm,
        };
        if let Some(cm) = s2c_cm {
            cm.table_log = self.cm_table_log.unwrap_or(cm.table_log);
            cm.match_log = self.cm_match_log.unwrap_or(cm.match_log);
        }
        if self.codec == LinkCodec::Zstd {
            enc.dictionary = self.dict;
            dec.dictionary = self.dict;
            if let Some(w) = self.window_log {
                enc.window_log = w;
                dec.max_window_log = w;
                (enc.hash_log, enc.chain_log) = CodecParams::tables_for_window(w);
            }
            enc.hash_log = self.hash_log.unwrap_or(enc.hash_log);
            enc.chain_log = self.chain_log.unwrap_or(enc.chain_log);
            enc.zstd_level = self.level.unwrap_or(enc.zstd_level);
        }
        c
    }
}

/// Bytes of codec state a server holds per tunnel with all four CM contexts
/// in use, or `None` if the config has no CM context.
fn cm_budget(server: &SessionConfig) -> Option<usize> {
    let cms = [
        server.codec_params.cm,
        server.bulk_codec_params.cm,
        server.decoder_limits.cm,
        server.bulk_decoder_limits.cm,
    ];
    if cms.iter().all(Option::is_none) {
        return None;
    }
    Some(cms.iter().flatten().map(CmParams::memory_bytes).sum())
}

fn per_tunnel(o: &Overrides, r: &TunnelRun) -> usize {
    cm_budget(&o.config(Role::Server))
        .unwrap_or(r.server_codec_memory_bytes + r.client_codec_memory_bytes)
}

pub fn run_codec_cli(args: &CodecBenchArgs) -> anyhow::Result<()> {
    let messages = load_corpus(&args.corpus)?;
    let o = Overrides::from_args(args)?;
    let server_cfg = o.config(Role::Server);
    server_cfg.bulk_codec_params.validate()?;
    if !(args.rate >= 0.125 && args.rate.is_finite()) {
        bail!("--rate {}: want at least 0.125 bytes per second", args.rate);
    }
    let link = bench_link(
        (args.rate * 8.0).round() as u64,
        Duration::try_from_secs_f64(args.delay)
            .map_err(|_| anyhow!("--delay {}: not a number of seconds", args.delay))?,
    );
    let started = Instant::now();
    let run = run_tunnel(&messages, &|role| o.config(role), link)?;
    let secs = started.elapsed().as_secs_f64();
    let deflate = deflate_stream_bytes(&messages)?;
    let xz = if args.no_xz {
        None
    } else {
        Some(xz_bytes(&messages)?)
    };
    for &c in &args.chunks {
        eprintln!(
            "codec only, chunk {c}: {} B",
            codec_only_bytes(&messages, &server_cfg.bulk_codec_params, c)?
        );
    }
    let mut curve = Vec::new();
    let bulk = &server_cfg.bulk_codec_params;
    for &w in &args.curve {
        let (h, c) = CodecParams::tables_for_window(w);
        let o = Overrides {
            codec: LinkCodec::Zstd,
            window_log: Some(w),
            hash_log: Some(h),
            chain_log: Some(c),
            ..o.clone()
        };
        let r = run_tunnel(&messages, &|role| o.config(role), link)?;
        curve.push(CurvePoint {
            window_log: w,
            hash_log: h,
            chain_log: c,
            cm_table_log: None,
            wire_bytes: r.wire_bytes,
            wire_bytes_with_noise: r.wire_bytes_with_noise,
            codec_memory_bytes_per_tunnel: per_tunnel(&o, &r),
        });
    }
    for &t in &args.cm_curve {
        let o = Overrides {
            codec: LinkCodec::Cm,
            cm_table_log: Some(t),
            ..o.clone()
        };
        let r = run_tunnel(&messages, &|role| o.config(role), link)?;
        curve.push(CurvePoint {
            window_log: 0,
            hash_log: 0,
            chain_log: 0,
            cm_table_log: Some(t),
            wire_bytes: r.wire_bytes,
            wire_bytes_with_noise: r.wire_bytes_with_noise,
            codec_memory_bytes_per_tunnel: per_tunnel(&o, &r),
        });
    }
    let ratio = |a: u64, b: u64| a as f64 / b as f64;
    let report = Report {
        corpus: args.corpus.display().to_string(),
        messages: messages.len(),
        codec: args.codec.clone(),
        codec_model_id: straw::client::codec_model_id(&server_cfg),
        cm_table_log: bulk.cm.map(|c| c.table_log),
        cm_match_log: bulk.cm.map(|c| c.match_log),
        cm_priming: bulk.cm.and_then(|c| c.priming),
        dictionary_id: bulk.dictionary.map(|d| d.id()),
        dictionary_shared_bytes: bulk.dictionary.map_or(0, |d| d.bytes().len()),
        window_log: bulk.window_log,
        hash_log: bulk.hash_log,
        chain_log: bulk.chain_log,
        level: bulk.zstd_level,
        raw_bytes: run.raw_bytes,
        wire_bytes: run.wire_bytes,
        wire_bytes_with_noise: run.wire_bytes_with_noise,
        records: run.records,
        deflate_stream_bytes: deflate,
        xz_bytes: xz,
        ratio_raw_to_wire: ratio(run.raw_bytes, run.wire_bytes),
        wire_vs_xz: xz.map(|x| ratio(run.wire_bytes, x)),
        wire_with_noise_vs_xz: xz.map(|x| ratio(run.wire_bytes_with_noise, x)),
        wire_vs_deflate: ratio(run.wire_bytes, deflate),
        wire_with_noise_vs_deflate: ratio(run.wire_bytes_with_noise, deflate),
        codec_memory_bytes_per_tunnel: per_tunnel(&o, &run),
        shared_static_bytes: straw_core::codec::shared_static_bytes(),
        server_encoder_memory_bytes: run.server_codec_memory_bytes,
        client_decoder_memory_bytes: run.client_codec_memory_bytes,
        link_seconds: run.link_seconds,
        throughput_mb_per_s: run.raw_bytes as f64 / 1e6 / secs,
        curve,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    let mib = |b: usize| b as f64 / 1048576.0;
    let of = |b: u64| format!("{:>10} B  raw/x {:>5.2}", b, r.raw_bytes as f64 / b as f64);
    println!("corpus      {} ({} messages)", r.corpus, r.messages);
    if let (Some(t), Some(m)) = (r.cm_table_log, r.cm_match_log) {
        println!(
            "codec       cm (bulk s2c table 2^{t} B, match history 2^{m} B, priming {:?}), model id {:08x}",
            r.cm_priming, r.codec_model_id
        );
    } else {
        println!(
            "codec       zstd level {} window {} hash {} chain {}, dictionary {}",
            r.level,
            r.window_log,
            r.hash_log,
            r.chain_log,
            r.dictionary_id.map_or("none".into(), |id| format!(
                "{id} ({} B shared)",
                r.dictionary_shared_bytes
            ))
        );
    }
    println!("raw         {:>10} B", r.raw_bytes);
    println!("wire        {}  ({} records)", of(r.wire_bytes), r.records);
    println!("wire+noise  {}", of(r.wire_bytes_with_noise));
    println!(
        "deflate -9  {}  (one stream, sync flush per message)",
        of(r.deflate_stream_bytes)
    );
    if let Some(x) = r.xz_bytes {
        println!("xz -9e      {}  (whole concatenation, no flushes)", of(x));
        println!(
            "wire/xz     {:.3}   wire+noise/xz      {:.3}",
            r.wire_vs_xz.unwrap_or(0.0),
            r.wire_with_noise_vs_xz.unwrap_or(0.0)
        );
    }
    println!(
        "wire/deflate {:.3}  wire+noise/deflate {:.3}",
        r.wire_vs_deflate, r.wire_with_noise_vs_deflate
    );
    println!(
        "memory      {:.2} MiB per tunnel (measured: server {:.2}, client {:.2})",
        mib(r.codec_memory_bytes_per_tunnel),
        mib(r.server_encoder_memory_bytes),
        mib(r.client_decoder_memory_bytes)
    );
    println!(
        "shared      {:.2} MiB per process (CM static match text + index)",
        mib(r.shared_static_bytes)
    );
    println!(
        "speed       {:.2} MB/s raw through both sessions",
        r.throughput_mb_per_s
    );
    println!("link time   {:.0} s at the simulated rate", r.link_seconds);
    if !r.curve.is_empty() {
        println!("window  hash chain cm-table      wire B  wire+noise B  MiB/tunnel");
        for c in &r.curve {
            println!(
                "{:>6} {:>5} {:>5} {:>8} {:>11} {:>13} {:>11.2}",
                c.window_log,
                c.hash_log,
                c.chain_log,
                c.cm_table_log.map_or("-".into(), |t| t.to_string()),
                c.wire_bytes,
                c.wire_bytes_with_noise,
                mib(c.codec_memory_bytes_per_tunnel)
            );
        }
    }
}

#[cfg(test)]
mod tests;
