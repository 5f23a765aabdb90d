//! Each rule of `check`, shown with the message and the location it reports.

use super::*;

/// A valid base that each case edits.
const BASE: &str = r#"[target]
interrupt_mode = true
core_mask = "0x1"

[transport.tcp]

[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-tgt:a"
allow_any_host = true

[[subsystem.listener]]
transport = "tcp"
address = "127.0.0.1"
port = 4420

[[subsystem.namespace]]
nsid = 1
ram = { size = "64MiB" }
"#;

fn env() -> Environment {
    Environment::fixed(vec![0, 1])
}

/// "line:col severity: message" for every finding, in file order.
fn findings_for(text: &str, purpose: Purpose) -> Vec<String> {
    let (_, report) = check_text("t.toml", text.to_string(), purpose, &env());
    let json = report.to_json();
    json["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}:{} {}: {}",
                d["line"],
                d["column"],
                d["severity"].as_str().unwrap(),
                d["message"].as_str().unwrap()
            )
        })
        .collect()
}

fn findings(text: &str) -> Vec<String> {
    findings_for(text, Purpose::Check)
}

/// Asserts that `text` yields exactly `expected`.
fn assert_findings(text: &str, expected: &[&str]) {
    assert_eq!(findings(text), expected, "for:\n{text}");
}

fn with(replace: &str, by: &str) -> String {
    assert!(BASE.contains(replace), "{replace:?} not in BASE");
    BASE.replacen(replace, by, 1)
}

#[test]
fn base_is_valid_with_a_summary() {
    let (config, report) = check_text("t.toml", BASE.into(), Purpose::Check, &env());
    assert!(config.is_some());
    assert_eq!(
        report.render(),
        "t.toml: valid: 1 subsystem, 1 namespace, 1 listener, interrupt mode\n"
    );
}

#[test]
fn fc_is_refused_in_both_modes() {
    assert_findings(
        &format!("{BASE}\n[transport.fc]\n"),
        &[
            "20:12 error: the FC transport has no interrupt mode (and this target does not serve FC)",
        ],
    );
    let poll = with("interrupt_mode = true", "interrupt_mode = false");
    assert_findings(
        &format!("{poll}\n[transport.fc]\n"),
        &["20:12 error: the FC transport is not supported by this target"],
    );
}

#[test]
fn uring_sockets_need_poll_mode() {
    assert_findings(
        &with(
            "[transport.tcp]\n",
            "[transport.tcp]\nsock_impl = \"uring\"\n",
        ),
        &["6:13 error: io_uring sockets (sock_impl = \"uring\") have no interrupt mode"],
    );
}

#[test]
fn vfio_user_in_interrupt_mode_needs_trapped_doorbells() {
    let text = format!("{BASE}\n[transport.vfiouser]\nmax_queue_depth = 64\n");
    assert_findings(
        &text,
        &[
            "20:12 error: vfio-user in interrupt mode needs disable_mappable_bar0 = true: doorbells in a mapped BAR0 can only be polled",
        ],
    );
    let fixed = format!("{BASE}\n[transport.vfiouser]\ndisable_mappable_bar0 = true\n");
    assert_findings(&fixed, &[]);
}

#[test]
fn adaptive_interrupts_in_interrupt_mode_are_turned_off_silently() {
    // As SPDK: interrupt mode turns them off whatever the key says, and says nothing.
    for value in ["false", "true"] {
        let text = format!(
            "{BASE}\n[transport.vfiouser]\ndisable_mappable_bar0 = true\ndisable_adaptive_irq = {value}\n"
        );
        assert_findings(&text, &[]);
    }
}

