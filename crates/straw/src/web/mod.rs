//! The client's status page for a browser (`[web]`, off by default): what
//! `straw status` shows, live, plus a chart of the last hours and the
//! messages held ashore.
//!
//! A small HTTP/1.1 responder on a loopback address, one request per
//! connection. The page has no login, so every request is checked as if a
//! hostile web site had made the browser send it: the `Host` must name
//! loopback and our port (DNS rebinding), a POST must come with our own
//! `Origin` (CSRF), and a Content-Security-Policy allows only the page's own
//! inline script and style. Bounded: [`HEAD_MAX`] bytes and [`HEADERS_MAX`]
//! header lines, [`BODY_MAX`] bytes of body, [`PEER_TIME`] per connection,
//! [`CONNECTIONS_MAX`] at once (the rest are closed unanswered).
//!
//! Parsing and answering are plain functions ([`parse_head`], [`answer`]);
//! [`serve`] is the thin tokio driver.

pub mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::status::Board;

/// Longest request head (request line and headers).
pub const HEAD_MAX: usize = 8 * 1024;
/// Most header lines in a request.
pub const HEADERS_MAX: usize = 32;
/// Longest request body (a Release form: one id).
pub const BODY_MAX: usize = 1024;
/// How long a connection may take to send its request and read the answer.
pub const PEER_TIME: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const CONNECTIONS_MAX: usize = 16;
/// Longest held-message id a Release may name.
const ID_MAX: usize = 64;

/// A request head, as much of it as the page needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub content_type: Option<String>,
    pub content_length: usize,
}

/// An answer: status, content type, body and any extra header lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra: Vec<(&'static str, String)>,
}

impl Response {
    fn text(status: u16, msg: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{msg}\n").into_bytes(),
            extra: Vec::new(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Content Too Large",
            415 => "Unsupported Media Type",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            _ => "Error",
        }
    }

    /// The bytes on the wire; `head_only` for HEAD.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nContent-Security-Policy: {}\r\n\
             X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
             Referrer-Policy: no-referrer\r\nConnection: close\r\n",
            self.status,
            self.reason(),
            self.content_type,
            self.body.len(),
            *page::CSP,
        );
        for (k, v) in &self.extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Reads a request head from the start of `buf`: `Ok(None)` while it is
/// incomplete, else the request and the head's length (the body follows).
/// Errors are the answer to send before closing.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, Response> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > HEAD_MAX {
            return Err(Response::text(431, "request head too long"));
        }
        return Ok(None);
    };
    if end + 4 > HEAD_MAX {
        return Err(Response::text(431, "request head too long"));
    }
    let bad = || Response::text(400, "malformed request");
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad())?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (first.next(), first.next(), first.next(), first.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(bad());
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let mut req = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        host: None,
        origin: None,
        content_type: None,
        content_length: 0,
    };
    let mut count = 0;
    for line in lines {
        count += 1;
        if count > HEADERS_MAX {
            return Err(Response::text(431, "too many header lines"));
        }
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let value = value.trim();
        // A repeated Host or Origin is how smuggling starts: refuse.
        let once = |slot: &mut Option<String>| {
            if slot.replace(value.to_owned()).is_some() {
                Err(bad())
            } else {
                Ok(())
            }
        };
        match name.to_ascii_lowercase().as_str() {
            "host" => once(&mut req.host)?,
            "origin" => once(&mut req.origin)?,
            "content-type" => once(&mut req.content_type)?,
            "content-length" => {
                let n: usize = value.parse().map_err(|_| bad())?;
                if n > BODY_MAX {
                    return Err(Response::text(413, "request body too long"));
                }
                req.content_length = n;
            }
            "transfer-encoding" => {
                return Err(Response::text(411, "send a Content-Length, not chunks"));
            }
            _ => {}
        }
    }
    Ok(Some((req, end + 4)))
}

/// The `Host` values that mean this page: loopback names with our port.
/// Anything else is a name some other site resolved to 127.0.0.1.
fn host_ok(host: &str, port: u16) -> bool {
    ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|h| host.eq_ignore_ascii_case(&format!("{h}:{port}")) || (port == 80 && host == *h))
}

/// What the page's Release button asked for a held message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Released; the text says what happens next.
    Done(String),
    /// Not released (no such message, already going, ...): why.
    Refused(String),
    /// This client holds nothing ashore (`[pop3] hold_over_bytes` unset).
    NotBuilt,
}

