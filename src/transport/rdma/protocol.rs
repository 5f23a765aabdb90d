//! NVMe/RDMA wire formats (NVMe/RDMA Transport Specification 1.0b): the private data the RDMA
//! CM carries with a connect request, its accept and its reject, the command capsule a host
//! SENDs, and the SGL descriptors a target reads from a command (keyed data blocks for data it
//! moves with RDMA READ and WRITE, offset data blocks for data in the capsule).
//!
//! Everything here is bytes in, values out: no verbs, no clock. Whatever comes from the host
//! is checked before it is used, and an answer the host must see (a reject status, an NVMe
//! status) is chosen here, in one place.

use crate::nvme::sqe::SQE_LEN;
use crate::nvme::{Sqe, Status};

/// The only record format (`recfmt`) of the private data, NVMe/RDMA 1.0b, 3.3.
pub const RECFMT_1_0: u16 = 0x0;

/// Bytes of a connect request's private data (NVMe/RDMA 1.0b, Figure 3); the CM may deliver
/// more (zero padding up to what the CM protocol carries), never fewer from a real host.
pub const CM_REQUEST_LEN: usize = 32;
/// Bytes of an accept's private data (Figure 4).
pub const CM_ACCEPT_LEN: usize = 32;
/// Bytes of a reject's private data (Figure 5).
pub const CM_REJECT_LEN: usize = 4;

/// Entries of an admin queue at most, as Linux's nvmet and its host use (NVME_AQ_DEPTH).
pub const ADMIN_QUEUE_DEPTH_MAX: u16 = 32;
/// The smallest queue: one entry is always left empty (NVMe Base 2.0, 3.3.1.2).
pub const QUEUE_DEPTH_MIN: u16 = 2;

/// Why the target refuses a connection: the status of a reject (NVMe/RDMA 1.0b, Figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectStatus {
    /// The private data is too short.
    InvalidLength,
    /// `recfmt` is not 0.
    InvalidRecordFormat,
    /// No such queue (qid past the controller's I/O queues).
    InvalidQid,
    /// The host's submission queue is too small or too large.
    InvalidHsqsize,
    /// The host's receive queue cannot hold the completions.
    InvalidHrqsize,
    /// The target has no resources (memory, QPs) for the queue.
    NoResources,
    /// The host's inbound RDMA READ depth (our reads of its memory) is unusable.
    InvalidIrd,
    /// The host's outbound RDMA READ depth is unusable.
    InvalidOrd,
    /// `cntlid` names no controller.
    InvalidCntlid,
    /// A value this target does not know (when reading a reject); kept so nothing is lost.
    Unknown(u16),
}

impl RejectStatus {
    pub fn to_u16(self) -> u16 {
        match self {
            Self::InvalidLength => 0x01,
            Self::InvalidRecordFormat => 0x02,
            Self::InvalidQid => 0x03,
            Self::InvalidHsqsize => 0x04,
            Self::InvalidHrqsize => 0x05,
            Self::NoResources => 0x06,
            Self::InvalidIrd => 0x07,
            Self::InvalidOrd => 0x08,
            Self::InvalidCntlid => 0x09,
            Self::Unknown(v) => v,
        }
    }

    pub fn from_u16(v: u16) -> Self {
        match v {
            0x01 => Self::InvalidLength,
            0x02 => Self::InvalidRecordFormat,
            0x03 => Self::InvalidQid,
            0x04 => Self::InvalidHsqsize,
            0x05 => Self::InvalidHrqsize,
            0x06 => Self::NoResources,
            0x07 => Self::InvalidIrd,
            0x08 => Self::InvalidOrd,
            0x09 => Self::InvalidCntlid,
            other => Self::Unknown(other),
        }
    }
}

impl core::fmt::Display for RejectStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self {
            Self::InvalidLength => "invalid private data length",
            Self::InvalidRecordFormat => "invalid record format",
            Self::InvalidQid => "invalid queue ID",
            Self::InvalidHsqsize => "invalid host send queue size",
            Self::InvalidHrqsize => "invalid host receive queue size",
            Self::NoResources => "no resources",
            Self::InvalidIrd => "invalid IRD",
            Self::InvalidOrd => "invalid ORD",
            Self::InvalidCntlid => "invalid controller ID",
            Self::Unknown(v) => return write!(f, "unknown status {v:#x}"),
        };
        f.write_str(what)
    }
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// The private data of an RDMA CM connect request (NVMe/RDMA 1.0b, Figure 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmRequest {
    pub recfmt: u16,
    /// 0 for the admin queue, else the I/O queue the host will Connect.
    pub qid: u16,
    /// Host receive queue size: completions the host can take at once (1's based).
    pub hrqsize: u16,
    /// Host send queue size: the submission queue size, 0's based like Connect's SQSIZE.
    pub hsqsize: u16,
    /// The controller an I/O queue belongs to (Linux sets it for I/O queues only).
    pub cntlid: u16,
}

