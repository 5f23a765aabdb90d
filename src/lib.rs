//! nvmf-tgt: a declarative NVMe-over-Fabrics target.
//!
//! Dependencies point one way:
//! `nvme` (spec types) <- `controller` (no I/O) <- `transport` <- `reactor` <- `daemon` <- `main`;
//! `config` parses, checks and explains the declaration; `backend` stores namespace data.
//! A reactor hosts what implements `transport::subscriber::Subscriber` (defined with the
//! transports, so they need not know the reactor); `sys` wraps the system calls.
//! `import` turns SPDK's and nvmetcli's saved configurations into a declaration.
//! `host` and `perf` are the other side: an NVMe/TCP initiator and the `nvmf-perf` tool.
//! `ARCHITECTURE.md` at the top of the repository says what each module does, the path of a
//! read and of a reload, and where a new transport plugs in.

pub mod backend;
pub mod config;
pub mod control;
pub mod controller;
pub mod daemon;
#[cfg(test)]
mod fuzz;
pub mod host;
pub mod import;
pub mod nvme;
pub mod perf;
pub mod reactor;
pub mod reconcile;
pub mod sys;
pub mod transport;
