//! The queue pair driven in memory by a fake host: its memory is byte vectors by key, READs
//! and WRITEs are copies, completions come back when the test says. Real registry, RAM
//! backend, no verbs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::backend::ram::RamBackend;
use crate::controller::{Registry, SubsystemSpec, TransportLimits};
use crate::nvme::connect::{ConnectCmd, ConnectData};
use crate::nvme::opcode::{admin, io};
use crate::transport::buffer_pool::{BufferPool, PoolLimits, SharedPool};
use crate::transport::rdma::protocol::{DataDescriptor, QueueSizes};

const SUBNQN: &str = "nqn.2026-11.io.nvmf-tgt:rdma-unit";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000002";
const MAX_IO: u32 = 131_072;

fn listener() -> ListenerAddr {
    ListenerAddr::Rdma("10.0.2.15:4420".parse().expect("socket address"))
}

fn context() -> Arc<RdmaContext> {
    let spec = SubsystemSpec::for_tests(
        SUBNQN,
        "UNIT0002",
        listener(),
        Arc::new(RamBackend::new(1 << 20)),
    );
    let limits = TransportLimits::default();
    let registry = Registry::new(vec![spec], limits).expect("registry");
    Arc::new(RdmaContext {
        registry: Arc::new(registry),
        limits,
        acceptor_backlog: 100,
        interrupt_mode: true,
        srq_depth: None,
        alarms: Arc::default(),
    })
}

/// What a connect request for queue `qid` of 32 entries is accepted with.
fn accepted(qid: u16) -> QueueSizes {
    QueueSizes {
        qid,
        recv_depth: 32,
        send_depth: 32,
    }
}

/// What the host saw of one response.
#[derive(Debug, Clone, Copy)]
struct Seen {
    cqe: Cqe,
    invalidated: Option<u32>,
}

/// Work the "adapter" finished, delivered when the test drives it.
enum Done {
    Read { slot: u16 },
    Send { slot: u16 },
}

struct Host {
    context: Arc<RdmaContext>,
    qpair: RdmaQpair,
    completions: crate::backend::Completions,
    _poll: mio::Poll,
    notifier: crate::transport::context::AsyncNotifier,
    pool: BufferPool,
    now: Instant,
    /// The host's registered memory, by key.
    memory: HashMap<u32, Vec<u8>>,
    staging: Vec<Vec<u8>>,
    resources: QpairResources,
    done: Vec<Done>,
    seen: Vec<Seen>,
    /// Most posts in flight at once, by kind.
    reads_in_flight: usize,
    max_reads_in_flight: usize,
    sends_in_flight: usize,
    max_sends_in_flight: usize,
}

impl Host {
    fn new(resources: QpairResources) -> Self {
        Self::with_context(context(), resources, accepted(0))
    }

    /// Another queue (another connection) of the same target, accepted for queue `qid`.
    fn sibling(&self, resources: QpairResources, qid: u16) -> Self {
        Self::with_context(Arc::clone(&self.context), resources, accepted(qid))
    }

    fn with_context(
        context: Arc<RdmaContext>,
        resources: QpairResources,
        accepted: QueueSizes,
    ) -> Self {
        let (poll, completions) = crate::backend::tests::completions();
        let now = Instant::now();
        let shared = SharedPool::new(PoolLimits::spdk_tcp_defaults(1));
        Self {
            qpair: RdmaQpair::new(
                Arc::clone(&context),
                listener(),
                None,
                resources,
                accepted,
                now,
            ),
            context,
            completions,
            _poll: poll,
            notifier: Arc::new(|| {}),
            pool: BufferPool::new(shared, 0, Arc::new(|| {})),
            now,
            memory: HashMap::new(),
            staging: (0..resources.staging_slots)
                .map(|_| vec![0u8; MAX_IO as usize])
                .collect(),
            resources,
            done: Vec::new(),
            seen: Vec::new(),
            reads_in_flight: 0,
            max_reads_in_flight: 0,
            sends_in_flight: 0,
            max_sends_in_flight: 0,
        }
    }

    const ROOMY: QpairResources = QpairResources {
        staging_slots: 8,
        send_slots: 32,
        read_depth: 4,
    };

    fn roomy() -> Self {
        Self::new(Self::ROOMY)
    }

    /// Connects an I/O queue of controller `cntlid` on a new queue, its Connect data in the
    /// capsule (as Linux's host does when IOCCSZ allows it).
    fn connect_io(&self, cntlid: u16, qid: u16, resources: QpairResources) -> Self {
        let mut ioq = self.sibling(resources, qid);
        let mut sqe = Self::connect_sqe(qid, 31);
        in_capsule(1024).emit(&mut sqe);
        let seen = ioq.one(&sqe, &Self::connect_data(cntlid));
        assert!(seen.cqe.status.is_success(), "{seen:?}");
        assert_eq!(ioq.qpair.qid(), Some(qid));
        ioq
    }

