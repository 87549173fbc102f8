//! Line and dot-terminator helpers shared by the line-based protocols
//! (POP3 and SMTP accelerators, and the STARTTLS and warm-up dialogues).

/// Longest command or reply line accepted. RFCs say 512 (SMTP) or 255
/// (POP3); real programs and servers go longer, but nothing near this.
pub(crate) const MAX_LINE: usize = 8 * 1024;

/// A line went past the line limit (8 KiB for commands and replies) without ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line longer than {limit} bytes")]
pub struct LineTooLong {
    pub limit: usize,
}

/// Removes and returns the first line (with its line end) from `buf`.
/// `Ok(None)` means no complete line yet.
pub(crate) fn take_line(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, LineTooLong> {
    take_line_max(buf, MAX_LINE)
}

/// [`take_line`] with another limit than [`MAX_LINE`].
pub(crate) fn take_line_max(buf: &mut Vec<u8>, max: usize) -> Result<Option<Vec<u8>>, LineTooLong> {
    let too_long = LineTooLong { limit: max };
    match buf.iter().position(|&b| b == b'\n') {
        Some(p) if p < max => Ok(Some(buf.drain(..=p).collect())),
        Some(_) => Err(too_long),
        None if buf.len() > max => Err(too_long),
        None => Ok(None),
    }
}

/// The first word of a command line, upper-cased, and whether an argument follows.
pub(crate) fn verb(line: &[u8]) -> (String, bool) {
    let t = trim_end(line);
    let mut parts = t.splitn(2, |&b| b == b' ');
    let v = String::from_utf8_lossy(parts.next().unwrap_or(b"")).to_ascii_uppercase();
    let arg = parts.next().is_some_and(|a| a.iter().any(|&b| b != b' '));
    (v, arg)
}

/// Says that `data` came when nothing was asked, quoting its start.
pub(crate) fn unasked(who: &str, data: &[u8]) -> String {
    let start = String::from_utf8_lossy(&data[..data.len().min(200)]);
    format!("{who} said something unasked: {start:?}")
}

/// `line` without its trailing CR/LF.
pub(crate) fn trim_end(line: &[u8]) -> &[u8] {
    let mut e = line.len();
    while e > 0 && (line[e - 1] == b'\n' || line[e - 1] == b'\r') {
        e -= 1;
    }
    &line[..e]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Mid,
    Cr,
    Bol,
    Dot,
    DotCr,
}

/// Finds the `CRLF . CRLF` end of a dot-stuffed block while it streams past,
/// without holding lines (message lines may be arbitrarily long).
#[derive(Debug, Clone)]
pub(crate) struct DotScanner {
    st: St,
}

impl DotScanner {
    /// Starts right after a line end (the status line or the DATA reply).
    pub(crate) fn at_line_start() -> Self {
        Self { st: St::Bol }
    }

    /// The shortest bytes that end the block from here (to cut one short).
    pub(crate) fn closing(&self) -> &'static [u8] {
        match self.st {
            St::Mid => b"\r\n.\r\n",
            St::Cr => b"\n.\r\n",
            St::Bol => b".\r\n",
            St::Dot => b"\r\n",
            St::DotCr => b"\n",
        }
    }

    /// Bytes of `data` up to and including the terminator, if it is in `data`.
    pub(crate) fn scan(&mut self, data: &[u8]) -> Option<usize> {
        for (i, &b) in data.iter().enumerate() {
            self.st = match (self.st, b) {
                (St::DotCr, b'\n') => {
                    self.st = St::Bol;
                    return Some(i + 1);
                }
                (St::Cr, b'\n') => St::Bol,
                (St::Bol, b'.') => St::Dot,
                (St::Dot, b'\r') => St::DotCr,
                (_, b'\r') => St::Cr,
                _ => St::Mid,
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_scanner_finds_only_a_real_terminator() {
        let mut s = DotScanner::at_line_start();
        assert_eq!(s.scan(b"a\r\n..\r\n.x\r\n"), None);
        assert_eq!(s.scan(b"\r"), None);
        assert_eq!(s.scan(b"\n.\r"), None);
        assert_eq!(s.scan(b"\nrest"), Some(1));
        let mut s = DotScanner::at_line_start();
        assert_eq!(s.scan(b".\r\n"), Some(3), "empty block");
        let mut s = DotScanner::at_line_start();
        assert_eq!(
            s.scan(b"a\n.\r\nb\r\n.\r\n"),
            Some(11),
            "bare LF is not a line end"
        );
    }

    #[test]
    fn closing_ends_a_block_cut_anywhere() {
        let body = b"a\r\n..b\r\n.\r\r\n\r\nc\nd\r\n.x\r\n";
        for cut in 0..=body.len() {
            let mut s = DotScanner::at_line_start();
            assert_eq!(s.scan(&body[..cut]), None, "cut {cut}");
            let end = s.closing();
            assert_eq!(s.scan(end), Some(end.len()), "cut {cut}");
        }
    }

    #[test]
    fn take_line_caps_length() {
        let mut b = b"USER a\r\nPA".to_vec();
        assert_eq!(take_line(&mut b).unwrap().unwrap(), b"USER a\r\n");
        assert_eq!(take_line(&mut b).unwrap(), None);
        let mut big = vec![b'x'; MAX_LINE + 1];
        assert!(take_line(&mut big).is_err());
        assert_eq!(verb(b"list 3\r\n"), ("LIST".into(), true));
        assert_eq!(verb(b"LIST \r\n"), ("LIST".into(), false));
    }
}
