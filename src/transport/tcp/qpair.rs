//! One NVMe/TCP queue pair as a state machine with no I/O.
//!
//! `AwaitIcReq -> AwaitConnect -> Ready -> Terminating`. Bytes from the socket go in through
//! [`TcpQpair::handle_input`]; PDUs to send accumulate in [`TcpQpair::output`]; backend requests
//! are submitted through the [`IoCx`] and come back through [`TcpQpair::handle_io_done`]. A PDU
//! that is wrong for the state becomes a C2HTermReq and the queue terminates; it never panics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, trace, warn};

use super::TcpContext;
use super::inbound::{Inbound, InboundError, Negotiated};
use super::outbound;
use super::send_queue::{self, SendQueue};
use super::wire;
use crate::backend::{IoDone, IoKind, IoRequest};
use crate::controller::{
    AdminOutcome, ConnectOutcome, Controller, IoOp, IoPlan, ListenerAddr, QueueEpoch,
};
use crate::nvme::opcode::{self, fctype};
use crate::nvme::{Cqe, Sqe, Status};
use crate::transport::buffer_pool::DataBuf;
use crate::transport::context::{Flow, IoCx};

/// How long a new connection may take to send ICReq, and then Connect.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a host may take to send the data an R2T asked for; its buffer is held meanwhile.
/// Hosts time an I/O out after 30 s (Linux's default), so a live host never gets near it.
pub const H2C_DATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Header and copied bytes a queue may hold unsent before it stops taking new commands from
/// its socket: a host that does not read its completions cannot make it hold more.
pub const BACKPRESSURE_BYTES: usize = 256 * 1024;

/// The 1024-byte data of a Fabrics Connect command.
const CONNECT_DATA_LEN: usize = 1024;

#[derive(Debug)]
enum State {
    AwaitIcReq,
    AwaitConnect,
    Ready {
        ctrlr: Arc<Controller>,
        qid: u16,
        epoch: QueueEpoch,
    },
    /// A C2HTermReq is queued; nothing more is read. It keeps the queue's attachment so
    /// that `close` still detaches it (and tears an admin queue's controller down).
    Terminating {
        attached: Option<(Arc<Controller>, u16, QueueEpoch)>,
    },
}

impl State {
    /// The controller, qid and epoch this queue is attached to, if any.
    fn into_attached(self) -> Option<(Arc<Controller>, u16, QueueEpoch)> {
        match self {
            Self::Ready { ctrlr, qid, epoch } => Some((ctrlr, qid, epoch)),
            Self::Terminating { attached } => attached,
            Self::AwaitIcReq | Self::AwaitConnect => None,
        }
    }
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for buffer credits; no data has moved yet.
    AwaitBuffer,
    /// Waiting for H2CData after an R2T, until `deadline`.
    AwaitData { deadline: Instant },
    /// Handed to the backend.
    Executing,
}

#[derive(Debug)]
struct Command {
    sqe: Sqe,
    stage: Stage,
    plan: Option<IoPlan>,
    /// Host data: from the capsule, or being received after R2T.
    data: DataBuf,
    /// Bytes of host data that come through R2T (0 when in the capsule or none).
    r2t_len: usize,
    received: usize,
    /// A data PDU of this command had a bad data digest: the command fails once its data
    /// is all in, and nothing of it reaches the backend.
    corrupt: bool,
    /// Where a read, or the read half of a Compare, lands.
    read: DataBuf,
    read_len: usize,
}

/// The state machine of one queue pair.
#[derive(Debug)]
pub struct TcpQpair {
    context: Arc<TcpContext>,
    listener: ListenerAddr,
    /// The address the host dialled, reported in the discovery log for wildcard listeners.
    local_ip: Option<std::net::IpAddr>,
    state: State,
    negotiated: Negotiated,
    /// PDUs to send, in order.
    out: SendQueue,
    /// Commands in flight, indexed by tag (the R2T transfer tag and the backend token).
    commands: Vec<Option<Command>>,
    free_tags: Vec<u16>,
    in_flight: usize,
    /// Deadlines of commands waiting for R2T data, oldest first; entries of commands that got
    /// their data are skipped when they reach the front.
    data_deadlines: VecDeque<(Instant, u16)>,
    queue_size: u16,
    sq_head: u16,
    sq_flow_control: bool,
    setup_deadline: Option<Instant>,
    /// A command arrived in the current `handle_input`: the controller hears of the activity
    /// (keep-alive) once per batch, not once per command.
    active: bool,
}

