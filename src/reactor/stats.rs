//! Per-reactor busy/idle accounting, readable from other threads without locks.
//!
//! Busy is wall-clock time spent handling events; idle is time spent waiting in `epoll_wait`
//! (interrupt mode) or spinning through iterations that found nothing to do (poll mode). Both
//! keep advancing in interrupt mode, unlike SPDK's, because the loop itself measures them
//! around every wait instead of relying on pollers to report work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::transport::buffer_pool::PoolStats;

/// `wait_start_ns` when the reactor is not waiting.
const NOT_WAITING: u64 = u64::MAX;

#[derive(Debug)]
pub struct ReactorStats {
    busy_ns: AtomicU64,
    idle_ns: AtomicU64,
    events: AtomicU64,
    wakeups: AtomicU64,
    connections: AtomicU64,
    /// The reactor's buffer pool: credits in use and cached, commands waiting, waits so far.
    buffers_in_use: AtomicU64,
    buffers_cached: AtomicU64,
    buffer_waiting: AtomicU64,
    buffer_waits: AtomicU64,
    /// The reactor thread's kernel id, once it runs.
    tid: AtomicU64,
    /// Reference point for `wait_start_ns`, and when the reactor was made.
    base: Instant,
    /// When the current blocking wait began (ns after `base`), so a reactor asleep for an
    /// hour reports an hour of idle time before it wakes.
    wait_start_ns: AtomicU64,
    /// Odd while a wait's end moves its time from `wait_start_ns` into `idle_ns`: a reading
    /// taken across that move is taken again, so idle time never goes backwards (`spdk_top`
    /// subtracts readings).
    wait_seq: AtomicU64,
}

impl Default for ReactorStats {
    fn default() -> Self {
        Self {
            busy_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            events: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            buffers_in_use: AtomicU64::new(0),
            buffers_cached: AtomicU64::new(0),
            buffer_waiting: AtomicU64::new(0),
            buffer_waits: AtomicU64::new(0),
            tid: AtomicU64::new(0),
            base: Instant::now(),
            wait_start_ns: AtomicU64::new(NOT_WAITING),
            wait_seq: AtomicU64::new(0),
        }
    }
}

/// A copy of one reactor's figures at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub events: u64,
    pub wakeups: u64,
    pub connections: u64,
    pub buffers: PoolStats,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Adds to a counter that only its reactor's thread writes: a plain load and store, without
/// the locked read-modify-write that several writers would need, on every turn of the loop.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_add(n),
        Ordering::Relaxed,
    );
}

/// The `add_*` methods are called by the reactor's own thread only.
impl ReactorStats {
    pub fn add_busy(&self, d: Duration) {
        add(&self.busy_ns, nanos(d));
    }

    pub fn add_idle(&self, d: Duration) {
        add(&self.idle_ns, nanos(d));
    }

    pub fn add_events(&self, n: u64) {
        add(&self.events, n);
    }

    /// Counts a return from a blocking wait (interrupt mode only).
    pub fn add_wakeup(&self) {
        add(&self.wakeups, 1);
    }

    pub fn set_connections(&self, n: usize) {
        self.connections.store(n as u64, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Publishes the reactor's buffer pool figures.
    pub fn set_buffers(&self, pool: &PoolStats) {
        self.buffers_in_use
            .store(u64::from(pool.in_use), Ordering::Relaxed);
        self.buffers_cached
            .store(u64::from(pool.cached), Ordering::Relaxed);
        self.buffer_waiting
            .store(u64::from(pool.waiting), Ordering::Relaxed);
        self.buffer_waits.store(pool.waits, Ordering::Relaxed);
    }

    /// Records the reactor thread's kernel id (called by that thread).
    pub fn set_thread_id(&self, tid: u64) {
        self.tid.store(tid, Ordering::Relaxed);
    }

    /// The reactor thread's kernel id; 0 before it runs.
    pub fn thread_id(&self) -> u64 {
        self.tid.load(Ordering::Relaxed)
    }

    /// How long ago the reactor was made.
    pub fn age(&self) -> Duration {
        self.base.elapsed()
    }

    /// The reactor is about to block at `now`.
    pub fn begin_wait(&self, now: Instant) {
        self.wait_start_ns.store(
            nanos(now.saturating_duration_since(self.base)),
            Ordering::Relaxed,
        );
    }

    /// The blocking wait ended; `idle` (the turn's time before it woke) becomes idle time.
    pub fn end_wait(&self, idle: Duration) {
        self.wait_seq.fetch_add(1, Ordering::AcqRel);
        add(&self.idle_ns, nanos(idle));
        self.wait_start_ns.store(NOT_WAITING, Ordering::Relaxed);
        self.wait_seq.fetch_add(1, Ordering::AcqRel);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.snapshot_at(Instant::now())
    }

    /// Idle time so far, the wait in progress included, read consistently with its end.
    fn idle_at(&self, now: Instant) -> u64 {
        loop {
            let seq = self.wait_seq.load(Ordering::Acquire);
            if seq % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let waiting = match self.wait_start_ns.load(Ordering::Acquire) {
                NOT_WAITING => 0,
                start => nanos(now.saturating_duration_since(self.base)).saturating_sub(start),
            };
            let idle = self.idle_ns.load(Ordering::Acquire);
            if self.wait_seq.load(Ordering::Acquire) == seq {
                return idle + waiting;
            }
        }
    }

    fn snapshot_at(&self, now: Instant) -> StatsSnapshot {
        StatsSnapshot {
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            idle_ns: self.idle_at(now),
            events: self.events.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            buffers: PoolStats {
                in_use: load_u32(&self.buffers_in_use),
                cached: load_u32(&self.buffers_cached),
                waiting: load_u32(&self.buffer_waiting),
                waits: self.buffer_waits.load(Ordering::Relaxed),
            },
        }
    }
}

fn load_u32(counter: &AtomicU64) -> u32 {
    u32::try_from(counter.load(Ordering::Relaxed)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates() {
        let stats = ReactorStats::default();
        stats.add_busy(Duration::from_micros(3));
        stats.add_busy(Duration::from_micros(4));
        stats.add_idle(Duration::from_millis(1));
        stats.add_events(5);
        stats.add_wakeup();
        stats.set_connections(2);
        let snap = stats.snapshot();
        assert_eq!(snap.busy_ns, 7_000);
        assert_eq!(snap.idle_ns, 1_000_000);
        assert_eq!(snap.events, 5);
        assert_eq!(snap.wakeups, 1);
        assert_eq!(snap.connections, 2);
    }

    #[test]
    fn a_wait_in_progress_counts_as_idle() {
        let stats = ReactorStats::default();
        let start = stats.base + Duration::from_secs(1);
        stats.begin_wait(start);
        assert_eq!(
            stats.snapshot_at(start + Duration::from_secs(5)).idle_ns,
            5_000_000_000
        );
        stats.end_wait(Duration::from_secs(6));
        assert_eq!(
            stats.snapshot_at(start + Duration::from_secs(9)).idle_ns,
            6_000_000_000
        );
    }
}
