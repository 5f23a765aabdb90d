//! One controller: its admin state, its I/O queues, keep-alive and asynchronous events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::nvme::connect::ConnectCmd;
use crate::nvme::features::aec;
use crate::nvme::log::{async_event_dw0, error_info, event_type, lid, notice};
use crate::nvme::{CntlId, Cqe, Nqn, Nsid, Status};

use super::TransportLimits;
use super::iostat::IoStats;

/// The bit of `AdminState::aen_masked` for Error status events, which have no Asynchronous
/// Event Configuration bit (bit 30 is reserved there, so no configurable kind uses it).
pub(crate) const ERROR_EVENT: u32 = 1 << 30;

/// What was wrong with a PCIe host's doorbell write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidDoorbell {
    /// The doorbell of a queue that does not exist.
    Register,
    /// A value the queue refuses (a tail or head past its end).
    Value,
}
use super::pcie::PcieQueues;
use super::registry::RegistryShared;
use super::subsystem::{ListenerAddr, Subsystem};

/// Outstanding Asynchronous Event Requests allowed (AERL 3 is 0-based).
pub(crate) const MAX_AERS: usize = 4;
/// Events kept while no request is outstanding.
const MAX_PENDING_EVENTS: usize = 16;
/// A discovery controller connected with KATO 0 still gets a timeout (Linux nvmet uses the
/// same two minutes), so an abandoned discovery association does not live forever.
const DISCOVERY_DEFAULT_KATO_MS: u64 = 120_000;
/// Entries in the Changed Namespace List before it overflows.
const CHANGED_NS_MAX: usize = 1024;

/// Keep-alive granularity: KAS 10 (in 100 ms units) promises whole seconds, so timeouts are
/// rounded up to them (Linux nvmet does the same).
const KATO_GRANULARITY_MS: u64 = 1000;

fn round_kato(ms: u32) -> u64 {
    u64::from(ms).div_ceil(KATO_GRANULARITY_MS) * KATO_GRANULARITY_MS
}

/// Everything `Controller::new` needs, gathered by the Connect handler.
pub(crate) struct ControllerInit {
    pub(crate) cntlid: CntlId,
    pub(crate) subsys: Arc<Subsystem>,
    pub(crate) registry: Weak<RegistryShared>,
    pub(crate) hostnqn: Nqn,
    pub(crate) hostid: [u8; 16],
    pub(crate) listener: ListenerAddr,
    pub(crate) limits: TransportLimits,
    pub(crate) admin: AdminQueueInit,
    pub(crate) now: Instant,
}

/// How the admin queue comes to exist: a fabrics Connect, or a PCIe controller whose host
/// sets it up through AQA/ASQ/ACQ and CC.EN.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AdminQueueInit {
    Fabrics(ConnectCmd),
    Pcie,
}

/// Which kind of transport a controller lives on: it decides which admin commands exist
/// (fabrics commands, or Create/Delete I/O Queue) and what Identify reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerKind {
    Fabrics,
    Pcie,
}

/// State only admin commands touch, behind the controller's mutex.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) cc: u32,
    pub(crate) csts: u32,
    pub(crate) aqa: u32,
    /// ASQ and ACQ: meaningless on fabrics (the queues live in the transport) but kept so
    /// a host reads back what it wrote.
    pub(crate) asq: u64,
    pub(crate) acq: u64,
    pub(crate) features: FeatureState,
    /// CIDs of parked Asynchronous Event Requests, oldest first.
    aer_cids: VecDeque<u16>,
    /// Event completions (dword 0) waiting for a request.
    pending_events: VecDeque<u32>,
    /// Completed requests waiting for `poll_async_event`.
    ready: VecDeque<Cqe>,
    /// Event kinds (AEC bits) sent and not yet cleared by reading their log page; the same
    /// kind is not reported again until then (NVMe Base 2.0, 5.2).
    aen_masked: u32,
    changed_ns: Vec<u32>,
    changed_ns_overflow: bool,
    /// The I/O queues a PCIe host created (empty on fabrics, where Connect makes them).
    pub(crate) pcie: PcieQueues,
}

/// Current values of the features that are only stored and reported.
#[derive(Debug, Clone)]
pub(crate) struct FeatureState {
    pub(crate) arbitration: u32,
    pub(crate) power_management: u32,
    pub(crate) temp_over: u16,
    pub(crate) temp_under: u16,
    pub(crate) error_recovery: u32,
    pub(crate) write_atomicity: u32,
    pub(crate) async_event_config: u32,
    /// Number of Queues the host asked for (0-based NSQR/NCQR granted), once set.
    pub(crate) num_queues: Option<u32>,
}

