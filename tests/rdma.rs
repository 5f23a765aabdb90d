//! `nvmf-tgt run` with an RDMA listener on a machine without RDMA (as the test machines are):
//! it fails cleanly, with an error that names the listener, never a crash. (A build without
//! the `rdma` feature refuses RDMA listeners at `check`: see the config tests.)

#![cfg(feature = "rdma")]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nvmf-tgt");

#[test]
fn run_without_an_rdma_device_names_the_listener() {
    if nvmf_tgt::sys::verbs::device_count().is_ok_and(|n| n > 0) {
        eprintln!("this machine has an RDMA device: nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.toml");
    let text = format!(
        r#"[target]
control_socket = "{}"

[transport.rdma]

[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-tgt:rdma"
allow_any_host = true

[[subsystem.listener]]
transport = "rdma"
address = "127.0.0.1"
port = 4420

[[subsystem.namespace]]
nsid = 1
ram = {{ size = "1MiB" }}
"#,
        dir.path().join("s").display()
    );
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--no-watch", "-c", &path.display().to_string()])
        .output()
        .expect("run nvmf-tgt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on rdma 127.0.0.1:4420"),
        "{stderr}"
    );
    assert!(stderr.contains("RDMA device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
