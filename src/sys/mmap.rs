//! A shared file mapping (`mmap` with `MAP_SHARED`) and safe, bounds-checked access to it: how
//! vfio-user reaches a VM's memory, which the VMM hands over as file descriptors.
//!
//! The memory behind a [`Mapping`] is shared with another process (a VMM, and the guest's
//! vCPUs through it) that may change any byte at any time. So no Rust reference to it is ever
//! made: bytes are copied in and out through raw pointers, doorbells and completion dwords are
//! single aligned volatile accesses, and no pointer leaves this file. What is copied out is
//! only bytes: callers validate after copying, never before.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use rustix::fs::{FileType, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// How a mapping may be accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapProt {
    /// `PROT_READ`: stores are refused (the file may be open read-only).
    ReadOnly,
    /// `PROT_READ | PROT_WRITE`.
    ReadWrite,
}

/// Why an access to a mapping was refused; nothing was read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("access {offset:#x}+{len:#x} is outside the {size:#x} bytes mapped")]
    OutOfBounds {
        offset: usize,
        len: usize,
        size: usize,
    },
    #[error("4-byte access at {offset:#x} is not aligned")]
    Misaligned { offset: usize },
    #[error("the mapping is read-only")]
    ReadOnly,
    /// The file shrank under the mapping (SIGBUS, absorbed): what was read is not the file's,
    /// and the mapping refuses every access from now on.
    #[error("the mapped file shrank under the mapping")]
    FileShrank,
}

/// One `MAP_SHARED` mapping of `len` bytes of a file from `offset`, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    /// The first byte asked for (`offset` in the file).
    start: NonNull<u8>,
    /// Bytes asked for.
    len: usize,
    /// What `mmap` returned, `offset` rounded down to a page.
    base: NonNull<c_void>,
    /// Bytes `mmap` mapped: `len` plus the rounding.
    base_len: usize,
    prot: MapProt,
    /// An access faulted because the file shrank: no access is trusted any more.
    shrunk: AtomicBool,
}

// SAFETY: a `Mapping` owns its pages; nothing about it is tied to the thread that made it, and
// munmap may run on any thread.
unsafe impl Send for Mapping {}

