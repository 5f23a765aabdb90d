//! The PCI function of the emulated NVMe controller: its configuration space, its BARs and the
//! regions a vfio-user client asks about, and BAR0 offsets decoded into register and doorbell
//! accesses.
//!
//! The config space is a [`PciConfig`]: 4 KiB of bytes with, per byte, the bits software may
//! write and the bits it clears by writing 1, so that a read-only field, a write-1-to-clear
//! status bit and BAR sizing all fall out of one write rule. [`PciDevice`] lays out the NVMe
//! controller on it: a type-0 header (class 01:08:02), BAR0+BAR1 a 64-bit 16 KiB register and
//! doorbell BAR, BAR4 the MSI-X table, BAR5 the PBA, and the PM, MSI-X and PCI Express
//! capabilities. It knows no socket and no NVMe command; what a config write changes that the
//! rest of the device must follow (the command register, MSI-X message control) is handed back
//! as [`ConfigChange`]s.

use std::ops::Range;

use crate::nvme::properties::PropertySize;

use super::msix;

/// Region indexes and flags of a vfio PCI device (linux/vfio.h `VFIO_PCI_*_REGION_INDEX`,
/// `VFIO_REGION_INFO_FLAG_*`).
pub mod region {
    pub const BAR0: u32 = 0;
    pub const BAR1: u32 = 1;
    pub const BAR2: u32 = 2;
    pub const BAR3: u32 = 3;
    pub const BAR4: u32 = 4;
    pub const BAR5: u32 = 5;
    pub const ROM: u32 = 6;
    pub const CONFIG: u32 = 7;
    pub const VGA: u32 = 8;
    /// How many regions the device reports (DEVICE_GET_INFO `num_regions`).
    pub const COUNT: u32 = 9;

    pub const FLAG_READ: u32 = 1 << 0;
    pub const FLAG_WRITE: u32 = 1 << 1;
    pub const FLAG_MMAP: u32 = 1 << 2;
}

/// Offsets in the configuration space: the type-0 header (PCI Local Bus 3.0, 6.1) and where
/// this device puts its capabilities.
pub mod offset {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION_ID: usize = 0x08;
    /// Programming interface; the sub-class follows at 0x0A and the base class at 0x0B.
    pub const CLASS_CODE: usize = 0x09;
    pub const CACHE_LINE_SIZE: usize = 0x0C;
    pub const LATENCY_TIMER: usize = 0x0D;
    pub const HEADER_TYPE: usize = 0x0E;
    pub const BIST: usize = 0x0F;
    /// BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2C;
    pub const SUBSYSTEM_ID: usize = 0x2E;
    pub const EXPANSION_ROM: usize = 0x30;
    pub const CAPABILITIES: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3C;
    pub const INTERRUPT_PIN: usize = 0x3D;

    /// Power Management capability (PCI PM 1.2, 3.2), 8 bytes.
    pub const PM: usize = 0x40;
    /// Power Management Control/Status, in the PM capability.
    pub const PMCSR: usize = PM + 4;
    /// MSI-X capability (PCI Local Bus 3.0, 6.8.2), 12 bytes.
    pub const MSIX: usize = 0x50;
    /// MSI-X Message Control, in the MSI-X capability.
    pub const MSIX_CONTROL: usize = MSIX + 2;
    /// PCI Express capability (PCIe Base 3.0, 7.8), version 2, 0x3C bytes.
    pub const PCIE: usize = 0x60;
    /// Device Control, in the PCI Express capability.
    pub const PCIE_DEVICE_CONTROL: usize = PCIE + 0x08;
    /// The extended configuration space (PCIe Base 3.0, 7.9): one empty header here.
    pub const EXTENDED: usize = 0x100;
}

/// Command register bits (PCI Local Bus 3.0, 6.2.2).
pub mod command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// What software may change: I/O space stays off (the device has no I/O BAR).
    pub const WRITABLE: u16 = MEMORY_SPACE | BUS_MASTER | INTX_DISABLE;
}

/// Status register bits (PCI Local Bus 3.0, 6.2.3).
pub mod status {
    pub const INTERRUPT: u16 = 1 << 3;
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
    pub const MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
    pub const SIGNALED_TARGET_ABORT: u16 = 1 << 11;
    pub const RECEIVED_TARGET_ABORT: u16 = 1 << 12;
    pub const RECEIVED_MASTER_ABORT: u16 = 1 << 13;
    pub const SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
    pub const DETECTED_PARITY_ERROR: u16 = 1 << 15;
    /// The error bits software clears by writing 1.
    pub const WRITE_ONE_CLEARS: u16 = MASTER_DATA_PARITY_ERROR
        | SIGNALED_TARGET_ABORT
        | RECEIVED_TARGET_ABORT
        | RECEIVED_MASTER_ABORT
        | SIGNALED_SYSTEM_ERROR
        | DETECTED_PARITY_ERROR;
}

/// Capability IDs (PCI Code and ID Assignment 1.11, 2).
pub mod cap_id {
    pub const PM: u8 = 0x01;
    pub const PCIE: u8 = 0x10;
    pub const MSIX: u8 = 0x11;
}

/// MSI-X Message Control bits (PCI Local Bus 3.0, 6.8.2.3).
pub mod msix_control {
    /// Table size minus one, read-only.
    pub const TABLE_SIZE: u16 = 0x07FF;
    pub const FUNCTION_MASK: u16 = 1 << 14;
    pub const ENABLE: u16 = 1 << 15;
}

