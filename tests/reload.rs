//! Hot reload with the real binary: every trigger applies an edit exactly once, an invalid
//! edit changes nothing and is reported, and hosts on untouched parts notice nothing while
//! namespaces, listeners and hosts change around them.

// Helpers outside #[test] functions panic on purpose: a broken target fails the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{HOSTNQN, TargetProcess, free_port};
use nvmf_tgt::host::{HostQueue, QueueOptions};
use nvmf_tgt::nvme::Sqe;
use nvmf_tgt::nvme::opcode::admin;
use serde_json::Value;

const A: &str = "nqn.2026-11.io.nvmf-tgt:a";
const B: &str = "nqn.2026-11.io.nvmf-tgt:b";
const OTHER_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:5b1d1e8e-7d0a-4c2e-9a39-3f0a6a7e0002";

/// The declaration: subsystem A (ram nsid 1, plus `a_extra`) and B (`b_body`), both on
/// `port`.
fn declaration(dir: &Path, port: u16, a_extra: &str, b_body: &str) -> String {
    format!(
        "[target]\ninterrupt_mode = true\ncore_mask = \"0x1\"\ncontrol_socket = \"{}\"\n\n\
         [transport.tcp]\n\n\
         [[subsystem]]\nnqn = \"{A}\"\nallow_any_host = true\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [[subsystem.namespace]]\nnsid = 1\nram = {{ size = \"16MiB\" }}\n{a_extra}\n\
         [[subsystem]]\nnqn = \"{B}\"\nhosts = [\"{HOSTNQN}\"]\n\n\
         [[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {port}\n\n{b_body}",
        dir.join("ctl.sock").display()
    )
}

fn start(a_extra: &str, b_body: &str) -> TargetProcess {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = declaration(dir.path(), port, a_extra, b_body);
    TargetProcess::start_with_config(dir, port, &text)
}

fn status(target: &TargetProcess) -> Value {
    nvmf_tgt::control::call(&target.control_socket(), "nvmf_tgt_status", Value::Null)
        .expect("status")
}

fn generation(target: &TargetProcess) -> u64 {
    status(target)["declaration"]["applied"]["generation"]
        .as_u64()
        .unwrap()
}

