//! Fabrics commands after Connect: Property Get/Set with the CC/CSTS state machine, and
//! Disconnect (NVMe-oF 1.1, 3.4 to 3.6).

use std::sync::atomic::Ordering;

use crate::nvme::opcode::fctype;
use crate::nvme::properties::{Cap, PropertyCmd, PropertySize, VS_1_3, cc, csts, offset};
use crate::nvme::{Cqe, Sqe, Status};

use super::Controller;
use super::ctrlr::{AdminState, ControllerKind, QueueEpoch};

/// What a register write asks of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterEffect {
    None,
    /// CC.EN 0 -> 1 was accepted (CSTS.RDY set): a PCIe transport creates the admin queue
    /// from these registers.
    Enabled {
        aqa: u32,
        asq: u64,
        acq: u64,
    },
    /// CC.EN 1 -> 0: every queue but the registers is gone; I/O in flight completes or fails.
    Reset,
    /// CC.SHN set: the controller is shut down.
    ShutDown,
}

/// CAP.TO: 15 * 500 ms for CSTS.RDY to follow CC.EN (Linux nvmet's value).
const CAP_TO: u8 = 15;
/// I/O queue entry sizes this target uses (log2): 64-byte SQEs, 16-byte CQEs.
const IOSQES: u32 = 6;
const IOCQES: u32 = 4;

impl Controller {
    /// Controller Capabilities as this controller reports them.
    pub(crate) fn cap(&self) -> u64 {
        let mqes = self.limits.max_queue_depth.saturating_sub(1);
        Cap {
            mqes: u16::try_from(mqes).unwrap_or(u16::MAX),
            cqr: true,
            to: CAP_TO,
            // NVM command set only.
            css: 0x01,
            mpsmin: 0,
            mpsmax: 0,
        }
        .to_u64()
    }

    /// Fabrics commands on the admin queue.
    pub(crate) fn handle_admin_fabrics(&self, sqe: &Sqe) -> Result<Cqe, Status> {
        let mut cqe = Cqe::new(sqe.cid(), Status::SUCCESS);
        match sqe.fctype() {
            fctype::PROPERTY_GET => {
                let value = self.property_get(&self.lock(), &PropertyCmd::parse(sqe))?;
                let v = value.to_le_bytes();
                cqe.dw0 = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
                cqe.dw1 = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
            }
            fctype::PROPERTY_SET => {
                // Fabrics queues are the transport's own: nothing follows from CC here.
                self.property_set(&mut self.lock(), &PropertyCmd::parse(sqe))?;
            }
            // The transport closes the queue once this completion is sent.
            fctype::DISCONNECT => {}
            fctype::CONNECT => return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
            _ => return Err(Status::INVALID_OPCODE.with_dnr()),
        }
        Ok(cqe)
    }

    /// A fabrics command on I/O queue `qid` attached as `epoch`: Disconnect detaches the
    /// queue (the transport then closes it); Property Get/Set belong on the admin queue.
    pub fn handle_io_fabrics(&self, qid: u16, epoch: QueueEpoch, sqe: &Sqe) -> Cqe {
        let status = match sqe.fctype() {
            fctype::DISCONNECT => {
                self.detach_io_queue(qid, epoch);
                Status::SUCCESS
            }
            fctype::CONNECT => Status::COMMAND_SEQUENCE_ERROR.with_dnr(),
            fctype::PROPERTY_GET | fctype::PROPERTY_SET => Status::INVALID_QUEUE_TYPE.with_dnr(),
            _ => Status::INVALID_OPCODE.with_dnr(),
        };
        Cqe::new(sqe.cid(), status)
    }

    pub(crate) fn property_get(&self, st: &AdminState, cmd: &PropertyCmd) -> Result<u64, Status> {
        let invalid = Status::INVALID_FIELD.with_dnr();
        let read8 = |off: u32| -> Option<u64> {
            match off {
                offset::CAP => Some(self.cap()),
                offset::ASQ => Some(st.asq),
                offset::ACQ => Some(st.acq),
                _ => None,
            }
        };
        let read4 = |off: u32| -> Option<u32> {
            match off {
                offset::VS => Some(VS_1_3),
                offset::CC => Some(st.cc),
                offset::CSTS => Some(st.csts),
                offset::AQA => Some(st.aqa),
                _ => None,
            }
        };
        match cmd.size {
            PropertySize::Eight => read8(cmd.offset).ok_or(invalid),
            PropertySize::Four => {
                if let Some(v) = read4(cmd.offset) {
                    return Ok(u64::from(v));
                }
                // A 4-byte read of either half of an 8-byte property.
                if let Some(v) = read8(cmd.offset) {
                    return Ok(v & 0xFFFF_FFFF);
                }
                let low = cmd.offset.checked_sub(4).and_then(read8).ok_or(invalid)?;
                Ok(low >> 32)
            }
            PropertySize::Unknown(_) => Err(invalid),
        }
    }

