//! Controller tests: Connect flows, the property state machine, identify pages, features, log
//! pages, discovery, AER and I/O validation, all driven in memory with plain values.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::backend::{Backend, Completions, IoDone, IoKind, IoRequest};
use crate::nvme::connect::{CATTR_DISABLE_SQ_FLOW_CONTROL, ConnectCmd, ConnectData};
use crate::nvme::features::fid;
use crate::nvme::identify::{IdentifyController, IdentifyNamespace, NsDescriptor};
use crate::nvme::log::{DiscoveryLogEntry, DiscoveryLogHeader, GetLogPageCmd, lid};
use crate::nvme::opcode::{FABRICS, admin, fctype, io};
use crate::nvme::properties::{PropertyCmd, PropertySize, offset};
use crate::nvme::{Cqe, DISCOVERY_NQN, Sgl, Sqe, Status};

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
    fn submit(&self, token: u64, req: IoRequest, _c: &Completions) -> Option<IoDone> {
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
        nsid,
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
    let mut buf = vec![0u8; 1024];
    ConnectData {
        hostid: [0x42; 16],
        cntlid,
        subnqn: subnqn.into(),
        hostnqn: hostnqn.into(),
    }
    .emit(&mut buf);
    buf
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
                assert_eq!(cqe.dw0, u32::from(ctrlr.cntlid()));
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
            &connect_data(ctrlr.subnqn(), ctrlr.hostnqn(), ctrlr.cntlid()),
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
    let candidates = [
        format!("{}/../shared/fixtures/{name}", env!("CARGO_MANIFEST_DIR")),
        format!("/work/shared/fixtures/{name}"),
    ];
    let text = candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_else(|| panic!("fixture {name} not found in {candidates:?}"));
    serde_json::from_str(&text).expect("fixture is JSON")
}

// ---- Connect ----

#[test]
fn admin_then_io_connect() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    assert_eq!(ctrlr.hostid(), [0x42; 16]);
    assert_eq!(ctrlr.kato(), Some(Duration::from_millis(5000)));
    let mut sqe = connect_sqe(2, 127, 0);
    sqe.bytes_mut()[46] = CATTR_DISABLE_SQ_FLOW_CONTROL;
    let out = b.reg.handle_connect(
        &sqe,
        &connect_data(SUB_A, HOST_1, ctrlr.cntlid()),
        &listener("4420"),
        b.now,
    );
    let epoch = match out {
        ConnectOutcome::Io {
            ctrlr: c,
            qid,
            epoch,
            sqsize,
            cqe,
        } => {
            assert!(Arc::ptr_eq(&c, &ctrlr));
            assert_eq!((qid, sqsize), (2, 127));
            assert_eq!(cqe.status, Status::SUCCESS);
            epoch
        }
        other => panic!("io connect failed: {other:?}"),
    };
    assert!(ctrlr.is_io_queue_live(2, epoch));
    assert!(ctrlr.sq_flow_control_disabled(2));
    assert!(!ctrlr.sq_flow_control_disabled(0));
    // The same qid twice is refused.
    let cqe = refused(b.connect_io(&ctrlr, 2, 127));
    assert_eq!(cqe.status, Status::INVALID_QUEUE_IDENTIFIER.with_dnr());
    // Disconnect on the I/O queue frees it.
    let mut disc = Sqe::new(FABRICS, 3);
    disc.set_fctype(fctype::DISCONNECT);
    assert_eq!(
        ctrlr.handle_io_fabrics(2, epoch, &disc).status,
        Status::SUCCESS
    );
    assert!(!ctrlr.is_io_queue_live(2, epoch));
    let again = b.attach(&ctrlr, 2);
    assert_ne!(again, epoch, "a reconnected qid is a new attachment");
    assert!(ctrlr.is_io_queue_live(2, again));
    assert!(
        !ctrlr.is_io_queue_live(2, epoch),
        "the old attachment stays dead"
    );
    // A late Disconnect or close of the old attachment leaves the new one alone.
    ctrlr.handle_io_fabrics(2, epoch, &disc);
    ctrlr.handle_queue_gone(2, epoch);
    assert!(ctrlr.is_io_queue_live(2, again));
}

#[test]
fn cntlids_are_unique_and_reused_late() {
    let b = Bench::new();
    let c1 = b.connect_admin(SUB_A, HOST_1);
    let c2 = b.connect_admin(SUB_A, HOST_1);
    assert_ne!(c1.cntlid(), c2.cntlid());
    assert!((1..=0xFFEF).contains(&c1.cntlid()));
    let sub = b.reg.subsystem(SUB_A).expect("exists");
    assert_eq!(sub.controllers().len(), 2);
    c1.handle_queue_gone(0, QueueEpoch::ADMIN);
    assert!(!c1.is_live());
    assert_eq!(sub.controllers().len(), 1);
    let c3 = b.connect_admin(SUB_A, HOST_1);
    assert_ne!(c3.cntlid(), c1.cntlid(), "a freed ID is not reused at once");
    // A torn-down controller accepts no I/O queue.
    let cqe = refused(b.connect_io(&c1, 1, 31));
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
}

#[test]
fn wrong_host_and_wrong_listener_are_refused() {
    let b = Bench::new();
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(SUB_A, HOST_2, 0xFFFF),
        &listener("4420"),
        b.now,
    );
    assert_eq!(refused(out).status, Status::CONNECT_INVALID_HOST.with_dnr());
    // SUB_A does not listen on 4421.
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(SUB_A, HOST_1, 0xFFFF),
        &listener("4421"),
        b.now,
    );
    assert_eq!(refused(out).status, Status::CONNECT_INVALID_HOST.with_dnr());
    // Any host may use SUB_B and the discovery subsystem, on any listener.
    b.connect_admin_on(SUB_B, HOST_2, "4421");
    b.connect_admin_on(DISCOVERY_NQN, HOST_2, "9999");
}

