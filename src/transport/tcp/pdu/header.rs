//! The common header (NVMe/TCP 1.0, 3.6.1, Figure 8) and a checked view over one whole PDU.

use std::ops::Range;

use super::digest::{self, Digests};
use super::{CH_LEN, DIGEST_LEN, IC_LEN, PduError, flags, header_len, pdu_type, takes_digests};

/// Byte positions of the common header.
mod field {
    use std::ops::Range;

    pub const PDU_TYPE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const HLEN: usize = 2;
    pub const PDO: usize = 3;
    pub const PLEN: Range<usize> = 4..8;
}

/// The eight bytes every PDU starts with, as they are: [`CommonHeader::check`] says whether
/// they describe a PDU of a known type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    pub hlen: u8,
    pub pdo: u8,
    pub plen: u32,
}

impl CommonHeader {
    /// A header for emission; lengths that do not fit their field saturate (the receiver then
    /// refuses the PDU instead of misreading it).
    #[inline]
    pub fn new(pdu_type: u8, pdu_flags: u8, hlen: usize, pdo: usize, plen: usize) -> Self {
        Self {
            pdu_type,
            flags: pdu_flags,
            hlen: u8::try_from(hlen).unwrap_or(u8::MAX),
            pdo: u8::try_from(pdo).unwrap_or(0),
            plen: u32::try_from(plen).unwrap_or(u32::MAX),
        }
    }

    /// The common header at the start of `buf`: `None` while fewer than eight bytes are here.
    #[inline]
    pub fn peek(buf: &[u8]) -> Option<Self> {
        let ch: &[u8; CH_LEN] = buf.get(..CH_LEN)?.try_into().ok()?;
        Some(Self {
            pdu_type: ch[field::PDU_TYPE],
            flags: ch[field::FLAGS],
            hlen: ch[field::HLEN],
            pdo: ch[field::PDO],
            plen: le_u32(ch, field::PLEN.start),
        })
    }

    /// Checks the header length for the type and that PLEN covers the header.
    #[inline]
    pub fn check(&self) -> Result<(), PduError> {
        let Some(expected) = header_len(self.pdu_type) else {
            return Err(PduError::UnknownType(self.pdu_type));
        };
        if self.hlen() != expected {
            return Err(PduError::HeaderLength {
                pdu_type: self.pdu_type,
                hlen: self.hlen,
            });
        }
        if self.plen() < self.hlen() {
            return Err(PduError::ShorterThanHeader);
        }
        Ok(())
    }

    #[inline]
    pub fn hlen(&self) -> usize {
        usize::from(self.hlen)
    }

    #[inline]
    pub fn pdo(&self) -> usize {
        usize::from(self.pdo)
    }

    #[inline]
    pub fn plen(&self) -> usize {
        usize::try_from(self.plen).unwrap_or(usize::MAX)
    }

    /// Writes the header over the first eight bytes of `header` (a whole PDU header).
    #[inline]
    pub fn put(&self, header: &mut [u8]) {
        if let Some(ch) = header.get_mut(..CH_LEN) {
            ch[field::PDU_TYPE] = self.pdu_type;
            ch[field::FLAGS] = self.flags;
            ch[field::HLEN] = self.hlen;
            ch[field::PDO] = self.pdo;
            ch[field::PLEN].copy_from_slice(&self.plen.to_le_bytes());
        }
    }
}

/// How one end frames the capsule and data PDUs it sends: the negotiated digests, and the
/// data alignment the receiver asked for (HPDA for the target's PDUs, CPDA for the host's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framing {
    pub digests: Digests,
    /// Data starts at a multiple of `(pda + 1) * 4` bytes from the start of the PDU.
    pub pda: u8,
}

impl Framing {
    /// PDO of a PDU whose header (and header digest) ends at `header_end`.
    #[inline]
    pub fn data_offset(&self, header_end: usize) -> usize {
        let align = (usize::from(self.pda) + 1) * 4;
        header_end.div_ceil(align) * align
    }
}

/// One whole PDU whose lengths have all been checked: the header, its digest, PDO, the data
/// and its digest lie inside PLEN, and PLEN inside the buffer. Reading a field cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct PduView<'a> {
    bytes: &'a [u8],
    ch: CommonHeader,
    data: (usize, usize),
    data_digest: bool,
}

impl<'a> PduView<'a> {
    /// Checks the PDU at the start of `buf` (which may hold more after it) against its own
    /// header and the digests the connection negotiated; a header digest is verified here.
    /// The order of the checks is the order a receiver reports them in.
    #[inline]
    pub fn new_checked(buf: &'a [u8], digests: Digests) -> Result<Self, PduError> {
        let ch = CommonHeader::peek(buf).ok_or(PduError::Truncated)?;
        ch.check()?;
        Self::after_header(ch, buf, digests)
    }

