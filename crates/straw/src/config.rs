//! TOML configuration for `straw client` and `straw server`.
//!
//! Every key is documented in the README; `examples/*.toml` carry the same
//! comments. Unknown keys are an error, so a typo never silently does nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Socket options for the tunnel connection (both sides) and local sockets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpOptions {
    /// Disable Nagle: straw batches by itself.
    pub nodelay: bool,
    /// TCP_NOTSENT_LOWAT in bytes: keep unsent data in straw's scheduler, not the kernel.
    pub notsent_lowat: u32,
    /// Keepalive idle time in seconds (0 disables keepalive).
    pub keepalive_secs: u64,
    /// TCP_USER_TIMEOUT in milliseconds (0 leaves the kernel default). On the
    /// tunnel socket this is the ceiling: the tunnel lowers it to follow the
    /// measured link (1.5 × its dead-link detection time), never below the
    /// keepalive cycle.
    pub user_timeout_ms: u32,
    /// Optional TCP_MAXSEG cap for slow links.
    pub max_segment: Option<u32>,
    /// Optional congestion-control algorithm, e.g. "cubic" or "bbr".
    pub congestion: Option<String>,
    /// Optional SO_SNDBUF / SO_RCVBUF for the tunnel socket.
    pub send_buffer: Option<usize>,
    pub recv_buffer: Option<usize>,
    /// SO_RCVBUF for sockets from local programs, small so that backpressure
    /// reaches the program instead of piling up in the kernel.
    pub local_recv_buffer: usize,
    /// The most that buffer grows to when the measured link is fast (about
    /// one second of it): one upload on loopback moved 46-95 MB/s with 4 KiB.
    pub local_recv_buffer_max: usize,
    /// TCP_MAXSEG for sockets from local programs (0 = kernel default).
    pub local_max_segment: u32,
    /// SO_RCVBUF for the server's sockets to real servers.
    pub upstream_recv_buffer: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            nodelay: true,
            notsent_lowat: 2048,
            keepalive_secs: 30,
            user_timeout_ms: 60_000,
            max_segment: None,
            congestion: None,
            send_buffer: None,
            recv_buffer: None,
            local_recv_buffer: 4096,
            local_recv_buffer_max: 256 * 1024,
            local_max_segment: 1400,
            upstream_recv_buffer: 65536,
        }
    }
}

/// Session tuning shared by both sides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionOptions {
    /// Link rate assumed before the first measurement, in bits per second.
    pub initial_rate_bps: u64,
    /// Unacked data in flight is bounded by rate × this many seconds.
    pub inflight_secs: f64,
    /// A record occupies the link for at most about this many seconds.
    pub record_secs: f64,
    /// Receive window per stream, in raw bytes.
    pub stream_window: u64,
    /// Maximum concurrent streams per tunnel.
    pub max_streams: usize,
    /// Seconds allowed for the Noise handshake.
    pub handshake_timeout_secs: u64,
    /// After the link drops, both sides keep the session and its local
    /// connections this long for the client to reconnect and resume.
    pub resume_grace_secs: u64,
    /// Client: first and largest delay between reconnect attempts (doubling).
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Dead-link detection: a link that stays silent for a few loaded round
    /// trips after a PING is dropped (and resumed); never sooner than this.
    pub dead_after_min_secs: f64,
    /// PING a link this quiet when nothing awaits an answer (0: never); each
    /// tunnel moves it by up to ±10% so tunnels started together spread out.
    pub idle_ping_secs: u64,
    /// Server: how long to keep a session whose link ended with no
    /// connections in it (a client's idle hang-up), for the next dial.
    pub hangup_park_secs: u64,
    /// After this many seconds without compressed traffic, both directions'
    /// compression contexts go back to their primed state, so an idle tunnel
    /// holds no codec state (0: never). The next message pays a little
    /// warm-up; a redial within this time resumes warm.
    pub codec_idle_reset_secs: u64,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            initial_rate_bps: 2400,
            inflight_secs: 2.0,
            record_secs: 1.0,
            stream_window: 256 * 1024,
            max_streams: 1024,
            handshake_timeout_secs: 30,
            resume_grace_secs: 600,
            reconnect_min_ms: 1000,
            reconnect_max_ms: 60_000,
            dead_after_min_secs: 10.0,
            idle_ping_secs: 60,
            hangup_park_secs: 6 * 3600,
            codec_idle_reset_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the tunnel listens on.
    pub listen: SocketAddr,
    /// The server's private key file (from `straw keygen`).
    pub private_key: PathBuf,
    /// File of authorised client public keys, one per line, with options
    /// (see [`crate::authorized`]); re-read on SIGHUP and when it changes.
    pub authorized_keys: PathBuf,
    /// Service name → upstream address.
    pub services: std::collections::BTreeMap<String, ServerService>,
    #[serde(default)]
    pub http: ServerHttp,
    #[serde(default)]
    pub tcp: TcpOptions,
    #[serde(default)]
    pub session: SessionOptions,
    #[serde(default)]
    pub smtp_resume: ServerSmtpResume,
    #[serde(default)]
    pub limits: ServerLimits,
    #[serde(default)]
    pub metrics: ServerMetrics,
    /// Accept a private key that other users can read, or one of the
    /// published example keys (demos and tests only).
    #[serde(default)]
    pub allow_insecure_keys: bool,
    /// How often (ms) to look whether `authorized_keys` changed (size,
    /// modification time, inode); a change is loaded once the file held
    /// still for one interval. 0: only on SIGHUP.
    #[serde(default = "default_keys_poll_ms")]
    pub authorized_keys_poll_ms: u64,
}

