//! The `uring` engine: one io_uring per reactor serving every `file` namespace the reactor's
//! queues use. Requests are pushed as commands arrive, handed to the kernel once per reactor
//! turn and reaped in the same turn (reads of cached data complete inside that one call);
//! in interrupt mode the ring signals the reactor's completion eventfd, so the reactor
//! sleeps while I/O is in flight.
//!
//! A request is a small state machine ([`FileOp`]): a read or write that moved fewer bytes
//! than asked goes on from where it stopped; a Write Zeroes with FUA syncs after zeroing; a
//! Deallocate punches its ranges one after another. What `fallocate` cannot do here (a
//! filesystem without hole punching) goes to the file's worker threads, which write zeroes.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;

use super::{AlignedBuf, Shared, threads::Job};
use crate::backend::{BackendError, Completions, IoDone, IoKind, IoRequest};
use crate::sys::uring::{InFlight, Op, Ring};
use crate::sys::{EventFd, ZeroMode};

/// Ring entries per reactor: more than the commands a reactor usually has in flight (what
/// does not fit waits in order, see [`Uring::waiting`]).
pub const RING_ENTRIES: u32 = 1024;

/// A reactor's io_uring and the requests waiting for room in it.
pub struct Uring {
    ring: Ring<FileOp>,
    /// Requests (and their next operation) pushed while the ring was full, oldest first;
    /// bounded by the commands the reactor's queues may have in flight.
    waiting: VecDeque<(Box<FileOp>, Op)>,
    /// Requests whose next step came out of a reap, pushed after it.
    next: Vec<(Box<FileOp>, Op)>,
}

impl core::fmt::Debug for Uring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Uring")
            .field("ring", &self.ring)
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

impl Uring {
    /// A ring for one reactor, or why the kernel refuses it.
    pub fn open() -> std::io::Result<Self> {
        Ok(Self {
            ring: Ring::open(RING_ENTRIES)?,
            waiting: VecDeque::new(),
            next: Vec::new(),
        })
    }

    /// Every completion notifies `fd` (interrupt mode: the reactor's completion eventfd).
    pub fn signal(&self, fd: &EventFd) -> std::io::Result<()> {
        self.ring.signal(fd)
    }

    /// Requests taken and not finished.
    pub fn in_flight(&self) -> usize {
        self.ring.in_flight() + self.waiting.len()
    }

    /// Starts a request whose range and permissions the backend has checked; one with
    /// nothing to do (a Deallocate of empty ranges) finishes at once.
    pub(super) fn start(&mut self, op: Box<FileOp>) -> Option<IoDone> {
        let Some(first) = op.current() else {
            return Some(op.finish(Ok(())));
        };
        self.push(op, first);
        None
    }

    fn push(&mut self, op: Box<FileOp>, next: Op) {
        if !self.waiting.is_empty() {
            self.waiting.push_back((op, next));
            return;
        }
        if let Err(op) = self.ring.push(op, next) {
            self.waiting.push_back((op, next));
        }
    }

    /// Hands the turn's requests to the kernel. An error of the ring itself fails them.
    pub fn submit(&mut self) -> std::io::Result<()> {
        self.ring.submit()
    }

    /// Takes every finished request into `out`, pushes the next operation of those that go
    /// on, and moves waiting requests into the room made. `completions` takes the requests
    /// handed to the worker threads.
    pub fn reap(&mut self, completions: &Completions, out: &mut Vec<IoDone>) -> usize {
        let mut next = std::mem::take(&mut self.next);
        let reaped = self.ring.reap(|op, result| match op.advance(result) {
            Step::Done(done) => out.push(done),
            Step::Again(op, then) => next.push((op, then)),
            Step::Threads(op) => op.hand_to_threads(completions),
        });
        for (op, then) in next.drain(..) {
            self.push(op, then);
        }
        self.next = next;
        while !self.ring.is_full() {
            let Some((op, then)) = self.waiting.pop_front() else {
                break;
            };
            if let Err(op) = self.ring.push(op, then) {
                self.waiting.push_front((op, then));
                break;
            }
        }
        reaped
    }

    /// Whether completions wait to be reaped.
    pub fn has_completions(&mut self) -> bool {
        self.ring.has_completions()
    }
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The read, write, flush or Write Zeroes itself.
    Main,
    /// Deallocate: punching range `n`.
    Range(usize),
    /// Write Zeroes with FUA: the sync after zeroing.
    Sync,
}

/// One request on the ring, owning what the kernel uses: the file (through [`Shared`]) and
/// the buffer (the caller's, or an aligned bounce for O_DIRECT).
pub(super) struct FileOp {
    shared: Arc<Shared>,
    token: u64,
    req: IoRequest,
    /// O_DIRECT needs aligned memory; the caller's buffer is used as it is when aligned.
    bounce: Option<AlignedBuf>,
    /// Bytes read or written so far.
    moved: usize,
    stage: Stage,
}

/// What a completion leads to.
enum Step {
    Done(IoDone),
    Again(Box<FileOp>, Op),
    Threads(Box<FileOp>),
}

impl InFlight for FileOp {
    fn file(&self) -> &File {
        &self.shared.file
    }

    fn buffer(&mut self) -> &mut [u8] {
        let len = self.req.buf.len();
        let moved = self.moved.min(len);
        match &mut self.bounce {
            Some(bounce) => &mut bounce.as_mut()[moved..],
            None => &mut self.req.buf[moved..],
        }
    }
}

