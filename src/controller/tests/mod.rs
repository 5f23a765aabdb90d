//! Controller tests: Connect flows, the property state machine, identify pages, features, log
//! pages, discovery, AER and I/O validation, all driven in memory with plain values.

mod connect;
mod discovery;
mod events;
mod features;
mod identify;
mod io_commands;
mod logs;
mod properties;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::backend::{Backend, IoDone, IoKind, IoRequest, SubmitCx};
use crate::nvme::connect::{CATTR_DISABLE_SQ_FLOW_CONTROL, ConnectCmd, ConnectData};
use crate::nvme::features::fid;
use crate::nvme::identify::{IdentifyController, IdentifyNamespace, NsDescriptor};
use crate::nvme::log::{DiscoveryLogEntry, DiscoveryLogHeader, GetLogPageCmd, lid};
use crate::nvme::opcode::{FABRICS, admin, fctype, io};
use crate::nvme::properties::{PropertyCmd, PropertySize, offset};
use crate::nvme::{Cqe, DISCOVERY_NQN, Nsid, Sgl, Sqe, Status};

const SUB_A: &str = "nqn.2024-01.io.test:a";
const SUB_B: &str = "nqn.2024-01.io.test:b";
const HOST_1: &str = "nqn.2014-08.org.nvmexpress:uuid:host-1";
const HOST_2: &str = "nqn.2014-08.org.nvmexpress:uuid:host-2";

/// Unit-test scaffolding: a backend that records what it is asked to do.
#[derive(Debug)]
struct TestBackend {
    size: u64,
    vwc: bool,
    calls: Mutex<Vec<IoKind>>,
}

impl Backend for TestBackend {
    fn size(&self) -> u64 {
        self.size
    }
    fn volatile_write_cache(&self) -> bool {
        self.vwc
    }
    fn submit(&self, token: u64, req: IoRequest, _c: &mut SubmitCx<'_>) -> Option<IoDone> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(req.kind);
        Some(IoDone {
            token,
            result: Ok(()),
            buf: req.buf,
        })
    }
}

fn backend(size: u64) -> Arc<dyn Backend> {
    Arc::new(TestBackend {
        size,
        vwc: true,
        calls: Mutex::new(Vec::new()),
    })
}

/// The calls as a fabrics transport makes them: the data buffer is what the SGL describes.
trait ViaSgl {
    fn prepare_io_sgl(&self, sqe: &Sqe) -> Result<IoPlan, Status>;
    fn handle_admin_sgl(&self, sqe: &Sqe, data: &[u8], now: Instant) -> AdminOutcome;
    fn admin_host_data_len_sgl(&self, sqe: &Sqe) -> Result<usize, Status>;
}

impl ViaSgl for Controller {
    fn prepare_io_sgl(&self, sqe: &Sqe) -> Result<IoPlan, Status> {
        self.prepare_io(sqe, sqe.sgl().length)
    }

    fn handle_admin_sgl(&self, sqe: &Sqe, data: &[u8], now: Instant) -> AdminOutcome {
        self.handle_admin(sqe, data, sqe.sgl().length, now)
    }

    fn admin_host_data_len_sgl(&self, sqe: &Sqe) -> Result<usize, Status> {
        self.admin_host_data_len(sqe, sqe.sgl().length)
    }
}

fn listener(port: &str) -> ListenerAddr {
    ListenerAddr::Tcp(format!("127.0.0.1:{port}").parse().expect("socket address"))
}

fn ns(nsid: u32, blocks: u64, read_only: bool) -> NamespaceSpec {
    NamespaceSpec {
        nsid: Nsid(nsid),
        backend: backend(blocks * 4096),
        block_size: 4096,
        read_only,
        uuid: None,
        nguid: None,
        eui64: None,
    }
}

fn limits() -> TransportLimits {
    TransportLimits {
        max_queue_depth: 128,
        max_aq_depth: 32,
        max_io_qpairs_per_ctrlr: 4,
        in_capsule_data_size: 16384,
        max_io_size: 131_072,
    }
}

