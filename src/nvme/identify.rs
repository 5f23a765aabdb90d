//! Identify data structures (NVMe Base 2.0, 5.17; NVM Command Set 1.0, 4.1.5): the controller
//! page, the namespace page and the namespace identification descriptor list.

use super::wire::{
    get_nul_padded, get_padded, get_u16, get_u32, get_u64, put_nul_padded, put_padded, put_u16,
    put_u32, put_u64,
};

/// Every identify page is 4096 bytes.
pub const IDENTIFY_LEN: usize = 4096;

/// Controller or Namespace Structure values (NVMe Base 2.0, Figure 273).
pub mod cns {
    /// Identify Namespace for the NVM command set.
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    /// Active namespace ID list.
    pub const ACTIVE_NS_LIST: u8 = 0x02;
    /// Namespace identification descriptor list.
    pub const NS_DESCRIPTORS: u8 = 0x03;
    /// I/O command set specific Identify Namespace.
    pub const CSI_NAMESPACE: u8 = 0x05;
    /// I/O command set specific Identify Controller.
    pub const CSI_CONTROLLER: u8 = 0x06;
    /// Active namespace ID list for one I/O command set.
    pub const CSI_ACTIVE_NS_LIST: u8 = 0x07;
    /// I/O command set independent Identify Namespace.
    pub const CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
    /// I/O command set data structure (vectors of supported command sets).
    pub const IO_COMMAND_SETS: u8 = 0x1C;
}

/// Command Set Identifier of the NVM command set.
pub const CSI_NVM: u8 = 0x00;

/// Controller types (CNTRLTYPE).
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
}

/// Optional Asynchronous Events Supported bits.
pub mod oaes {
    pub const NS_ATTRIBUTE: u32 = 1 << 8;
    pub const DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
}

/// Optional NVM Command Support bits.
/// Optional Admin Command Support (OACS) bits (NVMe Base 2.0, Figure 275).
pub mod oacs {
    /// Doorbell Buffer Config (shadow doorbells and EventIdx, 5.8).
    pub const DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
}

pub mod oncs {
    pub const COMPARE: u16 = 1 << 0;
    pub const WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const DSM: u16 = 1 << 2;
    pub const WRITE_ZEROES: u16 = 1 << 3;
}

/// SGL Support bits.
pub mod sgls {
    /// SGLs supported, no alignment requirement.
    pub const SUPPORTED: u32 = 1 << 0;
    pub const KEYED: u32 = 1 << 2;
    /// The address field of a data block may be an offset (in-capsule data).
    pub const OFFSET: u32 = 1 << 20;
    pub const TRANSPORT_DATA_BLOCK: u32 = 1 << 21;
}

/// Byte ranges of the Identify Controller data structure (NVMe Base 2.0, Figure 275).
mod ctrl {
    use core::ops::Range;
    pub const VID: usize = 0;
    pub const SSVID: usize = 2;
    pub const SN: Range<usize> = 4..24;
    pub const MN: Range<usize> = 24..64;
    pub const FR: Range<usize> = 64..72;
    pub const RAB: usize = 72;
    pub const IEEE: Range<usize> = 73..76;
    pub const CMIC: usize = 76;
    pub const MDTS: usize = 77;
    pub const CNTLID: usize = 78;
    pub const VER: usize = 80;
    pub const OAES: usize = 92;
    pub const CTRATT: usize = 96;
    pub const CNTRLTYPE: usize = 111;
    pub const OACS: usize = 256;
    pub const ACL: usize = 258;
    pub const AERL: usize = 259;
    pub const FRMW: usize = 260;
    pub const LPA: usize = 261;
    pub const ELPE: usize = 262;
    pub const NPSS: usize = 263;
    pub const KAS: usize = 320;
    pub const SQES: usize = 512;
    pub const CQES: usize = 513;
    pub const MAXCMD: usize = 514;
    pub const NN: usize = 516;
    pub const ONCS: usize = 520;
    pub const FUSES: usize = 522;
    pub const FNA: usize = 524;
    pub const VWC: usize = 525;
    pub const AWUN: usize = 526;
    pub const AWUPF: usize = 528;
    pub const NWPC: usize = 531;
    pub const SGLS: usize = 536;
    pub const MNAN: usize = 540;
    pub const SUBNQN: Range<usize> = 768..1024;
    pub const IOCCSZ: usize = 1792;
    pub const IORCSZ: usize = 1796;
    pub const ICDOFF: usize = 1800;
    pub const FCATT: usize = 1802;
    pub const MSDBD: usize = 1803;
    pub const OFCS: usize = 1804;
    pub const PSD0: usize = 2048;
}

