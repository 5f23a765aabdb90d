//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, section 3.6), in one place for both
//! ends: the target's queue pairs and the host (`host`, `perf`) build and read PDUs only here.
//!
//! Untrusted bytes go through [`PduView::new_checked`], which checks every length the common
//! header claims (HLEN for the type, PDO and PLEN, the digests the flags announce) before any
//! field is read. Each PDU type is then a plain struct with `parse` (from a checked view) and
//! `emit` (appended to a send buffer); [`Pdu`] is the union of them. Digests are computed and
//! checked in [`digest`] only.
//!
//! Emission appends to a `Vec<u8>` that the caller reuses: headers are built on the stack and
//! copied once, and data that the caller sends from where it lies is not touched at all
//! ([`DataHeader::emit`] returns whether a data digest must follow it).

mod capsule;
mod data;
mod digest;
mod error;
mod header;
mod ic;
mod term;

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;

pub use capsule::{CapsuleCmd, CapsuleResp};
pub use data::{DataHeader, DataPdu, R2t};
pub use digest::{Digests, digest, zeroes_digest, zeroes_digest_after};
pub use error::PduError;
pub use header::{CommonHeader, Framing, PduView};
pub use ic::{IcReq, IcResp};
pub use term::TermReq;

/// PDU types (Figure 9).
pub mod pdu_type {
    pub const IC_REQ: u8 = 0x00;
    pub const IC_RESP: u8 = 0x01;
    pub const H2C_TERM_REQ: u8 = 0x02;
    pub const C2H_TERM_REQ: u8 = 0x03;
    pub const CAPSULE_CMD: u8 = 0x04;
    pub const CAPSULE_RESP: u8 = 0x05;
    pub const H2C_DATA: u8 = 0x06;
    pub const C2H_DATA: u8 = 0x07;
    pub const R2T: u8 = 0x09;
}

