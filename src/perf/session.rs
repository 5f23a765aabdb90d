//! Setting up an NVMe/TCP run: the admin queue (connect, enable, identify), the namespace, the
//! checks of the options against what the target allows, then the I/O queues; and while it
//! runs, sleeping in epoll on their sockets and sending Keep Alive.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

pub use super::io::Namespace;
use super::io::{self, Limits, TargetInfo, active_namespaces, check_options};
use super::queue::{IoQueue, QueueParams};
use super::{PerfConfig, PerfError, TcpTarget, connect_refusal};
use crate::host::{HostError, HostQueue, QueueOptions};
use crate::nvme::Status;
use crate::nvme::identify::IdentifyController;

/// Keep Alive Timeout asked for on the admin queue; `run` sends a Keep Alive well within it.
pub const KATO_MS: u32 = 30_000;
/// Sent on the admin queue this often during a run, well inside [`KATO_MS`].
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(10);

pub struct Session {
    pub admin: HostQueue,
    /// The admin queues of the other controllers (`--controllers`).
    pub more_admins: Vec<HostQueue>,
    pub ns: Namespace,
    pub queues: Vec<IoQueue>,
    cfg: PerfConfig,
    tcp: TcpTarget,
    /// The I/O queues' sockets, registered once `wait` is first called.
    poll: Option<(Poll, Events)>,
    next_keep_alive: Option<Instant>,
}

impl Session {
    pub fn connect(cfg: &PerfConfig, tcp: &TcpTarget) -> Result<Self, PerfError> {
        let mut opts = QueueOptions::admin(&tcp.subnqn, &tcp.hostnqn);
        opts.header_digest = tcp.header_digest;
        opts.data_digest = tcp.data_digest;
        opts.timeout = cfg.timeout;
        opts.kato_ms = KATO_MS;
        let mut admin = HostQueue::connect(tcp.addr, &opts)
            .map_err(|e| connect_error(cfg, tcp, "connecting the admin queue", e))?;
        let during = "setting up the controller";
        let err = |e| host_error(cfg, during, e);
        admin.enable_controller().map_err(err)?;
        let cap = admin.property_get(0, true).map_err(err)?;
        let max_entries = (cap & 0xFFFF) + 1;
        let page_size = 4096usize << ((cap >> 48) & 0xF);
        let ctrl = admin.identify(1, 0).map_err(err)?;
        let ctrl = IdentifyController::parse(&ctrl).ok_or_else(|| {
            PerfError::Invalid("the target sent a short Identify Controller page".into())
        })?;
        let ns = namespace(cfg, &tcp.subnqn, &mut admin)?;
        let limits = Limits {
            max_entries,
            mdts: ctrl.mdts,
            page_size,
        };
        check_options(cfg, &ns, limits)?;

        let in_capsule = usize::try_from(ctrl.ioccsz * 16)
            .unwrap_or(0)
            .saturating_sub(64);
        let params = QueueParams {
            depth: cfg.queue_depth,
            io_size: cfg.io_size,
            block_size: ns.block_size,
            nsid: ns.nsid,
            in_capsule,
        };
        let mut queues =
            Vec::with_capacity(usize::from(cfg.connections) * usize::from(cfg.controllers));
        let mut more_admins = Vec::new();
        for controller in 0..cfg.controllers {
            // The first controller is the one set up above; each other one is brought up the
            // same way (its own admin queue, enabled) before its I/O queues connect.
            let cntlid = if controller == 0 {
                admin.cntlid()
            } else {
                let mut other = HostQueue::connect(tcp.addr, &opts)
                    .map_err(|e| connect_error(cfg, tcp, "connecting another controller", e))?;
                other
                    .enable_controller()
                    .map_err(|e| host_error(cfg, "enabling another controller", e))?;
                let cntlid = other.cntlid();
                more_admins.push(other);
                cntlid
            };
            for qid in 1..=cfg.connections {
                let mut io_opts = opts.io(qid, cntlid, cfg.queue_depth + 1);
                io_opts.disable_sq_flow_control = true;
                let host = HostQueue::connect(tcp.addr, &io_opts)
                    .map_err(|e| connect_error(cfg, tcp, "connecting an I/O queue", e))?;
                queues.push(
                    IoQueue::from_host(host, params)
                        .map_err(|source| PerfError::Queue { qid, source })?,
                );
            }
        }
        Ok(Self {
            admin,
            more_admins,
            ns,
            queues,
            cfg: cfg.clone(),
            tcp: tcp.clone(),
            poll: None,
            next_keep_alive: None,
        })
    }
}

