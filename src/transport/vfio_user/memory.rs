//! Guest memory: the DMA regions a VMM maps (DMA_MAP with a file descriptor and its offset)
//! and unmaps, and every access the device makes to them, each checked against the regions
//! of the moment.
//!
//! Regions are kept by IOVA (for a VM, its guest physical address), sorted and disjoint. The
//! map may change between any two messages, so nothing above keeps a pointer or a region:
//! every access looks its addresses up again, and [`GuestMemory::generation`] says whether a
//! check made earlier still holds.

use std::os::fd::OwnedFd;

use crate::nvme::Status;
use crate::sys::mmap::{AccessError, MapProt, Mapping};

/// Regions one client may have mapped at once. QEMU maps all of RAM in a few regions, then
/// maps and unmaps small ROM and MMIO windows while the guest boots.
pub const MAX_REGIONS: usize = 4096;

/// What the device may do with a region: the DMA_MAP flags (libvfio-user's values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Prot(u32);

impl Prot {
    /// No access, or for a check: mapped with a file, whatever its protection.
    pub const NONE: Self = Self(0);
    /// VFIO_USER_F_DMA_REGION_READ: the device may read the region.
    pub const READ: Self = Self(1);
    /// VFIO_USER_F_DMA_REGION_WRITE: the device may write the region.
    pub const WRITE: Self = Self(2);
    pub const READ_WRITE: Self = Self(3);

