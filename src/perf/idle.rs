//! `--idle`: hosts that connect and then do nothing but keep their controllers alive, to
//! measure what a target costs when nobody is doing I/O.
//!
//! Each of `connections` controllers gets an admin queue and one I/O queue. The thread then
//! sleeps, waking every `KATO_MS / 2` to send a Keep Alive on each admin queue, and sends one
//! last Keep Alive on each at the end so a controller the target dropped shows up as an error.

use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::session::{self, KATO_MS, Session};
use super::{Limit, PerfConfig, PerfError, Target};
use crate::sys;

/// How often an idle host sends Keep Alive: half the timeout it asked for.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(KATO_MS as u64 / 2);

/// What an idle run reports, as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub target: String,
    pub subnqn: String,
    /// Controllers connected, each with an admin queue and one I/O queue.
    pub controllers: u16,
    pub elapsed_s: f64,
    /// Keep Alive commands sent and answered, the final round included.
    pub keep_alives: u64,
    /// Process CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
}

impl IdleReport {
    pub fn to_text(&self) -> String {
        format!(
            "{} {}: {} idle controller(s) for {:.3} s, {} keep alives, initiator CPU {:.1}% of a core\n",
            self.target,
            self.subnqn,
            self.controllers,
            self.elapsed_s,
            self.keep_alives,
            self.cpu_percent,
        )
    }
}

/// Connects `cfg.connections` controllers and keeps them alive, idle, for the time limit
/// (`Limit::Count` counts keep-alive rounds instead).
pub fn idle(cfg: &PerfConfig) -> Result<IdleReport, PerfError> {
    let Target::Tcp(tcp) = &cfg.target else {
        return Err(PerfError::Invalid(
            "--idle is for NVMe/TCP targets (a PCIe controller has no Keep Alive)".into(),
        ));
    };
    if cfg.connections == 0 {
        return Err(PerfError::Invalid(
            "--connections must be at least 1".into(),
        ));
    }
    if let Some(core) = cfg.core {
        sys::pin_current_thread(core).map_err(|source| PerfError::Pin { core, source })?;
    }
    let one_queue = PerfConfig {
        connections: 1,
        ..cfg.clone()
    };
    let mut sessions = (0..cfg.connections)
        .map(|_| Session::connect(&one_queue, tcp))
        .collect::<Result<Vec<_>, _>>()?;

    let cpu_start = sys::own_cpu_time().unwrap_or_default();
    let start = Instant::now();
    let mut keep_alives = 0;
    let mut rounds = 0;
    let mut next_keep_alive = start + KEEP_ALIVE_EVERY;
    loop {
        let now = Instant::now();
        let wake = match cfg.limit {
            Limit::Time(t) => {
                let end = start + t;
                if now >= end {
                    break;
                }
                next_keep_alive.min(end)
            }
            Limit::Count(n) if rounds >= n => break,
            Limit::Count(_) => next_keep_alive,
        };
        if now < wake {
            thread::sleep(wake - now);
            continue;
        }
        keep_alives += keep_alive_all(cfg, &mut sessions)?;
        rounds += 1;
        next_keep_alive = Instant::now() + KEEP_ALIVE_EVERY;
    }
    keep_alives += keep_alive_all(cfg, &mut sessions)?;
    let elapsed = start.elapsed();
    let cpu = sys::own_cpu_time()
        .unwrap_or_default()
        .saturating_sub(cpu_start);
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(IdleReport {
        target: tcp.addr.to_string(),
        subnqn: tcp.subnqn.clone(),
        controllers: cfg.connections,
        elapsed_s: secs,
        keep_alives,
        cpu_percent: cpu.as_secs_f64() / secs * 100.0,
    })
}

fn keep_alive_all(cfg: &PerfConfig, sessions: &mut [Session]) -> Result<u64, PerfError> {
    for s in sessions.iter_mut() {
        s.admin
            .keep_alive()
            .map_err(|e| session::host_error(cfg, "keep alive", e))?;
    }
    Ok(sessions.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_well_inside_the_timeout() {
        assert_eq!(KEEP_ALIVE_EVERY, Duration::from_secs(15));
        assert!(KEEP_ALIVE_EVERY < Duration::from_millis(u64::from(KATO_MS)));
    }
}
