//! The cache warm-up's IMAP dialogue: straw plays a mail program against
//! the client accelerator when the link comes up with the cache empty, so
//! the accelerator learns the greeting and capability list before a real
//! program asks. Greeting, `W1 CAPABILITY`, `W2 LOGOUT`; never a login.
//!
//! Sans-IO (see [`crate::Dialogue`] for the driver's loop):
//!
//! ```
//! use straw_proto::{Dialogue, Step, imap};
//! let mut w = imap::WarmUp::new();
//! assert_eq!(w.step(&[]).unwrap(), Step::Read);
//! assert_eq!(w.step(b"* OK ready\r\n").unwrap(), Step::Send(b"W1 CAPABILITY\r\n".to_vec()));
//! let caps = b"* CAPABILITY IMAP4rev1\r\nW1 OK done\r\n";
//! assert_eq!(w.step(caps).unwrap(), Step::Send(b"W2 LOGOUT\r\n".to_vec()));
//! assert_eq!(w.step(&[]).unwrap(), Step::Done(Vec::new())); // read until closed
//! ```

use crate::shared::dialogue::{DialogueError, Input, Script, Scripted};

/// Longest line taken from the accelerator (a capability list is long,
/// but nothing near this).
const MAX_LINE: usize = 64 * 1024;

/// The IMAP warm-up dialogue (see the module docs).
pub type WarmUp = Scripted<Replies>;

/// IMAP replies: the greeting is the first `* ` line, the CAPABILITY reply
/// ends with its `W1 ` tagged line.
#[derive(Debug, Default)]
pub struct Replies(Input);

impl Script for Replies {
    const COMMANDS: &'static [&'static [u8]] = &[b"W1 CAPABILITY\r\n", b"W2 LOGOUT\r\n"];

    fn reply_done(&mut self, buf: &mut Vec<u8>, n: usize) -> Result<bool, DialogueError> {
        let ends: &[u8] = if n == 0 { b"* " } else { b"W1 " };
        self.0.buf.append(buf);
        while let Some(line) = self.0.line(MAX_LINE, "IMAP")? {
            if line.starts_with(ends) {
                self.0.reply_done();
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dialogue::{assert_warm_up, drive};

    #[test]
    fn greeting_capability_logout_and_never_a_login() {
        assert_warm_up::<Replies>(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n* CAPABILITY IMAP4rev1 LITERAL+\r\nW1 OK done\r\n* BYE\r\nW2 OK bye\r\n", b"W1 CAPABILITY\r\nW2 LOGOUT\r\n");
    }

    #[test]
    fn an_early_close_or_a_huge_line_fails() {
        let (_, step) = drive(&mut WarmUp::new(), b"* OK", b"", 64);
        assert_eq!(step, Err(DialogueError::Closed));
        let huge = vec![b'x'; MAX_LINE + 2];
        let (_, step) = drive(&mut WarmUp::new(), &huge, b"", huge.len());
        assert!(
            matches!(step, Err(DialogueError::LineTooLong(_))),
            "{step:?}"
        );
    }
}
