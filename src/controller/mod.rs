//! NVMe controllers and subsystems as state machines with no I/O.
//!
//! The transport feeds commands in (`Registry::handle_connect`, `Controller::handle_admin`,
//! `Controller::prepare_io`) and takes completions out (`AdminOutcome`,
//! `Controller::poll_async_event`). Time is a parameter: keep-alive expiry is computed from the
//! `Instant`s the transport passes, never from a clock read here.
//!
//! Locking: each controller keeps its admin state behind one `Mutex`; everything the I/O path
//! reads (enabled, live, queues, write cache, namespaces) is atomic or an `ArcSwap`, so I/O
//! never waits on an admin command.

mod admin;
mod ctrlr;
mod discovery;
mod fabrics;
mod features;
mod io;
mod iostat;
mod namespace;
mod pcie;
mod registry;
mod subsystem;
#[cfg(test)]
mod tests;

pub use ctrlr::{Controller, ControllerKind, InvalidDoorbell, QueueEpoch};
pub use fabrics::RegisterEffect;
pub use io::{IoOp, IoPlan, dsm_ranges};
pub use iostat::{
    ClassSnapshot, IoClass, IoStats, IoStatsSnapshot, LATENCY_BUCKETS, bucket_bound_s,
    set_reactors as set_iostat_reactors,
};
pub use namespace::{Namespace, NamespaceSpec};
pub use pcie::{PcieParams, QueueRequest};
pub use registry::{ConnectOutcome, Registry, RegistryError};
pub use subsystem::{Access, AddressFamily, ListenerAddr, Subsystem, SubsystemSpec, TransportType};

use crate::nvme::Cqe;

/// What the transport allows; fixed for the life of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportLimits {
    /// Entries per I/O queue (CAP.MQES + 1).
    pub max_queue_depth: u32,
    /// Entries in the admin queue.
    pub max_aq_depth: u32,
    /// I/O queues per controller.
    pub max_io_qpairs_per_ctrlr: u32,
    /// In-capsule data accepted on I/O queues, in bytes.
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command, in bytes (MDTS).
    pub max_io_size: u32,
}

impl Default for TransportLimits {
    /// SPDK's NVMe/TCP defaults.
    fn default() -> Self {
        Self {
            max_queue_depth: 128,
            max_aq_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131_072,
        }
    }
}

/// The limits of each transport: a controller gets those of the transport it is reached
/// through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsByTransport {
    pub tcp: TransportLimits,
    pub rdma: TransportLimits,
    pub vfio_user: TransportLimits,
}

impl LimitsByTransport {
    pub fn of(&self, listener: &ListenerAddr) -> TransportLimits {
        match listener {
            ListenerAddr::Tcp(_) => self.tcp,
            ListenerAddr::Rdma(_) => self.rdma,
            ListenerAddr::VfioUser(_) => self.vfio_user,
        }
    }

    fn all(&self) -> [TransportLimits; 3] {
        [self.tcp, self.rdma, self.vfio_user]
    }
}

/// The same limits for every transport (tests, and a target with one transport).
impl From<TransportLimits> for LimitsByTransport {
    fn from(limits: TransportLimits) -> Self {
        Self {
            tcp: limits,
            rdma: limits,
            vfio_user: limits,
        }
    }
}

/// The result of an admin queue command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOutcome {
    /// Send `cqe`, after `data` and then `zeroes` zero bytes (controller-to-host data, at most
    /// the command's SGL length). Bytes a host asks for past the end of a log page are zero:
    /// they are counted, not stored.
    Complete {
        cqe: Cqe,
        data: Vec<u8>,
        zeroes: usize,
    },
    /// An Asynchronous Event Request was parked; it completes through
    /// [`Controller::poll_async_event`].
    Deferred,
    /// A PCIe host's Create/Delete I/O Queue was accepted: the transport carries it out and
    /// completes command `cid` (or undoes it with [`Controller::undo_queue_request`] and
    /// fails it).
    Queue { cid: u16, request: QueueRequest },
}

impl AdminOutcome {
    fn status(cid: u16, status: crate::nvme::Status) -> Self {
        Self::Complete {
            cqe: Cqe::new(cid, status),
            data: Vec::new(),
            zeroes: 0,
        }
    }
}
