//! Submission and completion queues of an NVMe PCIe controller: rings in guest memory that
//! the guest's driver fills and drains, told about through doorbells (NVMe Base 2.0, 3.3.1).
//!
//! A ring is only numbers (base, entries, head, tail, phase): it keeps no pointer, and every
//! access looks its address up in the guest memory of the moment, so an unmap between two
//! commands is an error for the next access, never a stale pointer. A submission queue entry
//! is copied out whole before anything reads it; a completion is written with its phase bit
//! last, in one aligned 32-bit store after a release fence, so a guest that sees the new
//! phase sees the whole entry.

use crate::nvme::cqe::CQE_LEN;
use crate::nvme::sqe::SQE_LEN;
use crate::nvme::{Cqe, Sqe};
use crate::sys::mmap::release_fence;
use crate::transport::vfio_user::memory::{GuestMemory, MemoryError, Prot};

/// The most entries a queue may have (CAP.MQES is 16 bits, 0's based).
pub const MAX_ENTRIES: u32 = 65536;

/// A doorbell write the queue refuses; the queue is unchanged. NVMe reports it as an
/// asynchronous event (Error status, Invalid Doorbell Write Value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DoorbellError {
    #[error("doorbell value {value} is not below the queue's {entries} entries")]
    OutOfRange { value: u32, entries: u32 },
    #[error("completion queue head {value} passes what was posted (head {head}, tail {tail})")]
    PastTail { value: u32, head: u32, tail: u32 },
}

/// Why a completion was not posted; the queue is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The guest has not consumed enough entries: post again after its next head doorbell.
    #[error("completion queue is full")]
    Full,
    #[error("cannot write the completion: {0}")]
    Memory(MemoryError),
}

/// Checks a ring of `entries` entries of `entry_len` bytes at `base` against guest memory.
fn check_ring(
    mem: &GuestMemory,
    base: u64,
    entries: u32,
    entry_len: usize,
    prot: Prot,
) -> Result<(), MemoryError> {
    let size = u64::from(entries) * entry_len as u64;
    if !(2..=MAX_ENTRIES).contains(&entries) {
        return Err(MemoryError::BadRange { iova: base, size });
    }
    if base % entry_len as u64 != 0 {
        return Err(MemoryError::Misaligned { gpa: base });
    }
    mem.check(base, size, prot)
}

/// The guest address of entry `index` of a ring (`index < entries <= 65536`, and the whole
/// ring was checked not to wrap, so this does not overflow).
fn slot(base: u64, index: u32, entry_len: usize) -> u64 {
    base + u64::from(index) * entry_len as u64
}

/// A submission queue: the guest writes commands at the tail and rings the tail doorbell; we
/// take them from the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionRing {
    base: u64,
    entries: u32,
    head: u32,
    tail: u32,
}

impl SubmissionRing {
    /// An empty ring of `entries` (2 to 65536) commands at `base` (64-byte aligned), all of it
    /// in readable guest memory.
    pub fn new(mem: &GuestMemory, base: u64, entries: u32) -> Result<Self, MemoryError> {
        check_ring(mem, base, entries, SQE_LEN, Prot::READ)?;
        Ok(Self {
            base,
            entries,
            head: 0,
            tail: 0,
        })
    }

    /// A tail doorbell write: the guest has written commands up to `value` (exclusive).
    pub fn set_tail(&mut self, value: u32) -> Result<(), DoorbellError> {
        if value >= self.entries {
            return Err(DoorbellError::OutOfRange {
                value,
                entries: self.entries,
            });
        }
        self.tail = value;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Commands the guest submitted that were not popped yet.
    pub fn pending(&self) -> u32 {
        (self.tail + self.entries - self.head) % self.entries
    }

    /// Copies the command at the head out of guest memory and advances the head; `None` if
    /// the ring is empty. If the memory is gone the head stays where it is.
    pub fn pop(&mut self, mem: &GuestMemory) -> Option<Result<Sqe, MemoryError>> {
        if self.is_empty() {
            return None;
        }
        let mut bytes = [0u8; SQE_LEN];
        if let Err(err) = mem.read(slot(self.base, self.head, SQE_LEN), &mut bytes) {
            return Some(Err(err));
        }
        self.head = (self.head + 1) % self.entries;
        Some(Ok(Sqe::from_bytes(bytes)))
    }

    /// Where the next command is taken from: the SQ head of each completion.
    pub fn head(&self) -> u32 {
        self.head
    }

    pub fn tail(&self) -> u32 {
        self.tail
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }
}

/// A completion queue: we write completions at the tail, with the phase bit that flips each
/// time the tail wraps; the guest consumes them and rings the head doorbell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionRing {
    base: u64,
    entries: u32,
    tail: u32,
    head: u32,
    /// The phase of the entries written in this lap; the first lap writes 1.
    phase: bool,
}

