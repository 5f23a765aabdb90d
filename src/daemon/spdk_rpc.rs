//! SPDK's JSON-RPC methods, so SPDK's tools (`scripts/rpc.py`, `spdk_top`) read the target
//! unchanged: the field names, nesting and meanings of SPDK v26.05, whose `spdk_top` decodes
//! most of these answers strictly (an extra or a missing field stops it).
//!
//! What differs is said where it does: a *thread* is a reactor (one per core, named like
//! SPDK's poll group threads), a *poller* is what that reactor runs (listeners, connections,
//! its own sources of work; deadlines as timed pollers), a *bdev* is a namespace, named
//! `NQN/nsNSID`. Ticks are nanoseconds (`tick_rate` is 1e9).

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::Transports;
use crate::control::RpcError;
use crate::controller::{IoClass, IoStatsSnapshot, Namespace, Registry};
use crate::reactor::pollers::{PollerInfo, PollerKind, ReactorReport};
use crate::reactor::{Mailbox, ReactorConfig, ReactorMessage};
use crate::sys::CpuTimes;

/// Every tick count here is in nanoseconds.
const TICK_RATE: u64 = 1_000_000_000;

/// How long a reactor may take to describe itself before the answer goes without it.
const REACTOR_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// The SPDK methods this module answers.
pub const METHODS: &[&str] = &[
    "spdk_get_version",
    "rpc_get_methods",
    "framework_wait_init",
    "framework_get_scheduler",
    "framework_get_reactors",
    "thread_get_stats",
    "thread_get_pollers",
    "nvmf_get_subsystems",
    "nvmf_get_transports",
    "nvmf_get_stats",
    "bdev_get_iostat",
];

/// One reactor as these methods see it.
pub struct ReactorView {
    pub config: ReactorConfig,
    pub mailbox: Mailbox,
    /// Its core's CPU times when the target started (SPDK reports them since start).
    cpu_at_start: Option<CpuTimes>,
}

impl ReactorView {
    pub fn new(config: ReactorConfig, mailbox: Mailbox) -> Self {
        let cpu_at_start = crate::sys::cpu_times(lcore(&config));
        Self {
            config,
            mailbox,
            cpu_at_start,
        }
    }
}

/// What the SPDK methods read.
pub struct SpdkRpc {
    pub registry: Arc<Registry>,
    pub reactors: Vec<ReactorView>,
    pub transports: Transports,
    /// Every method the control socket answers, for `rpc_get_methods`.
    pub all_methods: Vec<&'static str>,
}

impl SpdkRpc {
    /// Answers `method` if it is one of SPDK's; `None` if it is not.
    pub fn call(&self, method: &str, params: &Value) -> Option<Result<Value, RpcError>> {
        let takes_none = || no_params(method, params);
        Some(match method {
            "spdk_get_version" => takes_none().map(|()| spdk_get_version()),
            "rpc_get_methods" => Ok(json!(self.all_methods)),
            // The target answers only once it serves: initialisation is over.
            "framework_wait_init" => Ok(Value::Bool(true)),
            "framework_get_scheduler" => takes_none().map(|()| self.framework_get_scheduler()),
            "framework_get_reactors" => takes_none().map(|()| self.framework_get_reactors()),
            "thread_get_stats" => takes_none().map(|()| self.thread_get_stats()),
            "thread_get_pollers" => takes_none().map(|()| self.thread_get_pollers()),
            "nvmf_get_subsystems" => Ok(nvmf_get_subsystems(&self.registry)),
            "nvmf_get_transports" => self.nvmf_get_transports(params),
            "nvmf_get_stats" => Ok(self.nvmf_get_stats()),
            "bdev_get_iostat" => self.bdev_get_iostat(params),
            _ => return None,
        })
    }

    fn framework_get_scheduler(&self) -> Value {
        // Reactors never move work between cores: SPDK's static scheduler, never run.
        json!({
            "scheduler_name": "static",
            "scheduler_period": 0,
            "isolated_core_mask": "",
            "scheduling_core": self.reactors.first().map_or(0, |r| lcore(&r.config)),
        })
    }

