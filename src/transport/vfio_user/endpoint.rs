//! The owner of one vfio-user socket (`DIR/cntrl`): accepts a VMM, serves it one NVMe
//! controller, and starts afresh when the VMM goes (a VM reboot, QEMU's exit).
//!
//! One client at a time, as a PCI function has one host: a second VMM that connects while
//! the first is served is closed at once. The listening socket and the client's socket are
//! this one subscriber's descriptors; with mappable doorbells (poll mode) the reactor also
//! polls it every turn, for the doorbell page the guest stores into and the interrupts held
//! for those polls (adaptive interrupts). With shadow doorbells it is polled too: every turn
//! in poll mode, in the busy-poll window in interrupt mode, where it also arms EventIdx
//! before the reactor sleeps (`before_sleep`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;
use mio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

use super::VfioUserContext;
use super::device::{PciDevice, PciParams};
use super::doorbells::DoorbellPage;
use super::nvme_device::NvmeDevice;
use super::server::{ClientConnection, ConnectionState, ServerError};
use crate::backend::IoDone;
use crate::controller::{ListenerAddr, PcieParams};
use crate::transport::context::Flow;
use crate::transport::subscriber::{Polled, QueuePairs, Readiness, Subscriber, SubscriberCx};

/// The key of the listening socket.
const LISTENER: u16 = 0;
/// The key of the client's socket.
const CLIENT: u16 = 1;
/// The socket's name in the listener's directory (SPDK's).
pub const SOCKET_NAME: &str = "cntrl";

/// A served VMM: its connection and the controller it sees.
struct Client {
    conn: ClientConnection,
    device: NvmeDevice,
    writable_armed: bool,
}

pub struct VfioUserEndpoint {
    listener: UnixListener,
    path: PathBuf,
    addr: ListenerAddr,
    context: Arc<VfioUserContext>,
    client: Option<Client>,
    span: tracing::Span,
}

impl VfioUserEndpoint {
    /// Listens on `DIR/cntrl` for listener `addr` (`ListenerAddr::VfioUser(DIR)`): creates
    /// the directory if needed and replaces a socket left by an earlier run.
    pub fn bind(
        dir: &Path,
        addr: ListenerAddr,
        context: Arc<VfioUserContext>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SOCKET_NAME);
        remove_stale_socket(&path)?;
        let listener = UnixListener::bind(&path)?;
        info!(path = %path.display(), "vfio-user listening");
        let span = tracing::info_span!("vfio_user", path = %path.display(), cntlid = tracing::field::Empty);
        Ok(Self {
            listener,
            path,
            addr,
            context,
            client: None,
            span,
        })
    }

    fn accept_all(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.serve(stream, cx, now),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => {
                    warn!(%err, "accept failed");
                    return;
                }
            }
        }
    }

    fn serve(&mut self, stream: UnixStream, cx: &mut SubscriberCx<'_>, now: Instant) {
        if self.client.is_some() {
            warn!("a second VMM connected while one is served; closing it");
            drop(stream);
            return;
        }
        let registry = &self.context.registry;
        let Some(subsys) = registry
            .subsystems()
            .into_iter()
            .find(|s| !s.is_discovery() && s.allows_listener(&self.addr))
        else {
            warn!("no subsystem serves this socket any more; closing the VMM's connection");
            return;
        };
        let params = PcieParams {
            interrupt_vectors: self.context.interrupt_vectors,
            shadow_doorbells: self.context.shadow_doorbells,
        };
        let ctrlr = match registry.attach_pcie(subsys.nqn(), &self.addr, params, now) {
            Ok(ctrlr) => ctrlr,
            Err(err) => {
                warn!(%err, "cannot create the controller; closing the VMM's connection");
                return;
            }
        };
        self.span.record("cntlid", ctrlr.cntlid().0);
        let mut conn = ClientConnection::new(stream);
        if let Err(err) = cx.register(&mut conn, CLIENT, Interest::READABLE) {
            warn!(%err, "cannot watch the VMM's socket");
            ctrlr.tear_down();
            cx.io.controller_gone(ctrlr);
            return;
        }
        // Mappable doorbells are polled: the declaration's rules allow them in poll mode only.
        let doorbells = if self.context.mappable_doorbells {
            match DoorbellPage::new() {
                Ok(page) => Some(page),
                Err(err) => {
                    warn!(%err, "cannot make the doorbell page; doorbell writes will be trapped");
                    None
                }
            }
        } else {
            None
        };
        let pci = PciDevice::new(PciParams {
            msix_vectors: self.context.interrupt_vectors,
            mappable_doorbells: doorbells.is_some(),
        });
        let device = NvmeDevice::new(
            ctrlr,
            pci,
            self.context.limits,
            cx.io.async_notifier(),
            doorbells,
            self.context.adaptive_irq,
            self.context.interrupt_mode,
        );
        info!("VMM connected");
        self.client = Some(Client {
            conn,
            device,
            writable_armed: false,
        });
    }

    /// Drops the client: its queues, its memory maps and its controller.
    fn drop_client(&mut self, cx: &mut SubscriberCx<'_>) {
        let Some(mut client) = self.client.take() else {
            return;
        };
        let _ = cx.deregister(&mut client.conn);
        let ctrlr = client.device.tear_down(&mut cx.io);
        cx.io.controller_gone(ctrlr);
        info!("VMM disconnected; the controller is gone");
    }

    fn serve_client(&mut self, ready: Readiness, cx: &mut SubscriberCx<'_>, now: Instant) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let mut alive = true;
        if ready.writable {
            alive = stays_open(client.conn.handle_writable(&mut client.device));
        }
        if alive && (ready.readable || ready.read_closed || ready.error) {
            alive = stays_open(client.conn.handle_readable(&mut client.device));
        }
        if alive {
            client.device.run_queues(&mut cx.io, now);
        }
        self.settle(alive, cx);
        // The doorbells rung before a DMA_UNMAP were served just now; the unmap may go on.
        self.resume_quiesced(cx, now);
    }

    /// After the device's work moved on (a command completed, buffers came): a DMA_UNMAP that
    /// waited for the commands in flight is handled once none is.
    fn resume_quiesced(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        if !client.conn.is_quiescing() {
            return;
        }
        let alive = stays_open(client.conn.resume_quiesced(&mut client.device));
        if alive {
            client.device.run_queues(&mut cx.io, now);
        }
        self.settle(alive, cx);
    }

    /// Keeps the client if it is alive, watching its socket for writability exactly while
    /// replies wait.
    fn settle(&mut self, alive: bool, cx: &mut SubscriberCx<'_>) {
        if !alive {
            self.drop_client(cx);
            return;
        }
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let wants = client.conn.wants_writable();
        if wants != client.writable_armed {
            let interest = if wants {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(err) = cx.reregister(&mut client.conn, CLIENT, interest) {
                warn!(%err, "cannot change interest");
            }
            client.writable_armed = wants;
        }
    }
}

