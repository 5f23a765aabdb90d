//! From the declaration to live objects: backends, subsystems, the registry and bound sockets.
//! Start-up and reload build through the same functions.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use tracing::info;

use crate::backend::Backend;
use crate::config::{self, Config, Subsystem as SubsystemDecl};
use crate::controller::{
    LimitsByTransport, ListenerAddr, Namespace, NamespaceSpec, Registry, SubsystemSpec,
    TransportLimits,
};
use crate::reconcile::plan::{listener_addr, listeners as listeners_of};
use crate::transport::buffer_pool::{PoolLimits, SharedPool};
#[cfg(feature = "rdma")]
use crate::transport::rdma::{RdmaContext, RdmaListener};
use crate::transport::subscriber::NewSubscriber;
use crate::transport::tcp::{TcpAcceptor, TcpContext};
use crate::transport::vfio_user::{VfioUserContext, VfioUserEndpoint};

pub struct Built {
    pub registry: Arc<Registry>,
    pub transports: Transports,
    /// Listening sockets, bound, as the subscribers that accept on them.
    pub listeners: Vec<(ListenerAddr, NewSubscriber)>,
}

/// What each transport's listeners and queues share; kept for the listeners a reload opens.
#[derive(Debug, Clone)]
pub struct Transports {
    pub tcp: Arc<TcpContext>,
    #[cfg(feature = "rdma")]
    pub rdma: Arc<RdmaContext>,
    pub vfio_user: Arc<VfioUserContext>,
}

/// The shared data buffer pool the declaration asks for, for `reactors` reactors.
pub fn buffer_pool(config: &Config, reactors: usize) -> Arc<SharedPool> {
    let tcp = config.transport.tcp.clone().unwrap_or_default();
    SharedPool::new(PoolLimits::new(
        tcp.num_shared_buffers,
        tcp.buf_cache_size,
        tcp.io_unit_size,
        u32::try_from(reactors).unwrap_or(u32::MAX),
    ))
}

/// What each transport allows, from its `[transport.*]` section (its defaults when absent:
/// without [transport.tcp] nothing listens yet; discovery and the control socket still serve,
/// and a reload may add listeners), and whether TCP may send C2HData with SUCCESS.
pub fn limits(config: &Config) -> (LimitsByTransport, bool) {
    let transports = &config.transport;
    let tcp = transports.tcp.clone().unwrap_or_default();
    let rdma = transports.rdma.clone().unwrap_or_default();
    let vfio = transports.vfiouser.clone().unwrap_or_default();
    let limits = LimitsByTransport {
        tcp: TransportLimits {
            max_queue_depth: tcp.max_queue_depth,
            max_aq_depth: tcp.max_aq_depth,
            max_io_qpairs_per_ctrlr: tcp.max_io_qpairs_per_ctrlr,
            in_capsule_data_size: tcp.in_capsule_data_size,
            max_io_size: tcp.max_io_size,
        },
        rdma: TransportLimits {
            max_queue_depth: rdma.max_queue_depth,
            max_aq_depth: rdma.max_aq_depth,
            max_io_qpairs_per_ctrlr: rdma.max_io_qpairs_per_ctrlr,
            in_capsule_data_size: rdma.in_capsule_data_size,
            max_io_size: rdma.max_io_size,
        },
        vfio_user: crate::transport::vfio_user::fit_limits(TransportLimits {
            max_queue_depth: vfio.max_queue_depth,
            max_aq_depth: vfio.max_aq_depth,
            max_io_qpairs_per_ctrlr: vfio.max_io_qpairs_per_ctrlr,
            // PCIe has no capsules.
            in_capsule_data_size: 0,
            max_io_size: vfio.max_io_size,
        }),
    };
    (limits, tcp.c2h_success)
}

pub fn build(config: &Config) -> anyhow::Result<Built> {
    let (limits, c2h_success) = limits(config);
    let mut specs = Vec::new();
    for subsystem in &config.subsystem {
        specs.push(subsystem_spec(config, subsystem)?);
    }
    let registry = Arc::new(Registry::new(specs, limits).context("invalid subsystems")?);
    let vfio = config.transport.vfiouser.clone().unwrap_or_default();
    #[cfg(feature = "rdma")]
    let rdma = config.transport.rdma.clone().unwrap_or_default();
    let transports = Transports {
        tcp: Arc::new(TcpContext {
            registry: Arc::clone(&registry),
            limits: limits.tcp,
            c2h_success,
        }),
        #[cfg(feature = "rdma")]
        rdma: Arc::new(RdmaContext {
            registry: Arc::clone(&registry),
            limits: limits.rdma,
            acceptor_backlog: rdma.acceptor_backlog,
            interrupt_mode: config.target.interrupt_mode,
            // `check` holds the depth to 2..=65535 when an SRQ is used.
            alarms: Arc::default(),
            srq_depth: (!rdma.no_srq)
                .then(|| u16::try_from(rdma.max_srq_depth).unwrap_or(u16::MAX)),
        }),
        vfio_user: Arc::new(VfioUserContext::new(
            Arc::clone(&registry),
            limits.vfio_user,
            !vfio.disable_mappable_bar0,
            !vfio.disable_shadow_doorbells,
            // As SPDK: in interrupt mode nothing promises the later turn a held interrupt
            // needs, whatever the key says.
            !vfio.disable_adaptive_irq && !config.target.interrupt_mode,
            config.target.interrupt_mode,
        )),
    };
    let mut listeners = Vec::new();
    for addr in listeners_of(config) {
        let listener = open_listener(&addr, &transports)?;
        listeners.push((addr, listener));
    }
    Ok(Built {
        registry,
        transports,
        listeners,
    })
}

