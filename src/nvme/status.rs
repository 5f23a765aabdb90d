//! Completion status (NVMe Base 2.0, 4.6.1.2): status code type, status code, do-not-retry.
//!
//! Every internal error becomes one of these in one place per layer; the constants follow the
//! order of the spec tables.

/// A completion status without the phase bit.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Status {
    /// Status code type (3 bits).
    pub sct: u8,
    /// Status code.
    pub sc: u8,
    /// Do Not Retry.
    pub dnr: bool,
    /// More: extra information in the error log page.
    pub more: bool,
}

impl core::fmt::Debug for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Status(sct={:#x}, sc={:#04x}", self.sct, self.sc)?;
        if self.dnr {
            f.write_str(", dnr")?;
        }
        f.write_str(")")
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "sct {:#x} sc {:#04x}", self.sct, self.sc)
    }
}

/// Status code types (NVMe Base 2.0, Figure 98).
pub mod sct {
    pub const GENERIC: u8 = 0x0;
    pub const COMMAND_SPECIFIC: u8 = 0x1;
    pub const MEDIA: u8 = 0x2;
    pub const PATH: u8 = 0x3;
}

const fn generic(sc: u8) -> Status {
    Status::new(sct::GENERIC, sc)
}

const fn specific(sc: u8) -> Status {
    Status::new(sct::COMMAND_SPECIFIC, sc)
}

const fn media(sc: u8) -> Status {
    Status::new(sct::MEDIA, sc)
}

impl Status {
    pub const fn new(sct: u8, sc: u8) -> Self {
        Self {
            sct,
            sc,
            dnr: false,
            more: false,
        }
    }

    /// The same status with Do Not Retry set.
    #[must_use]
    pub const fn with_dnr(self) -> Self {
        Self { dnr: true, ..self }
    }

    pub const fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    /// Decodes the 15 bits above the phase bit.
    pub fn from_raw(raw: u16) -> Self {
        Self {
            sc: (raw & 0xFF) as u8,
            sct: ((raw >> 8) & 0x7) as u8,
            more: raw & (1 << 13) != 0,
            dnr: raw & (1 << 14) != 0,
        }
    }

    /// Encodes as the 15 bits above the phase bit.
    pub fn to_raw(self) -> u16 {
        u16::from(self.sc)
            | (u16::from(self.sct & 0x7) << 8)
            | (u16::from(self.more) << 13)
            | (u16::from(self.dnr) << 14)
    }

    // Generic command status (Figure 99).
    pub const SUCCESS: Self = generic(0x00);
    pub const INVALID_OPCODE: Self = generic(0x01);
    pub const INVALID_FIELD: Self = generic(0x02);
    pub const COMMAND_ID_CONFLICT: Self = generic(0x03);
    pub const DATA_TRANSFER_ERROR: Self = generic(0x04);
    pub const ABORTED_POWER_LOSS: Self = generic(0x05);
    pub const INTERNAL_ERROR: Self = generic(0x06);
    pub const ABORTED_BY_REQUEST: Self = generic(0x07);
    pub const ABORTED_SQ_DELETION: Self = generic(0x08);
    pub const ABORTED_FAILED_FUSED: Self = generic(0x09);
    pub const ABORTED_MISSING_FUSED: Self = generic(0x0A);
    pub const INVALID_NAMESPACE: Self = generic(0x0B);
    pub const COMMAND_SEQUENCE_ERROR: Self = generic(0x0C);
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: Self = generic(0x0D);
    pub const INVALID_NUMBER_OF_SGL_DESCRIPTORS: Self = generic(0x0E);
    pub const DATA_SGL_LENGTH_INVALID: Self = generic(0x0F);
    pub const METADATA_SGL_LENGTH_INVALID: Self = generic(0x10);
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Self = generic(0x11);
    pub const INVALID_PRP_OFFSET: Self = generic(0x13);
    pub const INVALID_SGL_OFFSET: Self = generic(0x16);
    pub const HOST_ID_INCONSISTENT_FORMAT: Self = generic(0x18);
    pub const KEEP_ALIVE_EXPIRED: Self = generic(0x19);
    pub const KEEP_ALIVE_INVALID: Self = generic(0x1A);
    pub const COMMAND_ABORTED_PREEMPT: Self = generic(0x1B);
    pub const NAMESPACE_WRITE_PROTECTED: Self = generic(0x20);
    pub const TRANSIENT_TRANSPORT_ERROR: Self = generic(0x22);
    pub const LBA_OUT_OF_RANGE: Self = generic(0x80);
    pub const CAPACITY_EXCEEDED: Self = generic(0x81);
    pub const NAMESPACE_NOT_READY: Self = generic(0x82);

    // Command specific status (Figure 100, and NVMe-oF 1.1 Figure 32 for fabrics).
    pub const COMPLETION_QUEUE_INVALID: Self = specific(0x00);
    pub const INVALID_QUEUE_IDENTIFIER: Self = specific(0x01);
    pub const INVALID_QUEUE_SIZE: Self = specific(0x02);
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: Self = specific(0x03);
    pub const ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED: Self = specific(0x05);
    pub const INVALID_FIRMWARE_SLOT: Self = specific(0x06);
    pub const INVALID_INTERRUPT_VECTOR: Self = specific(0x08);
    pub const INVALID_LOG_PAGE: Self = specific(0x09);
    pub const INVALID_QUEUE_DELETION: Self = specific(0x0C);
    pub const FEATURE_ID_NOT_SAVEABLE: Self = specific(0x0D);
    pub const FEATURE_NOT_CHANGEABLE: Self = specific(0x0E);
    pub const FEATURE_NOT_NAMESPACE_SPECIFIC: Self = specific(0x0F);
    pub const CONFLICTING_ATTRIBUTES: Self = specific(0x80);
    pub const ATTEMPTED_WRITE_TO_READ_ONLY_RANGE: Self = specific(0x82);
    pub const CONNECT_INCOMPATIBLE_FORMAT: Self = specific(0x80);
    pub const CONNECT_CONTROLLER_BUSY: Self = specific(0x81);
    pub const CONNECT_INVALID_PARAMETERS: Self = specific(0x82);
    pub const CONNECT_RESTART_DISCOVERY: Self = specific(0x83);
    pub const CONNECT_INVALID_HOST: Self = specific(0x84);
    pub const INVALID_QUEUE_TYPE: Self = specific(0x85);

    // Media and data integrity errors (Figure 101).
    pub const WRITE_FAULT: Self = media(0x80);
    pub const UNRECOVERED_READ_ERROR: Self = media(0x81);
    pub const COMPARE_FAILURE: Self = media(0x85);
    pub const ACCESS_DENIED: Self = media(0x86);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trip() {
        for status in [
            Status::SUCCESS,
            Status::LBA_OUT_OF_RANGE.with_dnr(),
            Status::CONNECT_INVALID_HOST,
            Status::COMPARE_FAILURE,
        ] {
            assert_eq!(Status::from_raw(status.to_raw()), status);
        }
        assert_eq!(Status::CONNECT_INVALID_HOST.to_raw(), 0x184);
    }
}