    fn framework_get_reactors(&self) -> Value {
        let reactors: Vec<Value> = self
            .reactors
            .iter()
            .map(|r| {
                let core = lcore(&r.config);
                let snap = r.mailbox.stats.snapshot();
                let cpu = crate::sys::cpu_times(core)
                    .zip(r.cpu_at_start)
                    .map(|(now, then)| CpuTimes {
                        user: now.user.saturating_sub(then.user),
                        system: now.system.saturating_sub(then.system),
                        irq: now.irq.saturating_sub(then.irq),
                    })
                    .unwrap_or_default();
                json!({
                    "lcore": core,
                    "numa_id": crate::sys::numa_node(core).map_or(-1, i64::from),
                    "tid": r.mailbox.stats.thread_id(),
                    "busy": snap.busy_ns,
                    "idle": snap.idle_ns,
                    "in_interrupt": r.config.interrupt_mode,
                    "irq": cpu.irq,
                    "sys": cpu.system,
                    "usr": cpu.user,
                    "lw_threads": [{
                        "name": thread_name(&r.config),
                        "id": thread_id(&r.config),
                        "cpumask": cpumask(core),
                        "elapsed": nanos(r.mailbox.stats.age()),
                    }],
                })
            })
            .collect();
        json!({"tick_rate": TICK_RATE, "pid": std::process::id(), "reactors": reactors})
    }

