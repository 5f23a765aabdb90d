//! The guest side of the controller: RAM (a memfd the target maps by DMA_MAP, mapped here
//! too), handed out in pages; submission and completion rings in it, as a guest NVMe driver
//! keeps them; doorbells, rung by message or by a store into the mapped doorbell page.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use super::client::{self, ClientError};
use crate::nvme::Cqe;
use crate::nvme::cqe::CQE_LEN;
use crate::nvme::sqe::{SQE_LEN, Sqe};
use crate::sys::mmap::{self, AccessError, MapProt, Mapping};
use crate::transport::vfio_user::device::{DOORBELL_BASE, region};

/// The page the driver lays everything out in (CC.MPS 0).
pub const PAGE: u64 = 4096;

/// Guest RAM at guest physical address 0.
#[derive(Debug)]
pub struct GuestRam {
    fd: OwnedFd,
    map: Mapping,
}

impl GuestRam {
    /// `size` bytes of zeroes (rounded up to a page).
    pub fn new(size: u64) -> std::io::Result<Self> {
        let size = size.div_ceil(PAGE) * PAGE;
        let len = usize::try_from(size).map_err(|_| std::io::Error::other("RAM too large"))?;
        let fd = mmap::memfd(size)?;
        let map = Mapping::new(&fd, 0, len, MapProt::ReadWrite)?;
        Ok(Self { fd, map })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn size(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        self.map.read_at(offset(gpa), buf)
    }

    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), AccessError> {
        self.map.write_at(offset(gpa), data)
    }

    pub fn load_u32(&self, gpa: u64) -> Result<u32, AccessError> {
        self.map.load_u32(offset(gpa))
    }

    pub fn store_u32(&self, gpa: u64, value: u32) -> Result<(), AccessError> {
        self.map.store_u32(offset(gpa), value)
    }
}

/// A guest physical address as an offset into the mapping (past its end if it does not fit,
/// which the mapping refuses).
fn offset(gpa: u64) -> usize {
    usize::try_from(gpa).unwrap_or(usize::MAX)
}

/// Hands out guest RAM page by page, from after the first page (address 0 stays unused, as a
/// null PRP).
#[derive(Debug)]
pub struct Allocator {
    next: u64,
    end: u64,
}

impl Allocator {
    pub fn new(size: u64) -> Self {
        Self {
            next: PAGE,
            end: size,
        }
    }

    /// `bytes` rounded up to whole pages; `None` when RAM is full.
    pub fn pages(&mut self, bytes: u64) -> Option<u64> {
        let len = bytes.max(1).div_ceil(PAGE) * PAGE;
        let at = self.next;
        let end = at.checked_add(len).filter(|&e| e <= self.end)?;
        self.next = end;
        Some(at)
    }
}

/// A submission queue as the driver sees it: where it is and the tail it writes.
#[derive(Debug)]
pub struct SqRing {
    base: u64,
    entries: u16,
    tail: u16,
}

impl SqRing {
    pub fn new(base: u64, entries: u16) -> Self {
        Self {
            base,
            entries: entries.max(2),
            tail: 0,
        }
    }

    /// Writes `sqe` at the tail and moves the tail; the doorbell is the caller's.
    pub fn push(&mut self, ram: &GuestRam, sqe: &Sqe) -> Result<(), AccessError> {
        let at = self.base + u64::from(self.tail) * SQE_LEN as u64;
        ram.write(at, sqe.as_bytes())?;
        self.tail = (self.tail + 1) % self.entries;
        Ok(())
    }

    pub fn tail(&self) -> u16 {
        self.tail
    }
}

/// A completion queue as the driver sees it: the head it consumes and the phase it expects.
#[derive(Debug)]
pub struct CqRing {
    base: u64,
    entries: u16,
    head: u16,
    phase: bool,
}

impl CqRing {
    pub fn new(base: u64, entries: u16) -> Self {
        Self {
            base,
            entries: entries.max(2),
            head: 0,
            phase: true,
        }
    }

