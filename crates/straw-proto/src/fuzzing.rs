//! Entry points for the fuzz targets in `fuzz/`: the crate-private parsers
//! of straw's own resume lines, reached without making them API. Each
//! returns how many bytes of owned output the parsers produced, so a target
//! can check that output stays proportional to input.

use crate::{imap, pop3, smtp};

/// Runs every resume-line parser (POP3, IMAP, SMTP; requests, answers,
/// records and the IMAP command readers they rely on) over `line`.
#[doc(hidden)]
pub fn resume_lines(line: &[u8]) -> usize {
    let mut out = 0;
    if let Ok((_, hash)) = pop3::resume::parse_request(line) {
        out += hash.len();
    }
    for multi in [false, true] {
        out += pop3::resume::parse_uidl(line, multi)
            .iter()
            .map(|(_, uid)| uid.len() + 4)
            .sum::<usize>();
    }
    if let Ok(offer) = imap::resume::parse_request(line) {
        out += offer.tag.len() + offer.item.len() + offer.hash.len();
        // What the server side does with an accepted offer's item.
        out += imap::resume::response_item(&offer.item).map_or(0, |s| s.len());
    }
    if let Some((_, _, item)) = imap::resume::fetch_command(line) {
        out += item.len();
        out += imap::resume::key_item(&item).len();
    }
    let _ = imap::resume::fetch_seq(line);
    let _ = imap::resume::uid_in(line);
    let _ = imap::resume::uidvalidity_in(line);
    out += imap::resume::literal_item(line).map_or(0, |s| s.len());
    if let Some((s, rest)) = imap::resume::astring(line) {
        out += s.len();
        assert!(rest.len() <= line.len());
    }
    out += smtp::resume::parse_request(line).map_or(0, |id| id.len());
    out += match smtp::resume::parse_answer(line) {
        smtp::resume::Answer::Nothing => 0,
        smtp::resume::Answer::Partial(_, h) | smtp::resume::Answer::Done(_, h) => h.len(),
    };
    let _ = smtp::resume::parse_rest(line);
    if let Some((_, hash, reply)) = smtp::resume::parse_done_record(line) {
        out += hash.len() + reply.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parsers_are_reached() {
        // Each line is one the parsers accept, so a parser dropped from
        // `resume_lines` (or one that stops accepting) shows here.
        let pop3 = pop3::resume::request(b"Subject: hi\r\n");
        let smtp = smtp::resume::done_record(b"body", b"250 ok\r\n");
        for line in [
            &pop3[..],
            &smtp[..],
            b"250 DONE 4 0123456789abcdef0123456789abcdef",
        ] {
            assert!(
                resume_lines(line) > 0,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(resume_lines(b""), 0);
    }
}
