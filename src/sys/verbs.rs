//! Owning wrappers over libibverbs and librdmacm (the `rdma-sys` bindings): what an NVMe/RDMA
//! target needs and nothing more.
//!
//! One type per object, freed in `Drop`, each holding what it was made from so the order of
//! destruction is always right: a [`CmId`] destroys its QP before itself and keeps its event
//! channel, the PD, the CQs, the SRQ and the memory regions its work requests may touch alive
//! until then; a [`MemoryRegion`] is deregistered before its PD is freed; a [`Cq`] is
//! destroyed before its completion channel, with every event it took acknowledged.
//!
//! Descriptors (the CM event channel, a CQ's completion channel, a device's async events)
//! are non-blocking and are [`mio::event::Source`]s, so a reactor watches them like sockets;
//! reading one that has nothing returns `Ok(None)` or `Ok(false)`, never blocks.
//!
//! Registered memory is shared with the adapter, which writes it (received capsules, RDMA
//! READ data) while we run. As with a VM's memory (`mmap.rs`), no Rust reference into it is
//! ever made: bytes are copied in and out through raw pointers, bounds checked, and a work
//! request can only name memory through an [`Sge`] made from a region the queue holds.
//!
//! No raw pointer leaves this file, and nothing here panics: errors are `io::Error`s naming
//! the verb that failed.

use std::ffi::{CStr, c_int, c_void};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rdma_sys as ffi;

/// Work requests one [`CmId::post_send`] takes at most (a READ, or a WRITE then a SEND).
pub const MAX_SEND_CHAIN: usize = 4;
/// Scatter/gather entries one work request takes at most.
pub const MAX_SGES: usize = 16;
/// Private data the CM carries at most (InfiniBand CM REQ: 92 bytes; iWARP: 512); what an
/// event brings is cut to this, what we send refused past it.
pub const MAX_PRIVATE_DATA: usize = 255;

/// An error from verb `op`, from errno (or from `rc` when the verb returns an errno).
fn os_error(op: &'static str) -> io::Error {
    let err = io::Error::last_os_error();
    let err = match err.raw_os_error() {
        // Some verbs fail without setting errno.
        Some(0) | None => io::Error::from_raw_os_error(libc::EIO),
        _ => err,
    };
    io::Error::new(err.kind(), format!("{op}: {err}"))
}

fn errno_error(op: &'static str, rc: c_int) -> io::Error {
    let err = io::Error::from_raw_os_error(rc);
    io::Error::new(err.kind(), format!("{op}: {err}"))
}

/// A verb that returns 0 or -1 with errno (librdmacm), or 0 or an errno (libibverbs).
fn check(op: &'static str, rc: c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        -1 => Err(os_error(op)),
        rc if rc > 0 => Err(errno_error(op, rc)),
        rc => Err(errno_error(op, -rc)),
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// EAGAIN, also through [`os_error`]'s wrapping (which keeps the kind, not the raw errno).
fn is_would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
        || err
            .raw_os_error()
            .is_some_and(|e| e == libc::EAGAIN || e == libc::EWOULDBLOCK)
}

fn set_nonblocking(fd: RawFd, op: &'static str) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the library owns and keeps open; F_GETFL reads no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(os_error(op));
    }
    // SAFETY: as above; F_SETFL with the old flags plus O_NONBLOCK reads no memory.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(os_error(op));
    }
    Ok(())
}

/// Registers a raw descriptor with mio, for the types below that own one through a library.
macro_rules! fd_source {
    ($ty:ty) => {
        impl Source for $ty {
            fn register(
                &mut self,
                registry: &Registry,
                token: Token,
                interests: Interest,
            ) -> io::Result<()> {
                SourceFd(&self.fd()).register(registry, token, interests)
            }

            fn reregister(
                &mut self,
                registry: &Registry,
                token: Token,
                interests: Interest,
            ) -> io::Result<()> {
                SourceFd(&self.fd()).reregister(registry, token, interests)
            }

            fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
                SourceFd(&self.fd()).deregister(registry)
            }
        }
    };
}

/// The RDMA devices librdmacm can use (0 on a machine without RDMA, or without the
/// `rdma_cm` kernel module).
pub fn device_count() -> io::Result<usize> {
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer; the list returned is freed below, once.
    let list = unsafe { ffi::rdma_get_devices(&raw mut n) };
    if list.is_null() {
        return Err(os_error("rdma_get_devices"));
    }
    // SAFETY: `list` came from rdma_get_devices and is freed once, here.
    unsafe { ffi::rdma_free_devices(list) };
    Ok(usize::try_from(n).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// The CM event channel and its events

struct ChannelInner {
    raw: NonNull<ffi::rdma_event_channel>,
}

// SAFETY: an event channel is a descriptor and a heap object of librdmacm, tied to no thread;
// librdmacm's calls on it are thread-safe.
unsafe impl Send for ChannelInner {}
// SAFETY: as above; `&ChannelInner` only reads its descriptor.
unsafe impl Sync for ChannelInner {}

impl Drop for ChannelInner {
    fn drop(&mut self) {
        // SAFETY: the channel was made by rdma_create_event_channel and is destroyed once;
        // every CmId on it holds an Arc of this, so none is left.
        unsafe { ffi::rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}

/// An RDMA CM event channel: where connection requests and connection state changes of the
/// ids on it arrive. Its descriptor is non-blocking. Cloning shares it.
#[derive(Clone)]
pub struct EventChannel {
    inner: Arc<ChannelInner>,
}

impl core::fmt::Debug for EventChannel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EventChannel")
            .field("fd", &self.fd())
            .finish()
    }
}

impl EventChannel {
    /// A new channel. Fails (ENODEV, ENOENT) on a machine without RDMA devices or without
    /// the `rdma_cm` kernel module.
    pub fn new() -> io::Result<Self> {
        // SAFETY: no arguments; a null return is checked.
        let raw = unsafe { ffi::rdma_create_event_channel() };
        let raw = NonNull::new(raw).ok_or_else(|| os_error("rdma_create_event_channel"))?;
        let channel = Self {
            inner: Arc::new(ChannelInner { raw }),
        };
        set_nonblocking(channel.fd(), "rdma_create_event_channel")?;
        Ok(channel)
    }

    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is alive (we hold it); `fd` is a plain field librdmacm set.
        unsafe { (*self.inner.raw.as_ptr()).fd }
    }

    /// The next event, acknowledged already (its private data copied out), or `None` when
    /// the channel has none now.
    pub fn get_event(&self) -> io::Result<Option<CmEvent>> {
        let mut event: *mut ffi::rdma_cm_event = ptr::null_mut();
        // SAFETY: the channel is alive; `event` is a valid out-pointer.
        let rc = unsafe { ffi::rdma_get_cm_event(self.inner.raw.as_ptr(), &raw mut event) };
        if rc != 0 {
            let err = os_error("rdma_get_cm_event");
            return if is_would_block(&err) {
                Ok(None)
            } else {
                Err(err)
            };
        }
        let Some(event) = NonNull::new(event) else {
            return Err(errno_error("rdma_get_cm_event", libc::EIO));
        };
        // SAFETY: librdmacm returned this event and it stays valid until acknowledged below;
        // only plain fields are read, and the private data pointer (when not null) points
        // at `private_data_len` bytes inside the event.
        let (kind, status, id, listen_id, private_data, responder_resources, initiator_depth) = unsafe {
            let ev = event.as_ptr();
            let kind = CmEventKind::from_raw((*ev).event);
            let conn = (*ev).param.conn;
            let data = match kind {
                CmEventKind::ConnectRequest
                | CmEventKind::ConnectResponse
                | CmEventKind::Established
                | CmEventKind::Rejected
                    if !conn.private_data.is_null() =>
                {
                    let len = usize::from(conn.private_data_len).min(MAX_PRIVATE_DATA);
                    std::slice::from_raw_parts(conn.private_data.cast::<u8>(), len).to_vec()
                }
                _ => Vec::new(),
            };
            (
                kind,
                (*ev).status,
                (*ev).id,
                (*ev).listen_id,
                data,
                conn.responder_resources,
                conn.initiator_depth,
            )
        };
        // A connection request's id is new and ours: it must be destroyed, but only after the
        // event is acknowledged (rdma_destroy_id waits for its events).
        let new_id = match (kind, NonNull::new(id)) {
            (CmEventKind::ConnectRequest, Some(raw)) => Some(CmId {
                raw,
                qp: None,
                channel: self.clone(),
            }),
            _ => None,
        };
        // SAFETY: the event came from rdma_get_cm_event and is acknowledged once; nothing of
        // it is used after this (the data was copied).
        let rc = unsafe { ffi::rdma_ack_cm_event(event.as_ptr()) };
        check("rdma_ack_cm_event", rc)?;
        let about = if kind == CmEventKind::ConnectRequest {
            listen_id
        } else {
            id
        };
        Ok(Some(CmEvent {
            kind,
            status,
            id: CmIdRef(about as usize),
            private_data,
            responder_resources,
            initiator_depth,
            new_id,
        }))
    }
}

fd_source!(EventChannel);

/// What happened, from `enum rdma_cm_event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmEventKind {
    AddrResolved,
    AddrError,
    RouteResolved,
    RouteError,
    /// A host asks to connect: the event carries its private data and a new id.
    ConnectRequest,
    ConnectResponse,
    ConnectError,
    Unreachable,
    Rejected,
    /// The connection is up: the host may send.
    Established,
    /// The host (or we) disconnected.
    Disconnected,
    /// The device went away: everything on it must be destroyed.
    DeviceRemoval,
    MulticastJoin,
    MulticastError,
    AddrChange,
    /// The connection's time-wait is over: its QP may be destroyed and its number reused.
    TimewaitExit,
    Other(u32),
}

