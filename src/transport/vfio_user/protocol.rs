//! vfio-user messages (libvfio-user `docs/vfio-user.rst`): the header and the body of every
//! command the server serves, as plain structs with `parse` and `emit`. No I/O.
//!
//! Bytes from the client are untrusted: [`frame`] checks a message's header (its size against
//! the header and a limit) before anything else reads it, and each body's `parse` checks its
//! length first, so a short or lying message is a [`ProtocolError`], never a panic. What an
//! error costs the client (an error reply, or the connection) is the caller's decision; so is
//! what an unknown command means ([`Command::Unknown`], [`Request::Unsupported`]).
//!
//! `emit` appends to a `Vec<u8>` the caller reuses; [`emit_message`] writes the header and
//! fills in the message size once the body is written.

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;

/// An errno value (`libc::EINVAL` etc.), sent in the `error` field of an error reply.
pub type Errno = i32;

/// Length of the message header.
pub const HEADER_LEN: usize = 16;
/// Length of a VERSION body before its capabilities string (major, minor).
pub const VERSION_LEN: usize = 4;
/// Length of a DMA_MAP body (`struct vfio_user_dma_map` without the header).
pub const DMA_MAP_LEN: usize = 32;
/// Length of a DMA_UNMAP body without a dirty bitmap.
pub const DMA_UNMAP_LEN: usize = 24;
/// Length of `struct vfio_device_info` (argsz, flags, num_regions, num_irqs).
pub const DEVICE_INFO_LEN: usize = 16;
/// Length of `struct vfio_region_info` (argsz, flags, index, cap_offset, size, offset).
pub const REGION_INFO_LEN: usize = 32;
/// Length of `struct vfio_irq_info` (argsz, flags, index, count).
pub const IRQ_INFO_LEN: usize = 16;
/// Length of `struct vfio_irq_set` before its data (argsz, flags, index, start, count).
pub const IRQ_SET_LEN: usize = 20;
/// Length of a REGION_READ / REGION_WRITE body before its data (offset, region, count).
pub const REGION_ACCESS_LEN: usize = 16;
/// Length of a region capability header (id, version, next).
pub const CAP_HEADER_LEN: usize = 8;
/// Length of one sparse mmap area (offset, size).
pub const SPARSE_AREA_LEN: usize = 16;

/// Header `flags` (vfio-user.rst, "Header").
pub mod flags {
    /// Bits 0-3: the message type.
    pub const TYPE_MASK: u32 = 0xf;
    pub const TYPE_COMMAND: u32 = 0x0;
    pub const TYPE_REPLY: u32 = 0x1;
    /// The sender wants no reply to this command.
    pub const NO_REPLY: u32 = 0x10;
    /// A reply that carries an errno in `error` instead of a body.
    pub const ERROR: u32 = 0x20;
}

/// DMA_MAP `flags` (vfio-user.rst, "VFIO_USER_DMA_MAP").
pub mod dma_map_flags {
    pub const READ: u32 = 0x1;
    pub const WRITE: u32 = 0x2;
}

/// DMA_UNMAP `flags` (vfio-user.rst, "VFIO_USER_DMA_UNMAP").
pub mod dma_unmap_flags {
    /// Return the dirty bitmap of the range; not served (no migration).
    pub const GET_DIRTY_BITMAP: u32 = 0x1;
    /// Unmap every region; iova and size are 0.
    pub const ALL: u32 = 0x2;
}

/// DEVICE_GET_INFO `flags` (`VFIO_DEVICE_FLAGS_*`).
pub mod device_flags {
    pub const RESET: u32 = 0x1;
    pub const PCI: u32 = 0x2;
}

/// DEVICE_GET_REGION_INFO `flags` (`VFIO_REGION_INFO_FLAG_*`) and capability ids.
pub mod region_flags {
    pub const READ: u32 = 0x1;
    pub const WRITE: u32 = 0x2;
    pub const MMAP: u32 = 0x4;
    /// A capability chain follows the `vfio_region_info`, from `cap_offset`.
    pub const CAPS: u32 = 0x8;
    /// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: the areas of the region that may be mmapped.
    pub const CAP_SPARSE_MMAP: u16 = 1;
    /// The version of the sparse mmap capability.
    pub const CAP_SPARSE_MMAP_VERSION: u16 = 1;
}

