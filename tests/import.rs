//! `nvmf-tgt import` with the real binary: a saved SPDK configuration and a saved nvmetcli
//! one become declarations that `check` accepts and that serve a host, names that are not
//! NQNs included.

// Helpers outside #[test] functions panic on purpose: a broken import fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{HOSTNQN, TargetProcess, free_port};
use nvmf_tgt::host::{HostQueue, QueueOptions};

const BIN: &str = env!("CARGO_BIN_EXE_nvmf-tgt");

/// `nvmf-tgt import --from FORMAT` of `json`: exit code, stdout, stderr.
fn import(format: &str, json: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saved.json");
    std::fs::write(&path, json).unwrap();
    let out = Command::new(BIN)
        .args(["import", "--from", format])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Serves an imported declaration, its control socket in the test's directory.
fn serve(declaration: &str, port: u16) -> TargetProcess {
    let dir = tempfile::tempdir().unwrap();
    let text = declaration.replacen(
        "[target]\n",
        &format!(
            "[target]\ncontrol_socket = \"{}\"\n",
            dir.path().join("ctl.sock").display()
        ),
        1,
    );
    TargetProcess::start_with_config(dir, port, &text)
}

/// Connects to `subnqn`, writes a block and reads it back.
fn round_trip(target: &TargetProcess, subnqn: &str) {
    let opts = QueueOptions::admin(subnqn, HOSTNQN);
    let mut admin = HostQueue::connect(target.addr(), &opts).unwrap();
    admin.enable_controller().unwrap();
    let mut io = HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 8)).unwrap();
    io.write(1, 16, vec![0x5a; 4096], 512).unwrap();
    assert_eq!(io.read(1, 16, 8, 512).unwrap(), vec![0x5a; 4096]);
}

#[test]
fn an_spdk_save_config_serves_its_subsystem() {
    let port = free_port();
    let saved = format!(
        r#"{{"subsystems": [
  {{"subsystem": "bdev", "config": [
    {{"method": "bdev_malloc_create", "params": {{"name": "Malloc0", "num_blocks": 32768, "block_size": 512, "uuid": "3f0d6c55-6a4f-4a3e-9a5d-2d1d8c9e1a01"}}}}
  ]}},
  {{"subsystem": "nvmf", "config": [
    {{"method": "nvmf_create_transport", "params": {{"trtype": "TCP", "max_queue_depth": 64, "zcopy": false}}}},
    {{"method": "nvmf_create_subsystem", "params": {{"nqn": "nqn.2016-06.io.spdk:cnode1", "allow_any_host": false, "serial_number": "SPDK00000000000001", "model_number": "SPDK bdev Controller", "max_namespaces": 32}}}},
    {{"method": "nvmf_subsystem_add_host", "params": {{"nqn": "nqn.2016-06.io.spdk:cnode1", "host": "{HOSTNQN}"}}}},
    {{"method": "nvmf_subsystem_add_ns", "params": {{"nqn": "nqn.2016-06.io.spdk:cnode1", "namespace": {{"nsid": 1, "bdev_name": "Malloc0"}}}}}},
    {{"method": "nvmf_subsystem_add_listener", "params": {{"nqn": "nqn.2016-06.io.spdk:cnode1", "listen_address": {{"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "{port}"}}}}}}
  ]}}
]}}"#
    );
    let (code, declaration, err) = import("spdk", &saved);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        declaration.contains("# not carried over (no such option here): zcopy = false"),
        "{declaration}"
    );
    let target = serve(&declaration, port);
    round_trip(&target, "nqn.2016-06.io.spdk:cnode1");
}

#[test]
fn an_nvmetcli_configuration_with_a_configfs_name_serves_it() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let image = common::write_file(dir.path(), "disk0.img", 8 << 20);
    let port = free_port();
    let saved = format!(
        r#"{{"hosts": [],
 "ports": [{{"addr": {{"adrfam": "ipv4", "traddr": "127.0.0.1", "treq": "not specified", "trsvcid": "{port}", "trtype": "tcp"}},
            "portid": 1, "referrals": [], "subsystems": ["testnqn"], "param": {{"inline_data_size": "8192"}}}}],
 "subsystems": [{{"allowed_hosts": [], "attr": {{"allow_any_host": "1", "model": "Linux", "serial": "1d8ea1f2d18c5b0c", "version": "1.3"}},
                 "namespaces": [{{"device": {{"nguid": "00000000-0000-0000-0000-000000000000", "path": "{}", "uuid": "6f5a2c1e-8b3d-4e7f-9a1b-2c3d4e5f6a71"}}, "enable": 1, "nsid": 1}}],
                 "nqn": "testnqn"}}]}}"#,
        image.display()
    );
    let (code, declaration, err) = import("nvmetcli", &saved);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("subsystem NQN \"testnqn\" must start with \"nqn.\""),
        "{err}"
    );
    let target = serve(&declaration, port);
    round_trip(&target, "testnqn");

    // `check --strict` refuses the name, as every warning.
    let strict = target.dir.path().join("target.toml");
    let out = Command::new(BIN)
        .args(["check", "--strict", "-c"])
        .arg(&strict)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn what_cannot_be_read_or_is_not_a_configuration_exits_2() {
    let (code, _, err) = import("spdk", "{\"not\": \"spdk\"}");
    assert_eq!(code, Some(2));
    assert!(err.contains("no \"subsystems\" array"), "{err}");
    let out = Command::new(BIN)
        .args(["import", "--from", "nvmetcli", "/nonexistent.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
