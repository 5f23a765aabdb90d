//! The running target: builds namespaces, subsystems, listeners and reactors from the
//! declaration, serves until SIGTERM/SIGINT, then shuts down in order.

mod apply;
pub mod assets;
mod build;
mod cli;
pub mod logging;
mod metrics;
mod reload;
mod spdk_rpc;
mod status;
mod systemd;
mod watch;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::{error, info};

use crate::config::Config;
use crate::control::ControlServer;
use crate::controller::Registry;
use crate::reactor::{Reactor, ReactorConfig, ReactorHandle, ReactorMessage};

pub use cli::{print_plan, print_reload, print_status, render_status};
pub use reload::{Outcome, ReloadResult, Reloader, Trigger};
pub use status::StatusReport;

/// A target that is serving.
pub struct Target {
    reactors: Vec<ReactorHandle>,
    control: Option<ControlServer>,
    reloader: Arc<Reloader>,
    watcher: Option<notify::RecommendedWatcher>,
    /// Every namespace, for the flush at shutdown.
    registry: Arc<Registry>,
}

/// One line on what runs the `file` namespaces that ask for io_uring: the reactors' rings,
/// or (the kernel refusing io_uring) the worker threads.
fn log_file_engine(config: &Config) {
    let on_uring = config
        .subsystem
        .iter()
        .flat_map(|s| &s.namespace)
        .filter(|ns| {
            matches!(
                ns.backend(),
                Some(crate::config::BackendRef::File {
                    engine: crate::config::FileEngine::Uring,
                    ..
                })
            )
        })
        .count();
    if on_uring == 0 {
        return;
    }
    match crate::sys::uring::probe() {
        Ok(()) => info!(
            namespaces = on_uring,
            ring_entries = crate::backend::file::uring::RING_ENTRIES,
            "file namespaces run on each reactor's io_uring"
        ),
        Err(err) => tracing::warn!(
            namespaces = on_uring,
            %err,
            "io_uring is not available: file namespaces use worker threads"
        ),
    }
}

/// Why the target did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error(
        "{failed} of {writable} writable namespaces could not be flushed; their last writes may not be durable"
    )]
    Flush { failed: usize, writable: usize },
}

impl Target {
    /// Builds everything the declaration asks for and starts serving. `text` is the file the
    /// declaration was read from (its hash identifies the applied configuration).
    pub fn start(
        config: &Config,
        config_path: &Path,
        text: &str,
        watch: bool,
    ) -> anyhow::Result<Self> {
        let cores = config
            .target
            .core_mask
            .cores()
            .map_err(|why| anyhow::anyhow!("core_mask: {why}"))?
            .to_vec();
        // Each reactor gets a shard of its own in every namespace's and controller's counters.
        crate::controller::set_iostat_reactors(cores.len());
        let built = build::build(config).context("cannot build the target")?;
        log_file_engine(config);
        let interrupt_mode = config.target.interrupt_mode;
        let busy_poll = Duration::from_micros(u64::from(config.target.busy_poll_us));
        let mut prepared = Vec::new();
        for (index, core) in cores.iter().enumerate() {
            prepared.push(
                Reactor::prepare(ReactorConfig {
                    index,
                    core: Some(*core),
                    interrupt_mode,
                    busy_poll,
                })
                .context("cannot create a reactor")?,
            );
        }
        let mailboxes = Arc::new(prepared.iter().map(Reactor::mailbox).collect::<Vec<_>>());
        let (listeners_open, acceptors): (_, Vec<_>) = built.listeners.into_iter().unzip();
        let buffers = build::buffer_pool(config, prepared.len());
        let mut acceptors = Some(acceptors);
        let mut reactors = Vec::new();
        for reactor in prepared {
            // The first reactor accepts for all listeners and hands connections out.
            let mine = acceptors.take().unwrap_or_default();
            reactors.push(reactor.start(Arc::clone(&buffers), mine, Arc::clone(&mailboxes))?);
        }
        let metrics_source = metrics::MetricsSource::default();
        let metrics_server = match config.metrics.as_ref().map(|m| (m, m.addr())) {
            Some((_, Some(addr))) => Some(
                metrics::MetricsServer::bind(addr)
                    .and_then(|listener| {
                        metrics::MetricsServer::start(listener, Arc::clone(&metrics_source))
                    })
                    .with_context(|| format!("cannot serve metrics on {addr}"))?,
            ),
            Some((section, None)) => {
                anyhow::bail!("metrics listen {:?} is no address", section.listen)
            }
            None => None,
        };
        let reloader = Reloader::start(
            config_path,
            apply::Live {
                config: config.clone(),
                registry: Arc::clone(&built.registry),
                listeners: listeners_open,
                mailboxes: Arc::clone(&mailboxes),
                transports: built.transports,
                metrics: metrics_server,
                metrics_source: Arc::clone(&metrics_source),
            },
            text,
        );
        let watcher = if watch {
            watch::watch(config_path, &reloader)
        } else {
            None
        };
        let report = Arc::new(StatusReport::new(
            config.clone(),
            config_path.to_owned(),
            Arc::clone(&built.registry),
            Arc::clone(&reloader),
            reactors
                .iter()
                .zip(mailboxes.iter())
                .map(|(r, mailbox)| (r.config.clone(), mailbox.clone()))
                .collect(),
            buffers,
            Instant::now(),
        ));
        // The endpoint reads the report; a scrape before this line gets 503.
        let _ = metrics_source.set(Arc::downgrade(&report));
        let control = ControlServer::spawn(
            &config.target.control_socket,
            config.target.control_socket_group.as_deref(),
            status::handler(report),
        )
        .context("cannot open the control socket")?;
        info!(
            subsystems = config.subsystem.len(),
            reactors = reactors.len(),
            interrupt_mode,
            control_socket = %config.target.control_socket.display(),
            "target serving"
        );
        systemd::notify_ready("serving");
        Ok(Self {
            reactors,
            control: Some(control),
            reloader,
            watcher,
            registry: Arc::clone(&built.registry),
        })
    }