/// DEVICE_GET_IRQ_INFO `flags` (`VFIO_IRQ_INFO_*`).
pub mod irq_info_flags {
    pub const EVENTFD: u32 = 0x1;
    pub const MASKABLE: u32 = 0x2;
    pub const AUTOMASKED: u32 = 0x4;
    pub const NORESIZE: u32 = 0x8;
}

/// DEVICE_SET_IRQS `flags` (`VFIO_IRQ_SET_*`).
pub mod irq_set_flags {
    pub const DATA_NONE: u32 = 0x1;
    pub const DATA_BOOL: u32 = 0x2;
    /// The message carries `count` eventfds (or none, to unassign `count` vectors).
    pub const DATA_EVENTFD: u32 = 0x4;
    pub const ACTION_MASK: u32 = 0x8;
    pub const ACTION_UNMASK: u32 = 0x10;
    pub const ACTION_TRIGGER: u32 = 0x20;
}

/// Command codes (vfio-user.rst, "Commands").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Version,
    DmaMap,
    DmaUnmap,
    DeviceGetInfo,
    DeviceGetRegionInfo,
    DeviceGetRegionIoFds,
    DeviceGetIrqInfo,
    DeviceSetIrqs,
    RegionRead,
    RegionWrite,
    DmaRead,
    DmaWrite,
    DeviceReset,
    DirtyPages,
    RegionWriteMulti,
    DeviceFeature,
    MigDataRead,
    MigDataWrite,
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(code: u16) -> Self {
        match code {
            0x1 => Self::Version,
            0x2 => Self::DmaMap,
            0x3 => Self::DmaUnmap,
            0x4 => Self::DeviceGetInfo,
            0x5 => Self::DeviceGetRegionInfo,
            0x6 => Self::DeviceGetRegionIoFds,
            0x7 => Self::DeviceGetIrqInfo,
            0x8 => Self::DeviceSetIrqs,
            0x9 => Self::RegionRead,
            0xa => Self::RegionWrite,
            0xb => Self::DmaRead,
            0xc => Self::DmaWrite,
            0xd => Self::DeviceReset,
            0xe => Self::DirtyPages,
            0xf => Self::RegionWriteMulti,
            0x10 => Self::DeviceFeature,
            0x11 => Self::MigDataRead,
            0x12 => Self::MigDataWrite,
            other => Self::Unknown(other),
        }
    }
}

impl From<Command> for u16 {
    fn from(command: Command) -> Self {
        match command {
            Command::Version => 0x1,
            Command::DmaMap => 0x2,
            Command::DmaUnmap => 0x3,
            Command::DeviceGetInfo => 0x4,
            Command::DeviceGetRegionInfo => 0x5,
            Command::DeviceGetRegionIoFds => 0x6,
            Command::DeviceGetIrqInfo => 0x7,
            Command::DeviceSetIrqs => 0x8,
            Command::RegionRead => 0x9,
            Command::RegionWrite => 0xa,
            Command::DmaRead => 0xb,
            Command::DmaWrite => 0xc,
            Command::DeviceReset => 0xd,
            Command::DirtyPages => 0xe,
            Command::RegionWriteMulti => 0xf,
            Command::DeviceFeature => 0x10,
            Command::MigDataRead => 0x11,
            Command::MigDataWrite => 0x12,
            Command::Unknown(code) => code,
        }
    }
}

/// What can be wrong with the bytes of a message.
#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("{what} needs {needed} bytes, has {len}")]
    Truncated {
        what: &'static str,
        needed: usize,
        len: usize,
    },
    #[error("message size {size} is smaller than the header")]
    SizeBelowHeader { size: u32 },
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("REGION_WRITE count {count} does not match its {data} data bytes")]
    CountMismatch { count: u32, data: usize },
    #[error("VERSION capabilities are not the JSON object they should be")]
    Capabilities(#[source] serde_json::Error),
    #[error("region capability chain is broken at offset {offset}")]
    CapabilityChain { offset: u32 },
}

/// The type bits of a header's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Command,
    Reply,
    Unknown(u8),
}

