//! Socket options for the tunnel and local sockets, and `TCP_INFO` (Linux).
//!
//! The tunnel socket has Nagle off (straw batches by itself), a small
//! `TCP_NOTSENT_LOWAT` so unsent data waits in straw's scheduler rather than
//! the kernel, keepalive plus `TCP_USER_TIMEOUT` to notice a dead link, and
//! optional MSS cap, congestion control and buffer sizes. Local sockets get a
//! small receive buffer so backpressure reaches the program.
//!
//! Other platforms (Windows: `straw client` on the boat's laptop) lack some
//! of these; the fallbacks, also in `docs/guide-mail-programs.md`:
//! - `TCP_NOTSENT_LOWAT`: not set; unsent data may wait in the kernel's send
//!   buffer (bound it with `[tcp] send_buffer`), where priorities no longer
//!   apply.
//! - `TCP_USER_TIMEOUT`: not set; keepalive and straw's own dead-link
//!   detection (`dead_after_min_secs`) still notice a dead link.
//! - the MSS cap of local sockets (`local_max_segment`): not set; the small
//!   receive buffer alone carries backpressure to the mail program.
//! - keepalive: where `TCP_KEEPCNT` is missing (Windows before 10 1703,
//!   Wine), Windows' own count of probes (10) instead of 3.
//! - `max_segment` and `congestion`, which are never set by default: an error
//!   naming the option, since the platform cannot do what was asked.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::config::TcpOptions;

/// Turns a setsockopt failure into one line naming the option.
fn opt<T>(what: &str, r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("setting {what}: {e}")))
}

/// Options that only take full effect before the SYN: buffer sizes (they
/// decide the window scale) and the MSS cap.
fn set_pre_connect(s: &SockRef<'_>, opts: &TcpOptions) -> io::Result<()> {
    if let Some(n) = opts.send_buffer {
        opt("SO_SNDBUF", s.set_send_buffer_size(n))?;
    }
    if let Some(n) = opts.recv_buffer {
        opt("SO_RCVBUF", s.set_recv_buffer_size(n))?;
    }
    if let Some(mss) = opts.max_segment {
        opt(&format!("TCP_MAXSEG={mss}"), set_mss(s, mss))?;
    }
    Ok(())
}

/// Caps the MSS (`TCP_MAXSEG`).
#[cfg(unix)]
fn set_mss(s: &SockRef<'_>, mss: u32) -> io::Result<()> {
    s.set_tcp_mss(mss)
}

#[cfg(not(unix))]
fn set_mss(_: &SockRef<'_>, _: u32) -> io::Result<()> {
    Err(unsupported("TCP_MAXSEG"))
}

#[cfg(not(target_os = "linux"))]
fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is not available on this platform"),
    )
}

/// Bounds how long sent data may stay unacknowledged before the kernel gives
/// up on the connection (`TCP_USER_TIMEOUT`, Linux only).
#[cfg(target_os = "linux")]
pub fn set_user_timeout(s: SockRef<'_>, t: Duration) -> io::Result<()> {
    s.set_tcp_user_timeout(Some(t))
}

/// No `TCP_USER_TIMEOUT` here: keepalive and straw's own dead-link detection
/// remain (see the module comment).
#[cfg(not(target_os = "linux"))]
pub fn set_user_timeout(_: SockRef<'_>, _: Duration) -> io::Result<()> {
    Err(unsupported("TCP_USER_TIMEOUT"))
}

/// Dials the tunnel: resolves `addr`, sets the pre-connect options, connects
/// (trying each resolved address in turn) and then [`configure_tunnel`].
pub async fn connect_tunnel(addr: &str, opts: &TcpOptions) -> Result<TcpStream> {
    let stream = connect_with(addr, |s| set_pre_connect(s, opts)).await?;
    configure_tunnel(&stream, opts).with_context(|| format!("tunnel to {addr}"))?;
    Ok(stream)
}

/// Dials an upstream server with a bounded receive buffer (`upstream_recv_buffer`)
/// set before the SYN, then [`configure_local`].
pub async fn connect_local(addr: &str, opts: &TcpOptions) -> Result<TcpStream> {
    let stream = connect_with(addr, |s| {
        opt(
            "SO_RCVBUF",
            s.set_recv_buffer_size(opts.upstream_recv_buffer),
        )
    })
    .await?;
    configure_local(&stream, opts).with_context(|| format!("connection to {addr}"))?;
    Ok(stream)
}

