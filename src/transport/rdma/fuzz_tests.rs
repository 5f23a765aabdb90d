//! Fuzzing of the NVMe/RDMA wire formats and queue pair: what a hostile host can put in CM
//! private data and in command capsules.
//!
//! The CM session feeds random and mutated private data to the connect request parser and
//! the negotiation; every accepted queue must be within the limits. The queue pair sessions
//! drive one [`RdmaQpair`] the way its connection does, with a host that follows a grammar
//! (Connect of the admin or an I/O queue with its data in the capsule or by reference, right
//! or naming another queue, Property Get/Set, Identify, reads and writes with keyed, offset
//! and malformed SGLs, random opcodes), mutates bytes and lengths in a third of the sessions,
//! names memory it never registered, and finishes the posted work in random order. The
//! checks: nothing panics; posts stay within the slots the queue was given (staging, send,
//! READ depth) and within `max_io_size`; a READ or WRITE at a key the host never registered
//! ends the connection (as the device's access error would), and nothing more is posted
//! after the queue pair says it is closing; once closed, every pool buffer is back.
//!
//! A failure prints the session's trace and the seed that replays it:
//! `NVMF_FUZZ_REPLAY=0x... cargo test --features rdma --lib fuzz_rdma -- --nocapture`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RdmaContext;
use super::protocol::{
    CmRequest, DataDescriptor, QUEUE_DEPTH_MIN, QueueLimits, QueueSizes, negotiate,
};
use super::qpair::{Chunk, Post, QpairResources, RdmaQpair};
use crate::backend::ram::RamBackend;
use crate::controller::{ListenerAddr, Registry, SubsystemSpec, TransportLimits};
use crate::fuzz::{self, Rng, Trace, count};
use crate::nvme::Sqe;
use crate::nvme::connect::{ConnectCmd, ConnectData};
use crate::nvme::opcode::{FABRICS, admin, fctype, io};
use crate::transport::buffer_pool::{BufferPool, PoolLimits, SharedPool};
use crate::transport::context::{AsyncNotifier, Flow, IoCx};

const SUBNQN: &str = "nqn.2026-11.io.nvmf-tgt:rdma-fuzz";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000f3";
const MAX_IO: u32 = 131_072;
const NS_BYTES: u64 = 1 << 20;

/// A number below `n` (which fits the type), as the type the caller wants.
fn below<T: TryFrom<usize> + Default>(rng: &mut Rng, n: usize) -> T {
    T::try_from(rng.below(n)).unwrap_or_default()
}

/// One of `rng.interesting(max)`'s values (`max` fits the type), as that type.
fn interesting<T: TryFrom<u64> + Default>(rng: &mut Rng, max: u64) -> T {
    T::try_from(rng.interesting(max)).unwrap_or_default()
}

#[test]
fn fuzz_rdma_cm_private_data() {
    fuzz::run("fuzz_rdma_cm_private_data", |rng, trace| {
        let limits = QueueLimits {
            max_queue_depth: *rng.pick(&[2, 32, 128, 4096]),
            max_aq_depth: *rng.pick(&[2, 32, 128]),
            max_io_qpairs: *rng.pick(&[1, 4, 127]),
        };
        let mut bytes = vec![0u8; *rng.pick(&[0, 1, 8, 31, 32, 56, 64])];
        if bytes.len() >= 8 && rng.bool() {
            // A well-formed request, then perhaps a field changed.
            bytes[2..4].copy_from_slice(&interesting::<u16>(rng, 200).to_le_bytes());
            bytes[4..6].copy_from_slice(&interesting::<u16>(rng, 5000).to_le_bytes());
            bytes[6..8].copy_from_slice(&interesting::<u16>(rng, 5000).to_le_bytes());
        } else {
            rng.fill(&mut bytes);
        }
        trace.log(|| format!("private data {bytes:02x?} limits {limits:?}"));
        let Ok(request) = CmRequest::parse(&bytes) else {
            count("cm: refused at parse");
            return;
        };
        match negotiate(&request, &limits) {
            Ok(sizes) => {
                count("cm: accepted");
                let max = if request.qid == 0 {
                    limits.max_aq_depth.min(32)
                } else {
                    limits.max_queue_depth
                };
                assert!(
                    (QUEUE_DEPTH_MIN..=max).contains(&sizes.recv_depth),
                    "{sizes:?}"
                );
                assert!(sizes.send_depth >= 1 && sizes.send_depth <= sizes.recv_depth);
                assert!(sizes.qid <= limits.max_io_qpairs);
            }
            Err(_) => count("cm: rejected"),
        }
    });
}