impl FileOp {
    pub(super) fn new(shared: Arc<Shared>, token: u64, req: IoRequest) -> Box<Self> {
        let needs_bounce = shared.direct
            && matches!(req.kind, IoKind::Read | IoKind::Write { .. })
            && !AlignedBuf::is_aligned(&req.buf);
        let bounce = needs_bounce.then(|| {
            let mut bounce = AlignedBuf::new(req.buf.len());
            if matches!(req.kind, IoKind::Write { .. }) {
                bounce.as_mut().copy_from_slice(&req.buf);
            }
            bounce
        });
        let stage = match req.kind {
            IoKind::Deallocate(_) => Stage::Range(0),
            _ => Stage::Main,
        };
        let mut op = Box::new(Self {
            shared,
            token,
            req,
            bounce,
            moved: 0,
            stage,
        });
        op.skip_empty_ranges();
        op
    }

    /// The operation the request needs next; `None` when it is finished.
    fn current(&self) -> Option<Op> {
        let offset = self.req.offset + self.moved as u64;
        match (&self.req.kind, self.stage) {
            (IoKind::Read, Stage::Main) => Some(Op::Read { offset }),
            (IoKind::Write { fua }, Stage::Main) => Some(Op::Write {
                offset,
                dsync: *fua,
            }),
            (IoKind::Flush, Stage::Main) | (_, Stage::Sync) => Some(Op::DataSync),
            (IoKind::WriteZeroes { .. }, Stage::Main) => Some(Op::Zero {
                mode: ZeroMode::ZeroRange,
                offset: self.req.offset,
                len: self.req.len,
            }),
            (IoKind::Deallocate(ranges), Stage::Range(n)) => {
                ranges.get(n).map(|&(offset, len)| Op::Zero {
                    mode: ZeroMode::PunchHole,
                    offset,
                    len,
                })
            }
            _ => None,
        }
    }

    /// `fallocate` refuses a zero length; such ranges have nothing to free.
    fn skip_empty_ranges(&mut self) {
        if let (IoKind::Deallocate(ranges), Stage::Range(n)) = (&self.req.kind, &mut self.stage) {
            while ranges.get(*n).is_some_and(|&(_, len)| len == 0) {
                *n += 1;
            }
        }
    }

    /// The request's state after a completion with `result` (bytes moved or -errno).
    fn advance(mut self: Box<Self>, result: i32) -> Step {
        if result == -libc::EINTR || result == -libc::EAGAIN {
            return self.again();
        }
        let error = (result < 0).then(|| std::io::Error::from_raw_os_error(-result));
        match (&self.req.kind, self.stage) {
            (IoKind::Read | IoKind::Write { .. }, Stage::Main) => {
                let reading = matches!(self.req.kind, IoKind::Read);
                let failure = match (error, result) {
                    (Some(err), _) => Some(err),
                    // A read at the end of a file that shrank under us, or a write the
                    // device takes nothing of.
                    (None, 0) => Some(std::io::Error::from(if reading {
                        std::io::ErrorKind::UnexpectedEof
                    } else {
                        std::io::ErrorKind::WriteZero
                    })),
                    (None, _) => None,
                };
                if let Some(err) = failure {
                    let err = if reading {
                        BackendError::Read(err)
                    } else {
                        BackendError::Write(err)
                    };
                    return Step::Done(self.finish(Err(err)));
                }
                self.moved += usize::try_from(result).unwrap_or(0);
                if self.moved < self.req.buf.len() {
                    return self.again();
                }
                if let (true, Some(bounce)) = (reading, &mut self.bounce) {
                    self.req.buf.copy_from_slice(bounce.as_mut());
                }
                Step::Done(self.finish(Ok(())))
            }
            (IoKind::Flush, Stage::Main) | (_, Stage::Sync) => {
                let outcome = error.map_or(Ok(()), |err| Err(BackendError::Flush(err)));
                Step::Done(self.finish(outcome))
            }
            (IoKind::WriteZeroes { fua }, Stage::Main) => {
                if error.is_some() {
                    return Step::Threads(self);
                }
                if *fua {
                    self.stage = Stage::Sync;
                    return self.again();
                }
                Step::Done(self.finish(Ok(())))
            }
            (IoKind::Deallocate(_), Stage::Range(n)) => {
                if error.is_some() {
                    return Step::Threads(self);
                }
                self.stage = Stage::Range(n + 1);
                self.skip_empty_ranges();
                match self.current() {
                    Some(_) => self.again(),
                    None => Step::Done(self.finish(Ok(()))),
                }
            }
            _ => Step::Done(self.finish(Ok(()))),
        }
    }

    fn again(self: Box<Self>) -> Step {
        match self.current() {
            Some(op) => Step::Again(self, op),
            None => Step::Done(self.finish(Ok(()))),
        }
    }

    fn finish(self, result: Result<(), BackendError>) -> IoDone {
        self.shared.log_failure(&self.req, &result);
        let Self { token, req, .. } = self;
        IoDone {
            token,
            result,
            buf: req.buf,
        }
    }

    /// Gives the whole request to the file's worker threads, which zero by writing where
    /// `fallocate` cannot; zeroing twice is harmless.
    fn hand_to_threads(self, completions: &Completions) {
        let Self {
            shared, token, req, ..
        } = self;
        let job = Job {
            token,
            req,
            completions: completions.clone(),
        };
        if let Err(job) = shared.send(job) {
            completions.push(IoDone {
                token: job.token,
                result: Err(BackendError::ShuttingDown),
                buf: job.req.buf,
            });
        }
    }
}