fn default_keys_poll_ms() -> u64 {
    2000
}

/// Server `[limits]`: what unauthenticated connections may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Handshakes in progress at once; past it the oldest of the address
    /// holding the most is dropped.
    pub max_pending_handshakes: usize,
    /// Handshakes in progress from one source address; past it that
    /// address's oldest is dropped.
    pub max_pending_per_ip: usize,
    /// A new connection must send its first handshake message this soon.
    pub first_message_timeout_ms: u64,
    /// At most one log line per reason (rejected handshake, dropped for room,
    /// accept failure) this often; the next line counts the ones left out.
    pub log_interval_secs: u64,
    /// Live tunnels (sessions carried by a connection); past it a new or
    /// resuming client is refused after authentication, with a log line.
    pub max_tunnels: usize,
    /// Sessions, live and parked, of one client key; past it the key's
    /// oldest parked session is dropped (refused if all are live).
    pub max_sessions_per_key: usize,
    /// Parked sessions (waiting for their clients) over all keys; past it
    /// the oldest parked is dropped.
    pub max_parked_sessions: usize,
    /// Memory of the parked sessions together (bytes: codec state and what
    /// they buffer, measured when each is parked); past it the oldest
    /// parked are dropped.
    pub max_parked_bytes: u64,
    /// Refuse a client whose handshake timestamp is further than this from
    /// our clock (0: never; only the per-key order is checked).
    pub max_clock_skew_secs: u64,
    /// Receive credit one tunnel may have granted over all its streams
    /// (bytes): what an authorised client can make the server hold for it
    /// behind upstreams that don't read. A client's OPEN past
    /// `tunnel_buffer_bytes / [session] stream_window` streams is refused.
    pub tunnel_buffer_bytes: u64,
    /// Stream bytes buffered over all tunnels (queued for upstream sockets,
    /// held by accelerators, waiting for the link). Past it every tunnel
    /// stops reading upstream sockets and granting credit until it drains.
    pub total_buffer_bytes: u64,
}

/// Default of [`ServerLimits::tunnel_buffer_bytes`]: 32 MiB, 128 streams at
/// the default 256 KiB window (a mail client uses a handful, a browser
/// behind the HTTP proxy a few dozen), an eighth of the 256 MiB that
/// 1,024 streams could be granted before.
pub const TUNNEL_BUFFER_BYTES: u64 = 32 << 20;
/// Default of [`ServerLimits::total_buffer_bytes`]: 1 GiB. 5,000 tunnels
/// that all buffer at once get ~210 KiB each before the budget bites; an
/// idle tunnel buffers nothing. At most this plus the credit outstanding
/// when it bites is held (each tunnel's ≤ `tunnel_buffer_bytes`).
pub const TOTAL_BUFFER_BYTES: u64 = 1 << 30;
/// Default of [`ServerLimits::max_parked_bytes`]: 512 MiB, ~5,000 sessions
/// of clients that vanished mid-transfer with codec state and some replay
/// buffer each (~100 KiB).
pub const MAX_PARKED_BYTES: u64 = 512 << 20;

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_pending_handshakes: 256,
            max_pending_per_ip: 16,
            first_message_timeout_ms: 5000,
            log_interval_secs: 10,
            max_tunnels: 8192,
            max_sessions_per_key: 4,
            max_parked_sessions: 8192,
            max_parked_bytes: MAX_PARKED_BYTES,
            max_clock_skew_secs: 0,
            tunnel_buffer_bytes: TUNNEL_BUFFER_BYTES,
            total_buffer_bytes: TOTAL_BUFFER_BYTES,
        }
    }
}

impl ServerLimits {
    /// The bounds on the server's session table.
    pub fn sessions(&self) -> straw_tunnel::resume::Limits {
        straw_tunnel::resume::Limits {
            max_running: self.max_tunnels,
            max_per_key: self.max_sessions_per_key,
            max_parked: self.max_parked_sessions,
            max_parked_bytes: self.max_parked_bytes,
        }
    }

    /// The clock-skew bound of the handshake replay guard, if any.
    pub fn clock_skew(&self) -> Option<Duration> {
        (self.max_clock_skew_secs > 0).then(|| Duration::from_secs(self.max_clock_skew_secs))
    }
}

/// Server `[metrics]`: a Prometheus text endpoint for the operator (off
/// unless `listen` is set). Anyone who reaches it sees the counters and the
/// client labels, so keep it on loopback or a private network.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerMetrics {
    /// Address of the endpoint (any path answers), e.g. `127.0.0.1:9477`.
    pub listen: Option<SocketAddr>,
}

