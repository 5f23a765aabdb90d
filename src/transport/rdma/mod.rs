//! NVMe/RDMA (NVMe/RDMA Transport Specification 1.0b): connections through the RDMA CM,
//! command capsules received into registered memory, host data moved with RDMA READ and
//! WRITE, completions SENT back.
//!
//! `protocol.rs` holds the wire formats (CM private data, capsules, SGL descriptors),
//! `cq.rs` the arm/drain/re-arm rules of a completion queue and `qpair.rs` the queue pair's
//! state machine, all without verbs; `cm.rs` (the listener), `connection.rs` (one connection's
//! QP, CQ and registered memory) and `device.rs` (a PD per device) drive them with
//! `sys::verbs`.

mod alarms;
mod cm;
mod connection;
pub mod cq;
mod device;
#[cfg(test)]
mod fuzz_tests;
pub mod protocol;
mod qpair;

use std::sync::Arc;

pub use cm::{ListenError, RdmaListener};
pub use connection::MAX_STAGING_SLOTS;

use crate::controller::{Registry, TransportLimits};

/// What every NVMe/RDMA queue pair of the target shares.
#[derive(Debug)]
pub struct RdmaContext {
    pub registry: Arc<Registry>,
    pub limits: TransportLimits,
    /// Connection requests the CM holds for a listener before we take them.
    pub acceptor_backlog: u32,
    /// Completion queues are armed and their channels watched (else polled every turn).
    pub interrupt_mode: bool,
    /// Capsule slots of each device's shared receive queue (`max_srq_depth`); `None` with
    /// `no_srq`: every QP posts its own receives.
    pub srq_depth: Option<u16>,
    /// Every connection's alarm, raised by the device async events that break it.
    pub alarms: Arc<alarms::Alarms>,
}

impl RdmaContext {
    /// Bytes of one receive: a command and the data the host may send in its capsule.
    pub fn capsule_len(&self) -> usize {
        crate::nvme::sqe::SQE_LEN + self.limits.in_capsule_data_size as usize
    }
}
