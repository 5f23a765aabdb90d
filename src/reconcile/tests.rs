//! (old file, new file) pairs and the plan they give.

use super::*;
use crate::config::{Config, Environment, Purpose, check_text};

const BASE: &str = r#"
[target]
interrupt_mode = true
core_mask = "0x1"

[transport.tcp]

[[host]]
name = "db"
nqn = "nqn.2026-11.com.example:host-db"

[[subsystem]]
nqn = "nqn.2026-11.com.example:a"
hosts = ["db"]

[[subsystem.listener]]
transport = "tcp"
address = "127.0.0.1"
port = 4420

[[subsystem.namespace]]
nsid = 1
ram = { size = "64MiB" }

[[subsystem]]
nqn = "nqn.2026-11.com.example:b"
allow_any_host = true

[[subsystem.listener]]
transport = "tcp"
address = "127.0.0.1"
port = 4420

[[subsystem.namespace]]
nsid = 1
null = { size = "1GiB" }
"#;

fn parse(text: &str) -> Config {
    let (config, report) = check_text(
        "t.toml",
        text.to_string(),
        Purpose::Check,
        &Environment::fixed(vec![0, 1]),
    );
    config.unwrap_or_else(|| panic!("{}", report.render()))
}

fn steps(old: &str, new: &str) -> Vec<String> {
    let plan = plan(&parse(old), &parse(new));
    assert!(plan.restart_required.is_empty(), "{plan:?}");
    plan.steps.iter().map(ToString::to_string).collect()
}

#[test]
fn identical_and_reordered_files_plan_nothing() {
    assert!(plan(&parse(BASE), &parse(BASE)).is_empty());
    // Subsystem B first, keys of A reordered: same declaration.
    let (head, rest) = BASE.split_at(BASE.find("[[subsystem]]").unwrap());
    let second = rest.rfind("[[subsystem]]").unwrap();
    let (a, b) = rest.split_at(second);
    let a = a.replace(
        "nqn = \"nqn.2026-11.com.example:a\"\nhosts = [\"db\"]",
        "hosts = [\"db\"]\nnqn = \"nqn.2026-11.com.example:a\"",
    );
    let reordered = format!("{head}{b}\n{a}");
    assert!(plan(&parse(BASE), &parse(&reordered)).is_empty());
    // A host named or written as its NQN is the same host.
    let by_nqn = BASE.replace(
        "hosts = [\"db\"]",
        "hosts = [\"nqn.2026-11.com.example:host-db\"]",
    );
    assert!(plan(&parse(BASE), &parse(&by_nqn)).is_empty());
}

#[test]
fn namespaces_added_removed_and_replaced() {
    let added = format!("{BASE}\n[[subsystem.namespace]]\nnsid = 2\nram = {{ size = \"1MiB\" }}\n");
    assert_eq!(
        steps(BASE, &added),
        ["+ add namespace 2 to nqn.2026-11.com.example:b"]
    );
    assert_eq!(
        steps(&added, BASE),
        ["- remove namespace 2 from nqn.2026-11.com.example:b"]
    );
    let resized = BASE.replace("ram = { size = \"64MiB\" }", "ram = { size = \"128MiB\" }");
    let replaced = plan(&parse(BASE), &parse(&resized));
    assert_eq!(
        replaced
            .steps
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "- remove namespace 1 from nqn.2026-11.com.example:a (replaced)",
            "+ add namespace 1 to nqn.2026-11.com.example:a (replaced)"
        ]
    );
    assert_eq!(replaced.warnings.len(), 1);
}

#[test]
fn subsystems_added_removed_and_replaced() {
    let extra = "\n[[subsystem]]\nnqn = \"nqn.2026-11.com.example:c\"\nallow_any_host = true\n";
    let added = format!("{BASE}{extra}");
    assert_eq!(
        steps(BASE, &added),
        ["+ add subsystem nqn.2026-11.com.example:c"]
    );
    assert_eq!(
        steps(&added, BASE),
        ["- remove subsystem nqn.2026-11.com.example:c"]
    );
    let reserial = BASE.replace(
        "nqn = \"nqn.2026-11.com.example:b\"",
        "nqn = \"nqn.2026-11.com.example:b\"\nserial = \"NEW-SERIAL\"",
    );
    assert_eq!(
        steps(BASE, &reserial),
        [
            "- remove subsystem nqn.2026-11.com.example:b (replaced)",
            "+ add subsystem nqn.2026-11.com.example:b (replaced)"
        ]
    );
}