#[test]
fn unknown_nqn_and_bad_data_name_the_field() {
    let b = Bench::new();
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data("nqn.2024-01.io.test:nope", HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    );
    let cqe = refused(out);
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    // IATTR 1 (data), IPO 256 (SUBNQN).
    assert_eq!(cqe.dw0, 0x0100_0001);

    let mut data = connect_data(SUB_A, HOST_1, 0xFFFF);
    data[512..768].fill(b'h');
    let cqe =
        refused(
            b.reg
                .handle_connect(&connect_sqe(0, 31, 0), &data, &listener("4420"), b.now),
        );
    assert_eq!(cqe.dw0, 0x0200_0001);

    let mut sqe = connect_sqe(0, 31, 0);
    sqe.bytes_mut()[40] = 1;
    let cqe = refused(b.reg.handle_connect(
        &sqe,
        &connect_data(SUB_A, HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.status, Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr());
}

#[test]
fn io_connect_checks_cntlid_host_and_limits() {
    let b = Bench::new();
    let ctrlr = b.connect_admin(SUB_A, HOST_1);
    // Before CC.EN = 1: SPDK names QID as the invalid parameter.
    let cqe = refused(b.connect_io(&ctrlr, 1, 31));
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(cqe.dw0, 0x002A_0000);
    prop_set(&ctrlr, offset::CC, 0x0046_0001, b.now);

    let bad_cntlid = b.reg.handle_connect(
        &connect_sqe(1, 31, 0),
        &connect_data(SUB_A, HOST_1, ctrlr.cntlid() + 100),
        &listener("4420"),
        b.now,
    );
    let cqe = refused(bad_cntlid);
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(cqe.dw0, 0x0010_0001);

    // Another allowed host cannot hijack the controller.
    let other = Bench {
        reg: Registry::new(
            vec![SubsystemSpec {
                nqn: SUB_A.into(),
                serial: "s".into(),
                model: "m".into(),
                allow_any_host: true,
                hosts: vec![],
                max_namespaces: 1,
                namespaces: vec![],
                listeners: vec![listener("4420")],
            }],
            limits(),
        )
        .expect("valid"),
        now: b.now,
    };
    let c = other.ready(SUB_A, HOST_1);
    let cqe = refused(other.reg.handle_connect(
        &connect_sqe(1, 31, 0),
        &connect_data(SUB_A, HOST_2, c.cntlid()),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.dw0, 0x0200_0001);

    // qid above max_io_qpairs_per_ctrlr (4).
    let cqe = refused(b.connect_io(&ctrlr, 5, 31));
    assert_eq!(cqe.status, Status::INVALID_QUEUE_IDENTIFIER.with_dnr());
    // sqsize 0 and sqsize >= max_queue_depth: IATTR 0, IPO 0x2C.
    for sqsize in [0, 128] {
        let cqe = refused(b.connect_io(&ctrlr, 1, sqsize));
        assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
        assert_eq!(cqe.dw0, 0x002C_0000);
    }
    assert!(matches!(
        b.connect_io(&ctrlr, 4, 127),
        ConnectOutcome::Io { .. }
    ));
    // Only the dynamic model: an admin Connect must ask for controller 0xFFFF.
    let cqe = refused(b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(SUB_A, HOST_1, 1),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.dw0, 0x0010_0001);
    // Admin sqsize must stay below max_aq_depth (32).
    let cqe = refused(b.reg.handle_connect(
        &connect_sqe(0, 32, 0),
        &connect_data(SUB_A, HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.dw0, 0x002C_0000);
}

#[test]
fn registry_rejects_bad_declarations() {
    let spec = |nqn: &str| SubsystemSpec {
        nqn: nqn.into(),
        serial: "s".into(),
        model: "m".into(),
        allow_any_host: true,
        hosts: vec![],
        max_namespaces: 4,
        namespaces: vec![],
        listeners: vec![],
    };
    assert!(matches!(
        Registry::new(vec![spec(SUB_A), spec(SUB_A)], limits()),
        Err(RegistryError::DuplicateSubsystem(_))
    ));
    assert!(matches!(
        Registry::new(vec![spec(DISCOVERY_NQN)], limits()),
        Err(RegistryError::ReservedNqn(_))
    ));
    let mut s = spec(SUB_A);
    s.namespaces = vec![ns(1, 1, false), ns(1, 1, false)];
    assert!(matches!(
        Registry::new(vec![s], limits()),
        Err(RegistryError::BadNamespace { .. })
    ));
    let mut s = spec(SUB_A);
    s.namespaces = vec![ns(5, 1, false)];
    assert!(Registry::new(vec![s], limits()).is_err());
}

// ---- Properties ----

#[test]
fn property_state_machine() {
    let b = Bench::new();
    let ctrlr = b.connect_admin(SUB_A, HOST_1);
    let cap = prop_get(&ctrlr, offset::CAP, true, b.now);
    let cap = u64::from(cap.dw0) | (u64::from(cap.dw1) << 32);
    assert_eq!(cap & 0xFFFF, 127, "MQES = max_queue_depth - 1");
    assert_eq!((cap >> 16) & 1, 1, "CQR");
    assert_eq!((cap >> 24) & 0xFF, 15, "TO");
    assert_eq!((cap >> 37) & 0xFF, 1, "CSS NVM");
    assert_eq!((cap >> 48) & 0xFF, 0, "MPSMIN/MPSMAX 4K");
    // Halves of CAP through 4-byte reads.
    assert_eq!(
        u64::from(prop_get(&ctrlr, offset::CAP, false, b.now).dw0),
        cap & 0xFFFF_FFFF
    );
    assert_eq!(u64::from(prop_get(&ctrlr, 4, false, b.now).dw0), cap >> 32);
    assert_eq!(prop_get(&ctrlr, offset::VS, false, b.now).dw0, 0x0001_0300);
    assert_eq!(prop_get(&ctrlr, offset::AQA, false, b.now).dw0, 0x001F_001F);
    assert_eq!(
        prop_get(&ctrlr, offset::ASQ, true, b.now).status,
        Status::SUCCESS
    );
    // Wrong sizes and offsets.
    let invalid = Status::INVALID_FIELD.with_dnr();
    assert_eq!(prop_get(&ctrlr, offset::VS, true, b.now).status, invalid);
    assert_eq!(prop_get(&ctrlr, 0x40, false, b.now).status, invalid);
    assert_eq!(
        prop_get(&ctrlr, offset::INTMS, false, b.now).status,
        invalid
    );
    assert_eq!(prop_set(&ctrlr, offset::CSTS, 1, b.now).status, invalid);
    assert_eq!(prop_set(&ctrlr, offset::VS, 1, b.now).status, invalid);
    // AQA, ASQ and ACQ read back what was written (halves of ASQ too).
    assert_eq!(
        prop_set(&ctrlr, offset::AQA, 0x000F_0007, b.now).status,
        Status::SUCCESS
    );
    assert_eq!(prop_get(&ctrlr, offset::AQA, false, b.now).dw0, 0x000F_0007);
    assert_eq!(
        prop_set(&ctrlr, offset::AQA, 0x0FFF_0FFF, b.now).status,
        invalid
    );
    prop_set(&ctrlr, offset::ASQ, 0x1000, b.now);
    prop_set(&ctrlr, offset::ASQ + 4, 0x2, b.now);
    let asq = prop_get(&ctrlr, offset::ASQ, true, b.now);
    assert_eq!((asq.dw0, asq.dw1), (0x1000, 0x2));
    assert_eq!(prop_get(&ctrlr, offset::ACQ, true, b.now).dw0, 0);

    // Admin commands before enable are out of sequence.
    let (cqe, _) = identify(&ctrlr, 0x01, 0);
    assert_eq!(cqe.status, Status::COMMAND_SEQUENCE_ERROR.with_dnr());

    // A bad configuration (IOSQES 5) sets CFS, not RDY.
    prop_set(&ctrlr, offset::CC, 0x0045_0001, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0, 0x2);
    prop_set(&ctrlr, offset::CC, 0, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0, 0);

    // Enable.
    prop_set(&ctrlr, offset::CC, 0x0046_0001, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CC, false, b.now).dw0, 0x0046_0001);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0, 0x1);
    let epoch = b.attach(&ctrlr, 1);
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 0, 0, 4096)).is_ok());

    // Reset (EN 1 -> 0): I/O queues die, I/O is refused.
    prop_set(&ctrlr, offset::CC, 0x0046_0000, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0, 0);
    assert!(!ctrlr.is_io_queue_live(1, epoch));
    assert_eq!(
        ctrlr.prepare_io_sgl(&read_cmd(1, 0, 0, 4096)).err(),
        Some(Status::COMMAND_SEQUENCE_ERROR.with_dnr())
    );

    // Enable again, then a normal shutdown: SHST complete, I/O stops.
    prop_set(&ctrlr, offset::CC, 0x0046_0001, b.now);
    let again = b.attach(&ctrlr, 1);
    assert!(ctrlr.is_io_queue_live(1, again) && !ctrlr.is_io_queue_live(1, epoch));
    prop_set(&ctrlr, offset::CC, 0x0046_4001, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0 & 0xC, 0x8);
    assert!(!ctrlr.is_io_queue_live(1, again));
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 0, 0, 4096)).is_err());
    // Clearing SHN clears SHST.
    prop_set(&ctrlr, offset::CC, 0x0046_0000, b.now);
    assert_eq!(prop_get(&ctrlr, offset::CSTS, false, b.now).dw0 & 0xC, 0);
}