    /// Registers `bytes` of host memory under `key`; the keyed descriptor naming it.
    fn register(&mut self, key: u32, bytes: Vec<u8>, invalidate: bool) -> DataDescriptor {
        let length = u32::try_from(bytes.len()).expect("small");
        self.memory.insert(key, bytes);
        DataDescriptor::Keyed {
            address: 0,
            length,
            key,
            invalidate,
        }
    }

    /// Posts what the queue wants posted, as an adapter would execute it.
    fn run_posts(&mut self) {
        while let Some(post) = self.qpair.poll_post() {
            match post {
                Post::Read {
                    slot,
                    len,
                    remote_addr,
                    rkey,
                } => {
                    let memory = self.memory.get(&rkey).expect("a registered key");
                    let start = usize::try_from(remote_addr).expect("small");
                    let len = len as usize;
                    self.staging[usize::from(slot)][..len]
                        .copy_from_slice(&memory[start..start + len]);
                    self.reads_in_flight += 1;
                    self.max_reads_in_flight = self.max_reads_in_flight.max(self.reads_in_flight);
                    self.done.push(Done::Read { slot });
                }
                Post::Respond {
                    send_slot,
                    cqe,
                    data,
                    invalidate,
                } => {
                    if let Some(out) = data {
                        let len = out.len as usize;
                        let staging = &mut self.staging[usize::from(out.slot)];
                        let buf = out.fill.copy_into(len, |at, chunk| match chunk {
                            Chunk::Bytes(bytes) => {
                                staging[at..at + bytes.len()].copy_from_slice(bytes);
                            }
                            Chunk::Zeroes(n) => staging[at..at + n].fill(0),
                        });
                        if let Some(buf) = buf {
                            self.pool.give(buf);
                        }
                        let memory = self.memory.get_mut(&out.rkey).expect("a registered key");
                        let start = usize::try_from(out.remote_addr).expect("small");
                        memory[start..start + len].copy_from_slice(&staging[..len]);
                    }
                    self.seen.push(Seen {
                        cqe,
                        invalidated: invalidate,
                    });
                    self.sends_in_flight += 1;
                    self.max_sends_in_flight = self.max_sends_in_flight.max(self.sends_in_flight);
                    self.done.push(Done::Send { slot: send_slot });
                }
            }
        }
    }

    /// Delivers every completion of posted work, and posts what follows, until quiet.
    fn settle(&mut self) {
        self.run_posts();
        while !self.done.is_empty() {
            for done in std::mem::take(&mut self.done) {
                match done {
                    Done::Read { slot } => {
                        self.reads_in_flight -= 1;
                        let len = self.qpair.read_len(slot).expect("a read in flight") as usize;
                        let data = self.staging[usize::from(slot)][..len].to_vec();
                        let mut cx =
                            IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
                        let _ = self.qpair.handle_read_done(slot, &data, &mut cx, self.now);
                    }
                    Done::Send { slot } => {
                        self.sends_in_flight -= 1;
                        self.qpair.handle_send_done(slot);
                    }
                }
                self.run_posts();
            }
        }
    }

    /// Sends a capsule; returns the responses the host saw once everything settled.
    fn command(&mut self, sqe: &Sqe, in_capsule: &[u8]) -> Vec<Seen> {
        let mut capsule = sqe.as_bytes().to_vec();
        capsule.extend_from_slice(in_capsule);
        let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
        let flow = self.qpair.handle_capsule(&capsule, &mut cx, self.now);
        assert_eq!(flow, Flow::Continue);
        self.settle();
        std::mem::take(&mut self.seen)
    }

    fn one(&mut self, sqe: &Sqe, in_capsule: &[u8]) -> Seen {
        let seen = self.command(sqe, in_capsule);
        let [one] = seen.as_slice() else {
            panic!("one response expected: {seen:?}")
        };
        *one
    }

    fn connect_sqe(qid: u16, sqsize: u16) -> Sqe {
        let mut sqe = Sqe::new(opcode::FABRICS, 1);
        sqe.set_fctype(fctype::CONNECT);
        ConnectCmd {
            recfmt: 0,
            qid,
            sqsize,
            cattr: 0,
            kato: if qid == 0 { 5000 } else { 0 },
        }
        .emit(&mut sqe);
        sqe
    }

    fn connect_data(cntlid: u16) -> Vec<u8> {
        ConnectData {
            hostid: [2; 16],
            cntlid,
            subnqn: SUBNQN.into(),
            hostnqn: HOSTNQN.into(),
        }
        .to_vec()
    }

