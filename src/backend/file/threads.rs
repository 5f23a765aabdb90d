//! The `threads` engine: a few worker threads per file, pinned within the target's core
//! mask, that run each request with blocking system calls and report it through the
//! submitting reactor's [`Completions`]. It serves files when io_uring is refused or not
//! chosen, and takes the rare requests the io_uring engine hands back (a Write Zeroes or
//! Deallocate the filesystem cannot do with `fallocate`, written as zeroes here).

use std::os::unix::fs::FileExt;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tracing::warn;

use super::{AlignedBuf, Shared};
use crate::backend::{BackendError, Completions, IoDone, IoKind, IoRequest};
use crate::sys::ZeroMode;

/// Worker threads per file: enough to overlap a few requests on a 2-core machine.
pub(super) const WORKERS: usize = 4;
/// Zeroes are written in pieces of this size.
const ZERO_CHUNK: usize = 1 << 20;

/// A request on its way to a worker.
pub(super) struct Job {
    pub token: u64,
    pub req: IoRequest,
    pub completions: Completions,
}

/// Starts the workers of `shared`, each allowed on `cores` (every CPU when empty).
pub(super) fn start(
    shared: &Arc<Shared>,
    rx: Receiver<Job>,
    cores: &[usize],
) -> Vec<JoinHandle<()>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..WORKERS)
        .filter_map(|i| {
            let shared = Arc::clone(shared);
            let rx = Arc::clone(&rx);
            let cores = cores.to_vec();
            std::thread::Builder::new()
                .name(format!("nvmf-file-{i}"))
                .spawn(move || {
                    if !cores.is_empty() {
                        if let Err(err) = crate::sys::pin_current_thread_to(&cores) {
                            warn!(%err, ?cores, "cannot pin a file worker within the core mask");
                        }
                    }
                    worker(&shared, &rx);
                })
                .ok()
        })
        .collect()
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
        shared.log_failure(&req, &result);
        completions.push(IoDone {
            token,
            result,
            buf: req.buf,
        });
    }
}

/// Runs one request with blocking calls.
pub(super) fn execute(shared: &Shared, req: &mut IoRequest) -> Result<(), BackendError> {
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