/// Power state descriptor 0 (the only one; NPSS is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerState {
    /// Maximum power in centiwatts.
    pub max_power: u16,
    /// Entry latency in microseconds.
    pub entry_lat: u32,
    /// Exit latency in microseconds.
    pub exit_lat: u32,
}

/// The Identify Controller fields this target reports; everything else is zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    pub sn: String,
    pub mn: String,
    pub fr: String,
    pub rab: u8,
    pub ieee: [u8; 3],
    pub cmic: u8,
    /// Maximum data transfer size as a power of two of 4 KiB pages; 0 means no limit.
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub oaes: u32,
    pub ctratt: u32,
    pub cntrltype: u8,
    pub oacs: u16,
    pub acl: u8,
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    pub elpe: u8,
    pub npss: u8,
    /// Keep Alive Support granularity in 100 ms units.
    pub kas: u16,
    pub sqes: u8,
    pub cqes: u8,
    pub maxcmd: u16,
    pub nn: u32,
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    pub nwpc: u8,
    pub sgls: u32,
    pub mnan: u32,
    pub subnqn: String,
    /// I/O queue command capsule size in 16-byte units (fabrics).
    pub ioccsz: u32,
    /// I/O queue response capsule size in 16-byte units (fabrics).
    pub iorcsz: u32,
    pub icdoff: u16,
    pub fcatt: u8,
    pub msdbd: u8,
    pub ofcs: u16,
    pub psd0: PowerState,
}

