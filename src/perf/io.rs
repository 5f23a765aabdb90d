//! What the measurement loop (`run`) drives, whatever carries the commands: command slots,
//! the queues that hold them, and the session that owns the queues and knows how to wait for
//! them. NVMe/TCP (`queue`, `session`) and vfio-user (`vfio_user`) implement these; the loop,
//! the workload, verification and the statistics are the same for both.

use std::time::{Duration, Instant};

use super::workload::Op;
use super::{PerfConfig, PerfError};
use crate::nvme::Status;

/// The namespace a run reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct Namespace {
    pub nsid: u32,
    pub blocks: u64,
    pub block_size: usize,
}

impl Namespace {
    /// Size in blocks and block size from an Identify Namespace page; `None` for an inactive
    /// namespace (size 0) or a page too short or with an impossible block size.
    pub fn from_identify(nsid: u32, page: &[u8]) -> Option<Self> {
        let nsze = u64::from_le_bytes(page.get(..8)?.try_into().ok()?);
        let flbas = *page.get(26)?;
        let format = usize::from(flbas & 0xF) | (usize::from((flbas >> 5) & 0x3) << 4);
        let lbads = *page.get(128 + 4 * format + 2)?;
        if nsze == 0 || !(9..=30).contains(&lbads) {
            return None;
        }
        Some(Self {
            nsid,
            blocks: nsze,
            block_size: 1usize << lbads,
        })
    }
}

/// Active namespace IDs from an Identify Active Namespace ID list page (CNS 2), in order.
pub fn active_namespaces(list: &[u8]) -> Vec<u32> {
    list.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&n| n != 0)
        .collect()
}

/// What the controller allows, against which the options are checked.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Entries per I/O queue at most (CAP.MQES + 1, or the fabrics queue size).
    pub max_entries: u64,
    /// Identify Controller MDTS: a power of two of `page_size`; 0 means no limit.
    pub mdts: u8,
    /// The controller's minimum memory page size (CAP.MPSMIN).
    pub page_size: usize,
}

/// Checks the options against the namespace and the controller, with a message for the user.
pub fn check_options(cfg: &PerfConfig, ns: &Namespace, limits: Limits) -> Result<(), PerfError> {
    let bad = |msg: String| Err(PerfError::Invalid(msg));
    if cfg.io_size == 0 || cfg.io_size % ns.block_size != 0 {
        return bad(format!(
            "I/O size {} is not a multiple of the namespace's {}-byte blocks",
            cfg.io_size, ns.block_size
        ));
    }
    if limits.mdts > 0 {
        let max = limits.page_size << limits.mdts;
        if cfg.io_size > max {
            return bad(format!(
                "I/O size {} is more than the target's maximum transfer of {max} bytes",
                cfg.io_size
            ));
        }
    }
    if cfg.queue_depth == 0 || u64::from(cfg.queue_depth) + 1 > limits.max_entries {
        return bad(format!(
            "queue depth {} is out of range: the target allows 1 to {}",
            cfg.queue_depth,
            limits.max_entries.saturating_sub(1)
        ));
    }
    let ns_bytes = ns.blocks.saturating_mul(ns.block_size as u64);
    if (cfg.io_size as u64) > ns_bytes {
        return bad(format!(
            "I/O size {} is larger than namespace {} ({ns_bytes} bytes)",
            cfg.io_size, ns.nsid
        ));
    }
    if cfg.connections == 0 {
        return bad("--connections must be at least 1".into());
    }
    Ok(())
}

/// One command slot; a slot's index in its queue is its CID.
#[derive(Debug)]
pub struct Slot {
    pub op: Op,
    pub slba: u64,
    /// The generation stamped into a `--verify` write.
    pub generation: u64,
    pub submitted: Instant,
    /// The write data, or where read data lands: one I/O size with `--verify` (and always on
    /// NVMe/TCP, whose data travels through it); may be empty when nothing looks at the data.
    pub buf: Vec<u8>,
}

impl Slot {
    pub fn new(buf_len: usize, now: Instant) -> Self {
        Self {
            op: Op::Read,
            slba: 0,
            generation: 0,
            submitted: now,
            buf: vec![0; buf_len],
        }
    }
}

