//! A sans-IO model of one direction of a slow serial link: a bit rate, a
//! one-way delay, and a header charged per packet of at most `mss` bytes.
//!
//! Packets go onto the link one after another: each occupies it for
//! `(payload + segments * overhead) * 8 / rate` seconds from when the link is
//! free (or from now, if later), and arrives one delay after it has left.
//! Packets in flight during the delay pipeline, so the delay does not
//! throttle throughput. Time is always passed in, never read, so the same
//! model runs under a test's hand-stepped clock, tokio's paused clock, or
//! real time.
//!
//! - [`Wire`]: the link clock and counters alone, for drivers that carry the
//!   bytes themselves (linksim relays them over sockets).
//! - [`Pipe`]: a [`Wire`] that also holds the packets in flight, for
//!   in-memory simulations (the codec bench, the session tests).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Default segment payload: the classic TCP default MSS.
pub const DEFAULT_MSS: usize = 536;
/// Default per-segment overhead: IPv4 + TCP headers.
pub const DEFAULT_OVERHEAD: usize = 40;

/// A link's shape, one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkModel {
    /// Bits per second. 0 is treated as 1.
    pub rate_bps: u64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Largest segment payload in bytes; a bigger packet is charged one
    /// header per segment. 0 is treated as 1.
    pub mss: usize,
    /// Header bytes charged per segment on top of its payload.
    pub overhead: usize,
}

impl LinkModel {
    /// A TCP/IP-like link: default MSS and overhead.
    pub fn new(rate_bps: u64, delay: Duration) -> Self {
        LinkModel {
            rate_bps,
            delay,
            mss: DEFAULT_MSS,
            overhead: DEFAULT_OVERHEAD,
        }
    }

    /// A link that carries every packet whole and charges `overhead` once
    /// per packet: a record stream where the record, not the TCP segment,
    /// is the unit of interest.
    pub fn per_packet(rate_bps: u64, delay: Duration, overhead: usize) -> Self {
        LinkModel {
            rate_bps,
            delay,
            mss: usize::MAX,
            overhead,
        }
    }

    /// Segments a packet of `payload` bytes takes; an empty packet is one
    /// header-only segment (a SYN or an ACK).
    pub fn segments(&self, payload: usize) -> usize {
        payload.div_ceil(self.mss.max(1)).max(1)
    }

    /// Time a packet of `payload` bytes occupies the link, headers included.
    pub fn serialisation_time(&self, payload: usize) -> Duration {
        let bytes = payload as u128 + self.segments(payload) as u128 * self.overhead as u128;
        let nanos = bytes * 8 * 1_000_000_000 / self.rate_bps.max(1) as u128;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// When one packet was on the link and when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transit {
    /// It started leaving.
    pub start: Instant,
    /// It has left; the link is free again.
    pub end: Instant,
    /// It is at the other end: `end` plus the delay.
    pub arrival: Instant,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DirStats {
    /// Payload bytes put on the link.
    pub bytes: u64,
    /// Segments put on the link (data segments: header-only ones booked
    /// with [`Wire::occupy`] don't count).
    pub segments: u64,
    /// Sum of the segments' serialisation times, overhead included.
    pub link_time: Duration,
}

/// One direction's link clock: when it is next free, and what went over it.
#[derive(Debug, Clone)]
pub struct Wire {
    model: LinkModel,
    free_at: Option<Instant>,
    stats: DirStats,
}

impl Wire {
    /// An idle link.
    pub fn new(model: LinkModel) -> Self {
        Wire {
            model,
            free_at: None,
            stats: DirStats::default(),
        }
    }

    pub fn model(&self) -> &LinkModel {
        &self.model
    }

    /// Changes take effect from the next packet.
    pub fn model_mut(&mut self) -> &mut LinkModel {
        &mut self.model
    }

    /// Books the link for a packet of `payload` bytes handed over at `now`,
    /// and counts it.
    pub fn send(&mut self, now: Instant, payload: usize) -> Transit {
        let t = self.occupy(now, payload);
        self.stats.bytes += payload as u64;
        self.stats.segments += self.model.segments(payload) as u64;
        self.stats.link_time += t.end - t.start;
        t
    }

    /// Books the link without counting the packet: protocol overhead of the
    /// emulation itself (a TCP handshake's header-only segments).
    pub fn occupy(&mut self, now: Instant, payload: usize) -> Transit {
        let start = self.free_at.map_or(now, |f| f.max(now));
        let end = start + self.model.serialisation_time(payload);
        self.free_at = Some(end);
        Transit {
            start,
            end,
            arrival: end + self.model.delay,
        }
    }

    /// When the last packet booked leaves the link (`None`: never used).
    pub fn free_at(&self) -> Option<Instant> {
        self.free_at
    }

    /// Nothing is leaving at `now`: a sender with a small send buffer (a
    /// small `TCP_NOTSENT_LOWAT`) would hand over its next packet now.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.free_at.is_none_or(|f| f <= now)
    }

    /// The link goes down and a new one is idle from `now`: whatever was
    /// still leaving no longer holds it up.
    pub fn restart(&mut self, now: Instant) {
        self.free_at = Some(now);
    }

    pub fn stats(&self) -> DirStats {
        self.stats
    }
}

/// A [`Wire`] with the packets in flight: push at one end, pop at the other
/// once they have arrived. Packets arrive in the order they were pushed.
#[derive(Debug, Clone)]
pub struct Pipe<T> {
    wire: Wire,
    in_flight: VecDeque<(Instant, T)>,
}

impl<T: AsRef<[u8]>> Pipe<T> {
    pub fn new(model: LinkModel) -> Self {
        Pipe {
            wire: Wire::new(model),
            in_flight: VecDeque::new(),
        }
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    /// Changes take effect from the next packet.
    pub fn model_mut(&mut self) -> &mut LinkModel {
        self.wire.model_mut()
    }

    /// See [`Wire::is_idle`].
    pub fn is_idle(&self, now: Instant) -> bool {
        self.wire.is_idle(now)
    }

    /// Hands `packet` to the link at `now`; it queues behind any packet
    /// still leaving.
    pub fn push(&mut self, now: Instant, packet: T) -> Transit {
        let t = self.wire.send(now, packet.as_ref().len());
        self.in_flight.push_back((t.arrival, packet));
        t
    }

    /// The next packet that has arrived by `now`.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        if self.in_flight.front().is_some_and(|(at, _)| *at <= now) {
            return self.in_flight.pop_front().map(|(_, p)| p);
        }
        None
    }

