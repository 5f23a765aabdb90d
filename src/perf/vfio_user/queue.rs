//! One I/O queue pair in guest RAM, driven as a guest NVMe driver drives it: SQEs written at
//! the tail with fixed PRPs per slot (each slot owns its data pages and, for more than two
//! pages, a PRP list written once), completions taken by phase bit, and per batch at most one
//! CQ head and one SQ tail doorbell write, like Linux's `nvme` with blk-mq plugging. With
//! shadow doorbells each of those is a shadow update, and a doorbell write only when the
//! controller's EventIdx asks for it.

use std::sync::Arc;
use std::time::Instant;

use super::VfioError;
use super::guest::{CqRing, DoorbellLayout, Doorbells, GuestRam, ShadowBuffers, SqRing};
use crate::host::HostQueue;
use crate::perf::PerfError;
use crate::perf::io::{Done, Queue, Slot};
use crate::perf::workload::Op;

/// Where one slot's data is and how its commands point at it.
#[derive(Debug, Clone, Copy)]
pub struct SlotMemory {
    pub data: u64,
    pub prp1: u64,
    pub prp2: u64,
}

/// What a queue needs besides its memory.
#[derive(Debug, Clone, Copy)]
pub struct QueueParams {
    pub qid: u16,
    pub nsid: u32,
    pub io_size: usize,
    pub block_size: usize,
    /// Copy write data from the slots into guest RAM and read data back out (`--verify`);
    /// otherwise nobody touches the data, as with a driver reading into pages nobody reads.
    pub copy_data: bool,
}

#[derive(Debug)]
struct Entry {
    slot: Slot,
    mem: SlotMemory,
    busy: bool,
}

pub struct VfioQueue {
    params: QueueParams,
    ram: Arc<GuestRam>,
    doorbells: Doorbells,
    layout: DoorbellLayout,
    sq: SqRing,
    cq: CqRing,
    entries: Vec<Entry>,
    free: Vec<u16>,
    /// The SQ tail and CQ head moved since the last doorbell writes.
    sq_moved: bool,
    cq_moved: bool,
    /// Shadow doorbells, after Doorbell Buffer Config.
    shadow: Option<ShadowBuffers>,
    /// Doorbell writes that reached the controller, and shadow updates.
    writes: u64,
    shadow_updates: u64,
}

impl VfioQueue {
    /// A queue whose rings were created on the controller; `slots` are the data of its
    /// commands, one per CID.
    pub fn new(
        params: QueueParams,
        ram: Arc<GuestRam>,
        doorbells: Doorbells,
        layout: DoorbellLayout,
        rings: (SqRing, CqRing),
        slots: Vec<SlotMemory>,
    ) -> Self {
        let now = Instant::now();
        let buf_len = if params.copy_data { params.io_size } else { 0 };
        let entries: Vec<Entry> = slots
            .into_iter()
            .map(|mem| Entry {
                slot: Slot::new(buf_len, now),
                mem,
                busy: false,
            })
            .collect();
        let depth = u16::try_from(entries.len()).unwrap_or(u16::MAX);
        Self {
            params,
            ram,
            doorbells,
            layout,
            sq: rings.0,
            cq: rings.1,
            entries,
            free: (0..depth).rev().collect(),
            sq_moved: false,
            cq_moved: false,
            shadow: None,
            writes: 0,
            shadow_updates: 0,
        }
    }

    /// Its doorbells go through `shadow` from now on (the controller accepted Doorbell
    /// Buffer Config).
    pub fn with_shadow(mut self, shadow: Option<ShadowBuffers>) -> Self {
        self.shadow = shadow;
        self
    }

    /// Doorbell writes that reached the controller and shadow doorbell updates so far.
    pub fn doorbell_counts(&self) -> (u64, u64) {
        (self.writes, self.shadow_updates)
    }

    fn error(&self, source: VfioError) -> PerfError {
        PerfError::VfioUser {
            during: "I/O",
            qid: Some(self.params.qid),
            source,
        }
    }