async fn connect_with(
    addr: &str,
    pre: impl Fn(&SockRef<'_>) -> io::Result<()>,
) -> Result<TcpStream> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .collect();
    let mut last = anyhow!("resolving {addr}: no addresses");
    for a in addrs {
        let socket = if a.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .with_context(|| format!("socket for {a}"))?;
        pre(&SockRef::from(&socket)).with_context(|| format!("connecting to {a}"))?;
        match socket.connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = anyhow!("connecting to {addr} ({a}): {e}"),
        }
    }
    Err(last)
}

/// How long keepalive takes to give up on a silent peer: the idle time plus
/// each probe's interval (zero with keepalive off). Must match
/// [`configure_tunnel`].
pub fn keepalive_cycle(opts: &TcpOptions) -> Duration {
    if opts.keepalive_secs == 0 {
        return Duration::ZERO;
    }
    let (idle, every) = keepalive_times(opts);
    idle + every * KEEPALIVE_PROBES
}

/// Probes keepalive sends before it gives up.
const KEEPALIVE_PROBES: u32 = 3;

/// Keepalive's idle time and probe interval: probe every third of the idle
/// time, so a silent peer is noticed after about twice the idle time.
fn keepalive_times(opts: &TcpOptions) -> (Duration, Duration) {
    (
        Duration::from_secs(opts.keepalive_secs),
        Duration::from_secs((opts.keepalive_secs / 3).max(1)),
    )
}

/// Sets the tunnel options on a connected (or accepted) socket.
pub fn configure_tunnel(s: &TcpStream, opts: &TcpOptions) -> io::Result<()> {
    let sock = SockRef::from(s);
    opt("TCP_NODELAY", sock.set_tcp_nodelay(opts.nodelay))?;
    #[cfg(target_os = "linux")]
    opt(
        "TCP_NOTSENT_LOWAT",
        sock.set_tcp_notsent_lowat(opts.notsent_lowat),
    )?;
    if opts.keepalive_secs > 0 {
        let (idle, every) = keepalive_times(opts);
        let ka = TcpKeepalive::new().with_time(idle).with_interval(every);
        let set = sock.set_tcp_keepalive(&ka.clone().with_retries(KEEPALIVE_PROBES));
        // Windows before 10 1703 (and Wine 8) lack TCP_KEEPCNT: keep the
        // time and interval, and Windows' own count of probes (10).
        #[cfg(windows)]
        let set = set.or_else(|_| sock.set_tcp_keepalive(&ka));
        opt("SO_KEEPALIVE", set)?;
    } else {
        opt("SO_KEEPALIVE", sock.set_keepalive(false))?;
    }
    #[cfg(target_os = "linux")]
    if opts.user_timeout_ms > 0 {
        let t = Duration::from_millis(opts.user_timeout_ms.into());
        opt("TCP_USER_TIMEOUT", set_user_timeout(SockRef::from(s), t))?;
    }
    if let Some(cc) = &opts.congestion {
        set_congestion(&sock, cc)?;
    }
    // Accepted sockets get the buffers late (window scale was already chosen
    // from the listener's); still worth setting for the send side.
    set_pre_connect(&sock, opts)
}

#[cfg(target_os = "linux")]
fn set_congestion(sock: &SockRef<'_>, cc: &str) -> io::Result<()> {
    sock.set_tcp_congestion(cc.as_bytes()).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ENOENT) => "is not available on this kernel".to_string(),
            Some(libc::EPERM) => "is not allowed for this user".to_string(),
            _ => format!("cannot be set: {e}"),
        };
        io::Error::new(
            e.kind(),
            format!(
                "TCP congestion control \"{cc}\" {why} (see /proc/sys/net/ipv4/tcp_available_congestion_control)"
            ),
        )
    })
}

/// Congestion control is system-wide elsewhere: asking for one is an error.
#[cfg(not(target_os = "linux"))]
fn set_congestion(_: &SockRef<'_>, cc: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "TCP congestion control \"{cc}\" cannot be chosen per socket on this platform (remove [tcp] congestion)"
        ),
    ))
}

