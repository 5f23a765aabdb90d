//! The queue core driven by a transport that is not NVMe/TCP: its host data is copied in
//! place from "host memory" (as a PCIe transport copies through PRPs), so the paths TCP never
//! takes (data filled at once, a fetch that fails) are exercised with a real registry, RAM
//! backend and buffer pool.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::backend::ram::RamBackend;
use crate::controller::{Registry, SubsystemSpec, TransportLimits};
use crate::nvme::Sgl;
use crate::nvme::connect::{ConnectCmd, ConnectData};
use crate::nvme::opcode::io;
use crate::transport::buffer_pool::{BufferPool, PoolLimits, SharedPool};
use crate::transport::context::AsyncNotifier;

const SUBNQN: &str = "nqn.2026-12.io.nvmf-tgt:queue-core";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000c0";

/// A transport whose host data lies in `memory` and whose completions are recorded.
#[derive(Default)]
struct MemoryTransport {
    memory: Vec<u8>,
    /// Fail every fetch with this status (a bad guest address, say).
    fetch_fails: Option<Status>,
    completions: Vec<Cqe>,
    /// Data sent to the host, per command.
    sent: Vec<(u16, Vec<u8>)>,
    /// Completions not yet seen by the host.
    undelivered: usize,
    /// Read buffers sent, to give back to the pool as a transport does once they are out.
    sent_buffers: Vec<DataBuf>,
}

impl Responder for MemoryTransport {
    fn complete(&mut self, cqe: Cqe) {
        self.completions.push(cqe);
        self.undelivered += 1;
    }

    fn complete_with_data(&mut self, cid: u16, data: &[u8], zeroes: usize, cqe: Cqe) {
        let mut bytes = data.to_vec();
        bytes.resize(data.len() + zeroes, 0);
        self.sent.push((cid, bytes));
        self.complete(cqe);
    }

    fn complete_with_buffer(&mut self, cid: u16, data: DataBuf, cqe: Cqe) {
        self.sent.push((cid, data.to_vec()));
        self.sent_buffers.push(data);
        self.complete(cqe);
    }

    fn complete_with_zeroes(&mut self, cid: u16, len: usize, cqe: Cqe) {
        self.complete_with_data(cid, &[], len, cqe);
    }

    fn request_data(&mut self, _cid: u16, _tag: u16, buf: &mut [u8]) -> DataRequest {
        if let Some(status) = self.fetch_fails {
            return DataRequest::Failed(status);
        }
        buf.copy_from_slice(&self.memory[..buf.len()]);
        DataRequest::Filled
    }

    fn undelivered_completions(&self) -> usize {
        self.undelivered
    }
}

struct Rig {
    registry: Registry,
    listener: ListenerAddr,
    completions: crate::backend::Completions,
    _poll: mio::Poll,
    notifier: AsyncNotifier,
    pool: BufferPool,
    now: Instant,
}

impl Rig {
    fn new() -> Self {
        let listener = ListenerAddr::Tcp("127.0.0.1:4420".parse().expect("address"));
        let spec = SubsystemSpec::for_tests(
            SUBNQN,
            "CORE0001",
            listener.clone(),
            Arc::new(RamBackend::new(1 << 20)),
        );
        let registry = Registry::new(vec![spec], TransportLimits::default()).expect("registry");
        let (poll, completions) = crate::backend::tests::completions();
        let shared = SharedPool::new(PoolLimits::spdk_tcp_defaults(1));
        Self {
            registry,
            listener,
            completions,
            _poll: poll,
            notifier: Arc::new(|| {}),
            pool: BufferPool::new(shared, 0, Arc::new(|| {})),
            now: Instant::now(),
        }
    }

    fn connect(&mut self, core: &mut QueueCore, out: &mut MemoryTransport, qid: u16, cntlid: u16) {
        let mut sqe = Sqe::new(opcode::FABRICS, 1);
        sqe.set_fctype(fctype::CONNECT)
            .set_sgl(Sgl::in_capsule(1024));
        ConnectCmd {
            recfmt: 0,
            qid,
            sqsize: 1,
            cattr: 0,
            kato: if qid == 0 { 5000 } else { 0 },
        }
        .emit(&mut sqe);
        let mut data = vec![0; 1024];
        ConnectData {
            hostid: [7; 16],
            cntlid,
            subnqn: SUBNQN.into(),
            hostnqn: HOSTNQN.into(),
        }
        .emit(&mut data);
        let cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
        let attached = core.connect(
            &sqe,
            &data,
            true,
            &self.registry,
            &self.listener,
            None,
            &cx,
            out,
            self.now,
        );
        assert_eq!(attached, Some(qid), "{:?}", out.completions);
    }

