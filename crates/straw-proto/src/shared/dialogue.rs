//! The shape of the runtime's own short dialogues: STARTTLS with a real
//! server (`*/starttls.rs`), and the cache warm-up against a client
//! accelerator (`*/warm_up.rs`).
//!
//! Each is a small state machine that never touches a socket (as in
//! quinn-proto): the driver hands it the bytes it read and does what the
//! returned [`Step`] says, so every rule is tested without a socket. Every
//! machine is a [`Dialogue`], so one driver serves all six. A sketch of the
//! runtime's (tokio) driver for STARTTLS, which swaps the socket for the TLS
//! stream half-way; a warm-up is the same loop without the `StartTls` arm,
//! and after `Done` it reads until the accelerator closes:
//!
//! ```text
//! async fn starttls(sock: TcpStream, mut d: impl Dialogue, tls: TlsConnector)
//!     -> Result<(TlsStream, Vec<u8>)>
//! {
//!     let mut io = Either::Plain(sock);
//!     let mut buf = [0u8; 1024];
//!     let mut step = d.step(&[])?;                 // nothing read yet
//!     loop {
//!         step = match step {
//!             Step::Send(bytes) => { io.write_all(&bytes).await?; d.step(&[])? }
//!             Step::Read => match io.read(&mut buf).await? {
//!                 0 => d.closed()?,                // Err(DialogueError::Closed)
//!                 n => d.step(&buf[..n])?,
//!             },
//!             Step::StartTls => {                  // read nothing before this
//!                 io = Either::Tls(tls.connect(name, io.into_plain()).await?);
//!                 d.tls_established()?             // IMAP: sends S2 CAPABILITY
//!             }
//!             // `replay`: what the accelerator must read first (the
//!             // greeting, IMAP's with the post-TLS capabilities).
//!             Step::Done(replay) => return Ok((io.into_tls(), replay)),
//!         }
//!     }
//! }
//! // smtp::StartTls::new(&ehlo_name), pop3::StartTls::new(), imap::StartTls::new()
//! // smtp::WarmUp::new(), pop3::WarmUp::new(), imap::WarmUp::new()
//! ```
//!
//! `step(&[])` after a `Send` matters: what was read with the last reply
//! may already hold the next one, and the machine answers it without
//! waiting for the socket. A [`DialogueError`] ends the dialogue; its
//! `Display` says what happened in the words the runtime logs today.

use crate::shared::lines::{LineTooLong, take_line_max, trim_end};

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes, then call `step(&[])`.
    Send(Vec<u8>),
    /// Read, and call `step` with what came (the reply is not complete).
    Read,
    /// STARTTLS only: the server agreed and sent nothing after its reply.
    /// Start the TLS handshake on the socket now (reading nothing before
    /// it), then call the machine's `tls_established()` and go on with the
    /// TLS stream.
    StartTls,
    /// The dialogue is over. STARTTLS: put these bytes in front of the TLS
    /// stream for the accelerator (the greeting it would have seen on a
    /// plain connection, and anything the server sent after the last reply).
    /// Warm-up: nothing is left to send; read and drop until the other end
    /// closes (the accelerator sees the goodbye through).
    Done(Vec<u8>),
}

