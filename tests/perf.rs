//! The real `nvmf-perf` binary against the real `nvmf-tgt` over loopback: counts, verified
//! data, digests and the R2T path, and the one-line errors.

mod common;

use std::net::TcpListener;
use std::process::{Command, Output};

use common::{HOSTNQN, SUBNQN, TargetProcess, TargetSpec};

fn perf(target_port: u16, args: &[&str]) -> Output {
    let id =
        format!("trtype:tcp adrfam:ipv4 traddr:127.0.0.1 trsvcid:{target_port} subnqn:{SUBNQN}");
    Command::new(env!("CARGO_BIN_EXE_nvmf-perf"))
        .args(["-r", &id, "--hostnqn", HOSTNQN, "--seed", "7"])
        .args(args)
        .output()
        .expect("run nvmf-perf")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs with `--json`, expecting success, and returns the report.
fn perf_json(target: &TargetProcess, args: &[&str]) -> serde_json::Value {
    let out = perf(target.port, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "nvmf-perf {args:?} failed: {}\ntarget log:\n{}",
        stderr(&out),
        target.log()
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn num(report: &serde_json::Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {report}"))
}

/// Expects exit status 1 and a single-line message on stderr containing `needle`.
fn expect_failure(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
}

fn null_target() -> TargetProcess {
    TargetProcess::start(&TargetSpec {
        namespaces: "[[subsystem.namespace]]\nnsid = 1\nnull = { size = \"1GiB\" }\n".into(),
        ..TargetSpec::default()
    })
}

#[test]
fn counted_randread_on_a_null_namespace_reports_every_io() {
    let target = null_target();
    let report = perf_json(
        &target,
        &[
            "--count", "10000", "-q", "16", "-o", "4096", "-w", "randread",
        ],
    );
    assert_eq!(report["ios"], 10000, "{report}");
    assert_eq!(report["reads"], 10000);
    assert_eq!(report["writes"], 0);
    assert_eq!(report["io_errors"], 0);
    assert_eq!(report["nsid"], 1, "first active namespace");
    let (iops, elapsed) = (num(&report, "iops"), num(&report, "elapsed_s"));
    assert!(iops > 1000.0, "{report}");
    assert!((iops * elapsed - 10000.0).abs() < 1.0, "{report}");
    let mib_s = num(&report, "mib_s");
    assert!(
        (mib_s - iops * 4096.0 / f64::from(1 << 20)).abs() < 0.01,
        "{report}"
    );
    let lat = &report["latency_us"];
    let l = |k: &str| lat[k].as_f64().expect("latency figure");
    assert!(l("min") > 0.0, "{report}");
    assert!(l("min") <= l("p50") && l("p50") <= l("p90") && l("p90") <= l("p99"));
    assert!(l("p99") <= l("p99.9") && l("p99.9") <= l("max") * 1.001);
    assert!(l("min") <= l("avg") && l("avg") <= l("max"));
    // 16 outstanding: Little's law ties the average latency to IOPS (loosely).
    assert!(l("avg") < 16.0 * 1e6 / iops * 1.5, "{report}");
    assert!(num(&report, "cpu_percent") > 0.0, "{report}");

    // A timed run, sequential, several connections: IOPS still consistent with its I/Os.
    let report = perf_json(
        &target,
        &["-t", "1", "-q", "4", "-w", "read", "--connections", "3"],
    );
    let ios = num(&report, "ios");
    assert!(ios > 100.0, "{report}");
    assert!((num(&report, "iops") * num(&report, "elapsed_s") - ios).abs() < 1.0);
    assert!(num(&report, "elapsed_s") >= 1.0, "{report}");
}

#[test]
fn verify_round_trips_and_catches_unwritten_data() {
    // 4 MiB of RAM: 1024 units of 4 KiB.
    let target = TargetProcess::start(&TargetSpec {
        namespaces: "[[subsystem.namespace]]\nnsid = 1\nram = { size = \"4MiB\" }\n".into(),
        ..TargetSpec::default()
    });
    // Never written: nothing to check (fio's rule), and every such read is counted.
    let report = perf_json(
        &target,
        &["--count", "200", "-q", "8", "-w", "randread", "--verify"],
    );
    assert_eq!(report["verify_errors"], 0, "{report}");
    assert_eq!(report["unverified_reads"], 200, "{report}");

    // Mixed on a fresh namespace: what this run wrote is checked, the rest counted; reads
    // and writes are reported apart.
    let report = perf_json(
        &target,
        &["--count", "2000", "-q", "8", "-w", "randrw", "--verify"],
    );
    assert_eq!(report["verify_errors"], 0, "{report}");
    let unverified = report["unverified_reads"].as_u64().unwrap();
    assert!(
        unverified > 0 && unverified < report["reads"].as_u64().unwrap(),
        "{report}"
    );
    assert_eq!(report["read"]["ios"], report["reads"], "{report}");
    assert_eq!(report["write"]["ios"], report["writes"], "{report}");
    assert!(num(&report["read"], "iops") > 0.0 && num(&report["write"]["latency_us"], "p50") > 0.0);

    // Fill everything, overwrite at random, then read at random: all right.
    for args in [
        &["--count", "1024", "-q", "8", "-w", "write"][..],
        &["--count", "3000", "-q", "16", "-w", "randwrite"],
        &["--count", "5000", "-q", "32", "-w", "randread"],
        &[
            "--count",
            "4000",
            "-q",
            "16",
            "-w",
            "randrw",
            "-M",
            "50",
            "--connections",
            "2",
        ],
    ] {
        let report = perf_json(&target, &[args, &["--verify"]].concat());
        assert_eq!(report["verify_errors"], 0, "{args:?}: {report}");
        assert_eq!(report["io_errors"], 0, "{args:?}: {report}");
    }

    // Every block read back in order, in 64 KiB reads across the 4 KiB units written.
    let report = perf_json(
        &target,
        &["--count", "64", "-w", "read", "-o", "64k", "--verify"],
    );
    assert_eq!(report["verify_errors"], 0, "{report}");
    assert_eq!(
        report["unverified_reads"], 0,
        "stamped by the runs before: {report}"
    );
}

#[test]
fn prefill_makes_every_read_checked_and_catches_a_block_the_target_lost() {
    let target = TargetProcess::start(&TargetSpec {
        namespaces: "[[subsystem.namespace]]\nnsid = 1\nram = { size = \"2MiB\" }\n".into(),
        ..TargetSpec::default()
    });
    let report = perf_json(
        &target,
        &[
            "-t",
            "1",
            "-q",
            "8",
            "-w",
            "randrw",
            "--verify",
            "--prefill",
        ],
    );
    assert_eq!(
        report["prefilled"]["ios"], 512,
        "2 MiB in 4 KiB units: {report}"
    );
    assert_eq!(report["verify_errors"], 0, "{report}");
    assert_eq!(report["unverified_reads"], 0, "{report}");
    assert!(report["reads"].as_u64().unwrap() > 0, "{report}");

    // Another run's stamps are checked for their LBA: data moved elsewhere is caught. A
    // write of unstamped data over block 0 (as a host that is not nvmf-perf would do) reads
    // back as never stamped, and is counted rather than blamed.
    let opts = nvmf_tgt::host::QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut admin = nvmf_tgt::host::HostQueue::connect(target.addr(), &opts).unwrap();
    admin.enable_controller().unwrap();
    let mut io =
        nvmf_tgt::host::HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 8)).unwrap();
    let block8 = io.read(1, 8, 8, 512).unwrap();
    io.write(1, 16, block8, 512).unwrap();
    io.write(1, 0, vec![0; 4096], 512).unwrap();
    let out = perf(
        target.port,
        &["--count", "3", "-w", "read", "--verify", "--json"],
    );
    expect_failure(&out, "verify: 1 of 3 reads returned wrong data");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["unverified_reads"], 1, "{report}");
    assert!(
        report["first_verify_error"]
            .as_str()
            .is_some_and(|e| e.contains("lba 16")),
        "{report}"
    );
}