impl TcpQpair {
    /// The listener this queue's connection was accepted on.
    pub fn listener(&self) -> &ListenerAddr {
        &self.listener
    }

    pub fn new(
        context: Arc<TcpContext>,
        listener: ListenerAddr,
        local_ip: Option<std::net::IpAddr>,
        now: Instant,
    ) -> Self {
        Self {
            context,
            listener,
            local_ip,
            state: State::AwaitIcReq,
            negotiated: Negotiated::before_icreq(),
            out: SendQueue::with_capacity(4096),
            commands: Vec::new(),
            free_tags: Vec::new(),
            in_flight: 0,
            data_deadlines: VecDeque::new(),
            queue_size: 1,
            sq_head: 0,
            sq_flow_control: true,
            setup_deadline: Some(now + SETUP_TIMEOUT),
            active: false,
        }
    }

    /// What waits to be written; the connection drains it from the front.
    pub fn output(&mut self) -> &mut SendQueue {
        &mut self.out
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        match &self.state {
            State::Ready { ctrlr, .. } => Some(ctrlr),
            _ => None,
        }
    }

    pub fn qid(&self) -> Option<u16> {
        match &self.state {
            State::Ready { qid, .. } => Some(*qid),
            _ => None,
        }
    }

    /// Commands received and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Commands that count against the queue depth: those in flight, and those whose
    /// completion is queued but not written (the host cannot have seen it yet).
    pub fn outstanding(&self) -> usize {
        self.in_flight + self.out.unsent_completions()
    }

    pub fn is_terminating(&self) -> bool {
        matches!(self.state, State::Terminating { .. })
    }

    /// Whether this is an I/O queue that no longer serves: its controller was reset, shut
    /// down or torn down, or the queue disconnected. Checked wherever a command could start
    /// moving data (a capsule, R2T data, granted buffers), so a queue that outlived its
    /// controller serves nothing more.
    fn is_stale(&self) -> bool {
        let State::Ready { ctrlr, qid, epoch } = &self.state else {
            return false;
        };
        let stale = *qid != 0 && !ctrlr.is_io_queue_live(*qid, *epoch);
        if stale {
            debug!(qid, "I/O queue no longer live; closing");
        }
        stale
    }

    /// Whether so much waits to be written that no new command should be read.
    pub fn is_backpressured(&self) -> bool {
        self.out.unsent_copied() >= BACKPRESSURE_BYTES
    }

    /// The largest PDU this queue accepts, so the connection sizes its receive buffer.
    pub fn max_pdu_len(&self) -> usize {
        self.negotiated.max_pdu_len
    }