/// Binds a listening socket with SO_REUSEADDR. A receive buffer set here is
/// inherited by accepted sockets before their SYN-ACK, which is how local
/// sockets get small kernel buffers (and the tunnel its window scale).
/// Must be called inside a tokio runtime.
pub fn bind_listener(addr: SocketAddr, recv_buffer: Option<usize>) -> io::Result<TcpListener> {
    listen_with(addr, |socket| {
        if let Some(n) = recv_buffer {
            opt("SO_RCVBUF", socket.set_recv_buffer_size(n))?;
        }
        Ok(())
    })
}

/// Binds and listens with SO_REUSEADDR, after `before_listen` has set the
/// options that accepted sockets must inherit.
fn listen_with(
    addr: SocketAddr,
    before_listen: impl FnOnce(&Socket) -> io::Result<()>,
) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    opt("SO_REUSEADDR", socket.set_reuse_address(true))?;
    before_listen(&socket)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// A listener for local programs (the client's services). Accepted sockets
/// inherit a small receive buffer and a capped MSS, both set before listen:
/// the buffer keeps data from piling up in our kernel, and the MSS cap keeps
/// the program's own send buffer from autotuning to megabytes on loopback,
/// so the program's writes block soon after straw stops reading.
pub fn bind_local_listener(addr: SocketAddr, opts: &TcpOptions) -> io::Result<TcpListener> {
    listen_with(addr, |socket| {
        opt(
            "SO_RCVBUF",
            socket.set_recv_buffer_size(opts.local_recv_buffer),
        )?;
        #[cfg(unix)]
        if opts.local_max_segment > 0 {
            opt("TCP_MAXSEG", socket.set_tcp_mss(opts.local_max_segment))?;
        }
        Ok(())
    })
}

/// Options for a socket to a local program or an upstream server. Buffer
/// sizes were set before connect/listen: shrinking a connected socket's
/// receive buffer stalls loopback transfers.
pub fn configure_local(s: &TcpStream, _opts: &TcpOptions) -> io::Result<()> {
    opt("TCP_NODELAY", SockRef::from(s).set_tcp_nodelay(true))
}

/// Lets an accepted local socket's receive window grow to `n` bytes (never
/// shrinks: that stalls loopback transfers). The listener's small buffer
/// also fixed the window clamp at accept, so on Linux the clamp is raised
/// with it (`TCP_WINDOW_CLAMP`); SO_RCVBUF alone left an upload at 34 MB/s
/// on loopback, both together at 1.5 GB/s.
pub fn grow_local_recv_buffer(s: &TcpStream, n: usize) -> io::Result<()> {
    let sock = SockRef::from(s);
    opt("SO_RCVBUF", sock.set_recv_buffer_size(n))?;
    #[cfg(target_os = "linux")]
    opt("TCP_WINDOW_CLAMP", set_window_clamp(s, n))?;
    Ok(())
}

/// `TCP_WINDOW_CLAMP` (socket2 has no setter for it).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_window_clamp(s: &TcpStream, n: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let val = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
    // SAFETY: the pointer and length describe `val`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_WINDOW_CLAMP,
            (&raw const val).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The parts of the kernel's `struct tcp_info` straw uses (Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Smoothed RTT and its variation, microseconds.
    pub rtt_us: u32,
    pub rttvar_us: u32,
    /// Minimum RTT seen, microseconds (0 if the kernel doesn't report it).
    pub min_rtt_us: u32,
    /// Congestion window, in segments.
    pub snd_cwnd: u32,
    /// Sender MSS in bytes.
    pub snd_mss: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Bytes written but not yet sent (what TCP_NOTSENT_LOWAT limits).
    pub notsent_bytes: u32,
    /// The kernel's delivery-rate estimate, bytes per second.
    pub delivery_rate: u64,
    /// Total bytes acknowledged by the peer.
    pub bytes_acked: u64,
    /// Total retransmitted segments.
    pub total_retrans: u32,
}

