//! What can be wrong with the bytes of a PDU, and which header field says so.

use std::fmt;

/// A PDU that cannot be read as its common header describes it. Each kind names the byte
/// offset of the field at fault ([`PduError::field`]), which a termination request reports as
/// its FEI; what the error costs the connection is the caller's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PduError {
    /// Fewer bytes than the common header or PLEN needs.
    Truncated,
    UnknownType(u8),
    /// A known type, but not the one the caller reads.
    UnexpectedType(u8),
    HeaderLength {
        pdu_type: u8,
        hlen: u8,
    },
    ShorterThanHeader,
    /// ICReq and ICResp are exactly 128 bytes.
    IcLength,
    HeaderDigestFlag,
    NoRoomForHeaderDigest,
    HeaderDigest,
    DataOffset,
    DataDigestFlag,
    NoRoomForDataDigest,
    /// DATAL (or R2TL's absence of data) does not match the bytes the PDU carries.
    DataLength,
    /// A PDU type that carries no data, with data.
    UnexpectedData,
    DataDigest,
}

impl PduError {
    /// Byte offset in the PDU of the field at fault (the FEI of a termination request).
    pub fn field(self) -> u32 {
        match self {
            Self::UnknownType(_) | Self::UnexpectedType(_) => 0,
            Self::HeaderDigestFlag | Self::DataDigestFlag => 1,
            Self::HeaderLength { .. } => 2,
            Self::DataOffset => 3,
            Self::Truncated
            | Self::ShorterThanHeader
            | Self::IcLength
            | Self::NoRoomForHeaderDigest
            | Self::NoRoomForDataDigest
            | Self::UnexpectedData => 4,
            Self::DataLength => 16,
            Self::HeaderDigest | Self::DataDigest => 0,
        }
    }

    /// The problem in a few words, for logs and termination reasons.
    pub fn why(self) -> &'static str {
        match self {
            Self::Truncated => "PDU shorter than its header says",
            Self::UnknownType(_) => "unknown PDU type",
            Self::UnexpectedType(_) => "unexpected PDU type",
            Self::HeaderLength { .. } => "wrong header length for the PDU type",
            Self::ShorterThanHeader => "PDU length shorter than its header",
            Self::IcLength => "ICReq or ICResp length is not 128",
            Self::HeaderDigestFlag => "header digest flag differs from the negotiation",
            Self::NoRoomForHeaderDigest => "PDU shorter than header and digest",
            Self::HeaderDigest => "header digest mismatch",
            Self::DataOffset => "PDO outside the PDU",
            Self::DataDigestFlag => "data digest flag differs from the negotiation",
            Self::NoRoomForDataDigest => "PDU too short for its data digest",
            Self::DataLength => "DATAL does not match the PDU",
            Self::UnexpectedData => "data in a PDU type that carries none",
            Self::DataDigest => "data digest mismatch",
        }
    }
}

impl fmt::Display for PduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownType(kind) | Self::UnexpectedType(kind) => {
                write!(f, "{} {kind:#04x}", self.why())
            }
            Self::HeaderLength { pdu_type, hlen } => {
                write!(f, "{} (type {pdu_type:#04x}, hlen {hlen})", self.why())
            }
            _ => f.write_str(self.why()),
        }
    }
}

impl std::error::Error for PduError {}