#[test]
fn fabrics_misuse() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let mut sqe = Sqe::new(FABRICS, 4);
    sqe.set_fctype(fctype::CONNECT);
    let (cqe, _) = run(&ctrlr, &sqe);
    assert_eq!(cqe.status, Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    sqe.set_fctype(fctype::PROPERTY_GET);
    let epoch = b.attach(&ctrlr, 1);
    assert_eq!(
        ctrlr.handle_io_fabrics(1, epoch, &sqe).status,
        Status::INVALID_QUEUE_TYPE.with_dnr()
    );
    sqe.set_fctype(0x33);
    assert_eq!(
        run(&ctrlr, &sqe).0.status,
        Status::INVALID_OPCODE.with_dnr()
    );
    sqe.set_fctype(fctype::DISCONNECT);
    assert_eq!(run(&ctrlr, &sqe).0.status, Status::SUCCESS);
    // Unknown admin opcode; Create I/O SQ does not exist on fabrics.
    for opc in [0xC5, admin::CREATE_IO_SQ] {
        let (cqe, _) = run(&ctrlr, &admin_cmd(opc, 0, 0, 0, 0));
        assert_eq!(cqe.status, Status::INVALID_OPCODE.with_dnr());
    }
    let (cqe, _) = run(&ctrlr, &admin_cmd(admin::ABORT, 0, 0x0005_0001, 0, 0));
    assert_eq!((cqe.status, cqe.dw0 & 1), (Status::SUCCESS, 1));
}

// ---- Identify ----

#[test]
fn identify_controller_matches_nvmet_where_it_applies() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let (cqe, page) = identify(&ctrlr, 0x01, 0);
    assert_eq!(cqe.status, Status::SUCCESS);
    assert_eq!(page.len(), 4096);
    let id = IdentifyController::parse(&page).expect("4096 bytes");
    let fx = fixture("nvmet-id-ctrl.json");
    let num = |k: &str| fx[k].as_u64().unwrap_or_else(|| panic!("{k} in fixture"));
    assert_eq!(u64::from(id.vid), num("vid"));
    assert_eq!(u64::from(id.ssvid), num("ssvid"));
    assert_eq!(id.sn, fx["sn"].as_str().expect("sn"));
    assert_eq!(u64::from(id.rab), num("rab"));
    assert_eq!(u64::from(id.ver), num("ver"));
    assert_eq!(u64::from(id.ctratt), num("ctratt"));
    assert_eq!(u64::from(id.cntrltype), num("cntrltype"));
    assert_eq!(u64::from(id.acl), num("acl"));
    assert_eq!(u64::from(id.aerl), num("aerl"));
    assert_eq!(u64::from(id.frmw), num("frmw"));
    assert_eq!(u64::from(id.lpa), num("lpa"));
    assert_eq!(u64::from(id.elpe), num("elpe"));
    assert_eq!(u64::from(id.npss), num("npss"));
    assert_eq!(u64::from(id.kas), num("kas"));
    assert_eq!(u64::from(id.sqes), num("sqes"));
    assert_eq!(u64::from(id.cqes), num("cqes"));
    assert_eq!(u64::from(id.nn), num("nn"));
    assert_eq!(u64::from(id.mnan), num("mnan"));
    assert_eq!(u64::from(id.fuses), num("fuses"));
    // nvmet: DSM + Write Zeroes; this target adds Compare.
    assert_eq!(u64::from(id.oncs) & num("oncs"), num("oncs"));
    assert_eq!(u64::from(id.oncs) & 1, 1);
    // OAES: nvmet also reports ANA changes; the namespace attribute notice must match.
    assert_eq!(u64::from(id.oaes) & 0x100, num("oaes") & 0x100);
    // SGLS: nvmet sets supported + offset; this target adds transport data blocks.
    assert_eq!(u64::from(id.sgls) & num("sgls"), num("sgls"));
    // in_capsule_data_size 16384, as nvmet's inline_data_size here.
    assert_eq!(u64::from(id.ioccsz), num("ioccsz"));
    assert_eq!(u64::from(id.iorcsz), num("iorcsz"));
    assert_eq!(u64::from(id.icdoff), num("icdoff"));
    assert_eq!(u64::from(id.fcatt), num("fcatt"));
    assert_eq!(u64::from(id.msdbd), num("msdbd"));
    assert_eq!(u64::from(id.vwc) & 1, num("vwc"));
    let psd = &fx["psds"][0];
    assert_eq!(
        Some(u64::from(id.psd0.max_power)),
        psd["max_power"].as_u64()
    );
    assert_eq!(
        Some(u64::from(id.psd0.entry_lat)),
        psd["entry_lat"].as_u64()
    );
    // Values from this target's configuration.
    assert_eq!(id.subnqn, SUB_A);
    assert_eq!(id.cntlid, ctrlr.cntlid());
    assert_eq!(id.mn, "nvmf-tgt");
    assert_eq!(id.mdts, 5, "128 KiB = 2^5 pages of 4 KiB");
    assert_eq!(id.maxcmd, 128);
    // Truncated to the SGL length.
    let (_, short) = run(&ctrlr, &admin_cmd(admin::IDENTIFY, 0, 1, 0, 100));
    assert_eq!(short.len(), 100);
}

