//! `straw check --config FILE`: is this config going to work?
//!
//! Loads a client or a server config (told apart by its keys) the way
//! `straw client`/`straw server` would, with the same errors (`FILE:LINE:COL:`
//! for TOML problems), then tries what can be tried without starting: the
//! keys, the authorized_keys file, and the network. A server dials each
//! upstream (TCP, then the TLS handshake or STARTTLS dialogue `tls` asks for,
//! with the code `straw server` uses); a client dials its server. One line
//! per check, `ok` or `FAILED: why`; any failure makes the command fail.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio::net::TcpStream;

use crate::config::{ClientConfig, Protocol, ServerConfig, UpstreamTls, line_col};
use crate::link::keys;

/// Which side a config file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// One check: what was tried, and `Ok(detail)` or `Err(why)`.
#[derive(Debug)]
pub struct Check {
    pub what: String,
    pub result: std::result::Result<String, String>,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.result {
            Ok(detail) if detail.is_empty() => write!(f, "{}: ok", self.what),
            Ok(detail) => write!(f, "{}: ok ({detail})", self.what),
            Err(why) => write!(f, "{}: FAILED: {why}", self.what),
        }
    }
}

impl Check {
    fn new(what: impl Into<String>, result: Result<String>) -> Check {
        Check {
            what: what.into(),
            result: result.map_err(|e| format!("{e:#}")),
        }
    }

    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Tells a client config (`server = ...`) from a server config
/// (`listen = ...`); a file that is not TOML is reported with its line.
pub fn side(path: &Path) -> Result<Side> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(String::new(), |s| line_col(&text, s.start));
        anyhow!("{}:{at} {}", path.display(), e.message())
    })?;
    match (table.contains_key("listen"), table.contains_key("server")) {
        (true, false) => Ok(Side::Server),
        (false, true) => Ok(Side::Client),
        _ => bail!(
            "{}: neither a client config (with `server = \"HOST:PORT\"`) nor a server config (with `listen = \"ADDR\"`)",
            path.display()
        ),
    }
}

/// Runs every check on the config at `path`; each network try gives up
/// after `timeout`.
pub async fn run(path: &Path, timeout: Duration) -> Vec<Check> {
    let what = format!("config {}", path.display());
    let side = match side(path) {
        Ok(s) => s,
        Err(e) => return vec![Check::new(what, Err(e))],
    };
    match side {
        Side::Client => match ClientConfig::load(path) {
            Ok(c) => {
                let mut checks = vec![Check::new(
                    what,
                    Ok(format!("client, {} services", c.services.len())),
                )];
                checks.extend(client(&c, timeout).await);
                checks
            }
            Err(e) => vec![Check::new(what, Err(at_service_line(path, e)))],
        },
        Side::Server => match ServerConfig::load(path) {
            Ok(c) => {
                let mut checks = vec![Check::new(
                    what,
                    Ok(format!("server, {} services", c.services.len())),
                )];
                checks.extend(server(&c, timeout).await);
                checks
            }
            Err(e) => vec![Check::new(what, Err(at_service_line(path, e)))],
        },
    }
}

/// `FILE: service NAME ...` (a check made after parsing, so without a
/// position) becomes `FILE:LINE: service NAME ...`, LINE being where the
/// service is defined (`NAME = ...` under `[services]`, `[services.NAME]`,
/// or a client's `name = "NAME"`).
fn at_service_line(path: &Path, e: anyhow::Error) -> anyhow::Error {
    let msg = format!("{e:#}");
    let file = path.display().to_string();
    let Some(rest) = msg.strip_prefix(&format!("{file}: ")) else {
        return e;
    };
    let Some(name) = rest
        .strip_prefix("service ")
        .and_then(|r| r.split([' ', ':']).next())
    else {
        return e;
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return e;
    };
    let defines = |line: &str| {
        let line = line.trim();
        let key = |k: &str| {
            line.strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with('='))
        };
        key(name)
            || line.replace(' ', "") == format!("[services.{name}]")
            || (key("name") && line.ends_with(&format!("\"{name}\"")))
    };
    match text.lines().position(defines) {
        Some(i) => anyhow!("{file}:{}: {rest}", i + 1),
        None => e,
    }
}

async fn within<T>(timeout: Duration, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| anyhow!("{what}: no answer in {} ms", timeout.as_millis()))?
}

async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream> {
    within(timeout, "connect", async {
        TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow!("connect: {e}"))
    })
    .await
}

fn private_key(path: &Path, allow_insecure: bool) -> Check {
    let result = keys::load_private_checked(path, allow_insecure).map(|kp| {
        let mut d = format!("public key {}", keys::encode_key(&kp.public));
        if allow_insecure {
            d.push_str("; allow_insecure_keys = true: demos only");
        }
        d
    });
    Check::new(format!("private key {}", path.display()), result)
}