/// The 16-byte header every message starts with (vfio-user.rst, "Header").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_id: u16,
    pub command: Command,
    /// The whole message, header included.
    pub msg_size: u32,
    pub flags: u32,
    /// An errno, in replies with [`flags::ERROR`].
    pub error: u32,
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes; its size must cover the header.
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("message header", bytes, HEADER_LEN)?;
        let header = Self {
            msg_id: r.u16(),
            command: Command::from(r.u16()),
            msg_size: r.u32(),
            flags: r.u32(),
            error: r.u32(),
        };
        if (header.msg_size as usize) < HEADER_LEN {
            return Err(ProtocolError::SizeBelowHeader {
                size: header.msg_size,
            });
        }
        Ok(header)
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u16(out, self.msg_id);
        put_u16(out, self.command.into());
        put_u32(out, self.msg_size);
        put_u32(out, self.flags);
        put_u32(out, self.error);
    }

    pub fn message_type(&self) -> MessageType {
        match self.flags & flags::TYPE_MASK {
            flags::TYPE_COMMAND => MessageType::Command,
            flags::TYPE_REPLY => MessageType::Reply,
            // The mask keeps four bits.
            other => MessageType::Unknown(u8::try_from(other).unwrap_or(u8::MAX)),
        }
    }

    pub fn no_reply(&self) -> bool {
        self.flags & flags::NO_REPLY != 0
    }

    pub fn is_error(&self) -> bool {
        self.flags & flags::ERROR != 0
    }

    /// The body's length (`msg_size` was checked to cover the header).
    pub fn body_len(&self) -> usize {
        (self.msg_size as usize).saturating_sub(HEADER_LEN)
    }
}

/// The header and length of the first message in `buf` once all of it is there; `None` while
/// bytes are missing. A size below the header or above `max` is an error as soon as the header
/// is complete, so a lying size is caught before its bytes are waited for.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<(Header, usize)>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = Header::parse(buf)?;
    let size = header.msg_size as usize;
    if size > max {
        return Err(ProtocolError::TooLarge { size, max });
    }
    Ok((buf.len() >= size).then_some((header, size)))
}

/// Appends a whole message: a header with these fields, then what `body` writes; the header's
/// `msg_size` is filled in afterwards.
pub fn emit_message(
    out: &mut Vec<u8>,
    msg_id: u16,
    command: Command,
    flags: u32,
    error: u32,
    body: impl FnOnce(&mut Vec<u8>),
) -> Result<(), ProtocolError> {
    let start = out.len();
    Header {
        msg_id,
        command,
        msg_size: 0,
        flags,
        error,
    }
    .emit(out);
    body(out);
    let size = out.len() - start;
    let Ok(size32) = u32::try_from(size) else {
        out.truncate(start);
        return Err(ProtocolError::TooLarge {
            size,
            max: u32::MAX as usize,
        });
    };
    out[start + 4..start + 8].copy_from_slice(&size32.to_le_bytes());
    Ok(())
}

/// Appends a successful reply to `request`: same msg_id and command, type reply.
pub fn emit_reply(
    out: &mut Vec<u8>,
    request: &Header,
    body: impl FnOnce(&mut Vec<u8>),
) -> Result<(), ProtocolError> {
    emit_message(
        out,
        request.msg_id,
        request.command,
        flags::TYPE_REPLY,
        0,
        body,
    )
}

/// Appends an error reply to `request`, carrying `errno` and no body.
pub fn emit_error_reply(out: &mut Vec<u8>, request: &Header, errno: u32) {
    Header {
        msg_id: request.msg_id,
        command: request.command,
        msg_size: len32(HEADER_LEN),
        flags: flags::TYPE_REPLY | flags::ERROR,
        error: errno,
    }
    .emit(out);
}

/// A command's body, parsed for its command code.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Version(Version),
    DmaMap(DmaMap),
    DmaUnmap(DmaUnmap),
    DeviceGetInfo(DeviceInfoRequest),
    DeviceGetRegionInfo(RegionInfoRequest),
    DeviceGetIrqInfo(IrqInfoRequest),
    DeviceSetIrqs(IrqSet),
    RegionRead(RegionAccess),
    RegionWrite(RegionData<'a>),
    DeviceReset,
    /// A command that is not served here (or not known at all); its body is not read.
    Unsupported(Command),
}

