//! One local connection's state inside the [`crate::Tunnel`]: its
//! accelerator and the bytes waiting for its socket, in the order the
//! accelerator made them.

use std::collections::VecDeque;

use bytes::Bytes;
use straw_proto::Accelerator;

/// What the pump writing a local socket is asked to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum LocalOut {
    /// Write these bytes, then report them with [`crate::Tunnel::local_written`].
    Data(Vec<u8>),
    /// The peer finished the stream (or the tunnel was given up): shut the
    /// socket's write side down and report [`crate::Tunnel::local_closed`].
    Close,
}

/// Peer data that arrived before the accelerator (the server dials the
/// real server while the first bytes are already on their way).
pub(crate) enum Early {
    Data(Bytes),
    Fin,
}

pub(crate) struct LocalStream {
    pub service: String,
    /// `None` while the server dials (see [`Early`]).
    pub accel: Option<Box<dyn Accelerator>>,
    pub early: VecDeque<Early>,
    /// Server: dial once the stream's first bytes name where to (HTTP).
    pub awaiting_first_data: bool,
    /// For the socket, each with the stream bytes consumed to make it: the
    /// credit goes back to the peer once written (so a program that does
    /// not read stops the peer).
    pub to_local: VecDeque<(Vec<u8>, usize)>,
    /// A [`LocalOut::Close`] follows `to_local`; later output is dropped.
    pub closing: bool,
    pub close_handed: bool,
    /// Handed to the writer, not yet reported written: (length, credit).
    pub handed: VecDeque<(usize, usize)>,
    pub written_carry: usize,
    /// The reader holds a grant ([`crate::Tunnel::poll_grant`]).
    pub grant_out: bool,
    pub reader_done: bool,
    pub writer_done: bool,
    /// straw's own cache warm-up connection: kept out of the wait counts.
    pub warm_up: bool,
    /// The stream's data goes through the bulk lane (it never goes back).
    pub bulk: bool,
}

impl LocalStream {
    pub fn new(service: String, accel: Option<Box<dyn Accelerator>>) -> Self {
        Self {
            service,
            accel,
            early: VecDeque::new(),
            awaiting_first_data: false,
            to_local: VecDeque::new(),
            closing: false,
            close_handed: false,
            handed: VecDeque::new(),
            written_carry: 0,
            grant_out: false,
            reader_done: false,
            writer_done: false,
            warm_up: false,
            bulk: false,
        }
    }

    /// Queues bytes for the socket behind everything queued before.
    pub fn queue(&mut self, bytes: Vec<u8>, consumed: usize) {
        if !self.closing && (!bytes.is_empty() || consumed > 0) {
            self.to_local.push_back((bytes, consumed));
        }
    }

    /// The next thing for the writer, remembering what it owes us.
    pub fn next_out(&mut self) -> Option<LocalOut> {
        if let Some((bytes, credit)) = self.to_local.pop_front() {
            self.handed.push_back((bytes.len(), credit));
            return Some(LocalOut::Data(bytes));
        }
        if self.closing && !self.close_handed {
            self.close_handed = true;
            return Some(LocalOut::Close);
        }
        None
    }

    /// `n` more bytes reached the socket: the credit of every chunk now
    /// fully written.
    pub fn written(&mut self, n: usize) -> usize {
        self.written_carry += n;
        let mut credit = 0;
        while let Some(&(len, c)) = self.handed.front() {
            if len > self.written_carry {
                break;
            }
            self.written_carry -= len;
            credit += c;
            self.handed.pop_front();
        }
        credit
    }
}
