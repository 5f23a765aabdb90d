//! What `nvmf-tgt status` shows, answered over the control socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::config::{Config, MAX_FILE_BYTES};
use crate::control::{Handler, RpcError};
use crate::controller::Registry;
use crate::daemon::reload::{Reloader, TextPlan, Trigger};
use crate::reactor::{ReactorConfig, ReactorStats};
use crate::transport::buffer_pool::SharedPool;

/// What diagnostics call a declaration sent without a label.
const UNLABELLED: &str = "<plan>";

/// Everything the status methods read; shared with the control thread.
pub struct StatusReport {
    config: Config,
    config_path: PathBuf,
    registry: Arc<Registry>,
    reloader: Arc<Reloader>,
    reactors: Vec<(ReactorConfig, Arc<ReactorStats>)>,
    buffers: Arc<SharedPool>,
    started: Instant,
}

impl StatusReport {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        registry: Arc<Registry>,
        reloader: Arc<Reloader>,
        reactors: Vec<(ReactorConfig, Arc<ReactorStats>)>,
        buffers: Arc<SharedPool>,
        started: Instant,
    ) -> Self {
        Self {
            config,
            config_path,
            registry,
            reloader,
            reactors,
            buffers,
            started,
        }
    }

    /// The shared data buffer pool: its size and the buffers no reactor holds.
    fn buffer_pool_json(&self) -> Value {
        let limits = self.buffers.limits();
        json!({
            "num_shared_buffers": limits.num_shared_buffers,
            "buf_cache_size": limits.buf_cache_size,
            "io_unit_size": limits.io_unit_size,
            "available": self.buffers.available(),
        })
    }

    fn reactors_json(&self) -> Vec<Value> {
        self.reactors
            .iter()
            .map(|(cfg, stats)| {
                let snap = stats.snapshot();
                json!({
                    "index": cfg.index,
                    "core": cfg.core,
                    "interrupt_mode": cfg.interrupt_mode,
                    "busy_ns": snap.busy_ns,
                    "idle_ns": snap.idle_ns,
                    "events": snap.events,
                    "wakeups": snap.wakeups,
                    "connections": snap.connections,
                    "buffers": snap.buffers,
                })
            })
            .collect()
    }

    fn status(&self) -> Value {
        json!({
            "pid": std::process::id(),
            "name": self.reloader.with_live(|live| live.config.target.name.clone()),
            "declaration": self.reloader.status(),
            "config": self.config_path.display().to_string(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "interrupt_mode": self.config.target.interrupt_mode,
            "reactors": self.reactors_json(),
            "buffer_pool": self.buffer_pool_json(),
            "process_cpu_s": crate::sys::process_cpu_time(std::process::id())
                .map(|d| d.as_secs_f64()).ok(),
            "subsystems": subsystems_json(&self.registry),
        })
    }

    /// SPDK's `framework_get_reactors`, with SPDK's field names; ticks are nanoseconds.
    fn framework_get_reactors(&self) -> Value {
        let reactors: Vec<Value> = self
            .reactors
            .iter()
            .map(|(cfg, stats)| {
                let snap = stats.snapshot();
                json!({
                    "lcore": cfg.core.unwrap_or(cfg.index),
                    "busy": snap.busy_ns,
                    "idle": snap.idle_ns,
                    "in_interrupt": cfg.interrupt_mode,
                    "lw_threads": [],
                })
            })
            .collect();
        json!({"tick_rate": 1_000_000_000u64, "pid": std::process::id(), "reactors": reactors})
    }
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
                json!({
                    "nsid": ns.nsid(),
                    "bdev_name": format!("{:?}", ns.backend()),
                    "name": format!("{:?}", ns.backend()),
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

/// Subsystems with their namespaces, listeners and connected controllers.
fn subsystems_json(registry: &Registry) -> Vec<Value> {
    registry
        .subsystems()
        .iter()
        .map(|s| {
            let namespaces: Vec<Value> = s
                .namespaces()
                .iter()
                .map(|ns| {
                    json!({
                        "nsid": ns.nsid(),
                        "block_size": ns.block_size(),
                        "blocks": ns.blocks(),
                        "read_only": ns.read_only(),
                        "backend": format!("{:?}", ns.backend()),
                    })
                })
                .collect();
            let listeners: Vec<Value> = s
                .listeners()
                .iter()
                .map(|l| json!({"trtype": l.transport_name(), "traddr": l.traddr(), "trsvcid": l.trsvcid()}))
                .collect();
            let controllers: Vec<Value> = s
                .controllers()
                .iter()
                .map(|c| {
                    json!({"cntlid": c.cntlid(), "hostnqn": c.hostnqn(), "enabled": c.is_enabled(),
                        "traddr": c.listener().traddr(), "trsvcid": c.listener().trsvcid(),
                        "io_queues": c.connected_io_queues()})
                })
                .collect();
            let access = s.access();
            json!({
                "nqn": s.nqn(),
                "serial": s.serial(),
                "model": s.model(),
                "allow_any_host": access.allow_any_host,
                "hosts": access.hosts,
                "namespaces": namespaces,
                "listeners": listeners,
                "controllers": controllers,
            })
        })
        .collect()
}

/// The control-socket handler for a running target.
pub fn handler(report: Arc<StatusReport>) -> Handler {
    Arc::new(move |method: &str, params: &Value| match method {
        "nvmf_tgt_status" => Ok(report.status()),
        "framework_get_reactors" => Ok(report.framework_get_reactors()),
        "nvmf_get_subsystems" => Ok(nvmf_get_subsystems(&report.registry)),
        "nvmf_tgt_reload" => report
            .reloader
            .request_and_wait(Trigger::Rpc)
            .and_then(|outcome| serde_json::to_value(outcome).ok())
            .ok_or_else(|| RpcError::internal("the reload worker is not running")),
        "nvmf_tgt_plan" => plan(&report.reloader, params),
        other => Err(RpcError::method_not_found(other)),
    })
}

/// `nvmf_tgt_plan {text, label}`: the plan for a declaration the client read and sent. The
/// target never opens a path a client names (it runs as root; a path would let any client
/// read any file through the diagnostics), so the old `{path}` form is refused by name.
fn plan(reloader: &Reloader, params: &Value) -> Result<Value, RpcError> {
    let Some(text) = params.get("text").and_then(Value::as_str) else {
        return Err(RpcError::invalid_params(if params.get("path").is_some() {
            "nvmf_tgt_plan takes the declaration's text in \"text\", not a \"path\": the target opens no file a client names"
        } else {
            "nvmf_tgt_plan needs the declaration's text in \"text\" (and a \"label\" to name it in diagnostics)"
        }));
    };
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(RpcError::invalid_params(format!(
            "the declaration is {} bytes; a declaration may be at most {MAX_FILE_BYTES} bytes",
            text.len()
        )));
    }
    let label = params
        .get("label")
        .and_then(Value::as_str)
        .unwrap_or(UNLABELLED);
    match reloader.plan_text(label, text.to_owned()) {
        Ok(TextPlan {
            plan,
            diagnostics,
            notes,
        }) => Ok(json!({
            "changes": !plan.is_empty(),
            "refused": plan.is_refused(),
            "steps": plan.steps.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "plan": plan,
            "diagnostics": diagnostics,
            "notes": notes,
        })),
        Err(diagnostics) => Err(RpcError::invalid_params(diagnostics)),
    }
}