impl CompletionRing {
    /// An empty ring of `entries` (2 to 65536) completions at `base` (16-byte aligned), all of
    /// it in writable guest memory.
    pub fn new(mem: &GuestMemory, base: u64, entries: u32) -> Result<Self, MemoryError> {
        check_ring(mem, base, entries, CQE_LEN, Prot::WRITE)?;
        Ok(Self {
            base,
            entries,
            tail: 0,
            head: 0,
            phase: true,
        })
    }

    /// A head doorbell write: the guest has consumed completions up to `value` (exclusive),
    /// which must not pass the ones posted.
    pub fn set_head(&mut self, value: u32) -> Result<(), DoorbellError> {
        if value >= self.entries {
            return Err(DoorbellError::OutOfRange {
                value,
                entries: self.entries,
            });
        }
        let n = self.entries;
        let consumed = (value + n - self.head) % n;
        if consumed > self.pending() {
            return Err(DoorbellError::PastTail {
                value,
                head: self.head,
                tail: self.tail,
            });
        }
        self.head = value;
        Ok(())
    }

    /// Whether one more completion would overwrite one the guest has not consumed (a ring of
    /// n entries holds n - 1).
    pub fn is_full(&self) -> bool {
        (self.tail + 1) % self.entries == self.head
    }

    /// Completions posted that the guest has not said it consumed.
    pub fn pending(&self) -> u32 {
        (self.tail + self.entries - self.head) % self.entries
    }