#[test]
fn controllers_and_a_fixed_rate() {
    let target = null_target();
    let report = perf_json(
        &target,
        &[
            "-t",
            "1",
            "-q",
            "4",
            "--controllers",
            "3",
            "--connections",
            "2",
        ],
    );
    assert_eq!(report["controllers"], 3, "{report}");
    let stats = nvmf_tgt::control::call(
        &target.control_socket(),
        "nvmf_get_stats",
        serde_json::Value::Null,
    )
    .unwrap();
    let group = &stats["poll_groups"][0];
    assert_eq!(
        group["admin_qpairs"], 3,
        "three controllers connected: {stats}"
    );
    assert_eq!(group["io_qpairs"], 6, "two I/O queues each: {stats}");

    // At 300 IOPS for 2 s: never more than the rate allows.
    let report = perf_json(&target, &["-t", "2", "-q", "8", "--rate", "300"]);
    let ios = report["ios"].as_u64().unwrap();
    assert!(ios <= 2 * 300 + 1, "the rate is a ceiling: {report}");
    assert!(ios >= 300, "and the load is there: {report}");
    assert_eq!(report["rate"], 300);
}

#[test]
fn digests_and_large_writes_through_r2t() {
    let target = TargetProcess::start(&TargetSpec {
        namespaces: "[[subsystem.namespace]]\nnsid = 1\nram = { size = \"8MiB\" }\n".into(),
        ..TargetSpec::default()
    });
    let digests = ["--hdr-digest", "--data-digest"];
    // 128 KiB is far above the 4 KiB in-capsule size: every write waits for R2T.
    for args in [
        &["--count", "64", "-q", "4", "-w", "write", "-o", "128KiB"][..],
        &["--count", "300", "-q", "8", "-w", "randrw", "-o", "128k"],
        &["--count", "2000", "-q", "16", "-w", "randread", "-o", "4k"],
    ] {
        let report = perf_json(&target, &[args, &digests, &["--verify"]].concat());
        assert_eq!(report["header_digest"], true);
        assert_eq!(report["data_digest"], true);
        assert_eq!(report["verify_errors"], 0, "{args:?}: {report}");
        assert_eq!(report["io_errors"], 0, "{args:?}: {report}");
    }
    let report = perf_json(
        &target,
        &[
            "--count",
            "100",
            "-w",
            "write",
            "-o",
            "128KiB",
            "--hdr-digest",
        ],
    );
    assert_eq!(report["writes"], 100, "{report}");
}