/// PCI vendor ID of the emulated controller, "NV" (our own choice: Linux's `nvme` driver binds
/// by class code, not by ID).
pub const VENDOR_ID: u16 = 0x4E56;
/// PCI device ID of the emulated controller.
pub const DEVICE_ID: u16 = 0x0001;
/// Class code: mass storage (01), non-volatile memory (08), NVM Express (02).
pub const CLASS_CODE: u32 = 0x01_08_02;
/// Size of the configuration space (PCI Express: 4 KiB with the extended space).
pub const CONFIG_SIZE: usize = 0x1000;
/// BAR0: NVMe registers below [`DOORBELL_BASE`], doorbells from there on.
pub const BAR0_SIZE: u64 = 0x4000;
/// Where the doorbells start in BAR0 (NVMe Base 2.0, 3.1.4.22; CAP.DSTRD 0: 4-byte stride).
pub const DOORBELL_BASE: u64 = 0x1000;
/// The doorbell page a client may map when doorbells are mappable.
pub const DOORBELL_PAGE: (u64, u64) = (DOORBELL_BASE, 0x1000);

/// Memory BAR type bits (PCI Local Bus 3.0, 6.2.5.1): 64-bit, in bits 2:1.
const BAR_MEMORY_64: u32 = 0b100;

/// Power states in PMCSR bits 1:0 (PCI PM 1.2, 3.2.4): only D0 and D3hot are supported.
const PM_STATE_MASK: u16 = 0b11;
const PM_STATE_D3HOT: u16 = 0b11;
/// PMCSR No_Soft_Reset: D3hot to D0 keeps the function's state (PCI PM 1.2, 3.2.4).
const PM_NO_SOFT_RESET: u16 = 1 << 3;

/// What went wrong in a config space access.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("config access of {len} bytes at {offset:#x} is outside the config space")]
    ConfigOutOfRange { offset: u64, len: usize },
}

impl DeviceError {
    /// The errno that answers the client.
    pub fn errno(&self) -> i32 {
        match self {
            Self::ConfigOutOfRange { .. } => libc::EINVAL,
        }
    }
}

/// What the device answers about one region (DEVICE_GET_REGION_INFO), before the lead turns it
/// into the server's `RegionInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionDesc {
    /// [`region::FLAG_READ`] | [`region::FLAG_WRITE`] | [`region::FLAG_MMAP`].
    pub flags: u32,
    pub size: u64,
    /// (offset, size) areas of the region the client may map; empty unless `flags` has MMAP.
    pub sparse_mmap: Vec<(u64, u64)>,
}

/// The command register bits the rest of the device follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    pub memory: bool,
    pub bus_master: bool,
    pub intx_disabled: bool,
}

/// MSI-X Message Control as the interrupts follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixControl {
    pub enabled: bool,
    /// The function mask: every vector is masked while it is set.
    pub masked: bool,
}

/// A config write that touched a register the rest of the device follows, with that register's
/// value after the write (reported whenever the write covers it, changed or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange {
    Command(Command),
    MsixControl(MsixControl),
}

/// How the device is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciParams {
    /// MSI-X vectors, 1 to [`msix::MAX_VECTORS`] (clamped).
    pub msix_vectors: u16,
    /// Whether the client may map BAR0's doorbell page (then doorbell writes are plain memory
    /// stores the target polls) or must send every doorbell write as a message.
    pub mappable_doorbells: bool,
}

/// A 4 KiB configuration space as a register file: the bytes, and per byte the bits software
/// may write and the bits it clears by writing 1. Everything else is read-only.
#[derive(Clone)]
pub struct PciConfig {
    bytes: Box<[u8; CONFIG_SIZE]>,
    writable: Box<[u8; CONFIG_SIZE]>,
    write_one_clears: Box<[u8; CONFIG_SIZE]>,
}

impl Default for PciConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for PciConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfig")
            .field("vendor_id", &self.u16(offset::VENDOR_ID))
            .field("device_id", &self.u16(offset::DEVICE_ID))
            .field("command", &self.u16(offset::COMMAND))
            .field("status", &self.u16(offset::STATUS))
            .finish_non_exhaustive()
    }
}

impl PciConfig {
    /// All zero and read-only.
    pub fn new() -> Self {
        Self {
            bytes: Box::new([0; CONFIG_SIZE]),
            writable: Box::new([0; CONFIG_SIZE]),
            write_one_clears: Box::new([0; CONFIG_SIZE]),
        }
    }

    /// Defines a 1-byte register: reset value, bits software may write, bits it clears by
    /// writing 1. Offsets are the layout's constants; one past the space is ignored.
    pub fn define_u8(&mut self, offset: usize, value: u8, writable: u8, clears: u8) {
        self.define(offset, &[value], &[writable], &[clears]);
    }

    /// Defines a 2-byte little-endian register, as [`define_u8`](Self::define_u8).
    pub fn define_u16(&mut self, offset: usize, value: u16, writable: u16, clears: u16) {
        self.define(
            offset,
            &value.to_le_bytes(),
            &writable.to_le_bytes(),
            &clears.to_le_bytes(),
        );
    }

    /// Defines a 4-byte little-endian register, as [`define_u8`](Self::define_u8).
    pub fn define_u32(&mut self, offset: usize, value: u32, writable: u32, clears: u32) {
        self.define(
            offset,
            &value.to_le_bytes(),
            &writable.to_le_bytes(),
            &clears.to_le_bytes(),
        );
    }

    fn define(&mut self, offset: usize, value: &[u8], writable: &[u8], clears: &[u8]) {
        let end = offset.saturating_add(value.len()).min(CONFIG_SIZE);
        for (i, at) in (offset..end).enumerate() {
            self.bytes[at] = value[i];
            self.writable[at] = writable[i];
            self.write_one_clears[at] = clears[i];
        }
    }

