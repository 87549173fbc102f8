//! Where the server's HTTP proxy may connect: the origin a stream's first
//! request names, its port checked against `[http] connect_ports` /
//! `request_ports` (and never an SMTP port), its name resolved ONCE, every
//! address checked against the SSRF rule (global unicast only, unless
//! `allow_private`), and the connection made to those checked addresses.
//!
//! Resolving once matters: a name checked by one lookup and dialled by
//! another can answer a public address to the check and 127.0.0.1 to the
//! dial (DNS rebinding). The proxy does no TLS of its own towards origins
//! (CONNECT is raw bytes, plain requests keep their `Host` header), so the
//! name is needed for nothing after the lookup.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use straw_proto::http;
use tokio::net::TcpStream;

use crate::config::{ServerHttp, TcpOptions};
use crate::link::tcp;

/// Ports the proxy never reaches, whatever the config says: SMTP relay (25),
/// submission over TLS (465) and submission (587). An HTTP request body or a
/// CONNECT tunnel to them would make the server an open mail relay; mail
/// goes through the operator's `smtp` service instead.
pub const NEVER_PORTS: [u16; 3] = [25, 465, 587];

/// What a resolver hands back.
pub type Resolved = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Name resolution, injectable so tests can play a rebinding DNS server.
pub trait Resolver: Send + Sync {
    fn resolve(&self, host: &str, port: u16) -> Resolved;
}

/// The system resolver (getaddrinfo on tokio's blocking pool).
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolved {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A checked origin: the name and port the request gave, and the addresses
/// that name resolved to, every one of them allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub host: String,
    pub port: u16,
    pub connect: bool,
    pub addrs: Vec<SocketAddr>,
}

impl Origin {
    /// `host:port`, for messages.
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Whether the first request line is a CONNECT.
fn is_connect(first: &[u8]) -> bool {
    first.len() >= 8 && first[..8].eq_ignore_ascii_case(b"CONNECT ")
}

/// Refuses a port the rules don't allow (checked before any lookup).
pub fn check_port(rules: &ServerHttp, connect: bool, port: u16) -> Result<()> {
    if NEVER_PORTS.contains(&port) {
        bail!("http: port {port} is a mail submission/relay port, never reached by the proxy");
    }
    let (allowed, key) = if connect {
        (&rules.connect_ports, "connect_ports")
    } else {
        (&rules.request_ports, "request_ports")
    };
    if !allowed.contains(&port) {
        bail!("http: port {port} is not in [http] {key} {allowed:?}");
    }
    Ok(())
}

/// The origin the first request names, resolved once and checked: the port
/// against the rules, every address against the SSRF rule.
pub async fn resolve(
    first: Option<&[u8]>,
    rules: &ServerHttp,
    resolver: &dyn Resolver,
) -> Result<Origin> {
    let first = first.ok_or_else(|| anyhow!("http: stream ended before a request"))?;
    let (host, port) =
        http::parse_target(first).ok_or_else(|| anyhow!("http: no absolute-URI request"))?;
    let connect = is_connect(first);
    check_port(rules, connect, port)?;
    let mut origin = Origin {
        host,
        port,
        connect,
        addrs: Vec::new(),
    };
    origin.addrs = resolver
        .resolve(&origin.host, port)
        .await
        .map_err(|e| anyhow!("http: resolving {}: {e}", origin.label()))?;
    if origin.addrs.is_empty() {
        bail!("http: {} has no address", origin.label());
    }
    if !rules.allow_private
        && let Some(bad) = origin.addrs.iter().find(|a| http::is_private_ip(a.ip()))
    {
        bail!(
            "http: {} resolves to private address {}",
            origin.label(),
            bad.ip()
        );
    }
    Ok(origin)
}

/// Connects to the origin's checked addresses in turn (never resolving its
/// name again); `connect` dials one address.
pub async fn connect_checked<S, F, Fut>(origin: &Origin, mut connect: F) -> Result<S>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<S>>,
{
    let mut last = anyhow!("http: {} has no address", origin.label());
    for &a in &origin.addrs {
        match connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e.context(format!("http: connecting to {}", origin.label())),
        }
    }
    Err(last)
}

