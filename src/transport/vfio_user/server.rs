//! One vfio-user client connection on a non-blocking UNIX socket: reads messages with the file
//! descriptors that come with them (SCM_RIGHTS), negotiates the version, dispatches commands to
//! a [`Device`] and queues the replies (an errno in the header on error). No PCI or NVMe here.
//!
//! The owner registers the connection (it is a [`mio::event::Source`]) for readability, calls
//! [`ClientConnection::handle_readable`] and [`ClientConnection::handle_writable`] on events,
//! arms writability while [`ClientConnection::wants_writable`], and drops the connection when
//! either returns an error or [`ConnectionState::Closed`] (resetting the device: the client's
//! maps and eventfds are gone with it).
//!
//! Rules:
//! - The first message must be VERSION; anything else closes the connection.
//! - Commands with NO_REPLY get no reply, whatever happens to them.
//! - Unknown and unsupported commands get an ENOTSUP error reply; their body is skipped.
//! - A device error becomes an error reply with the device's errno.
//! - A malformed message (size below the header or above [`MAX_MESSAGE_SIZE`], a type other
//!   than command, a body too short for its command) closes the connection: the stream cannot
//!   be trusted past it.
//! - File descriptors: the kernel hands a message's fds to the read that holds the message's
//!   first byte, and a read stops at the end of the bytes that came with fds, so the fds of a
//!   read belong to the last message that starts in it. Fds that no command takes are closed.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use mio::net::UnixStream;
use rustix::io::Errno as OsErrno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use thiserror::Error;
use tracing::{debug, trace};

use super::protocol::{
    self, Capabilities, Command, Header, MessageType, ProtocolError, REGION_ACCESS_LEN,
    REGION_INFO_LEN, RegionAccess, RegionInfoReply, Request, Version, dma_unmap_flags,
    irq_set_flags, region_flags,
};
pub use super::protocol::{DeviceInfo, DmaMap, DmaUnmap, Errno, IrqInfo, IrqSet};

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;

/// The protocol version this server speaks (QEMU refuses a reply whose minor exceeds its own,
/// and it sends 0.0).
pub const VERSION_MAJOR: u16 = 0;
pub const VERSION_MINOR: u16 = 0;
/// The most data one REGION_READ or REGION_WRITE may carry, advertised as
/// `max_data_xfer_size` (QEMU's default; its ceiling is 64 MiB).
pub const MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// The largest message a client may send: a REGION_WRITE of [`MAX_DATA_XFER_SIZE`] with its
/// header and offset/region/count. A header announcing more closes the connection before its
/// bytes are waited for.
pub const MAX_MESSAGE_SIZE: usize =
    MAX_DATA_XFER_SIZE as usize + protocol::HEADER_LEN + REGION_ACCESS_LEN;
/// File descriptors a client may send with one message, advertised as `max_msg_fds` (QEMU's
/// default; its ceiling is 16). More with one read closes the connection.
pub const MAX_FDS_PER_MESSAGE: usize = 8;
/// DMA maps a client may have at once, advertised as `max_dma_maps` (QEMU accepts at most
/// 65535); the device's guest memory enforces it.
pub const MAX_DMA_MAPS: u32 = 4096;
const _: () = assert!(MAX_DMA_MAPS as usize == super::memory::MAX_REGIONS);
/// DMA page sizes advertised (`pgsizes`): 4 KiB.
pub const DMA_PAGE_SIZES: u64 = 4096;
/// Reply bytes one client may have waiting to be written. Above this, no further command is
/// handled (and nothing more read) until the socket drains, so a client that sends reads and
/// never reads the replies holds at most this plus one reply.
pub const MAX_OUTPUT_BUFFERED: usize = 2 * MAX_MESSAGE_SIZE;
/// Bytes read per `recvmsg` at least.
const READ_CHUNK: usize = 64 * 1024;
/// Control-message room for the fds of one read: [`MAX_FDS_PER_MESSAGE`] plus alignment slack
/// (rustix aligns the buffer's start), so a read with one or two more is seen, not truncated.
const RECV_CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE)) + 8;
/// Control-message room for the one fd a reply may carry, plus alignment slack.
const SEND_CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(1)) + 8;