    /// [`PduView::new_checked`] for a receiver that has already peeked at and checked `ch`,
    /// the common header at the start of `buf` (so that it refuses an oversized PLEN before
    /// the PDU is all there), without reading and checking it again.
    // Every PDU a receiver takes goes through here: worth inlining into each one.
    #[inline(always)]
    pub fn after_header(
        ch: CommonHeader,
        buf: &'a [u8],
        digests: Digests,
    ) -> Result<Self, PduError> {
        let bytes = buf.get(..ch.plen()).ok_or(PduError::Truncated)?;
        let (hlen, plen) = (ch.hlen(), ch.plen());
        if !takes_digests(ch.pdu_type) {
            let is_ic = matches!(ch.pdu_type, pdu_type::IC_REQ | pdu_type::IC_RESP);
            if is_ic && plen != IC_LEN {
                return Err(PduError::IcLength);
            }
            return Ok(Self {
                bytes,
                ch,
                data: (hlen, plen),
                data_digest: false,
            });
        }
        let has_hdgst = ch.flags & flags::HDGSTF != 0;
        if has_hdgst != digests.header {
            return Err(PduError::HeaderDigestFlag);
        }
        let header_end = hlen + if has_hdgst { DIGEST_LEN } else { 0 };
        let (Some(header), Some(sent)) = (bytes.get(..hlen), bytes.get(hlen..header_end)) else {
            return Err(PduError::NoRoomForHeaderDigest);
        };
        if has_hdgst && !digest::matches(header, sent) {
            return Err(PduError::HeaderDigest);
        }
        if plen == header_end {
            return Ok(Self {
                bytes,
                ch,
                data: (plen, plen),
                data_digest: false,
            });
        }
        // There is data: it starts at PDO, after the header digest (and any padding).
        let pdo = ch.pdo();
        if pdo < header_end || pdo > plen {
            return Err(PduError::DataOffset);
        }
        let has_ddgst = ch.flags & flags::DDGSTF != 0;
        if has_ddgst != digests.data {
            return Err(PduError::DataDigestFlag);
        }
        let data_end = plen - if has_ddgst { DIGEST_LEN } else { 0 };
        if data_end < pdo {
            return Err(PduError::NoRoomForDataDigest);
        }
        Ok(Self {
            bytes,
            ch,
            data: (pdo, data_end),
            data_digest: has_ddgst,
        })
    }

    pub fn common_header(&self) -> CommonHeader {
        self.ch
    }

    #[inline]
    pub fn pdu_type(&self) -> u8 {
        self.ch.pdu_type
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.ch.flags
    }

    /// The whole PDU, PLEN bytes.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// PLEN: how many bytes of the buffer this PDU takes.
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The header, HLEN bytes (the common header included).
    #[inline]
    pub fn header(&self) -> &'a [u8] {
        self.bytes.get(..self.ch.hlen()).unwrap_or_default()
    }

    /// The data between PDO and the data digest (a termination request's echoed header).
    #[inline(always)]
    pub fn data(&self) -> &'a [u8] {
        self.bytes.get(self.data.0..self.data.1).unwrap_or_default()
    }

    /// Whether the data digest, if the PDU carries one, matches the data.
    #[inline(always)]
    pub fn data_digest_ok(&self) -> bool {
        !self.data_digest || digest::matches(self.data(), self.data_digest_bytes())
    }

    /// The data digest as an error, for a receiver to which a bad one is fatal.
    pub fn check_data_digest(&self) -> Result<(), PduError> {
        if self.data_digest_ok() {
            Ok(())
        } else {
            Err(PduError::DataDigest)
        }
    }

    /// Refuses a view of another type than `kind`.
    #[inline]
    pub(super) fn expect(&self, kind: u8) -> Result<(), PduError> {
        if self.ch.pdu_type == kind {
            Ok(())
        } else {
            Err(PduError::UnexpectedType(self.ch.pdu_type))
        }
    }

    /// Refuses data in a PDU type that carries none.
    #[inline]
    pub(super) fn expect_no_data(&self) -> Result<(), PduError> {
        if self.data().is_empty() {
            Ok(())
        } else {
            Err(PduError::UnexpectedData)
        }
    }

    /// The header field at `at` (one of the type's field offsets, all inside HLEN).
    #[inline]
    pub(super) fn u16_at(&self, at: usize) -> u16 {
        le_u16(self.bytes, at)
    }

    #[inline]
    pub(super) fn u32_at(&self, at: usize) -> u32 {
        le_u32(self.bytes, at)
    }

    #[inline]
    pub(super) fn u8_at(&self, at: usize) -> u8 {
        self.bytes.get(at).copied().unwrap_or(0)
    }

    /// The header bytes in `range` (inside HLEN).
    #[inline]
    pub(super) fn header_bytes(&self, range: Range<usize>) -> &'a [u8] {
        self.bytes.get(range).unwrap_or_default()
    }

    #[inline(always)]
    fn data_digest_bytes(&self) -> &'a [u8] {
        self.bytes.get(self.data.1..).unwrap_or_default()
    }
}

/// A little-endian field of a buffer whose length the caller checked; 0 past its end.
#[inline]
fn le_u16(bytes: &[u8], at: usize) -> u16 {
    bytes
        .get(at..at + 2)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

#[inline]
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}