impl CmRequest {
    /// Reads the private data of a connect request. Fewer than 32 bytes is
    /// [`RejectStatus::InvalidLength`], a record format other than 0
    /// [`RejectStatus::InvalidRecordFormat`]; bytes past 32 (the CM's padding) are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, RejectStatus> {
        if bytes.len() < CM_REQUEST_LEN {
            return Err(RejectStatus::InvalidLength);
        }
        let request = Self {
            recfmt: le16(bytes, 0),
            qid: le16(bytes, 2),
            hrqsize: le16(bytes, 4),
            hsqsize: le16(bytes, 6),
            cntlid: le16(bytes, 8),
        };
        if request.recfmt != RECFMT_1_0 {
            return Err(RejectStatus::InvalidRecordFormat);
        }
        Ok(request)
    }

    /// Writes the 32 bytes of the private data (what a host sends; for tests and tools).
    pub fn emit(&self, out: &mut [u8; CM_REQUEST_LEN]) {
        out.fill(0);
        out[0..2].copy_from_slice(&self.recfmt.to_le_bytes());
        out[2..4].copy_from_slice(&self.qid.to_le_bytes());
        out[4..6].copy_from_slice(&self.hrqsize.to_le_bytes());
        out[6..8].copy_from_slice(&self.hsqsize.to_le_bytes());
        out[8..10].copy_from_slice(&self.cntlid.to_le_bytes());
    }
}

/// The private data of the target's accept (NVMe/RDMA 1.0b, Figure 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CmAccept {
    pub recfmt: u16,
    /// Controller receive queue size: the command capsules the target has receives posted for.
    pub crqsize: u16,
}

impl CmAccept {
    pub fn new(crqsize: u16) -> Self {
        Self {
            recfmt: RECFMT_1_0,
            crqsize,
        }
    }

    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < CM_ACCEPT_LEN {
            return None;
        }
        Some(Self {
            recfmt: le16(bytes, 0),
            crqsize: le16(bytes, 2),
        })
    }

    pub fn emit(&self) -> [u8; CM_ACCEPT_LEN] {
        let mut out = [0u8; CM_ACCEPT_LEN];
        out[0..2].copy_from_slice(&self.recfmt.to_le_bytes());
        out[2..4].copy_from_slice(&self.crqsize.to_le_bytes());
        out
    }
}

/// The private data of the target's reject (NVMe/RDMA 1.0b, Figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmReject {
    pub recfmt: u16,
    pub status: RejectStatus,
}

impl CmReject {
    pub fn new(status: RejectStatus) -> Self {
        Self {
            recfmt: RECFMT_1_0,
            status,
        }
    }

    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < CM_REJECT_LEN {
            return None;
        }
        Some(Self {
            recfmt: le16(bytes, 0),
            status: RejectStatus::from_u16(le16(bytes, 2)),
        })
    }

    pub fn emit(&self) -> [u8; CM_REJECT_LEN] {
        let mut out = [0u8; CM_REJECT_LEN];
        out[0..2].copy_from_slice(&self.recfmt.to_le_bytes());
        out[2..4].copy_from_slice(&self.status.to_u16().to_le_bytes());
        out
    }
}

/// What the target allows a queue it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Entries of an I/O queue at most (`max_queue_depth`).
    pub max_queue_depth: u16,
    /// Entries of the admin queue at most (`max_aq_depth`, at most 32 here: see
    /// [`ADMIN_QUEUE_DEPTH_MAX`]).
    pub max_aq_depth: u16,
    /// I/O queues a controller may have (`max_io_qpairs_per_ctrlr`): the largest qid.
    pub max_io_qpairs: u16,
}

