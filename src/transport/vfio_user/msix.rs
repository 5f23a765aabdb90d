//! The emulated controller's interrupts: the MSI-X table and PBA the client reads and writes
//! through BAR4 and BAR5, the eventfds DEVICE_SET_IRQS hands over (VFIO semantics), masking,
//! pending bits, and INTx when MSI-X is off.
//!
//! A vector fires by writing 1 to its eventfd, which the VMM (KVM's irqfd) turns into the
//! guest's interrupt. [`Interrupts::trigger`] fires a vector when MSI-X is enabled and nothing
//! masks it (the function mask, the vector's mask bit in the table, a VFIO ACTION_MASK) and it
//! has an eventfd; otherwise the vector's pending bit is set, and the vector fires as soon as
//! what held it back goes away. With MSI-X disabled every vector asserts INTx instead, which
//! VFIO masks automatically each time it fires, until the client unmasks it (after the guest's
//! end of interrupt).
//!
//! Two choices differ from a bare reading of the specifications:
//! - The table's vector control words reset to unmasked, not masked (PCI Local Bus 3.0,
//!   6.8.2.9). QEMU's `vfio-user-pci` emulates the table the guest sees and never writes ours
//!   (it forwards only PBA reads, and masks a vector by swapping its eventfd), so masked
//!   entries would hold every interrupt back forever; a VMM that does forward the table
//!   forwards the guest's own masking with it (Linux masks all entries before enabling MSI-X).
//! - DATA_EVENTFD with a count but no descriptors clears the eventfds of those vectors: that is
//!   how QEMU sends the -1 entries of a VFIO eventfd array, which cannot cross a socket.

use std::os::fd::OwnedFd;

/// IRQ indexes of a vfio PCI device (linux/vfio.h `VFIO_PCI_*_IRQ_INDEX`).
pub mod index {
    pub const INTX: u32 = 0;
    pub const MSI: u32 = 1;
    pub const MSIX: u32 = 2;
    pub const ERR: u32 = 3;
    pub const REQ: u32 = 4;
    /// How many indexes the device reports (DEVICE_GET_INFO `num_irqs`).
    pub const COUNT: u32 = 5;
}

/// DEVICE_SET_IRQS flags (linux/vfio.h `VFIO_IRQ_SET_*`): one data type and one action.
pub mod set_flags {
    pub const DATA_NONE: u32 = 1 << 0;
    pub const DATA_BOOL: u32 = 1 << 1;
    pub const DATA_EVENTFD: u32 = 1 << 2;
    pub const DATA_TYPE_MASK: u32 = DATA_NONE | DATA_BOOL | DATA_EVENTFD;
    pub const ACTION_MASK: u32 = 1 << 3;
    pub const ACTION_UNMASK: u32 = 1 << 4;
    pub const ACTION_TRIGGER: u32 = 1 << 5;
    pub const ACTION_TYPE_MASK: u32 = ACTION_MASK | ACTION_UNMASK | ACTION_TRIGGER;
}

/// DEVICE_GET_IRQ_INFO flags (linux/vfio.h `VFIO_IRQ_INFO_*`).
pub mod info_flags {
    pub const EVENTFD: u32 = 1 << 0;
    pub const MASKABLE: u32 = 1 << 1;
    pub const AUTOMASKED: u32 = 1 << 2;
    /// Not set for MSI-X: vectors may get and lose eventfds one by one while MSI-X is on.
    pub const NORESIZE: u32 = 1 << 3;
}

/// The most MSI-X vectors a function has (PCI Local Bus 3.0, 6.8.2.3: an 11-bit table size).
pub const MAX_VECTORS: u16 = 2048;
/// Bytes per MSI-X table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Size of the PBA BAR (BAR5): 4 KiB, room for the 2048 vectors' 256 bytes of bits.
pub const PBA_BAR_SIZE: u64 = 0x1000;

/// Vector control: the mask bit; the other bits are reserved (read-only zero).
const VECTOR_MASKED: u32 = 1 << 0;
/// Message address: dword aligned, bits 1:0 read-only zero.
const ADDRESS_LOW_WRITABLE: u32 = !0b11;
const PAGE: u64 = 0x1000;

/// Size of the table BAR (BAR4) for `vectors` vectors: the table rounded up to 4 KiB.
pub fn table_bar_size(vectors: u16) -> u64 {
    (u64::from(vectors.max(1)) * ENTRY_SIZE).div_ceil(PAGE) * PAGE
}

/// What went wrong in a table access or a SET_IRQS request.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    #[error("access of {len} bytes at {offset:#x} is not an aligned dword or qword")]
    Misaligned { offset: u64, len: usize },
    #[error("access of {len} bytes at {offset:#x} is outside the region")]
    OutOfRange { offset: u64, len: usize },
    #[error("no interrupt index {0}")]
    BadIndex(u32),
    #[error("irq set flags {0:#x} are not one data type and one action")]
    BadFlags(u32),
    #[error("interrupts {start}..{start}+{count} are outside the {available} of index {index}")]
    BadRange {
        index: u32,
        start: u32,
        count: u32,
        available: u32,
    },
    #[error("{got} file descriptors for {expected} interrupts")]
    FdCount { expected: u32, got: usize },
    #[error("{got} bytes of bools for {count} interrupts")]
    ShortData { count: u32, got: usize },
    #[error("index {index} does not take irq set flags {flags:#x}")]
    Unsupported { index: u32, flags: u32 },
    #[error("no vector {0}")]
    NoVector(u16),
    #[error("signalling an eventfd")]
    Signal(#[source] std::io::Error),
}

impl MsixError {
    /// The errno that answers the client.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Signal(err) => err.raw_os_error().unwrap_or(libc::EIO),
            _ => libc::EINVAL,
        }
    }
}