/// Server `[smtp_resume]`: SMTP bodies are kept (in memory) until complete,
/// so a cut-off send resumes and a confirmed one is never delivered twice.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSmtpResume {
    pub enabled: bool,
    /// Bound on the bytes kept over all clients; oldest written go first.
    pub max_bytes: u64,
    /// How long a partial body or a delivered-message record is kept.
    pub ttl_secs: u64,
    /// Largest body kept for one message, unless the real server's EHLO
    /// announces a smaller `SIZE`; past it the program gets a 552 and the
    /// rest of the body is dropped.
    pub max_message_bytes: u64,
}

impl Default for ServerSmtpResume {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
            ttl_secs: 24 * 3600,
            max_message_bytes: straw_proto::smtp::server::MAX_KEPT_MESSAGE,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerService {
    /// host:port of the real server. Not used by `http`, whose requests name
    /// their origin.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// TLS towards the real server: "none", "implicit" (TLS from the first
    /// byte) or "starttls" (pop3, imap, smtp: upgraded before any command).
    #[serde(default)]
    pub tls: UpstreamTls,
    /// PEM file of the CA certificates to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name the server's certificate must carry (and SNI); default: the
    /// upstream's host.
    #[serde(default)]
    pub tls_name: Option<String>,
    /// Built by [`ServerConfig::load`] so that a bad CA file stops startup.
    #[serde(skip)]
    pub tls_config: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    #[default]
    None,
    Implicit,
    Starttls,
}

impl ServerService {
    /// Checks the TLS settings and loads the trusted roots.
    fn prepare_tls(&mut self, name: &str) -> Result<()> {
        if self.tls == UpstreamTls::None {
            if self.ca_file.is_some() || self.tls_name.is_some() {
                bail!("service {name}: ca_file/tls_name need tls = \"implicit\" or \"starttls\"");
            }
            return Ok(());
        }
        let starttls_ok = matches!(
            self.protocol,
            Protocol::Pop3 | Protocol::Imap | Protocol::Smtp
        );
        match (self.tls, self.protocol) {
            (_, Protocol::Http) => {
                bail!("service {name}: tls is not supported for the http proxy")
            }
            (UpstreamTls::Starttls, _) if !starttls_ok => {
                bail!("service {name}: starttls needs protocol pop3, imap or smtp")
            }
            _ => {}
        }
        let upstream = self.upstream.as_deref().unwrap_or_default();
        crate::upstream::server_name(self.tls_name.as_deref(), upstream)
            .with_context(|| format!("service {name}"))?;
        self.tls_config = Some(
            crate::upstream::client_config(self.ca_file.as_deref())
                .with_context(|| format!("service {name}"))?,
        );
        Ok(())
    }
}

/// Server-side HTTP proxy policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerHttp {
    /// Allow requests to loopback and private addresses (off: no SSRF).
    pub allow_private: bool,
    /// Ports a CONNECT may reach (TLS to web servers by default).
    pub connect_ports: Vec<u16>,
    /// Ports a plain `http://` request may reach.
    pub request_ports: Vec<u16>,
}

impl Default for ServerHttp {
    fn default() -> Self {
        Self {
            allow_private: false,
            connect_ports: vec![443],
            request_ports: vec![80, 8080],
        }
    }
}

impl ServerHttp {
    /// Refuses the SMTP ports in either list: the proxy never reaches them
    /// ([`crate::origin::NEVER_PORTS`]), so listing one is a mistake to say.
    fn check(&self) -> Result<()> {
        for (key, ports) in [
            ("connect_ports", &self.connect_ports),
            ("request_ports", &self.request_ports),
        ] {
            if let Some(p) = ports
                .iter()
                .find(|p| crate::origin::NEVER_PORTS.contains(p))
            {
                bail!(
                    "[http] {key} lists port {p}: the proxy never reaches the mail relay and \
                     submission ports {:?} (an open relay for spam)",
                    crate::origin::NEVER_PORTS
                );
            }
        }
        Ok(())
    }
}

/// Client-side HTTP proxy policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientHttp {
    /// Hosts (and their subdomains) answered with a local 403, never fetched.
    pub blocked_hosts: Vec<String>,
}

/// Client-side IMAP options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientImap {
    /// Send `SELECT INBOX` with the program's LOGIN and answer its own
    /// `SELECT INBOX` from that real reply (only where the server offers
    /// UNSELECT, to undo it when the program wants something else).
    pub prefetch_select: bool,
}

impl Default for ClientImap {
    fn default() -> Self {
        Self {
            prefetch_select: true,
        }
    }
}