#[test]
fn fuzz_rdma_qpair_sessions() {
    fuzz::run("fuzz_rdma_qpair_sessions", session);
}

/// Work posted and not yet finished by the fake device.
enum Pending {
    Read { slot: u16, len: u32 },
    Send { slot: u16 },
}

struct World {
    qpair: RdmaQpair,
    resources: QpairResources,
    completions: crate::backend::Completions,
    _poll: mio::Poll,
    notifier: AsyncNotifier,
    pool: BufferPool,
    now: Instant,
    /// The responses sent, in order.
    responses: Vec<crate::nvme::Cqe>,
    /// The host's registered memory, by key.
    memory: HashMap<u32, Vec<u8>>,
    staging: Vec<Vec<u8>>,
    pending: Vec<Pending>,
    reads_in_flight: u16,
    sends_in_flight: u16,
    closed: bool,
}

fn session(rng: &mut Rng, trace: &mut Trace) {
    let listener = ListenerAddr::Rdma("10.0.2.15:4420".parse().expect("socket address"));
    let spec = SubsystemSpec::for_tests(
        SUBNQN,
        "FUZZRDMA",
        listener.clone(),
        Arc::new(RamBackend::new(NS_BYTES)),
    );
    let limits = TransportLimits::default();
    let registry = Arc::new(Registry::new(vec![spec], limits).expect("registry"));
    let context = Arc::new(RdmaContext {
        registry,
        limits,
        acceptor_backlog: 16,
        interrupt_mode: rng.bool(),
        srq_depth: None,
        alarms: Arc::default(),
    });
    // SPDK's pool, or one so small that commands wait for buffers.
    let pool_limits = if rng.bool() {
        PoolLimits::spdk_tcp_defaults(1)
    } else {
        PoolLimits::new(32, Some(0), 8192, 1)
    };
    let shared = SharedPool::new(pool_limits);
    let staging_slots = 1 + below::<u16>(rng, 16);
    let resources = QpairResources {
        staging_slots,
        send_slots: 1 + below::<u16>(rng, 32),
        read_depth: 1 + below::<u16>(rng, usize::from(staging_slots.min(4))),
    };
    let is_admin = rng.chance(40);
    let accepted = QueueSizes {
        qid: if is_admin {
            0
        } else {
            1 + below::<u16>(rng, 4)
        },
        recv_depth: *rng.pick(&[2, 16, 32, 64]),
        send_depth: 2,
    };
    trace.log(|| format!("resources {resources:?} accepted {accepted:?}"));
    // I/O queues belong to a controller another connection made: its admin queue, set up
    // properly, lives through the session.
    let mut admin = None;
    let mut cntlid = 0xFFFF;
    if !is_admin {
        let mut world = World::new(&context, &shared, World::ROOMY, ADMIN_QUEUE, &listener);
        cntlid = world.connect_admin(trace);
        admin = Some(world);
    }
    let mut world = World::new(&context, &shared, resources, accepted, &listener);
    let mutate = rng.chance(33);
    for _ in 0..rng.range(1, 120) {
        if world.closed {
            break;
        }
        match rng.weighted(&[50, 30, 5, 5]) {
            0 => {
                let capsule = capsule(rng, &mut world, accepted, cntlid, mutate);
                trace.log(|| {
                    format!(
                        "capsule {} bytes: {:02x?}",
                        capsule.len(),
                        &capsule[..capsule.len().min(64)]
                    )
                });
                world.send(&capsule, trace);
            }
            1 => world.finish_one(rng, trace),
            2 => {
                world.now += Duration::from_millis(rng.range(0, 15_000));
                let flow = world.qpair.handle_timer(world.now);
                trace.log(|| "timer".into());
                world.after(flow, trace);
            }
            _ => world.grant(trace),
        }
    }
    // Everything posted finishes, then the queue closes.
    while !world.closed && !world.pending.is_empty() {
        world.finish_one(rng, trace);
        world.grant(trace);
    }
    world.close();
    if let Some(admin) = admin {
        admin.close();
    }
    assert_eq!(
        shared.available(),
        shared.limits().num_shared_buffers,
        "buffers lost"
    );
}