/// A finished command.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub cid: u16,
    pub status: Status,
}

/// One I/O queue as the loop drives it: free slots are filled (`alloc`, `submit`), the batch
/// goes out (`flush`), completions come back (`poll_completions`) and their slots are freed
/// (`release`). Errors name the queue.
pub trait Queue {
    /// A free slot's CID, if any.
    fn alloc(&mut self) -> Option<u16>;
    /// Frees slot `cid` (nothing if it is free already).
    fn release(&mut self, cid: u16);
    /// # Panics
    /// If `cid` is not a slot of this queue (the loop only passes CIDs the queue gave).
    fn slot(&self, cid: u16) -> &Slot;
    /// # Panics
    /// As [`Queue::slot`].
    fn slot_mut(&mut self, cid: u16) -> &mut Slot;
    /// Queues the command of slot `cid` (op, slba and, for `--verify` writes, buf already
    /// set); `flush` sends it.
    fn submit(&mut self, cid: u16, now: Instant) -> Result<(), PerfError>;
    /// Sends what `submit` queued. True if anything went out.
    fn flush(&mut self) -> Result<bool, PerfError>;
    /// Pushes the commands that finished to `done` (their slots stay taken until released).
    /// True if anything arrived.
    fn poll_completions(&mut self, done: &mut Vec<Done>) -> Result<bool, PerfError>;
    /// Slots taken.
    fn outstanding(&self) -> usize;
}

/// A connected controller with its I/O queues, as the loop drives it.
pub trait Session {
    type Queue: Queue;

    /// The namespace the I/O goes to.
    fn namespace(&self) -> Namespace;
    fn queues(&mut self) -> &mut [Self::Queue];
    /// Sleeps until a queue may have something or `timeout` passes (the loop checks).
    fn wait(&mut self, timeout: Duration) -> Result<(), PerfError>;
    /// Called every pass: what the transport needs besides I/O (Keep Alive on NVMe/TCP).
    fn housekeeping(&mut self, now: Instant) -> Result<(), PerfError>;
    /// Where the I/O went and to which subsystem, for the report.
    fn target(&self) -> TargetInfo;
    /// How a PCIe controller's doorbells were rung; `None` on fabrics.
    fn doorbells(&self) -> Option<DoorbellUse> {
        None
    }
}

/// How a PCIe controller's doorbells were rung over a run, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DoorbellUse {
    /// `trapped` (messages) or `mapped` (stores into BAR0's doorbell page).
    pub how: &'static str,
    /// The I/O queues' doorbells went through shadow doorbells (Doorbell Buffer Config).
    pub shadow: bool,
    /// I/O queue doorbell writes that reached the controller.
    pub writes: u64,
    /// Shadow doorbell updates of the I/O queues (each one a write only when EventIdx asked).
    pub shadow_updates: u64,
}

/// The report's description of the target.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// `tcp` or `vfio-user`.
    pub transport: &'static str,
    /// An address (`127.0.0.1:4420`) or a socket path.
    pub address: String,
    pub subnqn: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_format_from_flbas() {
        let mut page = vec![0u8; 4096];
        assert!(Namespace::from_identify(1, &page).is_none());
        page[..8].copy_from_slice(&1000u64.to_le_bytes());
        page[128 + 2] = 9;
        page[128 + 4 + 2] = 12;
        let ns = Namespace::from_identify(1, &page).expect("active");
        assert_eq!((ns.blocks, ns.block_size), (1000, 512));
        page[26] = 1;
        let ns = Namespace::from_identify(1, &page).expect("active");
        assert_eq!((ns.blocks, ns.block_size), (1000, 4096));
        assert!(
            Namespace::from_identify(1, &page[..100]).is_none(),
            "short page"
        );
    }

    #[test]
    fn active_list_stops_at_the_first_zero() {
        let mut list = vec![0u8; 4096];
        list[..4].copy_from_slice(&1u32.to_le_bytes());
        list[4..8].copy_from_slice(&3u32.to_le_bytes());
        list[12..16].copy_from_slice(&9u32.to_le_bytes());
        assert_eq!(active_namespaces(&list), [1, 3]);
        assert_eq!(active_namespaces(&list[..6]), [1]);
    }
}
