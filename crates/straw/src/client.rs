//! `straw client`: listens for the mail program and browser, and carries their
//! connections to the server over one tunnel, redialling when it drops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use straw_core::session::{Role, Session, SessionConfig};
use straw_core::wire::{Hello, PROTOCOL_VERSION, Resume};
use straw_proto::passthrough::Passthrough;
use straw_proto::{Accelerator, http, imap, pop3, smtp};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{ClientConfig, Protocol, SessionOptions, TcpOptions};
use crate::link::keys::{self, Keypair};
use crate::link::{noise, tcp};
use crate::tunnel::{LinkEnded, OpenRequest, SharedCache, Tunnel, TunnelStats};

/// Session parameters from the config file.
pub fn session_config(role: Role, o: &SessionOptions) -> SessionConfig {
    let mut c = SessionConfig::new(role);
    c.initial_rate = o.initial_rate_bps as f64 / 8.0;
    c.inflight_secs = o.inflight_secs;
    c.record_secs = o.record_secs;
    c.stream_window = o.stream_window;
    c.max_streams = o.max_streams;
    set_codec(&mut c, role, LinkCodec::Cm);
    c
}

/// Which codec family a tunnel's records use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkCodec {
    /// zstd: interactive records in a small default context; bulk in a
    /// 512 KiB window primed with the shipped MAIL_V1 dictionary.
    Zstd,
    /// Context mixing for both lanes, primed with the shipped mail text,
    /// sized per direction and lane (docs/codec.md).
    Cm,
}

/// Sets the codec of both lanes for `role`'s side of the tunnel.
pub fn set_codec(c: &mut SessionConfig, role: Role, codec: LinkCodec) {
    use straw_core::codec::{CodecId, CodecParams, DecoderLimits, Direction, Lane};
    match codec {
        LinkCodec::Zstd => {
            c.codec = CodecId::Zstd;
            c.codec_params = CodecParams::default();
            c.decoder_limits = DecoderLimits::default();
            let mut bulk = CodecParams::slow_link();
            bulk.window_log = 19;
            (bulk.hash_log, bulk.chain_log) = CodecParams::tables_for_window(19);
            c.bulk_codec_params = bulk;
            c.bulk_decoder_limits = DecoderLimits {
                max_window_log: 19,
                ..DecoderLimits::slow_link()
            };
        }
        LinkCodec::Cm => {
            let (send, recv) = match role {
                Role::Client => (Direction::ClientToServer, Direction::ServerToClient),
                Role::Server => (Direction::ServerToClient, Direction::ClientToServer),
            };
            c.codec = CodecId::Cm;
            c.codec_params = CodecParams::slow_link_cm(send, Lane::Interactive);
            c.decoder_limits = DecoderLimits::slow_link_cm(recv, Lane::Interactive);
            c.bulk_codec_params = CodecParams::slow_link_cm(send, Lane::Bulk);
            c.bulk_decoder_limits = DecoderLimits::slow_link_cm(recv, Lane::Bulk);
        }
    }
}

/// The codec model id this side announces in its Hello: both peers must
/// have the same CM model (algorithm, priming text, sizes per direction).
pub fn codec_model_id(c: &SessionConfig) -> u32 {
    let (sent, received) = (
        [c.codec_params.cm, c.bulk_codec_params.cm],
        [c.decoder_limits.cm, c.bulk_decoder_limits.cm],
    );
    let (c2s, s2c) = match c.role {
        Role::Client => (sent, received),
        Role::Server => (received, sent),
    };
    straw_core::codec::model_id(&[c2s[0], c2s[1], s2c[0], s2c[1]])
}

/// Primes the CM models of `role`'s config in the background, so the first
/// record of a tunnel does not wait for it.
pub fn warm_up_codec(role: Role, o: &SessionOptions) {
    let c = session_config(role, o);
    // Small (interactive) contexts first: a tunnel's first records use them,
    // and priming the big bulk context takes seconds.
    let cms = [
        c.codec_params.cm,
        c.decoder_limits.cm,
        c.bulk_codec_params.cm,
        c.bulk_decoder_limits.cm,
    ];
    std::thread::spawn(move || {
        for cm in cms.into_iter().flatten() {
            if let Err(e) = cm.warm_up() {
                warn!("codec warm-up: {e}");
            }
        }
    });
}

