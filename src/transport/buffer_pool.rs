//! Data buffers for commands, bounded the way SPDK bounds its shared buffer pool.
//!
//! A transfer that does not fit in the command capsule (read data, and write data a host sends
//! after R2T) is paid with credits: `ceil(len / io_unit_size)` of the transport's
//! `num_shared_buffers`. The credits are shared by every reactor; each reactor keeps up to
//! `buf_cache_size` of them for itself, so the common case touches no shared atomic. A
//! command that finds no credits waits, in arrival order, instead of allocating: however many
//! hosts ask, the target holds at most `num_shared_buffers * io_unit_size` bytes of data.
//!
//! A command takes all the credits it needs at once, before any data moves (a Compare takes
//! those of its host data and of its read together), so no command holds some credits while
//! waiting for more, and the pool cannot deadlock on itself.
//!
//! Buffers are [`DataBuf`]s that carry their credits. Normally they come back through
//! [`BufferPool::give`]; one dropped anywhere else (a connection torn down mid-transfer) hands
//! its credits back through an atomic that the reactor collects, so credits are never lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How large the pool is; SPDK's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Credits in all, shared by every reactor.
    pub num_shared_buffers: u32,
    /// Credits a reactor keeps for itself when it does not use them.
    pub buf_cache_size: u32,
    /// Bytes one credit pays for.
    pub io_unit_size: u32,
}

impl PoolLimits {
    /// SPDK's NVMe/TCP defaults for `reactors` reactors: 511 buffers of 128 KiB, and each
    /// reactor caches three quarters of them divided among the reactors.
    pub fn spdk_tcp_defaults(reactors: u32) -> Self {
        Self::new(511, None, 131_072, reactors)
    }

    /// The limits for a declaration: `buf_cache_size = None` is SPDK's automatic size; a cache
    /// larger than a reactor's share of the pool is cut down to it.
    pub fn new(
        num_shared_buffers: u32,
        buf_cache_size: Option<u32>,
        io_unit_size: u32,
        reactors: u32,
    ) -> Self {
        let reactors = reactors.max(1);
        let share = num_shared_buffers / reactors;
        let cache = buf_cache_size.unwrap_or(num_shared_buffers * 3 / 4 / reactors);
        Self {
            num_shared_buffers,
            buf_cache_size: cache.min(share),
            io_unit_size: io_unit_size.max(1),
        }
    }

    /// Credits a transfer of `len` bytes costs.
    pub fn credits_for(&self, len: usize) -> u32 {
        let unit = self.io_unit_size as usize;
        u32::try_from(len.div_ceil(unit)).unwrap_or(u32::MAX)
    }
}

/// What a reactor calls when credits it waits for come back to the shared pool.
pub type CreditWaker = Arc<dyn Fn() + Send + Sync>;

/// The credits every reactor draws from.
pub struct SharedPool {
    limits: PoolLimits,
    /// Credits no reactor holds.
    available: AtomicU32,
    /// Set while some reactor waits for credits, so givers check `starving` only then.
    anyone_starving: AtomicBool,
    starving: Mutex<Vec<(usize, CreditWaker)>>,
}

impl core::fmt::Debug for SharedPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedPool")
            .field("limits", &self.limits)
            .field("available", &self.available())
            .finish_non_exhaustive()
    }
}

impl SharedPool {
    pub fn new(limits: PoolLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            available: AtomicU32::new(limits.num_shared_buffers),
            anyone_starving: AtomicBool::new(false),
            starving: Mutex::new(Vec::new()),
        })
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Credits in no reactor's hands.
    pub fn available(&self) -> u32 {
        self.available.load(Ordering::Relaxed)
    }

    /// Takes exactly `n` credits, or none.
    fn take(&self, n: u32) -> bool {
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |have| {
                have.checked_sub(n)
            })
            .is_ok()
    }

    fn put(&self, n: u32) {
        if n == 0 {
            return;
        }
        self.available.fetch_add(n, Ordering::AcqRel);
        if self.anyone_starving.load(Ordering::Acquire) {
            let waiting = {
                let mut starving = self.starving.lock().unwrap_or_else(PoisonError::into_inner);
                self.anyone_starving.store(false, Ordering::Release);
                std::mem::take(&mut *starving)
            };
            for (_, wake) in waiting {
                wake();
            }
        }
    }

    /// Asks to be woken the next time credits come back.
    fn wait(&self, reactor: usize, wake: &CreditWaker) {
        let mut starving = self.starving.lock().unwrap_or_else(PoisonError::into_inner);
        if !starving.iter().any(|(r, _)| *r == reactor) {
            starving.push((reactor, Arc::clone(wake)));
        }
        self.anyone_starving.store(true, Ordering::Release);
    }
}