impl io::Session for Session {
    type Queue = IoQueue;

    fn namespace(&self) -> Namespace {
        self.ns
    }

    fn queues(&mut self) -> &mut [IoQueue] {
        &mut self.queues
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), PerfError> {
        if self.poll.is_none() {
            let poll = Poll::new().map_err(PerfError::Poll)?;
            for (i, q) in self.queues.iter_mut().enumerate() {
                poll.registry()
                    .register(
                        q.stream_mut(),
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .map_err(PerfError::Poll)?;
            }
            self.poll = Some((poll, Events::with_capacity(64)));
        }
        if let Some((poll, events)) = self.poll.as_mut() {
            poll.poll(events, Some(timeout)).map_err(PerfError::Poll)?;
        }
        Ok(())
    }

    fn housekeeping(&mut self, now: Instant) -> Result<(), PerfError> {
        let next = *self.next_keep_alive.get_or_insert(now + KEEP_ALIVE_EVERY);
        if now >= next {
            for admin in std::iter::once(&mut self.admin).chain(&mut self.more_admins) {
                admin
                    .keep_alive()
                    .map_err(|e| host_error(&self.cfg, "keep alive", e))?;
            }
            self.next_keep_alive = Some(now + KEEP_ALIVE_EVERY);
        }
        Ok(())
    }

    fn target(&self) -> TargetInfo {
        TargetInfo {
            transport: "tcp",
            address: self.tcp.addr.to_string(),
            subnqn: self.tcp.subnqn.clone(),
        }
    }
}

/// The namespace asked for, or the first active one.
fn namespace(
    cfg: &PerfConfig,
    subnqn: &str,
    admin: &mut HostQueue,
) -> Result<Namespace, PerfError> {
    let during = "identifying the namespace";
    let list = admin
        .identify(2, 0)
        .map_err(|e| host_error(cfg, during, e))?;
    let active = active_namespaces(&list);
    let nsid = match cfg.nsid {
        Some(nsid) => nsid,
        None => *active
            .first()
            .ok_or_else(|| PerfError::NoNamespace(subnqn.to_owned()))?,
    };
    let not_found = || PerfError::NamespaceNotFound {
        nsid,
        subnqn: subnqn.to_owned(),
    };
    if !active.contains(&nsid) {
        return Err(not_found());
    }
    let page = match admin.identify(0, nsid) {
        Ok(page) => page,
        Err(HostError::Status(s)) if s.sct == 0 && s.sc == Status::INVALID_NAMESPACE.sc => {
            return Err(not_found());
        }
        Err(e) => return Err(host_error(cfg, during, e)),
    };
    Namespace::from_identify(nsid, &page).ok_or_else(not_found)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Errors of a Connect: refused by the socket, unanswered, or refused by the target.
fn connect_error(
    cfg: &PerfConfig,
    tcp: &TcpTarget,
    during: &'static str,
    e: HostError,
) -> PerfError {
    match e {
        HostError::Io(io) if !is_timeout(&io) => PerfError::Connect {
            addr: tcp.addr,
            source: io,
        },
        HostError::Refused(status) => PerfError::Refused {
            subnqn: tcp.subnqn.clone(),
            hostnqn: tcp.hostnqn.clone(),
            reason: connect_refusal(status),
            status,
        },
        e => host_error(cfg, during, e),
    }
}

pub fn host_error(cfg: &PerfConfig, during: &'static str, e: HostError) -> PerfError {
    match e {
        HostError::Io(io) if is_timeout(&io) => PerfError::Timeout {
            timeout: cfg.timeout,
            during,
        },
        source => PerfError::Host { during, source },
    }
}