impl<'a> Request<'a> {
    /// Parses the body of a command (the bytes after its header).
    pub fn parse(command: Command, body: &'a [u8]) -> Result<Self, ProtocolError> {
        Ok(match command {
            Command::Version => Self::Version(Version::parse(body)?),
            Command::DmaMap => Self::DmaMap(DmaMap::parse(body)?),
            Command::DmaUnmap => Self::DmaUnmap(DmaUnmap::parse(body)?),
            Command::DeviceGetInfo => Self::DeviceGetInfo(DeviceInfoRequest::parse(body)?),
            Command::DeviceGetRegionInfo => {
                Self::DeviceGetRegionInfo(RegionInfoRequest::parse(body)?)
            }
            Command::DeviceGetIrqInfo => Self::DeviceGetIrqInfo(IrqInfoRequest::parse(body)?),
            Command::DeviceSetIrqs => Self::DeviceSetIrqs(IrqSet::parse(body)?),
            Command::RegionRead => Self::RegionRead(RegionAccess::parse(body)?),
            Command::RegionWrite => Self::RegionWrite(RegionData::parse(body)?),
            Command::DeviceReset => Self::DeviceReset,
            other => Self::Unsupported(other),
        })
    }
}

/// VERSION, both ways: major, minor, then a NUL-terminated JSON object
/// `{"capabilities":{...}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
    pub capabilities: Capabilities,
}

/// The members of `"capabilities"` this side reads or writes (vfio-user.rst, "Version").
/// Members not named here (`"migration"`, anything new) are ignored when parsing; absent
/// members take the specification's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// File descriptors the sender accepts with one message (default 1).
    pub max_msg_fds: u32,
    /// Data bytes the sender accepts in one region or DMA message (default 1 MiB).
    pub max_data_xfer_size: u32,
    /// DMA page sizes, or'ed (default 4096).
    pub pgsizes: u64,
    /// DMA maps that may be live at once (default 65535).
    pub max_dma_maps: u32,
    /// REGION_WRITE_MULTI support; written only when true.
    pub write_multiple: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            max_msg_fds: 1,
            max_data_xfer_size: 1 << 20,
            pgsizes: 4096,
            max_dma_maps: 65535,
            write_multiple: false,
        }
    }
}

/// The JSON text of a VERSION body, as emitted.
#[derive(Serialize)]
struct VersionJson {
    capabilities: Option<CapabilitiesJson>,
}

/// The `"capabilities"` member of a VERSION's JSON text, if there is one. The text and the
/// member must be JSON objects (serde alone would take a struct from an array too).
fn capabilities_json(text: &[u8]) -> Result<Option<CapabilitiesJson>, serde_json::Error> {
    use serde::de::Error as _;
    use serde_json::Value;

    let Value::Object(mut top) = serde_json::from_slice(text)? else {
        return Err(serde_json::Error::custom(
            "the version data is not a JSON object",
        ));
    };
    match top.remove("capabilities") {
        None => Ok(None),
        Some(caps @ Value::Object(_)) => serde_json::from_value(caps).map(Some),
        Some(_) => Err(serde_json::Error::custom(
            "capabilities is not a JSON object",
        )),
    }
}

#[derive(Serialize, Deserialize)]
struct CapabilitiesJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_msg_fds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_data_xfer_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pgsizes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_dma_maps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_multiple: Option<bool>,
}

impl Version {
    /// Reads major and minor, then the capabilities up to the first NUL (the terminator is not
    /// required; no string at all means the defaults).
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("VERSION", body, VERSION_LEN)?;
        let major = r.u16();
        let minor = r.u16();
        let text = r.rest();
        let text = text
            .iter()
            .position(|&b| b == 0)
            .map_or(text, |nul| &text[..nul]);
        let mut capabilities = Capabilities::default();
        if !text.iter().all(u8::is_ascii_whitespace) {
            if let Some(caps) = capabilities_json(text).map_err(ProtocolError::Capabilities)? {
                let d = Capabilities::default();
                capabilities = Capabilities {
                    max_msg_fds: caps.max_msg_fds.unwrap_or(d.max_msg_fds),
                    max_data_xfer_size: caps.max_data_xfer_size.unwrap_or(d.max_data_xfer_size),
                    pgsizes: caps.pgsizes.unwrap_or(d.pgsizes),
                    max_dma_maps: caps.max_dma_maps.unwrap_or(d.max_dma_maps),
                    write_multiple: caps.write_multiple.unwrap_or(d.write_multiple),
                };
            }
        }
        Ok(Self {
            major,
            minor,
            capabilities,
        })
    }

    /// Writes major, minor and every capability (`write_multiple` only when true), compact and
    /// NUL-terminated: `{"capabilities":{"max_msg_fds":8,...}}`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u16(out, self.major);
        put_u16(out, self.minor);
        let caps = &self.capabilities;
        let json = VersionJson {
            capabilities: Some(CapabilitiesJson {
                max_msg_fds: Some(caps.max_msg_fds),
                max_data_xfer_size: Some(caps.max_data_xfer_size),
                pgsizes: Some(caps.pgsizes),
                max_dma_maps: Some(caps.max_dma_maps),
                write_multiple: caps.write_multiple.then_some(true),
            }),
        };
        // Serializing plain integers and booleans into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &json);
        out.push(0);
    }
}