// SAFETY: every access through `&Mapping` is a raw copy or a volatile access to memory that
// another process modifies concurrently anyway; no reference into the pages exists, so two of
// our threads racing on a byte see no worse than the guest's own vCPUs make them see.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset` (any offset: it is rounded down to a page for
    /// `mmap` and the rounding hidden). A regular file (memfd, tmpfs, hugetlbfs) must hold the
    /// whole range, so no access ever lands past its end (SIGBUS).
    pub fn new(fd: impl AsFd, offset: u64, len: usize, prot: MapProt) -> io::Result<Self> {
        let fd = fd.as_fd();
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
        if len == 0 {
            return Err(invalid("empty mapping"));
        }
        let stat = rustix::fs::fstat(fd)?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile {
            let size = u64::try_from(stat.st_size).unwrap_or(0);
            let end = u64::try_from(len).ok().and_then(|l| offset.checked_add(l));
            if end.is_none_or(|end| end > size) {
                return Err(invalid("mapping extends past the end of the file"));
            }
        }
        if let Err(err) = super::sigbus::install() {
            tracing::warn!(%err, "cannot catch SIGBUS: a file that shrinks under a mapping kills the process");
        }
        let page = page_size();
        let delta = usize::try_from(offset % page).map_err(|_| invalid("offset"))?;
        let base_len = len
            .checked_add(delta)
            .ok_or_else(|| invalid("mapping too large"))?;
        let flags = match prot {
            MapProt::ReadOnly => ProtFlags::READ,
            MapProt::ReadWrite => ProtFlags::READ | ProtFlags::WRITE,
        };
        // SAFETY: a null hint lets the kernel choose fresh addresses, so no existing memory of
        // this process is replaced; the pages are reached only through this owner, by raw
        // pointers, and unmapped once in `drop`.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                base_len,
                flags,
                MapFlags::SHARED,
                fd,
                offset - (offset % page),
            )?
        };
        let base = NonNull::new(base).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // SAFETY: `delta < base_len`, so the result is inside the mapping just made.
        let start = unsafe { base.cast::<u8>().add(delta) };
        Ok(Self {
            start,
            len,
            base,
            base_len,
            prot,
            shrunk: AtomicBool::new(false),
        })
    }

    /// Bytes mapped (as asked, without the page rounding).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty mapping cannot be made.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn prot(&self) -> MapProt {
        self.prot
    }

    /// Copies `buf.len()` bytes from `offset` out of the mapping.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), AccessError> {
        self.check(offset, buf.len())?;
        // SAFETY: `offset + buf.len() <= self.len` (checked), so the source is inside the
        // mapping, which lives as long as `self`; `buf` is our own memory, never inside a
        // mapping (no reference to one exists), so the two do not overlap.
        self.guard(|| unsafe {
            std::ptr::copy_nonoverlapping(
                self.start.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        })
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), AccessError> {
        self.check_writable()?;
        self.check(offset, data.len())?;
        // SAFETY: the destination is inside the mapping (checked) and writable (PROT_WRITE,
        // checked); `data` is our own memory and does not overlap it.
        self.guard(|| unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.start.as_ptr().add(offset),
                data.len(),
            );
        })
    }

    /// One aligned 32-bit volatile load at `offset` (a doorbell, a shadow doorbell).
    pub fn load_u32(&self, offset: usize) -> Result<u32, AccessError> {
        let ptr = self.dword(offset)?;
        let mut value = 0;
        // SAFETY: `ptr` is 4-byte aligned and its 4 bytes are inside the mapping (`dword`).
        self.guard(|| value = u32::from_le(unsafe { ptr.read_volatile() }))?;
        Ok(value)
    }

    /// One aligned 32-bit volatile store at `offset`: the other side sees all four bytes
    /// change at once (how a completion's phase bit is published).
    pub fn store_u32(&self, offset: usize, value: u32) -> Result<(), AccessError> {
        self.check_writable()?;
        let ptr = self.dword(offset)?;
        // SAFETY: `ptr` is 4-byte aligned, inside the mapping (`dword`) and writable.
        self.guard(|| unsafe { ptr.write_volatile(value.to_le()) })
    }

    /// Runs an access of the pages with SIGBUS absorbed (see `sys::sigbus`): a mapping whose
    /// file shrank fails this access and every later one.
    fn guard(&self, access: impl FnOnce()) -> Result<(), AccessError> {
        if self.shrunk.load(Ordering::Relaxed) {
            return Err(AccessError::FileShrank);
        }
        let ((), faulted) = super::sigbus::guarded(access);
        if faulted {
            self.shrunk.store(true, Ordering::Relaxed);
            return Err(AccessError::FileShrank);
        }
        Ok(())
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), AccessError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(AccessError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    fn check_writable(&self) -> Result<(), AccessError> {
        match self.prot {
            MapProt::ReadWrite => Ok(()),
            MapProt::ReadOnly => Err(AccessError::ReadOnly),
        }
    }

    /// The aligned dword at `offset`, checked to lie inside the mapping.
    fn dword(&self, offset: usize) -> Result<*mut u32, AccessError> {
        self.check(offset, 4)?;
        // The host address must be aligned, not only the offset: the file offset the mapping
        // starts at need not be.
        let addr = self.start.as_ptr().addr().wrapping_add(offset);
        if addr % 4 != 0 {
            return Err(AccessError::Misaligned { offset });
        }
        // SAFETY: `offset + 4 <= self.len` (checked), so the pointer stays inside the mapping.
        Ok(unsafe { self.start.as_ptr().add(offset) }.cast::<u32>())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` and `base_len` are exactly what mmap returned and mapped; no pointer
        // into the pages outlives this call (none leaves this type).
        if let Err(err) = unsafe { rustix::mm::munmap(self.base.as_ptr(), self.base_len) } {
            tracing::warn!(%err, len = self.base_len, "munmap failed");
        }
    }
}

/// Orders every store made before it (copies included) before every store after it, for
/// another process reading the same memory: a completion's dwords 0-2 before dword 3 with its
/// phase bit.
#[inline]
pub fn release_fence() {
    fence(Ordering::Release);
}

/// Orders every load after it after every load before it: entries after the shadow doorbell
/// that said they are there.
#[inline]
pub fn acquire_fence() {
    fence(Ordering::Acquire);
}

/// Orders every store before it before every load after it (`mfence` on x86): an EventIdx
/// published before the shadow doorbell is read again, against a guest that stores its shadow
/// doorbell, then fences, then reads the EventIdx (Linux's `nvme_dbbuf_update_and_check_event`),
/// so at least one of the two sides sees the other's store.
#[inline]
pub fn full_fence() {
    fence(Ordering::SeqCst);
}

/// An anonymous memory file of `len` bytes (zeroes), closed on exec: guest memory in tests,
/// a doorbell page a VMM can map. Its size is sealed: whoever else gets the descriptor (a VMM)
/// cannot shrink it under our own mapping.
pub fn memfd(len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("nvmf-tgt", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_memfds_cannot_shrink() {
        let fd = memfd(8192).expect("memfd");
        assert!(rustix::fs::ftruncate(&fd, 4096).is_err(), "size sealed");
        assert!(rustix::fs::ftruncate(&fd, 16384).is_err(), "size sealed");
    }

    #[test]
    fn a_file_that_shrinks_under_a_mapping_fails_accesses_instead_of_killing_us() {
        // The VMM's file: no seals, so it can truncate it whenever it likes.
        let fd = rustix::fs::memfd_create("vmm-ram", MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&fd, 3 * 4096).expect("size");
        let map = Mapping::new(&fd, 0, 3 * 4096, MapProt::ReadWrite).expect("map");
        map.write_at(2 * 4096, b"before").expect("write");
        rustix::fs::ftruncate(&fd, 4096).expect("shrink");

        // Every kind of access to the pages past the new end: an error, not a SIGBUS.
        let mut buf = [0u8; 16];
        assert_eq!(
            map.read_at(2 * 4096, &mut buf),
            Err(AccessError::FileShrank)
        );
        assert_eq!(
            map.read_at(0, &mut buf),
            Err(AccessError::FileShrank),
            "never again"
        );
        let other = Mapping::new(&fd, 0, 4096, MapProt::ReadWrite).expect("map");
        let fresh = || {
            let fd = rustix::fs::memfd_create("vmm-ram", MemfdFlags::CLOEXEC).expect("memfd");
            rustix::fs::ftruncate(&fd, 2 * 4096).expect("size");
            let map = Mapping::new(&fd, 0, 2 * 4096, MapProt::ReadWrite).expect("map");
            rustix::fs::ftruncate(&fd, 0).expect("shrink");
            map
        };
        assert_eq!(fresh().write_at(4096, b"x"), Err(AccessError::FileShrank));
        assert_eq!(fresh().load_u32(4096), Err(AccessError::FileShrank));
        assert_eq!(fresh().store_u32(0, 1), Err(AccessError::FileShrank));
        // A mapping of what is left works, and so does a SIGBUS-free thread meanwhile.
        other.write_at(0, b"after").expect("write");
        let mut back = [0u8; 5];
        other.read_at(0, &mut back).expect("read");
        assert_eq!(&back, b"after");
        std::thread::spawn(move || {
            let mut b = [0u8; 5];
            other.read_at(0, &mut b).expect("read on another thread");
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn two_mappings_of_one_file_see_each_other() {
        let fd = memfd(3 * 4096).expect("memfd");
        let ours = Mapping::new(&fd, 4096, 8192, MapProt::ReadWrite).expect("map");
        let theirs = Mapping::new(&fd, 0, 3 * 4096, MapProt::ReadWrite).expect("map");
        assert_eq!(ours.len(), 8192);
        ours.write_at(10, b"hello").expect("write");
        let mut buf = [0u8; 5];
        theirs.read_at(4096 + 10, &mut buf).expect("read");
        assert_eq!(&buf, b"hello");

        theirs
            .store_u32(4096 + 8192 - 4, 0x1234_5678)
            .expect("store");
        assert_eq!(ours.load_u32(8192 - 4).expect("load"), 0x1234_5678);
        let mut bytes = [0u8; 4];
        ours.read_at(8192 - 4, &mut bytes).expect("read");
        assert_eq!(bytes, [0x78, 0x56, 0x34, 0x12], "little-endian in memory");
        release_fence();
        acquire_fence();
    }

    #[test]
    fn offsets_need_not_be_page_aligned() {
        let fd = memfd(8192).expect("memfd");
        let whole = Mapping::new(&fd, 0, 8192, MapProt::ReadWrite).expect("map");
        whole
            .write_at(100, &[1, 2, 3, 4, 5, 6, 7, 8])
            .expect("write");
        let part = Mapping::new(&fd, 100, 4000, MapProt::ReadOnly).expect("map");
        let mut buf = [0u8; 8];
        part.read_at(0, &mut buf).expect("read");
        assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            part.load_u32(4).expect("load"),
            u32::from_le_bytes([5, 6, 7, 8])
        );
        // A file offset that is not a multiple of 4 makes every host address unaligned.
        let odd = Mapping::new(&fd, 101, 64, MapProt::ReadOnly).expect("map");
        assert_eq!(odd.load_u32(0), Err(AccessError::Misaligned { offset: 0 }));
        assert_eq!(
            odd.load_u32(3).expect("load"),
            u32::from_le_bytes([5, 6, 7, 8])
        );
    }

    #[test]
    fn accesses_outside_are_refused_without_touching_anything() {
        let fd = memfd(4096).expect("memfd");
        let map = Mapping::new(&fd, 0, 4096, MapProt::ReadWrite).expect("map");
        let mut buf = [0xAAu8; 8];
        let out = AccessError::OutOfBounds {
            offset: 4090,
            len: 8,
            size: 4096,
        };
        assert_eq!(map.read_at(4090, &mut buf), Err(out));
        assert_eq!(buf, [0xAA; 8]);
        assert_eq!(map.write_at(4090, &buf), Err(out));
        assert!(map.read_at(usize::MAX, &mut buf).is_err());
        assert!(map.write_at(usize::MAX - 2, &buf).is_err());
        assert!(map.load_u32(4093).is_err());
        assert!(map.load_u32(usize::MAX - 1).is_err());
        assert_eq!(
            map.store_u32(6, 1),
            Err(AccessError::Misaligned { offset: 6 })
        );
        map.read_at(4096, &mut [])
            .expect("an empty read at the end");
        map.read_at(4088, &mut buf).expect("the last 8 bytes");
    }

    #[test]
    fn read_only_mappings_refuse_stores() {
        let fd = memfd(4096).expect("memfd");
        let map = Mapping::new(&fd, 0, 4096, MapProt::ReadOnly).expect("map");
        assert_eq!(map.prot(), MapProt::ReadOnly);
        assert_eq!(map.write_at(0, &[1]), Err(AccessError::ReadOnly));
        assert_eq!(map.store_u32(0, 1), Err(AccessError::ReadOnly));
        assert_eq!(map.load_u32(0).expect("load"), 0);
    }

    #[test]
    fn mappings_past_the_file_or_empty_are_refused() {
        let fd = memfd(8192).expect("memfd");
        for (offset, len) in [(0, 8193), (4096, 4097), (8192, 1), (u64::MAX, 1), (0, 0)] {
            let err = Mapping::new(&fd, offset, len, MapProt::ReadWrite)
                .expect_err(&format!("{offset:#x}+{len:#x}"));
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        Mapping::new(&fd, 4096, 4096, MapProt::ReadWrite).expect("the last page");
    }

    #[test]
    fn memfd_has_its_length() {
        let fd = memfd(12345).expect("memfd");
        let stat = rustix::fs::fstat(&fd).expect("fstat");
        assert_eq!(stat.st_size, 12345);
    }
}
