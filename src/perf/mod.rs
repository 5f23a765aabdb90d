//! `nvmf-perf`: drives I/O against any NVMe/TCP target and measures it, in the spirit of
//! SPDK's `spdk_nvme_perf`.
//!
//! The admin queue uses the blocking host library (`crate::host`); I/O queues hand their
//! socket over to `queue::IoQueue`, a lean non-blocking path that reuses its buffers, batches
//! submissions into one write and parses many PDUs per read. One thread drives every queue
//! round-robin.
//!
//! - `options`: transport ID, sizes, patterns (pure parsing)
//! - `io`: what the loop drives on any transport: slots, queues, a session
//! - `queue`: one NVMe/TCP I/O queue's socket and command slots; what its PDUs mean is
//!   `host::HostMachine`'s
//! - `workload`, `verify`: what to send and how to check what comes back
//! - `session`: connect, identify, check the options against the target
//! - `run`: the measurement loop; `stats`: histogram and report
//! - `idle`: controllers that only send Keep Alive (`--idle`), for idle-cost measurements

pub mod idle;
pub mod io;
pub mod options;
pub mod queue;
pub mod run;
pub mod session;
pub mod stats;
pub mod verify;
pub mod workload;

use std::net::SocketAddr;
use std::time::Duration;

pub use idle::{IdleReport, idle};
pub use options::{Pattern, TransportId, parse_size};
pub use run::{Progress, run};
pub use stats::Report;

use crate::host::HostError;
use crate::nvme::Status;

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Time(Duration),
    Count(u64),
}

/// Everything a run needs, already parsed.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub nsid: Option<u32>,
    pub queue_depth: u16,
    pub io_size: usize,
    pub pattern: Pattern,
    pub rwmixread: u8,
    pub limit: Limit,
    pub connections: u16,
    pub core: Option<usize>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub verify: bool,
    /// Spin on the sockets instead of sleeping in epoll when nothing is ready.
    pub busy_poll: bool,
    pub timeout: Duration,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the target refused to connect host {hostnqn} to subsystem {subnqn}: {reason} ({status})"
    )]
    Refused {
        subnqn: String,
        hostnqn: String,
        reason: &'static str,
        status: Status,
    },
    #[error("the target did not answer within {timeout:?} ({during})")]
    Timeout {
        timeout: Duration,
        during: &'static str,
    },
    #[error("namespace {nsid} not found in subsystem {subnqn}")]
    NamespaceNotFound { nsid: u32, subnqn: String },
    #[error("subsystem {0} has no active namespace")]
    NoNamespace(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{during} failed")]
    Host {
        during: &'static str,
        #[source]
        source: HostError,
    },
    #[error("I/O queue {qid}")]
    Queue {
        qid: u16,
        #[source]
        source: queue::QueueError,
    },
    #[error("cannot pin the perf thread to core {core}")]
    Pin {
        core: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("event loop")]
    Poll(#[source] std::io::Error),
}

/// Why Connect was refused, from its status (NVMe-oF 1.1, Figure 32).
pub fn connect_refusal(status: Status) -> &'static str {
    match (status.sct, status.sc) {
        (1, 0x80) => "incompatible format",
        (1, 0x81) => "controller busy",
        (1, 0x82) => "invalid parameters (unknown subsystem NQN, queue size or controller ID)",
        (1, 0x83) => "restart discovery",
        (1, 0x84) => "host not allowed",
        _ => "connect failed",
    }
}
