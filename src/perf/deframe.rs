//! Cuts target PDUs out of received bytes: `Ok(None)` means "need more bytes". Checks the
//! header length for the type, the PDU length against the receive buffer and the header
//! digest; the caller decides what each PDU means.

use crate::transport::tcp::wire::{self, flags, pdu_type};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeframeError {
    #[error("PDU of {plen} bytes does not fit the receive buffer ({max} bytes)")]
    TooLarge { plen: usize, max: usize },
    #[error("PDU type {pdu_type:#04x} with header length {hlen} and PDU length {plen}")]
    BadHeader {
        pdu_type: u8,
        hlen: usize,
        plen: usize,
    },
    #[error("bad header digest from the target")]
    HeaderDigest,
    #[error("bad data digest from the target")]
    DataDigest,
    #[error("data outside its PDU")]
    DataBounds,
}

/// Length of the whole PDU at the start of `buf` once it has fully arrived.
pub fn next_pdu(buf: &[u8], max_len: usize) -> Result<Option<usize>, DeframeError> {
    if buf.len() < wire::CH_LEN {
        return Ok(None);
    }
    let (ty, hlen, plen) = (buf[0], usize::from(buf[2]), wire::read_u32(buf, 4) as usize);
    let expected_hlen = match ty {
        pdu_type::CAPSULE_RESP => wire::CAPSULE_RESP_HLEN,
        pdu_type::C2H_DATA => wire::DATA_HLEN,
        pdu_type::R2T => wire::R2T_HLEN,
        pdu_type::C2H_TERM_REQ => wire::TERM_REQ_HLEN,
        _ => 0,
    };
    let hd = if buf[1] & flags::HDGSTF != 0 {
        wire::DIGEST_LEN
    } else {
        0
    };
    if hlen != expected_hlen || plen < hlen + hd {
        return Err(DeframeError::BadHeader {
            pdu_type: ty,
            hlen,
            plen,
        });
    }
    if plen > max_len {
        return Err(DeframeError::TooLarge { plen, max: max_len });
    }
    if buf.len() < plen {
        return Ok(None);
    }
    // A termination request carries no digest of its own header in practice; check the rest.
    if hd > 0 && ty != pdu_type::C2H_TERM_REQ && buf[hlen..hlen + hd] != wire::digest(&buf[..hlen])
    {
        return Err(DeframeError::HeaderDigest);
    }
    Ok(Some(plen))
}

/// The data of a complete C2HData PDU (`pdu` as `next_pdu` delimited it), its digest checked
/// when the PDU says it carries one.
pub fn c2h_payload(pdu: &[u8]) -> Result<&[u8], DeframeError> {
    let pdo = usize::from(pdu[3]);
    let datal = wire::read_u32(pdu, 16) as usize;
    let dd = if pdu[1] & flags::DDGSTF != 0 {
        wire::DIGEST_LEN
    } else {
        0
    };
    let end = pdo.checked_add(datal).ok_or(DeframeError::DataBounds)?;
    if pdo < wire::DATA_HLEN || end + dd > pdu.len() {
        return Err(DeframeError::DataBounds);
    }
    let data = &pdu[pdo..end];
    if dd > 0 && pdu[end..end + dd] != wire::digest(data) {
        return Err(DeframeError::DataDigest);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c2h(data: &[u8], digests: bool) -> Vec<u8> {
        let hd = if digests { 4 } else { 0 };
        let pdo = 24 + hd;
        let plen = pdo + data.len() + hd;
        let f = flags::LAST_PDU | flags::SUCCESS | if digests { 3 } else { 0 };
        let mut pdu = vec![pdu_type::C2H_DATA, f, 24, u8::try_from(pdo).expect("pdo")];
        pdu.extend_from_slice(&u32::try_from(plen).expect("plen").to_le_bytes());
        pdu.extend_from_slice(&7u16.to_le_bytes());
        pdu.extend_from_slice(&[0; 6]);
        pdu.extend_from_slice(&u32::try_from(data.len()).expect("len").to_le_bytes());
        pdu.extend_from_slice(&[0; 4]);
        if digests {
            let d = wire::digest(&pdu);
            pdu.extend_from_slice(&d);
        }
        pdu.extend_from_slice(data);
        if digests {
            pdu.extend_from_slice(&wire::digest(data));
        }
        pdu
    }

    #[test]
    fn whole_pdus_only_and_digests_checked() {
        for digests in [false, true] {
            let pdu = c2h(b"hello world", digests);
            for cut in 0..pdu.len() {
                assert_eq!(next_pdu(&pdu[..cut], 1 << 16), Ok(None), "cut {cut}");
            }
            let mut two = pdu.clone();
            two.extend_from_slice(&pdu);
            assert_eq!(next_pdu(&two, 1 << 16), Ok(Some(pdu.len())));
            assert_eq!(c2h_payload(&pdu), Ok(&b"hello world"[..]));
            if digests {
                let mut bad = pdu.clone();
                bad[10] ^= 1;
                assert_eq!(next_pdu(&bad, 1 << 16), Err(DeframeError::HeaderDigest));
                let mut bad = pdu.clone();
                bad[30] ^= 1;
                assert_eq!(c2h_payload(&bad), Err(DeframeError::DataDigest));
            }
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut pdu = c2h(b"x", false);
        assert_eq!(
            next_pdu(&pdu, 16),
            Err(DeframeError::TooLarge {
                plen: pdu.len(),
                max: 16
            })
        );
        pdu[2] = 72;
        assert!(matches!(
            next_pdu(&pdu, 1 << 16),
            Err(DeframeError::BadHeader { .. })
        ));
        let mut pdu = c2h(b"abc", false);
        pdu[16] = 200;
        assert_eq!(c2h_payload(&pdu), Err(DeframeError::DataBounds));
    }
}
