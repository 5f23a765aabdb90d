//! Feature identifiers and field layouts for Get/Set Features (NVMe Base 2.0, 5.27.1).

/// Feature identifiers (NVMe Base 2.0, Figure 317).
pub mod fid {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const WRITE_ATOMICITY: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// Get Features SEL values (dword 10 bits 10:8).
pub mod sel {
    pub const CURRENT: u8 = 0;
    pub const DEFAULT: u8 = 1;
    pub const SAVED: u8 = 2;
    pub const SUPPORTED_CAPABILITIES: u8 = 3;
}

/// Capabilities reported for SEL = 3 (NVMe Base 2.0, Figure 193).
pub mod capability {
    pub const SAVEABLE: u32 = 1 << 0;
    pub const NAMESPACE_SPECIFIC: u32 = 1 << 1;
    pub const CHANGEABLE: u32 = 1 << 2;
}

/// Asynchronous Event Configuration bits (NVMe Base 2.0, Figure 328).
pub mod aec {
    pub const SMART_MASK: u32 = 0xFF;
    pub const NS_ATTRIBUTE: u32 = 1 << 8;
    pub const FIRMWARE_ACTIVATION: u32 = 1 << 9;
    pub const DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
}

/// Set Features dword 10: FID in bits 7:0, Save in bit 31.
pub fn set_features_fields(cdw10: u32) -> (u8, bool) {
    (cdw10.to_le_bytes()[0], cdw10 & (1 << 31) != 0)
}

/// Get Features dword 10: FID in bits 7:0, SEL in bits 10:8.
pub fn get_features_fields(cdw10: u32) -> (u8, u8) {
    let [fid, hi, _, _] = cdw10.to_le_bytes();
    (fid, hi & 0x7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dword10_fields() {
        assert_eq!(
            set_features_fields(0x8000_0007),
            (fid::NUMBER_OF_QUEUES, true)
        );
        assert_eq!(
            get_features_fields(0x0000_0381),
            (fid::HOST_IDENTIFIER, sel::SUPPORTED_CAPABILITIES)
        );
    }
}
