//! An io_uring whose requests own what the kernel uses.
//!
//! Every request in flight is a boxed `T` kept in a slot of the ring until its completion is
//! reaped: the file it names stays open and the buffer it reads into or writes from stays
//! where it is, whatever the caller does meanwhile. The slots are as many as the submission
//! queue's entries and the completion queue has twice as many, so neither queue can overflow:
//! a push into a full ring is refused and the caller keeps the request.

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};

use super::{EventFd, ZeroMode};

/// What a request in flight lends the kernel.
pub trait InFlight: Send {
    /// The file the operation runs on.
    fn file(&self) -> &File;
    /// The bytes a read fills or a write stores; asked once, when the request is pushed.
    fn buffer(&mut self) -> &mut [u8];
}

/// One operation on the request's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Fill the buffer from `offset`; the result is the bytes read.
    Read { offset: u64 },
    /// Store the buffer at `offset`, durable before completion with `dsync` (RWF_DSYNC).
    Write { offset: u64, dsync: bool },
    /// fdatasync.
    DataSync,
    /// Make `len` bytes at `offset` read back as zeroes (fallocate).
    Zero {
        mode: ZeroMode,
        offset: u64,
        len: u64,
    },
}

/// The operations an engine needs, checked when a ring opens.
const NEEDED: [(u8, &str); 4] = [
    (opcode::Read::CODE, "read"),
    (opcode::Write::CODE, "write"),
    (opcode::Fsync::CODE, "fsync"),
    (opcode::Fallocate::CODE, "fallocate"),
];

/// How long dropping a ring waits for requests still in the kernel before it gives up on
/// them (and leaks their memory rather than free it under the kernel).
const DRAIN_ON_DROP: Duration = Duration::from_secs(10);

pub struct Ring<T: InFlight> {
    ring: IoUring,
    slots: Vec<Option<Box<T>>>,
    free: Vec<u32>,
    /// Pushed and not yet handed to the kernel.
    unsubmitted: usize,
}

impl<T: InFlight> core::fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ring")
            .field("entries", &self.slots.len())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl<T: InFlight> Ring<T> {
    /// A ring of `entries` slots (a power of two, at most 32768), or why this kernel refuses
    /// one: io_uring disabled (`kernel.io_uring_disabled`), forbidden by seccomp, too old for
    /// an operation.
    pub fn open(entries: u32) -> std::io::Result<Self> {
        // Submit every queued entry even if one fails to prepare (5.18); older kernels
        // refuse the flag and get a plain ring, which stops at a failed entry and submits
        // the rest on the next call.
        let ring = IoUring::builder()
            .setup_submit_all()
            .build(entries)
            .or_else(|_| IoUring::new(entries))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if let Some((_, name)) = NEEDED.iter().find(|(code, _)| !probe.is_supported(*code)) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("this kernel's io_uring has no {name} operation"),
            ));
        }
        let slots = ring.params().sq_entries();
        let free = (0..slots).rev().collect();
        Ok(Self {
            ring,
            slots: (0..slots).map(|_| None).collect(),
            free,
            unsubmitted: 0,
        })
    }

    /// Has every completion signal `fd`, so a reactor asleep in epoll wakes for it.
    pub fn signal(&self, fd: &EventFd) -> std::io::Result<()> {
        self.ring.submitter().register_eventfd(fd.as_raw_fd())
    }

    /// Requests pushed whose completion has not been reaped.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Queues `op` on `request`'s file; the kernel sees it at the next [`Self::submit`].
    /// A full ring hands the request back.
    pub fn push(&mut self, mut request: Box<T>, op: Op) -> Result<(), Box<T>> {
        let Some(slot) = self.free.pop() else {
            return Err(request);
        };
        let fd = types::Fd(request.file().as_raw_fd());
        let entry = match op {
            Op::Read { offset } => {
                let buf = request.buffer();
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                opcode::Read::new(fd, buf.as_mut_ptr(), len)
                    .offset(offset)
                    .build()
            }
            Op::Write { offset, dsync } => {
                let buf = request.buffer();
                let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                opcode::Write::new(fd, buf.as_mut_ptr().cast_const(), len)
                    .offset(offset)
                    .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            Op::DataSync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Op::Zero { mode, offset, len } => {
                let mode = match mode {
                    ZeroMode::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    ZeroMode::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                };
                opcode::Fallocate::new(fd, len)
                    .offset(offset)
                    .mode(mode)
                    .build()
            }
        }
        .user_data(u64::from(slot));
        // SAFETY: the entry points at memory of `request` (its buffer, reached through the
        // box, whose heap contents do not move) and at its file's descriptor. The box goes
        // into the slot named by the entry's user data and stays there, untouched, until
        // `reap` takes the entry's completion, so both outlive the kernel's use of them.
        // Slots are as many as submission entries and each pushed entry holds one, so the
        // queue has room.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(slot);
            return Err(request);
        }
        if let Some(place) = self.slots.get_mut(slot as usize) {
            *place = Some(request);
        }
        self.unsubmitted += 1;
        Ok(())
    }

    /// Hands what was pushed to the kernel: one system call for a turn's requests. A kernel
    /// short of resources (EAGAIN, EBUSY) keeps them queued for the next call.
    pub fn submit(&mut self) -> std::io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = self.ring.submission().len();
                    return Ok(());
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {
                    return Ok(());
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Calls `done` with each finished request and its result (bytes moved, or a negative
    /// errno); returns how many there were.
    pub fn reap(&mut self, mut done: impl FnMut(Box<T>, i32)) -> usize {
        let mut count = 0;
        // The completion queue is synced once per call: what lands during the loop waits
        // for the next one.
        let finished: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (slot, result) in finished {
            let Ok(index) = u32::try_from(slot) else {
                continue;
            };
            let Some(request) = self.slots.get_mut(index as usize).and_then(Option::take) else {
                continue;
            };
            self.free.push(index);
            count += 1;
            done(request, result);
        }
        count
    }

    /// Whether completions wait to be reaped.
    pub fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }
}

