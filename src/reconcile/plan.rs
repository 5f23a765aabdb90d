//! The plan: steps keyed by identity (subsystem NQN, namespace nsid, listener transport +
//! address + port or path, host NQN), in a fixed order: removals in reverse dependency order
//! (namespaces, subsystems, access, listeners), then additions forward (listeners,
//! subsystems, namespaces).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::config::{Config, Listener, Namespace, Subsystem, TransportKind};
use crate::controller::ListenerAddr;

/// One change to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Detach a namespace: new commands get Invalid Namespace, in-flight ones finish.
    RemoveNamespace {
        nqn: String,
        nsid: u32,
        replaced: bool,
    },
    /// Remove a subsystem and disconnect its controllers.
    RemoveSubsystem { nqn: String, replaced: bool },
    /// Replace who may connect and through which listeners; controllers no longer admitted
    /// are disconnected.
    SetAccess {
        nqn: String,
        allow_any_host: bool,
        hosts_added: Vec<String>,
        hosts_removed: Vec<String>,
        listeners_added: Vec<ListenerAddr>,
        listeners_removed: Vec<ListenerAddr>,
    },
    /// Stop a listener no subsystem declares any more; its connections close.
    CloseListener { listener: ListenerAddr },
    /// Start a listener a subsystem now declares.
    OpenListener { listener: ListenerAddr },
    /// Create a subsystem with its namespaces and listeners.
    AddSubsystem { nqn: String, replaced: bool },
    /// Attach a namespace; connected hosts get a Namespace Attribute Changed event.
    AddNamespace {
        nqn: String,
        nsid: u32,
        replaced: bool,
    },
    /// The target's name (status only).
    Rename { name: Option<String> },
    /// Serve the Prometheus endpoint on `listen` (bound before the old one closes), or no
    /// longer serve it.
    SetMetrics { listen: Option<SocketAddr> },
}

/// A change this target cannot make while serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestartField {
    /// JSON pointer into the new declaration (for its file:line).
    pub pointer: String,
    pub what: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Non-empty: the plan is refused whole.
    pub restart_required: Vec<RestartField>,
    /// Things a person should know (a namespace replaced, hosts disconnected).
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.restart_required.is_empty()
    }

    pub fn is_refused(&self) -> bool {
        !self.restart_required.is_empty()
    }
}

/// The steps from `live` (what is serving) to `new`.
pub fn plan(live: &Config, new: &Config) -> Plan {
    let mut plan = Plan {
        restart_required: restart_fields(live, new),
        ..Plan::default()
    };
    let old_subs: BTreeMap<&str, &Subsystem> =
        live.subsystem.iter().map(|s| (s.nqn.as_str(), s)).collect();
    let new_subs: BTreeMap<&str, &Subsystem> =
        new.subsystem.iter().map(|s| (s.nqn.as_str(), s)).collect();

    let mut remove_ns = Vec::new();
    let mut remove_subs = Vec::new();
    let mut access = Vec::new();
    let mut add_subs = Vec::new();
    let mut add_ns = Vec::new();

    for (nqn, old) in &old_subs {
        let Some(new_sub) = new_subs.get(nqn) else {
            remove_subs.push(Step::RemoveSubsystem {
                nqn: (*nqn).to_string(),
                replaced: false,
            });
            continue;
        };
        if needs_replacing(old, new_sub) {
            plan.warnings.push(format!(
                "subsystem {nqn}: serial, model or max_namespaces changed; it is replaced and its hosts reconnect"
            ));
            remove_subs.push(Step::RemoveSubsystem {
                nqn: (*nqn).to_string(),
                replaced: true,
            });
            add_subs.push(Step::AddSubsystem {
                nqn: (*nqn).to_string(),
                replaced: true,
            });
            continue;
        }
        namespace_steps(
            nqn,
            old,
            new_sub,
            &mut remove_ns,
            &mut add_ns,
            &mut plan.warnings,
        );
        if let Some(step) = access_step(live, new, old, new_sub) {
            access.push(step);
        }
    }
    for nqn in new_subs.keys() {
        if !old_subs.contains_key(nqn) {
            add_subs.push(Step::AddSubsystem {
                nqn: (*nqn).to_string(),
                replaced: false,
            });
        }
    }

    let old_listeners = listeners(live);
    let new_listeners = listeners(new);
    plan.steps.extend(remove_ns);
    plan.steps.extend(remove_subs);
    plan.steps.extend(access);
    plan.steps
        .extend(
            old_listeners
                .difference(&new_listeners)
                .map(|listener| Step::CloseListener {
                    listener: listener.clone(),
                }),
        );
    plan.steps
        .extend(
            new_listeners
                .difference(&old_listeners)
                .map(|listener| Step::OpenListener {
                    listener: listener.clone(),
                }),
        );
    plan.steps.extend(add_subs);
    plan.steps.extend(add_ns);
    if live.target.name != new.target.name {
        plan.steps.push(Step::Rename {
            name: new.target.name.clone(),
        });
    }
    let metrics = |c: &Config| {
        c.metrics
            .as_ref()
            .and_then(crate::config::MetricsSection::addr)
    };
    if metrics(live) != metrics(new) {
        plan.steps.push(Step::SetMetrics {
            listen: metrics(new),
        });
    }
    plan
}