    pub(crate) fn property_set(
        &self,
        st: &mut AdminState,
        cmd: &PropertyCmd,
    ) -> Result<RegisterEffect, Status> {
        let invalid = Status::INVALID_FIELD.with_dnr();
        let low = u32::try_from(cmd.value & 0xFFFF_FFFF).unwrap_or(0);
        let four = cmd.size == PropertySize::Four;
        // ASQ and ACQ take 8-byte writes or 4-byte writes of either half.
        let set_half = |reg: &mut u64, base: u32| -> bool {
            match (cmd.size, cmd.offset.checked_sub(base)) {
                (PropertySize::Eight, Some(0)) => *reg = cmd.value,
                (PropertySize::Four, Some(0)) => *reg = (*reg & !0xFFFF_FFFF) | u64::from(low),
                (PropertySize::Four, Some(4)) => {
                    *reg = (*reg & 0xFFFF_FFFF) | (u64::from(low) << 32);
                }
                _ => return false,
            }
            true
        };
        match cmd.offset {
            offset::CC if four => {}
            offset::AQA if four => {
                // ASQS and ACQS (0-based) may not exceed MQES.
                let mqes = self.limits.max_queue_depth.saturating_sub(1);
                if low & 0xFFF > mqes || (low >> 16) & 0xFFF > mqes {
                    return Err(invalid);
                }
                st.aqa = low & 0x0FFF_0FFF;
                return Ok(RegisterEffect::None);
            }
            o if (offset::ASQ..offset::ASQ + 8).contains(&o) => {
                return if set_half(&mut st.asq, offset::ASQ) {
                    Ok(RegisterEffect::None)
                } else {
                    Err(invalid)
                };
            }
            o if (offset::ACQ..offset::ACQ + 8).contains(&o) => {
                return if set_half(&mut st.acq, offset::ACQ) {
                    Ok(RegisterEffect::None)
                } else {
                    Err(invalid)
                };
            }
            _ => return Err(invalid),
        }
        let new = low;
        let old = st.cc;
        st.cc = new;
        let en = |v: u32| v & cc::EN != 0;
        let mut effect = RegisterEffect::None;
        if en(new) && !en(old) && self.enable(st) {
            effect = RegisterEffect::Enabled {
                aqa: st.aqa,
                asq: st.asq,
                acq: st.acq,
            };
        }
        if !en(new) && en(old) {
            // Controller reset: I/O queues stop being usable; the admin queue stays.
            self.stop_io();
            Controller::forget_pcie_queues(st);
            st.csts = 0;
            tracing::info!(subnqn = %self.subnqn(), cntlid = %self.cntlid, "controller reset");
            effect = RegisterEffect::Reset;
        }
        if cc::shn(new) != 0 && cc::shn(old) == 0 {
            self.stop_io();
            Controller::forget_pcie_queues(st);
            st.csts = (st.csts & !(csts::RDY | csts::SHST_MASK)) | csts::SHST_COMPLETE;
            tracing::info!(subnqn = %self.subnqn(), cntlid = %self.cntlid, "controller shut down");
            effect = RegisterEffect::ShutDown;
        }
        if cc::shn(new) == 0 && cc::shn(old) != 0 {
            st.csts &= !csts::SHST_MASK;
        }
        Ok(effect)
    }

    /// CC.EN 0 -> 1: check the configuration the host chose (as Linux nvmet does); a bad one
    /// is reported through CSTS.CFS instead of RDY. Returns whether the controller is ready.
    fn enable(&self, st: &mut AdminState) -> bool {
        let c = st.cc;
        let sizes_ok = self.is_discovery() || (cc::iosqes(c) == IOSQES && cc::iocqes(c) == IOCQES);
        // A PCIe host must have set up its admin queue: sizes and page-aligned bases.
        let admin_queue_ok = self.kind == ControllerKind::Fabrics
            || (st.asq & 0xFFF == 0 && st.acq & 0xFFF == 0 && st.asq != 0 && st.acq != 0);
        if cc::mps(c) != 0 || cc::ams(c) != 0 || cc::css(c) != 0 || !sizes_ok || !admin_queue_ok {
            tracing::warn!(
                cc = c,
                cntlid = %self.cntlid,
                "invalid controller configuration"
            );
            st.csts |= csts::CFS;
            return false;
        }
        st.csts = (st.csts & !csts::CFS) | csts::RDY;
        if self.is_live() {
            self.enabled.store(true, Ordering::Release);
        }
        true
    }

    /// A register read by a transport that maps the registers (PCIe BAR0); fabrics hosts use
    /// Property Get, which ends here too.
    pub fn read_register(&self, offset: u32, size: PropertySize) -> Result<u64, Status> {
        self.property_get(
            &self.lock(),
            &PropertyCmd {
                size,
                offset,
                value: 0,
            },
        )
    }

    /// A register write by a transport that maps the registers, and what the transport must
    /// do about it (create the admin queue, tear queues down).
    pub fn write_register(
        &self,
        offset: u32,
        size: PropertySize,
        value: u64,
    ) -> Result<RegisterEffect, Status> {
        self.property_set(
            &mut self.lock(),
            &PropertyCmd {
                size,
                offset,
                value,
            },
        )
    }
}
