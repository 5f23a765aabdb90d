//! Every subsystem plus the discovery subsystem, and the Connect command that creates
//! controllers and attaches I/O queues to them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crate::nvme::connect::{
    CNTLID_DYNAMIC, ConnectCmd, ConnectData, data_offset, invalid_parameter_dw0, sqe_offset,
};
use crate::nvme::{CntlId, Cqe, DISCOVERY_NQN, Nqn, Sqe, Status, opcode};

use super::ctrlr::{AdminQueueInit, Controller, ControllerInit, QueueEpoch};
use super::subsystem::{ListenerAddr, Subsystem, SubsystemSpec};
use super::{LimitsByTransport, TransportLimits};

/// Why the registry could not be built from the declaration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("subsystem {0} is declared twice")]
    DuplicateSubsystem(String),
    #[error("subsystem NQN {0} is reserved for discovery")]
    ReservedNqn(String),
    #[error("subsystem NQN {0:?} must be 1 to 223 bytes")]
    BadNqn(String),
    #[error("namespace {nsid} of {nqn}: {why}")]
    BadNamespace {
        nqn: Nqn,
        nsid: crate::nvme::Nsid,
        why: &'static str,
    },
    #[error("transport limit {0} is out of range")]
    BadLimit(&'static str),
    #[error("no subsystem {0}")]
    UnknownSubsystem(String),
    #[error("subsystem {nqn} is not reachable through {listener}")]
    ListenerNotAllowed { nqn: String, listener: String },
    #[error("subsystem {0} has no controller ID left")]
    NoControllerId(String),
}

/// What a Connect command produced.
#[derive(Debug)]
pub enum ConnectOutcome {
    /// A new controller with its admin queue.
    Admin { ctrlr: Arc<Controller>, cqe: Cqe },
    /// An I/O queue of an existing controller.
    Io {
        ctrlr: Arc<Controller>,
        qid: u16,
        /// This attachment of `qid`: what the queue names itself by from now on.
        epoch: QueueEpoch,
        sqsize: u16,
        cqe: Cqe,
    },
    /// Refused; send the completion, keep the connection open for a retry.
    Refused(Cqe),
}

#[derive(Debug)]
pub(crate) struct RegistryShared {
    pub(crate) subsystems: RwLock<BTreeMap<Nqn, Arc<Subsystem>>>,
    pub(crate) discovery: Arc<Subsystem>,
    pub(crate) limits: LimitsByTransport,
    /// Discovery log generation counter; bumped on every change a host could see.
    pub(crate) genctr: AtomicU64,
}

