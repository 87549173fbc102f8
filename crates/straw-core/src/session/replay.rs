//! The replay buffer: every sent record is kept, already compressed, until
//! the peer acks it; after a reconnect the unacked ones are re-sent byte for
//! byte before anything new (the peer's decoder expects exactly those bytes).

use std::time::Instant;

use bytes::Bytes;

use super::link_clock::Departure;
use super::{Session, SessionError};
use crate::codec::CodecId;

/// A sent record, kept until acked, with what its ack's rate sample needs.
pub(super) struct SentRecord {
    pub(super) seq: u64,
    pub(super) wire: Bytes,
    pub(super) sent_at: Instant,
    pub(super) delivered_at_send: u64,
    pub(super) delivered_time_at_send: Instant,
    /// When the newest record acked at this one's sending was itself sent.
    pub(super) first_sent_at_send: Instant,
    /// When the link clock said it would have left the link.
    pub(super) departs: Departure,
    /// The peer answers it (it carries more than ACKs): see [`ack_eliciting`].
    pub(super) eliciting: bool,
    /// Nothing else was waiting to be sent when it left: its delivery-rate
    /// sample shows how much we had to send, not the link (BBR's
    /// app-limited samples).
    pub(super) app_limited: bool,
}

/// Whether the peer answers this record: any frame but ACK. Compressed
/// records carry data, so they count. Decided once, when the record is sent.
pub(super) fn ack_eliciting(record: &Bytes) -> bool {
    match record.first() {
        Some(&c) if c == CodecId::Stored as u8 => crate::wire::FrameDecoder::new(record.slice(1..))
            .any(|f| !matches!(f, Ok(crate::wire::Frame::Ack { .. }))),
        Some(_) => true,
        None => false,
    }
}

impl Session {
    /// Numbers a record, keeps it for replay, and accounts it.
    pub(super) fn finish_record(&mut self, now: Instant, wire: Vec<u8>) -> Bytes {
        if wire.first() != Some(&(CodecId::Stored as u8)) {
            self.last_codec_use = now;
        }
        let wire = Bytes::from(wire);
        let eliciting = ack_eliciting(&wire);
        self.unacked_eliciting += usize::from(eliciting);
        let departs = self
            .link_clock
            .sent(now, self.link_bytes(&wire), self.estimate.rate());
        self.replay.push_back(SentRecord {
            departs,
            seq: self.next_send_seq,
            wire: wire.clone(),
            sent_at: now,
            delivered_at_send: self.delivered,
            first_sent_at_send: if self.unacked_bytes == 0 {
                now
            } else {
                self.last_acked_sent_at
            },
            delivered_time_at_send: if self.unacked_bytes == 0 {
                now
            } else {
                self.delivered_time
            },
            eliciting,
            app_limited: !self.has_sendable_data() && !self.bulk_unit_unsent(),
        });
        if self.unacked_bytes == 0 {
            self.delivered_time = now;
        }
        self.next_send_seq += 1;
        self.unacked_bytes += wire.len() as u64;
        self.stats.records_sent += 1;
        self.stats.wire_bytes_sent += wire.len() as u64;
        self.note_held();
        wire
    }

    /// Records received from the peer so far, in total: what a reconnecting
    /// side tells its peer so that the peer re-sends exactly the rest.
    pub fn records_received(&self) -> u64 {
        self.records_received
    }