/// Regions' file descriptors and areas (vfio-user.rst, "VFIO_USER_DEVICE_GET_REGION_INFO").
#[derive(Clone, Debug)]
pub struct RegionInfo {
    /// [`region_flags`] READ, WRITE; MMAP is set by the server when `mmap` is there.
    pub flags: u32,
    pub size: u64,
    /// An fd the VMM may mmap, with the sparse areas.
    pub mmap: Option<RegionMmap>,
}

/// The part of a region the VMM may map: `fd` from `file_offset` is the region's offset 0;
/// `areas` (offset, size) within the region may be mmapped (empty: all of it).
#[derive(Clone, Debug)]
pub struct RegionMmap {
    pub fd: Arc<OwnedFd>,
    pub file_offset: u64,
    pub areas: Vec<(u64, u64)>,
}

/// What a vfio-user server asks of the device it serves; the server knows no PCI or NVMe.
pub trait Device {
    fn info(&self) -> DeviceInfo;
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    fn irq_info(&self, index: u32) -> Option<IrqInfo>;
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno>;
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno>;
    fn dma_map(&mut self, map: DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno>;
    fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<(), Errno>;
    /// `fds` are the eventfds of DATA_EVENTFD: `set.count` of them, or none (unassign).
    fn set_irqs(&mut self, set: IrqSet, fds: Vec<OwnedFd>) -> Result<(), Errno>;
    fn reset(&mut self) -> Result<(), Errno>;
    /// Asked before a DMA_UNMAP is handled: the device stops starting work that moves data
    /// (fetching commands) and says whether none is in flight. While it says no, the
    /// connection holds the DMA_UNMAP and reads nothing more; the owner calls
    /// [`ClientConnection::resume_quiesced`] when the device's work ends. So no command that
    /// was running when the VMM took memory away writes into it afterwards: it completes
    /// first, with its data and completion in place.
    fn quiesce(&mut self) -> bool {
        true
    }
}

/// What a connection is after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Open,
    /// The client hung up; drop the connection.
    Closed,
}

/// Why a connection must be dropped.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("socket i/o failed")]
    Io(#[source] std::io::Error),
    #[error("malformed message")]
    Malformed(#[from] ProtocolError),
    #[error("message type {kind} from the client, not a command")]
    NotACommand { kind: u8 },
    #[error("{command:?} before VERSION")]
    NotNegotiated { command: Command },
    #[error("client version {major}.{minor} is not supported")]
    Version { major: u16, minor: u16 },
    #[error("{count} file descriptors with one read, at most {max}")]
    TooManyFds { count: usize, max: usize },
    #[error("reply cannot be encoded")]
    Emit(#[source] ProtocolError),
}

impl From<OsErrno> for ServerError {
    fn from(errno: OsErrno) -> Self {
        Self::Io(errno.into())
    }
}

/// One client: its socket, the bytes and fds read but not yet handled, and the replies not
/// yet written.
pub struct ClientConnection {
    stream: UnixStream,
    input: Input,
    /// Fds of a read, kept for the message starting at this stream offset until it is whole.
    pending_fds: Option<(u64, Vec<OwnedFd>)>,
    session: Session,
    /// Commands wait because too many replies do; reading resumes once they are written.
    paused: bool,
    /// A DMA_UNMAP waits for the device to quiesce (see [`Device::quiesce`]).
    quiescing: bool,
}

/// Why [`ClientConnection::process_input`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Processed {
    /// Every whole message was handled.
    All,
    /// Too many replies wait.
    OutputFull,
    /// The next message is a DMA_UNMAP and the device has work in flight.
    Quiescing,
}

impl std::fmt::Debug for ClientConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConnection")
            .field("negotiated", &self.session.negotiated)
            .field("output", &self.session.output.pending())
            .finish_non_exhaustive()
    }
}

