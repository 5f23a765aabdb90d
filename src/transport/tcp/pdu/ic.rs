//! Connection setup: ICReq (NVMe/TCP 1.0, 3.6.2.2) and ICResp (3.6.2.3).

use super::{CommonHeader, IC_LEN, PduError, PduView, pdu_type};

/// Byte positions shared by ICReq and ICResp.
mod field {
    pub const PFV: usize = 8;
    /// HPDA in ICReq, CPDA in ICResp.
    pub const PDA: usize = 10;
    pub const DGST: usize = 11;
    /// MAXR2T in ICReq, MAXH2CDATA in ICResp.
    pub const MAX: usize = 12;
}

/// DGST bits.
const HDGST_ENABLE: u8 = 0x01;
const DDGST_ENABLE: u8 = 0x02;

/// The ICReq fields a target acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcReq {
    pub pfv: u16,
    pub hpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    pub maxr2t: u32,
}

/// The ICResp a target sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcResp {
    /// 0, the only version there is.
    pub pfv: u16,
    pub cpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    pub maxh2cdata: u32,
}

impl IcReq {
    pub fn parse(view: &PduView<'_>) -> Result<Self, PduError> {
        view.expect(pdu_type::IC_REQ)?;
        let dgst = view.u8_at(field::DGST);
        Ok(Self {
            pfv: view.u16_at(field::PFV),
            hpda: view.u8_at(field::PDA),
            header_digest: dgst & HDGST_ENABLE != 0,
            data_digest: dgst & DDGST_ENABLE != 0,
            maxr2t: view.u32_at(field::MAX),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut pdu = [0; IC_LEN];
        put_ic(
            &mut pdu,
            pdu_type::IC_REQ,
            self.pfv,
            self.hpda,
            dgst(self.header_digest, self.data_digest),
            self.maxr2t,
        );
        out.extend_from_slice(&pdu);
    }
}

impl IcResp {
    pub fn parse(view: &PduView<'_>) -> Result<Self, PduError> {
        view.expect(pdu_type::IC_RESP)?;
        let dgst = view.u8_at(field::DGST);
        Ok(Self {
            pfv: view.u16_at(field::PFV),
            cpda: view.u8_at(field::PDA),
            header_digest: dgst & HDGST_ENABLE != 0,
            data_digest: dgst & DDGST_ENABLE != 0,
            maxh2cdata: view.u32_at(field::MAX),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let mut pdu = [0; IC_LEN];
        put_ic(
            &mut pdu,
            pdu_type::IC_RESP,
            self.pfv,
            self.cpda,
            dgst(self.header_digest, self.data_digest),
            self.maxh2cdata,
        );
        out.extend_from_slice(&pdu);
    }
}

fn dgst(header: bool, data: bool) -> u8 {
    (if header { HDGST_ENABLE } else { 0 }) | (if data { DDGST_ENABLE } else { 0 })
}

/// ICReq and ICResp share one layout: PFV, an alignment, the digests and a limit.
fn put_ic(pdu: &mut [u8; IC_LEN], kind: u8, pfv: u16, pda: u8, dgst: u8, max: u32) {
    CommonHeader::new(kind, 0, IC_LEN, 0, IC_LEN).put(pdu);
    pdu[field::PFV..field::PFV + 2].copy_from_slice(&pfv.to_le_bytes());
    pdu[field::PDA] = pda;
    pdu[field::DGST] = dgst;
    pdu[field::MAX..field::MAX + 4].copy_from_slice(&max.to_le_bytes());
}
