//! The shape of the runtime's own short dialogues: STARTTLS with a real
//! server, and the cache warm-up against a client accelerator.
//!
//! Each is a small state machine that never touches a socket (as in
//! quinn-proto): the driver hands it the bytes it read and does what the
//! returned [`Step`] says. A machine answers one reply with one command, so
//! a step is never more than one write.

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes, then read and hand over what comes.
    Send(Vec<u8>),
    /// Read more and hand it over (the reply is not complete yet).
    Read,
    /// STARTTLS only: the server agreed and sent nothing after its reply.
    /// Start the TLS handshake on the socket now, then call the machine's
    /// `tls_established()`. Read nothing before the handshake.
    StartTls,
    /// The dialogue is over. For STARTTLS: put these bytes in front of the
    /// TLS stream for the accelerator (the greeting it would have seen on a
    /// plain connection, and anything the server sent after the last reply).
    /// For a warm-up: nothing more is sent; read until the other end closes.
    Done(Vec<u8>),
}

/// `line` begins with `prefix`, ignoring ASCII case.
#[allow(dead_code)] // used by the dialogues that follow
pub(crate) fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A line as text for an error message, without its line end.
#[allow(dead_code)]
pub(crate) fn show(line: &[u8]) -> String {
    String::from_utf8_lossy(crate::shared::lines::trim_end(line)).into_owned()
}