/// Credits of buffers dropped outside [`BufferPool::give`], for their reactor to collect.
#[derive(Debug, Default)]
struct Strays {
    credits: AtomicU32,
}

/// A command's data buffer and the credits it holds (none for in-capsule data).
pub struct DataBuf {
    bytes: Vec<u8>,
    credits: u32,
    strays: Option<Arc<Strays>>,
}

impl core::fmt::Debug for DataBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DataBuf")
            .field("len", &self.bytes.len())
            .field("credits", &self.credits)
            .finish()
    }
}

impl DataBuf {
    /// No bytes and no credits.
    pub const fn empty() -> Self {
        Self {
            bytes: Vec::new(),
            credits: 0,
            strays: None,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn credits(&self) -> u32 {
        self.credits
    }

    /// Holds neither credits nor storage: giving it back would do nothing.
    #[inline]
    pub fn is_vacant(&self) -> bool {
        self.credits == 0 && self.bytes.capacity() == 0
    }

    /// Lends the bytes out (to a backend request) and keeps the credits here until
    /// [`put_bytes`](Self::put_bytes) brings them back.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    pub fn put_bytes(&mut self, bytes: Vec<u8>) {
        self.bytes = bytes;
    }
}

impl std::ops::Deref for DataBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::ops::DerefMut for DataBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for DataBuf {
    fn drop(&mut self) {
        if self.credits > 0 {
            if let Some(strays) = &self.strays {
                strays.credits.fetch_add(self.credits, Ordering::AcqRel);
            }
        }
    }
}

/// One waiting command: who it is (a reactor token) and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    key: u64,
    credits: u32,
}

/// What a reactor's pool reports in `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolStats {
    /// Credits held by this reactor's commands.
    pub in_use: u32,
    /// Credits this reactor keeps unused (its cache).
    pub cached: u32,
    /// Commands waiting for credits now.
    pub waiting: u32,
    /// Times a command had to wait, since start.
    pub waits: u64,
}

/// One reactor's side of the pool: its cache of credits, reusable storage and its waiters.
pub struct BufferPool {
    shared: Arc<SharedPool>,
    reactor: usize,
    wake: CreditWaker,
    strays: Arc<Strays>,
    /// Credits this reactor holds and does not use.
    cached: u32,
    in_use: u32,
    /// Allocations kept for the next commands, and their capacity in all.
    storage: Vec<Vec<u8>>,
    storage_bytes: usize,
    storage_limit: usize,
    waiters: VecDeque<Waiter>,
    waits: u64,
}

impl core::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BufferPool")
            .field("reactor", &self.reactor)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Storage kept for reuse at least, whatever the cache size: a few large transfers.
const MIN_STORAGE_BYTES: usize = 1 << 20;

impl BufferPool {
    /// The index of the reactor that owns this pool.
    pub fn reactor(&self) -> usize {
        self.reactor
    }

    /// The pool of reactor `reactor`; `wake` rouses it when credits it waits for come back
    /// from another reactor.
    pub fn new(shared: Arc<SharedPool>, reactor: usize, wake: CreditWaker) -> Self {
        let limits = shared.limits();
        let storage_limit = (limits.buf_cache_size as usize)
            .saturating_mul(limits.io_unit_size as usize)
            .max(MIN_STORAGE_BYTES);
        Self {
            shared,
            reactor,
            wake,
            strays: Arc::new(Strays::default()),
            cached: 0,
            in_use: 0,
            storage: Vec::new(),
            storage_bytes: 0,
            storage_limit,
            waiters: VecDeque::new(),
            waits: 0,
        }
    }

    pub fn limits(&self) -> PoolLimits {
        self.shared.limits()
    }

    pub fn credits_for(&self, len: usize) -> u32 {
        self.shared.limits().credits_for(len)
    }

    /// Reserves `credits` for a new command, unless others wait before it or there are not
    /// enough; then the caller waits with [`wait`](Self::wait).
    pub fn reserve(&mut self, credits: u32) -> bool {
        if credits == 0 {
            return true;
        }
        if !self.waiters.is_empty() {
            return false;
        }
        self.try_reserve(credits)
    }

