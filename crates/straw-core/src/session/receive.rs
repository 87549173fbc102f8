//! Records in: decode, then act on each frame (stream data and credit,
//! opens and closes, acks, pings, codec resets).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::accounting;
use super::flood::RecordBudget;
use super::stream::Stream;
use super::{Event, Priority, Role, Session, SessionError, data_flags, reset_code};
use crate::codec::{CodecError, CodecId};
use crate::transform;
use crate::wire::{Frame, FrameDecoder, WireError};

impl Session {
    /// Handles one decrypted record from the peer. An error means the peer is
    /// broken or hostile: the driver closes the tunnel.
    pub fn handle_record(&mut self, now: Instant, record: &[u8]) -> Result<(), SessionError> {
        if record
            .first()
            .and_then(|&c| CodecId::from_u8(c))
            .is_some_and(CodecId::is_bulk)
        {
            return self.handle_bulk_record(now, record);
        }
        self.decoder.decode(record, &mut self.decode_buf)?;
        self.rx_budget = RecordBudget::default();
        self.rx_codec = record[0];
        self.records_received += 1;
        self.stats.records_received += 1;
        self.stats.wire_bytes_received += record.len() as u64;
        // Handed over, not copied: payloads are slices of it.
        let frames = Bytes::from(std::mem::take(&mut self.decode_buf));
        let mut ack_eliciting = false;
        self.rx_class_raw = [0; accounting::WIRE_CLASSES];
        for frame in FrameDecoder::new(frames) {
            let frame = frame?;
            ack_eliciting |= !matches!(frame, Frame::Ack { .. });
            self.handle_frame(now, frame)?;
        }
        accounting::apportion(
            record.len() as u64,
            &mut self.rx_class_raw,
            &mut self.stats.wire_bytes_received_by_class,
        );
        if std::mem::take(&mut self.reset_decoder) {
            if !self.bulk_in.is_empty() {
                return Err(SessionError::Codec(CodecError::Corrupt(
                    "codec reset inside a bulk unit".into(),
                )));
            }
            self.decoder.reset();
        }
        // A record of ACKs alone is acked with the next real one: acking it
        // at once would make two idle peers ack each other's acks forever.
        if ack_eliciting {
            self.ack_due.get_or_insert(now + self.ack_delay());
        }
        Ok(())
    }

    /// `2 | varint n | n bytes of plain frames (ACK) | slice of a bulk unit`.
    pub(super) fn handle_bulk_record(
        &mut self,
        now: Instant,
        record: &[u8],
    ) -> Result<(), SessionError> {
        let mut rest = &record[1..];
        let n = crate::wire::get_varint(&mut rest)?;
        if n > rest.len() as u64 {
            return Err(WireError::BadLength(n).into());
        }
        let (plain, slice) = rest.split_at(n as usize);
        let mut body = Vec::with_capacity(slice.len() + 1);
        body.push(record[0]);
        body.extend_from_slice(slice);
        self.decoder.decode(&body, &mut self.decode_buf)?;
        self.rx_budget = RecordBudget::default();
        self.rx_codec = record[0];
        self.records_received += 1;
        self.stats.records_received += 1;
        self.stats.wire_bytes_received += record.len() as u64;
        self.ack_due.get_or_insert(now + self.ack_delay());
        for frame in FrameDecoder::new(Bytes::copy_from_slice(plain)) {
            self.handle_frame(now, frame?)?;
        }
        // The slice's own header and ACKs are control; its body belongs to
        // the frames it ends (a frame may span slices).
        let header = (record.len() - slice.len()) as u64;
        self.stats.wire_bytes_received_by_class[accounting::WIRE_CLASS_CONTROL] += header;
        self.rx_bulk_unattributed += slice.len() as u64;
        self.rx_class_raw = [0; accounting::WIRE_CLASSES];
        self.handle_bulk_slice(now)?;
        if self.rx_class_raw.iter().any(|&n| n > 0) || self.bulk_in.is_empty() {
            accounting::apportion(
                std::mem::take(&mut self.rx_bulk_unattributed),
                &mut self.rx_class_raw,
                &mut self.stats.wire_bytes_received_by_class,
            );
        }
        if self.reset_decoder {
            return Err(SessionError::Codec(CodecError::Corrupt(
                "codec reset in a bulk record".into(),
            )));
        }
        Ok(())
    }

