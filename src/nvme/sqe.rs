//! Submission queue entry: a typed view over the 64 bytes of a command (NVMe Base 2.0, 4.2).

/// Byte ranges of the common command format.
mod field {
    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const CID: core::ops::Range<usize> = 2..4;
    pub const NSID: core::ops::Range<usize> = 4..8;
    pub const DPTR: core::ops::Range<usize> = 24..40;
    pub const CDW10: usize = 40;
}

/// Size of a submission queue entry in bytes.
pub const SQE_LEN: usize = 64;

/// One command. Copying it is cheap; every accessor reads the raw bytes, so a command with
/// fields this target does not know still round-trips unchanged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sqe {
    bytes: [u8; SQE_LEN],
}

impl Default for Sqe {
    fn default() -> Self {
        Self {
            bytes: [0; SQE_LEN],
        }
    }
}

impl core::fmt::Debug for Sqe {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sqe")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("cid", &self.cid())
            .field("nsid", &self.nsid())
            .field("cdw10", &format_args!("{:#x}", self.cdw(10)))
            .field("cdw11", &format_args!("{:#x}", self.cdw(11)))
            .finish_non_exhaustive()
    }
}

impl Sqe {
    /// A zeroed command with the given opcode and command identifier.
    pub fn new(opcode: u8, cid: u16) -> Self {
        let mut sqe = Self::default();
        sqe.bytes[field::OPCODE] = opcode;
        sqe.set_cid(cid);
        sqe
    }

    /// Reads a command from exactly 64 bytes.
    pub fn from_bytes(bytes: [u8; SQE_LEN]) -> Self {
        Self { bytes }
    }

    /// Reads a command from the start of `buf`; `None` if it holds fewer than 64 bytes.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let bytes: [u8; SQE_LEN] = buf.get(..SQE_LEN)?.try_into().ok()?;
        Some(Self { bytes })
    }

    pub fn as_bytes(&self) -> &[u8; SQE_LEN] {
        &self.bytes
    }

    pub fn opcode(&self) -> u8 {
        self.bytes[field::OPCODE]
    }

    /// Fused operation bits (CDW0 bits 9:8): 0 normal, 1 first of a fused pair, 2 second.
    pub fn fuse(&self) -> u8 {
        self.bytes[field::FLAGS] & 0x3
    }

    /// PRP or SGL for data transfer (CDW0 bits 15:14); fabrics commands always use SGLs.
    pub fn psdt(&self) -> u8 {
        self.bytes[field::FLAGS] >> 6
    }

    pub fn cid(&self) -> u16 {
        u16::from_le_bytes([self.bytes[2], self.bytes[3]])
    }

    pub fn nsid(&self) -> u32 {
        self.dword_at(field::NSID.start)
    }

    /// Fabrics command type; shares its byte with the NSID field (NVMe-oF 1.1, 3.3).
    pub fn fctype(&self) -> u8 {
        self.bytes[4]
    }

    /// Command dword `n` (0..=15).
    ///
    /// # Panics
    /// If `n > 15`; callers pass constants.
    pub fn cdw(&self, n: usize) -> u32 {
        assert!(n < 16, "command dword {n} out of range");
        self.dword_at(n * 4)
    }

    /// The data pointer read as an SGL descriptor.
    /// PRP Entry 1 (dwords 6-7), the data pointer of a PCIe command that uses PRPs.
    pub fn prp1(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.as_bytes()[24..32]);
        u64::from_le_bytes(b)
    }

    /// PRP Entry 2 (dwords 8-9).
    pub fn prp2(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.as_bytes()[32..40]);
        u64::from_le_bytes(b)
    }

    pub fn sgl(&self) -> Sgl {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&self.bytes[field::DPTR]);
        Sgl::from_bytes(raw)
    }

    pub fn set_opcode(&mut self, opcode: u8) -> &mut Self {
        self.bytes[field::OPCODE] = opcode;
        self
    }

    pub fn set_flags(&mut self, flags: u8) -> &mut Self {
        self.bytes[field::FLAGS] = flags;
        self
    }

    pub fn set_cid(&mut self, cid: u16) -> &mut Self {
        self.bytes[field::CID].copy_from_slice(&cid.to_le_bytes());
        self
    }

    pub fn set_nsid(&mut self, nsid: u32) -> &mut Self {
        self.bytes[field::NSID].copy_from_slice(&nsid.to_le_bytes());
        self
    }

    pub fn set_fctype(&mut self, fctype: u8) -> &mut Self {
        self.bytes[4] = fctype;
        self
    }

    /// Sets command dword `n` (0..=15). Dword 0 holds opcode, flags and CID.
    ///
    /// # Panics
    /// If `n > 15`; callers pass constants.
    pub fn set_cdw(&mut self, n: usize, value: u32) -> &mut Self {
        assert!(n < 16, "command dword {n} out of range");
        self.bytes[n * 4..n * 4 + 4].copy_from_slice(&value.to_le_bytes());
        self
    }

    pub fn set_sgl(&mut self, sgl: Sgl) -> &mut Self {
        self.bytes[field::DPTR].copy_from_slice(&sgl.to_bytes());
        self
    }

    /// Raw access for fields without an accessor (fabrics commands lay out bytes freely).
    pub fn bytes_mut(&mut self) -> &mut [u8; SQE_LEN] {
        &mut self.bytes
    }

    fn dword_at(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }
}

