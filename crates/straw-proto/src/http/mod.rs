//! HTTP accelerator pair (DESIGN §6): a forward proxy.
//!
//! The client side takes absolute-URI requests from the browser; blocked hosts
//! get a local 403 that never crosses the link. The server side rewrites each
//! request to origin form, asks the origin for gzip, and decodes it, so that
//! the tunnel codec sees plain bytes; every response crosses framed with
//! `Content-Length` or chunked. CONNECT is tunnelled raw.
//!
//! The driver dials lazily: it reads the first request from the stream,
//! calls [`parse_target`], checks the resolved addresses with
//! [`is_private_ip`] (unless private targets are allowed), connects, and only
//! then feeds the request to [`ServerAccel`]. One origin per connection: the
//! client side answers 502 to a request naming another origin.

#[cfg(test)]
mod tests;

use crate::{AccelStats, Accelerator, Output};
use std::collections::VecDeque;
use std::io::Write;
use std::net::IpAddr;

/// Bodies bigger than this are scheduled as bulk.
const BULK_BODY: u64 = 16 * 1024;
/// Decoded gzip bodies up to this size are held to be sent with a length.
const HOLD_DECODED: usize = 64 * 1024;
/// Gzip input fed per step, so one step cannot inflate past the guard by much.
const GZ_STEP: usize = 1024;

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

