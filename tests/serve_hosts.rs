//! The real binary with hosts connected: idle CPU, keep-alive expiry, allow-lists.

mod common;

use std::time::{Duration, Instant};

use common::raw_host::connect_admin;
use common::{HOSTNQN, SUBNQN, TargetProcess, TargetSpec, read_until_closed};
use nvmf_tgt::nvme::Status;

/// CPU used by the target while `hosts` admin queues sit connected for `period`.
fn idle_cpu(
    interrupt_mode: bool,
    hosts: usize,
    period: Duration,
) -> (f64, TargetProcess, Vec<std::net::TcpStream>) {
    let target = TargetProcess::start(&TargetSpec {
        interrupt_mode,
        ..TargetSpec::default()
    });
    let mut streams = Vec::new();
    for _ in 0..hosts {
        let (stream, cqe) = connect_admin(target.addr(), SUBNQN, HOSTNQN, 120_000);
        assert!(cqe.status.is_success(), "{cqe:?}");
        streams.push(stream);
    }
    // Let the busy-poll window after the connects pass before measuring.
    std::thread::sleep(Duration::from_millis(200));
    let before = target.cpu_time();
    std::thread::sleep(period);
    let used = target.cpu_time().saturating_sub(before);
    (used.as_secs_f64() / period.as_secs_f64(), target, streams)
}

#[test]
fn interrupt_mode_sleeps_with_hosts_connected_and_poll_mode_spins() {
    let (interrupt, target, _hosts) = idle_cpu(true, 16, Duration::from_secs(10));
    let status = nvmf_tgt::control::call(
        &target.control_socket(),
        "nvmf_tgt_status",
        serde_json::Value::Null,
    )
    .expect("status");
    let reactor = &status["reactors"][0];
    let idle = reactor["idle_ns"].as_u64().expect("idle");
    let busy = reactor["busy_ns"].as_u64().expect("busy");
    println!(
        "interrupt mode, 16 idle hosts: {:.3}% of a core; reactor busy {busy} ns idle {idle} ns",
        interrupt * 100.0
    );
    assert!(
        interrupt < 0.05,
        "interrupt mode used {:.1}% of a core while idle",
        interrupt * 100.0
    );
    assert!(
        idle > 9_000_000_000,
        "idle time must keep counting while asleep: {idle} ns"
    );
    assert_eq!(
        reactor["connections"].as_u64(),
        Some(16),
        "{}",
        target.log()
    );
    drop(target);

    let (poll, _target, _hosts) = idle_cpu(false, 1, Duration::from_secs(3));
    println!("poll mode, 1 idle host: {:.1}% of a core", poll * 100.0);
    // A spinning reactor takes all the CPU it is given; on a loaded 2-core machine that may be
    // well under one core, but never near the interrupt figure.
    assert!(
        poll > 0.2,
        "poll mode should spin, used only {:.1}%",
        poll * 100.0
    );
}

#[test]
fn keep_alive_expiry_disconnects_a_silent_host() {
    let target = TargetProcess::start(&TargetSpec::default());
    let (mut stream, cqe) = connect_admin(target.addr(), SUBNQN, HOSTNQN, 1000);
    assert!(cqe.status.is_success(), "{cqe:?}");
    let started = Instant::now();
    let rest = read_until_closed(&mut stream);
    let waited = started.elapsed();
    assert!(
        rest.is_empty(),
        "nothing but a close expected, got {rest:02x?}"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "closed too late: {waited:?}"
    );
    assert!(
        target.log().contains("keep-alive timeout expired"),
        "{}",
        target.log()
    );
}

#[test]
fn hosts_not_on_the_allow_list_are_refused() {
    let allowed = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    let target = TargetProcess::start(&TargetSpec {
        extra_subsystem_keys: format!("hosts = [\"{allowed}\"]\n"),
        ..TargetSpec::default()
    });
    let (_stream, cqe) = connect_admin(target.addr(), SUBNQN, HOSTNQN, 30_000);
    assert_eq!(cqe.status, Status::CONNECT_INVALID_HOST.with_dnr());
    let (_stream, cqe) = connect_admin(target.addr(), SUBNQN, allowed, 30_000);
    assert!(cqe.status.is_success(), "{cqe:?}");
    let (_stream, cqe) = connect_admin(
        target.addr(),
        "nqn.2026-11.io.nvmf-tgt:nope",
        allowed,
        30_000,
    );
    assert_eq!(
        cqe.status,
        Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
        "unknown subsystem"
    );
}

#[test]
fn connections_spread_over_reactors_and_ipv6_listeners_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let config = format!(
        "[target]\ninterrupt_mode = true\ncore_mask = \"0-1\"\ncontrol_socket = \"{}\"\n\n\
         [transport.tcp]\n\n[[subsystem]]\nnqn = \"{SUBNQN}\"\nallow_any_host = true\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"::1\"\nport = {port}\n\n\
         [[subsystem.namespace]]\nnsid = 1\nnull = {{ size = \"1GiB\" }}\n",
        dir.path().join("ctl.sock").display()
    );
    let target = TargetProcess::start_with_config(dir, port, &config);
    let v6: std::net::SocketAddr = format!("[::1]:{port}").parse().expect("v6 addr");
    let mut streams = Vec::new();
    for i in 0..4 {
        let addr = if i % 2 == 0 { target.addr() } else { v6 };
        let (stream, cqe) = connect_admin(addr, SUBNQN, HOSTNQN, 60_000);
        assert!(cqe.status.is_success(), "{cqe:?} via {addr}");
        streams.push(stream);
    }
    std::thread::sleep(Duration::from_millis(100));
    let status = nvmf_tgt::control::call(
        &target.control_socket(),
        "nvmf_tgt_status",
        serde_json::Value::Null,
    )
    .expect("status");
    let per_reactor: Vec<u64> = status["reactors"]
        .as_array()
        .expect("reactors")
        .iter()
        .map(|r| r["connections"].as_u64().expect("connections"))
        .collect();
    assert_eq!(
        per_reactor,
        vec![2, 2],
        "least-loaded placement over two reactors"
    );
    let reactors = nvmf_tgt::control::call(
        &target.control_socket(),
        "framework_get_reactors",
        serde_json::Value::Null,
    )
    .expect("framework_get_reactors");
    assert_eq!(reactors["reactors"].as_array().map(Vec::len), Some(2));
    assert_eq!(reactors["reactors"][1]["lcore"].as_u64(), Some(1));
}
