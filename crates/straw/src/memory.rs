//! The server's memory budget over all tunnels (`[limits]
//! total_buffer_bytes`): each tunnel adds what it buffers
//! ([`straw_tunnel::Tunnel::buffered_bytes`]) to one atomic account; while
//! the account is over the limit every tunnel stops reading upstream
//! sockets and granting stream credit, so the total only shrinks. The
//! per-tunnel bound is the session's `recv_budget` (sans IO).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::gate::LogLimiter;
use crate::warn_limited;

/// Bytes buffered by all tunnels, against the configured limit.
pub struct MemoryAccount {
    used: AtomicU64,
    limit: u64,
    logs: LogLimiter,
}

impl MemoryAccount {
    pub fn new(limit: u64, log_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            limit,
            logs: LogLimiter::new(log_interval),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// A tunnel's part of the account (subtracted when dropped).
    pub fn share(self: &Arc<Self>) -> Share {
        Share {
            account: self.clone(),
            mine: 0,
        }
    }

    /// Says, at most once per log interval, that the budget bites.
    pub fn log_pressure(&self, tunnel: &str) {
        warn_limited!(
            self.logs,
            "memory-budget",
            "memory budget spent: {} of {} bytes buffered over all tunnels; tunnel {tunnel} and the others stop reading upstream and granting credit until it drains",
            self.used(),
            self.limit
        );
    }
}

/// One tunnel's bytes in a [`MemoryAccount`].
pub struct Share {
    account: Arc<MemoryAccount>,
    mine: u64,
}

impl Share {
    /// The tunnel now buffers `bytes`; true if the account is over its limit.
    pub fn set(&mut self, bytes: u64) -> bool {
        if bytes > self.mine {
            self.account
                .used
                .fetch_add(bytes - self.mine, Ordering::Relaxed);
        } else {
            self.account
                .used
                .fetch_sub(self.mine - bytes, Ordering::Relaxed);
        }
        self.mine = bytes;
        self.account.over()
    }

    pub fn account(&self) -> &MemoryAccount {
        &self.account
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_leave_with_their_tunnel() {
        let acct = MemoryAccount::new(1000, Duration::from_secs(10));
        let mut a = acct.share();
        let mut b = acct.share();
        assert!(!a.set(600));
        assert!(b.set(500), "1,100 of 1,000: over");
        assert!(acct.over());
        assert!(!a.set(100));
        assert_eq!(acct.used(), 600);
        drop(b);
        assert_eq!(acct.used(), 100);
        drop(a);
        assert_eq!(acct.used(), 0);
    }
}