    /// The next moment [`handle_timer`](Self::handle_timer) must run.
    pub fn deadline(&self) -> Option<Instant> {
        let own = match &self.state {
            State::Ready { ctrlr, qid: 0, .. } => ctrlr.keep_alive_deadline(),
            State::Ready { .. } | State::Terminating { .. } => None,
            State::AwaitIcReq | State::AwaitConnect => self.setup_deadline,
        };
        let data = self.data_deadlines.front().map(|(at, _)| *at);
        match (own, data) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timer(&mut self, now: Instant) -> Flow {
        match &self.state {
            State::AwaitIcReq | State::AwaitConnect => {
                if self.setup_deadline.is_some_and(|at| now >= at) {
                    warn!("host did not finish connecting in time; closing");
                    return Flow::Close;
                }
            }
            State::Ready { ctrlr, qid: 0, .. } => {
                if ctrlr.is_expired(now) {
                    warn!(
                        subnqn = ctrlr.subnqn(),
                        cntlid = ctrlr.cntlid(),
                        hostnqn = ctrlr.hostnqn(),
                        "keep-alive timeout expired; disconnecting the controller"
                    );
                    return Flow::Close;
                }
            }
            State::Ready { .. } | State::Terminating { .. } => {}
        }
        self.drop_stale_data_deadlines();
        if let Some(&(at, tag)) = self.data_deadlines.front() {
            if now >= at {
                let cid = self.commands[usize::from(tag)]
                    .as_ref()
                    .map(|c| c.sqe.cid());
                warn!(
                    cid,
                    timeout_s = H2C_DATA_TIMEOUT.as_secs(),
                    "host did not send the data an R2T asked for; closing"
                );
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Consumes as many whole PDUs from `input` as it holds, and stops early while
    /// [`is_backpressured`](Self::is_backpressured); returns how many bytes were used.
    pub fn handle_input(&mut self, input: &[u8], cx: &mut IoCx<'_>, now: Instant) -> (usize, Flow) {
        let mut used = 0;
        let mut flow = Flow::Continue;
        while !self.is_terminating() && !self.is_backpressured() {
            match Inbound::parse(&input[used..], &self.negotiated) {
                Ok(None) => break,
                Ok(Some((pdu, len))) => {
                    used += len;
                    if self.handle_pdu(pdu, cx, now) == Flow::Close {
                        flow = Flow::Close;
                        break;
                    }
                }
                Err(err) => {
                    self.terminate(&err, &input[used..]);
                    flow = Flow::Close;
                    break;
                }
            }
        }
        if std::mem::take(&mut self.active) {
            if let State::Ready { ctrlr, .. } = &self.state {
                ctrlr.handle_activity(now);
            }
        }
        (used, flow)
    }

    /// Gives the buffers of written data back to the pool.
    pub fn handle_sent(&mut self, cx: &mut IoCx<'_>) {
        for buf in self.out.take_sent_buffers() {
            cx.pool.give(buf);
        }
    }

    /// The buffer credits command `tag` waited for are reserved for it.
    pub fn handle_buffers_granted(
        &mut self,
        tag: u16,
        credits: u32,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        let waiting = self
            .command_mut(tag)
            .is_some_and(|cmd| cmd.stage == Stage::AwaitBuffer);
        if !waiting || self.is_terminating() {
            cx.pool.give_credits(credits);
            return Flow::Continue;
        }
        if self.is_stale() {
            cx.pool.give_credits(credits);
            return Flow::Close;
        }
        match self.take_command(tag) {
            Some(cmd) => self.proceed(cmd, credits, cx, now),
            None => Flow::Continue,
        }
    }

    /// A backend request finished; `done.token` is the command's tag.
    pub fn handle_io_done(&mut self, done: IoDone, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let _ = now;
        let Ok(tag) = u16::try_from(done.token) else {
            return Flow::Continue;
        };
        let Some(mut cmd) = self.take_command(tag) else {
            return Flow::Continue;
        };
        let status = match &done.result {
            Ok(()) => Status::SUCCESS,
            Err(err) => {
                let nsid = cmd.plan.as_ref().map_or(0, |p| p.ns.nsid());
                warn!(nsid, error = %err, source = ?std::error::Error::source(err), "namespace I/O failed");
                err.status()
            }
        };
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
                self.send_read_data(cid, read, Cqe::new(cid, status));
            }
            (Some(IoOp::Compare { .. }), true) => {
                let status = if cmd.read[..] == cmd.data[..] {
                    Status::SUCCESS
                } else {
                    Status::COMPARE_FAILURE
                };
                self.send_response(Cqe::new(cid, status));
            }
            _ => self.send_response(Cqe::new(cid, status)),
        }
        self.give_buffers(cmd, cx);
        Flow::Continue
    }

    /// The connection is going away: tell the controller its queue is gone. Returns the
    /// controller if that tore it down (an admin queue), so its other queues can be closed.
    /// Buffers still held return their credits as they drop.
    pub fn close(&mut self) -> Option<Arc<Controller>> {
        let state = std::mem::replace(&mut self.state, State::Terminating { attached: None });
        self.commands.clear();
        self.out.clear();
        if let Some((ctrlr, qid, epoch)) = state.into_attached() {
            ctrlr.handle_queue_gone(qid, epoch);
            if qid == 0 {
                return Some(ctrlr);
            }
        }
        None
    }

    /// Any completions the controller produced on its own (async events), for admin queues.
    pub fn poll_async_events(&mut self) {
        let Some(ctrlr) = self.controller().cloned() else {
            return;
        };
        if self.qid() != Some(0) {
            return;
        }
        while let Some(cqe) = ctrlr.poll_async_event() {
            self.send_response(cqe);
        }
    }

    fn handle_pdu(&mut self, pdu: Inbound<'_>, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        match (&self.state, pdu) {
            (State::AwaitIcReq, Inbound::IcReq(icreq)) => {
                match self.negotiated.accept_icreq(&icreq, &self.context.limits) {
                    Ok(icresp) => {
                        self.out.put(|out| outbound::icresp(out, &icresp));
                        self.state = State::AwaitConnect;
                        Flow::Continue
                    }
                    Err(err) => {
                        self.terminate(&err, &[]);
                        Flow::Close
                    }
                }
            }
            // Before the sequence checks: a host may give up at any time, even before ICReq,
            // and a termination request is answered by closing, not by another one.
            (_, Inbound::TermReq { fes }) => {
                debug!(fes, "host terminated the connection");
                Flow::Close
            }
            (State::AwaitIcReq, _) | (_, Inbound::IcReq(_)) => {
                self.terminate(&InboundError::sequence("PDU before or after ICReq"), &[]);
                Flow::Close
            }
            (
                State::AwaitConnect,
                Inbound::Capsule {
                    sqe,
                    data,
                    data_digest_ok,
                },
            ) => self.handle_connect(&sqe, data, data_digest_ok, cx, now),
            (
                State::Ready { .. },
                Inbound::Capsule {
                    sqe,
                    data,
                    data_digest_ok,
                },
            ) => self.handle_capsule(sqe, data, data_digest_ok, cx, now),
            (State::Ready { .. }, Inbound::H2CData(h2c)) => self.handle_h2c_data(&h2c, cx, now),
            (State::AwaitConnect, Inbound::H2CData(_)) => {
                self.terminate(&InboundError::sequence("H2CData before Connect"), &[]);
                Flow::Close
            }
            (State::Terminating { .. }, _) => Flow::Close,
        }
    }

    fn handle_connect(
        &mut self,
        sqe: &Sqe,
        data: &[u8],
        digest_ok: bool,
        cx: &IoCx<'_>,
        now: Instant,
    ) -> Flow {
        if sqe.opcode() != opcode::FABRICS || sqe.fctype() != fctype::CONNECT {
            // SPDK and nvmet both answer a command before Connect with a sequence error.
            self.send_response(Cqe::new(
                sqe.cid(),
                Status::COMMAND_SEQUENCE_ERROR.with_dnr(),
            ));
            return Flow::Continue;
        }
        if !digest_ok {
            self.send_response(Cqe::new(sqe.cid(), Status::TRANSIENT_TRANSPORT_ERROR));
            return Flow::Continue;
        }
        if !sqe.sgl().is_in_capsule() || data.len() < CONNECT_DATA_LEN {
            self.send_response(Cqe::new(
                sqe.cid(),
                Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            ));
            return Flow::Continue;
        }
        self.sq_head = 0;
        match self
            .context
            .registry
            .handle_connect(sqe, data, &self.listener, now)
        {
            ConnectOutcome::Admin { ctrlr, cqe } => {
                debug!(
                    subnqn = ctrlr.subnqn(),
                    cntlid = ctrlr.cntlid(),
                    hostnqn = ctrlr.hostnqn(),
                    "admin queue connected"
                );
                ctrlr.set_async_event_notifier(cx.async_notifier());
                if let (true, Some(ip)) = (ctrlr.is_discovery(), self.local_ip) {
                    ctrlr.set_local_address(&ip.to_string());
                }
                self.become_ready(ctrlr, 0, QueueEpoch::ADMIN, sqe);
                self.send_response(cqe);
            }
            ConnectOutcome::Io {
                ctrlr,
                qid,
                epoch,
                cqe,
                ..
            } => {
                debug!(
                    subnqn = ctrlr.subnqn(),
                    cntlid = ctrlr.cntlid(),
                    qid,
                    "I/O queue connected"
                );
                // I/O queues take no more in-capsule data than Identify advertises (IOCCSZ).
                self.negotiated
                    .set_capsule_data_limit(self.context.limits.in_capsule_data_size as usize);
                self.become_ready(ctrlr, qid, epoch, sqe);
                self.send_response(cqe);
            }
            ConnectOutcome::Refused(cqe) => {
                debug!(status = %cqe.status, "connect refused");
                self.send_response(cqe);
            }
        }
        Flow::Continue
    }

    fn become_ready(&mut self, ctrlr: Arc<Controller>, qid: u16, epoch: QueueEpoch, sqe: &Sqe) {
        // SQSIZE is 0-based (NVMe-oF 1.1, 3.3).
        let sqsize = crate::nvme::connect::ConnectCmd::parse(sqe).sqsize;
        self.queue_size = sqsize.saturating_add(1);
        self.sq_flow_control = !ctrlr.sq_flow_control_disabled(qid);
        self.setup_deadline = None;
        self.state = State::Ready { ctrlr, qid, epoch };
    }

    fn handle_capsule(
        &mut self,
        sqe: Sqe,
        data: &[u8],
        digest_ok: bool,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        let State::Ready { ctrlr, qid, epoch } = &self.state else {
            return Flow::Close;
        };
        let (ctrlr, qid, epoch) = (Arc::clone(ctrlr), *qid, *epoch);
        if self.is_stale() {
            return Flow::Close;
        }
        self.sq_head = (self.sq_head + 1) % self.queue_size.max(1);
        self.active = true;
        if self.outstanding() >= usize::from(self.queue_size) {
            self.terminate(
                &InboundError::sequence("more commands than the queue holds"),
                &[],
            );
            return Flow::Close;
        }
        if !digest_ok {
            self.send_response(Cqe::new(sqe.cid(), Status::TRANSIENT_TRANSPORT_ERROR));
            return Flow::Continue;
        }
        if sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::CONNECT {
            self.send_response(Cqe::new(
                sqe.cid(),
                Status::COMMAND_SEQUENCE_ERROR.with_dnr(),
            ));
            return Flow::Continue;
        }
        if qid != 0 && sqe.opcode() == opcode::FABRICS {
            let cqe = ctrlr.handle_io_fabrics(qid, epoch, &sqe);
            self.send_response(cqe);
            // After a Disconnect this queue is no longer attached: end its connection once
            // the completion is sent, so it cannot serve I/O beside a reconnected qid.
            if !ctrlr.is_io_queue_live(qid, epoch) {
                return Flow::Close;
            }
            return Flow::Continue;
        }
        let admitted = if qid == 0 {
            ctrlr
                .admin_host_data_len(&sqe, sqe.sgl().length)
                .map(|len| (None, len, 0))
        } else {
            ctrlr
                .prepare_io(&sqe, sqe.sgl().length)
                .map(|plan| (Some(plan), 0, 0))
        };
        let (plan, mut host_len, mut read_len) = match admitted {
            Ok(admitted) => admitted,
            Err(status) => {
                self.send_response(Cqe::new(sqe.cid(), status));
                return Flow::Continue;
            }
        };
        if let Some(plan) = &plan {
            if let IoOp::Read { len, .. } = plan.op {
                if plan.ns.backend().reads_zeroes() {
                    // The controller checked the range; nothing to read, no buffer to fill.
                    trace!(cid = sqe.cid(), "read of zeroes");
                    let len = usize::try_from(len).unwrap_or(0);
                    self.send_zeroes(sqe.cid(), len, Cqe::new(sqe.cid(), Status::SUCCESS));
                    return Flow::Continue;
                }
            }
            (host_len, read_len) = transfer_lens(plan);
        }
        let sgl = sqe.sgl();
        let mut capsule_data = DataBuf::empty();
        let mut r2t_len = 0;
        if host_len > 0 {
            if sgl.is_in_capsule() {
                if sgl.address != 0 {
                    self.send_response(Cqe::new(sqe.cid(), Status::INVALID_SGL_OFFSET.with_dnr()));
                    return Flow::Continue;
                }
                if data.len() < host_len || (sgl.length as usize) < host_len {
                    self.send_response(Cqe::new(
                        sqe.cid(),
                        Status::DATA_SGL_LENGTH_INVALID.with_dnr(),
                    ));
                    return Flow::Continue;
                }
                capsule_data = cx.pool.capsule_buffer(host_len);
                capsule_data.copy_from_slice(&data[..host_len]);
            } else if !sgl.is_transport() {
                self.send_response(Cqe::new(
                    sqe.cid(),
                    Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(),
                ));
                return Flow::Continue;
            } else if (sgl.length as usize) < host_len
                || host_len > self.context.limits.max_io_size as usize
            {
                self.send_response(Cqe::new(
                    sqe.cid(),
                    Status::DATA_SGL_LENGTH_INVALID.with_dnr(),
                ));
                return Flow::Continue;
            } else {
                r2t_len = host_len;
            }
        }
        let credits = self.credits_for(cx, r2t_len) + self.credits_for(cx, read_len);
        let cmd = Command {
            sqe,
            stage: Stage::AwaitBuffer,
            plan,
            data: capsule_data,
            r2t_len,
            received: 0,
            corrupt: false,
            read: DataBuf::empty(),
            read_len,
        };
        if cx.pool.reserve(credits) {
            return self.proceed(cmd, credits, cx, now);
        }
        // No R2T and no backend request until the buffers are there.
        let Some(tag) = self.store_command(cmd) else {
            self.send_response(Cqe::new(sqe.cid(), Status::INTERNAL_ERROR));
            return Flow::Continue;
        };
        trace!(cid = sqe.cid(), tag, credits, "waiting for buffers");
        cx.pool.wait(cx.token(tag), credits);
        Flow::Continue
    }

    fn credits_for(&self, cx: &IoCx<'_>, len: usize) -> u32 {
        if len == 0 {
            0
        } else {
            cx.pool.credits_for(len)
        }
    }

    /// Turns the reserved `credits` into the command's buffers, then asks for its data or
    /// runs it.
    fn proceed(&mut self, mut cmd: Command, credits: u32, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let r2t_credits = self.credits_for(cx, cmd.r2t_len);
        if cmd.read_len > 0 {
            cmd.read = cx.pool.buffer(cmd.read_len, credits - r2t_credits);
        }
        if cmd.r2t_len == 0 {
            return self.execute(cmd, cx, now);
        }
        cmd.data = cx.pool.buffer(cmd.r2t_len, r2t_credits);
        let deadline = now + H2C_DATA_TIMEOUT;
        cmd.stage = Stage::AwaitData { deadline };
        let cid = cmd.sqe.cid();
        let r2tl = u32::try_from(cmd.r2t_len).unwrap_or(u32::MAX);
        let Some(tag) = self.store_command(cmd) else {
            self.send_response(Cqe::new(cid, Status::INTERNAL_ERROR));
            return Flow::Continue;
        };
        self.data_deadlines.push_back((deadline, tag));
        // Ask the host for the data; the command runs when all of it has arrived.
        let neg = &self.negotiated;
        self.out
            .put(|out| outbound::r2t(out, neg, cid, tag, 0, r2tl));
        Flow::Continue
    }

    fn handle_h2c_data(
        &mut self,
        h2c: &super::inbound::H2CData<'_>,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        if self.is_stale() {
            return Flow::Close;
        }
        let tag = h2c.ttag;
        let offset = h2c.datao as usize;
        let Some(cmd) = self
            .command_mut(tag)
            .filter(|cmd| matches!(cmd.stage, Stage::AwaitData { .. }))
            .filter(|cmd| cmd.sqe.cid() == h2c.cccid)
            .filter(|cmd| offset == cmd.received && offset + h2c.data.len() <= cmd.data.len())
        else {
            let err = InboundError::out_of_range("H2CData does not match an outstanding R2T");
            self.terminate(&err, &[]);
            return Flow::Close;
        };
        if h2c.data_digest_ok {
            cmd.data[offset..offset + h2c.data.len()].copy_from_slice(h2c.data);
        } else {
            // A bad data digest fails the command but keeps the connection (NVMe/TCP 7.4.6);
            // the rest of its data is still received, and none of it is used.
            cmd.corrupt = true;
        }
        cmd.received += h2c.data.len();
        let complete = cmd.received == cmd.data.len();
        let corrupt = cmd.corrupt;
        if h2c.last != complete {
            let err = InboundError::out_of_range("LAST_PDU flag does not match the data length");
            self.terminate(&err, &[]);
            return Flow::Close;
        }
        if !complete {
            return Flow::Continue;
        }
        let Some(cmd) = self.take_command(tag) else {
            return Flow::Close;
        };
        self.drop_stale_data_deadlines();
        if corrupt {
            warn!(cid = h2c.cccid, "data digest error; failing the command");
            self.send_response(Cqe::new(cmd.sqe.cid(), Status::TRANSIENT_TRANSPORT_ERROR));
            self.give_buffers(cmd, cx);
            return Flow::Continue;
        }
        self.execute(cmd, cx, now)
    }

