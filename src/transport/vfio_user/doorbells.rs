//! Doorbells other than trapped register writes.
//!
//! **The doorbell page.** Doorbells a VMM maps into its guest (poll mode,
//! `disable_mappable_bar0 = false`): BAR0's
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
//!
//! **Shadow doorbells** (Doorbell Buffer Config, NVMe Base 2.0, 5.8): the host gives two pages
//! of its memory. It writes each I/O queue's new tail or head into the shadow doorbell buffer
//! (same layout as the doorbells) and rings the real doorbell only when the value passes the
//! EventIdx we keep in the EventIdx buffer: Linux's `nvme_dbbuf_need_event(event_idx, new,
//! old)`, `(u16)(new - event_idx - 1) < (u16)(new - old)`. After a queue is served up to tail
//! T we publish EventIdx T (the next submission rings), then read the shadow again with a
//! full fence between ([`ShadowDoorbells::rearm`]): a host that stored T + 1 before it could
//! see EventIdx T did not ring, and that read finds it. The admin queue is never shadowed
//! (Linux and SPDK leave it to its doorbell).
//!
//! While an interrupt-mode reactor busy-polls, the shadows are polled and EventIdx is parked
//! just behind the value we took ([`ShadowDoorbells::park`]): the one slot a host cannot
//! reach again before we take more, so it is not asked to ring at all; before the reactor
//! sleeps every queue is armed again with `rearm`, which is what makes a submission that
//! raced the switch found. (SPDK parks EventIdx at a constant above every ring index while it
//! polls, `NVMF_VFIO_USER_EVENTIDX_POLL`; a host then rings whenever its value wraps, which a
//! batch as deep as its ring, QD32 on 33 entries, does nearly every time.)

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::device::{DOORBELL_BASE, DOORBELL_PAGE};
use super::memory::GuestMemory;
use super::server::RegionMmap;
use crate::sys::mmap::{MapProt, Mapping, acquire_fence, full_fence, memfd};

/// Bytes of the doorbell page.
pub const PAGE_LEN: usize = 0x1000;
/// The highest queue ID the page has doorbells for: two dwords a queue (CAP.DSTRD 0).
pub const MAX_QID: u16 = 511;

/// The EventIdx of a polled doorbell whose value we took up to `taken` in a ring of
/// `entries`: the slot just behind it. A host is asked to ring when a move of its value writes
/// the slot EventIdx names (`need_event`: EventIdx in [old, new) round the ring). Behind our
/// tail is the slot the host writes last before it has filled the whole ring past what we took,
/// which is more commands than it may have outstanding; behind our head of a completion queue
/// is the slot it consumes last before it has consumed a whole ring past what we saw, more
/// than we post without seeing its head move. Published before the completions that let the
/// host go further, it is never passed.
pub fn parked_event_idx(taken: u32, entries: u32) -> u32 {
    let entries = entries.max(1);
    (taken % entries + entries - 1) % entries
}

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

/// Aligned dwords of guest memory: where shadow doorbells and EventIdx are.
pub trait GuestDwords {
    /// One aligned load; `None` if the address is not readable guest memory.
    fn load(&self, gpa: u64) -> Option<u32>;
    /// One aligned store; false if the address is not writable guest memory.
    fn store(&self, gpa: u64, value: u32) -> bool;
}

impl GuestDwords for GuestMemory {
    fn load(&self, gpa: u64) -> Option<u32> {
        self.read_u32(gpa).ok()
    }

    fn store(&self, gpa: u64, value: u32) -> bool {
        self.write_u32(gpa, value).is_ok()
    }
}

/// The shadow doorbell and EventIdx buffers a host gave with Doorbell Buffer Config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowDoorbells {
    shadow: u64,
    event_idx: u64,
}

impl ShadowDoorbells {
    /// Buffers at `shadow` and `event_idx` (guest physical, page aligned).
    pub fn new(shadow: u64, event_idx: u64) -> Self {
        Self { shadow, event_idx }
    }

    /// Bytes of each buffer that the doorbells of queues up to `max_qid` take.
    pub fn len(max_qid: u16) -> u64 {
        (u64::from(max_qid) + 1) * 8
    }

    pub fn shadow(&self) -> u64 {
        self.shadow
    }

    pub fn event_idx(&self) -> u64 {
        self.event_idx
    }