#[test]
fn identify_namespace_and_lists() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let (cqe, page) = identify(&ctrlr, 0x00, 1);
    assert_eq!(cqe.status, Status::SUCCESS);
    let id = IdentifyNamespace::parse(&page).expect("page");
    let fx = fixture("nvmet-id-ns.json");
    assert_eq!(Some(id.nsze), fx["nsze"].as_u64());
    assert_eq!(Some(id.ncap), fx["ncap"].as_u64());
    assert_eq!(Some(id.nuse), fx["nuse"].as_u64());
    assert_eq!(Some(u64::from(id.nlbaf)), fx["nlbaf"].as_u64());
    assert_eq!(Some(u64::from(id.flbas)), fx["flbas"].as_u64());
    assert_eq!(Some(u64::from(id.nmic)), fx["nmic"].as_u64());
    assert_eq!(
        Some(u64::from(id.lbaf0_lbads)),
        fx["lbafs"][0]["ds"].as_u64()
    );
    assert_eq!(id.nsattr, 0);
    // Unlike nvmet's all-zero IDs, these are never zero.
    assert!(id.nguid.iter().any(|&b| b != 0));
    assert!(id.eui64.iter().any(|&b| b != 0));
    let ns1 = b
        .reg
        .subsystem(SUB_A)
        .and_then(|s| s.namespace(1))
        .expect("ns 1");
    assert_eq!(id.nguid, ns1.nguid());

    // Read-only namespace is write protected.
    let (_, page) = identify(&ctrlr, 0x00, 3);
    assert_eq!(IdentifyNamespace::parse(&page).map(|i| i.nsattr), Some(1));
    // Inactive NSID: zeroed page; NSID 0 and broadcast: invalid.
    let (cqe, page) = identify(&ctrlr, 0x00, 2);
    assert_eq!(cqe.status, Status::SUCCESS);
    assert!(page.iter().all(|&b| b == 0));
    for nsid in [0, 0xFFFF_FFFF, 5000] {
        assert_eq!(
            identify(&ctrlr, 0x00, nsid).0.status,
            Status::INVALID_NAMESPACE.with_dnr()
        );
    }

    // Active list: above the given NSID, ascending.
    let (_, page) = identify(&ctrlr, 0x02, 0);
    assert_eq!(&page[..12], &[1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
    let (_, page) = identify(&ctrlr, 0x02, 1);
    assert_eq!(&page[..8], &[3, 0, 0, 0, 0, 0, 0, 0]);

    // Descriptors: EUI-64, NGUID, UUID, CSI, matching the namespace.
    let (_, page) = identify(&ctrlr, 0x03, 1);
    let descs = NsDescriptor::parse_list(&page);
    assert_eq!(descs, ns1.descriptors().to_vec());
    assert_eq!(descs[2], NsDescriptor::Uuid(ns1.uuid()));
    assert_eq!(
        identify(&ctrlr, 0x03, 2).0.status,
        Status::INVALID_NAMESPACE.with_dnr()
    );

    // Other CNS values.
    assert_eq!(identify(&ctrlr, 0x05, 1).0.status, Status::SUCCESS);
    assert_eq!(identify(&ctrlr, 0x06, 0).0.status, Status::SUCCESS);
    let (_, page) = identify(&ctrlr, 0x08, 3);
    assert_eq!((page[1], page[8], page[14]), (1, 1, 1));
    let (_, page) = identify(&ctrlr, 0x1C, 0);
    assert_eq!(page[0], 1);
    assert_eq!(
        identify(&ctrlr, 0x10, 0).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    // CSI other than NVM.
    let (cqe, _) = run(&ctrlr, &admin_cmd(admin::IDENTIFY, 1, 0x05, 2 << 24, 4096));
    assert_eq!(cqe.status, Status::INVALID_FIELD.with_dnr());
}

#[test]
fn configured_ids_are_used_and_derived_ones_differ_per_subsystem() {
    let mut spec = ns(1, 8, false);
    spec.nguid = Some([9; 16]);
    spec.uuid = Some([7; 16]);
    let ns_a = Namespace::new(spec, SUB_A).expect("valid");
    assert_eq!(ns_a.nguid(), [9; 16]);
    assert_eq!(ns_a.uuid(), [7; 16]);
    let b = Bench::new();
    let a1 = b
        .reg
        .subsystem(SUB_A)
        .and_then(|s| s.namespace(1))
        .expect("a/1");
    let b1 = b
        .reg
        .subsystem(SUB_B)
        .and_then(|s| s.namespace(1))
        .expect("b/1");
    assert_ne!(a1.nguid(), b1.nguid());
    assert_ne!(a1.uuid(), b1.uuid());
    assert_ne!(a1.eui64(), b1.eui64());
    // Stable across registries (restarts).
    let again = registry()
        .subsystem(SUB_A)
        .and_then(|s| s.namespace(1))
        .expect("a/1");
    assert_eq!(again.uuid(), a1.uuid());
}

// ---- Features ----

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

#[test]
fn features() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    // Number of Queues: asked 7 (8 queues), max 4 -> 3 (0-based) each.
    let cqe = set_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0x0007_0007);
    assert_eq!((cqe.status, cqe.dw0), (Status::SUCCESS, 0x0003_0003));
    let cqe = set_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0x0001_0001);
    assert_eq!(cqe.dw0, 0x0001_0001);
    assert_eq!(
        get_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0, 0).0.dw0,
        0x0001_0001
    );
    assert_eq!(
        set_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0xFFFF_0000).status,
        Status::INVALID_FIELD.with_dnr()
    );
    // Saving is refused.
    let (cqe, _) = run(
        &ctrlr,
        &admin_cmd(
            admin::SET_FEATURES,
            0,
            (1 << 31) | u32::from(fid::ARBITRATION),
            0,
            0,
        ),
    );
    assert_eq!(cqe.status, Status::FEATURE_ID_NOT_SAVEABLE.with_dnr());
    // Keep Alive Timer.
    assert_eq!(get_feature(&ctrlr, fid::KEEP_ALIVE_TIMER, 0, 0).0.dw0, 5000);
    set_feature(&ctrlr, fid::KEEP_ALIVE_TIMER, 30_000);
    assert_eq!(ctrlr.kato(), Some(Duration::from_secs(30)));
    // Host Identifier: 16 bytes with EXHID, invalid without; cannot be set.
    let (cqe, data) = get_feature(&ctrlr, fid::HOST_IDENTIFIER, 0, 1);
    assert_eq!((cqe.status, data), (Status::SUCCESS, vec![0x42; 16]));
    assert_eq!(
        get_feature(&ctrlr, fid::HOST_IDENTIFIER, 0, 0).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    assert_eq!(
        set_feature(&ctrlr, fid::HOST_IDENTIFIER, 1).status,
        Status::COMMAND_SEQUENCE_ERROR.with_dnr()
    );
    // Stored features read back; defaults and capabilities.
    for (id, value) in [
        (fid::ARBITRATION, 0x0102_0303),
        (fid::ERROR_RECOVERY, 0x0000_0010),
        (fid::WRITE_ATOMICITY, 1),
        (fid::ASYNC_EVENT_CONFIG, 0x0000_0100),
    ] {
        assert_eq!(set_feature(&ctrlr, id, value).status, Status::SUCCESS);
        assert_eq!(
            get_feature(&ctrlr, id, 0, 0).0.dw0,
            value,
            "feature {id:#x}"
        );
    }
    assert_eq!(get_feature(&ctrlr, fid::ARBITRATION, 1, 0).0.dw0, 0);
    assert_eq!(get_feature(&ctrlr, fid::ARBITRATION, 3, 0).0.dw0, 0b100);
    assert_eq!(
        set_feature(&ctrlr, fid::POWER_MANAGEMENT, 1).status,
        Status::INVALID_FIELD.with_dnr()
    );
    assert_eq!(
        set_feature(&ctrlr, fid::POWER_MANAGEMENT, 0).status,
        Status::SUCCESS
    );
    // Temperature threshold: over and under kept apart.
    set_feature(&ctrlr, fid::TEMPERATURE_THRESHOLD, 0x0000_0160);
    set_feature(&ctrlr, fid::TEMPERATURE_THRESHOLD, 0x0010_0100);
    assert_eq!(
        get_feature(&ctrlr, fid::TEMPERATURE_THRESHOLD, 0, 0).0.dw0 & 0xFFFF,
        0x160
    );
    assert_eq!(
        get_feature(&ctrlr, fid::TEMPERATURE_THRESHOLD, 0, 0x0010_0000)
            .0
            .dw0
            & 0xFFFF,
        0x100
    );
    // Volatile write cache: off means writes go out with FUA.
    assert_eq!(
        get_feature(&ctrlr, fid::VOLATILE_WRITE_CACHE, 0, 0).0.dw0,
        1
    );
    set_feature(&ctrlr, fid::VOLATILE_WRITE_CACHE, 0);
    let plan = ctrlr
        .prepare_io_sgl(&write_cmd(1, 0, 0, 4096, false))
        .expect("valid");
    assert_eq!(
        plan.op,
        IoOp::Write {
            offset: 0,
            len: 4096,
            fua: true
        }
    );
    // Unknown feature.
    assert_eq!(
        get_feature(&ctrlr, 0x08, 0, 0).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    // Number of Queues is fixed once I/O queues exist.
    assert!(matches!(
        b.connect_io(&ctrlr, 1, 31),
        ConnectOutcome::Io { .. }
    ));
    assert_eq!(
        set_feature(&ctrlr, fid::NUMBER_OF_QUEUES, 0).status,
        Status::COMMAND_SEQUENCE_ERROR.with_dnr()
    );
}

// ---- Log pages ----

#[test]
fn log_pages_and_offsets() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let (cqe, page) = get_log(&ctrlr, lid::SUPPORTED_LOGS, 1024, 0, false);
    assert_eq!(cqe.status, Status::SUCCESS);
    for id in 0..=5 {
        assert_eq!(page[id * 4], 1, "log {id:#x} supported");
    }
    assert_eq!(page[0x70 * 4], 0);
    let (_, smart) = get_log(&ctrlr, lid::SMART, 512, 0, false);
    assert_eq!((smart.len(), smart[3]), (512, 100));
    let (_, fw) = get_log(&ctrlr, lid::FIRMWARE_SLOT, 512, 0, false);
    assert_eq!(fw[0], 1);
    assert_eq!(
        &fw[8..13],
        env!("CARGO_PKG_VERSION")
            .as_bytes()
            .get(..5)
            .unwrap_or(b"0.1.0")
    );
    let (_, effects) = get_log(&ctrlr, lid::COMMAND_EFFECTS, 4096, 0, false);
    assert_eq!(effects[usize::from(admin::IDENTIFY) * 4], 1);
    assert_eq!(effects[1024 + usize::from(io::WRITE) * 4], 0b11);
    assert_eq!(effects[1024 + usize::from(io::READ) * 4], 0b01);
    let (cqe, err) = get_log(&ctrlr, lid::ERROR, 128, 0, false);
    assert_eq!((cqe.status, err.len()), (Status::SUCCESS, 128));

    // Offset and length: the same bytes as slicing the whole page.
    let (_, part) = get_log(&ctrlr, lid::COMMAND_EFFECTS, 16, 1024 + 4, false);
    assert_eq!(part, effects[1028..1044].to_vec());
    // Past the end of the page: zero padded up to NUMD.
    let (_, tail) = get_log(&ctrlr, lid::SMART, 64, 480, false);
    assert_eq!(tail.len(), 64);
    assert!(tail[32..].iter().all(|&b| b == 0));
    // Wholly beyond the page: zeroes, as SPDK answers.
    let (cqe, beyond) = get_log(&ctrlr, lid::SMART, 8, 1024, false);
    assert_eq!((cqe.status, beyond), (Status::SUCCESS, vec![0; 8]));
    // Unaligned offset: invalid.
    let invalid = Status::INVALID_FIELD.with_dnr();
    assert_eq!(get_log(&ctrlr, lid::SMART, 4, 2, false).0.status, invalid);
    assert_eq!(
        get_log(&ctrlr, 0x70, 16, 0, false).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    // NUMDU counts: 0x1_0001 dwords do not fit a 300-byte buffer.
    let mut sqe = admin_cmd(admin::GET_LOG_PAGE, 0, 0, 0, 300);
    GetLogPageCmd {
        lid: lid::COMMAND_EFFECTS,
        lsp: 0,
        rae: false,
        numd: 0x0001_0000,
        offset: 0,
    }
    .emit(&mut sqe);
    assert_eq!(run(&ctrlr, &sqe).0.status, invalid);
    // NUMDU and the upper offset dword are honoured; but no transfer exceeds MDTS (128 KiB
    // here), however large the buffer the host names.
    let mut sqe = admin_cmd(admin::GET_LOG_PAGE, 0, 0, 0, 1 << 30);
    GetLogPageCmd {
        lid: lid::COMMAND_EFFECTS,
        lsp: 0,
        rae: false,
        numd: 0x0001_0000,
        offset: 1 << 32,
    }
    .emit(&mut sqe);
    assert_eq!(run(&ctrlr, &sqe).0.status, invalid);
    let huge = GetLogPageCmd {
        lid: lid::COMMAND_EFFECTS,
        lsp: 0,
        rae: false,
        numd: (64 << 20) - 1,
        offset: 0,
    };
    huge.emit(&mut sqe);
    assert_eq!(run(&ctrlr, &sqe).0.status, invalid, "256 MiB asked for");
    GetLogPageCmd {
        numd: (128 << 10) / 4 - 1,
        offset: 1 << 32,
        ..huge
    }
    .emit(&mut sqe);
    match ctrlr.handle_admin_sgl(&sqe, &[], b.now) {
        AdminOutcome::Complete { cqe, data, zeroes } => {
            assert_eq!(cqe.status, Status::SUCCESS);
            // Wholly past the page: counted as zeroes, nothing stored.
            assert_eq!((data.len(), zeroes), (0, 128 << 10));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn admin_host_data_is_known_before_any_transfer() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let with_sgl = |opcode: u8, len: u32| {
        let mut sqe = Sqe::new(opcode, 1);
        sqe.set_sgl(Sgl::transport(len));
        ctrlr.admin_host_data_len_sgl(&sqe)
    };
    // Unknown opcodes, even those whose direction bits say host to controller, are refused
    // before any R2T.
    for opcode in [0x01, 0x05, 0x0D, 0x11, 0x81, 0xC1] {
        assert_eq!(
            with_sgl(opcode, 4096),
            Err(Status::INVALID_OPCODE.with_dnr()),
            "opcode {opcode:#x}"
        );
    }
    assert_eq!(with_sgl(admin::IDENTIFY, 4096), Ok(0));
    assert_eq!(with_sgl(admin::SET_FEATURES, 16), Ok(16));
    assert_eq!(
        with_sgl(admin::SET_FEATURES, 1 << 20),
        Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
    );
}

// ---- AER ----

#[test]
fn aer_delivered_after_namespace_change() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let woken = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&woken);
    ctrlr.set_async_event_notifier(Arc::new(move || {
        w.fetch_add(1, Ordering::SeqCst);
    }));
    for cid in 0..4u16 {
        let mut sqe = admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
        sqe.set_cid(100 + cid);
        assert_eq!(
            ctrlr.handle_admin_sgl(&sqe, &[], b.now),
            AdminOutcome::Deferred
        );
    }
    // A fifth is over the limit (AERL 3).
    let (cqe, _) = run(&ctrlr, &admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0));
    assert_eq!(cqe.status, Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED);
    assert_eq!(ctrlr.poll_async_event(), None);

    let sub = b.reg.subsystem(SUB_A).expect("exists");
    sub.add_namespace(ns(7, 8, false)).expect("nsid 7 free");
    let cqe = ctrlr.poll_async_event().expect("event");
    assert_eq!((cqe.cid, cqe.status), (100, Status::SUCCESS));
    // Notice, namespace attribute changed, log 0x04.
    assert_eq!(cqe.dw0, 0x0004_0002);
    assert_eq!(woken.load(Ordering::SeqCst), 1);
    // Masked until the log is read.
    sub.notify_namespaces_changed(&[1]);
    assert_eq!(ctrlr.poll_async_event(), None);
    let (_, page) = get_log(&ctrlr, lid::CHANGED_NS_LIST, 4096, 0, false);
    assert_eq!(&page[..12], &[1, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
    // Reading cleared the list and re-armed the event.
    let (_, page) = get_log(&ctrlr, lid::CHANGED_NS_LIST, 8, 0, false);
    assert_eq!(page, vec![0; 8]);
    sub.remove_namespace(7).expect("attached");
    assert_eq!(ctrlr.poll_async_event().map(|c| c.cid), Some(101));
    let (_, page) = identify(&ctrlr, 0x02, 0);
    assert_eq!(&page[..8], &[1, 0, 0, 0, 3, 0, 0, 0]);

    // With the notice disabled in Async Event Configuration, nothing is sent.
    get_log(&ctrlr, lid::CHANGED_NS_LIST, 8, 0, false);
    set_feature(&ctrlr, fid::ASYNC_EVENT_CONFIG, 0);
    sub.notify_namespaces_changed(&[1]);
    assert_eq!(ctrlr.poll_async_event(), None);
}

#[test]
fn event_waits_for_a_request() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    b.reg
        .subsystem(SUB_A)
        .expect("a")
        .notify_namespaces_changed(&[3]);
    let (cqe, _) = run(&ctrlr, &admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0));
    assert_eq!((cqe.status, cqe.dw0), (Status::SUCCESS, 0x0004_0002));
}