/// The admin queue an I/O queue's controller was made on: 32 entries.
const ADMIN_QUEUE: QueueSizes = QueueSizes {
    qid: 0,
    recv_depth: 32,
    send_depth: 32,
};

fn connect_data(cntlid: u16) -> Vec<u8> {
    ConnectData {
        hostid: [3; 16],
        cntlid,
        subnqn: SUBNQN.into(),
        hostnqn: HOSTNQN.into(),
    }
    .to_vec()
}

/// A key the host registers for `bytes`, or (sometimes) one it never registered.
fn host_memory(rng: &mut Rng, world: &mut World, bytes: Vec<u8>) -> (u32, u32) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    if rng.chance(5) {
        return (0xDEAD_0000 | rng.u16() as u32, len);
    }
    let key = 0x1000 + u32::try_from(world.memory.len()).unwrap_or(0);
    world.memory.insert(key, bytes);
    (key, len)
}

/// A read or write of 1 to 64 blocks of namespace 1 somewhere in it (perhaps past its end);
/// the command and its block count.
fn rw_sqe(rng: &mut Rng, opcode: u8, cid: u16) -> (Sqe, u32) {
    let blocks = 1 + below::<u32>(rng, 64);
    let mut sqe = Sqe::new(opcode, cid);
    sqe.set_nsid(1)
        .set_cdw(10, below::<u32>(rng, (NS_BYTES / 512) as usize))
        .set_cdw(12, blocks - 1);
    (sqe, blocks)
}

