//! Structure-aware fuzzing of the NVMe/TCP queue pair and the controller behind it.
//!
//! A session is a small world (a registry with one subsystem whose namespaces are RAM,
//! completing inline or later and out of order, a read-only RAM namespace that comes and goes,
//! and a null one; a buffer pool on one or two reactors, some so small that commands wait; up
//! to five connections) driven the way a reactor drives it: host bytes in random chunks
//! through `handle_input`, output taken a little at a time through `slices`/`advance` and
//! given back with `handle_sent`, buffers granted, backend requests completed, timers at
//! random instants, async events delivered, and `close` (with the controller's other queues,
//! or leaving them to find out). The host side follows a grammar (ICReq, Connect of admin,
//! I/O and discovery queues, properties, Identify, log pages, features, AER, keep alive,
//! every I/O opcode, H2CData answering R2Ts, each valid or with one known fault, digests
//! right or corrupted; hosts that seldom read), so parsing goes deep; a third of the sessions
//! also get byte-level mutations.
//!
//! Every byte the target sends is checked as it is queued (whole, well-formed PDUs of the
//! types a controller sends, digests right, nothing after a C2HTermReq and nothing from a
//! terminating queue), and so are queue depths, timers and, once everything is closed, the
//! buffer pool. Sessions without byte mutations are also checked against a model: each
//! command's status for the fault the grammar put in, which PDUs must end the connection
//! and with which FES, SQID and SQHD, data only for commands that read and no more than
//! they asked, every command completed in the end, and every read (and at last the whole
//! namespace) against a shadow copy of the namespace.
//!
//! What a command must do depends on the state the target is in when it takes the capsule
//! in, not when the host wrote it (another queue may have reset the controller in between),
//! so expectations are decided as the target consumes each PDU, before the answers of that
//! same call are applied to the model. A host that writes CC waits for the answer before
//! sending anything else, as real hosts do, so that order is unambiguous.
//!
//! A failure prints the session's trace and the seed that replays it:
//! `NVMF_FUZZ_REPLAY=0x... cargo test --lib fuzz_tcp_qpair_sessions -- --nocapture`.

use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::TcpContext;
use super::pdu::{
    self, CommonHeader, Digests, Framing, IcReq, IcResp, Pdu, PduView, TermReq, flags, pdu_type,
};
use super::qpair::TcpQpair;
use super::wire;
use crate::backend::ram::RamBackend;
use crate::backend::{Backend, Completions, IoDone, IoKind, IoRequest, SubmitCx};
use crate::controller::{
    ListenerAddr, NamespaceSpec, Registry, Subsystem, SubsystemSpec, TransportLimits,
};
use crate::fuzz::{self, Rng, Trace, count};
use crate::nvme::connect::{ConnectCmd, ConnectData};
use crate::nvme::opcode::{FABRICS, admin, fctype, io};
use crate::nvme::{Cqe, DISCOVERY_NQN, Sgl, Sqe, Status};
use crate::transport::buffer_pool::{BufferPool, PoolLimits, SharedPool};
use crate::transport::context::{AsyncNotifier, Flow, IoCx};

const SUBNQN: &str = "nqn.2026-11.io.nvmf-tgt:fuzz";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000f1";
const OTHER_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000f2";
/// A read-only namespace that comes and goes (hot plug); it is never written, so it reads
/// as zeroes.
const RO_NSID: u32 = 2;
const RO_BLOCKS: u64 = 128;
/// A `null` namespace: reads are zeroes sent without a buffer, writes are dropped.
const NULL_NSID: u32 = 3;
const NULL_BLOCKS: u64 = 2048;
/// CC values the model understands: enable with 64/16-byte entries, disable, shutdown.
const CC_ENABLE: u32 = 0x0046_0001;
const CC_DISABLE: u32 = 0x0046_0000;
const CC_SHUTDOWN: u32 = 0x0046_4001;
/// NS Write Protected (what the controller answers for writes to a read-only namespace).
const NS_WRITE_PROTECTED: Status = Status::new(0, 0x20);

#[test]
fn fuzz_tcp_qpair_sessions() {
    let (_poll, completions) = crate::backend::tests::completions();
    fuzz::run("fuzz_tcp_qpair_sessions", |rng, trace| {
        session(rng, trace, &completions);
    });
}

/// One session: build a world, run its steps, drain it, close everything, check the pool.
fn session(rng: &mut Rng, trace: &mut Trace, completions: &Completions) {
    let mut w = World::new(rng, trace, completions);
    if rng.chance(92) {
        w.open(rng, Role::Admin);
        // Its I/O queues connect once the controller is enabled.
        for _ in 0..*rng.pick(&[0, 1, 1, 1, 2]) {
            w.open(rng, Role::Io);
        }
    }
    let steps = match rng.below(10) {
        0 => rng.range(1, 20),
        1..=7 => rng.range(20, 200),
        _ => rng.range(200, 700),
    };
    for _ in 0..steps {
        w.step(rng);
    }
    w.drain(rng);
    count(if w.clean {
        "clean sessions"
    } else {
        "mutated sessions"
    });
    w.finish(rng);
}

// ---------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------

/// A backend that completes later, in whatever order the session chooses (as `file` does).
#[derive(Debug)]
struct Deferred {
    inner: Arc<RamBackend>,
    queue: Mutex<Vec<(u64, IoRequest)>>,
}

impl Backend for Deferred {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn submit(&self, token: u64, req: IoRequest, _: &mut SubmitCx<'_>) -> Option<IoDone> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((token, req));
        None
    }
}

impl Deferred {
    fn take(&self, rng: &mut Rng) -> Option<(u64, IoRequest)> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.is_empty() {
            return None;
        }
        let i = rng.below(queue.len());
        Some(queue.swap_remove(i))
    }

    fn len(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// What the host knows of the data of namespace 1: bytes, and per block whether they are
/// certain (a write whose outcome the host never saw makes them uncertain).
struct Shadow {
    block: usize,
    data: Vec<u8>,
    known: Vec<bool>,
}

impl Shadow {
    fn blocks(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX) / self.block;
        let end = (usize::try_from(offset).unwrap_or(usize::MAX) + len).div_ceil(self.block);
        start.min(self.known.len())..end.min(self.known.len())
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let Some(dst) = self.data.get_mut(at..at.saturating_add(bytes.len())) else {
            // Only a mutated command gets here, and then the shadow is not used.
            return;
        };
        dst.copy_from_slice(bytes);
        let blocks = self.blocks(offset, bytes.len());
        self.known[blocks].fill(true);
    }

    fn zero(&mut self, offset: u64, len: u64) {
        let len = usize::try_from(len).unwrap_or(0);
        self.write(offset, &vec![0; len]);
    }

    fn forget(&mut self, offset: u64, len: u64) {
        let blocks = self.blocks(offset, usize::try_from(len).unwrap_or(0));
        self.known[blocks].fill(false);
    }

    /// Where `bytes` read at `offset` differ from a block the host is sure of.
    fn mismatch(&self, offset: u64, bytes: &[u8]) -> Option<usize> {
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let mut i = 0;
        // Block by block, slices compared whole: byte loops are slow in debug builds.
        while i < bytes.len() {
            let block = (at + i) / self.block;
            let end = ((block + 1) * self.block - at).min(bytes.len());
            if self.known[block] && bytes[i..end] != self.data[at + i..at + end] {
                return (i..end).find(|&j| bytes[j] != self.data[at + j]);
            }
            i = end;
        }
        None
    }

    /// Whether `bytes` equal the namespace at `offset`: `None` when unsure.
    fn equals(&self, offset: u64, bytes: &[u8]) -> Option<bool> {
        let end = offset.checked_add(bytes.len() as u64)?;
        if end > self.data.len() as u64 {
            return None;
        }
        let blocks = self.blocks(offset, bytes.len());
        if !self.known[blocks].iter().all(|&k| k) {
            return None;
        }
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        Some(self.data[at..at + bytes.len()] == *bytes)
    }
}

/// The host's model of one controller.
#[derive(Debug)]
struct CtrlModel {
    cc: u32,
    enabled: bool,
    /// A CC value outside what the model follows was written: no more expectations.
    unknown: bool,
    /// Bumped whenever the controller detaches its I/O queues (reset, shutdown, gone).
    generation: u32,
    gone: bool,
    discovery: bool,
    hostnqn: String,
    /// I/O queue ids attached (as far as the host knows).
    qids: Vec<u16>,
}

impl CtrlModel {
    /// CC written with success: what the controller does on EN and SHN edges.
    fn set_cc(&mut self, new: u32) {
        if ![CC_ENABLE, CC_DISABLE, CC_SHUTDOWN].contains(&new) {
            self.unknown = true;
        }
        let old = self.cc;
        self.cc = new;
        let en = |v: u32| v & 1 != 0;
        let shn = |v: u32| (v >> 14) & 3;
        if en(new) && !en(old) && new == CC_ENABLE {
            self.enabled = true;
        }
        if (!en(new) && en(old)) || (shn(new) != 0 && shn(old) == 0) {
            self.enabled = false;
            self.generation += 1;
            self.qids.clear();
        }
    }
}

/// A controller: whether it is a discovery controller, and its cntlid.
type CtrlKey = (bool, u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Admin,
    Io,
    Discovery,
}

struct World<'a> {
    trace: &'a mut Trace,
    completions: &'a Completions,
    context: Arc<TcpContext>,
    subsys: Arc<Subsystem>,
    limits: TransportLimits,
    c2h_success: bool,
    shared: Arc<SharedPool>,
    pools: Vec<BufferPool>,
    deferred: Option<Arc<Deferred>>,
    ram: Arc<RamBackend>,
    block: u32,
    blocks: u64,
    shadow: Shadow,
    nsid2: bool,
    start: Instant,
    now: Instant,
    conns: Vec<Conn>,
    /// By (discovery, cntlid): the discovery subsystem numbers its controllers apart.
    ctrls: BTreeMap<CtrlKey, CtrlModel>,
    /// No byte mutation happened yet: the model's expectations hold.
    clean: bool,
    /// Percent of PDUs this session mutates.
    mutate: u32,
    /// Earlier PDUs, for splicing.
    corpus: Vec<Vec<u8>>,
    /// Whether closing an admin queue closes its controller's other queues (as the reactor
    /// does), or they are left to find out.
    close_siblings: bool,
}

fn listener() -> ListenerAddr {
    ListenerAddr::Tcp("127.0.0.1:4420".parse().expect("socket address"))
}

impl<'a> World<'a> {
    fn new(rng: &mut Rng, trace: &'a mut Trace, completions: &'a Completions) -> Self {
        let max_io_size = *rng.pick(&[8192, 16384, 65536, 131_072]);
        let limits = TransportLimits {
            max_queue_depth: *rng.pick(&[2, 3, 8, 32, 128]),
            max_aq_depth: *rng.pick(&[2, 4, 32, 128]),
            max_io_qpairs_per_ctrlr: *rng.pick(&[1, 2, 4, 127]),
            in_capsule_data_size: (*rng.pick(&[0, 16, 512, 4096, 8192])).min(max_io_size),
            max_io_size,
        };
        let block = *rng.pick(&[512u32, 4096]);
        let size: u64 = *rng.pick(&[64 << 10, 1 << 20, (1 << 20) + 8192, 3 << 20]);
        let ram = Arc::new(RamBackend::new(size));
        let deferred = rng.chance(40).then(|| {
            Arc::new(Deferred {
                inner: Arc::clone(&ram),
                queue: Mutex::new(Vec::new()),
            })
        });
        let backend: Arc<dyn Backend> = match &deferred {
            Some(d) => Arc::clone(d) as Arc<dyn Backend>,
            None => Arc::clone(&ram) as Arc<dyn Backend>,
        };
        let nsid2 = rng.bool();
        let mut namespaces = vec![NamespaceSpec {
            nsid: crate::nvme::Nsid(1),
            backend,
            block_size: block,
            read_only: false,
            uuid: None,
            nguid: None,
            eui64: None,
        }];
        if nsid2 {
            namespaces.push(ro_namespace());
        }
        namespaces.push(NamespaceSpec {
            nsid: crate::nvme::Nsid(NULL_NSID),
            backend: Arc::new(crate::backend::null::NullBackend::new(NULL_BLOCKS * 512)),
            block_size: 512,
            read_only: false,
            uuid: None,
            nguid: None,
            eui64: None,
        });
        let spec = SubsystemSpec {
            nqn: SUBNQN.into(),
            serial: "FUZZ0001".into(),
            model: "nvmf-tgt".into(),
            allow_any_host: true,
            hosts: Vec::new(),
            max_namespaces: *rng.pick(&[3, 32, 1024]),
            namespaces,
            listeners: vec![listener()],
        };
        let registry = Arc::new(Registry::new(vec![spec], limits).expect("registry"));
        let subsys = registry.subsystem(SUBNQN).expect("subsystem");
        let c2h_success = rng.bool();
        let context = Arc::new(TcpContext {
            registry,
            limits,
            c2h_success,
        });
        // The pool: SPDK's default, or so small that commands wait for buffers. It always
        // holds the largest command (a Compare takes its data and its read together).
        let io_unit = *rng.pick(&[4096u32, 8192, 131_072]);
        let io_unit = io_unit.max(max_io_size / 16);
        let per_command = 2 * max_io_size.div_ceil(io_unit);
        let reactors = if rng.chance(25) { 2 } else { 1 };
        let pool_limits = match rng.below(3) {
            0 => PoolLimits::new(511, None, io_unit, reactors),
            1 => PoolLimits::new(per_command * reactors, Some(0), io_unit, reactors),
            _ => PoolLimits::new(
                per_command * reactors + u32::try_from(rng.below(3)).unwrap_or(0),
                Some(u32::try_from(rng.below(3)).unwrap_or(0)),
                io_unit,
                reactors,
            ),
        };
        let shared = SharedPool::new(pool_limits);
        let pools = (0..reactors)
            .map(|r| BufferPool::new(Arc::clone(&shared), r as usize, Arc::new(|| {})))
            .collect();
        let blocks = size / u64::from(block);
        let mutate = if rng.chance(30) {
            *rng.pick(&[2, 10, 30])
        } else {
            0
        };
        let start = Instant::now();
        trace.log(|| {
            format!(
                "world: {limits:?}, c2h_success {c2h_success}, ns1 {blocks} x {block} B{}, \
                 nsid2 {nsid2}, {pool_limits:?} on {reactors} reactor(s), mutate {mutate}%",
                if deferred.is_some() {
                    " (deferred)"
                } else {
                    ""
                }
            )
        });
        Self {
            trace,
            completions,
            context,
            subsys,
            limits,
            c2h_success,
            shared,
            pools,
            deferred,
            ram,
            block,
            blocks,
            shadow: Shadow {
                block: block as usize,
                data: vec![0; usize::try_from(size).unwrap_or(0)],
                known: vec![true; usize::try_from(blocks).unwrap_or(0)],
            },
            nsid2,
            start,
            now: start,
            conns: Vec::new(),
            ctrls: BTreeMap::new(),
            clean: true,
            mutate,
            corpus: Vec::new(),
            close_siblings: rng.chance(75),
        }
    }

