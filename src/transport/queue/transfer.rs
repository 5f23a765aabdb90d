//! Which way a command's data goes and how much of it, and the backend request an I/O plan
//! becomes: facts of the NVMe command set, the same on every transport.

use crate::backend::{IoKind, IoRequest};
use crate::controller::{IoOp, IoPlan};
use crate::nvme::opcode;
use crate::nvme::{Sqe, Status};
use crate::transport::buffer_pool::DataBuf;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Direction {
    None,
    HostToController,
    ControllerToHost,
}

/// Data transfer direction from the opcode's low bits (NVMe Base 2.0, Figure 28); fabrics
/// commands encode it in the command type.
pub(super) fn transfer_direction(sqe: &Sqe) -> Direction {
    let code = if sqe.opcode() == opcode::FABRICS {
        sqe.fctype()
    } else {
        sqe.opcode()
    };
    match code & 0x3 {
        0x1 => Direction::HostToController,
        0x2 => Direction::ControllerToHost,
        _ => Direction::None,
    }
}

/// Bytes an I/O command moves: (host to controller, controller to host through a buffer).
pub(super) fn transfer_lens(plan: &IoPlan) -> (usize, usize) {
    let len = plan.data_len as usize;
    match plan.op {
        IoOp::Write { .. } | IoOp::Deallocate(_) => (len, 0),
        IoOp::Compare { .. } => (len, len),
        IoOp::Read { .. } => (0, len),
        // Dataset Management without Deallocate does nothing: its ranges are not fetched.
        IoOp::Flush | IoOp::WriteZeroes { .. } | IoOp::None => (0, 0),
    }
}

/// What the backend is asked to do for `plan`, with the command's buffers: `read` is where a
/// read lands (backends fill the whole buffer of a read that succeeds), `host` the data the
/// host sent. `Ok(None)`: nothing to do, the command succeeds as it is.
pub(super) fn io_request(
    plan: &IoPlan,
    read: &mut DataBuf,
    host: &mut DataBuf,
) -> Result<Option<IoRequest>, Status> {
    let request = match &plan.op {
        IoOp::Read { offset, len } | IoOp::Compare { offset, len } => IoRequest {
            kind: IoKind::Read,
            offset: *offset,
            len: *len,
            buf: read.take_bytes(),
        },
        IoOp::Write { offset, len, fua } => IoRequest {
            kind: IoKind::Write { fua: *fua },
            offset: *offset,
            len: *len,
            buf: host.take_bytes(),
        },
        IoOp::Flush => IoRequest {
            kind: IoKind::Flush,
            offset: 0,
            len: 0,
            buf: Vec::new(),
        },
        IoOp::WriteZeroes { offset, len, fua } => IoRequest {
            kind: IoKind::WriteZeroes { fua: *fua },
            offset: *offset,
            len: *len,
            buf: Vec::new(),
        },
        IoOp::Deallocate(_) => IoRequest {
            kind: IoKind::Deallocate(crate::controller::dsm_ranges(&plan.ns, host)?),
            offset: 0,
            len: 0,
            buf: Vec::new(),
        },
        IoOp::None => return Ok(None),
    };
    Ok(Some(request))
}