/// Client-side POP3 options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientPop3 {
    /// Ask for STAT, UIDL and LIST together with the login, and answer the
    /// program's STAT/UIDL/LIST from those real replies.
    pub prefetch: bool,
    /// With `RETR n`, also ask for `RETR n+1` if LIST says it is at most this
    /// many bytes, and answer the program's `RETR n+1` from that real reply
    /// (0: never). With a depth over 1, the most the messages asked ahead
    /// may add up to (LIST sizes).
    pub prefetch_retr_max_bytes: u64,
    /// How many messages to ask for ahead of the program (1: only `n+1`).
    /// One ahead leaves the link idle for a round trip after each message
    /// shorter than that on the link.
    pub prefetch_retr_depth: u32,
    /// With the login, also ask for message 1 if LIST says it is at most
    /// `prefetch_retr_max_bytes`, for an account whose last session began
    /// with `RETR 1` (a program that deletes what it fetched): its first
    /// RETR then finds the message on its way instead of waiting a round
    /// trip. Not with hold ashore on.
    pub prefetch_first: bool,
    /// Hold ashore: a message whose LIST size is larger is not carried; the
    /// program gets a small stub instead, and the whole message after
    /// `straw hold release ID` (0: off). Needs `prefetch`.
    pub hold_over_bytes: u64,
    /// Senders whose mail is never held (addresses, any case).
    pub hold_except_from: Vec<String>,
    /// The record of held messages; default `$XDG_STATE_HOME/straw/holds.json`.
    pub hold_file: Option<PathBuf>,
    /// The link rate the stub's time and cost estimate assumes.
    pub hold_estimate_bits_per_sec: u64,
}

impl Default for ClientPop3 {
    fn default() -> Self {
        Self {
            prefetch: true,
            prefetch_retr_max_bytes: 64 * 1024,
            prefetch_retr_depth: straw_proto::pop3::DEFAULT_PREFETCH_RETR_DEPTH,
            prefetch_first: true,
            hold_over_bytes: 0,
            hold_except_from: Vec::new(),
            hold_file: None,
            hold_estimate_bits_per_sec: 2400,
        }
    }
}

impl ClientPop3 {
    /// The hold record's path (None: no home to put it in).
    pub fn hold_file(&self) -> Option<PathBuf> {
        self.hold_file.clone().or_else(|| state_dir("holds.json"))
    }

    /// `holds`: some service holds mail ashore (its own threshold or this).
    fn check(&self, holds: bool) -> Result<()> {
        use straw_proto::pop3::hold::{ADDRESS_MAX, EXCEPT_MAX};
        if !holds {
            return Ok(());
        }
        if !self.prefetch {
            bail!(
                "[pop3] hold_over_bytes needs prefetch = true (straw rewrites the login's STAT/UIDL/LIST replies to show held and released messages)"
            );
        }
        if self.hold_except_from.len() > EXCEPT_MAX {
            bail!("[pop3] hold_except_from: at most {EXCEPT_MAX} addresses");
        }
        for a in &self.hold_except_from {
            if !a.contains('@')
                || a.len() > ADDRESS_MAX
                || a.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "<>\",;".contains(c))
            {
                bail!(
                    "[pop3] hold_except_from: {a:?} is not a plain address like captain@example.org"
                );
            }
        }
        Ok(())
    }
}

/// Client `[partial]`: where interrupted message transfers are kept, so
/// that the next attempt only fetches the rest (POP3 RETR).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientPartial {
    pub enabled: bool,
    /// Directory for the partial files; default
    /// `$XDG_STATE_HOME/straw/partial` (or `~/.local/state/straw/partial`).
    pub dir: Option<PathBuf>,
    /// Bound on the bytes kept; the least recently written go first.
    pub max_bytes: u64,
}

impl Default for ClientPartial {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl ClientPartial {
    /// The directory to use: the configured one, else the user's state dir
    /// (None if there is no home to put it in).
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir.clone().or_else(|| state_dir("partial"))
    }
}

/// `$XDG_STATE_HOME/straw/<sub>`, or `~/.local/state/straw/<sub>`, or
/// `%LOCALAPPDATA%\straw\<sub>`.
fn state_dir(sub: &str) -> Option<PathBuf> {
    let env = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("XDG_STATE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".local/state")))
        .or_else(|| env("LOCALAPPDATA")) // Windows, where HOME is usually unset
        .map(|d| d.join("straw").join(sub))
}

/// Client `[cache]`: what real servers said that commits nothing (greetings,
/// IMAP capabilities, the SMTP EHLO reply), so that the next connection is
/// answered locally. Every cached reply is checked against the real one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientCache {
    /// Keep the cache across restarts, one file per service in `dir`.
    pub persist: bool,
    /// Default `$XDG_STATE_HOME/straw/cache` (or `~/.local/state/straw/cache`).
    pub dir: Option<PathBuf>,
    /// When the link comes up, fill each mail service's empty cache with a
    /// short connection of straw's own (greeting, CAPABILITY or EHLO, then
    /// LOGOUT or QUIT; no login). It rides the call that is being made
    /// anyway and saves the mail program one or two link waits per service.
    pub warm_up: bool,
}

impl Default for ClientCache {
    fn default() -> Self {
        Self {
            persist: true,
            dir: None,
            warm_up: true,
        }
    }
}

impl ClientCache {
    /// Where the cache files go, if they are kept.
    pub fn dir(&self) -> Option<PathBuf> {
        if !self.persist {
            return None;
        }
        self.dir.clone().or_else(|| state_dir("cache"))
    }
}

