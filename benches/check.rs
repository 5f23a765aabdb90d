//! `cargo bench --bench check`: times `nvmf-tgt check` end to end (process start, read, parse,
//! schema, rules) on a generated declaration of 1,000 subsystems with 4 namespaces and 2
//! listeners each, and the in-process `check_file` alone. Writes the figures (median, min,
//! max of 11 runs) to `target/bench/check.json` and prints them.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nvmf_tgt::config::{Environment, Purpose, check_file};

const SUBSYSTEMS: usize = 1000;
const RUNS: usize = 11;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.toml");
    std::fs::write(&path, declaration()).expect("write declaration");
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    let binary = env!("CARGO_BIN_EXE_nvmf-tgt");
    let end_to_end = measure(|| {
        let status = Command::new(binary)
            .args(["check", "-c"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run nvmf-tgt check");
        assert!(status.success(), "the generated declaration must be valid");
    });
    let env = Environment::this_machine();
    let in_process = measure(|| {
        let (config, _) = check_file(&path, Purpose::Check, &env).expect("read");
        assert!(config.is_some());
    });

    let report = serde_json::json!({
        "benchmark": "nvmf-tgt check",
        "declaration": {"subsystems": SUBSYSTEMS, "namespaces": SUBSYSTEMS * 4,
            "listeners": SUBSYSTEMS * 2, "bytes": bytes},
        "runs": RUNS,
        "end_to_end_ms": summary(&end_to_end),
        "in_process_ms": summary(&in_process),
        "cpu": cpu_model(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).expect("create target/bench");
    let file = out.join("check.json");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .expect("write results");
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    println!("written to {}", file.display());
}

fn declaration() -> String {
    let mut text =
        String::from("[target]\ninterrupt_mode = true\ncore_mask = \"0x1\"\n\n[transport.tcp]\n\n");
    for s in 0..SUBSYSTEMS {
        let _ = write!(
            text,
            "[[subsystem]]\nnqn = \"nqn.2026-11.io.nvmf-tgt.bench:subsystem-{s}\"\n\
             serial = \"BENCH{s:08}\"\nallow_any_host = true\n\n"
        );
        for l in 0..2 {
            let _ = write!(
                text,
                "[[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.{}\"\nport = {}\n\n",
                l + 1,
                4420 + s % 16
            );
        }
        for n in 1..=4 {
            let _ = write!(
                text,
                "[[subsystem.namespace]]\nnsid = {n}\nnull = {{ size = \"1GiB\" }}\nblock_size = 4096\n\n"
            );
        }
    }
    text
}

fn measure(mut run: impl FnMut()) -> Vec<Duration> {
    run(); // warm the page cache and the binary
    (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect()
}

fn summary(samples: &[Duration]) -> serde_json::Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 10.0).round() / 10.0;
    serde_json::json!({
        "median": round(ms[ms.len() / 2]),
        "min": round(ms[0]),
        "max": round(ms[ms.len() - 1]),
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}
