//! The host's codec CPU over all tunnels (issue 11): when compression and
//! decompression take a large part of the cores, the tunnels that use a
//! real share of it drop to the fast codec instead of all slowing down.
//!
//! Why not the measured link rate alone: a compressor starved of CPU holds
//! its tunnel's delivery rate down, the rate then says "slow link, keep the
//! strong codec", and the strong codec keeps the CPU starved (seen: 20 bulk
//! tunnels on loopback moved 0.2 MB/s in all). CPU time is what saturates,
//! so CPU time is measured: each tunnel times its codec work on its own
//! thread's CPU clock (waiting for a core costs nothing), all tunnels add
//! it to one account, and every [`SAMPLE`] the account says whether codec
//! work took more than [`PRESSURE_ENTER`] of the cores for
//! [`PRESSURE_SAMPLES`] samples in a row.
//!
//! Which tunnels degrade: those taking at least half a fair share of that
//! codec CPU (the account's rate over the tunnels that did codec work). A
//! 2,400 bit/s link needs ~0.4% of a core for the strong codec, so beside
//! busy tunnels its share is far below theirs and it keeps the strong codec;
//! only when slow links alone fill the cores (past ~139 per core at 2,400
//! bit/s) do they degrade too, rather than all running below line rate.
//! A degraded tunnel stays so until the pressure ends; its measured rate
//! then decides again (a fast link keeps the fast codec by its rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Codec work above this fraction of the cores: pressure.
pub const PRESSURE_ENTER: f64 = 0.4;
/// ... and it ends below this one (hysteresis).
pub const PRESSURE_EXIT: f64 = 0.2;
/// How often the account and each tunnel look again: while nobody has
/// noticed, the strong codec holds every worker (seen: echo p99 1.2 s at
/// 1 s, 0.3-0.6 s at 250 ms).
pub const SAMPLE: Duration = Duration::from_millis(100);
/// Samples in a row over [`PRESSURE_ENTER`] before the pressure is on: a
/// tunnel's codec warming up (priming its CM context, ~0.1-0.3 s of a core)
/// is not a saturated host, and degrading it costs its link bytes (seen:
/// 1.26x on a 300 KB RETR). The interactive replies don't wait meanwhile:
/// bulk compression runs on the codec threads ([`crate::codec_pool`]).
pub const PRESSURE_SAMPLES: u32 = 5;
/// A sample spanning more than this (nothing looked: all were idle) only
/// restarts the count: spread over the idle time, a burst that just began
/// would look small.
const STALE: Duration = Duration::from_millis(400);
/// A tunnel under pressure degrades at this fraction of a fair share.
pub const FAIR_SHARE_FRACTION: f64 = 0.5;

/// Codec CPU of all tunnels, against the cores.
pub struct CodecLoad {
    cores: f64,
    epoch: Instant,
    cpu_ns: AtomicU64,
    /// Wall and CPU nanoseconds at the last sample.
    sampled_at_ns: AtomicU64,
    sampled_cpu_ns: AtomicU64,
    /// Codec CPU per second over the last sample (f64 bits), in cores.
    rate_bits: AtomicU64,
    pressure: AtomicBool,
    /// Samples in a row over [`PRESSURE_ENTER`] while the pressure is off.
    over_samples: AtomicU32,
    /// Tunnels whose last window had codec work.
    users: AtomicUsize,
}

impl CodecLoad {
    /// An account for a host with `cores` cores for codec work.
    pub fn new(cores: usize, now: Instant) -> Arc<Self> {
        Arc::new(Self {
            cores: cores.max(1) as f64,
            epoch: now,
            cpu_ns: AtomicU64::new(0),
            sampled_at_ns: AtomicU64::new(0),
            sampled_cpu_ns: AtomicU64::new(0),
            rate_bits: AtomicU64::new(0f64.to_bits()),
            pressure: AtomicBool::new(false),
            over_samples: AtomicU32::new(0),
            users: AtomicUsize::new(0),
        })
    }

