//! HTTP/1.1 messages as the proxy reads them: heads, and bodies framed by
//! length, chunks or the close.

/// What is wrong with an HTTP message (or with where it is going). The
/// connection fails, or the browser gets a local error page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP line too long")]
    LineTooLong,
    #[error("HTTP head longer than {max} bytes")]
    HeadTooLong { max: usize },
    #[error("HTTP head is not UTF-8")]
    HeadNotUtf8,
    #[error("malformed HTTP start line {0:?}")]
    BadStartLine(String),
    #[error("malformed HTTP header {0:?}")]
    BadHeader(String),
    #[error("bad Content-Length {0:?}")]
    BadContentLength(String),
    /// RFC 9112 section 6.3: framing two parsers could read differently
    /// (request smuggling, response splitting).
    #[error("ambiguous HTTP framing: {0}")]
    AmbiguousFraming(&'static str),
    #[error("bad chunk size {0:?}")]
    BadChunkSize(String),
    #[error("chunk data not followed by CRLF")]
    ChunkWithoutCrlf,
    #[error("malformed HTTP status line {0:?}")]
    BadStatusLine(String),
    #[error("response from the server side without framing")]
    Unframed,
    #[error("bad CONNECT target {0:?}")]
    BadConnectTarget(String),
    #[error("not an absolute http:// URI: {0:?}")]
    NotAbsoluteUri(String),
    /// One origin per connection.
    #[error("request for {host}:{port} on a connection to {}:{}", .origin.0, .origin.1)]
    OtherOrigin {
        host: String,
        port: u16,
        origin: (String, u16),
    },
    #[error("gzip body decodes to more than {max} bytes (bomb guard)")]
    GzipBomb { max: u64 },
    #[error("corrupt gzip body from the origin: {0}")]
    CorruptGzip(String),
    #[error("the origin closed in the middle of a response")]
    OriginClosedMidResponse,
}

#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) start: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    pub(crate) fn set(&mut self, name: &str, value: String) {
        self.remove(name);
        self.headers.push((name.to_string(), value));
    }

    /// Chunked framing: the last transfer coding is `chunked` (checked by
    /// [`Head::check_framing`], which refuses any other final coding).
    pub(crate) fn chunked(&self) -> bool {
        self.get("Transfer-Encoding").is_some()
    }

    /// The body length, when every Content-Length field (and list member)
    /// agrees on one value; different values are an error.
    pub(crate) fn content_length(&self) -> Result<Option<u64>, HttpError> {
        let mut found = None;
        for (k, v) in &self.headers {
            if !k.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            for part in v.split(',') {
                let p = part.trim();
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(HttpError::BadContentLength(v.to_owned()));
                }
                let n: u64 = p
                    .parse()
                    .map_err(|_| HttpError::BadContentLength(v.to_owned()))?;
                if found.is_some_and(|f| f != n) {
                    return Err(HttpError::AmbiguousFraming(
                        "Content-Length fields disagree",
                    ));
                }
                found = Some(n);
            }
        }
        Ok(found)
    }

    /// RFC 9112 section 6.3, strictly: one Transfer-Encoding field whose last
    /// coding is `chunked`; never Transfer-Encoding together with
    /// Content-Length on a request (smuggling); on a response Transfer-Encoding
    /// wins and Content-Length is dropped before it is forwarded.
    fn check_framing(&mut self, request: bool) -> Result<(), HttpError> {
        let te: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("Transfer-Encoding"))
            .map(|(_, v)| v.as_str())
            .collect();
        if te.is_empty() {
            self.content_length()?;
            return Ok(());
        }
        let last = te.last().and_then(|v| v.rsplit(',').next()).unwrap_or("");
        if te.len() > 1 || !last.trim().eq_ignore_ascii_case("chunked") {
            return Err(HttpError::AmbiguousFraming(
                "Transfer-Encoding other than one field ending in chunked",
            ));
        }
        if self.get("Content-Length").is_some() {
            if request {
                return Err(HttpError::AmbiguousFraming(
                    "Transfer-Encoding and Content-Length on a request",
                ));
            }
            self.remove("Content-Length");
        }
        Ok(())
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
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
pub(crate) struct Input {
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: usize,
}

impl Input {
    /// Appends `d` after dropping what was consumed, so the buffer holds only
    /// unconsumed input: a body whose pieces always end inside a chunk-size
    /// line never lets a consumed prefix pile up.
    pub(crate) fn push(&mut self, d: &[u8]) {
        self.buf.drain(..self.pos);
        self.pos = 0;
        self.buf.extend_from_slice(d);
    }

    pub(crate) fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub(crate) fn take(&mut self, n: usize) -> Vec<u8> {
        let v = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        v
    }

    /// Everything available, as it is.
    pub(crate) fn take_all(&mut self) -> Vec<u8> {
        self.take(self.avail().len())
    }

    /// Drops everything available (and whatever comes after).
    pub(crate) fn discard(&mut self) {
        self.pos = self.buf.len();
    }

