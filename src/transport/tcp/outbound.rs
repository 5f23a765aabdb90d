//! PDUs to the host, appended to the connection's send buffer with digests and padding.

use super::inbound::{IcResp, InboundError, Negotiated};
use super::wire::{self, flags, pdu_type};
use crate::nvme::Cqe;

/// Appends the common header.
fn common_header(out: &mut Vec<u8>, kind: u8, pdu_flags: u8, hlen: usize, pdo: usize, plen: usize) {
    let mut ch = [0; wire::CH_LEN];
    put_common_header(&mut ch, kind, pdu_flags, hlen, pdo, plen);
    out.extend_from_slice(&ch);
}

/// Writes the common header at the start of `header`, which is at least `CH_LEN` long.
fn put_common_header(
    header: &mut [u8],
    kind: u8,
    pdu_flags: u8,
    hlen: usize,
    pdo: usize,
    plen: usize,
) {
    header[0] = kind;
    header[1] = pdu_flags;
    header[2] = u8::try_from(hlen).unwrap_or(u8::MAX);
    header[3] = u8::try_from(pdo).unwrap_or(0);
    header[4..8].copy_from_slice(&u32::try_from(plen).unwrap_or(u32::MAX).to_le_bytes());
}

/// Appends the header digest of the header that starts at `start`, if negotiated.
fn header_digest(out: &mut Vec<u8>, start: usize, neg: &Negotiated) {
    if neg.header_digest {
        let digest = wire::digest(&out[start..]);
        out.extend_from_slice(&digest);
    }
}

/// Appends a header built whole on the stack (one copy into the buffer), and its digest.
fn put_header(out: &mut Vec<u8>, header: &[u8], neg: &Negotiated) {
    out.extend_from_slice(header);
    if neg.header_digest {
        out.extend_from_slice(&wire::digest(header));
    }
}

fn hdgst_len(neg: &Negotiated) -> usize {
    if neg.header_digest {
        wire::DIGEST_LEN
    } else {
        0
    }
}

/// ICResp (NVMe/TCP 1.0, 3.6.2.3).
pub fn icresp(out: &mut Vec<u8>, resp: &IcResp) {
    let start = out.len();
    common_header(out, pdu_type::IC_RESP, 0, wire::IC_LEN, 0, wire::IC_LEN);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.push(resp.cpda);
    out.push(u8::from(resp.header_digest) | (u8::from(resp.data_digest) << 1));
    out.extend_from_slice(&resp.maxh2cdata.to_le_bytes());
    out.resize(start + wire::IC_LEN, 0);
}

/// CapsuleResp carrying one completion (3.6.2.6).
pub fn capsule_resp(out: &mut Vec<u8>, neg: &Negotiated, cqe: &Cqe) {
    let hd = hdgst_len(neg);
    let pdu_flags = if neg.header_digest { flags::HDGSTF } else { 0 };
    let mut header = [0; wire::CAPSULE_RESP_HLEN];
    put_common_header(
        &mut header,
        pdu_type::CAPSULE_RESP,
        pdu_flags,
        wire::CAPSULE_RESP_HLEN,
        0,
        wire::CAPSULE_RESP_HLEN + hd,
    );
    cqe.emit(&mut header[wire::CH_LEN..]);
    put_header(out, &header, neg);
}

/// R2T asking for `r2tl` bytes at `r2to` of command `cccid` (3.6.2.10).
pub fn r2t(out: &mut Vec<u8>, neg: &Negotiated, cccid: u16, ttag: u16, r2to: u32, r2tl: u32) {
    let start = out.len();
    let hd = hdgst_len(neg);
    let pdu_flags = if neg.header_digest { flags::HDGSTF } else { 0 };
    common_header(
        out,
        pdu_type::R2T,
        pdu_flags,
        wire::R2T_HLEN,
        0,
        wire::R2T_HLEN + hd,
    );
    out.extend_from_slice(&cccid.to_le_bytes());
    out.extend_from_slice(&ttag.to_le_bytes());
    out.extend_from_slice(&r2to.to_le_bytes());
    out.extend_from_slice(&r2tl.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    header_digest(out, start, neg);
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
    let len = data.len();
    let digest = data_pdu_header(out, neg, kind, cccid, ttag, datao, len, last, success);
    out.extend_from_slice(data);
    if digest {
        out.extend_from_slice(&wire::digest(data));
    }
}

/// A data PDU up to where its `data_len` bytes of data start: header, header digest and
/// padding. Returns whether a data digest must follow the data.
#[allow(clippy::too_many_arguments)]
fn data_pdu_header(
    out: &mut Vec<u8>,
    neg: &Negotiated,
    kind: u8,
    cccid: u16,
    ttag: u16,
    datao: u32,
    data_len: usize,
    last: bool,
    success: bool,
) -> bool {
    let start = out.len();
    let hd = hdgst_len(neg);
    let align = (usize::from(neg.hpda) + 1) * 4;
    let pdo = (wire::DATA_HLEN + hd).div_ceil(align) * align;
    let dd = if neg.data_digest && data_len > 0 {
        wire::DIGEST_LEN
    } else {
        0
    };
    let mut pdu_flags = 0;
    if neg.header_digest {
        pdu_flags |= flags::HDGSTF;
    }
    if dd > 0 {
        pdu_flags |= flags::DDGSTF;
    }
    if last {
        pdu_flags |= flags::LAST_PDU;
    }
    if success {
        pdu_flags |= flags::SUCCESS;
    }
    let mut header = [0; wire::DATA_HLEN];
    put_common_header(
        &mut header,
        kind,
        pdu_flags,
        wire::DATA_HLEN,
        pdo,
        pdo + data_len + dd,
    );
    header[8..10].copy_from_slice(&cccid.to_le_bytes());
    header[10..12].copy_from_slice(&ttag.to_le_bytes());
    header[12..16].copy_from_slice(&datao.to_le_bytes());
    header[16..20].copy_from_slice(&u32::try_from(data_len).unwrap_or(u32::MAX).to_le_bytes());
    put_header(out, &header, neg);
    out.resize(start + pdo, 0);
    dd > 0
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
    data_pdu_header(
        out,
        neg,
        pdu_type::C2H_DATA,
        cccid,
        0,
        0,
        data_len,
        true,
        success,
    )
}

/// C2HTermReq (3.6.2.4): the error, and as much of the offending header as fits.
pub fn c2h_term_req(out: &mut Vec<u8>, err: &InboundError, header: &[u8]) {
    let echo = &header[..header.len().min(wire::TERM_REQ_MAX_ECHO)];
    let hlen = wire::TERM_REQ_HLEN;
    let start = out.len();
    common_header(out, pdu_type::C2H_TERM_REQ, 0, hlen, 0, hlen + echo.len());
    out.extend_from_slice(&err.fes.to_le_bytes());
    out.extend_from_slice(&err.fei.to_le_bytes());
    out.resize(start + hlen, 0);
    out.extend_from_slice(echo);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::Status;

    #[test]
    fn capsule_resp_bytes() {
        let mut neg = Negotiated::before_icreq();
        neg.header_digest = true;
        let mut out = vec![0xEE; 3];
        capsule_resp(&mut out, &neg, &Cqe::new(0x42, Status::SUCCESS));
        let pdu = &out[3..];
        assert_eq!(&pdu[..8], &[0x05, 0x01, 24, 0, 28, 0, 0, 0]);
        assert_eq!(u16::from_le_bytes([pdu[20], pdu[21]]), 0x42);
        assert_eq!(&pdu[24..28], &wire::digest(&pdu[..24]));
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
        assert_eq!(&out[36..], &wire::digest(b"abcd"));
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
