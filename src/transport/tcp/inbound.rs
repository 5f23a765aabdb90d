//! PDUs from the host: a deframer over the receive buffer, and ICReq negotiation.
//!
//! `Inbound::parse` returns `Ok(None)` while the buffer holds less than one whole PDU, so the
//! connection simply reads more. Every structural problem becomes an [`InboundError`], the one
//! place that decides the termination request's FES and FEI.

use super::pdu::{
    self, CapsuleCmd, CommonHeader, DataPdu, Digests, Framing, PduError, PduView, TermReq, fes,
    pdu_type,
};
pub use super::pdu::{IcReq, IcResp};
use crate::controller::TransportLimits;
use crate::nvme::Sqe;

/// In-capsule data accepted on the admin queue (fabrics Connect needs 1024; 8192 like SPDK).
const ADMIN_IN_CAPSULE: usize = 8192;
/// Padding a host may put between a header and its data (PDO is one byte).
const MAX_PAD: usize = 255;

/// A fatal protocol error: the FES and FEI of the C2HTermReq that reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why} (fes {fes:#x}, fei {fei})")]
pub struct InboundError {
    pub fes: u16,
    pub fei: u32,
    pub why: &'static str,
}

impl InboundError {
    pub fn invalid_field(fei: u32, why: &'static str) -> Self {
        Self {
            fes: fes::INVALID_HEADER_FIELD,
            fei,
            why,
        }
    }

    pub fn sequence(why: &'static str) -> Self {
        Self {
            fes: fes::PDU_SEQUENCE_ERROR,
            fei: 0,
            why,
        }
    }

    pub fn out_of_range(why: &'static str) -> Self {
        Self {
            fes: fes::DATA_TRANSFER_OUT_OF_RANGE,
            fei: 0,
            why,
        }
    }

    fn limit(why: &'static str) -> Self {
        Self {
            fes: fes::DATA_TRANSFER_LIMIT_EXCEEDED,
            fei: 0,
            why,
        }
    }
}

/// A PDU that does not hold together is a fatal error on the field at fault; a bad header
/// digest has its own status.
impl From<PduError> for InboundError {
    fn from(err: PduError) -> Self {
        let fes = match err {
            PduError::HeaderDigest => fes::HEADER_DIGEST_ERROR,
            _ => fes::INVALID_HEADER_FIELD,
        };
        Self {
            fes,
            fei: err.field(),
            why: err.why(),
        }
    }
}

/// An H2CData PDU; `data` borrows the receive buffer.
#[derive(Debug)]
pub struct H2CData<'a> {
    pub cccid: u16,
    pub ttag: u16,
    pub datao: u32,
    pub last: bool,
    pub data: &'a [u8],
    pub data_digest_ok: bool,
}

/// One PDU from the host.
#[derive(Debug)]
pub enum Inbound<'a> {
    IcReq(IcReq),
    TermReq {
        fes: u16,
    },
    Capsule {
        sqe: Sqe,
        data: &'a [u8],
        data_digest_ok: bool,
    },
    H2CData(H2CData<'a>),
}

/// What was agreed in ICReq/ICResp, and so how PDUs are framed.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Host PDU data alignment: C2H data starts at a multiple of `(hpda + 1) * 4`.
    pub hpda: u8,
    pub maxh2cdata: u32,
    /// The largest PDU accepted; larger `plen` is refused before buffering it.
    pub max_pdu_len: usize,
    /// In-capsule data accepted: 8 KiB on the admin queue (Connect and admin commands), the
    /// advertised `in_capsule_data_size` once an I/O queue is connected.
    capsule_data_limit: usize,
    established: bool,
}

impl Negotiated {
    /// Before ICReq only the 128-byte ICReq (or a termination request) can arrive.
    pub fn before_icreq() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            hpda: 0,
            maxh2cdata: 0,
            max_pdu_len: pdu::IC_LEN,
            capsule_data_limit: ADMIN_IN_CAPSULE,
            established: false,
        }
    }

    /// The digests the host's capsule and data PDUs carry, and the target's.
    pub fn digests(&self) -> Digests {
        Digests {
            header: self.header_digest,
            data: self.data_digest,
        }
    }

    /// How the target frames what it sends: the digests, and data aligned to HPDA.
    pub fn framing(&self) -> Framing {
        Framing {
            digests: self.digests(),
            pda: self.hpda,
        }
    }

    /// Fixes the in-capsule data this queue accepts from now on.
    pub fn set_capsule_data_limit(&mut self, limit: usize) {
        self.capsule_data_limit = limit;
    }

    /// The longest capsule PDU worth buffering: its header, digests, in-capsule data and as
    /// much padding as a host could put before the data.
    fn max_capsule_len(&self) -> usize {
        pdu::CAPSULE_CMD_HLEN + 2 * pdu::DIGEST_LEN + MAX_PAD + self.capsule_data_limit
    }

    /// Checks the host's ICReq and fixes the connection's framing.
    pub fn accept_icreq(
        &mut self,
        icreq: &IcReq,
        limits: &TransportLimits,
    ) -> Result<IcResp, InboundError> {
        if icreq.pfv != 0 {
            return Err(InboundError::invalid_field(
                8,
                "unsupported PDU format version",
            ));
        }
        if icreq.hpda > 31 {
            return Err(InboundError::invalid_field(10, "HPDA out of range"));
        }
        let maxh2cdata = limits.max_io_size.max(4096);
        self.header_digest = icreq.header_digest;
        self.data_digest = icreq.data_digest;
        self.hpda = icreq.hpda;
        self.maxh2cdata = maxh2cdata;
        let digests = 2 * pdu::DIGEST_LEN;
        let capsule = pdu::CAPSULE_CMD_HLEN
            + digests
            + ADMIN_IN_CAPSULE.max(limits.in_capsule_data_size as usize);
        let data = pdu::DATA_HLEN + digests + 128 + maxh2cdata as usize;
        self.max_pdu_len = capsule.max(data);
        self.established = true;
        Ok(IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: icreq.header_digest,
            data_digest: icreq.data_digest,
            maxh2cdata,
        })
    }
}

