//! The control socket with the real binary: its mode whatever the umask, its group, the
//! directories it is created in, the paths it refuses to replace, and `plan` sending the
//! declaration's text instead of a path for the target to open.

// Helpers outside #[test] functions panic on purpose: a broken target fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Launch, SUBNQN, TargetProcess, free_port};
use nvmf_tgt::control::{ControlClientError, call};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_nvmf-tgt");

/// A declaration serving one RAM namespace, its control socket at `socket`.
fn declaration(socket: &Path, port: u16, target_keys: &str) -> String {
    format!(
        "[target]\ninterrupt_mode = true\ncore_mask = \"0x1\"\ncontrol_socket = \"{}\"\n{target_keys}\n\
         [transport.tcp]\n\n\
         [[subsystem]]\nnqn = \"{SUBNQN}\"\nallow_any_host = true\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [[subsystem.namespace]]\nnsid = 1\nram = {{ size = \"16MiB\" }}\n",
        socket.display()
    )
}

/// Starts the target with its socket at `socket` and waits until it serves.
fn serve(
    dir: tempfile::TempDir,
    socket: &Path,
    target_keys: &str,
    umask: Option<&str>,
) -> TargetProcess {
    let port = free_port();
    let config_path = dir.path().join("target.toml");
    std::fs::write(&config_path, declaration(socket, port, target_keys)).unwrap();
    TargetProcess::launch(
        dir,
        port,
        &config_path,
        &Launch {
            umask,
            control_socket: Some(socket.to_owned()),
            ..Launch::default()
        },
    )
}

/// Runs `nvmf-tgt run` on a declaration that must be refused: it has to exit by itself
/// within 20 s (a target that serves instead is killed and fails the test).
fn run_refused(dir: &Path, socket: &Path, target_keys: &str) -> Output {
    let config_path = dir.join("target.toml");
    std::fs::write(&config_path, declaration(socket, free_port(), target_keys)).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "nvmf-tgt served instead of refusing:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn is_root() -> bool {
    nvmf_tgt::control::os::effective_uid() == 0
}

/// The id of `name` in an `/etc/group` or `/etc/passwd` style file, read independently of
/// the target's NSS lookups.
fn id_in(file: &str, name: &str) -> Option<u32> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| fields.get(2)?.parse().ok())?
        })
}

#[test]
fn the_socket_is_0600_whatever_the_umask_and_new_directories_0700() {
    let dir = tempfile::tempdir().unwrap();
    // The umask really is in force for what the shell starts: a new file would be 0666.
    let probe = dir.path().join("probe");
    let touched = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg("touch")
        .arg(&probe)
        .status()
        .unwrap();
    assert!(touched.success());
    assert_eq!(mode(&probe), 0o666);

    let socket = dir.path().join("run/nvmf-tgt/ctl.sock");
    let me = std::fs::metadata(dir.path()).unwrap().uid();
    let mut target = serve(dir, &socket, "", Some("000"));
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o600, "socket mode");
    assert_eq!(meta.uid(), me);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(socket.parent().unwrap().parent().unwrap()), 0o700);
    // It serves once its mode is set.
    let status = call(&socket, "nvmf_tgt_status", Value::Null).unwrap();
    assert_eq!(status["pid"], target.pid());
    assert!(target.stop().success());
    assert!(!socket.exists(), "socket removed at exit");
}

#[test]
fn a_declared_group_gets_0660_and_owns_the_socket() {
    if !is_root() {
        println!("skipped: giving a socket to a group we may not be in needs root");
        return;
    }
    let Some(gid) = id_in("/etc/group", "daemon") else {
        println!("skipped: this machine has no group `daemon`");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("grp/ctl.sock");
    // Under umask 077 the new directory still lets the group search it.
    let mut target = serve(
        dir,
        &socket,
        "control_socket_group = \"daemon\"\n",
        Some("077"),
    );
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "socket mode");
    assert_eq!(meta.gid(), gid, "socket group");
    let parent = std::fs::metadata(socket.parent().unwrap()).unwrap();
    assert_eq!(parent.mode() & 0o7777, 0o750, "directory mode");
    assert_eq!(parent.gid(), gid, "directory group");
    call(&socket, "nvmf_tgt_status", Value::Null).unwrap();
    assert!(target.stop().success());
}

