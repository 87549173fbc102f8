//! The small message a held POP3 message is replaced with (see [`super::hold`]):
//! a pure function of the original's bytes, built on the server side where
//! reading the original costs nothing on the link.
//!
//! The reader is deliberately forgiving: whatever the input (garbage, no
//! header end, broken MIME, 8-bit headers), the output is a well-formed
//! message of at most a few KB. Only the first [`SCAN_MAX`] bytes are
//! looked at, and MIME nesting is followed [`DEPTH_MAX`] deep.

/// Subject prefix of a stub.
pub const MARK: &str = "[held ashore]";
/// Most bytes of the original the stub looks at.
pub const SCAN_MAX: usize = 4 * 1024 * 1024;
/// Most bytes of the first text part quoted in the stub.
pub const TEXT_MAX: usize = 2048;
/// Most attachments listed.
pub const ATTACH_MAX: usize = 30;
const DEPTH_MAX: usize = 8;
const HEADER_MAX: usize = 300;
const NAME_MAX: usize = 100;

/// What the stub says besides the original's own bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StubInfo {
    /// The id `straw hold release` takes.
    pub id: String,
    /// The original's size (bytes, as the server counts them).
    pub size: u64,
    /// The configured threshold.
    pub over: u64,
    /// Estimated link time and cost to fetch the original.
    pub secs: u64,
    pub cost_cents: u64,
}

/// One attachment (or non-text part) of the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    /// Decoded size (estimated from base64 length when encoded).
    pub bytes: u64,
}

/// What the stub shows of the original: its main headers, first text part
/// and attachment list. Public for the fuzz target and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub from: String,
    pub to: String,
    pub cc: String,
    pub subject: String,
    pub date: String,
    pub message_id: String,
    pub text: String,
    pub text_cut: bool,
    pub attachments: Vec<Attachment>,
    /// More parts than listed.
    pub more: usize,
}

/// Splits at the blank line ending the header (CRLF or LF); no blank line:
/// all header, no body.
fn split_head(msg: &[u8]) -> (&[u8], &[u8]) {
    let mut i = 0;
    while i < msg.len() {
        let rest = &msg[i..];
        if rest.starts_with(b"\r\n") {
            return (&msg[..i], &msg[i + 2..]);
        }
        if rest.starts_with(b"\n") {
            return (&msg[..i], &msg[i + 1..]);
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(p) => i += p + 1,
            None => return (msg, &[]),
        }
    }
    (msg, &[])
}

/// Unfolded header fields `(lowercase name, value)`, in order.
fn fields(head: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if matches!(line[0], b' ' | b'\t') {
            if let Some((_, v)) = out.last_mut()
                && v.len() < 4096
            {
                v.push(b' ');
                v.extend_from_slice(line.trim_ascii());
            }
            continue;
        }
        if out.len() >= 500 {
            break;
        }
        if let Some(c) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..c])
                .trim()
                .to_ascii_lowercase();
            out.push((name, line[c + 1..].trim_ascii().to_vec()));
        }
    }
    out
}

fn field<'a>(f: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    f.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

/// Printable text, one line, at most `max` chars: invalid UTF-8 and control
/// characters become `?`.
fn clean(v: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(v);
    let mut out: String = s
        .chars()
        .map(|c| {
            if c == '\u{FFFD}' || c.is_control() {
                '?'
            } else {
                c
            }
        })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push_str("...");
    }
    out
}

/// The value of parameter `name` in a structured header (`; name="x"`).
fn param(v: &[u8], name: &str) -> Option<String> {
    let s = String::from_utf8_lossy(v);
    for p in s.split(';').skip(1) {
        let Some((k, val)) = p.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case(name) || k.trim().eq_ignore_ascii_case(&format!("{name}*"))
        {
            let val = val.trim();
            let val = val.strip_prefix('"').unwrap_or(val);
            let val = val.split('"').next().unwrap_or(val);
            return Some(val.to_owned());
        }
    }
    None
}

