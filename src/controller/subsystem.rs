//! An NVM subsystem (or the discovery subsystem): namespaces, allowed hosts, listeners, and
//! the controllers currently associated with it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::ArcSwap;

use crate::nvme::{CntlId, Nqn, Nsid};

use super::namespace::{Namespace, NamespaceSpec};
use super::{Controller, RegistryError};

/// A subsystem as declared in the configuration.
#[derive(Clone, Debug)]
pub struct SubsystemSpec {
    pub nqn: Nqn,
    pub serial: String,
    pub model: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub max_namespaces: u32,
    pub namespaces: Vec<NamespaceSpec>,
    pub listeners: Vec<ListenerAddr>,
}

#[cfg(test)]
impl SubsystemSpec {
    /// A subsystem any host may connect to on `listener`, with namespace 1 on `backend`: what
    /// the transports' queue tests serve.
    pub fn for_tests(
        nqn: &str,
        serial: &str,
        listener: ListenerAddr,
        backend: Arc<dyn crate::backend::Backend>,
    ) -> Self {
        Self {
            nqn: nqn.into(),
            serial: serial.into(),
            model: "nvmf-tgt".into(),
            allow_any_host: true,
            hosts: Vec::new(),
            max_namespaces: 32,
            namespaces: vec![NamespaceSpec::for_tests(1, backend)],
            listeners: vec![listener],
        }
    }
}

/// Transport types (NVMe-oF 1.1, Figure 39 TRTYPE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransportType {
    Rdma = 1,
    Fc = 2,
    Tcp = 3,
    Loop = 254,
}

/// Address families (NVMe-oF 1.1, Figure 39 ADRFAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    Ipv4 = 1,
    Ipv6 = 2,
}

impl TransportType {
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Rdma => 1,
            Self::Fc => 2,
            Self::Tcp => 3,
            Self::Loop => 254,
        }
    }
}

impl AddressFamily {
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Ipv4 => 1,
            Self::Ipv6 => 2,
        }
    }
}

/// A listener a subsystem is reachable through, whatever its transport: its identity for
/// access checks, reload (opened and closed by it) and the discovery log. Subsystems that
/// declare the same one share it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenerAddr {
    Tcp(SocketAddr),
    Rdma(SocketAddr),
    /// The directory of a vfio-user controller's socket.
    VfioUser(PathBuf),
}

impl ListenerAddr {
    /// The fabrics transport type, for the discovery log; `None` for vfio-user (a PCIe
    /// controller, which discovery does not list).
    pub fn trtype(&self) -> Option<TransportType> {
        match self {
            Self::Tcp(_) => Some(TransportType::Tcp),
            Self::Rdma(_) => Some(TransportType::Rdma),
            Self::VfioUser(_) => None,
        }
    }

    /// The IP address and port of a TCP or RDMA listener.
    pub fn socket(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(socket) | Self::Rdma(socket) => Some(*socket),
            Self::VfioUser(_) => None,
        }
    }

    pub fn adrfam(&self) -> Option<AddressFamily> {
        self.socket().map(|s| {
            if s.is_ipv4() {
                AddressFamily::Ipv4
            } else {
                AddressFamily::Ipv6
            }
        })
    }

    /// TRADDR as the discovery log and SPDK's RPCs write it: the IP address, or the path.
    pub fn traddr(&self) -> String {
        match self {
            Self::Tcp(socket) | Self::Rdma(socket) => socket.ip().to_string(),
            Self::VfioUser(path) => path.display().to_string(),
        }
    }

    /// TRSVCID: the port, or nothing for vfio-user.
    pub fn trsvcid(&self) -> String {
        self.socket()
            .map(|s| s.port().to_string())
            .unwrap_or_default()
    }

    /// The transport's name as SPDK's RPCs spell it.
    pub fn transport_name(&self) -> &'static str {
        match self {
            Self::Tcp(_) => "TCP",
            Self::Rdma(_) => "RDMA",
            Self::VfioUser(_) => "VFIOUSER",
        }
    }
}

impl core::fmt::Display for ListenerAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Tcp(socket) => write!(f, "tcp {socket}"),
            Self::Rdma(socket) => write!(f, "rdma {socket}"),
            Self::VfioUser(path) => write!(f, "vfiouser {}", path.display()),
        }
    }
}

