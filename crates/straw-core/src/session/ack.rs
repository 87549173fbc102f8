//! Acks: what the peer acknowledges releases replay records and samples the
//! link's delivery rate and RTT; what we received is acked on outgoing
//! records, or after a short delay.

use std::time::{Duration, Instant};

use super::replay::SentRecord;
use super::{Session, SessionError};
use crate::wire::Frame;

impl Session {
    /// `received` is the number of records the peer has received in total.
    pub(super) fn handle_ack(&mut self, now: Instant, received: u64) -> Result<(), SessionError> {
        if received > self.next_send_seq {
            return Err(SessionError::BadAck(received));
        }
        let delivered_before = self.delivered;
        let mut newest: Option<SentRecord> = None;
        let mut oldest_sent = None;
        while self.replay.front().is_some_and(|r| r.seq < received) {
            let r = self.replay.pop_front().expect("checked");
            self.release(&r);
            oldest_sent.get_or_insert(r.sent_at);
            newest = Some(r);
        }
        if let Some(r) = newest {
            // Delivery rate as BBR samples it: bytes delivered since this record
            // left, over the time since the delivery count it saw was current.
            // Records here take seconds each and acks come every few records,
            // so a batch's oldest record was often on the link before that
            // count: the interval starts at its sending, not later (else the
            // estimate climbs 50% above the link).
            let ack_elapsed = now.saturating_duration_since(r.delivered_time_at_send);
            let send_elapsed = r.sent_at.saturating_duration_since(r.first_sent_at_send);
            let batch_elapsed =
                oldest_sent.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            let interval = ack_elapsed.max(send_elapsed).max(batch_elapsed);
            self.last_acked_sent_at = r.sent_at;
            let bytes = self.delivered - r.delivered_at_send;
            // An app-limited sample below the estimate says we had little to
            // send, not that the link slowed: it would shrink the window
            // (and, at the start, throw away the configured rate).
            if !r.app_limited || self.estimate.would_raise(bytes, interval) {
                self.estimate.rate_sample(bytes, interval);
            }
            // Its own bytes had to cross before the peer could ack it: at the
            // fastest rate we believe in, and without the packet header
            // (records share segments), so the rest errs long.
            let rate = self
                .estimate
                .rate()
                .max(self.link_clock.rate().unwrap_or(0.0))
                .max(self.cfg.initial_rate);
            let own = (r.wire.len() + self.cfg.frame_overhead) as f64 / rate;
            self.estimate.record_rtt_sample(
                now.saturating_duration_since(r.sent_at),
                Duration::from_secs_f64(own),
            );
            if let (Some(rtt), Some(oldest)) = (self.estimate.min_rtt(), oldest_sent) {
                let batch = self.delivered - delivered_before;
                self.link_clock.acked(now, r.departs, oldest, batch, rtt);
            }
            self.delivered_time = now;
            self.update_fast();
        }
        Ok(())
    }

    /// How long a received record may wait for its ACK to ride on traffic.
    /// Never more than half the smoothed RTT: on a fast link a 100 ms delay
    /// would stall a sender whose window drains in a millisecond, while a
    /// satellite link's RTT leaves the configured delay as it is.
    pub(super) fn ack_delay(&self) -> Duration {
        match self.estimate.srtt() {
            Some(rtt) => self.cfg.ack_delay.min(rtt / 2),
            None => self.cfg.ack_delay,
        }
    }

    /// An ACK rides on every record while there is something new to ack, so
    /// even records of ACKs alone (which elicit none) get acked by traffic.
    pub(super) fn encode_ack(&mut self, buf: &mut Vec<u8>) {
        if self.records_received > self.last_ack_sent {
            self.last_ack_sent = self.records_received;
            Frame::Ack {
                record: self.records_received,
            }
            .encode(buf);
        }
    }
}
