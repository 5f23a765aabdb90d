//! H2CTermReq and C2HTermReq (NVMe/TCP 1.0, 3.6.2.4): one layout, either direction.

use super::{CommonHeader, PduError, PduView, TERM_REQ_HLEN, TERM_REQ_MAX_ECHO};

/// Byte positions of a termination request.
mod field {
    pub const FES: usize = 8;
    pub const FEI: usize = 10;
}

/// A fatal error report: its status, the field at fault, and the offending header echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermReq<'a> {
    pub fes: u16,
    pub fei: u32,
    /// As much of the PDU header at fault as was sent back.
    pub echo: &'a [u8],
}

impl<'a> TermReq<'a> {
    /// Reads either direction's termination request (the view's type says which).
    pub fn parse(view: &PduView<'a>) -> Self {
        Self {
            fes: view.u16_at(field::FES),
            fei: view.u32_at(field::FEI),
            echo: view.data(),
        }
    }

    /// Reads a termination request of type `kind` only.
    pub fn parse_as(view: &PduView<'a>, kind: u8) -> Result<Self, PduError> {
        view.expect(kind)?;
        Ok(Self::parse(view))
    }

    /// Appends the request as PDU type `kind`, echoing at most 128 bytes of header.
    pub fn emit(&self, out: &mut Vec<u8>, kind: u8) {
        let echo = self.echo.get(..TERM_REQ_MAX_ECHO).unwrap_or(self.echo);
        let mut header = [0; TERM_REQ_HLEN];
        CommonHeader::new(kind, 0, TERM_REQ_HLEN, 0, TERM_REQ_HLEN + echo.len()).put(&mut header);
        header[field::FES..field::FES + 2].copy_from_slice(&self.fes.to_le_bytes());
        header[field::FEI..field::FEI + 4].copy_from_slice(&self.fei.to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(echo);
    }
}