impl CmEventKind {
    fn from_raw(raw: u32) -> Self {
        use ffi::rdma_cm_event_type as t;
        match raw {
            t::RDMA_CM_EVENT_ADDR_RESOLVED => Self::AddrResolved,
            t::RDMA_CM_EVENT_ADDR_ERROR => Self::AddrError,
            t::RDMA_CM_EVENT_ROUTE_RESOLVED => Self::RouteResolved,
            t::RDMA_CM_EVENT_ROUTE_ERROR => Self::RouteError,
            t::RDMA_CM_EVENT_CONNECT_REQUEST => Self::ConnectRequest,
            t::RDMA_CM_EVENT_CONNECT_RESPONSE => Self::ConnectResponse,
            t::RDMA_CM_EVENT_CONNECT_ERROR => Self::ConnectError,
            t::RDMA_CM_EVENT_UNREACHABLE => Self::Unreachable,
            t::RDMA_CM_EVENT_REJECTED => Self::Rejected,
            t::RDMA_CM_EVENT_ESTABLISHED => Self::Established,
            t::RDMA_CM_EVENT_DISCONNECTED => Self::Disconnected,
            t::RDMA_CM_EVENT_DEVICE_REMOVAL => Self::DeviceRemoval,
            t::RDMA_CM_EVENT_MULTICAST_JOIN => Self::MulticastJoin,
            t::RDMA_CM_EVENT_MULTICAST_ERROR => Self::MulticastError,
            t::RDMA_CM_EVENT_ADDR_CHANGE => Self::AddrChange,
            t::RDMA_CM_EVENT_TIMEWAIT_EXIT => Self::TimewaitExit,
            other => Self::Other(other),
        }
    }
}

/// Which id an event is about, to route it: compare with [`CmId::handle`]. Only an identity;
/// nothing can be done through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmIdRef(usize);

/// One CM event, already acknowledged.
#[derive(Debug)]
pub struct CmEvent {
    pub kind: CmEventKind,
    /// The event's status (an errno, or the reject reason of a peer), 0 when none.
    pub status: i32,
    /// The id it is about; for a connection request, the listening id it came in on.
    pub id: CmIdRef,
    /// The peer's private data (connect request, reject, established), at most
    /// [`MAX_PRIVATE_DATA`] bytes.
    pub private_data: Vec<u8>,
    /// The peer's RDMA READ resources: READs it takes at once (a connect request).
    pub responder_resources: u8,
    /// READs the peer issues at once (a connect request).
    pub initiator_depth: u8,
    /// A connection request's new id: accept or reject it, then keep or drop it.
    pub new_id: Option<CmId>,
}

// ---------------------------------------------------------------------------------------------
// CM ids and their QP

/// What a connection's QP holds on to: whatever its work requests may touch lives until the
/// QP is destroyed.
struct QpParts {
    raw: NonNull<ffi::ibv_qp>,
    _pd: Arc<PdInner>,
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
    srq: Option<Arc<SrqInner>>,
    regions: Vec<Arc<MrInner>>,
}

/// An RDMA CM id: a listener (bound, listening), or one connection with its QP.
pub struct CmId {
    raw: NonNull<ffi::rdma_cm_id>,
    /// Declared before `channel`: dropped (after `Drop::drop` destroyed the QP and the id)
    /// while the channel still lives.
    qp: Option<QpParts>,
    channel: EventChannel,
}

// SAFETY: a cm id and its QP are librdmacm and libibverbs objects tied to no thread; the
// verbs used through `&CmId` (posting work requests) are thread-safe.
unsafe impl Send for CmId {}
// SAFETY: as above.
unsafe impl Sync for CmId {}

impl core::fmt::Debug for CmId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CmId")
            .field("handle", &self.handle())
            .field("qp_num", &self.qp_num())
            .finish_non_exhaustive()
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        if self.qp.is_some() {
            // SAFETY: the QP was made by rdma_create_qp on this id and is destroyed once,
            // before the id; what it referenced (PD, CQs, SRQ, memory) is still held.
            unsafe { ffi::rdma_destroy_qp(self.raw.as_ptr()) };
        }
        // SAFETY: the id is ours (made by rdma_create_id or handed over by a connection
        // request, whose event was acknowledged) and destroyed once; its channel outlives it
        // (the field is dropped after this).
        unsafe { ffi::rdma_destroy_id(self.raw.as_ptr()) };
    }
}

/// What an accept says besides its private data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptParams {
    /// RDMA READs the peer may issue to us at once (0: the target takes none).
    pub responder_resources: u8,
    /// RDMA READs we issue at once (our ORD, at most the peer's responder resources).
    pub initiator_depth: u8,
    /// Receiver-not-ready retries (7: forever).
    pub rnr_retry_count: u8,
}