#[test]
fn errors_are_one_line_and_exit_1() {
    let target = TargetProcess::start(&TargetSpec {
        extra_subsystem_keys: "hosts = [\"nqn.2026-11.io.nvmf-tgt:someone-else\"]\n".into(),
        ..TargetSpec::default()
    });
    let open = TargetProcess::start(&TargetSpec::default());

    let unknown = "nqn.2026-11.io.nvmf-tgt:no-such-subsystem";
    let out = Command::new(env!("CARGO_BIN_EXE_nvmf-perf"))
        .args(["--addr", "127.0.0.1", "--port", &open.port.to_string()])
        .args(["--subnqn", unknown, "--count", "10"])
        .output()
        .expect("run");
    expect_failure(&out, unknown);

    let out = perf(target.port, &["--count", "10"]);
    expect_failure(&out, "host not allowed");

    let out = perf(open.port, &["--count", "10", "--nsid", "9"]);
    expect_failure(&out, "namespace 9 not found");

    let refused = common::free_port();
    let out = perf(refused, &["--count", "10"]);
    expect_failure(&out, "cannot connect to 127.0.0.1");

    // A listener that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let out = perf(port, &["--count", "10", "--timeout", "1"]);
    expect_failure(&out, "did not answer within 1s");

    let out = perf(open.port, &["--count", "10", "-o", "1000"]);
    expect_failure(&out, "not a multiple");
}