impl ClientConnection {
    /// A connection on a socket just accepted (non-blocking, as mio's are); the owner
    /// registers it.
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            input: Input::new(),
            pending_fds: None,
            session: Session::new(),
            paused: false,
            quiescing: false,
        }
    }

    /// Whether VERSION was negotiated.
    pub fn negotiated(&self) -> bool {
        self.session.negotiated
    }

    /// Whether replies wait for the socket to drain: arm writability while this holds.
    pub fn wants_writable(&self) -> bool {
        self.session.output.pending() > 0
    }

    /// Reads all the socket has, handles every whole message and writes the replies (what
    /// does not fit stays queued). Stops early, with input left unread, while more than
    /// [`MAX_OUTPUT_BUFFERED`] of replies wait; [`Self::handle_writable`] resumes.
    pub fn handle_readable(
        &mut self,
        device: &mut dyn Device,
    ) -> Result<ConnectionState, ServerError> {
        if self.paused || self.quiescing {
            return Ok(ConnectionState::Open);
        }
        loop {
            match self.process_input(device) {
                Ok(Processed::All) => {}
                Ok(Processed::OutputFull) => {
                    self.paused = true;
                    return Ok(ConnectionState::Open);
                }
                Ok(Processed::Quiescing) => {
                    debug!("DMA_UNMAP waits for the commands in flight");
                    self.quiescing = true;
                    return self.flush();
                }
                Err(error) => {
                    // The last replies (an error reply to VERSION, say) go out if they can.
                    let _ = self.session.output.flush(&self.stream);
                    return Err(error);
                }
            }
            if self.flush()? == ConnectionState::Closed {
                return Ok(ConnectionState::Closed);
            }
            match self.read_some()? {
                Read::Data => {}
                Read::WouldBlock => return Ok(ConnectionState::Open),
                Read::Eof => return Ok(ConnectionState::Closed),
            }
        }
    }

    /// Writes queued replies; if that ends a pause, handles and reads input again (its
    /// readiness was consumed while paused).
    pub fn handle_writable(
        &mut self,
        device: &mut dyn Device,
    ) -> Result<ConnectionState, ServerError> {
        if self.flush()? == ConnectionState::Closed {
            return Ok(ConnectionState::Closed);
        }
        if self.paused && self.session.output.pending() < MAX_OUTPUT_BUFFERED {
            self.paused = false;
            return self.handle_readable(device);
        }
        Ok(ConnectionState::Open)
    }

    /// Whether a DMA_UNMAP waits for the device's work in flight.
    pub fn is_quiescing(&self) -> bool {
        self.quiescing
    }

    /// The device's work in flight ended: if it is quiet now, the held DMA_UNMAP and what
    /// follows it are handled.
    pub fn resume_quiesced(
        &mut self,
        device: &mut dyn Device,
    ) -> Result<ConnectionState, ServerError> {
        if !self.quiescing || !device.quiesce() {
            return Ok(ConnectionState::Open);
        }
        self.quiescing = false;
        self.handle_readable(device)
    }

    /// Writes as much of the queued replies as the socket takes; the rest stays queued.
    pub fn flush(&mut self) -> Result<ConnectionState, ServerError> {
        match self.session.output.flush(&self.stream) {
            Ok(()) => Ok(ConnectionState::Open),
            Err(OsErrno::PIPE | OsErrno::CONNRESET) => Ok(ConnectionState::Closed),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Handles the whole messages in the input buffer, until one must wait.
    fn process_input(&mut self, device: &mut dyn Device) -> Result<Processed, ServerError> {
        loop {
            if self.session.output.pending() >= MAX_OUTPUT_BUFFERED {
                if self.flush()? == ConnectionState::Closed {
                    return Ok(Processed::All);
                }
                if self.session.output.pending() >= MAX_OUTPUT_BUFFERED {
                    return Ok(Processed::OutputFull);
                }
            }
            let Some((header, len)) = protocol::frame(self.input.unhandled(), MAX_MESSAGE_SIZE)?
            else {
                return Ok(Processed::All);
            };
            if header.command == Command::DmaUnmap && self.session.negotiated && !device.quiesce() {
                return Ok(Processed::Quiescing);
            }
            let fds = self.take_fds(self.input.offset);
            let start = self.input.start;
            let body = &self.input.buf[start + protocol::HEADER_LEN..start + len];
            self.session.handle_message(&header, body, fds, device)?;
            self.input.consume(len);
        }
    }

    /// One `recvmsg`: bytes to the input buffer, fds to the last message starting in them.
    fn read_some(&mut self) -> Result<Read, ServerError> {
        self.input.make_room();
        let mut space = [MaybeUninit::<u8>::uninit(); RECV_CMSG_SPACE];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let from = self.input.end;
        let received = loop {
            let mut iov = [IoSliceMut::new(&mut self.input.buf[from..])];
            match rustix::net::recvmsg(
                &self.stream,
                &mut iov,
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(received) => break received,
                Err(OsErrno::INTR) => {}
                Err(OsErrno::AGAIN) => return Ok(Read::WouldBlock),
                Err(OsErrno::CONNRESET) => return Ok(Read::Eof),
                Err(errno) => return Err(errno.into()),
            }
        };
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received_fds) = message {
                fds.extend(received_fds);
            }
        }
        if received.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_FDS_PER_MESSAGE {
            return Err(ServerError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS_PER_MESSAGE,
            });
        }
        if received.bytes == 0 {
            return Ok(Read::Eof);
        }
        self.input.end += received.bytes;
        if !fds.is_empty() {
            self.attribute_fds(from, fds);
        }
        Ok(Read::Data)
    }

    /// Keeps the fds of the read that put bytes from `from` on for the last message that
    /// starts there; with no message starting there, they are closed.
    fn attribute_fds(&mut self, from: usize, fds: Vec<OwnedFd>) {
        match self.input.last_start_from(from) {
            Some(offset) => {
                if let Some((stale, old)) = self.pending_fds.replace((offset, fds)) {
                    debug!(offset = stale, count = old.len(), "closing unclaimed fds");
                }
            }
            None => debug!(
                count = fds.len(),
                "closing fds that came with no message start"
            ),
        }
    }

    /// The fds of the message starting at stream offset `offset`.
    fn take_fds(&mut self, offset: u64) -> Vec<OwnedFd> {
        match self.pending_fds.take() {
            Some((at, fds)) if at == offset => fds,
            Some((at, fds)) if at > offset => {
                self.pending_fds = Some((at, fds));
                Vec::new()
            }
            Some((at, fds)) => {
                debug!(offset = at, count = fds.len(), "closing unclaimed fds");
                Vec::new()
            }
            None => Vec::new(),
        }
    }
}

