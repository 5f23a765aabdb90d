//! Counters and the latency histogram of a run, and the report made from them.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::options::Pattern;

/// Latencies are recorded in nanoseconds, 3 significant digits, up to one minute.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

pub struct Stats {
    latency: Histogram<u64>,
    read_latency: Histogram<u64>,
    write_latency: Histogram<u64>,
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    pub read_bytes: u64,
    pub io_errors: u64,
    pub verify_errors: u64,
    /// `--verify` reads of blocks this run had not written: not checked (fio's rule).
    pub unverified_reads: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .expect("constant bounds: low >= 1, high >= 2 * low, 3 significant digits")
}

fn summary(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    let q = |q: f64| us(h.value_at_quantile(q));
    Latency {
        avg: h.mean() / 1000.0,
        min: us(h.min()),
        p50: q(0.50),
        p90: q(0.90),
        p99: q(0.99),
        p99_9: q(0.999),
        max: us(h.max()),
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            latency: histogram(),
            read_latency: histogram(),
            write_latency: histogram(),
            reads: 0,
            writes: 0,
            bytes: 0,
            read_bytes: 0,
            io_errors: 0,
            verify_errors: 0,
            unverified_reads: 0,
        }
    }

    pub fn ios(&self) -> u64 {
        self.reads + self.writes
    }

    pub fn record(&mut self, latency: Duration, is_read: bool, bytes: usize) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(ns);
        if is_read {
            self.reads += 1;
            self.read_bytes += bytes as u64;
            self.read_latency.saturating_record(ns);
        } else {
            self.writes += 1;
            self.write_latency.saturating_record(ns);
        }
        self.bytes += bytes as u64;
    }

    pub fn mean_latency_us(&self) -> f64 {
        self.latency.mean() / 1000.0
    }

    pub fn latency_summary(&self) -> Latency {
        summary(&self.latency)
    }

    /// Reads and writes apart, when the run did both.
    pub fn by_op(&self, secs: f64) -> Option<(OpFigures, OpFigures)> {
        if self.reads == 0 || self.writes == 0 {
            return None;
        }
        let figures = |ios: u64, bytes: u64, h: &Histogram<u64>| OpFigures {
            ios,
            iops: ios as f64 / secs,
            mib_s: bytes as f64 / secs / f64::from(1 << 20),
            latency_us: summary(h),
        };
        Some((
            figures(self.reads, self.read_bytes, &self.read_latency),
            figures(
                self.writes,
                self.bytes - self.read_bytes,
                &self.write_latency,
            ),
        ))
    }
}

/// One kind of operation's figures in a mixed run.
#[derive(Debug, Clone, Serialize)]
pub struct OpFigures {
    pub ios: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub latency_us: Latency,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency figures in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub avg: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    pub max: f64,
}

/// What a run reports, printed as text or as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `tcp` or `vfio-user`.
    pub transport: &'static str,
    /// An address or a socket path.
    pub target: String,
    pub subnqn: String,
    pub nsid: u32,
    pub block_size: usize,
    pub pattern: Pattern,
    pub rwmixread: u8,
    pub io_size: usize,
    pub queue_depth: u16,
    pub connections: u16,
    pub header_digest: bool,
    pub data_digest: bool,
    pub elapsed_s: f64,
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub latency_us: Latency,
    /// Process CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    pub io_errors: u64,
    /// The status of the first failed I/O.
    pub first_io_error: Option<String>,
    /// The initiator spun on its queues instead of sleeping.
    pub busy_poll: bool,
    /// vfio-user: how doorbells reached the controller, `trapped` (messages) or `mapped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doorbells: Option<&'static str>,
    /// vfio-user: the I/O queues used shadow doorbells (Doorbell Buffer Config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_doorbells: Option<bool>,
    /// vfio-user: I/O queue doorbell writes that reached the controller over the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doorbell_writes: Option<u64>,
    /// vfio-user: shadow doorbell updates of the I/O queues over the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_updates: Option<u64>,
    pub verify: bool,
    pub verify_errors: u64,
    /// What was wrong with the first read that failed verification.
    pub first_verify_error: Option<String>,
    /// Reads of blocks this run had not written, which `--verify` does not check.
    pub unverified_reads: u64,
    /// Blocks written before the measurement (`--prefill`), and how long that took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefilled: Option<Prefill>,
    /// Controllers, each with `connections` I/O queues.
    pub controllers: u16,
    /// The submission rate asked for (`--rate`), in I/Os per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Reads and writes apart, in a run that did both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<OpFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<OpFigures>,
}