impl FeatureState {
    pub(crate) fn defaults(discovery: bool) -> Self {
        Self {
            arbitration: 0,
            power_management: 0,
            // 343 K (70 C): a common default composite over-temperature threshold.
            temp_over: 0x0157,
            temp_under: 0,
            error_recovery: 0,
            write_atomicity: 0,
            async_event_config: if discovery {
                aec::DISCOVERY_LOG_CHANGE
            } else {
                aec::NS_ATTRIBUTE
            },
            num_queues: None,
        }
    }
}

impl AdminState {
    /// A PCIe controller reset aborts every admin command in flight: parked Asynchronous
    /// Event Requests are no longer the host's to wait for (events stay pending).
    pub(crate) fn forget_parked_aers(&mut self) {
        self.aer_cids.clear();
    }
}

type Notifier = Arc<dyn Fn() + Send + Sync>;

/// Which attachment of an I/O queue ID a transport queue holds. A qid is reused when the host
/// reconnects a queue (after a reset or a Disconnect) on a new connection; the old connection
/// keeps its stale epoch, so it can neither serve I/O nor detach its replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEpoch(u32);

impl QueueEpoch {
    /// The admin queue has one attachment for the controller's life.
    pub const ADMIN: Self = Self(0);
}

/// A detached I/O queue slot.
const DETACHED: u32 = 0;

/// A controller: created by an admin-queue Connect, shared by its admin and I/O queues.
pub struct Controller {
    pub(crate) kind: ControllerKind,
    pub(crate) cntlid: CntlId,
    pub(crate) subsys: Arc<Subsystem>,
    pub(crate) registry: Weak<RegistryShared>,
    pub(crate) hostnqn: Nqn,
    pub(crate) hostid: [u8; 16],
    pub(crate) listener: ListenerAddr,
    pub(crate) limits: TransportLimits,
    /// Reference point for the atomic activity timestamp.
    base: Instant,
    last_activity_ns: AtomicU64,
    kato_ms: AtomicU64,
    /// CC.EN = 1 and CSTS.RDY = 1: I/O may flow.
    pub(crate) enabled: AtomicBool,
    live: AtomicBool,
    /// Volatile write cache enabled (Set Features 0x06); when off, writes are sent with FUA.
    pub(crate) write_cache: AtomicBool,
    /// The I/O its queues did, over every namespace, for `status`.
    stats: IoStats,
    /// Index qid - 1: the epoch of that I/O queue's current attachment, or `DETACHED`.
    io_queues: Box<[AtomicU32]>,
    /// The epoch the next attachment gets (never `DETACHED`).
    next_epoch: AtomicU32,
    /// Index qid: whether the host disabled SQ flow control on that queue.
    sqfc_disabled: Box<[AtomicBool]>,
    state: Mutex<AdminState>,
    notifier: Mutex<Option<Notifier>>,
    /// The local address of the admin queue's connection, for discovery entries of wildcard
    /// listeners (0.0.0.0 or ::), as Linux nvmet substitutes it.
    local_traddr: Mutex<Option<String>>,
}

impl core::fmt::Debug for Controller {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Controller")
            .field("cntlid", &self.cntlid)
            .field("subnqn", &self.subsys.nqn())
            .field("hostnqn", &self.hostnqn)
            .field("live", &self.is_live())
            .finish_non_exhaustive()
    }
}