fn content_type(f: &[(String, Vec<u8>)]) -> (String, Option<&[u8]>) {
    match field(f, "content-type") {
        Some(v) => {
            let t = String::from_utf8_lossy(v.split(|&b| b == b';').next().unwrap_or(v))
                .trim()
                .to_ascii_lowercase();
            (clean(t.as_bytes(), 80), Some(v))
        }
        None => ("text/plain".into(), None),
    }
}

/// Body parts between `--boundary` lines (the preamble and epilogue left out).
fn parts<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delim = format!("--{boundary}");
    let d = delim.as_bytes();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < body.len() {
        let end = body[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |p| i + p + 1);
        let line = &body[i..end];
        if line.starts_with(d) {
            if let Some(s) = start {
                // The line end before the delimiter belongs to it.
                let mut e = i;
                if e > s && body[e - 1] == b'\n' {
                    e -= 1;
                    if e > s && body[e - 1] == b'\r' {
                        e -= 1;
                    }
                }
                out.push(&body[s..e]);
            }
            if line[d.len()..].starts_with(b"--") {
                return out;
            }
            start = Some(end);
        }
        i = end;
    }
    if let Some(s) = start {
        out.push(&body[s..]);
    }
    out
}

fn b64_val(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Lenient base64: skips what is not base64, stops at `=`.
fn base64(data: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut n) = (0u32, 0);
    for &c in data {
        if c == b'=' || out.len() >= max {
            break;
        }
        let Some(v) = b64_val(c) else { continue };
        acc = (acc << 6) | v;
        n += 1;
        if n == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            (acc, n) = (0, 0);
        }
    }
    match n {
        2 => out.push((acc >> 4) as u8),
        3 => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
        _ => {}
    }
    out
}