    pub(crate) fn line(&mut self, max: usize) -> Result<Option<Vec<u8>>, HttpError> {
        match self.avail().windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                let l = self.take(i);
                self.pos += 2;
                Ok(Some(l))
            }
            None if self.avail().len() > max => Err(HttpError::LineTooLong),
            None => Ok(None),
        }
    }

    pub(crate) fn head(&mut self, max: usize) -> Result<Option<Head>, HttpError> {
        let a = self.avail();
        let Some(i) = a.windows(4).position(|w| w == b"\r\n\r\n") else {
            if a.len() > max {
                return Err(HttpError::HeadTooLong { max });
            }
            return Ok(None);
        };
        if i > max {
            return Err(HttpError::HeadTooLong { max });
        }
        let text = std::str::from_utf8(&a[..i]).map_err(|_| HttpError::HeadNotUtf8)?;
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        if start.split(' ').count() < 2 {
            return Err(HttpError::BadStartLine(start));
        }
        let mut headers = Vec::new();
        for l in lines {
            // A bare CR or LF would end the line for some parsers and not others.
            if l.contains(['\r', '\n']) {
                return Err(HttpError::BadHeader(l.to_owned()));
            }
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| HttpError::BadHeader(l.to_owned()))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut head = Head { start, headers };
        head.check_framing(!head.start.starts_with("HTTP/"))?;
        self.pos += i + 4;
        Ok(Some(head))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked(Chunk),
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

pub(crate) enum BodyEv {
    Data(Vec<u8>),
    End,
}

/// One step of body decoding (framing only). None: need more input.
pub(crate) fn body_step(f: &mut Framing, inp: &mut Input) -> Result<Option<BodyEv>, HttpError> {
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
                        .map_err(|_| HttpError::BadChunkSize(hex.to_owned()))?;
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
                        return Err(HttpError::ChunkWithoutCrlf);
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

/// What [`relay_body`] did.
pub(crate) enum Relayed {
    /// Nothing: it needs more input.
    Waiting,
    /// Passed some of the body on.
    Data,
    /// Passed the body's end on.
    End,
}

/// One step of a body framed by `f`, passed from `inp` to `out` in the same
/// framing (a chunk stays a chunk).
pub(crate) fn relay_body(
    f: &mut Framing,
    inp: &mut Input,
    out: &mut Vec<u8>,
) -> Result<Relayed, HttpError> {
    let chunked = matches!(f, Framing::Chunked(_));
    Ok(match body_step(f, inp)? {
        None => Relayed::Waiting,
        Some(BodyEv::Data(d)) if chunked => {
            chunk(out, &d);
            Relayed::Data
        }
        Some(BodyEv::Data(d)) => {
            out.extend_from_slice(&d);
            Relayed::Data
        }
        Some(BodyEv::End) => {
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Relayed::End
        }
    })
}

pub(crate) fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

pub(crate) fn local_reply(status: &str, why: &str) -> Vec<u8> {
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

pub(crate) fn request_framing(h: &Head) -> Result<Option<Framing>, HttpError> {
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
pub(crate) fn response_shape(status: u16, head_req: bool) -> (bool, bool) {
    let interim = (100..200).contains(&status) && status != 101;
    let bodyless = head_req || interim || status == 204 || status == 304 || status == 101;
    (!bodyless, !interim)
}

pub(crate) fn status_of(h: &Head) -> Result<u16, HttpError> {
    h.start
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::BadStatusLine(h.start.clone()))
}

/// Where reading the requests stands (both sides read them).
#[derive(Debug)]
pub(crate) enum ReqState {
    Head,
    /// Forwarding a request body; chunked bodies are re-chunked.
    Body(Framing),
    /// CONNECT or protocol switch: raw bytes both ways.
    Raw,
    /// A local reply ended the connection; ignore the rest.
    Closed,
}

impl ReqState {
    /// In the states where requests are no longer parsed, takes what `req`
    /// holds: nothing after a local reply closed the connection (`Closed`,
    /// the bytes are dropped), everything when `Raw`. None while parsing.
    pub(crate) fn unparsed(&self, req: &mut Input) -> Option<Vec<u8>> {
        match self {
            ReqState::Closed => {
                req.discard();
                Some(Vec::new())
            }
            ReqState::Raw => Some(req.take_all()),
            ReqState::Head | ReqState::Body(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Input;

    #[test]
    fn consumed_input_is_dropped_even_when_a_line_is_always_open() {
        let mut input = Input::default();
        input.push(b"1");
        for _ in 0..100_000 {
            // Each piece ends inside the next chunk's size line.
            input.push(b"\r\na\r\n1");
            let size = input.line(64).unwrap().expect("size line");
            assert_eq!(size, b"1");
            assert_eq!(input.take(1), b"a");
            assert_eq!(input.line(64).unwrap().expect("chunk end"), b"");
            assert!(input.buf.len() <= 16, "{} B held", input.buf.len());
        }
    }
}