fn registry() -> Registry {
    let a = SubsystemSpec {
        nqn: SUB_A.into(),
        serial: "409e3a72bacb4f7c2983".into(),
        model: "nvmf-tgt".into(),
        allow_any_host: false,
        hosts: vec![HOST_1.into()],
        max_namespaces: 1024,
        namespaces: vec![ns(1, 65536, false), ns(3, 16, true)],
        listeners: vec![listener("4420")],
    };
    let b = SubsystemSpec {
        nqn: SUB_B.into(),
        serial: "SNB".into(),
        model: "nvmf-tgt".into(),
        allow_any_host: true,
        hosts: vec![],
        max_namespaces: 32,
        namespaces: vec![ns(1, 8, false)],
        listeners: vec![listener("4420"), listener("4421")],
    };
    Registry::new(vec![a, b], limits()).expect("valid registry")
}

fn connect_sqe(qid: u16, sqsize: u16, kato: u32) -> Sqe {
    let mut sqe = Sqe::new(FABRICS, 0x10);
    sqe.set_fctype(fctype::CONNECT);
    ConnectCmd {
        recfmt: 0,
        qid,
        sqsize,
        cattr: 0,
        kato,
    }
    .emit(&mut sqe);
    sqe
}

fn connect_data(subnqn: &str, hostnqn: &str, cntlid: u16) -> Vec<u8> {
    ConnectData {
        hostid: [0x42; 16],
        cntlid,
        subnqn: subnqn.into(),
        hostnqn: hostnqn.into(),
    }
    .to_vec()
}

