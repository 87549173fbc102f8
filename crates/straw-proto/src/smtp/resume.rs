//! SMTP DATA resume (see [`crate::partial`] and `docs/wire.md` §5).
//!
//! With a store, the server side keeps each body as it arrives and only
//! talks `DATA` to the real server once the terminating dot is in, so a cut
//! never delivers half a message. Both sides name a message by
//! [`message_id`]: the envelope lines and the first [`ID_PREFIX`] bytes of
//! the body as they cross the stream. The client side marks a message in its
//! own store while its end-of-data reply is outstanding; on a later send of
//! a marked message it asks `XSTRAW-RESUME 1 <id>` instead of sending the
//! body at once, and the server side says what it holds:
//! - `250 PARTIAL <len> <hash>`: the first `len` body bytes; if the
//!   program's body starts with them the client sends `XSTRAW-REST 1 <len>`
//!   and the bytes after them, else `XSTRAW-DATA` and all of it.
//! - `250 DONE <len> <hash>`: that message (whole body `len` bytes) was
//!   delivered and its end-of-data reply recorded; if the program's body is
//!   exactly it, the client sends `XSTRAW-DONE 1` and the server side
//!   answers with the recorded reply (and `RSET`s the real server) instead
//!   of delivering it again.
//! - anything else (`550` from the server side, or the real server's `500`
//!   when an older server side passed the line on): send it all.

use crate::partial::prefix_hash;

use super::trim_end;

pub const RESUME_VERB: &str = "XSTRAW-RESUME";
pub const REST_VERB: &str = "XSTRAW-REST";
pub const DONE_VERB: &str = "XSTRAW-DONE";
pub const VERSION: u32 = 1;
/// Body bytes that name a message, with its envelope.
pub const ID_PREFIX: usize = 1024;
/// The server side's answer when it holds nothing for an id.
pub(crate) const NOTHING: &[u8] = b"550 5.0.0 straw: nothing held\r\n";

/// The id of a message: [`prefix_hash`] of its envelope lines (`MAIL` and
/// `RCPT`, as sent) and the first [`ID_PREFIX`] bytes of its body.
pub fn message_id(envelope: &[u8], body: &[u8]) -> String {
    let mut v = (envelope.len() as u64).to_be_bytes().to_vec();
    v.extend_from_slice(envelope);
    v.extend_from_slice(&body[..body.len().min(ID_PREFIX)]);
    prefix_hash(&v)
}

/// Client store key: a message whose end-of-data reply is outstanding.
pub(crate) fn mark_key(id: &str) -> String {
    format!("smtp\0mark\0{id}")
}

/// Server store keys, per client (the driver passes the client's key).
pub(crate) fn part_key(client: &str, id: &str) -> String {
    format!("smtp\0{client}\0part\0{id}")
}

pub(crate) fn done_key(client: &str, id: &str) -> String {
    format!("smtp\0{client}\0done\0{id}")
}

/// What the server side offered for an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    Nothing,
    Partial(usize, String),
    Done(usize, String),
}

fn hex32(h: &str) -> bool {
    h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn request(id: &str) -> Vec<u8> {
    format!("{RESUME_VERB} {VERSION} {id}\r\n").into_bytes()
}

/// The id of a request line, if it is one this version understands.
pub(crate) fn parse_request(line: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(trim_end(line)).ok()?;
    let w: Vec<&str> = t.split_ascii_whitespace().collect();
    match w.as_slice() {
        [_, v, id] if *v == "1" && hex32(id) => Some(id.to_ascii_lowercase()),
        _ => None,
    }
}

pub(crate) fn answer_line(a: &Answer) -> Vec<u8> {
    match a {
        Answer::Nothing => NOTHING.to_vec(),
        Answer::Partial(len, h) => format!("250 PARTIAL {len} {h}\r\n").into_bytes(),
        Answer::Done(len, h) => format!("250 DONE {len} {h}\r\n").into_bytes(),
    }
}

/// Reads the server side's answer; anything unexpected means nothing held.
pub(crate) fn parse_answer(reply: &[u8]) -> Answer {
    let t = String::from_utf8_lossy(trim_end(reply)).into_owned();
    let w: Vec<&str> = t.split_ascii_whitespace().collect();
    match w.as_slice() {
        ["250", kind, len, h] if hex32(h) => match (*kind, len.parse::<usize>()) {
            ("PARTIAL", Ok(n)) if n > 0 => Answer::Partial(n, h.to_ascii_lowercase()),
            ("DONE", Ok(n)) => Answer::Done(n, h.to_ascii_lowercase()),
            _ => Answer::Nothing,
        },
        _ => Answer::Nothing,
    }
}

pub(crate) fn rest_line(len: usize) -> Vec<u8> {
    format!("{REST_VERB} {VERSION} {len}\r\n").into_bytes()
}

/// The length of an `XSTRAW-REST` line.
pub(crate) fn parse_rest(line: &[u8]) -> Option<usize> {
    let t = std::str::from_utf8(trim_end(line)).ok()?;
    let w: Vec<&str> = t.split_ascii_whitespace().collect();
    match w.as_slice() {
        [_, "1", n] => n.parse().ok(),
        _ => None,
    }
}

pub(crate) fn done_line() -> Vec<u8> {
    format!("{DONE_VERB} {VERSION}\r\n").into_bytes()
}

/// A delivered message as the server side records it: body length and
/// hash, then the real end-of-data reply.
pub(crate) fn done_record(body: &[u8], reply: &[u8]) -> Vec<u8> {
    let mut v = format!("{} {}\n", body.len(), prefix_hash(body)).into_bytes();
    v.extend_from_slice(reply);
    v
}

/// `(len, hash, reply)` of a record; `None` if damaged.
pub(crate) fn parse_done_record(rec: &[u8]) -> Option<(usize, String, Vec<u8>)> {
    let nl = rec.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&rec[..nl]).ok()?;
    let (len, h) = head.split_once(' ')?;
    let reply = rec[nl + 1..].to_vec();
    (hex32(h) && reply.ends_with(b"\r\n")).then_some((len.parse().ok()?, h.to_owned(), reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_junk_means_nothing() {
        let id = message_id(b"MAIL FROM:<a>\r\n", b"body");
        assert_ne!(id, message_id(b"MAIL FROM:<b>\r\n", b"body"));
        assert_eq!(
            message_id(b"M", &[1; 2000]),
            message_id(b"M", &[1; ID_PREFIX])
        );
        assert_eq!(parse_request(&request(&id)), Some(id.clone()));
        assert_eq!(parse_request(b"XSTRAW-RESUME 2 00\r\n"), None);
        let a = Answer::Partial(12, id.clone());
        assert_eq!(parse_answer(&answer_line(&a)), a);
        let d = Answer::Done(0, id.clone());
        assert_eq!(parse_answer(&answer_line(&d)), d);
        assert_eq!(parse_answer(NOTHING), Answer::Nothing);
        assert_eq!(
            parse_answer(b"500 5.5.1 Invalid command: Command unrecognized\r\n"),
            Answer::Nothing
        );
        assert_eq!(
            parse_answer(b"250 PARTIAL 0 0123456789abcdef0123456789abcdef\r\n"),
            Answer::Nothing
        );
        assert_eq!(parse_rest(&rest_line(77)), Some(77));
        let rec = done_record(b"body", b"250 ok\r\n");
        assert_eq!(
            parse_done_record(&rec),
            Some((4, prefix_hash(b"body"), b"250 ok\r\n".to_vec()))
        );
        assert_eq!(parse_done_record(b"4 zz\n250 ok\r\n"), None);
    }
}
