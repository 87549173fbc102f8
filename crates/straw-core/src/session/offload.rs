//! Bulk units compressed elsewhere: with `set_bulk_offload`, `poll_transmit`
//! does not run the strong codec itself. It hands a unit to the driver as a
//! [`BulkJob`] (the bulk context goes with it) and goes on sending
//! interactive records; the unit's slices follow once the job comes back.
//! A server runs the jobs on its codec threads, so that no tunnel's reply
//! waits while another tunnel's unit is compressed.

use std::time::Instant;

use bytes::Bytes;

use super::Session;
use super::accounting::{self, ClassBytes};
use crate::codec::{BulkJob, BulkOutcome, CodecId};

/// A unit out with its job: what its accounting needs when it is back.
pub(super) struct PendingUnit {
    /// Raw stream bytes the unit holds (before framing).
    raw: usize,
    /// Bytes of its frames (held ahead of the link meanwhile).
    frames: usize,
    /// Its stream bytes by class.
    class_raw: ClassBytes,
}

impl Session {
    /// Bulk units go out as jobs ([`Session::poll_bulk_job`]) rather than
    /// being compressed inside [`Session::poll_transmit`].
    pub fn set_bulk_offload(&mut self, on: bool) {
        self.bulk_offload = on;
    }

    /// A bulk unit to compress: run [`BulkJob::run`] anywhere, then give it
    /// back with [`Session::bulk_job_done`]. Check after `poll_transmit`.
    pub fn poll_bulk_job(&mut self) -> Option<BulkJob> {
        self.bulk_job.take()
    }

    /// A job from [`Session::poll_bulk_job`] is back (run or not): its unit
    /// is cut into records by the next `poll_transmit` calls.
    pub fn bulk_job_done(&mut self, job: BulkJob) {
        let outcome = self.encoder.bulk_job_done(job);
        let Some(p) = self.bulk_pending.take() else {
            debug_assert!(false, "a bulk job came back that was not out");
            return;
        };
        if let Some(wire) = self.bulk_unit_outcome(p.raw, p.class_raw, outcome) {
            self.bulk_stored = Some(wire);
        }
    }

    /// A bulk unit is out with a job (its streams' later bytes wait).
    pub fn bulk_job_pending(&self) -> bool {
        self.bulk_pending.is_some() || self.bulk_job.is_some()
    }

    /// Raw bytes of frames out with a job or back as a stored record.
    pub(super) fn bulk_frames_out(&self) -> u64 {
        (self.bulk_pending.as_ref().map_or(0, |p| p.frames)
            + self.bulk_stored.as_ref().map_or(0, Vec::len)) as u64
    }

    /// A new unit begins: no streams in it, nothing in it dead.
    pub(super) fn clear_bulk_unit(&mut self) {
        self.bulk_unit.clear();
        self.bulk_dead_since = None;
    }

    /// Compressed bytes are left and every stream with frames in them was
    /// reset by the peer (a reset takes its stream out of the unit).
    pub(super) fn bulk_unit_dead(&self) -> bool {
        self.bulk_unit.is_empty() && !self.bulk_out.is_empty()
    }

    /// Whether the bulk lane waits on a job or has a stored unit to send:
    /// no codec reset may fall before it.
    pub(super) fn bulk_unit_unsent(&self) -> bool {
        !self.bulk_out.is_empty() || self.bulk_pending.is_some() || self.bulk_stored.is_some()
    }

    /// Compresses a new unit's `frames` here, or lends them out as a job.
    /// Returns a record to send now (a unit that had to go stored).
    pub(super) fn compress_unit(
        &mut self,
        now: Instant,
        frames: Vec<u8>,
        cut: usize,
        raw: usize,
    ) -> Option<Bytes> {
        let class_raw = std::mem::take(&mut self.tx_class_raw);
        let outcome = if self.bulk_offload {
            let len = frames.len();
            match self.encoder.bulk_job(frames, cut) {
                Ok(job) => {
                    self.bulk_job = Some(job);
                    self.bulk_pending = Some(PendingUnit {
                        raw,
                        frames: len,
                        class_raw,
                    });
                    return None;
                }
                // Cannot happen (one unit at a time), but never lose bytes.
                Err(frames) => BulkOutcome::Failed {
                    frames,
                    error: crate::codec::CodecError::Internal("bulk context out".into()),
                },
            }
        } else {
            let mut unit = Vec::with_capacity(frames.len() / 2 + 64);
            match self.encoder.encode_bulk_unit_cut(&frames, cut, &mut unit) {
                Ok(()) => BulkOutcome::Compressed(unit),
                Err(error) => BulkOutcome::Failed { frames, error },
            }
        };
        let wire = self.bulk_unit_outcome(raw, class_raw, outcome)?;
        if !self.bulk_out.is_empty() {
            // Behind what is still to be sliced: never overtakes it.
            self.bulk_stored = Some(wire);
            return None;
        }
        Some(self.send_stored_unit(now, wire))
    }

    /// Counts a compressed unit and queues it for slicing; a failed one
    /// comes back as one stored record (whole frames) to send.
    fn bulk_unit_outcome(
        &mut self,
        raw: usize,
        mut class_raw: ClassBytes,
        outcome: BulkOutcome,
    ) -> Option<Vec<u8>> {
        match outcome {
            BulkOutcome::Compressed(unit) => {
                self.estimate.compression_sample(raw + 4, unit.len().max(1));
                self.stats.raw_bytes_by_codec[self.encoder.bulk_codec() as usize] += raw as u64;
                // The unit's bytes belong to its streams; each slice's
                // header and ACKs are control.
                accounting::apportion(
                    unit.len() as u64,
                    &mut class_raw,
                    &mut self.stats.wire_bytes_sent_by_class,
                );
                self.bulk_out.extend_from_slice(&unit);
                None
            }
            BulkOutcome::Failed { frames, .. } => {
                let mut wire = Vec::with_capacity(frames.len() + 1);
                wire.push(CodecId::Stored as u8);
                wire.extend_from_slice(&frames);
                self.stats.raw_bytes_by_codec[CodecId::Stored as usize] += raw as u64;
                accounting::apportion(
                    wire.len() as u64,
                    &mut class_raw,
                    &mut self.stats.wire_bytes_sent_by_class,
                );
                Some(wire)
            }
        }
    }

    /// Sends a unit that went stored; its streams may use records again.
    pub(super) fn send_stored_unit(&mut self, now: Instant, wire: Vec<u8>) -> Bytes {
        self.clear_bulk_unit();
        self.finish_record(now, wire)
    }
}