    /// Runs `cmd`, whose host data (if any) is all here and whose buffers are held.
    fn execute(&mut self, mut cmd: Command, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let cid = cmd.sqe.cid();
        let Some(plan) = &cmd.plan else {
            let flow = self.execute_admin(&cmd.sqe, &cmd.data, now);
            self.give_buffers(cmd, cx);
            return flow;
        };
        let request = match &plan.op {
            // Backends fill the whole buffer of a read that succeeds.
            IoOp::Read { offset, len } | IoOp::Compare { offset, len } => IoRequest {
                kind: IoKind::Read,
                offset: *offset,
                len: *len,
                buf: cmd.read.take_bytes(),
            },
            IoOp::Write { offset, len, fua } => IoRequest {
                kind: IoKind::Write { fua: *fua },
                offset: *offset,
                len: *len,
                buf: cmd.data.take_bytes(),
            },
            IoOp::Flush => IoRequest {
                kind: IoKind::Flush,
                offset: 0,
                len: 0,
                buf: Vec::new(),
            },
            IoOp::WriteZeroes { offset, len, fua } => IoRequest {
                kind: IoKind::WriteZeroes { fua: *fua },
                offset: *offset,
                len: *len,
                buf: Vec::new(),
            },
            IoOp::Deallocate(_) => match crate::controller::dsm_ranges(&plan.ns, &cmd.data) {
                Ok(ranges) => IoRequest {
                    kind: IoKind::Deallocate(ranges),
                    offset: 0,
                    len: 0,
                    buf: Vec::new(),
                },
                Err(status) => return self.fail(cmd, status, cx),
            },
            IoOp::None => return self.fail(cmd, Status::SUCCESS, cx),
        };
        let backend = Arc::clone(plan.ns.backend());
        cmd.stage = Stage::Executing;
        let Some(tag) = self.store_command(cmd) else {
            self.send_response(Cqe::new(cid, Status::INTERNAL_ERROR));
            return Flow::Continue;
        };
        trace!(cid, tag, "submit");
        if let Some(mut done) = backend.submit(cx.token(tag), request, cx.completions()) {
            done.token = u64::from(tag);
            return self.handle_io_done(done, cx, now);
        }
        Flow::Continue
    }

