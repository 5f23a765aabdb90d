//! The queue logic every transport shares: a submission queue's head and flow control, the
//! commands it holds by tag, queue-full, buffer credits from the reactor's bounded pool, an
//! I/O plan turned into a backend request and its completion (Compare, reads of zeroes), and
//! admin commands handed to the controller.
//!
//! A transport owns a [`QueueCore`] and a [`Responder`]: the core decides what happens to a
//! command, the responder puts it on the wire in the transport's own way (NVMe/TCP PDUs,
//! RDMA SENDs and WRITEs, PCIe completion queue entries in guest memory). The transport keeps
//! only what is its own: how commands and data arrive, how data is fetched (R2T, RDMA READ,
//! PRPs), and how its own protocol errors end a connection.

mod commands;
mod transfer;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, trace, warn};

use self::commands::{Command, CommandTable, Stage};
use self::transfer::{Direction, io_request, transfer_direction, transfer_lens};
use crate::backend::{IoDone, IoKind};
use crate::controller::{
    AdminOutcome, ConnectOutcome, Controller, ControllerKind, IoClass, IoOp, IoPlan, ListenerAddr,
    QueueEpoch, QueueRequest, Registry,
};
use crate::nvme::opcode::{self, fctype};
use crate::nvme::{Cqe, Sqe, Status};
use crate::transport::buffer_pool::DataBuf;
use crate::transport::context::{Flow, IoCx};

/// How long a host may take to deliver the data the transport asked for; its buffer is held
/// meanwhile. Hosts time an I/O out after 30 s (Linux's default), so a live host never gets
/// near it.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(30);

/// The 1024-byte data of a Fabrics Connect command.
const CONNECT_DATA_LEN: usize = 1024;

/// How a transport puts the core's answers on the wire. Every completion handed over is
/// already stamped with the queue's SQ ID and SQ head.
pub trait Responder {
    /// Sends a completion.
    fn complete(&mut self, cqe: Cqe);

    /// Sends a copy of `data` followed by `zeroes` zero bytes to the host's buffer of command
    /// `cid`, then its completion.
    fn complete_with_data(&mut self, cid: u16, data: &[u8], zeroes: usize, cqe: Cqe);

    /// Sends the buffer a read filled to the host (from where it lies, where the transport
    /// can), then the completion. The transport gives the buffer back to the pool once it is
    /// sent.
    fn complete_with_buffer(&mut self, cid: u16, data: DataBuf, cqe: Cqe);

    /// Sends `len` zero bytes to the host's buffer of command `cid`, then its completion.
    fn complete_with_zeroes(&mut self, cid: u16, len: usize, cqe: Cqe);

    /// Fetches the host's data of command `cid` into `buf` (its whole length). `tag` is what
    /// the transport names the command by when the data comes back through
    /// [`QueueCore::data_received`] or [`QueueCore::data_complete`].
    fn request_data(&mut self, cid: u16, tag: u16, buf: &mut [u8]) -> DataRequest;

    /// Completions handed over that the host cannot have seen yet: they still count against
    /// the queue depth.
    fn undelivered_completions(&self) -> usize;

    /// A PCIe host's Create/Delete I/O Queue the controller accepted. Returns the completion
    /// to send now, if any. Fabrics have no such commands: the default undoes the request.
    fn queue_request(
        &mut self,
        ctrlr: &Controller,
        cid: u16,
        request: QueueRequest,
    ) -> Option<Cqe> {
        ctrlr.undo_queue_request(&request);
        Some(Cqe::new(cid, Status::INVALID_OPCODE.with_dnr()))
    }
}

/// What became of [`Responder::request_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRequest {
    /// The data comes later, in pieces through [`QueueCore::data_received`] or whole through
    /// [`QueueCore::data_complete`].
    Pending,
    /// The buffer holds the data already (guest memory copied in place).
    Filled,
    /// The data cannot be fetched; the command fails with this status.
    Failed(Status),
}

/// Where the host data of a command is, as its transport found it.
#[derive(Debug)]
pub enum HostData<'a> {
    /// Sent with the command (in-capsule data).
    InCapsule(&'a [u8]),
    /// To be fetched with [`Responder::request_data`].
    Fetch,
}