/// What the device answers about one interrupt index (DEVICE_GET_IRQ_INFO), before the lead
/// turns it into the server's `IrqInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqDesc {
    pub flags: u32,
    pub count: u32,
}

/// One MSI-X table entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsixEntry {
    pub address: u64,
    pub data: u32,
    pub control: u32,
}

impl MsixEntry {
    pub fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }
}

/// The MSI-X table (BAR4) and the Pending Bit Array (BAR5) as memory the client reads and
/// writes in aligned dwords and qwords.
#[derive(Debug, Clone)]
pub struct MsixTable {
    entries: Vec<MsixEntry>,
    /// One bit per vector, vector n in bit n % 64 of qword n / 64.
    pba: Vec<u64>,
}

impl MsixTable {
    /// A table of `vectors` entries (1 to [`MAX_VECTORS`], clamped), all unmasked and zero.
    pub fn new(vectors: u16) -> Self {
        let vectors = usize::from(vectors.clamp(1, MAX_VECTORS));
        Self {
            entries: vec![MsixEntry::default(); vectors],
            pba: vec![0; vectors.div_ceil(64)],
        }
    }

    pub fn vectors(&self) -> u16 {
        u16::try_from(self.entries.len()).unwrap_or(MAX_VECTORS)
    }

    pub fn entry(&self, vector: u16) -> Option<MsixEntry> {
        self.entries.get(usize::from(vector)).copied()
    }

    /// Whether the vector's mask bit is set (a vector past the table counts as masked).
    pub fn is_masked(&self, vector: u16) -> bool {
        self.entry(vector).is_none_or(|e| e.masked())
    }

    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pba
            .get(v / 64)
            .is_some_and(|word| word & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, pending: bool) {
        let v = usize::from(vector);
        if let Some(word) = self.pba.get_mut(v / 64) {
            if pending {
                *word |= 1 << (v % 64);
            } else {
                *word &= !(1 << (v % 64));
            }
        }
    }

    /// Whether any vector is pending.
    fn any_pending(&self) -> bool {
        self.pba.iter().any(|&word| word != 0)
    }

    /// A read of the table BAR; space past the last entry reads zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixError> {
        check_access(offset, data.len(), table_bar_size(self.vectors()))?;
        for (at, chunk) in (offset..).step_by(4).zip(data.chunks_exact_mut(4)) {
            chunk.copy_from_slice(&self.table_dword(at).to_le_bytes());
        }
        Ok(())
    }

    /// A write of the table BAR; space past the last entry ignores writes.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        check_access(offset, data.len(), table_bar_size(self.vectors()))?;
        for (at, chunk) in (offset..).step_by(4).zip(data.chunks_exact(4)) {
            let mut bytes = [0; 4];
            bytes.copy_from_slice(chunk);
            self.set_table_dword(at, u32::from_le_bytes(bytes));
        }
        Ok(())
    }

    /// A read of the PBA BAR; space past the last bit reads zero.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixError> {
        check_access(offset, data.len(), PBA_BAR_SIZE)?;
        for (at, chunk) in (offset..).step_by(4).zip(data.chunks_exact_mut(4)) {
            let word = usize::try_from(at / 8)
                .ok()
                .and_then(|i| self.pba.get(i))
                .copied()
                .unwrap_or(0);
            let dword = if at % 8 == 0 { word } else { word >> 32 };
            let dword = u32::try_from(dword & 0xFFFF_FFFF).unwrap_or(0);
            chunk.copy_from_slice(&dword.to_le_bytes());
        }
        Ok(())
    }

    /// A write of the PBA BAR: checked like a read, then ignored (the PBA is read-only).
    pub fn pba_write(&self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        check_access(offset, data.len(), PBA_BAR_SIZE)
    }

    /// The entry and the dword within it (0 address low .. 3 vector control) at `offset`.
    fn locate(&self, offset: u64) -> Option<(usize, u64)> {
        let entry = usize::try_from(offset / ENTRY_SIZE).ok()?;
        (entry < self.entries.len()).then_some((entry, (offset % ENTRY_SIZE) / 4))
    }

    fn table_dword(&self, offset: u64) -> u32 {
        let Some((i, field)) = self.locate(offset) else {
            return 0;
        };
        let e = &self.entries[i];
        let [low, high] = split(e.address);
        match field {
            0 => low,
            1 => high,
            2 => e.data,
            _ => e.control,
        }
    }

    fn set_table_dword(&mut self, offset: u64, value: u32) {
        let Some((i, field)) = self.locate(offset) else {
            return;
        };
        let e = &mut self.entries[i];
        let [low, high] = split(e.address);
        match field {
            0 => e.address = join(value & ADDRESS_LOW_WRITABLE, high),
            1 => e.address = join(low, value),
            2 => e.data = value,
            _ => e.control = value & VECTOR_MASKED,
        }
    }
}

fn split(value: u64) -> [u32; 2] {
    let low = u32::try_from(value & 0xFFFF_FFFF).unwrap_or(0);
    let high = u32::try_from(value >> 32).unwrap_or(0);
    [low, high]
}

fn join(low: u32, high: u32) -> u64 {
    u64::from(low) | u64::from(high) << 32
}

/// An MSI-X table or PBA access must be an aligned dword or qword (PCI Local Bus 3.0, 6.8.2)
/// inside the BAR.
fn check_access(offset: u64, len: usize, size: u64) -> Result<(), MsixError> {
    let len64 = match len {
        4 => 4,
        8 => 8,
        _ => return Err(MsixError::Misaligned { offset, len }),
    };
    if offset % len64 != 0 {
        return Err(MsixError::Misaligned { offset, len });
    }
    match offset.checked_add(len64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(MsixError::OutOfRange { offset, len }),
    }
}