    /// Completes `cmd` with `status` without running it.
    fn fail(&mut self, cmd: Command, status: Status, cx: &mut IoCx<'_>) -> Flow {
        self.send_response(Cqe::new(cmd.sqe.cid(), status));
        self.give_buffers(cmd, cx);
        Flow::Continue
    }

    fn execute_admin(&mut self, sqe: &Sqe, data: &[u8], now: Instant) -> Flow {
        let Some(ctrlr) = self.controller().cloned() else {
            return Flow::Close;
        };
        let disconnect = sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::DISCONNECT;
        match ctrlr.handle_admin(sqe, data, sqe.sgl().length, now) {
            AdminOutcome::Complete { cqe, data, zeroes } => {
                let limit = sqe.sgl().length as usize;
                let sent = data.len().min(limit);
                let zeroes = zeroes.min(limit - sent);
                if sent + zeroes > 0 && transfer_direction(sqe) == Direction::ControllerToHost {
                    self.send_data_and_response(sqe.cid(), &data[..sent], zeroes, cqe);
                } else {
                    self.send_response(cqe);
                }
            }
            AdminOutcome::Deferred => {}
            // Only PCIe controllers create queues with admin commands; never on fabrics.
            AdminOutcome::Queue { cid, request } => {
                ctrlr.undo_queue_request(&request);
                self.send_response(Cqe::new(cid, Status::INVALID_OPCODE.with_dnr()));
            }
        }
        self.poll_async_events();
        if disconnect {
            return Flow::Close;
        }
        Flow::Continue
    }