    /// The entry at the head if its phase bit says it is new (consumed: the head moves; the
    /// doorbell is the caller's). Dword 3, with the phase, is loaded first and once: the
    /// target stores it last, so the rest read after it is whole.
    pub fn pop(&mut self, ram: &GuestRam) -> Result<Option<Cqe>, AccessError> {
        let at = self.base + u64::from(self.head) * CQE_LEN as u64;
        let dw3 = ram.load_u32(at + 12)?;
        if (dw3 >> 16) & 1 != u32::from(self.phase) {
            return Ok(None);
        }
        mmap::acquire_fence();
        let mut bytes = [0u8; CQE_LEN];
        ram.read(at, &mut bytes[..12])?;
        bytes[12..].copy_from_slice(&dw3.to_le_bytes());
        self.head = (self.head + 1) % self.entries;
        if self.head == 0 {
            self.phase = !self.phase;
        }
        Ok(Cqe::parse(&bytes))
    }

    pub fn head(&self) -> u16 {
        self.head
    }
}

/// Where a queue's doorbells are: BAR0 offsets, by CAP.DSTRD.
#[derive(Debug, Clone, Copy)]
pub struct DoorbellLayout {
    /// Bytes between doorbells: `4 << CAP.DSTRD`.
    pub stride: u64,
}

impl DoorbellLayout {
    pub fn sq_tail(&self, qid: u16) -> u64 {
        DOORBELL_BASE + 2 * u64::from(qid) * self.stride
    }

    pub fn cq_head(&self, qid: u16) -> u64 {
        DOORBELL_BASE + (2 * u64::from(qid) + 1) * self.stride
    }
}

/// The shadow doorbell and EventIdx buffers given to the controller by Doorbell Buffer
/// Config: a page each of guest RAM, laid out as the doorbells are (BAR0 offset - 0x1000).
#[derive(Debug, Clone, Copy)]
pub struct ShadowBuffers {
    pub shadow: u64,
    pub event_idx: u64,
}

impl ShadowBuffers {
    /// Moves the doorbell at BAR0 `offset` to `value` in the shadow buffer, as Linux's
    /// `nvme_dbbuf_update_and_check_event` does: what the driver wrote before (SQEs, consumed
    /// CQEs) first, then the shadow, a full fence, then the EventIdx the controller published;
    /// true if the move passes it and the real doorbell must be written too.
    pub fn update(&self, ram: &GuestRam, offset: u64, value: u16) -> Result<bool, AccessError> {
        let index = offset.saturating_sub(DOORBELL_BASE);
        let at = self.shadow + index;
        let old = low16(ram.load_u32(at)?);
        mmap::release_fence();
        ram.store_u32(at, u32::from(value))?;
        // The controller publishes EventIdx, fences, and reads the shadow again: with this
        // fence between our store and our load, one of us sees the other's.
        mmap::full_fence();
        let event_idx = low16(ram.load_u32(self.event_idx + index)?);
        Ok(need_event(event_idx, value, old))
    }
}

/// Linux's `nvme_dbbuf_need_event` (virtio's `vring_need_event`): moving a doorbell from
/// `old` to `new` passes `event_idx`, in 16-bit arithmetic.
pub fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The low 16 bits of a doorbell dword, as the driver reads it into a `u16`.
fn low16(value: u32) -> u16 {
    u16::try_from(value & 0xFFFF).unwrap_or(0)
}

/// How doorbell writes reach the target.
#[derive(Debug)]
pub enum Doorbells {
    /// Each write is a REGION_WRITE message of BAR0, posted (NO_REPLY), as QEMU forwards a
    /// trapped MMIO store; the writes of a batch go out with one `sendmsg`.
    Trapped {
        socket: Arc<UnixStream>,
        out: Vec<u8>,
        next_id: u16,
    },
    /// BAR0's doorbell area is mapped: a write is a store the target sees when it polls.
    Mapped {
        page: Arc<Mapping>,
        /// The BAR0 offset the mapping starts at.
        start: u64,
    },
}

