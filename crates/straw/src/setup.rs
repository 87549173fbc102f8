//! `straw init client` and `straw init server`: a first, commented config, a
//! new key pair and the line or command to hand to the other side, written
//! so that `straw client`/`straw server` load them as they are.
//!
//! Files go into one folder (default `~/.config/straw`, made with mode 0700);
//! private keys are 0600. Nothing existing is overwritten without `--force`,
//! and even then a server's `authorized_keys` is kept (it lists the boats).
//! What was written is reported on stderr; the one line meant for the other
//! side (the authorized-keys line, the boat's init command) goes to stdout.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::link::keys;

/// Options of `straw init client`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitClientArgs {
    /// The straw server, HOST:PORT (printed by `straw init server`).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    /// The server's public key: base64 (printed by `straw init server`), or
    /// a file holding it (server.key.pub).
    #[arg(long, value_name = "PUBKEY")]
    pub server_key: String,
    /// Folder for client.toml and the keys [default: ~/.config/straw].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// This boat's name on the server's authorized_keys line (letters,
    /// digits, `.`, `_`, `-`) [default: this computer's host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Local address the mail program's POP3 connects to.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1110")]
    pub pop3: SocketAddr,
    /// Local address the mail program's IMAP connects to.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1143")]
    pub imap: SocketAddr,
    /// Local address the mail program sends (SMTP) to.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1025")]
    pub smtp: SocketAddr,
    /// Local address of the browser's HTTP proxy.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3128")]
    pub http: SocketAddr,
    /// Overwrite existing files (a new key pair: the server needs the new line).
    #[arg(long)]
    pub force: bool,
}

/// Options of `straw init server`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitServerArgs {
    /// Address the tunnel listens on, e.g. 0.0.0.0:7700.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Folder for server.toml, the keys and authorized_keys
    /// [default: ~/.config/straw].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The real POP3 server, HOST:PORT (port 995: TLS from the first byte).
    /// Without it the pop3 service is a commented-out example.
    #[arg(long, value_name = "HOST:PORT")]
    pub pop3: Option<String>,
    /// The real IMAP server, HOST:PORT (port 993: TLS from the first byte).
    #[arg(long, value_name = "HOST:PORT")]
    pub imap: Option<String>,
    /// The real SMTP server, HOST:PORT (465: TLS from the first byte; 587:
    /// STARTTLS).
    #[arg(long, value_name = "HOST:PORT")]
    pub smtp: Option<String>,
    /// Host name boats dial, for the printed `straw init client` command
    /// [default: the listen address, or this host's name if that is 0.0.0.0].
    #[arg(long, value_name = "HOST")]
    pub public_host: Option<String>,
    /// Overwrite existing files (a new server key: every boat needs it).
    /// An existing authorized_keys is kept.
    #[arg(long)]
    pub force: bool,
}

/// One file to write.
struct NewFile {
    name: &'static str,
    text: String,
    /// Unix mode; private keys 0600.
    mode: u32,
    what: &'static str,
    /// With `--force`, leave an existing file as it is.
    keep_existing: bool,
}

/// What `init` did: the files written (path, what) and the line for the
/// other side.
#[derive(Debug)]
pub struct Written {
    pub files: Vec<(PathBuf, &'static str)>,
    /// The config file written.
    pub config: PathBuf,
    /// The new public key, base64.
    pub public_key: String,
    /// Client: the authorized_keys line. Server: the boat's init command.
    pub line: String,
}

/// `~/.config/straw` (`$XDG_CONFIG_HOME/straw`; Windows `%APPDATA%\straw`).
pub fn default_dir() -> Result<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("XDG_CONFIG_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".config")))
        .or_else(|| env("APPDATA"))
        .map(|d| d.join("straw"))
        .ok_or_else(|| anyhow!("no HOME to put the config in: give --dir"))
}

/// A TOML basic string for `s` (quoted and escaped).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Checks `HOST:PORT` (host not empty, port a number 1..=65535).
fn check_host_port(what: &str, s: &str) -> Result<()> {
    let bad = || anyhow!("{what} {s:?}: expected HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(bad());
    }
    Ok(())
}

/// A boat name usable as `name=NAME` on an authorized_keys line.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        bail!(
            "name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-' (it goes on the server's authorized_keys line)"
        );
    }
    Ok(())
}