impl mio::event::Source for ClientConnection {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> std::io::Result<()> {
        self.stream.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: mio::Interest,
    ) -> std::io::Result<()> {
        self.stream.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
        self.stream.deregister(registry)
    }
}

enum Read {
    Data,
    WouldBlock,
    Eof,
}

/// Bytes read and not yet handled: `buf[start..end]`, of which `buf[start]` is the first byte
/// of the next message, at stream offset `offset`.
struct Input {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    offset: u64,
}

impl Input {
    fn new() -> Self {
        Self {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            offset: 0,
        }
    }

    fn unhandled(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, len: usize) {
        self.start += len;
        self.offset += len as u64;
    }

    /// Moves the unhandled bytes to the front and leaves at least [`READ_CHUNK`] free. The
    /// buffer holds at most one partial message (at most [`MAX_MESSAGE_SIZE`]) and whole
    /// ones read with it, so it stays below about [`MAX_MESSAGE_SIZE`] plus two chunks.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * READ_CHUNK {
                self.buf.truncate(READ_CHUNK);
                self.buf.shrink_to_fit();
            }
        } else if self.start > 0 && self.buf.len() - self.end < READ_CHUNK {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
    }

    /// The stream offset of the last message that starts at or after `buf[from]`, walking the
    /// headers from the next message; `None` if none starts there.
    fn last_start_from(&self, from: usize) -> Option<u64> {
        let mut at = self.start;
        let mut last = None;
        while at < self.end {
            if at >= from {
                last = Some(at);
            }
            let Ok(header) = Header::parse(&self.buf[at..self.end]) else {
                break;
            };
            at = at.saturating_add(header.msg_size as usize);
        }
        last.map(|at| self.offset + (at - self.start) as u64)
    }
}

/// Reply bytes not yet written, `buf[sent..]`, and the fds that go with some of them: each
/// goes with the first byte of its reply, and that reply is sent alone so that the client's
/// read with the fd holds no other message's start.
struct Output {
    buf: Vec<u8>,
    sent: usize,
    fds: VecDeque<FdMark>,
}

struct FdMark {
    start: usize,
    end: usize,
    fd: Arc<OwnedFd>,
}

