//! The real binary against hosts that try to hurt it: corrupted data, slow or silent readers,
//! hostile transfer sizes, stale queues. Each case once broke the target (issue 10); each
//! test repeats it as described there and checks data, status and memory.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{HOSTNQN, SUBNQN, TargetProcess, TargetSpec};
use nvmf_tgt::host::{HostError, HostQueue, QueueOptions, parse_from_target};
use nvmf_tgt::nvme::log::GetLogPageCmd;
use nvmf_tgt::nvme::opcode::{FABRICS, admin, fctype};
use nvmf_tgt::nvme::{DISCOVERY_NQN, Sgl, Sqe, Status};
use nvmf_tgt::transport::tcp::pdu::{DIGEST_LEN, DataPdu, Digests, Framing, Pdu, digest, pdu_type};

const MIB: u64 = 1 << 20;
/// What the issue allows each case to add to the target's resident memory.
const RSS_GROWTH_LIMIT: u64 = 256 * MIB;

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

fn target_with(namespaces: &str, tcp_options: &str) -> TargetProcess {
    TargetProcess::start(&TargetSpec {
        namespaces: namespaces.into(),
        tcp_options: tcp_options.into(),
        ..TargetSpec::default()
    })
}

fn ram_target(size: &str) -> TargetProcess {
    target_with(
        &format!("[[subsystem.namespace]]\nnsid = 1\nram = {{ size = \"{size}\" }}\n"),
        "",
    )
}

/// An enabled controller's admin queue and its I/O queue 1 of `queue_size` entries.
fn controller(addr: SocketAddr, queue_size: u16, digests: bool) -> (HostQueue, HostQueue) {
    let mut opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    opts.header_digest = digests;
    opts.data_digest = digests;
    let mut admin = HostQueue::connect(addr, &opts).expect("admin connect");
    admin.enable_controller().expect("enable");
    let io = HostQueue::connect(addr, &opts.io(1, admin.cntlid(), queue_size)).expect("io connect");
    (admin, io)
}

/// Writes and reads back one block through `io`, so a test can see a queue still serves.
fn still_serves(io: &mut HostQueue, slba: u64, byte: u8) {
    io.write(1, slba, vec![byte; 4096], 512).expect("write");
    let back = io.read(1, slba, 8, 512).expect("read");
    assert_eq!(back, vec![byte; 4096], "data read back");
}

