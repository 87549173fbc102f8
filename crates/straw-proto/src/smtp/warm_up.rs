//! The cache warm-up's SMTP dialogue: straw plays a mail program against
//! the client accelerator when the link comes up with the cache empty, so
//! the accelerator learns the greeting and EHLO reply before a real
//! program asks. Greeting, `EHLO localhost`, `QUIT`; never a login, never a
//! message.
//!
//! Sans-IO (see [`crate::Dialogue`] for the driver's loop):
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
use crate::shared::dialogue::{DialogueError, Script, Scripted};

/// The SMTP warm-up dialogue (see the module docs).
pub type WarmUp = Scripted<Replies>;

/// SMTP replies, read with the accelerators' own reader.
#[derive(Debug, Default)]
pub struct Replies(ReplyReader);

impl Script for Replies {
    const COMMANDS: &'static [&'static [u8]] = &[b"EHLO localhost\r\n", b"QUIT\r\n"];

    fn reply_done(&mut self, buf: &mut Vec<u8>, _n: usize) -> Result<bool, DialogueError> {
        let (n, reply) = self
            .0
            .feed(buf)
            .map_err(|e| DialogueError::BadReply(e.to_string()))?;
        buf.drain(..n);
        Ok(reply.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dialogue::{Dialogue, assert_warm_up, drive};

    #[test]
    fn greeting_ehlo_quit_and_never_a_login() {
        assert_warm_up::<Replies>(
            b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n221 Bye\r\n",
            b"EHLO localhost\r\nQUIT\r\n",
        );
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
