//! `file`: a regular file or a block device, served by a small pool of worker threads so a
//! reactor never blocks on disk. Completions go back through the reactor's [`Completions`],
//! whose eventfd wakes it; interrupt mode keeps sleeping while I/O is in flight.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tracing::warn;

use super::{Backend, BackendError, Completions, IoDone, IoKind, IoRequest};
use crate::sys::ZeroMode;

/// Worker threads per file: enough to overlap a few requests on a 2-core machine.
const WORKERS: usize = 4;
/// O_DIRECT needs buffers aligned to the device's logical block; 4096 covers every device.
const DIRECT_ALIGN: usize = 4096;
/// Zeroes are written in pieces of this size.
const ZERO_CHUNK: usize = 1 << 20;

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

struct Job {
    token: u64,
    req: IoRequest,
    completions: Completions,
}

struct Shared {
    file: File,
    path: PathBuf,
    direct: bool,
}

pub struct FileBackend {
    shared: Arc<Shared>,
    size: u64,
    read_only: bool,
    /// `None` once closed: requests are refused from then on.
    queue: Mutex<Option<Sender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl core::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "file {}", self.shared.path.display())
    }
}

impl FileBackend {
    pub fn open(path: &Path, direct: bool, read_only: bool) -> Result<Self, FileOpenError> {
        let mut options = OpenOptions::new();
        options.read(true).write(!read_only);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let mut file = options.open(path).map_err(|source| {
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
        // Seeking to the end works for block devices too, whose metadata length is 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| FileOpenError::Size {
                path: path.to_owned(),
                source,
            })?;
        if size == 0 {
            return Err(FileOpenError::Empty {
                path: path.to_owned(),
            });
        }
        let shared = Arc::new(Shared {
            file,
            path: path.to_owned(),
            direct,
        });
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..WORKERS)
            .filter_map(|i| {
                let shared = Arc::clone(&shared);
                let rx = Arc::clone(&rx);
                std::thread::Builder::new()
                    .name(format!("nvmf-file-{i}"))
                    .spawn(move || worker(&shared, &rx))
                    .ok()
            })
            .collect();
        Ok(Self {
            shared,
            size,
            read_only,
            queue: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Refuses new requests, lets the workers finish the queued ones and stops them, then
    /// makes every write durable. Only the first call does anything: nothing can be written
    /// after it.
    fn close(&self) -> Result<(), BackendError> {
        let Some(queue) = self
            .queue
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

    fn submit(&self, token: u64, req: IoRequest, completions: &Completions) -> Option<IoDone> {
        let writes = !matches!(req.kind, IoKind::Read | IoKind::Flush);
        let refused = if self.read_only && writes {
            Err(BackendError::ReadOnly)
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
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = queue.as_ref() else {
            return Some(IoDone {
                token,
                result: Err(BackendError::ShuttingDown),
                buf: req.buf,
            });
        };
        let job = Job {
            token,
            req,
            completions: completions.clone(),
        };
        match tx.send(job) {
            Ok(()) => None,
            Err(returned) => {
                let job = returned.0;
                Some(IoDone {
                    token,
                    result: Err(BackendError::ShuttingDown),
                    buf: job.req.buf,
                })
            }
        }
    }
}

fn worker(shared: &Shared, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            rx.recv()
        };
        let Ok(Job {
            token,
            mut req,
            completions,
        }) = job
        else {
            return;
        };
        let result = execute(shared, &mut req);
        if let Err(err) = &result {
            warn!(path = %shared.path.display(), offset = req.offset, len = req.len, error = %err,
                  cause = ?std::error::Error::source(err), "file I/O failed");
        }
        completions.push(IoDone {
            token,
            result,
            buf: req.buf,
        });
    }
}

fn execute(shared: &Shared, req: &mut IoRequest) -> Result<(), BackendError> {
    let file = &shared.file;
    match &req.kind {
        IoKind::Read => {
            if shared.direct {
                let mut bounce = AlignedBuf::new(req.buf.len());
                file.read_exact_at(bounce.as_mut(), req.offset)
                    .map_err(BackendError::Read)?;
                req.buf.copy_from_slice(bounce.as_mut());
            } else {
                file.read_exact_at(&mut req.buf, req.offset)
                    .map_err(BackendError::Read)?;
            }
        }
        IoKind::Write { fua } => {
            write_at(shared, &req.buf, req.offset)?;
            if *fua {
                file.sync_data().map_err(BackendError::Flush)?;
            }
        }
        IoKind::Flush => file.sync_data().map_err(BackendError::Flush)?,
        IoKind::WriteZeroes { fua } => {
            zero(shared, ZeroMode::ZeroRange, req.offset, req.len)?;
            if *fua {
                file.sync_data().map_err(BackendError::Flush)?;
            }
        }
        IoKind::Deallocate(ranges) => {
            // Deallocated blocks must read back as zeroes: punching a hole frees them and
            // does; a filesystem that cannot gets them written.
            for &(offset, len) in ranges {
                zero(shared, ZeroMode::PunchHole, offset, len)?;
            }
        }
    }
    Ok(())
}

fn write_at(shared: &Shared, data: &[u8], offset: u64) -> Result<(), BackendError> {
    if shared.direct {
        let mut bounce = AlignedBuf::new(data.len());
        bounce.as_mut().copy_from_slice(data);
        shared
            .file
            .write_all_at(bounce.as_mut(), offset)
            .map_err(BackendError::Write)
    } else {
        shared
            .file
            .write_all_at(data, offset)
            .map_err(BackendError::Write)
    }
}

/// Zeroes a range with `fallocate` (no data moved: a 1 TiB deallocate costs nothing), or by
/// writing zeroes where the filesystem or device cannot.
fn zero(shared: &Shared, mode: ZeroMode, offset: u64, len: u64) -> Result<(), BackendError> {
    let zeroed = crate::sys::fallocate_zero(&shared.file, mode, offset, len)
        .or_else(|_| crate::sys::fallocate_zero(&shared.file, ZeroMode::PunchHole, offset, len));
    match zeroed {
        Ok(()) => Ok(()),
        Err(_) => write_zeroes(shared, offset, len),
    }
}

fn write_zeroes(shared: &Shared, offset: u64, len: u64) -> Result<(), BackendError> {
    let zeroes = vec![0u8; ZERO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = usize::try_from((len - done).min(ZERO_CHUNK as u64)).unwrap_or(ZERO_CHUNK);
        write_at(shared, &zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// A zeroed buffer whose usable part starts on a [`DIRECT_ALIGN`] boundary, made by
/// over-allocating, so O_DIRECT needs no unsafe allocation code.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + DIRECT_ALIGN];
        let misalign = storage.as_ptr() as usize % DIRECT_ALIGN;
        let start = (DIRECT_ALIGN - misalign) % DIRECT_ALIGN;
        Self {
            storage,
            start,
            len,
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::tests::completions;

    /// A directory on a real disk: /tmp may be tmpfs, which refuses O_DIRECT.
    fn disk_dir() -> tempfile::TempDir {
        tempfile::tempdir_in("/var/tmp").expect("tempdir in /var/tmp")
    }

    fn wait(poll: &mut mio::Poll, completions: &Completions) -> IoDone {
        let mut events = mio::Events::with_capacity(4);
        let mut got = Vec::new();
        for _ in 0..50 {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .expect("poll");
            completions.drain_into(&mut got);
            if let Some(done) = got.pop() {
                assert!(!events.is_empty(), "the completion woke the poll");
                return done;
            }
        }
        panic!("no completion within 5 s");
    }

    fn submit(
        backend: &FileBackend,
        poll: &mut mio::Poll,
        c: &Completions,
        kind: IoKind,
        offset: u64,
        buf: Vec<u8>,
    ) -> IoDone {
        let len = buf.len() as u64;
        let req = IoRequest {
            kind,
            offset,
            len,
            buf,
        };
        match backend.submit(9, req, c) {
            Some(done) => done,
            None => wait(poll, c),
        }
    }

    #[test]
    fn deallocating_a_huge_range_frees_blocks_without_writing_them() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = disk_dir();
        let path = dir.path().join("big.img");
        let file = std::fs::File::create(&path).expect("create");
        file.set_len(64 << 30).expect("64 GiB sparse");
        // Some real data to free.
        file.write_all_at(&vec![0xAB; 4 << 20], 1 << 30)
            .expect("fill");
        file.sync_all().expect("sync");
        let before = std::fs::metadata(&path).expect("stat").blocks();
        assert!(before >= 8192, "{before} blocks allocated");
        let backend = FileBackend::open(&path, false, false).expect("open");
        let (mut poll, c) = completions();
        let started = std::time::Instant::now();
        let req = IoRequest {
            kind: IoKind::Deallocate(vec![(0, 64 << 30)]),
            offset: 0,
            len: 0,
            buf: Vec::new(),
        };
        assert!(backend.submit(9, req, &c).is_none());
        assert!(wait(&mut poll, &c).result.is_ok());
        // Writing 64 GiB of zeroes would take minutes and fill the disk.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let after = std::fs::metadata(&path).expect("stat").blocks();
        assert!(after < before, "blocks {before} -> {after}");
        let done = submit(
            &backend,
            &mut poll,
            &c,
            IoKind::Read,
            1 << 30,
            vec![1; 4096],
        );
        assert_eq!(done.buf, vec![0; 4096]);
        // Write Zeroes on a range keeps reading zeroes too.
        let done = submit(
            &backend,
            &mut poll,
            &c,
            IoKind::Write { fua: false },
            4096,
            vec![7; 4096],
        );
        assert!(done.result.is_ok());
        let req = IoRequest {
            kind: IoKind::WriteZeroes { fua: true },
            offset: 4096,
            len: 4096,
            buf: Vec::new(),
        };
        assert!(backend.submit(9, req, &c).is_none());
        assert!(wait(&mut poll, &c).result.is_ok());
        let done = submit(&backend, &mut poll, &c, IoKind::Read, 4096, vec![1; 4096]);
        assert_eq!(done.buf, vec![0; 4096]);
    }

    #[test]
    fn round_trip_buffered_and_direct_with_async_wakeups() {
        let dir = disk_dir();
        let path = dir.path().join("ns.img");
        std::fs::File::create(&path)
            .expect("create")
            .set_len(1 << 20)
            .expect("size");
        for direct in [false, true] {
            let backend = FileBackend::open(&path, direct, false).expect("open");
            assert_eq!(backend.size(), 1 << 20);
            let (mut poll, c) = completions();
            let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 256) as u8).collect();
            let done = submit(
                &backend,
                &mut poll,
                &c,
                IoKind::Write { fua: true },
                4096,
                data.clone(),
            );
            assert!(done.result.is_ok(), "{:?}", done.result);
            assert_eq!(done.token, 9);
            let done = submit(&backend, &mut poll, &c, IoKind::Read, 4096, vec![0; 8192]);
            assert_eq!(done.buf, data);
            let done = submit(&backend, &mut poll, &c, IoKind::Flush, 0, Vec::new());
            assert!(done.result.is_ok());
            let req = IoRequest {
                kind: IoKind::Deallocate(vec![(4096, 4096)]),
                offset: 0,
                len: 0,
                buf: Vec::new(),
            };
            assert!(backend.submit(9, req, &c).is_none());
            assert!(wait(&mut poll, &c).result.is_ok());
            let done = submit(&backend, &mut poll, &c, IoKind::Read, 4096, vec![1; 8192]);
            assert_eq!(&done.buf[..4096], &[0; 4096][..]);
            assert_eq!(&done.buf[4096..], &data[4096..]);
        }
        let on_disk = std::fs::read(&path).expect("read back");
        assert_eq!(
            &on_disk[8192..12288],
            &(4096..8192u32)
                .map(|i| (i * 7 % 256) as u8)
                .collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn shrunk_file_is_a_read_error_and_read_only_refuses_writes() {
        let dir = disk_dir();
        let path = dir.path().join("ns.img");
        std::fs::File::create(&path)
            .expect("create")
            .set_len(1 << 20)
            .expect("size");
        let backend = FileBackend::open(&path, false, false).expect("open");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(4096)
            .expect("shrink");
        let (mut poll, c) = completions();
        let done = submit(&backend, &mut poll, &c, IoKind::Read, 65536, vec![0; 4096]);
        assert!(
            matches!(done.result, Err(BackendError::Read(_))),
            "{:?}",
            done.result
        );
        drop(backend);
        let ro = FileBackend::open(&path, false, true).expect("open read-only");
        let done = submit(
            &ro,
            &mut poll,
            &c,
            IoKind::Write { fua: false },
            0,
            vec![0; 512],
        );
        assert!(matches!(done.result, Err(BackendError::ReadOnly)));
    }

    #[test]
    fn flush_for_shutdown_finishes_queued_writes_then_refuses_requests() {
        let dir = disk_dir();
        let path = dir.path().join("ns.img");
        std::fs::File::create(&path)
            .expect("create")
            .set_len(1 << 20)
            .expect("size");
        let backend = FileBackend::open(&path, false, false).expect("open");
        let (_poll, c) = completions();
        for n in 0..16u8 {
            let req = IoRequest {
                kind: IoKind::Write { fua: false },
                offset: u64::from(n) * 4096,
                len: 4096,
                buf: vec![n + 1; 4096],
            };
            assert!(backend.submit(u64::from(n), req, &c).is_none(), "queued");
        }
        backend.flush_for_shutdown().expect("flush");
        // Every queued write ran before the flush returned.
        let mut done = Vec::new();
        assert!(c.drain_into(&mut done));
        assert_eq!(done.len(), 16);
        assert!(done.iter().all(|d| d.result.is_ok()), "{done:?}");
        let on_disk = std::fs::read(&path).expect("read back");
        for n in 0..16u8 {
            let block = &on_disk[usize::from(n) * 4096..][..4096];
            assert!(block.iter().all(|&b| b == n + 1), "block {n}");
        }
        let late = backend.submit(
            99,
            IoRequest {
                kind: IoKind::Read,
                offset: 0,
                len: 512,
                buf: vec![0; 512],
            },
            &c,
        );
        assert!(
            matches!(
                late,
                Some(IoDone {
                    result: Err(BackendError::ShuttingDown),
                    ..
                })
            ),
            "{late:?}"
        );
        backend
            .flush_for_shutdown()
            .expect("a second flush has nothing to do");
    }

    #[test]
    fn missing_file_names_its_path() {
        let err =
            FileBackend::open(Path::new("/nonexistent/ns.img"), false, false).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/ns.img"), "{err}");
    }
}
