//! The cache warm-up's IMAP dialogue: straw plays a mail program against
//! the client accelerator when the link comes up with the cache empty, so
//! the accelerator learns the greeting and capability list before a real
//! program asks. Greeting, `W1 CAPABILITY`, `W2 LOGOUT`; never a login.
//!
//! Sans-IO (see [`Step`] for the driver's loop):
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

use crate::shared::dialogue::{Dialogue, DialogueError, Input, Step};

/// Longest line taken from the accelerator (a capability list is long,
/// but nothing near this).
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Capability,
    /// LOGOUT is sent: the rest is the goodbye and the close.
    Done,
}

/// The IMAP warm-up dialogue (see the module docs).
#[derive(Debug)]
pub struct WarmUp {
    state: State,
    input: Input,
}

impl Default for WarmUp {
    fn default() -> Self {
        Self::new()
    }
}

impl WarmUp {
    pub fn new() -> Self {
        Self {
            state: State::Greeting,
            input: Input::default(),
        }
    }
}

impl Dialogue for WarmUp {
    /// Any greeting and any
    /// tagged status move it on: the accelerator caches what it saw.
    fn step(&mut self, input: &[u8]) -> Result<Step, DialogueError> {
        if self.state == State::Done {
            return Ok(Step::Done(Vec::new()));
        }
        self.input.buf.extend_from_slice(input);
        while let Some(line) = self.input.line(MAX_LINE, "IMAP")? {
            let (ends, next, send): (&[u8], _, &[u8]) = match self.state {
                State::Greeting => (b"* ", State::Capability, b"W1 CAPABILITY\r\n"),
                State::Capability | State::Done => (b"W1 ", State::Done, b"W2 LOGOUT\r\n"),
            };
            if line.starts_with(ends) {
                self.input.reply_done();
                self.state = next;
                return Ok(Step::Send(send.to_vec()));
            }
        }
        Ok(Step::Read)
    }

    /// The other end closed: fine once LOGOUT is sent, early before.
    fn closed(&mut self) -> Result<Step, DialogueError> {
        match self.state {
            State::Done => Ok(Step::Done(Vec::new())),
            _ => Err(DialogueError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dialogue::drive;

    #[test]
    fn greeting_capability_logout_and_never_a_login() {
        let from_accel = b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n* CAPABILITY IMAP4rev1 LITERAL+\r\nW1 OK done\r\n* BYE\r\nW2 OK bye\r\n";
        for split in 1..from_accel.len() {
            let mut w = WarmUp::new();
            let (sent, step) = drive(&mut w, from_accel, b"", split);
            assert_eq!(sent, b"W1 CAPABILITY\r\nW2 LOGOUT\r\n", "split {split}");
            assert_eq!(step, Ok(Step::Done(Vec::new())));
            assert_eq!(w.closed(), Ok(Step::Done(Vec::new())));
        }
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