    fn open(&mut self, rng: &mut Rng, role: Role) {
        let id = self.conns.len();
        let notified = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&notified);
        let notifier: AsyncNotifier = Arc::new(move || flag.store(true, Ordering::Relaxed));
        let ask = Ask {
            hd: rng.chance(40),
            dd: rng.chance(40),
            hpda: if rng.chance(70) {
                0
            } else {
                u8::try_from(rng.below(32)).unwrap_or(0)
            },
        };
        self.trace
            .log(|| format!("conn {id}: open as {role:?}, asking {ask:?}"));
        self.conns.push(Conn {
            id,
            reactor: rng.below(self.pools.len()),
            qpair: Some(TcpQpair::new(
                Arc::clone(&self.context),
                listener(),
                Some(std::net::Ipv4Addr::LOCALHOST.into()),
                self.now,
            )),
            notified,
            notifier,
            rbuf: Vec::new(),
            tx: Vec::new(),
            delivered: 0,
            consumed: 0,
            first: Vec::new(),
            pdus: VecDeque::new(),
            out: OutState::default(),
            host: Host {
                role,
                ask,
                ic_sent: false,
                connect_sent: false,
                ready: None,
                flow_disabled: false,
                sqsize: 0,
                next_cid: u16::try_from(rng.below(4)).unwrap_or(0) * 0x4000,
                pending: BTreeMap::new(),
                r2ts: Vec::new(),
                blocking: None,
                lazy: rng.chance(15),
            },
            terminated: false,
        });
    }

    fn open_conns(&self) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| self.conns[i].qpair.is_some())
            .collect()
    }

    fn step(&mut self, rng: &mut Rng) {
        let open = self.open_conns();
        let action = rng.weighted(&[45, 25, 14, 4, 4, 5, 2, 3, 1, 1]);
        match action {
            0..=2 if open.is_empty() => self.open(rng, Role::Admin),
            0 => {
                // I/O queues that serve get most of the traffic, as on a real host.
                let weights: Vec<u32> = open
                    .iter()
                    .map(|&c| {
                        let host = &self.conns[c].host;
                        match (host.role, host.ready) {
                            (Role::Io, Some(_)) => 8,
                            _ => 1,
                        }
                    })
                    .collect();
                let c = open[rng.weighted(&weights)];
                self.host_sends(rng, c);
            }
            1 => {
                let c = *rng.pick(&open);
                let n = match rng.below(4) {
                    0 => 1 + rng.below(8),
                    1 => 1 + rng.below(200),
                    _ => usize::MAX,
                };
                self.feed(c, n);
            }
            2 => {
                let c = *rng.pick(&open);
                if self.conns[c].host.lazy && rng.chance(90) {
                    return;
                }
                let n = match rng.below(4) {
                    0 => 1 + rng.below(64),
                    1 => 1 + rng.below(8192),
                    _ => usize::MAX,
                };
                self.read_output(c, n);
            }
            3 => self.tick(rng),
            4 => {
                self.grant();
            }
            5 => self.complete_one(rng),
            6 => self.async_events(),
            7 => {
                if open.len() < 5 {
                    let live = self.ctrls.values().any(|c| !c.gone && !c.discovery);
                    let role = match rng.below(10) {
                        0..=7 if live => Role::Io,
                        8 => Role::Discovery,
                        _ => Role::Admin,
                    };
                    self.open(rng, role);
                }
            }
            8 => {
                if let Some(&c) = open.get(rng.below(open.len().max(1))) {
                    self.trace.log(|| format!("conn {c}: host closes"));
                    self.close(c);
                }
            }
            _ => self.hotplug(),
        }
    }

    /// Delivers everything, answers every R2T, reads everything, grants buffers and
    /// completes backend requests until nothing moves, so commands can be checked for
    /// completions that never came.
    fn drain(&mut self, rng: &mut Rng) {
        self.trace.log(|| "drain".into());
        for _ in 0..64 {
            let mut moved = false;
            for c in self.open_conns() {
                while let Some(r2t) = self.conns[c]
                    .qpair
                    .is_some()
                    .then(|| self.conns[c].host.r2ts.first().cloned())
                    .flatten()
                {
                    // Whole and without a fault: always answers it completely.
                    self.send_h2c(rng, c, 0, &r2t, H2cFault::None, true);
                    moved = true;
                }
                if self.conns.get(c).is_some_and(|c| !c.tx.is_empty()) {
                    self.feed(c, usize::MAX);
                    moved = true;
                }
                if self.conns[c].qpair.is_some() {
                    let before = self.conns[c].out.read;
                    self.read_output(c, usize::MAX);
                    moved |= self.conns[c].out.read != before;
                }
            }
            moved |= self.grant();
            while self.deferred.as_ref().is_some_and(|d| d.len() > 0) {
                self.complete_one(rng);
                moved = true;
            }
            self.async_events();
            if !moved {
                break;
            }
        }
        if !self.clean {
            return;
        }
        // Every command of a queue that still serves has completed, but parked AERs, and
        // those waiting for data a dead queue will never use.
        for conn in &self.conns {
            if conn.qpair.is_none() || conn.terminated {
                continue;
            }
            for (cid, p) in &conn.host.pending {
                let waits = matches!(p.cmd, Cmd::Aer | Cmd::Any) || p.expect == Expect::Dead;
                assert!(
                    waits,
                    "conn {}: command cid {cid} ({:?}) never completed",
                    conn.id, p.cmd
                );
            }
        }
    }

    /// Closes every connection, then checks that the pool got every credit back and that
    /// the namespace holds what the host knows it wrote.
    fn finish(&mut self, rng: &mut Rng) {
        let mut open = self.open_conns();
        while !open.is_empty() {
            let c = open.swap_remove(rng.below(open.len()));
            self.close(c);
        }
        if let Some(deferred) = self.deferred.clone() {
            // A file backend finishes what it was given even when nobody waits any more.
            while let Some((_, req)) = deferred.take(rng) {
                self.run_orphan(req);
            }
        }
        let mut cached = 0;
        for pool in &mut self.pools {
            pool.collect_strays();
            let stats = pool.stats();
            assert_eq!(
                stats.in_use, 0,
                "credits still in use after close: {stats:?}"
            );
            assert_eq!(stats.waiting, 0, "waiters left after close: {stats:?}");
            cached += stats.cached;
        }
        let num = self.shared.limits().num_shared_buffers;
        assert_eq!(
            cached + self.shared.available(),
            num,
            "credits lost: {cached} cached + {} shared of {num}",
            self.shared.available()
        );
        if self.clean {
            let len = usize::try_from(self.ram.size()).unwrap_or(0);
            let req = IoRequest {
                kind: IoKind::Read,
                offset: 0,
                len: self.ram.size(),
                buf: vec![0xEE; len],
            };
            let done = self
                .ram
                .submit(0, req, &mut SubmitCx::new(self.completions))
                .expect("inline");
            if let Some(at) = self.shadow.mismatch(0, &done.buf) {
                panic!(
                    "namespace byte {at} is {:#04x}, the host wrote {:#04x}",
                    done.buf[at], self.shadow.data[at]
                );
            }
        }
    }

    /// A backend request whose connection has gone: run it, and forget what it touched.
    fn run_orphan(&mut self, req: IoRequest) {
        match &req.kind {
            IoKind::Write { .. } | IoKind::WriteZeroes { .. } => {
                self.shadow.forget(req.offset, req.len);
            }
            IoKind::Deallocate(ranges) => {
                for &(offset, len) in ranges {
                    self.shadow.forget(offset, len);
                }
            }
            IoKind::Read | IoKind::Flush => {}
        }
        if let Some(d) = &self.deferred {
            let _ = d.inner.submit(0, req, &mut SubmitCx::new(self.completions));
        }
    }

    fn tick(&mut self, rng: &mut Rng) {
        // Mostly short steps; now and then past the setup, keep-alive or R2T timeouts.
        let by = match rng.below(20) {
            0..=13 => Duration::from_millis(rng.range(0, 200)),
            14..=18 => Duration::from_millis(rng.range(200, 12_000)),
            _ => Duration::from_secs(rng.range(12, 200)),
        };
        self.now += by;
        let at = self.now - self.start;
        self.trace.log(|| format!("time +{by:?} = {at:?}"));
        for c in self.open_conns() {
            // Closing one connection may have closed others of its controller.
            let Some(qpair) = self.conns[c].qpair.as_ref() else {
                continue;
            };
            if rng.chance(70) {
                let deadline = qpair.deadline();
                let now = self.now;
                let flow = self.call(c, |q, _| (q.handle_timer(now), 0));
                if flow == Flow::Close {
                    assert!(
                        deadline.is_some_and(|d| d <= now),
                        "conn {c}: the timer closed the connection before its deadline {:?}",
                        deadline.map(|d| d - self.start)
                    );
                    count("timer closes");
                    self.trace.log(|| format!("conn {c}: timer closes"));
                    self.target_closes(c);
                }
            }
        }
    }

    /// Hands granted buffers to their commands, as the reactor does each turn; whether any
    /// were.
    fn grant(&mut self) -> bool {
        let mut granted = false;
        for r in 0..self.pools.len() {
            self.pools[r].collect_strays();
            while let Some((key, credits)) = self.pools[r].poll_granted() {
                granted = true;
                let c = usize::try_from(key >> 32).unwrap_or(usize::MAX);
                let tag = u16::try_from(key & 0xFFFF).unwrap_or(0);
                if self.conns.get(c).is_none_or(|c| c.qpair.is_none()) {
                    self.pools[r].give_credits(credits);
                    continue;
                }
                count("buffers granted");
                self.trace
                    .log(|| format!("conn {c}: {credits} credits granted to tag {tag}"));
                let now = self.now;
                let flow = self.call(c, |q, cx| {
                    (q.handle_buffers_granted(tag, credits, cx, now), 0)
                });
                if flow == Flow::Close {
                    self.target_closes(c);
                }
            }
        }
        granted
    }

    fn complete_one(&mut self, rng: &mut Rng) {
        let Some(deferred) = self.deferred.clone() else {
            return;
        };
        let Some((token, req)) = deferred.take(rng) else {
            return;
        };
        let c = usize::try_from(token >> 32).unwrap_or(usize::MAX);
        if self.conns.get(c).is_none_or(|c| c.qpair.is_none()) {
            self.run_orphan(req);
            return;
        }
        let mut done = deferred
            .inner
            .submit(token, req, &mut SubmitCx::new(self.completions))
            .expect("ram completes inline");
        done.token = token & 0xFFFF;
        count("deferred completions");
        self.trace
            .log(|| format!("conn {c}: backend completes tag {}", done.token));
        let now = self.now;
        let flow = self.call(c, |q, cx| (q.handle_io_done(done, cx, now), 0));
        if flow == Flow::Close {
            self.target_closes(c);
        }
    }

    /// Delivers the controllers' async events to the connections they woke.
    fn async_events(&mut self) {
        for c in self.open_conns() {
            if self.conns[c].notified.swap(false, Ordering::Relaxed) {
                self.call(c, |q, _| {
                    q.poll_async_events();
                    (Flow::Continue, 0)
                });
            }
        }
    }

    /// Namespace 2 comes or goes, as a reload would do it.
    fn hotplug(&mut self) {
        if self.nsid2 {
            self.subsys.remove_namespace(crate::nvme::Nsid(RO_NSID));
        } else {
            self.subsys
                .add_namespace(ro_namespace())
                .expect("namespace 2 fits");
        }
        self.nsid2 = !self.nsid2;
        let present = self.nsid2;
        self.trace
            .log(|| format!("hotplug: namespace 2 present {present}"));
    }

    /// Delivers up to `n` of the host's bytes to the target.
    fn feed(&mut self, c: usize, n: usize) {
        let conn = &mut self.conns[c];
        if conn.qpair.is_none() {
            return;
        }
        let n = n.min(conn.tx.len());
        let chunk: Vec<u8> = conn.tx.drain(..n).collect();
        if conn.first.len() < wire::IC_LEN {
            let room = wire::IC_LEN - conn.first.len();
            conn.first
                .extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        conn.delivered += n;
        conn.rbuf.extend_from_slice(&chunk);
        self.trace.log(|| format!("conn {c}: deliver {n} bytes"));
        self.input(c);
    }

    /// Lets the queue pair consume what it has been given, as the connection does.
    fn input(&mut self, c: usize) {
        if self.conns[c].qpair.is_none() || self.conns[c].rbuf.is_empty() {
            return;
        }
        let rbuf = std::mem::take(&mut self.conns[c].rbuf);
        let now = self.now;
        let before = self.conns[c].consumed;
        let flow = self.call(c, |q, cx| {
            let (used, flow) = q.handle_input(&rbuf, cx, now);
            (flow, used)
        });
        let used = self.conns[c].consumed - before;
        assert!(
            used <= rbuf.len(),
            "conn {c}: used more input than it was given"
        );
        self.conns[c].rbuf = rbuf[used..].to_vec();
        if flow == Flow::Close {
            self.target_closes(c);
        }
    }

    /// The host reads up to `n` bytes of what the target sent.
    fn read_output(&mut self, c: usize, n: usize) {
        let conn = &mut self.conns[c];
        let Some(qpair) = conn.qpair.as_mut() else {
            return;
        };
        let out = qpair.output();
        let mut left = n;
        let mut read = 0;
        while left > 0 && !out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 8];
            let count = out.slices(&mut iov);
            let avail: usize = iov[..count].iter().map(|s| s.len()).sum();
            let take = avail.min(left);
            out.advance(take);
            left -= take;
            read += take;
        }
        assert!(
            read <= conn.out.seen_unsent,
            "conn {c}: read bytes that were never checked"
        );
        conn.out.seen_unsent -= read;
        conn.out.read += read;
        while conn
            .out
            .unread
            .front()
            .is_some_and(|&end| end <= conn.out.read)
        {
            conn.out.unread.pop_front();
        }
        if read > 0 {
            self.trace
                .log(|| format!("conn {c}: host reads {read} bytes"));
        }
        let pool = &mut self.pools[conn.reactor];
        let mut cx = IoCx::new(self.completions, token_base(c), &conn.notifier, pool);
        qpair.handle_sent(&mut cx);
        // A queue paused by backpressure reads again once its output has gone.
        self.input(c);
    }

    /// Runs one call into connection `c`'s queue pair (which returns its flow and the input
    /// bytes it used), then checks what it queued.
    fn call(
        &mut self,
        c: usize,
        f: impl FnOnce(&mut TcpQpair, &mut IoCx<'_>) -> (Flow, usize),
    ) -> Flow {
        let conn = &mut self.conns[c];
        let Some(qpair) = conn.qpair.as_mut() else {
            return Flow::Close;
        };
        let was_terminating = qpair.is_terminating();
        let pool = &mut self.pools[conn.reactor];
        let mut cx = IoCx::new(self.completions, token_base(c), &conn.notifier, pool);
        let (flow, used) = f(qpair, &mut cx);
        let gone = cx.into_gone();
        conn.consumed += used;
        let fresh = peek_unsent(qpair, conn.out.seen_unsent);
        conn.out.seen_unsent += fresh.len();
        let (in_flight, outstanding) = (qpair.in_flight(), qpair.outstanding());
        if qpair.is_backpressured() {
            count("calls that left a queue backpressured");
        }
        let terminating = qpair.is_terminating();
        if was_terminating {
            assert!(
                fresh.is_empty(),
                "conn {c}: a terminating queue sent {} more bytes",
                fresh.len()
            );
        }
        self.after_call(c, &fresh, qpair_qid(&self.conns[c]), flow, terminating);
        let bound = self.depth_bound(c);
        assert!(
            in_flight <= bound,
            "conn {c}: {in_flight} commands in flight in a queue of {bound}"
        );
        // What the target counts against the depth (commands in flight, answers not yet
        // written) is at most what the host counts (commands not answered, answers not yet
        // read; parked AERs the target does not count).
        if self.clean {
            let conn = &self.conns[c];
            let host = conn.host.depth_used(&conn.out);
            assert!(
                outstanding <= host,
                "conn {c}: the target counts {outstanding} commands outstanding, the host {host}"
            );
        }
        for ctrl in gone {
            self.controller_gone((ctrl.is_discovery(), ctrl.cntlid().0));
        }
        flow
    }

    /// A call returned `Close`: a queue that terminated is first poked once more (timer,
    /// async events, more input) to show it stays silent, then closed.
    fn target_closes(&mut self, c: usize) {
        if self.conns[c].terminated {
            let later = self.now + Duration::from_secs(3600);
            self.call(c, |q, _| (q.handle_timer(later), 0));
            self.call(c, |q, _| {
                q.poll_async_events();
                (Flow::Continue, 0)
            });
            let now = self.now;
            let junk = icreq(0, 0, 0, 0);
            self.call(c, |q, cx| {
                let (used, flow) = q.handle_input(&junk, cx, now);
                assert_eq!(used, 0, "a terminating queue consumed input");
                (flow, 0)
            });
        }
        self.close(c);
    }

    /// The most commands connection `c` may hold: its Connect's SQSIZE + 1 when the host
    /// knows it, else the largest queue the transport allows.
    fn depth_bound(&self, c: usize) -> usize {
        let conn = &self.conns[c];
        if self.clean && conn.host.ready.is_some() {
            return usize::from(conn.host.sqsize) + 1;
        }
        let limit = self.limits.max_aq_depth.max(self.limits.max_queue_depth);
        usize::try_from(limit).unwrap_or(usize::MAX)
    }

    fn controller_gone(&mut self, key: CtrlKey) {
        if let Some(ctrl) = self.ctrls.get_mut(&key) {
            if !ctrl.gone {
                ctrl.gone = true;
                ctrl.enabled = false;
                ctrl.generation += 1;
                ctrl.qids.clear();
            }
        }
    }

    /// Closes connection `c` as the reactor does: `close`, forget its waiters, drop it. An
    /// admin queue takes its controller with it; the reactor then closes the controller's
    /// other connections too.
    fn close(&mut self, c: usize) {
        let conn = &mut self.conns[c];
        let Some(mut qpair) = conn.qpair.take() else {
            return;
        };
        let gone = qpair.close();
        assert!(
            qpair.output().is_empty(),
            "conn {c}: output left after close"
        );
        drop(qpair);
        let pool = &mut self.pools[conn.reactor];
        pool.forget_waiters(|key| key >> 32 == c as u64);
        if let Some(ready) = &conn.host.ready {
            let (cntlid, qid) = (ready.cntlid, ready.qid);
            // A queue that outlived a reset no longer holds its qid: its replacement may.
            if let Some(ctrl) = self
                .ctrls
                .get_mut(&cntlid)
                .filter(|m| m.generation == ready.generation)
            {
                ctrl.qids.retain(|&q| q != qid);
            }
        }
        self.trace.log(|| format!("conn {c}: closed"));
        if let Some(ctrl) = gone {
            self.controller_gone((ctrl.is_discovery(), ctrl.cntlid().0));
            let others: Vec<usize> = self
                .open_conns()
                .into_iter()
                .filter(|&o| {
                    self.conns[o]
                        .qpair
                        .as_ref()
                        .and_then(TcpQpair::controller)
                        .is_some_and(|x| Arc::ptr_eq(x, &ctrl))
                })
                .collect();
            // Usually the reactor closes them; sometimes they live on and must find out.
            if self.close_siblings {
                for o in others {
                    self.close(o);
                }
            }
        }
    }
}

