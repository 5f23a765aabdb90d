//! Semantic rules: what the schema cannot say. Each finding names the value it is about by
//! JSON pointer, so it is reported at the right line and column.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::diagnostic::{Diagnostic, suggest};
use super::environment::{Environment, FileProbe};
use super::model::{
    BackendRef, Config, FileEngine, Listener, Namespace, SockImpl, Subsystem, TransportKind,
};
use super::nqn;
use crate::nvme::DISCOVERY_NQN;

/// What the declaration is checked for: problems that depend on this machine (missing CPUs,
/// missing files) are warnings for `check` and errors for `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Check,
    Run,
}

/// JSON pointer from path segments.
macro_rules! ptr {
    ($($seg:expr),* $(,)?) => {{
        let mut p = String::new();
        $( p.push('/'); p.push_str(&$seg.to_string()); )*
        p
    }};
}

struct Rules<'a> {
    config: &'a Config,
    env: &'a Environment,
    purpose: Purpose,
    out: Vec<Diagnostic>,
}

/// Applies every rule and returns every finding.
pub fn check(config: &Config, env: &Environment, purpose: Purpose) -> Vec<Diagnostic> {
    let mut rules = Rules {
        config,
        env,
        purpose,
        out: Vec::new(),
    };
    rules.target();
    rules.transports();
    rules.hosts();
    rules.subsystems();
    rules.listeners();
    rules.namespace_identities();
    rules.out
}

