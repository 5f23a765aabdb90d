//! Get Log Page (NVMe Base 2.0, 5.16), the discovery log page (NVMe-oF 1.1, 5.3) and the
//! Asynchronous Event completion layout (NVMe Base 2.0, 5.2).

use super::Sqe;
use super::wire::{get_nul_padded, get_u16, get_u64, put_nul_padded, put_u16, put_u64};

/// Log page identifiers (NVMe Base 2.0, Figure 202).
pub mod lid {
    pub const SUPPORTED_LOGS: u8 = 0x00;
    pub const ERROR: u8 = 0x01;
    pub const SMART: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NS_LIST: u8 = 0x04;
    pub const COMMAND_EFFECTS: u8 = 0x05;
    pub const DISCOVERY: u8 = 0x70;
}

/// Size of one error information entry.
pub const ERROR_ENTRY_LEN: usize = 64;
/// SMART / Health Information page size.
pub const SMART_LEN: usize = 512;
/// Firmware Slot Information page size.
pub const FIRMWARE_SLOT_LEN: usize = 512;
/// Changed Namespace List page size (1024 NSIDs).
pub const CHANGED_NS_LIST_LEN: usize = 4096;
/// Supported Log Pages page size (256 dwords).
pub const SUPPORTED_LOGS_LEN: usize = 1024;
/// Commands Supported and Effects page size.
pub const COMMAND_EFFECTS_LEN: usize = 4096;

/// Commands Supported and Effects entry bits (NVMe Base 2.0, Figure 210).
pub mod effects {
    /// Command supported.
    pub const CSUPP: u32 = 1 << 0;
    /// Logical block content change.
    pub const LBCC: u32 = 1 << 1;
}

/// Get Log Page command fields (dwords 10 to 13).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetLogPageCmd {
    pub lid: u8,
    /// Log specific field (bits 14:8 of dword 10).
    pub lsp: u8,
    /// Retain Asynchronous Event.
    pub rae: bool,
    /// Number of dwords, 0-based (NUMDU:NUMDL).
    pub numd: u32,
    /// Byte offset into the log (LPOU:LPOL).
    pub offset: u64,
}

impl GetLogPageCmd {
    pub fn parse(sqe: &Sqe) -> Self {
        let cdw10 = sqe.cdw(10);
        let [lid, lsp_rae, numdl_lo, numdl_hi] = cdw10.to_le_bytes();
        let [numdu_lo, numdu_hi, _, _] = sqe.cdw(11).to_le_bytes();
        Self {
            lid,
            lsp: lsp_rae & 0x7F,
            rae: lsp_rae & 0x80 != 0,
            numd: u32::from(u16::from_le_bytes([numdl_lo, numdl_hi]))
                | (u32::from(u16::from_le_bytes([numdu_lo, numdu_hi])) << 16),
            offset: u64::from(sqe.cdw(12)) | (u64::from(sqe.cdw(13)) << 32),
        }
    }

    pub fn emit(&self, sqe: &mut Sqe) {
        let numd = self.numd.to_le_bytes();
        let off = self.offset.to_le_bytes();
        sqe.set_cdw(
            10,
            u32::from_le_bytes([
                self.lid,
                (self.lsp & 0x7F) | (u8::from(self.rae) << 7),
                numd[0],
                numd[1],
            ]),
        )
        .set_cdw(11, u32::from_le_bytes([numd[2], numd[3], 0, 0]))
        .set_cdw(12, u32::from_le_bytes([off[0], off[1], off[2], off[3]]))
        .set_cdw(13, u32::from_le_bytes([off[4], off[5], off[6], off[7]]));
    }

    /// Bytes asked for: (NUMD + 1) * 4.
    pub fn byte_len(&self) -> u64 {
        (u64::from(self.numd) + 1) * 4
    }
}

/// Discovery log page header length; entries start right after it.
pub const DISCOVERY_HEADER_LEN: usize = 1024;
/// Length of one discovery log entry.
pub const DISCOVERY_ENTRY_LEN: usize = 1024;

/// Discovery log page header (NVMe-oF 1.1, Figure 38).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryLogHeader {
    pub genctr: u64,
    pub numrec: u64,
    pub recfmt: u16,
}

impl DiscoveryLogHeader {
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..DISCOVERY_HEADER_LEN)?;
        Some(Self {
            genctr: get_u64(b, 0),
            numrec: get_u64(b, 8),
            recfmt: get_u16(b, 16),
        })
    }

    /// # Panics
    /// If `buf` is shorter than 1024 bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..DISCOVERY_HEADER_LEN];
        b.fill(0);
        put_u64(b, 0, self.genctr);
        put_u64(b, 8, self.numrec);
        put_u16(b, 16, self.recfmt);
    }
}

/// Discovery entry subtypes (NVMe Base 2.0 / NVMe-oF Figure 38 SUBTYPE).
pub mod subtype {
    /// A referral to another discovery service.
    pub const REFERRAL: u8 = 1;
    pub const NVME: u8 = 2;
    /// The discovery subsystem being queried.
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// Transport requirements (TREQ) bits.
pub mod treq {
    /// Secure channel not required (bits 1:0 = 10b).
    pub const SECURE_CHANNEL_NOT_REQUIRED: u8 = 0x2;
    /// The controller accepts Connect with SQ flow control disabled.
    pub const DISABLE_SQ_FLOW_CONTROL: u8 = 0x4;
}

/// Byte ranges of one discovery log entry (NVMe-oF 1.1, Figure 39).
mod entry {
    use core::ops::Range;
    pub const TRTYPE: usize = 0;
    pub const ADRFAM: usize = 1;
    pub const SUBTYPE: usize = 2;
    pub const TREQ: usize = 3;
    pub const PORTID: usize = 4;
    pub const CNTLID: usize = 6;
    pub const ASQSZ: usize = 8;
    pub const TRSVCID: Range<usize> = 32..64;
    pub const SUBNQN: Range<usize> = 256..512;
    pub const TRADDR: Range<usize> = 512..768;
    pub const TSAS: Range<usize> = 768..1024;
}

/// One discovery log page entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryLogEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub trsvcid: String,
    pub subnqn: String,
    pub traddr: String,
    /// Transport specific address subtype; for TCP byte 0 is SECTYPE (0 = none).
    pub tsas: [u8; 256],
}