    fn send_response(&mut self, mut cqe: Cqe) {
        if let State::Ready { qid, .. } = &self.state {
            cqe.sqid = *qid;
        }
        cqe.sqhd = if self.sq_flow_control {
            self.sq_head
        } else {
            0xFFFF
        };
        let neg = &self.negotiated;
        self.out.put(|out| outbound::capsule_resp(out, neg, &cqe));
        self.out.end_completion();
    }

    /// Whether a C2HData with the SUCCESS flag may stand in for the response: the host
    /// disabled SQ flow control and there is nothing else to report.
    fn success_only(&self, cqe: &Cqe) -> bool {
        !self.sq_flow_control
            && self.context.c2h_success
            && cqe.status.is_success()
            && cqe.dw0 == 0
            && cqe.dw1 == 0
    }

    /// C2HData carrying a copy of `data` and then `zeroes` zero bytes, then the response (or
    /// the SUCCESS flag).
    fn send_data_and_response(&mut self, cid: u16, data: &[u8], zeroes: usize, cqe: Cqe) {
        let success_only = self.success_only(&cqe);
        let neg = &self.negotiated;
        let len = data.len() + zeroes;
        let digest = self
            .out
            .put(|out| {
                let digest = outbound::c2h_data_header(out, neg, cid, len, success_only);
                out.extend_from_slice(data);
                digest
            })
            .then(|| {
                let crc = crc32c::crc32c(data);
                send_queue::zeroes_digest_after(crc, zeroes)
            });
        self.out.push_zeroes(zeroes);
        self.finish_read_data(digest, cqe, success_only);
    }