/// Why a dialogue stopped. The connection is given up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogueError {
    /// A command of the dialogue was refused, or (`command` "greeting")
    /// the greeting is not one that allows going on.
    #[error("{protocol} {command} refused: {reply}")]
    Refused {
        protocol: &'static str,
        command: &'static str,
        reply: String,
    },
    /// The EHLO reply does not list STARTTLS.
    #[error("SMTP server does not offer STARTTLS")]
    StartTlsNotOffered,
    /// Bytes came after the STARTTLS reply, before the handshake: a man in
    /// the middle could have put them there, so they are never taken as
    /// replies from inside TLS.
    #[error("server sent data after its STARTTLS reply; refusing the connection")]
    DataBeforeHandshake,
    /// The post-TLS `CAPABILITY` ended with no `* CAPABILITY` line.
    #[error("IMAP CAPABILITY after STARTTLS: no capabilities")]
    NoCapabilities,
    /// More lines than any reply of these dialogues has.
    #[error("{protocol} reply too long")]
    TooManyLines { protocol: &'static str },
    #[error("server sent a line longer than {} bytes", .0.limit)]
    LineTooLong(#[from] LineTooLong),
    /// Bytes that are not a reply of the protocol.
    #[error("{0}")]
    BadReply(String),
    /// The other end closed in the middle of the dialogue.
    #[error("closed before the reply ended")]
    Closed,
    /// The driver called a method the machine was not waiting for.
    #[error("dialogue driven out of order: {0}")]
    OutOfOrder(&'static str),
}

/// One of the runtime's short dialogues, driven as the module docs show.
pub trait Dialogue {
    /// Takes what was read (`&[]` at the start and after a [`Step::Send`])
    /// and says what to do next.
    fn step(&mut self, input: &[u8]) -> Result<Step, DialogueError>;

    /// The TLS handshake asked for with [`Step::StartTls`] is done; what
    /// follows goes through TLS. Only STARTTLS dialogues ask for one.
    fn tls_established(&mut self) -> Result<Step, DialogueError> {
        Err(DialogueError::OutOfOrder(
            "TLS in a dialogue without STARTTLS",
        ))
    }

    /// The other end closed the connection: [`Step::Done`] if the dialogue
    /// had nothing more to say, else why not.
    fn closed(&mut self) -> Result<Step, DialogueError> {
        Err(DialogueError::Closed)
    }
}

/// What `step` says once the server agreed to STARTTLS and before the
/// handshake: nothing may be read then (`input` came anyway), or the driver
/// called it out of turn.
pub(crate) fn waiting_for_tls(input: &[u8]) -> DialogueError {
    if input.is_empty() {
        DialogueError::OutOfOrder("step while the dialogue waits for TLS")
    } else {
        DialogueError::DataBeforeHandshake
    }
}

/// `tls_established` is in turn only while the dialogue waits for the
/// handshake, after the server agreed to STARTTLS (or STLS).
pub(crate) fn tls_in_turn(waiting: bool) -> Result<(), DialogueError> {
    if waiting {
        Ok(())
    } else {
        Err(DialogueError::OutOfOrder(
            "TLS before the server agreed to it",
        ))
    }
}

/// The server agreed to STARTTLS: the handshake may start if nothing came
/// after its reply (`rest`).
pub(crate) fn agreed(rest: &[u8]) -> Result<Step, DialogueError> {
    if rest.is_empty() {
        Ok(Step::StartTls)
    } else {
        Err(DialogueError::DataBeforeHandshake)
    }
}

impl DialogueError {
    /// `command` (or "greeting") refused with `reply`.
    pub(crate) fn refused(protocol: &'static str, command: &'static str, reply: &[u8]) -> Self {
        DialogueError::Refused {
            protocol,
            command,
            reply: show(reply),
        }
    }
}

/// Most lines one reply may have (multi-line EHLO, untagged IMAP lines).
pub(crate) const MAX_LINES: usize = 100;

/// `line` begins with `prefix`, ignoring ASCII case.
pub(crate) fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A line as text for an error message, without its line end.
fn show(line: &[u8]) -> String {
    String::from_utf8_lossy(trim_end(line)).into_owned()
}

/// What was read and not yet taken as a line, and how many lines the
/// current reply has had.
#[derive(Debug, Default)]
pub(crate) struct Input {
    pub(crate) buf: Vec<u8>,
    lines: usize,
}

impl Input {
    /// The next complete line, counted against [`MAX_LINES`] until
    /// [`Self::reply_done`].
    pub(crate) fn line(
        &mut self,
        max_line: usize,
        protocol: &'static str,
    ) -> Result<Option<Vec<u8>>, DialogueError> {
        let Some(line) = take_line_max(&mut self.buf, max_line)? else {
            return Ok(None);
        };
        self.lines += 1;
        if self.lines > MAX_LINES {
            return Err(DialogueError::TooManyLines { protocol });
        }
        Ok(Some(line))
    }

    /// The reply ended: the next one starts its own line count.
    pub(crate) fn reply_done(&mut self) {
        self.lines = 0;
    }
}

/// What tells a warm-up's replies apart, per protocol (see [`Scripted`]).
pub trait Script: std::fmt::Debug + Default {
    /// The commands, one after each reply (the greeting first); the last
    /// ends the dialogue.
    const COMMANDS: &'static [&'static [u8]];

    /// Takes what it can of the reply before `COMMANDS[n]` from the front of
    /// `buf`: true once that reply is complete.
    fn reply_done(&mut self, buf: &mut Vec<u8>, n: usize) -> Result<bool, DialogueError>;
}

/// A cache warm-up: straw plays a mail program against the client
/// accelerator, reading each reply whatever it says (the accelerator caches
/// what it saw either way) and sending the script's next command; never a
/// login. After the last command it is [`Step::Done`]: the driver reads
/// until the accelerator closes.
#[derive(Debug, Default)]
pub struct Scripted<S> {
    script: S,
    buf: Vec<u8>,
    /// Commands sent so far.
    sent: usize,
}

impl<S: Script> Scripted<S> {
    pub fn new() -> Self {
        Self::default()
    }

    fn over(&self) -> bool {
        self.sent == S::COMMANDS.len()
    }
}

impl<S: Script> Dialogue for Scripted<S> {
    fn step(&mut self, input: &[u8]) -> Result<Step, DialogueError> {
        if self.over() {
            return Ok(Step::Done(Vec::new()));
        }
        self.buf.extend_from_slice(input);
        if !self.script.reply_done(&mut self.buf, self.sent)? {
            return Ok(Step::Read);
        }
        self.sent += 1;
        Ok(Step::Send(S::COMMANDS[self.sent - 1].to_vec()))
    }

    /// Fine once the last command is sent, early before.
    fn closed(&mut self) -> Result<Step, DialogueError> {
        match self.over() {
            true => Ok(Step::Done(Vec::new())),
            false => Err(DialogueError::Closed),
        }
    }
}

/// Drives `d` as the runtime would: `plain` is what the other end sends
/// before the handshake and `tls` after it, read in pieces of `split`.
/// Returns what `d` sent and the step it stopped at (done or failed).
#[cfg(test)]
pub(crate) fn drive(
    d: &mut impl Dialogue,
    plain: &[u8],
    tls: &[u8],
    split: usize,
) -> (Vec<u8>, Result<Step, DialogueError>) {
    let mut sent = Vec::new();
    let mut pieces = plain.chunks(split.max(1));
    let mut step = d.step(&[]);
    loop {
        step = match step {
            Ok(Step::Send(b)) => {
                sent.extend_from_slice(&b);
                d.step(&[])
            }
            Ok(Step::Read) => match pieces.next() {
                Some(p) => d.step(p),
                None => d.closed(),
            },
            Ok(Step::StartTls) => {
                pieces = tls.chunks(split.max(1));
                d.tls_established()
            }
            done_or_failed => return (sent, done_or_failed),
        }
    }
}

/// A warm-up reading `replies` (split anywhere) sends `want`, ends, and
/// takes the close after it as the normal end.
#[cfg(test)]
pub(crate) fn assert_warm_up<S: Script>(replies: &[u8], want: &[u8]) {
    for split in 1..replies.len() {
        let mut w = Scripted::<S>::new();
        let (sent, step) = drive(&mut w, replies, b"", split);
        assert_eq!(sent, want, "split {split}");
        assert_eq!(step, Ok(Step::Done(Vec::new())), "split {split}");
        assert_eq!(w.closed(), Ok(Step::Done(Vec::new())));
    }
}
