//! Admin commands: dispatch, Identify, Get Log Page, Asynchronous Event Request, Keep Alive
//! and Abort (NVMe Base 2.0, 5).

use std::time::Instant;

use crate::nvme::features::aec;
use crate::nvme::identify::{
    self, CSI_NVM, IDENTIFY_LEN, IdentifyController, NsDescriptor, PowerState, cns, cntrltype,
};
use crate::nvme::log::{self, GetLogPageCmd, effects, lid};
use crate::nvme::opcode::{self, admin, io};
use crate::nvme::properties::VS_1_3;
use crate::nvme::{Cqe, Nsid, Sqe, Status};

use super::ctrlr::{AdminState, ControllerKind, MAX_AERS};
use super::pcie::QueueRequest;
use super::{AdminOutcome, Controller, ListenerAddr};

/// Error log entries minus one (ELPE); the log itself is always empty.
const ELPE: u8 = 127;
/// Keep Alive Support granularity: 100 ms units (KAS = 10 means 1 s granularity).
const KAS: u16 = 10;
/// The firmware revision reported everywhere: this crate's version.
const FIRMWARE_REVISION: &str = env!("CARGO_PKG_VERSION");

/// Host data a Set Features command may carry (feature data structures are at most a page).
const SET_FEATURES_DATA_MAX: u32 = 4096;

/// What an admin command produced before it is turned into an `AdminOutcome`.
enum Reply {
    /// Success with dword 0 and controller-to-host data.
    Done(u32, Vec<u8>),
    /// Success with part of a log page, followed by this many zero bytes.
    Log(Vec<u8>, usize),
    /// A finished completion (fabrics commands, an AER that found an event).
    Cqe(Cqe),
    Deferred,
    Queue(QueueRequest),
}

impl Controller {
    /// An admin queue command: admin opcodes and fabrics Property Get/Set/Disconnect. `data`
    /// is the host-to-controller data already received; `buffer_len` is how much data the
    /// command's data pointer describes, as the transport found it (see
    /// [`prepare_io`](Self::prepare_io)): no more is returned.
    pub fn handle_admin(
        &self,
        sqe: &Sqe,
        data: &[u8],
        buffer_len: u32,
        now: Instant,
    ) -> AdminOutcome {
        self.handle_activity(now);
        let max = usize::try_from(buffer_len).unwrap_or(usize::MAX);
        match self.admin(sqe, data, buffer_len) {
            Ok(Reply::Done(dw0, mut out)) => {
                out.truncate(max);
                let mut cqe = Cqe::new(sqe.cid(), Status::SUCCESS);
                cqe.dw0 = dw0;
                AdminOutcome::Complete {
                    cqe,
                    data: out,
                    zeroes: 0,
                }
            }
            Ok(Reply::Log(mut out, zeroes)) => {
                out.truncate(max);
                let zeroes = zeroes.min(max - out.len());
                AdminOutcome::Complete {
                    cqe: Cqe::new(sqe.cid(), Status::SUCCESS),
                    data: out,
                    zeroes,
                }
            }
            Ok(Reply::Cqe(cqe)) => AdminOutcome::Complete {
                cqe,
                data: Vec::new(),
                zeroes: 0,
            },
            Ok(Reply::Deferred) => AdminOutcome::Deferred,
            Ok(Reply::Queue(request)) => AdminOutcome::Queue {
                cid: sqe.cid(),
                request,
            },
            Err(status) => {
                tracing::debug!(opcode = sqe.opcode(), %status, cntlid = %self.cntlid, "admin error");
                AdminOutcome::status(sqe.cid(), status)
            }
        }
    }