/// What a QP is made with.
pub struct QpInit<'a> {
    pub send_cq: &'a Cq,
    pub recv_cq: &'a Cq,
    /// Receives come from this shared queue instead of the QP's own.
    pub srq: Option<&'a Srq>,
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
}

/// What the device gave a QP (at least what was asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

impl CmId {
    /// A new id on `channel` (reliable connected, the TCP port space NVMe/RDMA uses).
    pub fn new(channel: &EventChannel) -> io::Result<Self> {
        let mut raw: *mut ffi::rdma_cm_id = ptr::null_mut();
        // SAFETY: the channel is alive; `raw` is a valid out-pointer; no context pointer is
        // given.
        let rc = unsafe {
            ffi::rdma_create_id(
                channel.inner.raw.as_ptr(),
                &raw mut raw,
                ptr::null_mut(),
                ffi::rdma_port_space::RDMA_PS_TCP,
            )
        };
        check("rdma_create_id", rc)?;
        let raw = NonNull::new(raw).ok_or_else(|| errno_error("rdma_create_id", libc::EIO))?;
        Ok(Self {
            raw,
            qp: None,
            channel: channel.clone(),
        })
    }

    /// This id's identity, as events name it ([`CmEvent::id`]).
    pub fn handle(&self) -> CmIdRef {
        CmIdRef(self.raw.as_ptr() as usize)
    }

    /// Binds to a local address (port included). Fails with EADDRNOTAVAIL or ENODEV when no
    /// RDMA device has that address.
    pub fn bind(&mut self, addr: SocketAddr) -> io::Result<()> {
        let mut storage = SockAddr::from(addr);
        // SAFETY: the id is ours; the address is a valid sockaddr of its family, copied by
        // librdmacm during the call.
        let rc = unsafe { ffi::rdma_bind_addr(self.raw.as_ptr(), storage.as_mut_ptr()) };
        check("rdma_bind_addr", rc)
    }

    /// Listens for connection requests, at most `backlog` pending.
    pub fn listen(&mut self, backlog: u32) -> io::Result<()> {
        let backlog = c_int::try_from(backlog).unwrap_or(c_int::MAX);
        // SAFETY: the id is ours and bound.
        let rc = unsafe { ffi::rdma_listen(self.raw.as_ptr(), backlog) };
        check("rdma_listen", rc)
    }

    /// Moves the id (and its future events) to another channel, such as the one of the
    /// reactor that serves the connection.
    pub fn migrate(&mut self, channel: &EventChannel) -> io::Result<()> {
        // SAFETY: the id and both channels are alive; every event of the id on the old
        // channel was acknowledged when it was read (`get_event`), which migration waits for.
        let rc = unsafe { ffi::rdma_migrate_id(self.raw.as_ptr(), channel.inner.raw.as_ptr()) };
        check("rdma_migrate_id", rc)?;
        self.channel = channel.clone();
        Ok(())
    }

    /// The device the id is bound to: none for a listener on a wildcard address (its
    /// connection requests' ids each have theirs).
    pub fn device(&self) -> Option<Device> {
        // SAFETY: the id is alive; `verbs` is a plain field librdmacm sets when it binds the
        // id to a device.
        let verbs = unsafe { (*self.raw.as_ptr()).verbs };
        NonNull::new(verbs).map(|raw| Device { raw })
    }

    /// The local address of the id (where the host connected to).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: the id is alive; the source address is a sockaddr_storage-sized union in it
        // that librdmacm fills when the id is bound.
        unsafe {
            let storage = &raw const (*self.raw.as_ptr()).route.addr.src_addr_union.src_storage;
            socket_addr(storage)
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as in `local_addr`, the destination half.
        unsafe {
            let storage = &raw const (*self.raw.as_ptr()).route.addr.dst_addr_union.dst_storage;
            socket_addr(storage)
        }
    }

    /// Makes the connection's QP (reliable connected, on `pd`'s device, which must be the
    /// id's), and lets its work requests use `regions`. What the device gave comes back.
    pub fn create_qp(
        &mut self,
        pd: &Pd,
        init: &QpInit<'_>,
        regions: &[&MemoryRegion],
    ) -> io::Result<QpCaps> {
        if self.qp.is_some() {
            return Err(invalid("the id has a QP already"));
        }
        // SAFETY: ibv_qp_init_attr is plain data for which all-zero is valid (null pointers,
        // zero caps).
        let mut attr: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = init.send_cq.inner.raw.as_ptr();
        attr.recv_cq = init.recv_cq.inner.raw.as_ptr();
        attr.srq = init.srq.map_or(ptr::null_mut(), |s| s.inner.raw.as_ptr());
        attr.cap.max_send_wr = init.max_send_wr;
        attr.cap.max_recv_wr = if init.srq.is_some() {
            0
        } else {
            init.max_recv_wr
        };
        attr.cap.max_send_sge = init.max_send_sge;
        attr.cap.max_recv_sge = if init.srq.is_some() {
            0
        } else {
            init.max_recv_sge
        };
        attr.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
        // Each work request says whether it wants a completion.
        attr.sq_sig_all = 0;
        // SAFETY: the id, the PD and the CQs (and SRQ) are alive and on the same device (the
        // verbs check it); `attr` is valid for the call, and librdmacm writes the caps it got
        // back into it.
        let rc =
            unsafe { ffi::rdma_create_qp(self.raw.as_ptr(), pd.inner.raw.as_ptr(), &raw mut attr) };
        check("rdma_create_qp", rc)?;
        // SAFETY: rdma_create_qp succeeded, so the id's `qp` field is the new QP.
        let raw = unsafe { (*self.raw.as_ptr()).qp };
        let Some(raw) = NonNull::new(raw) else {
            return Err(errno_error("rdma_create_qp", libc::EIO));
        };
        self.qp = Some(QpParts {
            raw,
            _pd: Arc::clone(&pd.inner),
            _send_cq: Arc::clone(&init.send_cq.inner),
            _recv_cq: Arc::clone(&init.recv_cq.inner),
            srq: init.srq.map(|s| Arc::clone(&s.inner)),
            regions: regions.iter().map(|r| Arc::clone(&r.inner)).collect(),
        });
        Ok(QpCaps {
            max_send_wr: attr.cap.max_send_wr,
            max_recv_wr: attr.cap.max_recv_wr,
            max_send_sge: attr.cap.max_send_sge,
            max_recv_sge: attr.cap.max_recv_sge,
            max_inline_data: attr.cap.max_inline_data,
        })
    }

    /// Lets the QP's work requests use one more region.
    pub fn attach_region(&mut self, region: &MemoryRegion) -> io::Result<()> {
        let qp = self
            .qp
            .as_mut()
            .ok_or_else(|| invalid("the id has no QP"))?;
        if !qp.regions.iter().any(|r| Arc::ptr_eq(r, &region.inner)) {
            qp.regions.push(Arc::clone(&region.inner));
        }
        Ok(())
    }

    /// The QP's number (how async events and completions name it).
    pub fn qp_num(&self) -> Option<u32> {
        // SAFETY: the QP is alive while `self.qp` holds it; `qp_num` is a plain field.
        self.qp
            .as_ref()
            .map(|qp| unsafe { (*qp.raw.as_ptr()).qp_num })
    }