/// Opens a listener: the one place where each transport's listening endpoint is made, as the
/// reactor subscriber that serves it.
pub fn open_listener(
    addr: &ListenerAddr,
    transports: &Transports,
) -> anyhow::Result<NewSubscriber> {
    match addr {
        ListenerAddr::Tcp(socket) => {
            let acceptor =
                TcpAcceptor::new(bind(*socket)?, addr.clone(), Arc::clone(&transports.tcp))
                    .with_context(|| format!("cannot listen on {socket}"))?;
            Ok(Box::new(acceptor))
        }
        ListenerAddr::VfioUser(dir) => {
            let endpoint =
                VfioUserEndpoint::bind(dir, addr.clone(), Arc::clone(&transports.vfio_user))
                    .with_context(|| format!("cannot listen on {addr}"))?;
            Ok(Box::new(endpoint))
        }
        #[cfg(feature = "rdma")]
        ListenerAddr::Rdma(socket) => {
            let listener = RdmaListener::bind(*socket, addr.clone(), Arc::clone(&transports.rdma))
                .with_context(|| format!("cannot listen on {addr}"))?;
            Ok(Box::new(listener))
        }
        // `check` says so first; a reload that adds one fails here.
        #[cfg(not(feature = "rdma"))]
        ListenerAddr::Rdma(_) => anyhow::bail!(
            "cannot listen on {addr}: this build has no NVMe/RDMA (built without `--features rdma`)"
        ),
    }
}

/// Binds a listening socket ([`TcpAcceptor::new`] makes it non-blocking for the reactor).
fn bind(socket: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener =
        TcpListener::bind(socket).with_context(|| format!("cannot listen on {socket}"))?;
    info!(%socket, "listening");
    Ok(listener)
}

/// A subsystem's spec with its namespaces' backends opened.
pub fn subsystem_spec(config: &Config, subsystem: &SubsystemDecl) -> anyhow::Result<SubsystemSpec> {
    let mut namespaces = Vec::new();
    for ns in &subsystem.namespace {
        namespaces.push(
            namespace_spec(config, ns)
                .with_context(|| format!("subsystem {} namespace {}", subsystem.nqn, ns.nsid))?,
        );
    }
    Ok(SubsystemSpec {
        nqn: subsystem.nqn.as_str().into(),
        serial: subsystem.serial.clone(),
        model: subsystem.model.clone(),
        allow_any_host: subsystem.allow_any_host,
        hosts: subsystem.host_nqns(config),
        max_namespaces: subsystem.max_namespaces,
        namespaces,
        listeners: subsystem_listeners(subsystem)?,
    })
}

/// The listeners of a subsystem as the controller core names them.
pub fn subsystem_listeners(subsystem: &SubsystemDecl) -> anyhow::Result<Vec<ListenerAddr>> {
    subsystem
        .listener
        .iter()
        .map(|listener| {
            listener_addr(listener).with_context(|| {
                format!(
                    "subsystem {}: a {} listener without a valid address",
                    subsystem.nqn, listener.transport
                )
            })
        })
        .collect()
}

/// A namespace with its backend opened, ready to attach.
pub fn namespace(
    config: &Config,
    nqn: &str,
    ns: &config::Namespace,
) -> anyhow::Result<Arc<Namespace>> {
    let spec = namespace_spec(config, ns)
        .with_context(|| format!("subsystem {nqn} namespace {}", ns.nsid))?;
    Ok(Arc::new(Namespace::new(spec, nqn)?))
}

fn namespace_spec(config: &Config, ns: &config::Namespace) -> anyhow::Result<NamespaceSpec> {
    Ok(NamespaceSpec {
        nsid: crate::nvme::Nsid(ns.nsid),
        backend: open_backend(config, ns)?,
        block_size: ns.block_size,
        read_only: ns.read_only,
        uuid: ns.uuid.map(|id| id.0),
        nguid: ns.nguid.map(|id| id.0),
        eui64: ns.eui64.map(|id| id.0),
    })
}

fn open_backend(config: &Config, ns: &config::Namespace) -> anyhow::Result<Arc<dyn Backend>> {
    use crate::backend::file::{Engine, FileBackend};
    use crate::backend::{null::NullBackend, ram::RamBackend};
    use crate::config::{BackendRef, FileEngine};
    Ok(match ns.backend() {
        Some(BackendRef::Ram(size)) => Arc::new(RamBackend::new(size.bytes())),
        Some(BackendRef::Null(size)) => Arc::new(NullBackend::new(size.bytes())),
        Some(BackendRef::File {
            path,
            direct,
            engine,
        }) => {
            let engine = match engine {
                FileEngine::Uring => Engine::Uring,
                FileEngine::Threads => Engine::Threads,
            };
            // The worker threads share the reactors' cores: the core mask is the target's.
            let cores = config.target.core_mask.cores().unwrap_or_default();
            Arc::new(FileBackend::open(
                path,
                direct,
                ns.read_only,
                engine,
                cores,
            )?)
        }
        None => bail!("namespace {} must declare exactly one backend", ns.nsid),
    })
}