impl DiscoveryLogEntry {
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..DISCOVERY_ENTRY_LEN)?;
        let mut tsas = [0u8; 256];
        tsas.copy_from_slice(&b[entry::TSAS]);
        Some(Self {
            trtype: b[entry::TRTYPE],
            adrfam: b[entry::ADRFAM],
            subtype: b[entry::SUBTYPE],
            treq: b[entry::TREQ],
            portid: get_u16(b, entry::PORTID),
            cntlid: get_u16(b, entry::CNTLID),
            asqsz: get_u16(b, entry::ASQSZ),
            trsvcid: get_nul_padded(b, entry::TRSVCID),
            subnqn: get_nul_padded(b, entry::SUBNQN),
            traddr: get_nul_padded(b, entry::TRADDR),
            tsas,
        })
    }

    /// # Panics
    /// If `buf` is shorter than 1024 bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..DISCOVERY_ENTRY_LEN];
        b.fill(0);
        b[entry::TRTYPE] = self.trtype;
        b[entry::ADRFAM] = self.adrfam;
        b[entry::SUBTYPE] = self.subtype;
        b[entry::TREQ] = self.treq;
        put_u16(b, entry::PORTID, self.portid);
        put_u16(b, entry::CNTLID, self.cntlid);
        put_u16(b, entry::ASQSZ, self.asqsz);
        put_nul_padded(b, entry::TRSVCID, &self.trsvcid);
        put_nul_padded(b, entry::SUBNQN, &self.subnqn);
        put_nul_padded(b, entry::TRADDR, &self.traddr);
        b[entry::TSAS].copy_from_slice(&self.tsas);
    }
}

/// Asynchronous event types (completion dword 0 bits 2:0).
pub mod event_type {
    pub const ERROR: u8 = 0x0;
    pub const SMART: u8 = 0x1;
    pub const NOTICE: u8 = 0x2;
}

/// Notice event information (completion dword 0 bits 15:8).
pub mod notice {
    pub const NS_ATTRIBUTE_CHANGED: u8 = 0x00;
    pub const DISCOVERY_LOG_CHANGED: u8 = 0xF0;
}

/// Error status event information (completion dword 0 bits 15:8, NVMe Base 2.0 Figure 148).
pub mod error_info {
    pub const INVALID_DOORBELL_REGISTER: u8 = 0x00;
    pub const INVALID_DOORBELL_VALUE: u8 = 0x01;
}

/// Completion dword 0 of an Asynchronous Event Request: type, information, log page.
pub fn async_event_dw0(kind: u8, info: u8, log: u8) -> u32 {
    u32::from_le_bytes([kind & 0x7, info, log, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_log_page_fields() {
        let cmd = GetLogPageCmd {
            lid: lid::DISCOVERY,
            lsp: 0,
            rae: true,
            numd: 0x0001_00FF,
            offset: 0x1_0000_0400,
        };
        let mut sqe = Sqe::new(0x02, 1);
        cmd.emit(&mut sqe);
        assert_eq!(sqe.cdw(10), 0x00FF_8070);
        assert_eq!(sqe.cdw(11), 0x0001);
        assert_eq!(GetLogPageCmd::parse(&sqe), cmd);
        assert_eq!(cmd.byte_len(), (0x0001_00FF + 1) * 4);
    }

    #[test]
    fn discovery_entry_round_trip_into_junk() {
        let e = DiscoveryLogEntry {
            trtype: 3,
            adrfam: 1,
            subtype: subtype::NVME,
            treq: treq::SECURE_CHANNEL_NOT_REQUIRED,
            portid: 1,
            cntlid: 0xFFFF,
            asqsz: 32,
            trsvcid: "4420".into(),
            subnqn: "nqn.2024-01.io.test:a".into(),
            traddr: "127.0.0.1".into(),
            tsas: [0; 256],
        };
        let mut junk = vec![0x77u8; DISCOVERY_ENTRY_LEN + 2];
        e.emit(&mut junk);
        assert_eq!(&junk[0..10], &[3, 1, 2, 2, 1, 0, 0xFF, 0xFF, 32, 0]);
        assert_eq!(&junk[32..37], b"4420\0");
        assert_eq!(&junk[512..522], b"127.0.0.1\0");
        assert_eq!(&junk[DISCOVERY_ENTRY_LEN..], &[0x77; 2]);
        assert_eq!(DiscoveryLogEntry::parse(&junk), Some(e));

        let h = DiscoveryLogHeader {
            genctr: 5,
            numrec: 2,
            recfmt: 0,
        };
        h.emit(&mut junk);
        assert_eq!(DiscoveryLogHeader::parse(&junk), Some(h));
        assert_eq!(
            async_event_dw0(event_type::NOTICE, notice::DISCOVERY_LOG_CHANGED, 0x70),
            0x0070_F002
        );
    }
}
