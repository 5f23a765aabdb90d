//! PDUs to the host, appended to the connection's send buffer with digests and padding: the
//! target's calls into [`super::pdu`], framed as the connection negotiated.

use super::inbound::{IcResp, InboundError, Negotiated};
#[cfg(test)]
use super::pdu::DataPdu;
use super::pdu::{CapsuleResp, DataHeader, R2t, TermReq, pdu_type};
use crate::nvme::Cqe;

/// ICResp (NVMe/TCP 1.0, 3.6.2.3).
pub fn icresp(out: &mut Vec<u8>, resp: &IcResp) {
    resp.emit(out);
}

/// CapsuleResp carrying one completion (3.6.2.6).
pub fn capsule_resp(out: &mut Vec<u8>, neg: &Negotiated, cqe: &Cqe) {
    CapsuleResp { cqe: *cqe }.emit(out, neg.digests());
}

/// R2T asking for `r2tl` bytes at `r2to` of command `cccid` (3.6.2.10).
pub fn r2t(out: &mut Vec<u8>, neg: &Negotiated, cccid: u16, ttag: u16, r2to: u32, r2tl: u32) {
    R2t {
        cccid,
        ttag,
        r2to,
        r2tl,
    }
    .emit(out, neg.digests());
}

/// C2HData (3.6.2.8), or H2CData for tests: header, header digest, padding to the host's
/// alignment, data, data digest. The target itself sends data from where it lies.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub fn data_pdu(
    out: &mut Vec<u8>,
    neg: &Negotiated,
    kind: u8,
    cccid: u16,
    ttag: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
) {
    DataPdu {
        cccid,
        ttag,
        datao,
        last,
        success,
        data,
    }
    .emit(out, kind, &neg.framing());
}

/// C2HData for command `cccid`.
#[cfg(test)]
pub fn c2h_data(
    out: &mut Vec<u8>,
    neg: &Negotiated,
    cccid: u16,
    datao: u32,
    data: &[u8],
    last: bool,
    success: bool,
) {
    data_pdu(
        out,
        neg,
        pdu_type::C2H_DATA,
        cccid,
        0,
        datao,
        data,
        last,
        success,
    );
}

/// C2HData for command `cccid` whose `data_len` bytes of data the caller queues itself, right
/// after: the part before the data. Returns whether the data digest must follow the data.
pub fn c2h_data_header(
    out: &mut Vec<u8>,
    neg: &Negotiated,
    cccid: u16,
    data_len: usize,
    success: bool,
) -> bool {
    DataHeader {
        cccid,
        ttag: 0,
        datao: 0,
        datal: u32::try_from(data_len).unwrap_or(u32::MAX),
        last: true,
        success,
    }
    .emit(out, pdu_type::C2H_DATA, &neg.framing())
}

/// C2HTermReq (3.6.2.4): the error, and as much of the offending header as fits.
pub fn c2h_term_req(out: &mut Vec<u8>, err: &InboundError, header: &[u8]) {
    TermReq {
        fes: err.fes,
        fei: err.fei,
        echo: header,
    }
    .emit(out, pdu_type::C2H_TERM_REQ);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::Status;
    use crate::transport::tcp::pdu::{digest, flags};

    #[test]
    fn capsule_resp_bytes() {
        let mut neg = Negotiated::before_icreq();
        neg.header_digest = true;
        let mut out = vec![0xEE; 3];
        capsule_resp(&mut out, &neg, &Cqe::new(0x42, Status::SUCCESS));
        let pdu = &out[3..];
        assert_eq!(&pdu[..8], &[0x05, 0x01, 24, 0, 28, 0, 0, 0]);
        assert_eq!(u16::from_le_bytes([pdu[20], pdu[21]]), 0x42);
        assert_eq!(&pdu[24..28], &digest(&pdu[..24]));
    }

    #[test]
    fn c2h_data_layout_with_alignment() {
        let mut neg = Negotiated::before_icreq();
        neg.hpda = 7; // 32-byte alignment
        neg.data_digest = true;
        let mut out = Vec::new();
        c2h_data(&mut out, &neg, 9, 0, b"abcd", true, false);
        assert_eq!(out[3], 32, "PDO aligned to 32");
        assert_eq!(out.len(), 32 + 4 + 4);
        assert_eq!(&out[32..36], b"abcd");
        assert_eq!(&out[36..], &digest(b"abcd"));
        assert_eq!(out[1], flags::DDGSTF | flags::LAST_PDU);
    }

    #[test]
    fn term_req_echoes_header() {
        let mut out = Vec::new();
        c2h_term_req(&mut out, &InboundError::invalid_field(8, "x"), &[1; 200]);
        assert_eq!(out.len(), 24 + 128);
        assert_eq!(out[0], 0x03);
        assert_eq!(u16::from_le_bytes([out[8], out[9]]), 1);
        assert_eq!(u32::from_le_bytes([out[10], out[11], out[12], out[13]]), 8);
    }
}
