//! The declaration's typed model: what `target.toml` may contain. The same types generate the
//! JSON Schema (`nvmf-tgt schema`), so every doc comment here is what editors show.
//!
//! Every object has a stable identity for the reload diff: subsystem NQN, namespace nsid,
//! listener (transport, address, port or path), host NQN.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::units::{CoreMask, Eui64, Nguid, Size, Uuid, eui64_schema, nguid_schema, uuid_schema};

/// In the directory systemd creates for the unit (`RuntimeDirectory=nvmf-tgt`); the target
/// creates it (0700) when it runs without systemd.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/nvmf-tgt/nvmf-tgt.sock";
pub const DEFAULT_PORT: u16 = 4420;

/// An nvmf-tgt declaration: the target, its transports, named hosts and subsystems.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "nvmf-tgt declaration")]
pub struct Config {
    /// Process-wide settings: mode, CPUs, control socket.
    #[serde(default)]
    pub target: TargetSection,
    /// The transports the target offers; a listener may only name a declared transport.
    #[serde(default)]
    pub transport: Transports,
    /// Named hosts, so subsystems can list `hosts = ["db-01"]` instead of the NQN.
    #[serde(default)]
    pub host: Vec<HostEntry>,
    /// NVM subsystems: what hosts connect to.
    #[serde(default)]
    pub subsystem: Vec<Subsystem>,
    /// A Prometheus endpoint; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsSection>,
}

/// The Prometheus endpoint: `GET /metrics` on `listen`, in the OpenMetrics text format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `ADDRESS:PORT` to serve on, an IP literal (`127.0.0.1:9464`, `[::1]:9464`). Anyone who
    /// can reach it can read the figures (nothing can be changed through it).
    #[schemars(length(min = 1))]
    pub listen: String,
}

impl MetricsSection {
    /// The address to bind, if `listen` is one.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }
}

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TargetSection {
    /// A name for this target, shown by `status`.
    pub name: Option<String>,
    /// Reactors sleep in epoll when idle (true) or busy-poll for the lowest latency (false).
    pub interrupt_mode: bool,
    /// CPUs that run reactors, one reactor per CPU: "0x3" or "0-1,4".
    pub core_mask: CoreMask,
    /// The UNIX socket `nvmf-tgt status` (and SPDK's rpc.py) talk to. It is created mode
    /// 0600, for the target's user alone.
    pub control_socket: PathBuf,
    /// A group that may use the control socket too (it is then 0660 and owned by the group).
    /// Whoever can connect can reload the target.
    #[schemars(length(min = 1))]
    pub control_socket_group: Option<String>,
    /// Interrupt mode: how long a reactor keeps polling after activity before it sleeps.
    #[schemars(range(max = 1_000_000))]
    pub busy_poll_us: u32,
}

impl Default for TargetSection {
    fn default() -> Self {
        Self {
            name: None,
            interrupt_mode: false,
            core_mask: CoreMask::default(),
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            control_socket_group: None,
            busy_poll_us: 50,
        }
    }
}

/// Transports. A section that is present (even empty) declares the transport.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transports {
    /// NVMe/TCP.
    pub tcp: Option<TcpTransport>,
    /// NVMe/RDMA (RoCE, iWARP, InfiniBand).
    pub rdma: Option<RdmaTransport>,
    /// vfio-user: an emulated NVMe PCI controller for a VM (QEMU, cloud-hypervisor).
    pub vfiouser: Option<VfioUserTransport>,
    /// Fibre Channel: accepted only so that it can be refused with a clear message.
    pub fc: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Socket implementation for NVMe/TCP, as SPDK names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SockImpl {
    /// epoll-driven sockets; works in interrupt and poll mode.
    #[default]
    Posix,
    /// io_uring sockets; poll mode only.
    Uring,
}

/// NVMe/TCP options, with SPDK's names and defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TcpTransport {
    /// Entries per I/O queue (2..=65535).
    pub max_queue_depth: u32,
    /// I/O queues a controller may create.
    pub max_io_qpairs_per_ctrlr: u32,
    /// Write data a host may send inside the command capsule (multiple of 16).
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command (multiple of 4096); sets MDTS.
    pub max_io_size: u32,
    /// Buffer unit a transfer is split into (max_io_size / io_unit_size at most 16).
    pub io_unit_size: u32,
    /// Entries of the admin queue (32..=4096).
    pub max_aq_depth: u32,
    /// `posix` or `uring` (uring has no interrupt mode).
    pub sock_impl: SockImpl,
    /// Poll mode's acceptor period; interrupt mode accepts on events and ignores it.
    pub acceptor_poll_rate_us: u32,
    /// Send the last C2HData with the SUCCESS flag instead of a separate response.
    pub c2h_success: bool,
    /// Data buffers of `io_unit_size` bytes shared by every reactor (SPDK's name and
    /// default): the most data the target holds for commands, whatever hosts send.
    pub num_shared_buffers: u32,
    /// Buffers each reactor keeps for itself; absent: three quarters of
    /// `num_shared_buffers`, divided among the reactors (SPDK's automatic size).
    pub buf_cache_size: Option<u32>,
}

