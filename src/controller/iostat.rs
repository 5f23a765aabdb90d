//! What each namespace (and each controller) has done: operations, bytes and latency of
//! reads, writes and deallocations, and failures, as SPDK's `bdev_get_iostat` reports them.
//!
//! Every reactor writes its own shard (cache lines of its own) with plain loads and stores,
//! as `ReactorStats` does, so counting costs no locked instruction and reactors serving the
//! same namespace never contend; readers add the shards up. There is a shard per reactor the
//! target starts with ([`set_reactors`]), and one more that reactors beyond them (a test, a
//! core mask grown later) share with atomic read-modify-writes. Latency is given by the
//! caller (no clock here): the queue core measures from the turn that submitted a command
//! to the turn that completed it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Reactors with a shard of their own in counters made from now on.
static OWN_SHARDS: AtomicUsize = AtomicUsize::new(0);

/// Says how many reactors the target runs, before it builds namespaces and controllers.
pub fn set_reactors(count: usize) {
    OWN_SHARDS.store(count, Ordering::Relaxed);
}

fn own_shards() -> usize {
    match OWN_SHARDS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    }
}

/// The kinds of I/O counted apart, in SPDK's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// Read and Compare (both read the medium), and reads answered with zeroes.
    Read,
    /// Write.
    Write,
    /// Dataset Management with Deallocate.
    Unmap,
}

const CLASSES: usize = 3;

impl IoClass {
    fn index(self) -> usize {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::Unmap => 2,
        }
    }
}

/// Latency buckets: bucket `i` holds operations of at most 2^i µs (1 µs up to 2^18 µs, about
/// a quarter of a second); the last holds everything slower.
pub const LATENCY_BUCKETS: usize = 20;

/// The bucket of a latency.
fn bucket(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    if us <= 1 {
        return 0;
    }
    // ceil(log2(us)): the smallest i with 2^i >= us.
    let i = (64 - (us - 1).leading_zeros()) as usize;
    i.min(LATENCY_BUCKETS - 1)
}

/// The upper bound of bucket `i` in seconds; `None` for the last (no bound).
pub fn bucket_bound_s(i: usize) -> Option<f64> {
    (i + 1 < LATENCY_BUCKETS).then(|| f64::from(1u32 << i) * 1e-6)
}