/// The sizes of an accepted queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSizes {
    pub qid: u16,
    /// Command capsules the target keeps receives posted for: the host's submission queue
    /// (`hsqsize + 1`); the accept's `crqsize`.
    pub recv_depth: u16,
    /// Completions the target may have sent and the host not yet consumed: its receive queue
    /// (`hrqsize`), never more than the submission queue needs.
    pub send_depth: u16,
}

/// Checks a connect request against the target's limits and sizes the queue, or says why the
/// connection is refused.
pub fn negotiate(request: &CmRequest, limits: &QueueLimits) -> Result<QueueSizes, RejectStatus> {
    let max_depth = if request.qid == 0 {
        limits.max_aq_depth.min(ADMIN_QUEUE_DEPTH_MAX)
    } else {
        if request.qid > limits.max_io_qpairs {
            return Err(RejectStatus::InvalidQid);
        }
        limits.max_queue_depth
    };
    let entries = request.hsqsize.saturating_add(1);
    if !(QUEUE_DEPTH_MIN..=max_depth).contains(&entries) {
        return Err(RejectStatus::InvalidHsqsize);
    }
    // A host whose receive queue cannot hold one completion per command in flight would be
    // overrun (receiver-not-ready retries, then a broken connection): the queue's depth is
    // what both sides can hold, at least the smallest queue.
    if request.hrqsize < QUEUE_DEPTH_MIN {
        return Err(RejectStatus::InvalidHrqsize);
    }
    Ok(QueueSizes {
        qid: request.qid,
        recv_depth: entries,
        send_depth: request.hrqsize.min(entries),
    })
}

/// The RDMA READs the target may have in flight on a queue (its initiator depth, ORD): what
/// the host's responder resources (its IRD) and the device allow. The target takes no READs
/// itself (its responder resources are 0). `None` when the host allows none: every command
/// with host data in its memory would hang, so the connection is refused
/// ([`RejectStatus::InvalidIrd`]).
pub fn read_depth(host_responder_resources: u8, device_max_init_rd_atom: u32) -> Option<u8> {
    let device = u8::try_from(device_max_init_rd_atom).unwrap_or(u8::MAX);
    let depth = host_responder_resources.min(device);
    (depth > 0).then_some(depth)
}

/// A command capsule as the host SENDs it: the command, then in-capsule data.
#[derive(Debug, Clone, Copy)]
pub struct Capsule<'a> {
    pub sqe: Sqe,
    /// The in-capsule data: whatever followed the command in the SEND.
    pub data: &'a [u8],
}

impl<'a> Capsule<'a> {
    /// Splits what one receive took in. Fewer than 64 bytes is no command at all: the host
    /// broke the protocol and the queue is torn down (Linux's nvmet does the same).
    pub fn parse(received: &'a [u8]) -> Option<Self> {
        let sqe = Sqe::parse(received)?;
        Some(Self {
            sqe,
            data: &received[SQE_LEN..],
        })
    }
}

/// Byte 15 of an SGL descriptor, the type in the high nibble and the subtype in the low one
/// (NVMe Base 2.0, Figures 117 and 118).
mod sgl_id {
    /// SGL Data Block: the offset subtype names in-capsule data.
    pub const TYPE_DATA_BLOCK: u8 = 0x0;
    /// Keyed SGL Data Block: host memory reached with RDMA READ and WRITE.
    pub const TYPE_KEYED_DATA_BLOCK: u8 = 0x4;
    /// Subtype: an address (keyed) .
    pub const SUBTYPE_ADDRESS: u8 = 0x0;
    /// Subtype: an offset into the capsule (data block).
    pub const SUBTYPE_OFFSET: u8 = 0x1;
    /// Subtype: an address, and the host asks the target to invalidate the key with its
    /// response (SEND with Invalidate).
    pub const SUBTYPE_INVALIDATE_KEY: u8 = 0xF;
}

/// Bytes 24..40 of a command: the data pointer, as SGL descriptor 1.
const DPTR: core::ops::Range<usize> = 24..40;

/// Where a command's data is, as its SGL descriptor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDescriptor {
    /// In host memory, moved with RDMA READ (host to controller) or WRITE (controller to
    /// host) through `key`; `invalidate`: the response is a SEND with Invalidate of `key`.
    Keyed {
        address: u64,
        length: u32,
        key: u32,
        invalidate: bool,
    },
    /// In the capsule, `length` bytes from `offset` into its data.
    InCapsule { offset: u32, length: u32 },
}

