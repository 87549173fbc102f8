//! The local side: the driver opens streams, queues the bytes its sockets
//! read (as much as [`Session::send_capacity`] allows: backpressure), and
//! reports what it delivered (credit for the peer).

use bytes::Bytes;

use super::stream::Stream;
use super::{Event, Priority, Session, SessionError};
use crate::wire::{Frame, OpenFrame};

/// Headroom for frame headers and codec overhead added when pending raw bytes
/// become a record, so that `held` stays under `held_bound`.
const FRAMING_RESERVE: u64 = 64;

impl Session {
    /// Opens a stream to `service` on the peer.
    pub fn open_stream(
        &mut self,
        service: &[u8],
        meta: &[u8],
        priority: Priority,
    ) -> Result<u64, SessionError> {
        if self.streams.len() >= self.cfg.max_streams {
            return Err(SessionError::TooManyStreams(self.streams.len()));
        }
        let id = self.next_local_stream;
        self.next_local_stream += 2;
        let mut stream = Stream::new(
            priority,
            self.cfg.stream_window,
            self.cfg.peer_stream_window,
            self.transforms(service),
        );
        stream.class = super::accounting::class_of(&self.cfg.accounting_services, service);
        self.streams.insert(id, stream);
        self.control.push_back(Frame::Open(OpenFrame {
            stream: id,
            service: Bytes::copy_from_slice(service),
            meta: Bytes::copy_from_slice(meta),
        }));
        Ok(id)
    }

    pub(super) fn transforms(&self, service: &[u8]) -> bool {
        self.cfg.transform_services.iter().any(|s| s == service)
    }

    /// How many bytes the driver should read from the local socket of `stream`
    /// now. Zero means: stop reading, let backpressure reach the program.
    pub fn send_capacity(&self, stream: u64) -> usize {
        let Some(s) = self.streams.get(&stream) else {
            return 0;
        };
        if s.fin_queued || s.reset {
            return 0;
        }
        // A reply has a lane of its own: bulk bytes not on the link yet (a
        // unit the codec threads may take a while to compress) don't hold it
        // back. Interactive bytes still keep to the bound among themselves.
        let held = match s.priority {
            Priority::Interactive => self.held_ahead_of_interactive(),
            Priority::Bulk => self.held(),
        };
        // Framing and codec bytes grow a batch a little when it becomes a record.
        let room = self.held_bound().saturating_sub(held + FRAMING_RESERVE);
        room.min(s.credit_room()) as usize
    }

    /// Queues local bytes on `stream`. Always accepted; the driver keeps to
    /// [`Session::send_capacity`] so that this stays bounded.
    pub fn send(&mut self, stream: u64, data: &[u8]) -> Result<(), SessionError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(SessionError::UnknownStream(stream))?;
        if s.reset || s.fin_queued || data.is_empty() {
            return Ok(());
        }
        s.pending.extend_from_slice(data);
        s.tx_stale = false;
        self.pending_raw += data.len() as u64;
        self.note_held();
        Ok(())
    }

    /// The bytes queued so far form a unit that needs an answer: send them
    /// without waiting for the cork timer.
    pub fn flush(&mut self, stream: u64) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.flush = true;
            self.flush_requested = true;
        }
    }

    pub fn set_priority(&mut self, stream: u64, priority: Priority) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.priority = priority;
        }
    }

    /// Local end of input on `stream`: FIN follows the queued bytes.
    pub fn finish(&mut self, stream: u64) {
        if let Some(s) = self.streams.get_mut(&stream)
            && !s.fin_queued
            && !s.reset
        {
            s.fin_queued = true;
            s.flush = true;
            self.flush_requested = true;
        }
    }

    /// Aborts `stream` in both directions.
    pub fn reset(&mut self, stream: u64, code: u64) {
        if let Some(s) = self.streams.remove(&stream) {
            self.pending_raw -= s.pending.len() as u64;
            self.transform_held -= s.tx_held_lines() as u64;
            self.control.push_back(Frame::Reset { stream, code });
            self.urgent_control = true;
        }
    }

    /// The driver delivered `n` received bytes of `stream` to the local socket.
    /// Grants the peer more credit once half the window is used (not while
    /// [`Session::set_credit_hold`] holds it back).
    pub fn consumed(&mut self, stream: u64, n: usize) {
        if let Some(s) = self.streams.get_mut(&stream) {
            if let Some(limit) = s.consume(n as u64, self.cfg.stream_window, !self.credit_hold) {
                self.control.push_back(Frame::Credit { stream, limit });
                self.urgent_control = true;
            }
            self.maybe_forget(stream);
        }
    }

    /// Memory is short (`true`): grant no more credit and refuse the peer's
    /// new streams, so that what the peer can make this side hold stops
    /// growing. Lifting it grants what was held back.
    pub fn set_credit_hold(&mut self, hold: bool) {
        if std::mem::replace(&mut self.credit_hold, hold) == hold || hold {
            return;
        }
        let window = self.cfg.stream_window;
        for (&stream, s) in self.streams.iter_mut() {
            if let Some(limit) = s.consume(0, window, true) {
                self.control.push_back(Frame::Credit { stream, limit });
                self.urgent_control = true;
            }
        }
    }

    pub fn credit_held(&self) -> bool {
        self.credit_hold
    }

    /// Receive credit granted and not yet used up by delivered bytes, over
    /// all streams: the most stream data the peer can make this side hold.
    pub fn recv_granted(&self) -> u64 {
        self.streams
            .values()
            .map(|s| s.recv_limit - s.recv_consumed)
            .sum()
    }

    /// One more stream's full window fits in [`SessionConfig::recv_budget`]
    /// (and memory is not short).
    pub(super) fn window_fits(&self) -> bool {
        let windows = (self.streams.len() as u64 + 1).saturating_mul(self.cfg.stream_window);
        !self.credit_hold && windows <= self.cfg.recv_budget
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(super) fn maybe_forget(&mut self, stream: u64) {
        if self.streams.get(&stream).is_some_and(|s| s.finished()) {
            self.streams.remove(&stream);
        }
    }
}