/// DMA_MAP: guest memory `[iova, iova + size)` is the client's fd (sent with the message, if
/// any) from `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMap {
    /// [`dma_map_flags`].
    pub flags: u32,
    pub offset: u64,
    pub iova: u64,
    pub size: u64,
}

impl DmaMap {
    /// Reads argsz (not checked: the message size bounds the body), flags, offset, iova, size.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DMA_MAP", body, DMA_MAP_LEN)?;
        let _argsz = r.u32();
        Ok(Self {
            flags: r.u32(),
            offset: r.u64(),
            iova: r.u64(),
            size: r.u64(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u32(out, len32(DMA_MAP_LEN));
        put_u32(out, self.flags);
        put_u64(out, self.offset);
        put_u64(out, self.iova);
        put_u64(out, self.size);
    }
}

/// DMA_UNMAP, the command and its reply (which echoes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaUnmap {
    /// [`dma_unmap_flags`].
    pub flags: u32,
    pub iova: u64,
    pub size: u64,
}

impl DmaUnmap {
    /// Reads argsz (not checked), flags, iova, size; a dirty bitmap after them is not read.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DMA_UNMAP", body, DMA_UNMAP_LEN)?;
        let _argsz = r.u32();
        Ok(Self {
            flags: r.u32(),
            iova: r.u64(),
            size: r.u64(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u32(out, len32(DMA_UNMAP_LEN));
        put_u32(out, self.flags);
        put_u64(out, self.iova);
        put_u64(out, self.size);
    }
}

/// DEVICE_GET_INFO command: a `vfio_device_info` of which only argsz counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfoRequest {
    pub argsz: u32,
}

impl DeviceInfoRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_INFO", body, DEVICE_INFO_LEN)?;
        Ok(Self { argsz: r.u32() })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        out.extend_from_slice(&[0; DEVICE_INFO_LEN - 4]);
    }
}

/// DEVICE_GET_INFO reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// [`device_flags`].
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

impl DeviceInfo {
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_INFO reply", body, DEVICE_INFO_LEN)?;
        let _argsz = r.u32();
        Ok(Self {
            flags: r.u32(),
            num_regions: r.u32(),
            num_irqs: r.u32(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u32(out, len32(DEVICE_INFO_LEN));
        put_u32(out, self.flags);
        put_u32(out, self.num_regions);
        put_u32(out, self.num_irqs);
    }
}

/// DEVICE_GET_REGION_INFO command: a `vfio_region_info` of which argsz and index count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfoRequest {
    /// The room the client has for the reply's `vfio_region_info` and capabilities.
    pub argsz: u32,
    pub index: u32,
}

impl RegionInfoRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_REGION_INFO", body, REGION_INFO_LEN)?;
        let argsz = r.u32();
        let _flags = r.u32();
        Ok(Self {
            argsz,
            index: r.u32(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, 0);
        put_u32(out, self.index);
        out.extend_from_slice(&[0; REGION_INFO_LEN - 12]);
    }
}

/// DEVICE_GET_REGION_INFO reply: the `vfio_region_info`, then (when `sparse_mmap` is there)
/// one sparse mmap capability at offset [`REGION_INFO_LEN`], the start of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfoReply {
    /// The size the whole reply body needs; more than the body when the client's argsz was too
    /// small for the capabilities (it asks again with this argsz).
    pub argsz: u32,
    /// [`region_flags`] without CAPS: emit sets CAPS when `sparse_mmap` is there.
    pub flags: u32,
    pub index: u32,
    pub size: u64,
    /// The file offset of the region in the fd sent with the reply.
    pub offset: u64,
    /// The areas (offset, size) within the region that may be mmapped.
    pub sparse_mmap: Option<Vec<(u64, u64)>>,
}