    /// Accepts a connection request (the QP made first), with `private_data`.
    pub fn accept(&mut self, private_data: &[u8], params: AcceptParams) -> io::Result<()> {
        let len = u8::try_from(private_data.len()).map_err(|_| invalid("private data too long"))?;
        // SAFETY: rdma_conn_param is plain data for which all-zero is valid.
        let mut param: ffi::rdma_conn_param = unsafe { std::mem::zeroed() };
        param.private_data = private_data.as_ptr().cast::<c_void>();
        param.private_data_len = len;
        param.responder_resources = params.responder_resources;
        param.initiator_depth = params.initiator_depth;
        param.rnr_retry_count = params.rnr_retry_count;
        param.flow_control = 1;
        // SAFETY: the id is a connection request's; `param` and the private data it points at
        // live through the call, which copies them.
        let rc = unsafe { ffi::rdma_accept(self.raw.as_ptr(), &raw mut param) };
        check("rdma_accept", rc)
    }

    /// Refuses a connection request, with `private_data` saying why.
    pub fn reject(&mut self, private_data: &[u8]) -> io::Result<()> {
        let len = u8::try_from(private_data.len()).map_err(|_| invalid("private data too long"))?;
        // SAFETY: the id is a connection request's; the private data lives through the call,
        // which copies it.
        let rc = unsafe {
            ffi::rdma_reject(
                self.raw.as_ptr(),
                private_data.as_ptr().cast::<c_void>(),
                len,
            )
        };
        check("rdma_reject", rc)
    }

    /// Disconnects: the QP moves to the error state (posted work requests are flushed) and
    /// the peer is told; DISCONNECTED follows on the channel.
    pub fn disconnect(&mut self) -> io::Result<()> {
        // SAFETY: the id is alive.
        let rc = unsafe { ffi::rdma_disconnect(self.raw.as_ptr()) };
        check("rdma_disconnect", rc)
    }

    /// Posts one receive on the QP's own receive queue.
    pub fn post_recv(&self, wr_id: u64, sges: &[Sge]) -> io::Result<()> {
        let qp = self
            .qp
            .as_ref()
            .ok_or_else(|| invalid("the id has no QP"))?;
        if qp.srq.is_some() {
            return Err(invalid("the QP receives from a shared receive queue"));
        }
        let mut list = sge_list(sges, &qp.regions)?;
        let mut wr = recv_wr(wr_id, &mut list, sges.len());
        let mut bad: *mut ffi::ibv_recv_wr = ptr::null_mut();
        // SAFETY: the QP is alive; `wr` and its scatter list live through the call (the verb
        // copies them); the memory they name is inside regions the QP holds until it is
        // destroyed.
        let rc = unsafe { ffi::ibv_post_recv(qp.raw.as_ptr(), &raw mut wr, &raw mut bad) };
        check("ibv_post_recv", rc)
    }

    /// Posts a chain of send-queue work requests (at most [`MAX_SEND_CHAIN`]), in order.
    pub fn post_send(&self, wrs: &[SendWr<'_>]) -> io::Result<()> {
        let qp = self
            .qp
            .as_ref()
            .ok_or_else(|| invalid("the id has no QP"))?;
        if wrs.is_empty() {
            return Ok(());
        }
        if wrs.len() > MAX_SEND_CHAIN {
            return Err(invalid("too many work requests in one post"));
        }
        let mut lists = [[ffi::ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0,
        }; MAX_SGES]; MAX_SEND_CHAIN];
        for (list, wr) in lists.iter_mut().zip(wrs) {
            *list = sge_list(wr.sges, &qp.regions)?;
        }
        // SAFETY: ibv_send_wr is plain data for which all-zero is valid.
        let mut chain: [ffi::ibv_send_wr; MAX_SEND_CHAIN] =
            std::array::from_fn(|_| unsafe { std::mem::zeroed() });
        for (i, wr) in wrs.iter().enumerate() {
            let raw = &mut chain[i];
            raw.wr_id = wr.wr_id;
            raw.sg_list = lists[i].as_mut_ptr();
            raw.num_sge = c_int::try_from(wr.sges.len()).unwrap_or(0);
            raw.send_flags = if wr.signaled {
                ffi::ibv_send_flags::IBV_SEND_SIGNALED.0
            } else {
                0
            };
            match wr.op {
                SendOp::Send => raw.opcode = ffi::ibv_wr_opcode::IBV_WR_SEND,
                SendOp::SendWithInvalidate { rkey } => {
                    raw.opcode = ffi::ibv_wr_opcode::IBV_WR_SEND_WITH_INV;
                    raw.imm_data_invalidated_rkey_union.invalidated_rkey = rkey;
                }
                SendOp::RdmaRead { remote_addr, rkey } => {
                    raw.opcode = ffi::ibv_wr_opcode::IBV_WR_RDMA_READ;
                    raw.wr.rdma = ffi::rdma_t { remote_addr, rkey };
                }
                SendOp::RdmaWrite { remote_addr, rkey } => {
                    raw.opcode = ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                    raw.wr.rdma = ffi::rdma_t { remote_addr, rkey };
                }
            }
        }
        // Link the chain now that no element moves any more.
        let base = chain.as_mut_ptr();
        for i in 1..wrs.len() {
            // SAFETY: `i - 1` and `i` are below `wrs.len() <= MAX_SEND_CHAIN`, inside `chain`.
            unsafe { (*base.add(i - 1)).next = base.add(i) };
        }
        let mut bad: *mut ffi::ibv_send_wr = ptr::null_mut();
        // SAFETY: the QP is alive; the chain and its scatter lists live through the call (the
        // verb copies them); the memory they name is inside regions the QP holds until it is
        // destroyed, and the remote addresses are the peer's, checked by its adapter.
        let rc = unsafe { ffi::ibv_post_send(qp.raw.as_ptr(), base, &raw mut bad) };
        check("ibv_post_send", rc)
    }
}

/// An operation on the send queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// SEND: a response capsule.
    Send,
    /// SEND with Invalidate: a response capsule that also invalidates the host's `rkey`.
    SendWithInvalidate { rkey: u32 },
    /// RDMA READ of the peer's memory at `remote_addr` (through `rkey`) into the local
    /// entries.
    RdmaRead { remote_addr: u64, rkey: u32 },
    /// RDMA WRITE of the local entries into the peer's memory.
    RdmaWrite { remote_addr: u64, rkey: u32 },
}

/// One send-queue work request.
#[derive(Debug, Clone, Copy)]
pub struct SendWr<'a> {
    pub wr_id: u64,
    pub op: SendOp,
    pub sges: &'a [Sge],
    /// Whether it produces a work completion (errors always do).
    pub signaled: bool,
}

fn sge_list(sges: &[Sge], regions: &[Arc<MrInner>]) -> io::Result<[ffi::ibv_sge; MAX_SGES]> {
    if sges.len() > MAX_SGES {
        return Err(invalid("too many scatter/gather entries"));
    }
    let mut list = [ffi::ibv_sge {
        addr: 0,
        length: 0,
        lkey: 0,
    }; MAX_SGES];
    for (raw, sge) in list.iter_mut().zip(sges) {
        if !regions
            .iter()
            .any(|r| Arc::as_ptr(r) as usize == sge.region)
        {
            return Err(invalid("memory of a region the queue does not hold"));
        }
        *raw = ffi::ibv_sge {
            addr: sge.addr,
            length: sge.len,
            lkey: sge.lkey,
        };
    }
    Ok(list)
}