impl Rules<'_> {
    fn error(&mut self, pointer: String, message: impl Into<String>) -> &mut Diagnostic {
        self.out.push(Diagnostic::error(pointer, message));
        self.out.last_mut().expect("just pushed")
    }

    fn warning(&mut self, pointer: String, message: impl Into<String>) -> &mut Diagnostic {
        self.out.push(Diagnostic::warning(pointer, message));
        self.out.last_mut().expect("just pushed")
    }

    /// An error at `run`, a warning at `check`: true of things about this machine.
    fn machine(&mut self, pointer: String, message: impl Into<String>) -> &mut Diagnostic {
        match self.purpose {
            Purpose::Run => self.error(pointer, message),
            Purpose::Check => self.warning(pointer, message),
        }
    }

    fn target(&mut self) {
        self.control_socket();
        self.metrics();
        let mask = &self.config.target.core_mask;
        match mask.cores() {
            Err(why) => {
                self.error(
                    ptr!("target", "core_mask"),
                    format!("`core_mask` {:?}: {why}", mask.text()),
                );
            }
            Ok(cores) => {
                if let Some(online) = &self.env.online_cpus {
                    let missing: Vec<String> = cores
                        .iter()
                        .filter(|c| !online.contains(c))
                        .map(ToString::to_string)
                        .collect();
                    if !missing.is_empty() {
                        let online: Vec<String> = online.iter().map(ToString::to_string).collect();
                        self.machine(
                            ptr!("target", "core_mask"),
                            format!(
                                "`core_mask` names CPU {} that this machine does not have (online: {})",
                                missing.join(", "),
                                online.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }

    /// `[metrics] listen` is an address to bind, and no NVMe/TCP listener's.
    fn metrics(&mut self) {
        let Some(metrics) = &self.config.metrics else {
            return;
        };
        let pointer = ptr!("metrics", "listen");
        let Some(addr) = metrics.addr() else {
            self.error(
                pointer,
                format!(
                    "`listen` {:?} is not ADDRESS:PORT with an IP address (127.0.0.1:9464, [::1]:9464)",
                    metrics.listen
                ),
            );
            return;
        };
        let clash = self
            .config
            .subsystem
            .iter()
            .flat_map(|s| &s.listener)
            .any(|l| {
                l.transport == TransportKind::Tcp
                    && l.port.unwrap_or(crate::config::DEFAULT_PORT) == addr.port()
                    && l.address
                        .as_deref()
                        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                        .is_some_and(|ip| {
                            ip == addr.ip() || ip.is_unspecified() || addr.ip().is_unspecified()
                        })
            });
        if clash {
            self.error(
                pointer,
                format!("`listen` {addr} is also an NVMe/TCP listener's address"),
            );
        }
    }

    fn control_socket(&mut self) {
        let target = &self.config.target;
        let len = target.control_socket.as_os_str().len();
        let max = crate::control::os::max_socket_path_len();
        if len > max {
            self.error(
                ptr!("target", "control_socket"),
                format!(
                    "`control_socket` is {len} bytes long; a UNIX socket path may be at most {max}"
                ),
            );
        }
        if let Some(group) = &target.control_socket_group {
            let pointer = ptr!("target", "control_socket_group");
            match (self.env.group_id)(group) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    self.machine(pointer, format!("group {group:?} does not exist"))
                        .help("create it (groupadd) or name an existing group");
                }
                Err(why) => {
                    self.machine(pointer, format!("cannot look up group {group:?}: {why}"));
                }
            }
        }
    }

    fn transports(&mut self) {
        let interrupt = self.config.target.interrupt_mode;
        let transports = &self.config.transport;
        if transports.fc.is_some() {
            let message = if interrupt {
                "the FC transport has no interrupt mode (and this target does not serve FC)"
            } else {
                "the FC transport is not supported by this target"
            };
            self.error(ptr!("transport", "fc"), message)
                .key()
                .help("remove [transport.fc]; use tcp, rdma or vfiouser");
        }
        if let Some(tcp) = &transports.tcp {
            if tcp.sock_impl == SockImpl::Uring {
                if interrupt {
                    self.error(
                        ptr!("transport", "tcp", "sock_impl"),
                        "io_uring sockets (sock_impl = \"uring\") have no interrupt mode",
                    )
                    .help("use sock_impl = \"posix\", or set interrupt_mode = false");
                } else {
                    self.warning(
                        ptr!("transport", "tcp", "sock_impl"),
                        "this build has no io_uring socket implementation; posix sockets serve instead",
                    );
                }
            }
            let base = ptr!("transport", "tcp");
            self.limits(
                &base,
                "tcp",
                Limits {
                    queue_depth: tcp.max_queue_depth,
                    queue_depth_max: 65_535,
                    aq_depth: tcp.max_aq_depth,
                    io_qpairs: tcp.max_io_qpairs_per_ctrlr,
                    in_capsule: Some(tcp.in_capsule_data_size),
                    max_io_size: tcp.max_io_size,
                    io_unit_size: tcp.io_unit_size,
                },
            );
            self.buffer_pool(&base, tcp);
        }
        if let Some(rdma) = &transports.rdma {
            let base = ptr!("transport", "rdma");
            self.limits(
                &base,
                "rdma",
                Limits {
                    queue_depth: rdma.max_queue_depth,
                    queue_depth_max: 4096,
                    aq_depth: rdma.max_aq_depth,
                    io_qpairs: rdma.max_io_qpairs_per_ctrlr,
                    in_capsule: Some(rdma.in_capsule_data_size),
                    max_io_size: rdma.max_io_size,
                    io_unit_size: rdma.io_unit_size,
                },
            );
            if !rdma.no_srq && !(2..=65_535).contains(&rdma.max_srq_depth) {
                self.error(
                    format!("{base}/max_srq_depth"),
                    format!(
                        "rdma `max_srq_depth` must be 2..=65535, not {}",
                        rdma.max_srq_depth
                    ),
                )
                .help("or set no_srq = true: every queue pair then posts its own receives");
            }
        }
        if let Some(vfio) = &transports.vfiouser {
            if interrupt && !vfio.disable_mappable_bar0 {
                self.error(
                    ptr!("transport", "vfiouser"),
                    "vfio-user in interrupt mode needs disable_mappable_bar0 = true: doorbells in a mapped BAR0 can only be polled",
                ).key().help("add disable_mappable_bar0 = true to [transport.vfiouser]");
            }
            let base = ptr!("transport", "vfiouser");
            self.limits(
                &base,
                "vfiouser",
                Limits {
                    queue_depth: vfio.max_queue_depth,
                    queue_depth_max: 65_535,
                    aq_depth: vfio.max_aq_depth,
                    io_qpairs: vfio.max_io_qpairs_per_ctrlr,
                    in_capsule: None,
                    max_io_size: vfio.max_io_size,
                    io_unit_size: vfio.io_unit_size,
                },
            );
        }
    }

    /// The shared buffer pool must hold the largest command, whose host data and read data
    /// (a Compare) are both buffered.
    fn buffer_pool(&mut self, base: &str, tcp: &crate::config::model::TcpTransport) {
        if tcp.io_unit_size == 0 {
            return;
        }
        let units = tcp.max_io_size.div_ceil(tcp.io_unit_size);
        let least = units.saturating_mul(2).max(1);
        if tcp.num_shared_buffers < least {
            self.error(
                format!("{base}/num_shared_buffers"),
                format!(
                    "tcp `num_shared_buffers` {} cannot hold one command of `max_io_size` {} (it needs at least {least} buffers of `io_unit_size` {})",
                    tcp.num_shared_buffers, tcp.max_io_size, tcp.io_unit_size
                ),
            );
        }
        if let Some(cache) = tcp.buf_cache_size {
            let reactors = self
                .config
                .target
                .core_mask
                .cores()
                .map_or(1, <[usize]>::len)
                .max(1);
            let share = tcp.num_shared_buffers / u32::try_from(reactors).unwrap_or(u32::MAX);
            if cache > share {
                self.warning(
                    format!("{base}/buf_cache_size"),
                    format!(
                        "tcp `buf_cache_size` {cache} is more than a reactor's share of `num_shared_buffers` ({share} for {reactors} reactors); each reactor caches {share}"
                    ),
                );
            }
        }
    }

    fn limits(&mut self, base: &str, name: &str, l: Limits) {
        if !(2..=l.queue_depth_max).contains(&l.queue_depth) {
            self.error(
                format!("{base}/max_queue_depth"),
                format!(
                    "{name} `max_queue_depth` must be 2..={}, not {}",
                    l.queue_depth_max, l.queue_depth
                ),
            );
        }
        if !(32..=4096).contains(&l.aq_depth) {
            self.error(
                format!("{base}/max_aq_depth"),
                format!("{name} `max_aq_depth` must be 32..=4096 (hosts open admin queues of 32), not {}", l.aq_depth),
            );
        }
        if !(1..=65_534).contains(&l.io_qpairs) {
            self.error(
                format!("{base}/max_io_qpairs_per_ctrlr"),
                format!(
                    "{name} `max_io_qpairs_per_ctrlr` must be 1..=65534, not {}",
                    l.io_qpairs
                ),
            );
        }
        let io_ok = l.max_io_size >= 4096 && l.max_io_size % 4096 == 0 && l.max_io_size <= 8 << 20;
        if !io_ok {
            self.error(
                format!("{base}/max_io_size"),
                format!(
                    "{name} `max_io_size` must be a multiple of 4096 between 4096 and 8388608, not {}",
                    l.max_io_size
                ),
            );
        } else if !(l.max_io_size / 4096).is_power_of_two() {
            self.warning(
                format!("{base}/max_io_size"),
                format!(
                    "{name} `max_io_size` {} is not 4096 times a power of two; hosts will be told {} (MDTS)",
                    l.max_io_size,
                    4096 * (1u32 << (l.max_io_size / 4096).ilog2())
                ),
            );
        }
        if let Some(icd) = l.in_capsule {
            if icd % 16 != 0 {
                self.error(
                    format!("{base}/in_capsule_data_size"),
                    format!("{name} `in_capsule_data_size` must be a multiple of 16, not {icd}"),
                );
            } else if io_ok && icd > l.max_io_size {
                self.error(
                    format!("{base}/in_capsule_data_size"),
                    format!(
                        "{name} `in_capsule_data_size` {icd} is larger than `max_io_size` {}",
                        l.max_io_size
                    ),
                );
            }
        }
        if l.io_unit_size < 512 || l.io_unit_size % 512 != 0 {
            self.error(
                format!("{base}/io_unit_size"),
                format!(
                    "{name} `io_unit_size` must be a multiple of 512, not {}",
                    l.io_unit_size
                ),
            );
        } else if io_ok && l.max_io_size.div_ceil(l.io_unit_size) > 16 {
            self.error(
                format!("{base}/io_unit_size"),
                format!(
                    "{name} `io_unit_size` {} splits `max_io_size` {} into more than 16 units",
                    l.io_unit_size, l.max_io_size
                ),
            );
        }
    }

    fn hosts(&mut self) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut nqns: HashMap<&str, usize> = HashMap::new();
        for (i, host) in self.config.host.iter().enumerate() {
            if host.name.is_empty() {
                self.error(ptr!("host", i, "name"), "a host `name` cannot be empty");
            } else if let Some(first) = names.insert(&host.name, i) {
                self.error(
                    ptr!("host", i, "name"),
                    format!("host name `{}` is already used by host[{first}]", host.name),
                );
            }
            if let Err(why) = nqn::validate(&host.nqn) {
                self.error(
                    ptr!("host", i, "nqn"),
                    format!("host NQN {:?} {why}", host.nqn),
                );
            } else if let Some(first) = nqns.insert(&host.nqn, i) {
                self.warning(
                    ptr!("host", i, "nqn"),
                    format!("host NQN {:?} is also declared by host[{first}]", host.nqn),
                );
            }
        }
    }

    fn subsystems(&mut self) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let host_names: Vec<&str> = self.config.host.iter().map(|h| h.name.as_str()).collect();
        for (i, sub) in self.config.subsystem.iter().enumerate() {
            let at = |key: &str| ptr!("subsystem", i, key);
            if sub.nqn == DISCOVERY_NQN {
                self.error(
                    at("nqn"),
                    "the discovery NQN is served by the target itself and cannot name a subsystem",
                );
            } else if let Err(why) = nqn::validate_usable(&sub.nqn) {
                self.error(at("nqn"), format!("subsystem NQN {:?} {why}", sub.nqn));
            } else if let Some(first) = seen.insert(&sub.nqn, i) {
                self.error(
                    at("nqn"),
                    format!(
                        "subsystem NQN {:?} is already declared by subsystem[{first}]",
                        sub.nqn
                    ),
                );
            }
            if sub.nqn != DISCOVERY_NQN && nqn::validate_usable(&sub.nqn).is_ok() {
                if let Err(why) = nqn::validate(&sub.nqn) {
                    // Linux's nvmet takes any directory name as a subsystem NQN and hosts
                    // connect to it; such a setup is served, with the rule it breaks named.
                    self.warning(
                        at("nqn"),
                        format!(
                            "subsystem NQN {:?} {why} (NVMe Base 4.5, NVMe Qualified Names); hosts can connect to it, but it is not a valid NQN (an error under --strict)",
                            sub.nqn
                        ),
                    );
                }
            }
            self.identify_text(&at("serial"), "serial", &sub.serial, 20);
            self.identify_text(&at("model"), "model", &sub.model, 40);
            if sub.allow_any_host && !sub.hosts.is_empty() {
                self.warning(
                    at("hosts"),
                    "`hosts` has no effect while `allow_any_host = true`: every host may connect",
                )
                .key();
            } else if !sub.allow_any_host && sub.hosts.is_empty() {
                self.warning(
                    at("nqn"),
                    "no host may connect: `hosts` is empty and `allow_any_host` is false",
                )
                .help("list hosts in `hosts`, or set allow_any_host = true");
            }
            let mut listed = HashSet::new();
            for (j, host) in sub.hosts.iter().enumerate() {
                if !listed.insert(host.as_str()) {
                    self.warning(
                        ptr!("subsystem", i, "hosts", j),
                        format!("host `{host}` is listed twice"),
                    );
                    continue;
                }
                if host_names.contains(&host.as_str()) {
                    continue;
                }
                if let Err(why) = nqn::validate(host) {
                    let help = suggest(host, host_names.iter().copied());
                    let d = self.error(
                        ptr!("subsystem", i, "hosts", j),
                        format!(
                            "`{host}` is neither a [[host]] name nor a valid host NQN: it {why}"
                        ),
                    );
                    if let Some(help) = help {
                        d.help(help);
                    }
                }
            }
            if sub.listener.is_empty() {
                self.warning(
                    at("nqn"),
                    format!(
                        "subsystem {:?} has no listener: no host can reach it",
                        sub.nqn
                    ),
                )
                .help("add a [[subsystem.listener]]");
            }
            self.namespaces(i, sub);
        }
    }

    fn identify_text(&mut self, pointer: &str, what: &str, text: &str, max: usize) {
        if text.is_empty() {
            self.error(pointer.to_string(), format!("`{what}` cannot be empty"));
        } else if let Some(c) = text.chars().find(|c| !(' '..='~').contains(c)) {
            self.error(
                pointer.to_string(),
                format!("`{what}` may hold printable ASCII only, not {c:?}"),
            );
        } else if text.len() > max {
            self.error(
                pointer.to_string(),
                format!(
                    "`{what}` is {} characters; Identify holds at most {max}",
                    text.len()
                ),
            );
        }
    }

    fn namespaces(&mut self, i: usize, sub: &Subsystem) {
        if sub.namespace.len() > sub.max_namespaces as usize {
            self.error(
                ptr!("subsystem", i, "max_namespaces"),
                format!(
                    "subsystem {:?} declares {} namespaces but `max_namespaces` is {}",
                    sub.nqn,
                    sub.namespace.len(),
                    sub.max_namespaces
                ),
            )
            .key();
        }
        let mut nsids: HashMap<u32, usize> = HashMap::new();
        for (j, ns) in sub.namespace.iter().enumerate() {
            let at = |key: &str| ptr!("subsystem", i, "namespace", j, key);
            if let Some(first) = nsids.insert(ns.nsid, j) {
                self.error(
                    at("nsid"),
                    format!(
                        "nsid {} is already used by namespace[{first}] of this subsystem",
                        ns.nsid
                    ),
                );
            }
            if ns.nsid > sub.max_namespaces {
                self.error(
                    at("nsid"),
                    format!(
                        "nsid {} is above this subsystem's `max_namespaces` ({})",
                        ns.nsid, sub.max_namespaces
                    ),
                );
            }
            self.backend(i, j, ns);
        }
    }

    fn backend(&mut self, i: usize, j: usize, ns: &Namespace) {
        let at = |key: &str| ptr!("subsystem", i, "namespace", j, key);
        let backends = ns.backends();
        match backends.as_slice() {
            [] => {
                self.error(
                    ptr!("subsystem", i, "namespace", j),
                    format!("namespace {} declares no backend", ns.nsid),
                ).help("add one of ram = { size = \"64MiB\" }, null = { size = \"1GiB\" }, file = { path = \"/dev/sdb\" }",);
            }
            [_] => {}
            [..] => {
                let key = if ns.null.is_some() && ns.ram.is_some() {
                    "null"
                } else {
                    "file"
                };
                self.error(
                    at(key),
                    format!(
                        "namespace {} declares more than one backend; keep one of ram, null, file",
                        ns.nsid
                    ),
                )
                .key();
            }
        }
        let block = u64::from(ns.block_size);
        for backend in backends {
            match backend {
                BackendRef::Ram(size) | BackendRef::Null(size) => {
                    let key = if matches!(backend, BackendRef::Ram(_)) {
                        "ram"
                    } else {
                        "null"
                    };
                    let pointer = ptr!("subsystem", i, "namespace", j, key, "size");
                    if size.bytes() == 0 {
                        self.error(pointer, "a namespace `size` must be larger than zero");
                    } else if size.bytes() % block != 0 {
                        self.error(
                            pointer,
                            format!(
                                "`size` {} is not a multiple of the block size {block}",
                                size.bytes()
                            ),
                        );
                    }
                }
                BackendRef::File { path, engine, .. } => {
                    self.file(i, j, ns, path);
                    self.file_engine(i, j, engine);
                }
            }
        }
    }

    fn file(&mut self, i: usize, j: usize, ns: &Namespace, path: &Path) {
        let pointer = ptr!("subsystem", i, "namespace", j, "file", "path");
        if !path.is_absolute() {
            self.warning(
                pointer.clone(),
                format!(
                    "{} is relative: it is resolved from the directory the target starts in",
                    path.display()
                ),
            );
        }
        match (self.env.probe_file)(path, !ns.read_only) {
            FileProbe::Usable { len, logical_block } => {
                if let Some(device) = logical_block.filter(|&d| d > 0) {
                    if ns.block_size % device != 0 {
                        self.error(
                            ptr!("subsystem", i, "namespace", j, "block_size"),
                            format!(
                                "block_size {} is not a multiple of the logical block size {device} of {}",
                                ns.block_size,
                                path.display()
                            ),
                        )
                        .help(format!("set block_size = {device}"));
                    }
                }
                if len < u64::from(ns.block_size) {
                    self.machine(
                        pointer,
                        format!(
                            "{} holds {len} bytes, less than one block of {}",
                            path.display(),
                            ns.block_size
                        ),
                    );
                }
            }
            FileProbe::Missing => {
                self.machine(pointer, format!("{} does not exist", path.display()))
                    .help("create it (truncate -s 1G FILE) or fix the path");
            }
            FileProbe::Unusable(why) => {
                self.machine(pointer, format!("{} cannot be used: {why}", path.display()));
            }
            FileProbe::NotProbed => {}
            FileProbe::WrongKind(kind) => {
                self.error(
                    pointer,
                    format!(
                        "{} is {kind}; a file namespace needs a regular file or a block device",
                        path.display()
                    ),
                );
            }
        }
    }

    /// The io_uring engine falls back to worker threads where the kernel refuses io_uring;
    /// `check` says so, since the figures will not be what the declaration asked for.
    fn file_engine(&mut self, i: usize, j: usize, engine: FileEngine) {
        if engine != FileEngine::Uring {
            return;
        }
        if let Err(why) = &self.env.io_uring {
            let why = why.clone();
            self.warning(
                ptr!("subsystem", i, "namespace", j, "file"),
                format!("io_uring is not available here ({why}): this namespace will use worker threads"),
            )
            .help("allow io_uring (sysctl kernel.io_uring_disabled=0, seccomp) or set engine = \"threads\"");
        }
    }

    fn listeners(&mut self) {
        // Where each socket address was first claimed, for conflicts across subsystems.
        let mut claimed: BTreeMap<SocketAddr, (TransportKind, String)> = BTreeMap::new();
        let mut vfio_paths: HashMap<PathBuf, String> = HashMap::new();
        for (i, sub) in self.config.subsystem.iter().enumerate() {
            let mut own = HashSet::new();
            for (j, listener) in sub.listener.iter().enumerate() {
                let at = |key: &str| ptr!("subsystem", i, "listener", j, key);
                let here = format!("subsystem[{i}].listener[{j}]");
                self.listener_transport(&at("transport"), listener);
                match listener.transport {
                    TransportKind::Tcp | TransportKind::Rdma => {
                        if listener.path.is_some() {
                            self.error(at("path"), "`path` is for vfiouser listeners; tcp and rdma take `address` and `port`").key();
                        }
                        let Some(address) = &listener.address else {
                            self.error(
                                ptr!("subsystem", i, "listener", j),
                                format!("a {} listener needs an `address`", listener.transport),
                            ).help("add address = \"0.0.0.0\" (all IPv4) or an address of this machine");
                            continue;
                        };
                        let Ok(ip) = address.parse::<IpAddr>() else {
                            self.error(
                                at("address"),
                                format!("{address:?} is not an IPv4 or IPv6 address (host names are not resolved)"),
                            );
                            continue;
                        };
                        let socket = SocketAddr::new(ip, listener.port_or_default());
                        if !own.insert((listener.transport, socket)) {
                            self.error(
                                at("address"),
                                format!(
                                    "this subsystem already listens on {} {socket}",
                                    listener.transport
                                ),
                            );
                            continue;
                        }
                        self.socket_conflicts(&at("address"), listener.transport, socket, &claimed);
                        claimed.entry(socket).or_insert((listener.transport, here));
                    }
                    TransportKind::Vfiouser => {
                        for key in ["address", "port"] {
                            let set = if key == "address" {
                                listener.address.is_some()
                            } else {
                                listener.port.is_some()
                            };
                            if set {
                                self.error(at(key), format!("`{key}` is for tcp and rdma listeners; vfiouser takes `path`")).key();
                            }
                        }
                        match &listener.path {
                            None => {
                                self.error(
                                    ptr!("subsystem", i, "listener", j),
                                    "a vfiouser listener needs `path`, the directory for the controller's socket",
                                ).help("add path = \"/var/run/nvmf-tgt/vm1\"");
                            }
                            Some(path) => {
                                if let Some(first) = vfio_paths.insert(path.clone(), here) {
                                    self.error(
                                        at("path"),
                                        format!("{} is already the socket directory of {first}; each vfio-user controller needs its own", path.display()),
                                    );
                                }
                            }
                        }
                    }
                    TransportKind::Fc => {}
                }
            }
        }
    }

    fn listener_transport(&mut self, pointer: &str, listener: &Listener) {
        let kind = listener.transport;
        if kind == TransportKind::Fc {
            self.error(
                pointer.to_string(),
                "the FC transport is not supported by this target",
            );
            return;
        }
        if !self.config.transport.is_declared(kind) {
            self.error(
                pointer.to_string(),
                format!(
                    "this listener uses transport `{kind}`, but [transport.{kind}] is not declared"
                ),
            )
            .help(format!(
                "add a [transport.{kind}] section (it may be empty)"
            ));
        } else if kind == TransportKind::Rdma && !cfg!(feature = "rdma") {
            self.machine(
                pointer.to_string(),
                format!("this build has no NVMe/RDMA (built without `--features rdma`); the {kind} listener is refused at run"),
            );
        }
    }

    /// One socket per address and port, shared by subsystems of the same transport. Two
    /// transports cannot share it, and a wildcard address overlaps every address of its port.
    fn socket_conflicts(
        &mut self,
        pointer: &str,
        kind: TransportKind,
        socket: SocketAddr,
        claimed: &BTreeMap<SocketAddr, (TransportKind, String)>,
    ) {
        if let Some((other, first)) = claimed.get(&socket) {
            if *other != kind {
                self.error(
                    pointer.to_string(),
                    format!("{socket} is already claimed by the {other} listener {first}; two transports cannot share an address and port"),
                );
            }
            return;
        }
        let overlapping = claimed.iter().find(|(addr, (other, _))| {
            addr.port() == socket.port()
                && *other == kind
                && (addr.ip().is_unspecified() || socket.ip().is_unspecified())
        });
        if let Some((addr, (_, first))) = overlapping {
            self.error(
                pointer.to_string(),
                format!("{socket} overlaps {addr} of {first}: a wildcard address already covers this port"),
            ).help(format!("use the same address as {first}, or another port"));
        }
    }

    fn namespace_identities(&mut self) {
        let mut uuids = HashMap::new();
        let mut nguids = HashMap::new();
        let mut euis = HashMap::new();
        let mut paths: HashMap<&Path, String> = HashMap::new();
        for (i, sub) in self.config.subsystem.iter().enumerate() {
            for (j, ns) in sub.namespace.iter().enumerate() {
                let here = format!("subsystem[{i}].namespace[{j}]");
                let at = |key: &str| ptr!("subsystem", i, "namespace", j, key);
                if let Some(uuid) = ns.uuid {
                    self.unique_id(
                        &at("uuid"),
                        "uuid",
                        uuid.is_zero(),
                        uuid.to_string(),
                        &here,
                        &mut uuids,
                    );
                }
                if let Some(nguid) = ns.nguid {
                    self.unique_id(
                        &at("nguid"),
                        "nguid",
                        nguid.is_zero(),
                        nguid.to_string(),
                        &here,
                        &mut nguids,
                    );
                }
                if let Some(eui) = ns.eui64 {
                    self.unique_id(
                        &at("eui64"),
                        "eui64",
                        eui.is_zero(),
                        eui.to_string(),
                        &here,
                        &mut euis,
                    );
                }
                if let Some(BackendRef::File { path, .. }) = ns.backend() {
                    if let Some(first) = paths.get(path) {
                        self.error(
                            ptr!("subsystem", i, "namespace", j, "file", "path"),
                            format!("{} is already the backing file of {first}", path.display()),
                        );
                    } else {
                        paths.insert(path, here.clone());
                    }
                }
            }
        }
    }

    fn unique_id(
        &mut self,
        pointer: &str,
        what: &str,
        zero: bool,
        text: String,
        here: &str,
        seen: &mut HashMap<String, String>,
    ) {
        if zero {
            self.error(
                pointer.to_string(),
                format!("`{what}` cannot be all zeros (hosts read that as \"no {what}\")"),
            );
        } else if let Some(first) = seen.get(&text) {
            self.error(
                pointer.to_string(),
                format!("`{what}` {text} is already used by {first}"),
            );
        } else {
            seen.insert(text, here.to_string());
        }
    }
}

struct Limits {
    queue_depth: u32,
    queue_depth_max: u32,
    aq_depth: u32,
    io_qpairs: u32,
    in_capsule: Option<u32>,
    max_io_size: u32,
    io_unit_size: u32,
}