impl RegionInfoReply {
    /// Bytes of a sparse mmap capability with `areas` areas.
    pub fn sparse_mmap_len(areas: usize) -> usize {
        CAP_HEADER_LEN + 8 + areas.saturating_mul(SPARSE_AREA_LEN)
    }

    /// Bytes this reply's body takes when emitted.
    pub fn emitted_len(&self) -> usize {
        REGION_INFO_LEN
            + self
                .sparse_mmap
                .as_ref()
                .map_or(0, |areas| Self::sparse_mmap_len(areas.len()))
    }

    /// Reads the `vfio_region_info` and walks its capability chain within the body (offsets
    /// count from the body's start); sparse mmap areas of every sparse capability are
    /// collected, other capabilities skipped. A chain that leaves the body or does not move
    /// forward is an error.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_REGION_INFO reply", body, REGION_INFO_LEN)?;
        let argsz = r.u32();
        let flags = r.u32();
        let index = r.u32();
        let cap_offset = r.u32();
        let size = r.u64();
        let offset = r.u64();
        let mut sparse_mmap = None;
        if flags & region_flags::CAPS != 0 {
            let mut next = cap_offset;
            let mut floor = REGION_INFO_LEN;
            while next != 0 {
                let at = next as usize;
                let broken = ProtocolError::CapabilityChain { offset: next };
                if at < floor {
                    return Err(broken);
                }
                let Some(cap) = body.get(at..) else {
                    return Err(broken);
                };
                let Ok(mut c) = Reader::new("region capability", cap, CAP_HEADER_LEN) else {
                    return Err(broken);
                };
                let id = c.u16();
                let _version = c.u16();
                next = c.u32();
                floor = at + CAP_HEADER_LEN;
                if id != region_flags::CAP_SPARSE_MMAP {
                    continue;
                }
                let Ok(mut s) = Reader::new("sparse mmap capability", c.rest(), 8) else {
                    return Err(broken);
                };
                let nr_areas = s.u32() as usize;
                let _reserved = s.u32();
                let areas_bytes = s.rest();
                if areas_bytes.len() / SPARSE_AREA_LEN < nr_areas {
                    return Err(broken);
                }
                let areas: &mut Vec<(u64, u64)> = sparse_mmap.get_or_insert_with(Vec::new);
                for area in areas_bytes.chunks_exact(SPARSE_AREA_LEN).take(nr_areas) {
                    let mut a = Reader::new("sparse mmap area", area, SPARSE_AREA_LEN)?;
                    areas.push((a.u64(), a.u64()));
                }
            }
        }
        Ok(Self {
            argsz,
            flags: flags & !region_flags::CAPS,
            index,
            size,
            offset,
            sparse_mmap,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let caps = self.sparse_mmap.is_some();
        put_u32(out, self.argsz);
        put_u32(
            out,
            if caps {
                self.flags | region_flags::CAPS
            } else {
                self.flags & !region_flags::CAPS
            },
        );
        put_u32(out, self.index);
        put_u32(out, if caps { len32(REGION_INFO_LEN) } else { 0 });
        put_u64(out, self.size);
        put_u64(out, self.offset);
        if let Some(areas) = &self.sparse_mmap {
            put_u16(out, region_flags::CAP_SPARSE_MMAP);
            put_u16(out, region_flags::CAP_SPARSE_MMAP_VERSION);
            put_u32(out, 0);
            put_u32(out, u32::try_from(areas.len()).unwrap_or(u32::MAX));
            put_u32(out, 0);
            for &(offset, size) in areas {
                put_u64(out, offset);
                put_u64(out, size);
            }
        }
    }
}

/// DEVICE_GET_IRQ_INFO command: a `vfio_irq_info` of which argsz and index count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfoRequest {
    pub argsz: u32,
    pub index: u32,
}

impl IrqInfoRequest {
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_IRQ_INFO", body, IRQ_INFO_LEN)?;
        let argsz = r.u32();
        let _flags = r.u32();
        Ok(Self {
            argsz,
            index: r.u32(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u32(out, self.argsz);
        put_u32(out, 0);
        put_u32(out, self.index);
        put_u32(out, 0);
    }
}

/// DEVICE_GET_IRQ_INFO reply for one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfo {
    /// [`irq_info_flags`].
    pub flags: u32,
    pub count: u32,
}

impl IrqInfo {
    /// Reads a reply body: the index it answers for, and the info.
    pub fn parse(body: &[u8]) -> Result<(u32, Self), ProtocolError> {
        let mut r = Reader::new("DEVICE_GET_IRQ_INFO reply", body, IRQ_INFO_LEN)?;
        let _argsz = r.u32();
        let flags = r.u32();
        let index = r.u32();
        Ok((
            index,
            Self {
                flags,
                count: r.u32(),
            },
        ))
    }