    /// Connects the admin queue the way Linux's host does: the data by reference, with a
    /// key to invalidate. Returns the controller ID.
    fn connect_admin(&mut self) -> u16 {
        let mut sqe = Self::connect_sqe(0, 31);
        self.register(0x77, Self::connect_data(0xFFFF), true)
            .emit(&mut sqe);
        let seen = self.one(&sqe, &[]);
        assert!(seen.cqe.status.is_success(), "{seen:?}");
        assert_eq!(
            seen.invalidated,
            Some(0x77),
            "SEND with Invalidate of the key"
        );
        let cntlid = u16::try_from(seen.cqe.dw0 & 0xFFFF).expect("cntlid");
        // Property Set CC.EN = 1 (offset 0x14, 4 bytes): no data, a null keyed descriptor.
        let mut sqe = Sqe::new(opcode::FABRICS, 0x7E);
        sqe.set_fctype(fctype::PROPERTY_SET);
        sqe.set_cdw(11, 0x14).set_cdw(12, 0x0046_0001);
        DataDescriptor::Keyed {
            address: 0,
            length: 0,
            key: 0,
            invalidate: false,
        }
        .emit(&mut sqe);
        let seen = self.one(&sqe, &[]);
        assert!(seen.cqe.status.is_success(), "{seen:?}");
        cntlid
    }
}

fn in_capsule(len: u32) -> DataDescriptor {
    DataDescriptor::InCapsule {
        offset: 0,
        length: len,
    }
}

#[test]
fn admin_connect_by_reference_and_identify_by_rdma_write() {
    let mut host = Host::roomy();
    let cntlid = host.connect_admin();
    assert_ne!(cntlid, 0xFFFF);
    assert_eq!(host.qpair.qid(), Some(0));

    let mut identify = Sqe::new(admin::IDENTIFY, 2);
    identify.set_cdw(10, 1); // CNS 1: the controller
    host.register(0x100, vec![0xEE; 4096], false)
        .emit(&mut identify);
    let seen = host.one(&identify, &[]);
    assert!(seen.cqe.status.is_success(), "{seen:?}");
    assert_eq!(seen.invalidated, None, "no invalidation asked, none done");
    let page = &host.memory[&0x100];
    let id = crate::nvme::identify::IdentifyController::parse(page).expect("identify page");
    assert_eq!(id.cntlid, cntlid);
    assert_eq!(id.subnqn, SUBNQN);
}

#[test]
fn io_queue_write_by_read_then_read_back_by_write() {
    let mut host = Host::roomy();
    let cntlid = host.connect_admin();

    let mut host = host.connect_io(cntlid, 1, Host::ROOMY);

    // 16 KiB written from host memory (RDMA READ), then read back (RDMA WRITE).
    let payload: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
    let mut write = Sqe::new(io::WRITE, 10);
    write.set_nsid(1).set_cdw(10, 8).set_cdw(12, 31);
    host.register(0x200, payload.clone(), true).emit(&mut write);
    let seen = host.one(&write, &[]);
    assert!(seen.cqe.status.is_success(), "{seen:?}");
    assert_eq!(seen.invalidated, Some(0x200));
    assert_eq!(seen.cqe.sqid, 1);

    let mut read = Sqe::new(io::READ, 11);
    read.set_nsid(1).set_cdw(10, 8).set_cdw(12, 31);
    host.register(0x300, vec![0; 16384], false).emit(&mut read);
    let seen = host.one(&read, &[]);
    assert!(seen.cqe.status.is_success(), "{seen:?}");
    assert_eq!(host.memory[&0x300], payload);

    // A 4 KiB write in the capsule.
    let small = vec![0x5Au8; 4096];
    let mut write = Sqe::new(io::WRITE, 12);
    write.set_nsid(1).set_cdw(10, 100).set_cdw(12, 7);
    in_capsule(4096).emit(&mut write);
    assert!(host.one(&write, &small).cqe.status.is_success());
    let mut read = Sqe::new(io::READ, 13);
    read.set_nsid(1).set_cdw(10, 100).set_cdw(12, 7);
    host.register(0x301, vec![0; 4096], false).emit(&mut read);
    assert!(host.one(&read, &[]).cqe.status.is_success());
    assert_eq!(host.memory[&0x301], small);
}