/// Common header flags (Figure 10).
pub mod flags {
    pub const HDGSTF: u8 = 0x01;
    pub const DDGSTF: u8 = 0x02;
    /// H2CData / C2HData: the last PDU of the transfer.
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData: the command succeeded; no CapsuleResp follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal error status of a termination request (Figure 16).
pub mod fes {
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    pub const PDU_SEQUENCE_ERROR: u16 = 0x02;
    pub const HEADER_DIGEST_ERROR: u16 = 0x03;
    pub const DATA_TRANSFER_OUT_OF_RANGE: u16 = 0x04;
    pub const DATA_TRANSFER_LIMIT_EXCEEDED: u16 = 0x05;
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Length of the common header.
pub const CH_LEN: usize = 8;
/// Header lengths per PDU type.
pub const IC_LEN: usize = 128;
pub const TERM_REQ_HLEN: usize = 24;
pub const CAPSULE_CMD_HLEN: usize = 72;
pub const CAPSULE_RESP_HLEN: usize = 24;
pub const DATA_HLEN: usize = 24;
pub const R2T_HLEN: usize = 24;
/// Digest length (CRC32C).
pub const DIGEST_LEN: usize = 4;
/// At most this much of the offending PDU header is echoed in a termination request.
pub const TERM_REQ_MAX_ECHO: usize = 128;

/// HLEN of each PDU type, indexed by type (Figure 9); 0 for a type that does not exist.
const HEADER_LENS: [u8; 10] = [128, 128, 24, 24, 72, 24, 24, 24, 0, 24];

/// The header length a PDU type must have, `None` for a type the specification does not know.
#[inline]
pub fn header_len(kind: u8) -> Option<usize> {
    HEADER_LENS
        .get(usize::from(kind))
        .filter(|&&hlen| hlen != 0)
        .map(|&hlen| usize::from(hlen))
}

/// Types a host sends (ICReq, H2CTermReq, CapsuleCmd, H2CData), one bit per type.
const FROM_HOST: u16 = 1 << pdu_type::IC_REQ
    | 1 << pdu_type::H2C_TERM_REQ
    | 1 << pdu_type::CAPSULE_CMD
    | 1 << pdu_type::H2C_DATA;
/// Types a controller sends (ICResp, C2HTermReq, CapsuleResp, C2HData, R2T).
const FROM_CONTROLLER: u16 = 1 << pdu_type::IC_RESP
    | 1 << pdu_type::C2H_TERM_REQ
    | 1 << pdu_type::CAPSULE_RESP
    | 1 << pdu_type::C2H_DATA
    | 1 << pdu_type::R2T;

/// Whether hosts send PDUs of this type (a controller receives only these).
#[inline]
pub fn sent_by_host(kind: u8) -> bool {
    kind < 16 && FROM_HOST >> kind & 1 == 1
}

/// Whether controllers send PDUs of this type (a host receives only these).
#[inline]
pub fn sent_by_controller(kind: u8) -> bool {
    kind < 16 && FROM_CONTROLLER >> kind & 1 == 1
}

/// Whether PDUs of this type carry digests when they are negotiated: every type but the
/// connection setup and termination requests.
#[inline]
fn takes_digests(kind: u8) -> bool {
    !matches!(
        kind,
        pdu_type::IC_REQ | pdu_type::IC_RESP | pdu_type::H2C_TERM_REQ | pdu_type::C2H_TERM_REQ
    )
}

/// One PDU of any type, as read from or written to the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu<'a> {
    IcReq(IcReq),
    IcResp(IcResp),
    H2CTermReq(TermReq<'a>),
    C2HTermReq(TermReq<'a>),
    CapsuleCmd(CapsuleCmd<'a>),
    CapsuleResp(CapsuleResp),
    H2CData(DataPdu<'a>),
    C2HData(DataPdu<'a>),
    R2t(R2t),
}

impl<'a> Pdu<'a> {
    /// The PDU a checked view holds. Data digests are not checked here: whether a bad one is
    /// fatal is the caller's decision ([`PduView::data_digest_ok`]).
    pub fn parse(view: &PduView<'a>) -> Result<Self, PduError> {
        Ok(match view.pdu_type() {
            pdu_type::IC_REQ => Self::IcReq(IcReq::parse(view)?),
            pdu_type::IC_RESP => Self::IcResp(IcResp::parse(view)?),
            pdu_type::H2C_TERM_REQ => Self::H2CTermReq(TermReq::parse(view)),
            pdu_type::C2H_TERM_REQ => Self::C2HTermReq(TermReq::parse(view)),
            pdu_type::CAPSULE_CMD => Self::CapsuleCmd(CapsuleCmd::parse(view)?),
            pdu_type::CAPSULE_RESP => Self::CapsuleResp(CapsuleResp::parse(view)?),
            pdu_type::H2C_DATA => Self::H2CData(DataPdu::parse(view)?),
            pdu_type::C2H_DATA => Self::C2HData(DataPdu::parse(view)?),
            pdu_type::R2T => Self::R2t(R2t::parse(view)?),
            other => return Err(PduError::UnknownType(other)),
        })
    }

    /// Appends the PDU framed as `framing` says.
    pub fn emit(&self, out: &mut Vec<u8>, framing: &Framing) {
        match self {
            Self::IcReq(icreq) => icreq.emit(out),
            Self::IcResp(icresp) => icresp.emit(out),
            Self::H2CTermReq(term) => term.emit(out, pdu_type::H2C_TERM_REQ),
            Self::C2HTermReq(term) => term.emit(out, pdu_type::C2H_TERM_REQ),
            Self::CapsuleCmd(capsule) => capsule.emit(out, framing),
            Self::CapsuleResp(resp) => resp.emit(out, framing.digests),
            Self::H2CData(data) => data.emit(out, pdu_type::H2C_DATA, framing),
            Self::C2HData(data) => data.emit(out, pdu_type::C2H_DATA, framing),
            Self::R2t(r2t) => r2t.emit(out, framing.digests),
        }
    }
}
