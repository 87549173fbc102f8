//! STARTTLS with the real IMAP server (RFC 3501 6.2.1), before the server
//! side's accelerator sees the connection: greeting, `S1 STARTTLS`, tagged
//! `OK`, the TLS handshake, then `S2 CAPABILITY` inside TLS. Capabilities
//! change with TLS (LOGINDISABLED goes away, say), so a `[CAPABILITY ...]`
//! code in the greeting is replaced by the post-TLS list before the greeting
//! is replayed in front of the TLS stream.
//!
//! Sans-IO (see [`crate::Dialogue`] for the driver's loop):
//!
//! ```
//! use straw_proto::{Dialogue, Step, imap};
//! let mut d = imap::StartTls::new();
//! assert_eq!(d.step(&[]).unwrap(), Step::Read);
//! let greeting = b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] hi\r\n";
//! assert_eq!(d.step(greeting).unwrap(), Step::Send(b"S1 STARTTLS\r\n".to_vec()));
//! assert_eq!(d.step(&[]).unwrap(), Step::Read);
//! assert_eq!(d.step(b"S1 OK go\r\n").unwrap(), Step::StartTls);
//! // ... the TLS handshake; from here on, reads and writes go through TLS ...
//! assert_eq!(d.tls_established().unwrap(), Step::Send(b"S2 CAPABILITY\r\n".to_vec()));
//! assert_eq!(d.step(&[]).unwrap(), Step::Read);
//! let caps = b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nS2 OK done\r\n";
//! assert_eq!(
//!     d.step(caps).unwrap(),
//!     Step::Done(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n".to_vec())
//! );
//! ```

use super::reply::{cap_code_span, caps_of};
use crate::shared::dialogue::{
    Dialogue, DialogueError, Input, Step, agreed, starts_with_ci, tls_in_turn, waiting_for_tls,
};
use crate::shared::lines::{MAX_LINE, trim_end};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Greeting,
    StartTls,
    /// The tagged OK came: waiting for the driver's handshake.
    Handshake,
    /// Inside TLS, `S2 CAPABILITY` sent.
    Capability,
    Done,
}

/// The IMAP STARTTLS dialogue (see the module docs).
#[derive(Debug, Default)]
pub struct StartTls {
    state: State,
    input: Input,
    greeting: Vec<u8>,
    /// The atoms of the post-TLS `* CAPABILITY` line.
    caps: Option<Vec<String>>,
}

impl StartTls {
    pub fn new() -> Self {
        Self::default()
    }

    /// One line from the server; a step once the reply it ends is complete.
    fn on_line(&mut self, line: Vec<u8>) -> Result<Option<Step>, DialogueError> {
        match self.state {
            State::Greeting => {
                if !starts_with_ci(&line, b"* OK") {
                    return Err(DialogueError::refused("IMAP", "greeting", &line));
                }
                self.greeting = line;
                self.state = State::StartTls;
                Ok(Some(Step::Send(b"S1 STARTTLS\r\n".to_vec())))
            }
            State::StartTls => {
                // Untagged lines before the tagged reply are passed over.
                if !line.starts_with(b"S1 ") {
                    return Ok(None);
                }
                if !starts_with_ci(&line, b"S1 OK") {
                    return Err(DialogueError::refused("IMAP", "STARTTLS", &line));
                }
                let step = agreed(&self.input.buf)?;
                self.state = State::Handshake;
                Ok(Some(step))
            }
            State::Capability => {
                if starts_with_ci(&line, b"* CAPABILITY ") {
                    self.caps = caps_of(trim_end(&line));
                    return Ok(None);
                }
                if !line.starts_with(b"S2 ") {
                    return Ok(None);
                }
                if !starts_with_ci(&line, b"S2 OK") {
                    return Err(DialogueError::refused(
                        "IMAP",
                        "CAPABILITY after STARTTLS",
                        &line,
                    ));
                }
                let caps = self.caps.take().ok_or(DialogueError::NoCapabilities)?;
                self.state = State::Done;
                let mut replay = greeting_with_caps(&self.greeting, &caps);
                // Whatever the server sent after the reply is the
                // accelerator's to read, after the greeting.
                replay.append(&mut self.input.buf);
                Ok(Some(Step::Done(replay)))
            }
            State::Handshake | State::Done => unreachable!("step refuses input here"),
        }
    }
}