#[test]
fn a_target_that_stops_answering_mid_run_is_a_timeout() {
    let target = null_target();
    let id = format!(
        "trtype:tcp traddr:127.0.0.1 trsvcid:{} subnqn:{SUBNQN}",
        target.port
    );
    let child = Command::new(env!("CARGO_BIN_EXE_nvmf-perf"))
        .args(["-r", &id, "-t", "30", "-q", "4", "--timeout", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nvmf-perf");
    std::thread::sleep(std::time::Duration::from_millis(700));
    common::signal(target.pid(), "STOP");
    let out = child.wait_with_output().expect("wait");
    common::signal(target.pid(), "CONT");
    expect_failure(
        &out,
        "did not answer within 1s (waiting for I/O completions)",
    );
}

#[test]
fn reads_complete_by_capsule_response_when_the_target_sends_no_success_flag() {
    let target = TargetProcess::start(&TargetSpec {
        namespaces: "[[subsystem.namespace]]\nnsid = 1\nram = { size = \"1MiB\" }\n".into(),
        tcp_options: "c2h_success = false\n".into(),
        ..TargetSpec::default()
    });
    for args in [
        &["--count", "256", "-q", "8", "-w", "write"][..],
        &["--count", "3000", "-q", "16", "-w", "randrw", "-M", "70"],
    ] {
        let report = perf_json(&target, &[args, &["--verify", "--data-digest"]].concat());
        assert_eq!(report["verify_errors"], 0, "{args:?}: {report}");
        assert_eq!(
            report["ios"],
            num(&report, "reads") + num(&report, "writes")
        );
    }
}

#[test]
fn idle_hosts_connect_controllers_and_only_keep_them_alive() {
    let target = null_target();
    let id = format!(
        "trtype:tcp traddr:127.0.0.1 trsvcid:{} subnqn:{SUBNQN}",
        target.port
    );
    let child = Command::new(env!("CARGO_BIN_EXE_nvmf-perf"))
        .args(["-r", &id, "--hostnqn", HOSTNQN])
        .args(["--idle", "--connections", "4", "-t", "2", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nvmf-perf --idle");
    // While it sits there: 4 enabled controllers, 8 connections (admin + one I/O queue each).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let status = loop {
        let status = nvmf_tgt::control::call(
            &target.control_socket(),
            "nvmf_tgt_status",
            serde_json::Value::Null,
        )
        .expect("status");
        let connections = status["reactors"][0]["connections"].as_u64();
        if connections == Some(8) || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        status["reactors"][0]["connections"].as_u64(),
        Some(8),
        "{status}"
    );
    let controllers = status["subsystems"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["nqn"] == SUBNQN)
        .and_then(|s| s["controllers"].as_array())
        .expect("the subsystem's controllers");
    assert_eq!(controllers.len(), 4, "{status}");
    assert!(controllers.iter().all(|c| c["enabled"] == true), "{status}");

    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["controllers"], 4, "{report}");
    // Two seconds is less than one keep-alive period: only the final round was sent.
    assert_eq!(report["keep_alives"], 4, "{report}");
    let elapsed = num(&report, "elapsed_s");
    assert!((2.0..3.0).contains(&elapsed), "{report}");
    // It sleeps: far less than a core, even on a loaded machine.
    assert!(num(&report, "cpu_percent") < 20.0, "{report}");
    assert!(report.get("ios").is_none(), "no I/O report: {report}");

    let out = perf(target.port, &["--idle", "--count", "5"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap rejects --idle with --count"
    );
}

/// A target in interrupt mode whose subsystem has a vfio-user listener (trapped doorbells)
/// beside the TCP one the harness waits for; returns it with the controller's socket.
fn vfio_user_target(namespace: &str) -> (TargetProcess, std::path::PathBuf) {
    vfio_user_target_with("", namespace)
}

/// As [`vfio_user_target`], with `target` added to `[target]`.
fn vfio_user_target_with(target: &str, namespace: &str) -> (TargetProcess, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let vfio_dir = dir.path().join("vm0");
    let config = format!(
        "[target]\ninterrupt_mode = true\ncore_mask = \"0x1\"\ncontrol_socket = \"{}\"\n{target}\n\n\
         [transport.tcp]\n\n[transport.vfiouser]\ndisable_mappable_bar0 = true\n\n\
         [[subsystem]]\nnqn = \"{SUBNQN}\"\nallow_any_host = true\n\n\
         [[subsystem.listener]]\ntransport = \"vfiouser\"\npath = \"{}\"\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [[subsystem.namespace]]\nnsid = 1\n{namespace}\n",
        dir.path().join("ctl.sock").display(),
        vfio_dir.display(),
    );
    let target = TargetProcess::start_with_config(dir, port, &config);
    let socket = vfio_dir.join("cntrl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "{}", target.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (target, socket)
}

fn vfio_perf(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nvmf-perf"))
        .arg("--vfio-user")
        .arg(socket)
        .args(["--seed", "7"])
        .args(args)
        .output()
        .expect("run nvmf-perf")
}

fn vfio_perf_json(
    target: &TargetProcess,
    socket: &std::path::Path,
    args: &[&str],
) -> serde_json::Value {
    let out = vfio_perf(socket, &[args, &["--json"]].concat());
    assert!(
        out.status.success(),
        "nvmf-perf --vfio-user {args:?} failed: {}\ntarget log:\n{}",
        stderr(&out),
        target.log()
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

#[test]
fn a_fake_vmm_measures_the_vfio_user_controller() {
    let (target, socket) = vfio_user_target("null = { size = \"1GiB\" }");
    // A second of 4K random reads at QD8, woken by MSI-X eventfds.
    let report = vfio_perf_json(&target, &socket, &["-t", "1", "-q", "8", "-w", "randread"]);
    assert_eq!(report["transport"], "vfio-user", "{report}");
    assert_eq!(report["target"], socket.display().to_string());
    assert_eq!(report["subnqn"], SUBNQN, "from Identify Controller");
    assert_eq!(report["doorbells"], "trapped", "{report}");
    assert_eq!(report["busy_poll"], false);
    assert_eq!(report["nsid"], 1);
    assert_eq!(report["io_errors"], 0, "{report}");
    let (ios, iops, elapsed) = (
        num(&report, "ios"),
        num(&report, "iops"),
        num(&report, "elapsed_s"),
    );
    assert!(ios > 100.0 && ios == num(&report, "reads"), "{report}");
    assert!(
        elapsed >= 1.0 && (iops * elapsed - ios).abs() < 1.0,
        "{report}"
    );
    let l = |k: &str| report["latency_us"][k].as_f64().expect("latency figure");
    assert!(
        0.0 < l("min") && l("min") <= l("p50") && l("p50") <= l("p99"),
        "{report}"
    );
    assert!(
        l("p99") <= l("max") * 1.001 && l("avg") <= l("max"),
        "{report}"
    );

    // Two polled queues, spun on: counted I/Os all complete, on a fresh controller.
    let report = vfio_perf_json(
        &target,
        &socket,
        &[
            "--count",
            "20000",
            "-q",
            "16",
            "--queues",
            "2",
            "--busy-poll",
        ],
    );
    assert_eq!(report["ios"], 20000, "{report}");
    assert_eq!(report["connections"], 2);
    assert_eq!(report["busy_poll"], true);
    assert_eq!(report["io_errors"], 0, "{report}");
}

#[test]
fn a_fake_vmm_uses_shadow_doorbells_when_the_controller_offers_them() {
    // A busy-poll window (10 ms) that a client descheduled on a loaded machine does not close.
    let (target, socket) =
        vfio_user_target_with("busy_poll_us = 10000", "null = { size = \"1GiB\" }");
    // As Linux's driver: Doorbell Buffer Config at bring-up, then a doorbell write only
    // when EventIdx asks. At QD32 the interrupt-mode reactor stays in its busy-poll window,
    // polls the shadows and keeps EventIdx out of the way: hardly any writes.
    let args = ["-t", "1", "-q", "32", "-w", "randread"];
    let report = vfio_perf_json(&target, &socket, &args);
    assert_eq!(report["shadow_doorbells"], true, "{report}");
    assert_eq!(report["doorbells"], "trapped", "{report}");
    assert_eq!(report["io_errors"], 0, "{report}");
    let (ios, writes, updates) = (
        num(&report, "ios"),
        num(&report, "doorbell_writes"),
        num(&report, "shadow_updates"),
    );
    eprintln!("shadow doorbells: {writes} writes for {updates} updates, {ios} I/Os");
    assert!(
        updates >= 2.0 * ios / 32.0,
        "a tail and a head per batch at least: {report}"
    );
    assert!(
        writes * 20.0 < updates,
        "the polled controller asks for few writes: {report}"
    );

    // Without them, every batch writes its doorbells.
    let report = vfio_perf_json(
        &target,
        &socket,
        &[&args[..], &["--no-shadow-doorbells"]].concat(),
    );
    assert_eq!(report["shadow_doorbells"], false, "{report}");
    assert!(report.get("shadow_updates").is_none(), "{report}");
    let (ios, writes) = (num(&report, "ios"), num(&report, "doorbell_writes"));
    assert!(writes >= 2.0 * ios / 32.0, "{report}");

    // Data moves right with them, through both queue pairs.
    let report = vfio_perf_json(
        &target,
        &socket,
        &[
            "--count",
            "20000",
            "-q",
            "16",
            "--queues",
            "2",
            "-w",
            "randread",
            "--busy-poll",
        ],
    );
    assert_eq!(report["shadow_doorbells"], true, "{report}");
    assert_eq!(report["ios"], 20000, "{report}");
    assert_eq!(report["io_errors"], 0, "{report}");
}

#[test]
fn vfio_user_data_moves_right_through_prps() {
    // 16 MiB of RAM; written first, then read back and checked, at 4K, 8K (PRP2 is the
    // second page) and 64K (a PRP list).
    let (target, socket) = vfio_user_target("ram = { size = \"16MiB\" }");
    for args in [
        &["--count", "4096", "-q", "16", "-w", "write", "-o", "4k"][..],
        &["--count", "3000", "-q", "8", "-w", "randrw", "-o", "8k"],
        &[
            "--count", "500", "-q", "4", "-w", "randrw", "-o", "64k", "--queues", "2",
        ],
        &[
            "--count",
            "256",
            "-q",
            "32",
            "-w",
            "read",
            "-o",
            "64k",
            "--busy-poll",
        ],
    ] {
        let report = vfio_perf_json(&target, &socket, &[args, &["--verify"]].concat());
        assert_eq!(report["verify_errors"], 0, "{args:?}: {report}");
        assert_eq!(report["io_errors"], 0, "{args:?}: {report}");
    }
    // Reads of blocks never written are counted, not checked; after --prefill every one is.
    let (fresh, socket) = vfio_user_target("ram = { size = \"4MiB\" }");
    let report = vfio_perf_json(
        &fresh,
        &socket,
        &["--count", "100", "-w", "randread", "--verify"],
    );
    assert_eq!(report["unverified_reads"], 100, "{report}");
    let report = vfio_perf_json(
        &fresh,
        &socket,
        &["--count", "500", "-w", "randread", "--verify", "--prefill"],
    );
    assert_eq!(report["prefilled"]["ios"], 1024, "{report}");
    assert_eq!(
        (
            report["unverified_reads"].as_u64(),
            report["verify_errors"].as_u64()
        ),
        (Some(0), Some(0)),
        "{report}"
    );
}

#[test]
fn vfio_user_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = vfio_perf(&dir.path().join("cntrl"), &["--count", "10"]);
    expect_failure(&out, "cannot connect to");
    let (_target, socket) = vfio_user_target("null = { size = \"1GiB\" }");
    let out = vfio_perf(&socket, &["--count", "10", "--nsid", "9"]);
    expect_failure(&out, "namespace 9 not found");
    let out = vfio_perf(
        &socket,
        &["--count", "10", "--subnqn", "nqn.2026-11.io.nvmf-tgt:other"],
    );
    expect_failure(&out, "belongs to subsystem");
    let out = vfio_perf(&socket, &["--count", "10", "--queues", "40"]);
    expect_failure(&out, "MSI-X vectors");
}

#[test]
fn a_vfio_user_target_that_stops_mid_run_is_a_timeout_and_one_that_dies_is_an_error() {
    let (target, socket) = vfio_user_target("null = { size = \"1GiB\" }");
    let child = Command::new(env!("CARGO_BIN_EXE_nvmf-perf"))
        .arg("--vfio-user")
        .arg(&socket)
        .args(["-t", "30", "-q", "4", "--timeout", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nvmf-perf");
    std::thread::sleep(std::time::Duration::from_millis(700));
    common::signal(target.pid(), "STOP");
    let out = child.wait_with_output().expect("wait");
    common::signal(target.pid(), "CONT");
    expect_failure(
        &out,
        "did not answer within 1s (waiting for I/O completions)",
    );

    let (mut target, socket) = vfio_user_target("null = { size = \"1GiB\" }");
    let child = Command::new(env!("CARGO_BIN_EXE_nvmf-perf"))
        .arg("--vfio-user")
        .arg(&socket)
        .args(["-t", "30", "-q", "4", "--timeout", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn nvmf-perf");
    std::thread::sleep(std::time::Duration::from_millis(700));
    common::signal(target.pid(), "KILL");
    let _ = target.stop();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().expect("wait");
    expect_failure(&out, "the target closed the socket");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "noticed at once"
    );
}