    /// The value the host wrote for `doorbell`: one aligned load, then an acquire fence (the
    /// commands up to a new tail are read after it). `None` if it cannot be read.
    pub fn read(&self, mem: &impl GuestDwords, doorbell: Doorbell) -> Option<u32> {
        let value = mem.load(Self::at(self.shadow, doorbell)?)?;
        acquire_fence();
        Some(value)
    }

    /// Sets `doorbell`'s shadow value: at configuration, what the doorbell said until then;
    /// at queue creation, 0.
    pub fn write(&self, mem: &impl GuestDwords, doorbell: Doorbell, value: u32) {
        if let Some(gpa) = Self::at(self.shadow, doorbell) {
            mem.store(gpa, value);
        }
    }

    /// Publishes `doorbell`'s EventIdx: the host rings when it moves the value past it.
    pub fn publish(&self, mem: &impl GuestDwords, doorbell: Doorbell, value: u32) {
        if let Some(gpa) = Self::at(self.event_idx, doorbell) {
            mem.store(gpa, value);
        }
    }

    /// The shadow of `doorbell` is polled and was taken up to `taken` (a ring of `entries`):
    /// its EventIdx is parked just behind, where the host does not ring for it
    /// ([`parked_event_idx`]). Published again whenever we take more.
    pub fn park(&self, mem: &impl GuestDwords, doorbell: Doorbell, taken: u32, entries: u32) {
        self.publish(mem, doorbell, parked_event_idx(taken, entries));
    }

    /// A queue was served up to `consumed` (an SQ's tail, a CQ's head): publishes EventIdx =
    /// `consumed`, then, after a full fence, reads the shadow again and returns it. A value
    /// that moved since the caller last looked is one the host stored before it could see the
    /// EventIdx, and it may not have rung for it: the caller serves it (and rearms again).
    pub fn rearm(&self, mem: &impl GuestDwords, doorbell: Doorbell, consumed: u32) -> Option<u32> {
        self.publish(mem, doorbell, consumed);
        full_fence();
        self.read(mem, doorbell)
    }

    fn at(base: u64, doorbell: Doorbell) -> Option<u64> {
        let index = u64::try_from(doorbell.index()?).ok()?;
        base.checked_add(index * 4)
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

/// Shadow doorbells against a host that follows Linux's protocol, in memory we control.
#[cfg(test)]
mod shadow_tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    const SHADOW: u64 = 0x10_0000;
    const EVENT_IDX: u64 = 0x20_0000;

    /// What the host does when our store reaches the trap.
    type HostStep = Box<dyn FnOnce(&mut HashMap<u64, u32>)>;

    /// Guest dwords in a map; a store to `trap` runs `then` first (once), as a host vCPU
    /// that acts between our EventIdx store and our next load.
    #[derive(Default)]
    struct Fake {
        words: RefCell<HashMap<u64, u32>>,
        trap: Option<u64>,
        then: RefCell<Option<HostStep>>,
    }

    impl GuestDwords for Fake {
        fn load(&self, gpa: u64) -> Option<u32> {
            Some(self.words.borrow().get(&gpa).copied().unwrap_or(0))
        }

        fn store(&self, gpa: u64, value: u32) -> bool {
            if Some(gpa) == self.trap {
                if let Some(then) = self.then.borrow_mut().take() {
                    then(&mut self.words.borrow_mut());
                }
            }
            self.words.borrow_mut().insert(gpa, value);
            true
        }
    }

    /// Linux's `nvme_dbbuf_need_event`.
    fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
    }

    #[test]
    fn buffers_have_the_doorbells_layout() {
        let buffers = ShadowDoorbells::new(SHADOW, EVENT_IDX);
        let mem = Fake::default();
        buffers.write(&mem, Doorbell::SqTail(3), 7);
        buffers.publish(&mem, Doorbell::CqHead(3), 5);
        assert_eq!(mem.words.borrow().get(&(SHADOW + 24)), Some(&7));
        assert_eq!(mem.words.borrow().get(&(EVENT_IDX + 28)), Some(&5));
        assert_eq!(buffers.read(&mem, Doorbell::SqTail(3)), Some(7));
        assert_eq!(ShadowDoorbells::len(MAX_QID), 4096, "one page at most");
        assert_eq!(buffers.read(&mem, Doorbell::SqTail(MAX_QID + 1)), None);
    }

    #[test]
    fn a_host_rings_only_when_the_value_passes_the_event_index() {
        // Served up to 4: EventIdx 4. The next submission (4 -> 5) rings.
        assert!(need_event(4, 5, 4));
        // Submissions before we catch up do not ring: 5 -> 6 with EventIdx still 4.
        assert!(!need_event(4, 6, 5));
        // A batch that passes it rings once: 3 -> 6 with EventIdx 4.
        assert!(need_event(4, 6, 3));
        // Across the wrap of a 64-entry queue: 63 -> 1 passes EventIdx 63 and 0.
        assert!(need_event(63, 1, 63));
        assert!(need_event(0, 1, 63));
    }

