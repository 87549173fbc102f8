//! When the records handed to the link will have left it, modelled at the
//! link's rate as the spacing of acks measures it.
//!
//! The ack window sees a record leave only when its ack returns, a round
//! trip after its last byte crossed. On Iridium a bulk slice is 1.8 s of link
//! time and the round trip ~1.2 s, so a window that queues at most one
//! record behind the one on the link keeps the next slice back until the
//! link has been idle for a round trip (bench: three such 1.25 s gaps in one
//! POP3 session). With the clock, the next record may go just before the
//! link frees, whatever the acks say, up to a cap on unacked bytes
//! ([`Session::pipe_limit`](super::Session)). The queue ahead of an
//! interactive reply stays what the window allowed: the record on the link
//! and at most one behind it.

use std::time::{Duration, Instant};

/// How long before the link frees the next record is handed over: driver
/// wake-up and timer granularity, so the link doesn't idle between records.
pub(super) const PACE_LEAD: Duration = Duration::from_millis(50);

/// Ack spacing samples kept for the link's rate (their median is used).
const RATE_SAMPLES: usize = 5;

#[derive(Debug, Clone, Default)]
pub(super) struct LinkClock {
    /// The link's own rate, bytes per second of link time, from the spacing
    /// of acks for records that were queued behind each other: the delivery
    /// rate estimate includes round trips and runs 20-40% low on a window
    /// of two records, which would leave the link idle for the difference.
    rate_samples: [f64; RATE_SAMPLES],
    next_sample: usize,
    /// The last ack: when it came and the departure of the newest record
    /// it acked.
    last_ack: Option<(Instant, Departure)>,
    /// When the last record handed over will have left (`None`: never used,
    /// or the link was replaced).
    free_at: Option<Instant>,
    /// How far acks have moved the clock earlier in all: a record handed
    /// over before a move leaves that much earlier than it was told.
    moved: Duration,
}

/// When a record will have left, as the clock said when it was handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Departure {
    at: Instant,
    moved: Duration,
}

impl LinkClock {
    /// The link's rate from ack spacing, if measured.
    pub(super) fn rate(&self) -> Option<f64> {
        // Asked per record: sorted on the stack, unset samples (0) first.
        let mut r = self.rate_samples;
        r.sort_by(f64::total_cmp);
        let set = r.iter().position(|&x| x > 0.0)?;
        Some(r[set + (RATE_SAMPLES - set) / 2])
    }

    /// A record of `link_bytes` (headers included) was handed over at
    /// `now`; `fallback_rate` until the clock has its own. Returns when it
    /// will have left.
    pub(super) fn sent(&mut self, now: Instant, link_bytes: u64, fallback_rate: f64) -> Departure {
        let rate = self.rate().unwrap_or(fallback_rate).max(1.0);
        let link_time = Duration::from_secs_f64(link_bytes as f64 / rate);
        let start = self.free_at.map_or(now, |f| f.max(now));
        let end = start + link_time;
        self.free_at = Some(end);
        Departure {
            at: end,
            moved: self.moved,
        }
    }

    /// How much link time is still queued ahead of a record handed over now.
    pub(super) fn queued(&self, now: Instant) -> Duration {
        self.free_at
            .map_or(Duration::ZERO, |f| f.saturating_duration_since(now))
    }

    /// When the next record should be handed over, if the link is busy
    /// until later than [`PACE_LEAD`] from `now`.
    pub(super) fn wake_at(&self, now: Instant) -> Option<Instant> {
        let f = self.free_at?;
        let at = f.checked_sub(PACE_LEAD)?;
        (at > now).then_some(at)
    }

