//! The project's NVMe/TCP host against the real binary over loopback.

#![allow(clippy::cast_possible_truncation)]

mod common;

use common::{HOSTNQN, SUBNQN, TargetProcess, TargetSpec};
use nvmf_tgt::host::{HostError, HostQueue, QueueOptions, discover};
use nvmf_tgt::nvme::opcode::io;
use nvmf_tgt::nvme::{Sqe, Status};
use nvmf_tgt::transport::tcp::pdu::{CapsuleCmd, DIGEST_LEN, DataPdu, pdu_type};

const BS: u32 = 512;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Admin queue connected and enabled, plus `ios` I/O queues.
fn connect(target: &TargetProcess, digests: bool, ios: u16) -> (HostQueue, Vec<HostQueue>) {
    let mut opts = QueueOptions::admin(SUBNQN, HOSTNQN);
    opts.header_digest = digests;
    opts.data_digest = digests;
    let mut admin = HostQueue::connect(target.addr(), &opts).expect("admin connect");
    admin.enable_controller().expect("enable");
    let queues = (1..=ios)
        .map(|qid| {
            HostQueue::connect(target.addr(), &opts.io(qid, admin.cntlid(), 64))
                .expect("io connect")
        })
        .collect();
    (admin, queues)
}

fn file_spec(dir: &std::path::Path) -> TargetSpec {
    let path = common::write_file(dir, "ns.img", 32 << 20);
    TargetSpec {
        namespaces: format!(
            "[[subsystem.namespace]]\nnsid = 1\nram = {{ size = \"16MiB\" }}\n\n\
             [[subsystem.namespace]]\nnsid = 2\nfile = {{ path = \"{}\" }}\n",
            path.display()
        ),
        ..TargetSpec::default()
    }
}

#[test]
fn identify_and_verified_io_with_and_without_digests_on_many_queues() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let target = TargetProcess::start(&file_spec(dir.path()));
    for digests in [false, true] {
        let (mut admin, mut queues) = connect(&target, digests, 4);
        let ctrl = admin.identify(1, 0).expect("identify controller");
        assert_eq!(&ctrl[4..19], b"NVMFTGT00000001", "serial");
        let subnqn = String::from_utf8_lossy(&ctrl[768..768 + SUBNQN.len()]);
        assert_eq!(subnqn, SUBNQN);
        // NN is the largest namespace ID the controller supports: max_namespaces.
        assert_eq!(
            u32::from_le_bytes([ctrl[516], ctrl[517], ctrl[518], ctrl[519]]),
            32,
            "NN"
        );
        let ns_list = admin.identify(2, 0).expect("active namespaces");
        assert_eq!(&ns_list[..8], &[1, 0, 0, 0, 2, 0, 0, 0]);
        let ns = admin.identify(0, 2).expect("identify namespace 2");
        assert_eq!(
            u64::from_le_bytes(ns[..8].try_into().expect("nsze")),
            (32 << 20) / u64::from(BS)
        );

        // Every queue writes its own region of both namespaces, small (in capsule) and large
        // (R2T, several H2CData), then reads it back.
        for (i, q) in queues.iter_mut().enumerate() {
            for nsid in [1, 2] {
                let base = (i as u64) * 1024;
                let small = pattern(4096, i as u8);
                let large = pattern(128 * 1024, 100 + i as u8);
                q.write(nsid, base, small.clone(), BS).expect("4K write");
                q.write(nsid, base + 8, large.clone(), BS)
                    .expect("128K write");
                assert_eq!(q.read(nsid, base, 8, BS).expect("read"), small);
                assert_eq!(q.read(nsid, base + 8, 256, BS).expect("read"), large);
            }
        }
        // Many commands in flight on one queue.
        let q = &mut queues[0];
        for n in 0..32u64 {
            q.submit(
                HostQueue::write_sqe(1, 8192 + n * 8, 8, false),
                Some(pattern(4096, n as u8)),
                0,
            )
            .expect("submit");
        }
        for _ in 0..32 {
            assert!(q.wait().expect("completion").cqe.status.is_success());
        }
        for n in 0..32u64 {
            q.submit(HostQueue::read_sqe(1, 8192 + n * 8, 8), None, 4096)
                .expect("submit");
        }
        for _ in 0..32 {
            let done = q.wait().expect("completion");
            assert!(done.cqe.status.is_success());
            let n = (0..32u8)
                .find(|&n| done.data == pattern(4096, n))
                .expect("data matches a written block");
            let _ = n;
        }
        admin.keep_alive().expect("keep alive");
    }
}