impl IdentifyController {
    /// Reads the page; `None` if `buf` is shorter than 4096 bytes.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..IDENTIFY_LEN)?;
        let mut ieee = [0u8; 3];
        ieee.copy_from_slice(&b[ctrl::IEEE]);
        Some(Self {
            vid: get_u16(b, ctrl::VID),
            ssvid: get_u16(b, ctrl::SSVID),
            sn: get_padded(b, ctrl::SN),
            mn: get_padded(b, ctrl::MN),
            fr: get_padded(b, ctrl::FR),
            rab: b[ctrl::RAB],
            ieee,
            cmic: b[ctrl::CMIC],
            mdts: b[ctrl::MDTS],
            cntlid: get_u16(b, ctrl::CNTLID),
            ver: get_u32(b, ctrl::VER),
            oaes: get_u32(b, ctrl::OAES),
            ctratt: get_u32(b, ctrl::CTRATT),
            cntrltype: b[ctrl::CNTRLTYPE],
            oacs: get_u16(b, ctrl::OACS),
            acl: b[ctrl::ACL],
            aerl: b[ctrl::AERL],
            frmw: b[ctrl::FRMW],
            lpa: b[ctrl::LPA],
            elpe: b[ctrl::ELPE],
            npss: b[ctrl::NPSS],
            kas: get_u16(b, ctrl::KAS),
            sqes: b[ctrl::SQES],
            cqes: b[ctrl::CQES],
            maxcmd: get_u16(b, ctrl::MAXCMD),
            nn: get_u32(b, ctrl::NN),
            oncs: get_u16(b, ctrl::ONCS),
            fuses: get_u16(b, ctrl::FUSES),
            fna: b[ctrl::FNA],
            vwc: b[ctrl::VWC],
            awun: get_u16(b, ctrl::AWUN),
            awupf: get_u16(b, ctrl::AWUPF),
            nwpc: b[ctrl::NWPC],
            sgls: get_u32(b, ctrl::SGLS),
            mnan: get_u32(b, ctrl::MNAN),
            subnqn: get_nul_padded(b, ctrl::SUBNQN),
            ioccsz: get_u32(b, ctrl::IOCCSZ),
            iorcsz: get_u32(b, ctrl::IORCSZ),
            icdoff: get_u16(b, ctrl::ICDOFF),
            fcatt: b[ctrl::FCATT],
            msdbd: b[ctrl::MSDBD],
            ofcs: get_u16(b, ctrl::OFCS),
            psd0: PowerState {
                max_power: get_u16(b, ctrl::PSD0),
                entry_lat: get_u32(b, ctrl::PSD0 + 4),
                exit_lat: get_u32(b, ctrl::PSD0 + 8),
            },
        })
    }

    /// Writes all 4096 bytes into the start of `buf`, zeroing every field not modelled.
    ///
    /// # Panics
    /// If `buf` is shorter than 4096 bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..IDENTIFY_LEN];
        b.fill(0);
        put_u16(b, ctrl::VID, self.vid);
        put_u16(b, ctrl::SSVID, self.ssvid);
        put_padded(b, ctrl::SN, &self.sn);
        put_padded(b, ctrl::MN, &self.mn);
        put_padded(b, ctrl::FR, &self.fr);
        b[ctrl::RAB] = self.rab;
        b[ctrl::IEEE].copy_from_slice(&self.ieee);
        b[ctrl::CMIC] = self.cmic;
        b[ctrl::MDTS] = self.mdts;
        put_u16(b, ctrl::CNTLID, self.cntlid);
        put_u32(b, ctrl::VER, self.ver);
        put_u32(b, ctrl::OAES, self.oaes);
        put_u32(b, ctrl::CTRATT, self.ctratt);
        b[ctrl::CNTRLTYPE] = self.cntrltype;
        put_u16(b, ctrl::OACS, self.oacs);
        b[ctrl::ACL] = self.acl;
        b[ctrl::AERL] = self.aerl;
        b[ctrl::FRMW] = self.frmw;
        b[ctrl::LPA] = self.lpa;
        b[ctrl::ELPE] = self.elpe;
        b[ctrl::NPSS] = self.npss;
        put_u16(b, ctrl::KAS, self.kas);
        b[ctrl::SQES] = self.sqes;
        b[ctrl::CQES] = self.cqes;
        put_u16(b, ctrl::MAXCMD, self.maxcmd);
        put_u32(b, ctrl::NN, self.nn);
        put_u16(b, ctrl::ONCS, self.oncs);
        put_u16(b, ctrl::FUSES, self.fuses);
        b[ctrl::FNA] = self.fna;
        b[ctrl::VWC] = self.vwc;
        put_u16(b, ctrl::AWUN, self.awun);
        put_u16(b, ctrl::AWUPF, self.awupf);
        b[ctrl::NWPC] = self.nwpc;
        put_u32(b, ctrl::SGLS, self.sgls);
        put_u32(b, ctrl::MNAN, self.mnan);
        put_nul_padded(b, ctrl::SUBNQN, &self.subnqn);
        put_u32(b, ctrl::IOCCSZ, self.ioccsz);
        put_u32(b, ctrl::IORCSZ, self.iorcsz);
        put_u16(b, ctrl::ICDOFF, self.icdoff);
        b[ctrl::FCATT] = self.fcatt;
        b[ctrl::MSDBD] = self.msdbd;
        put_u16(b, ctrl::OFCS, self.ofcs);
        put_u16(b, ctrl::PSD0, self.psd0.max_power);
        put_u32(b, ctrl::PSD0 + 4, self.psd0.entry_lat);
        put_u32(b, ctrl::PSD0 + 8, self.psd0.exit_lat);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut page = vec![0u8; IDENTIFY_LEN];
        self.emit(&mut page);
        page
    }
}

/// Byte ranges of the Identify Namespace data structure (NVM Command Set 1.0, Figure 97).
mod ns {
    use core::ops::Range;
    pub const NSZE: usize = 0;
    pub const NCAP: usize = 8;
    pub const NUSE: usize = 16;
    pub const NSFEAT: usize = 24;
    pub const NLBAF: usize = 25;
    pub const FLBAS: usize = 26;
    pub const NMIC: usize = 30;
    pub const DLFEAT: usize = 33;
    pub const ANAGRPID: usize = 92;
    pub const NSATTR: usize = 99;
    pub const NGUID: Range<usize> = 104..120;
    pub const EUI64: Range<usize> = 120..128;
    pub const LBAF0: usize = 128;
}

