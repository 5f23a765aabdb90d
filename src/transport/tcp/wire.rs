//! NVMe/TCP wire constants, re-exported from [`super::pdu`], where every PDU is built and
//! read. Kept so that users of the constants need not know the module's layout.

pub use super::pdu::{
    CAPSULE_CMD_HLEN, CAPSULE_RESP_HLEN, CH_LEN, DATA_HLEN, DIGEST_LEN, IC_LEN, R2T_HLEN,
    TERM_REQ_HLEN, TERM_REQ_MAX_ECHO, digest, fes, flags, pdu_type,
};
