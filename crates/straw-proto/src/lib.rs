//! straw-proto: sans-IO protocol accelerators.
//!
//! Each accelerator sits between a local socket and a tunnel stream and turns
//! bytes from one into bytes for the other, with hints for the session (flush,
//! priority). So far there is only the generic byte-stream pass-through.

pub mod passthrough;

/// What the session should do with the bytes an accelerator produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hints {
    /// The bytes complete a unit that needs an answer: don't cork them.
    pub flush: bool,
    /// Large transfer: schedule behind interactive traffic.
    pub bulk: bool,
}

/// One side of an accelerator pair.
pub trait Accelerator: Send {
    /// Bytes read from the local socket. `drained` says the socket had nothing
    /// more to read right now. Appends the bytes for the stream to `out`.
    fn from_local(&mut self, data: &[u8], drained: bool, out: &mut Vec<u8>) -> Hints;

    /// Bytes that arrived on the stream; appends what to write locally to `out`.
    fn from_tunnel(&mut self, data: &[u8], out: &mut Vec<u8>);
}