    /// Reads `data.len()` bytes at `offset`, any alignment.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let range = Self::range(offset, data.len())?;
        data.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    /// Writes `data` at `offset`, any alignment: per byte, writable bits take the new value,
    /// write-1-to-clear bits written as 1 clear, the rest stay.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let range = Self::range(offset, data.len())?;
        for (at, &new) in range.zip(data) {
            let mask = self.writable[at];
            let mut byte = (self.bytes[at] & !mask) | (new & mask);
            byte &= !(new & self.write_one_clears[at]);
            self.bytes[at] = byte;
        }
        Ok(())
    }

    /// The byte at `offset` (0 outside the space).
    pub fn u8(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0)
    }

    /// The little-endian u16 at `offset` (0 outside the space).
    pub fn u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.u8(offset), self.u8(offset.saturating_add(1))])
    }

    /// The little-endian u32 at `offset` (0 outside the space).
    pub fn u32(&self, offset: usize) -> u32 {
        u32::from(self.u16(offset)) | u32::from(self.u16(offset.saturating_add(2))) << 16
    }

    /// Sets a u16 from the device side, past the write masks (status bits the device raises).
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        let end = offset.saturating_add(2).min(CONFIG_SIZE);
        for (i, at) in (offset..end).enumerate() {
            self.bytes[at] = value.to_le_bytes()[i];
        }
    }

    /// The byte range of an access, if it lies inside the space.
    fn range(offset: u64, len: usize) -> Result<Range<usize>, DeviceError> {
        let out = DeviceError::ConfigOutOfRange { offset, len };
        let start = usize::try_from(offset).map_err(|_| out.clone())?;
        match start.checked_add(len) {
            Some(end) if end <= CONFIG_SIZE => Ok(start..end),
            _ => Err(out),
        }
    }
}

/// The PCI side of the emulated NVMe controller: its config space and its regions.
#[derive(Debug, Clone)]
pub struct PciDevice {
    config: PciConfig,
    /// The config bytes after power-on, restored by [`reset`](Self::reset).
    reset_image: Box<[u8; CONFIG_SIZE]>,
    params: PciParams,
}

impl PciDevice {
    /// The device with its config space at its reset values.
    pub fn new(params: PciParams) -> Self {
        let params = PciParams {
            msix_vectors: params.msix_vectors.clamp(1, msix::MAX_VECTORS),
            ..params
        };
        let config = layout(&params);
        let reset_image = config.bytes.clone();
        Self {
            config,
            reset_image,
            params,
        }
    }

    pub fn params(&self) -> PciParams {
        self.params
    }

    /// The register file itself, to read fields by offset.
    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    /// Region `index` as the client sees it; `None` past the last region.
    pub fn region_desc(&self, index: u32) -> Option<RegionDesc> {
        let rw = region::FLAG_READ | region::FLAG_WRITE;
        let plain = |size: u64| RegionDesc {
            flags: rw,
            size,
            sparse_mmap: Vec::new(),
        };
        let absent = RegionDesc {
            flags: 0,
            size: 0,
            sparse_mmap: Vec::new(),
        };
        Some(match index {
            region::BAR0 if self.params.mappable_doorbells => RegionDesc {
                flags: rw | region::FLAG_MMAP,
                size: BAR0_SIZE,
                sparse_mmap: vec![DOORBELL_PAGE],
            },
            region::BAR0 => plain(BAR0_SIZE),
            region::BAR4 => plain(msix::table_bar_size(self.params.msix_vectors)),
            region::BAR5 => plain(msix::PBA_BAR_SIZE),
            region::CONFIG => plain(CONFIG_SIZE as u64),
            // BAR1 is BAR0's upper half; BAR2, BAR3, the ROM and VGA do not exist.
            region::BAR1 | region::BAR2 | region::BAR3 | region::ROM | region::VGA => absent,
            _ => return None,
        })
    }

    /// A read of the config region.
    pub fn config_read(&self, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.config.read(offset, data)
    }

    /// A write of the config region, with the registers it touched that the rest of the device
    /// follows.
    pub fn config_write(
        &mut self,
        offset: u64,
        data: &[u8],
    ) -> Result<Vec<ConfigChange>, DeviceError> {
        let range = PciConfig::range(offset, data.len())?;
        let old_pmcsr = self.config.u16(offset::PMCSR);
        self.config.write(offset, data)?;

        let touches = |at: usize, len: usize| range.start < at + len && at < range.end;
        if touches(offset::PMCSR, 1) {
            // D1 and D2 are not supported: a write of one leaves the power state as it was
            // (PCI PM 1.2, 3.2.4).
            let pmcsr = self.config.u16(offset::PMCSR);
            let state = pmcsr & PM_STATE_MASK;
            if state != 0 && state != PM_STATE_D3HOT {
                let kept = (pmcsr & !PM_STATE_MASK) | (old_pmcsr & PM_STATE_MASK);
                self.config.set_u16(offset::PMCSR, kept);
            }
        }
        let mut changes = Vec::new();
        if touches(offset::COMMAND, 2) {
            changes.push(ConfigChange::Command(self.command()));
        }
        if touches(offset::MSIX_CONTROL, 2) {
            changes.push(ConfigChange::MsixControl(self.msix_control()));
        }
        Ok(changes)
    }

    /// The command register as the device follows it.
    pub fn command(&self) -> Command {
        let cmd = self.config.u16(offset::COMMAND);
        Command {
            memory: cmd & command::MEMORY_SPACE != 0,
            bus_master: cmd & command::BUS_MASTER != 0,
            intx_disabled: cmd & command::INTX_DISABLE != 0,
        }
    }

    /// MSI-X Message Control as the interrupts follow it.
    pub fn msix_control(&self) -> MsixControl {
        let control = self.config.u16(offset::MSIX_CONTROL);
        MsixControl {
            enabled: control & msix_control::ENABLE != 0,
            masked: control & msix_control::FUNCTION_MASK != 0,
        }
    }

    /// Whether the function is in D3hot (it then answers no memory access of its BARs).
    pub fn in_d3hot(&self) -> bool {
        self.config.u16(offset::PMCSR) & PM_STATE_MASK == PM_STATE_D3HOT
    }

