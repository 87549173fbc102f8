//! The server's door for unauthenticated connections: a bound on pending
//! handshakes overall and per source address, the oldest dropped first so a
//! flood of idle connections can't starve a new legitimate client, and
//! log lines rate-limited per reason so a flood can't fill the disk; and
//! one way of ending every failed handshake ([`refuse`]), so that a prober
//! can't tell straw by how it fails.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Pending handshakes, oldest first (ids grow with arrival).
#[derive(Default)]
struct Pending {
    next_id: u64,
    by_id: BTreeMap<u64, (IpAddr, Arc<Notify>)>,
    per_ip: HashMap<IpAddr, usize>,
}

impl Pending {
    fn remove(&mut self, id: u64) -> Option<Arc<Notify>> {
        let (ip, evict) = self.by_id.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some(evict)
    }

    fn oldest(&self, from: IpAddr) -> Option<u64> {
        self.by_id
            .iter()
            .find(|(_, (ip, _))| *ip == from)
            .map(|(id, _)| *id)
    }

    /// The oldest pending handshake of the address holding the most (the
    /// oldest of those addresses' on a tie): a flood from some addresses
    /// displaces its own, not a client alone on its address, even when the
    /// flood reopens connections faster than a handshake crosses the link.
    fn oldest_of_busiest(&self) -> Option<u64> {
        let most = self.per_ip.values().copied().max()?;
        self.by_id
            .iter()
            .find(|(_, (ip, _))| self.per_ip.get(ip) == Some(&most))
            .map(|(id, _)| *id)
    }
}

/// Why a pending handshake was dropped to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evicted {
    /// Its source address had too many pending.
    PerIp,
    /// The server had too many pending.
    Total,
}

/// Admission of unauthenticated connections.
#[derive(Clone)]
pub struct Gate {
    max_total: usize,
    max_per_ip: usize,
    pending: Arc<Mutex<Pending>>,
}

/// A pending handshake's place at the gate; leaving frees it.
pub struct Ticket {
    id: u64,
    /// Notified when a newer connection took this one's place.
    pub evicted: Arc<Notify>,
    pending: Arc<Mutex<Pending>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.pending).remove(self.id);
    }
}

fn lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // Counting only: a panic elsewhere leaves nothing inconsistent.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gate {
    /// Bounds of at least one each (a zero bound would refuse everyone).
    pub fn new(max_total: usize, max_per_ip: usize) -> Gate {
        Gate {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            pending: Arc::default(),
        }
    }

    /// Admits a connection from `ip`, dropping the oldest pending handshake
    /// of the same address, or else the oldest of the address with the most
    /// pending, if a bound is reached. Returns the ticket and what was
    /// dropped for it.
    pub fn admit(&self, ip: IpAddr) -> (Ticket, Vec<Evicted>) {
        let mut p = lock(&self.pending);
        let mut dropped = Vec::new();
        if p.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip
            && let Some(id) = p.oldest(ip)
            && let Some(n) = p.remove(id)
        {
            n.notify_one();
            dropped.push(Evicted::PerIp);
        }
        if p.by_id.len() >= self.max_total
            && let Some(id) = p.oldest_of_busiest()
            && let Some(n) = p.remove(id)
        {
            n.notify_one();
            dropped.push(Evicted::Total);
        }
        let id = p.next_id;
        p.next_id += 1;
        let evicted = Arc::new(Notify::new());
        p.by_id.insert(id, (ip, evicted.clone()));
        *p.per_ip.entry(ip).or_default() += 1;
        let ticket = Ticket {
            id,
            evicted,
            pending: self.pending.clone(),
        };
        (ticket, dropped)
    }

    /// Handshakes pending now.
    pub fn pending(&self) -> usize {
        lock(&self.pending).by_id.len()
    }
}

/// How a handshake that did not complete went, for [`refuse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failed {
    /// The peer sent at least one byte.
    pub spoke: bool,
    /// The peer proved an authorised key (the failure came after that: a
    /// bad Hello, a busy session): it gets its answer at once.
    pub authenticated: bool,
    /// A newer connection took its pending place.
    pub evicted: bool,
}

