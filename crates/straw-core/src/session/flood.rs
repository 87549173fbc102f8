//! Bounds on what a peer's frames that cost it no credit can make us hold.
//!
//! PING, OPEN, RESET, FIN, CREDIT, ACK and empty DATA carry no stream bytes,
//! so credit does not bound them, yet each may queue an answer or an event,
//! and all frames of a read are handled before anything is sent: 1 KB of
//! LZ4 once carried 130,560 PINGs. So: one PONG at most waits (answering the
//! newest PING), and a record may hold only so many such frames
//! ([`RecordBudget`]), refused OPENs queue only so many RESETs; beyond that
//! the peer is hostile and the session fails with [`SessionError::Flood`].
//! What a record makes us do is thus bounded by its frame budget, not by
//! how well it compresses.

use std::fmt;

use super::{Session, SessionConfig, SessionError};
use crate::wire::Frame;

/// Empty DATA frames in one record: our sender never makes one (it skips
/// empty payloads), so a few are slack for other implementations.
pub const MAX_EMPTY_DATA_PER_RECORD: usize = 16;

/// Floor of [`SessionConfig::max_free_frames_per_record`].
pub const MIN_FREE_FRAMES_PER_RECORD: usize = 4096;

/// What a peer sent too much of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodKind {
    /// Frames without stream bytes in one record.
    FreeFrames,
    /// Empty DATA frames in one record.
    EmptyData,
    /// OPENs refused (too many streams) awaiting their RESET.
    Refusals,
}

impl fmt::Display for FloodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FreeFrames => "frames without stream data in one record",
            Self::EmptyData => "empty DATA frames in one record",
            Self::Refusals => "refused OPENs awaiting their RESET",
        })
    }
}

impl SessionConfig {
    /// Frames without stream bytes one record may carry. Our sender puts in
    /// one record its ACK, a PING, a PONG, a CodecReset and all queued
    /// control frames: per stream an OPEN, a FIN, a RESET and at most two
    /// CREDITs (one per half window), i.e. under 5 × `max_streams`.
    pub fn max_free_frames_per_record(&self) -> usize {
        (8 * self.max_streams).max(MIN_FREE_FRAMES_PER_RECORD)
    }

    /// Refused OPENs whose RESET may wait to be sent. A peer with our
    /// `max_streams` never has more streams open than that, refused or not.
    pub fn max_queued_refusals(&self) -> usize {
        (2 * self.max_streams).max(256)
    }
}

/// Counts one received record's frames that carry no stream bytes.
#[derive(Debug, Default)]
pub(super) struct RecordBudget {
    free: usize,
    empty_data: usize,
}

impl RecordBudget {
    pub(super) fn charge(
        &mut self,
        cfg: &SessionConfig,
        frame: &Frame,
    ) -> Result<(), SessionError> {
        match frame {
            Frame::Data { payload, .. } if !payload.is_empty() => return Ok(()),
            Frame::Data { .. } => {
                self.empty_data += 1;
                if self.empty_data > MAX_EMPTY_DATA_PER_RECORD {
                    return Err(flood(FloodKind::EmptyData, MAX_EMPTY_DATA_PER_RECORD));
                }
            }
            _ => {}
        }
        self.free += 1;
        let limit = cfg.max_free_frames_per_record();
        if self.free > limit {
            return Err(flood(FloodKind::FreeFrames, limit));
        }
        Ok(())
    }
}

fn flood(what: FloodKind, limit: usize) -> SessionError {
    SessionError::Flood { what, limit }
}

impl Session {
    /// Answers a PING. Only the newest PONG waits: an older one would
    /// measure a stale RTT, and a queue of them is unbounded.
    pub(super) fn queue_pong(&mut self, stamp: u64) {
        match self.pong_slot {
            Some(i) => self.control[i] = Frame::Pong { stamp },
            None => {
                self.pong_slot = Some(self.control.len());
                self.control.push_back(Frame::Pong { stamp });
            }
        }
        self.urgent_control = true;
        self.flush_requested = true;
    }

    /// Refuses a peer's OPEN (too many streams).
    pub(super) fn queue_refusal(&mut self, stream: u64, code: u64) -> Result<(), SessionError> {
        let limit = self.cfg.max_queued_refusals();
        if self.refusals_queued >= limit {
            return Err(flood(FloodKind::Refusals, limit));
        }
        self.refusals_queued += 1;
        self.control.push_back(Frame::Reset { stream, code });
        self.urgent_control = true;
        Ok(())
    }

    /// Moves every queued control frame into `buf` (a record being built).
    pub(super) fn drain_control(&mut self, buf: &mut Vec<u8>) {
        while let Some(f) = self.control.pop_front() {
            f.encode(buf);
        }
        self.urgent_control = false;
        self.pong_slot = None;
        self.refusals_queued = 0;
    }
}