    pub fn emit(&self, index: u32, out: &mut Vec<u8>) {
        put_u32(out, len32(IRQ_INFO_LEN));
        put_u32(out, self.flags);
        put_u32(out, index);
        put_u32(out, self.count);
    }
}

/// DEVICE_SET_IRQS: vectors `[start, start + count)` of `index`; eventfds come with the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrqSet {
    /// [`irq_set_flags`].
    pub flags: u32,
    pub index: u32,
    pub start: u32,
    pub count: u32,
    /// With DATA_BOOL, one byte per vector; empty otherwise.
    pub data: Vec<u8>,
}

impl IrqSet {
    /// Reads argsz (not checked), flags, index, start, count, and with DATA_BOOL the `count`
    /// bytes after them (which must be there); other trailing bytes are not read.
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("DEVICE_SET_IRQS", body, IRQ_SET_LEN)?;
        let _argsz = r.u32();
        let flags = r.u32();
        let index = r.u32();
        let start = r.u32();
        let count = r.u32();
        let mut data = Vec::new();
        if flags & irq_set_flags::DATA_BOOL != 0 {
            let rest = r.rest();
            let needed = count as usize;
            let Some(bools) = rest.get(..needed) else {
                return Err(ProtocolError::Truncated {
                    what: "DEVICE_SET_IRQS with DATA_BOOL",
                    needed: IRQ_SET_LEN.saturating_add(needed),
                    len: body.len(),
                });
            };
            data = bools.to_vec();
        }
        Ok(Self {
            flags,
            index,
            start,
            count,
            data,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let argsz = IRQ_SET_LEN.saturating_add(self.data.len());
        put_u32(out, u32::try_from(argsz).unwrap_or(u32::MAX));
        put_u32(out, self.flags);
        put_u32(out, self.index);
        put_u32(out, self.start);
        put_u32(out, self.count);
        out.extend_from_slice(&self.data);
    }
}

/// REGION_READ command, and the REGION_WRITE reply: offset, region, count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionAccess {
    pub offset: u64,
    pub region: u32,
    pub count: u32,
}

impl RegionAccess {
    pub fn parse(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new("region access", body, REGION_ACCESS_LEN)?;
        Ok(Self {
            offset: r.u64(),
            region: r.u32(),
            count: r.u32(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        put_u64(out, self.offset);
        put_u32(out, self.region);
        put_u32(out, self.count);
    }
}

/// REGION_WRITE command, and the REGION_READ reply: offset, region, count, then exactly
/// `count` bytes of data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionData<'a> {
    pub offset: u64,
    pub region: u32,
    pub data: &'a [u8],
}

impl<'a> RegionData<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let access = RegionAccess::parse(body)?;
        let data = &body[REGION_ACCESS_LEN..];
        if data.len() != access.count as usize {
            return Err(ProtocolError::CountMismatch {
                count: access.count,
                data: data.len(),
            });
        }
        Ok(Self {
            offset: access.offset,
            region: access.region,
            data,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        RegionAccess {
            offset: self.offset,
            region: self.region,
            count: u32::try_from(self.data.len()).unwrap_or(u32::MAX),
        }
        .emit(out);
        out.extend_from_slice(self.data);
    }
}

/// Little-endian fields from a slice whose length was checked when the reader was made; a read
/// past the end (a bug, not bad input) yields zeroes rather than a panic.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(what: &'static str, bytes: &'a [u8], needed: usize) -> Result<Self, ProtocolError> {
        if bytes.len() < needed {
            return Err(ProtocolError::Truncated {
                what,
                needed,
                len: bytes.len(),
            });
        }
        Ok(Self { rest: bytes })
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                *head
            }
            None => {
                debug_assert!(false, "read past the checked length");
                [0; N]
            }
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

/// A length constant as the u32 the wire carries (every constant here is far below 4 GiB).
#[allow(clippy::cast_possible_truncation)]
const fn len32(len: usize) -> u32 {
    len as u32
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}
