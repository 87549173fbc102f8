//! The cache warm-up's SMTP dialogue: straw plays a mail program against
//! the client accelerator when the link comes up with the cache empty, so
//! the accelerator learns the greeting and EHLO reply before a real
//! program asks. Greeting, `EHLO localhost`, `QUIT`; never a login, never a
//! message.
//!
//! Sans-IO (see [`Step`] for the driver's loop):
//!
//! ```
//! use straw_proto::{Dialogue, Step, smtp};
//! let mut w = smtp::WarmUp::new();
//! assert_eq!(w.step(&[]).unwrap(), Step::Read);
//! assert_eq!(w.step(b"220 mx ESMTP\r\n").unwrap(), Step::Send(b"EHLO localhost\r\n".to_vec()));
//! assert_eq!(w.step(&[]).unwrap(), Step::Read);
//! assert_eq!(w.step(b"250 mx\r\n").unwrap(), Step::Send(b"QUIT\r\n".to_vec()));
//! assert_eq!(w.step(&[]).unwrap(), Step::Done(Vec::new())); // read until closed
//! ```

use super::reply::ReplyReader;
use crate::shared::dialogue::{Dialogue, DialogueError, Step};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    /// QUIT is sent: the rest is the goodbye and the close.
    Done,
}

/// The SMTP warm-up dialogue (see the module docs).
#[derive(Debug)]
pub struct WarmUp {
    state: State,
    buf: Vec<u8>,
    reader: ReplyReader,
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
            buf: Vec::new(),
            reader: ReplyReader::default(),
        }
    }
}

impl Dialogue for WarmUp {
    /// Any reply moves it on,
    /// whatever its code: the accelerator caches what it saw either way.
    fn step(&mut self, input: &[u8]) -> Result<Step, DialogueError> {
        if self.state == State::Done {
            return Ok(Step::Done(Vec::new()));
        }
        self.buf.extend_from_slice(input);
        let (n, reply) = self
            .reader
            .feed(&self.buf)
            .map_err(|e| DialogueError::BadReply(e.to_string()))?;
        self.buf.drain(..n);
        if reply.is_none() {
            return Ok(Step::Read);
        }
        let (next, send): (_, &[u8]) = match self.state {
            State::Greeting => (State::Ehlo, b"EHLO localhost\r\n"),
            State::Ehlo | State::Done => (State::Done, b"QUIT\r\n"),
        };
        self.state = next;
        Ok(Step::Send(send.to_vec()))
    }

    /// The other end closed: fine once QUIT is sent, early before.
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
    fn greeting_ehlo_quit_and_never_a_login() {
        let replies = b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n221 Bye\r\n";
        for split in 1..replies.len() {
            let mut w = WarmUp::new();
            let (sent, step) = drive(&mut w, replies, b"", split);
            assert_eq!(sent, b"EHLO localhost\r\nQUIT\r\n", "split {split}");
            assert_eq!(step, Ok(Step::Done(Vec::new())));
            assert_eq!(w.closed(), Ok(Step::Done(Vec::new())));
        }
    }

    #[test]
    fn a_refusal_still_moves_on_but_a_close_is_early() {
        let (sent, step) = drive(&mut WarmUp::new(), b"554 busy\r\n250-mx\r\n", b"", 64);
        assert_eq!(sent, b"EHLO localhost\r\n");
        assert_eq!(step, Err(DialogueError::Closed));
        assert!(matches!(
            WarmUp::new().step(b"garbage\r\n"),
            Err(DialogueError::BadReply(_))
        ));
    }
}
