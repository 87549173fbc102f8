//! The server's codec threads (issue 11): bulk units are compressed here,
//! not on the async runtime's workers.
//!
//! Why: the strong codec takes ~10 ms of CPU per 8 KiB unit. Run inline,
//! twenty tunnels' units queue on the runtime's few workers, and another
//! tunnel's one-line reply waits behind all of them (seen: echo p99
//! 0.3-0.6 s while 20 tunnels downloaded). Here the runtime only moves
//! bytes and builds interactive records, so a reply never waits for
//! anyone's bulk compression.
//!
//! Fairness: a tunnel has at most one unit out at a time (its bulk context
//! goes with the job), and jobs take turns in arrival order (a fair
//! semaphore with one permit per core), so busy tunnels take turns unit by
//! unit. A job runs on tokio's blocking threads at a lower CPU priority
//! (nice [`NICE`]) than the runtime's workers, so when the cores are full
//! the kernel runs the workers first: interactive work preempts bulk
//! compression instead of queueing behind it. Degrading busy tunnels to the
//! fast codec under pressure stays with [`crate::codec_load`].
//!
//! Why tokio's blocking threads rather than threads of our own: a paused
//! test clock does not jump ahead while a blocking task runs, so tests in
//! paused time see a unit take no time, as before; with threads tokio can't
//! see, it would race ahead while a unit is compressed.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// The threads' nice value: a worker at 0 gets ~10x their CPU share when
/// both want a core.
pub const NICE: i32 = 10;

/// Codec jobs, one per core at a time, in arrival order.
pub struct CodecPool {
    turns: Arc<Semaphore>,
    queued: AtomicUsize,
    threads: usize,
}

/// One codec thread's turn, held until dropped.
pub struct Turn(#[allow(dead_code)] OwnedSemaphorePermit);

impl CodecPool {
    /// At most `threads` jobs at once (at least one).
    pub fn new(threads: usize) -> Arc<Self> {
        let threads = threads.max(1);
        Arc::new(Self {
            turns: Arc::new(Semaphore::new(threads)),
            queued: AtomicUsize::new(0),
            threads,
        })
    }

    /// One job per core at a time.
    pub fn for_host() -> Arc<Self> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Waits for a turn, after those who asked before.
    pub async fn turn(&self) -> Turn {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let permit = self.turns.clone().acquire_owned().await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Turn(permit.expect("the pool's semaphore is never closed"))
    }

    /// Runs `job` on a blocking thread at [`NICE`] in its turn; its output.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let turn = self.turn().await;
        let out = tokio::task::spawn_blocking(move || {
            lower_priority();
            job()
        })
        .await;
        drop(turn);
        match out {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Jobs waiting for a turn.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers this thread's CPU priority to [`NICE`] (Linux: per thread), once:
/// an unprivileged process can't raise it again, so the blocking thread
/// stays there (its other work, DNS lookups, waits on the network anyway).
#[allow(unsafe_code)]
fn lower_priority() {
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take no pointers; a failure only
        // leaves the thread at the runtime's priority.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
        };
        if rc != 0 {
            warn!(
                "codec thread keeps normal CPU priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_take_turns_in_arrival_order() {
        let pool = CodecPool::new(1);
        let busy = pool.turn().await;
        let mut waiting = Vec::new();
        for i in 0..5 {
            let p = pool.clone();
            waiting.push(tokio::spawn(async move {
                p.run(move || (i, std::time::Instant::now())).await
            }));
            // Each asks before the next.
            while pool.queued() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(pool.queued(), 5);
        drop(busy);
        let mut done = Vec::new();
        for w in waiting {
            done.push(w.await.unwrap());
        }
        let order: Vec<_> = done.iter().map(|d| d.0).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        assert!(done.windows(2).all(|w| w[0].1 <= w[1].1), "ran in turn");
        assert_eq!(pool.queued(), 0);
    }

    #[tokio::test]
    async fn no_more_than_the_threads_at_once() {
        let pool = CodecPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let n = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    #[allow(unsafe_code)]
    async fn jobs_run_below_normal_priority() {
        let pool = CodecPool::new(1);
        let nice = pool
            .run(|| {
                // SAFETY: as in lower_priority.
                unsafe {
                    *libc::__errno_location() = 0;
                    libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
                }
            })
            .await;
        assert_eq!(nice, NICE);
    }
}
