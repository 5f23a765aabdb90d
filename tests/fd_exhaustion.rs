//! The real binary under a low file-descriptor limit: a flood of connections that uses up
//! every descriptor must not stop the listener for good (issue 10, item 5).

mod common;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{HOSTNQN, SUBNQN, TargetProcess, TargetSpec, without_colours};
use nvmf_tgt::host::{HostQueue, QueueOptions};

/// Descriptors the target may hold: a dozen or so for itself, the rest for connections.
const NOFILE: &str = "--nofile=64:64";
/// Far more connections than the target has descriptors for: the rest wait in the backlog
/// or in SYN retransmission.
const FLOOD: usize = 250;
/// Long enough for several retry periods, shorter than the 10 s connection-setup timeout
/// (which would free the flood's descriptors by itself).
const HOLD: Duration = Duration::from_secs(4);

fn prlimit_available() -> bool {
    Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Connections that are opened without blocking and never send a byte.
fn flood(addr: SocketAddr) -> Vec<mio::net::TcpStream> {
    (0..FLOOD)
        .map(|_| mio::net::TcpStream::connect(addr).expect("start a TCP connect"))
        .collect()
}

fn wait_for_log(target: &TargetProcess, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if target.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn listener_accepts_again_after_descriptors_ran_out() {
    if !prlimit_available() {
        println!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let target = TargetProcess::start_wrapped(
        &TargetSpec::default(),
        &[OsStr::new("prlimit"), OsStr::new(NOFILE)],
    );
    let opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut served = HostQueue::connect(target.addr(), &opts).expect("connect before the flood");
    served.enable_controller().expect("enable");

    let streams = flood(target.addr());
    assert!(
        wait_for_log(&target, "accept failed", Duration::from_secs(5)),
        "the flood never ran the target out of descriptors:\n{}",
        target.log()
    );
    let cpu_before = target.cpu_time();
    let held = Instant::now();
    while held.elapsed() < HOLD {
        // The host connected before the flood keeps being served while descriptors are short.
        let ctrl = served.identify(1, 0).expect("identify during the flood");
        assert_eq!(&ctrl[4..19], b"NVMFTGT00000001", "serial");
        std::thread::sleep(Duration::from_millis(250));
    }
    let cpu = target.cpu_time().saturating_sub(cpu_before);
    drop(streams);

    let closed = Instant::now();
    let mut fresh = HostQueue::connect(target.addr(), &opts).expect("connect after the flood");
    let waited = closed.elapsed();
    fresh
        .enable_controller()
        .expect("enable the new controller");
    assert!(
        waited < Duration::from_secs(2),
        "a new host needed {waited:?} to connect after the flood:\n{}",
        target.log()
    );
    assert!(
        wait_for_log(&target, "accepting again", Duration::from_secs(2)),
        "no recovery line:\n{}",
        target.log()
    );
    let log = without_colours(&target.log());
    let warnings = log.lines().filter(|l| l.contains("accept failed")).count();
    assert_eq!(warnings, 1, "one warning per burst:\n{log}");
    let recovery = log
        .lines()
        .find(|l| l.contains("accepting again"))
        .unwrap_or_default();
    println!(
        "a new host connected {waited:?} after the flood closed; CPU during the flood {cpu:?}"
    );
    println!("{recovery}");
    let failed_attempts: u64 = recovery
        .split_once("failed_attempts=")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no failed_attempts in {recovery}"));
    assert!(failed_attempts > 0, "{recovery}");
    // Retrying on a timer, not spinning: a few wake-ups per second cost next to nothing.
    assert!(
        cpu < HOLD / 5,
        "the target used {cpu:?} of CPU in {HOLD:?} while descriptors were short"
    );
    served.keep_alive().expect("the first host is still served");
}