impl Dialogue for StartTls {
    fn step(&mut self, input: &[u8]) -> Result<Step, DialogueError> {
        if matches!(self.state, State::Handshake | State::Done) {
            return Err(waiting_for_tls(input));
        }
        self.input.buf.extend_from_slice(input);
        while let Some(line) = self.input.line(MAX_LINE, "IMAP")? {
            if let Some(step) = self.on_line(line)? {
                self.input.reply_done();
                return Ok(step);
            }
        }
        Ok(Step::Read)
    }

    /// The TLS handshake is done: send `S2 CAPABILITY` through it, and go
    /// on with the TLS stream.
    fn tls_established(&mut self) -> Result<Step, DialogueError> {
        tls_in_turn(self.state == State::Handshake)?;
        self.state = State::Capability;
        Ok(Step::Send(b"S2 CAPABILITY\r\n".to_vec()))
    }
}

/// `greeting` with the atoms of its `[CAPABILITY ...]` code (if any)
/// replaced by `caps`.
fn greeting_with_caps(greeting: &[u8], caps: &[String]) -> Vec<u8> {
    let Some((start, end)) = cap_code_span(greeting) else {
        return greeting.to_vec();
    };
    let mut out = greeting[..start].to_vec();
    out.extend_from_slice(caps.join(" ").as_bytes());
    out.extend_from_slice(&greeting[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::dialogue::drive;

    fn run(plain: &[u8], tls: &[u8], split: usize) -> (Vec<u8>, Result<Step, DialogueError>) {
        drive(&mut StartTls::new(), plain, tls, split)
    }

    const GREETING: &[u8] =
        b"* OK [CAPABILITY IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED] Dovecot ready.\r\n";
    const CAPS: &[u8] =
        b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN\r\nS2 OK Pre-login capabilities listed.\r\n";

    #[test]
    fn greeting_gets_the_post_tls_capabilities_under_any_split() {
        let plain = [GREETING, b"S1 OK Begin TLS negotiation now.\r\n"].concat();
        for split in 1..plain.len() {
            let (sent, step) = run(&plain, CAPS, split);
            assert_eq!(sent, b"S1 STARTTLS\r\nS2 CAPABILITY\r\n", "split {split}");
            assert_eq!(
                step,
                Ok(Step::Done(
                    b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN] Dovecot ready.\r\n".to_vec()
                )),
                "split {split}"
            );
        }
    }

    #[test]
    fn a_greeting_without_a_capability_code_is_kept_and_later_bytes_follow_it() {
        let tls = [CAPS, b"* BYE early\r\n"].concat();
        let (_, step) = run(b"* OK hi\r\n* NOTE x\r\nS1 OK go\r\n", &tls, 1024);
        assert_eq!(step, Ok(Step::Done(b"* OK hi\r\n* BYE early\r\n".to_vec())));
    }

    #[test]
    fn refusals_missing_capabilities_and_early_bytes_fail() {
        let (_, step) = run(b"* PREAUTH hi\r\n", b"", 64);
        assert_eq!(
            step.unwrap_err().to_string(),
            "IMAP greeting refused: * PREAUTH hi"
        );
        let (_, step) = run(b"* OK hi\r\nS1 BAD no\r\n", b"", 64);
        assert_eq!(
            step.unwrap_err().to_string(),
            "IMAP STARTTLS refused: S1 BAD no"
        );
        let (_, step) = run(b"* OK hi\r\nS1 OK go\r\nS2 x\r\n", b"", 64);
        assert_eq!(step, Err(DialogueError::DataBeforeHandshake));
        let (_, step) = run(b"* OK hi\r\nS1 OK go\r\n", b"S2 OK none\r\n", 64);
        assert_eq!(step, Err(DialogueError::NoCapabilities));
        let (_, step) = run(b"* OK hi\r\nS1 OK go\r\n", b"S2 NO later\r\n", 64);
        assert!(
            matches!(step, Err(DialogueError::Refused { .. })),
            "{step:?}"
        );
        let many = b"* x\r\n".repeat(200);
        let (_, step) = run(&[b"* OK hi\r\n".as_slice(), &many].concat(), b"", 4096);
        assert_eq!(step, Err(DialogueError::TooManyLines { protocol: "IMAP" }));
    }
}