// ---- Keep alive ----

#[test]
fn keep_alive_deadline_follows_activity() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let kato = Duration::from_millis(5000);
    assert_eq!(ctrlr.keep_alive_deadline(), Some(b.now + kato));
    assert!(!ctrlr.is_expired(b.now + kato - Duration::from_millis(1)));
    assert!(ctrlr.is_expired(b.now + kato));
    let later = b.now + Duration::from_secs(3);
    let (cqe, _) =
        complete(ctrlr.handle_admin_sgl(&admin_cmd(admin::KEEP_ALIVE, 0, 0, 0, 0), &[], later));
    assert_eq!(cqe.status, Status::SUCCESS);
    assert_eq!(ctrlr.keep_alive_deadline(), Some(later + kato));
    // Traffic on an I/O queue counts too; time never goes backwards.
    ctrlr.handle_activity(later + Duration::from_secs(1));
    ctrlr.handle_activity(later);
    assert!(!ctrlr.is_expired(later + kato));
    // Set Features cannot turn it off; values round up to whole seconds (KAS 10).
    assert_eq!(
        set_feature(&ctrlr, fid::KEEP_ALIVE_TIMER, 0).status,
        Status::KEEP_ALIVE_INVALID
    );
    set_feature(&ctrlr, fid::KEEP_ALIVE_TIMER, 1500);
    assert_eq!(ctrlr.kato(), Some(Duration::from_secs(2)));
    // KATO 0 in Connect disables it for I/O controllers; discovery gets a default.
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(SUB_B, HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    );
    let ConnectOutcome::Admin { ctrlr: no_ka, .. } = out else {
        panic!("connect failed");
    };
    assert_eq!(no_ka.keep_alive_deadline(), None);
    assert!(!no_ka.is_expired(b.now + Duration::from_secs(3600)));
    let out = b.reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(DISCOVERY_NQN, HOST_1, 0xFFFF),
        &listener("4420"),
        b.now,
    );
    let ConnectOutcome::Admin { ctrlr: disc, .. } = out else {
        panic!("discovery connect failed");
    };
    assert_eq!(disc.kato(), Some(Duration::from_secs(120)));
}

