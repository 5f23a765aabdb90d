//! Doorbells a VMM maps into its guest (poll mode, `disable_mappable_bar0 = false`): BAR0's
//! doorbell page, 0x1000..0x2000, is a page of a memfd that we map too, so a guest's doorbell
//! write is a plain store into it, with no exit and no message. Nothing signals such a store:
//! the reactor polls the page every turn ([`DoorbellPage::take`]).
//!
//! The file is BAR0 from its offset 0 to the end of the doorbell page, so the region's file
//! offset is 0 and the sparse area (0x1000, 0x1000) is the file's second page (a VMM maps
//! `file offset + area offset`, as QEMU's `vfio_region_mmap` does). The first page stands for
//! the registers, which are never mapped: it stays a hole and costs no memory.
//!
//! A VMM may trap doorbell writes before it maps the page (and QEMU does while the BAR is not
//! placed yet): a trapped write is stored into the page as well ([`DoorbellPage::record`]), so
//! the page always holds the last value of every doorbell, whichever way it came, and a
//! change is a change of the page.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::device::{DOORBELL_BASE, DOORBELL_PAGE};
use super::server::RegionMmap;
use crate::sys::mmap::{MapProt, Mapping, acquire_fence, memfd};

/// Bytes of the doorbell page.
pub const PAGE_LEN: usize = 0x1000;
/// The highest queue ID the page has doorbells for: two dwords a queue (CAP.DSTRD 0).
pub const MAX_QID: u16 = 511;

/// One doorbell (NVMe Base 2.0, 3.1.4.22 and 3.1.4.23, with CAP.DSTRD 0): SQ y's tail at
/// 8y, CQ y's head at 8y + 4 from the start of the doorbells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    SqTail(u16),
    CqHead(u16),
}

impl Doorbell {
    /// Its dword within the doorbells; `None` past the page.
    pub fn index(self) -> Option<usize> {
        let (qid, cq) = match self {
            Self::SqTail(qid) => (qid, 0),
            Self::CqHead(qid) => (qid, 1),
        };
        (qid <= MAX_QID).then(|| 2 * usize::from(qid) + cq)
    }
}

/// The mapped doorbell page of one client, and the value last taken from each doorbell.
#[derive(Debug)]
pub struct DoorbellPage {
    fd: Arc<OwnedFd>,
    page: Mapping,
    seen: Vec<u32>,
}

impl DoorbellPage {
    /// A zeroed page in a new memfd.
    pub fn new() -> io::Result<Self> {
        let fd = memfd(DOORBELL_BASE + PAGE_LEN as u64)?;
        let page = Mapping::new(&fd, DOORBELL_BASE, PAGE_LEN, MapProt::ReadWrite)?;
        Ok(Self {
            fd: Arc::new(fd),
            page,
            seen: vec![0; PAGE_LEN / 4],
        })
    }

    /// What BAR0's region info offers: the file from BAR0's offset 0, the doorbell page
    /// mappable.
    pub fn region_mmap(&self) -> RegionMmap {
        RegionMmap {
            fd: Arc::clone(&self.fd),
            file_offset: 0,
            areas: vec![DOORBELL_PAGE],
        }
    }

    /// The value the guest stored into `doorbell` if it changed since the last look (or the
    /// last [`record`](Self::record)). The load is followed by an acquire fence: what the
    /// guest wrote before the store (the commands up to a new tail) is seen after it.
    pub fn take(&mut self, doorbell: Doorbell) -> Option<u32> {
        let index = doorbell.index()?;
        let value = self.page.load_u32(index * 4).ok()?;
        let seen = self.seen.get_mut(index)?;
        if value == *seen {
            return None;
        }
        acquire_fence();
        *seen = value;
        Some(value)
    }

    /// A doorbell write that came as a message: the page holds it too, and it is not taken
    /// again.
    pub fn record(&mut self, doorbell: Doorbell, value: u32) {
        self.set(doorbell, value);
    }

    /// A queue is created: its doorbell starts at 0 (whatever a deleted queue of the same ID
    /// left there).
    pub fn reset(&mut self, doorbell: Doorbell) {
        self.set(doorbell, 0);
    }

    /// A controller reset: every doorbell is 0.
    pub fn clear(&mut self) {
        for index in 0..self.seen.len() {
            let _ = self.page.store_u32(index * 4, 0);
        }
        self.seen.iter_mut().for_each(|seen| *seen = 0);
    }