/// Reads `TCP_INFO`. Fields a (very old) kernel doesn't fill stay 0.
/// One of straw's few `unsafe` blocks: `getsockopt` into a plain C struct.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn tcp_info(s: &TcpStream) -> io::Result<TcpInfo> {
    use std::os::fd::AsRawFd;
    // libc's glibc tcp_info matches the kernel's linux/tcp.h layout, newer
    // fields included; the kernel copies min(len, its size) and reports it.
    // SAFETY: tcp_info is plain integers, so all-zero is a valid value.
    let mut raw: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `raw`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut raw).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let filled = len as usize;
    let has = |offset: usize, size: usize| offset + size <= filled;
    macro_rules! field {
        ($f:ident) => {
            if has(
                std::mem::offset_of!(libc::tcp_info, $f),
                std::mem::size_of_val(&raw.$f),
            ) {
                raw.$f
            } else {
                Default::default()
            }
        };
    }
    Ok(TcpInfo {
        rtt_us: field!(tcpi_rtt),
        rttvar_us: field!(tcpi_rttvar),
        min_rtt_us: field!(tcpi_min_rtt),
        snd_cwnd: field!(tcpi_snd_cwnd),
        snd_mss: field!(tcpi_snd_mss),
        unacked: field!(tcpi_unacked),
        notsent_bytes: field!(tcpi_notsent_bytes),
        delivery_rate: field!(tcpi_delivery_rate),
        bytes_acked: field!(tcpi_bytes_acked),
        total_retrans: field!(tcpi_total_retrans),
    })
}