impl Controller {
    pub(crate) fn new(init: ControllerInit) -> Self {
        let discovery = init.subsys.is_discovery();
        let (kind, kato_ms, admin_sqsize, admin_sqfc_disabled) = match init.admin {
            AdminQueueInit::Fabrics(cmd) => (
                ControllerKind::Fabrics,
                cmd.kato,
                cmd.sqsize,
                cmd.sq_flow_control_disabled(),
            ),
            // PCIe has no keep-alive by default and learns its admin queue from AQA.
            AdminQueueInit::Pcie => (ControllerKind::Pcie, 0, 0, false),
        };
        let mut kato = round_kato(kato_ms);
        if discovery && kato == 0 {
            kato = DISCOVERY_DEFAULT_KATO_MS;
        }
        let io_count = if discovery {
            0
        } else {
            usize::try_from(init.limits.max_io_qpairs_per_ctrlr).unwrap_or(0)
        };
        let sqfc: Box<[AtomicBool]> = (0..=io_count).map(|_| AtomicBool::new(false)).collect();
        sqfc[0].store(admin_sqfc_disabled, Ordering::Relaxed);
        let sqsize = u32::from(admin_sqsize);
        Self {
            kind,
            cntlid: init.cntlid,
            hostnqn: init.hostnqn,
            hostid: init.hostid,
            listener: init.listener,
            limits: init.limits,
            registry: init.registry,
            base: init.now,
            last_activity_ns: AtomicU64::new(0),
            kato_ms: AtomicU64::new(kato),
            enabled: AtomicBool::new(false),
            live: AtomicBool::new(true),
            write_cache: AtomicBool::new(true),
            stats: IoStats::default(),
            io_queues: (0..io_count).map(|_| AtomicU32::new(DETACHED)).collect(),
            next_epoch: AtomicU32::new(1),
            sqfc_disabled: sqfc,
            state: Mutex::new(AdminState {
                cc: 0,
                csts: 0,
                // ASQS and ACQS (0-based) as the admin Connect asked.
                aqa: sqsize | (sqsize << 16),
                asq: 0,
                acq: 0,
                features: FeatureState::defaults(discovery),
                aer_cids: VecDeque::new(),
                pending_events: VecDeque::new(),
                ready: VecDeque::new(),
                aen_masked: 0,
                changed_ns: Vec::new(),
                changed_ns_overflow: false,
                pcie: PcieQueues::default(),
            }),
            notifier: Mutex::new(None),
            local_traddr: Mutex::new(None),
            subsys: init.subsys,
        }
    }

    pub fn cntlid(&self) -> CntlId {
        self.cntlid
    }

    pub fn kind(&self) -> ControllerKind {
        self.kind
    }

    pub fn subnqn(&self) -> &Nqn {
        self.subsys.nqn()
    }

    pub fn subsystem(&self) -> &Arc<Subsystem> {
        &self.subsys
    }

    /// The I/O its queues did, over every namespace.
    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    pub fn hostnqn(&self) -> &Nqn {
        &self.hostnqn
    }

    pub fn hostid(&self) -> [u8; 16] {
        self.hostid
    }

    pub fn is_discovery(&self) -> bool {
        self.subsys.is_discovery()
    }

    /// The listener the admin queue connected through.
    pub fn listener(&self) -> &ListenerAddr {
        &self.listener
    }

