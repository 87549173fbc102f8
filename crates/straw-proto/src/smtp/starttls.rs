//! STARTTLS with the real SMTP server (RFC 3207), before the server side's
//! accelerator sees the connection: greeting, `EHLO`, `STARTTLS`, 220, then
//! the TLS handshake. The greeting is replayed in front of the TLS stream,
//! so the accelerator sees what it would see on a plain connection (and
//! sends EHLO again, as RFC 3207 requires).
//!
//! Sans-IO (see [`crate::Dialogue`] for the driver's loop):
//!
//! ```
//! use straw_proto::{Dialogue, Step, smtp};
//! let mut d = smtp::StartTls::new("[192.0.2.1]");
//! assert_eq!(d.step(&[]).unwrap(), Step::Read);
//! assert_eq!(d.step(b"220 mx ESMTP\r\n").unwrap(), Step::Send(b"EHLO [192.0.2.1]\r\n".to_vec()));
//! assert_eq!(d.step(&[]).unwrap(), Step::Read);
//! let ehlo = b"250-mx\r\n250 STARTTLS\r\n";
//! assert_eq!(d.step(ehlo).unwrap(), Step::Send(b"STARTTLS\r\n".to_vec()));
//! assert_eq!(d.step(b"220 go ahead\r\n").unwrap(), Step::StartTls);
//! // ... the TLS handshake on the same socket ...
//! assert_eq!(d.tls_established().unwrap(), Step::Done(b"220 mx ESMTP\r\n".to_vec()));
//! ```

use super::reply::{ReplyReader, code, ehlo_caps};
use crate::shared::dialogue::{
    Dialogue, DialogueError, Step, agreed, tls_in_turn, waiting_for_tls,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    StartTls,
    /// The 220 came: waiting for the driver's handshake.
    Handshake,
    Done,
}

/// The SMTP STARTTLS dialogue (see the module docs).
#[derive(Debug)]
pub struct StartTls {
    ehlo_name: String,
    state: State,
    buf: Vec<u8>,
    reader: ReplyReader,
    greeting: Vec<u8>,
}

impl StartTls {
    /// `ehlo_name`: what follows `EHLO` (the runtime uses its address
    /// literal, e.g. `[192.0.2.1]`).
    pub fn new(ehlo_name: &str) -> Self {
        Self {
            ehlo_name: ehlo_name.to_owned(),
            state: State::Greeting,
            buf: Vec::new(),
            reader: ReplyReader::default(),
            greeting: Vec::new(),
        }
    }
}

impl Dialogue for StartTls {
    fn step(&mut self, input: &[u8]) -> Result<Step, DialogueError> {
        if matches!(self.state, State::Handshake | State::Done) {
            return Err(waiting_for_tls(input));
        }
        self.buf.extend_from_slice(input);
        let (n, reply) = self
            .reader
            .feed(&self.buf)
            .map_err(|e| DialogueError::BadReply(e.to_string()))?;
        self.buf.drain(..n);
        let Some(reply) = reply else {
            return Ok(Step::Read);
        };
        let refused = |command| DialogueError::refused("SMTP", command, &reply);
        match self.state {
            State::Greeting => {
                if code(&reply) != 220 {
                    return Err(DialogueError::refused("SMTP", "greeting", &reply));
                }
                self.greeting = reply;
                self.state = State::Ehlo;
                Ok(Step::Send(
                    format!("EHLO {}\r\n", self.ehlo_name).into_bytes(),
                ))
            }
            State::Ehlo => {
                if code(&reply) != 250 {
                    return Err(refused("EHLO"));
                }
                if !ehlo_caps(&reply).iter().any(|c| c.trim() == "STARTTLS") {
                    return Err(DialogueError::StartTlsNotOffered);
                }
                self.state = State::StartTls;
                Ok(Step::Send(b"STARTTLS\r\n".to_vec()))
            }
            State::StartTls => {
                if code(&reply) != 220 {
                    return Err(refused("STARTTLS"));
                }
                let step = agreed(&self.buf)?;
                self.state = State::Handshake;
                Ok(step)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dialogue::drive;

    const GREETING: &[u8] = b"220 mx.example ESMTP\r\n";
    const EHLO: &[u8] = b"250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n";

    fn run(server: &[u8]) -> Result<Step, DialogueError> {
        drive(&mut StartTls::new("x"), server, b"", 64).1
    }

    #[test]
    fn greeting_ehlo_starttls_then_handshake_under_any_split() {
        let server = [GREETING, EHLO, b"220 2.0.0 Ready to start TLS\r\n"].concat();
        for split in 1..server.len() {
            let (sent, step) = drive(&mut StartTls::new("[127.0.0.1]"), &server, b"", split);
            assert_eq!(sent, b"EHLO [127.0.0.1]\r\nSTARTTLS\r\n", "split {split}");
            assert_eq!(step, Ok(Step::Done(GREETING.to_vec())), "split {split}");
        }
    }

    #[test]
    fn refusals_say_which_step() {
        let err = |server: &[u8]| run(server).unwrap_err().to_string();
        assert_eq!(
            err(b"554 go away\r\n"),
            "SMTP greeting refused: 554 go away"
        );
        assert_eq!(
            run(&[GREETING, b"250 mx\r\n"].concat()),
            Err(DialogueError::StartTlsNotOffered)
        );
        assert_eq!(
            err(&[GREETING, b"502 no\r\n"].concat()),
            "SMTP EHLO refused: 502 no"
        );
        assert_eq!(
            err(&[GREETING, EHLO, b"454 TLS not available\r\n"].concat()),
            "SMTP STARTTLS refused: 454 TLS not available"
        );
        assert_eq!(run(&GREETING[..10]), Err(DialogueError::Closed));
    }

    #[test]
    fn bytes_between_the_reply_and_the_handshake_are_refused() {
        let server = [GREETING, EHLO, b"220 go\r\n250 injected\r\n"].concat();
        assert_eq!(
            drive(&mut StartTls::new("x"), &server, b"", 1024).1,
            Err(DialogueError::DataBeforeHandshake)
        );
        // Arriving later, before the driver started the handshake: the same.
        let mut d = StartTls::new("x");
        for input in [GREETING, EHLO] {
            d.step(input).unwrap();
        }
        assert_eq!(d.step(b"220 go\r\n"), Ok(Step::StartTls));
        assert_eq!(
            d.step(b"250 x\r\n"),
            Err(DialogueError::DataBeforeHandshake)
        );
        assert!(matches!(d.step(&[]), Err(DialogueError::OutOfOrder(_))));
    }

    #[test]
    fn not_an_smtp_reply_fails() {
        let step = run(b"HTTP/1.1 400 Bad Request\r\n");
        assert!(matches!(step, Err(DialogueError::BadReply(_))), "{step:?}");
    }
}
