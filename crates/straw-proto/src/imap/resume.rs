//! IMAP FETCH resume (see [`crate::partial`]).
//!
//! What is resumed is one body literal of a FETCH response (`BODY[...]`,
//! `BINARY[...]`, `RFC822`), keyed by account, mailbox, UIDVALIDITY, UID
//! and the item. Wire: right before the program's `FETCH`/`UID FETCH` of a
//! single message, the client side sends a command of its own
//! `<tag> XSTRAW-PARTIAL 1 <uid> <item> <len> <hash>` (version 1, the item
//! as the response names it, the length of the literal prefix it holds,
//! [`prefix_hash`] of it). The server side keeps it from the real server
//! and binds it to the next command. It answers with a tagged response
//! under `<tag>`, placed between responses:
//! - `OK [XSTRAW-RESUMED]` right before the FETCH response holding that
//!   item's literal, once it has read `len` bytes of it and the hash
//!   matched: in that response the literal is announced with the size of
//!   the remainder (`{N-len}`) and only the remainder follows;
//! - `NO [XSTRAW-DIFFERS]` before the same response sent unchanged (prefix
//!   differs, or the literal is shorter);
//! - `NO [XSTRAW-NOT-RESUMED]` before the FETCH's tagged response when no
//!   such literal came (or at once when the next command is no FETCH);
//! - `BAD [XSTRAW-REFUSED]` for a malformed request.
//!
//! An older server side passes the command to the real server, whose `BAD`
//! (no `[XSTRAW-` code) tells the client side to stop offering; the FETCH
//! is then an ordinary full one.

use super::client::ClientAccel;
use super::framer::{Lit, content, with_literal};
use super::reply::show;
use crate::Output;
use crate::partial::{RequestError, prefix_hash};

pub const VERB: &str = "XSTRAW-PARTIAL";
pub const VERSION: u32 = 1;
/// Prefixes shorter than this are not worth a request.
pub(crate) const MIN_PREFIX: usize = 512;
/// Literals shorter than this are not kept.
pub(crate) const STORE_MIN: u64 = 2048;
/// Tags of the client side's own commands (`xstraw.<n>`).
pub(crate) const TAG_PREFIX: &str = "xstraw.";

pub(crate) const RESUMED: &str = "OK [XSTRAW-RESUMED] straw: resumed";
pub(crate) const DIFFERS: &str = "NO [XSTRAW-DIFFERS] straw: prefix differs, full literal follows";
pub(crate) const NOT_RESUMED: &str = "NO [XSTRAW-NOT-RESUMED] straw: not resumed";
pub(crate) const REFUSED: &str = "BAD [XSTRAW-REFUSED] straw: malformed request";

/// A request as the server side reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    pub tag: Vec<u8>,
    pub uid: u32,
    /// Response item name, upper case (`BODY[]`, `RFC822`, `BINARY[1]`).
    pub item: String,
    pub len: usize,
    pub hash: String,
}

pub(crate) fn request(tag: &str, uid: u32, item: &str, prefix: &[u8]) -> Vec<u8> {
    format!(
        "{tag} {VERB} {VERSION} {uid} {item} {} {}\r\n",
        prefix.len(),
        prefix_hash(prefix)
    )
    .into_bytes()
}

/// Parses a request line (without CRLF): the offer, or why not.
pub(crate) fn parse_request(line: &[u8]) -> Result<Offer, RequestError> {
    let text = String::from_utf8_lossy(line).into_owned();
    let w: Vec<&str> = text.split(' ').collect();
    let bad = || RequestError::Malformed { line: text.clone() };
    if w.len() != 7 || !w[1].eq_ignore_ascii_case(VERB) {
        return Err(bad());
    }
    if w[2].parse::<u32>().ok() != Some(VERSION) {
        return Err(RequestError::UnsupportedVersion {
            verb: VERB,
            line: text.clone(),
        });
    }
    let uid = w[3].parse::<u32>().map_err(|_| bad())?;
    let item = w[4].to_ascii_uppercase();
    let len = w[5].parse::<usize>().map_err(|_| bad())?;
    let hash = w[6];
    if len == 0
        || uid == 0
        || response_item(&item).is_none()
        || hash.len() != 32
        || !hash.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    Ok(Offer {
        tag: w[0].as_bytes().to_vec(),
        uid,
        item,
        len,
        hash: hash.to_ascii_lowercase(),
    })
}

