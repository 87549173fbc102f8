//! The one tokio driver of straw-proto's short dialogues ([`Dialogue`]):
//! STARTTLS with a real server (`upstream.rs`) and the cache warm-up against
//! a client accelerator (`cache.rs`). The machines hold every rule; this only
//! moves bytes between them and a stream.

use std::io;

use straw_proto::{Dialogue, DialogueError, Step};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where [`drive`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The machine asked for the TLS handshake: nothing was read after the
    /// reply that agreed to it. Do the handshake, then drive again on the TLS
    /// stream from `tls_established()`.
    StartTls,
    /// The dialogue is over; what the machine hands on (see [`Step::Done`]).
    Done(Vec<u8>),
}

/// Why a dialogue could not go on.
#[derive(Debug)]
pub enum DriveError {
    Read(io::Error),
    Write(io::Error),
    /// The machine gave up (its words say why).
    Dialogue(DialogueError),
}

impl std::fmt::Display for DriveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriveError::Read(e) => write!(f, "reading: {e}"),
            DriveError::Write(e) => write!(f, "writing: {e}"),
            DriveError::Dialogue(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DriveError {}

impl From<DialogueError> for DriveError {
    fn from(e: DialogueError) -> Self {
        DriveError::Dialogue(e)
    }
}

/// Runs `d` on `io` from `step` (the first is `d.step(&[])`, or what
/// `tls_established()` returned) until it asks for TLS or is done.
pub async fn drive<D, S>(d: &mut D, io: &mut S, mut step: Step) -> Result<Stop, DriveError>
where
    D: Dialogue + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut buf = [0u8; 1024];
    loop {
        step = match step {
            Step::Send(bytes) => {
                io.write_all(&bytes).await.map_err(DriveError::Write)?;
                io.flush().await.map_err(DriveError::Write)?;
                d.step(&[])?
            }
            Step::Read => match io.read(&mut buf).await.map_err(DriveError::Read)? {
                0 => d.closed()?,
                n => d.step(&buf[..n])?,
            },
            Step::StartTls => return Ok(Stop::StartTls),
            Step::Done(handed_on) => return Ok(Stop::Done(handed_on)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use straw_proto::{imap, pop3, smtp};

    /// A warm-up against a scripted accelerator: what it sent, and where it
    /// stopped.
    async fn warm_up(mut d: impl Dialogue, replies: &[u8]) -> (Vec<u8>, Result<Stop, String>) {
        let (mut ours, mut theirs) = tokio::io::duplex(4096);
        theirs.write_all(replies).await.unwrap();
        drop(theirs.shutdown().await);
        let first = d.step(&[]).unwrap();
        let stop = drive(&mut d, &mut ours, first)
            .await
            .map_err(|e| e.to_string());
        drop(ours);
        let mut sent = Vec::new();
        theirs.read_to_end(&mut sent).await.unwrap();
        (sent, stop)
    }

    #[tokio::test]
    async fn warm_ups_send_their_script_and_end() {
        let (sent, stop) = warm_up(pop3::WarmUp::new(), b"+OK hi\r\n+OK bye\r\n").await;
        assert_eq!(sent, b"QUIT\r\n");
        assert_eq!(stop, Ok(Stop::Done(Vec::new())));
        let replies = b"* OK hi\r\n* CAPABILITY IMAP4rev1\r\nW1 OK\r\n* BYE\r\nW2 OK\r\n";
        let (sent, stop) = warm_up(imap::WarmUp::new(), replies).await;
        assert_eq!(sent, b"W1 CAPABILITY\r\nW2 LOGOUT\r\n");
        assert_eq!(stop, Ok(Stop::Done(Vec::new())));
        let replies = b"220 mx\r\n250-mx\r\n250 SIZE 10\r\n221 bye\r\n";
        let (sent, stop) = warm_up(smtp::WarmUp::new(), replies).await;
        assert!(sent.starts_with(b"EHLO "), "{sent:?}");
        assert!(sent.ends_with(b"QUIT\r\n"), "{sent:?}");
        assert_eq!(stop, Ok(Stop::Done(Vec::new())));
    }

    #[tokio::test]
    async fn a_close_mid_reply_is_an_error() {
        let (_, stop) = warm_up(imap::WarmUp::new(), b"* OK hi\r\n* CAPA").await;
        assert_eq!(stop, Err("closed before the reply ended".to_owned()));
    }

    #[tokio::test]
    async fn starttls_stops_for_the_handshake() {
        let (_, stop) = warm_up(pop3::StartTls::new(), b"+OK hi\r\n+OK go\r\n").await;
        assert_eq!(stop, Ok(Stop::StartTls));
    }
}
