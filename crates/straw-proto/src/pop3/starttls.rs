//! STLS with the real POP3 server (RFC 2595), before the server side's
//! accelerator sees the connection: greeting, `STLS`, `+OK`, then the TLS
//! handshake. The greeting is replayed in front of the TLS stream, so the
//! accelerator sees what it would see on a plain connection.
//!
//! Sans-IO (see [`crate::Dialogue`] for the driver's loop):
//!
//! ```
//! use straw_proto::{Dialogue, Step, pop3};
//! let mut d = pop3::StartTls::new();
//! assert_eq!(d.step(&[]).unwrap(), Step::Read);
//! assert_eq!(d.step(b"+OK ready\r\n").unwrap(), Step::Send(b"STLS\r\n".to_vec()));
//! assert_eq!(d.step(&[]).unwrap(), Step::Read);
//! assert_eq!(d.step(b"+OK begin TLS\r\n").unwrap(), Step::StartTls);
//! // ... the TLS handshake on the same socket ...
//! assert_eq!(d.tls_established().unwrap(), Step::Done(b"+OK ready\r\n".to_vec()));
//! ```

use super::reply::ReplyReader;
use crate::shared::dialogue::{
    Dialogue, DialogueError, Step, agreed, tls_in_turn, waiting_for_tls,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Greeting,
    Stls,
    /// The `+OK` came: waiting for the driver's handshake.
    Handshake,
    Done,
}

/// The POP3 STLS dialogue (see the module docs).
#[derive(Debug, Default)]
pub struct StartTls {
    state: State,
    buf: Vec<u8>,
    reader: ReplyReader,
    greeting: Vec<u8>,
}

impl StartTls {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Dialogue for StartTls {
    fn step(&mut self, input: &[u8]) -> Result<Step, DialogueError> {
        if matches!(self.state, State::Handshake | State::Done) {
            return Err(waiting_for_tls(input));
        }
        self.buf.extend_from_slice(input);
        let Some(reply) = read_status_line(&mut self.reader, &mut self.buf)? else {
            return Ok(Step::Read);
        };
        let ok = reply.starts_with(b"+OK");
        match self.state {
            State::Greeting if ok => {
                self.greeting = reply;
                self.state = State::Stls;
                Ok(Step::Send(b"STLS\r\n".to_vec()))
            }
            State::Greeting => Err(DialogueError::refused("POP3", "greeting", &reply)),
            State::Stls if ok => {
                let step = agreed(&self.buf)?;
                self.state = State::Handshake;
                Ok(step)
            }
            State::Stls => Err(DialogueError::refused("POP3", "STLS", &reply)),
            State::Handshake | State::Done => unreachable!("handled above"),
        }
    }

    /// The greeting to replay in front of the TLS stream.
    fn tls_established(&mut self) -> Result<Step, DialogueError> {
        tls_in_turn(self.state == State::Handshake)?;
        self.state = State::Done;
        Ok(Step::Done(std::mem::take(&mut self.greeting)))
    }
}

/// One single-line reply (status line) off the front of `buf`, read with
/// the accelerators' own reply reader.
pub(crate) fn read_status_line(
    reader: &mut ReplyReader,
    buf: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, DialogueError> {
    let mut line = Vec::new();
    let (n, done) = reader
        .feed(buf, false, &mut line)
        .map_err(|e| DialogueError::BadReply(e.to_string()))?;
    buf.drain(..n);
    Ok(done.then_some(line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dialogue::drive;

    #[test]
    fn greeting_stls_then_handshake_under_any_split() {
        let server = b"+OK Dovecot ready.\r\n+OK Begin TLS negotiation now.\r\n";
        for split in 1..server.len() {
            let (sent, step) = drive(&mut StartTls::new(), server, b"", split);
            assert_eq!(sent, b"STLS\r\n");
            assert_eq!(step, Ok(Step::Done(b"+OK Dovecot ready.\r\n".to_vec())));
        }
    }

    #[test]
    fn refusals_and_early_bytes_fail() {
        let run = |server: &[u8]| drive(&mut StartTls::new(), server, b"", 64).1;
        assert_eq!(
            run(b"-ERR go away\r\n").unwrap_err().to_string(),
            "POP3 greeting refused: -ERR go away"
        );
        assert_eq!(
            run(b"+OK hi\r\n-ERR no TLS\r\n").unwrap_err().to_string(),
            "POP3 STLS refused: -ERR no TLS"
        );
        assert_eq!(
            run(b"+OK hi\r\n+OK go\r\n+OK injected\r\n"),
            Err(DialogueError::DataBeforeHandshake)
        );
        let mut d = StartTls::new();
        d.step(b"+OK hi\r\n").unwrap();
        assert_eq!(d.step(b"+OK go\r\n"), Ok(Step::StartTls));
        assert_eq!(d.step(b"+"), Err(DialogueError::DataBeforeHandshake));
        assert!(matches!(
            run(b"* OK imap\r\n"),
            Err(DialogueError::BadReply(_))
        ));
    }
}