    /// C2HData carrying the buffer a read filled, sent from where it lies (the data digest
    /// computed once, over it there), then the response (or the SUCCESS flag).
    fn send_read_data(&mut self, cid: u16, data: DataBuf, cqe: Cqe) {
        let success_only = self.success_only(&cqe);
        let neg = &self.negotiated;
        let len = data.len();
        let digest = self
            .out
            .put(|out| outbound::c2h_data_header(out, neg, cid, len, success_only))
            .then(|| wire::digest(&data));
        self.out.push_data(data);
        self.finish_read_data(digest, cqe, success_only);
    }

    /// C2HData carrying `len` zeroes from a backend that only holds zeroes, then the response
    /// (or the SUCCESS flag).
    fn send_zeroes(&mut self, cid: u16, len: usize, cqe: Cqe) {
        let success_only = self.success_only(&cqe);
        let neg = &self.negotiated;
        let digest = self
            .out
            .put(|out| outbound::c2h_data_header(out, neg, cid, len, success_only))
            .then(|| send_queue::zeroes_digest(len));
        self.out.push_zeroes(len);
        self.finish_read_data(digest, cqe, success_only);
    }

    fn finish_read_data(&mut self, digest: Option<[u8; 4]>, cqe: Cqe, success_only: bool) {
        if let Some(digest) = digest {
            self.out.put(|out| out.extend_from_slice(&digest));
        }
        if success_only {
            self.out.end_completion();
        } else {
            self.send_response(cqe);
        }
    }

