//! Which targets the proxy serves: the host policy (blocked hosts, private
//! targets), and where a request wants to go.

use std::net::IpAddr;

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

/// Loopback, private, link-local, unspecified, multicast and similar.
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.is_multicast()
                || v.octets()[0] == 0
                || (v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v) => {
            if let Some(m) = v.to_ipv4_mapped() {
                return is_private_ip(IpAddr::V4(m));
            }
            let s = v.segments()[0];
            v.is_loopback()
                || v.is_unspecified()
                || v.is_multicast()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
        }
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
