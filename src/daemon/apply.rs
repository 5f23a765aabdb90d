//! Applies a reload plan to the serving target in two phases. Prepare does everything that
//! can fail (open backends, build subsystems, bind sockets) without changing what serves;
//! commit then makes the changes, none of which can fail. A failure in prepare therefore
//! leaves the previous state serving untouched: the rollback is dropping what was prepared.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use tracing::{info, warn};

use super::build;
use super::metrics::{MetricsServer, MetricsSource};
use crate::config::Config;
use crate::controller::{Access, Controller, ListenerAddr, Namespace, Registry, Subsystem};
use crate::nvme::Nsid;
use crate::reactor::{Mailbox, ReactorMessage};
use crate::reconcile::{Plan, Step};
use crate::transport::subscriber::NewSubscriber;

/// What is serving: the declaration last applied, and the objects built from it.
pub struct Live {
    pub config: Config,
    pub registry: Arc<Registry>,
    /// Listeners being accepted on.
    pub listeners: BTreeSet<ListenerAddr>,
    /// Every reactor; the first one accepts for all listeners.
    pub mailboxes: Arc<Vec<Mailbox>>,
    /// What the listeners a reload opens share with the others.
    pub transports: build::Transports,
    /// The Prometheus endpoint, when one is declared, and what it reads.
    pub metrics: Option<MetricsServer>,
    pub metrics_source: MetricsSource,
}

#[derive(Default)]
struct Prepared {
    subsystems: HashMap<String, Arc<Subsystem>>,
    namespaces: HashMap<(String, u32), Arc<Namespace>>,
    listeners: HashMap<ListenerAddr, NewSubscriber>,
    access: HashMap<String, Access>,
    /// The new metrics endpoint's socket, bound.
    metrics: Option<std::net::TcpListener>,
}

impl Live {
    /// Applies `plan` (computed from `self.config` to `new`). On error nothing has changed.
    pub fn apply(&mut self, new: &Config, plan: &Plan) -> anyhow::Result<()> {
        let prepared = self.prepare(new, plan)?;
        self.commit(plan, prepared);
        self.config = new.clone();
        Ok(())
    }

    fn prepare(&self, new: &Config, plan: &Plan) -> anyhow::Result<Prepared> {
        let mut prepared = Prepared::default();
        for step in &plan.steps {
            match step {
                Step::AddSubsystem { nqn, .. } => {
                    let decl = subsystem_decl(new, nqn)?;
                    let spec = build::subsystem_spec(new, decl)?;
                    let subsystem =
                        Subsystem::new(spec).with_context(|| format!("subsystem {nqn}"))?;
                    prepared.subsystems.insert(nqn.clone(), Arc::new(subsystem));
                }
                Step::AddNamespace { nqn, nsid, .. } => {
                    let decl = subsystem_decl(new, nqn)?;
                    let ns = decl
                        .namespace
                        .iter()
                        .find(|n| n.nsid == *nsid)
                        .ok_or_else(|| anyhow!("namespace {nsid} of {nqn} is not declared"))?;
                    prepared
                        .namespaces
                        .insert((nqn.clone(), *nsid), build::namespace(new, nqn, ns)?);
                }
                Step::OpenListener { listener } => {
                    prepared.listeners.insert(
                        listener.clone(),
                        build::open_listener(listener, &self.transports)?,
                    );
                }
                Step::SetAccess { nqn, .. } => {
                    // Listener addresses are resolved here so commit cannot fail on them.
                    let decl = subsystem_decl(new, nqn)?;
                    let access = Access {
                        allow_any_host: decl.allow_any_host,
                        hosts: decl.host_nqns(new),
                        listeners: build::subsystem_listeners(decl)?,
                    };
                    prepared.access.insert(nqn.clone(), access);
                }
                Step::SetMetrics { listen: Some(addr) } => {
                    prepared.metrics = Some(
                        MetricsServer::bind(*addr)
                            .with_context(|| format!("cannot serve metrics on {addr}"))?,
                    );
                }
                _ => {}
            }
        }
        Ok(prepared)
    }

