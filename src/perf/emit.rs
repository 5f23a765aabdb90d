//! Host PDUs appended to a reused send buffer: CapsuleCmd (with in-capsule data) and
//! H2CData, built by the PDU module. No allocation once the buffer has grown to its working
//! size.

use crate::nvme::Sqe;
use crate::transport::tcp::pdu::{CapsuleCmd, DataPdu, Framing, pdu_type};

/// NVMe/TCP 1.0, 3.6.2.5 CapsuleCmd: the command, then `data` in the capsule (may be empty).
pub fn capsule_cmd(out: &mut Vec<u8>, framing: &Framing, sqe: &Sqe, data: &[u8]) {
    CapsuleCmd { sqe: *sqe, data }.emit(out, framing);
}

/// NVMe/TCP 1.0, 3.6.2.8 H2CData: the R2T's data cut into PDUs of at most `max_data` bytes.
pub fn h2c_data(
    out: &mut Vec<u8>,
    framing: &Framing,
    (cid, ttag): (u16, u16),
    offset: usize,
    data: &[u8],
    max_data: usize,
) {
    let mut sent = 0;
    for part in data.chunks(max_data.max(1)) {
        DataPdu {
            cccid: cid,
            ttag,
            datao: u32::try_from(offset + sent).unwrap_or(u32::MAX),
            last: sent + part.len() == data.len(),
            success: false,
            data: part,
        }
        .emit(out, pdu_type::H2C_DATA, framing);
        sent += part.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tcp::pdu::{Digests, PduView, digest, flags};

    #[test]
    fn capsule_layout_with_and_without_digests() {
        let sqe = Sqe::new(0x01, 9);
        let mut out = vec![0xAA; 3];
        capsule_cmd(&mut out, &Framing::default(), &sqe, &[]);
        assert_eq!(&out[3..11], &[0x04, 0, 72, 0, 72, 0, 0, 0]);
        assert_eq!(&out[11..], sqe.as_bytes());

        let mut out = Vec::new();
        let framing = Framing {
            digests: Digests {
                header: true,
                data: true,
            },
            pda: 0,
        };
        capsule_cmd(&mut out, &framing, &sqe, b"data");
        assert_eq!(&out[..8], &[0x04, 0x03, 72, 76, 84, 0, 0, 0]);
        assert_eq!(out[72..76], digest(&out[..72]));
        assert_eq!(&out[76..80], b"data");
        assert_eq!(out[80..84], digest(b"data"));
    }

    #[test]
    fn h2c_splits_at_max_data_and_marks_the_last() {
        let mut out = Vec::new();
        let data: Vec<u8> = (0..10u8).collect();
        h2c_data(&mut out, &Framing::default(), (5, 6), 100, &data, 4);
        // Three PDUs of 24-byte header plus 4, 4 and 2 bytes.
        assert_eq!(out.len(), 3 * 24 + 10);
        let third = &out[2 * 28..];
        assert_eq!(third[0], pdu_type::H2C_DATA);
        assert_eq!(third[1], flags::LAST_PDU);
        assert_eq!(out[1], 0);
        let view = PduView::new_checked(third, Digests::NONE).expect("framing");
        let pdu = DataPdu::parse(&view).expect("H2CData");
        assert_eq!((pdu.cccid, pdu.ttag, pdu.datao), (5, 6, 108));
        assert_eq!(pdu.header().datal, 2);
        assert_eq!(pdu.data, &[8, 9]);
        assert_eq!(&third[24..], &[8, 9]);
    }
}