    fn admin(&self, sqe: &Sqe, data: &[u8], buffer_len: u32) -> Result<Reply, Status> {
        if !self.is_live() {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        if sqe.opcode() == opcode::FABRICS {
            if self.kind == ControllerKind::Pcie {
                return Err(Status::INVALID_OPCODE.with_dnr());
            }
            return self.handle_admin_fabrics(sqe).map(Reply::Cqe);
        }
        // SPDK: anything but fabrics commands before CC.EN = 1 is out of sequence.
        if !self.is_enabled() {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        if sqe.fuse() != 0 {
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        let discovery = self.is_discovery();
        match sqe.opcode() {
            admin::IDENTIFY => self.identify(sqe).map(|page| Reply::Done(0, page)),
            admin::GET_LOG_PAGE => self
                .get_log_page(sqe, buffer_len)
                .map(|(part, zeroes)| Reply::Log(part, zeroes)),
            admin::GET_FEATURES => {
                let (dw0, out) = self.get_features(&self.lock(), sqe)?;
                Ok(Reply::Done(dw0, out))
            }
            admin::SET_FEATURES => {
                let dw0 = self.set_features(&mut self.lock(), sqe, data)?;
                Ok(Reply::Done(dw0, Vec::new()))
            }
            admin::ASYNC_EVENT_REQUEST => match self.park_aer(&mut self.lock(), sqe.cid()) {
                Ok(Some(cqe)) => Ok(Reply::Cqe(cqe)),
                Ok(None) => Ok(Reply::Deferred),
                Err(status) => Err(status),
            },
            // The activity above already restarted the timer.
            admin::KEEP_ALIVE => Ok(Reply::Done(0, Vec::new())),
            // "Not aborted" (dword 0 bit 0) is always a legal answer.
            admin::ABORT if !discovery => Ok(Reply::Done(1, Vec::new())),
            admin::CREATE_IO_CQ
            | admin::CREATE_IO_SQ
            | admin::DELETE_IO_SQ
            | admin::DELETE_IO_CQ
                if self.kind == ControllerKind::Pcie =>
            {
                self.queue_command(&mut self.lock(), sqe).map(Reply::Queue)
            }
            admin::DOORBELL_BUFFER_CONFIG if self.kind == ControllerKind::Pcie => self
                .doorbell_buffer_config(&self.lock(), sqe)
                .map(Reply::Queue),
            _ => Err(Status::INVALID_OPCODE.with_dnr()),
        }
    }

    /// Identify Controller as this controller reports it.
    pub fn identify_controller(&self) -> IdentifyController {
        let limits = &self.limits;
        // MDTS in units of the 4 KiB minimum page size, as a power of two (rounded down).
        let pages = limits.max_io_size / 4096;
        let mdts = u8::try_from(pages.max(2).ilog2()).unwrap_or(0);
        let maxcmd = u16::try_from(limits.max_queue_depth).unwrap_or(u16::MAX);
        let common = IdentifyController {
            sn: self.subsys.serial().to_owned(),
            mn: self.subsys.model().to_owned(),
            fr: FIRMWARE_REVISION.to_owned(),
            mdts,
            cntlid: self.cntlid.0,
            ver: VS_1_3,
            aerl: u8::try_from(MAX_AERS - 1).unwrap_or(0),
            kas: KAS,
            maxcmd,
            sgls: match self.listener {
                // Keyed data blocks (host memory by RDMA READ and WRITE) and in-capsule data;
                // Linux's nvme-rdma refuses a controller without keyed SGLs.
                ListenerAddr::Rdma(_) => {
                    identify::sgls::SUPPORTED | identify::sgls::KEYED | identify::sgls::OFFSET
                }
                _ => {
                    identify::sgls::SUPPORTED
                        | identify::sgls::OFFSET
                        | identify::sgls::TRANSPORT_DATA_BLOCK
                }
            },
            subnqn: self.subsys.nqn().to_string(),
            ..IdentifyController::default()
        };
        if self.is_discovery() {
            return IdentifyController {
                cntrltype: cntrltype::DISCOVERY,
                oaes: identify::oaes::DISCOVERY_LOG_CHANGE,
                // Extended data for Get Log Page (NUMDU, LPO).
                lpa: 0x04,
                ..common
            };
        }
        let vwc_present = self
            .subsys
            .namespaces()
            .iter()
            .any(|ns| ns.backend().volatile_write_cache());
        let io = IdentifyController {
            cntrltype: cntrltype::IO,
            rab: 6,
            // Multiple controllers may attach to the subsystem; several ports possible.
            cmic: 0x03,
            oaes: identify::oaes::NS_ATTRIBUTE,
            // 128-bit host identifier; traffic-based keep alive.
            ctratt: 0x01 | 0x40,
            acl: 3,
            // One read-only firmware slot.
            frmw: 0x03,
            // SMART per namespace, command effects log, extended Get Log Page data.
            lpa: 0x07,
            elpe: ELPE,
            npss: 0,
            sqes: 0x66,
            cqes: 0x44,
            nn: self.subsys.max_namespaces(),
            mnan: self.subsys.max_namespaces(),
            oncs: identify::oncs::COMPARE | identify::oncs::DSM | identify::oncs::WRITE_ZEROES,
            // Bits 2:1 = 10b: Flush with the broadcast NSID is not supported.
            vwc: u8::from(vwc_present) | 0x04,
            ioccsz: (64 + limits.in_capsule_data_size) / 16,
            iorcsz: 1,
            icdoff: 0,
            fcatt: 0,
            msdbd: 1,
            // Disconnect is supported.
            ofcs: 0x01,
            psd0: PowerState {
                max_power: 2500,
                entry_lat: 16,
                exit_lat: 4,
            },
            ..common
        };
        match self.kind {
            ControllerKind::Fabrics => io,
            // PCIe: PRPs only, no capsules, no fabrics commands; shadow doorbells if the
            // transport serves them.
            ControllerKind::Pcie => IdentifyController {
                oacs: if self.offers_shadow_doorbells() {
                    identify::oacs::DOORBELL_BUFFER_CONFIG
                } else {
                    0
                },
                sgls: 0,
                ioccsz: 0,
                iorcsz: 0,
                msdbd: 0,
                ofcs: 0,
                ..io
            },
        }
    }

    fn identify(&self, sqe: &Sqe) -> Result<Vec<u8>, Status> {
        let cns = sqe.cdw(10).to_le_bytes()[0];
        let csi = sqe.cdw(11).to_le_bytes()[3];
        let nsid = sqe.nsid();
        let invalid_ns = Status::INVALID_NAMESPACE.with_dnr();
        if self.is_discovery() && cns != cns::CONTROLLER {
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        let mut page = vec![0u8; IDENTIFY_LEN];
        match cns {
            cns::CONTROLLER => self.identify_controller().emit(&mut page),
            cns::NAMESPACE => {
                self.check_identify_nsid(nsid)?;
                // An inactive NSID in range gets a zeroed page (NVMe Base 2.0, 5.17.2.1).
                if let Some(ns) = self.subsys.namespace(Nsid(nsid)) {
                    ns.identify().emit(&mut page);
                }
            }
            cns::ACTIVE_NS_LIST | cns::CSI_ACTIVE_NS_LIST => {
                if cns == cns::CSI_ACTIVE_NS_LIST && csi != CSI_NVM {
                    return Err(Status::INVALID_FIELD.with_dnr());
                }
                if nsid >= 0xFFFF_FFFE {
                    return Err(invalid_ns);
                }
                let above = self
                    .subsys
                    .namespaces()
                    .into_iter()
                    .filter(|ns| ns.nsid().0 > nsid);
                for (slot, ns) in page.chunks_exact_mut(4).zip(above) {
                    slot.copy_from_slice(&ns.nsid().0.to_le_bytes());
                }
            }
            cns::NS_DESCRIPTORS => {
                let ns = self.subsys.namespace(Nsid(nsid)).ok_or(invalid_ns)?;
                NsDescriptor::emit_list(&ns.descriptors(), &mut page);
            }
            cns::CSI_NAMESPACE | cns::CSI_CONTROLLER => {
                if csi != CSI_NVM {
                    return Err(Status::INVALID_FIELD.with_dnr());
                }
                if cns == cns::CSI_NAMESPACE {
                    self.subsys.namespace(Nsid(nsid)).ok_or(invalid_ns)?;
                }
                // The NVM command set specific pages: every field zero is valid (no
                // protection information, no extra size limits).
            }
            cns::CS_INDEPENDENT_NAMESPACE => {
                self.check_identify_nsid(nsid)?;
                if let Some(ns) = self.subsys.namespace(Nsid(nsid)) {
                    page[1] = identify::NMIC_SHARED;
                    if ns.read_only() {
                        page[8] = identify::NSATTR_WRITE_PROTECTED;
                    }
                    // NSTAT: namespace ready.
                    page[14] = 0x01;
                }
            }
            cns::IO_COMMAND_SETS => {
                // Vector 0: the NVM command set only.
                page[0] = 0x01;
            }
            _ => return Err(Status::INVALID_FIELD.with_dnr()),
        }
        Ok(page)
    }

    fn check_identify_nsid(&self, nsid: u32) -> Result<(), Status> {
        if nsid == 0 || nsid > self.subsys.max_namespaces() {
            return Err(Status::INVALID_NAMESPACE.with_dnr());
        }
        Ok(())
    }

    /// The part of the log page the host asked for, and how many zero bytes follow it.
    fn get_log_page(&self, sqe: &Sqe, buffer_len: u32) -> Result<(Vec<u8>, usize), Status> {
        let cmd = GetLogPageCmd::parse(sqe);
        let invalid = Status::INVALID_FIELD.with_dnr();
        if cmd.offset % 4 != 0 {
            return Err(invalid);
        }
        // SPDK: asking for more than the command's buffer holds is an invalid field; and no
        // transfer is larger than MDTS, whoever asks (discovery hosts are on no allow-list).
        if cmd.byte_len() > u64::from(buffer_len)
            || cmd.byte_len() > u64::from(self.limits.max_io_size)
        {
            return Err(invalid);
        }
        let page = match (self.is_discovery(), cmd.lid) {
            (_, lid::SUPPORTED_LOGS) => self.supported_logs(),
            (true, lid::DISCOVERY) => {
                let page = self.discovery_log();
                if !cmd.rae {
                    Self::clear_event(&mut self.lock(), aec::DISCOVERY_LOG_CHANGE);
                }
                page
            }
            (false, lid::ERROR) => {
                if !cmd.rae {
                    Self::clear_event(&mut self.lock(), super::ctrlr::ERROR_EVENT);
                }
                vec![0u8; log::ERROR_ENTRY_LEN * (usize::from(ELPE) + 1)]
            }
            (false, lid::SMART) => smart_log(),
            (false, lid::FIRMWARE_SLOT) => firmware_log(),
            (false, lid::CHANGED_NS_LIST) => {
                let mut st = self.lock();
                let page = changed_ns_log(&mut st);
                if !cmd.rae {
                    Self::clear_event(&mut st, aec::NS_ATTRIBUTE);
                }
                page
            }
            (false, lid::COMMAND_EFFECTS) => {
                let pcie = self.kind() == super::ControllerKind::Pcie;
                command_effects_log(pcie, self.offers_shadow_doorbells())
            }
            // SPDK and Linux nvmet answer Invalid Field for log pages they lack.
            _ => return Err(invalid),
        };
        // Bytes past the end of the page read as zeroes (as SPDK does).
        let offset = usize::try_from(cmd.offset)
            .unwrap_or(usize::MAX)
            .min(page.len());
        let want = usize::try_from(cmd.byte_len()).map_err(|_| invalid)?;
        let end = page.len().min(offset.saturating_add(want));
        let part = page[offset..end].to_vec();
        let zeroes = want - part.len();
        Ok((part, zeroes))
    }

    /// How much host data admin command `sqe`, whose data pointer describes `buffer_len`
    /// bytes, may bring (0 for most), or the status that fails it before any data moves: an
    /// unknown opcode gets Invalid Opcode, not an R2T.
    pub fn admin_host_data_len(&self, sqe: &Sqe, buffer_len: u32) -> Result<usize, Status> {
        let sgl_len = buffer_len;
        // As in `admin`: before CC.EN only fabrics commands are in sequence.
        if sqe.opcode() != opcode::FABRICS && !self.is_enabled() {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        match sqe.opcode() {
            // Property Get/Set and Disconnect carry no data; Connect was handled before.
            opcode::FABRICS => Ok(0),
            // PRPs carry no length, and no feature served here takes data: a PCIe host's
            // Set Features brings none.
            admin::SET_FEATURES if self.kind == ControllerKind::Pcie => Ok(0),
            admin::SET_FEATURES if sgl_len <= SET_FEATURES_DATA_MAX => Ok(sgl_len as usize),
            admin::SET_FEATURES => Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr()),
            admin::GET_LOG_PAGE
            | admin::IDENTIFY
            | admin::ABORT
            | admin::GET_FEATURES
            | admin::ASYNC_EVENT_REQUEST
            | admin::KEEP_ALIVE => Ok(0),
            // Queue memory and doorbell buffers are the host's, not data: the PCIe transport
            // maps them.
            admin::CREATE_IO_SQ
            | admin::CREATE_IO_CQ
            | admin::DELETE_IO_SQ
            | admin::DELETE_IO_CQ
            | admin::DOORBELL_BUFFER_CONFIG
                if self.kind == ControllerKind::Pcie =>
            {
                Ok(0)
            }
            _ => Err(Status::INVALID_OPCODE.with_dnr()),
        }
    }

    fn supported_logs(&self) -> Vec<u8> {
        let lids: &[u8] = if self.is_discovery() {
            &[lid::SUPPORTED_LOGS, lid::DISCOVERY]
        } else {
            &[
                lid::SUPPORTED_LOGS,
                lid::ERROR,
                lid::SMART,
                lid::FIRMWARE_SLOT,
                lid::CHANGED_NS_LIST,
                lid::COMMAND_EFFECTS,
            ]
        };
        let mut page = vec![0u8; log::SUPPORTED_LOGS_LEN];
        for &id in lids {
            // LSUPP.
            page[usize::from(id) * 4] = 0x01;
        }
        page
    }
}

/// SMART / Health Information: no warnings, full spare; nothing is measured.
fn smart_log() -> Vec<u8> {
    let mut page = vec![0u8; log::SMART_LEN];
    // Available spare 100 %, threshold 10 %.
    page[3] = 100;
    page[4] = 10;
    page
}

/// Firmware Slot Information: slot 1 active, holding this crate's version.
fn firmware_log() -> Vec<u8> {
    let mut page = vec![0u8; log::FIRMWARE_SLOT_LEN];
    page[0] = 0x01;
    let frs = &mut page[8..16];
    frs.fill(b' ');
    let n = FIRMWARE_REVISION.len().min(8);
    frs[..n].copy_from_slice(&FIRMWARE_REVISION.as_bytes()[..n]);
    page
}

/// Changed Namespace List; reading it clears it. More than 1024 changes report 0xFFFFFFFF.
fn changed_ns_log(st: &mut AdminState) -> Vec<u8> {
    let (mut list, overflow) = Controller::take_changed_ns(st);
    let mut page = vec![0u8; log::CHANGED_NS_LIST_LEN];
    if overflow {
        page[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        return page;
    }
    list.sort_unstable();
    for (slot, nsid) in page.chunks_exact_mut(4).zip(list) {
        slot.copy_from_slice(&nsid.to_le_bytes());
    }
    page
}

/// Commands Supported and Effects: what this controller accepts and which commands change
/// logical block content. A PCIe controller also takes the queue commands, and Doorbell
/// Buffer Config when it offers shadow doorbells.
fn command_effects_log(pcie: bool, shadow_doorbells: bool) -> Vec<u8> {
    let mut page = vec![0u8; log::COMMAND_EFFECTS_LEN];
    let mut set = |base: usize, opc: u8, bits: u32| {
        let at = base + usize::from(opc) * 4;
        page[at..at + 4].copy_from_slice(&bits.to_le_bytes());
    };
    for opc in [
        admin::GET_LOG_PAGE,
        admin::IDENTIFY,
        admin::ABORT,
        admin::SET_FEATURES,
        admin::GET_FEATURES,
        admin::ASYNC_EVENT_REQUEST,
        admin::KEEP_ALIVE,
    ] {
        set(0, opc, effects::CSUPP);
    }
    if pcie {
        for opc in [
            admin::CREATE_IO_SQ,
            admin::DELETE_IO_SQ,
            admin::CREATE_IO_CQ,
            admin::DELETE_IO_CQ,
        ] {
            set(0, opc, effects::CSUPP);
        }
    }
    if shadow_doorbells {
        set(0, admin::DOORBELL_BUFFER_CONFIG, effects::CSUPP);
    }
    for (opc, bits) in [
        (io::FLUSH, effects::CSUPP),
        (io::WRITE, effects::CSUPP | effects::LBCC),
        (io::READ, effects::CSUPP),
        (io::COMPARE, effects::CSUPP),
        (io::WRITE_ZEROES, effects::CSUPP | effects::LBCC),
        (io::DATASET_MANAGEMENT, effects::CSUPP | effects::LBCC),
    ] {
        set(1024, opc, bits);
    }
    page
}