impl RegistryShared {
    pub(crate) fn subsystem_list(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// Every subsystem and the discovery subsystem; shared by all reactor threads.
#[derive(Debug, Clone)]
pub struct Registry {
    shared: Arc<RegistryShared>,
}

impl Registry {
    pub fn new(
        subsystems: Vec<SubsystemSpec>,
        limits: impl Into<LimitsByTransport>,
    ) -> Result<Self, RegistryError> {
        let limits = limits.into();
        for transport in limits.all() {
            check_limits(&transport)?;
        }
        let mut map = BTreeMap::new();
        for spec in subsystems {
            if spec.nqn == DISCOVERY_NQN {
                return Err(RegistryError::ReservedNqn(spec.nqn.to_string()));
            }
            // 223 bytes is the NQN limit (NVMe Base 2.0, 4.5); the field holds a NUL after it.
            if spec.nqn.is_empty() || spec.nqn.len() > 223 {
                return Err(RegistryError::BadNqn(spec.nqn.to_string()));
            }
            let nqn = spec.nqn.clone();
            if map.contains_key(&nqn) {
                return Err(RegistryError::DuplicateSubsystem(nqn.to_string()));
            }
            map.insert(nqn, Arc::new(Subsystem::new(spec)?));
        }
        Ok(Self {
            shared: Arc::new(RegistryShared {
                subsystems: RwLock::new(map),
                discovery: Arc::new(Subsystem::discovery()),
                limits,
                genctr: AtomicU64::new(1),
            }),
        })
    }

    pub fn limits(&self) -> LimitsByTransport {
        self.shared.limits
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<RegistryShared> {
        Arc::downgrade(&self.shared)
    }

    /// The subsystem named `nqn` (the discovery NQN gives the discovery subsystem).
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == DISCOVERY_NQN {
            return Some(Arc::clone(&self.shared.discovery));
        }
        self.shared
            .subsystems
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(nqn)
            .cloned()
    }

    /// Every NVM subsystem in NQN order (not the discovery subsystem).
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.shared.subsystem_list()
    }

    /// The discovery subsystem (for status output).
    pub fn discovery_subsystem(&self) -> Arc<Subsystem> {
        Arc::clone(&self.shared.discovery)
    }

    /// Adds a subsystem at run time and bumps the discovery generation.
    pub fn add_subsystem(&self, spec: SubsystemSpec) -> Result<Arc<Subsystem>, RegistryError> {
        if spec.nqn == DISCOVERY_NQN {
            return Err(RegistryError::ReservedNqn(spec.nqn.to_string()));
        }
        self.insert_subsystem(Arc::new(Subsystem::new(spec)?))
    }

    /// Adds a subsystem built beforehand (reload builds before it changes anything).
    pub fn insert_subsystem(
        &self,
        subsys: Arc<Subsystem>,
    ) -> Result<Arc<Subsystem>, RegistryError> {
        if subsys.nqn() == DISCOVERY_NQN {
            return Err(RegistryError::ReservedNqn(subsys.nqn().to_string()));
        }
        {
            let mut map = self
                .shared
                .subsystems
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if map.contains_key(subsys.nqn()) {
                return Err(RegistryError::DuplicateSubsystem(subsys.nqn().to_string()));
            }
            map.insert(subsys.nqn().clone(), Arc::clone(&subsys));
        }
        self.bump_discovery_generation();
        Ok(subsys)
    }

    /// Removes a subsystem; its controllers stop being live (their queues learn it through
    /// `Controller::is_live`). Bumps the discovery generation.
    pub fn remove_subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        let removed = self
            .shared
            .subsystems
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(nqn)?;
        for ctrlr in removed.controllers() {
            ctrlr.tear_down();
        }
        self.bump_discovery_generation();
        Some(removed)
    }

    /// The discovery log generation counter.
    pub fn discovery_generation(&self) -> u64 {
        self.shared.genctr.load(Ordering::Acquire)
    }

    /// Records a change of what the discovery log shows and sends Discovery Log Page Change
    /// notices to discovery controllers that asked for them.
    pub fn bump_discovery_generation(&self) {
        self.shared.genctr.fetch_add(1, Ordering::AcqRel);
        for ctrlr in self.shared.discovery.controllers() {
            ctrlr.handle_discovery_changed();
        }
    }

    /// A Connect capsule (SQE and its 1024-byte data) arrived on a queue accepted by
    /// `listener`.
    pub fn handle_connect(
        &self,
        sqe: &Sqe,
        data: &[u8],
        listener: &ListenerAddr,
        now: Instant,
    ) -> ConnectOutcome {
        match self.connect(sqe, data, listener, now) {
            Ok(outcome) => outcome,
            Err(refusal) => {
                tracing::debug!(status = %refusal.status, dw0 = refusal.dw0, "connect refused");
                let mut cqe = Cqe::new(sqe.cid(), refusal.status);
                cqe.dw0 = refusal.dw0;
                ConnectOutcome::Refused(cqe)
            }
        }
    }

