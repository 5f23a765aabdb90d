//! From the declaration to live objects: backends, subsystems, the registry and bound sockets.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tracing::info;

use crate::backend::Backend;
use crate::config::{self, Config, TransportKind};
use crate::controller::{
    AddressFamily, ListenerAddr, NamespaceSpec, Registry, SubsystemSpec, TransportLimits,
    TransportType,
};

pub struct Built {
    pub registry: Arc<Registry>,
    pub limits: TransportLimits,
    pub c2h_success: bool,
    pub listeners: Vec<(TcpListener, ListenerAddr)>,
}

pub fn build(config: &Config) -> anyhow::Result<Built> {
    // Without [transport.tcp] nothing listens yet; discovery and the control socket still
    // serve, and a reload may add listeners.
    let tcp = config.transport.tcp.clone().unwrap_or_default();
    let limits = TransportLimits {
        max_queue_depth: tcp.max_queue_depth,
        max_aq_depth: tcp.max_aq_depth,
        max_io_qpairs_per_ctrlr: tcp.max_io_qpairs_per_ctrlr,
        in_capsule_data_size: tcp.in_capsule_data_size,
        max_io_size: tcp.max_io_size,
    };
    let mut sockets: BTreeMap<SocketAddr, ListenerAddr> = BTreeMap::new();
    let mut specs = Vec::new();
    for subsystem in &config.subsystem {
        let mut listeners = Vec::new();
        for listener in &subsystem.listener {
            if listener.transport != TransportKind::Tcp {
                bail!(
                    "subsystem {}: {} listeners are not served by this build",
                    subsystem.nqn,
                    listener.transport
                );
            }
            let (socket, addr) = tcp_listener_addr(listener)
                .with_context(|| format!("subsystem {}", subsystem.nqn))?;
            sockets.entry(socket).or_insert_with(|| addr.clone());
            listeners.push(addr);
        }
        let mut namespaces = Vec::new();
        for ns in &subsystem.namespace {
            let backend = open_backend(ns)
                .with_context(|| format!("subsystem {} namespace {}", subsystem.nqn, ns.nsid))?;
            namespaces.push(NamespaceSpec {
                nsid: ns.nsid,
                backend,
                block_size: ns.block_size,
                read_only: ns.read_only,
                uuid: ns.uuid.map(|id| id.0),
                nguid: ns.nguid.map(|id| id.0),
                eui64: ns.eui64.map(|id| id.0),
            });
        }
        specs.push(SubsystemSpec {
            nqn: subsystem.nqn.clone(),
            serial: subsystem.serial.clone(),
            model: subsystem.model.clone(),
            allow_any_host: subsystem.allow_any_host,
            hosts: subsystem.host_nqns(config),
            max_namespaces: subsystem.max_namespaces,
            namespaces,
            listeners,
        });
    }
    let registry = Arc::new(Registry::new(specs, limits).context("invalid subsystems")?);
    let mut listeners = Vec::new();
    for (socket, addr) in sockets {
        let listener =
            TcpListener::bind(socket).with_context(|| format!("cannot listen on {socket}"))?;
        listener.set_nonblocking(true)?;
        info!(%socket, "listening");
        listeners.push((listener, addr));
    }
    Ok(Built {
        registry,
        limits,
        c2h_success: tcp.c2h_success,
        listeners,
    })
}

fn tcp_listener_addr(listener: &config::Listener) -> anyhow::Result<(SocketAddr, ListenerAddr)> {
    let address = listener.address.as_deref().unwrap_or("0.0.0.0");
    let ip: IpAddr = address
        .parse()
        .with_context(|| format!("listener address {address:?} is not an IP address"))?;
    let port = listener.port_or_default();
    let adrfam = if ip.is_ipv4() {
        AddressFamily::Ipv4
    } else {
        AddressFamily::Ipv6
    };
    Ok((
        SocketAddr::new(ip, port),
        ListenerAddr {
            trtype: TransportType::Tcp,
            adrfam,
            traddr: ip.to_string(),
            trsvcid: port.to_string(),
        },
    ))
}

fn open_backend(ns: &config::Namespace) -> anyhow::Result<Arc<dyn Backend>> {
    use crate::backend::{file::FileBackend, null::NullBackend, ram::RamBackend};
    use crate::config::BackendRef;
    Ok(match ns.backend() {
        Some(BackendRef::Ram(size)) => Arc::new(RamBackend::new(size.bytes())),
        Some(BackendRef::Null(size)) => Arc::new(NullBackend::new(size.bytes())),
        Some(BackendRef::File { path, direct }) => {
            Arc::new(FileBackend::open(path, direct, ns.read_only)?)
        }
        None => bail!("namespace {} must declare exactly one backend", ns.nsid),
    })
}
