//! The commands that talk to a running target over its control socket (`status`, `reload`,
//! `plan`): the call, and how each answer is shown.

use serde_json::{Value, json};

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
        let b = &r["buffers"];
        let _ = writeln!(
            out,
            "    buffers: {} in use, {} cached, {} commands waiting ({} waits so far)",
            b["in_use"], b["cached"], b["waiting"], b["waits"],
        );
    }
    let pool = &status["buffer_pool"];
    let _ = writeln!(
        out,
        "buffer pool: {} of {} buffers of {} bytes free in the shared pool, {} cached per reactor at most",
        pool["available"], pool["num_shared_buffers"], pool["io_unit_size"], pool["buf_cache_size"],
    );
    for s in status["subsystems"].as_array().into_iter().flatten() {
        out.push_str(&render_subsystem(s));
    }
    out
}

/// One subsystem: its identity and who may connect, its listeners, then a table of its
/// namespaces and one of its controllers, each with what it has done.
fn render_subsystem(s: &Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let number = |v: &Value| v.as_u64().map_or_else(|| "?".to_owned(), |n| n.to_string());
    let mut out = String::new();
    let hosts = if s["allow_any_host"].as_bool() == Some(true) {
        "any host".to_owned()
    } else {
        let list: Vec<String> = s["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        match list.len() {
            0 => "no host".to_owned(),
            1 => format!("host {}", list[0]),
            n => format!("{n} hosts: {}", list.join(", ")),
        }
    };
    let _ = writeln!(
        out,
        "\nsubsystem {} (serial {}, model {}, {hosts})",
        text(&s["nqn"]),
        text(&s["serial"]),
        text(&s["model"]),
    );
    let listeners: Vec<String> = s["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let port = l["trsvcid"].as_str().filter(|p| !p.is_empty());
            match port {
                Some(port) => format!(
                    "{} {}:{port}",
                    text(&l["trtype"]).to_lowercase(),
                    text(&l["traddr"])
                ),
                None => format!(
                    "{} {}",
                    text(&l["trtype"]).to_lowercase(),
                    text(&l["traddr"])
                ),
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "  listeners: {}",
        if listeners.is_empty() {
            "none".to_owned()
        } else {
            listeners.join(", ")
        }
    );
    let io = |v: &Value| {
        [
            number(&v["read_ops"]),
            bytes(v["read_bytes"].as_u64()),
            number(&v["write_ops"]),
            bytes(v["write_bytes"].as_u64()),
            number(&v["failed"]),
        ]
    };
    let namespaces: Vec<Vec<String>> = s["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ns| {
            let size = ns["blocks"]
                .as_u64()
                .zip(ns["block_size"].as_u64())
                .map(|(b, s)| b * s);
            let backend = text(&ns["backend"]);
            // "ram 67108864 bytes": the size has its own column.
            let backend = backend
                .strip_suffix(" bytes")
                .and_then(|b| b.rsplit_once(' '))
                .map_or(backend.clone(), |(kind, _)| kind.to_owned());
            let mut row = vec![
                number(&ns["nsid"]),
                bytes(size),
                number(&ns["block_size"]),
                if ns["read_only"].as_bool() == Some(true) {
                    format!("{backend} (read-only)")
                } else {
                    backend
                },
            ];
            row.extend(io(&ns["io"]));
            row
        })
        .collect();
    if namespaces.is_empty() {
        let _ = writeln!(out, "  no namespaces");
    } else {
        out.push_str(&table(
            &[
                "NSID", "SIZE", "BLOCK", "BACKEND", "READS", "READ", "WRITES", "WRITTEN", "FAILED",
            ],
            &namespaces,
        ));
    }
    let controllers: Vec<Vec<String>> = s["controllers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut row = vec![
                number(&c["cntlid"]),
                text(&c["hostnqn"]),
                format!("{}:{}", text(&c["traddr"]), text(&c["trsvcid"])),
                number(&c["io_queues"]),
            ];
            row.extend(io(&c["io"]));
            row
        })
        .collect();
    if controllers.is_empty() {
        let _ = writeln!(out, "  no controllers connected");
    } else {
        out.push_str(&table(
            &[
                "CNTLID",
                "HOST",
                "VIA",
                "IO QUEUES",
                "READS",
                "READ",
                "WRITES",
                "WRITTEN",
                "FAILED",
            ],
            &controllers,
        ));
    }
    out
}

/// Rows under headers, each column as wide as its widest cell, indented two spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("  {}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Bytes in binary units: `0 B`, `4.0 KiB`, `64.0 MiB`.
fn bytes(n: Option<u64>) -> String {
    let Some(n) = n else {
        return "?".to_owned();
    };
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    #[allow(clippy::cast_precision_loss)]
    let mut value = n as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
/// 1 changes, 2 error (unreadable or invalid file, unreachable target, refused plan).
///
/// This command reads the file, with its own rights, and sends the text; the path goes along
/// only as the label diagnostics name the text by. The target opens no path a client names.
#[allow(clippy::print_stdout, clippy::print_stderr)]
pub fn print_plan(
    socket: &std::path::Path,
    path: &std::path::Path,
    as_json: bool,
) -> std::process::ExitCode {
    let text = match crate::config::read_text(path) {
        Ok(text) => text,
        Err(err @ crate::config::SourceError::Unreadable { .. }) => {
            eprintln!("nvmf-tgt plan: {err}");
            return std::process::ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("nvmf-tgt plan: {}: {err}", path.display());
            return std::process::ExitCode::from(2);
        }
    };
    // Absolute, so that diagnostics name the file the same whatever the working directory.
    let label = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let params = json!({"text": text, "label": label.display().to_string()});
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
        for note in answer["notes"].as_array().into_iter().flatten() {
            println!("note: {}", note.as_str().unwrap_or(""));
        }
    }
    if answer["refused"] == true {
        return std::process::ExitCode::from(2);
    }
    std::process::ExitCode::from(u8::from(answer["changes"] == true))
}