/// What [`QueueCore::receive`] says of a new command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Accepted,
    /// The queue no longer serves (its controller was reset, shut down or torn down, or the
    /// queue disconnected): close it.
    Stale,
    /// More commands than the queue holds: a protocol error of the host.
    Overflow,
}

/// What [`QueueCore::data_received`] says of a piece of host data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProgress {
    More,
    /// All of it is in: call [`QueueCore::data_complete`].
    Complete,
    /// It matches no data the queue asked for (unknown tag, other command, wrong offset or
    /// too long): a protocol error of the host; nothing was stored.
    Unexpected,
}

/// The controller queue this queue is, once connected.
#[derive(Debug)]
struct Attachment {
    ctrlr: Arc<Controller>,
    qid: u16,
    epoch: QueueEpoch,
}

/// The transport-neutral state of one queue pair.
#[derive(Debug)]
pub struct QueueCore {
    attachment: Option<Attachment>,
    commands: CommandTable,
    queue_size: u16,
    sq_head: u16,
    sq_flow_control: bool,
    /// A command arrived since the last [`report_activity`](Self::report_activity): the
    /// controller hears of the activity (keep-alive) once per batch, not once per command.
    active: bool,
}

impl Default for QueueCore {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueCore {
    pub fn new() -> Self {
        Self {
            attachment: None,
            commands: CommandTable::default(),
            queue_size: 1,
            sq_head: 0,
            sq_flow_control: true,
            active: false,
        }
    }

    /// Attaches the queue to controller queue `qid` with `entries` entries.
    pub fn attach(&mut self, ctrlr: Arc<Controller>, qid: u16, epoch: QueueEpoch, entries: u16) {
        self.queue_size = entries.max(1);
        self.sq_flow_control = !ctrlr.sq_flow_control_disabled(qid);
        self.attachment = Some(Attachment { ctrlr, qid, epoch });
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        self.attachment.as_ref().map(|a| &a.ctrlr)
    }

    pub fn qid(&self) -> Option<u16> {
        self.attachment.as_ref().map(|a| a.qid)
    }

    /// Whether completions carry the SQ head (the host did not disable SQ flow control).
    pub fn sq_flow_control(&self) -> bool {
        self.sq_flow_control
    }

    /// Commands received and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.commands.in_flight()
    }

    /// Commands that count against the queue depth: those in flight, and those whose
    /// completion the host cannot have seen yet.
    pub fn outstanding(&self, out: &impl Responder) -> usize {
        self.commands.in_flight() + out.undelivered_completions()
    }

    /// Whether this is an I/O queue that no longer serves: its controller was reset, shut
    /// down or torn down, or the queue disconnected. Checked wherever a command could start
    /// moving data (a command, fetched data, granted buffers), so a queue that outlived its
    /// controller serves nothing more.
    #[inline]
    pub fn is_stale(&self) -> bool {
        let Some(Attachment { ctrlr, qid, epoch }) = &self.attachment else {
            return false;
        };
        let stale = *qid != 0 && !ctrlr.is_io_queue_live(*qid, *epoch);
        if stale {
            debug!(qid, "I/O queue no longer live; closing");
        }
        stale
    }