fn ro_namespace() -> NamespaceSpec {
    NamespaceSpec {
        nsid: crate::nvme::Nsid(RO_NSID),
        backend: Arc::new(RamBackend::new(RO_BLOCKS * 512)),
        block_size: 512,
        read_only: true,
        uuid: None,
        nguid: None,
        eui64: None,
    }
}

fn token_base(c: usize) -> u64 {
    (c as u64) << 32
}

/// The bytes a queue pair has queued past the first `skip` unsent ones, without taking them.
fn peek_unsent(qpair: &mut TcpQpair, skip: usize) -> Vec<u8> {
    let out = qpair.output();
    let mut slots = 64;
    loop {
        let mut iov = vec![IoSlice::new(&[]); slots];
        let count = out.slices(&mut iov);
        if count == slots {
            slots *= 4;
            continue;
        }
        let mut bytes = Vec::new();
        let mut skip = skip;
        for slice in &iov[..count] {
            if skip >= slice.len() {
                skip -= slice.len();
            } else {
                bytes.extend_from_slice(&slice[skip..]);
                skip = 0;
            }
        }
        return bytes;
    }
}

// ---------------------------------------------------------------------------------------
// One connection: the host's side
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Ask {
    hd: bool,
    dd: bool,
    hpda: u8,
}

#[derive(Debug, Clone, Copy)]
struct Ready {
    qid: u16,
    cntlid: CtrlKey,
    generation: u32,
}

#[derive(Debug, Clone)]
struct R2tAsk {
    cid: u16,
    ttag: u16,
    r2to: u32,
    r2tl: u32,
    /// Bytes of it sent so far.
    next: u32,
}

/// What a command is, as far as the model needs to know.
#[derive(Debug, Clone)]
enum Cmd {
    /// Admin, I/O or discovery Connect; `fault` says which field is wrong.
    Connect {
        qid: u16,
        cntlid: u16,
        sqsize: u16,
        flow_disabled: bool,
        hostnqn: String,
        fault: Option<ConnectFault>,
    },
    PropertySetCc(u32),
    PropertyGet {
        valid: bool,
    },
    Identify {
        sgl: u32,
    },
    GetLog {
        valid_lid: bool,
        byte_len: u64,
        sgl: u32,
        offset: u64,
    },
    KeepAlive,
    UnknownAdmin,
    ConnectAgain,
    Disconnect,
    Aer,
    Io(IoCmd),
    /// Anything whose outcome the model does not predict.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectFault {
    Sqsize,
    Cntlid,
    Subnqn,
    Recfmt,
    NotInCapsule,
    ShortData,
    Hostnqn,
    Qid,
    DataDigest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoFault {
    BadNsid,
    OutOfRange,
    TooLong,
    SglShort,
    Fuse,
    BadSglType,
    SglOffset,
    IcdShort,
    DsmRange,
    DataDigest,
}

#[derive(Clone)]
struct IoCmd {
    opc: u8,
    nsid: u32,
    offset: u64,
    len: u64,
    data: Vec<u8>,
    /// Dataset Management Deallocate ranges, in bytes.
    ranges: Vec<(u64, u64)>,
    dealloc: bool,
    fault: Option<IoFault>,
}

impl core::fmt::Debug for IoCmd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoCmd")
            .field("opc", &format_args!("{:#x}", self.opc))
            .field("nsid", &self.nsid)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("data", &self.data.len())
            .field("ranges", &self.ranges)
            .field("fault", &self.fault)
            .finish_non_exhaustive()
    }
}

/// What the host expects of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Not yet decided: decided when the target consumes the capsule.
    Later,
    Any,
    Is(Status),
    OneOf(Vec<Status>),
    /// The queue is dead: the target must close without answering.
    Dead,
    /// Success or Compare Failure, as the shadow says.
    Compare,
}

#[derive(Debug)]
struct Pending {
    cmd: Cmd,
    expect: Expect,
    /// Sent before the host knew its queue was connected (so no expectation).
    pipelined: bool,
    /// C2HData bytes received for it.
    data: usize,
    /// One of its PDUs had a bad data digest.
    digest_bad: bool,
}

struct Host {
    role: Role,
    ask: Ask,
    ic_sent: bool,
    connect_sent: bool,
    ready: Option<Ready>,
    flow_disabled: bool,
    sqsize: u16,
    next_cid: u16,
    pending: BTreeMap<u16, Pending>,
    r2ts: Vec<R2tAsk>,
    /// A Property Set of CC the host waits for before sending anything else.
    blocking: Option<u16>,
    /// A host that seldom reads its socket, so that the target's output piles up
    /// (backpressure, completions counted until written).
    lazy: bool,
}

impl Host {
    fn cid(&mut self) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        cid
    }

    /// Commands that hold a slot of the queue: outstanding, or answered but not yet read
    /// (the target counts a completion until it is written).
    fn depth_used(&self, out: &OutState) -> usize {
        // AERs count too: an outstanding AER holds a slot of the queue (NVMe Base 2.0,
        // 5.2), even though this target is lenient while one is parked.
        self.pending.len() + out.unread.len()
    }
}

/// A PDU the host sent, until the target has consumed it.
#[derive(Debug, Clone)]
struct TxPdu {
    start: usize,
    end: usize,
    /// The FES of the C2HTermReq it must cause.
    term: Option<u16>,
    /// A host termination request: the connection must close.
    closes: bool,
    /// The command whose expectation is decided when this PDU is consumed.
    cid: Option<u16>,
    /// H2CData for this command's data.
    data_for: Option<u16>,
    /// The PDU was mutated: nothing is expected of it.
    mutated: bool,
}

#[derive(Debug, Default)]
struct OutState {
    /// Unsent bytes already checked.
    seen_unsent: usize,
    /// Bytes checked, and bytes the host has read, since the connection opened.
    checked: usize,
    read: usize,
    icresp: Option<IcInfo>,
    term: bool,
    /// Where each checked completion ends, for those the host has not read.
    unread: VecDeque<usize>,
}

#[derive(Debug, Clone, Copy)]
struct IcInfo {
    hd: bool,
    dd: bool,
    hpda: u8,
    maxh2cdata: u32,
}

struct Conn {
    id: usize,
    reactor: usize,
    qpair: Option<TcpQpair>,
    notified: Arc<AtomicBool>,
    notifier: AsyncNotifier,
    /// Delivered to the target and not consumed.
    rbuf: Vec<u8>,
    /// Written by the host and not delivered yet.
    tx: Vec<u8>,
    delivered: usize,
    consumed: usize,
    /// The first bytes delivered: the ICReq the target saw.
    first: Vec<u8>,
    pdus: VecDeque<TxPdu>,
    out: OutState,
    host: Host,
    terminated: bool,
}

// ---------------------------------------------------------------------------------------
// The host's grammar
// ---------------------------------------------------------------------------------------