// ---- Discovery ----

fn discovery_entries(page: &[u8]) -> (DiscoveryLogHeader, Vec<DiscoveryLogEntry>) {
    let header = DiscoveryLogHeader::parse(page).expect("header");
    let entries = page[1024..]
        .chunks_exact(1024)
        .filter_map(DiscoveryLogEntry::parse)
        .collect();
    (header, entries)
}

#[test]
fn discovery_log_lists_what_the_host_may_see() {
    let b = Bench::new();
    let d1 = b.ready(DISCOVERY_NQN, HOST_1);
    assert!(d1.is_discovery());
    let (_, page) = get_log(&d1, lid::DISCOVERY, 1024 * 5, 0, false);
    let (header, entries) = discovery_entries(&page);
    assert_eq!(header.numrec, 4);
    assert_eq!(entries.len(), 4);
    let e0 = &entries[0];
    assert_eq!((e0.subtype, e0.subnqn.as_str()), (3, DISCOVERY_NQN));
    assert_eq!((e0.trtype, e0.adrfam, e0.cntlid), (3, 1, 0xFFFF));
    assert_eq!(
        (e0.traddr.as_str(), e0.trsvcid.as_str()),
        ("127.0.0.1", "4420")
    );
    let listed: Vec<(&str, &str, u16)> = entries[1..]
        .iter()
        .map(|e| (e.subnqn.as_str(), e.trsvcid.as_str(), e.portid))
        .collect();
    assert_eq!(
        listed,
        vec![(SUB_A, "4420", 1), (SUB_B, "4420", 1), (SUB_B, "4421", 2)]
    );
    assert!(entries.iter().all(|e| e.asqsz == 32 && e.treq & 0x3 == 0x2));

    // HOST_2 may not see SUB_A.
    let d2 = b.ready(DISCOVERY_NQN, HOST_2);
    let (_, page) = get_log(&d2, lid::DISCOVERY, 1024 * 5, 0, false);
    let (header, entries) = discovery_entries(&page);
    assert_eq!(header.numrec, 3);
    assert!(entries.iter().all(|e| e.subnqn != SUB_A));

    // Reading in pieces: the header alone, then one entry at an offset.
    let (_, head) = get_log(&d1, lid::DISCOVERY, 16, 0, true);
    assert_eq!(head.len(), 16);
    let (_, second) = get_log(&d1, lid::DISCOVERY, 1024, 2048, true);
    assert_eq!(
        DiscoveryLogEntry::parse(&second).map(|e| e.subnqn),
        Some(SUB_A.to_owned())
    );

    // Discovery controllers: only their own identify and log pages.
    let (_, page) = identify(&d1, 0x01, 0);
    let id = IdentifyController::parse(&page).expect("page");
    assert_eq!((id.cntrltype, id.subnqn.as_str()), (2, DISCOVERY_NQN));
    assert_eq!(id.oaes, 1 << 31);
    assert_eq!(
        identify(&d1, 0x00, 1).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    assert_eq!(
        get_log(&d1, lid::SMART, 512, 0, false).0.status,
        Status::INVALID_FIELD.with_dnr()
    );
    assert_eq!(
        run(&d1, &admin_cmd(admin::ABORT, 0, 0, 0, 0)).0.status,
        Status::INVALID_OPCODE.with_dnr()
    );
    // No I/O queues on a discovery controller.
    let cqe = refused(b.reg.handle_connect(
        &connect_sqe(1, 31, 0),
        &connect_data(DISCOVERY_NQN, HOST_1, d1.cntlid()),
        &listener("4420"),
        b.now,
    ));
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
}

#[test]
fn discovery_generation_and_change_notice() {
    let b = Bench::new();
    let d = b.ready(DISCOVERY_NQN, HOST_2);
    let (_, page) = get_log(&d, lid::DISCOVERY, 1024, 0, false);
    let gen1 = DiscoveryLogHeader::parse(&page).expect("header").genctr;
    let aer = admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
    assert_eq!(d.handle_admin_sgl(&aer, &[], b.now), AdminOutcome::Deferred);

    // A new subsystem any host may see: generation bumps, the notice fires.
    b.reg
        .add_subsystem(SubsystemSpec {
            nqn: "nqn.2024-01.io.test:c".into(),
            serial: "c".into(),
            model: "m".into(),
            allow_any_host: true,
            hosts: vec![],
            max_namespaces: 1,
            namespaces: vec![],
            listeners: vec![listener("4422")],
        })
        .expect("new nqn");
    let cqe = d.poll_async_event().expect("discovery change");
    // Notice, discovery log changed (0xF0), log 0x70.
    assert_eq!(cqe.dw0, 0x0070_F002);
    let (_, page) = get_log(&d, lid::DISCOVERY, 1024 * 5, 0, false);
    let (header, entries) = discovery_entries(&page);
    assert!(header.genctr > gen1);
    assert_eq!(header.numrec, 4);
    assert_eq!(entries[3].trsvcid, "4422");

    // Removing a subsystem tears its controllers down.
    let c = b.ready(SUB_B, HOST_2);
    assert!(b.reg.remove_subsystem(SUB_B).is_some());
    assert!(!c.is_live());
    assert!(b.reg.subsystem(SUB_B).is_none());
}

// ---- I/O ----

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

#[test]
fn io_plans() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let plan = ctrlr
        .prepare_io_sgl(&read_cmd(1, 10, 1, 8192))
        .expect("valid");
    assert_eq!(plan.ns.nsid(), 1);
    assert_eq!(
        plan.op,
        IoOp::Read {
            offset: 40960,
            len: 8192
        }
    );
    assert_eq!(plan.data_len, 8192);
    let plan = ctrlr
        .prepare_io_sgl(&write_cmd(1, 0, 0, 4096, true))
        .expect("valid");
    assert_eq!(
        plan.op,
        IoOp::Write {
            offset: 0,
            len: 4096,
            fua: true
        }
    );
    let plan = ctrlr
        .prepare_io_sgl(&write_cmd(1, 0, 0, 4096, false))
        .expect("valid");
    assert_eq!(
        plan.op,
        IoOp::Write {
            offset: 0,
            len: 4096,
            fua: false
        }
    );
    let plan = ctrlr
        .prepare_io_sgl(&io_cmd(io::COMPARE, 1, 2, 0, 4096))
        .expect("valid");
    assert_eq!(
        plan.op,
        IoOp::Compare {
            offset: 8192,
            len: 4096
        }
    );
    let plan = ctrlr
        .prepare_io_sgl(&io_cmd(io::FLUSH, 1, 0, 0, 0))
        .expect("valid");
    assert_eq!((plan.op, plan.data_len), (IoOp::Flush, 0));
    // Write Zeroes moves no data and is not bound by MDTS.
    let plan = ctrlr
        .prepare_io_sgl(&io_cmd(io::WRITE_ZEROES, 1, 0, 0xFFFF, 0))
        .expect("valid");
    assert_eq!(
        (plan.op, plan.data_len),
        (
            IoOp::WriteZeroes {
                offset: 0,
                len: 65536 * 4096,
                fua: false
            },
            0
        )
    );
    // The last block is in range.
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 65535, 0, 4096)).is_ok());
}

