//! Which I/O comes next: read or write, and where. The namespace is cut into units of one
//! I/O size; sequential patterns walk them in order, random ones pick uniformly.

use super::options::Pattern;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// xorshift64*: fast, good enough to spread LBAs; not for anything secret.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).unwrap_or(0)
    }
}

pub struct Workload {
    random: bool,
    read_percent: u8,
    units: u64,
    next_unit: u64,
    rng: Rng,
}

impl Workload {
    /// `units` is the number of I/O-sized units in the namespace (at least 1).
    pub fn new(pattern: Pattern, rwmixread: u8, units: u64, seed: u64) -> Self {
        Self {
            random: pattern.is_random(),
            read_percent: pattern.read_percent(rwmixread),
            units: units.max(1),
            next_unit: 0,
            rng: Rng::new(seed),
        }
    }

    /// The next operation and unit, skipping units for which `busy` says an I/O is in
    /// flight (tries a bounded number of times; `None` when every try was busy).
    pub fn next(&mut self, busy: impl Fn(u64) -> bool) -> Option<(Op, u64)> {
        let op = match self.read_percent {
            100 => Op::Read,
            0 => Op::Write,
            p => {
                if self.rng.below(100) < u64::from(p) {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        };
        for _ in 0..64 {
            let unit = if self.random {
                self.rng.below(self.units)
            } else {
                let u = self.next_unit;
                self.next_unit = (u + 1) % self.units;
                u
            };
            if !busy(unit) {
                return Some((op, unit));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_wraps_and_skips_busy_units() {
        let mut w = Workload::new(Pattern::Write, 0, 3, 1);
        let units: Vec<u64> = (0..4)
            .filter_map(|_| w.next(|_| false))
            .map(|(_, u)| u)
            .collect();
        assert_eq!(units, [0, 1, 2, 0]);
        assert_eq!(w.next(|u| u == 1), Some((Op::Write, 2)));
        assert_eq!(w.next(|_| true), None);
    }

    #[test]
    fn random_mix_is_roughly_the_asked_ratio_and_in_range() {
        let mut w = Workload::new(Pattern::Randrw, 70, 1000, 42);
        let mut reads = 0;
        for _ in 0..10_000 {
            let (op, unit) = w.next(|_| false).expect("free");
            assert!(unit < 1000);
            reads += u32::from(op == Op::Read);
        }
        assert!((6500..7500).contains(&reads), "{reads} reads");
    }
}