    /// A bulk slice: frames may straddle slices, so keep the tail.
    pub(super) fn handle_bulk_slice(&mut self, now: Instant) -> Result<(), SessionError> {
        self.bulk_in.extend_from_slice(&self.decode_buf);
        let buf = self.bulk_in.split().freeze();
        let mut frames = FrameDecoder::new(buf.clone());
        let mut consumed = 0;
        while consumed < buf.len() {
            match frames.next() {
                Some(Ok(frame)) => {
                    consumed = buf.len() - frames.remaining();
                    self.handle_frame(now, frame)?;
                }
                // Not a whole frame yet: the rest comes in the next slice.
                Some(Err(WireError::Truncated | WireError::BadLength(_))) | None => break,
                Some(Err(e)) => return Err(e.into()),
            }
        }
        self.bulk_in.extend_from_slice(&buf[consumed..]);
        let cap = self.cfg.bulk_decoder_limits.max_record_bytes;
        if self.bulk_in.len() > cap {
            return Err(SessionError::Codec(CodecError::TooLarge(cap)));
        }
        Ok(())
    }

    pub(super) fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), SessionError> {
        self.rx_budget.charge(&self.cfg, &frame)?;
        match frame {
            Frame::Data {
                stream,
                flags,
                payload,
            } => {
                let Some(s) = self.streams.get_mut(&stream) else {
                    return Ok(()); // late data for a stream we reset
                };
                self.rx_class_raw[s.class as usize] += payload.len() as u64;
                let transformed = flags & data_flags::TRANSFORM != 0;
                let flags = flags & !data_flags::TRANSFORM;
                let payload = if transformed {
                    // Credit counts decoded bytes: the sender counted them
                    // before its encoder saw them.
                    let mut out = Vec::with_capacity(payload.len() * 4 / 3 + 8);
                    s.rx.get_or_insert_with(transform::Decoder::new)
                        .push(&payload, &mut out)
                        .map_err(|error| SessionError::Transform { stream, error })?;
                    Bytes::from(out)
                } else {
                    check_transform_clean(stream, s)?;
                    payload
                };
                if transformed && payload.is_empty() {
                    return Ok(()); // a chunk header split from its data
                }
                s.receive(payload.len() as u64)
                    .map_err(|limit| SessionError::CreditExceeded {
                        stream,
                        got: s.recv_offset + payload.len() as u64,
                        limit,
                    })?;
                if payload.is_empty() {
                    return Ok(()); // nothing to deliver: no event
                }
                self.stats.raw_bytes_received += payload.len() as u64;
                self.stats.raw_bytes_received_by_codec[self.rx_codec as usize % 8] +=
                    payload.len() as u64;
                self.events.push_back(Event::Data {
                    stream,
                    flags,
                    payload,
                });
            }
            Frame::Open(open) => {
                let remote_parity = match self.cfg.role {
                    Role::Client => 0,
                    Role::Server => 1,
                };
                if open.stream % 2 != remote_parity || self.streams.contains_key(&open.stream) {
                    return Err(SessionError::BadStreamId(open.stream));
                }
                if self.streams.len() >= self.cfg.max_streams || !self.window_fits() {
                    return self.queue_refusal(open.stream, reset_code::REFUSED);
                }
                let transform = self.transforms(&open.service);
                let mut stream = Stream::new(
                    Priority::Interactive,
                    self.cfg.stream_window,
                    self.cfg.peer_stream_window,
                    transform,
                );
                stream.class = accounting::class_of(&self.cfg.accounting_services, &open.service);
                self.streams.insert(open.stream, stream);
                self.events.push_back(Event::Opened {
                    stream: open.stream,
                    service: open.service,
                    meta: open.meta,
                });
            }
            Frame::Fin { stream } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    check_transform_clean(stream, s)?;
                    s.fin_received = true;
                    self.events.push_back(Event::Fin { stream });
                    self.maybe_forget(stream);
                }
            }
            Frame::Reset { stream, code } => {
                // Its frames in the unsent unit are read by no one now.
                self.bulk_unit.remove(&stream);
                if let Some(s) = self.streams.remove(&stream) {
                    self.pending_raw -= s.pending.len() as u64;
                    self.transform_held -= s.tx_held_lines() as u64;
                    self.events.push_back(Event::Reset { stream, code });
                }
            }
            Frame::Credit { stream, limit } => {
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.send_limit = s.send_limit.max(limit);
                }
            }
            Frame::Ack { record } => self.handle_ack(now, record)?,
            Frame::Ping { stamp } => {
                self.queue_pong(stamp);
            }
            Frame::Pong { stamp } => {
                let sent = self.epoch + Duration::from_micros(stamp);
                if sent <= now && sent >= self.rtt_valid_from {
                    self.estimate.rtt_sample(now - sent);
                    self.update_fast();
                }
            }
            Frame::Caps { .. } => {}
            Frame::CodecReset => self.reset_decoder = true,
        }
        Ok(())
    }
}

/// Untransformed DATA or FIN may not cut a transformed item in two.
fn check_transform_clean(stream: u64, s: &Stream) -> Result<(), SessionError> {
    match &s.rx {
        Some(d) => d
            .finish()
            .map_err(|error| SessionError::Transform { stream, error }),
        None => Ok(()),
    }
}