#[test]
fn io_validation_errors() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let err = |sqe: Sqe| ctrlr.prepare_io_sgl(&sqe).err();
    let dnr = Status::with_dnr;
    assert_eq!(
        err(read_cmd(2, 0, 0, 4096)),
        Some(dnr(Status::INVALID_NAMESPACE))
    );
    assert_eq!(
        err(read_cmd(0, 0, 0, 4096)),
        Some(dnr(Status::INVALID_NAMESPACE))
    );
    assert_eq!(
        err(read_cmd(1, 65535, 1, 8192)),
        Some(dnr(Status::LBA_OUT_OF_RANGE))
    );
    assert_eq!(
        err(read_cmd(1, u64::MAX, 0, 4096)),
        Some(dnr(Status::LBA_OUT_OF_RANGE))
    );
    // 33 blocks of 4 KiB exceed MDTS (128 KiB).
    assert_eq!(
        err(read_cmd(1, 0, 32, 135_168)),
        Some(dnr(Status::INVALID_FIELD))
    );
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 0, 31, 131_072)).is_ok());
    // The SGL carries less than NLB blocks.
    assert_eq!(
        err(read_cmd(1, 0, 1, 4096)),
        Some(dnr(Status::DATA_SGL_LENGTH_INVALID))
    );
    // Read-only namespace: reads fine, writes refused.
    assert!(ctrlr.prepare_io_sgl(&read_cmd(3, 0, 0, 4096)).is_ok());
    let wp = Status::new(0, 0x20).with_dnr();
    assert_eq!(err(write_cmd(3, 0, 0, 4096, false)), Some(wp));
    assert_eq!(err(io_cmd(io::WRITE_ZEROES, 3, 0, 0, 0)), Some(wp));
    assert_eq!(err(io_cmd(io::DATASET_MANAGEMENT, 3, 0, 0, 16)), Some(wp));
    // Unsupported opcodes and fused commands.
    assert_eq!(
        err(io_cmd(io::WRITE_UNCORRECTABLE, 1, 0, 0, 0)),
        Some(dnr(Status::INVALID_OPCODE))
    );
    assert_eq!(
        err(io_cmd(0x99, 1, 0, 0, 0)),
        Some(dnr(Status::INVALID_OPCODE))
    );
    let mut fused = read_cmd(1, 0, 0, 4096);
    fused.set_flags(0x01);
    assert_eq!(err(fused), Some(dnr(Status::INVALID_FIELD)));
}

