//! Data transfer: H2CData and C2HData (NVMe/TCP 1.0, 3.6.2.7 and 3.6.2.8, one layout) and
//! R2T (3.6.2.9).

use super::{
    CommonHeader, DATA_HLEN, Digests, Framing, PduError, PduView, R2T_HLEN, flags, pdu_type,
};

/// Byte positions of a data PDU and of R2T (R2TO and R2TL stand where DATAO and DATAL do).
mod field {
    pub const CCCID: usize = 8;
    pub const TTAG: usize = 10;
    pub const OFFSET: usize = 12;
    pub const LENGTH: usize = 16;
}

/// A data PDU's header: what comes before `datal` bytes of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    pub cccid: u16,
    /// The R2T's transfer tag (H2CData); 0 in C2HData.
    pub ttag: u16,
    pub datao: u32,
    pub datal: u32,
    pub last: bool,
    /// C2HData only: the command succeeded and no CapsuleResp follows.
    pub success: bool,
}

impl DataHeader {
    /// Appends the PDU of type `kind` up to where its data starts: header (built on the stack,
    /// copied once), header digest and padding to the receiver's alignment. The caller sends
    /// the data from where it lies; returns whether a data digest must follow it.
    // The target's per-read path: inlined so the header is built where it is queued.
    #[inline(always)]
    pub fn emit(&self, out: &mut Vec<u8>, kind: u8, framing: &Framing) -> bool {
        let d = framing.digests;
        let start = out.len();
        let data_len = self.datal as usize;
        let pdo = framing.data_offset(DATA_HLEN + d.header_len());
        let dd = d.data_len(data_len);
        let mut pdu_flags = if d.header { flags::HDGSTF } else { 0 };
        if dd > 0 {
            pdu_flags |= flags::DDGSTF;
        }
        if self.last {
            pdu_flags |= flags::LAST_PDU;
        }
        if self.success {
            pdu_flags |= flags::SUCCESS;
        }
        // PDO is below 512 and DATAL a u32: the sum fits a usize.
        let plen = pdo + data_len + dd;
        let mut header = [0; DATA_HLEN];
        CommonHeader::new(kind, pdu_flags, DATA_HLEN, pdo, plen).put(&mut header);
        put_fields(&mut header, (self.cccid, self.ttag), self.datao, self.datal);
        out.extend_from_slice(&header);
        d.put_header_digest(out, &header);
        out.resize(start + pdo, 0);
        dd > 0
    }
}

/// A whole data PDU of either direction; `data` borrows the bytes it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPdu<'a> {
    pub cccid: u16,
    pub ttag: u16,
    pub datao: u32,
    pub last: bool,
    pub success: bool,
    pub data: &'a [u8],
}

impl<'a> DataPdu<'a> {
    /// Reads H2CData or C2HData (the view's type says which); DATAL must be the data there is.
    pub fn parse(view: &PduView<'a>) -> Result<Self, PduError> {
        let kind = view.pdu_type();
        if kind != pdu_type::H2C_DATA && kind != pdu_type::C2H_DATA {
            return Err(PduError::UnexpectedType(kind));
        }
        let data = view.data();
        let datal = view.u32_at(field::LENGTH);
        if usize::try_from(datal).ok() != Some(data.len()) {
            return Err(PduError::DataLength);
        }
        Ok(Self {
            cccid: view.u16_at(field::CCCID),
            ttag: view.u16_at(field::TTAG),
            datao: view.u32_at(field::OFFSET),
            last: view.flags() & flags::LAST_PDU != 0,
            success: view.flags() & flags::SUCCESS != 0,
            data,
        })
    }

    pub fn header(&self) -> DataHeader {
        DataHeader {
            cccid: self.cccid,
            ttag: self.ttag,
            datao: self.datao,
            datal: u32::try_from(self.data.len()).unwrap_or(u32::MAX),
            last: self.last,
            success: self.success,
        }
    }

    /// Appends the whole PDU of type `kind`, data and data digest included.
    pub fn emit(&self, out: &mut Vec<u8>, kind: u8, framing: &Framing) {
        self.header().emit(out, kind, framing);
        framing.digests.put_data(out, self.data);
    }
}

/// Ready to Transfer: the target asks for `r2tl` bytes at `r2to` of command `cccid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    pub r2to: u32,
    pub r2tl: u32,
}

impl R2t {
    pub fn parse(view: &PduView<'_>) -> Result<Self, PduError> {
        view.expect(pdu_type::R2T)?;
        view.expect_no_data()?;
        Ok(Self {
            cccid: view.u16_at(field::CCCID),
            ttag: view.u16_at(field::TTAG),
            r2to: view.u32_at(field::OFFSET),
            r2tl: view.u32_at(field::LENGTH),
        })
    }

    #[inline]
    pub fn emit(&self, out: &mut Vec<u8>, digests: Digests) {
        let mut header = [0; R2T_HLEN];
        CommonHeader::new(
            pdu_type::R2T,
            digests.flags(0),
            R2T_HLEN,
            0,
            R2T_HLEN + digests.header_len(),
        )
        .put(&mut header);
        put_fields(&mut header, (self.cccid, self.ttag), self.r2to, self.r2tl);
        out.extend_from_slice(&header);
        digests.put_header_digest(out, &header);
    }
}

/// CCCID, TTAG, offset and length, shared by data PDUs and R2T.
#[inline]
fn put_fields(header: &mut [u8; 24], (cccid, ttag): (u16, u16), offset: u32, length: u32) {
    header[field::CCCID..field::CCCID + 2].copy_from_slice(&cccid.to_le_bytes());
    header[field::TTAG..field::TTAG + 2].copy_from_slice(&ttag.to_le_bytes());
    header[field::OFFSET..field::OFFSET + 4].copy_from_slice(&offset.to_le_bytes());
    header[field::LENGTH..field::LENGTH + 4].copy_from_slice(&length.to_le_bytes());
}