impl serde::Serialize for ListenerAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Controller IDs handed out in the dynamic model (NVMe-oF 1.1, 4.2): 0xFFF0 and above are
/// reserved.
const MAX_CNTLID: u16 = 0xFFEF;

#[derive(Debug, Default)]
struct Controllers {
    by_id: BTreeMap<CntlId, Weak<Controller>>,
    /// Where the round-robin search for a free ID starts, so a torn-down ID is not reused at
    /// once (a host could still hold it).
    next: u16,
}

/// Who may reach a subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub listeners: Vec<ListenerAddr>,
}

impl Access {
    pub fn admits_host(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.hosts.iter().any(|h| h == hostnqn)
    }
}

/// One subsystem, shared by every reactor.
#[derive(Debug)]
pub struct Subsystem {
    nqn: Nqn,
    serial: String,
    model: String,
    /// Who may connect and through which listeners; a reload swaps it whole.
    access: ArcSwap<Access>,
    max_namespaces: u32,
    is_discovery: bool,
    namespaces: ArcSwap<BTreeMap<Nsid, Arc<Namespace>>>,
    controllers: Mutex<Controllers>,
}

impl Subsystem {
    pub fn new(spec: SubsystemSpec) -> Result<Self, RegistryError> {
        let mut namespaces = BTreeMap::new();
        for ns in spec.namespaces {
            let nsid = ns.nsid;
            if nsid.0 > spec.max_namespaces {
                return Err(RegistryError::BadNamespace {
                    nqn: spec.nqn,
                    nsid,
                    why: "nsid is above max_namespaces",
                });
            }
            let ns = Namespace::new(ns, &spec.nqn)?;
            if namespaces.insert(nsid, Arc::new(ns)).is_some() {
                return Err(RegistryError::BadNamespace {
                    nqn: spec.nqn,
                    nsid,
                    why: "nsid declared twice",
                });
            }
        }
        Ok(Self {
            nqn: spec.nqn,
            serial: spec.serial,
            model: spec.model,
            access: ArcSwap::from_pointee(Access {
                allow_any_host: spec.allow_any_host,
                hosts: spec.hosts,
                listeners: spec.listeners,
            }),
            max_namespaces: spec.max_namespaces,
            is_discovery: false,
            namespaces: ArcSwap::from_pointee(namespaces),
            controllers: Mutex::default(),
        })
    }

    /// The well-known discovery subsystem: any host, every listener, no namespaces.
    pub(crate) fn discovery() -> Self {
        Self {
            nqn: Nqn::from(crate::nvme::DISCOVERY_NQN),
            serial: "nvmf-tgt-discovery".to_owned(),
            model: "nvmf-tgt discovery".to_owned(),
            access: ArcSwap::from_pointee(Access {
                allow_any_host: true,
                hosts: Vec::new(),
                listeners: Vec::new(),
            }),
            max_namespaces: 0,
            is_discovery: true,
            namespaces: ArcSwap::from_pointee(BTreeMap::new()),
            controllers: Mutex::default(),
        }
    }

    pub fn nqn(&self) -> &Nqn {
        &self.nqn
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn max_namespaces(&self) -> u32 {
        self.max_namespaces
    }

    /// The listeners this subsystem is reachable through.
    pub fn listeners(&self) -> Vec<ListenerAddr> {
        self.access.load().listeners.clone()
    }

    /// Who may connect, and through which listeners.
    pub fn access(&self) -> Arc<Access> {
        self.access.load_full()
    }

    /// Replaces the allow-list and listeners (reload). Returns the live controllers that the
    /// new access no longer admits, for the caller to disconnect.
    pub fn set_access(&self, access: Access) -> Vec<Arc<Controller>> {
        self.access.store(Arc::new(access));
        let access = self.access.load();
        self.controllers()
            .into_iter()
            .filter(|c| {
                !access.admits_host(c.hostnqn()) || !access.listeners.contains(c.listener())
            })
            .collect()
    }

    pub fn is_discovery(&self) -> bool {
        self.is_discovery
    }

    /// Whether `hostnqn` may connect (and see this subsystem in the discovery log).
    pub fn allows_host(&self, hostnqn: &str) -> bool {
        self.access.load().admits_host(hostnqn)
    }

    /// Whether a Connect that arrived on `listener` may reach this subsystem.
    pub fn allows_listener(&self, listener: &ListenerAddr) -> bool {
        self.is_discovery || self.access.load().listeners.contains(listener)
    }

    /// The namespace with `nsid`, if attached. Lock-free: the I/O path calls it per command.
    pub fn namespace(&self, nsid: Nsid) -> Option<Arc<Namespace>> {
        self.namespaces.load().get(&nsid).cloned()
    }

    /// Every attached namespace in NSID order.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.namespaces.load().values().cloned().collect()
    }

