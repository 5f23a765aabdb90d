//! Completion queue entry (NVMe Base 2.0, 4.6).

use super::Status;

/// Size of a completion queue entry in bytes.
pub const CQE_LEN: usize = 16;

/// One completion. The phase bit is a PCIe queue detail and is not stored here; transports
/// that need it (vfio-user) set it when writing the entry into guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cqe {
    /// Command specific result, dword 0.
    pub dw0: u32,
    /// Command specific result, dword 1.
    pub dw1: u32,
    /// Submission queue head pointer.
    pub sqhd: u16,
    /// Submission queue identifier.
    pub sqid: u16,
    /// Command identifier.
    pub cid: u16,
    pub status: Status,
}

impl Cqe {
    /// A completion for `cid` with `status` and zero results.
    pub fn new(cid: u16, status: Status) -> Self {
        Self {
            cid,
            status,
            ..Self::default()
        }
    }

    /// Reads a completion from the start of `buf`; `None` if it holds fewer than 16 bytes.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..CQE_LEN)?;
        let word = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let dword = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Some(Self {
            dw0: dword(0),
            dw1: dword(4),
            sqhd: word(8),
            sqid: word(10),
            cid: word(12),
            status: Status::from_raw(word(14) >> 1),
        })
    }

    /// Writes the completion into the first 16 bytes of `buf` with the phase bit clear.
    ///
    /// # Panics
    /// If `buf` is shorter than 16 bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..CQE_LEN];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&(self.status.to_raw() << 1).to_le_bytes());
    }

    pub fn to_bytes(&self) -> [u8; CQE_LEN] {
        let mut b = [0u8; CQE_LEN];
        self.emit(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_into_junk() {
        let cqe = Cqe {
            dw0: 0xDEAD_BEEF,
            dw1: 1,
            sqhd: 9,
            sqid: 2,
            cid: 0x1234,
            status: Status::INVALID_NAMESPACE.with_dnr(),
        };
        let mut buf = [0xAAu8; 20];
        cqe.emit(&mut buf);
        assert_eq!(Cqe::parse(&buf), Some(cqe));
        assert_eq!(&buf[16..], &[0xAA; 4]);
        // SC 0x0B in bits 8:1, DNR in bit 15.
        assert_eq!(u16::from_le_bytes([buf[14], buf[15]]), (0x0B << 1) | 0x8000);
    }
}
