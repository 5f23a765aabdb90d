//! NVMe/RDMA (NVMe/RDMA Transport Specification 1.0b): connections through the RDMA CM,
//! command capsules received into registered memory, host data moved with RDMA READ and
//! WRITE, completions SENT back.
//!
//! `protocol.rs` holds the wire formats (CM private data, capsules, SGL descriptors) and
//! `cq.rs` the arm/drain/re-arm rules of a completion queue, both without verbs; the verbs
//! themselves are `sys::verbs`.

pub mod cq;
pub mod protocol;