    /// Receives and submits `sqe`, whose data (if any) is fetched from host memory.
    fn run(&mut self, core: &mut QueueCore, out: &mut MemoryTransport, sqe: Sqe, len: u32) -> Flow {
        assert_eq!(core.receive(out), Received::Accepted);
        let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
        core.submit(sqe, len, |_| Ok(HostData::Fetch), &mut cx, out, self.now)
    }
}

/// An admin queue and I/O queue 1 of an enabled controller, each two entries deep.
fn io_queue(rig: &mut Rig) -> (QueueCore, QueueCore, MemoryTransport) {
    let (mut admin, mut admin_out) = (QueueCore::new(), MemoryTransport::default());
    rig.connect(&mut admin, &mut admin_out, 0, 0xFFFF);
    let cntlid = u16::try_from(admin_out.completions[0].dw0 & 0xFFFF).expect("cntlid");
    let mut enable = Sqe::new(opcode::FABRICS, 2);
    enable
        .set_fctype(fctype::PROPERTY_SET)
        .set_cdw(11, 0x14)
        .set_cdw(12, 0x0046_0001);
    rig.run(&mut admin, &mut admin_out, enable, 0);
    assert!(admin_out.completions[1].status.is_success());
    let (mut ioq, mut out) = (QueueCore::new(), MemoryTransport::default());
    rig.connect(&mut ioq, &mut out, 1, cntlid);
    out.completions.clear();
    out.undelivered = 0;
    (admin, ioq, out)
}

fn rw(opcode: u8, cid: u16, len: u32) -> Sqe {
    let mut sqe = Sqe::new(opcode, cid);
    sqe.set_nsid(1)
        .set_cdw(10, 8)
        .set_cdw(12, len / 512 - 1)
        .set_sgl(Sgl::transport(len));
    sqe
}

#[test]
fn data_filled_in_place_is_written_and_read_back_with_stamped_completions() {
    let mut rig = Rig::new();
    let (_admin, mut ioq, mut out) = io_queue(&mut rig);
    out.memory = (0..8192u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        rig.run(&mut ioq, &mut out, rw(io::WRITE, 5, 8192), 8192),
        Flow::Continue
    );
    out.undelivered = 0;
    assert_eq!(
        rig.run(&mut ioq, &mut out, rw(io::READ, 6, 8192), 8192),
        Flow::Continue
    );
    let [write, read] = out.completions.as_slice() else {
        panic!("{:?}", out.completions)
    };
    assert_eq!(
        (write.cid, write.status, write.sqid, write.sqhd),
        (5, Status::SUCCESS, 1, 1)
    );
    assert_eq!(
        (read.cid, read.status, read.sqid, read.sqhd),
        (6, Status::SUCCESS, 1, 0)
    );
    assert_eq!(out.sent, vec![(6, out.memory.clone())]);
    assert_eq!(ioq.in_flight(), 0);
    for buf in out.sent_buffers.drain(..) {
        rig.pool.give(buf);
    }
    assert_eq!(rig.pool.stats().in_use, 0, "buffers back in the pool");
}

#[test]
fn a_fetch_that_fails_completes_with_its_status_and_frees_the_buffer() {
    let mut rig = Rig::new();
    let (_admin, mut ioq, mut out) = io_queue(&mut rig);
    let bad_address = Status::DATA_TRANSFER_ERROR.with_dnr();
    out.fetch_fails = Some(bad_address);
    assert_eq!(
        rig.run(&mut ioq, &mut out, rw(io::WRITE, 9, 4096), 4096),
        Flow::Continue
    );
    let [cqe] = out.completions.as_slice() else {
        panic!("{:?}", out.completions)
    };
    assert_eq!((cqe.cid, cqe.status), (9, bad_address));
    assert_eq!(ioq.in_flight(), 0);
    assert_eq!(rig.pool.stats().in_use, 0);
}

#[test]
fn completions_the_host_has_not_seen_count_against_the_queue_depth() {
    let mut rig = Rig::new();
    let (_admin, mut ioq, mut out) = io_queue(&mut rig);
    let mut flush = Sqe::new(io::FLUSH, 1);
    flush.set_nsid(1);
    assert_eq!(rig.run(&mut ioq, &mut out, flush, 0), Flow::Continue);
    // Two entries: one completion unseen, one more command fits, the next is an overflow.
    assert_eq!(ioq.receive(&out), Received::Accepted);
    out.undelivered = 2;
    assert_eq!(ioq.receive(&out), Received::Overflow);
}

#[test]
fn a_detached_io_queue_of_a_torn_down_controller_is_stale() {
    let mut rig = Rig::new();
    let (mut admin, mut ioq, out) = io_queue(&mut rig);
    assert!(!ioq.is_stale());
    let ctrlr = admin
        .detach()
        .expect("an admin queue tears its controller down");
    assert!(!ctrlr.is_live());
    assert!(ioq.is_stale());
    assert_eq!(ioq.receive(&out), Received::Stale);
    assert!(ioq.detach().is_none(), "an I/O queue tears nothing down");
}