/// One capsule from the grammar, perhaps mutated.
fn capsule(
    rng: &mut Rng,
    world: &mut World,
    accepted: QueueSizes,
    cntlid: u16,
    mutate: bool,
) -> Vec<u8> {
    let cid = rng.u16();
    let mut sqe;
    let mut in_capsule = Vec::new();
    match rng.weighted(&[25, 10, 15, 25, 20, 5]) {
        0 => {
            count("rdma: connect");
            sqe = Sqe::new(FABRICS, cid);
            sqe.set_fctype(fctype::CONNECT);
            let qid = if rng.chance(80) {
                accepted.qid
            } else {
                rng.u16() % 6
            };
            let sqsize = if rng.chance(80) {
                accepted.recv_depth - 1
            } else {
                interesting::<u16>(rng, 200)
            };
            ConnectCmd {
                recfmt: 0,
                qid,
                sqsize,
                cattr: 0,
                kato: if qid == 0 { 5000 } else { 0 },
            }
            .emit(&mut sqe);
            let data = connect_data(if qid == 0 { 0xFFFF } else { cntlid });
            if rng.bool() {
                let (key, len) = host_memory(rng, world, data);
                DataDescriptor::Keyed {
                    address: 0,
                    length: len,
                    key,
                    invalidate: rng.bool(),
                }
                .emit(&mut sqe);
            } else {
                DataDescriptor::InCapsule {
                    offset: 0,
                    length: 1024,
                }
                .emit(&mut sqe);
                in_capsule = data;
            }
        }
        1 => {
            count("rdma: property");
            sqe = Sqe::new(FABRICS, cid);
            if rng.bool() {
                sqe.set_fctype(fctype::PROPERTY_SET);
                sqe.set_cdw(11, 0x14).set_cdw(12, 0x0046_0001);
            } else {
                sqe.set_fctype(fctype::PROPERTY_GET);
                sqe.set_cdw(11, *rng.pick(&[0, 0x8, 0x14, 0x1C, 0xFFF]));
            }
            DataDescriptor::Keyed {
                address: 0,
                length: 0,
                key: 0,
                invalidate: false,
            }
            .emit(&mut sqe);
        }
        2 => {
            count("rdma: identify");
            sqe = Sqe::new(admin::IDENTIFY, cid);
            sqe.set_nsid(1).set_cdw(10, *rng.pick(&[0, 1, 2, 3]));
            let len = *rng.pick(&[4096u32, 4095, 8192, 16]);
            let (key, _) = host_memory(rng, world, vec![0; len as usize]);
            DataDescriptor::Keyed {
                address: 0,
                length: len,
                key,
                invalidate: rng.bool(),
            }
            .emit(&mut sqe);
        }
        3 => {
            count("rdma: read");
            let blocks;
            (sqe, blocks) = rw_sqe(rng, io::READ, cid);
            let len = if rng.chance(90) {
                blocks * 512
            } else {
                interesting::<u32>(rng, u64::from(MAX_IO) * 2)
            };
            let (key, _) = host_memory(rng, world, vec![0; len.min(MAX_IO * 2) as usize]);
            DataDescriptor::Keyed {
                address: 0,
                length: len,
                key,
                invalidate: rng.bool(),
            }
            .emit(&mut sqe);
        }
        4 => {
            count("rdma: write");
            let blocks;
            (sqe, blocks) = rw_sqe(rng, io::WRITE, cid);
            let len = blocks * 512;
            if rng.chance(30) && len <= 4096 {
                let offset = if rng.chance(90) {
                    0
                } else {
                    interesting::<u32>(rng, 8192)
                };
                DataDescriptor::InCapsule {
                    offset,
                    length: len,
                }
                .emit(&mut sqe);
                in_capsule = rng.bytes(len as usize);
            } else {
                let data = rng.bytes(len as usize);
                let (key, _) = host_memory(rng, world, data);
                DataDescriptor::Keyed {
                    address: 0,
                    length: len,
                    key,
                    invalidate: false,
                }
                .emit(&mut sqe);
            }
        }
        _ => {
            count("rdma: random opcode");
            sqe = Sqe::new(rng.u8(), cid);
            for dword in 1..16 {
                if rng.chance(30) {
                    sqe.set_cdw(dword, rng.u32());
                }
            }
        }
    }
    let mut bytes = sqe.as_bytes().to_vec();
    bytes.extend_from_slice(&in_capsule);
    if mutate {
        count("rdma: mutated");
        for _ in 0..rng.range(1, 4) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.u8();
        }
        if rng.chance(20) {
            bytes.truncate(rng.below(bytes.len() + 1));
        }
        if rng.chance(10) {
            let more = rng.below(9000);
            bytes.extend(rng.bytes(more));
        }
    }
    bytes
}

impl World {
    const ROOMY: QpairResources = QpairResources {
        staging_slots: 4,
        send_slots: 32,
        read_depth: 2,
    };

