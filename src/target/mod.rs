//! The running target: builds namespaces, subsystems, listeners and reactors from the
//! declaration, serves until SIGTERM/SIGINT, then shuts down in order.

mod apply;
mod build;
mod cli;
mod reload;
mod status;
mod systemd;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tracing::info;

use crate::config::Config;
use crate::control::ControlServer;
use crate::reactor::{Reactor, ReactorConfig, ReactorHandle, ReactorMessage};
use crate::transport::tcp::TcpContext;

pub use cli::{print_plan, print_reload, print_status, render_status};
pub use reload::{Outcome, ReloadResult, Reloader, Trigger};
pub use status::StatusReport;

/// A target that is serving.
pub struct Target {
    reactors: Vec<ReactorHandle>,
    control: Option<ControlServer>,
    reloader: Arc<Reloader>,
    _watcher: Option<notify::RecommendedWatcher>,
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
        let built = build::build(config).context("cannot build the target")?;
        let cores = config
            .target
            .core_mask
            .cores()
            .map_err(|why| anyhow::anyhow!("core_mask: {why}"))?
            .to_vec();
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
        let context = Arc::new(TcpContext {
            registry: Arc::clone(&built.registry),
            limits: built.limits,
            c2h_success: built.c2h_success,
        });
        let sockets = built
            .listeners
            .iter()
            .filter_map(|(l, addr)| Some((l.local_addr().ok()?, addr.clone())))
            .collect();
        let mut listeners = Some(built.listeners);
        let mut reactors = Vec::new();
        for reactor in prepared {
            // The first reactor accepts for all listeners and hands connections out.
            let mine = listeners.take().unwrap_or_default();
            reactors.push(reactor.start(Arc::clone(&context), mine, Arc::clone(&mailboxes))?);
        }
        let reloader = Reloader::start(
            config_path,
            apply::Live {
                config: config.clone(),
                registry: Arc::clone(&built.registry),
                sockets,
                mailboxes: Arc::clone(&mailboxes),
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
                .map(|r| (r.config.clone(), Arc::clone(r.stats())))
                .collect(),
            Instant::now(),
        ));
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
            _watcher: watcher,
        })
    }

    /// Stops accepting, lets in-flight commands finish (a few seconds at most), closes every
    /// connection and joins the reactors. Dropping the registry afterwards closes backends,
    /// which flush file namespaces.
    pub fn shutdown(mut self) {
        systemd::notify_stopping();
        self.control.take();
        for reactor in &self.reactors {
            reactor.send(ReactorMessage::Shutdown);
        }
        for reactor in self.reactors.drain(..) {
            reactor.join();
        }
        info!("target stopped");
    }
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
    target.shutdown();
    Ok(())
}

/// Where the control socket of the target declared in `path` is, falling back to the
/// default when the file cannot be read.
pub fn control_socket_of(config: Option<&Config>) -> PathBuf {
    config.map_or_else(
        || PathBuf::from(crate::config::DEFAULT_CONTROL_SOCKET),
        |c| c.target.control_socket.clone(),
    )
}