/// NSATTR bit 0: the namespace is write protected.
pub const NSATTR_WRITE_PROTECTED: u8 = 1 << 0;
/// NMIC bit 0: the namespace may be attached to more than one controller.
pub const NMIC_SHARED: u8 = 1 << 0;

/// The Identify Namespace fields this target reports, with one LBA format.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in logical blocks.
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA formats, 0-based.
    pub nlbaf: u8,
    pub flbas: u8,
    pub nmic: u8,
    pub dlfeat: u8,
    pub anagrpid: u32,
    pub nsattr: u8,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    /// LBA format 0: metadata size.
    pub lbaf0_ms: u16,
    /// LBA format 0: log2 of the block size.
    pub lbaf0_lbads: u8,
    /// LBA format 0: relative performance.
    pub lbaf0_rp: u8,
}

impl IdentifyNamespace {
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..IDENTIFY_LEN)?;
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&b[ns::NGUID]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&b[ns::EUI64]);
        Some(Self {
            nsze: get_u64(b, ns::NSZE),
            ncap: get_u64(b, ns::NCAP),
            nuse: get_u64(b, ns::NUSE),
            nsfeat: b[ns::NSFEAT],
            nlbaf: b[ns::NLBAF],
            flbas: b[ns::FLBAS],
            nmic: b[ns::NMIC],
            dlfeat: b[ns::DLFEAT],
            anagrpid: get_u32(b, ns::ANAGRPID),
            nsattr: b[ns::NSATTR],
            nguid,
            eui64,
            lbaf0_ms: get_u16(b, ns::LBAF0),
            lbaf0_lbads: b[ns::LBAF0 + 2],
            lbaf0_rp: b[ns::LBAF0 + 3] & 0x3,
        })
    }

    /// Writes all 4096 bytes into the start of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than 4096 bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..IDENTIFY_LEN];
        b.fill(0);
        put_u64(b, ns::NSZE, self.nsze);
        put_u64(b, ns::NCAP, self.ncap);
        put_u64(b, ns::NUSE, self.nuse);
        b[ns::NSFEAT] = self.nsfeat;
        b[ns::NLBAF] = self.nlbaf;
        b[ns::FLBAS] = self.flbas;
        b[ns::NMIC] = self.nmic;
        b[ns::DLFEAT] = self.dlfeat;
        put_u32(b, ns::ANAGRPID, self.anagrpid);
        b[ns::NSATTR] = self.nsattr;
        b[ns::NGUID].copy_from_slice(&self.nguid);
        b[ns::EUI64].copy_from_slice(&self.eui64);
        put_u16(b, ns::LBAF0, self.lbaf0_ms);
        b[ns::LBAF0 + 2] = self.lbaf0_lbads;
        b[ns::LBAF0 + 3] = self.lbaf0_rp & 0x3;
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut page = vec![0u8; IDENTIFY_LEN];
        self.emit(&mut page);
        page
    }
}

/// One namespace identification descriptor (NVMe Base 2.0, Figure 278).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsDescriptor {
    /// NIDT 0x1, 8 bytes.
    Eui64([u8; 8]),
    /// NIDT 0x2, 16 bytes.
    Nguid([u8; 16]),
    /// NIDT 0x3, 16 bytes.
    Uuid([u8; 16]),
    /// NIDT 0x4, 1 byte: the namespace's command set.
    Csi(u8),
}

impl NsDescriptor {
    pub const EUI64: u8 = 0x1;
    pub const NGUID: u8 = 0x2;
    pub const UUID: u8 = 0x3;
    pub const CSI: u8 = 0x4;

    fn parts(&self) -> (u8, &[u8]) {
        match self {
            Self::Eui64(id) => (Self::EUI64, id),
            Self::Nguid(id) => (Self::NGUID, id),
            Self::Uuid(id) => (Self::UUID, id),
            Self::Csi(csi) => (Self::CSI, core::slice::from_ref(csi)),
        }
    }