/// This computer's host name, as far as it makes a valid boat name.
fn host_name() -> Result<String> {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    // A fully qualified name: its first label names the machine.
    let name = name.split('.').next().unwrap_or_default().to_owned();
    check_name(&name).map_err(|e| anyhow!("the host name is not usable ({e}): give --name"))?;
    Ok(name)
}

/// The server key given to `init client`: base64, or a file holding it.
fn server_key(arg: &str) -> Result<[u8; 32]> {
    let key = match keys::decode_key(arg) {
        Some(k) => k,
        None if Path::new(arg).is_file() => keys::load_public(Path::new(arg))?,
        None => bail!("--server-key {arg:?}: neither a base64 32-byte key nor a key file"),
    };
    if keys::is_example_key(&key) {
        bail!(
            "--server-key: that is a published example key that anyone can use; ask the operator for the server's own key"
        );
    }
    Ok(key)
}

/// Creates `dir` (mode 0700) if it is missing.
fn make_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .map_err(|e| anyhow!("{}: cannot create: {e}", dir.display()))
}

/// Writes `files` into `dir`: all or nothing unless `force` (checked before
/// anything is written).
fn write_all(dir: &Path, files: &[NewFile], force: bool) -> Result<Vec<(PathBuf, &'static str)>> {
    let existing: Vec<String> = files
        .iter()
        .map(|f| dir.join(f.name))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !force && !existing.is_empty() {
        bail!(
            "{} already exist{}; refusing to overwrite (--force overwrites)",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" }
        );
    }
    make_dir(dir)?;
    let mut written = Vec::new();
    for f in files {
        let path = dir.join(f.name);
        if path.symlink_metadata().is_ok() {
            if f.keep_existing {
                continue;
            }
            // Removed first so that the new file gets its mode (0600 keys).
            std::fs::remove_file(&path)
                .map_err(|e| anyhow!("{}: cannot replace: {e}", path.display()))?;
        }
        write_new(&path, &f.text, f.mode)?;
        written.push((path, f.what));
    }
    Ok(written)
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode; // the folder's inherited ACL applies (see link::keys)
    let mut f = options
        .open(path)
        .map_err(|e| anyhow!("{}: cannot create: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))
}

/// The key pair files: `<stem>.key` (0600) and `<stem>.key.pub`.
fn key_files(kp: &keys::Keypair, key: &'static str, public: &'static str) -> [NewFile; 2] {
    [
        NewFile {
            name: key,
            text: format!("{}\n", keys::encode_key(&kp.private)),
            mode: 0o600,
            what: "private key, mode 0600",
            keep_existing: false,
        },
        NewFile {
            name: public,
            text: format!("{}\n", keys::encode_key(&kp.public)),
            mode: 0o644,
            what: "public key",
            keep_existing: false,
        },
    ]
}

/// `straw init client`.
pub fn init_client(args: &InitClientArgs) -> Result<Written> {
    check_host_port("--server", &args.server)?;
    let server_key = server_key(&args.server_key)?;
    let name = match &args.name {
        Some(n) => {
            check_name(n)?;
            n.clone()
        }
        None => host_name()?,
    };
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    let kp = keys::generate();
    let public_key = keys::encode_key(&kp.public);
    let line = format!("name={name} {public_key}");
    let config = dir.join("client.toml");
    let text = client_toml(args, &config, &line);
    let [key, public] = key_files(&kp, "client.key", "client.key.pub");
    let files = [
        NewFile {
            name: "client.toml",
            text,
            mode: 0o644,
            what: "config",
            keep_existing: false,
        },
        key,
        public,
        NewFile {
            name: "server.key.pub",
            text: format!("{}\n", keys::encode_key(&server_key)),
            mode: 0o644,
            what: "the server's public key",
            keep_existing: false,
        },
    ];
    let files = write_all(&dir, &files, args.force)?;
    Ok(Written {
        files,
        config,
        public_key,
        line,
    })
}

fn client_toml(a: &InitClientArgs, config: &Path, line: &str) -> String {
    let server = quoted(&a.server);
    let config = config.display();
    let (pop3, imap, smtp, http) = (a.pop3, a.imap, a.smtp, a.http);
    format!(
        r#"# straw client: runs next to the mail program and browser. It listens on
# the local ports below and carries each connection to the straw server over
# one encrypted, compressed tunnel. Written by `straw init client`.
#   Run:   straw client --config {config}
#   Check: straw check --config {config}
# Every key and its default: examples/client.toml in the straw sources.
# Relative paths are relative to this file.

# The straw server, HOST:PORT.
server = {server}

# The server's public key (from the operator's `straw init server`).
server_public_key = "server.key.pub"

# This computer's private key (mode 0600: keep it so, never share it). The
# server lets it in once this line is in the server's authorized_keys:
#   {line}
private_key = "client.key"

# Point the mail program and browser at these (plain text, on loopback only).
# `name` is the service on the server; the server decides where it goes.
[[service]]
name = "pop3"
protocol = "pop3"
listen = "{pop3}"

[[service]]
name = "imap"
protocol = "imap"
listen = "{imap}"

[[service]]
name = "smtp"
protocol = "smtp"
listen = "{smtp}"

[[service]]
name = "web"
protocol = "http"          # the browser's HTTP proxy
listen = "{http}"

# When to dial the (expensive) link.
[link]
dial = "always"            # or "on-demand": dial when a program connects
idle_hangup_secs = 0       # on demand: hang up after this long idle (0 = never)
# on_dial = "ifup sat0"    # sh -c before each dial; must succeed
# on_hangup = "ifdown sat0"
cost_per_minute = 1.50     # for the hang-up log line; billed per started minute
budget_per_call = 0        # money per call before big transfers wait for the next call (0 = no limit)

# A status page for the browser (what `straw status` shows, live, and a
# chart of the last hours): off unless enabled, loopback only (no login).
# [web]
# enabled = true
# listen = "127.0.0.1:1180"   # then open http://127.0.0.1:1180/

# Interrupted messages and cached greetings are kept in ~/.local/state/straw
# (Windows: %LOCALAPPDATA%\straw); [partial] dir and [cache] dir move them.
"#
    )
}

/// The TLS a well-known port implies: 993/995/465 speak TLS from the first
/// byte; 587 (submission) upgrades with STARTTLS; anything else: none.
fn tls_for(upstream: &str) -> &'static str {
    match upstream.rsplit_once(':').map(|(_, p)| p) {
        Some("993" | "995" | "465") => "implicit",
        Some("587") => "starttls",
        _ => "none",
    }
}

/// One `[services]` line: active when the upstream was given, else a
/// commented-out example.
fn service_line(name: &str, upstream: Option<&str>, example: &str) -> String {
    match upstream {
        Some(u) => format!(
            "{name} = {{ upstream = {}, protocol = \"{name}\", tls = \"{}\" }}",
            quoted(u),
            tls_for(u)
        ),
        None => format!(
            "# {name} = {{ upstream = \"{example}\", protocol = \"{name}\", tls = \"{}\" }}",
            tls_for(example)
        ),
    }
}

/// `straw init server`.
pub fn init_server(args: &InitServerArgs) -> Result<Written> {
    for (opt, v) in [
        ("--pop3", &args.pop3),
        ("--imap", &args.imap),
        ("--smtp", &args.smtp),
    ] {
        if let Some(v) = v {
            check_host_port(opt, v)?;
        }
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    let host = match (&args.public_host, args.listen.ip()) {
        (Some(h), _) => h.clone(),
        (None, ip) if ip.is_unspecified() => gethostname::gethostname().to_string_lossy().into(),
        (None, IpAddr::V6(ip)) => format!("[{ip}]"),
        (None, ip) => ip.to_string(),
    };
    let kp = keys::generate();
    let public_key = keys::encode_key(&kp.public);
    let line = format!(
        "straw init client --server {host}:{} --server-key {public_key}",
        args.listen.port()
    );
    let config = dir.join("server.toml");
    let text = server_toml(args, &config);
    let [key, public] = key_files(&kp, "server.key", "server.key.pub");
    let files = [
        NewFile {
            name: "server.toml",
            text,
            mode: 0o644,
            what: "config",
            keep_existing: false,
        },
        key,
        public,
        NewFile {
            name: "authorized_keys",
            text: AUTHORIZED_KEYS.to_owned(),
            mode: 0o644,
            what: "boats allowed in: none yet",
            keep_existing: true,
        },
    ];
    let files = write_all(&dir, &files, args.force)?;
    Ok(Written {
        files,
        config,
        public_key,
        line,
    })
}

const AUTHORIZED_KEYS: &str = "\
# The boats (straw clients) allowed in: one line each, as `straw init client`
# prints it, e.g.
#   name=boat-17 q1f3...=
# `services=pop3,smtp` before the key limits a boat to those services.
";

fn server_toml(a: &InitServerArgs, config: &Path) -> String {
    let listen = a.listen;
    let config = config.display();
    let pop3 = service_line("pop3", a.pop3.as_deref(), "mail.example.org:995");
    let imap = service_line("imap", a.imap.as_deref(), "mail.example.org:993");
    let smtp = service_line("smtp", a.smtp.as_deref(), "mail.example.org:587");
    format!(
        r#"# straw server: runs on a well-connected host, accepts tunnels from straw
# clients (boats) and dials the real mail and web servers for them. Written
# by `straw init server`.
#   Run:   straw server --config {config}
#   Check: straw check --config {config}   (tries every upstream)
# Every key and its default: examples/server.toml in the straw sources.
# Relative paths are relative to this file.

# Where the tunnel listens; a boat's `server` points here. Open this TCP port
# in the firewall.
listen = "{listen}"

# This server's private key (mode 0600). Its public half, server.key.pub,
# goes to every boat; a new key means reconfiguring every boat.
private_key = "server.key"

# The boats allowed in, one line each (`straw init client` prints it).
authorized_keys = "authorized_keys"

# Service name -> the real server. Boats reach only what is listed here, by
# these names (the client config written by `straw init client` uses them).
# tls: "implicit" (TLS from the first byte: 995, 993, 465), "starttls" (110,
# 143, 587: upgraded by straw server before any command) or "none" (the
# password crosses the hop from here to the mail server in clear; a warning
# is logged unless it is on loopback). ca_file = "ca.pem" trusts that CA
# instead of the system's; tls_name = "..." checks that certificate name.
[services]
{pop3}
{imap}
{smtp}
# The boats' web proxy: requests name their origin, so it has no upstream.
web = {{ protocol = "http" }}

# The web proxy refuses loopback and private addresses (no SSRF).
[http]
allow_private = false
"#
    )
}

/// Prints what `init` wrote (stderr) and the line for the other side (stdout).
pub fn report(w: &Written, next: &str) {
    for (path, what) in &w.files {
        eprintln!("wrote {} ({what})", path.display());
    }
    eprintln!("{next}");
    println!("{}", w.line);
}

/// `straw init client` on the command line.
pub fn init_client_cli(args: &InitClientArgs) -> Result<()> {
    let w = init_client(args)?;
    report(
        &w,
        &format!(
            "Next: the server's operator adds the line below to the server's authorized_keys; \
             then run\n  straw client --config {}\n\
             authorized_keys line:",
            w.config.display()
        ),
    );
    Ok(())
}

/// `straw init server` on the command line.
pub fn init_server_cli(args: &InitServerArgs) -> Result<()> {
    let w = init_server(args)?;
    let dir = w.config.parent().unwrap_or(Path::new("."));
    report(
        &w,
        &format!(
            "server public key: {}\n\
             Next: add each boat's line to {}, then run\n  straw server --config {}\n\
             A boat runs:",
            w.public_key,
            dir.join("authorized_keys").display(),
            w.config.display()
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientConfig, Protocol, ServerConfig, UpstreamTls};

    fn client_args(dir: &Path, server_key: &str) -> InitClientArgs {
        InitClientArgs {
            server: "straw.example.org:7700".into(),
            server_key: server_key.into(),
            dir: Some(dir.to_owned()),
            name: Some("boat-17".into()),
            pop3: "127.0.0.1:1110".parse().unwrap(),
            imap: "127.0.0.1:1143".parse().unwrap(),
            smtp: "127.0.0.1:1025".parse().unwrap(),
            http: "127.0.0.1:3128".parse().unwrap(),
            force: false,
        }
    }

    fn server_args(dir: &Path) -> InitServerArgs {
        InitServerArgs {
            listen: "0.0.0.0:7700".parse().unwrap(),
            dir: Some(dir.to_owned()),
            pop3: Some("mail.example.org:995".into()),
            imap: None,
            smtp: Some("127.0.0.1:25".into()),
            public_host: Some("straw.example.org".into()),
            force: false,
        }
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_server_then_client_load_and_match() {
        let tmp = tempfile::tempdir().unwrap();
        let sdir = tmp.path().join("srv");
        let s = init_server(&server_args(&sdir)).unwrap();
        assert_eq!(s.files.len(), 4);
        let cfg = ServerConfig::load(&s.config).unwrap();
        assert!(!cfg.allow_insecure_keys);
        assert_eq!(cfg.listen, "0.0.0.0:7700".parse().unwrap());
        // Given upstreams are active, TLS from the port; web always; imap
        // stays a commented-out example.
        assert_eq!(
            cfg.services.keys().collect::<Vec<_>>(),
            ["pop3", "smtp", "web"]
        );
        assert_eq!(cfg.services["pop3"].tls, UpstreamTls::Implicit);
        assert_eq!(cfg.services["pop3"].protocol, Protocol::Pop3);
        assert_eq!(cfg.services["smtp"].tls, UpstreamTls::None);
        assert_eq!(cfg.services["web"].protocol, Protocol::Http);
        // The key the server will load (refusing insecure ones) is the one
        // printed, and the authorized_keys file is there and empty.
        let kp = keys::load_private(&cfg.private_key).unwrap();
        assert_eq!(keys::encode_key(&kp.public), s.public_key);
        assert!(
            keys::AuthorizedKeys::load(&cfg.authorized_keys)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            s.line,
            format!(
                "straw init client --server straw.example.org:7700 --server-key {}",
                s.public_key
            )
        );
        #[cfg(unix)]
        {
            assert_eq!(mode(&sdir), 0o700);
            assert_eq!(mode(&cfg.private_key), 0o600);
        }

        // The boat, with the key as printed.
        let cdir = tmp.path().join("boat");
        let c = init_client(&client_args(&cdir, &s.public_key)).unwrap();
        let ccfg = ClientConfig::load(&c.config).unwrap();
        assert!(!ccfg.allow_insecure_keys);
        assert_eq!(ccfg.server, "straw.example.org:7700");
        assert_eq!(
            keys::load_public(&ccfg.server_public_key).unwrap(),
            kp.public
        );
        let listens: Vec<_> = ccfg
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.protocol, s.listen.port()))
            .collect();
        assert_eq!(
            listens,
            [
                ("pop3", Protocol::Pop3, 1110),
                ("imap", Protocol::Imap, 1143),
                ("smtp", Protocol::Smtp, 1025),
                ("web", Protocol::Http, 3128)
            ]
        );
        // Every client service is one the server may list.
        for svc in &ccfg.services {
            assert!(
                std::fs::read_to_string(&s.config)
                    .unwrap()
                    .contains(&format!("{} = {{", svc.name))
            );
        }
        let ckp = keys::load_private(&ccfg.private_key).unwrap();
        assert_eq!(
            c.line,
            format!("name=boat-17 {}", keys::encode_key(&ckp.public))
        );
        #[cfg(unix)]
        assert_eq!(mode(&ccfg.private_key), 0o600);

        // The printed line is accepted on the server's authorized_keys as a
        // key line (whatever options the parser knows, the key is found).
        let line_key = c.line.split_whitespace().last().unwrap();
        assert_eq!(keys::decode_key(line_key), Some(ckp.public));
    }

    #[test]
    fn other_ports_and_a_key_file() {
        let tmp = tempfile::tempdir().unwrap();
        let kp = keys::generate();
        let key_file = tmp.path().join("server.key.pub");
        std::fs::write(&key_file, keys::encode_key(&kp.public) + "\n").unwrap();
        let mut a = client_args(&tmp.path().join("c"), key_file.to_str().unwrap());
        a.pop3 = "127.0.0.1:21110".parse().unwrap();
        a.http = "127.0.0.1:23128".parse().unwrap();
        let c = init_client(&a).unwrap();
        let cfg = ClientConfig::load(&c.config).unwrap();
        assert_eq!(cfg.services[0].listen.port(), 21110);
        assert_eq!(cfg.services[3].listen.port(), 23128);
        assert_eq!(
            keys::load_public(&cfg.server_public_key).unwrap(),
            kp.public
        );
    }

    #[test]
    fn existing_files_are_not_overwritten_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let key = keys::encode_key(&keys::generate().public);
        let first = init_client(&client_args(&dir, &key)).unwrap();
        let before = std::fs::read(dir.join("client.key")).unwrap();
        let e = init_client(&client_args(&dir, &key))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("client.toml") && e.contains("refusing to overwrite"),
            "{e}"
        );
        assert_eq!(std::fs::read(dir.join("client.key")).unwrap(), before);

        let mut a = client_args(&dir, &key);
        a.force = true;
        let second = init_client(&a).unwrap();
        assert_ne!(second.public_key, first.public_key);
        assert_ne!(std::fs::read(dir.join("client.key")).unwrap(), before);

        // A server's authorized_keys survives --force: it lists the boats.
        let sdir = tmp.path().join("s");
        init_server(&server_args(&sdir)).unwrap();
        let boats = format!("name=boat-17 {key}\n");
        std::fs::write(sdir.join("authorized_keys"), &boats).unwrap();
        assert!(init_server(&server_args(&sdir)).is_err());
        let mut a = server_args(&sdir);
        a.force = true;
        let w = init_server(&a).unwrap();
        assert_eq!(w.files.len(), 3);
        assert_eq!(
            std::fs::read_to_string(sdir.join("authorized_keys")).unwrap(),
            boats
        );
    }

    #[test]
    fn bad_arguments_are_refused_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        let key = keys::encode_key(&keys::generate().public);
        type Edit = fn(&mut InitClientArgs);
        let cases: [(&str, Edit); 4] = [
            ("expected HOST:PORT", |a| a.server = "no-port".into()),
            ("neither a base64", |a| a.server_key = "nonsense".into()),
            ("published example key", |a| {
                a.server_key = "xGoUclExgkvCQUEnRMp3SkXD7hwzO2KX0xysQUugnDA=".into()
            }),
            ("use 1 to 64 letters", |a| a.name = Some("boat 17".into())),
        ];
        for (want, edit) in cases {
            let mut a = client_args(&dir, &key);
            edit(&mut a);
            let e = init_client(&a).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(!dir.exists());
        }
        let mut a = server_args(&dir);
        a.imap = Some("mail.example.org".into());
        assert!(init_server(&a).unwrap_err().to_string().contains("--imap"));
        assert!(!dir.exists());
    }

    #[test]
    fn tls_follows_well_known_ports() {
        assert_eq!(tls_for("h:993"), "implicit");
        assert_eq!(tls_for("h:995"), "implicit");
        assert_eq!(tls_for("h:465"), "implicit");
        assert_eq!(tls_for("h:587"), "starttls");
        assert_eq!(tls_for("h:110"), "none");
    }
}
