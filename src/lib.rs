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

/// The version and the commit built: `0.1.0 (commit 1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NVMF_TGT_COMMIT"),
    ")"
);

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