/// Client `[control]`: the local socket `straw status` asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientControl {
    pub enabled: bool,
    /// Default `$XDG_STATE_HOME/straw/control.sock` (or
    /// `~/.local/state/straw/control.sock`).
    pub socket: Option<PathBuf>,
}

impl Default for ClientControl {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: None,
        }
    }
}

impl ClientControl {
    /// The socket's path: the configured one, else in the user's state dir
    /// (None if there is no home to put it in).
    pub fn socket(&self) -> Option<PathBuf> {
        self.socket.clone().or_else(|| state_dir("control.sock"))
    }
}

/// Client `[web]`: the status page in a browser (opt-in).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientWeb {
    pub enabled: bool,
    /// A loopback address only: the page shows what the boat pays and lets
    /// its user release held mail, and has no login.
    pub listen: SocketAddr,
}

/// The page's default port, next to the mail ports (1110, 1143, 1025).
pub const WEB_LISTEN_DEFAULT: &str = "127.0.0.1:1180";

impl Default for ClientWeb {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: WEB_LISTEN_DEFAULT.parse().expect("a socket address"),
        }
    }
}

impl ClientWeb {
    fn check(&self) -> Result<()> {
        if !self.listen.ip().is_loopback() {
            bail!(
                "[web] listen = \"{}\": the status page listens on loopback only (127.0.0.1 or [::1]); it has no login and must not be reachable from the network",
                self.listen
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Generic byte stream, forwarded as is.
    #[default]
    Tcp,
    /// Accelerated mail protocols: cached greetings, batched commands.
    Pop3,
    Smtp,
    Imap,
    /// Forward HTTP proxy (absolute-URI requests, CONNECT).
    Http,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// host:port of `straw server`.
    pub server: String,
    /// The server's public key file (`server.key.pub`).
    pub server_public_key: PathBuf,
    /// This client's private key file.
    pub private_key: PathBuf,
    /// Local listeners.
    #[serde(rename = "service", default)]
    pub services: Vec<ClientService>,
    #[serde(default)]
    pub http: ClientHttp,
    #[serde(default)]
    pub pop3: ClientPop3,
    #[serde(default)]
    pub imap: ClientImap,
    #[serde(default)]
    pub partial: ClientPartial,
    #[serde(default)]
    pub cache: ClientCache,
    #[serde(default)]
    pub control: ClientControl,
    #[serde(default)]
    pub web: ClientWeb,
    #[serde(default)]
    pub tcp: TcpOptions,
    #[serde(default)]
    pub session: SessionOptions,
    #[serde(default)]
    pub link: ClientLink,
    /// Accept a private key that other users can read, or one of the
    /// published example keys (demos and tests only).
    #[serde(default)]
    pub allow_insecure_keys: bool,
}

/// When the client dials the (expensive) link.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Dial {
    /// Keep a link up all the time.
    #[default]
    Always,
    /// Dial when a program connects; hang up after `idle_hangup_secs`.
    OnDemand,
}

/// Client `[link]`: dialling, hanging up, and what a call costs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLink {
    pub dial: Dial,
    /// Close the link after this long with no connections and nothing in
    /// flight (0 = never). The session stays parked on both sides, so the
    /// next dial resumes it warm.
    pub idle_hangup_secs: u64,
    /// Shell commands (`sh -c`) run before each dial (must succeed) and after
    /// each hang-up, e.g. to bring a modem up and down.
    pub on_dial: Option<String>,
    pub on_hangup: Option<String>,
    /// How long those commands may run.
    pub command_timeout_secs: u64,
    /// Airtime price per started minute, for the log line at hang-up.
    pub cost_per_minute: f64,
    /// Money one call may cost (0 = no limit). Once the call's billed cost
    /// (per started minute) reaches it, new bulk transfers wait for the
    /// next call: POP3 RETR, IMAP body FETCH and SMTP MAIL get a temporary
    /// error that makes no mail program delete or bounce anything; other
    /// commands and transfers already under way go on.
    pub budget_per_call: f64,
}

impl Default for ClientLink {
    fn default() -> Self {
        Self {
            dial: Dial::Always,
            idle_hangup_secs: 0,
            on_dial: None,
            on_hangup: None,
            command_timeout_secs: 60,
            cost_per_minute: 1.50,
            budget_per_call: 0.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientService {
    /// Service name, as named in the server's `[services]`.
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// Local address the mail program or browser connects to.
    pub listen: SocketAddr,
    /// POP3 only: this service's own `[pop3] hold_over_bytes` (0: nothing
    /// held on it), so that one mailbox holds big mail ashore and another
    /// doesn't. Unset: the `[pop3]` value.
    #[serde(default)]
    pub hold_over_bytes: Option<u64>,
}

impl ClientConfig {
    /// The hold threshold of service `svc` (0: off there).
    pub fn hold_over_bytes(&self, svc: &ClientService) -> u64 {
        match svc.protocol {
            Protocol::Pop3 => svc.hold_over_bytes.unwrap_or(self.pop3.hold_over_bytes),
            _ => 0,
        }
    }

    /// Some POP3 service holds big mail ashore.
    pub fn holds_any(&self) -> bool {
        self.services.iter().any(|s| self.hold_over_bytes(s) > 0)
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(String::new(), |s| line_col(&text, s.start));
        anyhow::anyhow!("{}:{at} {}", path.display(), e.message())
    })
}

/// `LINE:COLUMN:` (both from 1) of byte `offset` in `text`, for error messages
/// that read `FILE:LINE:COLUMN: problem`.
pub fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{column}:")
}

/// Relative paths in a config file are relative to the file's folder.
fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative()
        && let Some(dir) = base.parent()
    {
        *p = dir.join(&*p);
    }
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let mut c: Self = read_toml(path)?;
        resolve(path, &mut c.private_key);
        resolve(path, &mut c.authorized_keys);
        if c.services.is_empty() {
            bail!("{}: no [services] configured", path.display());
        }
        c.http.check().with_context(|| path.display().to_string())?;
        if c.limits.max_tunnels == 0 || c.limits.max_sessions_per_key == 0 {
            bail!(
                "{}: [limits] max_tunnels and max_sessions_per_key must be at least 1",
                path.display()
            );
        }
        for (name, svc) in &mut c.services {
            if svc.protocol != Protocol::Http && svc.upstream.is_none() {
                bail!("{}: service {name} needs an upstream", path.display());
            }
            if let Some(ca) = &mut svc.ca_file {
                resolve(path, ca);
            }
            svc.prepare_tls(name)
                .with_context(|| path.display().to_string())?;
        }
        Ok(c)
    }
}