/// What became of a [`trigger`](Interrupts::trigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The eventfd was written (or its counter was already full, which is as good).
    Signalled,
    /// Held back (masked, or no eventfd yet): the pending bit is set and the interrupt fires
    /// when it can.
    Pending,
    /// Nowhere to go: MSI-X is off and INTx is disabled in the command register.
    Suppressed,
}

/// One MSI-X vector's VFIO side.
#[derive(Debug, Default)]
struct Vector {
    fd: Option<OwnedFd>,
    /// Masked by a SET_IRQS ACTION_MASK (the table's mask bit is separate).
    masked: bool,
}

/// INTx: one line, masked by VFIO each time it fires.
#[derive(Debug, Default)]
struct Intx {
    fd: Option<OwnedFd>,
    masked: bool,
    pending: bool,
}

/// The interrupts of the function: the MSI-X table and PBA, the eventfds of every index, and
/// the config space bits they follow (MSI-X enable and function mask, INTx disable).
#[derive(Debug)]
pub struct Interrupts {
    table: MsixTable,
    vectors: Vec<Vector>,
    msix_enabled: bool,
    function_masked: bool,
    intx: Intx,
    intx_disabled: bool,
    err: Option<OwnedFd>,
    req: Option<OwnedFd>,
}

impl Interrupts {
    /// `vectors` MSI-X vectors (1 to [`MAX_VECTORS`], clamped), MSI-X off, no eventfds.
    pub fn new(vectors: u16) -> Self {
        let table = MsixTable::new(vectors);
        let vectors = (0..table.vectors()).map(|_| Vector::default()).collect();
        Self {
            table,
            vectors,
            msix_enabled: false,
            function_masked: false,
            intx: Intx::default(),
            intx_disabled: false,
            err: None,
            req: None,
        }
    }

    pub fn table(&self) -> &MsixTable {
        &self.table
    }

    /// Index `index` as the client sees it; `None` past the last index. There is no MSI
    /// capability, so MSI has no interrupts.
    pub fn irq_desc(&self, index: u32) -> Option<IrqDesc> {
        use info_flags::{AUTOMASKED, EVENTFD, MASKABLE};
        let (flags, count) = match index {
            index::INTX => (EVENTFD | MASKABLE | AUTOMASKED, 1),
            index::MSI => (EVENTFD, 0),
            index::MSIX => (EVENTFD | MASKABLE, u32::from(self.table.vectors())),
            index::ERR | index::REQ => (EVENTFD, 1),
            _ => return None,
        };
        Some(IrqDesc { flags, count })
    }

    /// DEVICE_SET_IRQS. `data` holds the DATA_BOOL bytes (one per interrupt); `fds` the
    /// eventfds of DATA_EVENTFD (one per interrupt, or none to clear them). Descriptors that
    /// are not kept are closed.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        data: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), MsixError> {
        use set_flags::{
            ACTION_MASK, ACTION_TRIGGER, ACTION_TYPE_MASK, ACTION_UNMASK, DATA_BOOL, DATA_EVENTFD,
            DATA_NONE, DATA_TYPE_MASK,
        };
        let available = self
            .irq_desc(index)
            .ok_or(MsixError::BadIndex(index))?
            .count;
        let data_type = flags & DATA_TYPE_MASK;
        let action = flags & ACTION_TYPE_MASK;
        if flags & !(DATA_TYPE_MASK | ACTION_TYPE_MASK) != 0
            || data_type.count_ones() != 1
            || action.count_ones() != 1
        {
            return Err(MsixError::BadFlags(flags));
        }
        if start >= available || u64::from(start) + u64::from(count) > u64::from(available) {
            return Err(MsixError::BadRange {
                index,
                start,
                count,
                available,
            });
        }
        let expected_fds = if data_type == DATA_EVENTFD { count } else { 0 };
        if !fds.is_empty() && fds.len() != usize::try_from(expected_fds).unwrap_or(usize::MAX) {
            return Err(MsixError::FdCount {
                expected: expected_fds,
                got: fds.len(),
            });
        }
        let first = usize::try_from(start).unwrap_or(usize::MAX);
        let count_usize = usize::try_from(count).unwrap_or(usize::MAX);
        // Which interrupts the request selects: all of them, or those whose bool is set.
        let selected: Vec<bool> = match data_type {
            DATA_BOOL => match data.get(..count_usize) {
                Some(bools) => bools.iter().map(|&b| b != 0).collect(),
                None => {
                    return Err(MsixError::ShortData {
                        count,
                        got: data.len(),
                    });
                }
            },
            _ => vec![true; count_usize],
        };
        let range = first..first + count_usize;
        // For the indexes of one interrupt (INTx, ERR, REQ): whether it is selected.
        let one = selected.first() == Some(&true);