fn recv_wr(wr_id: u64, list: &mut [ffi::ibv_sge; MAX_SGES], n: usize) -> ffi::ibv_recv_wr {
    ffi::ibv_recv_wr {
        wr_id,
        next: ptr::null_mut(),
        sg_list: list.as_mut_ptr(),
        num_sge: c_int::try_from(n).unwrap_or(0),
    }
}

/// A socket address as librdmacm takes it.
struct SockAddr {
    storage: libc::sockaddr_storage,
}

impl From<SocketAddr> for SockAddr {
    fn from(addr: SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(0),
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(0),
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            }
        }
        Self { storage }
    }
}

impl SockAddr {
    fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        (&raw mut self.storage).cast::<libc::sockaddr>()
    }
}

/// Reads a sockaddr_in or sockaddr_in6 out of `storage`.
///
/// # Safety
/// `storage` points at a readable sockaddr_storage.
unsafe fn socket_addr(storage: *const libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the caller passes a readable sockaddr_storage; its family tells which of the
    // two layouts (both smaller than it) holds.
    unsafe {
        match i32::from((*storage).ss_family) {
            libc::AF_INET => {
                let sin = ptr::read(storage.cast::<libc::sockaddr_in>());
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6 = ptr::read(storage.cast::<libc::sockaddr_in6>());
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Devices and their async events

/// An RDMA device's verbs context, as librdmacm opened it (a connection's id names it). Not
/// owned: librdmacm keeps it open while ids use it and until the device is removed, after
/// which (DEVICE_REMOVAL) everything made on it must be destroyed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Device {
    raw: NonNull<ffi::ibv_context>,
}

// SAFETY: a verbs context is tied to no thread; libibverbs' calls on it are thread-safe.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name())
            .finish()
    }
}

/// What a device allows, from `ibv_query_device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceAttrs {
    pub max_qp_wr: u32,
    pub max_sge: u32,
    pub max_cqe: u32,
    /// RDMA READs a QP may issue at once.
    pub max_qp_init_rd_atom: u32,
    pub max_srq_wr: u32,
    pub max_srq_sge: u32,
    pub max_mr_size: u64,
}

impl Device {
    /// The device's identity (which device a connection is on).
    pub fn handle(&self) -> usize {
        self.raw.as_ptr() as usize
    }

    /// Its name (`rxe0`, `mlx5_0`).
    pub fn name(&self) -> String {
        // SAFETY: the context is open (see the type); `device` is its plain field, and
        // ibv_get_device_name returns a string owned by the device, copied here.
        unsafe {
            let device = (*self.raw.as_ptr()).device;
            if device.is_null() {
                return String::new();
            }
            let name = ffi::ibv_get_device_name(device);
            if name.is_null() {
                return String::new();
            }
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }

    pub fn attributes(&self) -> io::Result<DeviceAttrs> {
        // SAFETY: ibv_device_attr is plain data for which all-zero is valid.
        let mut attr: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open; `attr` is a valid out-pointer.
        let rc = unsafe { ffi::ibv_query_device(self.raw.as_ptr(), &raw mut attr) };
        check("ibv_query_device", rc)?;
        let count = |v: c_int| u32::try_from(v).unwrap_or(0);
        Ok(DeviceAttrs {
            max_qp_wr: count(attr.max_qp_wr),
            max_sge: count(attr.max_sge),
            max_cqe: count(attr.max_cqe),
            max_qp_init_rd_atom: count(attr.max_qp_init_rd_atom),
            max_srq_wr: count(attr.max_srq_wr),
            max_srq_sge: count(attr.max_srq_sge),
            max_mr_size: attr.max_mr_size,
        })
    }

    /// The device's async events, its descriptor made non-blocking.
    pub fn async_events(&self) -> io::Result<AsyncEvents> {
        let events = AsyncEvents { device: *self };
        set_nonblocking(events.fd(), "async event fd")?;
        Ok(events)
    }
}

/// A device's async event descriptor (port up and down, fatal QP and CQ errors, removal).
#[derive(Debug)]
pub struct AsyncEvents {
    device: Device,
}

impl AsyncEvents {
    pub fn fd(&self) -> RawFd {
        // SAFETY: the context is open; `async_fd` is a plain field.
        unsafe { (*self.device.raw.as_ptr()).async_fd }
    }

    /// The next event, acknowledged already, or `None` when there is none now.
    pub fn get(&self) -> io::Result<Option<AsyncEvent>> {
        // SAFETY: ibv_async_event is plain data for which all-zero is valid (a null element,
        // event type 0).
        let mut event: ffi::ibv_async_event = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open; `event` is a valid out-pointer.
        let rc = unsafe { ffi::ibv_get_async_event(self.device.raw.as_ptr(), &raw mut event) };
        if rc != 0 {
            let err = os_error("ibv_get_async_event");
            return if is_would_block(&err) {
                Ok(None)
            } else {
                Err(err)
            };
        }
        // The type is read as its integer: a value this build's enum lacks (a newer kernel's)
        // must not become an invalid Rust enum.
        // SAFETY: `event_type` is a C enum, 4 bytes, initialised by the verb.
        let raw_type = unsafe { ptr::read((&raw const event.event_type).cast::<u32>()) };
        let kind = AsyncEventKind::from_raw(raw_type);
        // SAFETY: which member of the element union is valid follows from the type; a QP's
        // `qp_num` is readable until the event is acknowledged (destroying the QP waits for
        // that).
        let element = unsafe {
            match kind.element() {
                Element::Qp if !event.element.qp.is_null() => {
                    AsyncElement::Qp((*event.element.qp).qp_num)
                }
                Element::Port => AsyncElement::Port(event.element.port_num),
                Element::Cq => AsyncElement::Cq(event.element.cq as usize),
                Element::Srq => AsyncElement::Srq(event.element.srq as usize),
                _ => AsyncElement::Device,
            }
        };
        // SAFETY: the event came from ibv_get_async_event and is acknowledged once.
        unsafe { ffi::ibv_ack_async_event(&raw mut event) };
        Ok(Some(AsyncEvent { kind, element }))
    }
}

fd_source!(AsyncEvents);

/// One async event, already acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    pub kind: AsyncEventKind,
    pub element: AsyncElement,
}

/// What an async event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncElement {
    /// A QP, by number ([`CmId::qp_num`]).
    Qp(u32),
    /// A CQ, by identity ([`Cq::handle`]).
    Cq(usize),
    /// An SRQ, by identity ([`Srq::handle`]).
    Srq(usize),
    Port(c_int),
    Device,
}

enum Element {
    Qp,
    Cq,
    Srq,
    Port,
    Device,
}

/// `enum ibv_event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncEventKind {
    CqError,
    QpFatal,
    QpRequestError,
    QpAccessError,
    CommunicationEstablished,
    SqDrained,
    PathMigrated,
    PathMigrationError,
    DeviceFatal,
    PortActive,
    PortError,
    LidChange,
    PkeyChange,
    SmChange,
    SrqError,
    SrqLimitReached,
    QpLastWqeReached,
    ClientReregister,
    GidChange,
    WqFatal,
    Other(u32),
}