impl Doorbells {
    pub fn trapped(socket: Arc<UnixStream>) -> Self {
        Self::Trapped {
            socket,
            out: Vec::with_capacity(128),
            // Posted messages get no reply; their IDs only tell them apart in a trace.
            next_id: 0x8000,
        }
    }

    /// Writes `value` to the doorbell at BAR0 offset `offset` (queued until `flush` when
    /// trapped). Everything written to guest RAM before is visible to the target first.
    pub fn ring(&mut self, offset: u64, value: u32) -> Result<(), ClientError> {
        match self {
            Self::Trapped { out, next_id, .. } => {
                client::post_region_write(out, *next_id, region::BAR0, offset, value);
                *next_id = next_id.wrapping_add(1) | 0x8000;
                Ok(())
            }
            Self::Mapped { page, start } => {
                mmap::release_fence();
                let at = offset
                    .checked_sub(*start)
                    .and_then(|o| usize::try_from(o).ok())
                    .unwrap_or(usize::MAX);
                page.store_u32(at, value).map_err(|e| {
                    ClientError::Io(std::io::Error::other(format!("doorbell store: {e}")))
                })
            }
        }
    }

    /// Sends the queued doorbell messages.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        match self {
            Self::Trapped { socket, out, .. } => {
                if out.is_empty() {
                    return Ok(());
                }
                let sent = client::send_all(socket, out, &[]);
                out.clear();
                sent
            }
            Self::Mapped { .. } => Ok(()),
        }
    }

    /// Doorbells for another queue: the same socket or page, its own batch.
    pub fn clone_for_queue(&self) -> Self {
        match self {
            Self::Trapped { socket, .. } => Self::trapped(Arc::clone(socket)),
            Self::Mapped { page, start } => Self::Mapped {
                page: Arc::clone(page),
                start: *start,
            },
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Self::Mapped { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::nvme::Status;

    #[test]
    fn completions_are_taken_by_phase_and_the_phase_flips_on_wrap() {
        let ram = GuestRam::new(4 * PAGE).expect("ram");
        let mut cq = CqRing::new(PAGE, 2);
        assert_eq!(cq.pop(&ram).expect("read"), None, "zeroed: phase 0 is old");
        let post = |slot: u64, cid: u16, phase: bool| {
            let mut bytes = Cqe::new(cid, Status::SUCCESS).to_bytes();
            bytes[14] |= u8::from(phase);
            ram.write(PAGE + slot * 16, &bytes).expect("write");
        };
        post(0, 7, true);
        assert_eq!(cq.pop(&ram).expect("read").map(|c| c.cid), Some(7));
        assert_eq!(cq.pop(&ram).expect("read"), None);
        post(1, 8, true);
        assert_eq!(cq.pop(&ram).expect("read").map(|c| c.cid), Some(8));
        assert_eq!(cq.head(), 0);
        // Wrapped: slot 0 still holds phase 1, which is old now.
        assert_eq!(cq.pop(&ram).expect("read"), None);
        post(0, 9, false);
        assert_eq!(cq.pop(&ram).expect("read").map(|c| c.cid), Some(9));
    }

    #[test]
    fn submissions_wrap_and_the_allocator_stops_at_the_end() {
        let ram = GuestRam::new(4 * PAGE).expect("ram");
        let mut sq = SqRing::new(PAGE, 3);
        for cid in 0..4u16 {
            sq.push(&ram, &Sqe::new(0x02, cid)).expect("push");
        }
        assert_eq!(sq.tail(), 1);
        let mut first = [0u8; 64];
        ram.read(PAGE, &mut first).expect("read");
        assert_eq!(
            Sqe::from_bytes(first).cid(),
            3,
            "the fourth overwrote slot 0"
        );
        let mut alloc = Allocator::new(4 * PAGE);
        assert_eq!(alloc.pages(100), Some(PAGE));
        assert_eq!(alloc.pages(2 * PAGE), Some(2 * PAGE));
        assert_eq!(alloc.pages(1), None);
        let layout = DoorbellLayout { stride: 4 };
        assert_eq!((layout.sq_tail(1), layout.cq_head(1)), (0x1008, 0x100c));
    }

    #[test]
    fn a_shadow_update_stores_the_value_and_asks_for_a_write_only_past_event_idx() {
        let ram = GuestRam::new(4 * PAGE).expect("ram");
        let buffers = ShadowBuffers {
            shadow: PAGE,
            event_idx: 2 * PAGE,
        };
        let layout = DoorbellLayout { stride: 4 };
        let (sq, cq) = (layout.sq_tail(1), layout.cq_head(1));
        // EventIdx 0 (zeroed): the first submission, 0 -> 1, passes it.
        assert!(buffers.update(&ram, sq, 1).expect("update"));
        assert_eq!(
            ram.load_u32(PAGE + 8).expect("load"),
            1,
            "SQ 1's shadow tail"
        );
        // Not served yet (EventIdx still 0): 1 -> 3 passes nothing.
        assert!(!buffers.update(&ram, sq, 3).expect("update"));
        // Served up to 3: the next one rings.
        ram.store_u32(2 * PAGE + 8, 3).expect("store");
        assert!(buffers.update(&ram, sq, 4).expect("update"));
        // The controller polls: EventIdx parked above the ring asks only across its end.
        ram.store_u32(2 * PAGE + 8, u32::MAX).expect("store");
        assert!(!buffers.update(&ram, sq, 30).expect("update"));
        assert!(
            buffers.update(&ram, sq, 2).expect("update"),
            "30 -> 2 wraps"
        );
        // The CQ head has its own shadow and EventIdx, next to the tail's.
        ram.store_u32(2 * PAGE + 12, 5).expect("store");
        assert!(
            !buffers.update(&ram, cq, 5).expect("update"),
            "0 -> 5 stops at 5"
        );
        assert!(buffers.update(&ram, cq, 6).expect("update"));
        assert_eq!(ram.load_u32(PAGE + 12).expect("load"), 6);
        assert!(need_event(63, 1, 63) && need_event(0, 1, 63) && !need_event(5, 1, 63));
    }

    #[test]
    fn mapped_doorbells_are_stores_into_the_page_and_trapped_ones_wait_for_flush() {
        let fd = mmap::memfd(PAGE).expect("memfd");
        let page = Arc::new(Mapping::new(&fd, 0, 4096, MapProt::ReadWrite).expect("map"));
        let theirs = Mapping::new(&fd, 0, 4096, MapProt::ReadWrite).expect("map");
        let mut doorbells = Doorbells::Mapped {
            page,
            start: DOORBELL_BASE,
        };
        let layout = DoorbellLayout { stride: 4 };
        doorbells.ring(layout.sq_tail(1), 5).expect("store");
        doorbells.ring(layout.cq_head(1), 9).expect("store");
        doorbells.flush().expect("nothing to send");
        assert_eq!(theirs.load_u32(8).expect("load"), 5);
        assert_eq!(theirs.load_u32(12).expect("load"), 9);
        assert!(
            doorbells.ring(DOORBELL_BASE - 4, 1).is_err(),
            "below the page"
        );

        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        theirs.set_nonblocking(true).expect("nonblocking");
        let mut doorbells = Doorbells::trapped(Arc::new(ours));
        doorbells.ring(layout.sq_tail(1), 5).expect("queue");
        let mut buf = [0u8; 256];
        assert!(
            (&theirs).read(&mut buf).is_err(),
            "nothing sent before flush"
        );
        doorbells.flush().expect("send");
        let n = (&theirs).read(&mut buf).expect("one message");
        assert_eq!(n, 16 + 16 + 4, "header, offset/region/count, the value");
    }
}