impl DataDescriptor {
    /// Bytes of host buffer the descriptor names.
    pub fn length(&self) -> u32 {
        match self {
            Self::Keyed { length, .. } | Self::InCapsule { length, .. } => *length,
        }
    }

    /// The key to invalidate with the response, if the host asked for it.
    pub fn invalidate_key(&self) -> Option<u32> {
        match self {
            Self::Keyed {
                key,
                invalidate: true,
                ..
            } => Some(*key),
            _ => None,
        }
    }

    /// Writes the descriptor as SGL descriptor 1 of `sqe` (what a host does; for tests and
    /// tools).
    pub fn emit(&self, sqe: &mut Sqe) {
        let mut raw = [0u8; 16];
        match *self {
            Self::Keyed {
                address,
                length,
                key,
                invalidate,
            } => {
                raw[0..8].copy_from_slice(&address.to_le_bytes());
                raw[8..11].copy_from_slice(&length.to_le_bytes()[..3]);
                raw[11..15].copy_from_slice(&key.to_le_bytes());
                let subtype = if invalidate {
                    sgl_id::SUBTYPE_INVALIDATE_KEY
                } else {
                    sgl_id::SUBTYPE_ADDRESS
                };
                raw[15] = (sgl_id::TYPE_KEYED_DATA_BLOCK << 4) | subtype;
            }
            Self::InCapsule { offset, length } => {
                raw[0..8].copy_from_slice(&u64::from(offset).to_le_bytes());
                raw[8..12].copy_from_slice(&length.to_le_bytes());
                raw[15] = (sgl_id::TYPE_DATA_BLOCK << 4) | sgl_id::SUBTYPE_OFFSET;
            }
        }
        sqe.bytes_mut()[DPTR].copy_from_slice(&raw);
    }
}

/// What bounds a command's data descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SglLimits {
    /// The largest keyed transfer (`max_io_size`, MDTS).
    pub max_io_size: u32,
    /// In-capsule data the queue takes (`in_capsule_data_size`; Identify's IOCCSZ says it).
    pub in_capsule_data_size: u32,
}