impl AsyncEventKind {
    fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::CqError,
            1 => Self::QpFatal,
            2 => Self::QpRequestError,
            3 => Self::QpAccessError,
            4 => Self::CommunicationEstablished,
            5 => Self::SqDrained,
            6 => Self::PathMigrated,
            7 => Self::PathMigrationError,
            8 => Self::DeviceFatal,
            9 => Self::PortActive,
            10 => Self::PortError,
            11 => Self::LidChange,
            12 => Self::PkeyChange,
            13 => Self::SmChange,
            14 => Self::SrqError,
            15 => Self::SrqLimitReached,
            16 => Self::QpLastWqeReached,
            17 => Self::ClientReregister,
            18 => Self::GidChange,
            19 => Self::WqFatal,
            other => Self::Other(other),
        }
    }

    fn element(self) -> Element {
        match self {
            Self::QpFatal
            | Self::QpRequestError
            | Self::QpAccessError
            | Self::CommunicationEstablished
            | Self::SqDrained
            | Self::PathMigrated
            | Self::PathMigrationError
            | Self::QpLastWqeReached => Element::Qp,
            Self::CqError => Element::Cq,
            Self::SrqError | Self::SrqLimitReached => Element::Srq,
            Self::PortActive
            | Self::PortError
            | Self::LidChange
            | Self::PkeyChange
            | Self::SmChange
            | Self::ClientReregister
            | Self::GidChange => Element::Port,
            Self::DeviceFatal | Self::WqFatal | Self::Other(_) => Element::Device,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protection domain and memory regions

struct PdInner {
    raw: NonNull<ffi::ibv_pd>,
}

// SAFETY: a PD is tied to no thread; verbs on it are thread-safe.
unsafe impl Send for PdInner {}
// SAFETY: as above.
unsafe impl Sync for PdInner {}

impl Drop for PdInner {
    fn drop(&mut self) {
        // SAFETY: the PD was allocated by ibv_alloc_pd and is freed once; every region, QP
        // and SRQ on it holds an Arc of this, so none is left.
        unsafe { ffi::ibv_dealloc_pd(self.raw.as_ptr()) };
    }
}

/// A protection domain on a device. Cloning shares it.
#[derive(Clone)]
pub struct Pd {
    inner: Arc<PdInner>,
}

impl core::fmt::Debug for Pd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pd").finish_non_exhaustive()
    }
}

impl Pd {
    pub fn new(device: &Device) -> io::Result<Self> {
        // SAFETY: the context is open; a null return is checked.
        let raw = unsafe { ffi::ibv_alloc_pd(device.raw.as_ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| os_error("ibv_alloc_pd"))?;
        Ok(Self {
            inner: Arc::new(PdInner { raw }),
        })
    }
}

struct MrInner {
    mr: NonNull<ffi::ibv_mr>,
    /// Anonymous pages, ours; the adapter reads and writes them.
    base: NonNull<u8>,
    len: usize,
    lkey: u32,
    rkey: u32,
    /// Declared last: the PD is released after the region is deregistered.
    _pd: Arc<PdInner>,
}

// SAFETY: the region's pages and its registration are tied to no thread.
unsafe impl Send for MrInner {}
// SAFETY: every access through `&MrInner` is a raw copy of memory the adapter modifies
// concurrently anyway; no reference into the pages exists (see the module comment).
unsafe impl Sync for MrInner {}

impl Drop for MrInner {
    fn drop(&mut self) {
        // SAFETY: registered by ibv_reg_mr, deregistered once; no QP or SRQ that could still
        // use it is left (each holds an Arc of this).
        unsafe { ffi::ibv_dereg_mr(self.mr.as_ptr()) };
        // SAFETY: the pages were mapped by `mmap_anonymous` with this length, unmapped once,
        // after the registration that pinned them is gone.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), self.len) };
    }
}

/// Memory registered with a device for local access (receives, RDMA READ targets, RDMA
/// WRITE and SEND sources): zeroed, page-aligned, registered once.
pub struct MemoryRegion {
    inner: Arc<MrInner>,
}

impl core::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("len", &self.inner.len)
            .field("lkey", &self.inner.lkey)
            .finish()
    }
}

/// An access outside a region; nothing was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access {offset:#x}+{len:#x} is outside the {size:#x} bytes registered")]
pub struct OutOfBounds {
    pub offset: usize,
    pub len: usize,
    pub size: usize,
}

impl MemoryRegion {
    /// `len` bytes of new memory, registered on `pd` for local writes.
    pub fn new(pd: &Pd, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(invalid("empty memory region"));
        }
        // SAFETY: a null hint lets the kernel choose fresh addresses; the pages are private
        // and anonymous, reached only through this owner and the adapter.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )?
        };
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        let access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
        // SAFETY: the PD is alive; the range is the `len` bytes just mapped, which stay
        // mapped until after deregistration (`MrInner::drop`).
        let mr = unsafe {
            ffi::ibv_reg_mr(
                pd.inner.raw.as_ptr(),
                base.as_ptr().cast::<c_void>(),
                len,
                c_int::try_from(access).unwrap_or(0),
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            let err = os_error("ibv_reg_mr");
            // SAFETY: the pages were mapped above and are not registered; unmapped once.
            let _ = unsafe { rustix::mm::munmap(base.as_ptr().cast::<c_void>(), len) };
            return Err(err);
        };
        // SAFETY: the region was just registered; lkey and rkey are plain fields.
        let (lkey, rkey) = unsafe { ((*mr.as_ptr()).lkey, (*mr.as_ptr()).rkey) };
        Ok(Self {
            inner: Arc::new(MrInner {
                mr,
                base,
                len,
                lkey,
                rkey,
                _pd: Arc::clone(&pd.inner),
            }),
        })
    }

    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Always false: an empty region cannot be made.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    pub fn lkey(&self) -> u32 {
        self.inner.lkey
    }

    pub fn rkey(&self) -> u32 {
        self.inner.rkey
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.inner.len => Ok(()),
            _ => Err(OutOfBounds {
                offset,
                len,
                size: self.inner.len,
            }),
        }
    }

    /// Copies `buf.len()` bytes from `offset` out of the region.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, buf.len())?;
        // SAFETY: `offset + buf.len() <= len` (checked): the source is inside the mapping,
        // which lives as long as `self`; `buf` is other memory (no reference into the region
        // exists), so they do not overlap.
        unsafe {
            ptr::copy_nonoverlapping(
                self.inner.base.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Copies `data` into the region at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, data.len())?;
        // SAFETY: the destination is inside the mapping (checked) and writable; `data` does
        // not overlap it.
        unsafe {
            ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.inner.base.as_ptr().add(offset),
                data.len(),
            );
        }
        Ok(())
    }

    /// Sets `len` bytes from `offset` to zero.
    pub fn zero_at(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        self.check(offset, len)?;
        // SAFETY: the range is inside the mapping (checked) and writable.
        unsafe { ptr::write_bytes(self.inner.base.as_ptr().add(offset), 0, len) };
        Ok(())
    }

    /// A scatter/gather entry for `len` bytes from `offset`, for a work request on a queue
    /// that holds this region.
    pub fn sge(&self, offset: usize, len: usize) -> Result<Sge, OutOfBounds> {
        self.check(offset, len)?;
        let out_of_bounds = OutOfBounds {
            offset,
            len,
            size: self.inner.len,
        };
        let len = u32::try_from(len).map_err(|_| out_of_bounds)?;
        let addr = (self.inner.base.as_ptr() as u64)
            .checked_add(offset as u64)
            .ok_or(out_of_bounds)?;
        Ok(Sge {
            addr,
            len,
            lkey: self.inner.lkey,
            region: Arc::as_ptr(&self.inner) as usize,
        })
    }
}

