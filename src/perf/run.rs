//! The measurement loop: one thread drives every I/O queue of a session round-robin,
//! whatever the transport. Per queue and pass: take what completed, refill the freed slots,
//! send the batch. When no queue made progress the thread spins (`busy_poll`) or sleeps in
//! the session's `wait`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::io::{Done, Namespace, Queue, Session};
use super::stats::{Report, Stats};
use super::verify::{self, Mismatch};
use super::workload::{Op, Workload};
use super::{Limit, PerfConfig, PerfError, Target, session, vfio_user};
use crate::nvme::Status;
use crate::sys;

/// A once-per-second figure for the live progress line.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    pub iops: f64,
    pub mib_s: f64,
    pub avg_latency_us: f64,
}

/// What the run has seen besides the figures: the first failure of each kind.
#[derive(Debug, Default)]
struct Firsts {
    io_error: Option<Status>,
    mismatch: Option<Mismatch>,
}

/// Book-keeping for `--verify`: units with an I/O in flight (never two at once on one unit)
/// and the generation of the last completed write of each unit.
#[derive(Default)]
struct VerifyState {
    in_flight: HashSet<u64>,
    written: HashMap<u64, u64>,
    next_generation: u64,
}

/// Connects, runs the workload, disconnects; `progress` is called about once a second.
pub fn run(cfg: &PerfConfig, progress: impl FnMut(&Progress)) -> Result<Report, PerfError> {
    if let Some(core) = cfg.core {
        sys::pin_current_thread(core).map_err(|source| PerfError::Pin { core, source })?;
    }
    match &cfg.target {
        Target::Tcp(tcp) => {
            let mut session = session::Session::connect(cfg, tcp)?;
            measure(cfg, &mut session, progress)
        }
        Target::VfioUser(target) => {
            let mut session = vfio_user::Session::connect(cfg, target)?;
            measure(cfg, &mut session, progress)
        }
    }
}

/// Runs the workload on a connected session.
pub fn measure<S: Session>(
    cfg: &PerfConfig,
    session: &mut S,
    mut progress: impl FnMut(&Progress),
) -> Result<Report, PerfError> {
    let ns = session.namespace();
    let units = ns.blocks * ns.block_size as u64 / cfg.io_size as u64;
    let mut driver = Driver {
        cfg,
        ns,
        nlb: (cfg.io_size / ns.block_size) as u64,
        workload: Workload::new(cfg.pattern, cfg.rwmixread, units, cfg.seed),
        stats: Stats::new(),
        verify: VerifyState {
            next_generation: cfg.seed.rotate_left(32),
            ..VerifyState::default()
        },
        firsts: Firsts::default(),
        submitted: 0,
        done: Vec::with_capacity(usize::from(cfg.queue_depth)),
    };
    let cpu_start = sys::own_cpu_time().unwrap_or_default();
    let start = Instant::now();
    driver.drive(session, start, &mut progress)?;
    let elapsed = start.elapsed();
    let cpu = sys::own_cpu_time()
        .unwrap_or_default()
        .saturating_sub(cpu_start);
    Ok(driver.report(session, elapsed, cpu))
}

struct Driver<'a> {
    cfg: &'a PerfConfig,
    ns: Namespace,
    nlb: u64,
    workload: Workload,
    stats: Stats,
    verify: VerifyState,
    firsts: Firsts,
    submitted: u64,
    done: Vec<Done>,
}

