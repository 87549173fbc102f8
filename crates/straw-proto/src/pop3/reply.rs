//! Reading the real server's replies: a status line, and for some
//! commands a dot-terminated body after `+OK`.

use crate::shared::lines::{DotScanner, MAX_LINE, trim_end};

/// What is wrong with bytes that should have been a POP3 reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("POP3 reply line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    /// The line (without its line end) starts with neither `+` nor `-`.
    #[error("not a POP3 reply: {0:?}")]
    NotAReply(String),
}

/// Does this command get a multi-line reply when the answer is `+OK`?
pub(crate) fn multi_if_ok(verb: &str, has_arg: bool) -> bool {
    match verb {
        "RETR" | "TOP" | "CAPA" => true,
        // Without an argument these list everything; AUTH lists mechanisms.
        "LIST" | "UIDL" | "AUTH" => !has_arg,
        _ => false,
    }
}

/// A SASL continuation (`+ data` or a bare `+`) rather than `+OK`.
pub(crate) fn is_continuation(first: &[u8]) -> bool {
    first.starts_with(b"+ ") || trim_end(first) == b"+"
}

/// Incremental reader of one POP3 reply at a time.
#[derive(Debug, Default)]
pub(crate) struct ReplyReader {
    line: Vec<u8>,
    body: Option<DotScanner>,
    /// Status line of the reply being (or last) read.
    pub(crate) first: Vec<u8>,
}

impl ReplyReader {
    /// Past a `+OK` status line, inside a multi-line body.
    pub(crate) fn in_body(&self) -> bool {
        self.body.is_some()
    }

    /// Inside a body: the bytes that would end it right here.
    pub(crate) fn closing(&self) -> Option<&'static [u8]> {
        self.body.as_ref().map(DotScanner::closing)
    }

    /// Appends the reply bytes found in `data` to `sink` (the status line only
    /// once complete). Returns bytes consumed and whether the reply ended.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        multi_if_ok: bool,
        sink: &mut Vec<u8>,
    ) -> Result<(usize, bool), ReplyError> {
        if let Some(sc) = &mut self.body {
            return Ok(match sc.scan(data) {
                Some(n) => {
                    sink.extend_from_slice(&data[..n]);
                    self.body = None;
                    (n, true)
                }
                None => {
                    sink.extend_from_slice(data);
                    (data.len(), false)
                }
            });
        }
        let Some(p) = data.iter().position(|&b| b == b'\n') else {
            self.line.extend_from_slice(data);
            if self.line.len() > MAX_LINE {
                return Err(ReplyError::LineTooLong { limit: MAX_LINE });
            }
            return Ok((data.len(), false));
        };
        self.line.extend_from_slice(&data[..=p]);
        if self.line.len() > MAX_LINE {
            return Err(ReplyError::LineTooLong { limit: MAX_LINE });
        }
        if !matches!(self.line.first(), Some(b'+' | b'-')) {
            return Err(ReplyError::NotAReply(
                String::from_utf8_lossy(trim_end(&self.line)).into_owned(),
            ));
        }
        self.first = std::mem::take(&mut self.line);
        sink.extend_from_slice(&self.first);
        if multi_if_ok && self.first.starts_with(b"+OK") {
            self.body = Some(DotScanner::at_line_start());
            let (n, done) = self.feed(&data[p + 1..], true, sink)?;
            Ok((p + 1 + n, done))
        } else {
            Ok((p + 1, true))
        }
    }
}

/// The start of a real reply to one of straw's private requests (resume,
/// hold), taken piece by piece: its `+OK` status line is kept in `status`.
pub(crate) enum ReplyStart<'a> {
    /// Nothing yet.
    Wait,
    /// Not `+OK`: the request is refused, the reply goes on as it is.
    Refused,
    /// The body bytes of this piece (all of it once the status is kept).
    Body(&'a [u8]),
}

/// Splits `piece` at the status line (`status_len` long) the first time.
pub(crate) fn reply_start<'a>(
    status: &mut Option<Vec<u8>>,
    piece: &'a [u8],
    status_len: usize,
) -> ReplyStart<'a> {
    if status.is_some() {
        return ReplyStart::Body(piece);
    }
    if piece.is_empty() {
        return ReplyStart::Wait;
    }
    let (line, body) = piece.split_at(status_len.min(piece.len()));
    if !line.starts_with(b"+OK") {
        return ReplyStart::Refused;
    }
    *status = Some(line.to_vec());
    ReplyStart::Body(body)
}
