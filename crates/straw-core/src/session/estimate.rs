//! Link estimation from the session's own acks and pings: delivery rate, RTT
//! and the compression ratio seen so far. These size records, the cork timer
//! and the in-flight window.

use std::time::Duration;

/// How many recent rate samples the max filter remembers.
const RATE_WINDOW: usize = 8;
/// How many recent RTT samples the recent-minimum filter remembers: a link
/// that became slower (the boat left the harbour's Wi-Fi) shows in as many.
const RTT_WINDOW: usize = 8;

#[derive(Debug, Clone)]
pub struct LinkEstimate {
    rate_samples: [f64; RATE_WINDOW],
    next_sample: usize,
    initial_rate: f64,
    srtt: Option<Duration>,
    min_rtt: Option<Duration>,
    recent_rtts: [Option<Duration>; RTT_WINDOW],
    next_rtt: usize,
    /// Wire bytes per raw byte, smoothed.
    ratio: f64,
}

impl LinkEstimate {
    pub fn new(initial_rate: f64) -> Self {
        Self {
            rate_samples: [0.0; RATE_WINDOW],
            next_sample: 0,
            initial_rate: initial_rate.max(1.0),
            srtt: None,
            min_rtt: None,
            recent_rtts: [None; RTT_WINDOW],
            next_rtt: 0,
            ratio: 1.0,
        }
    }

    /// Delivery rate in wire bytes per second: the best recent sample, or the
    /// configured guess until there is one.
    pub fn rate(&self) -> f64 {
        let best = self.rate_samples.iter().copied().fold(0.0, f64::max);
        if best > 0.0 { best } else { self.initial_rate }
    }

    /// Samples over less than a millisecond say more about timer noise than
    /// the link, unless they are all we will ever get (loopback).
    pub fn rate_sample(&mut self, bytes: u64, interval: Duration) {
        if bytes == 0 {
            return;
        }
        let secs = interval.as_secs_f64().max(50e-6);
        self.rate_samples[self.next_sample] = bytes as f64 / secs;
        self.next_sample = (self.next_sample + 1) % RATE_WINDOW;
    }

    /// Whether a sample of `bytes` over `interval` is above the estimate.
    pub fn would_raise(&self, bytes: u64, interval: Duration) -> bool {
        bytes as f64 / interval.as_secs_f64().max(50e-6) > self.rate()
    }

    pub fn rtt_sample(&mut self, rtt: Duration) {
        self.record_rtt_sample(rtt, Duration::ZERO);
    }

    /// The round trip of a record whose own bytes took `own_link_time` to
    /// cross: the minimum keeps only the rest. The windows are sized from it
    /// as the bare ack loop; with the record in it, a sender that never lets
    /// the link idle (a big upload from the start) measured 2.35 s on a
    /// 0.8 s loop, and the windows grew by the difference.
    pub fn record_rtt_sample(&mut self, rtt: Duration, own_link_time: Duration) {
        let bare = rtt.saturating_sub(own_link_time);
        self.min_rtt = Some(self.min_rtt.map_or(bare, |m| m.min(bare)));
        self.recent_rtts[self.next_rtt] = Some(rtt);
        self.next_rtt = (self.next_rtt + 1) % RTT_WINDOW;
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The shortest of the last few RTT samples.
    pub fn recent_min_rtt(&self) -> Option<Duration> {
        self.recent_rtts.iter().flatten().min().copied()
    }

    /// The link was replaced (a resume): its round trips say nothing of
    /// the new one.
    pub fn forget_rtts(&mut self) {
        self.recent_rtts = [None; RTT_WINDOW];
    }

    pub fn compression_sample(&mut self, raw: usize, wire: usize) {
        let r = (wire as f64 / raw.max(1) as f64).clamp(0.05, 1.2);
        self.ratio = self.ratio * 0.8 + r * 0.2;
    }

    /// Wire bytes per raw byte, never below 0.1 so a lucky streak can't let
    /// huge raw batches queue up.
    pub fn compression_ratio(&self) -> f64 {
        self.ratio.clamp(0.1, 1.0)
    }
}