    /// The protection of DMA_MAP `flags`; `None` if a bit is neither READ nor WRITE.
    pub const fn from_dma_flags(flags: u32) -> Option<Self> {
        if flags & !Self::READ_WRITE.0 == 0 {
            Some(Self(flags))
        } else {
            None
        }
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every access of `other` is allowed by `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for Prot {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Why a map, an unmap or an access failed. An access that fails may have copied the bytes
/// before the address that failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("region {iova:#x}+{size:#x} is empty or reaches the end of the address space")]
    BadRange { iova: u64, size: u64 },
    #[error("region {iova:#x}+{size:#x} overlaps a mapped region")]
    Overlap { iova: u64, size: u64 },
    #[error("too many DMA regions (at most {MAX_REGIONS})")]
    TooManyRegions,
    #[error("no region is mapped at exactly {iova:#x}+{size:#x}")]
    NoSuchRegion { iova: u64, size: u64 },
    #[error("cannot map the region's file")]
    Mmap(#[source] std::io::Error),
    #[error("guest address {gpa:#x} is not mapped")]
    Unmapped { gpa: u64 },
    #[error("guest address {gpa:#x} is in a region without a file")]
    NoBacking { gpa: u64 },
    #[error("guest address {gpa:#x} is in a region the device may not read")]
    NotReadable { gpa: u64 },
    #[error("guest address {gpa:#x} is in a region the device may not write")]
    NotWritable { gpa: u64 },
    #[error("guest address {gpa:#x} is not aligned for its access")]
    Misaligned { gpa: u64 },
    /// The VMM truncated the region's file under our mapping: the region is dead to us.
    #[error("guest address {gpa:#x} is in a region whose file the VMM shrank")]
    FileShrank { gpa: u64 },
}

impl MemoryError {
    /// The status of a command whose data or queue memory failed: every such failure is the
    /// host's address, a Data Transfer Error (NVMe Base 2.0, Figure 99).
    pub fn to_status(&self) -> Status {
        Status::DATA_TRANSFER_ERROR
    }

    /// The errno of a DMA_MAP or DMA_UNMAP reply that failed this way.
    pub fn to_errno(&self) -> i32 {
        match self {
            Self::BadRange { .. } => libc::EINVAL,
            Self::Overlap { .. } => libc::EEXIST,
            Self::TooManyRegions => libc::ENOSPC,
            Self::NoSuchRegion { .. } => libc::ENOENT,
            Self::Mmap(err) => err.raw_os_error().unwrap_or(libc::EINVAL),
            Self::Unmapped { .. }
            | Self::NoBacking { .. }
            | Self::NotReadable { .. }
            | Self::NotWritable { .. }
            | Self::Misaligned { .. }
            | Self::FileShrank { .. } => libc::EFAULT,
        }
    }
}

/// One DMA region.
#[derive(Debug)]
struct Region {
    iova: u64,
    size: u64,
    prot: Prot,
    /// `None` for a map without a file (QEMU's BIOS ROM): recorded, never accessed.
    mapping: Option<Mapping>,
}

impl Region {
    /// One past the last address; does not overflow (checked at map time).
    fn end(&self) -> u64 {
        self.iova + self.size
    }
}

/// The DMA regions of one client.
#[derive(Debug, Default)]
pub struct GuestMemory {
    /// Sorted by `iova`, disjoint.
    regions: Vec<Region>,
    generation: u64,
}

impl GuestMemory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the region `iova..iova + size`, mapping `size` bytes of the file from its offset
    /// when there is one. Fails if the range is empty or wraps, overlaps a region, would be
    /// one too many, or the file cannot be mapped (shorter than offset plus size included).
    pub fn map(
        &mut self,
        iova: u64,
        size: u64,
        prot: Prot,
        backing: Option<(OwnedFd, u64)>,
    ) -> Result<(), MemoryError> {
        let bad = MemoryError::BadRange { iova, size };
        let (Some(end), Ok(len)) = (iova.checked_add(size), usize::try_from(size)) else {
            return Err(bad);
        };
        if size == 0 {
            return Err(bad);
        }
        let at = self.regions.partition_point(|r| r.iova < iova);
        let overlaps_before = at > 0 && self.regions[at - 1].end() > iova;
        let overlaps_after = self.regions.get(at).is_some_and(|r| r.iova < end);
        if overlaps_before || overlaps_after {
            return Err(MemoryError::Overlap { iova, size });
        }
        if self.regions.len() >= MAX_REGIONS {
            return Err(MemoryError::TooManyRegions);
        }
        let mapping = match backing {
            Some((fd, offset)) => {
                let map_prot = if prot.contains(Prot::WRITE) {
                    MapProt::ReadWrite
                } else {
                    MapProt::ReadOnly
                };
                // The descriptor is closed when this returns: the mapping keeps the pages.
                Some(Mapping::new(&fd, offset, len, map_prot).map_err(MemoryError::Mmap)?)
            }
            None => None,
        };
        self.regions.insert(
            at,
            Region {
                iova,
                size,
                prot,
                mapping,
            },
        );
        Ok(())
    }

    /// Removes the region mapped at exactly `iova..iova + size` (as VFIO: a region is never
    /// split) and starts a new generation.
    pub fn unmap(&mut self, iova: u64, size: u64) -> Result<(), MemoryError> {
        let at = self
            .regions
            .binary_search_by_key(&iova, |r| r.iova)
            .ok()
            .filter(|&at| self.regions[at].size == size)
            .ok_or(MemoryError::NoSuchRegion { iova, size })?;
        self.regions.remove(at);
        self.generation += 1;
        Ok(())
    }

    /// Removes every region (DMA_UNMAP with ALL, a client that left) and starts a new
    /// generation.
    pub fn unmap_all(&mut self) {
        self.regions.clear();
        self.generation += 1;
    }

    /// Counts unmaps: an address checked in an earlier generation may be gone.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Regions mapped, with or without a file.
    pub fn region_count(&self) -> usize {
        self.regions.len()
    }

    /// Checks that `gpa..gpa + len` is mapped, with files, and allows `prot` (`Prot::NONE`:
    /// only mapped); it may span adjacent regions.
    pub fn check(&self, gpa: u64, len: u64, prot: Prot) -> Result<(), MemoryError> {
        self.walk(gpa, len, prot, |_, _, _, _| Ok(()))
    }

    /// Copies `buf.len()` bytes from `gpa`, across adjacent readable regions.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = u64::try_from(buf.len()).map_err(|_| MemoryError::Unmapped { gpa })?;
        self.walk(gpa, len, Prot::READ, |mapping, offset, done, chunk| {
            mapping.read_at(offset, &mut buf[done..done + chunk])
        })
    }

    /// Copies `data` to `gpa`, across adjacent writable regions.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let len = u64::try_from(data.len()).map_err(|_| MemoryError::Unmapped { gpa })?;
        self.walk(gpa, len, Prot::WRITE, |mapping, offset, done, chunk| {
            mapping.write_at(offset, &data[done..done + chunk])
        })
    }

    /// One aligned 32-bit load (little-endian) at `gpa`, which must be a multiple of 4.
    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let (mapping, offset) = self.dword(gpa, Prot::READ)?;
        mapping.load_u32(offset).map_err(|e| access_error(e, gpa))
    }

    /// One aligned 32-bit store (little-endian) at `gpa`, which must be a multiple of 4: the
    /// guest sees the four bytes change at once.
    pub fn write_u32(&self, gpa: u64, value: u32) -> Result<(), MemoryError> {
        let (mapping, offset) = self.dword(gpa, Prot::WRITE)?;
        mapping
            .store_u32(offset, value)
            .map_err(|e| access_error(e, gpa))
    }

    /// The region holding `gpa`.
    fn region(&self, gpa: u64) -> Option<&Region> {
        let at = self.regions.partition_point(|r| r.iova <= gpa);
        let region = self.regions.get(at.checked_sub(1)?)?;
        (gpa < region.end()).then_some(region)
    }

    /// The mapping and offset of the dword at `gpa`, with `prot` allowed.
    fn dword(&self, gpa: u64, prot: Prot) -> Result<(&Mapping, usize), MemoryError> {
        if gpa % 4 != 0 {
            return Err(MemoryError::Misaligned { gpa });
        }
        let region = self.region(gpa).ok_or(MemoryError::Unmapped { gpa })?;
        let mapping = allowed(region, gpa, prot)?;
        if gpa.checked_add(4).is_none_or(|end| end > region.end()) {
            // Only a region whose size is not a multiple of 4 ends inside a dword.
            return Err(MemoryError::Misaligned { gpa });
        }
        Ok((mapping, offset_in(region, gpa)))
    }

    /// Calls `f(mapping, offset in mapping, bytes done, chunk length)` for each region piece
    /// of `gpa..gpa + len`, in order, after checking the piece.
    fn walk(
        &self,
        gpa: u64,
        len: u64,
        prot: Prot,
        mut f: impl FnMut(&Mapping, usize, usize, usize) -> Result<(), AccessError>,
    ) -> Result<(), MemoryError> {
        if len == 0 {
            return Ok(());
        }
        let end = gpa.checked_add(len).ok_or(MemoryError::Unmapped { gpa })?;
        let mut at = gpa;
        let mut done = 0usize;
        while at < end {
            let region = self.region(at).ok_or(MemoryError::Unmapped { gpa: at })?;
            let mapping = allowed(region, at, prot)?;
            let chunk_end = end.min(region.end());
            // Both fit: the region's size fits a usize (checked at map time).
            let chunk =
                usize::try_from(chunk_end - at).map_err(|_| MemoryError::Unmapped { gpa })?;
            f(mapping, offset_in(region, at), done, chunk).map_err(|e| access_error(e, at))?;
            done += chunk;
            at = chunk_end;
        }
        Ok(())
    }
}

/// The mapping of `region` if it has one and allows `prot`.
fn allowed(region: &Region, gpa: u64, prot: Prot) -> Result<&Mapping, MemoryError> {
    let mapping = region
        .mapping
        .as_ref()
        .ok_or(MemoryError::NoBacking { gpa })?;
    if prot.contains(Prot::READ) && !region.prot.contains(Prot::READ) {
        return Err(MemoryError::NotReadable { gpa });
    }
    if prot.contains(Prot::WRITE) && !region.prot.contains(Prot::WRITE) {
        return Err(MemoryError::NotWritable { gpa });
    }
    Ok(mapping)
}

/// Where `gpa` (inside `region`) is in the region's mapping; fits since the size does.
fn offset_in(region: &Region, gpa: u64) -> usize {
    usize::try_from(gpa - region.iova).unwrap_or(usize::MAX)
}

/// A refused access of a mapping, which the checks before it make unexpected.
fn access_error(err: AccessError, gpa: u64) -> MemoryError {
    match err {
        AccessError::Misaligned { .. } => MemoryError::Misaligned { gpa },
        AccessError::ReadOnly => MemoryError::NotWritable { gpa },
        AccessError::OutOfBounds { .. } => MemoryError::Unmapped { gpa },
        AccessError::FileShrank => MemoryError::FileShrank { gpa },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sys::mmap::memfd;

    /// Guest RAM in a memfd: `GuestMemory` maps it through DMA_MAP as a VMM would, and the
    /// test is the guest through its own mapping of the same file.
    pub(crate) struct Guest {
        pub mem: GuestMemory,
        pub ram: Mapping,
        /// The guest physical address of the file's first byte.
        pub base: u64,
    }

    impl Guest {
        /// `pages` pages at guest address `base`, one read-write region.
        pub(crate) fn new(base: u64, pages: usize) -> Self {
            let len = pages * 4096;
            let fd = memfd(len as u64).expect("memfd");
            let ram = Mapping::new(&fd, 0, len, MapProt::ReadWrite).expect("map");
            let mut mem = GuestMemory::new();
            mem.map(base, len as u64, Prot::READ_WRITE, Some((fd, 0)))
                .expect("dma map");
            Self { mem, ram, base }
        }

        pub(crate) fn poke(&self, gpa: u64, data: &[u8]) {
            let offset = usize::try_from(gpa - self.base).expect("offset");
            self.ram.write_at(offset, data).expect("guest write");
        }

        pub(crate) fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
            let offset = usize::try_from(gpa - self.base).expect("offset");
            let mut buf = vec![0; len];
            self.ram.read_at(offset, &mut buf).expect("guest read");
            buf
        }
    }

    fn file(len: usize) -> (OwnedFd, Mapping) {
        let fd = memfd(len as u64).expect("memfd");
        let guest = Mapping::new(&fd, 0, len, MapProt::ReadWrite).expect("map");
        (fd, guest)
    }

    #[test]
    fn maps_are_sorted_and_overlaps_refused() {
        let mut mem = GuestMemory::new();
        mem.map(0x10_000, 0x1000, Prot::READ, None).expect("map");
        mem.map(0x0, 0x1000, Prot::READ, None).expect("map below");
        mem.map(0x20_000, 0x1000, Prot::READ, None)
            .expect("map above");
        mem.map(0x11_000, 0x1000, Prot::READ, None)
            .expect("adjacent");
        for (iova, size) in [
            (0x10_000, 0x1000),
            (0xF_FFF, 2),
            (0x11_FFF, 1),
            (0x8000, 0x10_000),
            (0x0, u64::MAX / 2),
        ] {
            let err = mem.map(iova, size, Prot::READ, None).expect_err("overlap");
            assert!(matches!(err, MemoryError::Overlap { .. }), "{err}");
            assert_eq!(err.to_errno(), libc::EEXIST);
        }
        // Ends are exclusive and must fit: the last page of the 64-bit space is out of reach
        // (no machine has physical addresses there).
        for (iova, size) in [(0x50_000, 0), (u64::MAX, 2), (u64::MAX - 0xFFF, 0x1000)] {
            let err = mem
                .map(iova, size, Prot::READ, None)
                .expect_err("bad range");
            assert!(matches!(err, MemoryError::BadRange { .. }), "{err}");
            assert_eq!(err.to_errno(), libc::EINVAL);
        }
        mem.map(u64::MAX - 0x1FFF, 0x1000, Prot::READ, None)
            .expect("the last page that can be mapped");
        assert_eq!(mem.region_count(), 5);
        let iovas: Vec<u64> = mem.regions.iter().map(|r| r.iova).collect();
        assert_eq!(iovas, [0, 0x10_000, 0x11_000, 0x20_000, u64::MAX - 0x1FFF]);
    }

    #[test]
    fn unmap_needs_the_exact_region_and_counts_generations() {
        let mut mem = GuestMemory::new();
        mem.map(0x10_000, 0x2000, Prot::READ_WRITE, None)
            .expect("map");
        assert_eq!(mem.generation(), 0);
        for (iova, size) in [(0x10_000, 0x1000), (0x11_000, 0x1000), (0x0, 0x100_000)] {
            let err = mem.unmap(iova, size).expect_err("not exact");
            assert!(matches!(err, MemoryError::NoSuchRegion { .. }), "{err}");
            assert_eq!(err.to_errno(), libc::ENOENT);
        }
        assert_eq!(mem.generation(), 0, "a refused unmap changes nothing");
        mem.unmap(0x10_000, 0x2000).expect("exact");
        assert_eq!(mem.generation(), 1);
        assert_eq!(mem.region_count(), 0);
        assert!(mem.unmap(0x10_000, 0x2000).is_err(), "already gone");
        // The space is free again, with the rules of any map.
        mem.map(0x10_000, 0x1000, Prot::READ, None).expect("remap");
        mem.map(0x11_000, 0x1000, Prot::READ, None).expect("remap");
        mem.unmap_all();
        assert_eq!(mem.region_count(), 0);
        assert_eq!(mem.generation(), 2);
    }

    #[test]
    fn too_many_regions_are_refused() {
        let mut mem = GuestMemory::new();
        for i in 0..MAX_REGIONS as u64 {
            mem.map(i * 0x1000, 0x1000, Prot::READ, None).expect("map");
        }
        let err = mem
            .map(MAX_REGIONS as u64 * 0x1000, 0x1000, Prot::READ, None)
            .expect_err("one too many");
        assert!(matches!(err, MemoryError::TooManyRegions), "{err}");
        assert_eq!(err.to_errno(), libc::ENOSPC);
        mem.unmap(0, 0x1000).expect("unmap one");
        mem.map(MAX_REGIONS as u64 * 0x1000, 0x1000, Prot::READ, None)
            .expect("room again");
    }

    #[test]
    fn a_file_too_short_for_its_region_is_refused() {
        let (fd, _guest) = file(0x2000);
        let mut mem = GuestMemory::new();
        let err = mem
            .map(0x0, 0x2000, Prot::READ, Some((fd, 0x1000)))
            .expect_err("past the end of the file");
        assert!(matches!(err, MemoryError::Mmap(_)), "{err}");
        assert_eq!(err.to_errno(), libc::EINVAL);
        assert_eq!(mem.region_count(), 0);
    }

    #[test]
    fn reads_and_writes_reach_the_guest_and_span_adjacent_regions() {
        // One file, two regions: the guest's pages 0-1 at 0x10_000, its pages 2-3 right after
        // (from file offset 0x2000), and page 4 far away.
        let (fd, guest) = file(0x5000);
        let dup = || fd.try_clone().expect("dup");
        let mut mem = GuestMemory::new();
        mem.map(0x10_000, 0x2000, Prot::READ_WRITE, Some((dup(), 0)))
            .expect("map");
        mem.map(0x12_000, 0x2000, Prot::READ_WRITE, Some((dup(), 0x2000)))
            .expect("map");
        mem.map(0x40_000, 0x1000, Prot::READ_WRITE, Some((dup(), 0x4000)))
            .expect("map");

        let data: Vec<u8> = (0..0x1800u32).map(|i| (i % 251) as u8).collect();
        mem.write(0x11_800, &data)
            .expect("write across the boundary");
        let mut seen = vec![0; data.len()];
        guest.read_at(0x1800, &mut seen).expect("guest read");
        assert_eq!(seen, data);

        guest.write_at(0x1FF0, &[7; 0x20]).expect("guest write");
        let mut buf = [0u8; 0x20];
        mem.read(0x11_FF0, &mut buf)
            .expect("read across the boundary");
        assert_eq!(buf, [7; 0x20]);
        mem.check(0x10_000, 0x4000, Prot::READ_WRITE)
            .expect("both regions");

        let err = mem.read(0x13_FF0, &mut buf).expect_err("runs off the end");
        assert!(
            matches!(err, MemoryError::Unmapped { gpa: 0x14_000 }),
            "{err}"
        );
        assert_eq!(err.to_status(), Status::DATA_TRANSFER_ERROR);
        assert_eq!(err.to_errno(), libc::EFAULT);
        assert!(mem.read(0x3F_FFF, &mut buf).is_err(), "starts outside");
        assert!(mem.read(u64::MAX - 4, &mut buf).is_err(), "wraps");
        mem.read(0x99_000, &mut [])
            .expect("an empty read is no access");

        mem.write_u32(0x40_FFC, 0xA1B2_C3D4).expect("last dword");
        let mut dword = [0u8; 4];
        guest.read_at(0x4FFC, &mut dword).expect("guest read");
        assert_eq!(u32::from_le_bytes(dword), 0xA1B2_C3D4);
        assert_eq!(mem.read_u32(0x40_FFC).expect("load"), 0xA1B2_C3D4);
        for gpa in [0x40_FFE, 0x40_001] {
            let err = mem.read_u32(gpa).expect_err("misaligned");
            assert!(matches!(err, MemoryError::Misaligned { .. }), "{err}");
        }
        assert!(matches!(
            mem.write_u32(0x41_000, 0),
            Err(MemoryError::Unmapped { gpa: 0x41_000 })
        ));
    }

    #[test]
    fn a_region_without_a_file_is_refused_for_access() {
        let (fd, _guest) = file(0x1000);
        let mut mem = GuestMemory::new();
        mem.map(0xF_0000, 0x1000, Prot::READ, None).expect("ROM");
        mem.map(0xF_1000, 0x1000, Prot::READ, Some((fd, 0)))
            .expect("RAM");
        let mut buf = [0u8; 16];
        let err = mem.read(0xF_0000, &mut buf).expect_err("no file");
        assert!(
            matches!(err, MemoryError::NoBacking { gpa: 0xF_0000 }),
            "{err}"
        );
        assert!(mem.read_u32(0xF_0FFC).is_err());
        assert!(mem.check(0xF_0000, 1, Prot::NONE).is_err());
        let err = mem.read(0xF_0FF8, &mut buf).expect_err("starts in the ROM");
        assert!(matches!(err, MemoryError::NoBacking { .. }), "{err}");
        mem.read(0xF_1000, &mut buf)
            .expect("the region with a file");
    }

    #[test]
    fn protections_are_enforced() {
        let (fd, guest) = file(0x3000);
        let dup = || fd.try_clone().expect("dup");
        let mut mem = GuestMemory::new();
        mem.map(0x0, 0x1000, Prot::READ, Some((dup(), 0)))
            .expect("read-only");
        mem.map(0x1000, 0x1000, Prot::WRITE, Some((dup(), 0x1000)))
            .expect("write-only");
        mem.map(0x2000, 0x1000, Prot::NONE, Some((dup(), 0x2000)))
            .expect("no access");
        guest.write_at(0, &[9; 8]).expect("guest write");

        let err = mem.write(0x10, &[1; 8]).expect_err("read-only");
        assert!(
            matches!(err, MemoryError::NotWritable { gpa: 0x10 }),
            "{err}"
        );
        assert!(mem.write_u32(0x10, 1).is_err());
        let mut buf = [0u8; 8];
        mem.read(0x0, &mut buf).expect("readable");
        assert_eq!(buf, [9; 8], "the refused write changed nothing");

        let err = mem.read(0x1000, &mut buf).expect_err("write-only");
        assert!(matches!(err, MemoryError::NotReadable { .. }), "{err}");
        mem.write(0x1000, &[5; 8]).expect("writable");
        let mut seen = [0u8; 8];
        guest.read_at(0x1000, &mut seen).expect("guest read");
        assert_eq!(seen, [5; 8]);

        assert!(mem.read(0x2000, &mut buf).is_err());
        assert!(mem.write(0x2000, &buf).is_err());
        mem.check(0x2000, 8, Prot::NONE)
            .expect("mapped all the same");
        assert!(mem.check(0x0, 0x2000, Prot::READ).is_err(), "half readable");
        assert_eq!(Prot::from_dma_flags(3), Some(Prot::READ_WRITE));
        assert_eq!(Prot::from_dma_flags(4), None);
        assert_eq!((Prot::READ | Prot::WRITE).bits(), 3);
    }

    #[test]
    fn an_unmapped_region_is_gone_for_every_access() {
        let mut g = Guest::new(0x10_0000, 2);
        g.mem.write(0x10_0000, &[1; 64]).expect("write");
        g.poke(0x10_1000, &[2; 4]);
        assert_eq!(g.mem.read_u32(0x10_1000).expect("load"), 0x0202_0202);
        g.mem.unmap(0x10_0000, 0x2000).expect("unmap");
        let mut buf = [0u8; 64];
        assert!(matches!(
            g.mem.read(0x10_0000, &mut buf),
            Err(MemoryError::Unmapped { .. })
        ));
        assert!(g.mem.write_u32(0x10_0000, 1).is_err());
        // The guest's own mapping still holds what was written before.
        assert_eq!(g.peek(0x10_0000, 64), vec![1; 64]);
    }
}
