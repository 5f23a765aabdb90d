//! What `nvmf-tgt status` shows, answered over the control socket.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use crate::config::Config;
use crate::control::{Handler, RpcError};
use crate::controller::Registry;
use crate::reactor::{ReactorConfig, ReactorStats};
use crate::target::reload::{Reloader, Trigger};

/// Everything the status methods read; shared with the control thread.
pub struct StatusReport {
    config: Config,
    config_path: PathBuf,
    registry: Arc<Registry>,
    reloader: Arc<Reloader>,
    reactors: Vec<(ReactorConfig, Arc<ReactorStats>)>,
    started: Instant,
}

impl StatusReport {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        registry: Arc<Registry>,
        reloader: Arc<Reloader>,
        reactors: Vec<(ReactorConfig, Arc<ReactorStats>)>,
        started: Instant,
    ) -> Self {
        Self {
            config,
            config_path,
            registry,
            reloader,
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
            "name": self.reloader.with_live(|live| live.config.target.name.clone()),
            "declaration": self.reloader.status(),
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

/// SPDK's `nvmf_get_subsystems`, with SPDK's field names.
fn nvmf_get_subsystems(registry: &Registry) -> Value {
    let listener = |l: &crate::controller::ListenerAddr| {
        json!({
            "trtype": "TCP",
            "adrfam": match l.adrfam {
                crate::controller::AddressFamily::Ipv4 => "IPv4",
                _ => "IPv6",
            },
            "traddr": l.traddr,
            "trsvcid": l.trsvcid,
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
                    "uuid": hex_uuid(&ns.uuid()),
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

fn hex_uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
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
                .map(|c| {
                    json!({"cntlid": c.cntlid(), "hostnqn": c.hostnqn(), "enabled": c.is_enabled(),
                        "traddr": c.listener().traddr, "trsvcid": c.listener().trsvcid,
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
        "nvmf_tgt_plan" => {
            let path = params
                .get("path")
                .and_then(Value::as_str)
                .map_or_else(|| report.config_path.clone(), PathBuf::from);
            match report.reloader.plan_for(&path) {
                Ok((plan, diagnostics)) => Ok(json!({
                    "changes": !plan.is_empty(),
                    "refused": plan.is_refused(),
                    "steps": plan.steps.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "plan": plan,
                    "diagnostics": diagnostics,
                })),
                Err(diagnostics) => Err(RpcError::invalid_params(diagnostics)),
            }
        }
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
    let decl = &status["declaration"];
    let _ = writeln!(
        out,
        "declaration: generation {}, hash {}",
        decl["applied"]["generation"],
        decl["applied"]["hash"].as_str().unwrap_or("?"),
    );
    if decl["last_attempt"].is_object() {
        let last = &decl["last_attempt"];
        let _ = writeln!(
            out,
            "last reload ({}): {}: {}",
            last["trigger"].as_str().unwrap_or("?"),
            last["result"].as_str().unwrap_or("?"),
            last["message"].as_str().unwrap_or(""),
        );
        if let Some(d) = last["diagnostics"].as_str() {
            for line in d.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
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
#[allow(clippy::print_stdout)]
pub fn print_status(socket: &std::path::Path, as_json: bool) -> std::process::ExitCode {
    let status = match call(socket, "status", "nvmf_tgt_status", Value::Null) {
        Ok(status) => status,
        Err(code) => return code,
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        println!("{}", render_status(&status));
    }
    std::process::ExitCode::SUCCESS
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// Calls the target; an unreachable target or a refused call is reported and exits 2.
#[allow(clippy::print_stderr)]
fn call(
    socket: &std::path::Path,
    command: &str,
    method: &str,
    params: Value,
) -> Result<Value, std::process::ExitCode> {
    crate::control::call(socket, method, params).map_err(|err| {
        eprintln!("nvmf-tgt {command}: {}", error_chain(&err));
        std::process::ExitCode::from(2)
    })
}

/// `nvmf-tgt reload`: asks the target to reload its declaration and prints the outcome.
/// Exit 0 applied or nothing to do, 1 refused, invalid or failed, 2 target unreachable.
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub fn print_reload(socket: &std::path::Path, as_json: bool) -> std::process::ExitCode {
    let outcome = match call(socket, "reload", "nvmf_tgt_reload", Value::Null) {
        Ok(outcome) => outcome,
        Err(code) => return code,
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&outcome).unwrap_or_default()
        );
    } else {
        println!(
            "{}: {}",
            outcome["result"].as_str().unwrap_or("?"),
            outcome["message"].as_str().unwrap_or("")
        );
        for step in outcome["steps"].as_array().into_iter().flatten() {
            println!("  {}", step.as_str().unwrap_or(""));
        }
        for w in outcome["warnings"].as_array().into_iter().flatten() {
            println!("warning: {}", w.as_str().unwrap_or(""));
        }
        if let Some(d) = outcome["diagnostics"].as_str() {
            print!("{d}");
        }
    }
    let ok = matches!(outcome["result"].as_str(), Some("applied" | "unchanged"));
    std::process::ExitCode::from(if ok { 0 } else { 1 })
}

/// `nvmf-tgt plan`: the plan from what serves to `path`, not applied. Exit 0 no changes,
/// 1 changes, 2 error (unreachable target, invalid file, refused plan).
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub fn print_plan(
    socket: &std::path::Path,
    path: &std::path::Path,
    as_json: bool,
) -> std::process::ExitCode {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let params = json!({"path": absolute.display().to_string()});
    let answer = match call(socket, "plan", "nvmf_tgt_plan", params) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
    } else {
        if let Some(d) = answer["diagnostics"].as_str() {
            print!("{d}");
        }
        let steps = answer["steps"].as_array().cloned().unwrap_or_default();
        if steps.is_empty() && answer["refused"] != true {
            println!("no changes: {} declares what is serving", path.display());
        }
        for step in &steps {
            println!("{}", step.as_str().unwrap_or(""));
        }
        for field in answer["plan"]["restart_required"]
            .as_array()
            .into_iter()
            .flatten()
        {
            println!(
                "! {} changed: needs a restart (the plan would be refused)",
                field["what"].as_str().unwrap_or("")
            );
        }
        for w in answer["plan"]["warnings"].as_array().into_iter().flatten() {
            println!("warning: {}", w.as_str().unwrap_or(""));
        }
    }
    if answer["refused"] == true {
        return std::process::ExitCode::from(2);
    }
    std::process::ExitCode::from(u8::from(answer["changes"] == true))
}