impl Driver<'_> {
    fn drive<S: Session>(
        &mut self,
        session: &mut S,
        start: Instant,
        progress: &mut impl FnMut(&Progress),
    ) -> Result<(), PerfError> {
        let end = match self.cfg.limit {
            Limit::Time(t) => Some(start + t),
            Limit::Count(_) => None,
        };
        let mut last_progress = start;
        let mut next_tick = start + Duration::from_secs(1);
        let mut tick_ios = 0;
        let mut tick_bytes = 0;
        loop {
            let now = Instant::now();
            let stop_submitting = match self.cfg.limit {
                Limit::Time(_) => end.is_some_and(|e| now >= e),
                Limit::Count(n) => self.submitted >= n,
            };
            let mut moved = false;
            let mut outstanding = 0;
            for q in session.queues() {
                if q.poll_completions(&mut self.done)? {
                    moved = true;
                    self.complete(q, Instant::now());
                }
                if !stop_submitting {
                    self.refill(q, Instant::now())?;
                }
                moved |= q.flush()?;
                outstanding += q.outstanding();
            }
            if stop_submitting && outstanding == 0 {
                return Ok(());
            }
            let now = Instant::now();
            if moved {
                last_progress = now;
            } else if now.duration_since(last_progress) > self.cfg.timeout {
                return Err(PerfError::Timeout {
                    timeout: self.cfg.timeout,
                    during: "waiting for I/O completions",
                });
            } else if !self.cfg.busy_poll {
                let wait = end
                    .map_or(Duration::from_millis(100), |e| {
                        e.saturating_duration_since(now)
                    })
                    .clamp(Duration::from_micros(1), Duration::from_millis(100));
                session.wait(wait)?;
            }
            if now >= next_tick {
                let secs = now.duration_since(next_tick - Duration::from_secs(1));
                let secs = secs.as_secs_f64().max(1e-9);
                progress(&Progress {
                    elapsed: now.duration_since(start),
                    iops: (self.stats.ios() - tick_ios) as f64 / secs,
                    mib_s: (self.stats.bytes - tick_bytes) as f64 / secs / f64::from(1 << 20),
                    avg_latency_us: self.stats.mean_latency_us(),
                });
                tick_ios = self.stats.ios();
                tick_bytes = self.stats.bytes;
                next_tick = now + Duration::from_secs(1);
            }
            session.housekeeping(now)?;
        }
    }

    /// Fills the free slots of `q` with new commands (sent by its `flush`).
    fn refill(&mut self, q: &mut impl Queue, now: Instant) -> Result<(), PerfError> {
        let limit = match self.cfg.limit {
            Limit::Count(n) => n,
            Limit::Time(_) => u64::MAX,
        };
        while self.submitted < limit {
            let Some(cid) = q.alloc() else { break };
            let verify = self.cfg.verify;
            let in_flight = &self.verify.in_flight;
            let Some((op, unit)) = self.workload.next(|u| verify && in_flight.contains(&u)) else {
                q.release(cid);
                break;
            };
            let slot = q.slot_mut(cid);
            slot.op = op;
            slot.slba = unit * self.nlb;
            if verify {
                self.verify.in_flight.insert(unit);
                if op == Op::Write {
                    slot.generation = self.verify.next_generation;
                    self.verify.next_generation = self.verify.next_generation.wrapping_add(1);
                    verify::stamp(
                        &mut slot.buf,
                        self.ns.block_size,
                        slot.slba,
                        slot.generation,
                    );
                }
            }
            q.submit(cid, now)?;
            self.submitted += 1;
        }
        Ok(())
    }

    /// Accounts for the commands `poll_completions` finished and frees their slots.
    fn complete(&mut self, q: &mut impl Queue, now: Instant) {
        // Taken out and put back so its capacity is reused: no allocation per pass.
        let mut finished = std::mem::take(&mut self.done);
        for done in finished.drain(..) {
            let slot = q.slot(done.cid);
            let unit = slot.slba / self.nlb;
            if done.status.is_success() {
                let is_read = slot.op == Op::Read;
                self.stats.record(
                    now.duration_since(slot.submitted),
                    is_read,
                    self.cfg.io_size,
                );
                if self.cfg.verify {
                    if is_read {
                        let expected = self.verify.written.get(&unit).copied();
                        if let Err(m) =
                            verify::check(&slot.buf, self.ns.block_size, slot.slba, expected)
                        {
                            self.stats.verify_errors += 1;
                            self.firsts.mismatch.get_or_insert(m);
                        }
                    } else {
                        self.verify.written.insert(unit, slot.generation);
                    }
                }
            } else {
                self.stats.io_errors += 1;
                self.firsts.io_error.get_or_insert(done.status);
            }
            if self.cfg.verify {
                self.verify.in_flight.remove(&unit);
            }
            q.release(done.cid);
        }
        self.done = finished;
    }

    fn report(&self, session: &impl Session, elapsed: Duration, cpu: Duration) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let cfg = self.cfg;
        let target = session.target();
        let doorbells = session.doorbells();
        Report {
            transport: target.transport,
            target: target.address,
            subnqn: target.subnqn,
            nsid: self.ns.nsid,
            block_size: self.ns.block_size,
            pattern: cfg.pattern,
            rwmixread: cfg.pattern.read_percent(cfg.rwmixread),
            io_size: cfg.io_size,
            queue_depth: cfg.queue_depth,
            connections: cfg.connections,
            header_digest: matches!(&cfg.target, Target::Tcp(t) if t.header_digest),
            data_digest: matches!(&cfg.target, Target::Tcp(t) if t.data_digest),
            elapsed_s: secs,
            ios: self.stats.ios(),
            reads: self.stats.reads,
            writes: self.stats.writes,
            iops: self.stats.ios() as f64 / secs,
            mib_s: self.stats.bytes as f64 / secs / f64::from(1 << 20),
            latency_us: self.stats.latency_summary(),
            cpu_percent: cpu.as_secs_f64() / secs * 100.0,
            io_errors: self.stats.io_errors,
            first_io_error: self.firsts.io_error.map(|s| s.to_string()),
            busy_poll: cfg.busy_poll,
            doorbells: doorbells.map(|d| d.how),
            shadow_doorbells: doorbells.map(|d| d.shadow),
            doorbell_writes: doorbells.map(|d| d.writes),
            shadow_updates: doorbells.filter(|d| d.shadow).map(|d| d.shadow_updates),
            verify: cfg.verify,
            verify_errors: self.stats.verify_errors,
            first_verify_error: self.firsts.mismatch.map(|m| m.to_string()),
        }
    }
}