impl Subscriber for VfioUserEndpoint {
    fn init(&mut self, cx: &mut SubscriberCx<'_>, _now: Instant) -> std::io::Result<()> {
        cx.register(&mut self.listener, LISTENER, Interest::READABLE)
    }

    fn process(&mut self, ready: Readiness, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        let span = self.span.clone();
        let _entered = span.enter();
        match ready.key {
            LISTENER => self.accept_all(cx, now),
            CLIENT => self.serve_client(ready, cx, now),
            _ => {}
        }
        Flow::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        self.client.as_ref().and_then(|c| c.device.retry_at())
    }

    fn handle_timer(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        if let Some(client) = self.client.as_mut() {
            if client.device.retry_at().is_some() {
                let span = self.span.clone();
                let _entered = span.enter();
                client.device.run_queues(&mut cx.io, now);
            }
        }
        self.resume_quiesced(cx, now);
        Flow::Continue
    }

    fn handle_io_done(
        &mut self,
        done: &mut dyn Iterator<Item = IoDone>,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        if let Some(client) = self.client.as_mut() {
            client.device.handle_io_done(done, &mut cx.io, now);
        }
        self.resume_quiesced(cx, now);
        Flow::Continue
    }

    fn handle_buffers_granted(
        &mut self,
        tag: u16,
        credits: u32,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        match self.client.as_mut() {
            Some(client) => client
                .device
                .handle_buffers_granted(tag, credits, &mut cx.io, now),
            None => cx.io.pool.give_credits(credits),
        }
        self.resume_quiesced(cx, now);
        Flow::Continue
    }

    fn handle_async_events(&mut self, cx: &mut SubscriberCx<'_>, _now: Instant) -> Flow {
        if let Some(client) = self.client.as_mut() {
            client.device.handle_async_events(&mut cx.io);
        }
        Flow::Continue
    }

    fn wants_poll(&self) -> bool {
        self.client.as_ref().is_some_and(|c| c.device.wants_poll())
    }

    fn poll(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Polled {
        let Some(client) = self.client.as_mut() else {
            return Polled::IDLE;
        };
        let span = self.span.clone();
        let _entered = span.enter();
        Polled::work(client.device.poll_doorbells(&mut cx.io, now))
    }

    fn before_sleep(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Polled {
        let Some(client) = self.client.as_mut() else {
            return Polled::IDLE;
        };
        let span = self.span.clone();
        let _entered = span.enter();
        Polled::work(client.device.before_sleep(&mut cx.io, now))
    }

    fn listening_on(&self) -> Option<&ListenerAddr> {
        Some(&self.addr)
    }

    fn queue_pairs(&self) -> QueuePairs {
        self.client
            .as_ref()
            .map_or_else(QueuePairs::default, |c| QueuePairs {
                admin: 1,
                io: c.device.io_queues(),
                unassociated: 0,
            })
    }

    fn in_flight(&self) -> usize {
        self.client.as_ref().map_or(0, |c| c.device.in_flight())
    }

    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        self.drop_client(cx);
        let _ = cx.deregister(&mut self.listener);
        if let Err(err) = std::fs::remove_file(&self.path) {
            debug!(path = %self.path.display(), %err, "cannot remove the socket");
        }
    }
}

/// Removes `path` if it is a socket nobody listens on (left by a target that died); refuses
/// to take over a live one or to remove anything that is not a socket.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is served by another process", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// Whether the VMM's connection goes on after a call: not when it hung up, nor after a
/// protocol error (logged).
fn stays_open(result: Result<ConnectionState, ServerError>) -> bool {
    match result {
        Ok(ConnectionState::Open) => true,
        Ok(ConnectionState::Closed) => false,
        Err(err) => {
            warn!(%err, "vfio-user protocol error; closing the VMM's connection");
            false
        }
    }
}
