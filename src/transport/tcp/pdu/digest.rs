//! CRC32C header and data digests (NVMe/TCP 1.0, 3.6.1.4): computed and checked here only.

use super::{DIGEST_LEN, flags};

/// Zeroes digested in place of data that is all zero, one block at a time.
static ZEROES: [u8; 4096] = [0; 4096];

/// CRC32C as NVMe/TCP sends it.
#[inline]
pub fn digest(bytes: &[u8]) -> [u8; 4] {
    crc32c::crc32c(bytes).to_le_bytes()
}

/// Whether `sent` is the digest of `bytes`.
#[inline]
pub(super) fn matches(bytes: &[u8], sent: &[u8]) -> bool {
    sent == digest(bytes)
}

/// CRC32C of `len` zero bytes, as NVMe/TCP sends a data digest.
pub fn zeroes_digest(len: usize) -> [u8; 4] {
    zeroes_digest_after(0, len)
}

/// The data digest of bytes whose CRC32C so far is `crc`, followed by `len` zero bytes.
pub fn zeroes_digest_after(crc: u32, len: usize) -> [u8; 4] {
    let mut crc = crc;
    let mut left = len;
    while left > 0 {
        let n = left.min(ZEROES.len());
        crc = crc32c::crc32c_append(crc, &ZEROES[..n]);
        left -= n;
    }
    crc.to_le_bytes()
}

/// The digests ICReq/ICResp agreed on for a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

impl Digests {
    pub const NONE: Self = Self {
        header: false,
        data: false,
    };

    /// Bytes of header digest after a header.
    #[inline]
    pub fn header_len(self) -> usize {
        if self.header { DIGEST_LEN } else { 0 }
    }

    /// Bytes of data digest after `data_len` bytes of data: none without data.
    #[inline]
    pub fn data_len(self, data_len: usize) -> usize {
        if self.data && data_len > 0 {
            DIGEST_LEN
        } else {
            0
        }
    }

    /// The HDGSTF and DDGSTF flags of a PDU with `data_len` bytes of data.
    #[inline]
    pub fn flags(self, data_len: usize) -> u8 {
        let mut pdu_flags = 0;
        if self.header {
            pdu_flags |= flags::HDGSTF;
        }
        if self.data_len(data_len) > 0 {
            pdu_flags |= flags::DDGSTF;
        }
        pdu_flags
    }

    /// Appends the digest of `header`, the header just written, if one is negotiated.
    #[inline]
    pub(super) fn put_header_digest(self, out: &mut Vec<u8>, header: &[u8]) {
        if self.header {
            out.extend_from_slice(&digest(header));
        }
    }

    /// Appends `data` and its digest, if one is negotiated.
    #[inline]
    pub(super) fn put_data(self, out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(data);
        if self.data_len(data.len()) > 0 {
            out.extend_from_slice(&digest(data));
        }
    }
}