impl Output {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            sent: 0,
            fds: VecDeque::new(),
        }
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Sends until everything is written or the socket is full.
    fn flush(&mut self, stream: &UnixStream) -> Result<(), OsErrno> {
        while self.sent < self.buf.len() {
            let (end, fd) = match self.fds.front() {
                Some(mark) if mark.start == self.sent => (mark.end, Some(mark.fd.as_fd())),
                Some(mark) => (mark.start, None),
                None => (self.buf.len(), None),
            };
            let iov = [IoSlice::new(&self.buf[self.sent..end])];
            let mut space = [MaybeUninit::<u8>::uninit(); SEND_CMSG_SPACE];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = fd.map(|fd| [fd]);
            if let Some(fds) = &fds {
                if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    // The buffer is sized for one fd: this cannot happen.
                    return Err(OsErrno::NOBUFS);
                }
            }
            match rustix::net::sendmsg(
                stream,
                &iov,
                &mut control,
                SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
            ) {
                Ok(0) => break,
                Ok(written) => {
                    self.sent += written;
                    if fds.is_some() {
                        self.fds.pop_front();
                    }
                }
                Err(OsErrno::INTR) => {}
                Err(OsErrno::AGAIN) => break,
                Err(errno) => return Err(errno),
            }
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        } else if self.sent >= READ_CHUNK {
            self.buf.drain(..self.sent);
            for mark in &mut self.fds {
                mark.start -= self.sent;
                mark.end -= self.sent;
            }
            self.sent = 0;
        }
        Ok(())
    }

    /// Queues a reply, with an fd sent along with its first byte.
    fn reply(
        &mut self,
        request: &Header,
        fd: Option<Arc<OwnedFd>>,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), ServerError> {
        let start = self.buf.len();
        protocol::emit_reply(&mut self.buf, request, body).map_err(ServerError::Emit)?;
        if let Some(fd) = fd {
            let end = self.buf.len();
            self.fds.push_back(FdMark { start, end, fd });
        }
        Ok(())
    }

    fn error_reply(&mut self, request: &Header, errno: Errno) {
        protocol::emit_error_reply(&mut self.buf, request, wire_errno(errno));
    }
}

/// The errno a reply carries: positive; a device's 0 or negative value becomes EIO.
fn wire_errno(errno: Errno) -> u32 {
    u32::try_from(errno)
        .ok()
        .filter(|&errno| errno != 0)
        .unwrap_or(libc::EIO.unsigned_abs())
}

/// The protocol state of a connection, and its replies.
struct Session {
    negotiated: bool,
    /// The fds the client accepts with one reply (its `max_msg_fds`).
    client_max_fds: u32,
    output: Output,
}

impl Session {
    fn new() -> Self {
        Self {
            negotiated: false,
            client_max_fds: 0,
            output: Output::new(),
        }
    }

    fn capabilities() -> Capabilities {
        Capabilities {
            max_msg_fds: u32::try_from(MAX_FDS_PER_MESSAGE).unwrap_or(u32::MAX),
            max_data_xfer_size: MAX_DATA_XFER_SIZE,
            pgsizes: DMA_PAGE_SIZES,
            max_dma_maps: MAX_DMA_MAPS,
            write_multiple: false,
        }
    }

    fn handle_message(
        &mut self,
        header: &Header,
        body: &[u8],
        fds: Vec<OwnedFd>,
        device: &mut dyn Device,
    ) -> Result<(), ServerError> {
        match header.message_type() {
            MessageType::Command => {}
            MessageType::Reply => return Err(ServerError::NotACommand { kind: 1 }),
            MessageType::Unknown(kind) => return Err(ServerError::NotACommand { kind }),
        }
        let request = match Request::parse(header.command, body) {
            Ok(request) => request,
            Err(error) => {
                if header.command == Command::Version && !header.no_reply() {
                    self.output.error_reply(header, libc::EINVAL);
                }
                return Err(error.into());
            }
        };
        if !self.negotiated && !matches!(request, Request::Version(_)) {
            return Err(ServerError::NotNegotiated {
                command: header.command,
            });
        }
        match &request {
            Request::RegionRead(_) | Request::RegionWrite(_) => {
                trace!(msg_id = header.msg_id, command = ?header.command, "vfio-user message");
            }
            _ => debug!(msg_id = header.msg_id, command = ?header.command, "vfio-user message"),
        }
        if let Request::Version(version) = request {
            return self.handle_version(header, &version);
        }
        let fds = close_unwanted(&request, fds);
        let reply = !header.no_reply();
        let result = self.dispatch(header, request, fds, device, reply)?;
        if let Err(errno) = result {
            match header.command {
                Command::RegionRead | Command::RegionWrite => {
                    trace!(msg_id = header.msg_id, errno, "vfio-user error reply");
                }
                command => debug!(
                    msg_id = header.msg_id,
                    ?command,
                    errno,
                    "vfio-user error reply"
                ),
            }
            if reply {
                self.output.error_reply(header, errno);
            }
        }
        Ok(())
    }