    /// Sets status error bits from the device side (e.g. [`status::RECEIVED_MASTER_ABORT`]
    /// when a DMA hits an unmapped address); software clears them by writing 1. Bits outside
    /// [`status::WRITE_ONE_CLEARS`] are ignored.
    pub fn raise_status(&mut self, bits: u16) {
        let value = self.config.u16(offset::STATUS) | (bits & status::WRITE_ONE_CLEARS);
        self.config.set_u16(offset::STATUS, value);
    }

    /// Back to the power-on config space (a client's DEVICE_RESET or disconnect).
    pub fn reset(&mut self) {
        self.config.bytes.copy_from_slice(&self.reset_image[..]);
    }
}

/// A BAR's read-only low bits as a write mask: software sizes the BAR by writing all ones and
/// reading back the address bits it could set (PCI Local Bus 3.0, 6.2.5.1).
fn bar_mask(size: u64) -> u32 {
    u32::try_from(!(size.saturating_sub(1)) & 0xFFFF_FFF0).unwrap_or(0)
}

/// The config space of the NVMe controller at its reset values.
fn layout(params: &PciParams) -> PciConfig {
    let mut c = PciConfig::new();
    let [_, class_base, class_sub, class_prog] = CLASS_CODE.to_be_bytes();

    // Type-0 header.
    c.define_u16(offset::VENDOR_ID, VENDOR_ID, 0, 0);
    c.define_u16(offset::DEVICE_ID, DEVICE_ID, 0, 0);
    c.define_u16(offset::COMMAND, 0, command::WRITABLE, 0);
    c.define_u16(
        offset::STATUS,
        status::CAPABILITIES_LIST,
        0,
        status::WRITE_ONE_CLEARS,
    );
    c.define_u8(offset::REVISION_ID, 0, 0, 0);
    c.define_u8(offset::CLASS_CODE, class_prog, 0, 0);
    c.define_u8(offset::CLASS_CODE + 1, class_sub, 0, 0);
    c.define_u8(offset::CLASS_CODE + 2, class_base, 0, 0);
    c.define_u8(offset::CACHE_LINE_SIZE, 0, 0xFF, 0);
    c.define_u8(offset::LATENCY_TIMER, 0, 0, 0);
    c.define_u8(offset::HEADER_TYPE, 0, 0, 0);
    c.define_u8(offset::BIST, 0, 0, 0);
    // BAR0+BAR1: 64-bit non-prefetchable memory; BAR4, BAR5: 32-bit memory; BAR2, BAR3 absent
    // (read-only zero).
    c.define_u32(offset::BAR0, BAR_MEMORY_64, bar_mask(BAR0_SIZE), 0);
    c.define_u32(offset::BAR0 + 4, 0, u32::MAX, 0);
    let table = msix::table_bar_size(params.msix_vectors);
    c.define_u32(offset::BAR0 + 16, 0, bar_mask(table), 0);
    c.define_u32(offset::BAR0 + 20, 0, bar_mask(msix::PBA_BAR_SIZE), 0);
    c.define_u16(offset::SUBSYSTEM_VENDOR_ID, VENDOR_ID, 0, 0);
    c.define_u16(offset::SUBSYSTEM_ID, DEVICE_ID, 0, 0);
    // No expansion ROM: the address register is read-only zero, so sizing reads back size 0.
    c.define_u32(offset::EXPANSION_ROM, 0, 0, 0);
    c.define_u8(offset::CAPABILITIES, cap_offset(offset::PM), 0, 0);
    c.define_u8(offset::INTERRUPT_LINE, 0, 0xFF, 0);
    c.define_u8(offset::INTERRUPT_PIN, 1, 0, 0);

    // Power Management, version 3 (PCI PM 1.2): no PME, no D1/D2, the power state writable.
    c.define_u8(offset::PM, cap_id::PM, 0, 0);
    c.define_u8(offset::PM + 1, cap_offset(offset::MSIX), 0, 0);
    c.define_u16(offset::PM + 2, 0x0003, 0, 0);
    c.define_u16(offset::PMCSR, PM_NO_SOFT_RESET, PM_STATE_MASK, 0);

    // MSI-X: the table at BAR4 offset 0, the PBA at BAR5 offset 0.
    c.define_u8(offset::MSIX, cap_id::MSIX, 0, 0);
    c.define_u8(offset::MSIX + 1, cap_offset(offset::PCIE), 0, 0);
    c.define_u16(
        offset::MSIX_CONTROL,
        params.msix_vectors.saturating_sub(1) & msix_control::TABLE_SIZE,
        msix_control::ENABLE | msix_control::FUNCTION_MASK,
        0,
    );
    c.define_u32(offset::MSIX + 4, region::BAR4, 0, 0);
    c.define_u32(offset::MSIX + 8, region::BAR5, 0, 0);

    pcie_capability(&mut c);
    // offset::EXTENDED stays zero: an extended capability header with ID 0 and no next.
    c
}

