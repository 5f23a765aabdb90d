//! Cuts target PDUs out of received bytes: `Ok(None)` means "need more bytes". The PDU module
//! checks the header length for the type, PDO, PLEN and the negotiated digests; this module
//! adds what only the receive buffer knows (its size) and which types a target may send.

use crate::transport::tcp::pdu::{
    self, CommonHeader, DataPdu, Digests, PduError, PduView, pdu_type,
};

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
    #[error("PDU framing does not hold together")]
    Malformed(#[source] PduError),
}

impl From<PduError> for DeframeError {
    fn from(err: PduError) -> Self {
        match err {
            PduError::HeaderDigest => Self::HeaderDigest,
            PduError::DataDigest => Self::DataDigest,
            PduError::DataOffset
            | PduError::DataDigestFlag
            | PduError::NoRoomForDataDigest
            | PduError::DataLength
            | PduError::UnexpectedData => Self::DataBounds,
            other => Self::Malformed(other),
        }
    }
}

/// The whole PDU at the start of `buf` once it has fully arrived, its framing checked.
pub fn next_pdu(
    buf: &[u8],
    max_len: usize,
    digests: Digests,
) -> Result<Option<PduView<'_>>, DeframeError> {
    let Some(ch) = CommonHeader::peek(buf) else {
        return Ok(None);
    };
    // ICResp was the handshake's; after it a target sends only these.
    let from_target = ch.pdu_type != pdu_type::IC_RESP && pdu::sent_by_controller(ch.pdu_type);
    if !from_target || ch.check().is_err() {
        return Err(DeframeError::BadHeader {
            pdu_type: ch.pdu_type,
            hlen: ch.hlen(),
            plen: ch.plen(),
        });
    }
    let plen = ch.plen();
    if plen > max_len {
        return Err(DeframeError::TooLarge { plen, max: max_len });
    }
    if buf.len() < plen {
        return Ok(None);
    }
    Ok(Some(PduView::after_header(ch, buf, digests)?))
}

/// A complete C2HData PDU, its data digest checked.
pub fn c2h_payload<'a>(view: &PduView<'a>) -> Result<DataPdu<'a>, DeframeError> {
    let data = DataPdu::parse(view)?;
    view.check_data_digest()?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tcp::pdu::Framing;

    const BOTH: Digests = Digests {
        header: true,
        data: true,
    };

    fn digests(on: bool) -> Digests {
        if on { BOTH } else { Digests::NONE }
    }

    fn c2h(data: &[u8], on: bool) -> Vec<u8> {
        let mut pdu = Vec::new();
        DataPdu {
            cccid: 7,
            ttag: 0,
            datao: 0,
            last: true,
            success: true,
            data,
        }
        .emit(
            &mut pdu,
            pdu_type::C2H_DATA,
            &Framing {
                digests: digests(on),
                pda: 0,
            },
        );
        pdu
    }

    fn len(buf: &[u8], max: usize, on: bool) -> Result<Option<usize>, DeframeError> {
        next_pdu(buf, max, digests(on)).map(|v| v.map(|v| v.len()))
    }

    fn payload(pdu: &[u8], on: bool) -> Result<Vec<u8>, DeframeError> {
        let view = PduView::new_checked(pdu, digests(on))?;
        c2h_payload(&view).map(|d| d.data.to_vec())
    }

    #[test]
    fn whole_pdus_only_and_digests_checked() {
        for on in [false, true] {
            let pdu = c2h(b"hello world", on);
            for cut in 0..pdu.len() {
                assert_eq!(len(&pdu[..cut], 1 << 16, on), Ok(None), "cut {cut}");
            }
            let mut two = pdu.clone();
            two.extend_from_slice(&pdu);
            assert_eq!(len(&two, 1 << 16, on), Ok(Some(pdu.len())));
            assert_eq!(payload(&pdu, on), Ok(b"hello world".to_vec()));
            if on {
                let mut bad = pdu.clone();
                bad[10] ^= 1;
                assert_eq!(len(&bad, 1 << 16, on), Err(DeframeError::HeaderDigest));
                let mut bad = pdu.clone();
                bad[30] ^= 1;
                assert_eq!(payload(&bad, on), Err(DeframeError::DataDigest));
            }
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut pdu = c2h(b"x", false);
        assert_eq!(
            len(&pdu, 16, false),
            Err(DeframeError::TooLarge {
                plen: pdu.len(),
                max: 16
            })
        );
        pdu[2] = 72;
        assert!(matches!(
            len(&pdu, 1 << 16, false),
            Err(DeframeError::BadHeader { .. })
        ));
        let mut pdu = c2h(b"abc", false);
        pdu[16] = 200;
        assert_eq!(payload(&pdu, false), Err(DeframeError::DataBounds));
    }

    #[test]
    fn lying_target_pdus_are_errors_not_panics() {
        // An R2T shorter than its 24-byte header, and one whose data runs past PLEN.
        let short_r2t = [pdu_type::R2T, 0, 24, 0, 16, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0];
        assert!(matches!(
            len(&short_r2t, 1 << 16, false),
            Err(DeframeError::BadHeader { .. })
        ));
        let mut pdu = c2h(b"abcdef", false);
        pdu[3] = 60;
        assert_eq!(len(&pdu, 1 << 16, false), Err(DeframeError::DataBounds));
        // A header digest the connection negotiated but the PDU lacks.
        let pdu = c2h(b"abcdef", false);
        assert!(matches!(
            len(&pdu, 1 << 16, true),
            Err(DeframeError::Malformed(PduError::HeaderDigestFlag))
        ));
    }
}