fn status_json(target: &TargetProcess) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nvmf-tgt"))
        .args(["status", "--json", "--socket"])
        .arg(target.control_socket())
        .output()
        .expect("run status");
    assert!(out.status.success(), "status failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// (credits in use, commands waiting) summed over the reactors.
fn buffer_use(target: &TargetProcess) -> (u64, u64) {
    let status = status_json(target);
    let reactors = status["reactors"].as_array().expect("reactors").clone();
    reactors.iter().fold((0, 0), |(used, waiting), r| {
        (
            used + r["buffers"]["in_use"].as_u64().unwrap_or(0),
            waiting + r["buffers"]["waiting"].as_u64().unwrap_or(0),
        )
    })
}

/// NVMe/TCP H2CData with both digests: the data digest is of `digest_of`, the payload is
/// `data` (they differ when a test corrupts the payload in flight).
fn h2c_with_digests(
    cccid: u16,
    ttag: u16,
    datao: u32,
    data: &[u8],
    digest_of: &[u8],
    last: bool,
) -> Vec<u8> {
    let mut pdu = Vec::new();
    let framing = Framing {
        digests: Digests {
            header: true,
            data: true,
        },
        pda: 0,
    };
    DataPdu {
        cccid,
        ttag,
        datao,
        last,
        success: false,
        data,
    }
    .emit(&mut pdu, pdu_type::H2C_DATA, &framing);
    // The data digest the PDU ends with is that of `digest_of`.
    pdu.truncate(pdu.len() - DIGEST_LEN);
    pdu.extend_from_slice(&digest(digest_of));
    pdu
}

#[test]
fn a_bad_data_digest_in_the_first_of_two_h2c_pdus_fails_the_write_and_keeps_the_data() {
    let target = ram_target("16MiB");
    let (_admin, mut io) = controller(target.addr(), 32, true);
    let original = vec![0x5Au8; 16384];
    io.write(1, 0, original.clone(), 512).expect("first write");
    // A 16 KiB write (beyond the 4 KiB in-capsule limit, so it gets an R2T).
    let cid = io
        .submit(HostQueue::write_sqe(1, 0, 32, false), None, 16384)
        .expect("submit");
    let r2t = io.recv_pdu().expect("R2T");
    let Ok(Pdu::R2t(r2t)) = parse_from_target(&r2t, io.framing().digests) else {
        panic!("R2T expected, got {r2t:02x?}");
    };
    let ttag = r2t.ttag;
    let good = vec![0xC3u8; 16384];
    let mut flipped = good[..8192].to_vec();
    flipped[100] ^= 0xFF;
    io.send_raw(&h2c_with_digests(
        cid,
        ttag,
        0,
        &flipped,
        &good[..8192],
        false,
    ))
    .expect("first H2CData");
    io.send_raw(&h2c_with_digests(
        cid,
        ttag,
        8192,
        &good[8192..],
        &good[8192..],
        true,
    ))
    .expect("second H2CData");
    let done = io.wait().expect("completion");
    assert_eq!(done.cqe.cid, cid);
    assert_eq!(done.cqe.status, Status::TRANSIENT_TRANSPORT_ERROR);
    assert_eq!(
        io.read(1, 0, 32, 512).expect("read back"),
        original,
        "nothing of the corrupted write was stored"
    );
    still_serves(&mut io, 64, 0x11);
}

/// A host that keeps `queue_size` 128 KiB reads outstanding and reads its socket at about
/// 100 MB/s, for `seconds`: returns how much the target's memory grew and what moved.
fn slow_reader(target: &TargetProcess, queue_size: u16, seconds: u64) -> (u64, u64) {
    let (_admin, mut io) = controller(target.addr(), queue_size, false);
    let blocks_per_read = 256u64;
    let ns_blocks = 64 * MIB / 512;
    let mut next = 0u64;
    let mut submit = |io: &mut HostQueue| {
        let slba = (next * blocks_per_read) % ns_blocks;
        next += 1;
        io.submit(HostQueue::read_sqe(1, slba, 256), None, 131_072)
            .expect("submit read");
    };
    for _ in 0..queue_size {
        submit(&mut io);
    }
    let started = Instant::now();
    let mut baseline = None;
    let mut moved = 0u64;
    let mut paced = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let done = io.wait().expect("read completes");
        assert!(done.cqe.status.is_success(), "{:?}", done.cqe);
        assert_eq!(done.data.len(), 131_072);
        moved += 131_072;
        paced += 131_072;
        if paced >= MIB {
            // 1 MiB per 10 ms: about 100 MB/s.
            paced = 0;
            std::thread::sleep(Duration::from_millis(10));
        }
        if baseline.is_none() && started.elapsed() > Duration::from_secs(1) {
            baseline = Some(rss(target.pid()));
        }
        submit(&mut io);
    }
    let grown = rss(target.pid()).saturating_sub(baseline.expect("ran past the first second"));
    (grown, moved)
}

/// Memory that grows with the volume moved (buffers kept until a queue drains) shows as a
/// growth near `moved`; bounded buffers hold about a queue depth of 128 KiB reads.
fn assert_bounded(what: &str, grown: u64, moved: u64) {
    assert!(moved > 64 * MIB, "{what}: only {} MiB moved", moved / MIB);
    assert!(
        grown < RSS_GROWTH_LIMIT && grown < moved / 4,
        "{what}: RSS grew {} MiB while {} MiB moved",
        grown / MIB,
        moved / MIB
    );
}