#[test]
fn hosts_and_listeners_change_in_place_with_sockets_in_order() {
    let text = BASE
        .replace(
            "hosts = [\"db\"]",
            "hosts = [\"nqn.2026-11.com.example:host-web\"]",
        )
        .replacen("port = 4420", "port = 4421", 1);
    assert_eq!(
        steps(BASE, &text),
        [
            "~ change access to nqn.2026-11.com.example:a: allow_any_host = false; + host nqn.2026-11.com.example:host-web; - host nqn.2026-11.com.example:host-db; + listener tcp 127.0.0.1:4421; - listener tcp 127.0.0.1:4420",
            "+ listen on tcp 127.0.0.1:4421",
        ]
    );
    // Both subsystems move: the old socket closes (after the access changes), the new opens.
    let moved = BASE.replace("port = 4420", "port = 4430");
    let found = steps(BASE, &moved);
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(found[2], "- stop listening on tcp 127.0.0.1:4420");
    assert_eq!(found[3], "+ listen on tcp 127.0.0.1:4430");
}

#[test]
fn removals_come_before_additions() {
    let text = format!(
        "{}\n[[subsystem]]\nnqn = \"nqn.2026-11.com.example:c\"\nallow_any_host = true\n",
        BASE.replace("ram = { size = \"64MiB\" }", "ram = { size = \"32MiB\" }")
    );
    let text = text.replace(
        "nsid = 1\nnull = { size = \"1GiB\" }\n",
        "nsid = 3\nnull = { size = \"1GiB\" }\n",
    );
    assert_eq!(
        steps(BASE, &text),
        [
            "- remove namespace 1 from nqn.2026-11.com.example:a (replaced)",
            "- remove namespace 1 from nqn.2026-11.com.example:b",
            "+ add subsystem nqn.2026-11.com.example:c",
            "+ add namespace 1 to nqn.2026-11.com.example:a (replaced)",
            "+ add namespace 3 to nqn.2026-11.com.example:b",
        ]
    );
}

#[test]
fn process_wide_changes_need_a_restart() {
    let text = BASE
        .replace("interrupt_mode = true", "interrupt_mode = false")
        .replace("[transport.tcp]", "[transport.tcp]\nmax_queue_depth = 64");
    let refused = plan(&parse(BASE), &parse(&text));
    assert!(refused.is_refused());
    let fields: Vec<&str> = refused
        .restart_required
        .iter()
        .map(|f| f.what.as_str())
        .collect();
    assert_eq!(fields, ["target.interrupt_mode", "transport.tcp"]);
    // The socket's group is set when it is created: a new one needs a new socket.
    let grouped = BASE.replace("[target]", "[target]\ncontrol_socket_group = \"nvmf\"");
    let refused = plan(&parse(BASE), &parse(&grouped));
    assert_eq!(
        refused
            .restart_required
            .iter()
            .map(|f| f.what.as_str())
            .collect::<Vec<_>>(),
        ["target.control_socket_group"]
    );
    // The same mask written differently is no change.
    let same = BASE.replace("core_mask = \"0x1\"", "core_mask = \"0\"");
    assert!(plan(&parse(BASE), &parse(&same)).is_empty());
}

#[test]
fn the_metrics_endpoint_moves_and_closes_in_place() {
    let on = |port: u16| format!("{BASE}\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    assert_eq!(
        steps(BASE, &on(9464)),
        ["~ serve metrics on 127.0.0.1:9464"]
    );
    assert_eq!(
        steps(&on(9464), &on(9465)),
        ["~ serve metrics on 127.0.0.1:9465"]
    );
    assert_eq!(steps(&on(9464), BASE), ["- stop serving metrics"]);
    assert!(steps(&on(9464), &on(9464)).is_empty());
}