    /// The host's cores (the tokio runtime runs one worker per core).
    pub fn for_host(now: Instant) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, now)
    }

    /// A tunnel's part of the account.
    pub fn share(self: &Arc<Self>, now: Instant) -> CodecShare {
        CodecShare {
            load: self.clone(),
            window_start: now,
            window_ns: 0,
            user: false,
            degraded: false,
        }
    }

    fn add(&self, cpu: Duration) {
        self.cpu_ns
            .fetch_add(cpu.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Codec CPU per second over the last sample, in cores.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    pub fn users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// Whether codec work saturates the cores; samples again (one caller
    /// wins) when the last sample is [`SAMPLE`] old.
    pub fn pressure(&self, now: Instant) -> bool {
        let wall = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let last = self.sampled_at_ns.load(Ordering::Relaxed);
        if wall.saturating_sub(last) >= SAMPLE.as_nanos() as u64
            && self
                .sampled_at_ns
                .compare_exchange(last, wall, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let cpu = self.cpu_ns.load(Ordering::Relaxed);
            let prev = self.sampled_cpu_ns.swap(cpu, Ordering::Relaxed);
            if wall - last > STALE.as_nanos() as u64 {
                self.over_samples.store(0, Ordering::Relaxed);
                return self.pressure.load(Ordering::Relaxed);
            }
            let rate = cpu.saturating_sub(prev) as f64 / (wall - last) as f64;
            self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
            let was = self.pressure.load(Ordering::Relaxed);
            // The streak counts only while the pressure is off.
            let streak = if !was && rate > PRESSURE_ENTER * self.cores {
                self.over_samples.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                self.over_samples.store(0, Ordering::Relaxed);
                0
            };
            let on = if was {
                rate > PRESSURE_EXIT * self.cores
            } else {
                streak >= PRESSURE_SAMPLES
            };
            if on != was {
                self.pressure.store(on, Ordering::Relaxed);
                if on {
                    tracing::warn!(
                        "codec work takes {:.0}% of {} cores: tunnels using a real share of it switch to the fast codec until it drops below {:.0}%",
                        100.0 * rate / self.cores,
                        self.cores,
                        100.0 * PRESSURE_EXIT
                    );
                } else {
                    tracing::info!(
                        "codec work down to {:.0}% of {} cores: each tunnel's measured rate picks its codec again",
                        100.0 * rate / self.cores,
                        self.cores
                    );
                }
            }
        }
        self.pressure.load(Ordering::Relaxed)
    }
}

/// One tunnel's codec CPU in a [`CodecLoad`].
pub struct CodecShare {
    load: Arc<CodecLoad>,
    window_start: Instant,
    window_ns: u64,
    /// Counted in the account's users.
    user: bool,
    degraded: bool,
}

impl CodecShare {
    /// Counts `cpu` of codec work by this tunnel.
    pub fn add(&mut self, cpu: Duration) {
        self.window_ns = self.window_ns.saturating_add(cpu.as_nanos() as u64);
        self.load.add(cpu);
        // A user from its first work on, so that the first judgement
        // already divides by every tunnel that works.
        self.set_user(true);
    }

    /// Whether this tunnel should keep off the strong codec now.
    pub fn degraded(&mut self, now: Instant) -> bool {
        let pressure = self.load.pressure(now);
        let span = now.saturating_duration_since(self.window_start);
        if span >= SAMPLE {
            let duty = self.window_ns as f64 / span.as_nanos() as f64;
            self.set_user(self.window_ns > 0);
            if pressure && !self.degraded {
                let fair = self.load.rate() / self.load.users().max(1) as f64;
                self.degraded = duty >= FAIR_SHARE_FRACTION * fair && duty > 0.0;
            }
            self.window_start = now;
            self.window_ns = 0;
        }
        if !pressure {
            self.degraded = false;
        }
        self.degraded
    }

    fn set_user(&mut self, on: bool) {
        if on != self.user {
            self.user = on;
            if on {
                self.load.users.fetch_add(1, Ordering::Relaxed);
            } else {
                self.load.users.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for CodecShare {
    fn drop(&mut self) {
        self.set_user(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One sample period in which each share uses `duty` of a core.
    fn period(load: &CodecLoad, shares: &mut [CodecShare], duty: &[f64], t: Instant) -> Vec<bool> {
        for (s, d) in shares.iter_mut().zip(duty) {
            s.add(SAMPLE.mul_f64(*d));
        }
        let _ = load.pressure(t);
        shares.iter_mut().map(|s| s.degraded(t)).collect()
    }

    /// [`PRESSURE_SAMPLES`] periods ending at `end` (what it takes to turn
    /// the pressure on); the last period's verdicts.
    fn sustained(
        load: &CodecLoad,
        shares: &mut [CodecShare],
        duty: &[f64],
        end: Instant,
    ) -> Vec<bool> {
        let n = PRESSURE_SAMPLES;
        let mut d = Vec::new();
        for i in 0..n {
            d = period(load, shares, duty, end - SAMPLE * (n - 1 - i));
        }
        d
    }

    #[test]
    fn a_short_burst_is_no_pressure() {
        let t0 = Instant::now();
        let load = CodecLoad::new(2, t0);
        let mut shares = vec![load.share(t0)];
        // One tunnel priming its codec: a whole core for a few samples.
        let mut t = t0;
        for _ in 1..PRESSURE_SAMPLES {
            t += SAMPLE;
            assert_eq!(period(&load, &mut shares, &[1.0], t), [false]);
            assert!(!load.pressure(t));
        }
        t += SAMPLE;
        assert_eq!(period(&load, &mut shares, &[0.1], t), [false]);
        // The count starts again.
        for _ in 1..PRESSURE_SAMPLES {
            t += SAMPLE;
            assert!(!period(&load, &mut shares, &[1.0], t)[0]);
        }
        t += SAMPLE;
        let _ = period(&load, &mut shares, &[1.0], t);
        assert!(load.pressure(t), "sustained, it is");
    }

    #[test]
    fn busy_tunnels_degrade_under_pressure_and_a_slow_link_keeps_the_strong_codec() {
        let t0 = Instant::now();
        let load = CodecLoad::new(2, t0);
        // 20 busy tunnels at 6% of a core each (1.2 cores of 2: 60%), and
        // one 2,400 bit/s link at 0.4%.
        let mut shares: Vec<CodecShare> = (0..21).map(|_| load.share(t0)).collect();
        let mut duty = vec![0.06; 20];
        duty.push(0.004);
        let on = t0 + SAMPLE * PRESSURE_SAMPLES;
        let d = sustained(&load, &mut shares, &duty, on);
        assert!(load.pressure(on), "1.2 of 2 cores is over 40%");
        assert_eq!(load.users(), 21);
        assert!(d[..20].iter().all(|&x| x), "busy tunnels degrade: {d:?}");
        assert!(!d[20], "the slow link keeps the strong codec");
        // Degraded, the busy ones cost little: the pressure ends and every
        // tunnel's measured rate decides again.
        let mut duty = vec![0.005; 20];
        duty.push(0.004);
        let d = period(&load, &mut shares, &duty, on + SAMPLE);
        assert!(!load.pressure(on + SAMPLE), "{}", load.rate());
        assert!(d.iter().all(|&x| !x), "{d:?}");
    }

    #[test]
    fn a_burst_after_idle_time_is_judged_on_its_own_time() {
        let t0 = Instant::now();
        let load = CodecLoad::new(2, t0);
        let mut shares: Vec<CodecShare> = (0..2).map(|_| load.share(t0)).collect();
        // Ten idle seconds, then a burst of 1.8 cores: over the whole span
        // it would be 1.8% of the cores; it is counted from its start.
        let t1 = t0 + Duration::from_secs(10);
        assert!(!load.pressure(t1), "a stale sample restarts the count");
        let on = t1 + SAMPLE * PRESSURE_SAMPLES;
        let d = sustained(&load, &mut shares, &[0.9, 0.9], on);
        assert!(load.pressure(on), "{}", load.rate());
        assert!(d.iter().all(|&x| x), "{d:?}");
    }

    #[test]
    fn no_pressure_no_degrading_and_dropped_tunnels_leave_the_users() {
        let t0 = Instant::now();
        let load = CodecLoad::new(2, t0);
        let mut shares: Vec<CodecShare> = (0..3).map(|_| load.share(t0)).collect();
        // 0.6 cores of codec work on 2 cores (30%): under the threshold.
        let d = period(&load, &mut shares, &[0.2; 3], t0 + SAMPLE);
        assert!(!load.pressure(t0 + SAMPLE));
        assert!(d.iter().all(|&x| !x));
        assert_eq!(load.users(), 3);
        shares.pop();
        assert_eq!(load.users(), 2);
        // A period without codec work: no longer a user.
        let _ = period(&load, &mut shares, &[0.0, 0.3], t0 + 2 * SAMPLE);
        assert_eq!(load.users(), 1);
        // Slow links alone filling the cores degrade too (past what the
        // cores can compress for them): rather that than all running late.
        let on = t0 + SAMPLE * (2 + PRESSURE_SAMPLES);
        let d = sustained(&load, &mut shares, &[0.9, 0.9], on);
        assert!(load.pressure(on));
        assert!(d.iter().all(|&x| x), "{d:?}");
    }
}
