//! Namespace storage: `ram`, `null` and `file` backends.
//!
//! A backend receives byte-addressed requests that the controller has already checked against
//! the namespace size and block size. Synchronous backends (`ram`, `null`) complete inline;
//! asynchronous ones (`file`) complete later, on the reactor's io_uring ([`Uring`]) or through
//! its [`Completions`]. Both wake the reactor through an eventfd it watches like any other
//! event source, so interrupt mode keeps sleeping while I/O is in flight and wakes the moment
//! it completes.

pub mod file;
pub mod null;
pub mod ram;

pub use file::uring::Uring;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::nvme::Status;
use crate::sys::EventFd;

/// What to do with a byte range of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoKind {
    /// Fill `buf` (already `len` bytes long) from `offset`.
    Read,
    /// Store `buf` at `offset`; with `fua` the data is durable before completion.
    Write { fua: bool },
    /// Make every completed write durable (fdatasync for files).
    Flush,
    /// Zero `len` bytes at `offset`; `buf` is empty.
    WriteZeroes { fua: bool },
    /// Deallocate (discard) these `(offset, len)` byte ranges; `buf` is empty. Reads of
    /// deallocated ranges return zeroes.
    Deallocate(Vec<(u64, u64)>),
}

/// One request to a backend.
#[derive(Debug)]
pub struct IoRequest {
    pub kind: IoKind,
    /// Byte offset into the namespace.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Data to write, or the buffer to read into; handed back in [`IoDone`].
    pub buf: Vec<u8>,
}

/// A finished request: the caller's token, the outcome and the buffer it lent.
#[derive(Debug)]
pub struct IoDone {
    pub token: u64,
    pub result: Result<(), BackendError>,
    pub buf: Vec<u8>,
}