/// What `--prefill` wrote.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Prefill {
    pub ios: u64,
    pub elapsed_s: f64,
}

impl Report {
    /// Human-readable lines, in the spirit of spdk_nvme_perf's summary.
    pub fn to_text(&self) -> String {
        let l = &self.latency_us;
        let mut text = format!(
            "{}{} nsid {} ({} B blocks) {} {} B qd {} x {} {}{}{}{}\n\
             {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n\
             {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}\n\
             {} I/Os in {:.3} s ({} reads, {} writes), initiator CPU {:.1}% of a core\n",
            if self.transport == "tcp" {
                String::new()
            } else {
                format!("{} ", self.transport)
            },
            self.target,
            self.nsid,
            self.block_size,
            self.pattern.name(),
            self.io_size,
            self.queue_depth,
            self.connections,
            match (self.doorbells, self.shadow_doorbells) {
                (None, _) => "connection(s)".to_owned(),
                (Some(d), Some(true)) => format!("queue(s), {d} doorbells behind shadows"),
                (Some(d), _) => format!("queue(s), {d} doorbells"),
            },
            if self.controllers > 1 {
                format!(" x {} controllers", self.controllers)
            } else {
                String::new()
            },
            match (self.header_digest, self.data_digest) {
                (false, false) => "",
                (true, false) => ", header digest",
                (false, true) => ", data digest",
                (true, true) => ", header+data digests",
            },
            self.rate
                .map_or_else(String::new, |r| format!(", at {r} IOPS")),
            "IOPS",
            "MiB/s",
            "avg us",
            "min us",
            "p50 us",
            "p90 us",
            "p99 us",
            "p99.9 us",
            "max us",
            self.iops,
            self.mib_s,
            l.avg,
            l.min,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.max,
            self.ios,
            self.elapsed_s,
            self.reads,
            self.writes,
            self.cpu_percent,
        );
        for (name, figures) in [("reads", &self.read), ("writes", &self.write)] {
            if let Some(f) = figures {
                let l = &f.latency_us;
                let iops = format!("{name} {:.0}", f.iops);
                text.push_str(&format!(
                    "{iops:>12} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}\n",
                    f.mib_s, l.avg, l.min, l.p50, l.p90, l.p99, l.p99_9, l.max
                ));
            }
        }
        if let Some(p) = &self.prefilled {
            text.push_str(&format!(
                "prefilled {} I/Os in {:.3} s before the run\n",
                p.ios, p.elapsed_s
            ));
        }
        if let (Some(writes), Some(updates)) = (self.doorbell_writes, self.shadow_updates) {
            text.push_str(&format!(
                "{writes} I/O doorbell writes for {updates} shadow doorbell updates\n"
            ));
        }
        if let Some(first) = &self.first_io_error {
            text.push_str(&format!("{} I/Os failed, first: {first}\n", self.io_errors));
        }
        if self.verify {
            text.push_str(&format!("verify errors: {}", self.verify_errors));
            if let Some(first) = &self.first_verify_error {
                text.push_str(&format!(", first: {first}"));
            }
            if self.unverified_reads > 0 {
                text.push_str(&format!(
                    "; {} reads of blocks this run had not written were not checked (--prefill writes them all first)",
                    self.unverified_reads
                ));
            }
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_microseconds() {
        let mut s = Stats::new();
        for us in 1..=1000u64 {
            s.record(Duration::from_micros(us), us % 2 == 0, 4096);
        }
        assert_eq!((s.reads, s.writes, s.bytes), (500, 500, 1000 * 4096));
        let l = s.latency_summary();
        assert!((l.min - 1.0).abs() < 0.01, "{l:?}");
        assert!((l.p50 - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max - 1000.0).abs() < 1.0, "{l:?}");
        assert!((l.avg - 500.5).abs() < 1.0, "{l:?}");
    }
}