#[test]
fn a_slow_host_that_obeys_its_queue_depth_does_not_grow_memory() {
    let target = ram_target("64MiB");
    let (grown, moved) = slow_reader(&target, 128, 8);
    assert_bounded("ram, QD 128", grown, moved);
    // And the same at QD 64 on a file namespace.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = common::write_file(dir.path(), "ns.img", 64 * MIB);
    let target = target_with(
        &format!(
            "[[subsystem.namespace]]\nnsid = 1\nfile = {{ path = \"{}\" }}\n",
            path.display()
        ),
        "",
    );
    let (grown, moved) = slow_reader(&target, 64, 8);
    assert_bounded("file, QD 64", grown, moved);
}

#[test]
fn a_host_that_never_reads_its_socket_holds_at_most_its_queue_depth() {
    let target = ram_target("64MiB");
    let before = rss(target.pid());
    let (_admin, mut io) = controller(target.addr(), 128, false);
    let mut sent = 0;
    for i in 0..8000u64 {
        let slba = (i * 256) % (64 * MIB / 512);
        if io
            .submit(HostQueue::read_sqe(1, slba, 256), None, 131_072)
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    let grown = rss(target.pid()).saturating_sub(before);
    assert!(
        grown < RSS_GROWTH_LIMIT,
        "RSS grew {} MiB after {sent} unread reads",
        grown / MIB
    );
    // Past its queue depth the host was cut off; everyone else is served.
    let log = target.log();
    assert!(log.contains("more commands than the queue holds"), "{log}");
    // The line says whose queue it was: the connection's span carries peer, qid, subsystem and
    // controller.
    let plain = common::without_colours(&log);
    let line = plain
        .lines()
        .find(|l| l.contains("terminating connection"))
        .expect("a termination logged");
    for field in [
        "qpair{peer=127.0.0.1:",
        " qid=1 ",
        " subnqn=nqn.",
        " cntlid=",
    ] {
        assert!(line.contains(field), "{field} missing in: {line}");
    }
    let (_admin2, mut other) = controller(target.addr(), 32, false);
    still_serves(&mut other, 0, 0x42);
}

#[test]
fn transfers_are_bounded_by_mdts_even_for_hosts_on_no_allow_list() {
    let target = ram_target("16MiB");
    let before = rss(target.pid());
    let stranger = "nqn.2014-08.org.nvmexpress:uuid:99999999-9999-9999-9999-999999999999";
    let mut disc = HostQueue::connect(target.addr(), &QueueOptions::admin(DISCOVERY_NQN, stranger))
        .expect("discovery connect");
    disc.enable_controller().expect("enable");
    let mut cids = Vec::new();
    for _ in 0..20 {
        let mut sqe = Sqe::new(admin::GET_LOG_PAGE, 0);
        GetLogPageCmd {
            lid: 0x70,
            lsp: 0,
            rae: false,
            numd: (64 << 20) - 1,
            offset: 0,
        }
        .emit(&mut sqe);
        sqe.set_sgl(Sgl::transport(256 << 20));
        let cid = disc.submit(sqe, None, 256 << 20).expect("submit");
        cids.push(cid);
    }
    for _ in &cids {
        let done = disc.wait().expect("completion");
        assert_eq!(done.cqe.status, Status::INVALID_FIELD.with_dnr());
        assert!(done.data.is_empty());
    }
    let grown = rss(target.pid()).saturating_sub(before);
    assert!(grown < RSS_GROWTH_LIMIT, "RSS grew {} MiB", grown / MIB);
    // The real log is still served, with zeroes past its end.
    let log = disc.get_log_page(0x70, 0, 8192, 0).expect("discovery log");
    assert_eq!(log.len(), 8192);
}

#[test]
fn writes_that_never_send_their_data_hold_no_more_than_the_buffer_pool() {
    let target = ram_target("16MiB");
    let before = rss(target.pid());
    let mut opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut admin = HostQueue::connect(target.addr(), &opts).expect("admin");
    admin.enable_controller().expect("enable");
    opts.queue_size = 128;
    let mut queues = Vec::new();
    for qid in 1..=40 {
        let mut io = HostQueue::connect(target.addr(), &opts.io(qid, admin.cntlid(), 128))
            .expect("io connect");
        for i in 0..128u64 {
            // A 128 KiB write whose data would follow an R2T that this host ignores.
            io.submit(
                HostQueue::write_sqe(1, i * 256 % 32768, 256, false),
                None,
                131_072,
            )
            .expect("submit write");
        }
        queues.push(io);
    }
    std::thread::sleep(Duration::from_secs(2));
    let grown = rss(target.pid()).saturating_sub(before);
    assert!(grown < RSS_GROWTH_LIMIT, "RSS grew {} MiB", grown / MIB);
    let (in_use, waiting) = buffer_use(&target);
    assert!(in_use <= 511, "{in_use} buffers in use");
    assert!(waiting > 4000, "{waiting} commands wait for buffers");
    // Closing the hostile queues frees everything they held or waited for.
    drop(queues);
    let deadline = Instant::now() + Duration::from_secs(5);
    while buffer_use(&target) != (0, 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(buffer_use(&target), (0, 0));
    let mut io = HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).expect("io");
    still_serves(&mut io, 0, 0x77);
}

#[test]
fn in_capsule_data_beyond_the_advertised_size_terminates_the_queue() {
    let target = ram_target("16MiB");
    let opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut admin = HostQueue::connect(target.addr(), &opts).expect("admin");
    admin.enable_controller().expect("enable");
    let mut io_opts = opts.io(1, admin.cntlid(), 32);
    io_opts.in_capsule_limit = 16384;
    let mut io = HostQueue::connect(target.addr(), &io_opts).expect("io");
    let err = io.write(1, 0, vec![1; 16384], 512).expect_err("refused");
    assert!(
        matches!(err, HostError::Terminated { fes: 0x05, .. }),
        "{err:?}"
    );
    let mut io = HostQueue::connect(target.addr(), &opts.io(2, admin.cntlid(), 32)).expect("io");
    still_serves(&mut io, 0, 0x33);
    assert_eq!(io.read(1, 0, 32, 512).expect("read")[..4096], [0x33; 4096]);
}

fn disconnect_sqe() -> Sqe {
    let mut sqe = Sqe::new(FABRICS, 0);
    sqe.set_fctype(fctype::DISCONNECT);
    sqe
}

/// Whether the target closed `queue`'s connection (a read sees EOF or an error).
fn is_closed(queue: HostQueue) -> bool {
    let Ok(mut stream) = queue.into_stream() else {
        return false;
    };
    common::read_until_closed(&mut stream);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    matches!(
        std::io::Read::read(&mut stream, &mut [0u8; 1]),
        Ok(0) | Err(_)
    )
}

#[test]
fn a_disconnected_queue_cannot_touch_its_replacement() {
    let target = ram_target("16MiB");
    let opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut admin = HostQueue::connect(target.addr(), &opts).expect("admin");
    admin.enable_controller().expect("enable");
    let mut a = HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).expect("A");
    still_serves(&mut a, 0, 1);
    let done = a.execute(disconnect_sqe(), None, 0).expect("disconnect");
    assert!(done.cqe.status.is_success());
    let mut b = HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).expect("B");
    assert!(is_closed(a), "A's connection ends after its Disconnect");
    still_serves(&mut b, 8, 2);
}

#[test]
fn after_a_controller_reset_the_old_queue_dies_and_its_close_spares_the_new_one() {
    let target = ram_target("16MiB");
    let opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    let mut admin = HostQueue::connect(target.addr(), &opts).expect("admin");
    admin.enable_controller().expect("enable");
    let mut a = HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).expect("A");
    still_serves(&mut a, 0, 1);
    // Reset: CC.EN 1 -> 0 -> 1.
    admin.property_set(0x14, 0x0046_0000).expect("CC.EN = 0");
    admin.enable_controller().expect("enable again");
    let mut b = HostQueue::connect(target.addr(), &opts.io(1, admin.cntlid(), 32)).expect("B");
    still_serves(&mut b, 8, 2);
    // A no longer serves I/O: its next command ends its connection.
    let _ = a.submit(HostQueue::read_sqe(1, 0, 8), None, 4096);
    assert!(a.wait().is_err(), "the stale queue A served a read");
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    // Closing A left B attached.
    still_serves(&mut b, 16, 3);
}