impl Default for TcpTransport {
    fn default() -> Self {
        Self {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131_072,
            io_unit_size: 131_072,
            max_aq_depth: 128,
            sock_impl: SockImpl::Posix,
            acceptor_poll_rate_us: 10_000,
            c2h_success: true,
            num_shared_buffers: 511,
            buf_cache_size: None,
        }
    }
}

/// NVMe/RDMA options, with SPDK's names and defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RdmaTransport {
    /// Entries per I/O queue (2..=4096).
    pub max_queue_depth: u32,
    pub max_io_qpairs_per_ctrlr: u32,
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u32,
    /// Shared receive queue depth per device.
    pub max_srq_depth: u32,
    /// Use a receive queue per queue pair instead of a shared one.
    pub no_srq: bool,
    /// Length of the RDMA CM listen backlog.
    pub acceptor_backlog: u32,
    pub acceptor_poll_rate_us: u32,
}

impl Default for RdmaTransport {
    fn default() -> Self {
        Self {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131_072,
            io_unit_size: 8192,
            max_aq_depth: 128,
            max_srq_depth: 4096,
            no_srq: false,
            acceptor_backlog: 100,
            acceptor_poll_rate_us: 10_000,
        }
    }
}

/// vfio-user options, with SPDK's names and defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VfioUserTransport {
    /// Entries per I/O queue (2..=65535).
    pub max_queue_depth: u32,
    pub max_io_qpairs_per_ctrlr: u32,
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u32,
    /// Trap doorbell writes as socket messages instead of mapping BAR0 into the VM. Required
    /// in interrupt mode: mapped doorbells can only be polled.
    pub disable_mappable_bar0: bool,
    /// Fire every I/O completion queue's interrupt with the batch that posted to it. Otherwise,
    /// in poll mode with mapped doorbells, the interrupt waits while the host is consuming the
    /// queue and fires at the first turn that finds its head not moved; interrupt mode and
    /// trapped doorbells fire every batch at once whatever this says.
    pub disable_adaptive_irq: bool,
    /// Do not offer the shadow doorbell buffer.
    pub disable_shadow_doorbells: bool,
    pub acceptor_poll_rate_us: u32,
}

impl Default for VfioUserTransport {
    fn default() -> Self {
        Self {
            max_queue_depth: 256,
            max_io_qpairs_per_ctrlr: 127,
            max_io_size: 131_072,
            io_unit_size: 131_072,
            max_aq_depth: 32,
            disable_mappable_bar0: false,
            disable_adaptive_irq: false,
            disable_shadow_doorbells: false,
            acceptor_poll_rate_us: 10_000,
        }
    }
}

/// A host known by name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// The name subsystems use in `hosts`.
    pub name: String,
    /// The host's NQN (`nvme gen-hostnqn`, /etc/nvme/hostnqn).
    pub nqn: String,
}

/// An NVM subsystem, identified by its NQN.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subsystem {
    /// "nqn.yyyy-mm.reverse.domain:name" or "nqn.2014-08.org.nvmexpress:uuid:...".
    pub nqn: String,
    /// Serial number reported by Identify (at most 20 printable ASCII characters).
    #[serde(default = "default_serial")]
    pub serial: String,
    /// Model number reported by Identify (at most 40 printable ASCII characters).
    #[serde(default = "default_model")]
    pub model: String,
    /// Let any host connect. Otherwise only those in `hosts`.
    #[serde(default)]
    pub allow_any_host: bool,
    /// Hosts allowed to connect: `[[host]]` names or host NQNs.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Highest nsid this subsystem may hold (Identify Controller NN).
    #[serde(default = "default_max_namespaces")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_namespaces: u32,
    /// Where hosts reach this subsystem.
    #[serde(default)]
    pub listener: Vec<Listener>,
    /// Namespaces, by nsid.
    #[serde(default)]
    pub namespace: Vec<Namespace>,
}

fn default_serial() -> String {
    "NVMFTGT00000001".into()
}

fn default_model() -> String {
    "nvmf-tgt".into()
}

fn default_max_namespaces() -> u32 {
    32
}