    fn handle_version(&mut self, header: &Header, version: &Version) -> Result<(), ServerError> {
        let reply = !header.no_reply();
        if self.negotiated {
            if reply {
                self.output.error_reply(header, libc::EINVAL);
            }
            return Ok(());
        }
        if version.major != VERSION_MAJOR {
            if reply {
                self.output.error_reply(header, libc::ENOTSUP);
            }
            return Err(ServerError::Version {
                major: version.major,
                minor: version.minor,
            });
        }
        debug!(
            major = version.major,
            minor = version.minor,
            max_msg_fds = version.capabilities.max_msg_fds,
            max_data_xfer_size = version.capabilities.max_data_xfer_size,
            "vfio-user version negotiated"
        );
        self.client_max_fds = version.capabilities.max_msg_fds;
        self.negotiated = true;
        if reply {
            // The lower of the two minors (ours is 0 today, hence the allow).
            #[allow(clippy::unnecessary_min_or_max)]
            let minor = version.minor.min(VERSION_MINOR);
            let ours = Version {
                major: VERSION_MAJOR,
                minor,
                capabilities: Self::capabilities(),
            };
            self.output.reply(header, None, |out| ours.emit(out))?;
        }
        Ok(())
    }

    /// Runs a command on the device and queues its successful reply (if `reply`); a refusal
    /// comes back as the errno to reply with.
    fn dispatch(
        &mut self,
        header: &Header,
        request: Request<'_>,
        mut fds: Vec<OwnedFd>,
        device: &mut dyn Device,
        reply: bool,
    ) -> Result<Result<(), Errno>, ServerError> {
        let out = &mut self.output;
        match request {
            Request::Version(_) => Ok(Err(libc::EINVAL)),
            Request::DmaMap(map) => {
                if fds.len() > 1 {
                    return Ok(Err(libc::EINVAL));
                }
                if let Err(errno) = device.dma_map(map, fds.pop()) {
                    return Ok(Err(errno));
                }
                if reply {
                    out.reply(header, None, |_| {})?;
                }
                Ok(Ok(()))
            }
            Request::DmaUnmap(unmap) => {
                if unmap.flags & dma_unmap_flags::GET_DIRTY_BITMAP != 0 {
                    return Ok(Err(libc::ENOTSUP));
                }
                if let Err(errno) = device.dma_unmap(unmap) {
                    return Ok(Err(errno));
                }
                if reply {
                    out.reply(header, None, |out| unmap.emit(out))?;
                }
                Ok(Ok(()))
            }
            Request::DeviceGetInfo(request) => {
                if (request.argsz as usize) < protocol::DEVICE_INFO_LEN {
                    return Ok(Err(libc::EINVAL));
                }
                let info = device.info();
                if reply {
                    out.reply(header, None, |out| info.emit(out))?;
                }
                Ok(Ok(()))
            }
            Request::DeviceGetRegionInfo(request) => {
                if (request.argsz as usize) < REGION_INFO_LEN {
                    return Ok(Err(libc::EINVAL));
                }
                let Some(info) = device.region_info(request.index) else {
                    return Ok(Err(libc::EINVAL));
                };
                let Some((body, fd)) = self.region_info_reply(request.argsz, request.index, info)
                else {
                    return Ok(Err(libc::EINVAL));
                };
                if reply {
                    self.output.reply(header, fd, |out| body.emit(out))?;
                }
                Ok(Ok(()))
            }
            Request::DeviceGetIrqInfo(request) => {
                if (request.argsz as usize) < protocol::IRQ_INFO_LEN {
                    return Ok(Err(libc::EINVAL));
                }
                let Some(info) = device.irq_info(request.index) else {
                    return Ok(Err(libc::EINVAL));
                };
                if reply {
                    out.reply(header, None, |out| info.emit(request.index, out))?;
                }
                Ok(Ok(()))
            }
            Request::DeviceSetIrqs(set) => {
                if set.flags & irq_set_flags::DATA_EVENTFD != 0
                    && !fds.is_empty()
                    && fds.len() != set.count as usize
                {
                    return Ok(Err(libc::EINVAL));
                }
                if let Err(errno) = device.set_irqs(set, fds) {
                    return Ok(Err(errno));
                }
                if reply {
                    out.reply(header, None, |_| {})?;
                }
                Ok(Ok(()))
            }
            Request::RegionRead(access) => {
                if access.count > MAX_DATA_XFER_SIZE {
                    return Ok(Err(libc::EINVAL));
                }
                let count = access.count as usize;
                if !reply {
                    let mut scratch = vec![0; count];
                    return Ok(device.region_read(access.region, access.offset, &mut scratch));
                }
                // The data is read straight into the reply; a refusal takes the reply back out.
                let start = out.buf.len();
                let mut failed = None;
                out.reply(header, None, |out| {
                    access.emit(out);
                    let data_at = out.len();
                    out.resize(data_at + count, 0);
                    failed = device
                        .region_read(access.region, access.offset, &mut out[data_at..])
                        .err();
                })?;
                if let Some(errno) = failed {
                    out.buf.truncate(start);
                    return Ok(Err(errno));
                }
                Ok(Ok(()))
            }
            Request::RegionWrite(write) => {
                if let Err(errno) = device.region_write(write.region, write.offset, write.data) {
                    return Ok(Err(errno));
                }
                if reply {
                    let access = RegionAccess {
                        offset: write.offset,
                        region: write.region,
                        count: u32::try_from(write.data.len()).unwrap_or(u32::MAX),
                    };
                    out.reply(header, None, |out| access.emit(out))?;
                }
                Ok(Ok(()))
            }
            Request::DeviceReset => {
                if let Err(errno) = device.reset() {
                    return Ok(Err(errno));
                }
                if reply {
                    out.reply(header, None, |_| {})?;
                }
                Ok(Ok(()))
            }
            Request::Unsupported(_) => Ok(Err(libc::ENOTSUP)),
        }
    }