/// Waits until the applied generation reaches `want`, then checks it stays there (the edit
/// applied exactly once).
fn expect_generation(target: &TargetProcess, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while generation(target) < want {
        assert!(
            Instant::now() < deadline,
            "generation stuck at {} (want {want}): {:#}\n{}",
            generation(target),
            status(target)["declaration"],
            target.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        generation(target),
        want,
        "applied more than once:\n{}",
        target.log()
    );
}

fn namespaces_of(target: &TargetProcess, nqn: &str) -> Vec<u64> {
    status(target)["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["nqn"] == nqn)
        .map(|s| {
            s["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["nsid"].as_u64().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn ns(nsid: u32) -> String {
    format!("[[subsystem.namespace]]\nnsid = {nsid}\nram = {{ size = \"4MiB\" }}\n")
}

#[test]
fn every_trigger_applies_once() {
    let target = start("", &ns(1));
    let path = target.config_path.clone();
    let dir = target.dir.path().to_owned();
    let port = target.port;
    assert_eq!(generation(&target), 1);

    // An editor's save: write a temp file, rename it over.
    let tmp = dir.join(".target.toml.swp");
    std::fs::write(
        &tmp,
        declaration(&dir, port, "", &format!("{}{}", ns(1), ns(2))),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    expect_generation(&target, 2);
    assert_eq!(namespaces_of(&target, B), [1, 2]);

    // In place.
    std::fs::write(
        &path,
        declaration(&dir, port, "", &format!("{}{}", ns(1), ns(3))),
    )
    .unwrap();
    expect_generation(&target, 3);
    assert_eq!(namespaces_of(&target, B), [1, 3]);

    // Delete, then recreate.
    std::fs::remove_file(&path).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(&path, declaration(&dir, port, "", &ns(1))).unwrap();
    expect_generation(&target, 4);
    assert_eq!(namespaces_of(&target, B), [1]);

    // Rewriting the same bytes does nothing; neither does touching the file.
    std::fs::write(&path, declaration(&dir, port, "", &ns(1))).unwrap();
    expect_generation(&target, 4);

    // SIGHUP after the watcher applied everything finds nothing to change.
    common::signal(target.pid(), "HUP");
    std::thread::sleep(Duration::from_millis(500));
    let last = &status(&target)["declaration"]["last_attempt"];
    assert_eq!(last["trigger"], "signal", "{last:#}");
    assert_eq!(last["result"], "unchanged");
    assert_eq!(generation(&target), 4);

    // `nvmf-tgt reload` waits for the outcome.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nvmf-tgt"))
        .args(["reload", "--socket"])
        .arg(target.control_socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "unchanged: nothing to change\n"
    );
}

#[test]
fn sighup_applies_an_edit_when_not_watching() {
    // `run --no-watch` leaves reloads to SIGHUP and `nvmf-tgt reload` (as with systemd's
    // ExecReload): an edit alone changes nothing, SIGHUP applies it.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("target.toml");
    std::fs::write(&path, declaration(dir.path(), port, "", &ns(1))).unwrap();
    let target = TargetProcess::start_with_args(dir, port, &path, &["--no-watch"]);
    std::fs::write(
        &path,
        declaration(target.dir.path(), port, "", &format!("{}{}", ns(1), ns(5))),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(generation(&target), 1);
    common::signal(target.pid(), "HUP");
    expect_generation(&target, 2);
    assert_eq!(namespaces_of(&target, B), [1, 5]);
    assert_eq!(
        status(&target)["declaration"]["last_attempt"]["trigger"],
        "signal"
    );
    // One line says it all: trigger, result, generation, duration and the steps.
    let log = common::without_colours(&target.log());
    let line = log
        .lines()
        .find(|l| l.contains("reload by SIGHUP: applied, generation 2, "))
        .unwrap_or_else(|| panic!("no reload line:\n{log}"));
    assert!(
        line.contains(" ms, 1 step (+ add namespace 5 to "),
        "{line}"
    );
}

#[test]
fn invalid_or_refused_edits_change_nothing_and_are_reported() {
    let target = start("", &ns(1));
    let path = target.config_path.clone();
    let good = std::fs::read_to_string(&path).unwrap();

    let broken = format!(
        "{good}\n[[subsystem.namespace]]\nnsid = 2\nram = {{ size = \"4MiB\" }}\nbogus = 1\n"
    );
    std::fs::write(&path, &broken).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last = status(&target)["declaration"]["last_attempt"].clone();
        if last["result"] == "invalid" {
            let diagnostics = last["diagnostics"].as_str().unwrap();
            let line = broken.lines().position(|l| l == "bogus = 1").unwrap() + 1;
            assert!(
                diagnostics.contains(&format!(
                    "{}:{line}:1: error: unknown key `bogus`",
                    path.display()
                )),
                "{diagnostics}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no invalid attempt recorded: {last:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(generation(&target), 1);
    assert_eq!(namespaces_of(&target, B), [1]);
    assert!(target.log().contains("unknown key `bogus`"));
    let log = common::without_colours(&target.log());
    assert!(
        log.lines().any(
            |l| l.contains("reload by file change: invalid, generation 1, ")
                && l.contains("is invalid (1 error); the running configuration stays")
        ),
        "{log}"
    );

    // A restart-only change is refused whole: the namespace added alongside is not applied.
    let refused = good
        .replace("interrupt_mode = true", "interrupt_mode = false")
        .replace(&ns(1), &format!("{}{}", ns(1), ns(2)));
    std::fs::write(&path, &refused).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nvmf-tgt"))
        .args(["reload", "--socket"])
        .arg(target.control_socket())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "refused: changing target.interrupt_mode ({}:2:1) needs a restart; nothing was applied",
            path.display()
        )),
        "{text}"
    );
    assert_eq!(generation(&target), 1);
    assert_eq!(namespaces_of(&target, B), [1]);

    // `plan` shows it without applying.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nvmf-tgt"))
        .args(["plan", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("+ add namespace 2 to {B}")),
        "{text}"
    );
    assert!(
        text.contains("! target.interrupt_mode changed: needs a restart"),
        "{text}"
    );
}

#[test]
fn a_failed_apply_rolls_back() {
    let target = start("", &ns(1));
    let path = target.config_path.clone();
    let dir = target.dir.path().to_owned();
    // Another process holds the port the edit wants: binding fails while preparing, so the
    // namespace added in the same edit must not appear either.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let b_body = format!(
        "{}{}\n[[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {taken}\n",
        ns(1),
        ns(2)
    );
    std::fs::write(&path, declaration(&dir, target.port, "", &b_body)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let last = status(&target)["declaration"]["last_attempt"].clone();
        if last["result"] == "failed" {
            let message = last["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("cannot listen on 127.0.0.1:{taken}")),
                "{message}"
            );
            assert!(message.contains("rolled back"), "{message}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt: {last:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(generation(&target), 1);
    assert_eq!(namespaces_of(&target, B), [1]);
}

/// Continuous verified writes and reads on A's namespace 1 until `stop`; counts I/Os.
fn load_on_a(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Result<(), String> {
    let opts = QueueOptions::admin(A, HOSTNQN);
    let mut admin = HostQueue::connect(addr, &opts).map_err(|e| e.to_string())?;
    admin.enable_controller().map_err(|e| e.to_string())?;
    let mut io =
        HostQueue::connect(addr, &opts.io(1, admin.cntlid(), 32)).map_err(|e| e.to_string())?;
    let mut round: u64 = 0;
    let mut last_keep_alive = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let lba = (round * 8) % 32_000;
        let data: Vec<u8> = (0..4096u64).map(|i| (i ^ round).to_le_bytes()[0]).collect();
        io.write(1, lba, data.clone(), 512)
            .map_err(|e| format!("write {round}: {e}"))?;
        let back = io
            .read(1, lba, 8, 512)
            .map_err(|e| format!("read {round}: {e}"))?;
        if back != data {
            return Err(format!("round {round}: data read back differs"));
        }
        if last_keep_alive.elapsed() > Duration::from_secs(2) {
            admin.keep_alive().map_err(|e| format!("keep alive: {e}"))?;
            last_keep_alive = Instant::now();
        }
        round += 1;
        done.store(round, Ordering::Relaxed);
    }
    Ok(())
}

#[test]
fn changes_elsewhere_do_not_disturb_a_loaded_subsystem() {
    let target = start("", &ns(1));
    let path = target.config_path.clone();
    let dir = target.dir.path().to_owned();
    let port = target.port;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, done, addr) = (Arc::clone(&stop), Arc::clone(&done), target.addr());
        std::thread::spawn(move || load_on_a(addr, stop, done))
    };

    // A second host on A's admin queue waits for a Namespace Attribute Changed event.
    let opts = QueueOptions::admin(A, OTHER_HOST);
    let mut watcher = HostQueue::connect(target.addr(), &opts).unwrap();
    watcher.enable_controller().unwrap();
    let mut set = Sqe::new(admin::SET_FEATURES, 0);
    set.set_cdw(10, 0x0B).set_cdw(11, 1 << 8);
    assert!(
        watcher
            .execute(set, None, 0)
            .unwrap()
            .cqe
            .status
            .is_success()
    );
    let aer = watcher
        .submit(Sqe::new(admin::ASYNC_EVENT_REQUEST, 0), None, 0)
        .unwrap();

    let wait_io = |after: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::Relaxed) < after + 20 {
            assert!(Instant::now() < deadline, "I/O on A stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let other_port = free_port();
    let b_listener = format!(
        "\n[[subsystem.listener]]\ntransport = \"tcp\"\naddress = \"127.0.0.1\"\nport = {other_port}\n"
    );
    let edits = [
        ("", format!("{}{}", ns(1), ns(2))),    // add a namespace to B
        ("", ns(1)),                            // remove it
        ("", format!("{}{b_listener}", ns(1))), // add a listener to B
        ("", ns(1)),                            // remove it
        ("", String::new()),                    // remove B's namespace
    ];
    let mut want = 1;
    for (a_extra, b_body) in &edits {
        let before = done.load(Ordering::Relaxed);
        std::fs::write(&path, declaration(&dir, port, a_extra, b_body)).unwrap();
        want += 1;
        expect_generation(&target, want);
        wait_io(before);
    }
    // B's new listener really listened, and is closed again.
    assert!(std::net::TcpStream::connect(("127.0.0.1", other_port)).is_err());

    // Add a namespace to A itself: the watcher host gets the event and sees nsid 2.
    let before = done.load(Ordering::Relaxed);
    std::fs::write(&path, declaration(&dir, port, &ns(2), "")).unwrap();
    expect_generation(&target, want + 1);
    wait_io(before);
    let event = watcher.wait().unwrap();
    assert_eq!(event.cqe.cid, aer);
    // Notice (type 2), Namespace Attribute Changed (info 0), log page 0x04.
    assert_eq!(
        event.cqe.dw0 & 0x00FF_FF07,
        0x0004_0002,
        "dw0 {:#x}",
        event.cqe.dw0
    );
    let changed = watcher.get_log_page(0x04, 0xFFFF_FFFF, 4096, 0).unwrap();
    assert_eq!(u32::from_le_bytes(changed[0..4].try_into().unwrap()), 2);
    let active = watcher.identify(0x02, 0).unwrap();
    assert_eq!(&active[0..8], &[1, 0, 0, 0, 2, 0, 0, 0]);

    stop.store(true, Ordering::Relaxed);
    let result = load.join().unwrap();
    assert_eq!(
        result,
        Ok(()),
        "I/O on A failed during reloads:\n{}",
        target.log()
    );
    assert!(done.load(Ordering::Relaxed) > 100);
}

#[test]
fn removed_hosts_and_listeners_are_disconnected_others_stay() {
    let target = start("", &ns(1));
    let path = target.config_path.clone();
    let dir = target.dir.path().to_owned();
    let port = target.port;
    // Host on B (allowed by NQN) and host on A.
    let mut on_b = HostQueue::connect(target.addr(), &QueueOptions::admin(B, HOSTNQN)).unwrap();
    on_b.enable_controller().unwrap();
    let mut on_a = HostQueue::connect(target.addr(), &QueueOptions::admin(A, HOSTNQN)).unwrap();
    on_a.enable_controller().unwrap();

    // B's allow-list no longer names the host: its controller goes, A's stays.
    let text = declaration(&dir, port, "", &ns(1)).replace(
        &format!("hosts = [\"{HOSTNQN}\"]"),
        &format!("hosts = [\"{OTHER_HOST}\"]"),
    );
    std::fs::write(&path, &text).unwrap();
    expect_generation(&target, 2);
    assert!(
        on_b.keep_alive().is_err(),
        "B's host should be disconnected"
    );
    on_a.keep_alive().expect("A's host is untouched");
    assert!(HostQueue::connect(target.addr(), &QueueOptions::admin(B, HOSTNQN)).is_err());

    // A moves to a second listener; connections through the old socket (A's) close, the
    // new socket serves.
    let second = free_port();
    let moved = text.replacen(&format!("port = {port}"), &format!("port = {second}"), 1);
    let moved = moved.replace(
        &format!("hosts = [\"{OTHER_HOST}\"]"),
        "allow_any_host = true",
    );
    // B keeps the old port with any host; A only on the new one.
    std::fs::write(&path, &moved).unwrap();
    expect_generation(&target, 3);
    assert!(
        on_a.keep_alive().is_err(),
        "A's connection on the old listener should close"
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], second));
    let mut again = HostQueue::connect(addr, &QueueOptions::admin(A, HOSTNQN)).unwrap();
    again.enable_controller().unwrap();
    again.keep_alive().unwrap();
    let mut b_again = HostQueue::connect(target.addr(), &QueueOptions::admin(B, HOSTNQN)).unwrap();
    b_again.enable_controller().unwrap();
    // Removing A's listener from B's port removed only A's controllers there.
    b_again.keep_alive().unwrap();
}

#[test]
fn systemd_hears_ready_and_reloading() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let path = dir.path().join("target.toml");
    std::fs::write(&path, declaration(dir.path(), port, "", &ns(1))).unwrap();
    let target = TargetProcess::start_with_env(
        dir,
        port,
        &path,
        &["--no-watch"],
        &[("NOTIFY_SOCKET", notify_path.as_path())],
    );
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1\nSTATUS=serving");
    std::fs::write(
        &path,
        declaration(target.dir.path(), port, "", &format!("{}{}", ns(1), ns(2))),
    )
    .unwrap();
    common::signal(target.pid(), "HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading.rsplit('=').next().unwrap().parse().unwrap();
    assert!(usec > 0);
    let ready = next();
    assert!(
        ready.starts_with("READY=1\nSTATUS=reload Applied: applied 1 change(s)"),
        "{ready}"
    );
}

#[test]
fn spdk_nvmf_get_subsystems_follows_reloads() {
    let target = start("", &ns(1));
    let get = || {
        nvmf_tgt::control::call(&target.control_socket(), "nvmf_get_subsystems", Value::Null)
            .expect("nvmf_get_subsystems")
    };
    let subsystems = get();
    assert_eq!(subsystems[0]["subtype"], "Discovery");
    let b = &subsystems[2];
    assert_eq!(b["nqn"], B);
    assert_eq!(b["subtype"], "NVMe");
    assert_eq!(b["allow_any_host"], false);
    assert_eq!(b["hosts"][0]["nqn"], HOSTNQN);
    assert_eq!(b["listen_addresses"][0]["trtype"], "TCP");
    assert_eq!(b["listen_addresses"][0]["adrfam"], "IPv4");
    assert_eq!(b["listen_addresses"][0]["trsvcid"], target.port.to_string());
    assert_eq!(b["namespaces"][0]["nsid"], 1);
    let text = declaration(
        target.dir.path(),
        target.port,
        "",
        &format!("{}{}", ns(1), ns(4)),
    )
    .replace(&format!("hosts = [\"{HOSTNQN}\"]"), "allow_any_host = true");
    std::fs::write(&target.config_path, text).unwrap();
    expect_generation(&target, 2);
    let b = &get()[2];
    assert_eq!(b["allow_any_host"], true);
    assert_eq!(b["namespaces"][1]["nsid"], 4);
}