    fn connect(
        &self,
        sqe: &Sqe,
        data: &[u8],
        listener: &ListenerAddr,
        now: Instant,
    ) -> Result<ConnectOutcome, Refusal> {
        if sqe.opcode() != opcode::FABRICS || sqe.fctype() != opcode::fctype::CONNECT {
            return Err(Refusal::status(Status::COMMAND_SEQUENCE_ERROR.with_dnr()));
        }
        let cmd = ConnectCmd::parse(sqe);
        if cmd.recfmt != 0 {
            return Err(Refusal::status(
                Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr(),
            ));
        }
        let data = ConnectData::parse(data).map_err(|e| Refusal::param(true, e.ipo()))?;
        let subsys = self
            .subsystem(&data.subnqn)
            .ok_or(Refusal::param(true, data_offset::SUBNQN))?;
        if !subsys.allows_listener(listener) || !subsys.allows_host(&data.hostnqn) {
            tracing::info!(
                subnqn = %data.subnqn, hostnqn = %data.hostnqn, listener = %listener,
                "host not allowed"
            );
            return Err(Refusal::status(Status::CONNECT_INVALID_HOST.with_dnr()));
        }
        let limits = self.shared.limits.of(listener);
        if cmd.qid == 0 {
            if cmd.sqsize == 0 || u32::from(cmd.sqsize) >= limits.max_aq_depth {
                return Err(Refusal::param(false, sqe_offset::SQSIZE));
            }
            // Only the dynamic controller model exists here (as in SPDK).
            if data.cntlid != CNTLID_DYNAMIC {
                return Err(Refusal::param(true, data_offset::CNTLID));
            }
            let ctrlr = subsys
                .add_controller(|cntlid| {
                    Controller::new(ControllerInit {
                        cntlid,
                        subsys: Arc::clone(&subsys),
                        registry: Arc::downgrade(&self.shared),
                        hostnqn: Nqn::from(data.hostnqn.as_str()),
                        hostid: data.hostid,
                        listener: listener.clone(),
                        limits,
                        admin: AdminQueueInit::Fabrics(cmd),
                        now,
                    })
                })
                .ok_or(Refusal::status(Status::CONNECT_CONTROLLER_BUSY))?;
            tracing::info!(
                subnqn = %subsys.nqn(), cntlid = %ctrlr.cntlid(), hostnqn = %data.hostnqn,
                "controller created"
            );
            let mut cqe = Cqe::new(sqe.cid(), Status::SUCCESS);
            cqe.dw0 = u32::from(ctrlr.cntlid().0);
            return Ok(ConnectOutcome::Admin { ctrlr, cqe });
        }

        if subsys.is_discovery() {
            return Err(Refusal::param(false, sqe_offset::QID));
        }
        let ctrlr = subsys
            .controller(CntlId(data.cntlid))
            .ok_or(Refusal::param(true, data_offset::CNTLID))?;
        if ctrlr.hostnqn().as_str() != data.hostnqn {
            return Err(Refusal::param(true, data_offset::HOSTNQN));
        }
        // An association lives on one transport: its I/O queues come the way its admin did.
        if ctrlr.listener().trtype() != listener.trtype() {
            return Err(Refusal::param(true, data_offset::CNTLID));
        }
        if cmd.sqsize == 0 || u32::from(cmd.sqsize) >= ctrlr.limits.max_queue_depth {
            return Err(Refusal::param(false, sqe_offset::SQSIZE));
        }
        let epoch = ctrlr.attach_io_queue(&cmd, now).map_err(|status| {
            if status == Status::COMMAND_SEQUENCE_ERROR {
                // SPDK: an I/O queue Connect before CC.EN = 1 names QID as invalid.
                Refusal::param(false, sqe_offset::QID)
            } else {
                Refusal::status(status)
            }
        })?;
        let mut cqe = Cqe::new(sqe.cid(), Status::SUCCESS);
        cqe.dw0 = u32::from(ctrlr.cntlid().0);
        Ok(ConnectOutcome::Io {
            ctrlr,
            qid: cmd.qid,
            epoch,
            sqsize: cmd.sqsize,
            cqe,
        })
    }
}

/// Limits the controller math relies on: MQES fits 16 bits, MDTS is at least two pages.
fn check_limits(limits: &TransportLimits) -> Result<(), RegistryError> {
    if !(2..=65536).contains(&limits.max_queue_depth) {
        return Err(RegistryError::BadLimit("max_queue_depth"));
    }
    if !(2..=4096).contains(&limits.max_aq_depth) {
        return Err(RegistryError::BadLimit("max_aq_depth"));
    }
    if !(1..=0xFFFE).contains(&limits.max_io_qpairs_per_ctrlr) {
        return Err(RegistryError::BadLimit("max_io_qpairs_per_ctrlr"));
    }
    if limits.max_io_size < 8192 {
        return Err(RegistryError::BadLimit("max_io_size"));
    }
    if limits.in_capsule_data_size > 1 << 20 {
        return Err(RegistryError::BadLimit("in_capsule_data_size"));
    }
    Ok(())
}

/// A refused Connect: the status and the completion's dword 0.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    status: Status,
    dw0: u32,
}

impl Refusal {
    fn status(status: Status) -> Self {
        Self { status, dw0: 0 }
    }

    /// Connect Invalid Parameters, naming the field.
    fn param(in_data: bool, ipo: u16) -> Self {
        Self {
            status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            dw0: invalid_parameter_dw0(in_data, ipo),
        }
    }
}
