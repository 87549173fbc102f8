//! Reading IMAP lines: words, capability lists (a `* CAPABILITY` line or a
//! `[CAPABILITY ...]` code) and greetings, and the capability list as the
//! program sees it.

use std::collections::BTreeSet;

use super::framer::content;

pub(crate) fn word(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == b' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

pub(crate) fn upper(s: &[u8]) -> String {
    String::from_utf8_lossy(s).to_ascii_uppercase()
}

pub(crate) fn show(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

/// Capability atoms of a `* CAPABILITY` line or a `[CAPABILITY ...]` code.
pub(crate) fn caps_of(line: &[u8]) -> Option<Vec<String>> {
    let (star, rest) = word(line);
    if star == b"*" {
        let (w, atoms) = word(rest);
        if w.eq_ignore_ascii_case(b"CAPABILITY") {
            return Some(atoms_of(atoms));
        }
    }
    let (start, end) = cap_code_span(line)?;
    Some(atoms_of(&line[start..end]))
}

/// Span of the atoms inside a `[CAPABILITY ...]` response code.
pub(crate) fn cap_code_span(line: &[u8]) -> Option<(usize, usize)> {
    let pat = b"[CAPABILITY ";
    let i = line
        .windows(pat.len())
        .position(|w| w.eq_ignore_ascii_case(pat))?;
    let start = i + pat.len();
    let end = start + line[start..].iter().position(|&b| b == b']')?;
    Some((start, end))
}

pub(crate) fn atoms_of(s: &[u8]) -> Vec<String> {
    s.split(|&b| b == b' ')
        .filter(|a| !a.is_empty())
        .map(show)
        .collect()
}

/// The capability list the mail program sees: no STARTTLS (the tunnel is
/// encrypted), no LOGINDISABLED when only TLS would lift it, no COMPRESS
/// (it would blind the pair), and LITERAL+ (which the pair provides).
pub fn rewrite_caps(atoms: &[String]) -> Vec<String> {
    let starttls = atoms.iter().any(|a| a.eq_ignore_ascii_case("STARTTLS"));
    let mut v: Vec<String> = atoms
        .iter()
        .filter(|a| {
            let u = a.to_ascii_uppercase();
            !(u == "STARTTLS"
                || (u == "LOGINDISABLED" && starttls)
                || u.starts_with("COMPRESS=")
                || u == "LITERAL-")
        })
        .cloned()
        .collect();
    if !v.iter().any(|a| a.eq_ignore_ascii_case("LITERAL+")) {
        v.push("LITERAL+".into());
    }
    v
}

pub(crate) fn cap_set(atoms: &[String]) -> BTreeSet<String> {
    rewrite_caps(atoms)
        .iter()
        .map(|a| a.to_ascii_uppercase())
        .collect()
}

/// `raw` (a whole line) with any capability list in it rewritten.
pub(crate) fn rewrite_line(raw: &[u8]) -> Vec<u8> {
    let line = content(raw);
    let (star, rest) = word(line);
    let (w, atoms) = word(rest);
    if star == b"*" && w.eq_ignore_ascii_case(b"CAPABILITY") {
        let mut v = line[..line.len() - atoms.len()].to_vec();
        if atoms.is_empty() {
            v.push(b' ');
        }
        v.extend_from_slice(rewrite_caps(&atoms_of(atoms)).join(" ").as_bytes());
        v.extend_from_slice(b"\r\n");
        return v;
    }
    match cap_code_span(line) {
        Some((s, e)) => {
            let mut v = line[..s].to_vec();
            v.extend_from_slice(rewrite_caps(&atoms_of(&line[s..e])).join(" ").as_bytes());
            v.extend_from_slice(&line[e..]);
            v.extend_from_slice(b"\r\n");
            v
        }
        None => raw.to_vec(),
    }
}

/// What matters in a greeting: its status and capability list. The text may
/// carry a date or host name, which commits nothing.
pub(crate) fn greeting_sig(line: &[u8]) -> (String, Option<BTreeSet<String>>) {
    let (_, rest) = word(line);
    let (status, _) = word(rest);
    (upper(status), caps_of(line).map(|c| cap_set(&c)))
}
