//! A fake VMM with a guest NVMe driver in it: `vfio_user::Client` (rust-vmm's VMM side of the
//! protocol) connected to the target's socket, guest RAM in a memfd shared with the target by
//! DMA_MAP, MSI-X vectors as eventfds, and the driver's side of the NVMe PCIe queues (SQEs
//! written into guest RAM, doorbells rung by REGION_WRITE or, once the doorbell page is
//! mapped, by stores into it, completions read by phase bit). After [`Guest::map_memory`] the
//! driver reaches guest RAM and the doorbell page through mappings, as fast as a vCPU does.

#![allow(dead_code)]

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::atomic::{Ordering, fence};

use nvmf_tgt::sys::mmap::{MapProt, Mapping};
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fs::MemfdFlags;

/// Guest RAM: 64 MiB at guest physical address 0.
pub const RAM_SIZE: u64 = 64 << 20;
pub const PAGE: u64 = 4096;

pub const BAR0: u32 = 0;
pub const CONFIG: u32 = 7;
pub const MSIX_INDEX: u32 = 2;
/// VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER
pub const IRQ_EVENTFD_TRIGGER: u32 = 4 | 32;

/// Where the driver keeps things in guest RAM.
pub const ASQ: u64 = 0x1_0000;
pub const ACQ: u64 = 0x2_0000;
pub const IOSQ: u64 = 0x3_0000;
pub const IOCQ: u64 = 0x4_0000;
pub const IDENTIFY: u64 = 0x10_0000;
pub const PRP_LISTS: u64 = 0x18_0000;
pub const DATA: u64 = 0x20_0000;
/// The shadow doorbell and EventIdx buffers (Doorbell Buffer Config), a page each.
pub const SHADOW: u64 = 0x5_0000;
pub const EVENT_IDX: u64 = 0x6_0000;

pub const ADMIN_ENTRIES: u16 = 32;
pub const IO_ENTRIES: u16 = 64;

/// One completion as the driver reads it.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub dw0: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// Status field without the phase bit: SCT << 8 | SC (DNR and More above).
    pub status: u16,
}

impl Completion {
    pub fn sc(&self) -> u8 {
        (self.status & 0xFF) as u8
    }
    pub fn sct(&self) -> u8 {
        ((self.status >> 8) & 0x7) as u8
    }
}

struct Ring {
    base: u64,
    entries: u16,
    /// SQ: the tail the driver writes; CQ: the head it consumes.
    index: u16,
    phase: bool,
}

/// The guest: its RAM, its interrupts, its queues.
pub struct Guest {
    pub client: vfio_user::Client,
    ram: OwnedFd,
    vectors: Vec<OwnedFd>,
    sqs: Vec<Option<Ring>>,
    cqs: Vec<Option<Ring>>,
    next_cid: u16,
    /// BAR0's file and the file offset of BAR0's offset 0, once the doorbells are mapped.
    mapped: Option<(std::fs::File, u64)>,
    /// Guest RAM and the doorbell page mapped into this process ([`Guest::map_memory`]).
    ram_map: Option<Mapping>,
    bell_map: Option<Mapping>,
    /// Doorbell Buffer Config succeeded: I/O queues' doorbells go through the shadows.
    pub shadowed: bool,
    /// I/O doorbell updates through the shadows that rang the real doorbell, and that did
    /// not (EventIdx said the target would look anyway).
    pub rings: u64,
    pub quiet: u64,
}

impl Guest {
    /// Connects to `socket`, maps guest RAM, enables MSI-X with `vectors` eventfds.
    pub fn connect(socket: &Path, vectors: u32) -> Self {
        let mut client = vfio_user::Client::new(socket).expect("vfio-user client");
        let ram = rustix::fs::memfd_create("guest-ram", MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&ram, RAM_SIZE).expect("ftruncate");
        client
            .dma_map(0, 0, RAM_SIZE, ram.as_raw_fd())
            .expect("dma map");
        let mut guest = Self {
            client,
            ram,
            vectors: Vec::new(),
            sqs: (0..8).map(|_| None).collect(),
            cqs: (0..8).map(|_| None).collect(),
            next_cid: 1,
            mapped: None,
            ram_map: None,
            bell_map: None,
            shadowed: false,
            rings: 0,
            quiet: 0,
        };
        guest.enable_msix(vectors);
        guest
    }