/// Refuses a peer whose codec model differs from ours.
pub fn check_codec_model(ours: u32, theirs: Option<u32>) -> Result<()> {
    match theirs {
        Some(id) if id == ours => Ok(()),
        Some(id) => bail!(
            "peer's codec model {id:08x} differs from ours {ours:08x}: run the same straw version on both ends"
        ),
        None => bail!("peer announced no codec model (older straw?); ours is {ours:08x}"),
    }
}

/// One line for the log when a tunnel ends.
pub fn describe_end(result: &Result<()>, stats: &TunnelStats) -> String {
    let how = match result {
        Ok(()) => "closed".to_owned(),
        Err(e) => format!("{e:#}"),
    };
    format!(
        "{how}; sent {} raw / {} wire bytes, received {} raw / {} wire bytes",
        stats.raw_bytes_sent.load(Ordering::Relaxed),
        stats.wire_bytes_sent.load(Ordering::Relaxed),
        stats.raw_bytes_received.load(Ordering::Relaxed),
        stats.wire_bytes_received.load(Ordering::Relaxed),
    )
}

pub async fn run(cfg: ClientConfig) -> Result<()> {
    run_with_stats(cfg, Arc::new(TunnelStats::default())).await
}

/// Runs the client; `stats` is updated live (tests read the backpressure bound from it).
pub async fn run_with_stats(cfg: ClientConfig, stats: Arc<TunnelStats>) -> Result<()> {
    warm_up_codec(Role::Client, &cfg.session);
    let keypair = keys::load_private(&cfg.private_key)?;
    let server_key = keys::load_public(&cfg.server_public_key)?;
    let (open_tx, mut opens) = mpsc::channel::<OpenRequest>(64);
    for svc in &cfg.services {
        let listener = tcp::bind_local_listener(svc.listen, &cfg.tcp)
            .with_context(|| format!("service {}: cannot listen on {}", svc.name, svc.listen))?;
        info!(
            "service {} ({:?}) on {}",
            svc.name, svc.protocol, svc.listen
        );
        tokio::spawn(accept_loop(
            listener,
            svc.name.clone(),
            AccelFactory {
                protocol: svc.protocol,
                cfg: cfg.clone(),
                cache: SharedCache::default(),
            },
            open_tx.clone(),
            cfg.tcp.clone(),
        ));
    }
    drop(open_tx);
    let min_backoff = Duration::from_millis(cfg.session.reconnect_min_ms.max(1));
    let max_backoff = Duration::from_millis(cfg.session.reconnect_max_ms).max(min_backoff);
    let grace = Duration::from_secs(cfg.session.resume_grace_secs);
    let mut backoff = min_backoff;
    // The session that outlives a dropped link, with what resumes it.
    let mut kept: Option<(Tunnel, Resume)> = None;
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        if kept.is_some() && down_since.is_some_and(|t| t.elapsed() > grace) {
            let (t, _) = kept.take().expect("checked");
            warn!(
                "no tunnel for {}s: giving up the session, closing {} local connections",
                grace.as_secs(),
                t.stream_count()
            );
        }
        let resume = kept.as_ref().map(|(t, r)| Resume {
            records_received: t.records_received(),
            ..r.clone()
        });
        match connect(&cfg, &keypair, &server_key, resume).await {
            Ok((sock, transport, hello)) => {
                backoff = min_backoff;
                let Some(granted) = hello.resume.clone() else {
                    // A server without resume: never keep a session for it.
                    warn!("server sent no session ticket; connections won't survive a drop");
                    kept = None;
                    let tunnel = new_tunnel(&cfg, transport, &hello, &stats);
                    let result = tunnel.run(sock, &mut opens).await;
                    warn!(
                        "tunnel to {} down: {}",
                        cfg.server,
                        describe_end(&result, &stats)
                    );
                    down_since = None;
                    tokio::time::sleep(backoff).await;
                    continue;
                };
                let mut tunnel = match kept.take() {
                    Some((mut t, old)) if old.session_id == granted.session_id => {
                        match t.resume(transport, granted.records_received) {
                            Ok(()) => {
                                info!("tunnel to {} up, session resumed", cfg.server);
                                t
                            }
                            Err(e) => {
                                // Can't happen with an honest server; the
                                // connection's keys are spent, so redial.
                                warn!("tunnel to {}: {e:#}; closing local connections", cfg.server);
                                down_since = None;
                                tokio::time::sleep(backoff).await;
                                continue;
                            }
                        }
                    }
                    old => {
                        if let Some((t, _)) = old {
                            warn!(
                                "server no longer has our session: closing {} local connections",
                                t.stream_count()
                            );
                        }
                        info!("tunnel to {} up", cfg.server);
                        new_tunnel(&cfg, transport, &hello, &stats)
                    }
                };
                down_since = None;
                match tunnel.run_link(sock, &mut opens).await {
                    Ok(LinkEnded::Lost(e)) => {
                        warn!(
                            "tunnel to {} down, keeping {} local connections for {}s: {}",
                            cfg.server,
                            tunnel.stream_count(),
                            grace.as_secs(),
                            describe_end(&Err(e), &stats)
                        );
                        kept = Some((tunnel, granted));
                        down_since = Some(tokio::time::Instant::now());
                    }
                    Ok(LinkEnded::Stopped) => {
                        kept = Some((tunnel, granted));
                        down_since = Some(tokio::time::Instant::now());
                    }
                    Ok(LinkEnded::Closed) => {
                        info!(
                            "tunnel to {} closed: {}",
                            cfg.server,
                            describe_end(&Ok(()), &stats)
                        );
                    }
                    Err(e) => warn!(
                        "tunnel to {} failed, closing local connections: {}",
                        cfg.server,
                        describe_end(&Err(e), &stats)
                    ),
                }
            }
            Err(e) => warn!("cannot open tunnel to {}: {e:#}", cfg.server),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

fn new_tunnel(
    cfg: &ClientConfig,
    transport: noise::Transport,
    hello: &Hello,
    stats: &Arc<TunnelStats>,
) -> Tunnel {
    let mut scfg = session_config(Role::Client, &cfg.session);
    scfg.peer_stream_window = hello.stream_window;
    let session = Session::new(scfg, tokio::time::Instant::now().into_std());
    Tunnel::new(transport, session, None, stats.clone(), cfg.server.clone())
}

async fn connect(
    cfg: &ClientConfig,
    keypair: &Keypair,
    server_key: &[u8; 32],
    resume: Option<Resume>,
) -> Result<(tokio::net::TcpStream, noise::Transport, Hello)> {
    let mut sock = tcp::connect_tunnel(&cfg.server, &cfg.tcp).await?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        stream_window: cfg.session.stream_window,
        max_record: straw_core::codec::DecoderLimits::default().max_record_bytes as u64,
        resume,
        codec_model: Some(codec_model_id(&session_config(Role::Client, &cfg.session))),
    };
    let (transport, payload) = tokio::time::timeout(
        Duration::from_secs(cfg.session.handshake_timeout_secs),
        noise::client_handshake(&mut sock, keypair, server_key, &hello.encode()),
    )
    .await
    .map_err(|_| anyhow!("handshake timed out"))??;
    let server_hello = Hello::decode(&payload).map_err(|e| anyhow!("bad server hello: {e}"))?;
    if server_hello.version != PROTOCOL_VERSION {
        bail!(
            "server speaks protocol {}, we speak {PROTOCOL_VERSION}",
            server_hello.version
        );
    }
    check_codec_model(
        codec_model_id(&session_config(Role::Client, &cfg.session)),
        server_hello.codec_model,
    )?;
    Ok((sock, transport, server_hello))
}

/// Makes the client side of a service's accelerator pair, handing it what
/// earlier connections cached (greetings, capabilities).
struct AccelFactory {
    protocol: Protocol,
    cfg: ClientConfig,
    cache: SharedCache,
}

impl AccelFactory {
    fn make(&self) -> Box<dyn Accelerator> {
        let cache = self.cache.lock().expect("cache lock").clone();
        match self.protocol {
            Protocol::Tcp => Box::new(Passthrough::default()),
            Protocol::Pop3 => Box::new(pop3::ClientAccel::new(
                pop3::Pop3Config {
                    prefetch: self.cfg.pop3.prefetch,
                },
                &cache,
            )),
            Protocol::Smtp => Box::new(smtp::ClientAccel::new(&cache)),
            Protocol::Imap => Box::new(imap::ClientAccel::new(&cache)),
            Protocol::Http => Box::new(http::ClientAccel::new(http::HttpPolicy {
                blocked_hosts: self.cfg.http.blocked_hosts.clone(),
                ..Default::default()
            })),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: String,
    accel: AccelFactory,
    opens: mpsc::Sender<OpenRequest>,
    tcp_opts: TcpOptions,
) {
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("service {service}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp::configure_local(&sock, &tcp_opts);
        let req = OpenRequest {
            service: service.clone(),
            io: Box::new(sock),
            accel: accel.make(),
            cache: Some(accel.cache.clone()),
        };
        if opens.send(req).await.is_err() {
            return;
        }
    }
}
