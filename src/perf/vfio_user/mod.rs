//! `nvmf-perf --vfio-user`: a fake VMM with a guest NVMe driver in it, in this process, to
//! measure the target's vfio-user server without a VM (guest I/O under TCG says nothing about
//! the target).
//!
//! It speaks vfio-user with the target's own message types (`client`), keeps guest RAM in a
//! memfd shared by DMA_MAP (`guest`), brings the controller up and creates the I/O queues as
//! Linux's `nvme` driver does (`session`), and drives each queue pair in guest RAM (`queue`):
//! SQEs at the tail, one doorbell write per queue per batch (a posted REGION_WRITE while
//! doorbells are trapped, a store when the target lets BAR0's doorbell page be mapped),
//! completions by phase bit, woken by the queue's MSI-X eventfd or, with `--busy-poll`, by
//! spinning on guest RAM as polled queues (or a busy vCPU) do.

pub mod client;
pub mod guest;
pub mod queue;
pub mod session;

pub use session::Session;

use crate::nvme::Status;
use crate::sys::mmap::AccessError;

/// What went wrong between this VMM and the target.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error("{command} failed: {status}")]
    Status {
        command: &'static str,
        status: Status,
    },
    #[error("the device is not the NVMe controller expected: {0}")]
    Device(String),
    #[error("protocol violation by the target: {0}")]
    Protocol(&'static str),
    #[error("guest memory access")]
    Memory(#[from] AccessError),
    #[error("cannot set up guest memory or interrupts")]
    Ram(#[source] std::io::Error),
}