#[test]
fn a_group_that_does_not_exist_is_a_warning_at_check_and_an_error_at_run() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    let keys = "control_socket_group = \"no-such-group-nvmf-tgt\"\n";
    let config_path = dir.path().join("target.toml");
    std::fs::write(&config_path, declaration(&socket, free_port(), keys)).unwrap();
    let file = config_path.display().to_string();
    let check = Command::new(BIN)
        .args(["check", "-c", &file])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains(&format!(
            "{file}:5:24: warning: group \"no-such-group-nvmf-tgt\" does not exist"
        )),
        "{text}"
    );
    let run = run_refused(dir.path(), &socket, keys);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains(&format!(
            "{file}:5:24: error: group \"no-such-group-nvmf-tgt\" does not exist"
        )),
        "{}",
        stderr(&run)
    );
    assert!(!socket.exists());
}

#[test]
fn a_file_or_a_link_at_the_socket_path_is_refused_and_left_intact() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    std::fs::write(&socket, "precious\n").unwrap();
    let out = run_refused(dir.path(), &socket, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "refusing the control socket {}: it exists and is a regular file, not a socket (it is left as it is)",
            socket.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious\n");
    // Nor is a file where a directory of the path should be.
    let under_a_file = socket.join("ctl.sock");
    let out = run_refused(dir.path(), &under_a_file, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "refusing the control socket {}: {} is not a directory",
            under_a_file.display(),
            socket.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious\n");

    // A symbolic link is not followed, and neither it nor what it points to is touched.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "also precious\n").unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let out = run_refused(dir.path(), &link, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("it exists and is a symbolic link, not a socket"),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(&elsewhere).unwrap(),
        "also precious\n"
    );
}

#[test]
fn a_socket_of_another_user_is_refused_with_its_owner() {
    if !is_root() {
        println!("skipped: making a socket another user's needs root");
        return;
    }
    let Some(nobody) = id_in("/etc/passwd", "nobody") else {
        println!("skipped: this machine has no user `nobody`");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    drop(UnixListener::bind(&socket).unwrap());
    std::os::unix::fs::lchown(&socket, Some(nobody), None).unwrap();
    let out = run_refused(dir.path(), &socket, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "refusing the control socket {}: the socket there belongs to nobody (uid {nobody}), and this target runs as root (uid 0)",
            socket.display()
        )),
        "{}",
        stderr(&out)
    );
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "left in place");
    assert_eq!(meta.uid(), nobody);
}

#[test]
fn a_stale_socket_of_our_own_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock");
    // Bound by std under the test's umask, then left behind by a "dead" target.
    drop(UnixListener::bind(&socket).unwrap());
    let mut target = serve(dir, &socket, "", Some("000"));
    // The stale file already exists, so "the socket exists" says nothing: wait for an answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while call(&socket, "nvmf_tgt_status", Value::Null).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no answer on the new socket"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(mode(&socket), 0o600);
    assert!(target.stop().success());
}

#[test]
fn directories_others_may_write_to_are_refused_unless_sticky() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = open.join("ctl.sock");
    let out = run_refused(dir.path(), &socket, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "refusing the control socket {}: {} is writable by every user (mode 0777) and not sticky, so another user could replace the socket",
            socket.display(),
            open.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!socket.exists());
    // Missing directories under it are refused too, before any is created.
    let deeper = open.join("a/b/ctl.sock");
    assert_eq!(run_refused(dir.path(), &deeper, "").status.code(), Some(1));
    assert!(!open.join("a").exists());

    // Sticky, like /tmp: others cannot remove or rename what is ours.
    let sticky = dir.path().join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = sticky.join("ctl.sock");
    let dir_path = dir.path().to_owned();
    let mut target = serve(dir, &socket, "", None);
    assert_eq!(mode(&socket), 0o600);
    assert!(target.stop().success());

    if !is_root() {
        println!("skipped: a directory of another user needs root");
        return;
    }
    let Some(nobody) = id_in("/etc/passwd", "nobody") else {
        println!("skipped: this machine has no user `nobody`");
        return;
    };
    let theirs = dir_path.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(nobody), None).unwrap();
    let socket = theirs.join("ctl.sock");
    let out = run_refused(&dir_path, &socket, "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!(
            "{} belongs to nobody (uid {nobody}), so another user could replace the socket",
            theirs.display()
        )),
        "{}",
        stderr(&out)
    );
}