/// A scatter/gather entry: bytes of a [`MemoryRegion`], checked when made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    addr: u64,
    len: u32,
    lkey: u32,
    /// Which region (its identity): a queue refuses entries of regions it does not hold.
    region: usize,
}

impl Sge {
    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Completion queues

struct CqInner {
    raw: NonNull<ffi::ibv_cq>,
    channel: NonNull<ffi::ibv_comp_channel>,
}

// SAFETY: a CQ and its channel are tied to no thread; verbs on them are thread-safe.
unsafe impl Send for CqInner {}
// SAFETY: as above; the QPs that share a CQ only hold it alive.
unsafe impl Sync for CqInner {}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: made by ibv_create_cq, destroyed once, after every QP on it (each holds an
        // Arc of this) and with every event taken acknowledged (`Cq::drop`).
        unsafe { ffi::ibv_destroy_cq(self.raw.as_ptr()) };
        // SAFETY: made by ibv_create_comp_channel for this CQ alone, destroyed once after it.
        unsafe { ffi::ibv_destroy_comp_channel(self.channel.as_ptr()) };
    }
}

/// A completion queue with its own completion channel (non-blocking descriptor).
pub struct Cq {
    inner: Arc<CqInner>,
    /// Events taken and not acknowledged; acknowledged at the latest when this is dropped.
    unacked: u32,
}

impl core::fmt::Debug for Cq {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cq")
            .field("fd", &self.fd())
            .field("unacked", &self.unacked)
            .finish()
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        self.ack_events(self.unacked);
    }
}

impl Cq {
    /// A CQ of at least `entries` entries on `device`, with a channel of its own.
    pub fn new(device: &Device, entries: u32) -> io::Result<Self> {
        // SAFETY: the context is open; a null return is checked.
        let channel = unsafe { ffi::ibv_create_comp_channel(device.raw.as_ptr()) };
        let channel = NonNull::new(channel).ok_or_else(|| os_error("ibv_create_comp_channel"))?;
        let entries = c_int::try_from(entries).unwrap_or(c_int::MAX);
        // SAFETY: the context and the channel are alive; no CQ context pointer; vector 0.
        let raw = unsafe {
            ffi::ibv_create_cq(
                device.raw.as_ptr(),
                entries,
                ptr::null_mut(),
                channel.as_ptr(),
                0,
            )
        };
        let Some(raw) = NonNull::new(raw) else {
            let err = os_error("ibv_create_cq");
            // SAFETY: the channel was made above, has no CQ, and is destroyed once.
            unsafe { ffi::ibv_destroy_comp_channel(channel.as_ptr()) };
            return Err(err);
        };
        let cq = Self {
            inner: Arc::new(CqInner { raw, channel }),
            unacked: 0,
        };
        set_nonblocking(cq.fd(), "completion channel")?;
        Ok(cq)
    }

    /// The completion channel's descriptor.
    pub fn fd(&self) -> RawFd {
        // SAFETY: the channel is alive; `fd` is a plain field.
        unsafe { (*self.inner.channel.as_ptr()).fd }
    }

    /// The CQ's identity, as async events name it.
    pub fn handle(&self) -> usize {
        self.inner.raw.as_ptr() as usize
    }

    /// Takes up to `out.len()` completions.
    pub fn poll(&mut self, out: &mut [WorkCompletion]) -> io::Result<usize> {
        let n = c_int::try_from(out.len()).unwrap_or(c_int::MAX);
        // SAFETY: the CQ is alive; `out` holds at least `n` writable entries laid out as
        // `ibv_wc` (WorkCompletion is repr(transparent)).
        let rc = unsafe {
            ffi::ibv_poll_cq(
                self.inner.raw.as_ptr(),
                n,
                out.as_mut_ptr().cast::<ffi::ibv_wc>(),
            )
        };
        usize::try_from(rc).map_err(|_| errno_error("ibv_poll_cq", libc::EIO))
    }

    /// Arms the CQ: its next completion raises an event on the channel.
    pub fn req_notify(&mut self) -> io::Result<()> {
        // SAFETY: the CQ is alive; 0: every completion, not only solicited ones.
        let rc = unsafe { ffi::ibv_req_notify_cq(self.inner.raw.as_ptr(), 0) };
        check("ibv_req_notify_cq", rc)
    }

    /// Takes one event from the channel without blocking; `false` if there is none.
    pub fn get_event(&mut self) -> io::Result<bool> {
        let mut cq: *mut ffi::ibv_cq = ptr::null_mut();
        let mut context: *mut c_void = ptr::null_mut();
        // SAFETY: the channel is alive; both out-pointers are valid.
        let rc = unsafe {
            ffi::ibv_get_cq_event(self.inner.channel.as_ptr(), &raw mut cq, &raw mut context)
        };
        if rc != 0 {
            let err = os_error("ibv_get_cq_event");
            return if is_would_block(&err) {
                Ok(false)
            } else {
                Err(err)
            };
        }
        // The channel is this CQ's alone, so the event is this CQ's.
        self.unacked = self.unacked.saturating_add(1);
        Ok(true)
    }

    /// Acknowledges `n` events taken (at most those not yet acknowledged).
    pub fn ack_events(&mut self, n: u32) {
        let n = n.min(self.unacked);
        if n == 0 {
            return;
        }
        // SAFETY: the CQ is alive and `n` events were taken from its channel and not yet
        // acknowledged.
        unsafe { ffi::ibv_ack_cq_events(self.inner.raw.as_ptr(), n) };
        self.unacked -= n;
    }
}

fd_source!(Cq);

/// One work completion, as `ibv_poll_cq` fills it.
#[repr(transparent)]
pub struct WorkCompletion(ffi::ibv_wc);

impl core::fmt::Debug for WorkCompletion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WorkCompletion")
            .field("wr_id", &self.wr_id())
            .field("status", &self.status())
            .field("opcode", &self.opcode())
            .field("byte_len", &self.byte_len())
            .finish()
    }
}

impl Default for WorkCompletion {
    fn default() -> Self {
        // SAFETY: ibv_wc is plain data for which all-zero is valid.
        Self(unsafe { std::mem::zeroed() })
    }
}

/// What a work completion says of its work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    Recv,
    Other(u32),
}

/// A work completion's status: 0 is success; anything else failed the request (and, except
/// a flush after the QP went to error, the QP with it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct WcStatus(u32);

impl WcStatus {
    pub const SUCCESS: Self = Self(ffi::ibv_wc_status::IBV_WC_SUCCESS);
    /// Flushed: the QP was in error (disconnected) before the request ran.
    pub const FLUSHED: Self = Self(ffi::ibv_wc_status::IBV_WC_WR_FLUSH_ERR);

    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }

    pub fn raw(self) -> u32 {
        self.0
    }

    /// The library's name for it ("remote access error", ...).
    pub fn describe(self) -> String {
        // SAFETY: ibv_wc_status_str takes any value and returns a static string.
        let s = unsafe { ffi::ibv_wc_status_str(self.0) };
        if s.is_null() {
            return format!("status {}", self.0);
        }
        // SAFETY: a non-null result is a static NUL-terminated string.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }
}