impl<'a> Inbound<'a> {
    /// Parses one PDU from the front of `buf`: `Ok(None)` if it is not all here yet.
    pub fn parse(buf: &'a [u8], neg: &Negotiated) -> Result<Option<(Self, usize)>, InboundError> {
        let Some(ch) = CommonHeader::peek(buf) else {
            return Ok(None);
        };
        let kind = ch.pdu_type;
        if !pdu::sent_by_host(kind) {
            return Err(InboundError::invalid_field(0, "PDU type not sent by hosts"));
        }
        ch.check()?;
        let plen = ch.plen();
        let limit = if kind == pdu_type::H2C_TERM_REQ {
            pdu::TERM_REQ_HLEN + pdu::TERM_REQ_MAX_ECHO
        } else {
            neg.max_pdu_len
        };
        if plen > limit {
            return Err(InboundError::invalid_field(4, "PDU longer than negotiated"));
        }
        if kind == pdu_type::CAPSULE_CMD && neg.established && plen > neg.max_capsule_len() {
            // Refused before it is buffered (SPDK answers the same way).
            return Err(InboundError::limit(
                "in-capsule data larger than the queue accepts",
            ));
        }
        if buf.len() < plen {
            return Ok(None);
        }
        let carries_data = || matches!(kind, pdu_type::CAPSULE_CMD | pdu_type::H2C_DATA);
        if !neg.established && carries_data() {
            return Err(InboundError::sequence("PDU before ICReq"));
        }
        let view = PduView::after_header(ch, buf, neg.digests())?;
        let data_digest_ok = view.data_digest_ok();
        let parsed = match kind {
            pdu_type::IC_REQ => Self::IcReq(IcReq::parse(&view)?),
            pdu_type::H2C_TERM_REQ => Self::TermReq {
                fes: TermReq::parse(&view).fes,
            },
            pdu_type::CAPSULE_CMD => {
                let capsule = CapsuleCmd::parse(&view)?;
                if capsule.data.len() > neg.capsule_data_limit {
                    return Err(InboundError::limit(
                        "in-capsule data larger than the queue accepts",
                    ));
                }
                Self::Capsule {
                    sqe: capsule.sqe,
                    data: capsule.data,
                    data_digest_ok,
                }
            }
            _ => {
                let data = DataPdu::parse(&view)?;
                if data.data.len() > neg.maxh2cdata as usize {
                    return Err(InboundError::limit("H2CData larger than MAXH2CDATA"));
                }
                Self::H2CData(H2CData {
                    cccid: data.cccid,
                    ttag: data.ttag,
                    datao: data.datao,
                    last: data.last,
                    data: data.data,
                    data_digest_ok,
                })
            }
        };
        Ok(Some((parsed, plen)))
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::transport::tcp::outbound;

    fn established(hd: bool, dd: bool) -> Negotiated {
        let mut neg = Negotiated::before_icreq();
        neg.accept_icreq(
            &IcReq {
                pfv: 0,
                hpda: 0,
                header_digest: hd,
                data_digest: dd,
                maxr2t: 0,
            },
            &TransportLimits::default(),
        )
        .expect("icreq");
        neg
    }

    fn h2c(neg: &Negotiated, data: &[u8], last: bool) -> Vec<u8> {
        let mut out = Vec::new();
        outbound::data_pdu(
            &mut out,
            neg,
            pdu_type::H2C_DATA,
            7,
            3,
            0,
            data,
            last,
            false,
        );
        out
    }

    #[test]
    fn h2c_data_round_trips_with_digests_and_needs_all_bytes() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            let neg = established(hd, dd);
            let bytes = h2c(&neg, b"hello world", true);
            for cut in 0..bytes.len() {
                assert!(
                    Inbound::parse(&bytes[..cut], &neg)
                        .expect("partial")
                        .is_none()
                );
            }
            let (pdu, used) = Inbound::parse(&bytes, &neg).expect("parse").expect("whole");
            assert_eq!(used, bytes.len());
            let Inbound::H2CData(d) = pdu else {
                panic!("not H2CData")
            };
            assert_eq!((d.cccid, d.ttag, d.datao, d.last), (7, 3, 0, true));
            assert_eq!(d.data, b"hello world");
            assert!(d.data_digest_ok);
        }
    }

    #[test]
    fn bad_digests() {
        let neg = established(true, true);
        let mut bytes = h2c(&neg, b"data", false);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let Some((Inbound::H2CData(d), _)) = Inbound::parse(&bytes, &neg).expect("parse") else {
            panic!("not H2CData")
        };
        assert!(
            !d.data_digest_ok,
            "data digest error is reported, not fatal"
        );
        let mut bytes = h2c(&neg, b"data", false);
        bytes[9] ^= 1;
        let err = Inbound::parse(&bytes, &neg).expect_err("header digest");
        assert_eq!(err.fes, fes::HEADER_DIGEST_ERROR);
    }

    #[test]
    fn structural_errors() {
        let neg = established(false, false);
        let mut bytes = h2c(&neg, b"data", false);
        bytes[2] = 30;
        assert_eq!(Inbound::parse(&bytes, &neg).expect_err("hlen").fei, 2);
        let mut bytes = h2c(&neg, b"data", false);
        bytes[4..8].copy_from_slice(&20u32.to_le_bytes());
        assert_eq!(Inbound::parse(&bytes, &neg).expect_err("plen").fei, 4);
        let mut bytes = h2c(&neg, b"data", false);
        bytes[16] = 9;
        assert_eq!(Inbound::parse(&bytes, &neg).expect_err("datal").fei, 16);
        let mut bytes = h2c(&neg, b"data", false);
        bytes[0] = 0x05;
        assert_eq!(Inbound::parse(&bytes, &neg).expect_err("type").fei, 0);
        let bytes = h2c(&neg, b"data", false);
        let err = Inbound::parse(&bytes, &Negotiated::before_icreq()).expect_err("before icreq");
        assert_eq!(err.fes, fes::PDU_SEQUENCE_ERROR, "data PDU before ICReq");
    }

    fn capsule(neg: &Negotiated, data_len: usize) -> Vec<u8> {
        let mut pdu = Vec::new();
        let data = vec![0; data_len];
        let framing = Framing {
            digests: neg.digests(),
            pda: 0,
        };
        CapsuleCmd {
            sqe: Sqe::default(),
            data: &data,
        }
        .emit(&mut pdu, &framing);
        pdu
    }

    #[test]
    fn in_capsule_data_beyond_the_queue_limit_is_refused() {
        for (hd, dd) in [(false, false), (true, true)] {
            let mut neg = established(hd, dd);
            // Before an I/O queue connects, admin capsules may carry 8 KiB.
            assert!(
                Inbound::parse(&capsule(&neg, 8192), &neg)
                    .expect("admin")
                    .is_some()
            );
            let err = Inbound::parse(&capsule(&neg, 8208), &neg).expect_err("over 8 KiB");
            assert_eq!(err.fes, fes::DATA_TRANSFER_LIMIT_EXCEEDED);
            neg.set_capsule_data_limit(4096);
            assert!(
                Inbound::parse(&capsule(&neg, 4096), &neg)
                    .expect("icd")
                    .is_some()
            );
            let err = Inbound::parse(&capsule(&neg, 4112), &neg).expect_err("over icd");
            assert_eq!(err.fes, fes::DATA_TRANSFER_LIMIT_EXCEEDED);
            // 16 KiB is refused from its header alone, before the data is buffered.
            let big = capsule(&neg, 16384);
            let err = Inbound::parse(&big[..80], &neg).expect_err("from the header");
            assert_eq!(err.fes, fes::DATA_TRANSFER_LIMIT_EXCEEDED);
        }
    }

    #[test]
    fn icreq_negotiation() {
        let mut neg = Negotiated::before_icreq();
        let bad = IcReq {
            pfv: 1,
            hpda: 0,
            header_digest: false,
            data_digest: false,
            maxr2t: 0,
        };
        let err = neg
            .accept_icreq(&bad, &TransportLimits::default())
            .expect_err("pfv");
        assert_eq!((err.fes, err.fei), (fes::INVALID_HEADER_FIELD, 8));
        let resp = neg
            .accept_icreq(
                &IcReq {
                    pfv: 0,
                    header_digest: true,
                    ..bad
                },
                &TransportLimits::default(),
            )
            .expect("ok");
        assert!(resp.header_digest && !resp.data_digest);
        assert_eq!(resp.maxh2cdata, 131_072);
    }

    #[test]
    fn random_bytes_never_panic() {
        let neg = established(true, true);
        let mut seed = 0x1234_5678_u64;
        for _ in 0..20_000 {
            let len = usize::try_from(seed % 200).unwrap_or(0);
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                buf.push((seed >> 33) as u8);
            }
            if buf.len() > 8 && seed % 2 == 0 {
                buf[0] = [0x00, 0x02, 0x04, 0x06][usize::try_from(seed % 4).unwrap_or(0)];
                buf[2] = [128, 24, 72, 24][usize::try_from(seed % 4).unwrap_or(0)];
            }
            let _ = Inbound::parse(&buf, &neg);
            let _ = Inbound::parse(&buf, &Negotiated::before_icreq());
        }
    }
}
