//! Host PDUs appended to a reused send buffer: CapsuleCmd (with in-capsule data) and
//! H2CData. No allocation once the buffer has grown to its working size.

use crate::nvme::Sqe;
use crate::transport::tcp::wire::{self, flags, pdu_type};

/// The digests ICResp granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    fn lens(self, has_data: bool) -> (usize, usize) {
        let hd = if self.header { wire::DIGEST_LEN } else { 0 };
        let dd = if self.data && has_data {
            wire::DIGEST_LEN
        } else {
            0
        };
        (hd, dd)
    }

    fn flags(self, has_data: bool) -> u8 {
        let (hd, dd) = self.lens(has_data);
        (if hd > 0 { flags::HDGSTF } else { 0 }) | (if dd > 0 { flags::DDGSTF } else { 0 })
    }
}

fn u32_len(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

/// Appends the header digest of the header that starts at `start`.
fn header_digest(out: &mut Vec<u8>, start: usize, d: Digests) {
    if d.header {
        let digest = wire::digest(&out[start..]);
        out.extend_from_slice(&digest);
    }
}

fn data_with_digest(out: &mut Vec<u8>, data: &[u8], d: Digests) {
    out.extend_from_slice(data);
    if d.data {
        out.extend_from_slice(&wire::digest(data));
    }
}

/// NVMe/TCP 1.0, 3.6.2.5 CapsuleCmd: the command, then `data` in the capsule (may be empty).
pub fn capsule_cmd(out: &mut Vec<u8>, d: Digests, sqe: &Sqe, data: &[u8]) {
    let has_data = !data.is_empty();
    let (hd, dd) = d.lens(has_data);
    let hlen = wire::CAPSULE_CMD_HLEN;
    let pdo = if has_data { hlen + hd } else { 0 };
    let start = out.len();
    out.extend_from_slice(&[
        pdu_type::CAPSULE_CMD,
        d.flags(has_data),
        72,
        u8::try_from(pdo).unwrap_or(0),
    ]);
    out.extend_from_slice(&u32_len(hlen + hd + data.len() + dd));
    out.extend_from_slice(sqe.as_bytes());
    header_digest(out, start, d);
    if has_data {
        data_with_digest(out, data, d);
    }
}

/// NVMe/TCP 1.0, 3.6.2.8 H2CData: the R2T's data cut into PDUs of at most `max_data` bytes.
pub fn h2c_data(
    out: &mut Vec<u8>,
    d: Digests,
    (cid, ttag): (u16, u16),
    offset: usize,
    data: &[u8],
    max_data: usize,
) {
    let (hd, dd) = d.lens(true);
    let pdo = wire::DATA_HLEN + hd;
    let mut sent = 0;
    for part in data.chunks(max_data.max(1)) {
        let last = sent + part.len() == data.len();
        let start = out.len();
        let pdu_flags = d.flags(true) | if last { flags::LAST_PDU } else { 0 };
        out.extend_from_slice(&[
            pdu_type::H2C_DATA,
            pdu_flags,
            24,
            u8::try_from(pdo).unwrap_or(0),
        ]);
        out.extend_from_slice(&u32_len(pdo + part.len() + dd));
        out.extend_from_slice(&cid.to_le_bytes());
        out.extend_from_slice(&ttag.to_le_bytes());
        out.extend_from_slice(&u32_len(offset + sent));
        out.extend_from_slice(&u32_len(part.len()));
        out.extend_from_slice(&[0; 4]);
        header_digest(out, start, d);
        data_with_digest(out, part, d);
        sent += part.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capsule_layout_with_and_without_digests() {
        let sqe = Sqe::new(0x01, 9);
        let mut out = vec![0xAA; 3];
        capsule_cmd(&mut out, Digests::default(), &sqe, &[]);
        assert_eq!(&out[3..11], &[0x04, 0, 72, 0, 72, 0, 0, 0]);
        assert_eq!(&out[11..], sqe.as_bytes());

        let mut out = Vec::new();
        let d = Digests {
            header: true,
            data: true,
        };
        capsule_cmd(&mut out, d, &sqe, b"data");
        assert_eq!(&out[..8], &[0x04, 0x03, 72, 76, 84, 0, 0, 0]);
        assert_eq!(out[72..76], wire::digest(&out[..72]));
        assert_eq!(&out[76..80], b"data");
        assert_eq!(out[80..84], wire::digest(b"data"));
    }

    #[test]
    fn h2c_splits_at_max_data_and_marks_the_last() {
        let mut out = Vec::new();
        let data: Vec<u8> = (0..10u8).collect();
        h2c_data(&mut out, Digests::default(), (5, 6), 100, &data, 4);
        // Three PDUs of 24-byte header plus 4, 4 and 2 bytes.
        assert_eq!(out.len(), 3 * 24 + 10);
        let third = &out[2 * 28..];
        assert_eq!(third[0], pdu_type::H2C_DATA);
        assert_eq!(third[1], flags::LAST_PDU);
        assert_eq!(out[1], 0);
        assert_eq!(wire::read_u16(third, 8), 5);
        assert_eq!(wire::read_u16(third, 10), 6);
        assert_eq!(wire::read_u32(third, 12), 108);
        assert_eq!(wire::read_u32(third, 16), 2);
        assert_eq!(&third[24..], &[8, 9]);
    }
}