async fn client(c: &ClientConfig, timeout: Duration) -> Vec<Check> {
    let mut checks = vec![private_key(&c.private_key, c.allow_insecure_keys)];
    checks.push(Check::new(
        format!("server public key {}", c.server_public_key.display()),
        keys::load_public(&c.server_public_key).map(|_| String::new()),
    ));
    checks.push(Check::new(
        format!("server {}", c.server),
        connect(&c.server, timeout).await.map(|s| {
            s.peer_addr()
                .map(|a| format!("TCP connect to {a}"))
                .unwrap_or_default()
        }),
    ));
    checks
}

async fn server(c: &ServerConfig, timeout: Duration) -> Vec<Check> {
    let mut checks = vec![private_key(&c.private_key, c.allow_insecure_keys)];
    let boats = keys::AuthorizedKeys::load(&c.authorized_keys).map(|k| match k.len() {
        0 => "no boats yet: add the line `straw init client` prints".to_owned(),
        1 => "1 key".to_owned(),
        n => format!("{n} keys"),
    });
    checks.push(Check::new(
        format!("authorized_keys {}", c.authorized_keys.display()),
        boats,
    ));
    for (name, svc) in &c.services {
        let Some(upstream) = svc.upstream.as_deref() else {
            if svc.protocol == Protocol::Http {
                checks.push(Check::new(
                    format!("service {name} (http proxy)"),
                    Ok("no upstream to try: requests name their origin".into()),
                ));
            }
            continue;
        };
        let result = async {
            let sock = connect(upstream, timeout).await?;
            if svc.tls == UpstreamTls::None {
                return Ok("TCP connect".to_owned());
            }
            within(timeout, "TLS", crate::upstream::secure(sock, svc, upstream)).await?;
            Ok(match svc.tls {
                UpstreamTls::Starttls => "STARTTLS and TLS handshake",
                _ => "TLS handshake",
            }
            .to_owned())
        }
        .await;
        checks.push(Check::new(format!("service {name} -> {upstream}"), result));
    }
    checks
}

