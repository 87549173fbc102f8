//! Dead-link detection, sans IO: when to probe a quiet link with a PING and
//! when to give it up. Time goes in as a value.

use std::time::{Duration, Instant};

/// Dead-link detection: when to probe a quiet link with a PING and when to
/// give it up. See [`LivenessCheck`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessConfig {
    /// Never call a link dead after less silence than this.
    pub min_dead: Duration,
    /// With nothing awaiting an answer, probe after this much silence
    /// (zero: never; a later send finds out instead).
    pub idle_probe: Duration,
    /// Upper bound for the tunnel socket's `TCP_USER_TIMEOUT`, which follows
    /// the link's dead-after time (zero: leave the socket alone).
    pub user_timeout_max: Duration,
    /// Lower bound for it: the socket's whole keepalive cycle (idle time plus
    /// every probe's interval). Below that, Linux ends an idle connection at
    /// its first keepalive probe that isn't answered at once (tcp(7)), so a
    /// quiet tunnel on a loaded server or a lossy link dies for nothing.
    pub user_timeout_min: Duration,
}

impl LivenessConfig {
    /// The `TCP_USER_TIMEOUT` for a link whose dead-link detection takes
    /// `detection_bound`: half as long again, within the bounds; `None`:
    /// leave the socket alone.
    pub fn user_timeout(&self, detection_bound: Duration) -> Option<Duration> {
        if self.user_timeout_max.is_zero() {
            return None;
        }
        Some(
            (detection_bound * 3 / 2)
                .max(self.user_timeout_min)
                .min(self.user_timeout_max),
        )
    }
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            min_dead: Duration::from_secs(10),
            idle_probe: Duration::from_secs(60),
            user_timeout_max: Duration::from_secs(60),
            user_timeout_min: Duration::ZERO,
        }
    }
}

/// What [`LivenessCheck::poll`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Fine,
    /// Send a PING: the link has been quiet for a loaded round trip.
    Probe,
    /// Nothing came back for the dead-after time since the probe.
    Dead,
}

/// Added to the dead-after time for scheduling jitter and ack delays.
const LIVENESS_MARGIN: Duration = Duration::from_secs(2);
/// RTT assumed before the first sample: a satellite hop, generously.
const UNMEASURED_RTT: Duration = Duration::from_secs(3);

/// Sans-IO dead-link detector. Anything received proves the link alive. A
/// reply to what we send may be late by a *loaded* round trip: the RTT plus
/// the time to drain what can sit ahead of our PING (our in-flight window and
/// a record) and ahead of the peer's PONG (the same on its side). After that
/// much silence while awaiting an answer (or `idle_probe` when not), PING;
/// if still nothing after the dead-after time, the link is dead.
#[derive(Debug, Clone)]
pub struct LivenessCheck {
    cfg: LivenessConfig,
    last_rx: Instant,
    probed_at: Option<Instant>,
    /// This check's idle probe time: `idle_probe` moved by up to ±10%, so
    /// that thousands of tunnels started together don't all probe (and make
    /// the server answer) in the same instant, again and again.
    idle_probe: Duration,
}

/// Spreads the checks' idle probe times: each check takes the next value.
static JITTER_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `d` moved by a fraction in [-10%, +10%) picked by `seq` (SplitMix64).
fn jittered(d: Duration, seq: u64) -> Duration {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.9 + 0.2 * unit)
}