const _: () = assert!(field::CDW10 == 40);

/// An SGL descriptor (NVMe Base 2.0, 4.3.2): address, length, and type in byte 15.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sgl {
    pub address: u64,
    pub length: u32,
    /// Descriptor type, the high nibble of byte 15.
    pub kind: u8,
    /// Descriptor subtype, the low nibble of byte 15.
    pub subtype: u8,
}

impl Sgl {
    /// SGL Data Block descriptor type.
    pub const TYPE_DATA_BLOCK: u8 = 0x0;
    /// Transport SGL Data Block descriptor type (NVMe/TCP: data moves in R2T/C2HData).
    pub const TYPE_TRANSPORT_DATA_BLOCK: u8 = 0x5;
    /// Subtype "offset": the address is an offset into in-capsule data.
    pub const SUBTYPE_OFFSET: u8 = 0x1;
    /// Subtype "transport specific" used with the Transport Data Block type.
    pub const SUBTYPE_TRANSPORT: u8 = 0xA;

    pub fn from_bytes(raw: [u8; 16]) -> Self {
        let mut address = [0u8; 8];
        address.copy_from_slice(&raw[0..8]);
        Self {
            address: u64::from_le_bytes(address),
            length: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
            kind: raw[15] >> 4,
            subtype: raw[15] & 0xF,
        }
    }

    pub fn to_bytes(self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&self.address.to_le_bytes());
        raw[8..12].copy_from_slice(&self.length.to_le_bytes());
        raw[15] = (self.kind << 4) | (self.subtype & 0xF);
        raw
    }

    /// In-capsule data of `length` bytes starting at offset 0.
    pub fn in_capsule(length: u32) -> Self {
        Self {
            address: 0,
            length,
            kind: Self::TYPE_DATA_BLOCK,
            subtype: Self::SUBTYPE_OFFSET,
        }
    }

    /// Data carried by the transport (R2T/H2CData or C2HData).
    pub fn transport(length: u32) -> Self {
        Self {
            address: 0,
            length,
            kind: Self::TYPE_TRANSPORT_DATA_BLOCK,
            subtype: Self::SUBTYPE_TRANSPORT,
        }
    }

    pub fn is_in_capsule(&self) -> bool {
        self.kind == Self::TYPE_DATA_BLOCK && self.subtype == Self::SUBTYPE_OFFSET
    }

    pub fn is_transport(&self) -> bool {
        self.kind == Self::TYPE_TRANSPORT_DATA_BLOCK && self.subtype == Self::SUBTYPE_TRANSPORT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let mut sqe = Sqe::new(0x02, 0xBEEF);
        sqe.set_nsid(7).set_cdw(10, 0x1122_3344).set_cdw(12, 15);
        sqe.set_sgl(Sgl::transport(8192));
        let again = Sqe::parse(sqe.as_bytes()).expect("64 bytes");
        assert_eq!(again.opcode(), 0x02);
        assert_eq!(again.cid(), 0xBEEF);
        assert_eq!(again.nsid(), 7);
        assert_eq!(again.cdw(10), 0x1122_3344);
        assert_eq!(again.cdw(12), 15);
        assert_eq!(again.sgl(), Sgl::transport(8192));
        assert_eq!(again.as_bytes()[39], 0x5A);
    }

    #[test]
    fn short_buffer_is_none() {
        assert!(Sqe::parse(&[0u8; 63]).is_none());
    }
}
