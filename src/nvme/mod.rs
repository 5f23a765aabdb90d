//! NVMe spec types shared by every layer: submission and completion queue entries, status
//! codes and opcodes. Nothing here performs I/O or reads a clock.

pub mod connect;
pub mod cqe;
pub mod features;
pub mod identify;
pub mod ids;
pub mod log;
pub mod opcode;
pub mod properties;
pub mod sqe;
pub mod status;
mod wire;

pub use cqe::Cqe;
pub use ids::{CntlId, Nqn, Nsid};
pub use sqe::{Sgl, Sqe};
pub use status::Status;

/// The well-known discovery subsystem NQN (NVMe Base 2.0, 4.5).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
