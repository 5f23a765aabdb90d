//! `nvmf-tgt check`, `schema` and `run` on real files: exit statuses, human and JSON output,
//! `--strict`, and `run` refusing what `check` refuses.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_nvmf-tgt");

fn nvmf_tgt(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run nvmf-tgt")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

const INVALID: &str = r#"[target]
interrupt_mode = true

[transport.tcp]
max_queue_dept = 64

[[subsystem]]
nqn = "nqn.2026-11.io.nvmf-tgt x"
allow_any_host = true
"#;

#[test]
fn valid_file_exits_zero_with_a_summary() {
    let out = nvmf_tgt(&["check", "-c", &example("minimal.toml")]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "{}: valid: 1 subsystem, 1 namespace, 1 listener, interrupt mode\n",
            example("minimal.toml")
        )
    );
}

#[test]
fn invalid_file_exits_one_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("target.toml");
    std::fs::write(&path, INVALID).unwrap();
    let file = path.display().to_string();
    let out = nvmf_tgt(&["check", "-c", &file]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let expected = format!(
        "{file}:5:1: error: unknown key `max_queue_dept` in transport.tcp\n\
         \x20{}5 | max_queue_dept = 64\n",
        ""
    );
    assert!(text.starts_with(&expected), "{text}");
    assert!(
        text.contains("= help: did you mean `max_queue_depth`?"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{file}:8:7: error: subsystem NQN \"nqn.2026-11.io.nvmf-tgt x\" contains ' '"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{file}:8:7: warning: subsystem")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!("{file}: invalid (2 errors, 1 warning)\n")),
        "{text}"
    );

    let out = nvmf_tgt(&["check", "-c", &file, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["errors"], 2);
    let first = &json["diagnostics"][0];
    assert_eq!(first["line"], 5);
    assert_eq!(first["column"], 1);
    assert_eq!(first["severity"], "error");
    assert_eq!(first["pointer"], "/transport/tcp/max_queue_dept");
    assert_eq!(first["help"], "did you mean `max_queue_depth`?");

    // `run` refuses the same file with the same diagnostics, before serving anything.
    let out = nvmf_tgt(&["run", "-c", &file]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{file}:5:1: error: unknown key `max_queue_dept`")),
        "{err}"
    );
}

#[test]
fn unreadable_file_exits_two() {
    let out = nvmf_tgt(&["check", "-c", "/nonexistent/target.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/target.toml"));
    let out = nvmf_tgt(&["run", "-c", "/nonexistent/target.toml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn strict_turns_warnings_into_errors() {
    // tcp.toml names a backing file this machine does not have: a warning at check.
    let file = example("tcp.toml");
    let out = nvmf_tgt(&["check", "-c", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("warning: /var/lib/nvmf/db.img does not exist"));
    let out = nvmf_tgt(&["check", "-c", &file, "--strict"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("error: /var/lib/nvmf/db.img does not exist"));
    // `run` treats what depends on this machine as an error.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    let text = std::fs::read_to_string(example("minimal.toml"))
        .unwrap()
        .replace(
            "ram = { size = \"64MiB\" }",
            "file = { path = \"/nonexistent/ns.img\" }",
        )
        .replace(
            "/tmp/nvmf-tgt-minimal.sock",
            &dir.path().join("s").display().to_string(),
        );
    std::fs::write(&path, text).unwrap();
    let out = nvmf_tgt(&["run", "-c", &path.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: /nonexistent/ns.img does not exist")
    );
}

#[test]
fn schema_command_prints_the_committed_schema() {
    let out = nvmf_tgt(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/target.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(printed, committed);
    assert_eq!(
        printed["properties"]["transport"]["$ref"],
        "#/$defs/Transports"
    );
}

#[test]
fn version_names_the_commit() {
    for bin in [
        env!("CARGO_BIN_EXE_nvmf-tgt"),
        env!("CARGO_BIN_EXE_nvmf-perf"),
    ] {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let commit = text
            .trim_end()
            .strip_suffix(')')
            .and_then(|t| t.split_once(" (commit "))
            .map(|(_, c)| c.to_owned())
            .unwrap_or_else(|| panic!("no commit in {text:?}"));
        assert!(
            commit == "unknown"
                || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{text:?}"
        );
    }
}