#[test]
fn io_commands_statuses() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let target = TargetProcess::start(&file_spec(dir.path()));
    let (_admin, mut queues) = connect(&target, false, 1);
    let q = &mut queues[0];
    q.write(2, 0, pattern(8192, 9), BS).expect("write");
    // Compare: equal, then different.
    let mut cmp = Sqe::new(io::COMPARE, 0);
    cmp.set_nsid(2).set_cdw(12, 15);
    let done = q.execute(cmp, Some(pattern(8192, 9)), 0).expect("compare");
    assert!(done.cqe.status.is_success(), "{:?}", done.cqe);
    let done = q.execute(cmp, Some(pattern(8192, 10)), 0).expect("compare");
    assert_eq!(done.cqe.status, Status::COMPARE_FAILURE);
    // Write Zeroes, Flush, Dataset Management deallocate.
    let mut wz = Sqe::new(io::WRITE_ZEROES, 0);
    wz.set_nsid(2).set_cdw(12, 7);
    assert!(
        q.execute(wz, None, 0)
            .expect("write zeroes")
            .cqe
            .status
            .is_success()
    );
    assert_eq!(q.read(2, 0, 8, BS).expect("read"), vec![0; 4096]);
    let mut flush = Sqe::new(io::FLUSH, 0);
    flush.set_nsid(2);
    assert!(
        q.execute(flush, None, 0)
            .expect("flush")
            .cqe
            .status
            .is_success()
    );
    let mut dsm = Sqe::new(io::DATASET_MANAGEMENT, 0);
    dsm.set_nsid(2).set_cdw(10, 0).set_cdw(11, 1 << 2);
    let mut range = vec![0u8; 16];
    range[4..8].copy_from_slice(&8u32.to_le_bytes());
    range[8..16].copy_from_slice(&8u64.to_le_bytes());
    assert!(
        q.execute(dsm, Some(range), 0)
            .expect("dsm")
            .cqe
            .status
            .is_success()
    );
    assert_eq!(q.read(2, 8, 8, BS).expect("read"), vec![0; 4096]);
    // Out of range, bad namespace, unsupported opcode, over MDTS.
    let err = q
        .read(1, (16 << 20) / 512, 1, BS)
        .expect_err("beyond the end");
    assert!(
        matches!(err, HostError::Status(s) if s == Status::LBA_OUT_OF_RANGE.with_dnr()),
        "{err}"
    );
    let err = q.read(7, 0, 1, BS).expect_err("no such namespace");
    assert!(
        matches!(err, HostError::Status(s) if s == Status::INVALID_NAMESPACE.with_dnr()),
        "{err}"
    );
    let done = q.execute(Sqe::new(0x7E, 0), None, 0).expect("odd opcode");
    assert_eq!(done.cqe.status, Status::INVALID_OPCODE.with_dnr());
    let err = q.read(1, 0, 1024, BS).expect_err("512 KiB is over MDTS");
    assert!(matches!(err, HostError::Status(_)), "{err}");
    // The queue still works after all of that.
    assert_eq!(q.read(2, 0, 8, BS).expect("read"), vec![0; 4096]);
}

#[test]
fn discovery_log_lists_what_the_host_may_see() {
    let target = TargetProcess::start(&TargetSpec::default());
    let (header, entries) = discover(target.addr(), HOSTNQN).expect("discover");
    assert_eq!(header.numrec as usize, entries.len());
    let nvme: Vec<_> = entries.iter().filter(|e| e.subtype == 2).collect();
    assert_eq!(nvme.len(), 1, "{entries:?}");
    assert_eq!(nvme[0].subnqn, SUBNQN);
    assert_eq!(nvme[0].trsvcid, target.port.to_string());
    assert_eq!(nvme[0].traddr, "127.0.0.1");
    assert_eq!(nvme[0].trtype, 3, "TCP");

    let allowed = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
    let other = TargetProcess::start(&TargetSpec {
        extra_subsystem_keys: format!("hosts = [\"{allowed}\"]\n"),
        ..TargetSpec::default()
    });
    let (_, entries) = discover(other.addr(), HOSTNQN).expect("discover");
    assert!(
        entries.iter().all(|e| e.subtype != 2),
        "a refused host sees no subsystem: {entries:?}"
    );
    let (_, entries) = discover(other.addr(), allowed).expect("discover");
    assert_eq!(entries.iter().filter(|e| e.subtype == 2).count(), 1);
}

#[test]
fn malformed_pdus_after_connect_terminate_only_that_connection() {
    let target = TargetProcess::start(&TargetSpec::default());
    let (_admin, mut good) = connect(&target, true, 1);
    // A capsule with a wrong header digest.
    let (_a, mut bad) = connect(&target, true, 1);
    let mut pdu = Vec::new();
    CapsuleCmd {
        sqe: HostQueue::read_sqe(1, 0, 1),
        data: &[],
    }
    .emit(&mut pdu, &bad[0].framing());
    pdu.truncate(pdu.len() - DIGEST_LEN);
    pdu.extend_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
    bad[0].send_raw(&pdu).expect("send");
    let err = bad[0].wait().expect_err("terminated");
    assert!(
        matches!(err, HostError::Terminated { fes: 0x03, .. }),
        "{err}"
    );
    // An H2CData for a transfer that was never asked for.
    let (_a, mut bad) = connect(&target, true, 1);
    let mut pdu = Vec::new();
    DataPdu {
        cccid: 9,
        ttag: 9,
        datao: 0,
        last: true,
        success: false,
        data: &[0; 512],
    }
    .emit(&mut pdu, pdu_type::H2C_DATA, &bad[0].framing());
    bad[0].send_raw(&pdu).expect("send");
    let err = bad[0].wait().expect_err("terminated");
    assert!(
        matches!(err, HostError::Terminated { fes: 0x04, .. }),
        "{err}"
    );
    // The well-behaved host never noticed.
    good[0].write(1, 0, pattern(4096, 3), BS).expect("write");
    assert_eq!(good[0].read(1, 0, 8, BS).expect("read"), pattern(4096, 3));
}