        if action == ACTION_TRIGGER && count == 0 {
            // DATA_NONE or DATA_EVENTFD with no interrupts turns the index off.
            if data_type != DATA_BOOL {
                self.disable(index);
            }
            return Ok(());
        }
        match (index, action, data_type) {
            (index::MSIX, ACTION_TRIGGER, DATA_EVENTFD) => {
                let mut fds = fds.into_iter();
                for vector in &mut self.vectors[range] {
                    vector.fd = fds.next();
                }
                self.deliver_pending()
            }
            (index::MSIX, ACTION_TRIGGER, _) => {
                // A loopback trigger, as the kernel does it: the eventfd, whatever masks it.
                for (vector, _) in self.vectors[range].iter().zip(&selected).filter(|s| *s.1) {
                    if let Some(fd) = &vector.fd {
                        signal(fd)?;
                    }
                }
                Ok(())
            }
            (index::MSIX, ACTION_MASK | ACTION_UNMASK, DATA_NONE | DATA_BOOL) => {
                let masked = action == ACTION_MASK;
                for (vector, _) in self.vectors[range]
                    .iter_mut()
                    .zip(&selected)
                    .filter(|s| *s.1)
                {
                    vector.masked = masked;
                }
                self.deliver_pending()
            }
            (index::INTX, ACTION_TRIGGER, DATA_EVENTFD) => {
                self.intx.fd = fds.into_iter().next();
                self.deliver_pending()
            }
            (index::INTX, ACTION_TRIGGER, _) => {
                if let (Some(fd), true) = (&self.intx.fd, one) {
                    signal(fd)?;
                }
                Ok(())
            }
            (index::INTX, ACTION_MASK | ACTION_UNMASK, DATA_NONE | DATA_BOOL) => {
                if one {
                    self.intx.masked = action == ACTION_MASK;
                }
                self.deliver_pending()
            }
            (index::ERR | index::REQ, ACTION_TRIGGER, DATA_EVENTFD) => {
                let slot = if index == index::ERR {
                    &mut self.err
                } else {
                    &mut self.req
                };
                *slot = fds.into_iter().next();
                Ok(())
            }
            (index::ERR | index::REQ, ACTION_TRIGGER, _) => {
                if one {
                    self.notify(index)?;
                }
                Ok(())
            }
            _ => Err(MsixError::Unsupported { index, flags }),
        }
    }

    /// Follows MSI-X Message Control (enable, function mask); vectors that can fire now, do.
    pub fn set_msix_control(&mut self, enabled: bool, masked: bool) -> Result<(), MsixError> {
        if enabled && !self.msix_enabled {
            // The line is not used while MSI-X is on; what it held is gone.
            self.intx.pending = false;
        }
        self.msix_enabled = enabled;
        self.function_masked = masked;
        self.deliver_pending()
    }

    /// Follows the command register's INTx disable bit.
    pub fn set_intx_disabled(&mut self, disabled: bool) -> Result<(), MsixError> {
        self.intx_disabled = disabled;
        self.deliver_pending()
    }

    pub fn msix_enabled(&self) -> bool {
        self.msix_enabled
    }

    /// Raises the interrupt of `vector` (a completion queue's): its MSI-X vector, or INTx when
    /// MSI-X is off.
    pub fn trigger(&mut self, vector: u16) -> Result<Delivery, MsixError> {
        if vector >= self.table.vectors() {
            return Err(MsixError::NoVector(vector));
        }
        if !self.msix_enabled {
            return self.assert_intx();
        }
        if let Some(fd) = self.deliverable(vector) {
            signal(fd)?;
            return Ok(Delivery::Signalled);
        }
        self.table.set_pending(vector, true);
        Ok(Delivery::Pending)
    }

    /// Tells the client the device wants to be released (the REQ index), if it listens.
    pub fn request_release(&self) -> Result<bool, MsixError> {
        self.notify(index::REQ)
    }

    /// Reports an unrecoverable device error to the client (the ERR index), if it listens.
    pub fn report_error(&self) -> Result<bool, MsixError> {
        self.notify(index::ERR)
    }

    /// A read of BAR4.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixError> {
        self.table.read(offset, data)
    }

    /// A write of BAR4; a vector it unmasks fires if pending.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        self.table.write(offset, data)?;
        self.deliver_pending()
    }

    /// A read of BAR5.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) -> Result<(), MsixError> {
        self.table.pba_read(offset, data)
    }

    /// A write of BAR5 (ignored once checked).
    pub fn pba_write(&self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        self.table.pba_write(offset, data)
    }

    /// Back to the power-on state: eventfds closed, table zero, MSI-X off (a client's
    /// DEVICE_RESET or disconnect).
    pub fn reset(&mut self) {
        *self = Self::new(self.table.vectors());
    }

    /// The eventfd of `vector` if nothing masks it now.
    fn deliverable(&self, vector: u16) -> Option<&OwnedFd> {
        if !self.msix_enabled || self.function_masked || self.table.is_masked(vector) {
            return None;
        }
        let v = self.vectors.get(usize::from(vector))?;
        if v.masked { None } else { v.fd.as_ref() }
    }

    fn assert_intx(&mut self) -> Result<Delivery, MsixError> {
        if self.intx_disabled {
            return Ok(Delivery::Suppressed);
        }
        match &self.intx.fd {
            Some(fd) if !self.intx.masked => {
                signal(fd)?;
                self.intx.masked = true;
                Ok(Delivery::Signalled)
            }
            _ => {
                self.intx.pending = true;
                Ok(Delivery::Pending)
            }
        }
    }

    /// Fires what is pending and may fire now, clearing its pending bit.
    fn deliver_pending(&mut self) -> Result<(), MsixError> {
        if self.msix_enabled {
            if self.function_masked || !self.table.any_pending() {
                return Ok(());
            }
            for vector in 0..self.table.vectors() {
                if !self.table.is_pending(vector) {
                    continue;
                }
                if let Some(fd) = self.deliverable(vector) {
                    signal(fd)?;
                    self.table.set_pending(vector, false);
                }
            }
        } else if self.intx.pending && !self.intx.masked && !self.intx_disabled {
            if let Some(fd) = &self.intx.fd {
                signal(fd)?;
                self.intx.pending = false;
                self.intx.masked = true;
            }
        }
        Ok(())
    }

    /// Signals the ERR or REQ eventfd; whether there was one.
    fn notify(&self, index: u32) -> Result<bool, MsixError> {
        let fd = if index == index::ERR {
            &self.err
        } else {
            &self.req
        };
        match fd {
            Some(fd) => signal(fd).map(|()| true),
            None => Ok(false),
        }
    }

    /// Turns `index` off: its eventfds closed, its VFIO masks and INTx's pending state gone
    /// (the table's pending bits are the guest's and stay).
    fn disable(&mut self, index: u32) {
        match index {
            index::MSIX => self.vectors.iter_mut().for_each(|v| *v = Vector::default()),
            index::INTX => self.intx = Intx::default(),
            index::ERR => self.err = None,
            index::REQ => self.req = None,
            _ => {}
        }
    }
}