    /// Stops accepting, lets in-flight commands finish (a few seconds at most), closes every
    /// connection, joins the reactors, then flushes every writable namespace.
    ///
    /// The flush is explicit because dropping would not do it: the reloader and the status
    /// report hold the registry until the process exits. A failed flush is an error (exit
    /// status 1): the host was told those writes completed, and the service manager should
    /// see that they may be lost rather than a clean stop.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        systemd::notify_stopping();
        // No more reloads (control socket, file watch) that could add namespaces meanwhile.
        self.control.take();
        self.watcher.take();
        for reactor in &self.reactors {
            reactor.send(ReactorMessage::Shutdown);
        }
        for reactor in self.reactors.drain(..) {
            reactor.join();
        }
        let flushed = flush_namespaces(&self.registry);
        info!("target stopped");
        flushed
    }
}

/// Flushes every namespace's backend once no reactor submits to them any more, logging each
/// failure and one line with the count.
fn flush_namespaces(registry: &Registry) -> Result<(), ShutdownError> {
    let (mut writable, mut failed) = (0, 0);
    for subsystem in registry.subsystems() {
        for ns in subsystem.namespaces() {
            let backend = ns.backend();
            // Read-only and cacheless backends are called too (a file stops its workers) but
            // are not counted: they have nothing to make durable.
            let counts = !ns.read_only() && backend.volatile_write_cache();
            writable += usize::from(counts);
            if let Err(err) = backend.flush_for_shutdown() {
                failed += 1;
                error!(
                    subnqn = %subsystem.nqn(),
                    nsid = %ns.nsid(),
                    ?backend,
                    error = %err,
                    cause = ?std::error::Error::source(&err),
                    "cannot flush namespace at shutdown; its last writes may not be durable"
                );
            }
        }
    }
    if failed > 0 {
        error!(
            writable,
            failed, "flush at shutdown failed for some namespaces"
        );
        return Err(ShutdownError::Flush { failed, writable });
    }
    info!(namespaces = writable, "writable namespaces flushed");
    Ok(())
}

/// Serves `config` until SIGTERM or SIGINT; SIGHUP reloads the declaration.
pub fn serve(config: &Config, config_path: &Path, text: &str, watch: bool) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    // The watcher and `plan` need the path whatever the working directory becomes.
    let config_path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    let target = Target::start(config, &config_path, text, watch)?;
    for signal in signals.forever() {
        if signal == SIGHUP {
            info!("SIGHUP: reloading the declaration");
            target.reloader.request(Trigger::Signal);
            continue;
        }
        info!(signal, "signal received; shutting down");
        break;
    }
    Ok(target.shutdown()?)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backend::{Backend, BackendError, IoDone, IoRequest, SubmitCx};
    use crate::controller::{NamespaceSpec, SubsystemSpec, TransportLimits};

    /// A backend with a volatile cache whose flush succeeds or fails, counting the calls.
    #[derive(Debug)]
    struct Flushable {
        fails: bool,
        flushes: AtomicUsize,
    }

    impl Backend for Flushable {
        fn size(&self) -> u64 {
            1 << 20
        }

        fn volatile_write_cache(&self) -> bool {
            true
        }

        fn flush_for_shutdown(&self) -> Result<(), BackendError> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            if self.fails {
                Err(BackendError::Flush(std::io::Error::from_raw_os_error(
                    libc::EIO,
                )))
            } else {
                Ok(())
            }
        }

        fn submit(&self, token: u64, req: IoRequest, _: &mut SubmitCx<'_>) -> Option<IoDone> {
            Some(IoDone {
                token,
                result: Ok(()),
                buf: req.buf,
            })
        }
    }

    fn registry_of(namespaces: &[(Arc<Flushable>, bool)]) -> Registry {
        let namespaces = namespaces
            .iter()
            .zip(1..)
            .map(|((backend, read_only), nsid)| NamespaceSpec {
                nsid: crate::nvme::Nsid(nsid),
                backend: Arc::clone(backend) as Arc<dyn Backend>,
                block_size: 512,
                read_only: *read_only,
                uuid: None,
                nguid: None,
                eui64: None,
            })
            .collect();
        let spec = SubsystemSpec {
            nqn: "nqn.2026-11.io.nvmf-tgt:flush".into(),
            serial: "S".into(),
            model: "M".into(),
            allow_any_host: true,
            hosts: Vec::new(),
            max_namespaces: 32,
            namespaces,
            listeners: Vec::new(),
        };
        Registry::new(vec![spec], TransportLimits::default()).expect("registry")
    }

    fn backend(fails: bool) -> Arc<Flushable> {
        Arc::new(Flushable {
            fails,
            flushes: AtomicUsize::new(0),
        })
    }

    #[test]
    fn every_namespace_is_flushed_and_a_failure_is_an_error() {
        let (good, bad, read_only) = (backend(false), backend(true), backend(false));
        let registry = registry_of(&[
            (Arc::clone(&good), false),
            (Arc::clone(&bad), false),
            (Arc::clone(&read_only), true),
        ]);
        let result = flush_namespaces(&registry);
        assert!(
            matches!(
                result,
                Err(ShutdownError::Flush {
                    failed: 1,
                    writable: 2
                })
            ),
            "{result:?}"
        );
        for backend in [&good, &bad, &read_only] {
            assert_eq!(backend.flushes.load(Ordering::Relaxed), 1);
        }
        assert!(flush_namespaces(&registry_of(&[(backend(false), false)])).is_ok());
    }
}
