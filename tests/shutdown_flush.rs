//! SIGTERM makes file namespaces durable before the target exits (issue 10, item 7), seen
//! from outside: the target runs under strace, which records every fdatasync and fsync with
//! the path of its descriptor and the SIGTERM in between.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{HOSTNQN, SUBNQN, TargetProcess, TargetSpec, without_colours};
use nvmf_tgt::host::{HostQueue, QueueOptions};

const BS: u32 = 512;

/// Whether strace exists and may trace here (containers often forbid ptrace).
fn strace_works() -> Result<(), String> {
    match Command::new("strace")
        .args(["-o", "/dev/null", "true"])
        .output()
    {
        Err(err) => Err(format!("strace is not installed ({err})")),
        Ok(out) if !out.status.success() => Err(format!(
            "strace cannot trace here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// The pid strace started: its only child.
fn traced_pid(strace_pid: u32) -> u32 {
    let children = format!("/proc/{strace_pid}/task/{strace_pid}/children");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            return pid.parse().expect("a pid");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("strace {strace_pid} has no child");
}

/// What strace saw about syncing `path` after the first SIGTERM: each sync call's line
/// with its result (joined from `<unfinished ...>` and `<... resumed>` when threads overlap).
fn syncs_after_sigterm(trace: &str, path: &Path) -> Option<Vec<String>> {
    let lines: Vec<&str> = trace.lines().collect();
    let sigterm = lines.iter().position(|l| l.contains("--- SIGTERM"))?;
    let needle = format!("<{}>", path.display());
    let mut syncs = Vec::new();
    for (i, line) in lines.iter().enumerate().skip(sigterm + 1) {
        let is_sync = line.contains("fdatasync(") || line.contains(" fsync(");
        if !is_sync || !line.contains(&needle) {
            continue;
        }
        let mut call = (*line).to_owned();
        if line.contains("<unfinished ...>") {
            let pid = line.split_whitespace().next().unwrap_or_default();
            if let Some(resumed) = lines[i + 1..]
                .iter()
                .find(|l| l.split_whitespace().next() == Some(pid) && l.contains("resumed>"))
            {
                call.push_str(" / ");
                call.push_str(resumed);
            }
        }
        syncs.push(call);
    }
    Some(syncs)
}

#[test]
fn sigterm_fdatasyncs_every_writable_file_namespace_before_exit() {
    if let Err(why) = strace_works() {
        println!("SKIPPED: {why}");
        return;
    }
    // A real filesystem, not tmpfs, so the sync goes somewhere.
    let data_dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let writable = common::write_file(data_dir.path(), "ns.img", 8 << 20);
    let read_only = common::write_file(data_dir.path(), "ro.img", 1 << 20);
    let writable = std::fs::canonicalize(writable).expect("canonical path");
    let read_only = std::fs::canonicalize(read_only).expect("canonical path");
    let trace_path = data_dir.path().join("strace.txt");
    let spec = TargetSpec {
        namespaces: format!(
            "[[subsystem.namespace]]\nnsid = 1\nfile = {{ path = \"{}\" }}\n\n\
             [[subsystem.namespace]]\nnsid = 2\nfile = {{ path = \"{}\" }}\nread_only = true\n\n\
             [[subsystem.namespace]]\nnsid = 3\nram = {{ size = \"1MiB\" }}\n",
            writable.display(),
            read_only.display()
        ),
        ..TargetSpec::default()
    };
    let wrapper = [
        OsStr::new("strace"),
        OsStr::new("-f"),
        OsStr::new("-y"),
        OsStr::new("-e"),
        OsStr::new("trace=fdatasync,fsync"),
        OsStr::new("-o"),
        trace_path.as_os_str(),
    ];
    let mut target = TargetProcess::start_wrapped(&spec, &wrapper);
    let pid = traced_pid(target.pid());

    let opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut admin = HostQueue::connect(target.addr(), &opts).expect("admin connect");
    admin.enable_controller().expect("enable");
    let mut io =
        HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).expect("io connect");
    let data: Vec<u8> = (0..64 * 1024u32)
        .map(|i| u8::try_from(i % 251).expect("byte"))
        .collect();
    // A plain write: no FUA, no Flush command; only shutdown makes it durable.
    io.write(1, 0, data.clone(), BS).expect("write");
    assert_eq!(io.read(1, 0, 128, BS).expect("read back"), data);

    let status = target.stop_by_signalling(pid);
    let trace = std::fs::read_to_string(&trace_path).expect("strace output");
    assert!(
        status.success(),
        "exit status {status}\n{}\n{trace}",
        target.log()
    );
    let syncs = syncs_after_sigterm(&trace, &writable)
        .unwrap_or_else(|| panic!("strace saw no SIGTERM:\n{trace}"));
    assert!(
        !syncs.is_empty(),
        "no fdatasync of {} after SIGTERM:\n{trace}",
        writable.display()
    );
    assert!(
        // strace pads the result: `fdatasync(5</path>)      = 0`.
        syncs.iter().any(|call| call.trim_end().ends_with("= 0")),
        "the sync failed: {syncs:?}"
    );
    let read_only_syncs = syncs_after_sigterm(&trace, &read_only).unwrap_or_default();
    assert!(
        read_only_syncs.is_empty(),
        "a read-only namespace has nothing to flush: {read_only_syncs:?}"
    );
    let log = without_colours(&target.log());
    let flushed = log
        .lines()
        .find(|l| l.contains("writable namespaces flushed"))
        .unwrap_or_else(|| panic!("no flush line in the log:\n{log}"));
    // The file namespace; not the read-only one nor the RAM one.
    assert!(flushed.contains("namespaces=1"), "{flushed}");
    let on_disk = std::fs::read(&writable).expect("read backing file");
    assert_eq!(
        &on_disk[..data.len()],
        &data[..],
        "the write reached the file"
    );
}