fn restart_fields(live: &Config, new: &Config) -> Vec<RestartField> {
    let mut out = Vec::new();
    let mut field = |changed: bool, pointer: &str, what: &str| {
        if changed {
            out.push(RestartField {
                pointer: pointer.to_string(),
                what: what.to_string(),
            });
        }
    };
    let (a, b) = (&live.target, &new.target);
    field(
        a.interrupt_mode != b.interrupt_mode,
        "/target/interrupt_mode",
        "target.interrupt_mode",
    );
    field(
        a.core_mask.cores() != b.core_mask.cores(),
        "/target/core_mask",
        "target.core_mask",
    );
    field(
        a.control_socket != b.control_socket,
        "/target/control_socket",
        "target.control_socket",
    );
    field(
        a.control_socket_group != b.control_socket_group,
        "/target/control_socket_group",
        "target.control_socket_group",
    );
    field(
        a.busy_poll_us != b.busy_poll_us,
        "/target/busy_poll_us",
        "target.busy_poll_us",
    );
    let (a, b) = (&live.transport, &new.transport);
    field(a.tcp != b.tcp, "/transport/tcp", "transport.tcp");
    field(a.rdma != b.rdma, "/transport/rdma", "transport.rdma");
    field(
        a.vfiouser != b.vfiouser,
        "/transport/vfiouser",
        "transport.vfiouser",
    );
    out
}

/// Identity fields of a subsystem that hosts cache (Identify); changing them live would lie
/// to connected hosts, so the subsystem is recreated.
fn needs_replacing(old: &Subsystem, new: &Subsystem) -> bool {
    old.serial != new.serial || old.model != new.model || old.max_namespaces != new.max_namespaces
}

fn namespace_steps(
    nqn: &str,
    old: &Subsystem,
    new: &Subsystem,
    remove: &mut Vec<Step>,
    add: &mut Vec<Step>,
    warnings: &mut Vec<String>,
) {
    let old_ns: BTreeMap<u32, &Namespace> = old.namespace.iter().map(|n| (n.nsid, n)).collect();
    let new_ns: BTreeMap<u32, &Namespace> = new.namespace.iter().map(|n| (n.nsid, n)).collect();
    for (nsid, ns) in &old_ns {
        match new_ns.get(nsid) {
            None => remove.push(Step::RemoveNamespace {
                nqn: nqn.to_string(),
                nsid: *nsid,
                replaced: false,
            }),
            Some(new) if new != ns => {
                warnings.push(format!(
                    "subsystem {nqn} namespace {nsid}: its backend or identity changed; it is removed and added again"
                ));
                remove.push(Step::RemoveNamespace {
                    nqn: nqn.to_string(),
                    nsid: *nsid,
                    replaced: true,
                });
                add.push(Step::AddNamespace {
                    nqn: nqn.to_string(),
                    nsid: *nsid,
                    replaced: true,
                });
            }
            Some(_) => {}
        }
    }
    for nsid in new_ns.keys() {
        if !old_ns.contains_key(nsid) {
            add.push(Step::AddNamespace {
                nqn: nqn.to_string(),
                nsid: *nsid,
                replaced: false,
            });
        }
    }
}

