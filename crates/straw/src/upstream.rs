//! TLS from `straw server` to the real servers (rustls): implicit TLS, or
//! STARTTLS negotiated here before the accelerator sees the connection.
//!
//! After STARTTLS the accelerator gets the TLS stream with the server's
//! greeting replayed in front of it, so it sees what it would see on a plain
//! connection (SMTP then sends EHLO again, as RFC 3207 requires). IMAP
//! capabilities change with TLS (e.g. LOGINDISABLED goes away), so a
//! `[CAPABILITY ...]` code in the greeting is replaced by the post-TLS list.
//! The dialogues are straw-proto's sans-IO machines (`smtp::StartTls` and
//! the like), run by `dialogue::drive`; a failure names the server.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, anyhow, bail};
use bytes::{Buf, Bytes};
use straw_proto::{Dialogue, imap, pop3, smtp};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::config::{Protocol, ServerService, UpstreamTls};
use crate::dialogue::{DriveError, Stop, drive};
use crate::tunnel::LocalIo;

/// A rustls client config trusting the certificates in `ca_file` (PEM), or
/// the system's roots when there is none.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading CA file {}", path.display()))?;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| anyhow!("CA file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| anyhow!("CA file {}: bad certificate: {e}", path.display()))?;
                n += 1;
            }
            if n == 0 {
                bail!("CA file {}: no PEM certificates in it", path.display());
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                bail!(
                    "no system root certificates found{why}: install ca-certificates or set ca_file"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The name the server's certificate must carry: `tls_name`, or the host
/// part of `upstream` (an IP address is checked against IP SANs).
pub fn server_name(tls_name: Option<&str>, upstream: &str) -> Result<ServerName<'static>> {
    let host = match tls_name {
        Some(n) => n,
        None => upstream_host(upstream),
    };
    ServerName::try_from(host.to_owned())
        .map_err(|_| anyhow!("{host:?} is not a valid TLS server name (set tls_name)"))
}

fn upstream_host(upstream: &str) -> &str {
    if let Some(rest) = upstream.strip_prefix('[')
        && let Some((h, _)) = rest.split_once(']')
    {
        return h;
    }
    upstream.rsplit_once(':').map_or(upstream, |(h, _)| h)
}

/// Puts TLS on a fresh upstream connection as `svc.tls` says. `None` returns
/// the socket unchanged.
pub async fn secure(
    sock: TcpStream,
    svc: &ServerService,
    upstream: &str,
) -> Result<Box<dyn LocalIo>> {
    if svc.tls == UpstreamTls::None {
        return Ok(Box::new(sock));
    }
    let config = match &svc.tls_config {
        Some(c) => c.clone(),
        None => client_config(svc.ca_file.as_deref())?,
    };
    let name = server_name(svc.tls_name.as_deref(), upstream)?;
    let connector = TlsConnector::from(config);
    let handshake = |sock: TcpStream| {
        let name = name.clone();
        let connector = connector.clone();
        async move {
            connector.connect(name.clone(), sock).await.map_err(|e| {
                anyhow!(
                    "TLS handshake with {upstream} (name {}) failed: {e}",
                    name.to_str()
                )
            })
        }
    };
    match svc.tls {
        UpstreamTls::None => unreachable!("handled above"),
        UpstreamTls::Implicit => Ok(Box::new(handshake(sock).await?)),
        UpstreamTls::Starttls => {
            let mut sock = sock;
            let mut d = starttls_dialogue(svc.protocol, &sock)?;
            let failed = |e: DriveError| anyhow!("STARTTLS with {upstream}: {e}");
            let first = d.step(&[]).map_err(|e| failed(e.into()))?;
            if let Stop::Done(_) = drive(&mut *d, &mut sock, first).await.map_err(failed)? {
                bail!("STARTTLS with {upstream}: the dialogue ended without TLS");
            }
            let mut tls = handshake(sock).await?;
            let step = d.tls_established().map_err(|e| failed(e.into()))?;
            match drive(&mut *d, &mut tls, step).await.map_err(failed)? {
                // What the accelerator would have read on a plain connection.
                Stop::Done(replay) => Ok(Box::new(Prefixed::new(Bytes::from(replay), tls))),
                Stop::StartTls => bail!("STARTTLS with {upstream}: TLS asked for twice"),
            }
        }
    }
}

/// The STARTTLS dialogue of `protocol` (straw-proto's sans-IO machines).
fn starttls_dialogue(protocol: Protocol, sock: &TcpStream) -> Result<Box<dyn Dialogue + Send>> {
    Ok(match protocol {
        Protocol::Smtp => {
            // Our address literal, as RFC 5321 4.1.4 suggests for EHLO.
            let ehlo = match sock.local_addr() {
                Ok(std::net::SocketAddr::V6(a)) => format!("[IPv6:{}]", a.ip()),
                Ok(a) => format!("[{}]", a.ip()),
                Err(_) => "[127.0.0.1]".to_owned(),
            };
            Box::new(smtp::StartTls::new(&ehlo))
        }
        Protocol::Pop3 => Box::new(pop3::StartTls::new()),
        Protocol::Imap => Box::new(imap::StartTls::new()),
        p => bail!("STARTTLS is not defined for protocol {p:?}"),
    })
}

/// A stream that first yields `prefix`, then reads from `inner`.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A CA (as PEM) and a server config with a certificate it signed for
    /// localhost / 127.0.0.1 / straw.test.
    struct Pki {
        ca_pem: String,
        acceptor: TlsAcceptor,
    }

    fn make_ca(cn: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    }

    fn pki() -> Pki {
        let (ca_pem, issuer) = make_ca("test CA");
        let names = vec!["localhost".into(), "127.0.0.1".into(), "straw.test".into()];
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        Pki {
            ca_pem,
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
        }
    }

    fn temp_file(tag: &str, data: &[u8]) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "straw-upstream-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, data).unwrap();
        p
    }

    fn service(protocol: Protocol, tls: UpstreamTls, ca_pem: &str) -> ServerService {
        ServerService {
            upstream: None,
            protocol,
            tls,
            ca_file: Some(temp_file("ca.pem", ca_pem.as_bytes())),
            tls_name: None,
            tls_config: None,
        }
    }

    /// Listens on loopback; `script` runs against the accepted connection.
    async fn serve<F, Fut>(script: F) -> (String, tokio::task::JoinHandle<Result<()>>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (sock, _) = listener.accept().await?;
            script(sock).await
        });
        (addr, task)
    }

    async fn dial(svc: &ServerService, addr: &str) -> Result<Box<dyn LocalIo>> {
        let sock = TcpStream::connect(addr).await.unwrap();
        secure(sock, svc, addr).await
    }

    async fn read_some(io: &mut Box<dyn LocalIo>, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        io.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn implicit_tls_carries_bytes_both_ways() {
        let pki = pki();
        let acceptor = pki.acceptor.clone();
        let (addr, server) = serve(move |sock| async move {
            let mut tls = acceptor.accept(sock).await?;
            tls.write_all(b"+OK ready\r\n").await?;
            let mut buf = [0u8; 6];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"QUIT\r\n");
            tls.write_all(b"+OK bye\r\n").await?;
            tls.shutdown().await?;
            Ok(())
        })
        .await;
        let svc = service(Protocol::Pop3, UpstreamTls::Implicit, &pki.ca_pem);
        let mut io = dial(&svc, &addr).await.unwrap();
        assert_eq!(read_some(&mut io, 11).await, b"+OK ready\r\n");
        io.write_all(b"QUIT\r\n").await.unwrap();
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"+OK bye\r\n");
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn untrusted_ca_is_a_clear_error() {
        let pki = pki();
        let (other_ca, _) = make_ca("another CA");
        let acceptor = pki.acceptor.clone();
        let (addr, _server) = serve(move |sock| async move {
            let _ = acceptor.accept(sock).await;
            Ok(())
        })
        .await;
        let svc = service(Protocol::Imap, UpstreamTls::Implicit, &other_ca);
        let err = format!("{:#}", dial(&svc, &addr).await.err().unwrap());
        assert!(err.contains("TLS handshake with 127.0.0.1:"), "{err}");
        assert!(
            err.contains("invalid peer certificate: UnknownIssuer"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wrong_name_is_a_clear_error() {
        let pki = pki();
        let acceptor = pki.acceptor.clone();
        let (addr, _server) = serve(move |sock| async move {
            let _ = acceptor.accept(sock).await;
            Ok(())
        })
        .await;
        let mut svc = service(Protocol::Smtp, UpstreamTls::Implicit, &pki.ca_pem);
        svc.tls_name = Some("mail.example.org".into());
        let err = format!("{:#}", dial(&svc, &addr).await.err().unwrap());
        assert!(err.contains("name mail.example.org"), "{err}");
        assert!(err.contains("not valid for name"), "{err}");
    }

    #[test]
    fn bad_ca_files_are_refused() {
        let junk = temp_file("junk.pem", b"not a certificate\n");
        let err = format!("{:#}", client_config(Some(&junk)).err().unwrap());
        assert!(err.contains("no PEM certificates"), "{err}");
        let broken = temp_file(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let err = format!("{:#}", client_config(Some(&broken)).err().unwrap());
        assert!(err.contains("bad certificate"), "{err}");
        let missing = std::env::temp_dir().join("straw-upstream-no-such-file.pem");
        let err = format!("{:#}", client_config(Some(&missing)).err().unwrap());
        assert!(err.contains("reading CA file"), "{err}");
    }

    #[test]
    fn names_default_to_the_upstream_host() {
        let n = server_name(None, "127.0.0.1:993").unwrap();
        assert_eq!(n.to_str(), "127.0.0.1");
        assert!(matches!(n, ServerName::IpAddress(_)));
        assert_eq!(server_name(None, "[::1]:993").unwrap().to_str(), "::1");
        assert_eq!(
            server_name(None, "imap.example.org:993").unwrap().to_str(),
            "imap.example.org"
        );
        assert_eq!(
            server_name(Some("mx.example.org"), "10.0.0.1:25")
                .unwrap()
                .to_str(),
            "mx.example.org"
        );
        assert!(server_name(Some("bad name!"), "x:1").is_err());
    }

    /// One line from `io`, a byte at a time so that nothing past it (the
    /// TLS ClientHello) is taken.
    async fn line<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<Vec<u8>> {
        let mut line = Vec::new();
        while !line.ends_with(b"\n") {
            line.push(io.read_u8().await?);
        }
        Ok(line)
    }

    /// A plaintext STARTTLS dialogue: `(expect from us, reply)` pairs, the
    /// first with nothing to expect (the greeting); then TLS, then `after`
    /// runs on the TLS stream.
    async fn starttls_server<F, Fut>(
        pki: &Pki,
        steps: Vec<(&'static [u8], &'static [u8])>,
        after: F,
    ) -> (String, tokio::task::JoinHandle<Result<()>>)
    where
        F: FnOnce(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        let acceptor = pki.acceptor.clone();
        serve(move |sock| async move {
            let mut sock = sock;
            for (expect, reply) in steps {
                if !expect.is_empty() {
                    assert_eq!(line(&mut sock).await?, expect);
                }
                sock.write_all(reply).await?;
            }
            let tls = acceptor.accept(sock).await?;
            after(tls).await
        })
        .await
    }

    #[tokio::test]
    async fn smtp_starttls_replays_the_original_greeting() {
        let pki = pki();
        let (addr, server) = starttls_server(
            &pki,
            vec![
                (b"", b"220 mx.example.org ESMTP ready\r\n"),
                (
                    b"EHLO [127.0.0.1]\r\n",
                    b"250-mx.example.org\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
                ),
                (b"STARTTLS\r\n", b"220 2.0.0 go ahead\r\n"),
            ],
            |tls| async move {
                let mut tls = tls;
                assert_eq!(line(&mut tls).await?, b"EHLO program\r\n");
                tls.write_all(b"250 mx.example.org\r\n").await?;
                Ok(())
            },
        )
        .await;
        let svc = service(Protocol::Smtp, UpstreamTls::Starttls, &pki.ca_pem);
        let mut io = dial(&svc, &addr).await.unwrap();
        let greeting = b"220 mx.example.org ESMTP ready\r\n";
        assert_eq!(read_some(&mut io, greeting.len()).await, greeting);
        io.write_all(b"EHLO program\r\n").await.unwrap();
        assert_eq!(read_some(&mut io, 20).await, b"250 mx.example.org\r\n");
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn pop3_stls_replays_the_greeting() {
        let pki = pki();
        let (addr, server) = starttls_server(
            &pki,
            vec![
                (b"", b"+OK Dovecot ready.\r\n"),
                (b"STLS\r\n", b"+OK Begin TLS negotiation now.\r\n"),
            ],
            |tls| async move {
                let mut tls = tls;
                assert_eq!(line(&mut tls).await?, b"CAPA\r\n");
                Ok(())
            },
        )
        .await;
        let svc = service(Protocol::Pop3, UpstreamTls::Starttls, &pki.ca_pem);
        let mut io = dial(&svc, &addr).await.unwrap();
        assert_eq!(read_some(&mut io, 20).await, b"+OK Dovecot ready.\r\n");
        io.write_all(b"CAPA\r\n").await.unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn imap_starttls_greeting_gets_the_tls_capabilities() {
        let pki = pki();
        let (addr, server) = starttls_server(
            &pki,
            vec![
                (
                    b"",
                    b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n",
                ),
                (b"S1 STARTTLS\r\n", b"S1 OK Begin TLS negotiation now.\r\n"),
            ],
            |tls| async move {
                let mut tls = tls;
                assert_eq!(line(&mut tls).await?, b"S2 CAPABILITY\r\n");
                tls.write_all(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nS2 OK done\r\n")
                    .await?;
                assert_eq!(line(&mut tls).await?, b"a LOGIN x y\r\n");
                Ok(())
            },
        )
        .await;
        let svc = service(Protocol::Imap, UpstreamTls::Starttls, &pki.ca_pem);
        let mut io = dial(&svc, &addr).await.unwrap();
        let want = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot ready.\r\n";
        assert_eq!(read_some(&mut io, want.len()).await, want);
        io.write_all(b"a LOGIN x y\r\n").await.unwrap();
        server.await.unwrap().unwrap();
    }

    async fn starttls_error(
        protocol: Protocol,
        script: Vec<(&'static [u8], &'static [u8])>,
    ) -> String {
        let pki = pki();
        let (addr, _server) = serve(move |sock| async move {
            let mut sock = sock;
            for (expect, reply) in script {
                if !expect.is_empty() {
                    line(&mut sock).await?;
                }
                sock.write_all(reply).await?;
            }
            // Hold the connection open: the error must come from the reply.
            let _ = line(&mut sock).await;
            Ok(())
        })
        .await;
        let svc = service(protocol, UpstreamTls::Starttls, &pki.ca_pem);
        format!("{:#}", dial(&svc, &addr).await.err().unwrap())
    }

    #[tokio::test]
    async fn refused_starttls_is_a_clear_error() {
        type Script = &'static [(&'static [u8], &'static [u8])];
        let cases: [(Protocol, Script, &str); 6] = [
            (
                Protocol::Pop3,
                &[(b"", b"+OK hi\r\n"), (b"STLS", b"-ERR no TLS here\r\n")],
                "POP3 STLS refused: -ERR no TLS here",
            ),
            (
                Protocol::Imap,
                &[(b"", b"* OK hi\r\n"), (b"S1", b"S1 BAD no\r\n")],
                "IMAP STARTTLS refused: S1 BAD no",
            ),
            (
                Protocol::Imap,
                &[(b"", b"* PREAUTH hi\r\n")],
                "IMAP greeting refused: * PREAUTH hi",
            ),
            (
                Protocol::Smtp,
                &[
                    (b"", b"220 hi\r\n"),
                    (b"EHLO", b"250-mx\r\n250 SIZE 10\r\n"),
                ],
                "does not offer STARTTLS",
            ),
            (
                Protocol::Smtp,
                &[
                    (b"", b"220 hi\r\n"),
                    (b"EHLO", b"250-mx\r\n250 STARTTLS\r\n"),
                    (b"STARTTLS", b"454 4.7.0 TLS not available\r\n"),
                ],
                "SMTP STARTTLS refused: 454",
            ),
            (
                Protocol::Smtp,
                &[(b"", b"554 go away\r\n")],
                "SMTP greeting refused: 554 go away",
            ),
        ];
        for (protocol, script, want) in cases {
            let e = starttls_error(protocol, script.to_vec()).await;
            assert!(e.contains(want), "{e}");
        }
    }

    #[tokio::test]
    async fn data_after_the_starttls_reply_is_refused() {
        // A man in the middle could inject replies before the handshake.
        let e = starttls_error(
            Protocol::Smtp,
            vec![
                (b"", b"220 hi\r\n"),
                (b"EHLO", b"250-mx\r\n250 STARTTLS\r\n"),
                (b"STARTTLS", b"220 go\r\n250 injected\r\n"),
            ],
        )
        .await;
        assert!(e.contains("sent data after its STARTTLS reply"), "{e}");
        assert!(
            e.contains("STARTTLS with 127.0.0.1:"),
            "names the server: {e}"
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_an_error_not_a_hang() {
        let (addr, _server) = serve(|sock| async move {
            drop(sock);
            Ok(())
        })
        .await;
        let svc = service(Protocol::Pop3, UpstreamTls::Starttls, &pki().ca_pem);
        let e = format!("{:#}", dial(&svc, &addr).await.err().unwrap());
        assert!(e.contains("closed before the reply ended"), "{e}");
    }
}
