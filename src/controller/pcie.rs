//! What a PCIe controller (vfio-user) has that a fabrics one has not: it is created without a
//! Connect, and its host creates and deletes I/O queues with admin commands (NVMe Base 2.0,
//! 5.4 to 5.7). The controller checks those commands against the queues that exist and tells
//! the transport what to set up; the transport maps the guest memory and completes the
//! command, or says the setup failed so the queue is forgotten.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::nvme::opcode::admin;
use crate::nvme::{Nqn, Sqe, Status};

use super::ctrlr::{AdminQueueInit, AdminState, ControllerInit, QueueEpoch};
use super::registry::RegistryError;
use super::{Controller, ListenerAddr, Registry};

/// What a PCIe transport gives its controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieParams {
    /// MSI-X vectors the device has: completion queues may name vectors below it.
    pub interrupt_vectors: u16,
    /// The transport serves shadow doorbells: Doorbell Buffer Config is accepted and Identify
    /// Controller says so (OACS bit 8).
    pub shadow_doorbells: bool,
}

/// A Create or Delete I/O Queue command the controller accepted, for the transport to carry
/// out. Sizes are entries (1's based); addresses are guest physical (PRP1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRequest {
    CreateCq {
        qid: u16,
        entries: u16,
        base: u64,
        /// The MSI-X vector, when interrupts are enabled for the queue.
        vector: Option<u16>,
    },
    CreateSq {
        qid: u16,
        entries: u16,
        base: u64,
        cqid: u16,
        priority: u8,
    },
    DeleteSq {
        qid: u16,
    },
    DeleteCq {
        qid: u16,
    },
    /// Doorbell Buffer Config (NVMe Base 2.0, 5.8): from now on the host writes each I/O
    /// queue's tail or head into the shadow doorbell buffer at `shadow` too, and rings the
    /// doorbell only when the value passes the EventIdx the controller keeps at `event_idx`.
    /// Both are page-aligned guest addresses; a reset forgets them.
    DoorbellBuffers {
        shadow: u64,
        event_idx: u64,
    },
}

/// The I/O queues of a PCIe controller: completion queues with their number of submission
/// queues, submission queues with their completion queue.
#[derive(Debug, Default)]
pub(crate) struct PcieQueues {
    params: Option<PcieParams>,
    cqs: BTreeMap<u16, u16>,
    sqs: BTreeMap<u16, u16>,
}

/// CDW11 bit 0 of Create I/O CQ/SQ: physically contiguous.
const PC: u32 = 1 << 0;
/// CDW11 bit 1 of Create I/O CQ: interrupts enabled.
const IEN: u32 = 1 << 1;

impl Registry {
    /// A new controller of subsystem `subnqn`, served by a PCIe transport at `listener`.
    /// There is no Connect and no host NQN (a VM's driver has neither): who may reach the
    /// listener decides; the host then sets the admin queue up through the registers.
    pub fn attach_pcie(
        &self,
        subnqn: &str,
        listener: &ListenerAddr,
        params: PcieParams,
        now: Instant,
    ) -> Result<Arc<Controller>, RegistryError> {
        let subsys = self
            .subsystem(subnqn)
            .filter(|s| !s.is_discovery())
            .ok_or_else(|| RegistryError::UnknownSubsystem(subnqn.to_owned()))?;
        if !subsys.allows_listener(listener) {
            return Err(RegistryError::ListenerNotAllowed {
                nqn: subnqn.to_owned(),
                listener: listener.to_string(),
            });
        }
        let limits = self.limits().of(listener);
        let ctrlr = subsys
            .add_controller(|cntlid| {
                Controller::new(ControllerInit {
                    cntlid,
                    subsys: Arc::clone(&subsys),
                    registry: self.downgrade(),
                    hostnqn: Nqn::from(""),
                    hostid: [0; 16],
                    listener: listener.clone(),
                    limits,
                    admin: AdminQueueInit::Pcie,
                    now,
                })
            })
            .ok_or_else(|| RegistryError::NoControllerId(subnqn.to_owned()))?;
        ctrlr.lock().pcie.params = Some(params);
        tracing::info!(subnqn, cntlid = %ctrlr.cntlid(), %listener, "PCIe controller created");
        Ok(ctrlr)
    }
}