    /// Writes `cqe` at the tail with the current phase and advances the tail (flipping the
    /// phase when it wraps). Dwords 0-2 go first, then a release fence, then dword 3 (command
    /// identifier, status and phase) in one aligned store.
    pub fn post(&mut self, mem: &GuestMemory, cqe: &Cqe) -> Result<(), PostError> {
        if self.is_full() {
            return Err(PostError::Full);
        }
        let bytes = cqe.to_bytes();
        let gpa = slot(self.base, self.tail, CQE_LEN);
        mem.write(gpa, &bytes[..12]).map_err(PostError::Memory)?;
        let dw3 = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]])
            | (u32::from(self.phase) << 16);
        release_fence();
        mem.write_u32(gpa + 12, dw3).map_err(PostError::Memory)?;
        self.tail += 1;
        if self.tail == self.entries {
            self.tail = 0;
            self.phase = !self.phase;
        }
        Ok(())
    }

    /// The phase the next completion is written with.
    pub fn phase(&self) -> bool {
        self.phase
    }

    pub fn head(&self) -> u32 {
        self.head
    }

    pub fn tail(&self) -> u32 {
        self.tail
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::nvme::Status;
    use crate::sys::mmap::acquire_fence;
    use crate::transport::vfio_user::memory::tests::Guest;

    const BASE: u64 = 0x4000_0000;
    const SQ: u64 = BASE + 0x1000;
    const CQ: u64 = BASE + 0x3000;

    fn guest() -> Guest {
        Guest::new(BASE, 8)
    }

    /// The guest writes a command with `cid` in slot `index` of the SQ.
    fn submit(g: &Guest, index: u32, cid: u16) {
        let sqe = Sqe::new(0x02, cid);
        g.poke(SQ + u64::from(index) * 64, sqe.as_bytes());
    }

    /// What the guest sees in slot `index` of the CQ: the entry and its phase bit.
    fn completion(g: &Guest, index: u32) -> (Cqe, bool) {
        let bytes = g.peek(CQ + u64::from(index) * 16, 16);
        let cqe = Cqe::parse(&bytes).expect("16 bytes");
        (cqe, bytes[14] & 1 == 1)
    }

    fn cqe(cid: u16) -> Cqe {
        Cqe {
            dw0: u32::from(cid) * 3,
            dw1: 0xABCD,
            sqhd: cid % 7,
            sqid: 1,
            cid,
            status: Status::SUCCESS,
        }
    }

    #[test]
    fn rings_check_their_extent_at_creation() {
        let g = guest();
        SubmissionRing::new(&g.mem, SQ, 64).expect("the whole page");
        SubmissionRing::new(&g.mem, BASE + 7 * 0x1000, 64).expect("the last page");
        let past = SubmissionRing::new(&g.mem, BASE + 7 * 0x1000, 65).expect_err("one past");
        assert!(matches!(past, MemoryError::Unmapped { .. }), "{past}");
        assert!(
            SubmissionRing::new(&g.mem, BASE - 64, 2).is_err(),
            "starts before"
        );
        assert!(
            SubmissionRing::new(&g.mem, u64::MAX - 63, 2).is_err(),
            "wraps"
        );
        for entries in [0, 1, MAX_ENTRIES + 1] {
            let err = SubmissionRing::new(&g.mem, SQ, entries).expect_err("size");
            assert!(matches!(err, MemoryError::BadRange { .. }), "{err}");
            assert!(CompletionRing::new(&g.mem, CQ, entries).is_err());
        }
        let err = SubmissionRing::new(&g.mem, SQ + 32, 2).expect_err("misaligned");
        assert!(matches!(err, MemoryError::Misaligned { .. }), "{err}");
        CompletionRing::new(&g.mem, CQ + 16, 2).expect("16-byte aligned is enough");
        assert!(CompletionRing::new(&g.mem, CQ + 8, 2).is_err());
        let big = SubmissionRing::new(&g.mem, SQ, MAX_ENTRIES).expect_err("4 MiB");
        assert!(matches!(big, MemoryError::Unmapped { .. }), "{big}");
    }

    #[test]
    fn submission_ring_wraps() {
        let g = guest();
        let mut sq = SubmissionRing::new(&g.mem, SQ, 4).expect("sq");
        assert!(sq.is_empty());
        assert!(sq.pop(&g.mem).is_none());
        let mut cid = 0u16;
        let mut popped = Vec::new();
        // Six laps of three commands each: the tail passes the end of the ring many times.
        for _ in 0..6 {
            for _ in 0..3 {
                submit(&g, (u32::from(cid)) % 4, cid);
                cid += 1;
            }
            sq.set_tail(u32::from(cid) % 4).expect("doorbell");
            assert_eq!(sq.pending(), 3);
            while let Some(sqe) = sq.pop(&g.mem) {
                popped.push(sqe.expect("sqe").cid());
            }
            assert_eq!(sq.head(), sq.tail());
        }
        assert_eq!(popped, (0..18).collect::<Vec<u16>>());
        assert_eq!(sq.head(), 18 % 4);
    }

    #[test]
    fn a_command_is_copied_out_before_it_is_read() {
        let g = guest();
        let mut sq = SubmissionRing::new(&g.mem, SQ, 2).expect("sq");
        submit(&g, 0, 77);
        sq.set_tail(1).expect("doorbell");
        let sqe = sq.pop(&g.mem).expect("one").expect("sqe");
        submit(&g, 0, 99);
        assert_eq!(
            sqe.cid(),
            77,
            "the guest rewriting the slot changes no copy"
        );
        assert_eq!(sqe.opcode(), 0x02);
    }

    #[test]
    fn invalid_doorbell_values_change_nothing() {
        let g = guest();
        let mut sq = SubmissionRing::new(&g.mem, SQ, 8).expect("sq");
        sq.set_tail(7).expect("last slot");
        for value in [8, 9, u32::MAX] {
            assert_eq!(
                sq.set_tail(value),
                Err(DoorbellError::OutOfRange { value, entries: 8 })
            );
        }
        assert_eq!(sq.tail(), 7);

        let mut cq = CompletionRing::new(&g.mem, CQ, 8).expect("cq");
        assert_eq!(
            cq.set_head(1),
            Err(DoorbellError::PastTail {
                value: 1,
                head: 0,
                tail: 0
            })
        );
        cq.set_head(0).expect("nothing consumed");
        for cid in 0..3 {
            cq.post(&g.mem, &cqe(cid)).expect("post");
        }
        assert!(cq.set_head(4).is_err(), "only three posted");
        assert!(cq.set_head(7).is_err(), "behind the head is past the tail");
        assert_eq!(
            cq.set_head(8),
            Err(DoorbellError::OutOfRange {
                value: 8,
                entries: 8
            })
        );
        assert_eq!(cq.head(), 0);
        cq.set_head(2).expect("two consumed");
        cq.set_head(3).expect("the third");
        assert_eq!(cq.pending(), 0);
        assert!(cq.set_head(2).is_err(), "the head does not go back");
    }

    #[test]
    fn completion_phase_flips_every_lap_as_the_guest_sees_it() {
        let g = guest();
        let entries = 4;
        let mut cq = CompletionRing::new(&g.mem, CQ, entries).expect("cq");
        assert!(cq.phase());
        // Two laps and a half, the guest consuming each entry as it appears.
        let mut guest_head = 0;
        let mut guest_phase = true;
        let mut phases = Vec::new();
        for cid in 0..10u16 {
            cq.post(&g.mem, &cqe(cid)).expect("post");
            let (seen, phase) = completion(&g, guest_head);
            phases.push(u8::from(phase));
            assert_eq!(
                phase, guest_phase,
                "completion {cid} has the phase of its lap"
            );
            assert_eq!(seen, cqe(cid));
            guest_head = (guest_head + 1) % entries;
            if guest_head == 0 {
                guest_phase = !guest_phase;
            }
            // The next slot holds the phase of the lap before: nothing new for the guest.
            assert_ne!(completion(&g, guest_head).1, guest_phase, "after {cid}");
            cq.set_head(guest_head).expect("consumed");
        }
        assert_eq!(phases, [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]);
        assert_eq!(cq.tail(), 10 % 4);
        assert_eq!(cq.phase(), guest_phase);
    }

    #[test]
    fn a_full_completion_queue_refuses_until_the_guest_consumes() {
        let g = guest();
        let mut cq = CompletionRing::new(&g.mem, CQ, 4).expect("cq");
        for cid in 0..3 {
            assert!(!cq.is_full());
            cq.post(&g.mem, &cqe(cid)).expect("post");
        }
        assert!(cq.is_full());
        assert!(matches!(cq.post(&g.mem, &cqe(3)), Err(PostError::Full)));
        assert_eq!(
            completion(&g, 3),
            (Cqe::default(), false),
            "slot 3 untouched"
        );
        cq.set_head(1).expect("one consumed");
        cq.post(&g.mem, &cqe(3)).expect("room for one");
        assert!(cq.is_full());
        assert_eq!(completion(&g, 3), (cqe(3), true));
        cq.post(&g.mem, &cqe(4)).expect_err("full again");
        cq.set_head(0).expect("all consumed");
        cq.post(&g.mem, &cqe(4)).expect("wrapped");
        assert_eq!(completion(&g, 0), (cqe(4), false), "second lap, phase 0");
    }

    #[test]
    fn an_unmap_between_accesses_is_an_error_not_a_crash() {
        let mut g = guest();
        let mut sq = SubmissionRing::new(&g.mem, SQ, 4).expect("sq");
        let mut cq = CompletionRing::new(&g.mem, CQ, 4).expect("cq");
        submit(&g, 0, 1);
        submit(&g, 1, 2);
        sq.set_tail(2).expect("doorbell");
        assert_eq!(sq.pop(&g.mem).expect("one").expect("sqe").cid(), 1);
        cq.post(&g.mem, &cqe(1)).expect("post");
        let generation = g.mem.generation();

        g.mem.unmap(BASE, 8 * 0x1000).expect("unmap");
        assert_ne!(g.mem.generation(), generation);
        let err = sq
            .pop(&g.mem)
            .expect("still pending")
            .expect_err("memory gone");
        assert!(matches!(err, MemoryError::Unmapped { .. }), "{err}");
        assert_eq!(sq.head(), 1, "the head stays");
        let err = cq.post(&g.mem, &cqe(2)).expect_err("memory gone");
        assert!(
            matches!(err, PostError::Memory(MemoryError::Unmapped { .. })),
            "{err}"
        );
        assert_eq!(cq.tail(), 1, "the tail stays");

        // Mapped again (another file, as after a guest reboot): the rings carry on there.
        let g2 = Guest::new(BASE, 8);
        submit(&g2, 1, 42);
        assert_eq!(sq.pop(&g2.mem).expect("one").expect("sqe").cid(), 42);
        cq.post(&g2.mem, &cqe(2)).expect("post");
        assert_eq!(completion(&g2, 1), (cqe(2), true));
    }

    #[test]
    fn a_read_only_queue_region_refuses_completions() {
        let fd = crate::sys::mmap::memfd(0x1000).expect("memfd");
        let mut mem = GuestMemory::new();
        mem.map(BASE, 0x1000, Prot::READ, Some((fd, 0)))
            .expect("map");
        assert!(matches!(
            CompletionRing::new(&mem, BASE, 16),
            Err(MemoryError::NotWritable { .. })
        ));
        SubmissionRing::new(&mem, BASE, 16).expect("readable is enough for an SQ");
    }

    #[test]
    fn a_guest_polling_the_phase_never_sees_a_partial_entry() {
        let g = guest();
        let entries = 16;
        let total = 5_000u32;
        let mut cq = CompletionRing::new(&g.mem, CQ, entries).expect("cq");
        let head = AtomicU32::new(0);
        let failed = AtomicBool::new(false);
        // A lost completion must fail the test, not hang it.
        let deadline = Instant::now() + Duration::from_secs(30);
        std::thread::scope(|s| {
            // The guest's driver: waits for the phase, reads the entry, checks it, consumes.
            s.spawn(|| {
                let (mut index, mut phase) = (0u32, true);
                for n in 0..total {
                    let gpa = usize::try_from(CQ - BASE).expect("offset") + index as usize * 16;
                    loop {
                        let dw3 = g.ram.load_u32(gpa + 12).expect("load");
                        if (dw3 >> 16) & 1 == u32::from(phase) {
                            break;
                        }
                        if failed.load(Ordering::Relaxed) || Instant::now() > deadline {
                            failed.store(true, Ordering::Relaxed);
                            return;
                        }
                        std::thread::yield_now();
                    }
                    acquire_fence();
                    let mut bytes = [0u8; 16];
                    g.ram.read_at(gpa, &mut bytes).expect("read");
                    let seen = Cqe::parse(&bytes).expect("cqe");
                    let cid = u16::try_from(n % 65536).expect("cid");
                    if seen != cqe(cid) {
                        failed.store(true, Ordering::Relaxed);
                    }
                    index = (index + 1) % entries;
                    if index == 0 {
                        phase = !phase;
                    }
                    head.store(index, Ordering::Release);
                }
            });
            let mut n = 0;
            while n < total {
                cq.set_head(head.load(Ordering::Acquire)).expect("head");
                match cq.post(&g.mem, &cqe(u16::try_from(n % 65536).expect("cid"))) {
                    Ok(()) => n += 1,
                    Err(PostError::Full) => {
                        if failed.load(Ordering::Relaxed) || Instant::now() > deadline {
                            failed.store(true, Ordering::Relaxed);
                            break;
                        }
                        std::thread::yield_now();
                    }
                    Err(_) => {
                        failed.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
        });
        assert!(
            !failed.load(Ordering::Relaxed),
            "a post failed or the guest saw a torn completion"
        );
    }
}