    /// Enables MSI-X in config space and gives the device an eventfd per vector.
    pub fn enable_msix(&mut self, vectors: u32) {
        let cap = self.find_capability(0x11).expect("MSI-X capability");
        let control = self.config_read16(cap + 2);
        self.config_write16(cap + 2, control | 0x8000);
        // Bus master on, as a driver does before DMA.
        let command = self.config_read16(0x04);
        self.config_write16(0x04, command | 0x6);
        self.vectors = (0..vectors)
            .map(|_| {
                rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
                    .expect("eventfd")
            })
            .collect();
        let fds: Vec<i32> = self.vectors.iter().map(|fd| fd.as_raw_fd()).collect();
        self.client
            .set_irqs(MSIX_INDEX, IRQ_EVENTFD_TRIGGER, 0, vectors, &fds)
            .expect("set irqs");
    }

    pub fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.client
            .region_read(CONFIG, offset, data)
            .expect("config read");
    }

    pub fn config_read16(&mut self, offset: u64) -> u16 {
        let mut b = [0; 2];
        self.config_read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn config_read32(&mut self, offset: u64) -> u32 {
        let mut b = [0; 4];
        self.config_read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn config_write16(&mut self, offset: u64, value: u16) {
        self.client
            .region_write(CONFIG, offset, &value.to_le_bytes())
            .expect("config write");
    }

    /// The config-space offset of capability `id`, walking the list from 0x34.
    pub fn find_capability(&mut self, id: u8) -> Option<u64> {
        let mut at = u64::from(self.config_read16(0x34) & 0xFF);
        for _ in 0..48 {
            if at == 0 {
                return None;
            }
            let header = self.config_read16(at);
            if (header & 0xFF) as u8 == id {
                return Some(at);
            }
            at = u64::from(header >> 8);
        }
        None
    }

    pub fn read_reg32(&mut self, offset: u64) -> u32 {
        let mut b = [0; 4];
        self.client
            .region_read(BAR0, offset, &mut b)
            .expect("bar0 read");
        u32::from_le_bytes(b)
    }

    pub fn read_reg64(&mut self, offset: u64) -> u64 {
        let mut b = [0; 8];
        self.client
            .region_read(BAR0, offset, &mut b)
            .expect("bar0 read");
        u64::from_le_bytes(b)
    }

    pub fn write_reg32(&mut self, offset: u64, value: u32) {
        self.client
            .region_write(BAR0, offset, &value.to_le_bytes())
            .expect("bar0 write");
    }

    pub fn write_reg64(&mut self, offset: u64, value: u64) {
        self.client
            .region_write(BAR0, offset, &value.to_le_bytes())
            .expect("bar0 write");
    }

    /// Maps the doorbell page as a VMM does (BAR0's fd at its file offset, the sparse area
    /// 0x1000..0x2000): from now on doorbells are stores into it, which nothing signals. The
    /// stores are `pwrite`s into the file at the offset the mapping would have, the same
    /// page-cache page; every doorbell value here is below 256, so no store can tear.
    pub fn map_doorbells(&mut self) {
        let region = self.client.region(BAR0).expect("BAR0");
        assert_ne!(region.flags & 4, 0, "BAR0 is mappable: {region:?}");
        let areas: Vec<(u64, u64)> = region
            .sparse_areas
            .iter()
            .map(|a| (a.offset, a.size))
            .collect();
        assert_eq!(areas, vec![(0x1000, 0x1000)], "the doorbell page only");
        let file = region.file_offset.as_ref().expect("BAR0's fd");
        let start = file.start();
        let file = file.file().try_clone().expect("dup");
        let len = file.metadata().expect("fstat").len();
        assert!(start + 0x2000 <= len, "the file holds the doorbell page");
        self.mapped = Some((file, start));
    }

    /// Back to ringing doorbells by REGION_WRITE (a VMM that traps them again).
    pub fn trap_doorbells(&mut self) {
        self.mapped = None;
        self.bell_map = None;
    }

    /// From now on guest RAM and (if [`map_doorbells`](Self::map_doorbells) came first) the
    /// doorbell page are reached through mappings, not `pread`/`pwrite`: a completion is seen
    /// and a doorbell stored within nanoseconds, as a vCPU does, not a system call later.
    pub fn map_memory(&mut self) {
        let len = usize::try_from(RAM_SIZE).expect("RAM fits");
        self.ram_map = Some(Mapping::new(&self.ram, 0, len, MapProt::ReadWrite).expect("map RAM"));
        if let Some((file, start)) = &self.mapped {
            let page = Mapping::new(file, start + 0x1000, 0x1000, MapProt::ReadWrite)
                .expect("map the doorbell page");
            self.bell_map = Some(page);
        }
    }

    /// The doorbell page as the guest would read it back (mapped doorbells only).
    pub fn doorbell_page(&self) -> Vec<u8> {
        let (file, start) = self.mapped.as_ref().expect("mapped");
        let mut buf = vec![0; 4096];
        let n = rustix::io::pread(file, &mut buf, start + 0x1000).expect("pread");
        assert_eq!(n, buf.len());
        buf
    }

    /// Rings the doorbell at BAR0 `offset`: a store into the mapped page, or a REGION_WRITE.
    pub fn ring(&mut self, offset: u64, value: u32) {
        if let Some(page) = &self.bell_map {
            // What the driver wrote before (an SQE, the entries it consumed) comes first.
            fence(Ordering::SeqCst);
            let at = usize::try_from(offset - 0x1000).expect("a doorbell");
            page.store_u32(at, value).expect("store a doorbell");
            return;
        }
        match &self.mapped {
            Some((file, start)) => {
                let n =
                    rustix::io::pwrite(file, &value.to_le_bytes(), start + offset).expect("store");
                assert_eq!(n, 4);
            }
            None => self.write_reg32(offset, value),
        }
    }

    /// Truncates the guest RAM file to `len` bytes under the target's mapping of it, as a
    /// hostile or broken VMM could.
    pub fn shrink_ram(&self, len: u64) {
        rustix::fs::ftruncate(&self.ram, len).expect("ftruncate");
    }

    /// Maps guest RAM again (the same memfd at 0), after the VMM unmapped it.
    pub fn remap_ram(&mut self) {
        self.client
            .dma_map(0, 0, RAM_SIZE, self.ram.as_raw_fd())
            .expect("dma map");
    }

    /// Maps `size` bytes of a new memfd at guest address `iova` (a second RAM region);
    /// returns the memfd, to read what the device wrote there even after an unmap.
    pub fn map_region(&mut self, iova: u64, size: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("guest-region", MemfdFlags::CLOEXEC).expect("memfd");
        rustix::fs::ftruncate(&fd, size).expect("ftruncate");
        self.client
            .dma_map(0, iova, size, fd.as_raw_fd())
            .expect("dma map");
        fd
    }

    pub fn write_ram(&self, gpa: u64, data: &[u8]) {
        if let Some(ram) = &self.ram_map {
            let at = usize::try_from(gpa).expect("in RAM");
            ram.write_at(at, data).expect("write RAM");
            return;
        }
        let n = rustix::io::pwrite(&self.ram, data, gpa).expect("pwrite");
        assert_eq!(n, data.len());
    }

    pub fn read_ram(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        if let Some(ram) = &self.ram_map {
            let at = usize::try_from(gpa).expect("in RAM");
            ram.read_at(at, &mut buf).expect("read RAM");
            return buf;
        }
        let n = rustix::io::pread(&self.ram, &mut buf, gpa).expect("pread");
        assert_eq!(n, len);
        buf
    }

    /// Sets the admin queue up and enables the controller; waits for CSTS.RDY.
    pub fn enable(&mut self) {
        self.write_ram(ASQ, &vec![0; usize::from(ADMIN_ENTRIES) * 64]);
        self.write_ram(ACQ, &vec![0; usize::from(ADMIN_ENTRIES) * 16]);
        let aqa = (u32::from(ADMIN_ENTRIES - 1) << 16) | u32::from(ADMIN_ENTRIES - 1);
        self.write_reg32(0x24, aqa);
        self.write_reg64(0x28, ASQ);
        self.write_reg64(0x30, ACQ);
        // IOCQES 4, IOSQES 6, MPS 0, CSS 0, EN.
        self.write_reg32(0x14, (4 << 20) | (6 << 16) | 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.read_reg32(0x1C) & 1 == 0 {
            assert!(Instant::now() < deadline, "CSTS.RDY never set");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.sqs[0] = Some(Ring {
            base: ASQ,
            entries: ADMIN_ENTRIES,
            index: 0,
            phase: true,
        });
        self.cqs[0] = Some(Ring {
            base: ACQ,
            entries: ADMIN_ENTRIES,
            index: 0,
            phase: true,
        });
    }

    /// Clears CC.EN and waits for CSTS.RDY to clear; the queues are gone.
    pub fn disable(&mut self) {
        let cc = self.read_reg32(0x14);
        self.write_reg32(0x14, cc & !1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.read_reg32(0x1C) & 1 != 0 {
            assert!(Instant::now() < deadline, "CSTS.RDY never cleared");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        // A reset forgets the doorbell buffers.
        self.shadowed = false;
    }

    /// Doorbell Buffer Config with [`SHADOW`] and [`EVENT_IDX`], zeroed first as Linux's
    /// are; from its success on, I/O doorbells go through the shadows.
    pub fn config_shadow(&mut self) -> Completion {
        self.write_ram(SHADOW, &[0; 4096]);
        self.write_ram(EVENT_IDX, &[0; 4096]);
        let c = self.admin(sqe(0x7C, 0, SHADOW, EVENT_IDX, [0; 6]));
        self.shadowed = c.status == 0;
        c
    }

    /// The dword at `gpa`.
    pub fn read_u32(&self, gpa: u64) -> u32 {
        let b = self.read_ram(gpa, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The EventIdx the target published for doorbell `index` (2 qid: SQ tail, 2 qid + 1:
    /// CQ head).
    pub fn event_idx(&self, index: u64) -> u32 {
        self.read_u32(EVENT_IDX + 4 * index)
    }

    /// Moves doorbell `index` (2 qid: SQ tail, 2 qid + 1: CQ head) to `value`. For a shadowed
    /// I/O queue, as Linux's `nvme_dbbuf_update_and_check_event`: the shadow first, a full
    /// fence, then the EventIdx decides whether the real doorbell rings too. With `hold`, the
    /// shadow moves but nothing rings. Returns whether the real doorbell was (to be) rung.
    fn update_doorbell(&mut self, index: u64, value: u32, hold: bool) -> bool {
        if self.shadowed && index >= 2 {
            let at = SHADOW + 4 * index;
            let old = self.read_u32(at);
            self.write_ram(at, &value.to_le_bytes());
            // The store (a pwrite) is visible before the load that follows.
            fence(Ordering::SeqCst);
            let event_idx = self.event_idx(index);
            if !need_event(event_idx as u16, value as u16, old as u16) {
                self.quiet += 1;
                return false;
            }
            self.rings += 1;
        }
        if !hold {
            self.ring(0x1000 + 4 * index, value);
        }
        true
    }

    /// Writes `sqe` at the tail of SQ `qid` and moves the shadow tail, without ringing; returns
    /// whether EventIdx asked for a ring (see [`kick`](Self::kick)).
    pub fn submit_held(&mut self, qid: u16, sqe: &[u8; 64]) -> bool {
        let ring = self.sqs[usize::from(qid)].as_mut().expect("sq exists");
        let at = ring.base + u64::from(ring.index) * 64;
        ring.index = (ring.index + 1) % ring.entries;
        let tail = ring.index;
        self.write_ram(at, sqe);
        self.update_doorbell(2 * u64::from(qid), u32::from(tail), true)
    }

    /// Rings SQ `qid`'s real doorbell with `value`, whatever the shadow says.
    pub fn kick(&mut self, qid: u16, value: u32) {
        self.ring(0x1000 + 8 * u64::from(qid), value);
    }

    /// The tail the driver has written SQ `qid` up to.
    pub fn sq_tail(&self, qid: u16) -> u16 {
        self.sqs[usize::from(qid)]
            .as_ref()
            .expect("sq exists")
            .index
    }

    /// The head the driver has consumed CQ `qid` up to.
    pub fn cq_head(&self, qid: u16) -> u16 {
        self.cqs[usize::from(qid)]
            .as_ref()
            .expect("cq exists")
            .index
    }

    pub fn next_cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        self.next_cid
    }

    /// Writes `sqe` (its CID already set) at the tail of SQ `qid` and rings its doorbell.
    pub fn submit(&mut self, qid: u16, sqe: &[u8; 64]) {
        let ring = self.sqs[usize::from(qid)].as_mut().expect("sq exists");
        let at = ring.base + u64::from(ring.index) * 64;
        ring.index = (ring.index + 1) % ring.entries;
        let tail = ring.index;
        self.write_ram(at, sqe);
        self.update_doorbell(2 * u64::from(qid), u32::from(tail), false);
    }

    /// Waits for the next completion on CQ `cqid` (by its phase bit), consuming it and
    /// ringing the head doorbell. With `vector`, the completion must come with its interrupt:
    /// the eventfd fires (the target posts before it signals), then the entry is there.
    pub fn wait_completion(&mut self, cqid: u16, vector: Option<usize>) -> Completion {
        if let Some(v) = vector {
            assert!(
                self.wait_interrupt(v, Duration::from_secs(10)),
                "no interrupt on vector {v} for CQ {cqid}"
            );
            return self
                .take_completion(cqid)
                .unwrap_or_else(|| panic!("an interrupt on vector {v} but no entry on CQ {cqid}"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = self.take_completion(cqid) {
                return c;
            }
            assert!(Instant::now() < deadline, "no completion on CQ {cqid}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The completion at the head of CQ `cqid` if its phase says it is new.
    pub fn take_completion(&mut self, cqid: u16) -> Option<Completion> {
        let (at, phase) = {
            let ring = self.cqs[usize::from(cqid)].as_ref().expect("cq exists");
            (ring.base + u64::from(ring.index) * 16, ring.phase)
        };
        if let Some(ram) = &self.ram_map {
            // The dword with the phase bit first, in one load, as the target stores it last.
            let dw3 = ram
                .load_u32(usize::try_from(at + 12).expect("in RAM"))
                .expect("load");
            if (dw3 & (1 << 16) != 0) != phase {
                return None;
            }
            fence(Ordering::Acquire);
        }
        let b = self.read_ram(at, 16);
        let raw_status = u16::from_le_bytes([b[14], b[15]]);
        if (raw_status & 1 == 1) != phase {
            return None;
        }
        let ring = self.cqs[usize::from(cqid)].as_mut().expect("cq exists");
        ring.index = (ring.index + 1) % ring.entries;
        if ring.index == 0 {
            ring.phase = !ring.phase;
        }
        let head = ring.index;
        self.update_doorbell(2 * u64::from(cqid) + 1, u32::from(head), false);
        Some(Completion {
            dw0: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            sqhd: u16::from_le_bytes([b[8], b[9]]),
            sqid: u16::from_le_bytes([b[10], b[11]]),
            cid: u16::from_le_bytes([b[12], b[13]]),
            status: raw_status >> 1,
        })
    }

    /// Waits up to `timeout` for vector `v`'s eventfd; true if it fired (and is reset).
    pub fn wait_interrupt(&self, v: usize, timeout: Duration) -> bool {
        let fd = &self.vectors[v];
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let ts = rustix::event::Timespec {
            tv_sec: i64::from(ms / 1000),
            tv_nsec: i64::from(ms % 1000) * 1_000_000,
        };
        let ready = rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(0);
        if ready == 0 {
            return false;
        }
        let mut b = [0u8; 8];
        let _ = rustix::io::read(fd.as_fd(), &mut b);
        true
    }

    /// Waits up to `timeout` for vector `v`'s eventfd; how many interrupts it counted (and
    /// resets it), `None` if none came.
    pub fn wait_interrupt_count(&self, v: usize, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.interrupts(v);
            if n > 0 {
                return Some(n);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The interrupts vector `v` got since its eventfd was last read (its counter, reset).
    pub fn interrupts(&self, v: usize) -> u64 {
        let mut b = [0u8; 8];
        match rustix::io::read(self.vectors[v].as_fd(), &mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    /// Runs one admin command and waits for its completion.
    pub fn admin(&mut self, mut sqe: [u8; 64]) -> Completion {
        let cid = self.next_cid();
        sqe[2..4].copy_from_slice(&cid.to_le_bytes());
        self.submit(0, &sqe);
        let c = self.wait_completion(0, Some(0));
        assert_eq!(c.cid, cid, "completion for the command sent");
        c
    }

    /// Creates I/O CQ and SQ `qid` (interrupts on `vector`).
    pub fn create_io_queues(&mut self, qid: u16, vector: u16) {
        // One page each: 64 entries of 64 bytes (SQ) or 16 bytes (CQ).
        let cq_base = IOCQ + u64::from(qid - 1) * PAGE;
        let sq_base = IOSQ + u64::from(qid - 1) * PAGE;
        self.write_ram(cq_base, &vec![0; usize::from(IO_ENTRIES) * 16]);
        let size = u32::from(IO_ENTRIES - 1) << 16;
        let c = self.admin(sqe(
            0x05,
            0,
            cq_base,
            0,
            [
                u32::from(qid) | size,
                0x3 | (u32::from(vector) << 16),
                0,
                0,
                0,
                0,
            ],
        ));
        assert_eq!(c.status, 0, "create I/O CQ");
        let c = self.admin(sqe(
            0x01,
            0,
            sq_base,
            0,
            [
                u32::from(qid) | size,
                0x1 | (u32::from(qid) << 16),
                0,
                0,
                0,
                0,
            ],
        ));
        assert_eq!(c.status, 0, "create I/O SQ");
        self.cqs[usize::from(qid)] = Some(Ring {
            base: cq_base,
            entries: IO_ENTRIES,
            index: 0,
            phase: true,
        });
        self.sqs[usize::from(qid)] = Some(Ring {
            base: sq_base,
            entries: IO_ENTRIES,
            index: 0,
            phase: true,
        });
    }

    /// Runs one I/O command on queue `qid` and waits for its completion (vector `qid`).
    pub fn io(&mut self, qid: u16, mut sqe: [u8; 64]) -> Completion {
        let cid = self.next_cid();
        sqe[2..4].copy_from_slice(&cid.to_le_bytes());
        self.submit(qid, &sqe);
        let c = self.wait_completion(qid, Some(usize::from(qid)));
        assert_eq!(c.cid, cid, "completion for the command sent");
        c
    }

    /// PRP1 and PRP2 for `pages` (each a page-aligned guest address, the first one possibly
    /// with `offset`), building a PRP list at `list` when needed.
    pub fn prps(&self, pages: &[u64], offset: u64, list: u64) -> (u64, u64) {
        match pages.len() {
            0 => (0, 0),
            1 => (pages[0] + offset, 0),
            2 => (pages[0] + offset, pages[1]),
            _ => {
                let entries: Vec<u8> = pages[1..].iter().flat_map(|p| p.to_le_bytes()).collect();
                self.write_ram(list, &entries);
                (pages[0] + offset, list)
            }
        }
    }
}

/// Linux's `nvme_dbbuf_need_event`: moving a doorbell from `old` to `new` passes `event_idx`.
pub fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

/// An SQE: opcode, nsid, PRP1, PRP2, CDW10..CDW15.
pub fn sqe(opcode: u8, nsid: u32, prp1: u64, prp2: u64, cdw: [u32; 6]) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0] = opcode;
    b[4..8].copy_from_slice(&nsid.to_le_bytes());
    b[24..32].copy_from_slice(&prp1.to_le_bytes());
    b[32..40].copy_from_slice(&prp2.to_le_bytes());
    for (i, v) in cdw.iter().enumerate() {
        b[40 + 4 * i..44 + 4 * i].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// A Read (0x02) or Write (0x01) of `blocks` 512-byte blocks at `lba`.
pub fn rw(opcode: u8, lba: u64, blocks: u32, prp1: u64, prp2: u64) -> [u8; 64] {
    let lba_lo = (lba & 0xFFFF_FFFF) as u32;
    let lba_hi = (lba >> 32) as u32;
    sqe(opcode, 1, prp1, prp2, [lba_lo, lba_hi, blocks - 1, 0, 0, 0])
}