impl Controller {
    /// Checks a Create/Delete I/O Queue command and records its effect; the transport then
    /// carries it out (or calls [`undo_queue_request`](Self::undo_queue_request)).
    pub(crate) fn queue_command(
        &self,
        st: &mut AdminState,
        sqe: &Sqe,
    ) -> Result<QueueRequest, Status> {
        let q = &mut st.pcie;
        let params = q.params.ok_or(Status::INVALID_OPCODE.with_dnr())?;
        let cdw10 = sqe.cdw(10);
        let cdw11 = sqe.cdw(11);
        let qid = u16::try_from(cdw10 & 0xFFFF).unwrap_or(0);
        let entries = u16::try_from(cdw10 >> 16)
            .unwrap_or(u16::MAX)
            .checked_add(1);
        let max_qid = u16::try_from(self.limits.max_io_qpairs_per_ctrlr).unwrap_or(u16::MAX);
        let bad_qid = Status::INVALID_QUEUE_IDENTIFIER.with_dnr();
        if qid == 0 || qid > max_qid {
            return Err(bad_qid);
        }
        let mqes = self.limits.max_queue_depth;
        let size = |entries: Option<u16>| -> Result<u16, Status> {
            entries
                .filter(|&n| n >= 2 && u32::from(n) <= mqes)
                .ok_or(Status::INVALID_QUEUE_SIZE.with_dnr())
        };
        let base = sqe.prp1();
        match sqe.opcode() {
            admin::CREATE_IO_CQ => {
                if q.cqs.contains_key(&qid) {
                    return Err(bad_qid);
                }
                let entries = size(entries)?;
                // CAP.CQR: queues must be physically contiguous, and page aligned.
                if cdw11 & PC == 0 || base == 0 || base & 0xFFF != 0 {
                    return Err(Status::INVALID_FIELD.with_dnr());
                }
                let vector = u16::try_from(cdw11 >> 16).unwrap_or(u16::MAX);
                let vector = if cdw11 & IEN != 0 {
                    if vector >= params.interrupt_vectors {
                        return Err(Status::INVALID_INTERRUPT_VECTOR.with_dnr());
                    }
                    Some(vector)
                } else {
                    None
                };
                q.cqs.insert(qid, 0);
                Ok(QueueRequest::CreateCq {
                    qid,
                    entries,
                    base,
                    vector,
                })
            }
            admin::CREATE_IO_SQ => {
                if q.sqs.contains_key(&qid) {
                    return Err(bad_qid);
                }
                let entries = size(entries)?;
                let cqid = u16::try_from(cdw11 >> 16).unwrap_or(0);
                let Some(users) = q.cqs.get_mut(&cqid) else {
                    return Err(Status::COMPLETION_QUEUE_INVALID.with_dnr());
                };
                if cdw11 & PC == 0 || base == 0 || base & 0xFFF != 0 {
                    return Err(Status::INVALID_FIELD.with_dnr());
                }
                *users += 1;
                q.sqs.insert(qid, cqid);
                let priority = u8::try_from((cdw11 >> 1) & 0x3).unwrap_or(0);
                Ok(QueueRequest::CreateSq {
                    qid,
                    entries,
                    base,
                    cqid,
                    priority,
                })
            }
            admin::DELETE_IO_SQ => {
                let cqid = q.sqs.remove(&qid).ok_or(bad_qid)?;
                if let Some(users) = q.cqs.get_mut(&cqid) {
                    *users = users.saturating_sub(1);
                }
                Ok(QueueRequest::DeleteSq { qid })
            }
            admin::DELETE_IO_CQ => match q.cqs.get(&qid) {
                None => Err(bad_qid),
                Some(&users) if users > 0 => Err(Status::INVALID_QUEUE_DELETION.with_dnr()),
                Some(_) => {
                    q.cqs.remove(&qid);
                    Ok(QueueRequest::DeleteCq { qid })
                }
            },
            _ => Err(Status::INVALID_OPCODE.with_dnr()),
        }
    }

