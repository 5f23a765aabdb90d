//! vfio-user: an emulated NVMe PCI controller for a VM, served over a UNIX socket
//! (`DIR/cntrl`) to a VMM (QEMU's `vfio-user-pci`, cloud-hypervisor's `--user-device`).
//!
//! Rooms: `protocol` (the messages), `server` (one VMM's connection, non-blocking, knowing no
//! PCI), `device` and `msix` (the PCI function), `memory`, `prp` and `queues` (guest memory,
//! checked at every access), `doorbells` (the doorbell page a VMM maps, polled),
//! `irq_coalescing` (adaptive interrupts: when a held completion interrupt fires),
//! `nvme_device` (BAR0 onto the controller, queues onto the transport-neutral queue core),
//! `endpoint` (the reactor subscriber for the socket).

pub mod device;
pub mod doorbells;
pub mod endpoint;
pub mod irq_coalescing;
pub mod memory;
pub mod msix;
pub mod nvme_device;
pub mod protocol;
pub mod prp;
pub mod queues;
pub mod server;

use std::sync::Arc;

pub use endpoint::VfioUserEndpoint;

use crate::controller::{Registry, TransportLimits};

/// MSI-X vectors of the emulated controller: the admin queue's and one per I/O completion
/// queue a VM of up to 31 vCPUs asks for (Linux's `nvme` uses one per CPU).
pub const INTERRUPT_VECTORS: u16 = 32;
/// Entries per queue at most: a backend tag has 16 bits, the queue ID takes those the
/// command's index within its queue leaves (see [`nvme_device::tag_layout`]).
pub const MAX_QUEUE_DEPTH: u32 = 4096;

/// Shared by every vfio-user endpoint of the target.
#[derive(Debug)]
pub struct VfioUserContext {
    pub registry: Arc<Registry>,
    pub limits: TransportLimits,
    /// The doorbell page is mappable by the VMM (polled) instead of trapped as messages.
    pub mappable_doorbells: bool,
    /// Doorbell Buffer Config is offered: shadow doorbells with EventIdx.
    pub shadow_doorbells: bool,
    /// I/O completion queues' interrupts are adaptive (SPDK's adaptive IRQs): held while the
    /// host consumes, fired by a poll that finds it stopped. Only where the doorbell page is
    /// polled every turn; off in interrupt mode.
    pub adaptive_irq: bool,
    /// The reactors run in interrupt mode: while one busy-polls, shadowed queues are polled
    /// and their EventIdx parked (the guest does not ring), and before it sleeps they are
    /// armed again.
    pub interrupt_mode: bool,
    pub interrupt_vectors: u16,
}

impl VfioUserContext {
    pub fn new(
        registry: Arc<Registry>,
        limits: TransportLimits,
        mappable_doorbells: bool,
        shadow_doorbells: bool,
        adaptive_irq: bool,
        interrupt_mode: bool,
    ) -> Self {
        Self {
            registry,
            limits,
            mappable_doorbells,
            shadow_doorbells,
            adaptive_irq,
            interrupt_mode,
            interrupt_vectors: INTERRUPT_VECTORS,
        }
    }
}

/// The declared limits cut to what the tag space holds: queue depth at most
/// [`MAX_QUEUE_DEPTH`], and no more I/O queues than the tag bits left for queue IDs, nor than
/// the doorbell page has doorbells for ([`doorbells::MAX_QID`]).
pub fn fit_limits(mut limits: TransportLimits) -> TransportLimits {
    limits.max_queue_depth = limits.max_queue_depth.min(MAX_QUEUE_DEPTH);
    let (_, max_qid) = nvme_device::tag_layout(limits.max_queue_depth);
    let max_qid = max_qid.min(doorbells::MAX_QID);
    limits.max_io_qpairs_per_ctrlr = limits.max_io_qpairs_per_ctrlr.min(u32::from(max_qid));
    limits
}