fn refused(outcome: ConnectOutcome) -> Cqe {
    match outcome {
        ConnectOutcome::Refused(cqe) => cqe,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

struct Bench {
    reg: Registry,
    now: Instant,
}

impl Bench {
    fn new() -> Self {
        Self {
            reg: registry(),
            now: Instant::now(),
        }
    }

    fn connect_admin_on(&self, sub: &str, host: &str, port: &str) -> Arc<Controller> {
        let out = self.reg.handle_connect(
            &connect_sqe(0, 31, 5000),
            &connect_data(sub, host, 0xFFFF),
            &listener(port),
            self.now,
        );
        match out {
            ConnectOutcome::Admin { ctrlr, cqe } => {
                assert_eq!(cqe.status, Status::SUCCESS);
                assert_eq!(cqe.dw0, u32::from(ctrlr.cntlid().0));
                assert_eq!(cqe.cid, 0x10);
                ctrlr
            }
            other => panic!("admin connect failed: {other:?}"),
        }
    }

    fn connect_admin(&self, sub: &str, host: &str) -> Arc<Controller> {
        self.connect_admin_on(sub, host, "4420")
    }

    fn connect_io(&self, ctrlr: &Controller, qid: u16, sqsize: u16) -> ConnectOutcome {
        self.reg.handle_connect(
            &connect_sqe(qid, sqsize, 0),
            &connect_data(ctrlr.subnqn(), ctrlr.hostnqn(), ctrlr.cntlid().0),
            &listener("4420"),
            self.now,
        )
    }

    /// Connects I/O queue `qid` and returns its epoch; panics if refused.
    fn attach(&self, ctrlr: &Controller, qid: u16) -> QueueEpoch {
        match self.connect_io(ctrlr, qid, 31) {
            ConnectOutcome::Io { epoch, .. } => epoch,
            other => panic!("io connect of qid {qid} failed: {other:?}"),
        }
    }

    /// An enabled controller, as a host has it after Connect and CC.EN = 1.
    fn ready(&self, sub: &str, host: &str) -> Arc<Controller> {
        let ctrlr = self.connect_admin(sub, host);
        let cqe = prop_set(&ctrlr, offset::CC, 0x0046_0001, self.now);
        assert_eq!(cqe.status, Status::SUCCESS);
        assert_eq!(prop_get(&ctrlr, offset::CSTS, false, self.now).dw0 & 1, 1);
        ctrlr
    }
}

fn prop_get(ctrlr: &Controller, off: u32, eight: bool, now: Instant) -> Cqe {
    let mut sqe = Sqe::new(FABRICS, 1);
    sqe.set_fctype(fctype::PROPERTY_GET);
    PropertyCmd {
        size: if eight {
            PropertySize::Eight
        } else {
            PropertySize::Four
        },
        offset: off,
        value: 0,
    }
    .emit(&mut sqe);
    complete(ctrlr.handle_admin_sgl(&sqe, &[], now)).0
}

fn prop_set(ctrlr: &Controller, off: u32, value: u64, now: Instant) -> Cqe {
    let mut sqe = Sqe::new(FABRICS, 2);
    sqe.set_fctype(fctype::PROPERTY_SET);
    PropertyCmd {
        size: PropertySize::Four,
        offset: off,
        value,
    }
    .emit(&mut sqe);
    complete(ctrlr.handle_admin_sgl(&sqe, &[], now)).0
}

fn complete(outcome: AdminOutcome) -> (Cqe, Vec<u8>) {
    match outcome {
        AdminOutcome::Complete {
            cqe,
            mut data,
            zeroes,
        } => {
            data.resize(data.len() + zeroes, 0);
            (cqe, data)
        }
        AdminOutcome::Deferred => panic!("unexpectedly deferred"),
        AdminOutcome::Queue { .. } => panic!("a queue request from a fabrics controller"),
    }
}

fn admin_cmd(opcode: u8, nsid: u32, cdw10: u32, cdw11: u32, len: u32) -> Sqe {
    let mut sqe = Sqe::new(opcode, 7);
    sqe.set_nsid(nsid)
        .set_cdw(10, cdw10)
        .set_cdw(11, cdw11)
        .set_sgl(Sgl::transport(len));
    sqe
}

fn run(ctrlr: &Controller, sqe: &Sqe) -> (Cqe, Vec<u8>) {
    complete(ctrlr.handle_admin_sgl(sqe, &[], Instant::now()))
}

fn identify(ctrlr: &Controller, cns: u8, nsid: u32) -> (Cqe, Vec<u8>) {
    run(
        ctrlr,
        &admin_cmd(admin::IDENTIFY, nsid, u32::from(cns), 0, 4096),
    )
}

fn get_log(ctrlr: &Controller, lid: u8, len: u64, offset: u64, rae: bool) -> (Cqe, Vec<u8>) {
    let mut sqe = admin_cmd(admin::GET_LOG_PAGE, 0xFFFF_FFFF, 0, 0, 1 << 20);
    GetLogPageCmd {
        lid,
        lsp: 0,
        rae,
        numd: u32::try_from(len / 4 - 1).expect("small"),
        offset,
    }
    .emit(&mut sqe);
    run(ctrlr, &sqe)
}

fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn io_cmd(opcode: u8, nsid: u32, slba: u64, nlb0: u16, len: u32) -> Sqe {
    let mut sqe = Sqe::new(opcode, 9);
    let s = slba.to_le_bytes();
    sqe.set_nsid(nsid)
        .set_cdw(10, u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .set_cdw(11, u32::from_le_bytes([s[4], s[5], s[6], s[7]]))
        .set_cdw(12, u32::from(nlb0))
        .set_sgl(Sgl::transport(len));
    sqe
}

fn read_cmd(nsid: u32, slba: u64, nlb0: u16, len: u32) -> Sqe {
    io_cmd(io::READ, nsid, slba, nlb0, len)
}

fn write_cmd(nsid: u32, slba: u64, nlb0: u16, len: u32, fua: bool) -> Sqe {
    let mut sqe = io_cmd(io::WRITE, nsid, slba, nlb0, len);
    sqe.set_cdw(12, u32::from(nlb0) | if fua { 1 << 30 } else { 0 });
    sqe
}

fn get_feature(ctrlr: &Controller, fid: u8, sel: u32, cdw11: u32) -> (Cqe, Vec<u8>) {
    run(
        ctrlr,
        &admin_cmd(
            admin::GET_FEATURES,
            0,
            u32::from(fid) | (sel << 8),
            cdw11,
            4096,
        ),
    )
}

fn set_feature(ctrlr: &Controller, fid: u8, cdw11: u32) -> Cqe {
    run(
        ctrlr,
        &admin_cmd(admin::SET_FEATURES, 0, u32::from(fid), cdw11, 0),
    )
    .0
}
