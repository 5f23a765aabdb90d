//! What `nvmf-tgt status` shows, answered over the control socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::config::Config;
use crate::control::{Handler, RpcError};
use crate::controller::Registry;
use crate::reactor::{ReactorConfig, ReactorStats};

/// Everything the status methods read; shared with the control thread.
pub struct StatusReport {
    config: Config,
    config_path: PathBuf,
    registry: Arc<Registry>,
    reactors: Vec<(ReactorConfig, Arc<ReactorStats>)>,
    started: Instant,
}

impl StatusReport {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        registry: Arc<Registry>,
        reactors: Vec<(ReactorConfig, Arc<ReactorStats>)>,
        started: Instant,
    ) -> Self {
        Self {
            config,
            config_path,
            registry,
            reactors,
            started,
        }
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
                })
            })
            .collect()
    }

    fn status(&self) -> Value {
        json!({
            "pid": std::process::id(),
            "name": self.config.target.name,
            "config": self.config_path.display().to_string(),
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "interrupt_mode": self.config.target.interrupt_mode,
            "reactors": self.reactors_json(),
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
                .map(|l| json!({"trtype": format!("{:?}", l.trtype), "traddr": l.traddr, "trsvcid": l.trsvcid}))
                .collect();
            let controllers: Vec<Value> = s
                .controllers()
                .iter()
                .map(|c| json!({"cntlid": c.cntlid(), "hostnqn": c.hostnqn(), "enabled": c.is_enabled()}))
                .collect();
            json!({
                "nqn": s.nqn(),
                "serial": s.serial(),
                "model": s.model(),
                "namespaces": namespaces,
                "listeners": listeners,
                "controllers": controllers,
            })
        })
        .collect()
}

/// The control-socket handler for a running target.
pub fn handler(report: Arc<StatusReport>) -> Handler {
    Arc::new(move |method: &str, _params: &Value| match method {
        "nvmf_tgt_status" => Ok(report.status()),
        "framework_get_reactors" => Ok(report.framework_get_reactors()),
        other => Err(RpcError::method_not_found(other)),
    })
}

/// The human form of `nvmf_tgt_status`.
pub fn render_status(status: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "nvmf-tgt pid {} up {:.0}s, {} mode, config {}",
        status["pid"],
        status["uptime_s"].as_f64().unwrap_or(0.0),
        if status["interrupt_mode"].as_bool() == Some(true) {
            "interrupt"
        } else {
            "poll"
        },
        status["config"].as_str().unwrap_or("?"),
    );
    if let Some(cpu) = status["process_cpu_s"].as_f64() {
        let _ = writeln!(out, "process CPU time: {cpu:.3}s");
    }
    let _ = writeln!(out, "reactors:");
    for r in status["reactors"].as_array().into_iter().flatten() {
        let busy = r["busy_ns"].as_u64().unwrap_or(0);
        let idle = r["idle_ns"].as_u64().unwrap_or(0);
        let total = (busy + idle).max(1);
        #[allow(clippy::cast_precision_loss)]
        let busy_pct = busy as f64 * 100.0 / total as f64;
        let _ = writeln!(
            out,
            "  reactor {} core {}: busy {:.3}s idle {:.3}s ({busy_pct:.2}% busy), {} events, {} wakeups, {} connections",
            r["index"],
            r["core"],
            busy as f64 / 1e9,
            idle as f64 / 1e9,
            r["events"],
            r["wakeups"],
            r["connections"],
        );
    }
    let _ = writeln!(out, "subsystems:");
    for s in status["subsystems"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {}", serde_json::to_string(s).unwrap_or_default());
    }
    out
}

/// `nvmf-tgt status`: asks the target at `socket` and prints its answer. Exit 0 on an
/// answer, 2 when the target cannot be reached.
pub fn print_status(socket: &std::path::Path, as_json: bool) -> std::process::ExitCode {
    match crate::control::call(socket, "nvmf_tgt_status", Value::Null) {
        Ok(status) => {
            let text = if as_json {
                serde_json::to_string_pretty(&status).unwrap_or_default()
            } else {
                render_status(&status)
            };
            #[allow(clippy::print_stdout)]
            {
                println!("{text}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            #[allow(clippy::print_stderr)]
            {
                eprintln!("nvmf-tgt status: {message}");
            }
            std::process::ExitCode::from(2)
        }
    }
}