    fn new(
        context: &Arc<RdmaContext>,
        shared: &Arc<SharedPool>,
        resources: QpairResources,
        accepted: QueueSizes,
        listener: &ListenerAddr,
    ) -> Self {
        let (poll, completions) = crate::backend::tests::completions();
        let now = Instant::now();
        Self {
            qpair: RdmaQpair::new(
                Arc::clone(context),
                listener.clone(),
                None,
                resources,
                accepted,
                now,
            ),
            resources,
            completions,
            _poll: poll,
            notifier: Arc::new(|| {}),
            pool: BufferPool::new(Arc::clone(shared), 0, Arc::new(|| {})),
            now,
            responses: Vec::new(),
            memory: HashMap::new(),
            staging: (0..resources.staging_slots)
                .map(|_| vec![0u8; MAX_IO as usize])
                .collect(),
            pending: Vec::new(),
            reads_in_flight: 0,
            sends_in_flight: 0,
            closed: false,
        }
    }

    /// Connects this queue as an admin queue with its data in the capsule and enables the
    /// controller; its ID.
    fn connect_admin(&mut self, trace: &mut Trace) -> u16 {
        let mut sqe = Sqe::new(FABRICS, 1);
        sqe.set_fctype(fctype::CONNECT);
        ConnectCmd {
            recfmt: 0,
            qid: 0,
            sqsize: 31,
            cattr: 0,
            kato: 0,
        }
        .emit(&mut sqe);
        DataDescriptor::InCapsule {
            offset: 0,
            length: 1024,
        }
        .emit(&mut sqe);
        let mut capsule = sqe.as_bytes().to_vec();
        capsule.extend_from_slice(&connect_data(0xFFFF));
        self.send(&capsule, trace);
        let cqe = self.responses.last().copied().expect("a Connect response");
        assert!(cqe.status.is_success(), "admin Connect: {cqe:?}");
        let cntlid = u16::try_from(cqe.dw0 & 0xFFFF).expect("cntlid");
        // Property Set CC.EN = 1.
        let mut sqe = Sqe::new(FABRICS, 2);
        sqe.set_fctype(fctype::PROPERTY_SET);
        sqe.set_cdw(11, 0x14).set_cdw(12, 0x0046_0001);
        DataDescriptor::Keyed {
            address: 0,
            length: 0,
            key: 0,
            invalidate: false,
        }
        .emit(&mut sqe);
        self.send(sqe.as_bytes(), trace);
        let cqe = self
            .responses
            .last()
            .copied()
            .expect("a Property Set response");
        assert!(cqe.status.is_success(), "CC.EN: {cqe:?}");
        cntlid
    }

    /// Hands a received capsule to the queue pair, then posts what follows and lets the
    /// device finish it (a setup helper; the session leaves work pending instead).
    fn send(&mut self, capsule: &[u8], trace: &mut Trace) {
        let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
        let flow = self.qpair.handle_capsule(capsule, &mut cx, self.now);
        self.after(flow, trace);
    }

    /// After a call into the queue pair: closes on its word, else posts what it wants.
    fn after(&mut self, flow: Flow, trace: &mut Trace) {
        if flow == Flow::Close || self.qpair.is_closing() {
            trace.log(|| "queue pair closes".into());
            self.closed = true;
            return;
        }
        self.run_posts(trace);
    }

