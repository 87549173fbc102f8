//! straw's own resume lines (POP3 `XSTRAW-RESUME`, IMAP's resume FETCH
//! offer, SMTP `XSTRAW-DATA`/`-REST`/`-DONE` and the stored done record),
//! as a hostile client, server side or damaged store could hand them over.
//! Besides "no panic": what the parsers keep is never more than the line
//! (a parser must not turn a short line into a large allocation).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let kept = straw_proto::fuzzing::resume_lines(line);
    // Each kept string is a slice of the line; several parsers may keep the
    // same bytes (at most 12 of them), plus a few bytes per parsed entry.
    assert!(
        kept <= 12 * line.len() + 64,
        "{kept} bytes kept from {}",
        line.len()
    );
});
