//! A client and a server tunnel in one process over a simulated link, for
//! tests on tokio's paused clock (no sockets, no real time).

use std::sync::Arc;

use straw::client::session_config;
use straw::config::SessionOptions;
use straw::link::keys::{self, AuthorizedKeys};
use straw::link::noise;
use straw::tunnel::{Dialer, OpenRequest, Tunnel, TunnelStats};
use straw_core::session::{Role, Session};
use straw_proto::passthrough::Passthrough;
use straw_tools::linksim::{Link, relay};
use tokio::io::{AsyncRead, AsyncReadExt, DuplexStream, duplex};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Both tunnels after the handshake, each with the end of the link it runs on.
pub struct Tunnels {
    pub client: Tunnel,
    pub client_io: DuplexStream,
    pub client_stats: Arc<TunnelStats>,
    pub server: Tunnel,
    pub server_io: DuplexStream,
}

/// Handshakes a client and a server (dialing through `dialer`) across
/// `link`, with fresh keys and the session options `opts`.
pub async fn tunnels_over(
    link: &Arc<Link>,
    dialer: Arc<dyn Dialer>,
    opts: &SessionOptions,
) -> Tunnels {
    let (mut client_io, sim_a) = duplex(64 * 1024);
    let (sim_b, mut server_io) = duplex(64 * 1024);
    let l = link.clone();
    tokio::spawn(async move {
        let _ = relay(sim_a, sim_b, &l).await;
    });
    let server_keys = keys::generate();
    let client_keys = keys::generate();
    let mut authorized = AuthorizedKeys::default();
    authorized.insert(client_keys.public);
    let (server, client) = tokio::join!(
        noise::server_handshake(&mut server_io, &server_keys, &authorized, |_, _| Ok(
            Vec::new()
        )),
        noise::client_handshake(&mut client_io, &client_keys, &server_keys.public, &[]),
    );
    let session = |role| Session::new(session_config(role, opts), Instant::now().into_std());
    let client_stats = Arc::new(TunnelStats::default());
    Tunnels {
        client: Tunnel::new(
            client.unwrap().0,
            session(Role::Client),
            None,
            client_stats.clone(),
            "client".into(),
        ),
        client_io,
        client_stats,
        server: Tunnel::new(
            server.unwrap().0,
            session(Role::Server),
            Some(dialer),
            Arc::new(TunnelStats::default()),
            "server".into(),
        ),
        server_io,
    }
}

/// Opens a passthrough stream to `service` on the client tunnel; returns
/// the program's end.
pub async fn open_passthrough(opens: &mpsc::Sender<OpenRequest>, service: &str) -> DuplexStream {
    let (local, app) = duplex(4096);
    opens
        .send(OpenRequest {
            service: service.into(),
            io: Box::new(local),
            accel: Box::new(Passthrough::default()),
            cache: None,
            warm_up: false,
        })
        .await
        .unwrap();
    app
}

/// Reads until the bytes so far end in CRLF; panics if `io` closes first.
pub async fn read_line<R: AsyncRead + Unpin>(io: &mut R) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n") {
        got.push(io.read_u8().await.expect("stream closed before a line"));
    }
    got
}