/// Where the page's Release button lands: the same as the control
/// socket's `hold release ID` (`straw hold release ID`).
pub fn release_held(board: &Board, id: &str) -> Release {
    match board.holds().map(|h| h.release(id)) {
        Some(Ok(e)) => Release::Done(format!(
            "Released {:?} ({} bytes): it arrives whole at the program's next mail check, as one more message.",
            e.subject, e.size
        )),
        Some(Err(why)) => Release::Refused(why),
        None => Release::NotBuilt,
    }
}

/// The answer to a parsed request and its body. `port`: the one we listen
/// on (the `Host` and `Origin` must name it).
pub fn answer(board: &Board, port: u16, req: &Request, body: &[u8]) -> Response {
    let Some(host) = req.host.as_deref().filter(|h| host_ok(h, port)) else {
        return Response::text(
            403,
            "unknown Host: open this page at http://127.0.0.1:PORT/",
        );
    };
    let allow = |methods: &str| {
        let mut r = Response::text(405, "method not allowed");
        r.extra.push(("Allow", methods.to_owned()));
        r
    };
    let now = crate::tunnel::now();
    match (req.path.as_str(), req.method.as_str()) {
        ("/", "GET" | "HEAD") => {
            let history = board.history(now, page::CHART_BUCKET_MINS, page::CHART_BUCKETS);
            Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: page::page(&board.snapshot(now), &history).into_bytes(),
                extra: Vec::new(),
            }
        }
        ("/status.json", "GET" | "HEAD") => {
            let history = board.history(now, page::CHART_BUCKET_MINS, page::CHART_BUCKETS);
            Response {
                status: 200,
                content_type: "application/json",
                body: page::status_json(&board.snapshot(now), &history),
                extra: Vec::new(),
            }
        }
        ("/", _) | ("/status.json", _) => allow("GET, HEAD"),
        ("/hold/release", "POST") => {
            // Browsers send Origin with every POST; another site's page
            // (or none) is refused.
            let ours = format!("http://{host}");
            if !req
                .origin
                .as_deref()
                .is_some_and(|o| o.eq_ignore_ascii_case(&ours))
            {
                return Response::text(403, "cross-origin request refused");
            }
            let form = req
                .content_type
                .as_deref()
                .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
            if !form {
                return Response::text(415, "expected a form (application/x-www-form-urlencoded)");
            }
            let Some(id) = form_id(body) else {
                return Response::text(400, "expected id=MESSAGE-ID");
            };
            match release_held(board, &id) {
                Release::Done(msg) => Response::text(200, &msg),
                Release::Refused(msg) => Response::text(409, &msg),
                Release::NotBuilt => Response::text(
                    501,
                    "this client holds nothing ashore ([pop3] hold_over_bytes is not set)",
                ),
            }
        }
        ("/hold/release", _) => allow("POST"),
        _ => Response::text(404, "not found"),
    }
}

/// The `id` of a Release form: letters, digits, `.`, `-`, `_` and `@`
/// only (the ids straw gives), at most [`ID_MAX`].
fn form_id(body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let id = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("id="))?
        .to_owned();
    let ok = !id.is_empty()
        && id.len() <= ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    ok.then_some(id)
}

/// The page's listener; stops when dropped.
#[derive(Debug)]
pub struct Listening {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `addr` (loopback only) and serves the page from `board`.
pub async fn serve(addr: SocketAddr, board: Arc<Board>) -> Result<Listening> {
    if !addr.ip().is_loopback() {
        bail!("[web] listen {addr}: loopback addresses only");
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for the web page on {addr}"))?;
    let addr = listener.local_addr()?;
    info!("status page on http://{addr}/");
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // Over the limit, or not from this machine: closed at once.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!("web: {CONNECTIONS_MAX} connections busy, closing one from {peer}");
                continue;
            };
            if !peer.ip().is_loopback() {
                continue;
            }
            let board = board.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(PEER_TIME, serve_one(sock, &board, addr.port())).await;
                drop(slot);
            });
        }
    });
    Ok(Listening { addr, task })
}

async fn serve_one(mut sock: TcpStream, board: &Board, port: u16) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let parsed = loop {
        match parse_head(&buf) {
            Ok(Some(p)) => break Ok(p),
            Err(r) => break Err(r),
            Ok(None) => {}
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (resp, head_only) = match parsed {
        Err(r) => (r, false),
        Ok((req, head_len)) => {
            let want = head_len + req.content_length;
            while buf.len() < want {
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = &buf[head_len..want];
            (answer(board, port, &req, body), req.method == "HEAD")
        }
    };
    sock.write_all(&resp.to_bytes(head_only)).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests;
