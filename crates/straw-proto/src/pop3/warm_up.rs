//! The cache warm-up's POP3 dialogue: straw plays a mail program against
//! the client accelerator when the link comes up with the cache empty, so
//! the accelerator learns the greeting before a real program asks.
//! Greeting, then `QUIT`; never a login.
//!
//! Sans-IO (see [`crate::Dialogue`] for the driver's loop):
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
use crate::shared::dialogue::{DialogueError, Script, Scripted};

/// The POP3 warm-up dialogue (see the module docs).
pub type WarmUp = Scripted<Replies>;

/// POP3 status lines, read with the accelerators' own reader.
#[derive(Debug, Default)]
pub struct Replies(ReplyReader);

impl Script for Replies {
    const COMMANDS: &'static [&'static [u8]] = &[b"QUIT\r\n"];

    fn reply_done(&mut self, buf: &mut Vec<u8>, _n: usize) -> Result<bool, DialogueError> {
        Ok(read_status_line(&mut self.0, buf)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dialogue::{assert_warm_up, drive};

    #[test]
    fn greeting_then_quit_and_never_a_login() {
        assert_warm_up::<Replies>(b"+OK Dovecot ready.\r\n+OK Logging out.\r\n", b"QUIT\r\n");
        let (sent, _) = drive(&mut WarmUp::new(), b"-ERR busy\r\n", b"", 64);
        assert_eq!(sent, b"QUIT\r\n", "a refusal moves it on too");
        let (_, step) = drive(&mut WarmUp::new(), b"+OK Dov", b"", 64);
        assert_eq!(step, Err(DialogueError::Closed));
    }
}
