//! NVMe/TCP wire constants, re-exported from [`super::pdu`], where every PDU is built and
//! read. Kept so that users of the constants need not know the module's layout.

pub use super::pdu::{
    CAPSULE_CMD_HLEN, CAPSULE_RESP_HLEN, CH_LEN, DATA_HLEN, DIGEST_LEN, IC_LEN, R2T_HLEN,
    TERM_REQ_HLEN, TERM_REQ_MAX_ECHO, digest, fes, flags, pdu_type,
};

/// A little-endian field, for tests that check bytes independently of the PDU module.
#[cfg(test)]
pub fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// A little-endian field, for tests that check bytes independently of the PDU module.
#[cfg(test)]
pub fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