impl<T: InFlight> Drop for Ring<T> {
    /// Waits for the kernel to finish with every request in flight before their memory is
    /// freed; what it has not finished by [`DRAIN_ON_DROP`] is leaked, never freed under it.
    fn drop(&mut self) {
        let started = Instant::now();
        while self.in_flight() > 0 && started.elapsed() < DRAIN_ON_DROP {
            let _ = self.ring.submit();
            if self.reap(|request, _| drop(request)) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for slot in &mut self.slots {
            if let Some(request) = slot.take() {
                std::mem::forget(request);
            }
        }
    }
}

/// Whether this kernel lets the process open a ring with the operations an engine needs;
/// the error says why not.
pub fn probe() -> std::io::Result<()> {
    struct Never(File);
    impl InFlight for Never {
        fn file(&self) -> &File {
            &self.0
        }
        fn buffer(&mut self) -> &mut [u8] {
            &mut []
        }
    }
    Ring::<Never>::open(4).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt as _;

    use super::*;

    #[derive(Debug)]
    struct Request {
        file: std::sync::Arc<File>,
        data: Vec<u8>,
    }

    impl InFlight for Request {
        fn file(&self) -> &File {
            &self.file
        }
        fn buffer(&mut self) -> &mut [u8] {
            &mut self.data
        }
    }

    fn wait_one(ring: &mut Ring<Request>) -> (Box<Request>, i32) {
        ring.submit().expect("submit");
        let started = Instant::now();
        loop {
            let mut got = None;
            ring.reap(|r, res| got = Some((r, res)));
            if let Some(got) = got {
                return got;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "no completion");
            std::thread::yield_now();
        }
    }

    #[test]
    fn requests_keep_their_buffers_and_files_until_reaped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let file = std::sync::Arc::new(
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .expect("open"),
        );
        file.set_len(1 << 20).expect("size");
        let mut ring = Ring::<Request>::open(4).expect("io_uring");
        let write = Box::new(Request {
            file: std::sync::Arc::clone(&file),
            data: vec![0x5A; 8192],
        });
        ring.push(
            write,
            Op::Write {
                offset: 4096,
                dsync: true,
            },
        )
        .expect("room");
        let (_, res) = wait_one(&mut ring);
        assert_eq!(res, 8192);
        let mut on_disk = vec![0; 8192];
        file.read_exact_at(&mut on_disk, 4096).expect("read");
        assert!(on_disk.iter().all(|&b| b == 0x5A));
        // The caller's handle may go: the request keeps the file open.
        let read = Box::new(Request {
            file,
            data: vec![0; 4096],
        });
        ring.push(read, Op::Read { offset: 8192 }).expect("room");
        let (read, res) = wait_one(&mut ring);
        assert_eq!(res, 4096);
        assert!(read.data.iter().all(|&b| b == 0x5A));
        let zero = Box::new(Request {
            file: std::sync::Arc::clone(&read.file),
            data: Vec::new(),
        });
        ring.push(
            zero,
            Op::Zero {
                mode: ZeroMode::PunchHole,
                offset: 4096,
                len: 4096,
            },
        )
        .expect("room");
        assert_eq!(wait_one(&mut ring).1, 0);
        ring.push(read, Op::DataSync).expect("room");
        assert_eq!(wait_one(&mut ring).1, 0);
        let mut back = vec![1; 4096];
        std::fs::File::open(&path)
            .expect("open")
            .read_exact_at(&mut back, 4096)
            .expect("read");
        assert!(back.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_full_ring_hands_the_request_back_and_errors_are_negative_errnos() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, [0u8; 4096]).expect("write");
        // Read-only: a write fails with EBADF.
        let file = std::sync::Arc::new(File::open(&path).expect("open"));
        let mut ring = Ring::<Request>::open(2).expect("io_uring");
        let request = || {
            Box::new(Request {
                file: std::sync::Arc::clone(&file),
                data: vec![0; 512],
            })
        };
        let write = Op::Write {
            offset: 0,
            dsync: false,
        };
        ring.push(request(), write).expect("room");
        ring.push(request(), write).expect("room");
        assert!(ring.is_full());
        assert!(ring.push(request(), write).is_err());
        ring.submit().expect("submit");
        let mut results = Vec::new();
        let started = Instant::now();
        while results.len() < 2 && started.elapsed() < Duration::from_secs(5) {
            ring.reap(|_, res| results.push(res));
        }
        assert_eq!(results, vec![-libc::EBADF, -libc::EBADF]);
        assert_eq!(ring.in_flight(), 0);
    }
}
