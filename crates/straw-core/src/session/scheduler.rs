//! Records out: which frames go next and when. Control first, then
//! interactive streams before bulk ones (round-robin within a class), bulk
//! streams through their own lane in compressed units cut into slices; data
//! that was not flushed waits for the cork timer to merge with more.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::accounting;
use super::link_clock::PACE_LEAD;
use super::stream::{Stream, WireBudget};
use super::{Priority, Session};
use crate::codec::CodecId;
use crate::wire::Frame;

/// Which path a stream's frames take to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Whole frames in records of their own, flushed per record.
    Interactive,
    /// Compressed in units, sliced into records between interactive ones.
    Bulk,
}

impl Session {
    /// The next record to put on the link, if one is due. The driver calls this
    /// whenever the socket can take more (its unsent queue is low).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        if let Some(wire) = self.next_resend() {
            return Some(wire);
        }
        if self.codec_reset_owed {
            return Some(self.send_codec_reset(now));
        }
        // The time test first keeps the rest off the per-record path.
        if now >= self.last_codec_use + self.cfg.codec_idle_reset
            && self.codec_reset_due().is_some_and(|t| t <= now)
        {
            return Some(self.send_codec_reset(now));
        }
        // The fast tiers never use the strong codecs' contexts (megabytes):
        // both sides drop them now, not after the idle reset.
        if self.is_fast() && !self.bulk_unit_unsent() && self.encoder.memory_bytes() > 0 {
            return Some(self.send_codec_reset(now));
        }
        if (self.has_sendable_data() || !self.control.is_empty()) && self.cork_deadline.is_none() {
            self.cork_deadline = Some(now + self.cork_delay());
        }
        // The ack window is open, or the link is about to free and the pipe
        // has room; interactive records keep one record's room in the pipe
        // that bulk slices may not take, so a reply never waits for an ack
        // behind them.
        let acked_open = self.unacked_bytes < self.inflight_limit();
        let clock_open = self.link_clock.queued(now) <= PACE_LEAD;
        let pipe = self.pipe_limit();
        let pipe_full = self.unacked_bytes >= pipe + self.record_target() as u64;
        let window_open = acked_open || (clock_open && !pipe_full);
        let bulk_open = acked_open || (clock_open && self.unacked_bytes < pipe);
        // Closed only until the link frees: the clock, not an ack, opens it.
        self.pace_wake = if window_open || pipe_full {
            None
        } else {
            self.link_clock.wake_at(now)
        };
        let want_data = window_open && self.data_ready(now, Lane::Interactive);
        let cork_expired = self.cork_deadline.is_some_and(|d| d <= now);
        let want_control = !self.control.is_empty()
            && (self.urgent_control || self.flush_requested || cork_expired || want_data);
        let want_ack = self.ack_due.is_some_and(|d| d <= now)
            || (self.ack_due.is_some() && (want_data || want_control));
        let ping = self.ping_due.is_some_and(|d| d <= now);
        if !want_data && !want_control && !want_ack && !ping {
            let record = if bulk_open { self.poll_bulk(now) } else { None };
            // The bulk lane may just have taken the last bytes the cork was
            // waiting on; a stale deadline would wake the driver forever.
            if !self.has_sendable_data() && self.control.is_empty() {
                self.cork_deadline = None;
            }
            return record;
        }

        let target_raw = self.record_target_raw();
        // Frames follow a codec byte, so a stored record needs no copy.
        let mut buf = Vec::with_capacity(target_raw.min(64 * 1024) + 64);
        buf.push(CodecId::Stored as u8);
        self.ack_due = None;
        self.encode_ack(&mut buf);
        if ping {
            self.ping_due = None;
            let stamp = now.saturating_duration_since(self.epoch).as_micros() as u64;
            Frame::Ping { stamp }.encode(&mut buf);
        }
        if want_control || want_data {
            self.drain_control(&mut buf);
        }
        let mut raw_data = 0usize;
        self.tx_class_raw = [0; accounting::WIRE_CLASSES];
        if want_data {
            raw_data = self.fill_data(&mut buf, target_raw, Lane::Interactive, cork_expired);
        }
        self.flush_requested = self.streams.values().any(|s| s.flush && s.sendable() > 0);
        self.cork_deadline = None;
        if self.has_sendable_data() || !self.control.is_empty() {
            self.cork_deadline = Some(now + self.cork_delay());
        }
        let frames = &buf[1..];
        if frames.is_empty() {
            return None;
        }

        // Tiny records (acks, pongs) don't pay for a compressor's block header.
        let codec = if frames.len() < 24 {
            CodecId::Stored
        } else {
            self.record_codec()
        };
        let mut wire = match codec {
            CodecId::Stored => buf,
            _ => {
                let mut wire = Vec::with_capacity(frames.len() + 16);
                match self.encoder.encode(codec, frames, &mut wire) {
                    Ok(()) => wire,
                    Err(_) => buf,
                }
            }
        };
        // The replay buffer keeps the allocation, not just the bytes: a small
        // or well-compressed record must not hold a big buffer (shrinking
        // reallocs in place).
        if wire.capacity() > wire.len() + wire.len() / 4 + 256 {
            wire.shrink_to_fit();
        }
        if raw_data > 0 {
            self.estimate
                .compression_sample(raw_data + 4, wire.len().max(1));
        }
        self.stats.raw_bytes_sent += raw_data as u64;
        self.stats.raw_bytes_by_codec[wire[0] as usize % 8] += raw_data as u64;
        accounting::apportion(
            wire.len() as u64,
            &mut self.tx_class_raw,
            &mut self.stats.wire_bytes_sent_by_class,
        );
        Some(self.finish_record(now, wire))
    }

    /// The next slice of the bulk unit, compressing a new unit if the last
    /// one is sent and bulk data is due.
    pub(super) fn poll_bulk(&mut self, now: Instant) -> Option<Bytes> {
        // A unit that went stored follows what was compressed before it.
        if self.bulk_out.is_empty()
            && let Some(wire) = self.bulk_stored.take()
        {
            return Some(self.send_stored_unit(now, wire));
        }
        let target = self.bulk_slice_target();
        // Top up: the next unit is compressed behind what is left of the
        // last, so slices fill their segments instead of each unit ending in
        // a short record (at 2,400 bit/s a 2 s unit is ~1.2 segments).
        if self.bulk_pending.is_none() && self.bulk_stored.is_none() && self.bulk_out.len() < target
        {
            if self.bulk_out.is_empty() {
                self.clear_bulk_unit();
            }
            if self.data_ready(now, Lane::Bulk) {
                let mut frames = Vec::new();
                self.tx_class_raw = [0; accounting::WIRE_CLASSES];
                let idle = self.cork_deadline.is_some_and(|d| d <= now);
                self.bulk_cut = None;
                let raw = self.fill_data(&mut frames, self.bulk_unit_raw(), Lane::Bulk, idle);
                let cut = self.bulk_cut.take().unwrap_or(0);
                if frames.is_empty() {
                    // Only a transform's held bytes, not yet due: look again
                    // after a cork delay rather than at once.
                    self.cork_deadline = Some(now + self.cork_delay());
                } else {
                    self.stats.raw_bytes_sent += raw as u64;
                    if let Some(stored) = self.compress_unit(now, frames, cut, raw) {
                        return Some(stored);
                    }
                }
            }
        }
        if self.bulk_out.is_empty() {
            return None; // nothing compressed, or the unit is out with a job
        }
        // More to come: a unit out with its job or stored, or bulk data
        // waiting for the next unit.
        let more = self.bulk_pending.is_some()
            || self.bulk_stored.is_some()
            || self.data_waiting(Lane::Bulk);
        // What is left of a unit whose streams the peer reset (a program
        // that left mid-reply, a prefetch it never asked for) is read by no
        // one: it crosses only to keep the codec's history in step. A
        // program that left often starts its next session at once, so it
        // waits a round trip for that session's replies to go first,
        // unless bulk data is queued behind it.
        if self.bulk_unit_dead() && !more {
            let wait = self.estimate.min_rtt().unwrap_or(Duration::from_secs(1));
            let due = *self.bulk_dead_since.get_or_insert(now) + wait;
            if now < due {
                self.pace_wake = Some(self.pace_wake.map_or(due, |w| w.min(due)));
                return None;
            }
        }
        // Short of a slice with more to come and a full slice still on the
        // link: wait for more (Nagle's rule, per slice) rather than send a
        // segment that is mostly header; the next ACK or unit sends it, or
        // the link clock, before the link would idle.
        if self.bulk_out.len() < target
            && more
            && self.unacked_bytes >= target as u64
            && let Some(at) = self.link_clock.wake_at(now)
        {
            self.pace_wake = Some(at);
            return None;
        }
        // A short tail rides along rather than paying a packet of its own,
        // unless more is coming to fill the next slice.
        let n = if self.bulk_out.len() <= target
            || (!more && self.bulk_out.len() <= target + target / 2)
        {
            self.bulk_out.len()
        } else {
            target
        };
        let mut plain = Vec::new();
        self.encode_ack(&mut plain);
        let mut wire = Vec::with_capacity(n + plain.len() + 2);
        wire.push(self.encoder.bulk_codec() as u8);
        crate::wire::put_varint(&mut wire, plain.len() as u64);
        wire.extend_from_slice(&plain);
        self.stats.wire_bytes_sent_by_class[accounting::WIRE_CLASS_CONTROL] += wire.len() as u64;
        wire.extend_from_slice(&self.bulk_out.split_to(n));
        if !self.bulk_unit_unsent() {
            self.clear_bulk_unit();
        }
        Some(self.finish_record(now, wire))
    }

    /// Moves up to `budget` raw bytes of stream data into `buf`: interactive
    /// streams first, round-robin within a class, FINs after their data.
    /// `idle`: the cork timer ran out, so transforms release held lines.
    pub(super) fn fill_data(
        &mut self,
        buf: &mut Vec<u8>,
        budget: usize,
        lane: Lane,
        idle: bool,
    ) -> usize {
        let mut used = 0usize;
        // Bulk units: `budget` raw bytes are this many link bytes.
        let ratio = self.estimate.compression_ratio();
        for class in [Priority::Interactive, Priority::Bulk] {
            loop {
                let ids: Vec<u64> = self
                    .lane_streams(lane)
                    .filter(|(_, s)| s.priority == class && s.has_output())
                    .map(|(id, _)| *id)
                    .collect();
                if lane == Lane::Bulk {
                    self.bulk_unit.extend(ids.iter().copied());
                }
                if ids.is_empty() || used >= budget {
                    break;
                }
                // Round-robin: equal shares, at least a little each.
                let share = ((budget - used) / ids.len()).max(64);
                let mut progressed = false;
                for id in ids {
                    if used >= budget {
                        break;
                    }
                    // Could the source have given us more? (Stream::tx_stale)
                    let open = self.send_capacity(id) > 0;
                    let s = self.streams.get_mut(&id).expect("listed");
                    let n = s.sendable().min(share).min(budget - used);
                    let (held, held_lines) = (s.tx_held(), s.tx_held_lines());
                    if n > 0 || s.tx_flushable() {
                        let wire = (lane == Lane::Bulk).then(|| WireBudget {
                            wire: (budget - used) as f64 * ratio,
                            ratio,
                        });
                        let t = s.take(n, idle, open, lane == Lane::Interactive, wire);
                        self.pending_raw -= t.taken as u64;
                        self.tx_class_raw[s.class as usize] += t.payload.len() as u64;
                        self.transform_held =
                            self.transform_held + s.tx_held_lines() as u64 - held_lines as u64;
                        // A transformed payload may end a frame mid-item.
                        let mut payload = t.payload;
                        if let Some(at) = t.split {
                            Frame::Data {
                                stream: id,
                                flags: t.flags,
                                payload: payload.split_to(at),
                            }
                            .encode(buf);
                            // The unit's first such boundary ends a segment.
                            self.bulk_cut.get_or_insert(buf.len());
                        }
                        if !payload.is_empty() {
                            Frame::Data {
                                stream: id,
                                flags: t.flags,
                                payload,
                            }
                            .encode(buf);
                        }
                        used = (used + t.cost).min(budget);
                        progressed |= t.taken > 0 || s.tx_held() < held;
                    }
                    if s.fin_ready() {
                        s.fin_sent = true;
                        Frame::Fin { stream: id }.encode(buf);
                        progressed = true;
                        self.maybe_forget(id);
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
        used
    }

    pub(super) fn data_ready(&self, now: Instant, lane: Lane) -> bool {
        let mut any = false;
        let mut flush = lane == Lane::Interactive && self.flush_requested;
        let mut raw = 0;
        for (_, s) in self.lane_streams(lane) {
            if s.has_output() {
                any = true;
                flush |= s.flush || s.fin_ready() || (s.tx_flushable() && s.fin_queued);
                raw += s.sendable();
            }
        }
        let target = match lane {
            Lane::Interactive => self.record_target_raw(),
            Lane::Bulk => self.bulk_unit_raw(),
        };
        any && (flush || self.cork_deadline.is_some_and(|d| d <= now) || raw >= target)
    }

    fn data_waiting(&self, lane: Lane) -> bool {
        self.lane_streams(lane).any(|(_, s)| s.has_output())
    }

    pub(super) fn has_sendable_data(&self) -> bool {
        self.streams.values().any(Stream::has_output)
    }

    /// Which lane a stream's next frames take, if any may go now.
    pub(super) fn lane_of(&self, id: u64, s: &Stream) -> Option<Lane> {
        // Fast links skip the bulk lane: its strong codec can't keep up.
        if self.cfg.bulk_unit_secs > 0.0 && s.priority == Priority::Bulk && !self.is_fast() {
            Some(Lane::Bulk)
        } else if self.bulk_unit.contains(&id) {
            None // its earlier frames are still in the unsent bulk unit
        } else {
            Some(Lane::Interactive)
        }
    }

    pub(super) fn lane_streams(&self, lane: Lane) -> impl Iterator<Item = (&u64, &Stream)> {
        self.streams
            .iter()
            .filter(move |(id, s)| self.lane_of(**id, s) == Some(lane))
    }

    /// How long unflushed data may wait to merge with more: a fraction of the
    /// link time one extra packet header would cost.
    pub fn cork_delay(&self) -> Duration {
        let header_time = self.cfg.packet_overhead as f64 / self.estimate.rate();
        Duration::from_secs_f64(header_time / 4.0).min(self.cfg.max_cork)
    }

    /// When the driver should call [`Session::poll_transmit`] again even if
    /// nothing else happens.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // A cork timer is only worth waking for if its record may be sent;
        // with the window closed, the next ACK (or the link clock) is what
        // moves things. The clock opened it at the last poll if it set no
        // wake and the pipe has room: bulk's room, without the interactive
        // reserve, or a corked bulk unit in the reserve band would wake the
        // driver at once, again and again (an interactive record there waits
        // for the next ack instead).
        let window_open = self.unacked_bytes < self.inflight_limit()
            || (self.pace_wake.is_none() && self.unacked_bytes < self.pipe_limit());
        if self.resend_pending() > 0 {
            return Some(self.epoch);
        }
        // Nor while only the bulk lane has data and its unit is out with a
        // job: the job's return wakes the driver.
        let lane_open =
            window_open && (self.bulk_pending.is_none() || self.data_waiting(Lane::Interactive));
        let cork = self
            .cork_deadline
            .filter(|_| lane_open || !self.control.is_empty());
        // The link clock opens the window only for something to send.
        let pace = self.pace_wake.filter(|_| {
            self.has_sendable_data() || !self.bulk_out.is_empty() || self.bulk_stored.is_some()
        });
        [
            self.ack_due,
            cork,
            self.ping_due,
            self.codec_reset_due(),
            pace,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Schedules a PING (RTT measurement) for `at`.
    pub fn schedule_ping(&mut self, at: Instant) {
        self.ping_due = Some(at);
    }
}
