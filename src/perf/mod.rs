//! `nvmf-perf`: drives I/O against any NVMe/TCP target, or a vfio-user controller as a VMM
//! would, and measures it, in the spirit of SPDK's `spdk_nvme_perf`.
//!
//! NVMe/TCP: the admin queue uses the blocking host library (`crate::host`); I/O queues hand
//! their socket over to `queue::IoQueue`, a lean non-blocking path that reuses its buffers,
//! batches submissions into one write and parses many PDUs per read. vfio-user: `vfio_user`
//! is a fake VMM with a guest driver's queues in shared memory. One thread drives every queue
//! round-robin, the same loop for both.
//!
//! - `options`: transport ID, sizes, patterns (pure parsing)
//! - `io`: what the loop drives on any transport: slots, queues, a session
//! - `queue`: one NVMe/TCP I/O queue's socket and command slots; what its PDUs mean is
//!   `host::HostMachine`'s
//! - `workload`, `verify`: what to send and how to check what comes back
//! - `session`: connect, identify, check the options against the target
//! - `run`: the measurement loop; `stats`: histogram and report
//! - `idle`: controllers that only send Keep Alive (`--idle`), for idle-cost measurements
//! - `vfio_user`: the VMM side of vfio-user, its guest RAM, queues and bring-up

pub mod idle;
pub mod io;
pub mod options;
pub mod queue;
pub mod run;
pub mod session;
pub mod stats;
pub mod verify;
pub mod vfio_user;
pub mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use idle::{IdleReport, idle};
pub use options::{Pattern, TransportId, Trtype, parse_size};
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

/// Where the I/O goes.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(TcpTarget),
    VfioUser(VfioUserTarget),
}

/// An NVMe/TCP subsystem and how to connect to it.
#[derive(Debug, Clone)]
pub struct TcpTarget {
    pub addr: SocketAddr,
    pub subnqn: String,
    pub hostnqn: String,
    pub header_digest: bool,
    pub data_digest: bool,
}

/// A vfio-user controller's socket (`DIR/cntrl`).
#[derive(Debug, Clone)]
pub struct VfioUserTarget {
    pub socket: PathBuf,
    /// When given, the controller's subsystem must be this one.
    pub subnqn: Option<String>,
}

/// Everything a run needs, already parsed.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    pub target: Target,
    pub nsid: Option<u32>,
    pub queue_depth: u16,
    pub io_size: usize,
    pub pattern: Pattern,
    pub rwmixread: u8,
    pub limit: Limit,
    /// I/O queues of the controller (one TCP connection each on NVMe/TCP).
    pub connections: u16,
    pub core: Option<usize>,
    pub verify: bool,
    /// With `verify`: write every unit once before the measurement, so every read is checked.
    pub prefill: bool,
    /// Controllers to connect, each with `connections` I/O queues (NVMe/TCP).
    pub controllers: u16,
    /// Submit at most this many I/Os per second (a fixed load, to measure CPU per I/O).
    pub rate: Option<u64>,
    /// Spin on the sockets instead of sleeping in epoll when nothing is ready.
    pub busy_poll: bool,
    /// vfio-user: use shadow doorbells (Doorbell Buffer Config) when the controller offers
    /// them, as Linux's `nvme` does.
    pub shadow_doorbells: bool,
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
    #[error("cannot connect to {}", path.display())]
    ConnectSocket {
        path: PathBuf,
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
    #[error("vfio-user: {during}{}", qid.map_or(String::new(), |q| format!(" on queue {q}")))]
    VfioUser {
        during: &'static str,
        qid: Option<u16>,
        #[source]
        source: vfio_user::VfioError,
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