/// The PCI Express capability (PCIe Base 3.0, 7.8), version 2, of an endpoint on an 8 GT/s x4
/// link; the last in the chain.
fn pcie_capability(c: &mut PciConfig) {
    let at = offset::PCIE;
    c.define_u8(at, cap_id::PCIE, 0, 0);
    c.define_u8(at + 1, 0, 0, 0);
    // PCI Express Capabilities: version 2, device/port type 0 (PCI Express Endpoint).
    c.define_u16(at + 0x02, 0x0002, 0, 0);
    // Device Capabilities: max payload 128 bytes (0), role-based error reporting (bit 15).
    c.define_u32(at + 0x04, 1 << 15, 0, 0);
    // Device Control: error reporting enables (3:0), relaxed ordering (4), max payload (7:5),
    // no snoop (11), max read request (14:12) writable; reset: relaxed ordering, no snoop,
    // 512-byte read requests.
    c.define_u16(at + 0x08, 0x2810, 0x78FF, 0);
    // Device Status: the error detected bits (3:0) are write-1-to-clear.
    c.define_u16(at + 0x0A, 0, 0, 0x000F);
    // Link Capabilities: max speed 8 GT/s (3), max width x4, no ASPM, port 0.
    c.define_u32(at + 0x0C, 0x0000_0043, 0, 0);
    // Link Control: ASPM control (1:0), read completion boundary (3), common clock (6),
    // extended synch (7) writable.
    c.define_u16(at + 0x10, 0, 0x00CB, 0);
    // Link Status: 8 GT/s, x4, slot clock configuration (12).
    c.define_u16(at + 0x12, 0x1043, 0, 0);
    // Slot and root registers (0x14..0x24) and Device Capabilities/Control/Status 2 stay zero.
    // Link Capabilities 2: supported speeds 2.5, 5 and 8 GT/s (bits 3:1).
    c.define_u32(at + 0x2C, 0x0000_000E, 0, 0);
    // Link Control 2: target link speed 8 GT/s.
    c.define_u16(at + 0x30, 0x0003, 0, 0);
}

/// A capability offset as the one-byte pointer the chain holds.
fn cap_offset(at: usize) -> u8 {
    u8::try_from(at).unwrap_or(0)
}

/// What an access of BAR0 is, from its offset and length alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar0Access {
    /// A controller register below [`DOORBELL_BASE`]: 4 bytes 4-aligned or 8 bytes 8-aligned.
    Register { offset: u32, size: PropertySize },
    /// Submission queue `qid` tail doorbell, at `DOORBELL_BASE + 8 * qid`.
    SqTail { qid: u16 },
    /// Completion queue `qid` head doorbell, at `DOORBELL_BASE + 8 * qid + 4`.
    CqHead { qid: u16 },
    /// Anything else: unaligned, a wrong size, past BAR0, or a doorbell past `max_qid`.
    Invalid,
}

