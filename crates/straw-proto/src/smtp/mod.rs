//! SMTP accelerator pair.
//!
//! The stream carries plain SMTP: commands and message bodies one way, every
//! real reply the other, in order. The client side answers what commits
//! nothing — the cached greeting and EHLO reply, `MAIL FROM`, `DATA`'s 354
//! once a recipient was accepted, and `QUIT` once every message is
//! confirmed — and checks each against the real reply when it arrives. RCPT,
//! end-of-data and AUTH results are always the real server's.
//!
//! One private line crosses the stream: [`SYNTH_DATA`] stands for a `DATA`
//! whose 354 the program already has, so its body follows at once. The
//! server side sends `DATA`; if the real server refuses it, the server side
//! swallows the body and the client shows the refusal as the end-of-data
//! reply. A failed `MAIL` shows as the reply to each `RCPT` after it.
//!
//! The server side runs the real dialogue in lockstep. A reply whose next
//! command is already there (the client side sent both without waiting, so
//! it answered this one itself or the program pipelines) is held until that
//! command's reply, up to 4 KiB: a warm session's greeting, EHLO, MAIL and
//! RCPT replies cross in one record and one IP packet, not four. An
//! end-of-data reply is never held: it commits a message.
//!
//! The files follow the layers: [`reply`] reads SMTP replies, [`client`] is
//! the program's side, [`server`] the real server's side, and [`resume`]
//! message resume. [`StartTls`] and [`WarmUp`] are the runtime's own short
//! dialogues (STARTTLS upstream, and the cache warm-up), bytes in and out.

pub mod client;
pub mod reply;
pub mod resume;
pub mod server;
pub mod starttls;
#[cfg(test)]
mod tests;
pub mod warm_up;

pub use client::ClientAccel;
pub use server::ServerAccel;
pub use starttls::StartTls;
pub use warm_up::WarmUp;

pub const GREETING_KEY: &str = "smtp.greeting";
/// The real EHLO reply, as the server sent it.
pub const EHLO_KEY: &str = "smtp.ehlo";

/// Stream-only stand-in for a DATA answered locally (see module docs).
pub const SYNTH_DATA: &[u8] = b"XSTRAW-DATA\r\n";

pub(crate) const MAIL_OK: &[u8] = b"250 2.1.0 Ok\r\n";
pub(crate) const DATA_GO: &[u8] = b"354 End data with <CR><LF>.<CR><LF>\r\n";
pub(crate) const BYE: &[u8] = b"221 2.0.0 Bye\r\n";
/// The program's next reply when the tunnel is gone for good: a 4xx, so a
/// message whose end-of-data was not confirmed is retried, never lost.
pub const LINK_LOST: &[u8] = b"421 4.4.2 straw: link to server lost, try again later\r\n";
/// Bodies past this are scheduled as bulk.
pub(crate) const BULK_AFTER: usize = 16 * 1024;