/// Reads SGL descriptor 1 of a command that came with `in_capsule` bytes of capsule data.
///
/// Statuses, as SPDK's and Linux's targets answer: a descriptor type (or subtype) other than
/// a keyed data block (address, or address with invalidate) or a data block with offset is
/// SGL Descriptor Type Invalid; a keyed block longer than `max_io_size` is Data SGL Length
/// Invalid; an offset past the capsule's data is Invalid SGL Offset, and in-capsule data
/// running past what the host sent (or what the queue takes) is Data SGL Length Invalid. All
/// with Do Not Retry: the same command fails the same way again.
pub fn parse_sgl(
    sqe: &Sqe,
    in_capsule: usize,
    limits: &SglLimits,
) -> Result<DataDescriptor, Status> {
    let raw = &sqe.as_bytes()[DPTR];
    let (kind, subtype) = (raw[15] >> 4, raw[15] & 0xF);
    match (kind, subtype) {
        (
            sgl_id::TYPE_KEYED_DATA_BLOCK,
            sgl_id::SUBTYPE_ADDRESS | sgl_id::SUBTYPE_INVALIDATE_KEY,
        ) => {
            let mut address = [0u8; 8];
            address.copy_from_slice(&raw[0..8]);
            let length = u32::from_le_bytes([raw[8], raw[9], raw[10], 0]);
            let key = u32::from_le_bytes([raw[11], raw[12], raw[13], raw[14]]);
            if length > limits.max_io_size {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            Ok(DataDescriptor::Keyed {
                address: u64::from_le_bytes(address),
                length,
                key,
                invalidate: subtype == sgl_id::SUBTYPE_INVALIDATE_KEY,
            })
        }
        (sgl_id::TYPE_DATA_BLOCK, sgl_id::SUBTYPE_OFFSET) => {
            let mut offset = [0u8; 8];
            offset.copy_from_slice(&raw[0..8]);
            let offset = u64::from_le_bytes(offset);
            let length = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
            let capsule = in_capsule.min(limits.in_capsule_data_size as usize);
            let Some(offset) = u32::try_from(offset)
                .ok()
                .filter(|&o| o as usize <= capsule)
            else {
                return Err(Status::INVALID_SGL_OFFSET.with_dnr());
            };
            if length as usize > capsule - offset as usize {
                return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
            }
            Ok(DataDescriptor::InCapsule { offset, length })
        }
        _ => Err(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's host sends for an I/O queue (qid 3, 128 entries, controller 1), laid out
    /// as struct nvme_rdma_cm_req: five little-endian u16s and 22 reserved bytes.
    const IO_REQUEST: [u8; 32] = [
        0x00, 0x00, // recfmt
        0x03, 0x00, // qid
        0x80, 0x00, // hrqsize 128
        0x7F, 0x00, // hsqsize 127 (0's based)
        0x01, 0x00, // cntlid
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    const LIMITS: QueueLimits = QueueLimits {
        max_queue_depth: 128,
        max_aq_depth: 128,
        max_io_qpairs: 127,
    };

    #[test]
    fn parses_a_linux_io_queue_request() {
        let request = CmRequest::parse(&IO_REQUEST).expect("valid");
        assert_eq!(
            request,
            CmRequest {
                recfmt: 0,
                qid: 3,
                hrqsize: 128,
                hsqsize: 127,
                cntlid: 1,
            }
        );
        let mut out = [0xAAu8; 32];
        request.emit(&mut out);
        assert_eq!(out, IO_REQUEST);
    }

    #[test]
    fn padding_past_32_bytes_is_ignored_and_short_data_refused() {
        // RoCE's CM delivers 56 bytes of private data: ours, then zeroes.
        let mut padded = [0u8; 56];
        padded[..32].copy_from_slice(&IO_REQUEST);
        assert_eq!(CmRequest::parse(&padded).map(|r| r.qid), Ok(3));
        assert_eq!(
            CmRequest::parse(&IO_REQUEST[..31]),
            Err(RejectStatus::InvalidLength)
        );
        assert_eq!(CmRequest::parse(&[]), Err(RejectStatus::InvalidLength));
        let mut other_format = IO_REQUEST;
        other_format[0] = 1;
        assert_eq!(
            CmRequest::parse(&other_format),
            Err(RejectStatus::InvalidRecordFormat)
        );
    }

    #[test]
    fn accept_and_reject_layouts() {
        let accept = CmAccept::new(32).emit();
        assert_eq!(accept[..4], [0x00, 0x00, 0x20, 0x00]);
        assert!(accept[4..].iter().all(|&b| b == 0));
        assert_eq!(CmAccept::parse(&accept), Some(CmAccept::new(32)));
        assert_eq!(CmAccept::parse(&accept[..31]), None);

        // struct nvme_rdma_cm_rej: recfmt, then the status (4 = invalid hsqsize).
        let reject = CmReject::new(RejectStatus::InvalidHsqsize).emit();
        assert_eq!(reject, [0x00, 0x00, 0x04, 0x00]);
        assert_eq!(
            CmReject::parse(&reject),
            Some(CmReject::new(RejectStatus::InvalidHsqsize))
        );
        assert_eq!(CmReject::parse(&reject[..3]), None);
    }

    #[test]
    fn reject_codes_are_the_specs() {
        let codes = [
            (RejectStatus::InvalidLength, 1),
            (RejectStatus::InvalidRecordFormat, 2),
            (RejectStatus::InvalidQid, 3),
            (RejectStatus::InvalidHsqsize, 4),
            (RejectStatus::InvalidHrqsize, 5),
            (RejectStatus::NoResources, 6),
            (RejectStatus::InvalidIrd, 7),
            (RejectStatus::InvalidOrd, 8),
            (RejectStatus::InvalidCntlid, 9),
        ];
        for (status, code) in codes {
            assert_eq!(status.to_u16(), code);
            assert_eq!(RejectStatus::from_u16(code), status);
        }
        assert_eq!(RejectStatus::from_u16(0x42), RejectStatus::Unknown(0x42));
        assert_eq!(RejectStatus::Unknown(0x42).to_u16(), 0x42);
    }

    #[test]
    fn negotiation_sizes_and_refuses() {
        let request = CmRequest::parse(&IO_REQUEST).expect("valid");
        assert_eq!(
            negotiate(&request, &LIMITS),
            Ok(QueueSizes {
                qid: 3,
                recv_depth: 128,
                send_depth: 128,
            })
        );
        // Linux's admin queue: 32 entries (hsqsize 31), hrqsize 32.
        let admin = CmRequest {
            hrqsize: 32,
            hsqsize: 31,
            qid: 0,
            ..request
        };
        assert_eq!(negotiate(&admin, &LIMITS).map(|s| s.recv_depth), Ok(32));
        let big_admin = CmRequest {
            hsqsize: 32,
            ..admin
        };
        assert_eq!(
            negotiate(&big_admin, &LIMITS),
            Err(RejectStatus::InvalidHsqsize)
        );
        let too_deep = CmRequest {
            hsqsize: 128,
            ..request
        };
        assert_eq!(
            negotiate(&too_deep, &LIMITS),
            Err(RejectStatus::InvalidHsqsize)
        );
        let one_entry = CmRequest {
            hsqsize: 0,
            ..request
        };
        assert_eq!(
            negotiate(&one_entry, &LIMITS),
            Err(RejectStatus::InvalidHsqsize)
        );
        let wrapping = CmRequest {
            hsqsize: u16::MAX,
            ..request
        };
        assert_eq!(
            negotiate(&wrapping, &LIMITS),
            Err(RejectStatus::InvalidHsqsize)
        );
        let past_qpairs = CmRequest {
            qid: 128,
            ..request
        };
        assert_eq!(
            negotiate(&past_qpairs, &LIMITS),
            Err(RejectStatus::InvalidQid)
        );
        let no_receives = CmRequest {
            hrqsize: 1,
            ..request
        };
        assert_eq!(
            negotiate(&no_receives, &LIMITS),
            Err(RejectStatus::InvalidHrqsize)
        );
        let small_receives = CmRequest {
            hrqsize: 16,
            ..request
        };
        assert_eq!(
            negotiate(&small_receives, &LIMITS).map(|s| (s.recv_depth, s.send_depth)),
            Ok((128, 16))
        );
    }

    #[test]
    fn read_depth_is_the_smaller_and_never_zero() {
        assert_eq!(read_depth(16, 128), Some(16));
        assert_eq!(read_depth(16, 4), Some(4));
        assert_eq!(read_depth(255, 100_000), Some(255));
        assert_eq!(read_depth(0, 16), None);
        assert_eq!(read_depth(16, 0), None);
    }

    fn sqe_with_dptr(dptr: [u8; 16]) -> Sqe {
        let mut sqe = Sqe::new(0x01, 7);
        sqe.bytes_mut()[24..40].copy_from_slice(&dptr);
        sqe
    }

    const SGL_LIMITS: SglLimits = SglLimits {
        max_io_size: 131_072,
        in_capsule_data_size: 4096,
    };

    #[test]
    fn keyed_descriptor_bytes() {
        // struct nvme_keyed_sgl_desc: addr le64, length le24, key le32, type 0x4F (keyed,
        // invalidate) as Linux's host sends after a fast registration.
        let dptr = [
            0x00, 0x10, 0x32, 0x54, 0x76, 0x98, 0x00, 0x00, // addr 0x9876_5432_1000
            0x00, 0x10, 0x00, // length 4096
            0x78, 0x56, 0x34, 0x12, // key 0x12345678
            0x4F,
        ];
        let sqe = sqe_with_dptr(dptr);
        let desc = parse_sgl(&sqe, 0, &SGL_LIMITS).expect("keyed");
        assert_eq!(
            desc,
            DataDescriptor::Keyed {
                address: 0x9876_5432_1000,
                length: 4096,
                key: 0x1234_5678,
                invalidate: true,
            }
        );
        assert_eq!(desc.invalidate_key(), Some(0x1234_5678));
        let mut again = Sqe::new(0x01, 7);
        desc.emit(&mut again);
        assert_eq!(again.as_bytes()[24..40], dptr);

        let mut plain = dptr;
        plain[15] = 0x40;
        let desc = parse_sgl(&sqe_with_dptr(plain), 0, &SGL_LIMITS).expect("keyed");
        assert_eq!(desc.invalidate_key(), None);
        assert_eq!(desc.length(), 4096);
    }

    #[test]
    fn keyed_length_is_24_bits_and_bounded() {
        let mut dptr = [0u8; 16];
        dptr[8..11].copy_from_slice(&[0x00, 0x00, 0x02]); // 128 KiB
        dptr[11..15].copy_from_slice(&[0xFF; 4]); // a key with every bit set
        dptr[15] = 0x40;
        assert_eq!(
            parse_sgl(&sqe_with_dptr(dptr), 0, &SGL_LIMITS).map(|d| d.length()),
            Ok(131_072)
        );
        dptr[8] = 0x01; // one byte more than max_io_size
        assert_eq!(
            parse_sgl(&sqe_with_dptr(dptr), 0, &SGL_LIMITS),
            Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
        );
        // A zero-length keyed block is a command with no data.
        let mut empty = [0u8; 16];
        empty[15] = 0x40;
        assert_eq!(
            parse_sgl(&sqe_with_dptr(empty), 0, &SGL_LIMITS).map(|d| d.length()),
            Ok(0)
        );
    }

    #[test]
    fn offset_descriptor_within_the_capsule() {
        // struct nvme_sgl_desc: addr (the offset) le64, length le32, 3 reserved, type 0x01.
        let mut dptr = [0u8; 16];
        dptr[8..12].copy_from_slice(&1024u32.to_le_bytes());
        dptr[15] = 0x01;
        let sqe = sqe_with_dptr(dptr);
        assert_eq!(
            parse_sgl(&sqe, 1024, &SGL_LIMITS),
            Ok(DataDescriptor::InCapsule {
                offset: 0,
                length: 1024
            })
        );
        let desc = DataDescriptor::InCapsule {
            offset: 0,
            length: 1024,
        };
        let mut again = Sqe::new(0x01, 7);
        desc.emit(&mut again);
        assert_eq!(again.as_bytes()[24..40], dptr);
        // The host sent less than the descriptor claims.
        assert_eq!(
            parse_sgl(&sqe, 1023, &SGL_LIMITS),
            Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
        );
        // An offset inside the data, and the length after it.
        dptr[0..8].copy_from_slice(&512u64.to_le_bytes());
        dptr[8..12].copy_from_slice(&512u32.to_le_bytes());
        assert_eq!(
            parse_sgl(&sqe_with_dptr(dptr), 1024, &SGL_LIMITS),
            Ok(DataDescriptor::InCapsule {
                offset: 512,
                length: 512
            })
        );
        dptr[8..12].copy_from_slice(&513u32.to_le_bytes());
        assert_eq!(
            parse_sgl(&sqe_with_dptr(dptr), 1024, &SGL_LIMITS),
            Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
        );
        // An offset past the data, and one that does not fit 32 bits.
        dptr[0..8].copy_from_slice(&1025u64.to_le_bytes());
        dptr[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            parse_sgl(&sqe_with_dptr(dptr), 1024, &SGL_LIMITS),
            Err(Status::INVALID_SGL_OFFSET.with_dnr())
        );
        dptr[0..8].copy_from_slice(&(1u64 << 32).to_le_bytes());
        assert_eq!(
            parse_sgl(&sqe_with_dptr(dptr), 1024, &SGL_LIMITS),
            Err(Status::INVALID_SGL_OFFSET.with_dnr())
        );
        // More in the capsule than the queue takes counts as not sent.
        let mut big = [0u8; 16];
        big[8..12].copy_from_slice(&8192u32.to_le_bytes());
        big[15] = 0x01;
        assert_eq!(
            parse_sgl(&sqe_with_dptr(big), 8192, &SGL_LIMITS),
            Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
        );
    }

    #[test]
    fn other_descriptors_are_refused() {
        // Transport data block (NVMe/TCP's), segment, last segment, bit bucket, a keyed
        // block with a reserved subtype, a data block with the address subtype (host memory
        // the target cannot reach without a key).
        for id in [0x5A, 0x20, 0x30, 0x10, 0x41, 0x00, 0xF0] {
            let mut dptr = [0u8; 16];
            dptr[15] = id;
            assert_eq!(
                parse_sgl(&sqe_with_dptr(dptr), 4096, &SGL_LIMITS),
                Err(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr()),
                "descriptor {id:#04x}"
            );
        }
    }

    #[test]
    fn capsule_splits_command_and_data() {
        let mut received = vec![0u8; 64 + 8];
        received[0] = 0x01;
        received[2..4].copy_from_slice(&9u16.to_le_bytes());
        received[64..].copy_from_slice(b"in-capsl");
        let capsule = Capsule::parse(&received).expect("a command");
        assert_eq!(capsule.sqe.cid(), 9);
        assert_eq!(capsule.data, b"in-capsl");
        assert!(Capsule::parse(&received[..63]).is_none());
        assert_eq!(
            Capsule::parse(&received[..64]).map(|c| c.data.len()),
            Some(0)
        );
    }
}