impl Bar0Access {
    /// Decodes an access of `len` bytes at `offset`; doorbells exist for queues 0 to `max_qid`.
    pub fn decode(offset: u64, len: usize, max_qid: u16) -> Self {
        let Ok(len64) = u64::try_from(len) else {
            return Self::Invalid;
        };
        if offset < DOORBELL_BASE {
            let size = match len {
                4 => PropertySize::Four,
                8 => PropertySize::Eight,
                _ => return Self::Invalid,
            };
            return match u32::try_from(offset) {
                Ok(offset) if u64::from(offset) % len64 == 0 => Self::Register { offset, size },
                _ => Self::Invalid,
            };
        }
        if len != 4 || offset % 4 != 0 || offset >= BAR0_SIZE {
            return Self::Invalid;
        }
        let dword = (offset - DOORBELL_BASE) / 4;
        match u16::try_from(dword / 2) {
            Ok(qid) if qid <= max_qid && dword % 2 == 0 => Self::SqTail { qid },
            Ok(qid) if qid <= max_qid => Self::CqHead { qid },
            _ => Self::Invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(vectors: u16, mappable_doorbells: bool) -> PciDevice {
        PciDevice::new(PciParams {
            msix_vectors: vectors,
            mappable_doorbells,
        })
    }

    fn read32(dev: &PciDevice, at: u64) -> u32 {
        let mut b = [0; 4];
        dev.config_read(at, &mut b).expect("read");
        u32::from_le_bytes(b)
    }

    fn read16(dev: &PciDevice, at: u64) -> u16 {
        let mut b = [0; 2];
        dev.config_read(at, &mut b).expect("read");
        u16::from_le_bytes(b)
    }

    fn write32(dev: &mut PciDevice, at: u64, value: u32) -> Vec<ConfigChange> {
        dev.config_write(at, &value.to_le_bytes()).expect("write")
    }

    fn write16(dev: &mut PciDevice, at: u64, value: u16) -> Vec<ConfigChange> {
        dev.config_write(at, &value.to_le_bytes()).expect("write")
    }

    /// The capabilities as a driver finds them: (offset, id) from the pointer at 0x34.
    fn cap_chain(dev: &PciDevice) -> Vec<(u8, u8)> {
        let mut caps = Vec::new();
        let mut b = [0; 1];
        dev.config_read(0x34, &mut b).expect("read");
        let mut at = b[0];
        while at != 0 && caps.len() < 48 {
            let mut hdr = [0; 2];
            dev.config_read(u64::from(at), &mut hdr).expect("read");
            caps.push((at, hdr[0]));
            at = hdr[1];
        }
        caps
    }

    #[test]
    fn reads_like_an_nvme_controller() {
        let dev = device(32, false);
        assert_eq!(read32(&dev, 0x00), 0x0001_4E56);
        // Revision 0, then class 01:08:02 in bytes 0x09..0x0B.
        assert_eq!(read32(&dev, 0x08), 0x0108_0200);
        let mut class = [0; 3];
        dev.config_read(0x09, &mut class).expect("read");
        assert_eq!(class, [0x02, 0x08, 0x01]);
        assert_eq!(read32(&dev, 0x0C), 0, "header type 0, no BIST");
        assert_eq!(read32(&dev, 0x2C), 0x0001_4E56, "subsystem IDs");
        assert_eq!(read16(&dev, 0x04), 0, "command: everything off");
        assert_eq!(read16(&dev, 0x06), status::CAPABILITIES_LIST);
        assert_eq!(read16(&dev, 0x3C), 0x0100, "interrupt pin A");
        assert_eq!(read32(&dev, 0x10), 0x4, "BAR0: 64-bit memory");
        assert_eq!(read32(&dev, 0x30), 0, "no expansion ROM");
        assert_eq!(
            cap_chain(&dev),
            vec![(0x40, 0x01), (0x50, 0x11), (0x60, 0x10)]
        );
        // MSI-X: table size - 1, table in BAR4 at 0, PBA in BAR5 at 0.
        assert_eq!(read16(&dev, 0x52), 31);
        assert_eq!(read32(&dev, 0x54), 4);
        assert_eq!(read32(&dev, 0x58), 5);
        assert_eq!(read16(&device(2048, false), 0x52), 0x7FF);
        // PM: version 3, D0, No_Soft_Reset.
        assert_eq!(read16(&dev, 0x42) & 0x7, 3);
        assert_eq!(read16(&dev, 0x44), 0x0008);
        // PCI Express: version 2, endpoint; max payload 128 bytes; link up at 8 GT/s x4.
        assert_eq!(read16(&dev, 0x62), 0x0002);
        assert_eq!(read32(&dev, 0x64) & 0x7, 0);
        assert_eq!(read16(&dev, 0x72) & 0x3FF, 0x43);
        // The extended space: an empty header, and nothing after it.
        assert_eq!(read32(&dev, 0x100), 0);
        let mut ext = vec![0xAA; CONFIG_SIZE - 0x100];
        dev.config_read(0x100, &mut ext).expect("read");
        assert!(ext.iter().all(|&b| b == 0));
    }

    #[test]
    fn accesses_inside_the_space_only() {
        let mut dev = device(32, false);
        let mut one = [0; 1];
        dev.config_read(0xFFF, &mut one).expect("last byte");
        let mut two = [0; 2];
        let out = DeviceError::ConfigOutOfRange {
            offset: 0xFFF,
            len: 2,
        };
        assert_eq!(dev.config_read(0xFFF, &mut two), Err(out.clone()));
        assert_eq!(out.errno(), libc::EINVAL);
        assert!(dev.config_read(0x1000, &mut one).is_err());
        assert!(dev.config_read(u64::MAX, &mut one).is_err());
        assert!(dev.config_write(0xFFE, &[0; 4]).is_err());
        assert!(dev.config_write(u64::MAX - 1, &[0; 4]).is_err());
        let mut all = vec![0; CONFIG_SIZE];
        dev.config_read(0, &mut all).expect("whole space");
        assert!(dev.config_write(0, &[]).expect("empty write").is_empty());
    }

    #[test]
    fn read_only_bits_stay() {
        let mut dev = device(32, false);
        let before = {
            let mut all = vec![0; CONFIG_SIZE];
            dev.config_read(0, &mut all).expect("read");
            all
        };
        dev.config_write(0, &vec![0xFF; CONFIG_SIZE])
            .expect("write everything");
        assert_eq!(read32(&dev, 0x00), 0x0001_4E56);
        assert_eq!(read32(&dev, 0x08), 0x0108_0200);
        assert_eq!(read16(&dev, 0x04), command::WRITABLE, "I/O space stays off");
        assert_eq!(read16(&dev, 0x06), status::CAPABILITIES_LIST);
        assert_eq!(read16(&dev, 0x0E), 0, "header type, BIST");
        assert_eq!(read32(&dev, 0x2C), 0x0001_4E56);
        assert_eq!(read16(&dev, 0x3C), 0x01FF, "line writable, pin read-only");
        assert_eq!(
            cap_chain(&dev),
            vec![(0x40, 0x01), (0x50, 0x11), (0x60, 0x10)]
        );
        assert_eq!(read16(&dev, 0x52), 0xC000 | 31, "table size stays");
        assert_eq!(read32(&dev, 0x54), 4);
        assert_eq!(read32(&dev, 0x58), 5);
        assert_eq!(read16(&dev, 0x62), 0x0002);
        assert_eq!(read32(&dev, 0x64), 1 << 15);
        assert_eq!(read16(&dev, 0x68), 0x78FF, "device control's writable bits");
        assert_eq!(read32(&dev, 0x6C), 0x43);
        assert_eq!(read32(&dev, 0x100), 0);
        // Outside the registers with writable bits nothing moved.
        let mut after = vec![0; CONFIG_SIZE];
        dev.config_read(0, &mut after).expect("read");
        let writable = [
            0x04..0x06,
            0x0C..0x0D,
            0x10..0x18,
            0x20..0x28,
            0x3C..0x3D,
            0x44..0x45,
            0x53..0x54,
            0x68..0x6A,
            0x70..0x71,
        ];
        for at in 0..CONFIG_SIZE {
            if !writable.iter().any(|r| r.contains(&at)) {
                assert_eq!(after[at], before[at], "byte {at:#x}");
            }
        }
    }

    #[test]
    fn status_error_bits_clear_by_writing_one() {
        let mut dev = device(32, false);
        dev.raise_status(status::RECEIVED_MASTER_ABORT | status::SIGNALED_TARGET_ABORT);
        dev.raise_status(status::INTERRUPT); // not an error bit: ignored
        let raised = status::CAPABILITIES_LIST
            | status::RECEIVED_MASTER_ABORT
            | status::SIGNALED_TARGET_ABORT;
        assert_eq!(read16(&dev, 0x06), raised);
        write16(&mut dev, 0x06, 0);
        assert_eq!(read16(&dev, 0x06), raised, "writing 0 clears nothing");
        write16(&mut dev, 0x06, status::RECEIVED_MASTER_ABORT);
        assert_eq!(
            read16(&dev, 0x06),
            status::CAPABILITIES_LIST | status::SIGNALED_TARGET_ABORT
        );
        // A dword write of command and status together: the command takes its bits, the
        // status loses the error it names and keeps the capabilities bit.
        dev.raise_status(status::DETECTED_PARITY_ERROR);
        write32(&mut dev, 0x04, 0xFFFF_0002);
        assert_eq!(read16(&dev, 0x04), command::MEMORY_SPACE);
        assert_eq!(read16(&dev, 0x06), status::CAPABILITIES_LIST);
        // The PCI Express device status error bits are write-1-to-clear too (never set here).
        write16(&mut dev, 0x6A, 0xFFFF);
        assert_eq!(read16(&dev, 0x6A), 0);
    }

    /// The size a driver computes from what a BAR reads back after writing all ones.
    fn sized(readback: u64) -> u64 {
        !(readback & !0xF) + 1
    }

    #[test]
    fn bar0_sizes_as_a_64_bit_16k_bar() {
        let mut dev = device(32, false);
        write32(&mut dev, 0x10, u32::MAX);
        write32(&mut dev, 0x14, u32::MAX);
        let low = read32(&dev, 0x10);
        let high = read32(&dev, 0x14);
        assert_eq!(low, 0xFFFF_C004, "address mask and type bits");
        assert_eq!(high, u32::MAX);
        assert_eq!(low & 0xF, 0b0100, "memory, 64-bit, not prefetchable");
        let readback = u64::from(low) | u64::from(high) << 32;
        assert_eq!(sized(readback), BAR0_SIZE);
        // An address: the bits below the size stay zero.
        write32(&mut dev, 0x10, 0xFEDC_B123);
        write32(&mut dev, 0x14, 0x0000_0012);
        assert_eq!(read32(&dev, 0x10), 0xFEDC_8004);
        assert_eq!(read32(&dev, 0x14), 0x12);
    }

    #[test]
    fn msix_bars_size_by_vector_count_and_the_rest_are_absent() {
        for (vectors, table) in [(1, 0x1000), (32, 0x1000), (256, 0x1000), (257, 0x2000)] {
            let mut dev = device(vectors, false);
            write32(&mut dev, 0x20, u32::MAX);
            write32(&mut dev, 0x24, u32::MAX);
            let bar4 = read32(&dev, 0x20);
            assert_eq!(bar4 & 0xF, 0, "32-bit memory");
            assert_eq!(sized(u64::from(bar4) | 0xFFFF_FFFF_0000_0000), table);
            let bar5 = read32(&dev, 0x24);
            assert_eq!(bar5, 0xFFFF_F000);
            assert_eq!(dev.region_desc(region::BAR4).expect("bar4").size, table);
        }
        let mut dev = device(2048, false);
        write32(&mut dev, 0x20, u32::MAX);
        assert_eq!(read32(&dev, 0x20), 0xFFFF_8000, "2048 vectors: 32 KiB");
        for at in [0x18, 0x1C, 0x30] {
            write32(&mut dev, at, u32::MAX);
            assert_eq!(read32(&dev, at), 0, "BAR2, BAR3, ROM at {at:#x}");
        }
    }

    #[test]
    fn writes_of_command_and_msix_control_are_reported() {
        let mut dev = device(32, false);
        let cmd = |memory, bus_master, intx_disabled| {
            ConfigChange::Command(Command {
                memory,
                bus_master,
                intx_disabled,
            })
        };
        let msix = |enabled, masked| ConfigChange::MsixControl(MsixControl { enabled, masked });
        assert_eq!(
            write16(&mut dev, 0x04, 0x0006),
            vec![cmd(true, true, false)]
        );
        assert_eq!(write16(&mut dev, 0x04, 0x0407), vec![cmd(true, true, true)]);
        assert_eq!(
            dev.command(),
            Command {
                memory: true,
                bus_master: true,
                intx_disabled: true
            }
        );
        // The high byte alone is still the command register.
        assert_eq!(
            dev.config_write(0x05, &[0]).expect("write"),
            vec![cmd(true, true, false)]
        );
        assert_eq!(
            write16(&mut dev, 0x52, 0xC000 | 0x7FF),
            vec![msix(true, true)]
        );
        assert_eq!(read16(&dev, 0x52), 0xC000 | 31);
        assert_eq!(
            dev.config_write(0x53, &[0x80]).expect("write"),
            vec![msix(true, false)]
        );
        assert_eq!(
            dev.msix_control(),
            MsixControl {
                enabled: true,
                masked: false
            }
        );
        // The capability's dword: ID and next stay, control is reported.
        assert_eq!(write32(&mut dev, 0x50, 0), vec![msix(false, false)]);
        assert_eq!(read16(&dev, 0x50), 0x6011);
        assert!(write32(&mut dev, 0x0C, 0x10).is_empty(), "cache line size");
        assert!(write16(&mut dev, 0x06, 0xFFFF).is_empty(), "status");
        assert_eq!(
            dev.config_write(0, &vec![0; CONFIG_SIZE]).expect("write"),
            vec![cmd(false, false, false), msix(false, false)]
        );
    }

    #[test]
    fn power_state_takes_d0_and_d3hot_only() {
        let mut dev = device(32, false);
        write16(&mut dev, 0x44, 3);
        assert_eq!(read16(&dev, 0x44), 0x0008 | 3);
        assert!(dev.in_d3hot());
        write16(&mut dev, 0x44, 1);
        assert_eq!(read16(&dev, 0x44) & 3, 3, "D1 is not supported");
        write16(&mut dev, 0x44, 0);
        assert_eq!(read16(&dev, 0x44), 0x0008);
        assert!(!dev.in_d3hot());
        write16(&mut dev, 0x44, 0xFFFE);
        assert_eq!(read16(&dev, 0x44), 0x0008, "D2 is not supported either");
    }

    #[test]
    fn regions_as_the_client_sees_them() {
        let rw = region::FLAG_READ | region::FLAG_WRITE;
        let mapped = device(32, true);
        let bar0 = mapped.region_desc(region::BAR0).expect("bar0");
        assert_eq!(
            bar0,
            RegionDesc {
                flags: rw | region::FLAG_MMAP,
                size: 0x4000,
                sparse_mmap: vec![(0x1000, 0x1000)],
            }
        );
        let trapped = device(32, false);
        let bar0 = trapped.region_desc(region::BAR0).expect("bar0");
        assert_eq!(
            bar0,
            RegionDesc {
                flags: rw,
                size: 0x4000,
                sparse_mmap: vec![],
            }
        );
        for dev in [&mapped, &trapped] {
            let desc = |i| dev.region_desc(i).expect("region");
            assert_eq!(
                (desc(region::BAR4).flags, desc(region::BAR4).size),
                (rw, 0x1000)
            );
            assert_eq!(
                (desc(region::BAR5).flags, desc(region::BAR5).size),
                (rw, 0x1000)
            );
            assert_eq!(
                (desc(region::CONFIG).flags, desc(region::CONFIG).size),
                (rw, 4096)
            );
            for absent in [
                region::BAR1,
                region::BAR2,
                region::BAR3,
                region::ROM,
                region::VGA,
            ] {
                assert_eq!((desc(absent).flags, desc(absent).size), (0, 0), "{absent}");
            }
            assert_eq!(dev.region_desc(region::COUNT), None);
            assert_eq!(dev.region_desc(u32::MAX), None);
        }
    }

    #[test]
    fn reset_restores_the_power_on_space() {
        let fresh = device(32, false);
        let mut dev = fresh.clone();
        write16(&mut dev, 0x04, 0x0406);
        write32(&mut dev, 0x10, u32::MAX);
        write16(&mut dev, 0x52, 0xC000);
        write16(&mut dev, 0x44, 3);
        dev.raise_status(status::RECEIVED_MASTER_ABORT);
        dev.reset();
        let (mut a, mut b) = (vec![0; CONFIG_SIZE], vec![0; CONFIG_SIZE]);
        dev.config_read(0, &mut a).expect("read");
        fresh.config_read(0, &mut b).expect("read");
        assert_eq!(a, b);
        // The masks survive a reset.
        write32(&mut dev, 0x10, u32::MAX);
        assert_eq!(read32(&dev, 0x10), 0xFFFF_C004);
    }

    #[test]
    fn decodes_registers() {
        use PropertySize::{Eight, Four};
        let reg = |offset, size| Bar0Access::Register { offset, size };
        let cases = [
            (0x00, 8, reg(0x00, Eight)), // CAP
            (0x00, 4, reg(0x00, Four)),
            (0x04, 4, reg(0x04, Four)),
            (0x08, 4, reg(0x08, Four)),  // VS
            (0x14, 4, reg(0x14, Four)),  // CC
            (0x1C, 4, reg(0x1C, Four)),  // CSTS
            (0x24, 4, reg(0x24, Four)),  // AQA
            (0x28, 8, reg(0x28, Eight)), // ASQ
            (0x2C, 4, reg(0x2C, Four)),
            (0x30, 8, reg(0x30, Eight)), // ACQ
            (0xFF8, 8, reg(0xFF8, Eight)),
            (0xFFC, 4, reg(0xFFC, Four)),
        ];
        for (offset, len, want) in cases {
            assert_eq!(
                Bar0Access::decode(offset, len, 3),
                want,
                "{offset:#x}+{len}"
            );
        }
        for (offset, len) in [
            (0x04, 8), // 8 bytes, 4-aligned
            (0x01, 4), // unaligned
            (0x02, 4),
            (0xFFC, 8), // unaligned and across into the doorbells
            (0x00, 0),
            (0x00, 1),
            (0x00, 2),
            (0x00, 3),
            (0x00, 16),
            (0x00, usize::MAX),
        ] {
            assert_eq!(
                Bar0Access::decode(offset, len, 3),
                Bar0Access::Invalid,
                "{offset:#x}+{len}"
            );
        }
    }

    #[test]
    fn decodes_every_doorbell_up_to_the_last_queue() {
        for max_qid in [0u16, 3, 63, 511, 1535] {
            for offset in (DOORBELL_BASE..BAR0_SIZE).step_by(4) {
                let qid = (offset - DOORBELL_BASE) / 8;
                let want = match u16::try_from(qid) {
                    Ok(qid) if qid <= max_qid && offset % 8 == 0 => Bar0Access::SqTail { qid },
                    Ok(qid) if qid <= max_qid => Bar0Access::CqHead { qid },
                    _ => Bar0Access::Invalid,
                };
                assert_eq!(Bar0Access::decode(offset, 4, max_qid), want, "{offset:#x}");
            }
        }
        let at = |qid: u64| DOORBELL_BASE + 8 * qid;
        assert_eq!(
            Bar0Access::decode(at(0), 4, 3),
            Bar0Access::SqTail { qid: 0 }
        );
        assert_eq!(
            Bar0Access::decode(at(0) + 4, 4, 3),
            Bar0Access::CqHead { qid: 0 }
        );
        assert_eq!(
            Bar0Access::decode(at(3) + 4, 4, 3),
            Bar0Access::CqHead { qid: 3 }
        );
        assert_eq!(Bar0Access::decode(at(4), 4, 3), Bar0Access::Invalid);
        assert_eq!(
            Bar0Access::decode(BAR0_SIZE - 4, 4, u16::MAX),
            Bar0Access::CqHead { qid: 1535 }
        );
        for (offset, len) in [
            (at(0), 8), // both doorbells of a queue at once
            (at(0), 2),
            (at(0) + 2, 4), // unaligned
            (at(1) + 1, 4),
            (at(0), 0),
            (BAR0_SIZE, 4), // past BAR0
            (BAR0_SIZE + 4, 4),
            (u64::MAX - 3, 4),
            (u64::MAX, 4),
        ] {
            assert_eq!(
                Bar0Access::decode(offset, len, u16::MAX),
                Bar0Access::Invalid,
                "{offset:#x}+{len}"
            );
        }
    }
}