fn quoted_printable(data: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() && out.len() < max {
        let c = data[i];
        if c != b'=' {
            out.push(c);
            i += 1;
            continue;
        }
        let rest = &data[i + 1..];
        if rest.starts_with(b"\r\n") {
            i += 3;
        } else if rest.starts_with(b"\n") {
            i += 2;
        } else if let Some(h) = rest
            .get(..2)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Decoded size: base64 counts 3 bytes per 4 characters.
fn decoded_len(body: &[u8], cte: &str) -> u64 {
    if cte == "base64" {
        let chars = body.iter().filter(|&&c| b64_val(c).is_some()).count() as u64;
        chars * 3 / 4
    } else {
        body.len() as u64
    }
}

/// Text as UTF-8: valid UTF-8 as is, anything else read as Latin-1.
fn to_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

/// Crude HTML to text: tags dropped, a few entities decoded.
fn strip_html(s: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn walk(entity: &[u8], depth: usize, s: &mut Summary, html: &mut Option<String>) {
    let (head, body) = split_head(entity);
    let f = fields(head);
    let (ctype, raw_ct) = content_type(&f);
    if ctype.starts_with("multipart/")
        && depth < DEPTH_MAX
        && let Some(b) = raw_ct
            .and_then(|v| param(v, "boundary"))
            .filter(|b| !b.is_empty())
    {
        for p in parts(body, &b) {
            walk(p, depth + 1, s, html);
        }
        return;
    }
    let cte = field(&f, "content-transfer-encoding")
        .map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
        .unwrap_or_default();
    let disp = field(&f, "content-disposition").unwrap_or_default();
    let name = param(disp, "filename").or_else(|| raw_ct.and_then(|v| param(v, "name")));
    let attached = String::from_utf8_lossy(disp)
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("attachment");
    let is_text = ctype == "text/plain" || ctype == "text/html";
    if is_text && !attached && name.is_none() && (s.text.is_empty() || ctype == "text/html") {
        let decoded = match cte.as_str() {
            "base64" => base64(body, TEXT_MAX * 4),
            "quoted-printable" => quoted_printable(body, TEXT_MAX * 4),
            _ => body[..body.len().min(TEXT_MAX * 4)].to_vec(),
        };
        let text = to_text(&decoded);
        if ctype == "text/plain" {
            if s.text.is_empty() {
                s.text = text;
                s.text_cut = decoded.len() >= TEXT_MAX * 4;
            }
        } else if html.is_none() {
            *html = Some(strip_html(&text));
        }
        return;
    }
    if s.attachments.len() >= ATTACH_MAX {
        s.more += 1;
        return;
    }
    s.attachments.push(Attachment {
        name: clean(
            name.unwrap_or_else(|| "(no name)".into()).as_bytes(),
            NAME_MAX,
        ),
        content_type: ctype,
        bytes: decoded_len(body, &cte),
    });
}

/// Reads the original (a whole message, not dot-stuffed).
pub fn summarize(original: &[u8]) -> Summary {
    let original = &original[..original.len().min(SCAN_MAX)];
    let (head, _) = split_head(original);
    let f = fields(head);
    let get = |n: &str| clean(field(&f, n).unwrap_or_default(), HEADER_MAX);
    let mut s = Summary {
        from: get("from"),
        to: get("to"),
        cc: get("cc"),
        subject: get("subject"),
        date: get("date"),
        message_id: get("message-id"),
        ..Default::default()
    };
    let mut html = None;
    walk(original, 0, &mut s, &mut html);
    if s.text.trim().is_empty()
        && let Some(h) = html
    {
        s.text = h;
    }
    // Cut to TEXT_MAX bytes on a char boundary, lines to 900 bytes, CRLF.
    let mut text = String::new();
    let mut cut = s.text_cut;
    for line in s.text.lines() {
        let line: String = line
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        let mut l = line.as_str();
        if l.len() > 900 {
            l = &l[..l.floor_char_boundary(900)];
        }
        if text.len() + l.len() + 2 > TEXT_MAX {
            let room = TEXT_MAX.saturating_sub(text.len() + 2);
            text.push_str(&l[..l.floor_char_boundary(room)]);
            text.push_str("\r\n");
            cut = true;
            break;
        }
        text.push_str(l);
        text.push_str("\r\n");
    }
    s.text = text;
    s.text_cut = cut;
    s
}

fn thousands(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn duration(secs: u64) -> String {
    match secs {
        0..=89 => format!("{secs} seconds"),
        90..=5399 => format!("{} minutes", secs.div_ceil(60)),
        _ => format!("{:.1} hours", secs as f64 / 3600.0),
    }
}

/// Builds the stub of `original` (a whole message, not dot-stuffed): CRLF
/// lines, at most a few KB whatever the input. Never panics.
pub fn build_stub(original: &[u8], info: &StubInfo) -> Vec<u8> {
    let s = summarize(original);
    let mut m = String::new();
    let mut h = |name: &str, v: &str| {
        if !v.is_empty() {
            m.push_str(&format!("{name}: {v}\r\n"));
        }
    };
    h("From", &s.from);
    h("To", &s.to);
    h("Cc", &s.cc);
    let subject = if s.subject.is_empty() {
        MARK.to_owned()
    } else {
        format!("{MARK} {}", s.subject)
    };
    h("Subject", &subject);
    h("Date", &s.date);
    h("Message-ID", &s.message_id);
    let id = clean(info.id.as_bytes(), 40);
    h("X-Straw-Held", &format!("{id}; size={}", info.size));
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    m.push_str("Content-Transfer-Encoding: 8bit\r\n\r\n");
    m.push_str(&format!(
        "straw kept this message ashore: it is {} bytes, more than the {} bytes\r\n\
         allowed for this mailbox over the satellite link. Fetching it would take\r\n\
         about {} of link time (about ${}.{:02}).\r\n\r\n",
        thousands(info.size),
        thousands(info.over),
        duration(info.secs),
        info.cost_cents / 100,
        info.cost_cents % 100,
    ));
    m.push_str(&format!(
        "To get the whole message, run\r\n\r\n    straw hold release {id}\r\n\r\n\
         (or press Release next to it on straw's web page). It then arrives as\r\n\
         one more new message the next time your mail program checks for mail.\r\n\
         `straw hold list` shows every message kept ashore.\r\n\r\n\
         Deleting this message does not delete the original: it stays on the\r\n\
         mail server until the whole message has been fetched.\r\n\r\n"
    ));
    if !s.attachments.is_empty() {
        m.push_str("Attachments:\r\n");
        for a in &s.attachments {
            m.push_str(&format!(
                "  {} ({}, {} bytes)\r\n",
                a.name,
                a.content_type,
                thousands(a.bytes)
            ));
        }
        if s.more > 0 {
            m.push_str(&format!("  ... and {} more parts\r\n", s.more));
        }
        m.push_str("\r\n");
    }
    if s.text.trim().is_empty() {
        m.push_str("(The message has no text part.)\r\n");
    } else {
        m.push_str("----- the beginning of the message text -----\r\n");
        m.push_str(&s.text);
        if s.text_cut {
            m.push_str("[... cut here; release the message to read the rest]\r\n");
        }
    }
    m.into_bytes()
}

/// What `TOP n lines` shows of `msg`: its header, the blank line, and the
/// first `lines` lines of its body.
pub fn top_of(msg: &[u8], lines: u64) -> Vec<u8> {
    let (head, body) = split_head(msg);
    let mut out = head.to_vec();
    out.extend_from_slice(&msg[head.len()..msg.len() - body.len()]);
    let take = usize::try_from(lines).unwrap_or(usize::MAX);
    for l in body.split_inclusive(|&b| b == b'\n').take(take) {
        out.extend_from_slice(l);
    }
    out
}

/// The original's whole body as the stream carries it (dot-stuffed, ending
/// `.\r\n`), back to the message's bytes.
pub(crate) fn unstuff(stuffed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stuffed.len());
    for line in stuffed.split_inclusive(|&b| b == b'\n') {
        let t = line.strip_suffix(b"\n").unwrap_or(line);
        let t = t.strip_suffix(b"\r").unwrap_or(t);
        if t == b"." {
            break;
        }
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// A message as a multi-line reply's body: dot-stuffed, ended by `.\r\n`.
pub(crate) fn stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 8);
    for l in msg.split_inclusive(|&b| b == b'\n') {
        if l.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(l);
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info() -> StubInfo {
        StubInfo {
            id: "1a2b3c4d".into(),
            size: 312_345,
            over: 51_200,
            secs: 1042,
            cost_cents: 2700,
        }
    }

    const MULTI: &[u8] = b"From: =?UTF-8?Q?Jos=C3=A9?= <jose@example.org>\r\n\
To: bob@example.org\r\nSubject: photos\r\n  of the boat\r\nDate: Tue, 1 Oct 2024 10:00:00 +0000\r\n\
Message-ID: <m1@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed;\r\n boundary=\"outer\"\r\n\r\n\
--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n\
--inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Voil=E0 les photos.=\r\n Bonne mer.\r\n--inner\r\nContent-Type: text/html\r\n\r\n<p>Voil&agrave;</p>\r\n--inner--\r\n\
--outer\r\nContent-Type: image/jpeg; name=\"boat.jpg\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\nAAAA\r\n\
--outer\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"plan.pdf\"\r\n\r\n%PDF-1.4 xx\r\n\
--outer--\r\n";

    #[test]
    fn multipart_with_attachments_quoted_printable_and_folding() {
        let s = summarize(MULTI);
        assert_eq!(s.from, "=?UTF-8?Q?Jos=C3=A9?= <jose@example.org>");
        assert_eq!(s.subject, "photos of the boat");
        assert_eq!(s.text, "Voilà les photos. Bonne mer.\r\n");
        assert_eq!(
            s.attachments,
            vec![
                Attachment {
                    name: "boat.jpg".into(),
                    content_type: "image/jpeg".into(),
                    bytes: 57
                },
                Attachment {
                    name: "plan.pdf".into(),
                    content_type: "application/pdf".into(),
                    bytes: 11
                },
            ]
        );
        let stub = String::from_utf8(build_stub(MULTI, &info())).unwrap();
        assert!(stub.starts_with("From: =?UTF-8?Q?Jos=C3=A9?= <jose@example.org>\r\n"));
        assert!(stub.contains("\r\nSubject: [held ashore] photos of the boat\r\n"));
        assert!(stub.contains("\r\nMessage-ID: <m1@example.org>\r\n"));
        assert!(stub.contains("312,345 bytes"), "{stub}");
        assert!(
            stub.contains("about 18 minutes of link time (about $27.00)"),
            "{stub}"
        );
        assert!(stub.contains("    straw hold release 1a2b3c4d\r\n"));
        assert!(stub.contains("  boat.jpg (image/jpeg, 57 bytes)\r\n"));
        assert!(stub.contains("Voilà les photos."));
    }

    #[test]
    fn html_only_base64_text_and_8bit_headers() {
        let m = b"From: \xe9t\xe9 <x@y>\r\nSubject: \xff\xfe\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+IHRoZXJlCg==\r\n";
        let s = summarize(m);
        assert_eq!(s.from, "?t? <x@y>");
        assert_eq!(s.subject, "??");
        assert_eq!(s.text, "hi there\r\n");
        assert!(s.attachments.is_empty());
        assert!(std::str::from_utf8(&build_stub(m, &info())).is_ok());
    }

    #[test]
    fn long_text_is_cut_and_said_so() {
        let mut m = b"Subject: long\r\n\r\n".to_vec();
        for _ in 0..2000 {
            m.extend_from_slice(b"all work and no play\r\n");
        }
        m.extend_from_slice(&[b'z'; 5000]);
        let stub = build_stub(&m, &info());
        assert!(stub.len() < 4 * 1024, "{}", stub.len());
        assert!(String::from_utf8_lossy(&stub).contains("[... cut here"));
    }

    #[test]
    fn stuffing_round_trips() {
        let m = b".one\r\ntwo\r\n..three\r\n";
        let s = stuff(m);
        assert_eq!(s, b"..one\r\ntwo\r\n...three\r\n.\r\n");
        assert_eq!(unstuff(&s), m);
    }

    proptest! {
        #[test]
        fn any_input_gives_a_small_well_formed_stub(data in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let stub = build_stub(&data, &info());
            prop_assert!(stub.len() < 8 * 1024);
            prop_assert!(stub.windows(4).any(|w| w == b"\r\n\r\n"));
            prop_assert!(std::str::from_utf8(&stub).is_ok());
            // No bare LF and no line over 998 bytes.
            for l in stub.split(|&b| b == b'\n') {
                prop_assert!(l.len() <= 998);
            }
        }

        #[test]
        fn mime_like_garbage_never_panics(parts in proptest::collection::vec(
            prop_oneof![
                Just(&b"Content-Type: multipart/mixed; boundary=x\r\n"[..]),
                Just(&b"--x\r\n"[..]), Just(&b"--x--\r\n"[..]), Just(&b"\r\n"[..]),
                Just(&b"Content-Transfer-Encoding: base64\r\n"[..]),
                Just(&b"Content-Transfer-Encoding: quoted-printable\r\n"[..]),
                Just(&b"=\r\n=4"[..]), Just(&b"abc=\r\n"[..]), Just(&b"\xff\xc3"[..]),
                Just(&b"Content-Disposition: attachment; filename=\"a\r\n"[..]),
            ], 0..200)) {
            let m = parts.concat();
            let stub = build_stub(&m, &info());
            prop_assert!(stub.len() < 8 * 1024);
        }
    }
}