impl LivenessCheck {
    pub fn new(cfg: LivenessConfig, now: Instant) -> Self {
        let seq = JITTER_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            idle_probe: jittered(cfg.idle_probe, seq),
            cfg,
            last_rx: now,
            probed_at: None,
        }
    }

    /// Bytes arrived from the peer.
    pub fn received(&mut self, now: Instant) {
        self.last_rx = now;
        self.probed_at = None;
    }

    /// When the peer was last heard from.
    pub fn last_heard(&self) -> Instant {
        self.last_rx
    }

    /// `srtt` as measured (it already includes some queueing), plus twice
    /// `queue_secs`: the link time of what one side may hold ahead of a
    /// probe or its answer.
    pub fn loaded_rtt(srtt: Option<Duration>, queue_secs: f64) -> Duration {
        let q = Duration::from_secs_f64(queue_secs.clamp(0.0, 3600.0));
        srtt.unwrap_or(UNMEASURED_RTT) + q * 2
    }

    /// Silence after a probe that means the link is dead.
    pub fn dead_after(&self, loaded_rtt: Duration) -> Duration {
        (loaded_rtt * 3 + LIVENESS_MARGIN).max(self.cfg.min_dead)
    }

    /// Longest silence before [`Liveness::Dead`] while awaiting an answer.
    pub fn detection_bound(&self, loaded_rtt: Duration) -> Duration {
        loaded_rtt + self.dead_after(loaded_rtt)
    }

    /// `expecting`: something we sent asks for an answer (data, PING).
    pub fn poll(&mut self, now: Instant, loaded_rtt: Duration, expecting: bool) -> Liveness {
        if let Some(p) = self.probed_at {
            return if now.saturating_duration_since(p) >= self.dead_after(loaded_rtt) {
                Liveness::Dead
            } else {
                Liveness::Fine
            };
        }
        match self.probe_at(loaded_rtt, expecting) {
            Some(t) if now >= t => {
                self.probed_at = Some(now);
                Liveness::Probe
            }
            _ => Liveness::Fine,
        }
    }

    /// When [`LivenessCheck::poll`] has something to do, if nothing arrives.
    pub fn next_check(&self, loaded_rtt: Duration, expecting: bool) -> Option<Instant> {
        match self.probed_at {
            Some(p) => Some(p + self.dead_after(loaded_rtt)),
            None => self.probe_at(loaded_rtt, expecting),
        }
    }

    fn probe_at(&self, loaded_rtt: Duration, expecting: bool) -> Option<Instant> {
        if expecting {
            Some(self.last_rx + loaded_rtt)
        } else if !self.idle_probe.is_zero() {
            Some(self.last_rx + self.idle_probe)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_timeout_follows_detection_within_the_keepalive_cycle_and_the_max() {
        let cfg = LivenessConfig {
            user_timeout_min: secs(40.0),
            user_timeout_max: secs(60.0),
            ..LivenessConfig::default()
        };
        assert_eq!(cfg.user_timeout(secs(10.0)), Some(secs(40.0)));
        assert_eq!(cfg.user_timeout(secs(30.0)), Some(secs(45.0)));
        assert_eq!(cfg.user_timeout(secs(100.0)), Some(secs(60.0)));
        let off = LivenessConfig {
            user_timeout_max: Duration::ZERO,
            ..cfg
        };
        assert_eq!(off.user_timeout(secs(10.0)), None);
    }

    #[test]
    fn idle_probes_of_many_tunnels_are_spread() {
        let t0 = Instant::now();
        let mut at: Vec<f64> = (0..5000)
            .map(|_| {
                let l = LivenessCheck::new(LivenessConfig::default(), t0);
                let t = l.next_check(Duration::ZERO, false).unwrap();
                t.duration_since(t0).as_secs_f64()
            })
            .collect();
        at.sort_by(f64::total_cmp);
        assert!(
            at[0] >= 54.0 && at[4999] < 66.0,
            "{} .. {}",
            at[0],
            at[4999]
        );
        // No second holds more than a few percent of them.
        let busiest = (54..66)
            .map(|s| {
                at.iter()
                    .filter(|&&t| t >= s as f64 && t < s as f64 + 1.0)
                    .count()
            })
            .max()
            .unwrap();
        assert!(busiest < 600, "{busiest} of 5000 probe in one second");
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn liveness_probes_after_a_loaded_rtt_then_declares_dead() {
        let t0 = Instant::now();
        let mut l = LivenessCheck::new(LivenessConfig::default(), t0);
        // 1.5 s RTT, 3 s of link time queued on a side.
        let rtt = LivenessCheck::loaded_rtt(Some(secs(1.5)), 3.0);
        assert_eq!(rtt, secs(7.5));
        let dead = l.dead_after(rtt);
        assert_eq!(dead, secs(24.5));
        assert_eq!(l.next_check(rtt, true), Some(t0 + rtt));
        assert_eq!(l.poll(t0 + secs(7.0), rtt, true), Liveness::Fine);
        assert_eq!(l.poll(t0 + rtt, rtt, true), Liveness::Probe);
        assert_eq!(l.next_check(rtt, true), Some(t0 + rtt + dead));
        assert_eq!(
            l.poll(t0 + rtt + dead - secs(0.1), rtt, true),
            Liveness::Fine
        );
        // Anything received starts over.
        let t1 = t0 + rtt + secs(1.0);
        l.received(t1);
        assert_eq!(l.poll(t1 + secs(7.0), rtt, true), Liveness::Fine);
        assert_eq!(l.poll(t1 + rtt, rtt, true), Liveness::Probe);
        assert_eq!(l.poll(t1 + rtt + dead, rtt, true), Liveness::Dead);
        assert_eq!(l.detection_bound(rtt), rtt + dead);
    }

    #[test]
    fn liveness_idle_link_probes_rarely_or_never() {
        let t0 = Instant::now();
        let cfg = LivenessConfig::default();
        let mut l = LivenessCheck::new(cfg, t0);
        let rtt = LivenessCheck::loaded_rtt(None, 0.0);
        assert_eq!(rtt, UNMEASURED_RTT);
        // 60 s, give or take the jitter (±10%).
        assert_eq!(l.poll(t0 + secs(53.9), rtt, false), Liveness::Fine);
        assert_eq!(l.poll(t0 + secs(66.0), rtt, false), Liveness::Probe);
        // A short RTT still gets the floor.
        let fast = LivenessCheck::loaded_rtt(Some(secs(0.01)), 0.0);
        assert_eq!(l.dead_after(fast), cfg.min_dead);

        let mut never = LivenessCheck::new(
            LivenessConfig {
                idle_probe: Duration::ZERO,
                ..cfg
            },
            t0,
        );
        assert_eq!(never.next_check(rtt, false), None);
        assert_eq!(never.poll(t0 + secs(1e6), rtt, false), Liveness::Fine);
    }
}
