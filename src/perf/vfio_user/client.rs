//! The VMM's end of the vfio-user socket: commands built and replies read with the target's own
//! message types (`transport::vfio_user::protocol`), file descriptors passed with SCM_RIGHTS.
//!
//! Requests are blocking: one command, then its reply, read exactly (header first, then the
//! size it announces, never more), within the timeout. Posted commands (NO_REPLY) get no reply
//! and are what a trapped MMIO write is on the hot path: QEMU posts BAR writes the same way.
//! A reply is checked before its body is used: it must be a reply, to the command sent, with
//! its message ID, and of a size within [`MAX_REPLY`]; anything else (a short read, a lying
//! size, junk) is a [`ClientError`], never a panic.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::transport::vfio_user::protocol::{
    self, Capabilities, Command, DeviceInfo, DeviceInfoRequest, DmaMap, HEADER_LEN, Header,
    IrqInfo, IrqInfoRequest, IrqSet, MessageType, ProtocolError, RegionAccess, RegionData,
    RegionInfoReply, RegionInfoRequest, Version, flags,
};

/// The largest reply accepted: far above anything asked for (region reads of a few bytes,
/// region info with a handful of sparse areas); a header announcing more is refused before
/// its bytes are read.
pub const MAX_REPLY: usize = 64 << 10;
/// File descriptors this client sends with one message at most (and says so in VERSION).
pub const MAX_FDS: u32 = 8;
/// Room offered for a region info reply's capabilities on the first ask.
const REGION_INFO_ARGSZ: u32 = 256;
/// Control-message room for the fds a reply may carry, with alignment slack.
const RECV_CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_FDS as usize)) + 8;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket i/o failed")]
    Io(#[source] std::io::Error),
    #[error("the target closed the socket")]
    Closed,
    #[error("no reply to {command:?} within {timeout:?}")]
    Timeout { command: Command, timeout: Duration },
    #[error("malformed reply to {command:?}")]
    Malformed {
        command: Command,
        #[source]
        source: ProtocolError,
    },
    #[error("bad reply to {command:?}: {what}")]
    BadReply { command: Command, what: String },
    #[error("the target refused {command:?} (errno {errno})")]
    Refused { command: Command, errno: u32 },
}

impl From<Errno> for ClientError {
    fn from(errno: Errno) -> Self {
        Self::Io(errno.into())
    }
}

/// A reply's body and the descriptors that came with it.
#[derive(Debug)]
pub struct Reply {
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A region as DEVICE_GET_REGION_INFO describes it, with the fd to map its mappable areas.
#[derive(Debug)]
pub struct Region {
    pub info: RegionInfoReply,
    pub fd: Option<OwnedFd>,
}

/// One connection to a vfio-user server.
pub struct Client {
    socket: Arc<UnixStream>,
    timeout: Duration,
    next_id: u16,
    /// What the server said in VERSION (the defaults until then).
    server: Capabilities,
    out: Vec<u8>,
}

impl Client {
    /// Connects to the socket at `path`; replies are waited for at most `timeout` each.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let socket = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        Self::from_stream(socket, timeout)
    }

    /// A client on a connected stream (a socketpair in tests).
    pub fn from_stream(socket: UnixStream, timeout: Duration) -> Result<Self, ClientError> {
        let timeout = timeout.max(Duration::from_millis(1));
        socket
            .set_read_timeout(Some(timeout))
            .map_err(ClientError::Io)?;
        socket
            .set_write_timeout(Some(timeout))
            .map_err(ClientError::Io)?;
        Ok(Self {
            socket: Arc::new(socket),
            timeout,
            next_id: 0,
            server: Capabilities::default(),
            out: Vec::with_capacity(256),
        })
    }

    /// The socket, shared with the I/O queues that post their doorbell writes on it.
    pub fn socket(&self) -> Arc<UnixStream> {
        Arc::clone(&self.socket)
    }

    /// The server's capabilities (after [`Client::negotiate`]).
    pub fn server(&self) -> Capabilities {
        self.server
    }

    /// VERSION: 0.0 as QEMU sends it, with this client's capabilities; the server's major must
    /// be 0.
    pub fn negotiate(&mut self) -> Result<Capabilities, ClientError> {
        let ours = Version {
            major: 0,
            minor: 0,
            capabilities: Capabilities {
                max_msg_fds: MAX_FDS,
                ..Capabilities::default()
            },
        };
        let command = Command::Version;
        let reply = self.request(command, |out| ours.emit(out), &[])?;
        let theirs = Version::parse(&reply.body)
            .map_err(|source| ClientError::Malformed { command, source })?;
        if theirs.major != 0 {
            return Err(ClientError::BadReply {
                command,
                what: format!("version {}.{}, not 0.x", theirs.major, theirs.minor),
            });
        }
        self.server = theirs.capabilities;
        Ok(self.server)
    }

