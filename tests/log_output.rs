//! The target's log as a file and as the journal read it (issue 15, item 2): no ANSI escape
//! codes unless stderr is a terminal; under systemd (`JOURNAL_STREAM` naming stderr) a `<N>`
//! syslog priority in front of every line and no timestamps of our own.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use common::{Launch, SUBNQN, TargetProcess, free_port};

fn config(dir: &Path, port: u16) -> String {
    format!(
        "[target]\ncore_mask = \"0x1\"\ncontrol_socket = \"{}\"\n\n[transport.tcp]\n\n\
         [[subsystem]]\nnqn = \"{SUBNQN}\"\nallow_any_host = true\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [[subsystem.namespace]]\nnsid = 1\nram = {{ size = \"16MiB\" }}\n",
        dir.join("ctl.sock").display(),
    )
}

/// Runs the target until it listens, stops it, and returns its log. `journal`: the log file
/// is announced as the journal stream, as systemd does for a service.
fn log_of_a_run(journal: bool) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config_path = dir.path().join("target.toml");
    std::fs::write(&config_path, config(dir.path(), port)).expect("config");
    // The target's log file is made here first: launch truncates it, keeping its inode.
    let log_path = dir.path().join("target.log");
    std::fs::write(&log_path, "").expect("log file");
    let meta = std::fs::metadata(&log_path).expect("stat log");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let envs: Vec<(&str, &Path)> = if journal {
        vec![("JOURNAL_STREAM", Path::new(&stream))]
    } else {
        // A journal stream that is some other file: stderr is not the journal.
        vec![("JOURNAL_STREAM", Path::new("1:1"))]
    };
    let mut target = TargetProcess::launch(
        dir,
        port,
        &config_path,
        &Launch {
            envs: &envs,
            ..Launch::default()
        },
    );
    assert!(target.stop().success(), "{}", target.log());
    target.log()
}

fn has_timestamp(line: &str) -> bool {
    // RFC 3339 as tracing writes it: 2026-12-04T20:32:01.797359Z
    line.as_bytes().windows(11).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && w[4] == b'-'
            && w[7] == b'-'
            && w[10] == b'T'
            && w[5..7].iter().all(u8::is_ascii_digit)
    })
}

#[test]
fn a_log_file_has_timestamps_and_no_escape_codes() {
    let log = log_of_a_run(false);
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains("listening")), "{log}");
    assert!(
        !log.contains('\x1b'),
        "escape codes in a log file:\n{log:?}"
    );
    for line in &lines {
        assert!(has_timestamp(line), "no timestamp: {line}");
        assert!(
            !line.starts_with('<'),
            "a priority outside the journal: {line}"
        );
    }
}

#[test]
fn the_journal_gets_priorities_and_no_timestamps() {
    let log = log_of_a_run(true);
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(
        !log.contains('\x1b'),
        "escape codes in the journal:\n{log:?}"
    );
    let listening = lines
        .iter()
        .find(|l| l.contains("listening"))
        .unwrap_or_else(|| panic!("no listening line:\n{log}"));
    assert!(
        listening.starts_with("<6>"),
        "info is priority 6: {listening}"
    );
    for line in &lines {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(n, _)| n);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "no syslog priority: {line}"
        );
        assert!(
            !has_timestamp(line),
            "a timestamp journald adds anyway: {line}"
        );
    }
}