    /// The ack of a record the clock said would leave at `departs` came at
    /// `now`. An ack comes at least `min_rtt` after its record left, so it
    /// left by `now - min_rtt`: if the clock says later, the rate estimate
    /// ran low (it does, by up to 40%, on a link whose senders are often
    /// idle) and what was handed over after it leaves that much earlier
    /// too. An ack that comes late proves nothing (the peer may have held
    /// it), so the clock is never moved later: a clock that runs early only
    /// queues what the pipe limit allows.
    ///
    /// The batch's records (`link_bytes` in all, the oldest handed over at
    /// `oldest_sent`) also give a rate sample when the oldest was handed
    /// over before the last batch's newest left: they were queued behind
    /// it, so the time between the two acks is their link time.
    pub(super) fn acked(
        &mut self,
        now: Instant,
        departs: Departure,
        oldest_sent: Instant,
        link_bytes: u64,
        min_rtt: Duration,
    ) {
        if let Some((at, prev)) = self.last_ack.replace((now, departs))
            && oldest_sent < prev.at
            && let Some(gap) = now.checked_duration_since(at)
            && gap >= Duration::from_millis(1)
        {
            self.rate_samples[self.next_sample] = link_bytes as f64 / gap.as_secs_f64();
            self.next_sample = (self.next_sample + 1) % RATE_SAMPLES;
        }
        let Some(left_by) = now.checked_sub(min_rtt) else {
            return;
        };
        // Moves since it was handed over already apply to it.
        let departs = departs
            .at
            .checked_sub(self.moved.saturating_sub(departs.moved))
            .unwrap_or(departs.at);
        if let Some(early) = departs.checked_duration_since(left_by)
            && !early.is_zero()
            && let Some(f) = self.free_at.as_mut()
            && let Some(moved) = f.checked_sub(early)
        {
            *f = moved;
            self.moved += early;
        }
    }

    /// The link was replaced: nothing is queued on the new one.
    pub(super) fn restart(&mut self) {
        self.free_at = None;
        self.last_ack = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn records_queue_one_behind_another() {
        let t0 = Instant::now();
        let mut c = LinkClock::default();
        assert_eq!(c.queued(t0), Duration::ZERO);
        assert_eq!(c.sent(t0, 2000, 1000.0).at, t0 + 2 * S);
        // Handed over while the first is still leaving: behind it.
        assert_eq!(c.sent(t0 + S, 1000, 1000.0).at, t0 + 3 * S);
        assert_eq!(c.queued(t0 + S), 2 * S);
        assert_eq!(c.wake_at(t0 + S), Some(t0 + 3 * S - PACE_LEAD));
        // Within the lead: no wake needed, hand over now.
        assert_eq!(c.wake_at(t0 + 3 * S - PACE_LEAD), None);
        // Handed over on an idle link: leaves from now.
        assert_eq!(c.sent(t0 + 10 * S, 1000, 1000.0).at, t0 + 11 * S);
    }

    #[test]
    fn an_ack_sooner_than_the_clock_allows_moves_it_earlier_a_late_one_does_not() {
        let t0 = Instant::now();
        let mut c = LinkClock::default();
        let d1 = c.sent(t0, 1000, 1000.0);
        let d2 = c.sent(t0, 1000, 1000.0);
        // Ack a round trip after the modelled departure: on time.
        c.acked(d1.at + S, d1, t0, 1000, S);
        assert_eq!(c.queued(t0), 2 * S);
        // Late: the peer may have held it; nothing moves.
        c.acked(d1.at + 3 * S, d1, t0, 1000, S);
        assert_eq!(c.queued(t0), 2 * S);
        // Half a second sooner than the clock allows: the first record
        // left by then, and the second is behind it.
        c.acked(d1.at + S / 2, d1, t0, 1000, S);
        assert_eq!(c.queued(t0), S + S / 2);
        // The second's ack, as early as that: the move is not counted twice.
        c.acked(d2.at - S / 2 + S, d2, t0, 1000, S);
        assert_eq!(c.queued(t0), S + S / 2);
        c.restart();
        assert_eq!(c.queued(t0), Duration::ZERO);
    }

    #[test]
    fn queued_records_acked_apart_measure_the_link() {
        let t0 = Instant::now();
        let mut c = LinkClock::default();
        assert_eq!(c.rate(), None);
        // Three records handed over together; the link does 500 B/s, not
        // the 1000 guessed, and acks come 2 s apart.
        let d: Vec<Departure> = (0..3).map(|_| c.sent(t0, 1000, 1000.0)).collect();
        c.acked(t0 + 3 * S, d[0], t0, 1000, S);
        assert_eq!(c.rate(), None, "one ack gives no spacing");
        c.acked(t0 + 5 * S, d[1], t0, 1000, S);
        assert_eq!(c.rate(), Some(500.0));
        // A record handed over after the last acked one left was not queued
        // behind it: the idle time between says nothing of the link.
        let late = c.sent(t0 + 20 * S, 1000, 1000.0);
        c.acked(t0 + 30 * S, late, t0 + 20 * S, 1000, S);
        assert_eq!(c.rate(), Some(500.0));
        // The clock now runs at the measured rate.
        let t1 = t0 + 100 * S;
        c.sent(t1, 1000, 1000.0);
        assert_eq!(c.queued(t1), 2 * S);
    }
}