/// Ends a connection whose handshake failed, the same way whatever went
/// wrong: a length prefix out of range, a message that fails to
/// authenticate, an unknown key or a handshake cut short all read and throw
/// away what the peer sends until `deadline` (the handshake deadline counted
/// from accept), then close with a FIN and nothing left unread (no RST).
/// Keep the connection's [`Ticket`] while this runs: it still holds its
/// pending place, so a flood of failing handshakes is bounded like one of
/// idle connections, and an eviction (`evicted`) ends the wait early.
///
/// The exceptions tell a prober nothing about the bytes it sent: a peer that
/// sent nothing was closed at the first-message deadline, an authenticated
/// peer already holds a key, and an evicted one made way under load.
pub async fn refuse(
    sock: &mut TcpStream,
    how: Failed,
    deadline: tokio::time::Instant,
    evicted: &Notify,
) {
    if how.spoke && !how.authenticated && !how.evicted {
        let mut buf = [0u8; 4096];
        let discard = async {
            // Until the peer closes or the connection fails.
            while let Ok(n) = sock.read(&mut buf).await
                && n > 0
            {}
        };
        tokio::select! {
            _ = tokio::time::timeout_at(deadline, discard) => {}
            () = evicted.notified() => {}
        }
    }
    drain_now(sock);
}

/// Reads whatever the socket holds now, so that closing it sends a FIN: a
/// close with unread data makes the kernel send a reset instead.
pub fn drain_now(sock: &TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.try_read(&mut buf)
        && n > 0
    {}
}

/// At most one log line per reason per interval; the rest are counted and
/// the count goes out with the next line.
pub struct LogLimiter {
    interval: Duration,
    reasons: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            reasons: Mutex::default(),
        }
    }

    /// Some(events suppressed since the last line) if a line may go out now.
    pub fn allow(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = reasons.entry(reason).or_default();
        match last {
            Some(t) if now.duration_since(*t) < self.interval => {
                *suppressed += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(suppressed))
            }
        }
    }
}

/// Logs `msg` as a warning unless its reason was logged within the interval.
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $reason:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.allow($reason, std::time::Instant::now()) {
            if suppressed > 0 {
                tracing::warn!("{} ({} more like this suppressed)", format_args!($($arg)+), suppressed);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

/// Raises the open-files soft limit to the hard limit: each pending or live
/// connection holds a descriptor, and the usual soft limit (1,024) is what a
/// flood of idle connections would exhaust first. Returns the new limit.
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
    Ok(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn is_notified(n: &Notify) -> bool {
        let f = n.notified();
        tokio::pin!(f);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        std::future::Future::poll(f.as_mut(), &mut cx).is_ready()
    }

    #[test]
    fn a_full_gate_drops_the_oldest_for_a_newcomer() {
        let gate = Gate::new(3, 10);
        let [a, b, c] = [1, 2, 3].map(|i| gate.admit(ip(i)).0);
        let (d, dropped) = gate.admit(ip(4));
        assert_eq!(dropped, [Evicted::Total]);
        assert!(is_notified(&a.evicted), "oldest not told to go");
        assert!(!is_notified(&b.evicted) && !is_notified(&c.evicted));
        assert_eq!(gate.pending(), 3);
        drop((a, b, c, d));
        assert_eq!(gate.pending(), 0);
    }

    #[test]
    fn a_full_gate_drops_from_the_busiest_address_not_a_lone_client() {
        let gate = Gate::new(4, 10);
        // The client came first; the flood holds the other places.
        let client = gate.admit(ip(1)).0;
        let mut flood: Vec<_> = (0..3).map(|_| gate.admit(ip(2)).0).collect();
        for _ in 0..20 {
            let (t, dropped) = gate.admit(ip(2));
            assert_eq!(dropped, [Evicted::Total]);
            flood.push(t); // the flood keeps every place it gets
        }
        assert!(!is_notified(&client.evicted), "the lone client was dropped");
        assert!(is_notified(&flood[0].evicted));
        assert_eq!(gate.pending(), 4);
    }

    #[test]
    fn one_address_only_displaces_its_own() {
        let gate = Gate::new(100, 2);
        let other = gate.admit(ip(9)).0;
        let a1 = gate.admit(ip(1)).0;
        let a2 = gate.admit(ip(1)).0;
        let (a3, dropped) = gate.admit(ip(1));
        assert_eq!(dropped, [Evicted::PerIp]);
        assert!(is_notified(&a1.evicted));
        assert!(!is_notified(&other.evicted) && !is_notified(&a2.evicted));
        assert_eq!(gate.pending(), 3);
        // Done handshakes free their places.
        drop((a2, a3));
        let (_a4, dropped) = gate.admit(ip(1));
        assert!(dropped.is_empty());
    }

    #[test]
    fn log_lines_are_limited_per_reason_and_count_the_rest() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow("a", t0), Some(0));
        assert_eq!(l.allow("b", t0), Some(0));
        for s in 1..=5 {
            assert_eq!(l.allow("a", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(l.allow("a", t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(l.allow("a", t0 + Duration::from_secs(11)), None);
    }

    #[cfg(unix)]
    #[test]
    fn fd_soft_limit_is_raised_to_the_hard_limit() {
        let now = raise_fd_limit().unwrap();
        assert!(now >= 1024, "{now}");
    }
}
