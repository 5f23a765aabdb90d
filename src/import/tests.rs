//! Saved configurations of each kind, written from the formats' own writers (SPDK's
//! `*_write_config_json`, nvmetcli's `save`), imported and checked with `check`'s rules.

use super::*;
use crate::config::{Environment, Purpose, check_text};

const SPDK: &str = include_str!("../../tests/fixtures/import/spdk_save_config.json");
const NVMETCLI: &str = include_str!("../../tests/fixtures/import/nvmetcli_config.json");

/// Imports, then checks as `check` would on a machine without the backing files: the
/// result must be valid (warnings only, and only for missing files and names).
fn imported(format: Format, text: &str) -> (String, crate::config::Config, Vec<String>) {
    let toml = import(format, text).expect("imports");
    let (config, report) = check_text(
        "imported.toml",
        toml.clone(),
        Purpose::Check,
        &Environment::fixed(vec![0]),
    );
    let rendered = report.render();
    let config = config.unwrap_or_else(|| panic!("{rendered}\n{toml}"));
    (toml, config, rendered.lines().map(str::to_owned).collect())
}

#[test]
fn spdk_malloc_null_aio_and_uring_bdevs_become_namespaces() {
    let (toml, config, findings) = imported(Format::Spdk, SPDK);
    assert_eq!(config.subsystem.len(), 2, "{toml}");
    let one = &config.subsystem[0];
    assert_eq!(one.nqn, "nqn.2016-06.io.spdk:cnode1");
    assert_eq!(one.serial, "SPDK00000000000001");
    assert_eq!(one.model, "SPDK bdev Controller");
    assert!(!one.allow_any_host);
    assert_eq!(
        one.hosts,
        ["nqn.2014-08.org.nvmexpress:uuid:2b6b1e0c-7f4e-4b6e-9a3c-1d2e3f4a5b6c"]
    );
    assert_eq!(one.listener.len(), 1);
    assert_eq!(one.listener[0].address.as_deref(), Some("127.0.0.1"));
    assert_eq!(one.listener[0].port, Some(4420));
    // Malloc0 is 64 MiB of RAM; Nvme0n1 comes from a PCIe controller and is left out.
    assert_eq!(one.namespace.len(), 1, "{toml}");
    assert_eq!(one.namespace[0].nsid, 1);
    assert!(toml.contains("ram = { size = \"67108864B\" }"), "{toml}");
    assert!(
        toml.contains("uuid = \"3f0d6c55-6a4f-4a3e-9a5d-2d1d8c9e1a01\""),
        "{toml}"
    );
    assert!(
        toml.contains("# not carried over: namespace 2 on bdev Nvme0n1, which is not declared"),
        "{toml}"
    );

    let two = &config.subsystem[1];
    assert!(two.allow_any_host);
    assert_eq!(two.max_namespaces, 4096, "SPDK's 0 is no limit");
    assert_eq!(
        two.namespace.iter().map(|n| n.nsid).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        toml.contains("null = { size = \"8589934592B\" }\nblock_size = 4096"),
        "{toml}"
    );
    assert!(
        toml.contains("file = { path = \"/var/lib/images/vol0.img\" }"),
        "{toml}"
    );
    assert!(
        toml.contains("file = { path = \"/dev/nvme1n1\" }\nblock_size = 4096"),
        "{toml}"
    );

    // The transport keeps SPDK's options we have and names those we do not.
    let tcp = config.transport.tcp.as_ref().expect("tcp declared");
    assert_eq!(
        (
            tcp.max_queue_depth,
            tcp.num_shared_buffers,
            tcp.buf_cache_size
        ),
        (128, 511, None)
    );
    assert!(
        toml.contains("# not carried over (no such option here): "),
        "{toml}"
    );
    assert!(toml.contains("zcopy = false"), "{toml}");
    assert!(
        toml.contains("not carried over: nvmf_set_config, SPDK subsystem iobuf (1 calls), SPDK subsystem sock (1 calls), SPDK subsystem scheduler (1 calls)"),
        "{toml}"
    );
    // Only the backing files this machine lacks are findings.
    assert!(
        findings
            .iter()
            .filter(|f| f.contains(": warning: ") || f.contains(": error: "))
            .all(|f| f.contains("does not exist")),
        "{findings:?}"
    );
}

#[test]
fn nvmetcli_ports_subsystems_and_device_paths_carry_over() {
    let (toml, config, findings) = imported(Format::Nvmetcli, NVMETCLI);
    assert_eq!(config.subsystem.len(), 2, "{toml}");
    let test = &config.subsystem[0];
    // A configfs directory name as the NQN: served, with a warning.
    assert_eq!(test.nqn, "testnqn");
    assert!(test.allow_any_host);
    assert_eq!(test.serial, "1d8ea1f2d18c5b0c");
    assert_eq!(
        test.listener.len(),
        1,
        "the loop port is not carried: {toml}"
    );
    assert_eq!(
        test.namespace.len(),
        1,
        "the disabled namespace is not: {toml}"
    );
    assert!(toml.contains("file = { path = \"/var/lib/nvmet/disk0.img\" }\nuuid = \"6f5a2c1e-8b3d-4e7f-9a1b-2c3d4e5f6a71\""), "{toml}");
    assert!(
        !toml.contains("00000000-0000-0000-0000-000000000000"),
        "zero ids are nvmet's none: {toml}"
    );
    assert!(
        toml.contains("namespace 2 on /dev/loop7, disabled in nvmet"),
        "{toml}"
    );
    assert!(toml.contains("attr_qid_max = 128"), "{toml}");
    assert!(toml.contains("port 2 (loop: not supported here)"), "{toml}");

    let vol = &config.subsystem[1];
    assert_eq!(
        vol.hosts,
        ["nqn.2014-08.org.nvmexpress:uuid:5b1d1e8e-7d0a-4c2e-9a39-3f0a6a7e0001"]
    );
    assert!(
        toml.contains("nguid = \"8c3a5e7f-1b2d-4c6e-9f0a-1b2c3d4e5f60\""),
        "{toml}"
    );
    assert_eq!(
        config
            .transport
            .tcp
            .as_ref()
            .map(|t| t.in_capsule_data_size),
        Some(16384)
    );
    assert!(
        findings
            .iter()
            .any(|f| f.contains("warning: subsystem NQN \"testnqn\" must start with \"nqn.\"")),
        "{findings:?}"
    );
}

#[test]
fn what_is_not_a_saved_configuration_is_said_so() {
    for format in [Format::Spdk, Format::Nvmetcli] {
        assert!(matches!(import(format, "{"), Err(ImportError::Json(_))));
        let err = import(format, "{\"bdevs\": []}").expect_err("no subsystems");
        assert!(err.to_string().contains("\"subsystems\""), "{err}");
    }
    // Hostile shapes give a declaration or an error, never a panic.
    for text in [
        r#"{"subsystems": [{"subsystem": "nvmf", "config": [{"method": "nvmf_subsystem_add_ns", "params": {"namespace": 3}}]}]}"#,
        r#"{"subsystems": [{"subsystem": "nvmf", "config": [7, {"method": 1}, {"method": "nvmf_create_subsystem", "params": []}]}]}"#,
        r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "m", "num_blocks": "x"}}]}]}"#,
    ] {
        import(Format::Spdk, text).expect("a declaration");
    }
    import(Format::Nvmetcli, r#"{"subsystems": [{"nqn": 5}, {"nqn": "a", "namespaces": [{"nsid": "x"}, 3]}], "ports": [1, {"addr": 2}]}"#)
        .expect("a declaration");
}