#[test]
fn bad_descriptors_fail_the_command_not_the_queue() {
    let mut host = Host::roomy();
    host.connect_admin();

    // NVMe/TCP's transport data block means nothing here.
    let mut identify = Sqe::new(admin::IDENTIFY, 3);
    identify.set_cdw(10, 1);
    identify.set_sgl(Sgl::transport(4096));
    let seen = host.one(&identify, &[]);
    assert_eq!(
        seen.cqe.status,
        Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr()
    );

    // In-capsule data cannot carry data to the host.
    let mut identify = Sqe::new(admin::IDENTIFY, 4);
    identify.set_cdw(10, 1);
    in_capsule(0).emit(&mut identify);
    DataDescriptor::InCapsule {
        offset: 0,
        length: 4096,
    }
    .emit(&mut identify);
    let seen = host.one(&identify, &vec![0u8; 4096]);
    assert_eq!(seen.cqe.status, Status::INVALID_FIELD.with_dnr());

    // An in-capsule descriptor longer than what came.
    let mut set = Sqe::new(admin::SET_FEATURES, 5);
    DataDescriptor::InCapsule {
        offset: 0,
        length: 512,
    }
    .emit(&mut set);
    let seen = host.one(&set, &[0u8; 100]);
    assert_eq!(seen.cqe.status, Status::DATA_SGL_LENGTH_INVALID.with_dnr());

    // And the queue still serves.
    let mut identify = Sqe::new(admin::IDENTIFY, 6);
    identify.set_cdw(10, 1);
    host.register(0x400, vec![0; 4096], false)
        .emit(&mut identify);
    assert!(host.one(&identify, &[]).cqe.status.is_success());
}

#[test]
fn a_short_capsule_closes_the_queue() {
    let mut host = Host::roomy();
    let mut cx = IoCx::new(&host.completions, 0, &host.notifier, &mut host.pool);
    let flow = host.qpair.handle_capsule(&[0u8; 63], &mut cx, host.now);
    assert_eq!(flow, Flow::Close);
    assert!(host.qpair.is_closing());
}

#[test]
fn command_before_connect_is_a_sequence_error() {
    let mut host = Host::roomy();
    let mut identify = Sqe::new(admin::IDENTIFY, 9);
    host.register(0x10, vec![0; 4096], false)
        .emit(&mut identify);
    let seen = host.one(&identify, &[]);
    assert_eq!(seen.cqe.status, Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    assert_eq!(host.qpair.qid(), None);
}

#[test]
fn slots_bound_what_is_in_flight() {
    // One staging slot, two send slots, one read at a time: eight 4 KiB writes by
    // reference queue up and still all complete, never more in flight than the slots.
    let mut admin = Host::roomy();
    let cntlid = admin.connect_admin();
    let mut host = admin.connect_io(
        cntlid,
        1,
        QpairResources {
            staging_slots: 1,
            send_slots: 2,
            read_depth: 1,
        },
    );

    let mut cx = IoCx::new(&host.completions, 0, &host.notifier, &mut host.pool);
    for i in 0..8u16 {
        let mut write = Sqe::new(io::WRITE, 100 + i);
        write
            .set_nsid(1)
            .set_cdw(10, u32::from(i) * 8)
            .set_cdw(12, 7);
        let key = 0x1000 + u32::from(i);
        host.memory
            .insert(key, vec![u8::try_from(i).expect("small"); 4096]);
        DataDescriptor::Keyed {
            address: 0,
            length: 4096,
            key,
            invalidate: false,
        }
        .emit(&mut write);
        let flow = host
            .qpair
            .handle_capsule(write.as_bytes(), &mut cx, host.now);
        assert_eq!(flow, Flow::Continue);
    }
    let _ = cx;
    host.settle();
    assert_eq!(host.seen.len(), 8, "{:?}", host.seen);
    assert!(host.seen.iter().all(|s| s.cqe.status.is_success()));
    assert_eq!(host.max_reads_in_flight, 1);
    assert!(host.max_sends_in_flight <= usize::from(host.resources.send_slots));
}

#[test]
fn a_connect_must_name_the_queue_the_connection_was_accepted_for() {
    let mut admin = Host::roomy();
    let cntlid = admin.connect_admin();
    // Accepted for queue 2 of 32 entries: a Connect for queue 1 is refused at QID, one for 64
    // entries at SQSIZE; neither attaches, and the right one (fewer entries is fine) still does.
    let mut ioq = admin.sibling(Host::ROOMY, 2);
    for (qid, sqsize, ipo) in [(1, 31, sqe_offset::QID), (2, 63, sqe_offset::SQSIZE)] {
        let mut sqe = Host::connect_sqe(qid, sqsize);
        in_capsule(1024).emit(&mut sqe);
        let seen = ioq.one(&sqe, &Host::connect_data(cntlid));
        assert_eq!(
            seen.cqe.status,
            Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            "qid {qid} sqsize {sqsize}"
        );
        assert_eq!(seen.cqe.dw0, invalid_parameter_dw0(false, ipo));
        assert_eq!(ioq.qpair.qid(), None);
    }
    let mut sqe = Host::connect_sqe(2, 15);
    in_capsule(1024).emit(&mut sqe);
    let seen = ioq.one(&sqe, &Host::connect_data(cntlid));
    assert!(seen.cqe.status.is_success(), "{seen:?}");
    assert_eq!(ioq.qpair.qid(), Some(2));
}