    /// Attaches a namespace and tells every controller (Namespace Attribute Changed).
    pub fn add_namespace(&self, spec: NamespaceSpec) -> Result<(), RegistryError> {
        let ns = Arc::new(Namespace::new(spec, &self.nqn)?);
        self.attach_namespace(ns)
    }

    /// Attaches a namespace built beforehand (reload prepares namespaces before it changes
    /// anything) and tells every controller.
    pub fn attach_namespace(&self, ns: Arc<Namespace>) -> Result<(), RegistryError> {
        let nsid = ns.nsid();
        if nsid.0 > self.max_namespaces || self.namespace(nsid).is_some() {
            return Err(RegistryError::BadNamespace {
                nqn: self.nqn.clone(),
                nsid,
                why: "nsid is in use or above max_namespaces",
            });
        }
        self.namespaces.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.insert(nsid, Arc::clone(&ns));
            map
        });
        self.notify_namespaces_changed(&[nsid]);
        Ok(())
    }

    /// Detaches a namespace (commands already planned keep their `Arc`) and tells every
    /// controller.
    pub fn remove_namespace(&self, nsid: Nsid) -> Option<Arc<Namespace>> {
        let old = self.namespace(nsid)?;
        self.namespaces.rcu(|map| {
            let mut map = BTreeMap::clone(map);
            map.remove(&nsid);
            map
        });
        self.notify_namespaces_changed(&[nsid]);
        Some(old)
    }

    /// Records a namespace change in every controller's Changed Namespace List and completes
    /// a parked Asynchronous Event Request where the host enabled the notice.
    pub fn notify_namespaces_changed(&self, nsids: &[Nsid]) {
        for ctrlr in self.controllers() {
            ctrlr.handle_namespaces_changed(nsids);
        }
    }

    /// Live controllers of this subsystem in controller ID order.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        let ctrls = self.lock_controllers();
        ctrls.by_id.values().filter_map(Weak::upgrade).collect()
    }

    /// The live controller with `cntlid`.
    pub fn controller(&self, cntlid: CntlId) -> Option<Arc<Controller>> {
        let ctrls = self.lock_controllers();
        ctrls
            .by_id
            .get(&cntlid)
            .and_then(Weak::upgrade)
            .filter(|c| c.is_live())
    }

    /// Picks a free controller ID and registers the controller `make` builds with it; `None`
    /// when all 0xFFEF IDs are taken.
    pub(crate) fn add_controller(
        &self,
        make: impl FnOnce(CntlId) -> Controller,
    ) -> Option<Arc<Controller>> {
        let mut ctrls = self.lock_controllers();
        ctrls.by_id.retain(|_, c| c.strong_count() > 0);
        let start = ctrls.next.clamp(1, MAX_CNTLID);
        let mut id = start;
        while ctrls.by_id.contains_key(&CntlId(id)) {
            id = if id == MAX_CNTLID { 1 } else { id + 1 };
            if id == start {
                return None;
            }
        }
        ctrls.next = if id == MAX_CNTLID { 1 } else { id + 1 };
        let ctrlr = Arc::new(make(CntlId(id)));
        ctrls.by_id.insert(CntlId(id), Arc::downgrade(&ctrlr));
        Some(ctrlr)
    }

    pub(crate) fn remove_controller(&self, cntlid: CntlId) {
        self.lock_controllers().by_id.remove(&cntlid);
    }

    fn lock_controllers(&self) -> std::sync::MutexGuard<'_, Controllers> {
        self.controllers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