    /// The link was replaced and the peer says it has received
    /// `peer_received` records in total. Drops the replay records it has and
    /// schedules the others to be re-sent, byte for byte (the peer's decoder
    /// expects exactly those compressed bytes), before any new record.
    ///
    /// Control frames in the lost records travel again with them, so no other
    /// state needs re-sending. Rate and RTT samples skip the outage.
    pub fn resume(&mut self, now: Instant, peer_received: u64) -> Result<(), SessionError> {
        // Our last ACK may have been lost with the link: repeat it.
        self.last_ack_sent = 0;
        let first = self.replay.front().map_or(self.next_send_seq, |r| r.seq);
        if peer_received < first || peer_received > self.next_send_seq {
            return Err(SessionError::BadResume {
                peer: peer_received,
                first,
                next: self.next_send_seq,
            });
        }
        while self.replay.front().is_some_and(|r| r.seq < peer_received) {
            let r = self.replay.pop_front().expect("checked");
            self.release(&r);
        }
        self.resend_next = peer_received;
        self.resend_end = self.next_send_seq;
        // A new link: the re-sent records are all that is queued on it.
        self.link_clock.restart();
        let rate = self.estimate.rate();
        let overhead = self.record_overhead() as u64;
        for r in &mut self.replay {
            r.departs = self
                .link_clock
                .sent(now, r.wire.len() as u64 + overhead, rate);
            r.sent_at = now;
            r.delivered_at_send = self.delivered;
            r.delivered_time_at_send = now;
            r.first_sent_at_send = now;
        }
        self.delivered_time = now;
        self.rtt_valid_from = now;
        self.estimate.forget_rtts();
        // A fresh RTT sample on the new connection.
        self.ping_due = Some(now);
        // The peer learnt our count from the handshake; an ACK may wait.
        Ok(())
    }

    /// Records waiting to be re-sent after [`Session::resume`].
    pub fn resend_pending(&self) -> usize {
        self.resend_end.saturating_sub(self.resend_from()) as usize
    }

    /// The next record to re-send: never one already acked (a count of the
    /// replay's last records skipped one whenever an ACK came between
    /// re-sends, and a stream ended 61,440 bytes short, FIN and all).
    fn resend_from(&self) -> u64 {
        let oldest = self.replay.front().map_or(self.next_send_seq, |r| r.seq);
        self.resend_next.max(oldest)
    }

    pub(super) fn next_resend(&mut self) -> Option<Bytes> {
        let seq = self.resend_from();
        if seq >= self.resend_end {
            return None;
        }
        self.resend_next = seq + 1;
        // Replay records are numbered without gaps from the oldest.
        let first = self.replay.front()?.seq;
        let wire = self.replay[(seq - first) as usize].wire.clone();
        self.stats.records_resent += 1;
        self.stats.wire_bytes_resent += wire.len() as u64;
        self.stats.wire_bytes_sent += wire.len() as u64;
        self.stats.wire_bytes_sent_by_class[super::WIRE_CLASS_CONTROL] += wire.len() as u64;
        Some(wire)
    }

    /// Records sent but not yet acknowledged, oldest first (the replay buffer).
    pub fn unacked_records(&self) -> impl Iterator<Item = &Bytes> {
        self.replay.iter().map(|r| &r.wire)
    }

    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    /// Something sent is still unanswered (not counting bare ACKs): what
    /// dead-link detection waits on.
    pub fn awaiting_answer(&self) -> bool {
        self.unacked_eliciting > 0
    }

    /// Accounts a record the peer has received (acked, or counted on resume).
    pub(super) fn release(&mut self, r: &SentRecord) {
        self.unacked_bytes -= r.wire.len() as u64;
        self.unacked_eliciting -= usize::from(r.eliciting);
        self.delivered += self.link_bytes(&r.wire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;

    #[test]
    fn only_records_with_more_than_acks_await_an_answer() {
        let mut ack_only = vec![0u8];
        Frame::Ack { record: 300 }.encode(&mut ack_only);
        let mut ping = ack_only.clone();
        Frame::Ping { stamp: 5 }.encode(&mut ping);
        assert!(!ack_eliciting(&Bytes::from(ack_only)));
        assert!(ack_eliciting(&Bytes::from(ping)));
        assert!(
            ack_eliciting(&Bytes::from_static(&[1, 2, 3])),
            "compressed records carry data"
        );
        assert!(!ack_eliciting(&Bytes::new()));
    }
}