    /// When the next packet in flight arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.front().map(|(at, _)| *at)
    }

    /// The link dies: everything in flight is lost, and a new link is idle
    /// from `now`. Returns how many packets were lost.
    pub fn cut(&mut self, now: Instant) -> usize {
        let lost = self.in_flight.len();
        self.in_flight.clear();
        self.wire.restart(now);
        lost
    }

    pub fn stats(&self) -> DirStats {
        self.wire.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn serialisation_charges_a_header_per_segment() {
        let m = LinkModel::new(2400, ms(500));
        // 10 bytes + 40 of headers at 300 B/s.
        assert_eq!(m.serialisation_time(10), Duration::from_nanos(166_666_666));
        // 24,000 bytes are 45 segments of at most 536.
        assert_eq!(m.segments(24_000), 45);
        let want = (24_000 + 45 * 40) as f64 * 8.0 / 2400.0;
        assert!((m.serialisation_time(24_000).as_secs_f64() - want).abs() < 1e-6);
        // A header-only segment still costs its header.
        assert_eq!(m.segments(0), 1);
        assert_eq!(m.serialisation_time(0), Duration::from_nanos(133_333_333));
        // Whole packets: one header however big.
        let p = LinkModel::per_packet(2400, ms(500), 18);
        assert_eq!(p.segments(1_000_000), 1);
        assert_eq!(p.serialisation_time(282), Duration::from_secs(1));
    }

    #[test]
    fn zero_rate_and_mss_do_not_divide_by_zero() {
        let mut m = LinkModel::new(0, ms(1));
        m.mss = 0;
        assert_eq!(m.segments(3), 3);
        assert!(m.serialisation_time(1) > Duration::from_secs(300));
    }

    #[test]
    fn packets_queue_behind_each_other_and_pipeline_the_delay() {
        let t0 = Instant::now();
        let mut w = Wire::new(LinkModel::per_packet(8000, ms(500), 0));
        assert!(w.is_idle(t0));
        let a = w.send(t0, 1000);
        assert_eq!(
            (a.start, a.end, a.arrival),
            (t0, t0 + ms(1000), t0 + ms(1500))
        );
        // Handed over before the first has left: starts when it has.
        let b = w.send(t0 + ms(200), 500);
        assert_eq!(
            (b.start, b.end, b.arrival),
            (a.end, a.end + ms(500), a.end + ms(1000))
        );
        assert!(!w.is_idle(t0 + ms(1499)));
        assert!(w.is_idle(t0 + ms(1500)));
        // Handed over after an idle spell: starts at once.
        let c = w.send(t0 + ms(5000), 0);
        assert_eq!(c.start, t0 + ms(5000));
        let s = w.stats();
        assert_eq!((s.bytes, s.segments), (1500, 3));
        assert_eq!(s.link_time, ms(1500));
    }

    #[test]
    fn occupy_holds_the_link_without_counting() {
        let t0 = Instant::now();
        let mut w = Wire::new(LinkModel::new(2400, ms(100)));
        let syn = w.occupy(t0, 0);
        let data = w.send(t0, 10);
        assert_eq!(data.start, syn.end);
        assert_eq!(w.free_at(), Some(data.end));
        assert_eq!((w.stats().bytes, w.stats().segments), (10, 1));
    }

    #[test]
    fn pipe_delivers_in_order_at_arrival_and_cut_loses_what_is_in_flight() {
        let t0 = Instant::now();
        let mut p: Pipe<Vec<u8>> = Pipe::new(LinkModel::per_packet(8000, ms(100), 0));
        p.push(t0, vec![1; 100]);
        p.push(t0, vec![2; 100]);
        assert_eq!(p.next_arrival(), Some(t0 + ms(200)));
        assert_eq!(p.pop(t0 + ms(199)), None);
        assert_eq!(p.pop(t0 + ms(300)), Some(vec![1; 100]));
        assert_eq!(p.pop(t0 + ms(300)), Some(vec![2; 100]));
        assert_eq!(p.pop(t0 + ms(300)), None);

        p.push(t0 + ms(300), vec![3; 1000]);
        assert!(!p.is_idle(t0 + ms(400)));
        assert_eq!(p.cut(t0 + ms(400)), 1);
        assert!(p.is_idle(t0 + ms(400)));
        assert_eq!(p.next_arrival(), None);
        // Counters keep what went onto the link, lost or not.
        assert_eq!(p.stats().bytes, 1200);

        p.model_mut().overhead = 100;
        let t = p.push(t0 + ms(400), vec![4; 100]);
        assert_eq!(t.end - t.start, ms(200));
    }
}