#[test]
fn listeners_need_declared_transports_and_distinct_sockets() {
    assert_findings(
        &with("transport = \"tcp\"", "transport = \"rdma\""),
        &["12:13 error: this listener uses transport `rdma`, but [transport.rdma] is not declared"],
    );
    let second = r#"
[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-tgt:b"
allow_any_host = true

[[subsystem.listener]]
transport = "rdma"
address = "127.0.0.1"
port = 4420
"#;
    let text = format!("{}\n[transport.rdma]\n{second}", BASE);
    let clash = "28:11 error: 127.0.0.1:4420 is already claimed by the tcp listener subsystem[0].listener[0]; two transports cannot share an address and port";
    if cfg!(feature = "rdma") {
        assert_findings(&text, &[clash]);
    } else {
        assert_findings(
            &text,
            &[
                "27:13 warning: this build has no NVMe/RDMA (built without `--features rdma`); the rdma listener is refused at run",
                clash,
            ],
        );
    }
    // Several subsystems of one transport share a socket.
    let shared = second.replace("rdma", "tcp");
    assert_findings(&format!("{BASE}{shared}"), &[]);
}

#[test]
fn listener_shapes() {
    assert_findings(
        &with("address = \"127.0.0.1\"\n", ""),
        &["11:1 error: a tcp listener needs an `address`"],
    );
    assert_findings(
        &with("address = \"127.0.0.1\"", "address = \"storage.example\""),
        &[
            "13:11 error: \"storage.example\" is not an IPv4 or IPv6 address (host names are not resolved)",
        ],
    );
    assert_findings(
        &with("port = 4420", "port = 70000"),
        &["14:8 error: `port` = 70000 is above the maximum of 65535"],
    );
}

#[test]
fn nqn_syntax_and_uniqueness() {
    // nvmet's configfs names (`testnqn`, `blktests-subsystem-1`) are served, with a warning.
    assert_findings(
        &with("nqn.2026-11.io.nvmf-tgt:a", "blktests-subsystem-1"),
        &[
            "8:7 warning: subsystem NQN \"blktests-subsystem-1\" must start with \"nqn.\" (NVMe Base 4.5, NVMe Qualified Names); hosts can connect to it, but it is not a valid NQN (an error under --strict)",
        ],
    );
    assert_findings(
        &with("nqn.2026-11.io.nvmf-tgt:a", "two words"),
        &[
            "8:7 error: subsystem NQN \"two words\" contains ' '; an NQN has no spaces or control characters",
        ],
    );
    assert_findings(
        &with("nvmf-tgt:a", "nvmf-tgt"),
        &[
            "8:7 warning: subsystem NQN \"nqn.2026-11.io.nvmf-tgt\" needs a colon after the reverse domain, as in \"nqn.2014-08.com.example:disk1\" (NVMe Base 4.5, NVMe Qualified Names); hosts can connect to it, but it is not a valid NQN (an error under --strict)",
        ],
    );
    assert_findings(
        &with(
            "nqn.2026-11.io.nvmf-tgt:a",
            "nqn.2014-08.org.nvmexpress.discovery",
        ),
        &[
            "8:7 error: the discovery NQN is served by the target itself and cannot name a subsystem",
        ],
    );
    let long = format!("nqn.2026-11.io.nvmf-tgt:{}", "x".repeat(200));
    assert_findings(
        &with("nqn.2026-11.io.nvmf-tgt:a", &long),
        &[
            format!("8:7 error: subsystem NQN \"{long}\" is 224 bytes; an NQN is at most 223")
                .as_str(),
        ],
    );
    let dup = format!(
        "{BASE}\n[[subsystem]]\nnqn = \"nqn.2026-11.io.nvmf-tgt:a\"\nallow_any_host = true\n"
    );
    assert_findings(
        &dup,
        &[
            "21:7 error: subsystem NQN \"nqn.2026-11.io.nvmf-tgt:a\" is already declared by subsystem[0]",
            "21:7 warning: subsystem \"nqn.2026-11.io.nvmf-tgt:a\" has no listener: no host can reach it",
        ],
    );
}

#[test]
fn serial_model_and_namespace_counts() {
    assert_findings(
        &with(
            "allow_any_host = true",
            "allow_any_host = true\nserial = \"123456789012345678901\"\nmodel = \"tab\\there\"",
        ),
        &[
            "10:10 error: `serial` is 21 characters; Identify holds at most 20",
            "11:9 error: `model` may hold printable ASCII only, not '\\t'",
        ],
    );
    assert_findings(
        &with(
            "allow_any_host = true",
            "allow_any_host = true\nmax_namespaces = 1",
        )
        .replace("nsid = 1\nram", "nsid = 2\nram"),
        &["18:8 error: nsid 2 is above this subsystem's `max_namespaces` (1)"],
    );
    let two = format!(
        "{}\n[[subsystem.namespace]]\nnsid = 1\nnull = {{ size = \"1GiB\" }}\n",
        with(
            "allow_any_host = true",
            "allow_any_host = true\nmax_namespaces = 1"
        )
    );
    assert_findings(
        &two,
        &[
            "10:1 error: subsystem \"nqn.2026-11.io.nvmf-tgt:a\" declares 2 namespaces but `max_namespaces` is 1",
            "22:8 error: nsid 1 is already used by namespace[0] of this subsystem",
        ],
    );
    assert_findings(
        &with("nsid = 1", "nsid = 4294967295"),
        &["17:8 error: `nsid` = 4294967295 is above the maximum of 4294967294"],
    );
}

#[test]
fn namespace_identifiers_are_unique_and_never_zero() {
    let uuid = "uuid = \"6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001\"";
    let text = format!(
        "{}\n[[subsystem.namespace]]\nnsid = 2\nnull = {{ size = 4096 }}\n{uuid}\nnguid = \"00000000000000000000000000000000\"\n",
        with(
            "ram = { size = \"64MiB\" }",
            &format!("ram = {{ size = \"64MiB\" }}\n{uuid}")
        )
    );
    assert_findings(
        &text,
        &[
            "24:8 error: `uuid` 6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001 is already used by subsystem[0].namespace[0]",
            "25:9 error: `nguid` cannot be all zeros (hosts read that as \"no nguid\")",
        ],
    );
    assert_findings(
        &with(
            "ram = { size = \"64MiB\" }",
            "ram = { size = \"64MiB\" }\neui64 = \"12-34\"",
        ),
        &[
            "19:9 error: `eui64` = \"12-34\" is not an EUI-64: 16 hex digits, optionally in pairs joined by '-' or ':'",
        ],
    );
}

#[test]
fn hosts_and_allow_lists() {
    assert_findings(
        &with(
            "allow_any_host = true",
            "allow_any_host = true\nhosts = [\"nqn.2014-08.org.nvmexpress:uuid:6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001\"]",
        ),
        &[
            "10:1 warning: `hosts` has no effect while `allow_any_host = true`: every host may connect",
        ],
    );
    let named = format!(
        "[[host]]\nname = \"db-01\"\nnqn = \"nqn.2014-08.org.nvmexpress:uuid:6a1c3c5e-0f1e-4d6a-9c1b-2f7d3a9e0001\"\n\n[[host]]\nname = \"bad\"\nnqn = \"host-7\"\n{}",
        with("allow_any_host = true", "hosts = [\"db-01\", \"db-1\"]")
    );
    assert_findings(
        &named,
        &[
            "7:7 error: host NQN \"host-7\" must start with \"nqn.\"",
            "16:19 error: `db-1` is neither a [[host]] name nor a valid host NQN: it must start with \"nqn.\"",
        ],
    );
    assert_findings(
        &with("allow_any_host = true\n", ""),
        &["8:7 warning: no host may connect: `hosts` is empty and `allow_any_host` is false"],
    );
}

#[test]
fn transport_limits() {
    let text = with(
        "[transport.tcp]\n",
        "[transport.tcp]\nmax_queue_depth = 1\nin_capsule_data_size = 4100\nmax_io_size = 1000\nio_unit_size = 512\nmax_aq_depth = 8\n",
    );
    assert_findings(
        &text,
        &[
            "6:19 error: tcp `max_queue_depth` must be 2..=65535, not 1",
            "7:24 error: tcp `in_capsule_data_size` must be a multiple of 16, not 4100",
            "8:15 error: tcp `max_io_size` must be a multiple of 4096 between 4096 and 8388608, not 1000",
            "10:16 error: tcp `max_aq_depth` must be 32..=4096 (hosts open admin queues of 32), not 8",
        ],
    );
    let text = with(
        "[transport.tcp]\n",
        "[transport.tcp]\nin_capsule_data_size = 262144\nio_unit_size = 4096\n",
    );
    assert_findings(
        &text,
        &[
            "6:24 error: tcp `in_capsule_data_size` 262144 is larger than `max_io_size` 131072",
            "7:16 error: tcp `io_unit_size` 4096 splits `max_io_size` 131072 into more than 16 units",
        ],
    );
}

#[test]
fn a_shared_receive_queue_needs_a_depth() {
    let text = with(
        "[transport.tcp]\n",
        "[transport.tcp]\n[transport.rdma]\nmax_srq_depth = 1\n",
    );
    assert_findings(
        &text,
        &["7:17 error: rdma `max_srq_depth` must be 2..=65535, not 1"],
    );
    // Without an SRQ the depth means nothing.
    let text = with(
        "[transport.tcp]\n",
        "[transport.tcp]\n[transport.rdma]\nmax_srq_depth = 1\nno_srq = true\n",
    );
    assert_findings(&text, &[]);
}

#[test]
fn control_socket_group_against_this_machine() {
    // A machine with one group, "nvmf", and one whose group database cannot be reached.
    let with_nvmf = Environment {
        group_id: Box::new(|name| Ok((name == "nvmf").then_some(1234))),
        ..env()
    };
    let unreachable = Environment {
        group_id: Box::new(|_| Err("no NSS service answers".into())),
        ..env()
    };
    let rendered = |text: &str, purpose, env: &Environment| {
        check_text("t.toml", text.to_string(), purpose, env)
            .1
            .to_json()["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                format!(
                    "{}:{} {}: {}",
                    d["line"],
                    d["column"],
                    d["severity"].as_str().unwrap(),
                    d["message"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };
    let text = with("[target]", "[target]\ncontrol_socket_group = \"nvmf\"");
    assert!(rendered(&text, Purpose::Run, &with_nvmf).is_empty());
    let missing = with("[target]", "[target]\ncontrol_socket_group = \"storage\"");
    assert_eq!(
        rendered(&missing, Purpose::Check, &with_nvmf),
        ["2:24 warning: group \"storage\" does not exist"]
    );
    assert_eq!(
        rendered(&missing, Purpose::Run, &with_nvmf),
        ["2:24 error: group \"storage\" does not exist"]
    );
    assert_eq!(
        rendered(&text, Purpose::Run, &unreachable),
        ["2:24 error: cannot look up group \"nvmf\": no NSS service answers"]
    );
    assert_findings(
        &with("[target]", "[target]\ncontrol_socket_group = \"\""),
        &["2:24 error: \"\" is shorter than 1 character"],
    );
}

#[test]
fn control_socket_must_fit_a_unix_socket_address() {
    let long = format!("/run/{}.sock", "n".repeat(100));
    assert_findings(
        &with(
            "[target]",
            &format!("[target]\ncontrol_socket = \"{long}\""),
        ),
        &["2:18 error: `control_socket` is 110 bytes long; a UNIX socket path may be at most 107"],
    );
}

#[test]
fn core_mask_against_this_machine() {
    let text = with("core_mask = \"0x1\"", "core_mask = \"0-3\"");
    let expected =
        "3:13 {}: `core_mask` names CPU 2, 3 that this machine does not have (online: 0, 1)";
    assert_eq!(
        findings_for(&text, Purpose::Check),
        [expected.replace("{}", "warning")]
    );
    assert_eq!(
        findings_for(&text, Purpose::Run),
        [expected.replace("{}", "error")]
    );
    assert_findings(
        &with("core_mask = \"0x1\"", "core_mask = \"0x0\""),
        &["3:13 error: `core_mask` \"0x0\": the mask selects no CPU"],
    );
    assert_findings(
        &with("core_mask = \"0x1\"", "core_mask = \"all\""),
        &[
            "3:13 error: `core_mask` = \"all\" is not a hex mask such as \"0x3\" or a CPU list such as \"0-1,4\"",
        ],
    );
}

#[test]
fn namespace_files_are_probed() {
    let text = with(
        "ram = { size = \"64MiB\" }",
        "file = { path = \"/nonexistent/disk.img\" }",
    );
    let expected = "18:17 {}: /nonexistent/disk.img does not exist";
    assert_eq!(
        findings_for(&text, Purpose::Check),
        [expected.replace("{}", "warning")]
    );
    assert_eq!(
        findings_for(&text, Purpose::Run),
        [expected.replace("{}", "error")]
    );
    let real = Environment::this_machine();
    let dir = tempfile::tempdir().unwrap();
    let text = with(
        "ram = { size = \"64MiB\" }",
        &format!("file = {{ path = \"{}\" }}", dir.path().display()),
    );
    let (_, report) = check_text("t.toml", text, Purpose::Check, &real);
    assert!(
        report.diagnostics[0]
            .message
            .ends_with("is a directory; a file namespace needs a regular file or a block device"),
        "{report:?}"
    );
}

/// Findings against a machine where every file is a block device with `logical_block` and
/// io_uring is `uring`.
fn findings_on(text: &str, logical_block: Option<u32>, uring: Result<(), String>) -> Vec<String> {
    let env = Environment {
        probe_file: Box::new(move |_, _| FileProbe::Usable {
            len: 1 << 30,
            logical_block,
        }),
        io_uring: uring,
        ..env()
    };
    let (_, report) = check_text("t.toml", text.to_string(), Purpose::Check, &env);
    report
        .diagnostics
        .iter()
        .map(|d| format!("{:?}: {}", d.severity, d.message))
        .collect()
}

#[test]
fn block_devices_need_a_block_size_their_logical_block_divides() {
    let device = |block: &str| {
        with(
            "ram = { size = \"64MiB\" }",
            &format!("file = {{ path = \"/dev/loop7\" }}\nblock_size = {block}"),
        )
    };
    assert_eq!(
        findings_on(&device("512"), Some(4096), Ok(())),
        ["Error: block_size 512 is not a multiple of the logical block size 4096 of /dev/loop7"]
    );
    assert!(findings_on(&device("4096"), Some(4096), Ok(())).is_empty());
    assert!(findings_on(&device("4096"), Some(512), Ok(())).is_empty());
    assert!(findings_on(&device("512"), None, Ok(())).is_empty());
}

#[test]
fn the_uring_engine_warns_where_io_uring_is_refused() {
    let file = |engine: &str| {
        with(
            "ram = { size = \"64MiB\" }",
            &format!("file = {{ path = \"/srv/ns.img\"{engine} }}"),
        )
    };
    let refused = || Err("Operation not permitted (os error 1)".to_string());
    assert_eq!(
        findings_on(&file(""), None, refused()),
        [
            "Warning: io_uring is not available here (Operation not permitted (os error 1)): this namespace will use worker threads"
        ]
    );
    assert_eq!(
        findings_on(&file(", engine = \"uring\""), None, refused()).len(),
        1
    );
    assert!(findings_on(&file(", engine = \"threads\""), None, refused()).is_empty());
    assert!(findings_on(&file(""), None, Ok(())).is_empty());
    let wrong = findings_on(&file(", engine = \"aio\""), None, Ok(()));
    assert!(wrong.len() == 1 && wrong[0].contains("aio"), "{wrong:?}");
}

#[test]
fn backends_exactly_one() {
    assert_findings(
        &with("ram = { size = \"64MiB\" }\n", ""),
        &["16:1 error: namespace 1 declares no backend"],
    );
    assert_findings(
        &with(
            "ram = { size = \"64MiB\" }",
            "ram = { size = \"64MiB\" }\nnull = { size = 0 }",
        ),
        &[
            "19:1 error: namespace 1 declares more than one backend; keep one of ram, null, file",
            "19:17 error: a namespace `size` must be larger than zero",
        ],
    );
}

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let text = with("nsid = 1", "nsid = 1\nread_onyl = true")
        .replace("[target]\n", "[target]\ninterupt_mode = true\n")
        .replace("[[subsystem]]\n", "[[subsystem]]\nallow_any_hosts = true\n");
    let (_, report) = check_text("t.toml", text, Purpose::Check, &env());
    let rendered = report.render();
    for expected in [
        "t.toml:2:1: error: unknown key `interupt_mode` in target\n 2 | interupt_mode = true\n   | ^^^^^^^^^^^^^\n   = help: did you mean `interrupt_mode`?\n",
        "t.toml:9:1: error: unknown key `allow_any_hosts` in subsystem[0]\n",
        "= help: did you mean `allow_any_host`?\n",
        "t.toml:20:1: error: unknown key `read_onyl` in subsystem[0].namespace[0]\n",
        "= help: did you mean `read_only`?\n",
        "t.toml: invalid (3 errors)\n",
    ] {
        assert!(
            rendered.contains(expected),
            "missing {expected:?} in\n{rendered}"
        );
    }
}

#[test]
fn schema_errors_do_not_hide_rule_errors() {
    let text = with("[transport.tcp]\n", "[transport.tcp]\nmax_queue_dept = 4\n")
        .replace("nvmf-tgt:a", "nvmf-tgt:a b");
    let found = findings(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("6:1 error: unknown key `max_queue_dept`"));
    assert!(
        found[1].starts_with("9:7 error: subsystem NQN"),
        "{found:?}"
    );
}

#[test]
fn syntax_errors_and_wrong_types_are_located() {
    let found = findings("[target]\ninterrupt_mode = tru\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("2:18 error: TOML syntax"), "{found:?}");
    let found = findings("[target]\ncore_mask = 3\n[target]\n");
    assert!(found[0].starts_with("3:2 error: TOML syntax"), "{found:?}");
    assert_findings(
        "[[subsystem]]\nnqn = 7\n",
        &["2:7 error: `nqn` must be a string, not an integer"],
    );
    assert_findings(
        "[[subsystem]]\nserial = \"x\"\n",
        &["1:1 error: missing required key `nqn` in subsystem[0]"],
    );
    assert_findings(
        "subsystem = 5\n",
        &["1:13 error: `subsystem` must be an array, not an integer"],
    );
    // An integer beyond TOML's range is a syntax error, not a panic.
    assert!(findings("[target]\nbusy_poll_us = 99999999999999999999999\n")[0].contains("error"));
    // A size beyond u64 is found by deserializing.
    let huge = with("size = \"64MiB\"", "size = \"99999999999999TiB\"");
    let found = findings(&huge);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0], "18:16 error: \"99999999999999TiB\" is too large");
}

#[test]
fn empty_and_hostile_files() {
    assert_eq!(findings(""), Vec::<String>::new());
    let deep = format!("a = {}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(!findings(&deep).is_empty());
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, b"[target]\nname = \"\xff\xfe\"\n").unwrap();
    let (_, report) = check_file(&binary, Purpose::Check, &env()).unwrap();
    assert!(report.render().starts_with(&format!(
        "{}:2:9: error: the file is not UTF-8 text",
        binary.display()
    )));
    let big = dir.path().join("big.toml");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(MAX_FILE_BYTES + 1).unwrap();
    let (_, report) = check_file(&big, Purpose::Check, &env()).unwrap();
    assert!(report.render().contains("a declaration may be at most"));
    assert!(matches!(
        check_file(&dir.path().join("missing.toml"), Purpose::Check, &env()),
        Err(SourceError::Unreadable { .. })
    ));
}

#[test]
fn examples_pass_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (config, report) = check_file(&path, Purpose::Check, &env()).unwrap();
            assert!(config.is_some(), "{}", report.render());
            seen += 1;
        }
    }
    assert!(
        seen >= 5,
        "expected the minimal, production and per-transport examples"
    );
}

#[test]
fn committed_schema_matches_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/target.schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        committed == json_schema(),
        "schema/target.schema.json is stale: run `cargo run -- schema > schema/target.schema.json`"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

    /// Any text, TOML-ish or not, gives diagnostics and never a panic.
    #[test]
    fn check_never_panics(text in "(\\[{1,2}[a-z.]{0,12}\\]{1,2}\n|[a-z_]{1,16} = (\"[^\"\n]{0,20}\"|-?[0-9]{1,22}|true|\\[[0-9, \"a]{0,10}\\]|\\{ ?[a-z]{1,5} = [0-9]{1,3} ?\\})\n|[\\x00-\\x7f]{0,8}\n){0,24}") {
        let _ = check_text("fuzz.toml", text, Purpose::Check, &env());
    }

    /// Random edits of a valid file never panic either.
    #[test]
    fn mutated_base_never_panics(at in 0usize..BASE.len(), junk in "[\\[\\]{}=\"a-z0-9 \n.,-]{0,6}") {
        let mut text = BASE.to_string();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &junk);
        let _ = check_text("fuzz.toml", text, Purpose::Check, &env());
    }
}
