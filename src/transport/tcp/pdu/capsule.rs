//! CapsuleCmd (NVMe/TCP 1.0, 3.6.2.5) and CapsuleResp (3.6.2.6).

use super::{
    CAPSULE_CMD_HLEN, CAPSULE_RESP_HLEN, CH_LEN, CommonHeader, Digests, Framing, PduError, PduView,
    pdu_type,
};
use crate::nvme::{Cqe, Sqe};

/// A command and its in-capsule data (empty when the data moves by R2T or C2HData).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleCmd<'a> {
    pub sqe: Sqe,
    pub data: &'a [u8],
}

impl<'a> CapsuleCmd<'a> {
    #[inline]
    pub fn parse(view: &PduView<'a>) -> Result<Self, PduError> {
        view.expect(pdu_type::CAPSULE_CMD)?;
        let sqe = Sqe::parse(view.header_bytes(CH_LEN..CAPSULE_CMD_HLEN))
            .ok_or(PduError::ShorterThanHeader)?;
        Ok(Self {
            sqe,
            data: view.data(),
        })
    }

    /// Appends header, header digest, padding to the target's alignment, data, data digest.
    pub fn emit(&self, out: &mut Vec<u8>, framing: &Framing) {
        let d = framing.digests;
        let len = self.data.len();
        let header_end = CAPSULE_CMD_HLEN + d.header_len();
        let pdo = if len == 0 {
            0
        } else {
            framing.data_offset(header_end)
        };
        let plen = pdo.max(header_end) + len + d.data_len(len);
        let start = out.len();
        let mut header = [0; CAPSULE_CMD_HLEN];
        CommonHeader::new(
            pdu_type::CAPSULE_CMD,
            d.flags(len),
            CAPSULE_CMD_HLEN,
            pdo,
            plen,
        )
        .put(&mut header);
        header[CH_LEN..].copy_from_slice(self.sqe.as_bytes());
        out.extend_from_slice(&header);
        d.put_header_digest(out, &header);
        if len > 0 {
            out.resize(start + pdo, 0);
            d.put_data(out, self.data);
        }
    }
}

/// One completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleResp {
    pub cqe: Cqe,
}

impl CapsuleResp {
    pub fn parse(view: &PduView<'_>) -> Result<Self, PduError> {
        view.expect(pdu_type::CAPSULE_RESP)?;
        view.expect_no_data()?;
        let cqe = Cqe::parse(view.header_bytes(CH_LEN..CAPSULE_RESP_HLEN))
            .ok_or(PduError::ShorterThanHeader)?;
        Ok(Self { cqe })
    }

    /// Built whole on the stack and copied once: this is every command's completion.
    #[inline(always)]
    pub fn emit(&self, out: &mut Vec<u8>, digests: Digests) {
        let mut header = [0; CAPSULE_RESP_HLEN];
        CommonHeader::new(
            pdu_type::CAPSULE_RESP,
            digests.flags(0),
            CAPSULE_RESP_HLEN,
            0,
            CAPSULE_RESP_HLEN + digests.header_len(),
        )
        .put(&mut header);
        self.cqe.emit(&mut header[CH_LEN..]);
        out.extend_from_slice(&header);
        digests.put_header_digest(out, &header);
    }
}
