//! `straw server`: accepts tunnels from authorised clients and dials the real
//! servers for the streams they open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use straw_core::session::{Role, Session};
use straw_core::wire::{Hello, PROTOCOL_VERSION};
use straw_proto::passthrough::Passthrough;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{ServerConfig, ServerService, TcpOptions};
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

/// Maps service names from OPEN frames to the configured upstreams.
pub struct ServiceDialer {
    pub services: BTreeMap<String, ServerService>,
    pub tcp: TcpOptions,
}

impl Dialer for ServiceDialer {
    fn dial(&self, service: &str) -> DialFuture {
        let target = self.services.get(service).map(|s| s.upstream.clone());
        let service = service.to_owned();
        let tcp_opts = self.tcp.clone();
        Box::pin(async move {
            let upstream =
                target.ok_or_else(|| anyhow!("service {service:?} is not configured"))?;
            let sock = tokio::time::timeout(DIAL_TIMEOUT, tcp::connect_local(&upstream, &tcp_opts))
                .await
                .map_err(|_| anyhow!("{service}: connecting to {upstream} timed out"))?
                .with_context(|| format!("service {service}"))?;
            Ok((
                Box::new(sock) as Box<dyn LocalIo>,
                Box::new(Passthrough::default()) as Box<dyn straw_proto::Accelerator>,
            ))
        })
    }
}