    /// Checks a Doorbell Buffer Config command: offered by the transport, PRP1 (the shadow
    /// doorbells) and PRP2 (the EventIdx buffer) page aligned (CC.MPS is 0: 4 KiB).
    pub(crate) fn doorbell_buffer_config(
        &self,
        st: &AdminState,
        sqe: &Sqe,
    ) -> Result<QueueRequest, Status> {
        if !st.pcie.params.is_some_and(|p| p.shadow_doorbells) {
            return Err(Status::INVALID_OPCODE.with_dnr());
        }
        let (shadow, event_idx) = (sqe.prp1(), sqe.prp2());
        let aligned = |gpa: u64| gpa != 0 && gpa & 0xFFF == 0;
        if !aligned(shadow) || !aligned(event_idx) || shadow == event_idx {
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        Ok(QueueRequest::DoorbellBuffers { shadow, event_idx })
    }

    /// Whether the transport serves shadow doorbells (a PCIe controller that offers them).
    pub(crate) fn offers_shadow_doorbells(&self) -> bool {
        self.lock().pcie.params.is_some_and(|p| p.shadow_doorbells)
    }

    /// The transport could not set up a queue the controller accepted (its memory is not
    /// mapped, say): forget it, so the host may try again.
    pub fn undo_queue_request(&self, request: &QueueRequest) {
        let q = &mut self.lock().pcie;
        match *request {
            QueueRequest::CreateCq { qid, .. } => {
                q.cqs.remove(&qid);
            }
            QueueRequest::CreateSq { qid, cqid, .. } => {
                q.sqs.remove(&qid);
                if let Some(users) = q.cqs.get_mut(&cqid) {
                    *users = users.saturating_sub(1);
                }
            }
            // A deletion always succeeds for the host; nothing to restore. The controller
            // keeps nothing of doorbell buffers.
            QueueRequest::DeleteSq { .. }
            | QueueRequest::DeleteCq { .. }
            | QueueRequest::DoorbellBuffers { .. } => {}
        }
    }

    /// The transport set up I/O submission queue `qid` the controller accepted (a
    /// [`QueueRequest::CreateSq`]): it serves I/O from now on, under the epoch returned, until
    /// it is deleted or the controller resets.
    pub fn attach_pcie_io_queue(&self, qid: u16) -> Result<QueueEpoch, Status> {
        if !self.lock().pcie.sqs.contains_key(&qid) {
            return Err(Status::INVALID_QUEUE_IDENTIFIER.with_dnr());
        }
        self.attach_io_slot(qid, false)
    }

    /// A reset or shutdown deleted every I/O queue, and aborted the admin commands in flight
    /// (parked Asynchronous Event Requests among them).
    pub(crate) fn forget_pcie_queues(st: &mut AdminState) {
        st.pcie.cqs.clear();
        st.pcie.sqs.clear();
        if st.pcie.params.is_some() {
            st.forget_parked_aers();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::backend::ram::RamBackend;
    use crate::controller::{
        AdminOutcome, LimitsByTransport, NamespaceSpec, RegisterEffect, SubsystemSpec,
        TransportLimits,
    };
    use crate::nvme::Cqe;
    use crate::nvme::opcode::FABRICS;
    use crate::nvme::properties::{PropertySize, offset};

    const NQN: &str = "nqn.2026-11.io.nvmf-tgt:pcie";

    fn vfio() -> ListenerAddr {
        ListenerAddr::VfioUser("/run/nvmf-tgt/vm0".into())
    }

    fn tcp() -> ListenerAddr {
        ListenerAddr::Tcp("127.0.0.1:4420".parse().expect("socket"))
    }

    fn registry() -> Registry {
        let limits = LimitsByTransport {
            tcp: TransportLimits::default(),
            rdma: TransportLimits::default(),
            vfio_user: TransportLimits {
                max_queue_depth: 256,
                max_aq_depth: 32,
                max_io_qpairs_per_ctrlr: 4,
                in_capsule_data_size: 0,
                max_io_size: 131_072,
            },
        };
        let spec = SubsystemSpec {
            nqn: NQN.into(),
            serial: "PCIE0001".into(),
            model: "nvmf-tgt".into(),
            allow_any_host: false,
            hosts: vec![],
            max_namespaces: 8,
            namespaces: vec![NamespaceSpec {
                nsid: crate::nvme::Nsid(1),
                backend: Arc::new(RamBackend::new(1 << 20)),
                block_size: 512,
                read_only: false,
                uuid: None,
                nguid: None,
                eui64: None,
            }],
            listeners: vec![vfio()],
        };
        Registry::new(vec![spec], limits).expect("registry")
    }

    const PARAMS: PcieParams = PcieParams {
        interrupt_vectors: 3,
        shadow_doorbells: true,
    };

    /// A PCIe controller whose host has set up the admin queue and enabled it.
    fn enabled(reg: &Registry) -> Arc<Controller> {
        let ctrlr = reg
            .attach_pcie(NQN, &vfio(), PARAMS, Instant::now())
            .expect("attach");
        let four = PropertySize::Four;
        let eight = PropertySize::Eight;
        assert_eq!(
            ctrlr.write_register(offset::AQA, four, 0x001F_001F),
            Ok(RegisterEffect::None)
        );
        ctrlr
            .write_register(offset::ASQ, eight, 0x10_0000)
            .expect("asq");
        ctrlr
            .write_register(offset::ACQ, eight, 0x20_0000)
            .expect("acq");
        assert_eq!(
            ctrlr.write_register(offset::CC, four, 0x0046_0001),
            Ok(RegisterEffect::Enabled {
                aqa: 0x001F_001F,
                asq: 0x10_0000,
                acq: 0x20_0000
            })
        );
        assert_eq!(ctrlr.read_register(offset::CSTS, four), Ok(1));
        ctrlr
    }

    fn queue_cmd(opcode: u8, qid: u16, entries: u16, cdw11: u32, base: u64) -> Sqe {
        let mut sqe = Sqe::new(opcode, 9);
        sqe.set_cdw(
            10,
            u32::from(qid) | (u32::from(entries.wrapping_sub(1)) << 16),
        )
        .set_cdw(11, cdw11);
        sqe.bytes_mut()[24..32].copy_from_slice(&base.to_le_bytes());
        sqe
    }

    fn run(ctrlr: &Controller, sqe: &Sqe) -> Result<QueueRequest, Cqe> {
        match ctrlr.handle_admin(sqe, &[], u32::MAX, Instant::now()) {
            AdminOutcome::Queue { cid, request } => {
                assert_eq!(cid, sqe.cid());
                Ok(request)
            }
            AdminOutcome::Complete { cqe, .. } => Err(cqe),
            AdminOutcome::Deferred => panic!("deferred"),
        }
    }

    fn status(result: Result<QueueRequest, Cqe>) -> Status {
        match result {
            Ok(request) => panic!("accepted: {request:?}"),
            Err(cqe) => cqe.status,
        }
    }

    #[test]
    fn a_pcie_controller_needs_no_connect_and_only_its_listener() {
        let reg = registry();
        let ctrlr = reg
            .attach_pcie(NQN, &vfio(), PARAMS, Instant::now())
            .expect("attach");
        assert_eq!(ctrlr.kind(), crate::controller::ControllerKind::Pcie);
        assert_eq!(ctrlr.limits.max_queue_depth, 256, "vfio-user's own limits");
        assert_eq!(ctrlr.kato(), None);
        assert!(matches!(
            reg.attach_pcie(NQN, &tcp(), PARAMS, Instant::now()),
            Err(RegistryError::ListenerNotAllowed { .. })
        ));
        assert!(matches!(
            reg.attach_pcie(
                "nqn.2026-11.io.nvmf-tgt:nope",
                &vfio(),
                PARAMS,
                Instant::now()
            ),
            Err(RegistryError::UnknownSubsystem(_))
        ));
        // Without an admin queue in ASQ/ACQ, enabling fails with CSTS.CFS.
        assert_eq!(
            ctrlr.write_register(offset::CC, PropertySize::Four, 0x0046_0001),
            Ok(RegisterEffect::None)
        );
        assert_eq!(
            ctrlr.read_register(offset::CSTS, PropertySize::Four),
            Ok(0x2)
        );
        // Identify says PRPs only, no capsules; fabrics commands do not exist here.
        let id = ctrlr.identify_controller();
        assert_eq!((id.sgls, id.ioccsz, id.msdbd), (0, 0, 0));
        let ctrlr = enabled(&reg);
        let mut connect = Sqe::new(FABRICS, 3);
        connect.set_fctype(crate::nvme::opcode::fctype::PROPERTY_GET);
        assert_eq!(
            status(run(&ctrlr, &connect)),
            Status::INVALID_OPCODE.with_dnr()
        );
    }

    #[test]
    fn doorbell_buffer_config_takes_two_pages_when_offered() {
        let reg = registry();
        let ctrlr = enabled(&reg);
        assert_eq!(
            ctrlr.identify_controller().oacs,
            crate::nvme::identify::oacs::DOORBELL_BUFFER_CONFIG
        );
        let config = |prp1: u64, prp2: u64| {
            let mut sqe = Sqe::new(admin::DOORBELL_BUFFER_CONFIG, 4);
            sqe.bytes_mut()[24..32].copy_from_slice(&prp1.to_le_bytes());
            sqe.bytes_mut()[32..40].copy_from_slice(&prp2.to_le_bytes());
            sqe
        };
        assert_eq!(
            ctrlr.admin_host_data_len(&config(0x50_0000, 0x51_0000), 0),
            Ok(0),
            "the buffers are not data"
        );
        assert_eq!(
            run(&ctrlr, &config(0x50_0000, 0x51_0000)),
            Ok(QueueRequest::DoorbellBuffers {
                shadow: 0x50_0000,
                event_idx: 0x51_0000
            })
        );
        for (prp1, prp2) in [
            (0x50_0008, 0x51_0000),
            (0x50_0000, 0x51_0800),
            (0, 0x51_0000),
            (0x50_0000, 0),
            (0x50_0000, 0x50_0000),
        ] {
            assert_eq!(
                status(run(&ctrlr, &config(prp1, prp2))),
                Status::INVALID_FIELD.with_dnr(),
                "{prp1:#x} {prp2:#x}"
            );
        }

        // A transport that does not offer them (disable_shadow_doorbells).
        let plain = reg
            .attach_pcie(
                NQN,
                &vfio(),
                PcieParams {
                    shadow_doorbells: false,
                    ..PARAMS
                },
                Instant::now(),
            )
            .expect("attach");
        assert_eq!(plain.identify_controller().oacs, 0);
        let four = PropertySize::Four;
        let eight = PropertySize::Eight;
        plain
            .write_register(offset::AQA, four, 0x001F_001F)
            .expect("aqa");
        plain
            .write_register(offset::ASQ, eight, 0x10_0000)
            .expect("asq");
        plain
            .write_register(offset::ACQ, eight, 0x20_0000)
            .expect("acq");
        plain
            .write_register(offset::CC, four, 0x0046_0001)
            .expect("cc");
        assert_eq!(
            status(run(&plain, &config(0x50_0000, 0x51_0000))),
            Status::INVALID_OPCODE.with_dnr()
        );
        let effects = effects_log(&plain);
        assert_eq!(
            effects[usize::from(admin::DOORBELL_BUFFER_CONFIG) * 4],
            0,
            "not offered, not listed"
        );
    }

    /// The Commands Supported and Effects log page of `ctrlr`.
    fn effects_log(ctrlr: &Controller) -> Vec<u8> {
        use crate::nvme::log::{GetLogPageCmd, lid};
        let mut sqe = Sqe::new(admin::GET_LOG_PAGE, 7);
        GetLogPageCmd {
            lid: lid::COMMAND_EFFECTS,
            lsp: 0,
            rae: false,
            numd: 1023,
            offset: 0,
        }
        .emit(&mut sqe);
        match ctrlr.handle_admin(&sqe, &[], 4096, Instant::now()) {
            AdminOutcome::Complete { cqe, data, .. } => {
                assert_eq!(cqe.status, Status::SUCCESS);
                data
            }
            other => panic!("get log page: {other:?}"),
        }
    }

    #[test]
    fn the_effects_log_lists_the_queue_commands_and_doorbell_buffer_config() {
        let reg = registry();
        let ctrlr = enabled(&reg);
        let effects = effects_log(&ctrlr);
        for opc in [
            admin::CREATE_IO_SQ,
            admin::DELETE_IO_SQ,
            admin::CREATE_IO_CQ,
            admin::DELETE_IO_CQ,
            admin::DOORBELL_BUFFER_CONFIG,
        ] {
            assert_eq!(
                effects[usize::from(opc) * 4],
                1,
                "opcode {opc:#x} supported"
            );
        }
        assert_eq!(effects[usize::from(admin::IDENTIFY) * 4], 1);
    }

    #[test]
    fn io_queues_are_created_and_deleted_in_order() {
        let reg = registry();
        let ctrlr = enabled(&reg);
        let cq = queue_cmd(admin::CREATE_IO_CQ, 1, 64, PC | IEN | (2 << 16), 0x30_0000);
        assert_eq!(
            run(&ctrlr, &cq),
            Ok(QueueRequest::CreateCq {
                qid: 1,
                entries: 64,
                base: 0x30_0000,
                vector: Some(2)
            })
        );
        assert_eq!(
            status(run(&ctrlr, &cq)),
            Status::INVALID_QUEUE_IDENTIFIER.with_dnr(),
            "twice"
        );
        let sq = queue_cmd(admin::CREATE_IO_SQ, 1, 64, PC | (1 << 16), 0x40_0000);
        assert_eq!(
            run(&ctrlr, &sq),
            Ok(QueueRequest::CreateSq {
                qid: 1,
                entries: 64,
                base: 0x40_0000,
                cqid: 1,
                priority: 0
            })
        );
        // A CQ with an SQ on it cannot go; the SQ first, then the CQ.
        let del_cq = queue_cmd(admin::DELETE_IO_CQ, 1, 1, 0, 0);
        assert_eq!(
            status(run(&ctrlr, &del_cq)),
            Status::INVALID_QUEUE_DELETION.with_dnr()
        );
        let del_sq = queue_cmd(admin::DELETE_IO_SQ, 1, 1, 0, 0);
        assert_eq!(run(&ctrlr, &del_sq), Ok(QueueRequest::DeleteSq { qid: 1 }));
        assert_eq!(run(&ctrlr, &del_cq), Ok(QueueRequest::DeleteCq { qid: 1 }));
        assert_eq!(
            status(run(&ctrlr, &del_sq)),
            Status::INVALID_QUEUE_IDENTIFIER.with_dnr()
        );
    }

    #[test]
    fn bad_queue_commands_name_the_field() {
        let reg = registry();
        let ctrlr = enabled(&reg);
        let s = |opcode, qid, entries, cdw11, base| {
            status(run(&ctrlr, &queue_cmd(opcode, qid, entries, cdw11, base)))
        };
        let cq = admin::CREATE_IO_CQ;
        assert_eq!(
            s(cq, 0, 64, PC, 0x1000),
            Status::INVALID_QUEUE_IDENTIFIER.with_dnr()
        );
        assert_eq!(
            s(cq, 5, 64, PC, 0x1000),
            Status::INVALID_QUEUE_IDENTIFIER.with_dnr()
        );
        assert_eq!(
            s(cq, 1, 1, PC, 0x1000),
            Status::INVALID_QUEUE_SIZE.with_dnr()
        );
        assert_eq!(
            s(cq, 1, 257, PC, 0x1000),
            Status::INVALID_QUEUE_SIZE.with_dnr()
        );
        assert_eq!(
            s(cq, 1, 64, 0, 0x1000),
            Status::INVALID_FIELD.with_dnr(),
            "not contiguous"
        );
        assert_eq!(
            s(cq, 1, 64, PC, 0x1234),
            Status::INVALID_FIELD.with_dnr(),
            "unaligned"
        );
        assert_eq!(
            s(cq, 1, 64, PC | IEN | (3 << 16), 0x1000),
            Status::INVALID_INTERRUPT_VECTOR.with_dnr()
        );
        assert_eq!(
            s(admin::CREATE_IO_SQ, 1, 64, PC | (2 << 16), 0x1000),
            Status::COMPLETION_QUEUE_INVALID.with_dnr()
        );
        assert_eq!(
            s(admin::DELETE_IO_CQ, 2, 1, 0, 0),
            Status::INVALID_QUEUE_IDENTIFIER.with_dnr()
        );
    }

    #[test]
    fn a_created_sq_serves_io_until_its_controller_resets() {
        let reg = registry();
        let ctrlr = enabled(&reg);
        assert_eq!(
            ctrlr.attach_pcie_io_queue(1),
            Err(Status::INVALID_QUEUE_IDENTIFIER.with_dnr()),
            "not created"
        );
        let cq = queue_cmd(admin::CREATE_IO_CQ, 1, 64, PC, 0x30_0000);
        run(&ctrlr, &cq).expect("cq");
        let sq = queue_cmd(admin::CREATE_IO_SQ, 1, 64, PC | (1 << 16), 0x40_0000);
        run(&ctrlr, &sq).expect("sq");
        let epoch = ctrlr.attach_pcie_io_queue(1).expect("attach");
        assert!(ctrlr.is_io_queue_live(1, epoch));
        assert_eq!(
            ctrlr.attach_pcie_io_queue(1),
            Err(Status::INVALID_QUEUE_IDENTIFIER.with_dnr()),
            "attached once"
        );
        ctrlr
            .write_register(offset::CC, PropertySize::Four, 0x0046_0000)
            .expect("reset");
        assert!(!ctrlr.is_io_queue_live(1, epoch), "a reset ends the queue");
    }

    #[test]
    fn an_undone_or_reset_queue_is_forgotten() {
        let reg = registry();
        let ctrlr = enabled(&reg);
        let cq = queue_cmd(admin::CREATE_IO_CQ, 1, 64, PC, 0x30_0000);
        let request = run(&ctrlr, &cq).expect("accepted");
        // The transport could not map the queue: the host may try again.
        ctrlr.undo_queue_request(&request);
        run(&ctrlr, &cq).expect("accepted again");
        let sq = queue_cmd(admin::CREATE_IO_SQ, 1, 64, PC | (1 << 16), 0x40_0000);
        run(&ctrlr, &sq).expect("sq");
        assert_eq!(
            ctrlr.write_register(offset::CC, PropertySize::Four, 0x0046_0000),
            Ok(RegisterEffect::Reset)
        );
        ctrlr
            .write_register(offset::CC, PropertySize::Four, 0x0046_0001)
            .expect("enable again");
        run(&ctrlr, &cq).expect("queues start afresh after a reset");
    }
}