/// Resolves, checks and dials the origin of an HTTP proxy stream, all within
/// `timeout`. Returns the socket and `host:port` for messages.
pub async fn dial(
    first: Option<&[u8]>,
    rules: &ServerHttp,
    opts: &TcpOptions,
    timeout: Duration,
) -> Result<(TcpStream, String)> {
    let work = async {
        let origin = resolve(first, rules, &SystemResolver).await?;
        // A literal address: connect_local's lookup only parses it, no DNS.
        let sock = connect_checked(&origin, |a| async move {
            tcp::connect_local(&a.to_string(), opts).await
        })
        .await?;
        Ok((sock, origin.label()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow!("http: resolving and connecting took over {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers `answers[i]` to the i-th lookup (the last one after that),
    /// as a rebinding DNS server with a zero TTL does.
    struct Rebinding {
        answers: Vec<SocketAddr>,
        calls: AtomicUsize,
    }

    impl Rebinding {
        fn new(answers: &[&str]) -> Rebinding {
            Rebinding {
                answers: answers.iter().map(|a| a.parse().unwrap()).collect(),
                calls: AtomicUsize::new(0),
            }
        }
    }

    impl Resolver for Rebinding {
        fn resolve(&self, _host: &str, _port: u16) -> Resolved {
            let i = self.calls.fetch_add(1, Ordering::SeqCst);
            let a = self.answers[i.min(self.answers.len() - 1)];
            Box::pin(async move { Ok(vec![a]) })
        }
    }

    fn rules() -> ServerHttp {
        ServerHttp::default()
    }

    const GET: &[u8] = b"GET http://rebind.example/ HTTP/1.1\r\nHost: rebind.example\r\n\r\n";

    #[tokio::test]
    async fn a_rebinding_name_is_dialled_at_the_address_that_was_checked() {
        // Public to the first lookup, loopback to any later one.
        let dns = Rebinding::new(&["93.184.216.34:80", "127.0.0.1:80"]);
        let origin = resolve(Some(GET), &rules(), &dns).await.unwrap();
        let dialled = Mutex::new(Vec::new());
        let got = connect_checked(&origin, |a| {
            dialled.lock().unwrap().push(a);
            async move { Ok(a) }
        })
        .await
        .unwrap();
        assert_eq!(got, "93.184.216.34:80".parse().unwrap());
        assert_eq!(*dialled.lock().unwrap(), [got]);
        assert_eq!(
            dns.calls.load(Ordering::SeqCst),
            1,
            "resolved more than once"
        );
        assert_eq!(origin.label(), "rebind.example:80");
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_any_private_address_is_refused() {
        for answer in ["127.0.0.1:80", "[::ffff:169.254.169.254]:80", "10.0.0.1:80"] {
            let dns = Rebinding::new(&[answer]);
            let err = resolve(Some(GET), &rules(), &dns).await.unwrap_err();
            assert!(format!("{err:#}").contains("private address"), "{err:#}");
        }
        // Allowed on purpose: the same answer passes.
        let allow = ServerHttp {
            allow_private: true,
            ..rules()
        };
        let dns = Rebinding::new(&["127.0.0.1:80"]);
        assert!(resolve(Some(GET), &allow, &dns).await.is_ok());
    }

    #[tokio::test]
    async fn connect_reaches_only_the_allowed_ports_and_never_smtp() {
        let dns = Rebinding::new(&["93.184.216.34:443"]);
        let ok = resolve(
            Some(b"CONNECT a.example:443 HTTP/1.1\r\n\r\n"),
            &rules(),
            &dns,
        )
        .await
        .unwrap();
        assert!(ok.connect);
        for (req, why) in [
            (
                &b"CONNECT a.example:22 HTTP/1.1\r\n\r\n"[..],
                "connect_ports",
            ),
            (b"CONNECT a.example:25 HTTP/1.1\r\n\r\n", "never"),
            (b"CONNECT a.example:587 HTTP/1.1\r\n\r\n", "never"),
            (b"GET http://a.example:25/ HTTP/1.1\r\n\r\n", "never"),
            (b"POST http://a.example:465/ HTTP/1.1\r\n\r\n", "never"),
            (
                b"GET http://a.example:6379/ HTTP/1.1\r\n\r\n",
                "request_ports",
            ),
            (
                b"GET http://a.example:443/ HTTP/1.1\r\n\r\n",
                "request_ports",
            ),
        ] {
            let dns = Rebinding::new(&["93.184.216.34:1"]);
            let err = resolve(Some(req), &rules(), &dns).await.unwrap_err();
            assert!(format!("{err:#}").contains(why), "{err:#}");
            assert_eq!(dns.calls.load(Ordering::SeqCst), 0, "looked up anyway");
        }
        // Configured ports open up, except the SMTP ones.
        let wide = ServerHttp {
            connect_ports: vec![443, 8443, 25],
            request_ports: vec![80, 8080, 587],
            ..rules()
        };
        for (req, ok) in [
            (&b"CONNECT a.example:8443 HTTP/1.1\r\n\r\n"[..], true),
            (b"CONNECT a.example:25 HTTP/1.1\r\n\r\n", false),
            (b"GET http://a.example:8080/ HTTP/1.1\r\n\r\n", true),
            (b"GET http://a.example:587/ HTTP/1.1\r\n\r\n", false),
        ] {
            let dns = Rebinding::new(&["93.184.216.34:1"]);
            assert_eq!(resolve(Some(req), &wide, &dns).await.is_ok(), ok);
        }
    }

    #[tokio::test]
    async fn the_real_dial_connects_to_the_checked_literal() {
        // allow_private lets a loopback listener stand in for the origin.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let rules = ServerHttp {
            allow_private: true,
            request_ports: vec![port],
            ..rules()
        };
        let req = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n");
        let (sock, label) = dial(
            Some(req.as_bytes()),
            &rules,
            &TcpOptions::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(label, format!("127.0.0.1:{port}"));
        let (_, from) = l.accept().await.unwrap();
        assert_eq!(from, sock.local_addr().unwrap());
    }
}