    #[test]
    fn a_parked_event_index_is_never_passed_by_a_host_that_keeps_its_queue_depth() {
        // A host with up to `entries - 1` commands outstanding submits batches; we take its
        // tail, park EventIdx behind it, then fetch and complete some of what we took (the
        // completions come after the park); the host reaps them and submits again. No move of
        // its tail asks for a ring. Likewise its CQ head: it consumes what we posted, we post
        // only with room by the head we saw, and park behind that head before posting.
        let mut seed = 0x9E37_79B9_u32;
        let mut next = |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % n
        };
        for entries in [2u32, 33, 64, 1024] {
            let slot = |abs: u64| u16::try_from(abs % u64::from(entries)).expect("u16");
            // Absolute counts: submitted by the host, taken and completed by us, reaped.
            let (mut submitted, mut completed, mut reaped) = (0u64, 0, 0);
            let (mut sq_event_idx, mut cq_event_idx) = (entries - 1, entries - 1);
            let mut cq_posted = 0u64;
            for _ in 0..20_000 {
                // The host: reaps some completions (its CQ head moves), submits what its
                // depth allows.
                let reap = u64::from(next(4)) * (completed - reaped) / 3;
                if reap > 0 {
                    let (old, new) = (slot(reaped), slot(reaped + reap));
                    let ring = need_event(u16::try_from(cq_event_idx).expect("u16"), new, old);
                    assert!(
                        !ring,
                        "{entries}: CQ head {old} -> {new} past {cq_event_idx}"
                    );
                    reaped += reap;
                }
                let room = u64::from(entries - 1) - (submitted - reaped);
                let batch = u64::from(next(u32::try_from(room).expect("small") + 1));
                if batch > 0 {
                    let (old, new) = (slot(submitted), slot(submitted + batch));
                    let ring = need_event(u16::try_from(sq_event_idx).expect("u16"), new, old);
                    assert!(
                        !ring,
                        "{entries}: SQ tail {old} -> {new} past {sq_event_idx}"
                    );
                    submitted += batch;
                }
                // We: take the tail and the head, park behind them, then complete some of
                // what we took into the CQ, within the room the head we saw leaves.
                let (taken, cq_seen) = (submitted, reaped);
                sq_event_idx = parked_event_idx(u32::from(slot(taken)), entries);
                cq_event_idx = parked_event_idx(u32::from(slot(cq_seen)), entries);
                let cq_room = u64::from(entries - 1) - (cq_posted - cq_seen);
                let done = u64::from(next(4)) * (taken - completed) / 3;
                let done = done.min(cq_room);
                completed += done;
                cq_posted += done;
            }
            assert!(submitted > 1000, "{entries}: the host moved");
        }
    }

    /// One step of a host that submits by Linux's rule: its shadow store, then (after its
    /// full fence) its EventIdx load and the decision to ring.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum HostOp {
        StoreShadow,
        LoadEventIdx,
    }

    /// Guest dwords under a schedule: before the target's memory operation number `at` (0:
    /// its first), the host steps scheduled there run. Every operation is sequentially
    /// consistent, which is what the full fences on both sides give.
    struct Scheduled {
        words: RefCell<HashMap<u64, u32>>,
        ops: std::cell::Cell<usize>,
        plan: RefCell<Vec<(usize, HostOp)>>,
        shadow_at: u64,
        event_idx_at: u64,
        new: u32,
        old: u32,
        rang: std::cell::Cell<Option<bool>>,
    }

    impl Scheduled {
        fn run_due(&self, upto: usize) {
            loop {
                let step = {
                    let mut plan = self.plan.borrow_mut();
                    match plan.first() {
                        Some(&(at, step)) if at <= upto => {
                            plan.remove(0);
                            step
                        }
                        _ => return,
                    }
                };
                let mut words = self.words.borrow_mut();
                match step {
                    HostOp::StoreShadow => {
                        words.insert(self.shadow_at, self.new);
                    }
                    HostOp::LoadEventIdx => {
                        let event_idx = words.get(&self.event_idx_at).copied().unwrap_or(0);
                        let ring = need_event(
                            (event_idx & 0xFFFF) as u16,
                            u16::try_from(self.new).expect("u16"),
                            u16::try_from(self.old).expect("u16"),
                        );
                        self.rang.set(Some(ring));
                    }
                }
            }
        }

        fn before_op(&self) {
            let op = self.ops.get();
            self.run_due(op);
            self.ops.set(op + 1);
        }
    }

    impl GuestDwords for Scheduled {
        fn load(&self, gpa: u64) -> Option<u32> {
            self.before_op();
            Some(self.words.borrow().get(&gpa).copied().unwrap_or(0))
        }

        fn store(&self, gpa: u64, value: u32) -> bool {
            self.before_op();
            self.words.borrow_mut().insert(gpa, value);
            true
        }
    }

    #[test]
    fn arming_a_parked_queue_loses_no_submission_at_any_interleaving() {
        // The polls served SQ 1 up to tail 4 with EventIdx parked; the reactor is about to
        // sleep and arms it (EventIdx 4, full fence, the shadow again) while the host
        // submits one more (4 -> 5). Whatever the order of the host's two steps among the
        // target's two operations, either the host rings or the target's second look finds
        // tail 5. Reversing the target's operations (look, then publish) would lose it.
        let sq = Doorbell::SqTail(1);
        let buffers = ShadowDoorbells::new(SHADOW, EVENT_IDX);
        let mut cases = 0;
        for store_at in 0..=2 {
            for load_at in store_at..=2 {
                let mem = Scheduled {
                    words: RefCell::new(HashMap::from([
                        (SHADOW + 8, 4),
                        (EVENT_IDX + 8, parked_event_idx(4, 64)),
                    ])),
                    ops: std::cell::Cell::new(0),
                    plan: RefCell::new(vec![
                        (store_at, HostOp::StoreShadow),
                        (load_at, HostOp::LoadEventIdx),
                    ]),
                    shadow_at: SHADOW + 8,
                    event_idx_at: EVENT_IDX + 8,
                    new: 5,
                    old: 4,
                    rang: std::cell::Cell::new(None),
                };
                let seen = buffers.rearm(&mem, sq, 4);
                mem.run_due(usize::MAX);
                let rang = mem.rang.get().expect("the host decided");
                assert!(
                    rang || seen == Some(5),
                    "host store before op {store_at}, load before op {load_at}: \
                     no ring and the target saw {seen:?}"
                );
                if store_at == 2 {
                    assert!(rang, "a submission after the arming rings");
                }
                if load_at == 0 {
                    assert!(
                        !rang,
                        "a host that still sees the parked EventIdx does not ring"
                    );
                    assert_eq!(seen, Some(5), "so the target's look finds it");
                }
                cases += 1;
            }
        }
        assert_eq!(
            cases, 6,
            "every interleaving of two steps and two operations"
        );
    }

    #[test]
    fn rearming_finds_a_submission_that_raced_the_event_index() {
        let sq = Doorbell::SqTail(1);
        let buffers = ShadowDoorbells::new(SHADOW, EVENT_IDX);
        let mut mem = Fake {
            trap: Some(EVENT_IDX + 8),
            ..Fake::default()
        };
        // We served the queue up to tail 4; the EventIdx the host sees is still 2. Just
        // before our store of EventIdx 4 lands, the host stores tail 5 and reads EventIdx 2:
        // no need to ring (5 - 2 - 1 = 2 is not below 5 - 4 = 1).
        mem.words.get_mut().insert(SHADOW + 8, 4);
        mem.words.get_mut().insert(EVENT_IDX + 8, 2);
        let rang = std::rc::Rc::new(std::cell::Cell::new(None));
        let seen = std::rc::Rc::clone(&rang);
        *mem.then.get_mut() = Some(Box::new(move |words| {
            words.insert(SHADOW + 8, 5);
            let event_idx = u16::try_from(words[&(EVENT_IDX + 8)]).expect("u16");
            seen.set(Some(need_event(event_idx, 5, 4)));
        }));
        let moved = buffers.rearm(&mem, sq, 4);
        assert_eq!(rang.get(), Some(false), "the host did not ring");
        assert_eq!(
            moved,
            Some(5),
            "the re-read after EventIdx finds the submission"
        );
        assert_eq!(mem.words.borrow()[&(EVENT_IDX + 8)], 4);
        // Served up to 5 now, and nothing raced: the queue is settled.
        assert_eq!(buffers.rearm(&mem, sq, 5), Some(5));
        assert_eq!(mem.words.borrow()[&(EVENT_IDX + 8)], 5);
    }
}