/// One class's counters in one shard.
#[derive(Debug)]
struct ClassCounters {
    ops: AtomicU64,
    bytes: AtomicU64,
    latency_ns: AtomicU64,
    /// `u64::MAX` until the first operation.
    min_latency_ns: AtomicU64,
    max_latency_ns: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for ClassCounters {
    fn default() -> Self {
        Self {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
            min_latency_ns: AtomicU64::new(u64::MAX),
            max_latency_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One reactor's counters, on cache lines no other reactor writes.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    classes: [ClassCounters; CLASSES],
    failed: AtomicU64,
}

/// A namespace's or a controller's counters.
#[derive(Debug)]
pub struct IoStats {
    /// One per reactor, then the shared one.
    shards: Box<[Shard]>,
}

impl Default for IoStats {
    fn default() -> Self {
        Self::new(own_shards())
    }
}

/// Adds to a counter: a plain load and store where one reactor owns it, an atomic add where
/// several share it.
fn bump(counter: &AtomicU64, n: u64, shared: bool) {
    if shared {
        counter.fetch_add(n, Ordering::Relaxed);
    } else {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
}

fn lower(counter: &AtomicU64, v: u64, shared: bool) {
    if shared {
        counter.fetch_min(v, Ordering::Relaxed);
    } else if v < counter.load(Ordering::Relaxed) {
        counter.store(v, Ordering::Relaxed);
    }
}

fn raise(counter: &AtomicU64, v: u64, shared: bool) {
    if shared {
        counter.fetch_max(v, Ordering::Relaxed);
    } else if v > counter.load(Ordering::Relaxed) {
        counter.store(v, Ordering::Relaxed);
    }
}

impl IoStats {
    /// Counters with a shard of its own for each of `reactors` reactors.
    pub fn new(reactors: usize) -> Self {
        Self {
            shards: (0..=reactors).map(|_| Shard::default()).collect(),
        }
    }

    /// The shard of `reactor`, and whether others write it too.
    fn shard(&self, reactor: usize) -> (&Shard, bool) {
        let shared = self.shards.len() - 1;
        if reactor < shared {
            (&self.shards[reactor], false)
        } else {
            (&self.shards[shared], true)
        }
    }

    /// An operation of `class` moving `bytes` finished successfully after `latency`, on
    /// reactor `reactor` (and only ever called from that reactor's thread).
    pub fn record(&self, reactor: usize, class: IoClass, bytes: u64, latency: Duration) {
        let (shard, shared) = self.shard(reactor);
        let counters = &shard.classes[class.index()];
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        bump(&counters.ops, 1, shared);
        bump(&counters.bytes, bytes, shared);
        bump(&counters.latency_ns, ns, shared);
        lower(&counters.min_latency_ns, ns, shared);
        raise(&counters.max_latency_ns, ns, shared);
        bump(&counters.buckets[bucket(ns)], 1, shared);
    }

    /// An I/O command the backend failed.
    pub fn record_failure(&self, reactor: usize) {
        let (shard, shared) = self.shard(reactor);
        bump(&shard.failed, 1, shared);
    }

    /// Commands of every class that finished, failed ones included, on reactor `reactor`
    /// (with every reactor it shares a shard with).
    pub fn completed_on(&self, reactor: usize) -> u64 {
        let (shard, _) = self.shard(reactor);
        shard
            .classes
            .iter()
            .map(|c| c.ops.load(Ordering::Relaxed))
            .sum::<u64>()
            + shard.failed.load(Ordering::Relaxed)
    }

    /// The shards added up.
    pub fn snapshot(&self) -> IoStatsSnapshot {
        let mut out = IoStatsSnapshot::default();
        for shard in self.shards.iter() {
            out.add(shard);
        }
        out
    }

    /// Each reactor's own figures (SPDK's per-channel view): reactor `i` at index `i`; the
    /// shard that reactors beyond the count share is left out when nothing was counted there.
    pub fn per_reactor(&self) -> Vec<IoStatsSnapshot> {
        let mut out: Vec<IoStatsSnapshot> = self
            .shards
            .iter()
            .map(|shard| {
                let mut snap = IoStatsSnapshot::default();
                snap.add(shard);
                snap
            })
            .collect();
        if out.last() == Some(&IoStatsSnapshot::default()) {
            out.pop();
        }
        out
    }
}

impl IoStatsSnapshot {
    fn add(&mut self, shard: &Shard) {
        for (sum, counters) in self.classes.iter_mut().zip(&shard.classes) {
            sum.ops += counters.ops.load(Ordering::Relaxed);
            sum.bytes += counters.bytes.load(Ordering::Relaxed);
            sum.latency_ns += counters.latency_ns.load(Ordering::Relaxed);
            let min = counters.min_latency_ns.load(Ordering::Relaxed);
            if min != u64::MAX {
                sum.min_latency_ns = Some(sum.min_latency_ns.map_or(min, |m| m.min(min)));
            }
            sum.max_latency_ns = sum
                .max_latency_ns
                .max(counters.max_latency_ns.load(Ordering::Relaxed));
            for (total, bucket) in sum.buckets.iter_mut().zip(&counters.buckets) {
                *total += bucket.load(Ordering::Relaxed);
            }
        }
        self.failed += shard.failed.load(Ordering::Relaxed);
    }
}

/// One class's figures, added up over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassSnapshot {
    pub ops: u64,
    pub bytes: u64,
    /// The sum over all operations.
    pub latency_ns: u64,
    /// `None` before the first operation.
    pub min_latency_ns: Option<u64>,
    pub max_latency_ns: u64,
    /// Operations per latency bucket (see [`LATENCY_BUCKETS`]), not cumulative.
    pub buckets: [u64; LATENCY_BUCKETS],
}

/// A namespace's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStatsSnapshot {
    classes: [ClassSnapshot; CLASSES],
    pub failed: u64,
}

impl IoStatsSnapshot {
    pub fn class(&self, class: IoClass) -> ClassSnapshot {
        self.classes[class.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_and_keep_minimum_and_maximum() {
        let stats = IoStats::new(2);
        stats.record(0, IoClass::Read, 4096, Duration::from_micros(10));
        stats.record(1, IoClass::Read, 8192, Duration::from_micros(30));
        // Reactors 5 and 9 have no shard of their own: they share the last one.
        stats.record(5, IoClass::Write, 512, Duration::from_micros(7));
        stats.record(9, IoClass::Write, 512, Duration::from_micros(9));
        stats.record_failure(1);
        let snap = stats.snapshot();
        let read = snap.class(IoClass::Read);
        assert_eq!((read.ops, read.bytes, read.latency_ns), (2, 12288, 40_000));
        assert_eq!(
            (read.min_latency_ns, read.max_latency_ns),
            (Some(10_000), 30_000)
        );
        let write = snap.class(IoClass::Write);
        assert_eq!(
            (write.ops, write.bytes, write.min_latency_ns),
            (2, 1024, Some(7_000))
        );
        assert_eq!(write.max_latency_ns, 9_000);
        assert_eq!(stats.completed_on(5), 2);
        assert_eq!(stats.completed_on(1), 2);
        let per = stats.per_reactor();
        assert_eq!(per.len(), 3, "two reactors and the shared shard");
        assert_eq!(per[1].class(IoClass::Read).bytes, 8192);
        assert_eq!(per[2].class(IoClass::Write).ops, 2);
        assert_eq!(
            IoStats::new(2).per_reactor().len(),
            2,
            "an unused shared shard is left out"
        );
        assert_eq!(snap.class(IoClass::Unmap), ClassSnapshot::default());
        assert_eq!(snap.failed, 1);
    }

    #[test]
    fn latencies_fall_in_power_of_two_microsecond_buckets() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1000), 0);
        assert_eq!(bucket(1001), 1);
        assert_eq!(bucket(2000), 1);
        assert_eq!(bucket(3000), 2);
        assert_eq!(bucket(1_000_000), 10);
        assert_eq!(bucket(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_bound_s(0), Some(1e-6));
        assert_eq!(bucket_bound_s(LATENCY_BUCKETS - 1), None);
        let stats = IoStats::new(1);
        stats.record(0, IoClass::Read, 1, Duration::from_micros(3));
        stats.record(0, IoClass::Read, 1, Duration::from_micros(4));
        assert_eq!(stats.snapshot().class(IoClass::Read).buckets[2], 2);
    }

    #[test]
    fn a_shard_is_a_cache_line_of_its_own() {
        assert!(std::mem::align_of::<Shard>() >= 128);
    }
}
