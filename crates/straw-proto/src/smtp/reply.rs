//! Reading SMTP replies (`250-...` lines up to `250 ...`), and the EHLO
//! reply as the program sees it.

use crate::shared::lines::{MAX_LINE, trim_end, verb};

/// What is wrong with bytes that should have been an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line past the line limit, or all lines past 64 KiB.
    #[error("SMTP reply too long")]
    TooLong,
    /// The line (without its line end) has no code, or not the first line's.
    #[error("not an SMTP reply: {0:?}")]
    NotAReply(String),
}

/// Longest reply (all lines) accepted.
const MAX_REPLY: usize = 64 * 1024;

/// Incremental reader of SMTP replies (`250-...` lines up to `250 ...`).
#[derive(Debug, Default)]
pub(crate) struct ReplyReader {
    buf: Vec<u8>,
    line_start: usize,
}

impl ReplyReader {
    /// Bytes consumed, and the whole reply if it ended.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<Vec<u8>>), ReplyError> {
        for (i, &b) in data.iter().enumerate() {
            self.buf.push(b);
            if self.buf.len() - self.line_start > MAX_LINE || self.buf.len() > MAX_REPLY {
                return Err(ReplyError::TooLong);
            }
            if b != b'\n' {
                continue;
            }
            let line = &self.buf[self.line_start..];
            let ok = line.len() >= 5
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-' | b'\r')
                && line[..3] == self.buf[..3];
            if !ok {
                return Err(ReplyError::NotAReply(
                    String::from_utf8_lossy(trim_end(line)).into_owned(),
                ));
            }
            if line[3] == b'-' {
                self.line_start = self.buf.len();
            } else {
                self.line_start = 0;
                return Ok((i + 1, Some(std::mem::take(&mut self.buf))));
            }
        }
        Ok((data.len(), None))
    }
}

pub(crate) fn code(reply: &[u8]) -> u16 {
    std::str::from_utf8(&reply[..3.min(reply.len())])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Text of each line of a reply, without code and separator.
pub(crate) fn reply_lines(reply: &[u8]) -> Vec<&[u8]> {
    reply
        .split_inclusive(|&b| b == b'\n')
        .map(|l| trim_end(l.get(4..).unwrap_or(b"")))
        .collect()
}

/// EHLO keywords, upper-cased, in order: what the verification compares
/// (the first line only echoes names).
pub(crate) fn ehlo_caps(reply: &[u8]) -> Vec<String> {
    reply_lines(reply)
        .iter()
        .skip(1)
        .map(|l| String::from_utf8_lossy(l).to_ascii_uppercase())
        .collect()
}

pub(crate) fn build_reply(code: u16, lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.extend_from_slice(format!("{code}{sep}").as_bytes());
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// EHLO towards the program: no STARTTLS (the tunnel is encrypted), no
/// CHUNKING/BINARYMIME (straw frames DATA only), PIPELINING added.
pub(crate) fn rewrite_ehlo(reply: &[u8]) -> Vec<u8> {
    let lines = reply_lines(reply);
    let mut keep: Vec<Vec<u8>> = vec![lines.first().copied().unwrap_or(b"").to_vec()];
    let mut pipelining = false;
    for l in lines.iter().skip(1) {
        let (v, _) = verb(l);
        match v.as_str() {
            "STARTTLS" | "CHUNKING" | "BINARYMIME" => continue,
            "PIPELINING" => pipelining = true,
            _ => {}
        }
        keep.push(l.to_vec());
    }
    if !pipelining {
        keep.push(b"PIPELINING".to_vec());
    }
    build_reply(250, &keep)
}

pub(crate) fn is_complete_reply(r: &[u8], want: u16) -> bool {
    let mut rd = ReplyReader::default();
    matches!(rd.feed(r), Ok((n, Some(_))) if n == r.len()) && code(r) == want
}