    fn try_reserve(&mut self, credits: u32) -> bool {
        self.collect_strays();
        if self.cached < credits {
            let missing = credits - self.cached;
            if !self.shared.take(missing) {
                return false;
            }
            self.cached += missing;
        }
        self.cached -= credits;
        self.in_use += credits;
        true
    }

    /// Queues a command that found no credits; [`poll_granted`](Self::poll_granted) hands
    /// them to it, in arrival order.
    pub fn wait(&mut self, key: u64, credits: u32) {
        self.waits += 1;
        self.waiters.push_back(Waiter { key, credits });
    }

    /// Whether any command waits for credits.
    pub fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// The next waiter whose credits are now reserved, as `(key, credits)`. When the first
    /// waiter cannot be served, asks the shared pool to wake this reactor when credits return.
    pub fn poll_granted(&mut self) -> Option<(u64, u32)> {
        let front = *self.waiters.front()?;
        if self.try_reserve(front.credits) {
            self.waiters.pop_front();
            return Some((front.key, front.credits));
        }
        self.shared.wait(self.reactor, &self.wake);
        // Credits may have come back between the failed reservation and the registration.
        if self.try_reserve(front.credits) {
            self.waiters.pop_front();
            return Some((front.key, front.credits));
        }
        None
    }

    /// Forgets the waiters `gone` picks (their connection closed).
    pub fn forget_waiters(&mut self, gone: impl Fn(u64) -> bool) {
        self.waiters.retain(|w| !gone(w.key));
    }

    /// A buffer of `len` bytes paid with `credits` already reserved. Its contents are left over
    /// from an earlier command: whoever takes it overwrites all of it before it is sent.
    pub fn buffer(&mut self, len: usize, credits: u32) -> DataBuf {
        DataBuf {
            bytes: self.storage_for(len),
            credits,
            strays: (credits > 0).then(|| Arc::clone(&self.strays)),
        }
    }

    /// A buffer for in-capsule data: no credits (its size is bounded by the capsule, and a
    /// queue holds at most its depth of them).
    pub fn capsule_buffer(&mut self, len: usize) -> DataBuf {
        self.buffer(len, 0)
    }

    /// Returns a buffer's credits and keeps its storage for reuse.
    pub fn give(&mut self, mut buf: DataBuf) {
        let credits = std::mem::take(&mut buf.credits);
        self.give_credits(credits);
        let bytes = std::mem::take(&mut buf.bytes);
        let capacity = bytes.capacity();
        if capacity > 0 && self.storage_bytes + capacity <= self.storage_limit {
            self.storage_bytes += capacity;
            self.storage.push(bytes);
        }
    }

    /// Returns reserved credits that were never turned into buffers.
    pub fn give_credits(&mut self, credits: u32) {
        if credits == 0 {
            return;
        }
        self.in_use = self.in_use.saturating_sub(credits);
        self.cached += credits;
        let limit = self.shared.limits().buf_cache_size;
        if self.cached > limit {
            let spare = self.cached - limit;
            self.cached = limit;
            self.shared.put(spare);
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            in_use: self.in_use,
            cached: self.cached,
            waiting: u32::try_from(self.waiters.len()).unwrap_or(u32::MAX),
            waits: self.waits,
        }
    }

    /// Takes back the credits of buffers that were dropped instead of given back.
    pub fn collect_strays(&mut self) {
        if self.strays.credits.load(Ordering::Relaxed) == 0 {
            return;
        }
        let credits = self.strays.credits.swap(0, Ordering::AcqRel);
        self.give_credits(credits);
    }

    fn storage_for(&mut self, len: usize) -> Vec<u8> {
        let mut bytes = match self.storage.iter().rposition(|b| b.capacity() >= len) {
            Some(i) => {
                let bytes = self.storage.swap_remove(i);
                self.storage_bytes -= bytes.capacity();
                bytes
            }
            None => Vec::with_capacity(len),
        };
        // A reused buffer keeps its old length, so setting the new one touches only what it
        // did not hold before: no memset per command. Whoever takes it overwrites it all.
        bytes.resize(len, 0);
        bytes
    }
}