impl core::fmt::Debug for WcStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "WcStatus({}: {})", self.0, self.describe())
    }
}

impl WorkCompletion {
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    pub fn status(&self) -> WcStatus {
        WcStatus(self.0.status)
    }

    /// Meaningful only for a successful completion.
    pub fn opcode(&self) -> WcOpcode {
        use ffi::ibv_wc_opcode as op;
        match self.0.opcode {
            op::IBV_WC_SEND => WcOpcode::Send,
            op::IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            op::IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            op::IBV_WC_RECV => WcOpcode::Recv,
            other => WcOpcode::Other(other),
        }
    }

    /// Bytes received (a receive).
    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }

    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    /// The key the peer invalidated with a SEND with Invalidate, if it did.
    pub fn invalidated_rkey(&self) -> Option<u32> {
        let with_inv = ffi::ibv_wc_flags::IBV_WC_WITH_INV.0;
        if self.0.wc_flags & with_inv == 0 {
            return None;
        }
        // SAFETY: a plain u32 either way; the flag says the adapter wrote the key.
        Some(unsafe { self.0.imm_data_invalidated_rkey_union.invalidated_rkey })
    }

    /// The immediate data the peer sent, if any (NVMe/RDMA uses none).
    pub fn imm_data(&self) -> Option<u32> {
        let with_imm = ffi::ibv_wc_flags::IBV_WC_WITH_IMM.0;
        if self.0.wc_flags & with_imm == 0 {
            return None;
        }
        // SAFETY: a plain u32 either way; the flag says the adapter wrote immediate data.
        Some(u32::from_be(unsafe {
            self.0.imm_data_invalidated_rkey_union.imm_data
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Shared receive queues

struct SrqInner {
    raw: NonNull<ffi::ibv_srq>,
    /// The memory its receives may fill; released after the SRQ is destroyed.
    regions: Vec<Arc<MrInner>>,
    _pd: Arc<PdInner>,
}

// SAFETY: an SRQ is tied to no thread; posting to it is thread-safe.
unsafe impl Send for SrqInner {}
// SAFETY: as above.
unsafe impl Sync for SrqInner {}

impl Drop for SrqInner {
    fn drop(&mut self) {
        // SAFETY: made by ibv_create_srq, destroyed once, after every QP on it (each holds an
        // Arc of this); its regions and PD are released after.
        unsafe { ffi::ibv_destroy_srq(self.raw.as_ptr()) };
    }
}

/// A shared receive queue: receives posted once for all the QPs of a device.
pub struct Srq {
    inner: Arc<SrqInner>,
}

impl core::fmt::Debug for Srq {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Srq").finish_non_exhaustive()
    }
}

impl Srq {
    /// An SRQ of `max_wr` receives of up to `max_sge` entries each, filling `regions` only.
    pub fn new(pd: &Pd, max_wr: u32, max_sge: u32, regions: &[&MemoryRegion]) -> io::Result<Self> {
        // SAFETY: ibv_srq_init_attr is plain data for which all-zero is valid.
        let mut attr: ffi::ibv_srq_init_attr = unsafe { std::mem::zeroed() };
        attr.attr.max_wr = max_wr;
        attr.attr.max_sge = max_sge;
        // SAFETY: the PD is alive; `attr` is valid for the call.
        let raw = unsafe { ffi::ibv_create_srq(pd.inner.raw.as_ptr(), &raw mut attr) };
        let raw = NonNull::new(raw).ok_or_else(|| os_error("ibv_create_srq"))?;
        Ok(Self {
            inner: Arc::new(SrqInner {
                raw,
                regions: regions.iter().map(|r| Arc::clone(&r.inner)).collect(),
                _pd: Arc::clone(&pd.inner),
            }),
        })
    }

    /// The SRQ's identity, as async events name it.
    pub fn handle(&self) -> usize {
        self.inner.raw.as_ptr() as usize
    }

    /// Posts one receive.
    pub fn post_recv(&self, wr_id: u64, sges: &[Sge]) -> io::Result<()> {
        let mut list = sge_list(sges, &self.inner.regions)?;
        let mut wr = recv_wr(wr_id, &mut list, sges.len());
        let mut bad: *mut ffi::ibv_recv_wr = ptr::null_mut();
        // SAFETY: the SRQ is alive; `wr` and its list live through the call (the verb copies
        // them); the memory they name is inside regions the SRQ holds until it is destroyed.
        let rc =
            unsafe { ffi::ibv_post_srq_recv(self.inner.raw.as_ptr(), &raw mut wr, &raw mut bad) };
        check("ibv_post_srq_recv", rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_round_trip() {
        for addr in [
            "192.0.2.7:4420",
            "[2001:db8::1]:4421",
            "0.0.0.0:4420",
            "[::]:1",
        ] {
            let addr: SocketAddr = addr.parse().expect("address");
            let storage = SockAddr::from(addr);
            // SAFETY: a sockaddr_storage we filled.
            let back = unsafe { socket_addr(&raw const storage.storage) };
            assert_eq!(back, Some(addr));
        }
    }

    #[test]
    fn errors_name_the_verb() {
        let err = errno_error("rdma_bind_addr", libc::EADDRNOTAVAIL);
        assert!(err.to_string().starts_with("rdma_bind_addr: "), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable);
        assert!(check("x", 0).is_ok());
        let err = check("ibv_post_send", libc::ENOMEM).expect_err("an errno");
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        assert!(err.to_string().starts_with("ibv_post_send: "), "{err}");
    }

    #[test]
    fn async_event_kinds_and_their_elements() {
        assert_eq!(AsyncEventKind::from_raw(1), AsyncEventKind::QpFatal);
        assert!(matches!(AsyncEventKind::QpFatal.element(), Element::Qp));
        assert!(matches!(AsyncEventKind::CqError.element(), Element::Cq));
        assert!(matches!(AsyncEventKind::PortError.element(), Element::Port));
        assert_eq!(AsyncEventKind::from_raw(99), AsyncEventKind::Other(99));
    }

    #[test]
    fn cm_event_kinds_follow_the_header() {
        use ffi::rdma_cm_event_type as t;
        assert_eq!(
            CmEventKind::from_raw(t::RDMA_CM_EVENT_CONNECT_REQUEST),
            CmEventKind::ConnectRequest
        );
        assert_eq!(
            CmEventKind::from_raw(t::RDMA_CM_EVENT_TIMEWAIT_EXIT),
            CmEventKind::TimewaitExit
        );
        assert_eq!(CmEventKind::from_raw(1000), CmEventKind::Other(1000));
    }

    #[test]
    fn a_machine_without_rdma_fails_cleanly() {
        // With no device (this machine's kernel has no RDMA), making a channel fails with an
        // error naming the verb; with one, it works. Either way nothing panics.
        match EventChannel::new() {
            Ok(channel) => assert!(channel.fd() >= 0),
            Err(err) => assert!(
                err.to_string().starts_with("rdma_create_event_channel"),
                "{err}"
            ),
        }
    }
}