fn rpc_error(result: Result<Value, ControlClientError>) -> (i64, String) {
    match result {
        Err(ControlClientError::Rpc { code, message }) => (code, message),
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

const NAMESPACE_2: &str = "[[subsystem.namespace]]\nnsid = 2\nram = { size = \"4MiB\" }\n";

#[test]
fn plan_takes_the_text_and_names_it_by_the_label_the_client_sent() {
    let target = TargetProcess::start(&common::TargetSpec::default());
    let socket = target.control_socket();
    let serving = std::fs::read_to_string(&target.config_path).unwrap();

    // The path form is gone: the target opens no file a client names.
    let (code, message) = rpc_error(call(
        &socket,
        "nvmf_tgt_plan",
        json!({"path": target.config_path.display().to_string()}),
    ));
    assert_eq!(code, -32602);
    assert_eq!(
        message,
        "nvmf_tgt_plan takes the declaration's text in \"text\", not a \"path\": the target opens no file a client names"
    );
    let (code, message) = rpc_error(call(&socket, "nvmf_tgt_plan", json!({})));
    assert_eq!(code, -32602);
    assert!(
        message.contains("needs the declaration's text"),
        "{message}"
    );

    let answer = call(
        &socket,
        "nvmf_tgt_plan",
        json!({"text": format!("{serving}{NAMESPACE_2}"), "label": "client-label.toml"}),
    )
    .unwrap();
    assert_eq!(answer["changes"], true);
    assert_eq!(
        answer["steps"],
        json!([format!("+ add namespace 2 to {SUBNQN}")])
    );
    assert_eq!(answer["diagnostics"], Value::Null);

    // Diagnostics name the text by its label, at the line and column in that text.
    let invalid = format!("{serving}bogus = 1\n");
    let line = invalid.lines().count();
    let (code, message) = rpc_error(call(
        &socket,
        "nvmf_tgt_plan",
        json!({"text": invalid, "label": "client-label.toml"}),
    ));
    assert_eq!(code, -32602);
    assert!(
        message.contains(&format!(
            "client-label.toml:{line}:1: error: unknown key `bogus`"
        )),
        "{message}"
    );
    let closed = serving.replace("allow_any_host = true", "allow_any_host = false");
    let answer = call(
        &socket,
        "nvmf_tgt_plan",
        json!({"text": closed, "label": "client-label.toml"}),
    )
    .unwrap();
    let diagnostics = answer["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.contains("client-label.toml:")
            && diagnostics.contains("warning: no host may connect"),
        "{diagnostics}"
    );
    assert!(
        !diagnostics.contains(&target.config_path.display().to_string()),
        "{diagnostics}"
    );

    // A backing file the text names is not even looked at; the answer says so.
    let missing = target.dir.path().join("never-created.img");
    let with_file = format!(
        "{serving}[[subsystem.namespace]]\nnsid = 3\nfile = {{ path = \"{}\" }}\n",
        missing.display()
    );
    let answer = call(
        &socket,
        "nvmf_tgt_plan",
        json!({"text": with_file, "label": "client-label.toml"}),
    )
    .unwrap();
    assert_eq!(
        answer["steps"],
        json!([format!("+ add namespace 3 to {SUBNQN}")])
    );
    assert_eq!(answer["diagnostics"], Value::Null);
    assert!(
        answer["notes"][0]
            .as_str()
            .unwrap()
            .starts_with("backing files of file namespaces are not probed by plan"),
        "{answer:#}"
    );
    // The same text from the target's own file is probed by reload: it is refused.
    std::fs::write(&target.config_path, &with_file).unwrap();
    let outcome = call(&socket, "nvmf_tgt_reload", Value::Null).unwrap();
    assert_eq!(outcome["result"], "invalid", "{outcome:#}");
    assert!(
        outcome["diagnostics"]
            .as_str()
            .unwrap()
            .contains(&format!("{} does not exist", missing.display())),
        "{outcome:#}"
    );
}

#[test]
fn plan_reads_the_file_itself_and_sends_it() {
    let target = TargetProcess::start(&common::TargetSpec::default());
    let serving = std::fs::read_to_string(&target.config_path).unwrap();
    // /dev/stdin is a pipe only this command holds: a target that opened the path itself
    // would read its own (empty) stdin and plan to remove everything.
    let mut plan = Command::new(BIN)
        .args(["plan", "-c", "/dev/stdin", "--socket"])
        .arg(target.control_socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    plan.stdin
        .take()
        .unwrap()
        .write_all(format!("{serving}{NAMESPACE_2}").as_bytes())
        .unwrap();
    let out = plan.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert_eq!(text, format!("+ add namespace 2 to {SUBNQN}\n"));

    // What the command cannot read it reports itself, without asking the target.
    let out = Command::new(BIN)
        .args(["plan", "-c", "/nonexistent/target.toml", "--socket"])
        .arg(target.control_socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("nvmf-tgt plan: cannot read /nonexistent/target.toml"),
        "{}",
        stderr(&out)
    );
}

/// `nvmf-tgt status` with `args`, its stdout and stderr.
fn status_command(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).arg("status").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

#[test]
fn status_prints_tables_of_namespaces_and_controllers_with_their_io() {
    let target = TargetProcess::start(&common::TargetSpec::default());
    let opts = nvmf_tgt::host::QueueOptions::admin(SUBNQN, common::HOSTNQN);
    let mut admin = nvmf_tgt::host::HostQueue::connect(target.addr(), &opts).unwrap();
    admin.enable_controller().unwrap();
    let mut io =
        nvmf_tgt::host::HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).unwrap();
    for lba in 0..3 {
        io.write(1, lba * 8, vec![7; 4096], 512).unwrap();
    }
    io.read(1, 0, 8, 512).unwrap();

    let socket = target.control_socket();
    let (code, text, _) = status_command(&["--socket".as_ref(), socket.as_os_str()]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "subsystem {SUBNQN} (serial NVMFTGT00000001, model nvmf-tgt, any host)"
        )),
        "{text}"
    );
    assert!(text.contains("  listeners: tcp 127.0.0.1:"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("NSID"))
        .unwrap_or_else(|| panic!("no namespace table:\n{text}"));
    let row: Vec<&str> = lines[header + 1].split_whitespace().collect();
    // NSID, SIZE (2 words), BLOCK, BACKEND, READS, READ (2), WRITES, WRITTEN (2), FAILED.
    assert_eq!(
        row,
        [
            "1", "16.0", "MiB", "512", "ram", "1", "4.0", "KiB", "3", "12.0", "KiB", "0"
        ],
        "{text}"
    );
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with("CNTLID"))
        .unwrap_or_else(|| panic!("no controller table:\n{text}"));
    let row: Vec<&str> = lines[header + 1].split_whitespace().collect();
    assert_eq!(row[1], common::HOSTNQN, "{text}");
    assert_eq!(
        &row[3..],
        ["1", "1", "4.0", "KiB", "3", "12.0", "KiB", "0"],
        "{text}"
    );
    assert!(!text.contains('{'), "no raw JSON left: {text}");
}

#[test]
fn status_finds_the_socket_of_a_file_being_edited() {
    let target = TargetProcess::start(&common::TargetSpec::default());
    let good = std::fs::read_to_string(&target.config_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("target.toml");
    let status_of = |text: &str| {
        std::fs::write(&file, text).unwrap();
        status_command(&["-c".as_ref(), file.as_os_str()])
    };

    // Valid TOML that breaks the rules: its control_socket is read all the same, silently.
    let (code, text, err) = status_of(&good.replace("nsid = 1", "nsid = 1\nbogus = 1"));
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains(SUBNQN), "{text}");
    assert_eq!(err, "");

    // Not TOML at all: the line in [target] is found, and stderr says so.
    let (code, text, err) = status_of(&format!("{good}\n[[subsystem\n"));
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(text.contains(SUBNQN), "{text}");
    assert!(
        err.contains("is not valid TOML") && err.contains("using the control_socket of its line 4"),
        "{err}"
    );

    // Nothing to go by: the default socket is tried, and stderr says why.
    let (code, _, err) = status_of("[target\ncontrol_socket = 3\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("names no control_socket; trying the default"),
        "{err}"
    );
}