fn split_authority(a: &str, default: u16) -> Option<(String, u16)> {
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
fn absolute_uri(t: &str) -> Option<(String, u16, String)> {
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

// ---------------------------------------------------------------- parsing

#[derive(Debug, Clone)]
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    fn set(&mut self, name: &str, value: String) {
        self.remove(name);
        self.headers.push((name.to_string(), value));
    }

    fn chunked(&self) -> bool {
        self.get("Transfer-Encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn content_length(&self) -> Result<Option<u64>, String> {
        match self.get("Content-Length") {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("bad Content-Length {v:?}")),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut s = self.start.clone();
        s.push_str("\r\n");
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// Input not yet consumed.
#[derive(Debug, Default)]
struct Input {
    buf: Vec<u8>,
    pos: usize,
}

impl Input {
    fn push(&mut self, d: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(d);
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let v = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        v
    }

    fn line(&mut self, max: usize) -> Result<Option<Vec<u8>>, String> {
        match self.avail().windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                let l = self.take(i);
                self.pos += 2;
                Ok(Some(l))
            }
            None if self.avail().len() > max => Err("HTTP line too long".into()),
            None => Ok(None),
        }
    }

    fn head(&mut self, max: usize) -> Result<Option<Head>, String> {
        let a = self.avail();
        let Some(i) = a.windows(4).position(|w| w == b"\r\n\r\n") else {
            if a.len() > max {
                return Err(format!("HTTP head longer than {max} bytes"));
            }
            return Ok(None);
        };
        if i > max {
            return Err(format!("HTTP head longer than {max} bytes"));
        }
        let text = std::str::from_utf8(&a[..i]).map_err(|_| "HTTP head is not UTF-8")?;
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        if start.split(' ').count() < 2 {
            return Err(format!("malformed HTTP start line {start:?}"));
        }
        let mut headers = Vec::new();
        for l in lines {
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| format!("malformed HTTP header {l:?}"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        self.pos += i + 4;
        Ok(Some(Head { start, headers }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

enum BodyEv {
    Data(Vec<u8>),
    End,
}

/// One step of body decoding (framing only). None: need more input.
fn body_step(f: &mut Framing, inp: &mut Input) -> Result<Option<BodyEv>, String> {
    loop {
        match f {
            Framing::Length(0) => return Ok(Some(BodyEv::End)),
            Framing::Length(n) => {
                let k = (*n).min(inp.avail().len() as u64) as usize;
                if k == 0 {
                    return Ok(None);
                }
                *n -= k as u64;
                return Ok(Some(BodyEv::Data(inp.take(k))));
            }
            Framing::Close => {
                let k = inp.avail().len();
                if k == 0 {
                    return Ok(None);
                }
                return Ok(Some(BodyEv::Data(inp.take(k))));
            }
            Framing::Chunked(c) => match c {
                Chunk::Size => {
                    let Some(l) = inp.line(1024)? else {
                        return Ok(None);
                    };
                    let l = String::from_utf8_lossy(&l);
                    let hex = l.split(';').next().unwrap_or("").trim();
                    let n = u64::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad chunk size {hex:?}"))?;
                    *c = if n == 0 {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(n)
                    };
                }
                Chunk::Data(n) => {
                    let k = (*n).min(inp.avail().len() as u64) as usize;
                    if k == 0 {
                        return Ok(None);
                    }
                    *n -= k as u64;
                    if *n == 0 {
                        *c = Chunk::DataEnd;
                    }
                    return Ok(Some(BodyEv::Data(inp.take(k))));
                }
                Chunk::DataEnd => {
                    let Some(l) = inp.line(2)? else {
                        return Ok(None);
                    };
                    if !l.is_empty() {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    *c = Chunk::Size;
                }
                Chunk::Trailer => {
                    let Some(l) = inp.line(8192)? else {
                        return Ok(None);
                    };
                    if l.is_empty() {
                        return Ok(Some(BodyEv::End));
                    }
                }
            },
        }
    }
}

fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

fn local_reply(status: &str, why: &str) -> Vec<u8> {
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{status}</title></head><body><h1>{status}</h1><p>{why}</p></body></html>\n"
    );
    let mut v = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body.as_bytes());
    v
}

fn request_framing(h: &Head) -> Result<Option<Framing>, String> {
    if h.chunked() {
        return Ok(Some(Framing::Chunked(Chunk::Size)));
    }
    Ok(match h.content_length()? {
        Some(n) if n > 0 => Some(Framing::Length(n)),
        _ => None,
    })
}

/// Whether a response to `head_req` with this status carries a body, and
/// whether it is final (1xx are not).
fn response_shape(status: u16, head_req: bool) -> (bool, bool) {
    let interim = (100..200).contains(&status) && status != 101;
    let bodyless = head_req || interim || status == 204 || status == 304 || status == 101;
    (!bodyless, !interim)
}

fn status_of(h: &Head) -> Result<u16, String> {
    h.start
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP status line {:?}", h.start))
}

// ---------------------------------------------------------------- client

#[derive(Debug)]
enum ReqState {
    Head,
    /// Forwarding a request body; chunked bodies are re-chunked.
    Body(Framing),
    /// CONNECT or protocol switch: raw bytes both ways.
    Raw,
    /// A local reply ended the connection; ignore the rest.
    Closed,
}

#[derive(Debug)]
enum RespState {
    Head,
    Body(Framing),
}

/// Client side: the browser's forward proxy.
#[derive(Debug)]
pub struct ClientAccel {
    policy: HttpPolicy,
    req: Input,
    req_state: ReqState,
    origin: Option<(String, u16)>,
    /// Outstanding requests: is it HEAD?
    outstanding: VecDeque<bool>,
    /// A local reply waiting for earlier responses to finish.
    deferred: Option<Vec<u8>>,
    resp: Input,
    resp_state: RespState,
    raw: bool,
    unflushed: bool,
    stats: AccelStats,
    failed: bool,
}

impl ClientAccel {
    pub fn new(policy: HttpPolicy) -> Self {
        ClientAccel {
            policy,
            req: Input::default(),
            req_state: ReqState::Head,
            origin: None,
            outstanding: VecDeque::new(),
            deferred: None,
            resp: Input::default(),
            resp_state: RespState::Head,
            raw: false,
            unflushed: false,
            stats: AccelStats::default(),
            failed: false,
        }
    }

    /// Nothing to serve at start; present for symmetry with the others.
    pub fn start(&mut self, _out: &mut Output) {}

    fn reply_locally(&mut self, out: &mut Output, status: &str, why: &str) {
        let r = local_reply(status, why);
        self.stats.local_replies += 1;
        if self.outstanding.is_empty() {
            out.to_local.extend_from_slice(&r);
        } else {
            self.deferred = Some(r);
        }
        self.req_state = ReqState::Closed;
    }

    fn forward(&mut self, out: &mut Output, bytes: &[u8], head_req: bool) {
        if self.outstanding.is_empty() {
            self.stats.link_waits += 1;
        }
        self.outstanding.push_back(head_req);
        out.to_tunnel.extend_from_slice(bytes);
    }

    fn on_head(&mut self, h: Head, out: &mut Output) -> Result<(), String> {
        let mut parts = h.start.split(' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        if method.eq_ignore_ascii_case("CONNECT") {
            let Some((host, _)) = split_authority(&target, 443) else {
                self.reply_locally(out, "400 Bad Request", "Malformed CONNECT target.");
                return Ok(());
            };
            if self.policy.is_blocked(&host) {
                let why = format!("{host} is blocked by the straw host policy.");
                self.reply_locally(out, "403 Forbidden", &why);
                return Ok(());
            }
            self.forward(out, &h.bytes(), false);
            self.req_state = ReqState::Raw;
            self.raw = true;
            self.unflushed = true;
            return Ok(());
        }
        let Some((host, port, _)) = absolute_uri(&target) else {
            self.reply_locally(
                out,
                "400 Bad Request",
                "straw is a forward proxy: requests need an absolute http:// URI.",
            );
            return Ok(());
        };
        if self.policy.is_blocked(&host) {
            let why = format!("{host} is blocked by the straw host policy.");
            self.reply_locally(out, "403 Forbidden", &why);
            return Ok(());
        }
        match &self.origin {
            None => self.origin = Some((host.clone(), port)),
            Some(o) if *o == (host.clone(), port) => {}
            Some(_) => {
                self.reply_locally(
                    out,
                    "502 Bad Gateway",
                    "One origin per proxy connection; please reconnect.",
                );
                return Ok(());
            }
        }
        let framing = request_framing(&h)?;
        self.forward(out, &h.bytes(), method.eq_ignore_ascii_case("HEAD"));
        match framing {
            Some(f) => self.req_state = ReqState::Body(f),
            None => self.unflushed = true,
        }
        Ok(())
    }

    fn pump_req(&mut self, out: &mut Output) -> Result<(), String> {
        loop {
            match &mut self.req_state {
                ReqState::Closed => {
                    self.req.pos = self.req.buf.len();
                    return Ok(());
                }
                ReqState::Raw => {
                    let n = self.req.avail().len();
                    out.to_tunnel.extend_from_slice(&self.req.take(n));
                    self.unflushed |= n > 0;
                    return Ok(());
                }
                ReqState::Head => {
                    let h = match self.req.head(self.policy.max_head) {
                        Ok(Some(h)) => h,
                        Ok(None) => return Ok(()),
                        Err(e) => {
                            self.reply_locally(out, "400 Bad Request", &e);
                            continue;
                        }
                    };
                    self.on_head(h, out)?;
                }
                ReqState::Body(f) => {
                    let chunked = matches!(f, Framing::Chunked(_));
                    match body_step(f, &mut self.req)? {
                        None => return Ok(()),
                        Some(BodyEv::Data(d)) => {
                            if chunked {
                                chunk(&mut out.to_tunnel, &d);
                            } else {
                                out.to_tunnel.extend_from_slice(&d);
                            }
                        }
                        Some(BodyEv::End) => {
                            if chunked {
                                out.to_tunnel.extend_from_slice(b"0\r\n\r\n");
                            }
                            self.req_state = ReqState::Head;
                            self.unflushed = true;
                        }
                    }
                }
            }
        }
    }

    fn pump_resp(&mut self, out: &mut Output) -> Result<(), String> {
        loop {
            if self.raw {
                let n = self.resp.avail().len();
                out.to_local.extend_from_slice(&self.resp.take(n));
                return Ok(());
            }
            match &mut self.resp_state {
                RespState::Head => {
                    let Some(h) = self.resp.head(self.policy.max_head)? else {
                        return Ok(());
                    };
                    let status = status_of(&h)?;
                    let head_req = self.outstanding.front().copied().unwrap_or(false);
                    let (body, fin) = response_shape(status, head_req);
                    out.to_local.extend_from_slice(&h.bytes());
                    if status == 101 {
                        self.raw = true;
                        continue;
                    }
                    let framing = if !body {
                        Framing::Length(0)
                    } else if h.chunked() {
                        Framing::Chunked(Chunk::Size)
                    } else {
                        match h.content_length()? {
                            Some(n) => {
                                out.bulk |= n > BULK_BODY;
                                Framing::Length(n)
                            }
                            None => {
                                return Err("response from the server side without framing".into());
                            }
                        }
                    };
                    if !fin {
                        continue;
                    }
                    self.resp_state = RespState::Body(framing);
                }
                RespState::Body(f) => {
                    let chunked = matches!(f, Framing::Chunked(_));
                    match body_step(f, &mut self.resp)? {
                        None => return Ok(()),
                        Some(BodyEv::Data(d)) => {
                            if chunked {
                                chunk(&mut out.to_local, &d);
                            } else {
                                out.to_local.extend_from_slice(&d);
                            }
                        }
                        Some(BodyEv::End) => {
                            if chunked {
                                out.to_local.extend_from_slice(b"0\r\n\r\n");
                            }
                            self.resp_state = RespState::Head;
                            self.outstanding.pop_front();
                            if self.outstanding.is_empty()
                                && let Some(r) = self.deferred.take()
                            {
                                out.to_local.extend_from_slice(&r);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Accelerator for ClientAccel {
    fn start(&mut self, out: &mut Output) {
        ClientAccel::start(self, out)
    }

    /// A request still waiting for its response head gets a 502 page; a
    /// response already under way is cut (the browser sees it short).
    fn link_lost(&mut self, out: &mut Output) {
        if self.failed {
            return;
        }
        self.failed = true;
        if !self.raw && matches!(self.resp_state, RespState::Head) && !self.outstanding.is_empty() {
            self.stats.local_replies += 1;
            out.to_local.extend_from_slice(&local_reply(
                "502 Bad Gateway",
                "straw: the link to the server was lost before the response came. Try again later.",
            ));
        }
    }

    fn from_local(&mut self, data: &[u8], drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.req.push(data);
        if let Err(e) = self.pump_req(out) {
            out.fail = Some(format!("HTTP request from the program: {e}"));
            self.failed = true;
            return;
        }
        if drained && self.unflushed {
            out.flush = true;
            self.unflushed = false;
        }
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.resp.push(data);
        if let Err(e) = self.pump_resp(out) {
            out.fail = Some(format!("HTTP response from the server side: {e}"));
            self.failed = true;
        }
    }

    fn stats(&self) -> AccelStats {
        self.stats
    }
}

// ---------------------------------------------------------------- server

/// How the current origin response body goes to the client.
enum Relay {
    /// Plain, same length: bytes as they come.
    Length,
    /// Plain, re-chunked.
    Chunked,
    /// Gzip: decoded; held (head + data) until the end or HOLD_DECODED.
    Gzip {
        dec: Box<flate2::write::GzDecoder<Vec<u8>>>,
        held: Option<Head>,
        total: u64,
    },
}

enum SResp {
    Head,
    Body(Framing, Relay),
    Raw,
}

/// Server side: talks to the origin.
pub struct ServerAccel {
    policy: HttpPolicy,
    origin: Option<(String, u16)>,
    req: Input,
    req_state: ReqState,
    methods: VecDeque<bool>,
    resp: Input,
    resp_state: SResp,
    failed: bool,
}

impl ServerAccel {
    pub fn new(policy: HttpPolicy) -> Self {
        ServerAccel {
            policy,
            origin: None,
            req: Input::default(),
            req_state: ReqState::Head,
            methods: VecDeque::new(),
            resp: Input::default(),
            resp_state: SResp::Head,
            failed: false,
        }
    }

    pub fn start(&mut self, _out: &mut Output) {}

    fn fail(&mut self, out: &mut Output, why: String) {
        if out.fail.is_none() {
            out.fail = Some(why);
        }
        self.failed = true;
    }

    fn on_req_head(&mut self, mut h: Head, out: &mut Output) -> Result<(), String> {
        let mut parts = h.start.splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let version = parts.next().unwrap_or("HTTP/1.1").to_string();
        if method.eq_ignore_ascii_case("CONNECT") {
            let (host, _) = split_authority(&target, 443)
                .ok_or_else(|| format!("bad CONNECT target {target:?}"))?;
            if !self.policy.permits_target(&host) {
                out.to_tunnel.extend_from_slice(&local_reply(
                    "403 Forbidden",
                    "Private targets are not allowed.",
                ));
                out.flush = true;
                self.req_state = ReqState::Closed;
                return Ok(());
            }
            out.to_tunnel
                .extend_from_slice(b"HTTP/1.1 200 Connection established\r\n\r\n");
            out.flush = true;
            self.req_state = ReqState::Raw;
            self.resp_state = SResp::Raw;
            return Ok(());
        }
        let (host, port, path) = absolute_uri(&target)
            .ok_or_else(|| format!("not an absolute http:// URI: {target:?}"))?;
        if !self.policy.permits_target(&host) {
            out.to_tunnel.extend_from_slice(&local_reply(
                "403 Forbidden",
                "Private targets are not allowed.",
            ));
            out.flush = true;
            self.req_state = ReqState::Closed;
            return Ok(());
        }
        match &self.origin {
            None => self.origin = Some((host.clone(), port)),
            Some(o) if *o == (host.clone(), port) => {}
            Some(o) => {
                return Err(format!(
                    "request for {host}:{port} on a connection to {}:{}",
                    o.0, o.1
                ));
            }
        }
        let framing = request_framing(&h)?;
        h.start = format!("{method} {path} {version}");
        h.remove("Proxy-Connection");
        h.remove("Proxy-Authorization");
        h.set("Accept-Encoding", "gzip".into());
        if h.get("Host").is_none() {
            let host_hdr = if port == 80 {
                host
            } else {
                format!("{host}:{port}")
            };
            h.headers.insert(0, ("Host".into(), host_hdr));
        }
        out.to_local.extend_from_slice(&h.bytes());
        self.methods.push_back(method.eq_ignore_ascii_case("HEAD"));
        if let Some(f) = framing {
            self.req_state = ReqState::Body(f);
        }
        Ok(())
    }

    fn pump_req(&mut self, out: &mut Output) -> Result<(), String> {
        loop {
            match &mut self.req_state {
                ReqState::Closed => {
                    self.req.pos = self.req.buf.len();
                    return Ok(());
                }
                ReqState::Raw => {
                    let n = self.req.avail().len();
                    out.to_local.extend_from_slice(&self.req.take(n));
                    return Ok(());
                }
                ReqState::Head => {
                    let Some(h) = self.req.head(self.policy.max_head)? else {
                        return Ok(());
                    };
                    self.on_req_head(h, out)?;
                }
                ReqState::Body(f) => {
                    let chunked = matches!(f, Framing::Chunked(_));
                    match body_step(f, &mut self.req)? {
                        None => return Ok(()),
                        Some(BodyEv::Data(d)) if chunked => chunk(&mut out.to_local, &d),
                        Some(BodyEv::Data(d)) => out.to_local.extend_from_slice(&d),
                        Some(BodyEv::End) => {
                            if chunked {
                                out.to_local.extend_from_slice(b"0\r\n\r\n");
                            }
                            self.req_state = ReqState::Head;
                        }
                    }
                }
            }
        }
    }

    fn on_resp_head(&mut self, mut h: Head, out: &mut Output) -> Result<(), String> {
        let status = status_of(&h)?;
        let head_req = self.methods.front().copied().unwrap_or(false);
        let (body, fin) = response_shape(status, head_req);
        if status == 101 {
            out.to_tunnel.extend_from_slice(&h.bytes());
            out.flush = true;
            self.resp_state = SResp::Raw;
            self.req_state = ReqState::Raw;
            return Ok(());
        }
        if !body {
            out.to_tunnel.extend_from_slice(&h.bytes());
            out.flush = true;
            if fin {
                self.methods.pop_front();
            }
            return Ok(());
        }
        let framing = if h.chunked() {
            Framing::Chunked(Chunk::Size)
        } else {
            match h.content_length()? {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        let gzip = h
            .get("Content-Encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip") || v.eq_ignore_ascii_case("x-gzip"));
        let relay = if gzip {
            h.remove("Content-Encoding");
            h.remove("Content-Length");
            h.remove("Transfer-Encoding");
            Relay::Gzip {
                dec: Box::new(flate2::write::GzDecoder::new(Vec::new())),
                held: Some(h),
                total: 0,
            }
        } else if let Framing::Length(n) = framing {
            out.bulk |= n > BULK_BODY;
            out.to_tunnel.extend_from_slice(&h.bytes());
            Relay::Length
        } else {
            h.remove("Content-Length");
            h.set("Transfer-Encoding", "chunked".into());
            out.to_tunnel.extend_from_slice(&h.bytes());
            Relay::Chunked
        };
        self.resp_state = SResp::Body(framing, relay);
        Ok(())
    }

    /// Decoded gzip output so far: held, or sent as chunks once too big.
    fn gz_emit(relay: &mut Relay, out: &mut Output, max: u64, end: bool) -> Result<(), String> {
        let Relay::Gzip { dec, held, total } = relay else {
            return Ok(());
        };
        let produced = dec.get_ref().len();
        if *total + produced as u64 > max {
            return Err(format!(
                "gzip body decodes to more than {max} bytes (bomb guard)"
            ));
        }
        if held.is_some() && !end && produced <= HOLD_DECODED {
            return Ok(());
        }
        let data = std::mem::take(dec.get_mut());
        *total += data.len() as u64;
        out.bulk |= *total > BULK_BODY;
        if let Some(mut h) = held.take() {
            if end {
                h.set("Content-Length", data.len().to_string());
                out.to_tunnel.extend_from_slice(&h.bytes());
                out.to_tunnel.extend_from_slice(&data);
                return Ok(());
            }
            h.set("Transfer-Encoding", "chunked".into());
            out.to_tunnel.extend_from_slice(&h.bytes());
        }
        chunk(&mut out.to_tunnel, &data);
        if end {
            out.to_tunnel.extend_from_slice(b"0\r\n\r\n");
        }
        Ok(())
    }

    fn finish_body(&mut self, out: &mut Output) -> Result<(), String> {
        let state = std::mem::replace(&mut self.resp_state, SResp::Head);
        if let SResp::Body(_, mut relay) = state {
            match &mut relay {
                Relay::Length => {}
                Relay::Chunked => out.to_tunnel.extend_from_slice(b"0\r\n\r\n"),
                Relay::Gzip { dec, .. } => {
                    dec.try_finish()
                        .map_err(|e| format!("corrupt gzip body from the origin: {e}"))?;
                    Self::gz_emit(&mut relay, out, self.policy.max_decoded, true)?;
                }
            }
        }
        self.methods.pop_front();
        out.flush = true;
        Ok(())
    }

    fn pump_resp(&mut self, out: &mut Output) -> Result<(), String> {
        loop {
            match &mut self.resp_state {
                SResp::Raw => {
                    let n = self.resp.avail().len();
                    out.to_tunnel.extend_from_slice(&self.resp.take(n));
                    out.flush |= n > 0;
                    return Ok(());
                }
                SResp::Head => {
                    let Some(h) = self.resp.head(self.policy.max_head)? else {
                        return Ok(());
                    };
                    self.on_resp_head(h, out)?;
                }
                SResp::Body(f, relay) => match body_step(f, &mut self.resp)? {
                    None => return Ok(()),
                    Some(BodyEv::End) => self.finish_body(out)?,
                    Some(BodyEv::Data(d)) => match relay {
                        Relay::Length => {
                            out.to_tunnel.extend_from_slice(&d);
                        }
                        Relay::Chunked => {
                            out.bulk |= d.len() as u64 > BULK_BODY;
                            chunk(&mut out.to_tunnel, &d);
                        }
                        Relay::Gzip { .. } => {
                            let max = self.policy.max_decoded;
                            for piece in d.chunks(GZ_STEP) {
                                if let Relay::Gzip { dec, .. } = relay {
                                    dec.write_all(piece).map_err(|e| {
                                        format!("corrupt gzip body from the origin: {e}")
                                    })?;
                                }
                                Self::gz_emit(relay, out, max, false)?;
                            }
                        }
                    },
                },
            }
        }
    }

    /// The origin closed its side: ends a body delimited by the close.
    pub fn local_closed(&mut self, out: &mut Output) {
        if self.failed {
            return;
        }
        if let SResp::Body(Framing::Close, _) = self.resp_state {
            if let Err(e) = self.finish_body(out) {
                self.fail(out, e);
            }
        } else if let SResp::Body(..) = self.resp_state {
            self.fail(out, "the origin closed in the middle of a response".into());
        }
    }
}

impl Accelerator for ServerAccel {
    fn start(&mut self, out: &mut Output) {
        ServerAccel::start(self, out)
    }

    fn local_eof(&mut self, out: &mut Output) {
        self.local_closed(out)
    }

    fn from_local(&mut self, data: &[u8], _drained: bool, out: &mut Output) {
        if self.failed {
            return;
        }
        self.resp.push(data);
        if let Err(e) = self.pump_resp(out) {
            self.fail(out, format!("HTTP response from the origin: {e}"));
        }
    }

    fn from_tunnel(&mut self, data: &[u8], out: &mut Output) {
        if self.failed {
            return;
        }
        self.req.push(data);
        if let Err(e) = self.pump_req(out) {
            self.fail(out, format!("HTTP request from the client side: {e}"));
        }
    }
}
