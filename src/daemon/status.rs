//! What `nvmf-tgt status` shows, answered over the control socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::config::{Config, MAX_FILE_BYTES};
use crate::control::{Handler, RpcError};
use crate::controller::{IoClass, IoStatsSnapshot, Registry};
use crate::daemon::reload::{Reloader, TextPlan, Trigger};
use crate::daemon::spdk_rpc::{METHODS, ReactorView, SpdkRpc, bdev_name};
use crate::reactor::{Mailbox, ReactorConfig, ReactorStats};
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
    /// SPDK's methods, for SPDK's tools.
    spdk: SpdkRpc,
}

/// The methods of our own, besides SPDK's.
const OWN_METHODS: &[&str] = &["nvmf_tgt_status", "nvmf_tgt_reload", "nvmf_tgt_plan"];

impl StatusReport {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        registry: Arc<Registry>,
        reloader: Arc<Reloader>,
        reactors: Vec<(ReactorConfig, Mailbox)>,
        buffers: Arc<SharedPool>,
        started: Instant,
    ) -> Self {
        let spdk = SpdkRpc {
            registry: Arc::clone(&registry),
            reactors: reactors
                .iter()
                .map(|(config, mailbox)| ReactorView::new(config.clone(), mailbox.clone()))
                .collect(),
            transports: config.transport.clone(),
            all_methods: OWN_METHODS.iter().chain(METHODS).copied().collect(),
        };
        Self {
            config,
            config_path,
            registry,
            reloader,
            reactors: reactors
                .into_iter()
                .map(|(config, mailbox)| (config, Arc::clone(&mailbox.stats)))
                .collect(),
            buffers,
            started,
            spdk,
        }
    }

    pub(super) fn reactors(&self) -> &[(ReactorConfig, Arc<ReactorStats>)] {
        &self.reactors
    }

    pub(super) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(super) fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// The shared pool's size and the buffers no reactor holds.
    pub(super) fn buffer_pool(&self) -> (u32, u32) {
        (
            self.buffers.limits().num_shared_buffers,
            self.buffers.available(),
        )
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
                        "bdev_name": bdev_name(s.nqn(), ns),
                        "block_size": ns.block_size(),
                        "blocks": ns.blocks(),
                        "read_only": ns.read_only(),
                        "backend": format!("{:?}", ns.backend()),
                        "io": io_json(&ns.stats().snapshot()),
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
                        "io_queues": c.connected_io_queues(),
                        "io": io_json(&c.stats().snapshot())})
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

/// What a namespace or a controller has done: operations and bytes by kind, failures.
fn io_json(snap: &IoStatsSnapshot) -> Value {
    let read = snap.class(IoClass::Read);
    let write = snap.class(IoClass::Write);
    let unmap = snap.class(IoClass::Unmap);
    json!({
        "read_ops": read.ops,
        "read_bytes": read.bytes,
        "write_ops": write.ops,
        "write_bytes": write.bytes,
        "unmap_ops": unmap.ops,
        "unmap_bytes": unmap.bytes,
        "failed": snap.failed,
    })
}

/// The control-socket handler for a running target.
pub fn handler(report: Arc<StatusReport>) -> Handler {
    Arc::new(move |method: &str, params: &Value| match method {
        "nvmf_tgt_status" => Ok(report.status()),
        "nvmf_tgt_reload" => report
            .reloader
            .request_and_wait(Trigger::Rpc)
            .and_then(|outcome| serde_json::to_value(outcome).ok())
            .ok_or_else(|| RpcError::internal("the reload worker is not running")),
        "nvmf_tgt_plan" => plan(&report.reloader, params),
        other => report
            .spdk
            .call(other, params)
            .unwrap_or_else(|| Err(RpcError::method_not_found(other))),
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