// The options checked here are the Linux ones.
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn tunnel_opts() -> TcpOptions {
        TcpOptions {
            nodelay: true,
            notsent_lowat: 4096,
            keepalive_secs: 9,
            user_timeout_ms: 12_345,
            max_segment: Some(1000),
            congestion: Some("reno".into()),
            send_buffer: Some(96 * 1024),
            recv_buffer: Some(96 * 1024),
            local_recv_buffer: 4096,
            local_recv_buffer_max: 256 * 1024,
            local_max_segment: 1400,
            upstream_recv_buffer: 65536,
        }
    }

    fn assert_tunnel_opts(s: &TcpStream, o: &TcpOptions) {
        let sock = SockRef::from(s);
        assert_eq!(sock.tcp_nodelay().unwrap(), o.nodelay);
        assert_eq!(sock.tcp_notsent_lowat().unwrap(), o.notsent_lowat);
        assert!(sock.keepalive().unwrap());
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            Duration::from_secs(o.keepalive_secs)
        );
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(o.user_timeout_ms.into()))
        );
        let cc = sock.tcp_congestion().unwrap();
        let cc = String::from_utf8_lossy(&cc);
        assert_eq!(cc.trim_end_matches('\0'), "reno");
        // Linux doubles the value asked for, for its own bookkeeping.
        assert!(sock.recv_buffer_size().unwrap() >= o.recv_buffer.unwrap());
        assert!(sock.send_buffer_size().unwrap() >= o.send_buffer.unwrap());
    }

    #[tokio::test]
    async fn tunnel_options_are_set_on_both_ends() {
        let o = tunnel_opts();
        let listener = bind_listener(loopback(), o.recv_buffer).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (client, accepted) = tokio::join!(connect_tunnel(&addr, &o), listener.accept());
        let client = client.unwrap();
        let (server, _) = accepted.unwrap();
        configure_tunnel(&server, &o).unwrap();
        assert_tunnel_opts(&client, &o);
        assert_tunnel_opts(&server, &o);
        // The MSS cap reached the connection.
        let mss = tcp_info(&client).unwrap().snd_mss;
        assert!(mss > 0 && mss <= 1000, "snd_mss {mss}");
    }

    /// With the defaults the tunnel's user timeout never undercuts the
    /// keepalive cycle (tcp(7): a shorter one ends an idle connection at the
    /// first late probe).
    #[test]
    fn default_user_timeout_floor_is_the_keepalive_cycle() {
        let o = TcpOptions::default();
        assert_eq!(keepalive_cycle(&o), Duration::from_secs(60));
        let live = crate::client::liveness_config(&Default::default(), &o);
        let fast_link = Duration::from_secs(10);
        assert_eq!(live.user_timeout(fast_link), Some(Duration::from_secs(60)));
        let off = TcpOptions {
            keepalive_secs: 0,
            ..o
        };
        assert_eq!(keepalive_cycle(&off), Duration::ZERO);
    }

    #[tokio::test]
    async fn keepalive_and_user_timeout_can_be_off() {
        let o = TcpOptions {
            keepalive_secs: 0,
            user_timeout_ms: 0,
            nodelay: false,
            ..TcpOptions::default()
        };
        let listener = bind_listener(loopback(), None).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (client, _acc) = tokio::join!(connect_tunnel(&addr, &o), listener.accept());
        let sock = SockRef::from(client.as_ref().unwrap());
        assert!(!sock.keepalive().unwrap());
        assert!(!sock.tcp_nodelay().unwrap());
        assert_eq!(sock.tcp_user_timeout().unwrap(), None);
    }

    #[tokio::test]
    async fn unknown_congestion_control_is_a_clear_error() {
        let o = TcpOptions {
            congestion: Some("no-such-cc".into()),
            ..TcpOptions::default()
        };
        let listener = bind_listener(loopback(), None).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (client, _acc) = tokio::join!(connect_tunnel(&addr, &o), listener.accept());
        let err = format!("{:#}", client.unwrap_err());
        assert!(err.contains("\"no-such-cc\" is not available"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[tokio::test]
    async fn connect_errors_name_the_address() {
        // Bind then drop: nothing listens on this port any more.
        let port = bind_listener(loopback(), None)
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let err = format!(
            "{:#}",
            connect_tunnel(&addr, &TcpOptions::default())
                .await
                .unwrap_err()
        );
        assert!(err.contains(&addr), "{err}");
        let err = connect_tunnel("127.0.0.1", &TcpOptions::default())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("resolving 127.0.0.1"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn local_sockets_get_small_receive_buffers_and_capped_mss() {
        let o = TcpOptions::default();
        let listener = bind_local_listener(loopback(), &o).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (up, acc) = tokio::join!(connect_local(&addr, &o), listener.accept());
        let (accepted, _) = acc.unwrap();
        let up = up.unwrap();
        // Inherited from the listener, before any configure call.
        let sock = SockRef::from(&accepted);
        let inherited = sock.recv_buffer_size().unwrap();
        assert!(inherited <= 4 * o.local_recv_buffer, "{inherited}");
        assert!(sock.tcp_mss().unwrap() <= o.local_max_segment, "mss");
        configure_local(&accepted, &o).unwrap();
        assert!(sock.tcp_nodelay().unwrap());
        let n = SockRef::from(&up).recv_buffer_size().unwrap();
        assert!(
            (o.upstream_recv_buffer..=4 * o.upstream_recv_buffer).contains(&n),
            "{n}"
        );
    }

    #[tokio::test]
    async fn a_local_socket_buffer_grows_after_accept() {
        let o = TcpOptions::default();
        let listener = bind_local_listener(loopback(), &o).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (_up, acc) = tokio::join!(connect_local(&addr, &o), listener.accept());
        let (accepted, _) = acc.unwrap();
        let sock = SockRef::from(&accepted);
        let before = sock.recv_buffer_size().unwrap();
        grow_local_recv_buffer(&accepted, o.local_recv_buffer_max).unwrap();
        let after = sock.recv_buffer_size().unwrap();
        assert!(
            after >= o.local_recv_buffer_max && after > before,
            "{before} -> {after}"
        );
    }

    #[tokio::test]
    async fn tcp_info_reports_rtt_and_unsent_bytes() {
        let o = TcpOptions {
            max_segment: None,
            congestion: None,
            ..tunnel_opts()
        };
        let listener = bind_listener(loopback(), Some(4096)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (client, acc) = tokio::join!(connect_tunnel(&addr, &o), listener.accept());
        let mut client = client.unwrap();
        let (mut server, _) = acc.unwrap();

        // Ping-pong so the RTT estimator has samples.
        let mut buf = vec![0u8; 1024];
        for _ in 0..50 {
            client.write_all(&buf).await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(&buf).await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
        }
        let info = tcp_info(&client).unwrap();
        assert!(info.rtt_us > 0, "{info:?}");
        assert!(info.min_rtt_us > 0, "{info:?}");
        assert!(info.snd_cwnd > 0, "{info:?}");
        assert!(info.bytes_acked >= 50 * 1024, "{info:?}");
        assert!(info.delivery_rate > 0, "{info:?}");
        assert_eq!(info.notsent_bytes, 0, "{info:?}");

        // Stall the receiver (small window) and write until the socket
        // refuses: the excess must show up as unsent bytes.
        let chunk = vec![7u8; 8192];
        let mut wrote = 0usize;
        for _ in 0..10_000 {
            match client.try_write(&chunk) {
                Ok(n) => wrote += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let info = tcp_info(&client).unwrap();
        assert!(wrote > 0);
        assert!(info.notsent_bytes > 0, "wrote {wrote}, {info:?}");
        // NOTSENT_LOWAT keeps the kernel's unsent backlog near the limit.
        assert!(
            info.notsent_bytes as usize <= o.notsent_lowat as usize + chunk.len(),
            "{info:?}"
        );
    }
}