    /// DMA_MAP of `size` bytes of `fd` from `offset` at `iova`, readable and writable by the
    /// device.
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        offset: u64,
    ) -> Result<(), ClientError> {
        let map = DmaMap {
            flags: protocol::dma_map_flags::READ | protocol::dma_map_flags::WRITE,
            offset,
            iova,
            size,
        };
        self.request(Command::DmaMap, |out| map.emit(out), &[fd])?;
        Ok(())
    }

    pub fn device_info(&mut self) -> Result<DeviceInfo, ClientError> {
        let command = Command::DeviceGetInfo;
        let request = DeviceInfoRequest {
            argsz: u32::try_from(protocol::DEVICE_INFO_LEN).unwrap_or(u32::MAX),
        };
        let reply = self.request(command, |out| request.emit(out), &[])?;
        DeviceInfo::parse(&reply.body).map_err(|source| ClientError::Malformed { command, source })
    }

    /// DEVICE_GET_REGION_INFO, asked again with the room the server says it needs when the
    /// capabilities did not fit (once, and never for more than [`MAX_REPLY`]).
    pub fn region_info(&mut self, index: u32) -> Result<Region, ClientError> {
        let command = Command::DeviceGetRegionInfo;
        let mut argsz = REGION_INFO_ARGSZ;
        for _ in 0..2 {
            let request = RegionInfoRequest { argsz, index };
            let mut reply = self.request(command, |out| request.emit(out), &[])?;
            let info = RegionInfoReply::parse(&reply.body)
                .map_err(|source| ClientError::Malformed { command, source })?;
            if info.index != index {
                return Err(ClientError::BadReply {
                    command,
                    what: format!("info of region {} for region {index}", info.index),
                });
            }
            if info.argsz > argsz && (info.argsz as usize) <= MAX_REPLY {
                argsz = info.argsz;
                continue;
            }
            return Ok(Region {
                info,
                fd: reply.fds.pop(),
            });
        }
        Err(ClientError::BadReply {
            command,
            what: format!("region {index} info does not fit in {argsz} bytes"),
        })
    }

    /// DEVICE_GET_IRQ_INFO for `index`.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo, ClientError> {
        let command = Command::DeviceGetIrqInfo;
        let request = IrqInfoRequest {
            argsz: u32::try_from(protocol::IRQ_INFO_LEN).unwrap_or(u32::MAX),
            index,
        };
        let reply = self.request(command, |out| request.emit(out), &[])?;
        let (answered, info) = IrqInfo::parse(&reply.body)
            .map_err(|source| ClientError::Malformed { command, source })?;
        if answered != index {
            return Err(ClientError::BadReply {
                command,
                what: format!("info of interrupt index {answered} for {index}"),
            });
        }
        Ok(info)
    }

    /// DEVICE_SET_IRQS: `fds` become the eventfds of vectors `start..` of `index` (triggered),
    /// in as many messages as the server's `max_msg_fds` takes.
    pub fn set_irq_eventfds(
        &mut self,
        index: u32,
        start: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let per_message = usize::try_from(self.server.max_msg_fds.clamp(1, MAX_FDS)).unwrap_or(1);
        let mut at = start;
        for chunk in fds.chunks(per_message) {
            let count = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let set = IrqSet {
                flags: protocol::irq_set_flags::DATA_EVENTFD
                    | protocol::irq_set_flags::ACTION_TRIGGER,
                index,
                start: at,
                count,
                data: Vec::new(),
            };
            self.request(Command::DeviceSetIrqs, |out| set.emit(out), chunk)?;
            at += count;
        }
        Ok(())
    }

    /// REGION_READ of `data.len()` bytes at `offset` of `region`; the reply must carry exactly
    /// those bytes of that place.
    pub fn region_read(
        &mut self,
        region: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), ClientError> {
        let command = Command::RegionRead;
        let access = RegionAccess {
            offset,
            region,
            count: u32::try_from(data.len()).unwrap_or(u32::MAX),
        };
        let reply = self.request(command, |out| access.emit(out), &[])?;
        let got = RegionData::parse(&reply.body)
            .map_err(|source| ClientError::Malformed { command, source })?;
        if got.region != region || got.offset != offset || got.data.len() != data.len() {
            return Err(ClientError::BadReply {
                command,
                what: format!(
                    "{} bytes of region {} at {:#x} for {} of region {region} at {offset:#x}",
                    got.data.len(),
                    got.region,
                    got.offset,
                    data.len()
                ),
            });
        }
        data.copy_from_slice(got.data);
        Ok(())
    }

    /// REGION_WRITE of `data` at `offset` of `region`, waiting for the reply.
    pub fn region_write(
        &mut self,
        region: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let command = Command::RegionWrite;
        let write = RegionData {
            offset,
            region,
            data,
        };
        let reply = self.request(command, |out| write.emit(out), &[])?;
        let got = RegionAccess::parse(&reply.body)
            .map_err(|source| ClientError::Malformed { command, source })?;
        if got.count as usize != data.len() {
            return Err(ClientError::BadReply {
                command,
                what: format!("{} bytes written of {}", got.count, data.len()),
            });
        }
        Ok(())
    }

    /// Sends one command and reads its reply.
    pub fn request(
        &mut self,
        command: Command,
        body: impl FnOnce(&mut Vec<u8>),
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.out.clear();
        protocol::emit_message(&mut self.out, id, command, flags::TYPE_COMMAND, 0, body)
            .map_err(|source| ClientError::Malformed { command, source })?;
        send_all(&self.socket, &self.out, fds).map_err(|e| self.timed(command, e))?;
        self.read_reply(id, command)
    }

    /// Reads the reply to command `id`: the header, checked, then exactly its body.
    fn read_reply(&mut self, id: u16, command: Command) -> Result<Reply, ClientError> {
        let mut fds = Vec::new();
        let mut head = [0u8; HEADER_LEN];
        recv_exact(&self.socket, &mut head, &mut fds).map_err(|e| self.timed(command, e))?;
        let malformed = |source| ClientError::Malformed { command, source };
        let header = Header::parse(&head).map_err(malformed)?;
        let size = header.msg_size as usize;
        if size > MAX_REPLY {
            return Err(malformed(ProtocolError::TooLarge {
                size,
                max: MAX_REPLY,
            }));
        }
        let bad = |what: String| ClientError::BadReply { command, what };
        if header.message_type() != MessageType::Reply {
            return Err(bad(format!("message type {:?}", header.message_type())));
        }
        if header.msg_id != id || header.command != command {
            return Err(bad(format!(
                "reply to {:?} #{}, expected #{id}",
                header.command, header.msg_id
            )));
        }
        let mut body = vec![0; header.body_len()];
        recv_exact(&self.socket, &mut body, &mut fds).map_err(|e| self.timed(command, e))?;
        if header.is_error() {
            return Err(ClientError::Refused {
                command,
                errno: header.error,
            });
        }
        Ok(Reply { body, fds })
    }

    fn timed(&self, command: Command, error: ClientError) -> ClientError {
        match error {
            ClientError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                ClientError::Timeout {
                    command,
                    timeout: self.timeout,
                }
            }
            other => other,
        }
    }
}