    /// The reply body for a region, and the fd to send with it. The capabilities (and the fd)
    /// go only into a reply the client's `argsz` has room for; otherwise the reply says the
    /// argsz needed, without CAPS, and the client asks again. A client that takes no fds gets
    /// no mmap. `None` if the capability would not fit an argsz.
    fn region_info_reply(
        &self,
        argsz: u32,
        index: u32,
        info: RegionInfo,
    ) -> Option<(RegionInfoReply, Option<Arc<OwnedFd>>)> {
        let mmap = info.mmap.filter(|_| self.client_max_fds >= 1);
        let areas = mmap
            .as_ref()
            .map(|mmap| mmap.areas.clone())
            .filter(|areas| !areas.is_empty());
        let needed = REGION_INFO_LEN
            + areas
                .as_ref()
                .map_or(0, |areas| RegionInfoReply::sparse_mmap_len(areas.len()));
        let needed32 = u32::try_from(needed).ok()?;
        let complete = argsz >= needed32;
        let mut flags = info.flags & !(region_flags::MMAP | region_flags::CAPS);
        if mmap.is_some() {
            flags |= region_flags::MMAP;
        }
        let body = RegionInfoReply {
            argsz: needed32,
            flags,
            index,
            size: info.size,
            offset: mmap.as_ref().map_or(0, |mmap| mmap.file_offset),
            sparse_mmap: if complete { areas } else { None },
        };
        let fd = mmap.filter(|_| complete).map(|mmap| mmap.fd);
        Some((body, fd))
    }
}

/// The fds a command takes (DMA_MAP's one, SET_IRQS's eventfds); the others are closed here.
fn close_unwanted(request: &Request<'_>, fds: Vec<OwnedFd>) -> Vec<OwnedFd> {
    let wanted = match request {
        Request::DmaMap(_) => true,
        Request::DeviceSetIrqs(set) => set.flags & irq_set_flags::DATA_EVENTFD != 0,
        _ => false,
    };
    if wanted || fds.is_empty() {
        return fds;
    }
    debug!(
        count = fds.len(),
        "closing fds of a command that takes none"
    );
    Vec::new()
}