fn access_step(live: &Config, new: &Config, old: &Subsystem, new_sub: &Subsystem) -> Option<Step> {
    let old_hosts: BTreeSet<String> = old.host_nqns(live).into_iter().collect();
    let new_hosts: BTreeSet<String> = new_sub.host_nqns(new).into_iter().collect();
    let old_listeners: BTreeSet<ListenerAddr> =
        old.listener.iter().filter_map(listener_addr).collect();
    let new_listeners: BTreeSet<ListenerAddr> =
        new_sub.listener.iter().filter_map(listener_addr).collect();
    if old.allow_any_host == new_sub.allow_any_host
        && old_hosts == new_hosts
        && old_listeners == new_listeners
    {
        return None;
    }
    Some(Step::SetAccess {
        nqn: new_sub.nqn.clone(),
        allow_any_host: new_sub.allow_any_host,
        hosts_added: new_hosts.difference(&old_hosts).cloned().collect(),
        hosts_removed: old_hosts.difference(&new_hosts).cloned().collect(),
        listeners_added: new_listeners.difference(&old_listeners).cloned().collect(),
        listeners_removed: old_listeners.difference(&new_listeners).cloned().collect(),
    })
}

/// The listener a declaration names (validated declarations always parse); `None` for a
/// transport that has none (FC is refused by the rules).
pub fn listener_addr(listener: &Listener) -> Option<ListenerAddr> {
    let socket = || -> Option<SocketAddr> {
        let ip: IpAddr = listener.address.as_deref()?.parse().ok()?;
        Some(SocketAddr::new(ip, listener.port_or_default()))
    };
    match listener.transport {
        TransportKind::Tcp => socket().map(ListenerAddr::Tcp),
        TransportKind::Rdma => socket().map(ListenerAddr::Rdma),
        TransportKind::Vfiouser => listener.path.clone().map(ListenerAddr::VfioUser),
        TransportKind::Fc => None,
    }
}

/// Every distinct listener a declaration opens.
pub fn listeners(config: &Config) -> BTreeSet<ListenerAddr> {
    config
        .subsystem
        .iter()
        .flat_map(|s| s.listener.iter().filter_map(listener_addr))
        .collect()
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let again = |replaced: &bool| if *replaced { " (replaced)" } else { "" };
        match self {
            Self::RemoveNamespace {
                nqn,
                nsid,
                replaced,
            } => {
                write!(f, "- remove namespace {nsid} from {nqn}{}", again(replaced))
            }
            Self::RemoveSubsystem { nqn, replaced } => {
                write!(f, "- remove subsystem {nqn}{}", again(replaced))
            }
            Self::SetAccess {
                nqn,
                allow_any_host,
                hosts_added,
                hosts_removed,
                listeners_added,
                listeners_removed,
            } => {
                write!(
                    f,
                    "~ change access to {nqn}: allow_any_host = {allow_any_host}"
                )?;
                for h in hosts_added {
                    write!(f, "; + host {h}")?;
                }
                for h in hosts_removed {
                    write!(f, "; - host {h}")?;
                }
                for l in listeners_added {
                    write!(f, "; + listener {l}")?;
                }
                for l in listeners_removed {
                    write!(f, "; - listener {l}")?;
                }
                Ok(())
            }
            Self::CloseListener { listener } => write!(f, "- stop listening on {listener}"),
            Self::OpenListener { listener } => write!(f, "+ listen on {listener}"),
            Self::AddSubsystem { nqn, replaced } => {
                write!(f, "+ add subsystem {nqn}{}", again(replaced))
            }
            Self::AddNamespace {
                nqn,
                nsid,
                replaced,
            } => {
                write!(f, "+ add namespace {nsid} to {nqn}{}", again(replaced))
            }
            Self::Rename { name } => write!(f, "~ target name = {name:?}"),
            Self::SetMetrics { listen: Some(addr) } => {
                write!(f, "~ serve metrics on {addr}")
            }
            Self::SetMetrics { listen: None } => write!(f, "- stop serving metrics"),
        }
    }
}