/// Adds 1 to an eventfd's counter. A full counter (EAGAIN) already says "interrupt", so it is
/// not an error.
fn signal(fd: &OwnedFd) -> Result<(), MsixError> {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
        Err(err) => Err(MsixError::Signal(err.into())),
    }
}

#[cfg(test)]
mod tests {
    use rustix::event::{EventfdFlags, eventfd};

    use super::set_flags::{
        ACTION_MASK, ACTION_TRIGGER, ACTION_UNMASK, DATA_BOOL, DATA_EVENTFD, DATA_NONE,
    };
    use super::*;

    const EVENTFD_TRIGGER: u32 = DATA_EVENTFD | ACTION_TRIGGER;

    /// An eventfd as (the end the test reads, a duplicate handed to the device).
    fn eventfd_pair() -> (OwnedFd, OwnedFd) {
        let fd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC).expect("eventfd");
        let given = fd.try_clone().expect("dup");
        (fd, given)
    }

    /// Reads and resets the counter (0 if nothing was signalled).
    fn take(fd: &OwnedFd) -> u64 {
        let mut b = [0; 8];
        match rustix::io::read(fd, &mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            Err(rustix::io::Errno::AGAIN) => 0,
            other => panic!("eventfd read: {other:?}"),
        }
    }

    /// MSI-X on with an eventfd on every vector of `vectors`; the test's ends.
    fn msix_with_fds(irqs: &mut Interrupts, vectors: u32) -> Vec<OwnedFd> {
        let (ours, given): (Vec<_>, Vec<_>) = (0..vectors).map(|_| eventfd_pair()).unzip();
        irqs.set_irqs(index::MSIX, EVENTFD_TRIGGER, 0, vectors, &[], given)
            .expect("set eventfds");
        irqs.set_msix_control(true, false).expect("enable");
        ours
    }

    fn table_write32(irqs: &mut Interrupts, offset: u64, value: u32) {
        irqs.table_write(offset, &value.to_le_bytes())
            .expect("table write");
    }

    fn pba64(irqs: &Interrupts, offset: u64) -> u64 {
        let mut b = [0; 8];
        irqs.pba_read(offset, &mut b).expect("pba read");
        u64::from_le_bytes(b)
    }

    #[test]
    fn table_bar_rounds_to_pages() {
        assert_eq!(table_bar_size(0), 0x1000);
        assert_eq!(table_bar_size(1), 0x1000);
        assert_eq!(table_bar_size(256), 0x1000);
        assert_eq!(table_bar_size(257), 0x2000);
        assert_eq!(table_bar_size(MAX_VECTORS), 0x8000);
        assert_eq!(MsixTable::new(0).vectors(), 1);
        assert_eq!(MsixTable::new(u16::MAX).vectors(), MAX_VECTORS);
    }

    #[test]
    fn table_entries_read_back_what_was_written() {
        let mut table = MsixTable::new(32);
        let entry = 16 * 5;
        table
            .write(entry, &0x0000_0001_FEE0_1003u64.to_le_bytes())
            .expect("address qword");
        table
            .write(entry + 8, &0x4041u32.to_le_bytes())
            .expect("data");
        table
            .write(entry + 12, &u32::MAX.to_le_bytes())
            .expect("control");
        assert_eq!(
            table.entry(5),
            Some(MsixEntry {
                address: 0x0000_0001_FEE0_1000,
                data: 0x4041,
                control: 1,
            }),
            "address bits 1:0 and the reserved control bits are read-only zero"
        );
        assert!(table.is_masked(5));
        assert!(!table.is_masked(4), "entries reset unmasked");
        assert!(table.is_masked(32), "no such vector");
        let mut q = [0; 8];
        table.read(entry + 8, &mut q).expect("qword read");
        assert_eq!(u64::from_le_bytes(q), 0x0000_0001_0000_4041);
        let mut d = [0; 4];
        table.read(entry + 4, &mut d).expect("dword read");
        assert_eq!(u32::from_le_bytes(d), 1);
        // Past the last entry but inside the BAR: zero, writes ignored.
        table.write(0x200, &u32::MAX.to_le_bytes()).expect("write");
        table.read(0x200, &mut d).expect("read");
        assert_eq!(d, [0; 4]);
        table.read(0xFF8, &mut q).expect("last qword");
    }

    #[test]
    fn table_and_pba_accesses_are_checked() {
        let mut irqs = Interrupts::new(32);
        let mut buf = [0; 16];
        for (offset, len) in [(0, 1), (0, 2), (0, 3), (0, 16), (2, 4), (4, 8), (0, 0)] {
            let err = irqs
                .table_read(offset, &mut buf[..len])
                .expect_err("misaligned");
            assert!(matches!(err, MsixError::Misaligned { .. }), "{err}");
            assert_eq!(err.errno(), libc::EINVAL);
            assert!(irqs.table_write(offset, &buf[..len]).is_err());
            assert!(irqs.pba_read(offset, &mut buf[..len]).is_err());
            assert!(irqs.pba_write(offset, &buf[..len]).is_err());
        }
        for offset in [0x1000, 0x1004, u64::MAX - 3, u64::MAX - 7] {
            let err = irqs
                .table_read(offset & !3, &mut buf[..4])
                .expect_err("out");
            assert!(matches!(err, MsixError::OutOfRange { .. }), "{err}");
            assert!(irqs.table_write(offset & !3, &buf[..4]).is_err());
            assert!(irqs.pba_read(offset & !3, &mut buf[..4]).is_err());
        }
        assert!(irqs.table_read(0xFF8, &mut buf[..8]).is_ok());
        assert!(irqs.pba_read(0xFF8, &mut buf[..8]).is_ok());
        assert!(
            irqs.table_read(0xFFC, &mut buf[..8]).is_err(),
            "unaligned qword"
        );
    }

    #[test]
    fn irq_info_per_index() {
        let irqs = Interrupts::new(32);
        let desc = |i| irqs.irq_desc(i).expect("index");
        use info_flags::{AUTOMASKED, EVENTFD, MASKABLE, NORESIZE};
        assert_eq!(
            desc(index::INTX),
            IrqDesc {
                flags: EVENTFD | MASKABLE | AUTOMASKED,
                count: 1
            }
        );
        assert_eq!(desc(index::MSI).count, 0);
        assert_eq!(desc(index::MSIX).count, 32);
        assert_eq!(desc(index::MSIX).flags & NORESIZE, 0);
        assert_eq!(desc(index::ERR).count, 1);
        assert_eq!(desc(index::REQ).count, 1);
        assert_eq!(irqs.irq_desc(index::COUNT), None);
    }

    #[test]
    fn trigger_writes_the_vector_eventfd() {
        let mut irqs = Interrupts::new(32);
        let fds = msix_with_fds(&mut irqs, 4);
        assert_eq!(irqs.trigger(2).expect("trigger"), Delivery::Signalled);
        assert_eq!(take(&fds[2]), 1);
        irqs.trigger(2).expect("trigger");
        irqs.trigger(2).expect("trigger");
        assert_eq!(take(&fds[2]), 2);
        for (i, fd) in fds.iter().enumerate() {
            assert_eq!(take(fd), 0, "vector {i} stays quiet");
        }
        assert!(!irqs.table().is_pending(2));
        let err = irqs.trigger(32).expect_err("no vector 32");
        assert!(matches!(err, MsixError::NoVector(32)));
    }

    #[test]
    fn a_full_counter_is_not_an_error() {
        let mut irqs = Interrupts::new(32);
        let fds = msix_with_fds(&mut irqs, 1);
        rustix::io::write(&fds[0], &(u64::MAX - 1).to_ne_bytes()).expect("fill");
        assert_eq!(irqs.trigger(0).expect("trigger"), Delivery::Signalled);
        assert_eq!(take(&fds[0]), u64::MAX - 1);
    }

    #[test]
    fn a_failing_write_is_an_error_not_a_panic() {
        let mut irqs = Interrupts::new(32);
        let read_only = OwnedFd::from(std::fs::File::open("/dev/null").expect("open"));
        irqs.set_irqs(index::MSIX, EVENTFD_TRIGGER, 0, 1, &[], vec![read_only])
            .expect("set");
        irqs.set_msix_control(true, false).expect("enable");
        let err = irqs.trigger(0).expect_err("write to a read-only fd");
        assert_eq!(err.errno(), libc::EBADF);
    }

    /// Each way of masking a vector: trigger pends, unmasking fires once.
    #[test]
    fn a_masked_vector_pends_and_fires_on_unmask() {
        type Mask = fn(&mut Interrupts, bool);
        let table_bit: Mask = |irqs, on| table_write32(irqs, 16 * 3 + 12, u32::from(on));
        let function: Mask = |irqs, on| irqs.set_msix_control(true, on).expect("control");
        let vfio: Mask = |irqs, on| {
            let action = if on { ACTION_MASK } else { ACTION_UNMASK };
            irqs.set_irqs(index::MSIX, DATA_NONE | action, 3, 1, &[], vec![])
                .expect("mask");
        };
        let vfio_bool: Mask = |irqs, on| {
            let action = if on { ACTION_MASK } else { ACTION_UNMASK };
            irqs.set_irqs(index::MSIX, DATA_BOOL | action, 2, 2, &[0, 1], vec![])
                .expect("mask");
        };
        for (name, mask) in [
            ("table", table_bit),
            ("function", function),
            ("vfio", vfio),
            ("vfio bool", vfio_bool),
        ] {
            let mut irqs = Interrupts::new(32);
            let fds = msix_with_fds(&mut irqs, 4);
            mask(&mut irqs, true);
            assert_eq!(
                irqs.trigger(3).expect("trigger"),
                Delivery::Pending,
                "{name}"
            );
            assert_eq!(
                irqs.trigger(3).expect("trigger"),
                Delivery::Pending,
                "{name}"
            );
            assert_eq!(take(&fds[3]), 0, "{name}: nothing while masked");
            assert!(irqs.table().is_pending(3), "{name}");
            assert_eq!(pba64(&irqs, 0), 1 << 3, "{name}: the PBA shows it");
            mask(&mut irqs, false);
            assert_eq!(take(&fds[3]), 1, "{name}: one interrupt on unmask");
            assert!(!irqs.table().is_pending(3), "{name}");
            assert_eq!(pba64(&irqs, 0), 0, "{name}");
            assert_eq!(take(&fds[2]), 0, "{name}: vector 2 was never pending");
        }
    }

    #[test]
    fn a_vector_held_twice_waits_for_both() {
        let mut irqs = Interrupts::new(64);
        let fds = msix_with_fds(&mut irqs, 64);
        table_write32(&mut irqs, 16 * 40 + 12, 1);
        irqs.set_msix_control(true, true).expect("function mask");
        assert_eq!(irqs.trigger(40).expect("trigger"), Delivery::Pending);
        let mut high = [0; 4];
        irqs.pba_read(4, &mut high).expect("pba dword");
        assert_eq!(
            u32::from_le_bytes(high),
            1 << 8,
            "vector 40 in the high dword"
        );
        irqs.set_msix_control(true, false).expect("function unmask");
        assert_eq!(take(&fds[40]), 0, "still masked in the table");
        table_write32(&mut irqs, 16 * 40 + 12, 0);
        assert_eq!(take(&fds[40]), 1);
        // A PBA write changes nothing.
        irqs.set_msix_control(true, true).expect("mask");
        irqs.trigger(1).expect("trigger");
        irqs.pba_write(0, &0u64.to_le_bytes()).expect("pba write");
        assert_eq!(pba64(&irqs, 0), 1 << 1);
    }

    #[test]
    fn a_vector_without_an_eventfd_pends_until_it_gets_one() {
        let mut irqs = Interrupts::new(32);
        irqs.set_msix_control(true, false).expect("enable");
        assert_eq!(irqs.trigger(7).expect("trigger"), Delivery::Pending);
        assert!(irqs.table().is_pending(7));
        let (ours, given) = eventfd_pair();
        irqs.set_irqs(index::MSIX, EVENTFD_TRIGGER, 7, 1, &[], vec![given])
            .expect("set");
        assert_eq!(take(&ours), 1);
        assert!(!irqs.table().is_pending(7));
    }

    #[test]
    fn count_zero_disables_the_index() {
        for data_type in [DATA_EVENTFD, DATA_NONE] {
            let mut irqs = Interrupts::new(32);
            let fds = msix_with_fds(&mut irqs, 4);
            irqs.set_irqs(index::MSIX, DATA_NONE | ACTION_MASK, 1, 1, &[], vec![])
                .expect("mask");
            irqs.set_irqs(index::MSIX, data_type | ACTION_TRIGGER, 0, 0, &[], vec![])
                .expect("disable");
            for v in 0..4 {
                assert_eq!(irqs.trigger(v).expect("trigger"), Delivery::Pending);
                assert_eq!(take(&fds[usize::from(v)]), 0);
            }
            // New eventfds deliver what is pending: vector 1's VFIO mask went with the rest.
            let (ours, given) = eventfd_pair();
            irqs.set_irqs(index::MSIX, EVENTFD_TRIGGER, 1, 1, &[], vec![given])
                .expect("set");
            assert_eq!(take(&ours), 1);
        }
    }

    #[test]
    fn eventfd_data_without_descriptors_clears_those_vectors() {
        let mut irqs = Interrupts::new(32);
        let fds = msix_with_fds(&mut irqs, 4);
        irqs.set_irqs(index::MSIX, EVENTFD_TRIGGER, 1, 2, &[], vec![])
            .expect("clear 1 and 2");
        assert_eq!(irqs.trigger(0).expect("trigger"), Delivery::Signalled);
        assert_eq!(irqs.trigger(1).expect("trigger"), Delivery::Pending);
        assert_eq!(irqs.trigger(2).expect("trigger"), Delivery::Pending);
        assert_eq!(irqs.trigger(3).expect("trigger"), Delivery::Signalled);
        let counts: Vec<u64> = fds.iter().map(take).collect();
        assert_eq!(counts, vec![1, 0, 0, 1]);
    }

    #[test]
    fn loopback_triggers_signal_the_selected_eventfds() {
        let mut irqs = Interrupts::new(32);
        let fds = msix_with_fds(&mut irqs, 3);
        irqs.set_irqs(
            index::MSIX,
            DATA_BOOL | ACTION_TRIGGER,
            0,
            3,
            &[0, 1, 0],
            vec![],
        )
        .expect("bool trigger");
        irqs.set_irqs(index::MSIX, DATA_NONE | ACTION_TRIGGER, 2, 1, &[], vec![])
            .expect("none trigger");
        let counts: Vec<u64> = fds.iter().map(take).collect();
        assert_eq!(counts, vec![0, 1, 1]);
    }

    #[test]
    fn intx_when_msix_is_off() {
        let mut irqs = Interrupts::new(32);
        let (ours, given) = eventfd_pair();
        assert_eq!(
            irqs.trigger(0).expect("trigger"),
            Delivery::Pending,
            "no fd yet"
        );
        irqs.set_irqs(index::INTX, EVENTFD_TRIGGER, 0, 1, &[], vec![given])
            .expect("set");
        assert_eq!(take(&ours), 1, "the pending assertion fires with the fd");
        // Automasked: the next one waits for the client's unmask.
        assert_eq!(irqs.trigger(5).expect("trigger"), Delivery::Pending);
        assert_eq!(take(&ours), 0);
        let unmask = DATA_NONE | ACTION_UNMASK;
        irqs.set_irqs(index::INTX, unmask, 0, 1, &[], vec![])
            .expect("unmask");
        assert_eq!(take(&ours), 1);
        irqs.set_irqs(index::INTX, unmask, 0, 1, &[], vec![])
            .expect("unmask");
        assert_eq!(take(&ours), 0, "nothing pending");
        assert_eq!(irqs.trigger(31).expect("trigger"), Delivery::Signalled);
        assert_eq!(take(&ours), 1);
        irqs.set_irqs(index::INTX, unmask, 0, 1, &[], vec![])
            .expect("unmask");
        // Disabled in the command register: nothing.
        irqs.set_intx_disabled(true).expect("disable");
        assert_eq!(irqs.trigger(0).expect("trigger"), Delivery::Suppressed);
        irqs.set_intx_disabled(false).expect("enable");
        assert_eq!(take(&ours), 0);
        // With MSI-X on, INTx is not used.
        let fds = msix_with_fds(&mut irqs, 1);
        assert_eq!(irqs.trigger(0).expect("trigger"), Delivery::Signalled);
        assert_eq!((take(&ours), take(&fds[0])), (0, 1));
        // Back off: INTx again.
        irqs.set_msix_control(false, false).expect("disable");
        assert_eq!(irqs.trigger(0).expect("trigger"), Delivery::Signalled);
        assert_eq!(take(&ours), 1);
        // Masked by the client.
        irqs.set_irqs(index::INTX, unmask, 0, 1, &[], vec![])
            .expect("unmask");
        irqs.set_irqs(index::INTX, DATA_BOOL | ACTION_MASK, 0, 1, &[1], vec![])
            .expect("mask");
        assert_eq!(irqs.trigger(0).expect("trigger"), Delivery::Pending);
        irqs.set_irqs(index::INTX, DATA_BOOL | ACTION_UNMASK, 0, 1, &[0], vec![])
            .expect("false selects nothing");
        assert_eq!(take(&ours), 0);
        irqs.set_irqs(index::INTX, DATA_BOOL | ACTION_UNMASK, 0, 1, &[1], vec![])
            .expect("unmask");
        assert_eq!(take(&ours), 1);
    }

    #[test]
    fn err_and_req_eventfds() {
        let mut irqs = Interrupts::new(32);
        assert!(!irqs.request_release().expect("no fd"));
        let (ours, given) = eventfd_pair();
        irqs.set_irqs(index::REQ, EVENTFD_TRIGGER, 0, 1, &[], vec![given])
            .expect("set");
        assert!(irqs.request_release().expect("req"));
        assert_eq!(take(&ours), 1);
        assert!(!irqs.report_error().expect("no err fd"));
        irqs.set_irqs(index::REQ, EVENTFD_TRIGGER, 0, 0, &[], vec![])
            .expect("disable");
        assert!(!irqs.request_release().expect("gone"));
        let err = irqs
            .set_irqs(index::ERR, DATA_NONE | ACTION_MASK, 0, 1, &[], vec![])
            .expect_err("ERR takes only triggers");
        assert!(matches!(err, MsixError::Unsupported { .. }));
    }

    #[test]
    fn bad_set_irqs_arguments_are_einval_and_change_nothing() {
        let mut irqs = Interrupts::new(32);
        let fds = msix_with_fds(&mut irqs, 1);
        let one_fd = || vec![eventfd_pair().1];
        // index, flags, start, count, bools, fds
        type Case = (u32, u32, u32, u32, Vec<u8>, Vec<OwnedFd>);
        let cases: Vec<Case> = vec![
            (index::COUNT, EVENTFD_TRIGGER, 0, 1, vec![], one_fd()),
            (u32::MAX, DATA_NONE | ACTION_TRIGGER, 0, 0, vec![], vec![]),
            (index::MSI, EVENTFD_TRIGGER, 0, 1, vec![], one_fd()),
            (index::MSI, DATA_NONE | ACTION_TRIGGER, 0, 0, vec![], vec![]),
            (index::MSIX, 0, 0, 1, vec![], vec![]),
            (index::MSIX, ACTION_TRIGGER, 0, 1, vec![], vec![]),
            (index::MSIX, DATA_NONE, 0, 1, vec![], vec![]),
            (
                index::MSIX,
                DATA_NONE | DATA_BOOL | ACTION_MASK,
                0,
                1,
                vec![1],
                vec![],
            ),
            (
                index::MSIX,
                DATA_NONE | ACTION_MASK | ACTION_TRIGGER,
                0,
                1,
                vec![],
                vec![],
            ),
            (index::MSIX, EVENTFD_TRIGGER | 0x40, 0, 1, vec![], one_fd()),
            (index::MSIX, EVENTFD_TRIGGER, 32, 0, vec![], vec![]),
            (index::MSIX, EVENTFD_TRIGGER, 30, 3, vec![], vec![]),
            (
                index::MSIX,
                DATA_NONE | ACTION_MASK,
                u32::MAX,
                2,
                vec![],
                vec![],
            ),
            (
                index::MSIX,
                DATA_NONE | ACTION_MASK,
                0,
                u32::MAX,
                vec![],
                vec![],
            ),
            (index::MSIX, EVENTFD_TRIGGER, 0, 2, vec![], one_fd()),
            (
                index::MSIX,
                DATA_NONE | ACTION_TRIGGER,
                0,
                1,
                vec![],
                one_fd(),
            ),
            (
                index::MSIX,
                DATA_BOOL | ACTION_MASK,
                0,
                3,
                vec![1, 1],
                vec![],
            ),
            (
                index::MSIX,
                DATA_EVENTFD | ACTION_MASK,
                0,
                1,
                vec![],
                one_fd(),
            ),
            (index::INTX, EVENTFD_TRIGGER, 1, 1, vec![], one_fd()),
            (index::INTX, EVENTFD_TRIGGER, 0, 2, vec![], vec![]),
            (
                index::INTX,
                DATA_EVENTFD | ACTION_UNMASK,
                0,
                1,
                vec![],
                one_fd(),
            ),
        ];
        for (i, (index, flags, start, count, data, fds)) in cases.into_iter().enumerate() {
            let err = irqs
                .set_irqs(index, flags, start, count, &data, fds)
                .expect_err("bad arguments");
            assert_eq!(err.errno(), libc::EINVAL, "case {i}: {err}");
        }
        // Vector 0 kept its eventfd and nothing got masked.
        assert_eq!(irqs.trigger(0).expect("trigger"), Delivery::Signalled);
        assert_eq!(take(&fds[0]), 1);
        assert_eq!(irqs.trigger(1).expect("trigger"), Delivery::Pending);
    }

    #[test]
    fn reset_forgets_everything() {
        let mut irqs = Interrupts::new(32);
        let fds = msix_with_fds(&mut irqs, 2);
        table_write32(&mut irqs, 12, 1);
        irqs.trigger(0).expect("trigger");
        irqs.reset();
        assert!(!irqs.msix_enabled());
        assert!(!irqs.table().is_pending(0));
        assert!(!irqs.table().is_masked(0));
        irqs.set_msix_control(true, false).expect("enable");
        assert_eq!(
            irqs.trigger(1).expect("trigger"),
            Delivery::Pending,
            "fds closed"
        );
        assert_eq!(take(&fds[1]), 0);
    }
}
