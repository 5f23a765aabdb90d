//! `file`: a regular file or a block device, served without ever blocking a reactor by one
//! of two engines: `uring` (the submitting reactor's io_uring, `uring.rs`) or `threads` (a
//! few worker threads per file, `threads.rs`), which also serves when the reactor has no
//! ring (io_uring refused by the kernel). Both complete through the reactor, whose epoll
//! wakes for them, so interrupt mode keeps sleeping while I/O is in flight.

mod threads;
pub mod uring;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tracing::{info, warn};

use super::{Backend, BackendError, IoDone, IoKind, IoRequest, SubmitCx};
use threads::Job;

/// O_DIRECT needs buffers aligned to the device's logical block; 4096 covers every device.
const DIRECT_ALIGN: usize = 4096;

/// Which engine runs a file's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The submitting reactor's io_uring; the worker threads where the reactor has none.
    #[default]
    Uring,
    /// The worker threads only.
    Threads,
}

#[derive(Debug, thiserror::Error)]
pub enum FileOpenError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open {path} with O_DIRECT (tmpfs and some filesystems refuse it); set direct = false"
    )]
    Direct {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the size of {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
}

/// What both engines use of a file; requests in flight hold it, so the descriptor stays
/// open until the last of them is finished, even after the namespace is removed.
pub(super) struct Shared {
    file: File,
    path: PathBuf,
    direct: bool,
    writable: bool,
    /// The worker threads' queue; `None` once closed: requests are refused from then on.
    threads: Mutex<Option<Sender<Job>>>,
}

impl Shared {
    /// Queues a job for the worker threads, or hands it back once they are stopped.
    fn send(&self, job: Job) -> Result<(), Job> {
        let threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        match threads.as_ref() {
            Some(tx) => tx.send(job).map_err(|returned| returned.0),
            None => Err(job),
        }
    }

    /// One warning for a request that failed.
    fn log_failure(&self, req: &IoRequest, result: &Result<(), BackendError>) {
        if let Err(err) = result {
            warn!(path = %self.path.display(), offset = req.offset, len = req.len,
                  error = %err, cause = ?std::error::Error::source(err), "file I/O failed");
        }
    }

    fn is_open(&self) -> bool {
        self.threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

impl Drop for Shared {
    /// Writes that finished on a ring after the backend's final flush (a namespace removed
    /// while they ran) are made durable here, after the last of them.
    fn drop(&mut self) {
        if self.writable {
            if let Err(err) = self.file.sync_data() {
                warn!(path = %self.path.display(), %err, "final flush failed");
            }
        }
    }
}

pub struct FileBackend {
    shared: Arc<Shared>,
    size: u64,
    read_only: bool,
    engine: Engine,
    /// A regular file on tmpfs or ramfs under the `uring` engine: its reads, writes and
    /// flushes are copied by the submitting reactor itself (see [`FileBackend::submit`]).
    copied_inline: bool,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl core::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "file {}", self.shared.path.display())
    }
}

impl FileBackend {
    /// Opens `path` for `engine`; the worker threads may run on `cores` (all CPUs when
    /// empty).
    pub fn open(
        path: &Path,
        direct: bool,
        read_only: bool,
        engine: Engine,
        cores: &[usize],
    ) -> Result<Self, FileOpenError> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        let flags = if direct { libc::O_DIRECT } else { 0 };
        // O_NOATIME spares every read the access-time check (a few percent of a cached
        // read); the kernel allows it only to the file's owner (or CAP_FOWNER).
        let file = match options.custom_flags(flags | libc::O_NOATIME).open(path) {
            Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
                options.custom_flags(flags).open(path)
            }
            opened => opened,
        };
        let file = file.map_err(|source| {
            if direct && source.raw_os_error() == Some(libc::EINVAL) {
                FileOpenError::Direct {
                    path: path.to_owned(),
                    source,
                }
            } else {
                FileOpenError::Open {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let size = crate::sys::file_size(&file).map_err(|source| FileOpenError::Size {
            path: path.to_owned(),
            source,
        })?;
        if size == 0 {
            return Err(FileOpenError::Empty {
                path: path.to_owned(),
            });
        }
        let copied_inline =
            engine == Engine::Uring && crate::sys::is_in_memory_file(&file).unwrap_or(false);
        if copied_inline {
            info!(path = %path.display(),
                  "file in memory (tmpfs, ramfs): reactors copy its reads and writes themselves");
        }
        let (tx, rx) = channel::<Job>();
        let shared = Arc::new(Shared {
            file,
            path: path.to_owned(),
            direct,
            writable: !read_only,
            threads: Mutex::new(Some(tx)),
        });
        let workers = threads::start(&shared, rx, cores);
        Ok(Self {
            shared,
            size,
            read_only,
            engine,
            copied_inline,
            workers: Mutex::new(workers),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Whether the reactor copies this file's data itself (a file in memory).
    pub fn copied_inline(&self) -> bool {
        self.copied_inline
    }

    /// Refuses new requests, lets the workers finish the queued ones and stops them, then
    /// makes every write durable. Only the first call does anything: nothing can be written
    /// after it. Requests on a ring have finished by then at shutdown (the reactors have
    /// stopped); after a reload, those still running are made durable as their file closes.
    fn close(&self) -> Result<(), BackendError> {
        let Some(queue) = self
            .shared
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        // Workers return once the channel is empty and has no sender left.
        drop(queue);
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        for worker in workers {
            let _ = worker.join();
        }
        if self.read_only {
            return Ok(());
        }
        self.shared.file.sync_data().map_err(BackendError::Flush)
    }
}

impl Drop for FileBackend {
    /// A namespace removed by reload is flushed here, when its last request has finished;
    /// at shutdown [`Backend::flush_for_shutdown`] has done it already.
    fn drop(&mut self) {
        if let Err(err) = self.close() {
            warn!(path = %self.shared.path.display(), error = %err,
                  cause = ?std::error::Error::source(&err), "final flush failed");
        }
    }
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn volatile_write_cache(&self) -> bool {
        true
    }

    fn flush_for_shutdown(&self) -> Result<(), BackendError> {
        self.close()
    }

    fn submit(&self, token: u64, req: IoRequest, cx: &mut SubmitCx<'_>) -> Option<IoDone> {
        let writes = !matches!(req.kind, IoKind::Read | IoKind::Flush);
        let refused = if self.read_only && writes {
            Err(BackendError::ReadOnly)
        } else if !self.shared.is_open() {
            Err(BackendError::ShuttingDown)
        } else {
            super::check_range(self.size, &req)
        };
        if let Err(err) = refused {
            return Some(IoDone {
                token,
                result: Err(err),
                buf: req.buf,
            });
        }
        // A file in memory (tmpfs, ramfs) has no device to wait for, but the kernel cannot
        // read it without blocking (no FMODE_NOWAIT: RWF_NOWAIT is refused), so io_uring
        // would hand every read to an io-wq worker thread and wake it, a context switch per
        // request on the reactor's core. Copying on the reactor costs what the worker's copy
        // costs, without the switch (it is what libaio does for SPDK's AIO bdev).
        // Write Zeroes and Deallocate (fallocate on possibly huge ranges) stay on the ring.
        if self.copied_inline
            && matches!(
                req.kind,
                IoKind::Read | IoKind::Write { .. } | IoKind::Flush
            )
        {
            let mut req = req;
            let result = threads::execute(&self.shared, &mut req);
            self.shared.log_failure(&req, &result);
            return Some(IoDone {
                token,
                result,
                buf: req.buf,
            });
        }
        if self.engine == Engine::Uring {
            if let Some(ring) = cx.uring.as_deref_mut() {
                return ring.start(uring::FileOp::new(Arc::clone(&self.shared), token, req));
            }
        }
        let job = Job {
            token,
            req,
            completions: cx.completions.clone(),
        };
        match self.shared.send(job) {
            Ok(()) => None,
            Err(job) => Some(IoDone {
                token,
                result: Err(BackendError::ShuttingDown),
                buf: job.req.buf,
            }),
        }
    }
}

/// A zeroed buffer whose usable part starts on a [`DIRECT_ALIGN`] boundary, made by
/// over-allocating, so O_DIRECT needs no unsafe allocation code.
pub(super) struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub(super) fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let misalign = storage.as_ptr() as usize % DIRECT_ALIGN;
        let start = (DIRECT_ALIGN - misalign) % DIRECT_ALIGN;
        Self {
            storage,
            start,
            len,
        }
    }

    /// Whether `buf` can go to O_DIRECT as it is.
    pub(super) fn is_aligned(buf: &[u8]) -> bool {
        buf.as_ptr() as usize % DIRECT_ALIGN == 0
    }

    pub(super) fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests;