impl Drop for BufferPool {
    /// A reactor that stops hands every credit back.
    fn drop(&mut self) {
        self.collect_strays();
        self.shared.put(self.cached);
        self.cached = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn pool(num: u32, cache: u32, reactor: usize) -> (Arc<SharedPool>, BufferPool) {
        let shared = SharedPool::new(PoolLimits {
            num_shared_buffers: num,
            buf_cache_size: cache,
            io_unit_size: 4096,
        });
        let wake: CreditWaker = Arc::new(|| {});
        let local = BufferPool::new(Arc::clone(&shared), reactor, wake);
        (shared, local)
    }

    #[test]
    fn spdk_defaults() {
        let one = PoolLimits::spdk_tcp_defaults(1);
        assert_eq!((one.num_shared_buffers, one.buf_cache_size), (511, 383));
        let two = PoolLimits::spdk_tcp_defaults(2);
        assert_eq!(two.buf_cache_size, 191);
        // A declared cache larger than a reactor's share is cut to it.
        assert_eq!(PoolLimits::new(100, Some(90), 4096, 2).buf_cache_size, 50);
        assert_eq!(one.credits_for(1), 1);
        assert_eq!(one.credits_for(131_072), 1);
        assert_eq!(one.credits_for(131_073), 2);
        assert_eq!(PoolLimits::new(8, None, 8192, 1).credits_for(131_072), 16);
    }

    #[test]
    fn credits_are_bounded_and_waiters_are_served_in_order() {
        let (shared, mut pool) = pool(4, 2, 0);
        assert!(pool.reserve(3));
        let a = pool.buffer(12_000, 3);
        assert_eq!(a.len(), 12_000);
        assert!(!pool.reserve(2), "only one credit left");
        pool.wait(1, 2);
        // A later, smaller command does not jump the queue.
        assert!(!pool.reserve(1));
        pool.wait(2, 1);
        assert_eq!(pool.poll_granted(), None);
        assert_eq!(pool.stats().waiting, 2);
        pool.give(a);
        assert_eq!(pool.poll_granted(), Some((1, 2)));
        assert_eq!(pool.poll_granted(), Some((2, 1)));
        assert_eq!(pool.poll_granted(), None);
        assert_eq!(pool.stats().in_use, 3);
        pool.give_credits(3);
        assert_eq!(pool.stats().in_use, 0);
        // Two credits cached, two back in the shared pool.
        assert_eq!((pool.stats().cached, shared.available()), (2, 2));
        drop(pool);
        assert_eq!(
            shared.available(),
            4,
            "a stopped reactor gives everything back"
        );
    }

    #[test]
    fn a_buffer_dropped_outside_the_pool_returns_its_credits() {
        let (_shared, mut pool) = pool(2, 2, 0);
        assert!(pool.reserve(2));
        let buf = pool.buffer(8192, 2);
        drop(buf);
        assert!(
            pool.reserve(2),
            "credits of the dropped buffer were collected"
        );
        let mut lent = pool.buffer(100, 2);
        let bytes = lent.take_bytes();
        assert_eq!(lent.credits(), 2, "credits stay while the bytes are lent");
        lent.put_bytes(bytes);
        pool.give(lent);
        assert_eq!(pool.stats().in_use, 0);
    }

    #[test]
    fn a_starving_reactor_is_woken_when_another_gives_credits_back() {
        let shared = SharedPool::new(PoolLimits {
            num_shared_buffers: 2,
            buf_cache_size: 0,
            io_unit_size: 4096,
        });
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&woken);
        let wake: CreditWaker = Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut a = BufferPool::new(Arc::clone(&shared), 0, wake);
        let mut b = BufferPool::new(Arc::clone(&shared), 1, Arc::new(|| {}));
        assert!(b.reserve(2));
        let held = b.buffer(8192, 2);
        assert!(!a.reserve(1));
        a.wait(7, 1);
        assert_eq!(a.poll_granted(), None);
        b.give(held);
        assert_eq!(woken.load(Ordering::Relaxed), 1);
        assert_eq!(a.poll_granted(), Some((7, 1)));
    }

    #[test]
    fn storage_is_reused_and_bounded() {
        let (_shared, mut pool) = pool(1024, 0, 0);
        for _ in 0..64 {
            assert!(pool.reserve(32));
            let buf = pool.buffer(131_072, 32);
            pool.give(buf);
        }
        assert!(pool.storage_bytes <= pool.storage_limit);
        let many: Vec<DataBuf> = (0..16).map(|_| pool.capsule_buffer(1 << 20)).collect();
        for buf in many {
            pool.give(buf);
        }
        assert!(pool.storage_bytes <= MIN_STORAGE_BYTES);
    }
}
