//! The RDMA CM listener: a listening id on its own event channel, whose descriptor wakes the
//! reactor when a host asks to connect. Each request's private data is checked and the queue
//! sized ([`negotiate`]); the connection is set up (its QP, receives posted, its own event
//! channel) and accepted, then handed to the least loaded reactor; a request that cannot be
//! served is rejected with the NVMe/RDMA status saying why.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;
use tracing::{debug, info, warn};

use super::RdmaContext;
use super::connection::RdmaConnection;
use super::device::{DeviceOptions, Devices};
use super::protocol::{CmReject, CmRequest, QueueLimits, RejectStatus, negotiate, read_depth};
use crate::controller::ListenerAddr;
use crate::sys::verbs::{self, AsyncEvents, CmEvent, CmEventKind, CmId, Device, EventChannel};
use crate::transport::context::Flow;
use crate::transport::subscriber::{Readiness, Subscriber, SubscriberCx};

/// The key of the event channel; devices' async event descriptors follow it.
const CHANNEL: u16 = 0;
/// Devices whose async events a listener watches, at most (a machine has a few).
const MAX_WATCHED_DEVICES: usize = 64;

/// Why a listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("no RDMA device on this machine (is rdma_cm loaded, or a soft-RoCE link added?)")]
    NoDevice(#[source] std::io::Error),
    #[error("no RDMA device has address {addr}")]
    NoDeviceWithAddress {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen")]
    Listen(#[source] std::io::Error),
}

/// A listening RDMA CM id and what its connections share.
pub struct RdmaListener {
    /// Declared before `channel`: the id is destroyed first.
    id: CmId,
    channel: EventChannel,
    addr: ListenerAddr,
    context: Arc<RdmaContext>,
    devices: Devices,
    /// The async event descriptors of the devices connections came on, key `CHANNEL + 1 +
    /// index`: every event is logged, and those that break connections (a fatal QP error, a
    /// CQ overrun, a broken SRQ, a dead device) raise their alarms, on whatever reactor
    /// they run.
    async_events: Vec<WatchedDevice>,
}

/// A device whose async events the listener reads.
struct WatchedDevice {
    name: String,
    /// [`Device::handle`], as connections register it with their alarms.
    handle: usize,
    events: AsyncEvents,
}

impl core::fmt::Debug for RdmaListener {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RdmaListener")
            .field("addr", &self.addr)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RdmaListener {
    /// Binds and listens on `socket`; the reactor that hosts the listener watches it.
    pub fn bind(
        socket: SocketAddr,
        addr: ListenerAddr,
        context: Arc<RdmaContext>,
    ) -> Result<Self, ListenError> {
        let channel = EventChannel::new().map_err(ListenError::NoDevice)?;
        match verbs::device_count() {
            Ok(0) => {
                return Err(ListenError::NoDevice(std::io::Error::from_raw_os_error(
                    libc::ENODEV,
                )));
            }
            Ok(_) => {}
            Err(err) => return Err(ListenError::NoDevice(err)),
        }
        let mut id = CmId::new(&channel).map_err(ListenError::Listen)?;
        id.bind(socket)
            .map_err(|source| ListenError::NoDeviceWithAddress {
                addr: socket,
                source,
            })?;
        id.listen(context.acceptor_backlog)
            .map_err(ListenError::Listen)?;
        info!(%socket, "listening (rdma)");
        let devices = Devices::new(DeviceOptions {
            srq_depth: context.srq_depth,
            capsule_len: context.capsule_len(),
        });
        Ok(Self {
            id,
            channel,
            addr,
            context,
            devices,
            async_events: Vec::new(),
        })
    }

    fn queue_limits(&self) -> QueueLimits {
        let limits = &self.context.limits;
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        QueueLimits {
            max_queue_depth: clamp(limits.max_queue_depth),
            max_aq_depth: clamp(limits.max_aq_depth),
            max_io_qpairs: clamp(limits.max_io_qpairs_per_ctrlr),
        }
    }

    fn handle_event(&mut self, event: CmEvent, cx: &mut SubscriberCx<'_>, now: Instant) {
        match event.kind {
            CmEventKind::ConnectRequest => {
                // In a connect request the kernel reports the host's values as the ones to
                // accept with: `initiator_depth` is what the host lets us read from it (its
                // responder resources, IRD), `responder_resources` what it would read from us.
                let CmEvent {
                    private_data,
                    initiator_depth: host_ird,
                    new_id,
                    ..
                } = event;
                let Some(id) = new_id else {
                    return;
                };
                if let Some(device) = id.device() {
                    self.watch_device(device, cx);
                }
                match self.setup(id, &private_data, host_ird, now) {
                    Ok(conn) => cx.hand_off(Box::new(conn)),
                    Err((mut id, status)) => {
                        debug!(listener = %self.addr, peer = ?id.peer_addr(), %status, "connection refused");
                        if let Err(err) = id.reject(&CmReject::new(status).emit()) {
                            debug!(%err, "reject failed");
                        }
                    }
                }
            }
            CmEventKind::DeviceRemoval => {
                warn!(listener = %self.addr, "RDMA device removed");
                self.devices.clear();
            }
            other => debug!(listener = %self.addr, event = ?other, "CM event on the listener"),
        }
    }

    /// Opens a device the first time a connection comes on it, and watches its async events.
    fn watch_device(&mut self, device: Device, cx: &mut SubscriberCx<'_>) {
        if self.devices.knows(&device) || self.async_events.len() >= MAX_WATCHED_DEVICES {
            return;
        }
        if self.devices.get_or_open(device).is_err() {
            // Refused below, with the error logged there.
            return;
        }
        let key = CHANNEL + 1 + u16::try_from(self.async_events.len()).unwrap_or(u16::MAX - 1);
        let watched = device.async_events().and_then(|mut events| {
            cx.register(&mut events, key, Interest::READABLE)?;
            Ok(events)
        });
        match watched {
            Ok(events) => self.async_events.push(WatchedDevice {
                name: device.name(),
                handle: device.handle(),
                events,
            }),
            // Another listener on this reactor watches it already (EEXIST), or it cannot be:
            // nothing is lost but the log lines.
            Err(err) => debug!(device = %device.name(), %err, "device async events not watched"),
        }
    }

    fn handle_async_events(&mut self, index: usize) {
        let Some(WatchedDevice {
            name,
            handle,
            events,
        }) = self.async_events.get(index)
        else {
            return;
        };
        loop {
            match events.get() {
                Ok(Some(event)) => {
                    let closing = self
                        .context
                        .alarms
                        .raise(*handle, event.kind, event.element);
                    warn!(
                        device = %name,
                        event = ?event.kind,
                        element = ?event.element,
                        closing,
                        "RDMA device event"
                    );
                }
                Ok(None) => return,
                Err(err) => {
                    debug!(device = %name, %err, "reading async events failed");
                    return;
                }
            }
        }
    }

    /// Checks a request and sets its connection up, accepted; or the status to reject with.
    fn setup(
        &mut self,
        id: CmId,
        private_data: &[u8],
        host_ird: u8,
        now: Instant,
    ) -> Result<RdmaConnection, (CmId, RejectStatus)> {
        let request = match CmRequest::parse(private_data) {
            Ok(request) => request,
            Err(status) => return Err((id, status)),
        };
        let sizes = match negotiate(&request, &self.queue_limits()) {
            Ok(sizes) => sizes,
            Err(status) => return Err((id, status)),
        };
        let Some(device) = id.device() else {
            return Err((id, RejectStatus::NoResources));
        };
        let entry = match self.devices.get_or_open(device) {
            Ok(entry) => entry,
            Err(err) => {
                warn!(%err, "cannot open the RDMA device");
                return Err((id, RejectStatus::NoResources));
            }
        };
        let Some(reads) = read_depth(host_ird, entry.attrs.max_qp_init_rd_atom) else {
            return Err((id, RejectStatus::InvalidIrd));
        };
        RdmaConnection::accept(
            id,
            &request,
            sizes,
            reads,
            &entry,
            self.addr.clone(),
            Arc::clone(&self.context),
            now,
        )
        .map_err(|(id, err)| {
            warn!(listener = %self.addr, %err, "cannot set up an RDMA connection");
            (id, RejectStatus::NoResources)
        })
    }
}

impl Subscriber for RdmaListener {
    fn init(&mut self, cx: &mut SubscriberCx<'_>, _now: Instant) -> std::io::Result<()> {
        cx.register(&mut self.channel, CHANNEL, Interest::READABLE)
            .inspect_err(|err| warn!(%err, listener = %self.addr, "cannot watch listener"))
    }

    fn process(&mut self, ready: Readiness, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        if ready.key != CHANNEL {
            self.handle_async_events(usize::from(ready.key - CHANNEL - 1));
            return Flow::Continue;
        }
        loop {
            match self.channel.get_event() {
                Ok(Some(event)) => self.handle_event(event, cx, now),
                Ok(None) => return Flow::Continue,
                Err(err) => {
                    warn!(listener = %self.addr, %err, "reading CM events failed");
                    return Flow::Continue;
                }
            }
        }
    }

    /// Closed connections' QPs wait on their devices' SRQs for what they owe (see
    /// `device::Retired`); the listener destroys them when due, even if no connection
    /// comes to do it.
    fn deadline(&self) -> Option<Instant> {
        self.devices.next_harvest()
    }

    fn handle_timer(&mut self, _cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        self.devices.harvest(now);
        Flow::Continue
    }

    fn listening_on(&self) -> Option<&ListenerAddr> {
        Some(&self.addr)
    }

    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        let _ = cx.deregister(&mut self.channel);
        for watched in &mut self.async_events {
            let _ = cx.deregister(&mut watched.events);
        }
    }
}