    /// Executes the posts as a device would; an access to memory the host never registered
    /// (or past its end) fails the work request, which ends the connection.
    fn run_posts(&mut self, trace: &mut Trace) {
        while let Some(post) = self.qpair.poll_post() {
            match post {
                Post::Read {
                    slot,
                    len,
                    remote_addr,
                    rkey,
                } => {
                    assert!(slot < self.resources.staging_slots, "READ into slot {slot}");
                    assert!(len <= MAX_IO, "READ of {len} bytes");
                    self.reads_in_flight += 1;
                    assert!(
                        self.reads_in_flight <= self.resources.read_depth,
                        "{} READs in flight, depth {}",
                        self.reads_in_flight,
                        self.resources.read_depth
                    );
                    let Some(src) = self.memory.get(&rkey).and_then(|m| {
                        let start = usize::try_from(remote_addr).ok()?;
                        m.get(start..start.checked_add(len as usize)?)
                    }) else {
                        trace.log(|| format!("READ at unknown key {rkey:#x}: access error"));
                        count("rdma: remote access error");
                        self.closed = true;
                        return;
                    };
                    self.staging[usize::from(slot)][..len as usize].copy_from_slice(src);
                    self.pending.push(Pending::Read { slot, len });
                    count("rdma: data read from host");
                }
                Post::Respond {
                    send_slot,
                    cqe,
                    data,
                    invalidate: _,
                } => {
                    assert!(
                        send_slot < self.resources.send_slots,
                        "SEND from slot {send_slot}"
                    );
                    self.sends_in_flight += 1;
                    assert!(self.sends_in_flight <= self.resources.send_slots);
                    trace.log(|| format!("response cid {:#x} status {}", cqe.cid, cqe.status));
                    self.responses.push(cqe);
                    count(if cqe.status.is_success() {
                        "rdma: response success"
                    } else {
                        "rdma: response error"
                    });
                    if let Some(out) = data {
                        assert!(out.slot < self.resources.staging_slots);
                        assert!(out.len <= MAX_IO);
                        let len = out.len as usize;
                        let staging = &mut self.staging[usize::from(out.slot)];
                        if let Some(buf) = out.fill.copy_into(len, |at, chunk| match chunk {
                            Chunk::Bytes(bytes) => {
                                staging[at..at + bytes.len()].copy_from_slice(bytes)
                            }
                            Chunk::Zeroes(n) => staging[at..at + n].fill(0),
                        }) {
                            self.pool.give(buf);
                        }
                        let Some(dst) = self.memory.get_mut(&out.rkey).and_then(|m| {
                            let start = usize::try_from(out.remote_addr).ok()?;
                            m.get_mut(start..start.checked_add(len)?)
                        }) else {
                            trace.log(|| {
                                format!("WRITE at unknown key {:#x}: access error", out.rkey)
                            });
                            count("rdma: remote access error");
                            self.closed = true;
                            return;
                        };
                        dst.copy_from_slice(&staging[..len]);
                        count("rdma: data written to host");
                    }
                    self.pending.push(Pending::Send { slot: send_slot });
                }
            }
        }
    }

    /// The device finishes one posted work request, chosen at random.
    fn finish_one(&mut self, rng: &mut Rng, trace: &mut Trace) {
        if self.pending.is_empty() || self.closed {
            return;
        }
        let at = rng.below(self.pending.len());
        match self.pending.swap_remove(at) {
            Pending::Read { slot, len } => {
                self.reads_in_flight -= 1;
                assert_eq!(self.qpair.read_len(slot), Some(len), "READ slot {slot}");
                let data = self.staging[usize::from(slot)][..len as usize].to_vec();
                trace.log(|| format!("READ into slot {slot} done"));
                let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
                let flow = self.qpair.handle_read_done(slot, &data, &mut cx, self.now);
                drop(cx);
                self.after(flow, trace);
            }
            Pending::Send { slot } => {
                self.sends_in_flight -= 1;
                trace.log(|| format!("SEND from slot {slot} done"));
                self.qpair.handle_send_done(slot);
                self.after(Flow::Continue, trace);
            }
        }
    }

    /// Grants buffers commands wait for.
    fn grant(&mut self, trace: &mut Trace) {
        while let Some((key, credits)) = self.pool.poll_granted() {
            if self.closed {
                self.pool.give_credits(credits);
                continue;
            }
            trace.log(|| format!("{credits} credits granted to {key}"));
            let mut cx = IoCx::new(&self.completions, 0, &self.notifier, &mut self.pool);
            let flow = self.qpair.handle_buffers_granted(
                u16::try_from(key & 0xFFFF).unwrap_or(0),
                credits,
                &mut cx,
                self.now,
            );
            drop(cx);
            self.after(flow, trace);
        }
    }

    /// Closes the queue pair and gives back what its reactor's pool holds.
    fn close(mut self) {
        let _ = self.qpair.close();
    }
}
