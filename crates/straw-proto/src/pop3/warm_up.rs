//! The cache warm-up's POP3 dialogue: straw plays a mail program against
//! the client accelerator when the link comes up with the cache empty, so
//! the accelerator learns the greeting before a real program asks.
//! Greeting, then `QUIT`; never a login.
//!
//! Sans-IO (see [`Step`] for the driver's loop):
//!
//! ```
//! use straw_proto::{Dialogue, Step, pop3};
//! let mut w = pop3::WarmUp::new();
//! assert_eq!(w.step(&[]).unwrap(), Step::Read);
//! assert_eq!(w.step(b"+OK ready\r\n").unwrap(), Step::Send(b"QUIT\r\n".to_vec()));
//! assert_eq!(w.step(&[]).unwrap(), Step::Done(Vec::new())); // read until closed
//! ```

use super::reply::ReplyReader;
use super::starttls::read_status_line;
use crate::shared::dialogue::{Dialogue, DialogueError, Step};

/// The POP3 warm-up dialogue (see the module docs).
#[derive(Debug, Default)]
pub struct WarmUp {
    /// QUIT is sent: the rest is the goodbye and the close.
    quit_sent: bool,
    buf: Vec<u8>,
    reader: ReplyReader,
}

impl WarmUp {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Dialogue for WarmUp {
    /// A `-ERR` greeting moves it
    /// on too: the accelerator caches what it saw either way.
    fn step(&mut self, input: &[u8]) -> Result<Step, DialogueError> {
        if self.quit_sent {
            return Ok(Step::Done(Vec::new()));
        }
        self.buf.extend_from_slice(input);
        if read_status_line(&mut self.reader, &mut self.buf)?.is_none() {
            return Ok(Step::Read);
        }
        self.quit_sent = true;
        Ok(Step::Send(b"QUIT\r\n".to_vec()))
    }

    /// The other end closed: fine once QUIT is sent, early before.
    fn closed(&mut self) -> Result<Step, DialogueError> {
        match self.quit_sent {
            true => Ok(Step::Done(Vec::new())),
            false => Err(DialogueError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dialogue::drive;

    #[test]
    fn greeting_then_quit_and_never_a_login() {
        let greeting = b"+OK Dovecot ready.\r\n+OK Logging out.\r\n";
        for split in 1..greeting.len() {
            let mut w = WarmUp::new();
            let (sent, step) = drive(&mut w, greeting, b"", split);
            assert_eq!(sent, b"QUIT\r\n", "split {split}");
            assert_eq!(step, Ok(Step::Done(Vec::new())));
            assert_eq!(w.closed(), Ok(Step::Done(Vec::new())));
        }
        let (sent, _) = drive(&mut WarmUp::new(), b"-ERR busy\r\n", b"", 64);
        assert_eq!(sent, b"QUIT\r\n", "a refusal moves it on too");
        let (_, step) = drive(&mut WarmUp::new(), b"+OK Dov", b"", 64);
        assert_eq!(step, Err(DialogueError::Closed));
    }
}
