//! Which targets the proxy serves: the host policy (blocked hosts, private
//! targets), and where a request wants to go.

use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPolicy {
    /// Host suffixes refused locally (`example.com` blocks `a.example.com`).
    pub blocked_hosts: Vec<String>,
    /// Allow loopback and private targets (off: no SSRF).
    pub allow_private: bool,
    /// Bomb guard: largest decoded gzip body.
    pub max_decoded: u64,
    /// Largest request or response head.
    pub max_head: usize,
}

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            blocked_hosts: Vec::new(),
            allow_private: false,
            max_decoded: 64 << 20,
            max_head: 64 * 1024,
        }
    }
}

impl HttpPolicy {
    pub fn is_blocked(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.blocked_hosts.iter().any(|b| {
            let b = b.trim_start_matches('.').to_ascii_lowercase();
            host == b || host.ends_with(&format!(".{b}"))
        })
    }

    /// The target may be dialled (literal addresses and names like
    /// `localhost`; the driver must also check what a name resolves to).
    pub fn permits_target(&self, host: &str) -> bool {
        self.allow_private || !is_private_host(host)
    }
}

/// Whether the proxy must refuse `ip` (unless private targets are allowed):
/// anything that is not global unicast. An allow-list of what is public would
/// need updating as registries hand out ranges; this refuses every special
/// range (RFC 6890 and successors) instead, and looks inside addresses that
/// embed an IPv4 address (mapped, compatible, NAT64, 6to4) so that
/// `64:ff9b::a9fe:a9fe` is refused like 169.254.169.254.
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            let [a, b, c, _] = v.octets();
            v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.is_documentation()
                || a == 0
                || a >= 240 // 240.0.0.0/4 reserved
                || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10 shared (CGNAT)
                || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 IETF protocol
                || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            if let Some(inner) = embedded_v4(&s) {
                return is_private_ip(IpAddr::V4(inner));
            }
            // Global unicast is 2000::/3; within it, refuse the documentation,
            // ORCHID, benchmarking and TEREDO/other IETF special ranges.
            (s[0] & 0xe000) != 0x2000
                || s[0] == 0x2001 && s[1] < 0x0200 // 2001::/23 IETF special
                || s[0] == 0x2001 && s[1] == 0x0db8 // 2001:db8::/32 documentation
                || s[0] == 0x3fff && s[1] < 0x1000 // 3fff::/20 documentation
        }
    }
}

/// The IPv4 address inside an IPv6 one that carries it: `::ffff:a.b.c.d`
/// (mapped), `::a.b.c.d` (compatible, deprecated), `::ffff:0:a.b.c.d`
/// (SIIT), `64:ff9b::a.b.c.d` and `64:ff9b:1::/48` (NAT64) and `2002:AABB:CCDD::`
/// (6to4).
fn embedded_v4(s: &[u16; 8]) -> Option<Ipv4Addr> {
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail()),
        [0, 0, 0, 0, 0, 0, _, _] if s[6] != 0 || s[7] > 1 => Some(tail()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail()),
        [0x64, 0xff9b, 1, ..] => Some(tail()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            *hi as u8,
            (lo >> 8) as u8,
            *lo as u8,
        )),
        _ => None,
    }
}

/// A literal private address or a local name.
pub fn is_private_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    if h == "localhost" || h.ends_with(".localhost") {
        return true;
    }
    h.parse::<IpAddr>().is_ok_and(is_private_ip)
}

/// Where the first request on a stream wants to go: `(host, port)`, from an
/// absolute `http://` URI or a CONNECT authority. None if the head is
/// incomplete or not a proxy request.
pub fn parse_target(first_bytes: &[u8]) -> Option<(String, u16)> {
    let end = first_bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&first_bytes[..end]).ok()?;
    let mut it = line.split(' ');
    let method = it.next()?;
    let target = it.next()?;
    if method.eq_ignore_ascii_case("CONNECT") {
        return split_authority(target, 443);
    }
    absolute_uri(target).map(|(h, p, _)| (h, p))
}

pub(crate) fn split_authority(a: &str, default: u16) -> Option<(String, u16)> {
    if a.is_empty() || a.contains('@') {
        return None;
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (a.to_string(), default),
        }
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    ok.then(|| (host.to_ascii_lowercase(), port))
}

/// `http://host[:port]/path` → (host, port, path).
pub(crate) fn absolute_uri(t: &str) -> Option<(String, u16, String)> {
    let scheme_end = t.find("://")?;
    if !t[..scheme_end].eq_ignore_ascii_case("http") {
        return None;
    }
    let rest = &t[scheme_end + 3..];
    let (auth, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let (h, p) = split_authority(auth, 80)?;
    Some((h, p, path))
}