    fn terminate(&mut self, err: &InboundError, header: &[u8]) {
        warn!(error = %err, "terminating connection");
        self.out.put(|out| outbound::c2h_term_req(out, err, header));
        let attached = std::mem::replace(&mut self.state, State::Terminating { attached: None })
            .into_attached();
        self.state = State::Terminating { attached };
    }

    /// Gives a finished command's buffers back to the pool.
    fn give_buffers(&mut self, cmd: Command, cx: &mut IoCx<'_>) {
        for buf in [cmd.data, cmd.read] {
            if !buf.is_vacant() {
                cx.pool.give(buf);
            }
        }
    }

    /// Drops deadlines at the front whose command is no longer waiting for its data.
    fn drop_stale_data_deadlines(&mut self) {
        while let Some(&(at, tag)) = self.data_deadlines.front() {
            let waiting = self
                .commands
                .get(usize::from(tag))
                .and_then(Option::as_ref)
                .is_some_and(|cmd| cmd.stage == Stage::AwaitData { deadline: at });
            if waiting {
                return;
            }
            self.data_deadlines.pop_front();
        }
    }

    fn store_command(&mut self, cmd: Command) -> Option<u16> {
        let tag = match self.free_tags.pop() {
            Some(tag) => tag,
            None => {
                let tag = u16::try_from(self.commands.len()).ok()?;
                self.commands.push(None);
                tag
            }
        };
        self.commands[usize::from(tag)] = Some(cmd);
        self.in_flight += 1;
        Some(tag)
    }

    fn command_mut(&mut self, tag: u16) -> Option<&mut Command> {
        self.commands.get_mut(usize::from(tag))?.as_mut()
    }

    fn take_command(&mut self, tag: u16) -> Option<Command> {
        let cmd = self.commands.get_mut(usize::from(tag))?.take()?;
        self.free_tags.push(tag);
        self.in_flight -= 1;
        Some(cmd)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Direction {
    None,
    HostToController,
    ControllerToHost,
}

/// Data transfer direction from the opcode's low bits (NVMe Base 2.0, Figure 28); fabrics
/// commands encode it in the command type.
fn transfer_direction(sqe: &Sqe) -> Direction {
    let code = if sqe.opcode() == opcode::FABRICS {
        sqe.fctype()
    } else {
        sqe.opcode()
    };
    match code & 0x3 {
        0x1 => Direction::HostToController,
        0x2 => Direction::ControllerToHost,
        _ => Direction::None,
    }
}

/// Bytes an I/O command moves: (host to controller, controller to host through a buffer).
fn transfer_lens(plan: &IoPlan) -> (usize, usize) {
    let len = plan.data_len as usize;
    match plan.op {
        IoOp::Write { .. } | IoOp::Deallocate(_) => (len, 0),
        IoOp::Compare { .. } => (len, len),
        IoOp::Read { .. } => (0, len),
        // Dataset Management without Deallocate does nothing: its ranges are not fetched.
        IoOp::Flush | IoOp::WriteZeroes { .. } | IoOp::None => (0, 0),
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
#[path = "qpair_tests.rs"]
mod tests;