    /// Not torn down: queues of a controller that is no longer live must close.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// CC.EN set and CSTS.RDY reported: I/O commands are accepted.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire) && self.is_live()
    }

    /// Whether I/O queue `qid` is still attached as `epoch` (a controller reset, a shutdown or
    /// a Disconnect detaches it; the transport should close such a queue's connection).
    pub fn is_io_queue_live(&self, qid: u16, epoch: QueueEpoch) -> bool {
        self.is_live()
            && epoch.0 != DETACHED
            && self
                .io_queue_slot(qid)
                .is_some_and(|q| q.load(Ordering::Acquire) == epoch.0)
    }

    fn io_queue_slot(&self, qid: u16) -> Option<&AtomicU32> {
        usize::from(qid)
            .checked_sub(1)
            .and_then(|i| self.io_queues.get(i))
    }

    /// Whether the host disabled SQ flow control on `qid` in its Connect (NVMe/TCP may then
    /// use the C2HData SUCCESS flag, and SQHD need not advance).
    pub fn sq_flow_control_disabled(&self, qid: u16) -> bool {
        self.sqfc_disabled
            .get(usize::from(qid))
            .is_some_and(|b| b.load(Ordering::Relaxed))
    }

    /// The Keep Alive Timeout in force; `None` when disabled.
    pub fn kato(&self) -> Option<Duration> {
        match self.kato_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Sets a non-zero Keep Alive Timeout, rounded up to the KAS granularity.
    pub(crate) fn set_kato_ms(&self, ms: u32) {
        self.kato_ms.store(round_kato(ms), Ordering::Relaxed);
    }

    /// When the keep-alive timer expires if nothing more arrives.
    pub fn keep_alive_deadline(&self) -> Option<Instant> {
        let kato = self.kato()?;
        let last = Duration::from_nanos(self.last_activity_ns.load(Ordering::Acquire));
        Some(self.base + last + kato)
    }

    /// Any command on any of its queues restarts the keep-alive timer (CTRATT.TBKAS).
    pub fn handle_activity(&self, now: Instant) {
        let since = now.saturating_duration_since(self.base).as_nanos();
        let since = u64::try_from(since).unwrap_or(u64::MAX);
        self.last_activity_ns.fetch_max(since, Ordering::AcqRel);
    }

    /// Whether the keep-alive timer has run out at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.keep_alive_deadline().is_some_and(|d| now >= d)
    }

    /// The transport lost queue `qid` attached as `epoch`; qid 0 tears the controller down and
    /// removes it from its subsystem. A stale epoch changes nothing: the qid may already serve
    /// a newer connection.
    pub fn handle_queue_gone(&self, qid: u16, epoch: QueueEpoch) {
        if qid != 0 {
            self.detach_io_queue(qid, epoch);
            return;
        }
        self.tear_down();
    }

    /// Ends the controller: its admin queue is gone or it was removed by a reload.
    pub fn tear_down(&self) {
        if self.live.swap(false, Ordering::AcqRel) {
            self.enabled.store(false, Ordering::Release);
            for q in self.io_queues.iter() {
                q.store(DETACHED, Ordering::Release);
            }
            let mut st = self.lock();
            st.aer_cids.clear();
            st.ready.clear();
            drop(st);
            self.subsys.remove_controller(self.cntlid);
            tracing::info!(subnqn = %self.subnqn(), cntlid = %self.cntlid, "controller removed");
        }
    }

    /// Called (from any thread) when an asynchronous event completion becomes ready, so the
    /// transport can wake the reactor that owns the admin queue.
    pub fn set_async_event_notifier(&self, notify: Arc<dyn Fn() + Send + Sync>) {
        *self.notifier.lock().unwrap_or_else(PoisonError::into_inner) = Some(notify);
    }

    /// The transport tells a discovery controller the local address its host connected to, so
    /// log entries of listeners bound to a wildcard address carry an address the host can
    /// reach.
    pub fn set_local_address(&self, traddr: &str) {
        *self
            .local_traddr
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(traddr.to_owned());
    }

    pub(crate) fn local_address(&self) -> Option<String> {
        self.local_traddr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// An Asynchronous Event Request completion ready to send, if any.
    pub fn poll_async_event(&self) -> Option<Cqe> {
        self.lock().ready.pop_front()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, AdminState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects I/O queue `cmd.qid` (sqsize already checked by the caller) and returns the
    /// epoch of this attachment.
    pub(crate) fn attach_io_queue(
        &self,
        cmd: &ConnectCmd,
        now: Instant,
    ) -> Result<QueueEpoch, Status> {
        let epoch = self.attach_io_slot(cmd.qid, cmd.sq_flow_control_disabled())?;
        self.handle_activity(now);
        Ok(epoch)
    }

    /// Takes I/O queue slot `qid` for a new attachment, if it is free.
    pub(crate) fn attach_io_slot(
        &self,
        qid: u16,
        sq_flow_control_disabled: bool,
    ) -> Result<QueueEpoch, Status> {
        if !self.is_enabled() {
            return Err(Status::COMMAND_SEQUENCE_ERROR);
        }
        let slot = self
            .io_queue_slot(qid)
            .ok_or(Status::INVALID_QUEUE_IDENTIFIER.with_dnr())?;
        let epoch = self.new_epoch();
        if slot
            .compare_exchange(DETACHED, epoch, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Status::INVALID_QUEUE_IDENTIFIER.with_dnr());
        }
        if let Some(b) = self.sqfc_disabled.get(usize::from(qid)) {
            b.store(sq_flow_control_disabled, Ordering::Relaxed);
        }
        Ok(QueueEpoch(epoch))
    }

    fn new_epoch(&self) -> u32 {
        loop {
            let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
            if epoch != DETACHED {
                return epoch;
            }
        }
    }

    /// Detaches `qid` if `epoch` still holds it.
    pub(crate) fn detach_io_queue(&self, qid: u16, epoch: QueueEpoch) {
        if let Some(q) = self.io_queue_slot(qid) {
            let _ = q.compare_exchange(epoch.0, DETACHED, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    pub(crate) fn connected_io_queues(&self) -> usize {
        self.io_queues
            .iter()
            .filter(|q| q.load(Ordering::Acquire) != DETACHED)
            .count()
    }

    /// CC.EN 1 -> 0 or a shutdown: I/O stops and every I/O queue is detached.
    pub(crate) fn stop_io(&self) {
        self.enabled.store(false, Ordering::Release);
        for q in self.io_queues.iter() {
            q.store(DETACHED, Ordering::Release);
        }
    }

    /// Parks an Asynchronous Event Request, or completes it at once with a pending event.
    pub(crate) fn park_aer(&self, st: &mut AdminState, cid: u16) -> Result<Option<Cqe>, Status> {
        if let Some(dw0) = st.pending_events.pop_front() {
            let mut cqe = Cqe::new(cid, Status::SUCCESS);
            cqe.dw0 = dw0;
            return Ok(Some(cqe));
        }
        if st.aer_cids.len() >= MAX_AERS {
            return Err(Status::ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED);
        }
        st.aer_cids.push_back(cid);
        Ok(None)
    }

    /// Queues an event of kind `bit` (an AEC bit) unless the host disabled that kind or one
    /// is already outstanding. Returns whether a completion became ready.
    fn raise_event(st: &mut AdminState, bit: u32, dw0: u32) -> bool {
        if st.features.async_event_config & bit == 0 {
            return false;
        }
        Self::post_event(st, bit, dw0)
    }

    /// Queues an event of kind `bit` unless one is already outstanding. Returns whether a
    /// completion became ready.
    fn post_event(st: &mut AdminState, bit: u32, dw0: u32) -> bool {
        if st.aen_masked & bit != 0 {
            return false;
        }
        st.aen_masked |= bit;
        if let Some(cid) = st.aer_cids.pop_front() {
            let mut cqe = Cqe::new(cid, Status::SUCCESS);
            cqe.dw0 = dw0;
            st.ready.push_back(cqe);
            return true;
        }
        if st.pending_events.len() < MAX_PENDING_EVENTS {
            st.pending_events.push_back(dw0);
        }
        false
    }

    /// A PCIe host wrote a doorbell of a queue that does not exist, or a value its queue
    /// refuses: an Error status event (always enabled; one outstanding until the host reads
    /// the Error Information log).
    pub fn report_invalid_doorbell(&self, what: InvalidDoorbell) {
        if !self.is_live() {
            return;
        }
        let info = match what {
            InvalidDoorbell::Register => error_info::INVALID_DOORBELL_REGISTER,
            InvalidDoorbell::Value => error_info::INVALID_DOORBELL_VALUE,
        };
        let dw0 = async_event_dw0(event_type::ERROR, info, lid::ERROR);
        // Error status events have no Asynchronous Event Configuration bit: always enabled.
        let ready = Self::post_event(&mut self.lock(), ERROR_EVENT, dw0);
        if ready {
            self.notify();
        }
    }

    /// Reading a log page with RAE clear re-arms the event kind it reports.
    pub(crate) fn clear_event(st: &mut AdminState, bit: u32) {
        st.aen_masked &= !bit;
    }

    pub(crate) fn handle_namespaces_changed(&self, nsids: &[Nsid]) {
        if !self.is_live() {
            return;
        }
        let ready = {
            let mut st = self.lock();
            for &Nsid(nsid) in nsids {
                if st.changed_ns.contains(&nsid) {
                    continue;
                }
                if st.changed_ns.len() >= CHANGED_NS_MAX {
                    st.changed_ns_overflow = true;
                } else {
                    st.changed_ns.push(nsid);
                }
            }
            let dw0 = async_event_dw0(
                event_type::NOTICE,
                notice::NS_ATTRIBUTE_CHANGED,
                lid::CHANGED_NS_LIST,
            );
            Self::raise_event(&mut st, aec::NS_ATTRIBUTE, dw0)
        };
        if ready {
            self.notify();
        }
    }

    pub(crate) fn handle_discovery_changed(&self) {
        if !self.is_live() {
            return;
        }
        let dw0 = async_event_dw0(
            event_type::NOTICE,
            notice::DISCOVERY_LOG_CHANGED,
            lid::DISCOVERY,
        );
        let ready = Self::raise_event(&mut self.lock(), aec::DISCOVERY_LOG_CHANGE, dw0);
        if ready {
            self.notify();
        }
    }

    /// Takes the Changed Namespace List (reading it clears it).
    pub(crate) fn take_changed_ns(st: &mut AdminState) -> (Vec<u32>, bool) {
        let list = std::mem::take(&mut st.changed_ns);
        let overflow = std::mem::replace(&mut st.changed_ns_overflow, false);
        (list, overflow)
    }

    fn notify(&self) {
        let notifier = self
            .notifier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(notify) = notifier {
            notify();
        }
    }
}