/// Appends a posted REGION_WRITE (NO_REPLY) of `value` at `offset` of `region` to `out`: a
/// doorbell write as QEMU sends a trapped MMIO store.
pub fn post_region_write(out: &mut Vec<u8>, msg_id: u16, region: u32, offset: u64, value: u32) {
    let bytes = value.to_le_bytes();
    let write = RegionData {
        offset,
        region,
        data: &bytes,
    };
    // A 4-byte write is far below any size limit: emit cannot fail.
    let _ = protocol::emit_message(
        out,
        msg_id,
        Command::RegionWrite,
        flags::TYPE_COMMAND | flags::NO_REPLY,
        0,
        |out| write.emit(out),
    );
}

/// Writes all of `bytes`, `fds` with the first byte.
pub fn send_all(
    socket: &UnixStream,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), ClientError> {
    let mut sent = 0;
    while sent < bytes.len() {
        let iov = [IoSlice::new(&bytes[sent..])];
        let mut space = [MaybeUninit::<u8>::uninit(); RECV_CMSG_SPACE];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if sent == 0 && !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(ClientError::Io(std::io::Error::other(
                "too many file descriptors for one message",
            )));
        }
        match rustix::net::sendmsg(socket, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(Errno::PIPE | Errno::CONNRESET) => return Err(ClientError::Closed),
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes (never more: the next message stays in the socket),
/// collecting the fds that come with them.
fn recv_exact(
    socket: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), ClientError> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); RECV_CMSG_SPACE];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        match rustix::net::recvmsg(
            socket.as_fd(),
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) if r.bytes == 0 => return Err(ClientError::Closed),
            Ok(r) => got += r.bytes,
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) => return Err(ClientError::Closed),
            Err(errno) => return Err(errno.into()),
        }
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