/// `straw check` on the command line: prints one line per check.
pub async fn check_cli(path: &Path, timeout: Duration) -> Result<()> {
    let checks = run(path, timeout).await;
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| !c.ok()).count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{InitClientArgs, InitServerArgs, init_client, init_server};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(2);

    /// A port nothing listens on (bound, then let go).
    async fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    fn lines(checks: &[Check]) -> String {
        checks
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn server_dir(dir: &Path, pop3: String, smtp: String) -> std::path::PathBuf {
        init_server(&InitServerArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            dir: Some(dir.to_owned()),
            pop3: Some(pop3),
            imap: None,
            smtp: Some(smtp),
            public_host: None,
            force: false,
        })
        .unwrap()
        .config
    }

    #[tokio::test]
    async fn server_upstreams_open_and_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let open = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open_addr = open.local_addr().unwrap().to_string();
        let closed = format!("127.0.0.1:{}", closed_port().await);
        let config = server_dir(tmp.path(), open_addr.clone(), closed.clone());
        assert_eq!(side(&config).unwrap(), Side::Server);
        let checks = run(&config, T).await;
        let text = lines(&checks);
        let line = |prefix: &str| {
            checks
                .iter()
                .find(|c| c.what.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        };
        assert!(line("config").ok(), "{text}");
        assert!(line("private key").ok(), "{text}");
        assert!(line("authorized_keys").ok(), "{text}");
        assert!(line("service web").ok(), "{text}");
        let pop3 = line("service pop3");
        assert_eq!(pop3.what, format!("service pop3 -> {open_addr}"));
        assert!(pop3.ok(), "{text}");
        let smtp = line("service smtp").to_string();
        assert!(
            smtp.starts_with(&format!("service smtp -> {closed}: FAILED: connect:")),
            "{text}"
        );
        let e = check_cli(&config, T).await.unwrap_err().to_string();
        assert_eq!(e, format!("1 of {} checks failed", checks.len()));
    }

    #[tokio::test]
    async fn implicit_tls_that_is_not_tls_fails() {
        // The upstream answers in plain text where TLS was asked for.
        let tmp = tempfile::tempdir().unwrap();
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = plain.accept().await {
                let _ = s.write_all(b"+OK plain POP3 here\r\n").await;
            }
        });
        let config = tmp.path().join("server.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:1\"\nprivate_key = \"k\"\nauthorized_keys = \"a\"\n\
                 [services]\npop3s = {{ upstream = \"{addr}\", protocol = \"pop3\", tls = \"implicit\" }}\n"
            ),
        )
        .unwrap();
        let checks = run(&config, T).await;
        let text = lines(&checks);
        let pop3s = checks.iter().find(|c| c.what.starts_with("service pop3s"));
        let pop3s = pop3s.unwrap().to_string();
        assert!(pop3s.contains("FAILED: TLS handshake with"), "{text}");
        // The missing key files are failures too, each on its own line.
        assert!(
            text.contains("private key") && text.contains("cannot read"),
            "{text}"
        );
    }

    /// A TLS upstream with a certificate for 127.0.0.1 from a CA of its own;
    /// the CA's PEM is returned.
    fn tls_upstream(listener: std::net::TcpListener) -> String {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use std::sync::Arc;
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(b"+OK TLS here\r\n").await;
                }
            }
        });
        ca_pem
    }

    #[tokio::test]
    async fn implicit_tls_handshake_with_the_configured_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::fs::write(tmp.path().join("ca.pem"), tls_upstream(listener)).unwrap();
        let config = server_dir(tmp.path(), "127.0.0.1:1".into(), "127.0.0.1:1".into());
        // Replace the generated services by one TLS service trusting ca.pem.
        let text = std::fs::read_to_string(&config).unwrap();
        let head = &text[..text.find("[services]").unwrap()];
        std::fs::write(
            &config,
            format!(
                "{head}[services]\npop3s = {{ upstream = \"{addr}\", protocol = \"pop3\", tls = \"implicit\", ca_file = \"ca.pem\" }}\n"
            ),
        )
        .unwrap();
        let checks = run(&config, T).await;
        assert!(checks.iter().all(Check::ok), "{}", lines(&checks));
        assert_eq!(
            checks.last().unwrap().to_string(),
            format!("service pop3s -> {addr}: ok (TLS handshake)")
        );
    }

    #[tokio::test]
    async fn client_dials_its_server() {
        let tmp = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let key = keys::encode_key(&keys::generate().public);
        let args = |dir: &str, server: String| InitClientArgs {
            server,
            server_key: key.clone(),
            dir: Some(tmp.path().join(dir)),
            name: Some("boat".into()),
            pop3: "127.0.0.1:1110".parse().unwrap(),
            imap: "127.0.0.1:1143".parse().unwrap(),
            smtp: "127.0.0.1:1025".parse().unwrap(),
            http: "127.0.0.1:3128".parse().unwrap(),
            force: false,
        };
        let up = init_client(&args("up", listener.local_addr().unwrap().to_string())).unwrap();
        assert_eq!(side(&up.config).unwrap(), Side::Client);
        let checks = run(&up.config, T).await;
        assert!(checks.iter().all(Check::ok), "{}", lines(&checks));
        assert_eq!(checks.len(), 4);
        check_cli(&up.config, T).await.unwrap();

        let port = closed_port().await;
        let down = init_client(&args("down", format!("127.0.0.1:{port}"))).unwrap();
        let checks = run(&down.config, T).await;
        let last = checks.last().unwrap().to_string();
        assert!(
            last.starts_with(&format!("server 127.0.0.1:{port}: FAILED: connect:")),
            "{last}"
        );
        assert!(check_cli(&down.config, T).await.is_err());
    }

    #[tokio::test]
    async fn bad_configs_name_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("client.toml");
        let check = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let path = path.clone();
            async move {
                let checks = run(&path, T).await;
                assert_eq!(checks.len(), 1);
                assert!(!checks[0].ok());
                checks[0].to_string()
            }
        };
        let file = path.display().to_string();
        // Not TOML at all.
        let e = check("server = \"h:1\"\nprivate_key = \n").await;
        assert!(e.contains(&format!("FAILED: {file}:2:")), "{e}");
        // A typo in a key: refused by the client config, at its line.
        let e = check(
            "server = \"h:1\"\nserver_public_key = \"s\"\nprivate_key = \"k\"\nprivat_key = \"x\"\n",
        )
        .await;
        assert!(
            e.contains(&format!("{file}:4:1: unknown field `privat_key`")),
            "{e}"
        );
        // A bad value in a server config.
        let e = check("listen = \"nowhere\"\nprivate_key = \"k\"\nauthorized_keys = \"a\"\n").await;
        assert!(e.contains(&format!("{file}:1:10:")), "{e}");
        // A check made after parsing: the line of the service.
        let e = check(
            "listen = \"127.0.0.1:1\"\nprivate_key = \"k\"\nauthorized_keys = \"a\"\n\
             [services]\npop3 = { upstream = \"h:1\", protocol = \"pop3\" }\n\
             web = { protocol = \"http\", tls = \"implicit\" }\n",
        )
        .await;
        assert!(
            e.contains(&format!("{file}:6: service web: tls is not supported")),
            "{e}"
        );
        let e = check(
            "listen = \"127.0.0.1:1\"\nprivate_key = \"k\"\nauthorized_keys = \"a\"\n\
             [services]\nweb = { protocol = \"http\" }\nmail = { protocol = \"pop3\" }\n",
        )
        .await;
        assert!(
            e.contains(&format!("{file}:6: service mail needs an upstream")),
            "{e}"
        );
        // Neither side.
        let e = check("x = 1\n").await;
        assert!(e.contains("neither a client config"), "{e}");
    }
}