impl ServerConfig {
    /// Services whose upstream is reached without TLS and not on loopback:
    /// their passwords cross that hop in clear. (name, upstream)
    pub fn plaintext_upstreams(&self) -> Vec<(&str, &str)> {
        self.services
            .iter()
            .filter(|(_, s)| s.tls == UpstreamTls::None && s.protocol != Protocol::Http)
            .filter_map(|(name, s)| Some((name.as_str(), s.upstream.as_deref()?)))
            .filter(|(_, upstream)| !is_loopback(upstream))
            .collect()
    }
}

/// Whether `host:port` names this machine (an IP on loopback, or localhost).
fn is_loopback(upstream: &str) -> bool {
    if let Ok(addr) = upstream.parse::<SocketAddr>() {
        return addr.ip().is_loopback();
    }
    let host = upstream.rsplit_once(':').map_or(upstream, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let mut c: Self = read_toml(path)?;
        resolve(path, &mut c.private_key);
        resolve(path, &mut c.server_public_key);
        if let Some(d) = &mut c.partial.dir {
            resolve(path, d);
        }
        if let Some(d) = &mut c.cache.dir {
            resolve(path, d);
        }
        if let Some(d) = &mut c.control.socket {
            resolve(path, d);
        }
        if let Some(d) = &mut c.pop3.hold_file {
            resolve(path, d);
        }
        if c.services.is_empty() {
            bail!("{}: no [[service]] configured", path.display());
        }
        for (key, v) in [
            ("cost_per_minute", c.link.cost_per_minute),
            ("budget_per_call", c.link.budget_per_call),
        ] {
            if !v.is_finite() || v < 0.0 {
                bail!("{}: [link] {key} = {v}: must be 0 or more", path.display());
            }
        }
        if let Some(svc) = c
            .services
            .iter()
            .find(|s| s.hold_over_bytes.is_some() && s.protocol != Protocol::Pop3)
        {
            bail!(
                "{}: [[service]] {}: hold_over_bytes is for protocol = \"pop3\" services",
                path.display(),
                svc.name
            );
        }
        c.pop3
            .check(c.holds_any())
            .with_context(|| path.display().to_string())?;
        c.web.check().with_context(|| path.display().to_string())?;
        Ok(c)
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    /// Loads a server config whose only service is `svc` (an inline table).
    fn load_with(tag: &str, svc: &str, ca: Option<&[u8]>) -> Result<ServerConfig> {
        let dir =
            std::env::temp_dir().join(format!("straw-config-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(ca) = ca {
            std::fs::write(dir.join("ca.pem"), ca).unwrap();
        }
        let path = dir.join("server.toml");
        let text = format!(
            "listen = \"127.0.0.1:1\"\nprivate_key = \"k\"\nauthorized_keys = \"a\"\n[services]\nmail = {svc}\n"
        );
        std::fs::write(&path, text).unwrap();
        ServerConfig::load(&path)
    }

    fn err(tag: &str, svc: &str, ca: Option<&[u8]>) -> String {
        format!(
            "{:#}",
            load_with(tag, svc, ca).expect_err("config should be refused")
        )
    }

    #[test]
    fn session_limits_default_and_zero_is_refused() {
        let c = load_with("limits", r#"{ upstream = "h:1" }"#, None).unwrap();
        let l = c.limits.sessions();
        assert_eq!(
            (l.max_running, l.max_per_key, l.max_parked),
            (8192, 4, 8192)
        );
        assert_eq!(c.limits.clock_skew(), None);
        let l = ServerLimits {
            max_clock_skew_secs: 60,
            ..ServerLimits::default()
        };
        assert_eq!(l.clock_skew(), Some(Duration::from_secs(60)));
        let e = err(
            "limits0",
            "{ upstream = \"h:1\" }\n[limits]\nmax_tunnels = 0",
            None,
        );
        assert!(e.contains("must be at least 1"), "{e}");
    }

    #[test]
    fn tls_settings_are_checked_at_load() {
        let e = err("http", r#"{ protocol = "http", tls = "implicit" }"#, None);
        assert!(e.contains("not supported for the http proxy"), "{e}");
        let e = err("tcp", r#"{ upstream = "h:1", tls = "starttls" }"#, None);
        assert!(
            e.contains("starttls needs protocol pop3, imap or smtp"),
            "{e}"
        );
        let e = err(
            "orphan",
            r#"{ upstream = "h:1", protocol = "imap", ca_file = "ca.pem" }"#,
            None,
        );
        assert!(e.contains("ca_file/tls_name need tls"), "{e}");
        let e = err(
            "typo",
            r#"{ upstream = "h:1", protocol = "imap", tls = "yes" }"#,
            None,
        );
        assert!(e.contains("unknown variant"), "{e}");
        // A CA file without certificates stops startup, naming the service.
        let e = err(
            "junk",
            r#"{ upstream = "h:1", protocol = "imap", tls = "implicit", ca_file = "ca.pem" }"#,
            Some(b"junk"),
        );
        assert!(
            e.contains("service mail") && e.contains("no PEM certificates"),
            "{e}"
        );
    }

    #[test]
    fn http_ports_default_to_web_and_never_list_smtp() {
        let d = ServerHttp::default();
        assert_eq!(
            (d.connect_ports, d.request_ports),
            (vec![443], vec![80, 8080])
        );
        let dir = std::env::temp_dir().join(format!("straw-config-ports-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.toml");
        let base = "listen = \"127.0.0.1:1\"\nprivate_key = \"k\"\nauthorized_keys = \"a\"\n[services]\nweb = { protocol = \"http\" }\n[http]\n";
        for (http, ok) in [
            ("connect_ports = [443, 8443]", true),
            ("connect_ports = [443, 25]", false),
            ("request_ports = [80, 587]", false),
            ("request_ports = [465]", false),
        ] {
            std::fs::write(&path, format!("{base}{http}\n")).unwrap();
            match ServerConfig::load(&path) {
                Ok(c) => assert!(ok && c.http.connect_ports == [443, 8443], "{http}"),
                Err(e) => {
                    assert!(!ok, "{http}: {e:#}");
                    assert!(format!("{e:#}").contains("never reaches"), "{e:#}");
                }
            }
        }
    }

    #[test]
    fn plaintext_upstreams_off_loopback_are_named() {
        let c: ServerConfig = toml::from_str(
            r#"
listen = "127.0.0.1:1"
private_key = "k"
authorized_keys = "a"
[services]
remote = { upstream = "mail.example.org:110", protocol = "pop3" }
lan = { upstream = "10.0.0.5:143", protocol = "imap" }
local = { upstream = "127.0.0.1:25", protocol = "smtp" }
named_local = { upstream = "localhost:25", protocol = "smtp" }
v6_local = { upstream = "[::1]:25", protocol = "smtp" }
secure = { upstream = "mail.example.org:993", protocol = "imap", tls = "implicit" }
web = { protocol = "http" }
"#,
        )
        .unwrap();
        assert_eq!(
            c.plaintext_upstreams(),
            [("lan", "10.0.0.5:143"), ("remote", "mail.example.org:110")]
        );
    }

    #[test]
    fn plain_services_need_no_tls_setup() {
        let c = load_with("plain", r#"{ upstream = "h:1", protocol = "pop3" }"#, None).unwrap();
        let svc = &c.services["mail"];
        assert_eq!(svc.tls, UpstreamTls::None);
        assert!(svc.tls_config.is_none());
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    /// The memory budget's defaults, as examples/server.toml states them,
    /// and the arithmetic its comment gives.
    #[test]
    fn memory_budget_defaults_and_their_arithmetic() {
        let text = include_str!("../../../examples/server.toml");
        let c: ServerConfig = toml::from_str(text).expect("example parses");
        let d = ServerLimits::default();
        assert_eq!(c.limits.tunnel_buffer_bytes, d.tunnel_buffer_bytes);
        assert_eq!(c.limits.total_buffer_bytes, d.total_buffer_bytes);
        assert_eq!(
            c.smtp_resume.max_message_bytes,
            ServerSmtpResume::default().max_message_bytes
        );
        let window = SessionOptions::default().stream_window;
        assert_eq!(
            d.tunnel_buffer_bytes / window,
            128,
            "streams at full window"
        );
        let per_tunnel = d.total_buffer_bytes / 5000;
        assert!(
            (200 << 10..220 << 10).contains(&per_tunnel),
            "{per_tunnel} bytes each for 5,000 busy tunnels"
        );
        // 32 tunnels with every grant filled reach it; then credit stops.
        assert_eq!(d.total_buffer_bytes / d.tunnel_buffer_bytes, 32);
    }
}

#[cfg(test)]
mod hold_tests {
    use super::*;

    #[test]
    fn imap_select_prefetch_is_on_unless_turned_off() {
        assert!(ClientImap::default().prefetch_select);
        let c: ClientImap = toml::from_str("prefetch_select = false").unwrap();
        assert!(!c.prefetch_select);
        assert!(toml::from_str::<ClientImap>("prefetch = true").is_err());
    }

    #[test]
    fn hold_needs_prefetch_and_plain_addresses() {
        let mut p = ClientPop3 {
            hold_over_bytes: 51_200,
            hold_except_from: vec!["Captain@Example.org".into()],
            ..Default::default()
        };
        p.check(true).unwrap();
        p.prefetch = false;
        let e = p.check(true).unwrap_err().to_string();
        assert!(e.contains("hold_over_bytes needs prefetch = true"), "{e}");
        p.prefetch = true;
        p.hold_except_from = vec!["Captain <c@x>".into()];
        assert!(p.check(true).is_err());
        // Off: nothing is checked.
        p.check(false).unwrap();
        let c: ClientPop3 = toml::from_str(
            "hold_over_bytes = 51200\nhold_except_from = [\"captain@example.org\"]\n",
        )
        .unwrap();
        assert_eq!(c.hold_except_from, vec!["captain@example.org".to_owned()]);
        assert!(c.prefetch);
    }
}

#[cfg(test)]
mod web_tests {
    use super::*;

    fn load(tag: &str, web: &str) -> Result<ClientConfig> {
        let dir =
            std::env::temp_dir().join(format!("straw-config-web-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.toml");
        let text = format!(
            "server = \"127.0.0.1:1\"\nserver_public_key = \"s\"\nprivate_key = \"k\"\n[[service]]\nname = \"t\"\nlisten = \"127.0.0.1:2\"\n{web}"
        );
        std::fs::write(&path, text).unwrap();
        let r = ClientConfig::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn the_page_is_off_by_default_and_on_loopback_only() {
        let c = load("default", "").unwrap();
        assert!(!c.web.enabled);
        assert_eq!(c.web.listen.to_string(), WEB_LISTEN_DEFAULT);
        let c = load("v6", "[web]\nenabled = true\nlisten = \"[::1]:8080\"\n").unwrap();
        assert!(c.web.enabled);
        for addr in ["0.0.0.0:1180", "192.168.1.5:1180", "[::]:1180"] {
            let e = load("bad", &format!("[web]\nlisten = \"{addr}\"\n")).unwrap_err();
            assert!(format!("{e:#}").contains("loopback only"), "{e:#}");
        }
        // The example config parses and leaves it off.
        let text = include_str!("../../../examples/client.toml");
        let c: ClientConfig = toml::from_str(text).expect("example parses");
        assert!(!c.web.enabled);
    }
}

#[cfg(test)]
mod hold_per_service_tests {
    use super::*;

    const BASE: &str = "server = \"127.0.0.1:1\"\nserver_public_key = \"s\"\nprivate_key = \"k\"\n";

    #[test]
    fn a_service_may_set_its_own_threshold_or_turn_holding_off() {
        let text = format!(
            "{BASE}[pop3]\nhold_over_bytes = 51200\n\
             [[service]]\nname = \"work\"\nprotocol = \"pop3\"\nlisten = \"127.0.0.1:2\"\nhold_over_bytes = 0\n\
             [[service]]\nname = \"home\"\nprotocol = \"pop3\"\nlisten = \"127.0.0.1:3\"\n\
             [[service]]\nname = \"big\"\nprotocol = \"pop3\"\nlisten = \"127.0.0.1:4\"\nhold_over_bytes = 1000000\n\
             [[service]]\nname = \"imap\"\nprotocol = \"imap\"\nlisten = \"127.0.0.1:5\"\n"
        );
        let c: ClientConfig = toml::from_str(&text).unwrap();
        let over: Vec<u64> = c.services.iter().map(|s| c.hold_over_bytes(s)).collect();
        assert_eq!(over, [0, 51_200, 1_000_000, 0]);
        assert!(c.holds_any());

        // Only a service turns it on: [pop3]'s prefetch rule still applies.
        let text = format!(
            "{BASE}[pop3]\nprefetch = false\n\
             [[service]]\nname = \"p\"\nprotocol = \"pop3\"\nlisten = \"127.0.0.1:2\"\nhold_over_bytes = 9\n"
        );
        let e = load(&text).unwrap_err();
        assert!(format!("{e:#}").contains("needs prefetch = true"), "{e:#}");
        // Not a POP3 service: a clear error.
        let text = format!(
            "{BASE}[[service]]\nname = \"i\"\nprotocol = \"imap\"\nlisten = \"127.0.0.1:2\"\nhold_over_bytes = 9\n"
        );
        let e = load(&text).unwrap_err();
        assert!(
            format!("{e:#}").contains("for protocol = \"pop3\""),
            "{e:#}"
        );
    }

    fn load(text: &str) -> Result<ClientConfig> {
        let dir = std::env::temp_dir().join(format!("straw-config-hold-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.toml");
        std::fs::write(&path, text).unwrap();
        let r = ClientConfig::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }
}