/// A section spec we resume: part numbers and TEXT/HEADER/MIME (no header
/// field lists, whose echo is the server's to format).
fn simple_section(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
}

/// The response item name (upper case) of a resumable request item, or
/// None (not a whole body item, or a partial `<o.n>` fetch).
pub(crate) fn response_item(req: &str) -> Option<String> {
    let u = req.to_ascii_uppercase();
    if u == "RFC822" {
        return Some(u);
    }
    let (name, rest) = u.split_once('[')?;
    let sec = rest.strip_suffix(']')?;
    let name = match name {
        "BODY" | "BODY.PEEK" => "BODY",
        "BINARY" | "BINARY.PEEK" => "BINARY",
        _ => return None,
    };
    simple_section(sec).then(|| format!("{name}[{sec}]"))
}

/// The item part of a store key: RFC822 is the same bytes as BODY[].
pub(crate) fn key_item(item: &str) -> &str {
    if item == "RFC822" { "BODY[]" } else { item }
}

/// A program command `FETCH`/`UID FETCH` of one message with exactly one
/// resumable body item: `(by_uid, number, response item)`.
pub(crate) fn fetch_command(line: &[u8]) -> Option<(bool, u32, String)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut w = text.splitn(3, ' ');
    let _tag = w.next()?;
    let mut verb = w.next()?.to_ascii_uppercase();
    let mut rest = w.next()?;
    let by_uid = verb == "UID";
    if by_uid {
        let (v, r) = rest.split_once(' ')?;
        verb = v.to_ascii_uppercase();
        rest = r;
    }
    if verb != "FETCH" {
        return None;
    }
    let (set, items) = rest.split_once(' ')?;
    let n = set.parse::<u32>().ok().filter(|&n| n > 0)?;
    let items = items.trim();
    let items = match items.strip_prefix('(') {
        Some(i) => i.strip_suffix(')')?,
        None => items,
    };
    // Split on spaces outside brackets.
    let mut found = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    let b = items.as_bytes();
    for i in 0..=b.len() {
        match b.get(i) {
            Some(b'[') => depth += 1,
            Some(b']') => depth -= 1,
            Some(b' ') | None if depth == 0 => {
                let it = &items[start..i];
                let u = it.to_ascii_uppercase();
                if u.starts_with("BODY[")
                    || u.starts_with("BODY.PEEK[")
                    || u.starts_with("BINARY")
                    || (u.starts_with("RFC822") && u != "RFC822.SIZE")
                {
                    found.push(it);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    match found.as_slice() {
        [one] => Some((by_uid, n, response_item(one)?)),
        _ => None,
    }
}

/// `* n FETCH (`: the sequence number.
pub(crate) fn fetch_seq(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut w = text.splitn(4, ' ');
    (w.next()? == "*").then_some(())?;
    let n = w.next()?.parse().ok()?;
    w.next()?.eq_ignore_ascii_case("FETCH").then_some(n)
}

/// `UID n` among the items of a FETCH response line.
pub(crate) fn uid_in(line: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(line);
    let up = text.to_ascii_uppercase();
    let mut from = 0;
    while let Some(i) = up[from..].find("UID ") {
        let at = from + i;
        let before = up[..at].bytes().last();
        if matches!(before, Some(b' ' | b'(')) {
            let digits: String = up[at + 4..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
        from = at + 4;
    }
    None
}

/// The item a literal belongs to: the token before `{` (and `~`), upper
/// case, if it is one we resume.
pub(crate) fn literal_item(before_brace: &[u8]) -> Option<String> {
    let s = before_brace.strip_suffix(b"~").unwrap_or(before_brace);
    let s = std::str::from_utf8(s).ok()?.trim_end();
    let tok = s.rsplit([' ', '(']).next()?.to_ascii_uppercase();
    (tok == "RFC822" || (response_item(&tok).as_deref() == Some(tok.as_str()))).then_some(tok)
}

/// Store key of one literal. The driver's store adds the service name.
pub(crate) fn key(user: &str, mailbox: &str, uidvalidity: u32, uid: u32, item: &str) -> String {
    format!(
        "{}{uid}\0{}",
        mailbox_prefix(user, mailbox, uidvalidity),
        key_item(item)
    )
}

pub(crate) fn account_prefix(user: &str) -> String {
    format!("imap\0{user}\0")
}

pub(crate) fn mailbox_prefix(user: &str, mailbox: &str, uidvalidity: u32) -> String {
    format!("imap\0{user}\0{mailbox}\0{uidvalidity}\0")
}

/// First astring of `s` (atom or quoted string) and the rest.
pub(crate) fn astring(s: &[u8]) -> Option<(String, &[u8])> {
    if let Some(q) = s.strip_prefix(b"\"") {
        let mut v = Vec::new();
        let mut i = 0;
        while i < q.len() {
            match q[i] {
                b'\\' if i + 1 < q.len() => {
                    v.push(q[i + 1]);
                    i += 2;
                }
                b'"' => {
                    let rest = q[i + 1..].strip_prefix(b" ").unwrap_or(&q[i + 1..]);
                    return Some((String::from_utf8(v).ok()?, rest));
                }
                b => {
                    v.push(b);
                    i += 1;
                }
            }
        }
        return None;
    }
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let a = &s[..end];
    if a.is_empty() || a.contains(&b'{') {
        return None;
    }
    let rest = s.get(end + 1..).unwrap_or(&[]);
    Some((String::from_utf8(a.to_vec()).ok()?, rest))
}

/// `[UIDVALIDITY n]` in an untagged OK.
pub(crate) fn uidvalidity_in(line: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(line).to_ascii_uppercase();
    let i = text.find("[UIDVALIDITY ")?;
    text[i + 13..].split(']').next()?.trim().parse().ok()
}

// The client side's part: learn UIDs, offer stored prefixes, splice a
// resumed literal back together and keep body literals as they arrive.

#[derive(Debug)]
pub(crate) struct ClientOffer {
    pub(super) tag: Vec<u8>,
    pub(super) uid: u32,
    pub(super) item: String,
    pub(super) key: String,
    pub(super) prefix: Vec<u8>,
}

impl ClientAccel {
    /// A FETCH by number of one message whose UID is unknown: asks the
    /// server for it (own tag, pipelined) so its literal can be kept.
    /// Returns true if the FETCH must wait for the answer: the store holds
    /// something for this mailbox, so there may be a prefix to offer.
    pub(super) fn uid_lookup(&mut self, raw: &[u8], out: &mut Output) -> bool {
        let (Some(store), Some(user)) = (&self.store, &self.user) else {
            return false;
        };
        // Behind a SELECT in flight the lookup still runs in the new
        // mailbox; the store then holds nothing for this account, or the
        // FETCH would have waited for the SELECT.
        if self.closing.is_some() || (self.mailbox.is_none() && self.selecting.is_none()) {
            return false;
        }
        let Some((false, n, _)) = fetch_command(content(raw)) else {
            return false;
        };
        if self.selecting.is_none() && self.seq_uids.contains_key(&n) {
            return false;
        }
        let wait = !self.resume_refused
            && self.selecting.is_none()
            && self
                .mailbox
                .as_ref()
                .is_some_and(|(mb, uv)| store.any_with_prefix(&mailbox_prefix(user, mb, *uv)));
        self.own_seq += 1;
        let tag = format!("{}{}", TAG_PREFIX, self.own_seq);
        out.to_tunnel
            .extend_from_slice(format!("{tag} FETCH {n} (UID)\r\n").as_bytes());
        out.flush |= wait;
        self.lookups.push((tag.into_bytes(), n));
        wait
    }

    pub(super) fn offer(&mut self, line: &[u8], out: &mut Output) {
        let (Some(store), Some(user), Some((mb, uv))) = (&self.store, &self.user, &self.mailbox)
        else {
            return;
        };
        if self.resume_refused || self.selecting.is_some() || self.closing.is_some() {
            return;
        }
        let Some((by_uid, n, item)) = fetch_command(line) else {
            return;
        };
        let uid = if by_uid {
            n
        } else {
            match self.seq_uids.get(&n) {
                Some(&u) => u,
                None => return,
            }
        };
        let key = key(user, mb, *uv, uid, &item);
        let Some(prefix) = store.get(&key).filter(|p| p.len() >= MIN_PREFIX) else {
            return;
        };
        self.own_seq += 1;
        let tag = format!("{}{}", TAG_PREFIX, self.own_seq);
        out.to_tunnel
            .extend_from_slice(&request(&tag, uid, &item, &prefix));
        self.offers.push(ClientOffer {
            tag: tag.into_bytes(),
            uid,
            item,
            key,
            prefix,
        });
    }

    /// The server side's answer to an offer (swallowed).
    pub(super) fn offer_answered(
        &mut self,
        o: ClientOffer,
        status: &[u8],
        line: &[u8],
        out: &mut Output,
    ) {
        let text = String::from_utf8_lossy(line);
        if status.eq_ignore_ascii_case(b"OK") && text.contains("[XSTRAW-RESUMED]") {
            self.armed = Some(o);
            self.armed_fresh = true;
        } else if !text.contains("[XSTRAW-") {
            // Not from a straw server side: the real server refused it.
            out.notes.push(format!(
                "IMAP resume not supported by the server side ({}); fetching whole",
                show(line)
            ));
            self.resume_refused = true;
        }
    }

    /// A literal inside an untagged FETCH response: splice a resumed one,
    /// keep a body item's bytes in the store. `mark`: where this line
    /// starts in `out.to_local`.
    pub(super) fn fetch_literal(&mut self, raw: &[u8], lit: Lit, mark: usize, out: &mut Output) {
        self.keeping = None;
        let Some((_, uid)) = self.fetch_resp else {
            return;
        };
        let Some(store) = self.store.clone() else {
            return;
        };
        let Some(item) = literal_item(&raw[..lit.open]) else {
            return;
        };
        // Same rule as the server side: the first literal of the item whose
        // response shows no other UID before it.
        if let Some(a) = &self.armed
            && a.item == item
            && uid.is_none_or(|u| u == a.uid)
        {
            let Some(a) = self.armed.take() else { return };
            let real = Lit {
                n: lit.n + a.prefix.len() as u64,
                plus: false,
                open: lit.open,
            };
            out.to_local.truncate(mark);
            out.to_local
                .extend_from_slice(&with_literal(raw, &real, false));
            out.to_local.extend_from_slice(&a.prefix);
            if lit.n == 0 {
                store.remove(&a.key);
            } else {
                self.keeping = Some((a.key, lit.n));
            }
            return;
        }
        let uid = uid.or_else(|| {
            self.fetch_resp
                .and_then(|(s, _)| self.seq_uids.get(&s).copied())
        });
        let (Some(user), Some((mb, uv)), Some(uid)) = (&self.user, &self.mailbox, uid) else {
            return;
        };
        if lit.n >= STORE_MIN {
            let key = key(user, mb, *uv, uid, &item);
            store.put(&key, b"");
            self.keeping = Some((key, lit.n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_rejects_junk() {
        let line = request("xstraw.1", 11, "BODY[]", b"hello");
        let o = parse_request(super::super::framer::content(&line)).unwrap();
        assert_eq!(o.tag, b"xstraw.1");
        assert_eq!((o.uid, o.item.as_str(), o.len), (11, "BODY[]", 5));
        assert_eq!(o.hash, prefix_hash(b"hello"));
        let h = prefix_hash(b"x");
        assert!(parse_request(format!("t XSTRAW-PARTIAL 2 1 BODY[] 5 {h}").as_bytes()).is_err());
        assert!(parse_request(format!("t XSTRAW-PARTIAL 1 1 BODY[] 0 {h}").as_bytes()).is_err());
        assert!(parse_request(format!("t XSTRAW-PARTIAL 1 1 FLAGS 5 {h}").as_bytes()).is_err());
        assert!(parse_request(b"t XSTRAW-PARTIAL 1 1 BODY[] 5 zz").is_err());
        assert!(parse_request(b"t XSTRAW-PARTIAL").is_err());
    }

    #[test]
    fn fetch_commands_parse() {
        let resumable: [(&[u8], bool, u32, &str); 4] = [
            (b"a UID FETCH 11 (BODY.PEEK[])", true, 11, "BODY[]"),
            (b"a fetch 3 rfc822", false, 3, "RFC822"),
            (
                b"a UID FETCH 7 (UID RFC822.SIZE FLAGS BODY.PEEK[1.2])",
                true,
                7,
                "BODY[1.2]",
            ),
            (b"a FETCH 2 (BINARY.PEEK[1])", false, 2, "BINARY[1]"),
        ];
        for (cmd, by_uid, n, section) in resumable {
            assert_eq!(fetch_command(cmd), Some((by_uid, n, section.into())));
        }
        let not_resumable: [&[u8]; 5] = [
            b"a FETCH 1:3 BODY[]",
            b"a FETCH 1 (BODY[]<0.100>)",
            b"a FETCH 1 (BODY[HEADER] BODY[TEXT])",
            b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (FROM TO)])",
            b"a FETCH 1 (FLAGS)",
        ];
        for cmd in not_resumable {
            assert_eq!(fetch_command(cmd), None, "{}", String::from_utf8_lossy(cmd));
        }
    }

    #[test]
    fn response_parts_parse() {
        let l = b"* 12 FETCH (UID 11 BODY[] ";
        assert_eq!(fetch_seq(b"* 12 FETCH (UID 11 BODY[] {5}"), Some(12));
        assert_eq!(fetch_seq(b"* 12 EXPUNGE"), None);
        assert_eq!(uid_in(l), Some(11));
        assert_eq!(uid_in(b"* 1 FETCH (FLAGS (\\Seen) UID 9)"), Some(9));
        assert_eq!(uid_in(b"* 1 FETCH (XUID 9)"), None);
        assert_eq!(literal_item(l), Some("BODY[]".into()));
        assert_eq!(literal_item(b" BINARY[1] ~"), Some("BINARY[1]".into()));
        assert_eq!(literal_item(b"* 1 FETCH (RFC822 "), Some("RFC822".into()));
        assert_eq!(literal_item(b"* 1 FETCH (BODY[]<0> "), None);
        assert_eq!(
            literal_item(b"* 1 FETCH (BODY[HEADER.FIELDS (FROM)] "),
            None
        );
        assert_eq!(
            uidvalidity_in(b"* OK [UIDVALIDITY 1700000000] UIDs valid"),
            Some(1700000000)
        );
        assert_eq!(
            astring(b"\"a \\\"b\" rest"),
            Some(("a \"b".into(), &b"rest"[..]))
        );
        assert_eq!(astring(b"bob pw"), Some(("bob".into(), &b"pw"[..])));
        assert_eq!(astring(b"{3}"), None);
        assert_eq!(key_item("RFC822"), "BODY[]");
    }
}
