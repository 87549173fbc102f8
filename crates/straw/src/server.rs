//! `straw server`: accepts tunnels from authorised clients and dials the real
//! servers for the streams they open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use straw_core::session::{Role, Session};
use straw_core::wire::{Hello, PROTOCOL_VERSION};
use straw_proto::passthrough::Passthrough;
use straw_proto::{Accelerator, http, imap, pop3, smtp};
use tokio::net::{TcpListener, TcpStream};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Protocol, ServerConfig, ServerHttp, ServerService, TcpOptions};
use crate::link::keys::{self, AuthorizedKeys, Keypair};
use crate::link::{noise, tcp};
use crate::tunnel::{DialFuture, Dialer, LocalIo, Tunnel, TunnelStats};

/// How long dialing a real server may take before the stream is reset.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServerState {
    pub cfg: ServerConfig,
    pub keypair: Keypair,
    pub authorized: AuthorizedKeys,
}

pub async fn run(cfg: ServerConfig) -> Result<()> {
    let keypair = keys::load_private(&cfg.private_key)?;
    let authorized = AuthorizedKeys::load(&cfg.authorized_keys)?;
    let listener = tcp::bind_listener(cfg.listen, cfg.tcp.recv_buffer)
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    info!(
        "straw server listening on {} ({} authorised clients, services: {})",
        cfg.listen,
        authorized.len(),
        cfg.services.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    serve(
        listener,
        Arc::new(ServerState {
            cfg,
            keypair,
            authorized,
        }),
    )
    .await
}

/// Accept loop; each tunnel runs in its own task.
pub async fn serve(listener: TcpListener, state: Arc<ServerState>) -> Result<()> {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait, don't spin.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(sock, peer, state).await {
                warn!("tunnel from {peer}: {e:#}");
            }
        });
    }
}

fn our_hello(cfg: &ServerConfig) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        stream_window: cfg.session.stream_window,
        max_record: straw_core::codec::DecoderLimits::default().max_record_bytes as u64,
    }
}

async fn handle(mut sock: TcpStream, peer: SocketAddr, state: Arc<ServerState>) -> Result<()> {
    let cfg = &state.cfg;
    if let Err(e) = tcp::configure_tunnel(&sock, &cfg.tcp) {
        warn!("tunnel from {peer}: socket options: {e}");
    }
    let hello = our_hello(cfg).encode();
    let handshake =
        noise::server_handshake(&mut sock, &state.keypair, &state.authorized, |_, _| {
            Ok(hello.clone())
        });
    let (transport, client_key, payload) = match tokio::time::timeout(
        Duration::from_secs(cfg.session.handshake_timeout_secs),
        handshake,
    )
    .await
    {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            warn!("rejected connection from {peer}: {e:#}");
            return Ok(());
        }
        Err(_) => {
            warn!("rejected connection from {peer}: handshake timed out");
            return Ok(());
        }
    };
    let client_hello = Hello::decode(&payload).map_err(|e| anyhow!("bad client hello: {e}"))?;
    if client_hello.version != PROTOCOL_VERSION {
        bail!(
            "client speaks protocol {}, we speak {PROTOCOL_VERSION}",
            client_hello.version
        );
    }
    let label = format!("{peer}/{}", &keys::encode_key(&client_key)[..8]);
    info!(tunnel = %label, "tunnel up");
    let mut scfg = crate::client::session_config(Role::Server, &cfg.session);
    scfg.peer_stream_window = client_hello.stream_window;
    let session = Session::new(scfg, tokio::time::Instant::now().into_std());
    let dialer = Arc::new(ServiceDialer {
        services: cfg.services.clone(),
        tcp: cfg.tcp.clone(),
        http: cfg.http.clone(),
    });
    let stats = Arc::new(TunnelStats::default());
    let tunnel = Tunnel::new(
        transport,
        session,
        Some(dialer),
        stats.clone(),
        label.clone(),
    );
    // The server never opens streams of its own.
    let (_tx, mut opens) = mpsc::channel(1);
    let result = tunnel.run(sock, &mut opens).await;
    info!(tunnel = %label, "tunnel down: {}", crate::client::describe_end(&result, &stats));
    Ok(())
}

/// Maps service names from OPEN frames to the configured upstreams, and
/// pairs each with the server side of its accelerator.
pub struct ServiceDialer {
    pub services: BTreeMap<String, ServerService>,
    pub tcp: TcpOptions,
    pub http: ServerHttp,
}

impl ServiceDialer {
    fn http_policy(&self) -> http::HttpPolicy {
        http::HttpPolicy {
            allow_private: self.http.allow_private,
            ..Default::default()
        }
    }
}

impl Dialer for ServiceDialer {
    fn needs_first_data(&self, service: &str) -> bool {
        self.services
            .get(service)
            .is_some_and(|s| s.protocol == Protocol::Http)
    }

    fn dial(&self, service: &str, first_data: Option<Bytes>) -> DialFuture {
        let svc = self.services.get(service).cloned();
        let service = service.to_owned();
        let tcp_opts = self.tcp.clone();
        let policy = self.http_policy();
        Box::pin(async move {
            let svc = svc.ok_or_else(|| anyhow!("service {service:?} is not configured"))?;
            let upstream = match svc.protocol {
                Protocol::Http => http_origin(first_data.as_deref(), &policy).await?,
                _ => svc
                    .upstream
                    .clone()
                    .ok_or_else(|| anyhow!("service {service} has no upstream"))?,
            };
            let sock = tokio::time::timeout(DIAL_TIMEOUT, tcp::connect_local(&upstream, &tcp_opts))
                .await
                .map_err(|_| anyhow!("{service}: connecting to {upstream} timed out"))?
                .with_context(|| format!("service {service}"))?;
            let accel: Box<dyn Accelerator> = match svc.protocol {
                Protocol::Tcp => Box::new(Passthrough::default()),
                Protocol::Pop3 => Box::new(pop3::ServerAccel::new()),
                Protocol::Smtp => Box::new(smtp::ServerAccel::new()),
                Protocol::Imap => Box::new(imap::ServerAccel::new(Default::default())),
                Protocol::Http => Box::new(http::ServerAccel::new(policy)),
            };
            Ok((Box::new(sock) as Box<dyn LocalIo>, accel))
        })
    }
}

/// The origin an HTTP proxy stream's first request names, checked against
/// the SSRF policy after DNS resolution (a name may point anywhere).
async fn http_origin(first: Option<&[u8]>, policy: &http::HttpPolicy) -> Result<String> {
    let first = first.ok_or_else(|| anyhow!("http: stream ended before a request"))?;
    let (host, port) =
        http::parse_target(first).ok_or_else(|| anyhow!("http: no absolute-URI request"))?;
    let target = format!("{host}:{port}");
    if !policy.allow_private {
        for addr in tokio::net::lookup_host(&target)
            .await
            .with_context(|| format!("resolving {target}"))?
        {
            if http::is_private_ip(addr.ip()) {
                bail!("http: {target} resolves to private address {}", addr.ip());
            }
        }
    }
    Ok(target)
}