/// Why a backend request failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("read failed")]
    Read(#[source] std::io::Error),
    #[error("write failed")]
    Write(#[source] std::io::Error),
    #[error("flush failed")]
    Flush(#[source] std::io::Error),
    #[error("range {offset}+{len} is beyond the end of the namespace")]
    OutOfRange { offset: u64, len: u64 },
    #[error("namespace is read-only")]
    ReadOnly,
    #[error("backend is shutting down")]
    ShuttingDown,
}

impl BackendError {
    /// The one place a backend failure becomes an NVMe status.
    pub fn status(&self) -> Status {
        match self {
            Self::Read(_) => Status::UNRECOVERED_READ_ERROR,
            // What nvmet answers for a full filesystem: the host should not retry.
            Self::Write(err) | Self::Flush(err) if is_full(err) => {
                Status::CAPACITY_EXCEEDED.with_dnr()
            }
            // The filesystem went read-only under us (ext4 `errors=remount-ro`, ...).
            Self::Write(err) | Self::Flush(err) if err.raw_os_error() == Some(libc::EROFS) => {
                Status::NAMESPACE_WRITE_PROTECTED.with_dnr()
            }
            Self::Write(_) | Self::Flush(_) => Status::WRITE_FAULT,
            Self::OutOfRange { .. } => Status::LBA_OUT_OF_RANGE.with_dnr(),
            Self::ReadOnly => Status::ATTEMPTED_WRITE_TO_READ_ONLY_RANGE.with_dnr(),
            Self::ShuttingDown => Status::INTERNAL_ERROR,
        }
    }
}

fn is_full(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Namespace storage shared by every reactor that serves the namespace.
pub trait Backend: Send + Sync + core::fmt::Debug {
    /// Capacity in bytes.
    fn size(&self) -> u64;

    /// Whether writes are refused.
    fn read_only(&self) -> bool {
        false
    }

    /// Whether this backend has a volatile write cache worth flushing (reported in Identify).
    fn volatile_write_cache(&self) -> bool {
        false
    }

    /// Whether every read of an in-range byte range returns zeroes and cannot fail, so a
    /// transport may send zeroes without asking (and without a buffer to fill).
    fn reads_zeroes(&self) -> bool {
        false
    }

    /// Stops taking requests, finishes those already queued and makes every completed write
    /// durable (fdatasync for files). Shutdown calls it once no reactor runs any more;
    /// requests after it fail with [`BackendError::ShuttingDown`]. Backends with nothing to
    /// make durable (`ram`, `null`) do nothing.
    fn flush_for_shutdown(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Starts `req`. Returns `Some` when it finished inline; otherwise the result arrives later
    /// through the reactor (its completion queue or its ring), tagged with `token`.
    fn submit(&self, token: u64, req: IoRequest, cx: &mut SubmitCx<'_>) -> Option<IoDone>;
}

/// What a backend may use of the reactor that submits a request: its completion queue and,
/// where the kernel allowed one, its io_uring.
pub struct SubmitCx<'a> {
    pub completions: &'a Completions,
    pub uring: Option<&'a mut Uring>,
}

impl<'a> SubmitCx<'a> {
    /// A submitter with no ring: asynchronous backends use their threads.
    pub fn new(completions: &'a Completions) -> Self {
        Self {
            completions,
            uring: None,
        }
    }
}

/// A reactor's queue of finished asynchronous requests, and the eventfd that rouses it.
#[derive(Clone)]
pub struct Completions {
    queue: Arc<Mutex<Vec<IoDone>>>,
    /// Set after a request is queued, so the reactor takes the lock only when there is one.
    pending: Arc<AtomicBool>,
    /// Notified once per batch; the reactor registers it in its poll ([`Self::wake_fd`]).
    wake: Arc<EventFd>,
}

impl core::fmt::Debug for Completions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Completions").finish_non_exhaustive()
    }
}

impl Completions {
    /// An empty queue with its own eventfd, which the owner must watch to learn of
    /// completions while it sleeps.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            queue: Arc::new(Mutex::new(Vec::new())),
            pending: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(EventFd::new()?),
        })
    }

    /// The descriptor that becomes readable when completions are queued. It is never read
    /// back: watched edge-triggered, each wake raises an event on its own.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Queues a finished request and wakes the reactor if the queue was empty (one wake per
    /// batch, not per request).
    pub fn push(&self, done: IoDone) {
        let was_empty = {
            let mut queue = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let was_empty = queue.is_empty();
            queue.push(done);
            was_empty
        };
        self.pending.store(true, Ordering::Release);
        if was_empty {
            // A wake cannot fail short of a broken descriptor; the flag above still tells
            // the reactor's next turn.
            let _ = self.wake.notify();
        }
    }

    /// Moves every finished request into `out`; false (without locking) if none was queued.
    pub fn drain_into(&self, out: &mut Vec<IoDone>) -> bool {
        if !self.pending.swap(false, Ordering::Acquire) {
            return false;
        }
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.append(&mut queue);
        true
    }
}

/// Refuses requests that reach past the end of the namespace. The controller checks LBA
/// ranges first; this keeps a backend safe on its own.
fn check_range(size: u64, req: &IoRequest) -> Result<(), BackendError> {
    let single = [(req.offset, req.len)];
    let ranges: &[(u64, u64)] = match &req.kind {
        IoKind::Deallocate(list) => list,
        _ => &single,
    };
    for &(offset, len) in ranges {
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(BackendError::OutOfRange { offset, len });
        }
    }
    if matches!(req.kind, IoKind::Read | IoKind::Write { .. }) && req.buf.len() as u64 != req.len {
        return Err(BackendError::OutOfRange {
            offset: req.offset,
            len: req.buf.len() as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real mio poll and the completion queue that wakes it.
    pub fn completions() -> (mio::Poll, Completions) {
        let poll = mio::Poll::new().expect("poll");
        let completions = Completions::new().expect("eventfd");
        poll.registry()
            .register(
                &mut completions.wake_fd(),
                mio::Token(0),
                mio::Interest::READABLE,
            )
            .expect("register the eventfd");
        (poll, completions)
    }

    /// Runs one request on a backend that completes inline.
    pub fn run(
        backend: &dyn Backend,
        completions: &Completions,
        kind: IoKind,
        offset: u64,
        buf: Vec<u8>,
    ) -> IoDone {
        let len = buf.len() as u64;
        backend
            .submit(
                1,
                IoRequest {
                    kind,
                    offset,
                    len,
                    buf,
                },
                &mut SubmitCx::new(completions),
            )
            .expect("completes inline")
    }
}