    /// Asks every reactor what it runs; a reactor that does not answer in time is left out.
    fn ask_reactors(&self) -> Vec<(&ReactorView, ReactorReport)> {
        let (reply, answers) = mpsc::sync_channel(self.reactors.len().max(1));
        for r in &self.reactors {
            r.mailbox
                .send(ReactorMessage::DescribePollers(reply.clone()));
        }
        drop(reply);
        let deadline = Instant::now() + REACTOR_REPLY_TIMEOUT;
        let mut reports = Vec::new();
        while reports.len() < self.reactors.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match answers.recv_timeout(left) {
                Ok(report) => reports.push(report),
                Err(_) => break,
            }
        }
        self.reactors
            .iter()
            .filter_map(|r| {
                let at = reports.iter().position(|p| p.reactor == r.config.index)?;
                Some((r, reports.swap_remove(at)))
            })
            .collect()
    }

    fn thread_get_stats(&self) -> Value {
        let threads: Vec<Value> = self
            .ask_reactors()
            .into_iter()
            .map(|(r, report)| {
                let snap = r.mailbox.stats.snapshot();
                let count = |kind| report.pollers.iter().filter(|p| p.kind == kind).count();
                json!({
                    "name": thread_name(&r.config),
                    "id": thread_id(&r.config),
                    "cpumask": cpumask(lcore(&r.config)),
                    "busy": snap.busy_ns,
                    "idle": snap.idle_ns,
                    "active_pollers_count": count(PollerKind::Active),
                    "timed_pollers_count": count(PollerKind::Timed),
                    "paused_pollers_count": 0,
                })
            })
            .collect();
        json!({"tick_rate": TICK_RATE, "threads": threads})
    }

    fn thread_get_pollers(&self) -> Value {
        let threads: Vec<Value> = self
            .ask_reactors()
            .into_iter()
            .map(|(r, report)| {
                let list = |kind| {
                    report
                        .pollers
                        .iter()
                        .filter(|p| p.kind == kind)
                        .map(poller_json)
                        .collect::<Vec<_>>()
                };
                json!({
                    "name": thread_name(&r.config),
                    "id": thread_id(&r.config),
                    "active_pollers": list(PollerKind::Active),
                    "timed_pollers": list(PollerKind::Timed),
                    "paused_pollers": [],
                })
            })
            .collect();
        json!({"tick_rate": TICK_RATE, "threads": threads})
    }

    /// `nvmf_get_transports [{trtype}]`: the declared transports with their options.
    fn nvmf_get_transports(&self, params: &Value) -> Result<Value, RpcError> {
        let wanted = params.get("trtype").and_then(Value::as_str);
        let declared = [
            (
                "TCP",
                self.transports.tcp.as_ref().map(serde_json::to_value),
            ),
            (
                "RDMA",
                self.transports.rdma.as_ref().map(serde_json::to_value),
            ),
            (
                "VFIOUSER",
                self.transports.vfiouser.as_ref().map(serde_json::to_value),
            ),
        ];
        let mut out = Vec::new();
        for (trtype, options) in declared {
            let Some(Ok(Value::Object(mut options))) = options else {
                continue;
            };
            if wanted.is_some_and(|w| !w.eq_ignore_ascii_case(trtype)) {
                continue;
            }
            let mut entry = serde_json::Map::new();
            entry.insert("trtype".into(), trtype.into());
            entry.append(&mut options);
            out.push(Value::Object(entry));
        }
        if let (Some(wanted), true) = (wanted, out.is_empty()) {
            return Err(RpcError {
                code: -19,
                message: format!("transport '{wanted}' does not exist"),
            });
        }
        Ok(Value::Array(out))
    }

    /// `nvmf_get_stats`: a poll group per reactor.
    fn nvmf_get_stats(&self) -> Value {
        let namespaces = all_namespaces(&self.registry);
        let transports: Vec<Value> = [
            ("TCP", self.transports.tcp.is_some()),
            ("RDMA", self.transports.rdma.is_some()),
            ("VFIOUSER", self.transports.vfiouser.is_some()),
        ]
        .into_iter()
        .filter(|(_, declared)| *declared)
        .map(|(trtype, _)| json!({"trtype": trtype}))
        .collect();
        let groups: Vec<Value> = self
            .ask_reactors()
            .into_iter()
            .map(|(r, report)| {
                let completed: u64 = namespaces
                    .iter()
                    .map(|(_, ns)| ns.stats().completed_on(r.config.index))
                    .sum();
                let now = report.queues;
                let closed = report.closed;
                json!({
                    "name": thread_name(&r.config),
                    "admin_qpairs": now.admin + closed.admin,
                    "io_qpairs": now.io + closed.io,
                    "current_admin_qpairs": now.admin,
                    "current_io_qpairs": now.io,
                    "current_unassociated_qpairs": now.unassociated,
                    "pending_bdev_io": report.in_flight,
                    "completed_nvme_io": completed,
                    "transports": transports,
                })
            })
            .collect();
        json!({"tick_rate": TICK_RATE, "poll_groups": groups})
    }

    /// `bdev_get_iostat [{names} | {name}]`: each namespace's figures.
    fn bdev_get_iostat(&self, params: &Value) -> Result<Value, RpcError> {
        if let Some(mode) = params
            .get("reset_mode")
            .and_then(Value::as_str)
            .filter(|m| *m != "none")
        {
            return Err(RpcError::invalid_params(format!(
                "reset_mode {mode:?} is not supported: the figures only grow (Prometheus reads them as counters); take differences of two readings"
            )));
        }
        let mut names: Option<Vec<&str>> = params
            .get("names")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect());
        if let Some(name) = params.get("name").and_then(Value::as_str) {
            names.get_or_insert_with(Vec::new).push(name);
        }
        let namespaces = all_namespaces(&self.registry);
        if let Some(names) = &names {
            if let Some(missing) = names
                .iter()
                .find(|name| !namespaces.iter().any(|(n, _)| n == *name))
            {
                return Err(RpcError {
                    code: -19,
                    message: format!("no bdev (namespace) named {missing}"),
                });
            }
        }
        let ticks = crate::sys::monotonic_usec().saturating_mul(1000);
        let chosen = namespaces
            .iter()
            .filter(|(name, _)| names.as_ref().is_none_or(|n| n.contains(&name.as_str())));
        if params.get("per_channel").and_then(Value::as_bool) == Some(true) {
            // SPDK's channels are a bdev's per-thread figures: here, each reactor's shard.
            let (Some([name]), Some((_, ns))) = (names.as_deref(), chosen.clone().next()) else {
                return Err(RpcError::invalid_params(
                    "per_channel needs exactly one bdev in names",
                ));
            };
            let channels: Vec<Value> = ns
                .stats()
                .per_reactor()
                .iter()
                .zip(1u64..)
                .map(|(snap, thread_id)| {
                    let mut out = stats_json(snap);
                    out.insert("thread_id".into(), thread_id.into());
                    Value::Object(out)
                })
                .collect();
            return Ok(json!({
                "tick_rate": TICK_RATE,
                "ticks": ticks,
                "name": name,
                "channels": channels,
            }));
        }
        let bdevs: Vec<Value> = chosen.map(|(name, ns)| iostat_json(name, ns)).collect();
        Ok(json!({
            "tick_rate": TICK_RATE,
            "ticks": ticks,
            "bdevs": bdevs,
        }))
    }
}

