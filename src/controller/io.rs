//! I/O command validation (NVM Command Set 1.0, 3): the controller checks, the transport moves
//! data and calls the backend.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::nvme::opcode::io;
use crate::nvme::status::sct;
use crate::nvme::{Nsid, Sqe, Status};

use super::{Controller, Namespace};

/// Namespace Is Write Protected (NVMe Base 2.0, Figure 99): what Linux nvmet answers for writes
/// to a read-only namespace.
const NS_WRITE_PROTECTED: Status = Status::new(sct::GENERIC, 0x20);

/// What the transport must do for one I/O command.
#[derive(Debug, Clone)]
pub struct IoPlan {
    pub ns: Arc<Namespace>,
    pub op: IoOp,
    /// Bytes of data to move (host-to-controller for Write, Compare and DSM, controller-to-host
    /// for Read); 0 for Flush and Write Zeroes.
    pub data_len: u32,
}

/// The checked operation, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOp {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        len: u64,
        fua: bool,
    },
    /// Read `len` bytes at `offset` and compare them with the host's data; a mismatch is
    /// `Status::COMPARE_FAILURE`.
    Compare {
        offset: u64,
        len: u64,
    },
    Flush,
    WriteZeroes {
        offset: u64,
        len: u64,
        fua: bool,
    },
    /// Dataset Management with the Deallocate attribute. Empty in the plan: the ranges come
    /// from the data (`data_len` = 16 * NR), read with [`dsm_ranges`] once it has arrived.
    Deallocate(Vec<(u64, u64)>),
    /// Dataset Management without Deallocate: receive the data, then complete with success.
    None,
}

/// Dword 12 bit 30 of Read, Write, Compare and Write Zeroes.
const FUA: u32 = 1 << 30;
/// Dword 11 bit 2 of Dataset Management: Attribute - Deallocate.
const DSM_AD: u32 = 1 << 2;

impl Controller {
    /// Validates an I/O command and says what the transport must do. `buffer_len` is how much
    /// data the command's data pointer describes, as the transport found it (an SGL's length
    /// on fabrics; a PCIe transport, whose PRPs describe what the command needs, passes
    /// `u32::MAX`). Never blocks: reads only atomics and the namespace map.
    pub fn prepare_io(&self, sqe: &Sqe, buffer_len: u32) -> Result<IoPlan, Status> {
        if !self.is_enabled() {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        // Fused Compare and Write is not supported (FUSES = 0).
        if sqe.fuse() != 0 {
            return Err(Status::INVALID_FIELD.with_dnr());
        }
        if !matches!(
            sqe.opcode(),
            io::READ
                | io::WRITE
                | io::COMPARE
                | io::FLUSH
                | io::WRITE_ZEROES
                | io::DATASET_MANAGEMENT
        ) {
            return Err(Status::INVALID_OPCODE.with_dnr());
        }
        let ns = self
            .subsys
            .namespace(Nsid(sqe.nsid()))
            .ok_or(Status::INVALID_NAMESPACE.with_dnr())?;
        let writes = matches!(
            sqe.opcode(),
            io::WRITE | io::WRITE_ZEROES | io::DATASET_MANAGEMENT
        );
        if writes && ns.read_only() {
            return Err(NS_WRITE_PROTECTED.with_dnr());
        }
        // With the volatile write cache turned off, every write must be durable at once.
        let force_fua = !self.write_cache.load(Ordering::Relaxed);
        let (op, data_len) = match sqe.opcode() {
            io::FLUSH => (IoOp::Flush, 0),
            io::DATASET_MANAGEMENT => {
                let nr = (sqe.cdw(10) & 0xFF) + 1;
                let data_len = nr * 16;
                if buffer_len < data_len {
                    return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
                }
                let op = if sqe.cdw(11) & DSM_AD != 0 {
                    IoOp::Deallocate(Vec::new())
                } else {
                    IoOp::None
                };
                (op, data_len)
            }
            opc => {
                let (offset, len) = self.lba_range(&ns, sqe)?;
                let fua = sqe.cdw(12) & FUA != 0 || force_fua;
                if opc == io::WRITE_ZEROES {
                    (IoOp::WriteZeroes { offset, len, fua }, 0)
                } else {
                    // Transfers are bounded by MDTS (max_io_size) and by what the SGL carries.
                    let data_len = u32::try_from(len)
                        .ok()
                        .filter(|&n| n <= self.limits.max_io_size)
                        .ok_or(Status::INVALID_FIELD.with_dnr())?;
                    if buffer_len < data_len {
                        return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
                    }
                    let op = match opc {
                        io::READ => IoOp::Read { offset, len },
                        io::WRITE => IoOp::Write { offset, len, fua },
                        _ => IoOp::Compare { offset, len },
                    };
                    (op, data_len)
                }
            }
        };
        Ok(IoPlan { ns, op, data_len })
    }

    /// SLBA (dwords 10-11) and NLB (dword 12 bits 15:0, 0-based) as a byte range inside the
    /// namespace.
    fn lba_range(&self, ns: &Namespace, sqe: &Sqe) -> Result<(u64, u64), Status> {
        let slba = u64::from(sqe.cdw(10)) | (u64::from(sqe.cdw(11)) << 32);
        let nlb = u64::from(sqe.cdw(12) & 0xFFFF) + 1;
        let out_of_range = Status::LBA_OUT_OF_RANGE.with_dnr();
        let end = slba.checked_add(nlb).ok_or(out_of_range)?;
        if end > ns.blocks() {
            return Err(out_of_range);
        }
        let shift = ns.block_shift();
        Ok((slba << shift, nlb << shift))
    }
}

/// Reads the Dataset Management ranges (16 bytes each: attributes, length in blocks, start
/// LBA) from the data of a Deallocate plan, as byte ranges. Empty ranges are skipped.
pub fn dsm_ranges(ns: &Namespace, data: &[u8]) -> Result<Vec<(u64, u64)>, Status> {
    if data.len() < 16 || data.len() % 16 != 0 {
        return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    let shift = ns.block_shift();
    let mut out = Vec::with_capacity(data.len() / 16);
    for range in data.chunks_exact(16) {
        let nlb = u64::from(u32::from_le_bytes([range[4], range[5], range[6], range[7]]));
        let mut slba = [0u8; 8];
        slba.copy_from_slice(&range[8..16]);
        let slba = u64::from_le_bytes(slba);
        if nlb == 0 {
            continue;
        }
        let end = slba
            .checked_add(nlb)
            .ok_or(Status::LBA_OUT_OF_RANGE.with_dnr())?;
        if end > ns.blocks() {
            return Err(Status::LBA_OUT_OF_RANGE.with_dnr());
        }
        out.push((slba << shift, nlb << shift));
    }
    Ok(out)
}