    fn set(&mut self, doorbell: Doorbell, value: u32) {
        let Some(index) = doorbell.index() else {
            return;
        };
        let _ = self.page.store_u32(index * 4, value);
        if let Some(seen) = self.seen.get_mut(index) {
            *seen = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page as the VMM maps it: `file offset + area offset` of the region's fd.
    fn vmm_view(page: &DoorbellPage) -> Mapping {
        let mmap = page.region_mmap();
        let (offset, len) = mmap.areas[0];
        Mapping::new(
            &*mmap.fd,
            mmap.file_offset + offset,
            usize::try_from(len).expect("a page"),
            MapProt::ReadWrite,
        )
        .expect("the VMM maps the sparse area")
    }

    #[test]
    fn the_vmm_maps_the_doorbells_at_bar0_offset_0x1000() {
        let page = DoorbellPage::new().expect("page");
        let mmap = page.region_mmap();
        assert_eq!(mmap.file_offset, 0);
        assert_eq!(mmap.areas, vec![(0x1000, 0x1000)]);
        let stat = rustix::fs::fstat(&*mmap.fd).expect("fstat");
        assert_eq!(
            stat.st_size, 0x2000,
            "BAR0 from 0 to the end of the doorbells"
        );
        let vmm = vmm_view(&page);
        // BAR0 0x1000 + 8 * 3 is SQ 3's tail; + 4 is CQ 3's head.
        vmm.store_u32(24, 7).expect("store");
        vmm.store_u32(28, 5).expect("store");
        let mut page = page;
        assert_eq!(page.take(Doorbell::SqTail(3)), Some(7));
        assert_eq!(page.take(Doorbell::CqHead(3)), Some(5));
        assert_eq!(page.take(Doorbell::SqTail(2)), None);
    }

    #[test]
    fn a_value_is_taken_once_and_trapped_writes_count_as_seen() {
        let mut page = DoorbellPage::new().expect("page");
        let vmm = vmm_view(&page);
        assert_eq!(
            page.take(Doorbell::SqTail(0)),
            None,
            "a new page is all zeroes"
        );
        vmm.store_u32(0, 1).expect("store");
        assert_eq!(page.take(Doorbell::SqTail(0)), Some(1));
        assert_eq!(page.take(Doorbell::SqTail(0)), None, "taken once");

        // Trapped writes move the tail to 63; the guest, mapped now, wraps it to 0: a change
        // of the page although 0 was its value before the traps.
        page.record(Doorbell::SqTail(0), 63);
        assert_eq!(vmm.load_u32(0).expect("load"), 63, "the page holds it");
        assert_eq!(page.take(Doorbell::SqTail(0)), None);
        vmm.store_u32(0, 0).expect("store");
        assert_eq!(page.take(Doorbell::SqTail(0)), Some(0));
    }

    #[test]
    fn resets_zero_the_doorbells() {
        let mut page = DoorbellPage::new().expect("page");
        let vmm = vmm_view(&page);
        vmm.store_u32(8, 9).expect("store");
        vmm.store_u32(4092, 4).expect("store");
        page.reset(Doorbell::SqTail(1));
        assert_eq!(vmm.load_u32(8).expect("load"), 0);
        assert_eq!(page.take(Doorbell::SqTail(1)), None);
        assert_eq!(page.take(Doorbell::CqHead(MAX_QID)), Some(4));
        vmm.store_u32(4092, 6).expect("store");
        page.clear();
        assert_eq!(vmm.load_u32(4092).expect("load"), 0);
        assert_eq!(page.take(Doorbell::CqHead(MAX_QID)), None);
    }

    #[test]
    fn queue_ids_past_the_page_have_no_doorbell() {
        assert_eq!(Doorbell::SqTail(0).index(), Some(0));
        assert_eq!(Doorbell::CqHead(0).index(), Some(1));
        assert_eq!(Doorbell::CqHead(MAX_QID).index(), Some(1023));
        assert_eq!(Doorbell::SqTail(MAX_QID + 1).index(), None);
        let mut page = DoorbellPage::new().expect("page");
        assert_eq!(page.take(Doorbell::SqTail(MAX_QID + 1)), None);
        page.record(Doorbell::SqTail(u16::MAX), 1);
    }
}