#[test]
fn dataset_management_ranges() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    // NR = 2 (0-based 1), AD set.
    let mut sqe = io_cmd(io::DATASET_MANAGEMENT, 1, 0, 0, 32);
    sqe.set_cdw(10, 1).set_cdw(11, 1 << 2);
    let plan = ctrlr.prepare_io_sgl(&sqe).expect("valid");
    assert_eq!(
        (plan.op.clone(), plan.data_len),
        (IoOp::Deallocate(Vec::new()), 32)
    );
    let mut data = vec![0u8; 32];
    data[4..8].copy_from_slice(&8u32.to_le_bytes());
    data[8..16].copy_from_slice(&16u64.to_le_bytes());
    data[20..24].copy_from_slice(&1u32.to_le_bytes());
    data[24..32].copy_from_slice(&65535u64.to_le_bytes());
    assert_eq!(
        dsm_ranges(&plan.ns, &data),
        Ok(vec![(16 * 4096, 8 * 4096), (65535 * 4096, 4096)])
    );
    data[20..24].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(
        dsm_ranges(&plan.ns, &data),
        Err(Status::LBA_OUT_OF_RANGE.with_dnr())
    );
    assert_eq!(
        dsm_ranges(&plan.ns, &data[..15]),
        Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
    );
    // Without AD: nothing to do but receive the data.
    sqe.set_cdw(11, 0);
    assert_eq!(ctrlr.prepare_io_sgl(&sqe).map(|p| p.op), Ok(IoOp::None));
    // SGL shorter than 16 * NR.
    sqe.set_sgl(Sgl::transport(16));
    assert_eq!(
        ctrlr.prepare_io_sgl(&sqe).err(),
        Some(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
    );
}

#[test]
fn queue_gone_and_teardown() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    let first = b.attach(&ctrlr, 1);
    ctrlr.handle_queue_gone(1, first);
    assert!(!ctrlr.is_io_queue_live(1, first));
    let second = b.attach(&ctrlr, 1);
    let aer = admin_cmd(admin::ASYNC_EVENT_REQUEST, 0, 0, 0, 0);
    assert_eq!(
        ctrlr.handle_admin_sgl(&aer, &[], b.now),
        AdminOutcome::Deferred
    );
    ctrlr.handle_queue_gone(0, QueueEpoch::ADMIN);
    assert!(!ctrlr.is_live() && !ctrlr.is_enabled() && !ctrlr.is_io_queue_live(1, second));
    assert!(ctrlr.prepare_io_sgl(&read_cmd(1, 0, 0, 4096)).is_err());
    // Events no longer reach a removed controller.
    b.reg
        .subsystem(SUB_A)
        .expect("a")
        .notify_namespaces_changed(&[1]);
    assert_eq!(ctrlr.poll_async_event(), None);
    assert!(b.reg.subsystem(SUB_A).expect("a").controllers().is_empty());
}

#[test]
fn discovery_substitutes_wildcard_listener_addresses() {
    let any = ListenerAddr::Tcp("0.0.0.0:4420".parse().expect("socket address"));
    let reg = Registry::new(
        vec![SubsystemSpec {
            nqn: SUB_A.into(),
            serial: "s".into(),
            model: "m".into(),
            allow_any_host: true,
            hosts: vec![],
            max_namespaces: 1,
            namespaces: vec![],
            listeners: vec![any.clone()],
        }],
        limits(),
    )
    .expect("valid");
    let now = Instant::now();
    let out = reg.handle_connect(
        &connect_sqe(0, 31, 0),
        &connect_data(DISCOVERY_NQN, HOST_1, 0xFFFF),
        &any,
        now,
    );
    let ConnectOutcome::Admin { ctrlr, .. } = out else {
        panic!("discovery connect failed");
    };
    prop_set(&ctrlr, offset::CC, 0x0046_0001, now);
    let (_, page) = get_log(&ctrlr, lid::DISCOVERY, 3072, 0, false);
    assert_eq!(discovery_entries(&page).1[1].traddr, "0.0.0.0");
    ctrlr.set_local_address("192.0.2.7");
    let (_, page) = get_log(&ctrlr, lid::DISCOVERY, 3072, 0, false);
    let (_, entries) = discovery_entries(&page);
    assert!(entries.iter().all(|e| e.traddr == "192.0.2.7"));
    // An address of the other family is not substituted.
    ctrlr.set_local_address("::1");
    let (_, page) = get_log(&ctrlr, lid::DISCOVERY, 3072, 0, false);
    assert_eq!(discovery_entries(&page).1[1].traddr, "0.0.0.0");
}

#[test]
fn shared_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Registry>();
    send_sync::<Subsystem>();
    send_sync::<Controller>();
    send_sync::<Namespace>();
    send_sync::<IoPlan>();
}

#[test]
fn fabrics_controllers_create_no_queues_with_admin_commands() {
    let b = Bench::new();
    let ctrlr = b.ready(SUB_A, HOST_1);
    for opcode in [
        admin::CREATE_IO_CQ,
        admin::CREATE_IO_SQ,
        admin::DELETE_IO_SQ,
        admin::DELETE_IO_CQ,
    ] {
        let (cqe, _) = run(&ctrlr, &admin_cmd(opcode, 0, 1 | (63 << 16), 1, 0));
        assert_eq!(cqe.status, Status::INVALID_OPCODE.with_dnr(), "{opcode:#x}");
    }
}

#[test]
fn each_transport_has_its_own_limits_and_keeps_its_queues() {
    let tcp = listener("4420");
    let rdma = ListenerAddr::Rdma("127.0.0.1:4420".parse().expect("socket"));
    let small = TransportLimits {
        max_queue_depth: 16,
        ..limits()
    };
    let reg = Registry::new(
        vec![SubsystemSpec {
            nqn: SUB_A.into(),
            serial: "s".into(),
            model: "m".into(),
            allow_any_host: true,
            hosts: vec![],
            max_namespaces: 1,
            namespaces: vec![],
            listeners: vec![tcp.clone(), rdma.clone()],
        }],
        LimitsByTransport {
            tcp: limits(),
            rdma: small,
            vfio_user: limits(),
        },
    )
    .expect("registry");
    let now = Instant::now();
    let connect = |qid: u16, sqsize: u16, cntlid: u16, via: &ListenerAddr| {
        reg.handle_connect(
            &connect_sqe(qid, sqsize, 0),
            &connect_data(SUB_A, HOST_1, cntlid),
            via,
            now,
        )
    };
    let ConnectOutcome::Admin { ctrlr, .. } = connect(0, 31, 0xFFFF, &rdma) else {
        panic!("rdma admin connect");
    };
    assert_eq!(ctrlr.limits.max_queue_depth, 16, "RDMA's limits");
    // CAP.MQES follows the transport.
    assert_eq!(ctrlr.cap() & 0xFFFF, 15);
    prop_set(&ctrlr, offset::CC, 0x0046_0001, now);
    let cqe = refused(connect(1, 31, ctrlr.cntlid(), &rdma));
    assert_eq!(
        cqe.status,
        Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
        "sqsize past RDMA's depth"
    );
    // Its I/O queues come the way its admin queue did.
    let cqe = refused(connect(1, 15, ctrlr.cntlid(), &tcp));
    assert_eq!(cqe.status, Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert!(matches!(
        connect(1, 15, ctrlr.cntlid(), &rdma),
        ConnectOutcome::Io { .. }
    ));
}