impl Subsystem {
    /// Host NQNs allowed, with `[[host]]` names resolved.
    pub fn host_nqns(&self, config: &Config) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| {
                config
                    .host
                    .iter()
                    .find(|e| &e.name == h)
                    .map_or_else(|| h.clone(), |e| e.nqn.clone())
            })
            .collect()
    }
}

/// A transport type, as listeners name it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Tcp,
    Rdma,
    Vfiouser,
    Fc,
}

impl core::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Rdma => "rdma",
            Self::Vfiouser => "vfiouser",
            Self::Fc => "fc",
        })
    }
}

/// Where hosts reach a subsystem: an IP address and port (TCP, RDMA) or a socket directory
/// (vfio-user).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `tcp`, `rdma` or `vfiouser`; the transport must be declared under `[transport]`.
    pub transport: TransportKind,
    /// IPv4 or IPv6 address (TCP, RDMA); "0.0.0.0" or "::" for all.
    pub address: Option<String>,
    /// Port (TCP, RDMA); default 4420.
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// vfio-user: the directory that will hold the controller's socket.
    pub path: Option<PathBuf>,
}

impl Listener {
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }
}

/// A namespace: an nsid and exactly one backend (`ram`, `null` or `file`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// 1..=0xFFFFFFFE, unique in the subsystem, at most `max_namespaces`.
    #[schemars(range(min = 1, max = 0xFFFF_FFFE_u32))]
    pub nsid: u32,
    /// Memory of the given size; contents are lost when the target stops.
    pub ram: Option<SizedBackend>,
    /// Reads zeros and drops writes: for benchmarks.
    pub null: Option<SizedBackend>,
    /// A regular file or a block device.
    pub file: Option<FileBackend>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// Logical block size: 512 or 4096.
    #[serde(default = "default_block_size")]
    #[schemars(schema_with = "block_size_schema")]
    pub block_size: u32,
    /// Namespace UUID; derived from the subsystem NQN and nsid when absent.
    #[serde(default)]
    #[schemars(schema_with = "uuid_schema")]
    pub uuid: Option<Uuid>,
    /// Namespace NGUID; derived from the subsystem NQN and nsid when absent.
    #[serde(default)]
    #[schemars(schema_with = "nguid_schema")]
    pub nguid: Option<Nguid>,
    /// IEEE EUI-64; derived from the subsystem NQN and nsid when absent.
    #[serde(default)]
    #[schemars(schema_with = "eui64_schema")]
    pub eui64: Option<Eui64>,
}

fn default_block_size() -> u32 {
    512
}

fn block_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "enum": [512, 4096], "default": 512,
        "description": "Logical block size: 512 or 4096."})
}

/// A backend with a size (`ram`, `null`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SizedBackend {
    /// Capacity: bytes, or "64MiB", "1GiB"; a multiple of the block size.
    pub size: Size,
}

/// A file or block device backend.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    /// Path of a regular file or a block device.
    pub path: PathBuf,
    /// Open with O_DIRECT (bypass the page cache).
    #[serde(default)]
    pub direct: bool,
    /// What runs the I/O: `uring` (each reactor's io_uring; worker threads where the kernel
    /// refuses io_uring) or `threads` (worker threads only).
    #[serde(default)]
    pub engine: FileEngine,
}

/// The engine of a `file` namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileEngine {
    /// Each reactor's io_uring: requests batched once per turn, completions reaped in it.
    #[default]
    Uring,
    /// A few worker threads per file, pinned within the core mask.
    Threads,
}

/// The one backend a namespace declares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackendRef<'a> {
    Ram(Size),
    Null(Size),
    File {
        path: &'a Path,
        direct: bool,
        engine: FileEngine,
    },
}

impl Namespace {
    /// The declared backends (a valid namespace has exactly one).
    pub fn backends(&self) -> Vec<BackendRef<'_>> {
        let mut out = Vec::new();
        if let Some(b) = &self.ram {
            out.push(BackendRef::Ram(b.size));
        }
        if let Some(b) = &self.null {
            out.push(BackendRef::Null(b.size));
        }
        if let Some(b) = &self.file {
            out.push(BackendRef::File {
                path: &b.path,
                direct: b.direct,
                engine: b.engine,
            });
        }
        out
    }

    /// The backend of a validated namespace.
    pub fn backend(&self) -> Option<BackendRef<'_>> {
        match self.backends().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

impl Transports {
    pub fn is_declared(&self, kind: TransportKind) -> bool {
        match kind {
            TransportKind::Tcp => self.tcp.is_some(),
            TransportKind::Rdma => self.rdma.is_some(),
            TransportKind::Vfiouser => self.vfiouser.is_some(),
            TransportKind::Fc => self.fc.is_some(),
        }
    }
}