    fn take_completions(&mut self, done: &mut Vec<Done>) -> Result<bool, VfioError> {
        let mut any = false;
        while let Some(cqe) = self.cq.pop(&self.ram)? {
            any = true;
            self.cq_moved = true;
            let entry = self
                .entries
                .get(usize::from(cqe.cid))
                .filter(|e| e.busy)
                .ok_or(VfioError::Protocol("completion for an idle CID"))?;
            if cqe.sqid != self.params.qid {
                return Err(VfioError::Protocol(
                    "completion for another submission queue",
                ));
            }
            if self.params.copy_data && entry.slot.op == Op::Read && cqe.status.is_success() {
                let data = entry.mem.data;
                let entry = &mut self.entries[usize::from(cqe.cid)];
                self.ram.read(data, &mut entry.slot.buf)?;
            }
            done.push(Done {
                cid: cqe.cid,
                status: cqe.status,
            });
        }
        Ok(any)
    }

    fn push(&mut self, cid: u16, now: Instant) -> Result<(), VfioError> {
        let p = self.params;
        let entry = &mut self.entries[usize::from(cid)];
        let slot = &mut entry.slot;
        slot.submitted = now;
        let nlb = u32::try_from(p.io_size / p.block_size).unwrap_or(u32::MAX);
        let mut sqe = match slot.op {
            Op::Read => HostQueue::read_sqe(p.nsid, slot.slba, nlb),
            Op::Write => {
                if p.copy_data {
                    self.ram.write(entry.mem.data, &slot.buf)?;
                }
                HostQueue::write_sqe(p.nsid, slot.slba, nlb, false)
            }
        };
        sqe.set_cid(cid);
        set_prps(&mut sqe, entry.mem.prp1, entry.mem.prp2);
        self.sq.push(&self.ram, &sqe)?;
        self.sq_moved = true;
        Ok(())
    }

    fn ring(&mut self) -> Result<bool, VfioError> {
        let qid = self.params.qid;
        let moved = self.cq_moved || self.sq_moved;
        if std::mem::take(&mut self.cq_moved) {
            let head = self.cq.head();
            self.write_doorbell(self.layout.cq_head(qid), head)?;
        }
        if std::mem::take(&mut self.sq_moved) {
            let tail = self.sq.tail();
            self.write_doorbell(self.layout.sq_tail(qid), tail)?;
        }
        self.doorbells.flush()?;
        Ok(moved)
    }

    /// Moves the doorbell at BAR0 `offset` to `value`: through the shadow, written only if
    /// EventIdx asks, or written.
    fn write_doorbell(&mut self, offset: u64, value: u16) -> Result<(), VfioError> {
        if let Some(shadow) = self.shadow {
            self.shadow_updates += 1;
            if !shadow.update(&self.ram, offset, value)? {
                return Ok(());
            }
        }
        self.writes += 1;
        self.doorbells.ring(offset, u32::from(value))?;
        Ok(())
    }
}

impl Queue for VfioQueue {
    fn alloc(&mut self) -> Option<u16> {
        let cid = self.free.pop()?;
        self.entries[usize::from(cid)].busy = true;
        Some(cid)
    }

    fn release(&mut self, cid: u16) {
        if let Some(entry) = self.entries.get_mut(usize::from(cid)).filter(|e| e.busy) {
            entry.busy = false;
            self.free.push(cid);
        }
    }

    fn slot(&self, cid: u16) -> &Slot {
        &self.entries[usize::from(cid)].slot
    }

    fn slot_mut(&mut self, cid: u16) -> &mut Slot {
        &mut self.entries[usize::from(cid)].slot
    }

    fn submit(&mut self, cid: u16, now: Instant) -> Result<(), PerfError> {
        self.push(cid, now).map_err(|e| self.error(e))
    }

    fn flush(&mut self) -> Result<bool, PerfError> {
        self.ring().map_err(|e| self.error(e))
    }

    fn poll_completions(&mut self, done: &mut Vec<Done>) -> Result<bool, PerfError> {
        self.take_completions(done).map_err(|e| self.error(e))
    }

    fn outstanding(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

/// PRP Entry 1 and 2 of a command (dwords 6-9).
pub fn set_prps(sqe: &mut crate::nvme::Sqe, prp1: u64, prp2: u64) {
    let bytes = sqe.bytes_mut();
    bytes[24..32].copy_from_slice(&prp1.to_le_bytes());
    bytes[32..40].copy_from_slice(&prp2.to_le_bytes());
}