/// SPDK refuses parameters where a method takes none; so do we (an empty object passes).
fn no_params(method: &str, params: &Value) -> Result<(), RpcError> {
    match params {
        Value::Null => Ok(()),
        Value::Object(map) if map.is_empty() => Ok(()),
        _ => Err(RpcError::invalid_params(format!(
            "'{method}' requires no arguments"
        ))),
    }
}

fn spdk_get_version() -> Value {
    let number = |s: &str| s.parse::<u32>().unwrap_or(0);
    json!({
        "version": format!("nvmf-tgt v{}", env!("CARGO_PKG_VERSION")),
        "fields": {
            "major": number(env!("CARGO_PKG_VERSION_MAJOR")),
            "minor": number(env!("CARGO_PKG_VERSION_MINOR")),
            "patch": number(env!("CARGO_PKG_VERSION_PATCH")),
            "suffix": env!("CARGO_PKG_VERSION_PRE"),
            "commit": env!("NVMF_TGT_COMMIT"),
        },
    })
}

fn poller_json(p: &PollerInfo) -> Value {
    let mut out = json!({
        "name": p.name,
        "id": p.id,
        // The listing is taken between turns, when nothing runs.
        "state": "waiting",
        "run_count": p.count.runs,
        "busy_count": p.count.busy,
    });
    if let Some(due) = p.due_in_ns {
        out["period_ticks"] = due.into();
    }
    out
}

fn iostat_json(name: &str, ns: &Namespace) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("name".into(), name.into());
    out.append(&mut stats_json(&ns.stats().snapshot()));
    Value::Object(out)
}

/// `spdk_bdev_dump_io_stat_json`'s fields.
fn stats_json(snap: &IoStatsSnapshot) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for (class, prefix, verb) in [
        (IoClass::Read, "read", "read"),
        (IoClass::Write, "write", "written"),
        (IoClass::Unmap, "unmap", "unmapped"),
    ] {
        let c = snap.class(class);
        let ops = if class == IoClass::Unmap {
            "num_unmap_ops".to_owned()
        } else {
            format!("num_{prefix}_ops")
        };
        out.insert(format!("bytes_{verb}"), c.bytes.into());
        out.insert(ops, c.ops.into());
        out.insert(format!("{prefix}_latency_ticks"), c.latency_ns.into());
        out.insert(
            format!("max_{prefix}_latency_ticks"),
            c.max_latency_ns.into(),
        );
        out.insert(
            format!("min_{prefix}_latency_ticks"),
            c.min_latency_ns.unwrap_or(0).into(),
        );
    }
    // No Copy command: always zero.
    for key in [
        "bytes_copied",
        "num_copy_ops",
        "copy_latency_ticks",
        "max_copy_latency_ticks",
        "min_copy_latency_ticks",
    ] {
        out.insert(key.into(), 0.into());
    }
    let mut errors = serde_json::Map::new();
    if snap.failed > 0 {
        errors.insert("failed".into(), snap.failed.into());
    }
    out.insert("io_error".into(), Value::Object(errors));
    out
}