    /// The next moment [`check_timers`](Self::check_timers) must run: the keep-alive of an
    /// admin queue, or host data overdue.
    pub fn deadline(&self) -> Option<Instant> {
        let keep_alive = match &self.attachment {
            Some(Attachment { ctrlr, qid: 0, .. }) => ctrlr.keep_alive_deadline(),
            _ => None,
        };
        match (keep_alive, self.commands.data_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the queue must close at `now`: its controller's keep-alive expired, or a host
    /// withheld the data it was asked for too long.
    pub fn check_timers(&mut self, now: Instant) -> Flow {
        if let Some(Attachment { ctrlr, qid: 0, .. }) = &self.attachment {
            if ctrlr.is_expired(now) {
                warn!(
                    subnqn = %ctrlr.subnqn(),
                    cntlid = %ctrlr.cntlid(),
                    hostnqn = %ctrlr.hostnqn(),
                    "keep-alive timeout expired; disconnecting the controller"
                );
                return Flow::Close;
            }
        }
        if let Some(tag) = self.commands.overdue(now) {
            let cid = self.commands.get(tag).map(|c| c.sqe.cid());
            warn!(
                cid,
                timeout_s = DATA_TIMEOUT.as_secs(),
                "host did not send the data it was asked for; closing"
            );
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Tells the controller of the commands that arrived since the last call.
    pub fn report_activity(&mut self, now: Instant) {
        if std::mem::take(&mut self.active) {
            if let Some(a) = &self.attachment {
                a.ctrlr.handle_activity(now);
            }
        }
    }

    /// Stamps `cqe` with the queue's SQ ID and head, and sends it.
    pub fn respond(&self, cqe: Cqe, out: &mut impl Responder) {
        out.complete(self.stamp(cqe));
    }

    fn stamp(&self, mut cqe: Cqe) -> Cqe {
        if let Some(a) = &self.attachment {
            cqe.sqid = a.qid;
        }
        cqe.sqhd = if self.sq_flow_control {
            self.sq_head
        } else {
            0xFFFF
        };
        cqe
    }

    /// A fabrics Connect (NVMe-oF 1.1, 3.3) arrived on a queue not yet attached, with its
    /// in-capsule `data` (`intact`: its data digest, if any, was right). Returns the queue ID
    /// it attached to; `None` leaves the queue unattached, waiting for another Connect.
    #[allow(clippy::too_many_arguments)]
    pub fn connect(
        &mut self,
        sqe: &Sqe,
        data: &[u8],
        intact: bool,
        registry: &Registry,
        listener: &ListenerAddr,
        local_ip: Option<IpAddr>,
        cx: &IoCx<'_>,
        out: &mut impl Responder,
        now: Instant,
    ) -> Option<u16> {
        let refuse = |status: Status| Cqe::new(sqe.cid(), status);
        if sqe.opcode() != opcode::FABRICS || sqe.fctype() != fctype::CONNECT {
            // SPDK and nvmet both answer a command before Connect with a sequence error.
            self.respond(refuse(Status::COMMAND_SEQUENCE_ERROR.with_dnr()), out);
            return None;
        }
        if !intact {
            self.respond(refuse(Status::TRANSIENT_TRANSPORT_ERROR), out);
            return None;
        }
        if !sqe.sgl().is_in_capsule() || data.len() < CONNECT_DATA_LEN {
            self.respond(refuse(Status::CONNECT_INVALID_PARAMETERS.with_dnr()), out);
            return None;
        }
        self.sq_head = 0;
        // SQSIZE is 0-based (NVMe-oF 1.1, 3.3).
        let entries = crate::nvme::connect::ConnectCmd::parse(sqe)
            .sqsize
            .saturating_add(1);
        let (ctrlr, qid, epoch, cqe) = match registry.handle_connect(sqe, data, listener, now) {
            ConnectOutcome::Admin { ctrlr, cqe } => {
                debug!(
                    subnqn = %ctrlr.subnqn(),
                    cntlid = %ctrlr.cntlid(),
                    hostnqn = %ctrlr.hostnqn(),
                    "admin queue connected"
                );
                ctrlr.set_async_event_notifier(cx.async_notifier());
                if let (true, Some(ip)) = (ctrlr.is_discovery(), local_ip) {
                    ctrlr.set_local_address(&ip.to_string());
                }
                (ctrlr, 0, QueueEpoch::ADMIN, cqe)
            }
            ConnectOutcome::Io {
                ctrlr,
                qid,
                epoch,
                cqe,
                ..
            } => {
                debug!(
                    subnqn = %ctrlr.subnqn(),
                    cntlid = %ctrlr.cntlid(),
                    qid,
                    "I/O queue connected"
                );
                (ctrlr, qid, epoch, cqe)
            }
            ConnectOutcome::Refused(cqe) => {
                debug!(status = %cqe.status, "connect refused");
                self.respond(cqe, out);
                return None;
            }
        };
        // The owner's span (`qpair{peer, qid, subnqn, cntlid}`, where it declares them) now
        // says whose queue this is, on every line logged inside it.
        let span = tracing::Span::current();
        span.record("qid", qid);
        span.record("subnqn", tracing::field::display(ctrlr.subnqn()));
        span.record("cntlid", ctrlr.cntlid().0);
        self.attach(ctrlr, qid, epoch, entries);
        self.respond(cqe, out);
        Some(qid)
    }

    /// A new command arrived on an attached queue: advances the SQ head and checks that the
    /// queue is live and not over-full. Call before looking at the command.
    pub fn receive(&mut self, out: &impl Responder) -> Received {
        if self.is_stale() {
            return Received::Stale;
        }
        self.sq_head = (self.sq_head + 1) % self.queue_size.max(1);
        self.active = true;
        if self.outstanding(out) >= usize::from(self.queue_size) {
            return Received::Overflow;
        }
        Received::Accepted
    }

    /// Runs a command [`receive`](Self::receive) accepted. `buffer_len` is the length of the
    /// host's data buffer as the transport found it (SGL for fabrics, PRPs for PCIe);
    /// `locate` says where the `len` bytes of host data the command carries are, or why they
    /// cannot be had.
    #[allow(clippy::too_many_arguments)]
    pub fn submit<'d>(
        &mut self,
        sqe: Sqe,
        buffer_len: u32,
        locate: impl FnOnce(usize) -> Result<HostData<'d>, Status>,
        cx: &mut IoCx<'_>,
        out: &mut impl Responder,
        now: Instant,
    ) -> Flow {
        let Some(Attachment { ctrlr, qid, epoch }) = &self.attachment else {
            return Flow::Close;
        };
        // Borrowed, not cloned: an Arc clone and drop per command is two atomic operations.
        let (qid, epoch) = (*qid, *epoch);
        let cid = sqe.cid();
        if sqe.opcode() == opcode::FABRICS && ctrlr.kind() == ControllerKind::Pcie {
            // PCIe has no fabrics commands: 0x7F is an opcode like any other it lacks.
            self.respond(Cqe::new(cid, Status::INVALID_OPCODE.with_dnr()), out);
            return Flow::Continue;
        }
        if sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::CONNECT {
            self.respond(
                Cqe::new(cid, Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
                out,
            );
            return Flow::Continue;
        }
        if qid != 0 && sqe.opcode() == opcode::FABRICS {
            let cqe = ctrlr.handle_io_fabrics(qid, epoch, &sqe);
            self.respond(cqe, out);
            // After a Disconnect this queue is no longer attached: end it once the completion
            // is sent, so it cannot serve I/O beside a reconnected qid.
            if !ctrlr.is_io_queue_live(qid, epoch) {
                return Flow::Close;
            }
            return Flow::Continue;
        }
        let admitted = if qid == 0 {
            ctrlr
                .admin_host_data_len(&sqe, buffer_len)
                .map(|len| (None, len, 0))
        } else {
            ctrlr.prepare_io(&sqe, buffer_len).map(|plan| {
                let (host_len, read_len) = transfer_lens(&plan);
                (Some(plan), host_len, read_len)
            })
        };
        let (plan, host_len, read_len) = match admitted {
            Ok(admitted) => admitted,
            Err(status) => {
                self.respond(Cqe::new(cid, status), out);
                return Flow::Continue;
            }
        };
        if let Some(plan) = &plan {
            if let IoOp::Read { len, .. } = plan.op {
                if plan.ns.backend().reads_zeroes() {
                    // The controller checked the range; nothing to read, no buffer to fill.
                    trace!(cid, "read of zeroes");
                    let reactor = cx.pool.reactor();
                    plan.ns
                        .stats()
                        .record(reactor, IoClass::Read, len, Duration::ZERO);
                    ctrlr
                        .stats()
                        .record(reactor, IoClass::Read, len, Duration::ZERO);
                    let len = usize::try_from(len).unwrap_or(0);
                    out.complete_with_zeroes(cid, len, self.stamp(Cqe::new(cid, Status::SUCCESS)));
                    return Flow::Continue;
                }
            }
        }
        let mut data = DataBuf::empty();
        let mut fetch_len = 0;
        if host_len > 0 {
            match locate(host_len) {
                Ok(HostData::InCapsule(bytes)) => {
                    data = cx.pool.capsule_buffer(host_len);
                    data.copy_from_slice(&bytes[..host_len]);
                }
                Ok(HostData::Fetch) => fetch_len = host_len,
                Err(status) => {
                    self.respond(Cqe::new(cid, status), out);
                    return Flow::Continue;
                }
            }
        }
        let credits = credits_for(cx, fetch_len) + credits_for(cx, read_len);
        let cmd = Command {
            sqe,
            stage: Stage::AwaitBuffer,
            plan,
            buffer_len,
            data,
            fetch_len,
            received: 0,
            corrupt: false,
            read: DataBuf::empty(),
            read_len,
            submitted: None,
            unmap_bytes: 0,
        };
        if cx.pool.reserve(credits) {
            return self.proceed(cmd, credits, cx, out, now);
        }
        // No data fetched and no backend request until the buffers are there.
        let Some(tag) = self.commands.insert(cmd) else {
            self.respond(Cqe::new(cid, Status::INTERNAL_ERROR), out);
            return Flow::Continue;
        };
        trace!(cid, tag, credits, "waiting for buffers");
        cx.pool.wait(cx.token(tag), credits);
        Flow::Continue
    }

    /// The buffer credits command `tag` waited for are reserved for it.
    pub fn buffers_granted(
        &mut self,
        tag: u16,
        credits: u32,
        cx: &mut IoCx<'_>,
        out: &mut impl Responder,
        now: Instant,
    ) -> Flow {
        let waiting = self
            .commands
            .get(tag)
            .is_some_and(|cmd| cmd.stage == Stage::AwaitBuffer);
        if !waiting {
            cx.pool.give_credits(credits);
            return Flow::Continue;
        }
        if self.is_stale() {
            cx.pool.give_credits(credits);
            return Flow::Close;
        }
        match self.commands.take(tag) {
            Some(cmd) => self.proceed(cmd, credits, cx, out, now),
            None => Flow::Continue,
        }
    }

    /// Turns the reserved `credits` into the command's buffers, then fetches its data or runs
    /// it.
    fn proceed(
        &mut self,
        mut cmd: Command,
        credits: u32,
        cx: &mut IoCx<'_>,
        out: &mut impl Responder,
        now: Instant,
    ) -> Flow {
        let fetch_credits = credits_for(cx, cmd.fetch_len);
        if cmd.read_len > 0 {
            cmd.read = cx.pool.buffer(cmd.read_len, credits - fetch_credits);
        }
        if cmd.fetch_len == 0 {
            return self.execute(cmd, cx, out, now);
        }
        cmd.data = cx.pool.buffer(cmd.fetch_len, fetch_credits);
        cmd.stage = Stage::AwaitData {
            deadline: now + DATA_TIMEOUT,
        };
        let cid = cmd.sqe.cid();
        let Some(tag) = self.commands.insert(cmd) else {
            self.respond(Cqe::new(cid, Status::INTERNAL_ERROR), out);
            return Flow::Continue;
        };
        let Some(cmd) = self.commands.get_mut(tag) else {
            return Flow::Continue;
        };
        // The command runs when all of its data has arrived.
        match out.request_data(cid, tag, &mut cmd.data) {
            DataRequest::Pending => Flow::Continue,
            DataRequest::Filled => {
                cmd.received = cmd.data.len();
                self.data_complete(tag, cx, out, now)
            }
            DataRequest::Failed(status) => match self.commands.take(tag) {
                Some(cmd) => self.fail(cmd, status, cx, out),
                None => Flow::Continue,
            },
        }
    }

    /// `bytes` of the host data of command `tag` (the host's `cid`) arrived, to go at
    /// `offset`; `intact` is false when they arrived damaged (a bad data digest: the command
    /// fails once its data is all in, the queue goes on, NVMe/TCP 7.4.6).
    pub fn data_received(
        &mut self,
        tag: u16,
        cid: u16,
        offset: usize,
        bytes: &[u8],
        intact: bool,
    ) -> DataProgress {
        let Some(cmd) = self
            .commands
            .get_mut(tag)
            .filter(|cmd| matches!(cmd.stage, Stage::AwaitData { .. }))
            .filter(|cmd| cmd.sqe.cid() == cid)
            .filter(|cmd| offset == cmd.received && offset + bytes.len() <= cmd.data.len())
        else {
            return DataProgress::Unexpected;
        };
        if intact {
            cmd.data[offset..offset + bytes.len()].copy_from_slice(bytes);
        } else {
            cmd.corrupt = true;
        }
        cmd.received += bytes.len();
        if cmd.received == cmd.data.len() {
            DataProgress::Complete
        } else {
            DataProgress::More
        }
    }

    /// All host data of command `tag` is in its buffer: run it (or fail it if some arrived
    /// damaged).
    pub fn data_complete(
        &mut self,
        tag: u16,
        cx: &mut IoCx<'_>,
        out: &mut impl Responder,
        now: Instant,
    ) -> Flow {
        let Some(cmd) = self.commands.take(tag) else {
            return Flow::Close;
        };
        // So that a queue with no data outstanding has no data deadline left.
        self.commands.drop_stale_deadlines();
        if cmd.corrupt {
            warn!(
                cid = cmd.sqe.cid(),
                "data digest error; failing the command"
            );
            return self.fail(cmd, Status::TRANSIENT_TRANSPORT_ERROR, cx, out);
        }
        self.execute(cmd, cx, out, now)
    }

    /// Runs `cmd`, whose host data (if any) is all here and whose buffers are held.
    fn execute(
        &mut self,
        mut cmd: Command,
        cx: &mut IoCx<'_>,
        out: &mut impl Responder,
        now: Instant,
    ) -> Flow {
        let cid = cmd.sqe.cid();
        let Some(plan) = &cmd.plan else {
            let flow = self.execute_admin(&cmd, out, now);
            give_buffers(cmd, cx);
            return flow;
        };
        let request = match io_request(plan, &mut cmd.read, &mut cmd.data) {
            Ok(Some(request)) => request,
            Ok(None) => return self.fail(cmd, Status::SUCCESS, cx, out),
            Err(status) => return self.fail(cmd, status, cx, out),
        };
        let backend = Arc::clone(plan.ns.backend());
        if let IoKind::Deallocate(ranges) = &request.kind {
            cmd.unmap_bytes = ranges.iter().map(|&(_, len)| len).sum();
        }
        cmd.submitted = Some(now);
        cmd.stage = Stage::Executing;
        let Some(tag) = self.commands.insert(cmd) else {
            self.respond(Cqe::new(cid, Status::INTERNAL_ERROR), out);
            return Flow::Continue;
        };
        trace!(cid, tag, "submit");
        let token = cx.token(tag);
        if let Some(mut done) = backend.submit(token, request, &mut cx.submitter()) {
            done.token = u64::from(tag);
            return self.io_done(done, cx, out, now);
        }
        Flow::Continue
    }

    /// A backend request finished; `done.token` is the command's tag.
    pub fn io_done(
        &mut self,
        done: IoDone,
        cx: &mut IoCx<'_>,
        out: &mut impl Responder,
        now: Instant,
    ) -> Flow {
        let Ok(tag) = u16::try_from(done.token) else {
            return Flow::Continue;
        };
        let Some(mut cmd) = self.commands.take(tag) else {
            return Flow::Continue;
        };
        let status = match &done.result {
            Ok(()) => Status::SUCCESS,
            Err(err) => {
                let nsid = cmd.plan.as_ref().map_or(0, |p| p.ns.nsid().0);
                warn!(nsid, error = %err, source = ?std::error::Error::source(err), "namespace I/O failed");
                err.status()
            }
        };
        if let Some(plan) = &cmd.plan {
            let ctrlr = self.attachment.as_ref().map(|a| &*a.ctrlr);
            account(
                plan,
                ctrlr,
                &cmd,
                status.is_success(),
                cx.pool.reactor(),
                now,
            );
        }
        let op = cmd.plan.as_ref().map(|p| &p.op);
        match op {
            Some(IoOp::Write { .. }) => cmd.data.put_bytes(done.buf),
            Some(IoOp::Read { .. } | IoOp::Compare { .. }) => cmd.read.put_bytes(done.buf),
            _ => {}
        }
        let cid = cmd.sqe.cid();
        match (op, status.is_success()) {
            (Some(IoOp::Read { .. }), true) => {
                let read = std::mem::replace(&mut cmd.read, DataBuf::empty());
                out.complete_with_buffer(cid, read, self.stamp(Cqe::new(cid, status)));
            }
            (Some(IoOp::Compare { .. }), true) => {
                let status = if cmd.read[..] == cmd.data[..] {
                    Status::SUCCESS
                } else {
                    Status::COMPARE_FAILURE
                };
                self.respond(Cqe::new(cid, status), out);
            }
            _ => self.respond(Cqe::new(cid, status), out),
        }
        give_buffers(cmd, cx);
        Flow::Continue
    }

    /// Completes `cmd` with `status` without running it.
    fn fail(
        &mut self,
        cmd: Command,
        status: Status,
        cx: &mut IoCx<'_>,
        out: &mut impl Responder,
    ) -> Flow {
        self.respond(Cqe::new(cmd.sqe.cid(), status), out);
        give_buffers(cmd, cx);
        Flow::Continue
    }

    fn execute_admin(&mut self, cmd: &Command, out: &mut impl Responder, now: Instant) -> Flow {
        let Some(ctrlr) = self.controller().cloned() else {
            return Flow::Close;
        };
        let sqe = &cmd.sqe;
        let disconnect = sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::DISCONNECT;
        match ctrlr.handle_admin(sqe, &cmd.data, cmd.buffer_len, now) {
            AdminOutcome::Complete { cqe, data, zeroes } => {
                let limit = cmd.buffer_len as usize;
                let sent = data.len().min(limit);
                let zeroes = zeroes.min(limit - sent);
                if sent + zeroes > 0 && transfer_direction(sqe) == Direction::ControllerToHost {
                    out.complete_with_data(sqe.cid(), &data[..sent], zeroes, self.stamp(cqe));
                } else {
                    self.respond(cqe, out);
                }
            }
            AdminOutcome::Deferred => {}
            AdminOutcome::Queue { cid, request } => {
                if let Some(cqe) = out.queue_request(&ctrlr, cid, request) {
                    self.respond(cqe, out);
                }
            }
        }
        self.poll_async_events(out);
        if disconnect {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Sends the completions the controller produced on its own (async events), on an admin
    /// queue.
    pub fn poll_async_events(&mut self, out: &mut impl Responder) {
        let Some(Attachment { ctrlr, qid: 0, .. }) = &self.attachment else {
            return;
        };
        let ctrlr = Arc::clone(ctrlr);
        while let Some(cqe) = ctrlr.poll_async_event() {
            self.respond(cqe, out);
        }
    }

    /// The queue is going away: drops its commands and tells the controller. Returns the
    /// controller if that tore it down (an admin queue), so its other queues can be closed.
    /// Buffers still held return their credits as they drop.
    pub fn detach(&mut self) -> Option<Arc<Controller>> {
        drop(self.commands.clear());
        let Attachment { ctrlr, qid, epoch } = self.attachment.take()?;
        ctrlr.handle_queue_gone(qid, epoch);
        (qid == 0).then_some(ctrlr)
    }
}

/// Counts a finished backend request in its namespace's figures and its controller's: a
/// success by class, bytes and latency, a failure as one.
fn account(
    plan: &IoPlan,
    ctrlr: Option<&Controller>,
    cmd: &Command,
    ok: bool,
    reactor: usize,
    now: Instant,
) {
    let all = std::iter::once(plan.ns.stats()).chain(ctrlr.map(Controller::stats));
    if !ok {
        all.for_each(|stats| stats.record_failure(reactor));
        return;
    }
    let (class, bytes) = match plan.op {
        IoOp::Read { len, .. } | IoOp::Compare { len, .. } => (IoClass::Read, len),
        IoOp::Write { len, .. } => (IoClass::Write, len),
        IoOp::Deallocate(_) => (IoClass::Unmap, cmd.unmap_bytes),
        // SPDK counts neither flushes nor zeroing in its I/O figures.
        _ => return,
    };
    let latency = cmd
        .submitted
        .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
    all.for_each(|stats| stats.record(reactor, class, bytes, latency));
}

fn credits_for(cx: &IoCx<'_>, len: usize) -> u32 {
    if len == 0 {
        0
    } else {
        cx.pool.credits_for(len)
    }
}

/// Gives a finished command's buffers back to the pool.
fn give_buffers(cmd: Command, cx: &mut IoCx<'_>) {
    for buf in [cmd.data, cmd.read] {
        if !buf.is_vacant() {
            cx.pool.give(buf);
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests;
