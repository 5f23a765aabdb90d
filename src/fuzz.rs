//! What the in-tree fuzzers share: a small PRNG, the time budget and seed from the
//! environment, and a runner that turns a failing session into a seed to replay.
//!
//! The fuzzers are ordinary tests (`cargo test --lib fuzz`), so they run on the stable
//! toolchain with no extra tool. Each one draws sessions from a grammar with [`Rng`] until
//! `NVMF_FUZZ_SECONDS` (default 3) have passed. Sessions are deterministic given their seed:
//! on a failure the runner replays the session with its trace switched on, prints the trace,
//! and fails with the seed that `NVMF_FUZZ_REPLAY` replays alone.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds each fuzzer runs when `NVMF_FUZZ_SECONDS` is not set: short, so `cargo test`
/// stays fast; CI sets more.
const DEFAULT_SECONDS: f64 = 3.0;
/// Lines of a trace kept for printing: the end of a long session is what matters.
const TRACE_LINES: usize = 600;

/// wyrand: tiny, fast, and good enough to pick grammar productions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        #[allow(clippy::cast_possible_truncation)]
        let (hi, lo) = ((t >> 64) as u64, t as u64);
        hi ^ lo
    }

    #[allow(clippy::cast_possible_truncation)]
    pub fn u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    #[allow(clippy::cast_possible_truncation)]
    pub fn u16(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }

    #[allow(clippy::cast_possible_truncation)]
    pub fn u8(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    /// Uniform in `0..n` (`n > 0`).
    #[allow(clippy::cast_possible_truncation)]
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range");
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        lo + ((u128::from(self.next_u64()) * u128::from(span + 1)) >> 64) as u64
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.u32() % 100 < percent
    }

    pub fn bool(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Index chosen with the given weights (at least one non-zero).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut at = self.range(0, total - 1);
        for (i, &w) in weights.iter().enumerate() {
            if at < u64::from(w) {
                return i;
            }
            at -= u64::from(w);
        }
        weights.len() - 1
    }

    /// A number that is often at an edge: 0, 1, a power of two and its neighbours, the
    /// maximum, or anything, up to `max`.
    pub fn interesting(&mut self, max: u64) -> u64 {
        match self.below(6) {
            0 => *self.pick(&[0, 1, max, max.saturating_sub(1)]),
            1 => {
                let bits = 64 - max.leading_zeros();
                let shift = u32::try_from(self.range(0, u64::from(bits))).unwrap_or(0);
                let p = 1u64.checked_shl(shift);
                let p = p.unwrap_or(max).min(max);
                match self.below(3) {
                    0 => p,
                    1 => p.saturating_sub(1),
                    _ => p.saturating_add(1).min(max),
                }
            }
            2 => self.range(0, max.min(16)),
            _ => self.range(0, max),
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.fill(&mut buf);
        buf
    }
}

/// What a session did, recorded only when it is replayed after a failure.
#[derive(Debug, Default)]
pub struct Trace {
    enabled: bool,
    lines: Vec<String>,
    dropped: usize,
}

impl Trace {
    /// Records a line; `line` is only formatted while the trace is on.
    pub fn log(&mut self, line: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        if self.lines.len() == TRACE_LINES {
            self.lines.remove(0);
            self.dropped += 1;
        }
        self.lines.push(line());
    }

    fn print(&self) {
        if self.dropped > 0 {
            eprintln!("  ... {} earlier steps", self.dropped);
        }
        for line in &self.lines {
            eprintln!("  {line}");
        }
    }
}

thread_local! {
    static COUNTS: RefCell<BTreeMap<&'static str, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Counts an event of interest; `run` prints the counts at the end, so a grammar that stops
/// reaching deep shows.
pub fn count(what: &'static str) {
    COUNTS.with(|counts| *counts.borrow_mut().entry(what).or_default() += 1);
}

/// How long each fuzzer runs, from `NVMF_FUZZ_SECONDS`.
pub fn budget() -> Duration {
    let seconds = std::env::var("NVMF_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(DEFAULT_SECONDS);
    Duration::from_secs_f64(seconds)
}

fn seed_from_env(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Runs `session` on fresh seeds until the budget is spent. `session` checks its invariants
/// by panicking; the first failure is replayed with its trace on and fails the test with the
/// seed that reproduces it.
pub fn run(name: &str, mut session: impl FnMut(&mut Rng, &mut Trace)) {
    if let Some(seed) = seed_from_env("NVMF_FUZZ_REPLAY") {
        eprintln!("fuzz {name}: replaying session {seed:#018x}");
        let mut trace = Trace {
            enabled: true,
            ..Trace::default()
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            session(&mut Rng::new(seed), &mut trace)
        }));
        trace.print();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
        return;
    }
    let seed = seed_from_env("NVMF_FUZZ_SEED").unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        #[allow(clippy::cast_possible_truncation)]
        let seed = nanos as u64;
        seed
    });
    let budget = budget();
    eprintln!(
        "fuzz {name}: seed {seed:#018x} for {:.1} s (NVMF_FUZZ_SEED, NVMF_FUZZ_SECONDS)",
        budget.as_secs_f64()
    );
    let start = Instant::now();
    let mut seeds = Rng::new(seed);
    let mut sessions = 0u64;
    loop {
        let one = seeds.next_u64();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            session(&mut Rng::new(one), &mut Trace::default());
        }));
        if let Err(panic) = outcome {
            let message = panic_message(&*panic);
            eprintln!("fuzz {name}: session {one:#018x} failed: {message}");
            eprintln!("fuzz {name}: the same session again, traced:");
            let mut trace = Trace {
                enabled: true,
                ..Trace::default()
            };
            let again = catch_unwind(AssertUnwindSafe(|| session(&mut Rng::new(one), &mut trace)));
            trace.print();
            let replayed = match again {
                Ok(()) => "the traced replay passed: the session is not deterministic".into(),
                Err(panic) => format!("the traced replay failed too: {}", panic_message(&*panic)),
            };
            panic!(
                "fuzz {name}: finding after {sessions} sessions (run seed {seed:#018x}): \
                 {message}\n{replayed}\nreplay with NVMF_FUZZ_REPLAY={one:#018x} cargo test --lib {name}"
            );
        }
        sessions += 1;
        if start.elapsed() >= budget {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {sessions} sessions in {:.1} s, no finding",
        start.elapsed().as_secs_f64()
    );
    let reached = COUNTS.with(|counts| {
        let counts = std::mem::take(&mut *counts.borrow_mut());
        counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    eprintln!("fuzz {name}: reached {reached}");
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_spreads() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            seen[a.below(10)] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        for _ in 0..1000 {
            assert!((5..=9).contains(&a.range(5, 9)));
            assert!(a.interesting(300) <= 300);
        }
        assert_eq!(a.weighted(&[0, 0, 1]), 2);
    }
}