impl World<'_> {
    /// The host of connection `c` writes its next PDU(s).
    fn host_sends(&mut self, rng: &mut Rng, c: usize) {
        let host = &self.conns[c].host;
        let (ic_sent, blocking, connect_sent, ready, r2ts) = (
            host.ic_sent,
            host.blocking.is_some(),
            host.connect_sent,
            host.ready.is_some(),
            host.r2ts.len(),
        );
        if rng.chance(1) {
            return self.send_special(rng, c);
        }
        if !ic_sent {
            return self.send_icreq(rng, c);
        }
        if blocking && self.clean {
            // Like a real host, wait for the answer to a CC write before going on.
            self.feed(c, usize::MAX);
            return self.read_output(c, usize::MAX);
        }
        if !connect_sent {
            if rng.chance(2) && self.clean {
                let ask = self.conns[c].host.ask;
                let pdu = h2c_pdu(&ask, 1, 0, 0, &[0; 8], true, false, false, 0);
                return self.push(rng, c, pdu, PduMeta::term(0x02), "H2CData before Connect");
            }
            return self.send_connect(rng, c);
        }
        if !ready && !rng.chance(10) {
            // Mostly wait for the Connect response before sending commands.
            self.feed(c, usize::MAX);
            return self.read_output(c, usize::MAX);
        }
        if r2ts > 0 && rng.chance(55) {
            let i = rng.below(r2ts);
            let r2t = self.conns[c].host.r2ts[i].clone();
            let fault = if rng.chance(92) {
                H2cFault::None
            } else {
                *rng.pick(&[
                    H2cFault::Ttag,
                    H2cFault::Cccid,
                    H2cFault::Offset,
                    H2cFault::TooLong,
                    H2cFault::NoLast,
                    H2cFault::EarlyLast,
                    H2cFault::HeaderDigest,
                    H2cFault::DataDigest,
                ])
            };
            let whole = rng.chance(60);
            return self.send_h2c(rng, c, i, &r2t, fault, whole);
        }
        // Keep within the queue depth: a host that does not is cut off. Sessions that mutate
        // sometimes overrun it on purpose.
        let overrun = self.mutate > 0 && rng.chance(5) && !self.room_for_one(c);
        if overrun {
            // The target may cut this queue off, or not yet: the model cannot tell.
            self.trace
                .log(|| format!("conn {c}: the host overruns the queue"));
            self.clean = false;
        } else if !self.room_for_one(c) {
            self.feed(c, usize::MAX);
            if self.conns[c].host.lazy {
                return;
            }
            self.read_output(c, usize::MAX);
            if !self.room_for_one(c) {
                return;
            }
        }
        let host = &self.conns[c].host;
        if host.lazy && host.role == Role::Admin && rng.chance(10) {
            // Identify pages are copied into the send queue: a host that asks for many and
            // reads none is what backpressure is for.
            let ask = host.ask;
            while self.room_for_one(c) {
                let cid = self.conns[c].host.cid();
                let mut sqe = Sqe::new(admin::IDENTIFY, cid);
                sqe.set_cdw(10, 1).set_sgl(Sgl::transport(4096));
                let pdu = capsule_pdu(&ask, &sqe, &[], 0);
                let cmd = Cmd::Identify { sgl: 4096 };
                self.command(
                    rng,
                    c,
                    cid,
                    cmd,
                    false,
                    pdu,
                    &format!("cid {cid} Identify (burst)"),
                );
            }
            return;
        }
        match self.conns[c].host.role {
            Role::Io => {
                count("I/O commands sent");
                self.send_io(rng, c);
            }
            Role::Admin | Role::Discovery => {
                count("admin commands sent");
                self.send_admin(rng, c);
            }
        }
    }

    /// Whether one more command fits the queue, counting what the target still counts.
    fn room_for_one(&self, c: usize) -> bool {
        let conn = &self.conns[c];
        conn.host.depth_used(&conn.out) < usize::from(conn.host.sqsize) + 1
    }

    /// Appends a PDU to the host's output, mutating it in sessions that mutate.
    fn push(&mut self, rng: &mut Rng, c: usize, mut pdu: Vec<u8>, mut meta: PduMeta, what: &str) {
        if self.mutate > 0 && rng.chance(self.mutate) {
            mutate(rng, &mut pdu, &self.corpus);
            meta.mutated = true;
            self.clean = false;
        }
        if self.corpus.len() < 64 {
            self.corpus.push(pdu.clone());
        } else {
            let i = rng.below(64);
            self.corpus[i] = pdu.clone();
        }
        let conn = &mut self.conns[c];
        let start = conn.delivered + conn.tx.len();
        let end = start + pdu.len();
        let len = pdu.len();
        let mutated = meta.mutated;
        conn.tx.extend_from_slice(&pdu);
        conn.pdus.push_back(TxPdu {
            start,
            end,
            term: meta.term,
            closes: meta.closes,
            cid: meta.cid,
            data_for: meta.data_for,
            mutated,
        });
        self.trace.log(|| {
            format!(
                "conn {c}: send {what} ({len} bytes at {start}{}{})",
                meta.term.map_or(String::new(), |f| format!(
                    ", must terminate with FES {f:#x}"
                )),
                if mutated { ", MUTATED" } else { "" }
            )
        });
    }

    fn send_special(&mut self, rng: &mut Rng, c: usize) {
        let established = self.conns[c].host.ic_sent;
        match rng.below(5) {
            0 => {
                let pdu = term_req(rng.u16());
                self.push(rng, c, pdu, PduMeta::closes(), "H2CTermReq");
            }
            1 => {
                // A PDU type hosts never send, with a plausible header length.
                let kind = *rng.pick(&[0x01u8, 0x03, 0x05, 0x07, 0x08, 0x09, 0x0A, 0xFF]);
                let mut pdu = vec![0u8; 24];
                pdu[0] = kind;
                pdu[2] = 24;
                pdu[4] = 24;
                self.push(
                    rng,
                    c,
                    pdu,
                    PduMeta::term(0x01),
                    "a PDU type hosts never send",
                );
            }
            2 => {
                // A known type with the wrong header length.
                let (kind, hlen) = *rng.pick(&[(0x00u8, 129u8), (0x04, 71), (0x06, 25), (0x02, 0)]);
                let mut pdu = vec![0u8; 8];
                pdu[0] = kind;
                pdu[2] = hlen;
                pdu[4] = 8;
                self.push(rng, c, pdu, PduMeta::term(0x01), "a wrong header length");
            }
            3 if established => {
                let pdu = icreq(0, 0, 0, 0);
                self.push(rng, c, pdu, PduMeta::term(0x02), "a second ICReq");
            }
            3 => {
                // A capsule before ICReq.
                let sqe = Sqe::new(admin::KEEP_ALIVE, 1);
                let pdu = capsule_pdu(
                    &Ask {
                        hd: false,
                        dd: false,
                        hpda: 0,
                    },
                    &sqe,
                    &[],
                    0,
                );
                self.push(rng, c, pdu, PduMeta::term(0x02), "a capsule before ICReq");
            }
            _ => {
                let len = rng.below(200);
                let pdu = rng.bytes(len);
                self.clean = false;
                self.push(rng, c, pdu, PduMeta::mutated(), "garbage");
            }
        }
    }

    fn send_icreq(&mut self, rng: &mut Rng, c: usize) {
        let ask = self.conns[c].host.ask;
        let dgst = u8::from(ask.hd) | (u8::from(ask.dd) << 1);
        let maxr2t = if rng.bool() { 0 } else { rng.u32() };
        self.conns[c].host.ic_sent = true;
        if rng.chance(94) {
            let mut pdu = icreq(0, ask.hpda, dgst, maxr2t);
            if rng.chance(20) {
                // Reserved bytes and flag bits are ignored.
                pdu[11] |= rng.u8() & 0xFC;
                let at = 16 + rng.below(112);
                pdu[at] = rng.u8();
            }
            return self.push(rng, c, pdu, PduMeta::default(), "ICReq");
        }
        let (pdu, what) = match rng.below(5) {
            0 => (
                icreq(1 + rng.u16() % 0xFFFF, 0, dgst, 0),
                "ICReq with PFV != 0",
            ),
            1 => (
                icreq(0, 32 + rng.u8() % 224, dgst, 0),
                "ICReq with HPDA > 31",
            ),
            2 => {
                let mut pdu = icreq(0, 0, dgst, 0);
                let plen = 129 + rng.below(200);
                pdu[4..8].copy_from_slice(&u32::try_from(plen).unwrap_or(0).to_le_bytes());
                (pdu, "ICReq longer than 128")
            }
            3 => {
                let mut pdu = icreq(0, 0, dgst, 0);
                let plen = 8 + rng.below(120);
                pdu[4..8].copy_from_slice(&u32::try_from(plen).unwrap_or(0).to_le_bytes());
                (pdu, "ICReq shorter than its header")
            }
            _ => {
                let mut pdu = icreq(0, 0, dgst, 0);
                pdu[2] = rng.u8();
                if pdu[2] == 128 {
                    pdu[2] = 0;
                }
                (pdu, "ICReq with HLEN != 128")
            }
        };
        self.push(rng, c, pdu, PduMeta::term(0x01), what);
    }

    fn send_connect(&mut self, rng: &mut Rng, c: usize) {
        let role = self.conns[c].host.role;
        let limits = self.limits;
        let fault = if rng.chance(88) {
            None
        } else {
            Some(*rng.pick(&[
                ConnectFault::Sqsize,
                ConnectFault::Cntlid,
                ConnectFault::Subnqn,
                ConnectFault::Recfmt,
                ConnectFault::NotInCapsule,
                ConnectFault::ShortData,
                ConnectFault::Hostnqn,
                ConnectFault::Qid,
                ConnectFault::DataDigest,
            ]))
        };
        let fault = match fault {
            Some(ConnectFault::DataDigest) if !self.conns[c].host.ask.dd => None,
            Some(ConnectFault::Qid) if role != Role::Io => None,
            other => other,
        };
        // The controller an I/O queue joins: one the host created, or none at all.
        let target = self
            .ctrls
            .iter()
            .filter(|(_, m)| !m.discovery && !m.gone)
            .map(|(&(_, id), m)| (id, m.hostnqn.clone()))
            .collect::<Vec<_>>();
        let enabled = self
            .ctrls
            .values()
            .any(|m| !m.discovery && !m.gone && m.enabled);
        if role == Role::Io && !enabled && rng.chance(85) {
            // A host connects its I/O queues once the controller is enabled.
            return;
        }
        let (qid, cntlid, hostnqn) = match role {
            Role::Io => match target.get(rng.below(target.len().max(1))) {
                Some((id, nqn)) => {
                    let max = u16::try_from(limits.max_io_qpairs_per_ctrlr).unwrap_or(1);
                    (1 + rng.u16() % max, *id, nqn.clone())
                }
                None => (1, rng.u16(), HOSTNQN.to_string()),
            },
            _ => (
                0,
                0xFFFF,
                if rng.chance(80) {
                    HOSTNQN
                } else {
                    OTHER_HOSTNQN
                }
                .into(),
            ),
        };
        let max_depth = if role == Role::Io {
            limits.max_queue_depth
        } else {
            limits.max_aq_depth
        };
        let max_sqsize = u16::try_from(max_depth - 1).unwrap_or(u16::MAX);
        let mut sqsize = if rng.chance(50) {
            max_sqsize
        } else {
            1 + rng.u16() % max_sqsize
        };
        let mut cmd = ConnectCmd {
            recfmt: 0,
            qid,
            sqsize,
            cattr: if rng.chance(30) { 0x04 } else { 0 },
            kato: match rng.below(10) {
                0 => *rng.pick(&[1, 100, 5000]),
                1 => rng.u32(),
                _ => *rng.pick(&[0, 30_000, 120_000]),
            },
        };
        let mut data = ConnectData {
            hostid: [0xF1; 16],
            cntlid,
            subnqn: if role == Role::Discovery {
                DISCOVERY_NQN.into()
            } else {
                SUBNQN.into()
            },
            hostnqn,
        };
        let mut sgl = Sgl::in_capsule(1024);
        let mut data_len = 1024;
        let mut bad_ddgst = false;
        match fault {
            Some(ConnectFault::Sqsize) => {
                sqsize = if rng.bool() {
                    0
                } else {
                    max_sqsize.saturating_add(1 + rng.u16() % 8)
                };
                if sqsize <= max_sqsize && sqsize != 0 {
                    sqsize = 0;
                }
                cmd.sqsize = sqsize;
            }
            Some(ConnectFault::Cntlid) => {
                data.cntlid = if role == Role::Io {
                    0xFFF0 | rng.u16()
                } else {
                    rng.u16() % 0xFFFF
                };
            }
            Some(ConnectFault::Subnqn) => {
                data.subnqn = match rng.below(3) {
                    0 => "nqn.2026-11.io.nvmf-tgt:nobody".into(),
                    1 => String::new(),
                    _ => "x".repeat(255),
                };
            }
            Some(ConnectFault::Recfmt) => cmd.recfmt = 1 + rng.u16() % 0xFFFF,
            Some(ConnectFault::NotInCapsule) => sgl = Sgl::transport(1024),
            Some(ConnectFault::ShortData) => {
                data_len = rng.below(1024);
                sgl = Sgl::in_capsule(u32::try_from(data_len).unwrap_or(0));
            }
            Some(ConnectFault::Hostnqn) => {
                // Any host NQN but the one the controller has.
                let others: Vec<&str> = [HOSTNQN, OTHER_HOSTNQN, "\u{1F600} not an nqn"]
                    .into_iter()
                    .filter(|n| *n != data.hostnqn)
                    .collect();
                data.hostnqn = (*rng.pick(&others)).into();
            }
            Some(ConnectFault::Qid) => {
                let max = u16::try_from(limits.max_io_qpairs_per_ctrlr).unwrap_or(1);
                cmd.qid = max.saturating_add(1 + rng.u16() % 16);
            }
            Some(ConnectFault::DataDigest) => bad_ddgst = true,
            None => {}
        }
        let cid = self.conns[c].host.cid();
        let mut sqe = Sqe::new(FABRICS, cid);
        sqe.set_fctype(fctype::CONNECT).set_sgl(sgl);
        cmd.emit(&mut sqe);
        let mut bytes = vec![0u8; 1024];
        data.emit(&mut bytes);
        if fault == Some(ConnectFault::Subnqn) && data.subnqn.len() == 255 {
            // No NUL in the whole field.
            bytes[256..512].fill(b'x');
        }
        bytes.truncate(data_len);
        let ask = self.conns[c].host.ask;
        let pad = if rng.chance(10) { rng.below(64) } else { 0 };
        let mut pdu = capsule_pdu(&ask, &sqe, &bytes, pad);
        if bad_ddgst {
            corrupt_data_digest(&mut pdu);
        }
        let host = &mut self.conns[c].host;
        host.connect_sent = true;
        host.sqsize = cmd.sqsize;
        host.flow_disabled = cmd.cattr & 0x04 != 0;
        let connect = Cmd::Connect {
            qid: cmd.qid,
            cntlid: data.cntlid,
            sqsize: cmd.sqsize,
            flow_disabled: host.flow_disabled,
            hostnqn: data.hostnqn.clone(),
            fault,
        };
        let what = format!("Connect qid {} cid {cid} {fault:?}: {cmd:?}", cmd.qid);
        self.command(rng, c, cid, connect, false, pdu, &what);
    }

    /// Sends a command capsule and records it as pending.
    #[allow(clippy::too_many_arguments)]
    fn command(
        &mut self,
        rng: &mut Rng,
        c: usize,
        cid: u16,
        cmd: Cmd,
        digest_bad: bool,
        pdu: Vec<u8>,
        what: &str,
    ) {
        let host = &mut self.conns[c].host;
        let pipelined = host.ready.is_none() && !matches!(cmd, Cmd::Connect { .. });
        if matches!(cmd, Cmd::PropertySetCc(_)) {
            host.blocking = Some(cid);
        }
        host.pending.insert(
            cid,
            Pending {
                cmd,
                expect: Expect::Later,
                pipelined,
                data: 0,
                digest_bad,
            },
        );
        self.push(rng, c, pdu, PduMeta::command(cid), what);
    }

    fn send_admin(&mut self, rng: &mut Rng, c: usize) {
        let cid = self.conns[c].host.cid();
        let ask = self.conns[c].host.ask;
        let enabled = self.conns[c]
            .host
            .ready
            .and_then(|r| self.ctrls.get(&r.cntlid))
            .is_some_and(|m| m.enabled);
        let mut data = Vec::new();
        let mut bad_ddgst = false;
        let weights = [
            if enabled { 2 } else { 40 }, // Property Set CC
            6,                            // Property Get
            3,                            // other Property Set
            10,                           // Identify
            12,                           // Get Log Page
            6,                            // Get Features
            6,                            // Set Features
            3,                            // AER
            6,                            // Keep Alive
            2,                            // Abort
            4,                            // unknown opcode
            1,                            // Connect again
            1,                            // Disconnect
            3,                            // random command
        ];
        let (sqe, cmd, what) = match rng.weighted(&weights) {
            0 => {
                let value = match rng.below(20) {
                    0..=13 => CC_ENABLE,
                    14..=16 => CC_DISABLE,
                    17 | 18 => CC_SHUTDOWN,
                    _ => rng.u32(),
                };
                let mut sqe = Sqe::new(FABRICS, cid);
                sqe.set_fctype(fctype::PROPERTY_SET)
                    .set_cdw(11, 0x14)
                    .set_cdw(12, value);
                (
                    sqe,
                    Cmd::PropertySetCc(value),
                    format!("Property Set CC = {value:#x}"),
                )
            }
            1 => {
                let (size, offset, valid) = match rng.below(5) {
                    0 => (0u8, 0x14u32, true),
                    1 => (0, 0x1C, true),
                    2 => (1, 0x00, true),
                    3 => (0, 0x08, true),
                    _ => (rng.u8(), rng.u32(), false),
                };
                let mut sqe = Sqe::new(FABRICS, cid);
                sqe.set_fctype(fctype::PROPERTY_GET).set_cdw(11, offset);
                sqe.bytes_mut()[40] = size;
                let what = format!("Property Get size {size} offset {offset:#x}");
                (sqe, Cmd::PropertyGet { valid }, what)
            }
            2 => {
                let offset = {
                    let any = rng.u32();
                    *rng.pick(&[0x24u32, 0x28, 0x2C, 0x30, 0x34, any])
                };
                let mut sqe = Sqe::new(FABRICS, cid);
                sqe.set_fctype(fctype::PROPERTY_SET)
                    .set_cdw(11, offset)
                    .set_cdw(12, rng.u32())
                    .set_cdw(13, rng.u32());
                sqe.bytes_mut()[40] = rng.u8() & 1;
                (sqe, Cmd::Any, format!("Property Set offset {offset:#x}"))
            }
            3 => {
                let cns = if rng.chance(50) {
                    1
                } else {
                    {
                        let any = rng.u32() & 0xFF;
                        *rng.pick(&[0u32, 2, 3, 5, 6, 7, 8, 0x1C, any])
                    }
                };
                let sgl = if rng.chance(70) {
                    4096
                } else {
                    u32::try_from(rng.interesting(8192)).unwrap_or(0)
                };
                let nsid = {
                    let any = rng.u32();
                    *rng.pick(&[0u32, 1, 2, 3, 0xFFFF_FFFF, any])
                };
                // CNTID in the upper half, now and then.
                let cntid = if rng.chance(10) {
                    rng.u32() & 0xFFFF_0000
                } else {
                    0
                };
                let mut sqe = Sqe::new(admin::IDENTIFY, cid);
                sqe.set_nsid(nsid)
                    .set_cdw(10, cns | cntid)
                    .set_cdw(11, if rng.bool() { 0 } else { rng.u32() })
                    .set_sgl(Sgl::transport(sgl));
                let cmd = if cns == 1 && sqe.cdw(10) == 1 {
                    Cmd::Identify { sgl }
                } else {
                    Cmd::Any
                };
                (
                    sqe,
                    cmd,
                    format!("Identify CNS {cns:#x} nsid {nsid:#x} sgl {sgl}"),
                )
            }
            4 => {
                let discovery = self.conns[c].host.role == Role::Discovery;
                let lid = match rng.below(4) {
                    0 => rng.u8(),
                    _ if discovery => *rng.pick(&[0x00u8, 0x70]),
                    _ => *rng.pick(&[0x00u8, 0x01, 0x02, 0x03, 0x04, 0x05]),
                };
                let valid_lid = if discovery {
                    [0x00, 0x70].contains(&lid)
                } else {
                    (0x00..=0x05).contains(&lid)
                };
                let numd = match rng.below(4) {
                    0 => rng.u32(),
                    1 => u32::try_from(rng.interesting(u64::from(u32::MAX))).unwrap_or(0),
                    _ => rng.u32() % 2048,
                };
                let byte_len = (u64::from(numd) + 1) * 4;
                let sgl = match rng.below(3) {
                    0 => u32::try_from(byte_len).unwrap_or(u32::MAX),
                    1 => u32::try_from(rng.interesting(1 << 24)).unwrap_or(0),
                    _ => u32::try_from(byte_len.min(4096)).unwrap_or(0),
                };
                let offset = match rng.below(4) {
                    0 => rng.next_u64(),
                    1 => rng.interesting(1 << 16) & !3,
                    _ => 0,
                };
                let rae = if rng.bool() { 0x80 } else { 0 };
                let mut sqe = Sqe::new(admin::GET_LOG_PAGE, cid);
                let [lo0, lo1, hi0, hi1] = numd.to_le_bytes();
                sqe.set_nsid(if rng.bool() { 0xFFFF_FFFF } else { 0 })
                    .set_cdw(10, u32::from_le_bytes([lid, rae, lo0, lo1]))
                    .set_cdw(11, u32::from_le_bytes([hi0, hi1, 0, 0]))
                    .set_cdw(12, u32::try_from(offset & 0xFFFF_FFFF).unwrap_or(0))
                    .set_cdw(13, u32::try_from(offset >> 32).unwrap_or(0))
                    .set_sgl(Sgl::transport(sgl));
                let cmd = Cmd::GetLog {
                    valid_lid,
                    byte_len,
                    sgl,
                    offset,
                };
                (
                    sqe,
                    cmd,
                    format!(
                        "Get Log Page lid {lid:#x} numd {numd:#x} offset {offset:#x} sgl {sgl}"
                    ),
                )
            }
            5 => {
                let fid = {
                    let any = rng.u32() & 0xFF;
                    *rng.pick(&[1u32, 2, 4, 5, 6, 7, 8, 0x0A, 0x0B, 0x0F, 0x81, any])
                };
                let sel = rng.u32() % 5;
                let mut sqe = Sqe::new(admin::GET_FEATURES, cid);
                sqe.set_cdw(10, fid | (sel << 8))
                    .set_cdw(11, rng.u32())
                    .set_sgl(Sgl::transport(*rng.pick(&[0, 16, 4096])));
                (
                    sqe,
                    Cmd::Any,
                    format!("Get Features fid {fid:#x} sel {sel}"),
                )
            }
            6 => {
                let fid = {
                    let any = rng.u32() & 0xFF;
                    *rng.pick(&[1u32, 2, 4, 5, 6, 7, 8, 0x0A, 0x0B, 0x0F, 0x81, any])
                };
                let mut sqe = Sqe::new(admin::SET_FEATURES, cid);
                let value = if fid == 0x0F {
                    // KATO: keep it above the session's time steps most of the time.
                    {
                        let any = rng.u32();
                        *rng.pick(&[0u32, 1, 1000, 60_000, any])
                    }
                } else {
                    rng.u32()
                };
                sqe.set_cdw(10, fid | (u32::from(rng.chance(10)) << 31))
                    .set_cdw(11, value);
                let len = *rng.pick(&[0usize, 16, 512, 4096, 4097]);
                if rng.bool() && len <= 4096 {
                    data = rng.bytes(len);
                    sqe.set_sgl(Sgl::in_capsule(u32::try_from(len).unwrap_or(0)));
                    bad_ddgst = ask.dd && !data.is_empty() && rng.chance(10);
                } else {
                    sqe.set_sgl(Sgl::transport(u32::try_from(len).unwrap_or(0)));
                }
                (
                    sqe,
                    Cmd::Any,
                    format!("Set Features fid {fid:#x} = {value:#x}, {len} bytes"),
                )
            }
            7 => {
                let sqe = Sqe::new(admin::ASYNC_EVENT_REQUEST, cid);
                (sqe, Cmd::Aer, "AER".into())
            }
            8 => {
                let sqe = Sqe::new(admin::KEEP_ALIVE, cid);
                (sqe, Cmd::KeepAlive, "Keep Alive".into())
            }
            9 => {
                let mut sqe = Sqe::new(admin::ABORT, cid);
                sqe.set_cdw(10, rng.u32());
                (sqe, Cmd::Any, "Abort".into())
            }
            10 => {
                let opc = *rng.pick(&[
                    0x00u8, 0x01, 0x04, 0x05, 0x0D, 0x10, 0x11, 0x19, 0x1A, 0x7C, 0x80, 0x81, 0xC0,
                    0xFF,
                ]);
                let mut sqe = Sqe::new(opc, cid);
                sqe.set_sgl(Sgl::transport(*rng.pick(&[0, 4096, 1 << 20])));
                (sqe, Cmd::UnknownAdmin, format!("admin opcode {opc:#x}"))
            }
            11 => {
                let mut sqe = Sqe::new(FABRICS, cid);
                sqe.set_fctype(fctype::CONNECT)
                    .set_sgl(Sgl::in_capsule(1024));
                data = vec![0; 1024];
                (sqe, Cmd::ConnectAgain, "Connect again".into())
            }
            12 => {
                let mut sqe = Sqe::new(FABRICS, cid);
                sqe.set_fctype(fctype::DISCONNECT);
                (sqe, Cmd::Disconnect, "Disconnect".into())
            }
            _ => {
                let mut raw = [0u8; 64];
                rng.fill(&mut raw);
                let mut sqe = Sqe::from_bytes(raw);
                sqe.set_cid(cid);
                if sqe.opcode() == FABRICS && sqe.fctype() == fctype::DISCONNECT {
                    sqe.set_fctype(fctype::PROPERTY_GET);
                }
                (sqe, Cmd::Any, format!("random admin command {sqe:?}"))
            }
        };
        let pad = if rng.chance(5) { rng.below(48) } else { 0 };
        let mut pdu = capsule_pdu(&ask, &sqe, &data, pad);
        if bad_ddgst {
            corrupt_data_digest(&mut pdu);
        }
        let what = format!("cid {cid} {what}");
        self.command(rng, c, cid, cmd, bad_ddgst, pdu, &what);
    }

    fn send_io(&mut self, rng: &mut Rng, c: usize) {
        let cid = self.conns[c].host.cid();
        let ask = self.conns[c].host.ask;
        if rng.chance(4) {
            // Fabrics commands on an I/O queue, and random ones.
            let mut sqe = Sqe::new(FABRICS, cid);
            let (cmd, what) = match rng.below(4) {
                0 => {
                    sqe.set_fctype(fctype::DISCONNECT);
                    (Cmd::Disconnect, "Disconnect")
                }
                1 => {
                    sqe.set_fctype(fctype::PROPERTY_GET).set_cdw(11, 0x14);
                    (Cmd::Any, "Property Get on an I/O queue")
                }
                2 => {
                    sqe.set_fctype(rng.u8());
                    if sqe.fctype() == fctype::DISCONNECT {
                        sqe.set_fctype(0x7F);
                    }
                    (Cmd::Any, "fabrics command on an I/O queue")
                }
                _ => {
                    let mut raw = [0u8; 64];
                    rng.fill(&mut raw);
                    sqe = Sqe::from_bytes(raw);
                    sqe.set_cid(cid);
                    if sqe.opcode() == FABRICS && sqe.fctype() == fctype::DISCONNECT {
                        sqe.set_fctype(0x7F);
                    }
                    (Cmd::Any, "random I/O command")
                }
            };
            let pdu = capsule_pdu(&ask, &sqe, &[], 0);
            return self.command(rng, c, cid, cmd, false, pdu, &format!("cid {cid} {what}"));
        }
        let opc = *rng.pick(&[
            io::READ,
            io::READ,
            io::READ,
            io::WRITE,
            io::WRITE,
            io::WRITE,
            io::COMPARE,
            io::FLUSH,
            io::WRITE_ZEROES,
            io::DATASET_MANAGEMENT,
            io::WRITE_UNCORRECTABLE,
            0x0C,
            0x7E,
            0x90,
        ]);
        let (nsid, block, blocks) = match rng.below(100) {
            0..=7 => (RO_NSID, 512u64, RO_BLOCKS),
            8..=15 => (NULL_NSID, 512u64, NULL_BLOCKS),
            _ => (1, u64::from(self.block), self.blocks),
        };
        let max_nlb = (u64::from(self.limits.max_io_size) / block)
            .min(blocks)
            .min(65536);
        let nlb = match rng.below(4) {
            0 => 1,
            1 => max_nlb,
            _ => rng.range(1, max_nlb.min(64)),
        };
        let slba = match rng.below(4) {
            0 => 0,
            1 => blocks - nlb,
            _ => rng.range(0, blocks - nlb),
        };
        let host_data = matches!(opc, io::WRITE | io::COMPARE);
        let icd = u64::from(self.limits.in_capsule_data_size);
        let mut in_capsule = host_data && nlb * block <= icd && rng.chance(40);
        let mut faults = vec![IoFault::BadNsid, IoFault::Fuse];
        match opc {
            io::READ | io::WRITE | io::COMPARE => {
                faults.extend([IoFault::OutOfRange, IoFault::SglShort]);
                if blocks * block > u64::from(self.limits.max_io_size) && blocks > max_nlb {
                    faults.push(IoFault::TooLong);
                }
                if host_data {
                    faults.extend([IoFault::BadSglType, IoFault::SglOffset]);
                    if in_capsule {
                        faults.push(IoFault::IcdShort);
                    }
                    if ask.dd {
                        faults.push(IoFault::DataDigest);
                    }
                }
            }
            io::WRITE_ZEROES => faults.push(IoFault::OutOfRange),
            io::DATASET_MANAGEMENT => faults.extend([IoFault::DsmRange, IoFault::SglShort]),
            io::FLUSH => {}
            // Unknown opcodes are refused before their namespace is looked at.
            _ => faults = vec![IoFault::Fuse],
        }
        let fault = (rng.chance(25)).then(|| *rng.pick(&faults));
        let (mut slba, mut nlb) = (slba, nlb);
        match fault {
            Some(IoFault::OutOfRange) => {
                if rng.chance(20) {
                    slba = u64::MAX - rng.range(0, 4);
                } else {
                    nlb = rng.range(1, max_nlb.max(1));
                    slba = blocks - nlb + rng.range(1, nlb.max(1));
                }
            }
            Some(IoFault::TooLong) => {
                nlb = rng.range(max_nlb + 1, blocks.min(65536));
                slba = rng.range(0, blocks - nlb);
                in_capsule = false;
            }
            _ => {}
        }
        let len = nlb * block;
        // A fault may have grown the transfer past what fits in a capsule.
        in_capsule &= len <= icd;
        let mut sqe = Sqe::new(opc, cid);
        let nsid = match fault {
            Some(IoFault::BadNsid) => *rng.pick(&[0u32, 4, 77, 0xFFFF_FFFE, 0xFFFF_FFFF]),
            _ => nsid,
        };
        sqe.set_nsid(nsid)
            .set_cdw(10, u32::try_from(slba & 0xFFFF_FFFF).unwrap_or(0))
            .set_cdw(11, u32::try_from(slba >> 32).unwrap_or(0))
            .set_cdw(12, u32::try_from((nlb - 1) & 0xFFFF).unwrap_or(0));
        if rng.chance(15) {
            // FUA.
            sqe.set_cdw(12, sqe.cdw(12) | 1 << 30);
        }
        if fault == Some(IoFault::Fuse) {
            sqe.set_flags(1 + rng.u8() % 3);
        }
        let mut data = Vec::new();
        let mut ranges = Vec::new();
        let mut dealloc = false;
        let mut sgl_len = u32::try_from(len).unwrap_or(u32::MAX);
        let mut xfer = 0u64;
        match opc {
            io::WRITE | io::COMPARE | io::READ => {
                xfer = len;
                if host_data {
                    data = if opc == io::COMPARE && rng.chance(60) && nsid == 1 {
                        // Compare with what the host believes is there, so some match.
                        let at = slba
                            .checked_mul(block)
                            .and_then(|at| usize::try_from(at).ok());
                        let at = at.unwrap_or(usize::MAX);
                        let end = at.saturating_add(usize::try_from(len).unwrap_or(0));
                        self.shadow
                            .data
                            .get(at..end)
                            .map_or_else(Vec::new, <[u8]>::to_vec)
                    } else if nsid != 1 && opc == io::COMPARE && rng.bool() {
                        vec![0; usize::try_from(len).unwrap_or(0)]
                    } else {
                        rng.bytes(usize::try_from(len).unwrap_or(0))
                    };
                }
            }
            io::DATASET_MANAGEMENT => {
                let nr = 1 + rng.below(4);
                dealloc = rng.chance(80);
                sqe.set_cdw(10, u32::try_from(nr - 1).unwrap_or(0))
                    .set_cdw(11, if dealloc { 1 << 2 } else { 0 } | (rng.u32() & 0x3));
                for i in 0..nr {
                    let rnlb = if rng.chance(10) {
                        0
                    } else {
                        rng.range(1, blocks.min(64))
                    };
                    let mut rslba = rng.range(0, blocks - rnlb.max(1));
                    if fault == Some(IoFault::DsmRange) && i == nr - 1 {
                        rslba = blocks - rnlb.max(1) + 1 + rng.range(0, 8);
                    }
                    let rnlb = if fault == Some(IoFault::DsmRange) && i == nr - 1 {
                        rnlb.max(1)
                    } else {
                        rnlb
                    };
                    let mut entry = [0u8; 16];
                    entry[4..8].copy_from_slice(&u32::try_from(rnlb).unwrap_or(0).to_le_bytes());
                    entry[8..16].copy_from_slice(&rslba.to_le_bytes());
                    data.extend_from_slice(&entry);
                    if rnlb > 0 {
                        ranges.push((rslba * block, rnlb * block));
                    }
                }
                in_capsule = (data.len() as u64) <= icd && rng.chance(50);
                sgl_len = u32::try_from(data.len()).unwrap_or(0);
                xfer = data.len() as u64;
            }
            _ => sgl_len = if rng.bool() { 0 } else { rng.u32() % 8192 },
        }
        if fault == Some(IoFault::SglShort) {
            sgl_len = u32::try_from(rng.range(0, xfer.saturating_sub(1))).unwrap_or(0);
        }
        let mut sgl = if in_capsule {
            Sgl::in_capsule(sgl_len)
        } else {
            Sgl::transport(sgl_len)
        };
        let mut capsule_data = if in_capsule { data.clone() } else { Vec::new() };
        match fault {
            Some(IoFault::BadSglType) => {
                sgl.kind = *rng.pick(&[0u8, 1, 2, 3, 4, 0xF]);
                sgl.subtype = if sgl.kind == 0 { 0 } else { rng.u8() & 0xF };
                capsule_data.clear();
            }
            Some(IoFault::SglOffset) => {
                sgl = Sgl::in_capsule(sgl_len);
                sgl.address = 1 + rng.range(0, 4096);
                capsule_data.clear();
                if data.len() as u64 <= icd {
                    capsule_data = data.clone();
                }
            }
            Some(IoFault::IcdShort) => {
                capsule_data.truncate(rng.below(capsule_data.len().max(1)));
            }
            _ => {}
        }
        sqe.set_sgl(sgl);
        let digest_bad = fault == Some(IoFault::DataDigest) && !capsule_data.is_empty();
        let fault = if fault == Some(IoFault::DataDigest) && !digest_bad {
            None
        } else {
            fault
        };
        let pad = if rng.chance(5) { rng.below(48) } else { 0 };
        let mut pdu = capsule_pdu(&ask, &sqe, &capsule_data, pad);
        if digest_bad {
            corrupt_data_digest(&mut pdu);
        }
        let what = format!(
            "cid {cid} opcode {opc:#x} nsid {nsid} slba {slba} nlb {nlb} sgl {sgl:?} \
             in-capsule {} {fault:?}",
            capsule_data.len()
        );
        let cmd = Cmd::Io(IoCmd {
            opc,
            nsid,
            offset: slba.wrapping_mul(block),
            len,
            data,
            ranges,
            dealloc,
            fault,
        });
        self.command(rng, c, cid, cmd, digest_bad, pdu, &what);
    }

    /// Sends data for R2T `i` of connection `c`: one PDU, or all that is left, with `fault`.
    fn send_h2c(
        &mut self,
        rng: &mut Rng,
        c: usize,
        i: usize,
        r2t: &R2tAsk,
        fault: H2cFault,
        whole: bool,
    ) {
        let conn = &self.conns[c];
        let ask = conn.host.ask;
        let ic = conn.out.icresp;
        let maxh2c = ic.map_or(4096, |ic| ic.maxh2cdata);
        let source = match conn.host.pending.get(&r2t.cid).map(|p| &p.cmd) {
            Some(Cmd::Io(io))
                if io.data.len() as u64 >= u64::from(r2t.r2to) + u64::from(r2t.r2tl) =>
            {
                io.data[r2t.r2to as usize..(r2t.r2to + r2t.r2tl) as usize].to_vec()
            }
            _ => vec![0xD5; r2t.r2tl as usize],
        };
        let fault = match fault {
            H2cFault::HeaderDigest if !ask.hd => H2cFault::None,
            H2cFault::DataDigest if !ask.dd => H2cFault::None,
            f => f,
        };
        let mut next = r2t.next;
        loop {
            let left = r2t.r2tl - next;
            let mut len = if whole && rng.chance(70) {
                left.min(maxh2c)
            } else {
                u32::try_from(rng.range(1, u64::from(left.min(maxh2c)))).unwrap_or(1)
            };
            let mut datao = r2t.r2to + next;
            let mut ttag = r2t.ttag;
            let mut cccid = r2t.cid;
            let mut last = next + len == r2t.r2tl;
            let mut term = None;
            let mut bad_hd = false;
            let mut bad_dd = false;
            let mut payload = source[next as usize..(next + len) as usize].to_vec();
            match fault {
                H2cFault::None => {}
                H2cFault::Ttag => {
                    ttag ^= 1 + rng.u16() % 0xFFFF;
                    term = Some(0x04);
                }
                H2cFault::Cccid => {
                    cccid ^= 1 + rng.u16() % 0xFFFF;
                    term = Some(0x04);
                }
                H2cFault::Offset => {
                    datao = if datao > 0 && rng.bool() {
                        datao - 1 - u32::try_from(rng.range(0, u64::from(datao) - 1)).unwrap_or(0)
                    } else {
                        datao + 1 + rng.u32() % 4096
                    };
                    term = Some(0x04);
                }
                H2cFault::TooLong => {
                    let extra = 1 + rng.u32() % 64;
                    len = (left + extra).min(maxh2c + 16);
                    payload.resize(len as usize, 0xAB);
                    last = true;
                    term = Some(if len > maxh2c { 0x05 } else { 0x04 });
                }
                H2cFault::NoLast if last => {
                    last = false;
                    term = Some(0x04);
                }
                H2cFault::EarlyLast if !last => {
                    last = true;
                    term = Some(0x04);
                }
                H2cFault::NoLast | H2cFault::EarlyLast => {}
                H2cFault::HeaderDigest => {
                    bad_hd = true;
                    term = Some(0x03);
                }
                H2cFault::DataDigest => bad_dd = true,
            }
            let pad = if rng.chance(5) { rng.below(32) } else { 0 };
            let pdu = h2c_pdu(
                &ask, cccid, ttag, datao, &payload, last, bad_hd, bad_dd, pad,
            );
            let meta = PduMeta {
                term,
                data_for: Some(r2t.cid),
                ..PduMeta::default()
            };
            if bad_dd {
                if let Some(p) = self.conns[c].host.pending.get_mut(&r2t.cid) {
                    p.digest_bad = true;
                }
            }
            let what = format!(
                "H2CData cccid {cccid} ttag {ttag} datao {datao} len {len} last {last} {fault:?}"
            );
            self.push(rng, c, pdu, meta, &what);
            if term.is_some() {
                self.conns[c].host.r2ts.remove(i);
                return;
            }
            next += len;
            if next == r2t.r2tl {
                self.conns[c].host.r2ts.remove(i);
                return;
            }
            self.conns[c].host.r2ts[i].next = next;
            if !whole {
                return;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2cFault {
    None,
    Ttag,
    Cccid,
    Offset,
    TooLong,
    NoLast,
    EarlyLast,
    HeaderDigest,
    DataDigest,
}

#[derive(Debug, Default, Clone, Copy)]
struct PduMeta {
    term: Option<u16>,
    closes: bool,
    cid: Option<u16>,
    data_for: Option<u16>,
    mutated: bool,
}

impl PduMeta {
    fn term(fes: u16) -> Self {
        Self {
            term: Some(fes),
            ..Self::default()
        }
    }

    fn closes() -> Self {
        Self {
            closes: true,
            ..Self::default()
        }
    }

    fn command(cid: u16) -> Self {
        Self {
            cid: Some(cid),
            ..Self::default()
        }
    }

    fn mutated() -> Self {
        Self {
            mutated: true,
            ..Self::default()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Host PDUs
// ---------------------------------------------------------------------------------------

fn icreq(pfv: u16, hpda: u8, dgst: u8, maxr2t: u32) -> Vec<u8> {
    let mut pdu = Vec::new();
    IcReq {
        pfv,
        hpda,
        header_digest: dgst & 0x1 != 0,
        data_digest: dgst & 0x2 != 0,
        maxr2t,
    }
    .emit(&mut pdu);
    pdu
}

fn term_req(fes: u16) -> Vec<u8> {
    let mut pdu = Vec::new();
    TermReq {
        fes,
        fei: 0,
        echo: &[],
    }
    .emit(&mut pdu, pdu_type::H2C_TERM_REQ);
    pdu
}

/// A CapsuleCmd with `pad` bytes between the header (and its digest) and the data.
fn capsule_pdu(ask: &Ask, sqe: &Sqe, data: &[u8], pad: usize) -> Vec<u8> {
    let hd = if ask.hd { 4 } else { 0 };
    let dd = if ask.dd && !data.is_empty() { 4 } else { 0 };
    let pad = if data.is_empty() {
        0
    } else {
        pad.min(255 - 76)
    };
    let pdo = if data.is_empty() { 0 } else { 72 + hd + pad };
    let plen = 72 + hd + pad + data.len() + dd;
    let mut pdu = vec![pdu_type::CAPSULE_CMD, 0, 72, u8::try_from(pdo).unwrap_or(0)];
    pdu.extend_from_slice(&u32::try_from(plen).unwrap_or(0).to_le_bytes());
    if hd > 0 {
        pdu[1] |= flags::HDGSTF;
    }
    if dd > 0 {
        pdu[1] |= flags::DDGSTF;
    }
    pdu.extend_from_slice(sqe.as_bytes());
    if hd > 0 {
        let digest = wire::digest(&pdu);
        pdu.extend_from_slice(&digest);
    }
    pdu.resize(pdu.len() + pad, 0);
    pdu.extend_from_slice(data);
    if dd > 0 {
        pdu.extend_from_slice(&wire::digest(data));
    }
    pdu
}

#[allow(clippy::too_many_arguments)]
fn h2c_pdu(
    ask: &Ask,
    cccid: u16,
    ttag: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    bad_hd: bool,
    bad_dd: bool,
    pad: usize,
) -> Vec<u8> {
    let hd = if ask.hd { 4 } else { 0 };
    let dd = if ask.dd && !data.is_empty() { 4 } else { 0 };
    let pad = if data.is_empty() {
        0
    } else {
        pad.min(255 - 28)
    };
    let pdo = 24 + hd + pad;
    let plen = pdo + data.len() + dd;
    let mut pdu = vec![pdu_type::H2C_DATA, 0, 24, u8::try_from(pdo).unwrap_or(0)];
    pdu.extend_from_slice(&u32::try_from(plen).unwrap_or(0).to_le_bytes());
    if hd > 0 {
        pdu[1] |= flags::HDGSTF;
    }
    if dd > 0 {
        pdu[1] |= flags::DDGSTF;
    }
    if last {
        pdu[1] |= flags::LAST_PDU;
    }
    pdu.extend_from_slice(&cccid.to_le_bytes());
    pdu.extend_from_slice(&ttag.to_le_bytes());
    pdu.extend_from_slice(&datao.to_le_bytes());
    pdu.extend_from_slice(&u32::try_from(data.len()).unwrap_or(0).to_le_bytes());
    pdu.extend_from_slice(&[0; 4]);
    if hd > 0 {
        let mut digest = wire::digest(&pdu);
        if bad_hd {
            digest[0] ^= 0x5A;
        }
        pdu.extend_from_slice(&digest);
    }
    pdu.resize(pdo, 0);
    pdu.extend_from_slice(data);
    if dd > 0 {
        let mut digest = wire::digest(data);
        if bad_dd {
            digest[3] ^= 0x01;
        }
        pdu.extend_from_slice(&digest);
    }
    pdu
}

fn corrupt_data_digest(pdu: &mut [u8]) {
    if let Some(last) = pdu.last_mut() {
        *last ^= 0x80;
    }
}

/// Byte-level damage: bit flips, edge values, a cut, a duplicate, a splice from another
/// PDU, inserted junk, or a rewritten length.
fn mutate(rng: &mut Rng, pdu: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..=rng.below(3) {
        let len = pdu.len();
        match rng.below(8) {
            0 | 1 if len > 0 => {
                for _ in 0..=rng.below(4) {
                    let at = rng.below(len);
                    pdu[at] ^= 1 << rng.below(8);
                }
            }
            2 if len > 0 => {
                let at = rng.below(len.min(24));
                pdu[at] = *rng.pick(&[0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]);
            }
            3 => pdu.truncate(rng.below(len + 1)),
            4 => {
                let copy = pdu.clone();
                pdu.extend_from_slice(&copy);
            }
            5 if !corpus.is_empty() => {
                let other = rng.pick(corpus);
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                pdu.truncate(cut);
                pdu.extend_from_slice(&other[from..]);
            }
            6 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let junk = rng.bytes(n);
                pdu.splice(at..at, junk);
            }
            _ if len >= 8 => {
                let plen = match rng.below(3) {
                    0 => rng.u32(),
                    1 => u32::try_from(len).unwrap_or(0).wrapping_add(rng.u32() % 16),
                    _ => u32::try_from(len)
                        .unwrap_or(0)
                        .saturating_sub(rng.u32() % 16),
                };
                pdu[4..8].copy_from_slice(&plen.to_le_bytes());
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the target sends: checked, then applied to the host's model
// ---------------------------------------------------------------------------------------

/// One PDU from the target, as the host understands it.
#[derive(Debug)]
enum OutPdu {
    IcResp(IcInfo),
    Term {
        fes: u16,
    },
    Resp(Cqe),
    Data {
        cccid: u16,
        data: Vec<u8>,
        success: bool,
    },
    R2t {
        cccid: u16,
        ttag: u16,
        r2to: u32,
        r2tl: u32,
    },
}

/// Checks the PDU at the front of `bytes` as a controller may send it, and parses it. The
/// PDU module reads the fields and checks the framing; this model adds what a controller
/// must do beyond that (exact PLEN and PDO, no stray flags, what ICResp echoes).
fn check_pdu(bytes: &[u8], st: &OutState, first: &[u8]) -> Result<(OutPdu, usize), String> {
    let Some(ch) = CommonHeader::peek(bytes) else {
        return Err(format!("{} bytes: less than a common header", bytes.len()));
    };
    let (kind, pflags, hlen, pdo, plen) = (ch.pdu_type, ch.flags, ch.hlen(), ch.pdo(), ch.plen());
    if !pdu::sent_by_controller(kind) {
        return Err(format!("PDU type {kind:#x} is not one a controller sends"));
    }
    ch.check()
        .map_err(|e| format!("type {kind:#x} with HLEN {hlen}, PLEN {plen}: {e}"))?;
    if plen > bytes.len() {
        return Err(format!(
            "type {kind:#x}: PLEN {plen} with HLEN {hlen} and {} bytes queued",
            bytes.len()
        ));
    }
    if st.term {
        return Err(format!("type {kind:#x} after a C2HTermReq"));
    }
    let digests = st.icresp.map_or(Digests::NONE, |ic| Digests {
        header: ic.hd,
        data: ic.dd,
    });
    let view = PduView::new_checked(bytes, digests).map_err(|e| format!("type {kind:#x}: {e}"))?;
    if kind == pdu_type::C2H_TERM_REQ {
        let fes = TermReq::parse(&view).fes;
        if !(1..=6).contains(&fes) || pflags != 0 || plen > hlen + wire::TERM_REQ_MAX_ECHO {
            return Err(format!(
                "C2HTermReq FES {fes:#x} flags {pflags:#x} PLEN {plen}"
            ));
        }
        return Ok((OutPdu::Term { fes }, plen));
    }
    if kind == pdu_type::IC_RESP {
        if st.icresp.is_some() || st.checked != 0 {
            return Err("ICResp that is not the first PDU".into());
        }
        if pflags != 0 {
            return Err(format!("ICResp PLEN {plen} flags {pflags:#x}"));
        }
        let Ok(asked) = PduView::new_checked(first, Digests::NONE).and_then(|v| IcReq::parse(&v))
        else {
            return Err("ICResp without an ICReq".into());
        };
        let resp = IcResp::parse(&view).map_err(|e| format!("ICResp: {e}"))?;
        let mut again = Vec::new();
        resp.emit(&mut again);
        if again != view.as_bytes() {
            return Err(format!("ICResp with stray bits: {:02x?}", view.as_bytes()));
        }
        let granted = (resp.header_digest, resp.data_digest);
        if resp.pfv != 0
            || resp.cpda != 0
            || granted != (asked.header_digest, asked.data_digest)
            || resp.maxh2cdata < 4096
        {
            return Err(format!("ICResp {resp:?} for ICReq {asked:?}"));
        }
        let ic = IcInfo {
            hd: resp.header_digest,
            dd: resp.data_digest,
            hpda: asked.hpda,
            maxh2cdata: resp.maxh2cdata,
        };
        return Ok((OutPdu::IcResp(ic), plen));
    }
    let Some(ic) = st.icresp else {
        return Err(format!("type {kind:#x} before ICResp"));
    };
    let hd = digests.header_len();
    match Pdu::parse(&view).map_err(|e| format!("type {kind:#x}: {e}"))? {
        Pdu::CapsuleResp(resp) => {
            if plen != hlen + hd || pflags & !flags::HDGSTF != 0 || pdo != 0 {
                return Err(format!(
                    "CapsuleResp PLEN {plen} flags {pflags:#x} PDO {pdo}"
                ));
            }
            Ok((OutPdu::Resp(resp.cqe), plen))
        }
        Pdu::R2t(r2t) => {
            if plen != hlen + hd || pflags & !flags::HDGSTF != 0 {
                return Err(format!("R2T PLEN {plen} flags {pflags:#x}"));
            }
            if r2t.r2tl == 0 {
                return Err("R2T for no data".into());
            }
            Ok((
                OutPdu::R2t {
                    cccid: r2t.cccid,
                    ttag: r2t.ttag,
                    r2to: r2t.r2to,
                    r2tl: r2t.r2tl,
                },
                plen,
            ))
        }
        Pdu::C2HData(data) => {
            let datal = data.data.len();
            let want_pdo = Framing {
                digests,
                pda: ic.hpda,
            }
            .data_offset(hlen + hd);
            let dd = digests.data_len(datal);
            let known = flags::HDGSTF | flags::DDGSTF | flags::LAST_PDU | flags::SUCCESS;
            if pdo != want_pdo
                || plen != pdo + datal + dd
                || (pflags & flags::DDGSTF != 0) != (dd > 0)
                || !data.last
                || pflags & !known != 0
                || data.datao != 0
            {
                return Err(format!(
                    "C2HData PDO {pdo} (want {want_pdo}) PLEN {plen} DATAL {datal} flags {pflags:#x} DATAO {}",
                    data.datao
                ));
            }
            if !view.data_digest_ok() {
                return Err("C2HData with a wrong data digest".into());
            }
            Ok((
                OutPdu::Data {
                    cccid: data.cccid,
                    data: data.data.to_vec(),
                    success: data.success,
                },
                plen,
            ))
        }
        other => Err(format!("unexpected {other:?}")),
    }
}

impl World<'_> {
    /// After each call into connection `c`: check what it queued, settle the PDUs it
    /// consumed, then apply what it sent to the host's model.
    fn after_call(
        &mut self,
        c: usize,
        fresh: &[u8],
        qid: Option<u16>,
        flow: Flow,
        terminating: bool,
    ) {
        let mut parsed = Vec::new();
        let mut at = 0;
        while at < fresh.len() {
            let conn = &self.conns[c];
            match check_pdu(&fresh[at..], &conn.out, &conn.first) {
                Ok((pdu, len)) => {
                    at += len;
                    let conn = &mut self.conns[c];
                    conn.out.checked += len;
                    match &pdu {
                        OutPdu::IcResp(ic) => conn.out.icresp = Some(*ic),
                        OutPdu::Term { .. } => conn.out.term = true,
                        OutPdu::Resp(_) | OutPdu::Data { success: true, .. } => {
                            conn.out.unread.push_back(conn.out.checked);
                        }
                        _ => {}
                    }
                    parsed.push(pdu);
                }
                Err(why) => panic!("conn {c}: malformed output at byte {at}: {why}"),
            }
        }
        if terminating {
            assert!(
                self.conns[c].out.term,
                "conn {c}: terminating without a C2HTermReq"
            );
        }
        self.settle(c);
        for pdu in parsed {
            self.trace.log(|| match &pdu {
                OutPdu::Data {
                    cccid,
                    data,
                    success,
                } => format!(
                    "conn {c}: <- Data {{ cccid: {cccid}, {} bytes, success: {success} }}",
                    data.len()
                ),
                pdu => format!("conn {c}: <- {pdu:?}"),
            });
            self.apply(c, pdu, qid);
        }
        // A queue that outlived its controller closes without a word, whatever comes.
        let stale_close = flow == Flow::Close && self.io_queue_dead(c) != Some(false);
        let conn = &mut self.conns[c];
        if conn.out.term {
            conn.terminated = true;
        }
        if self.clean {
            // A PDU that must end the connection was taken in without a word.
            if let Some(p) = conn
                .pdus
                .iter()
                .find(|p| p.end <= conn.consumed && p.term.is_some())
            {
                assert!(
                    conn.terminated || stale_close,
                    "conn {c}: the PDU at {} was accepted but must be refused (FES {:#x?})",
                    p.start,
                    p.term
                );
            }
            if conn.pdus.iter().any(|p| p.end <= conn.consumed && p.closes) {
                assert_eq!(flow, Flow::Close, "conn {c}: H2CTermReq did not close");
            }
        }
        conn.pdus.retain(|p| p.end > conn.consumed);
    }

    /// The target consumed some PDUs: decide what their commands must do now, in the state
    /// the target saw them in.
    fn settle(&mut self, c: usize) {
        let conn = &self.conns[c];
        let settled: Vec<TxPdu> = conn
            .pdus
            .iter()
            .filter(|p| p.end <= conn.consumed && (p.cid.is_some() || p.data_for.is_some()))
            .cloned()
            .collect();
        for p in settled {
            if let Some(cid) = p.cid {
                let expect = self.expectation(c, cid);
                if let Some(pending) = self.conns[c].host.pending.get_mut(&cid) {
                    if pending.expect == Expect::Later {
                        pending.expect = expect;
                    }
                }
            }
            if let Some(cid) = p.data_for {
                // Data that arrives for a queue that is no longer live must not be used.
                if self.clean && self.io_queue_dead(c) == Some(true) {
                    if let Some(pending) = self.conns[c].host.pending.get_mut(&cid) {
                        pending.expect = Expect::Dead;
                    }
                }
            }
        }
    }

    /// Whether connection `c`'s I/O queue is dead as far as the host knows.
    fn io_queue_dead(&self, c: usize) -> Option<bool> {
        let ready = self.conns[c].host.ready?;
        if ready.qid == 0 {
            return Some(false);
        }
        let ctrl = self.ctrls.get(&ready.cntlid)?;
        if ctrl.unknown {
            return None;
        }
        Some(ctrl.gone || ctrl.generation != ready.generation)
    }

    /// What command `cid` of connection `c` must do, decided as the target consumes it.
    fn expectation(&self, c: usize, cid: u16) -> Expect {
        let conn = &self.conns[c];
        let Some(p) = conn.host.pending.get(&cid) else {
            return Expect::Any;
        };
        if !self.clean || p.pipelined {
            return Expect::Any;
        }
        let ok = Expect::Is(Status::SUCCESS);
        let seq = Status::COMMAND_SEQUENCE_ERROR;
        let invalid_params = Expect::Is(Status::CONNECT_INVALID_PARAMETERS);
        if let Cmd::Connect {
            qid, cntlid, fault, ..
        } = &p.cmd
        {
            if conn.host.ready.is_some() {
                return Expect::Is(seq);
            }
            return match fault {
                Some(ConnectFault::DataDigest) => Expect::Is(Status::TRANSIENT_TRANSPORT_ERROR),
                Some(ConnectFault::Recfmt) => Expect::Is(Status::CONNECT_INCOMPATIBLE_FORMAT),
                Some(ConnectFault::Hostnqn) if *qid == 0 => Expect::Any,
                Some(ConnectFault::Qid) => Expect::Any,
                Some(_) => invalid_params,
                None if *qid == 0 => ok,
                None => match self.ctrls.get(&(false, *cntlid)) {
                    Some(m) if m.unknown => Expect::Any,
                    Some(m) if m.gone || !m.enabled => invalid_params,
                    Some(m) if m.qids.contains(qid) => Expect::Any,
                    Some(_) => ok,
                    None => Expect::Any,
                },
            };
        }
        let Some(ready) = conn.host.ready else {
            return Expect::Is(seq);
        };
        let Some(ctrl) = self.ctrls.get(&ready.cntlid) else {
            return Expect::Any;
        };
        if ctrl.unknown {
            return Expect::Any;
        }
        if ready.qid != 0 {
            if ctrl.gone || ctrl.generation != ready.generation {
                return Expect::Dead;
            }
            if p.digest_bad {
                return Expect::Is(Status::TRANSIENT_TRANSPORT_ERROR);
            }
            return match &p.cmd {
                Cmd::Disconnect => ok,
                Cmd::Io(io) => self.io_expectation(io),
                _ => Expect::Any,
            };
        }
        if p.digest_bad {
            return Expect::Is(Status::TRANSIENT_TRANSPORT_ERROR);
        }
        let enabled = ctrl.enabled;
        let gated = |e: Expect| if enabled { e } else { Expect::Is(seq) };
        match &p.cmd {
            Cmd::PropertySetCc(_) | Cmd::Disconnect => ok,
            Cmd::PropertyGet { valid: true } => ok,
            Cmd::ConnectAgain => Expect::Is(seq),
            Cmd::Identify { .. } | Cmd::KeepAlive => gated(ok),
            Cmd::UnknownAdmin if enabled => Expect::Is(Status::INVALID_OPCODE),
            Cmd::UnknownAdmin => Expect::OneOf(vec![Status::INVALID_OPCODE, seq]),
            Cmd::GetLog {
                valid_lid,
                byte_len,
                sgl,
                offset,
            } => {
                let valid = *valid_lid
                    && *byte_len <= u64::from(*sgl)
                    && *byte_len <= u64::from(self.limits.max_io_size)
                    && offset % 4 == 0;
                gated(if valid {
                    ok
                } else {
                    Expect::Is(Status::INVALID_FIELD)
                })
            }
            _ => Expect::Any,
        }
    }

    fn io_expectation(&self, io: &IoCmd) -> Expect {
        let status = |s: Status| Expect::Is(s);
        match io.fault {
            Some(IoFault::BadNsid) => return status(Status::INVALID_NAMESPACE),
            Some(IoFault::Fuse) => return status(Status::INVALID_FIELD),
            _ => {}
        }
        let known = matches!(
            io.opc,
            io::READ
                | io::WRITE
                | io::COMPARE
                | io::FLUSH
                | io::WRITE_ZEROES
                | io::DATASET_MANAGEMENT
        );
        if !known {
            return status(Status::INVALID_OPCODE);
        }
        if io.nsid == RO_NSID && !self.nsid2 {
            return status(Status::INVALID_NAMESPACE);
        }
        let writes = matches!(
            io.opc,
            io::WRITE | io::WRITE_ZEROES | io::DATASET_MANAGEMENT
        );
        if io.nsid == RO_NSID && writes {
            return status(NS_WRITE_PROTECTED);
        }
        match io.fault {
            // Without Deallocate the ranges are not even read.
            Some(IoFault::DsmRange) if !io.dealloc => status(Status::SUCCESS),
            Some(IoFault::OutOfRange | IoFault::DsmRange) => status(Status::LBA_OUT_OF_RANGE),
            Some(IoFault::TooLong) => status(Status::INVALID_FIELD),
            Some(IoFault::SglShort | IoFault::IcdShort) => status(Status::DATA_SGL_LENGTH_INVALID),
            Some(IoFault::BadSglType) => status(Status::SGL_DESCRIPTOR_TYPE_INVALID),
            Some(IoFault::SglOffset) => status(Status::INVALID_SGL_OFFSET),
            _ if io.opc == io::COMPARE => Expect::Compare,
            _ => status(Status::SUCCESS),
        }
    }

    /// Applies one checked PDU from the target to the host's model.
    fn apply(&mut self, c: usize, pdu: OutPdu, qid: Option<u16>) {
        let clean = self.clean;
        match pdu {
            OutPdu::IcResp(_) => {}
            OutPdu::Term { fes } => {
                count(match fes {
                    1 => "C2HTermReq invalid header field",
                    2 => "C2HTermReq PDU sequence error",
                    3 => "C2HTermReq header digest",
                    4 => "C2HTermReq data out of range",
                    5 => "C2HTermReq data limit exceeded",
                    _ => "C2HTermReq other",
                });
                if !clean {
                    return;
                }
                let conn = &self.conns[c];
                let at = conn.consumed;
                // The PDU the parser refused starts where consumption stopped; one refused
                // after parsing ends there.
                let culprits: Vec<&TxPdu> = conn
                    .pdus
                    .iter()
                    .filter(|p| p.start == at || p.end == at)
                    .collect();
                let explained = culprits.iter().any(|p| p.mutated || p.term == Some(fes));
                assert!(
                    explained,
                    "conn {c}: C2HTermReq FES {fes:#x} at byte {at} of the host's stream, \
                     where the PDUs expect {:?}",
                    culprits.iter().map(|p| p.term).collect::<Vec<_>>()
                );
            }
            OutPdu::R2t {
                cccid,
                ttag,
                r2to,
                r2tl,
            } => {
                count("R2T");
                let conn = &mut self.conns[c];
                if clean {
                    let Some(p) = conn.host.pending.get(&cccid) else {
                        panic!("conn {c}: R2T for cid {cccid}, which is not outstanding");
                    };
                    let want = match &p.cmd {
                        Cmd::Io(io)
                            if matches!(
                                io.opc,
                                io::WRITE | io::COMPARE | io::DATASET_MANAGEMENT
                            ) =>
                        {
                            Some(io.data.len())
                        }
                        Cmd::Io(_) => panic!("conn {c}: R2T for cid {cccid}, which sends no data"),
                        _ => None,
                    };
                    if let Some(len) = want {
                        assert_eq!(
                            (r2to, r2tl as usize),
                            (0, len),
                            "conn {c}: R2T for cid {cccid} asks for the wrong range"
                        );
                    }
                    assert!(
                        p.expect != Expect::Dead,
                        "conn {c}: R2T on a queue that is no longer live"
                    );
                }
                conn.host.r2ts.push(R2tAsk {
                    cid: cccid,
                    ttag,
                    r2to,
                    r2tl,
                    next: 0,
                });
            }
            OutPdu::Data {
                cccid,
                data,
                success,
            } => {
                if clean {
                    self.check_data(c, cccid, &data, success);
                }
                if success {
                    let cqe = Cqe {
                        cid: cccid,
                        sqid: qid.unwrap_or(0),
                        ..Cqe::default()
                    };
                    self.complete(c, cqe, true);
                }
            }
            OutPdu::Resp(cqe) => self.complete(c, cqe, false),
        }
    }

    /// C2HData for command `cid`: the right command, not more than it asked for, and for
    /// reads of namespace 1 what the host knows is there.
    fn check_data(&mut self, c: usize, cid: u16, data: &[u8], success: bool) {
        let flow_disabled = self.conns[c].host.flow_disabled;
        if success {
            assert!(
                self.c2h_success && flow_disabled,
                "conn {c}: C2HData SUCCESS without SQ flow control disabled"
            );
        }
        let Some(p) = self.conns[c].host.pending.get_mut(&cid) else {
            panic!("conn {c}: C2HData for cid {cid}, which is not outstanding");
        };
        assert!(p.expect != Expect::Dead, "conn {c}: data from a dead queue");
        p.data += data.len();
        let (total, cmd) = (p.data, p.cmd.clone());
        match cmd {
            Cmd::Io(io) => {
                assert_eq!(
                    io.opc,
                    io::READ,
                    "conn {c}: C2HData for opcode {:#x}",
                    io.opc
                );
                assert_eq!(
                    total as u64, io.len,
                    "conn {c}: read of {} bytes sent {total}",
                    io.len
                );
                count("reads checked against the shadow");
                if io.nsid == RO_NSID || io.nsid == NULL_NSID {
                    assert!(
                        data.iter().all(|&b| b == 0),
                        "conn {c}: namespace {} is not zero",
                        io.nsid
                    );
                } else if let Some(at) = self.shadow.mismatch(io.offset, data) {
                    panic!(
                        "conn {c}: read cid {cid} at byte {} got {:#04x}, the host wrote {:#04x}",
                        io.offset + at as u64,
                        data[at],
                        self.shadow.data[usize::try_from(io.offset).unwrap_or(0) + at]
                    );
                }
            }
            Cmd::Identify { sgl } => {
                assert!(
                    total <= (sgl as usize).min(4096),
                    "conn {c}: Identify sent {total} bytes"
                );
            }
            Cmd::GetLog { byte_len, sgl, .. } => {
                assert!(
                    total as u64 <= byte_len.min(u64::from(sgl)),
                    "conn {c}: Get Log Page of {byte_len} sent {total} bytes"
                );
            }
            _ => {}
        }
    }

    /// A completion for `cqe.cid`: check it against the model and apply its effects.
    fn complete(&mut self, c: usize, cqe: Cqe, by_data: bool) {
        let clean = self.clean;
        let conn = &mut self.conns[c];
        let conn_qid = conn.host.ready.map(|r| r.qid);
        let Some(p) = conn.host.pending.remove(&cqe.cid) else {
            assert!(
                !clean,
                "conn {c}: completion for cid {}, which is not outstanding",
                cqe.cid
            );
            return;
        };
        if conn.host.blocking == Some(cqe.cid) {
            conn.host.blocking = None;
        }
        conn.host.r2ts.retain(|r| r.cid != cqe.cid);
        let status = cqe.status;
        let ok = status.is_success();
        if clean {
            let same = |s: &Status| (s.sct, s.sc) == (status.sct, status.sc);
            let compare = match &p.cmd {
                Cmd::Io(io) if io.opc != io::COMPARE => None,
                Cmd::Io(io) if io.nsid == RO_NSID || io.nsid == NULL_NSID => {
                    Some(io.data.iter().all(|&b| b == 0))
                }
                Cmd::Io(io) => self.shadow.equals(io.offset, &io.data),
                _ => None,
            };
            let expect = match (&p.expect, p.digest_bad) {
                (Expect::Dead, _) => Expect::Dead,
                (Expect::Any | Expect::Later, _) => Expect::Any,
                (_, true) => Expect::Is(Status::TRANSIENT_TRANSPORT_ERROR),
                (Expect::Compare, false) => match compare {
                    Some(true) => Expect::Is(Status::SUCCESS),
                    Some(false) => Expect::Is(Status::COMPARE_FAILURE),
                    None => Expect::OneOf(vec![Status::SUCCESS, Status::COMPARE_FAILURE]),
                },
                (e, false) => e.clone(),
            };
            let fine = match &expect {
                Expect::Dead => false,
                Expect::Any | Expect::Later | Expect::Compare => true,
                Expect::Is(s) => same(s),
                Expect::OneOf(list) => list.iter().any(same),
            };
            if matches!(expect, Expect::Is(_) | Expect::OneOf(_)) {
                count(if ok {
                    "predicted successes"
                } else {
                    "predicted errors"
                });
            }
            assert!(
                fine,
                "conn {c}: cid {} ({:?}) completed with {status} (sct {:#x} sc {:#x}), expected {expect:?}",
                cqe.cid, p.cmd, status.sct, status.sc
            );
            // SQID names the queue the command came in on (0 before Connect succeeds).
            let sqid = match &p.cmd {
                Cmd::Connect { qid, .. } if ok => Some(*qid),
                Cmd::Connect { .. } => Some(0),
                _ if p.pipelined => None,
                _ => conn_qid,
            };
            if let (false, Some(want)) = (by_data, sqid) {
                assert_eq!(
                    cqe.sqid, want,
                    "conn {c}: cid {} completed with SQID {}",
                    cqe.cid, cqe.sqid
                );
            }
            // SQHD: 0xFFFF once the host disabled SQ flow control, else a slot of the queue.
            if !by_data && !p.pipelined && !matches!(p.cmd, Cmd::Connect { .. }) {
                let host = &self.conns[c].host;
                if host.flow_disabled {
                    assert_eq!(cqe.sqhd, 0xFFFF, "conn {c}: SQHD without SQ flow control");
                } else {
                    assert!(
                        cqe.sqhd <= host.sqsize,
                        "conn {c}: SQHD {} in a queue of {}",
                        cqe.sqhd,
                        u32::from(host.sqsize) + 1
                    );
                }
            }
            if p.data > 0 && !ok {
                panic!(
                    "conn {c}: cid {} sent data and then failed with {status}",
                    cqe.cid
                );
            }
            let want_data = match &p.cmd {
                Cmd::Io(io) if io.opc == io::READ => Some(io.len),
                Cmd::Identify { sgl } => Some(u64::from(*sgl).min(4096)),
                Cmd::GetLog { byte_len, .. } => Some(*byte_len),
                _ => None,
            };
            if let (true, Some(want)) = (ok && p.expect != Expect::Any, want_data) {
                assert_eq!(
                    p.data as u64, want,
                    "conn {c}: cid {} sent {} bytes of data",
                    cqe.cid, p.data
                );
            }
        }
        self.effects(c, &p, &cqe);
    }

    /// What a successful command changes in the model.
    fn effects(&mut self, c: usize, p: &Pending, cqe: &Cqe) {
        let ok = cqe.status.is_success();
        if ok && matches!(p.cmd, Cmd::Aer) {
            count("AERs completed");
        }
        match &p.cmd {
            Cmd::Connect {
                qid,
                sqsize,
                flow_disabled,
                hostnqn,
                ..
            } => {
                let host = &mut self.conns[c].host;
                if !ok {
                    // The target keeps waiting for a Connect; the host may try again.
                    host.connect_sent = false;
                    return;
                }
                count(match host.role {
                    Role::Io => "I/O queues connected",
                    Role::Admin => "admin queues connected",
                    Role::Discovery => "discovery queues connected",
                });
                let cntlid = u16::try_from(cqe.dw0 & 0xFFFF).unwrap_or(0);
                host.sqsize = *sqsize;
                host.flow_disabled = *flow_disabled;
                let generation = match host.role {
                    Role::Io => {
                        let model = self.ctrls.get_mut(&(false, cntlid));
                        match model {
                            Some(m) => {
                                m.qids.push(*qid);
                                m.generation
                            }
                            None => 0,
                        }
                    }
                    role => {
                        self.ctrls.insert(
                            (role == Role::Discovery, cntlid),
                            CtrlModel {
                                cc: 0,
                                enabled: false,
                                unknown: !self.clean,
                                generation: 0,
                                gone: false,
                                discovery: role == Role::Discovery,
                                hostnqn: hostnqn.clone(),
                                qids: Vec::new(),
                            },
                        );
                        0
                    }
                };
                let discovery = self.conns[c].host.role == Role::Discovery;
                self.conns[c].host.ready = Some(Ready {
                    qid: *qid,
                    cntlid: (discovery, cntlid),
                    generation,
                });
            }
            Cmd::PropertySetCc(value) if ok => {
                if *value == CC_ENABLE {
                    count("CC.EN = 1");
                }
                if let Some(ready) = self.conns[c].host.ready {
                    if let Some(m) = self.ctrls.get_mut(&ready.cntlid) {
                        m.set_cc(*value);
                    }
                }
            }
            Cmd::Io(io) if ok && io.nsid == 1 && self.clean => match io.opc {
                io::WRITE => {
                    count("writes into the shadow");
                    self.shadow.write(io.offset, &io.data);
                }
                io::WRITE_ZEROES => self.shadow.zero(io.offset, io.len),
                io::DATASET_MANAGEMENT if io.dealloc => {
                    for &(offset, len) in &io.ranges {
                        self.shadow.zero(offset, len);
                    }
                }
                _ => {}
            },
            Cmd::Any if ok && self.conns[c].host.ready.is_some_and(|r| r.qid != 0) => {
                // A random I/O command may have written anything anywhere.
                if !self.clean {
                    return;
                }
                let len = self.shadow.data.len() as u64;
                self.shadow.forget(0, len);
            }
            _ => {}
        }
    }
}

fn qpair_qid(conn: &Conn) -> Option<u16> {
    conn.qpair.as_ref().and_then(TcpQpair::qid)
}
