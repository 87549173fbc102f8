//! Incremental IMAP framing: lines (buffered, capped) and literals (streamed).
//! The same syntax serves commands and responses: a line whose content ends in
//! `{N}`, `{N+}` or `~{N}` is followed by N raw bytes, then the same message
//! continues with another line.

/// A literal announced at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lit {
    pub n: u64,
    /// Non-synchronising (`{N+}`).
    pub plus: bool,
    /// Index of `{` in the line.
    pub open: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ev {
    /// One line with its terminator. `first`: it starts a new message.
    Line {
        raw: Vec<u8>,
        first: bool,
        lit: Option<Lit>,
    },
    /// Literal bytes, as they arrive.
    Lit(Vec<u8>),
}

#[derive(Debug)]
pub(crate) struct Framer {
    buf: Vec<u8>,
    pos: usize,
    /// Bytes after `pos` already searched for a line end.
    scanned: usize,
    lit_left: u64,
    first: bool,
    max_line: usize,
    max_literal: u64,
}

impl Framer {
    pub fn new(max_line: usize, max_literal: u64) -> Self {
        Framer {
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            lit_left: 0,
            first: true,
            max_line,
            max_literal,
        }
    }

    /// No message is half through: the last line handed out ended one, and
    /// no literal is pending.
    pub fn between_messages(&self) -> bool {
        self.first && self.lit_left == 0
    }

    /// Bytes pushed and not yet handed out.
    pub fn held(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 4096 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    pub fn next_ev(&mut self) -> Result<Option<Ev>, FrameError> {
        let avail = &self.buf[self.pos..];
        if self.lit_left > 0 {
            if avail.is_empty() {
                return Ok(None);
            }
            let k = (self.lit_left.min(avail.len() as u64)) as usize;
            let data = avail[..k].to_vec();
            self.pos += k;
            self.lit_left -= k as u64;
            return Ok(Some(Ev::Lit(data)));
        }
        let Some(i) = avail[self.scanned..].iter().position(|&b| b == b'\n') else {
            self.scanned = avail.len();
            if avail.len() > self.max_line {
                return Err(FrameError::Unended {
                    limit: self.max_line,
                });
            }
            return Ok(None);
        };
        let end = self.scanned + i + 1;
        if end > self.max_line + 2 {
            return Err(FrameError::LineTooLong {
                limit: self.max_line,
            });
        }
        let raw = avail[..end].to_vec();
        self.pos += end;
        self.scanned = 0;
        let lit = parse_literal(content(&raw))?;
        if let Some(l) = lit
            && l.n > self.max_literal
        {
            return Err(FrameError::LiteralTooBig {
                size: l.n,
                limit: self.max_literal,
            });
        }
        let first = self.first;
        self.first = lit.is_none();
        self.lit_left = lit.map_or(0, |l| l.n);
        Ok(Some(Ev::Line { raw, first, lit }))
    }
}

/// What is wrong with the bytes being framed. The connection fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("IMAP line longer than {limit} bytes without a line end")]
    Unended { limit: usize },
    #[error("IMAP line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("IMAP literal of {size} bytes exceeds the limit of {limit} bytes")]
    LiteralTooBig { size: u64, limit: u64 },
    #[error("IMAP literal size does not fit in 64 bits")]
    LiteralSizeOverflow,
}

/// A line without its CRLF (or bare LF).
pub(crate) fn content(raw: &[u8]) -> &[u8] {
    let s = raw.strip_suffix(b"\n").unwrap_or(raw);
    s.strip_suffix(b"\r").unwrap_or(s)
}

pub(crate) fn parse_literal(line: &[u8]) -> Result<Option<Lit>, FrameError> {
    let Some(body) = line.strip_suffix(b"}") else {
        return Ok(None);
    };
    let Some(open) = body.iter().rposition(|&b| b == b'{') else {
        return Ok(None);
    };
    let inner = &body[open + 1..];
    let (digits, plus) = match inner.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (inner, false),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let n = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(FrameError::LiteralSizeOverflow)?;
    Ok(Some(Lit { n, plus, open }))
}

/// `raw` with its literal marker rewritten as `{N}` or `{N+}`.
pub(crate) fn with_literal(raw: &[u8], lit: &Lit, plus: bool) -> Vec<u8> {
    let mut v = raw[..lit.open].to_vec();
    v.extend_from_slice(format!("{{{}{}}}\r\n", lit.n, if plus { "+" } else { "" }).as_bytes());
    v
}

/// An accelerator driven by [`Framer`]s, with one flag for a failed
/// connection.
pub(super) trait Framed {
    fn failed_flag(&mut self) -> &mut bool;

    /// Hands the next event of the framer `pick` names to `on_ev`. False
    /// when there is none yet or the connection has failed; bytes that do
    /// not frame fail it, naming where they came `from`.
    fn step(
        &mut self,
        pick: fn(&mut Self) -> &mut Framer,
        on_ev: fn(&mut Self, Ev, &mut crate::Output),
        from: &str,
        out: &mut crate::Output,
    ) -> bool {
        match pick(self).next_ev() {
            Ok(Some(ev)) => on_ev(self, ev, out),
            Ok(None) => return false,
            Err(e) => {
                *self.failed_flag() = true;
                out.fail_once(format!("from {from}: {e}"));
                return false;
            }
        }
        !*self.failed_flag()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(f: &mut Framer) -> Vec<Ev> {
        let mut v = Vec::new();
        while let Some(e) = f.next_ev().unwrap() {
            v.push(e);
        }
        v
    }

    #[test]
    fn lines_and_literals() {
        let mut f = Framer::new(100, 100);
        f.push(b"a APPEND x {3}\r\nab");
        let ev = all(&mut f);
        assert_eq!(ev.len(), 2);
        assert!(matches!(
            &ev[0],
            Ev::Line {
                first: true,
                lit: Some(Lit {
                    n: 3,
                    plus: false,
                    ..
                }),
                ..
            }
        ));
        assert_eq!(ev[1], Ev::Lit(b"ab".to_vec()));
        f.push(b"c\r\nb NOOP\r\n");
        let ev = all(&mut f);
        assert_eq!(ev[0], Ev::Lit(b"c".to_vec()));
        assert!(matches!(
            &ev[1],
            Ev::Line {
                first: false,
                lit: None,
                ..
            }
        ));
        assert!(matches!(
            &ev[2],
            Ev::Line {
                first: true,
                lit: None,
                ..
            }
        ));
    }

    #[test]
    fn literal_markers() {
        assert_eq!(parse_literal(b"x {12+}").unwrap().unwrap().n, 12);
        assert!(parse_literal(b"x {12+}").unwrap().unwrap().plus);
        assert_eq!(parse_literal(b"x ~{0}").unwrap().unwrap().open, 3);
        assert_eq!(parse_literal(b"x {abc}").unwrap(), None);
        assert_eq!(parse_literal(b"x {}").unwrap(), None);
        assert!(parse_literal(b"x {99999999999999999999999}").is_err());
        let l = parse_literal(b"a {5}").unwrap().unwrap();
        assert_eq!(with_literal(b"a {5}\r\n", &l, true), b"a {5+}\r\n");
    }

    #[test]
    fn caps_enforced() {
        let mut f = Framer::new(10, 5);
        f.push(b"a {6}\r\n");
        assert!(f.next_ev().is_err());
        let mut f = Framer::new(10, 5);
        f.push(&[b'x'; 11]);
        assert!(f.next_ev().is_err());
    }
}