    /// Writes a 4096-byte descriptor list, terminated by a zero NIDL.
    ///
    /// # Panics
    /// If `buf` is shorter than 4096 bytes.
    pub fn emit_list(list: &[Self], buf: &mut [u8]) {
        let b = &mut buf[..IDENTIFY_LEN];
        b.fill(0);
        let mut at = 0;
        for desc in list {
            let (nidt, nid) = desc.parts();
            b[at] = nidt;
            b[at + 1] = nid.len().to_le_bytes()[0];
            b[at + 4..at + 4 + nid.len()].copy_from_slice(nid);
            at += 4 + nid.len();
        }
    }

    /// Reads a descriptor list; unknown types are skipped, a malformed length ends it.
    pub fn parse_list(buf: &[u8]) -> Vec<Self> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(&[nidt, nidl, _, _]) = buf.get(at..at + 4) {
            let Some(nid) = buf.get(at + 4..at + 4 + usize::from(nidl)) else {
                break;
            };
            if nidl == 0 {
                break;
            }
            match (nidt, nid.len()) {
                (Self::EUI64, 8) => out.push(Self::Eui64(nid.try_into().unwrap_or_default())),
                (Self::NGUID, 16) => out.push(Self::Nguid(nid.try_into().unwrap_or_default())),
                (Self::UUID, 16) => out.push(Self::Uuid(nid.try_into().unwrap_or_default())),
                (Self::CSI, 1) => out.push(Self::Csi(nid[0])),
                _ => {}
            }
            at += 4 + usize::from(nidl);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_ctrl() -> IdentifyController {
        IdentifyController {
            sn: "SN1".into(),
            mn: "Model".into(),
            fr: "0.1.0".into(),
            cntlid: 7,
            ver: 0x10300,
            sqes: 0x66,
            cqes: 0x44,
            subnqn: "nqn.2024-01.io.test:ref".into(),
            ioccsz: 1028,
            iorcsz: 1,
            msdbd: 1,
            kas: 10,
            psd0: PowerState {
                max_power: 2500,
                entry_lat: 16,
                exit_lat: 4,
            },
            ..Default::default()
        }
    }

    #[test]
    fn controller_page_offsets_and_round_trip() {
        let id = sample_ctrl();
        let mut junk = vec![0x5Au8; IDENTIFY_LEN + 8];
        id.emit(&mut junk);
        assert_eq!(&junk[4..8], b"SN1 ");
        assert_eq!(&junk[78..80], &[7, 0]);
        assert_eq!(junk[512], 0x66);
        assert_eq!(&junk[768..775], b"nqn.202");
        assert_eq!(&junk[1792..1796], &1028u32.to_le_bytes());
        assert_eq!(&junk[IDENTIFY_LEN..], &[0x5A; 8]);
        assert_eq!(IdentifyController::parse(&junk), Some(id.clone()));
        assert_eq!(junk[..IDENTIFY_LEN], id.to_bytes()[..]);
        assert!(IdentifyController::parse(&junk[..100]).is_none());
    }

    #[test]
    fn namespace_page_round_trip() {
        let id = IdentifyNamespace {
            nsze: 65536,
            ncap: 65536,
            nuse: 65536,
            nmic: NMIC_SHARED,
            nguid: [3; 16],
            eui64: [4; 8],
            lbaf0_lbads: 12,
            ..Default::default()
        };
        let mut junk = vec![0xC3u8; IDENTIFY_LEN];
        id.emit(&mut junk);
        assert_eq!(&junk[0..8], &65536u64.to_le_bytes());
        assert_eq!(junk[130], 12);
        assert_eq!(IdentifyNamespace::parse(&junk), Some(id));
    }

    #[test]
    fn descriptor_list_round_trip() {
        let list = [
            NsDescriptor::Eui64([1; 8]),
            NsDescriptor::Nguid([2; 16]),
            NsDescriptor::Uuid([3; 16]),
            NsDescriptor::Csi(CSI_NVM),
        ];
        let mut junk = vec![0xEEu8; IDENTIFY_LEN];
        NsDescriptor::emit_list(&list, &mut junk);
        assert_eq!(&junk[0..4], &[1, 8, 0, 0]);
        assert_eq!(&junk[12..16], &[2, 16, 0, 0]);
        assert_eq!(NsDescriptor::parse_list(&junk), list.to_vec());
    }
}