/// SPDK's `nvmf_get_subsystems`, with SPDK's field names.
fn nvmf_get_subsystems(registry: &Registry) -> Value {
    let listener = |l: &crate::controller::ListenerAddr| {
        json!({
            "trtype": l.transport_name(),
            "adrfam": match l.adrfam() {
                Some(crate::controller::AddressFamily::Ipv4) => "IPv4",
                Some(crate::controller::AddressFamily::Ipv6) => "IPv6",
                None => "",
            },
            "traddr": l.traddr(),
            "trsvcid": l.trsvcid(),
        })
    };
    let discovery = registry.discovery_subsystem();
    let mut out = vec![json!({
        "nqn": discovery.nqn(),
        "subtype": "Discovery",
        "listen_addresses": [],
        "allow_any_host": true,
        "hosts": [],
    })];
    for s in registry.subsystems() {
        let access = s.access();
        let namespaces: Vec<Value> = s
            .namespaces()
            .iter()
            .map(|ns| {
                let name = bdev_name(s.nqn(), ns);
                json!({
                    "nsid": ns.nsid(),
                    "bdev_name": name,
                    "name": name,
                    "uuid": crate::config::HexId(ns.uuid()).to_string(),
                    "nguid": ns.nguid().iter().map(|b| format!("{b:02X}")).collect::<String>(),
                    "eui64": ns.eui64().iter().map(|b| format!("{b:02X}")).collect::<String>(),
                })
            })
            .collect();
        out.push(json!({
            "nqn": s.nqn(),
            "subtype": "NVMe",
            "listen_addresses": access.listeners.iter().map(listener).collect::<Vec<_>>(),
            "allow_any_host": access.allow_any_host,
            "hosts": access.hosts.iter().map(|h| json!({"nqn": h})).collect::<Vec<_>>(),
            "serial_number": s.serial(),
            "model_number": s.model(),
            "max_namespaces": s.max_namespaces(),
            "min_cntlid": 1,
            "max_cntlid": 0xFFEF,
            "namespaces": namespaces,
        }));
    }
    Value::Array(out)
}

/// The name a namespace goes by where SPDK names a bdev.
pub fn bdev_name(nqn: &str, ns: &Namespace) -> String {
    format!("{nqn}/ns{}", ns.nsid().0)
}

/// Every namespace of every subsystem, with its bdev name.
fn all_namespaces(registry: &Registry) -> Vec<(String, Arc<Namespace>)> {
    registry
        .subsystems()
        .iter()
        .flat_map(|s| {
            s.namespaces()
                .into_iter()
                .map(|ns| (bdev_name(s.nqn(), &ns), ns))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The core a reactor runs on (its index where it is not pinned).
fn lcore(config: &ReactorConfig) -> usize {
    config.core.unwrap_or(config.index)
}

/// Named like SPDK's nvmf poll group threads, which is what a reactor is.
fn thread_name(config: &ReactorConfig) -> String {
    format!("nvmf_tgt_poll_group_{:03}", config.index)
}

/// SPDK numbers threads from 1.
fn thread_id(config: &ReactorConfig) -> u64 {
    config.index as u64 + 1
}

/// A one-core mask the way SPDK prints a cpuset: hex digits, no `0x`, no leading zero.
fn cpumask(core: usize) -> String {
    let mut digits = vec![0u8; core / 4 + 1];
    digits[core / 4] = 1 << (core % 4);
    digits
        .iter()
        .rev()
        .map(|d| char::from_digit(u32::from(*d), 16).unwrap_or('0'))
        .collect()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_read_like_spdk_cpusets() {
        assert_eq!(cpumask(0), "1");
        assert_eq!(cpumask(1), "2");
        assert_eq!(cpumask(3), "8");
        assert_eq!(cpumask(4), "10");
        assert_eq!(cpumask(9), "200");
    }

    #[test]
    fn methods_that_take_nothing_refuse_something() {
        assert!(no_params("x", &Value::Null).is_ok());
        assert!(no_params("x", &json!({})).is_ok());
        let err = no_params("thread_get_stats", &json!({"a": 1})).expect_err("refused");
        assert!(err.message.contains("thread_get_stats"));
    }
}
