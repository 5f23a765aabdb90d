//! The measurement loop: one thread drives every I/O queue of a session round-robin,
//! whatever the transport. Per queue and pass: take what completed, refill the freed slots,
//! send the batch. When no queue made progress the thread spins (`busy_poll`) or sleeps in
//! the session's `wait`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::io::{Done, Namespace, Queue, Session};
use super::stats::{Prefill, Report, Stats};
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
            if cfg.controllers > 1 {
                return Err(PerfError::Invalid(
                    "a vfio-user socket serves one VMM, one controller: --controllers must be 1"
                        .into(),
                ));
            }
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
    let mut verify = VerifyState {
        next_generation: cfg.seed.rotate_left(32),
        ..VerifyState::default()
    };
    let mut prefilled = None;
    if cfg.prefill {
        // Every unit once, in order, stamped; what it wrote is what the run verifies against.
        let fill = PerfConfig {
            pattern: super::Pattern::Write,
            limit: Limit::Count(units),
            verify: true,
            rate: None,
            ..cfg.clone()
        };
        let mut driver = Driver::new(&fill, ns, units, verify);
        let start = Instant::now();
        driver.drive(session, start, &mut |_: &Progress| {})?;
        if driver.stats.io_errors > 0 {
            return Err(PerfError::Invalid(format!(
                "--prefill: {} writes failed, first: {}",
                driver.stats.io_errors,
                driver
                    .firsts
                    .io_error
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            )));
        }
        prefilled = Some(Prefill {
            ios: driver.submitted,
            elapsed_s: start.elapsed().as_secs_f64(),
        });
        verify = driver.verify;
    }
    let mut driver = Driver::new(cfg, ns, units, verify);
    let cpu_start = sys::own_cpu_time().unwrap_or_default();
    let start = Instant::now();
    driver.drive(session, start, &mut progress)?;
    let elapsed = start.elapsed();
    let cpu = sys::own_cpu_time()
        .unwrap_or_default()
        .saturating_sub(cpu_start);
    let mut report = driver.report(session, elapsed, cpu);
    report.prefilled = prefilled;
    Ok(report)
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
    /// When the measurement started (`--rate` counts from it).
    start: Instant,
    done: Vec<Done>,
}

impl<'a> Driver<'a> {
    fn new(cfg: &'a PerfConfig, ns: Namespace, units: u64, verify: VerifyState) -> Self {
        Driver {
            cfg,
            ns,
            nlb: (cfg.io_size / ns.block_size) as u64,
            workload: Workload::new(cfg.pattern, cfg.rwmixread, units, cfg.seed),
            stats: Stats::new(),
            verify,
            firsts: Firsts::default(),
            submitted: 0,
            start: Instant::now(),
            done: Vec::with_capacity(usize::from(cfg.queue_depth)),
        }
    }

    /// I/Os `--rate` allows by `now` (all of them without it): one at the start, then the
    /// rate's worth per second.
    fn allowed(&self, now: Instant) -> u64 {
        match self.cfg.rate {
            None => u64::MAX,
            Some(rate) => {
                let secs = now.saturating_duration_since(self.start).as_secs_f64();
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let due = (secs * rate as f64) as u64;
                due.saturating_add(1)
            }
        }
    }

    /// When `--rate` allows the next I/O.
    fn next_allowed(&self) -> Option<Instant> {
        let rate = self.cfg.rate?;
        Some(self.start + Duration::from_secs_f64(self.submitted as f64 / rate as f64))
    }

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
        self.start = start;
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
                let mut wait = end
                    .map_or(Duration::from_millis(100), |e| {
                        e.saturating_duration_since(now)
                    })
                    .clamp(Duration::from_micros(1), Duration::from_millis(100));
                if let Some(next) = self.next_allowed() {
                    wait = wait.min(
                        next.saturating_duration_since(now)
                            .max(Duration::from_micros(1)),
                    );
                }
                session.wait(wait)?;
            }
            if self.cfg.rate.is_some() && outstanding == 0 {
                // Waiting for the rate is not the target's silence.
                last_progress = Instant::now();
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
        }
        .min(self.allowed(now));
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
                        // What this run wrote must read back with its generation. A
                        // block it has not written may hold anything (fio's rule): one
                        // without a stamp is counted, not an error; one stamped by an
                        // earlier run must still carry its own LBA and pattern.
                        let expected = self.verify.written.get(&unit).copied();
                        match verify::check(&slot.buf, self.ns.block_size, slot.slba, expected) {
                            Ok(()) => {}
                            Err(Mismatch::NoStamp { .. }) if expected.is_none() => {
                                self.stats.unverified_reads += 1;
                            }
                            Err(m) => {
                                self.stats.verify_errors += 1;
                                self.firsts.mismatch.get_or_insert(m);
                            }
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
            unverified_reads: self.stats.unverified_reads,
            prefilled: None,
            controllers: cfg.controllers,
            rate: cfg.rate,
            read: self.stats.by_op(secs).map(|(r, _)| r),
            write: self.stats.by_op(secs).map(|(_, w)| w),
        }
    }
}