    fn commit(&mut self, plan: &Plan, mut prepared: Prepared) {
        let mut discovery_changed = false;
        for step in &plan.steps {
            info!(%step, "applying");
            match step {
                Step::RemoveNamespace { nqn, nsid, .. } => {
                    if let Some(subsystem) = self.registry.subsystem(nqn) {
                        subsystem.remove_namespace(Nsid(*nsid));
                    }
                }
                Step::RemoveSubsystem { nqn, .. } => {
                    let controllers = self
                        .registry
                        .subsystem(nqn)
                        .map(|s| s.controllers())
                        .unwrap_or_default();
                    self.registry.remove_subsystem(nqn);
                    self.disconnect(controllers);
                }
                Step::SetAccess { nqn, .. } => {
                    let (Some(subsystem), Some(access)) =
                        (self.registry.subsystem(nqn), prepared.access.remove(nqn))
                    else {
                        continue;
                    };
                    let refused = subsystem.set_access(access);
                    if !refused.is_empty() {
                        warn!(subnqn = %nqn, controllers = refused.len(), "disconnecting controllers no longer admitted");
                    }
                    self.disconnect(refused);
                    discovery_changed = true;
                }
                Step::CloseListener { listener } => {
                    if self.listeners.remove(listener) {
                        self.acceptor()
                            .send(ReactorMessage::RemoveListener(listener.clone()));
                        for mailbox in self.mailboxes.iter() {
                            mailbox.send(ReactorMessage::CloseConnections(listener.clone()));
                        }
                    }
                }
                Step::OpenListener { listener } => {
                    if let Some(acceptor) = prepared.listeners.remove(listener) {
                        self.listeners.insert(listener.clone());
                        self.acceptor().send(ReactorMessage::Subscribe(acceptor));
                    }
                }
                Step::AddSubsystem { nqn, .. } => {
                    if let Some(subsystem) = prepared.subsystems.remove(nqn) {
                        if let Err(err) = self.registry.insert_subsystem(subsystem) {
                            warn!(%err, subnqn = %nqn, "cannot add subsystem");
                        }
                    }
                }
                Step::AddNamespace { nqn, nsid, .. } => {
                    let ns = prepared.namespaces.remove(&(nqn.clone(), *nsid));
                    if let (Some(subsystem), Some(ns)) = (self.registry.subsystem(nqn), ns) {
                        if let Err(err) = subsystem.attach_namespace(ns) {
                            warn!(%err, subnqn = %nqn, nsid, "cannot add namespace");
                        }
                    }
                }
                Step::Rename { .. } => {}
                Step::SetMetrics { .. } => {
                    // The old endpoint stops before the new one starts serving.
                    self.metrics = None;
                    if let Some(listener) = prepared.metrics.take() {
                        match MetricsServer::start(listener, Arc::clone(&self.metrics_source)) {
                            Ok(server) => self.metrics = Some(server),
                            Err(err) => warn!(%err, "cannot start the metrics endpoint"),
                        }
                    }
                }
            }
        }
        if discovery_changed {
            self.registry.bump_discovery_generation();
        }
    }

    fn acceptor(&self) -> &Mailbox {
        // Target::start always creates at least one reactor.
        &self.mailboxes[0]
    }

    /// Tears controllers down and has every reactor close their connections.
    fn disconnect(&self, controllers: Vec<Arc<Controller>>) {
        for ctrlr in controllers {
            ctrlr.tear_down();
            for mailbox in self.mailboxes.iter() {
                mailbox.send(ReactorMessage::ControllerGone(Arc::clone(&ctrlr)));
            }
        }
    }
}

fn subsystem_decl<'a>(
    config: &'a Config,
    nqn: &str,
) -> anyhow::Result<&'a crate::config::Subsystem> {
    config
        .subsystem
        .iter()
        .find(|s| s.nqn == nqn)
        .ok_or_else(|| anyhow!("subsystem {nqn} is not declared"))
}
