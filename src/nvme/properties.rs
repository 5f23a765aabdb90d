//! Controller properties reached by Property Get/Set (NVMe-oF 1.1, 3.4 and 3.5; NVMe Base 2.0,
//! 3.1.3 for the register layouts).

use super::Sqe;

/// Property offsets (NVMe Base 2.0, Figure 35).
pub mod offset {
    /// Controller Capabilities, 8 bytes.
    pub const CAP: u32 = 0x00;
    /// Version, 4 bytes.
    pub const VS: u32 = 0x08;
    /// Interrupt Mask Set (PCIe only).
    pub const INTMS: u32 = 0x0C;
    /// Interrupt Mask Clear (PCIe only).
    pub const INTMC: u32 = 0x10;
    /// Controller Configuration, 4 bytes.
    pub const CC: u32 = 0x14;
    /// Controller Status, 4 bytes.
    pub const CSTS: u32 = 0x1C;
    /// NVM Subsystem Reset, 4 bytes (not supported here).
    pub const NSSR: u32 = 0x20;
    /// Admin Queue Attributes, 4 bytes.
    pub const AQA: u32 = 0x24;
    /// Admin Submission Queue Base Address, 8 bytes.
    pub const ASQ: u32 = 0x28;
    /// Admin Completion Queue Base Address, 8 bytes.
    pub const ACQ: u32 = 0x30;
}

/// Version 1.3.0 in the VS layout (major 31:16, minor 15:8, tertiary 7:0).
pub const VS_1_3: u32 = 0x0001_0300;

/// Controller Configuration fields (NVMe Base 2.0, Figure 41).
pub mod cc {
    pub const EN: u32 = 1 << 0;
    pub const CSS_SHIFT: u32 = 4;
    pub const MPS_SHIFT: u32 = 7;
    pub const AMS_SHIFT: u32 = 11;
    pub const SHN_SHIFT: u32 = 14;
    pub const SHN_MASK: u32 = 0x3 << SHN_SHIFT;
    pub const IOSQES_SHIFT: u32 = 16;
    pub const IOCQES_SHIFT: u32 = 20;

    pub fn css(cc: u32) -> u32 {
        (cc >> CSS_SHIFT) & 0x7
    }
    pub fn mps(cc: u32) -> u32 {
        (cc >> MPS_SHIFT) & 0xF
    }
    pub fn ams(cc: u32) -> u32 {
        (cc >> AMS_SHIFT) & 0x7
    }
    pub fn shn(cc: u32) -> u32 {
        (cc >> SHN_SHIFT) & 0x3
    }
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> IOSQES_SHIFT) & 0xF
    }
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> IOCQES_SHIFT) & 0xF
    }
}

/// Controller Status fields (NVMe Base 2.0, Figure 42).
pub mod csts {
    pub const RDY: u32 = 1 << 0;
    pub const CFS: u32 = 1 << 1;
    pub const SHST_MASK: u32 = 0x3 << 2;
    pub const SHST_OCCURRING: u32 = 0x1 << 2;
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
}

/// Controller Capabilities (NVMe Base 2.0, Figure 36), the fields a fabrics target sets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cap {
    /// Maximum Queue Entries Supported, 0-based.
    pub mqes: u16,
    /// Contiguous Queues Required.
    pub cqr: bool,
    /// Timeout in 500 ms units for CSTS.RDY to follow CC.EN.
    pub to: u8,
    /// Command sets supported: bit 0 of CSS is the NVM command set.
    pub css: u8,
    /// Memory page size minimum, 2^(12 + MPSMIN).
    pub mpsmin: u8,
    /// Memory page size maximum, 2^(12 + MPSMAX).
    pub mpsmax: u8,
}

impl Cap {
    pub fn to_u64(self) -> u64 {
        u64::from(self.mqes)
            | (u64::from(self.cqr) << 16)
            | (u64::from(self.to) << 24)
            | (u64::from(self.css) << 37)
            | (u64::from(self.mpsmin & 0xF) << 48)
            | (u64::from(self.mpsmax & 0xF) << 52)
    }

    pub fn from_u64(raw: u64) -> Self {
        let b = raw.to_le_bytes();
        Self {
            mqes: u16::from_le_bytes([b[0], b[1]]),
            cqr: b[2] & 1 != 0,
            to: b[3],
            css: (raw >> 37).to_le_bytes()[0],
            mpsmin: b[6] & 0xF,
            mpsmax: b[6] >> 4,
        }
    }
}

/// Size of a property access, from ATTRIB bits 2:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertySize {
    Four,
    Eight,
    Unknown(u8),
}

impl PropertySize {
    pub fn from_attrib(attrib: u8) -> Self {
        match attrib & 0x7 {
            0 => Self::Four,
            1 => Self::Eight,
            other => Self::Unknown(other),
        }
    }

    pub fn to_attrib(self) -> u8 {
        match self {
            Self::Four => 0,
            Self::Eight => 1,
            Self::Unknown(raw) => raw & 0x7,
        }
    }
}

/// Property Get (fctype 0x04) and Property Set (fctype 0x00) fields (NVMe-oF 1.1, Figures 25
/// and 28): ATTRIB in byte 40, OFST in dword 11, VALUE in dwords 12-13 (Set only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PropertyCmd {
    pub size: PropertySize,
    pub offset: u32,
    pub value: u64,
}

impl PropertyCmd {
    pub fn parse(sqe: &Sqe) -> Self {
        Self {
            size: PropertySize::from_attrib(sqe.as_bytes()[40]),
            offset: sqe.cdw(11),
            value: u64::from(sqe.cdw(12)) | (u64::from(sqe.cdw(13)) << 32),
        }
    }

    pub fn emit(&self, sqe: &mut Sqe) {
        sqe.bytes_mut()[40] = self.size.to_attrib();
        let v = self.value.to_le_bytes();
        sqe.set_cdw(11, self.offset)
            .set_cdw(12, u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
            .set_cdw(13, u32::from_le_bytes([v[4], v[5], v[6], v[7]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_layout() {
        let cap = Cap {
            mqes: 127,
            cqr: true,
            to: 15,
            css: 1,
            mpsmin: 0,
            mpsmax: 0,
        };
        // MQES 0x7F, CQR bit 16, TO in byte 3, CSS bit 37.
        assert_eq!(cap.to_u64(), 0x0000_0020_0F01_007F);
        assert_eq!(Cap::from_u64(cap.to_u64()), cap);
    }

    #[test]
    fn property_cmd_round_trip() {
        let cmd = PropertyCmd {
            size: PropertySize::Eight,
            offset: offset::CAP,
            value: 0x1122_3344_5566_7788,
        };
        let mut sqe = Sqe::new(0x7F, 1);
        cmd.emit(&mut sqe);
        assert_eq!(sqe.as_bytes()[40], 1);
        assert_eq!(sqe.cdw(12), 0x5566_7788);
        assert_eq!(PropertyCmd::parse(&sqe), cmd);
        assert_eq!(PropertySize::from_attrib(5), PropertySize::Unknown(5));
        assert_eq!(cc::shn(1 << 14), 1);
    }
}
