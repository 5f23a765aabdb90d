//! The Prometheus endpoint with the real binary: scraped over HTTP as Prometheus does, its
//! figures following the I/O a host does, moved and closed by reloads, and unmoved by
//! requests that are not scrapes.

// Helpers outside #[test] functions panic on purpose: a broken target fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{HOSTNQN, SUBNQN, TargetProcess, free_port};
use nvmf_tgt::host::{HostQueue, QueueOptions};

fn declaration(dir: &Path, port: u16, metrics: &str) -> String {
    format!(
        "[target]\ninterrupt_mode = true\ncore_mask = \"0x1\"\ncontrol_socket = \"{}\"\n\n\
         {metrics}\n\
         [transport.tcp]\n\n\
         [[subsystem]]\nnqn = \"{SUBNQN}\"\nallow_any_host = true\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [[subsystem.namespace]]\nnsid = 1\nram = {{ size = \"16MiB\" }}\n",
        dir.join("ctl.sock").display()
    )
}

fn metrics_at(port: u16) -> String {
    format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
}

/// Sends `request` to the endpoint on `port`; the status line and the body.
fn http(port: u16, request: &str) -> std::io::Result<(String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

fn scrape(port: u16) -> String {
    let (status, body) = http(
        port,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF: {body}"
    );
    body
}

/// The value of the sample `name{labels}` (labels as they appear, in order).
fn sample(body: &str, name_and_labels: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name_and_labels}:\n{body}"))
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits until something answers on `port` (`up`) or nothing does.
fn wait_for_endpoint(port: u16, up: bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_ok() != up {
        assert!(
            Instant::now() < deadline,
            "endpoint on {port} never went {}:\n{}",
            if up { "up" } else { "down" },
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scrapes_follow_the_io_and_reloads_move_and_close_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics_port = free_port();
    let text = declaration(dir.path(), port, &metrics_at(metrics_port));
    let target = TargetProcess::start_with_config(dir, port, &text);
    wait_for_endpoint(metrics_port, true, || target.log());

    let opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut admin = HostQueue::connect(target.addr(), &opts).unwrap();
    admin.enable_controller().unwrap();
    let mut io = HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).unwrap();
    for lba in 0..5 {
        io.write(1, lba * 8, vec![1; 4096], 512).unwrap();
    }
    for _ in 0..2 {
        io.read(1, 0, 8, 512).unwrap();
    }

    let body = scrape(metrics_port);
    let ns = format!("{{subsystem=\"{SUBNQN}\",nsid=\"1\",op=");
    assert_eq!(
        sample(
            &body,
            &format!("nvmf_tgt_namespace_ops_total{ns}\"write\"}}")
        ),
        5.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("nvmf_tgt_namespace_ops_total{ns}\"read\"}}")
        ),
        2.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("nvmf_tgt_namespace_bytes_total{ns}\"write\"}}")
        ),
        5.0 * 4096.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("nvmf_tgt_namespace_latency_seconds_count{ns}\"write\"}}")
        ),
        5.0
    );
    assert_eq!(
        sample(
            &body,
            &format!(
                "nvmf_tgt_namespace_latency_seconds_bucket{{le=\"+Inf\",subsystem=\"{SUBNQN}\",nsid=\"1\",op=\"write\"}}"
            )
        ),
        5.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("nvmf_tgt_namespace_size_bytes{{subsystem=\"{SUBNQN}\",nsid=\"1\"}}")
        ),
        16.0 * 1024.0 * 1024.0
    );
    let reactor = "{reactor=\"0\",core=\"0\"}";
    assert_eq!(
        sample(&body, &format!("nvmf_tgt_reactor_interrupt_mode{reactor}")),
        1.0
    );
    assert_eq!(
        sample(&body, &format!("nvmf_tgt_reactor_connections{reactor}")),
        2.0
    );
    assert!(
        sample(
            &body,
            &format!("nvmf_tgt_reactor_idle_seconds_total{reactor}")
        ) > 0.0
    );
    assert_eq!(
        sample(
            &body,
            &format!("nvmf_tgt_subsystem_controllers{{subsystem=\"{SUBNQN}\"}}")
        ),
        1.0
    );
    assert_eq!(sample(&body, "nvmf_tgt_buffer_pool_buffers{}"), 511.0);
    assert_eq!(sample(&body, "nvmf_tgt_reload_generation{}"), 1.0);

    // What is not a scrape changes nothing and gets an answer that says why.
    assert_eq!(
        http(metrics_port, "POST /metrics HTTP/1.1\r\n\r\n")
            .unwrap()
            .0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        http(metrics_port, "GET /nothing HTTP/1.1\r\n\r\n")
            .unwrap()
            .0,
        "HTTP/1.1 404 Not Found"
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let (status, _) = http(metrics_port, &huge).unwrap_or_default();
    assert!(
        status.is_empty() || status == "HTTP/1.1 431 Request Header Fields Too Large",
        "{status}"
    );
    // A client that never finishes its request holds the endpoint for 2 s at most.
    let mut stalled = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    let started = Instant::now();
    scrape(metrics_port);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a stalled client held the endpoint"
    );
    drop(stalled);

    // A reload moves the endpoint: the new port serves, the old one is closed.
    let moved = free_port();
    std::fs::write(
        &target.config_path,
        declaration(target.dir.path(), port, &metrics_at(moved)),
    )
    .unwrap();
    wait_for_endpoint(moved, true, || target.log());
    wait_for_endpoint(metrics_port, false, || target.log());
    let body = scrape(moved);
    assert_eq!(sample(&body, "nvmf_tgt_reload_generation{}"), 2.0);
    assert_eq!(
        sample(&body, "nvmf_tgt_reload_last_result{result=\"applied\"}"),
        1.0
    );
    assert!(sample(&body, "nvmf_tgt_reload_last_duration_seconds{}") > 0.0);
    // Counters survive a reload that does not touch the namespace.
    assert_eq!(
        sample(
            &body,
            &format!("nvmf_tgt_namespace_ops_total{ns}\"write\"}}")
        ),
        5.0
    );
    // The I/O queue kept working meanwhile.
    io.read(1, 0, 8, 512).unwrap();

    // Removing [metrics] closes it.
    std::fs::write(
        &target.config_path,
        declaration(target.dir.path(), port, ""),
    )
    .unwrap();
    wait_for_endpoint(moved, false, || target.log());
    io.read(1, 0, 8, 512).unwrap();
}

#[test]
fn a_listen_that_is_no_address_or_an_nvme_listener_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    for (metrics, message) in [
        (
            "[metrics]\nlisten = \"localhost:9464\"\n",
            "is not ADDRESS:PORT with an IP address",
        ),
        (
            &metrics_at(port) as &str,
            "is also an NVMe/TCP listener's address",
        ),
    ] {
        let path = dir.path().join("target.toml");
        std::fs::write(&path, declaration(dir.path(), port, metrics)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nvmf-tgt"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains(message), "{text}");
        assert!(
            text.contains(&format!("{}:7:10: error: `listen`", path.display())),
            "the listen line is named: {text}"
        );
    }
}
