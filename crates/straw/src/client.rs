//! `straw client`: listens for the mail program and browser, and carries their
//! connections to the server over one tunnel, redialling when it drops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use straw_core::session::{Role, Session, SessionConfig};
use straw_core::wire::{Hello, PROTOCOL_VERSION};
use straw_proto::passthrough::Passthrough;
use straw_proto::{Accelerator, http, imap, pop3, smtp};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{ClientConfig, Protocol, SessionOptions, TcpOptions};
use crate::link::keys::{self, Keypair};
use crate::link::{noise, tcp};
use crate::tunnel::{OpenRequest, SharedCache, Tunnel, TunnelStats};

/// Session parameters from the config file.
pub fn session_config(role: Role, o: &SessionOptions) -> SessionConfig {
    let mut c = SessionConfig::new(role);
    c.initial_rate = o.initial_rate_bps as f64 / 8.0;
    c.inflight_secs = o.inflight_secs;
    c.record_secs = o.record_secs;
    c.stream_window = o.stream_window;
    c.max_streams = o.max_streams;
    c
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
    let mut backoff = Duration::from_secs(1);
    loop {
        match connect(&cfg, &keypair, &server_key).await {
            Ok((sock, transport, hello)) => {
                info!("tunnel to {} up", cfg.server);
                backoff = Duration::from_secs(1);
                let mut scfg = session_config(Role::Client, &cfg.session);
                scfg.peer_stream_window = hello.stream_window;
                let session = Session::new(scfg, tokio::time::Instant::now().into_std());
                let tunnel =
                    Tunnel::new(transport, session, None, stats.clone(), cfg.server.clone());
                let result = tunnel.run(sock, &mut opens).await;
                warn!(
                    "tunnel to {} down: {}",
                    cfg.server,
                    describe_end(&result, &stats)
                );
            }
            Err(e) => warn!("cannot open tunnel to {}: {e:#}", cfg.server),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

async fn connect(
    cfg: &ClientConfig,
    keypair: &Keypair,
    server_key: &[u8; 32],
) -> Result<(tokio::net::TcpStream, noise::Transport, Hello)> {
    let mut sock = tcp::connect_tunnel(&cfg.server, &cfg.tcp).await?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        stream_window: cfg.session.stream_window,
        max_record: straw_core::codec::DecoderLimits::default().max_record_bytes as u64,
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
