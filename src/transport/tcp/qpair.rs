//! One NVMe/TCP queue pair as a state machine with no I/O.
//!
//! `AwaitIcReq -> AwaitConnect -> Ready -> Terminating`. Bytes from the socket go in through
//! [`TcpQpair::handle_input`]; PDUs to send accumulate in [`TcpQpair::output`]; backend requests
//! are submitted through the [`IoCx`] and come back through [`TcpQpair::handle_io_done`]. A PDU
//! that is wrong for the state becomes a C2HTermReq and the queue terminates; it never panics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, trace, warn};

use super::inbound::{Inbound, InboundError, Negotiated};
use super::outbound;
use super::send_queue::{self, SendQueue};
use super::wire;
use super::{IoCx, TcpContext};
use crate::backend::{IoDone, IoKind, IoRequest};
use crate::controller::{AdminOutcome, ConnectOutcome, Controller, IoOp, IoPlan, ListenerAddr};
use crate::nvme::opcode::{self, fctype};
use crate::nvme::{Cqe, Sqe, Status};

/// How long a new connection may take to send ICReq, and then Connect.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The 1024-byte data of a Fabrics Connect command.
const CONNECT_DATA_LEN: usize = 1024;

#[derive(Debug)]
enum State {
    AwaitIcReq,
    AwaitConnect,
    Ready { ctrlr: Arc<Controller>, qid: u16 },
    Terminating,
}

/// Where a command is in its life.
#[derive(Debug)]
enum Stage {
    /// Waiting for H2CData after an R2T.
    AwaitData,
    /// Handed to the backend.
    Executing,
}

#[derive(Debug)]
struct Command {
    sqe: Sqe,
    stage: Stage,
    /// Host data (being) received, or the buffer a read fills.
    data: Vec<u8>,
    received: usize,
    plan: Option<IoPlan>,
}

/// What the connection must do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
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
    /// PDUs to send, in order, and the data buffers commands reuse.
    out: SendQueue,
    /// Commands in flight, indexed by tag (the R2T transfer tag and the backend token).
    commands: Vec<Option<Command>>,
    free_tags: Vec<u16>,
    in_flight: usize,
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

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn is_terminating(&self) -> bool {
        matches!(self.state, State::Terminating)
    }

    /// The largest PDU this queue accepts, so the connection sizes its receive buffer.
    pub fn max_pdu_len(&self) -> usize {
        self.negotiated.max_pdu_len
    }

    /// The next moment [`handle_timer`](Self::handle_timer) must run.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Ready { ctrlr, qid: 0 } => ctrlr.keep_alive_deadline(),
            State::Ready { .. } | State::Terminating => None,
            State::AwaitIcReq | State::AwaitConnect => self.setup_deadline,
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
            State::Ready { ctrlr, qid: 0 } => {
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
            State::Ready { .. } | State::Terminating => {}
        }
        Flow::Continue
    }

    /// Consumes as many whole PDUs from `input` as it holds; returns how many bytes were used.
    pub fn handle_input(&mut self, input: &[u8], cx: &mut IoCx<'_>, now: Instant) -> (usize, Flow) {
        let mut used = 0;
        let mut flow = Flow::Continue;
        while !self.is_terminating() {
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

    /// A backend request finished; `done.token` is the command's tag.
    pub fn handle_io_done(&mut self, done: IoDone, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let Ok(tag) = u16::try_from(done.token) else {
            return Flow::Continue;
        };
        let Some(cmd) = self.take_command(tag) else {
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
        let _ = (cx, now);
        match (&cmd.plan, status.is_success()) {
            (
                Some(IoPlan {
                    op: IoOp::Read { .. },
                    ..
                }),
                true,
            ) => {
                self.send_read_data(cmd.sqe.cid(), done.buf, Cqe::new(cmd.sqe.cid(), status));
            }
            (
                Some(IoPlan {
                    op: IoOp::Compare { .. },
                    ..
                }),
                true,
            ) => {
                let status = if done.buf == cmd.data {
                    Status::SUCCESS
                } else {
                    Status::COMPARE_FAILURE
                };
                self.send_response(Cqe::new(cmd.sqe.cid(), status));
                self.out.recycle(done.buf);
            }
            _ => {
                self.send_response(Cqe::new(cmd.sqe.cid(), status));
                self.out.recycle(done.buf);
            }
        }
        self.out.recycle(cmd.data);
        Flow::Continue
    }

    /// The connection is going away: tell the controller its queue is gone. Returns the
    /// controller if that tore it down (an admin queue), so its other queues can be closed.
    pub fn close(&mut self) -> Option<Arc<Controller>> {
        let state = std::mem::replace(&mut self.state, State::Terminating);
        if let State::Ready { ctrlr, qid } = state {
            ctrlr.handle_queue_gone(qid);
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
            (State::AwaitIcReq, _) | (_, Inbound::IcReq(_)) => {
                self.terminate(&InboundError::sequence("PDU before or after ICReq"), &[]);
                Flow::Close
            }
            (_, Inbound::TermReq { fes }) => {
                debug!(fes, "host terminated the connection");
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
            (State::Terminating, _) => Flow::Close,
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
                self.become_ready(ctrlr, 0, sqe);
                self.send_response(cqe);
            }
            ConnectOutcome::Io {
                ctrlr, qid, cqe, ..
            } => {
                debug!(
                    subnqn = ctrlr.subnqn(),
                    cntlid = ctrlr.cntlid(),
                    qid,
                    "I/O queue connected"
                );
                self.become_ready(ctrlr, qid, sqe);
                self.send_response(cqe);
            }
            ConnectOutcome::Refused(cqe) => {
                debug!(status = %cqe.status, "connect refused");
                self.send_response(cqe);
            }
        }
        Flow::Continue
    }

    fn become_ready(&mut self, ctrlr: Arc<Controller>, qid: u16, sqe: &Sqe) {
        // SQSIZE is 0-based (NVMe-oF 1.1, 3.3).
        let sqsize = crate::nvme::connect::ConnectCmd::parse(sqe).sqsize;
        self.queue_size = sqsize.saturating_add(1);
        self.sq_flow_control = !ctrlr.sq_flow_control_disabled(qid);
        self.setup_deadline = None;
        self.state = State::Ready { ctrlr, qid };
    }

    fn handle_capsule(
        &mut self,
        sqe: Sqe,
        data: &[u8],
        digest_ok: bool,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        let State::Ready { ctrlr, qid } = &self.state else {
            return Flow::Close;
        };
        let (ctrlr, qid) = (Arc::clone(ctrlr), *qid);
        if qid != 0 && !ctrlr.is_io_queue_live(qid) {
            // The controller was reset, shut down or torn down: this queue is dead.
            debug!(qid, "I/O queue no longer live; closing");
            return Flow::Close;
        }
        self.sq_head = (self.sq_head + 1) % self.queue_size.max(1);
        self.active = true;
        if !digest_ok {
            self.send_response(Cqe::new(sqe.cid(), Status::TRANSIENT_TRANSPORT_ERROR));
            return Flow::Continue;
        }
        if self.in_flight >= usize::from(self.queue_size) {
            self.terminate(
                &InboundError::sequence("more commands than the queue holds"),
                &[],
            );
            return Flow::Close;
        }
        if sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::CONNECT {
            self.send_response(Cqe::new(
                sqe.cid(),
                Status::COMMAND_SEQUENCE_ERROR.with_dnr(),
            ));
            return Flow::Continue;
        }
        if qid != 0 && sqe.opcode() == opcode::FABRICS {
            let cqe = ctrlr.handle_io_fabrics(qid, &sqe);
            self.send_response(cqe);
            return Flow::Continue;
        }
        let plan = if qid == 0 {
            None
        } else {
            match ctrlr.prepare_io(&sqe) {
                Ok(plan) => Some(plan),
                Err(status) => {
                    self.send_response(Cqe::new(sqe.cid(), status));
                    return Flow::Continue;
                }
            }
        };
        let host_data_len = match &plan {
            Some(plan) => host_to_controller_len(plan),
            None if transfer_direction(&sqe) == Direction::HostToController => {
                sqe.sgl().length as usize
            }
            None => 0,
        };
        let sgl = sqe.sgl();
        if host_data_len > 0 {
            if sgl.is_in_capsule() {
                if sgl.address != 0 {
                    self.send_response(Cqe::new(sqe.cid(), Status::INVALID_SGL_OFFSET.with_dnr()));
                    return Flow::Continue;
                }
                if data.len() < host_data_len || (sgl.length as usize) < host_data_len {
                    self.send_response(Cqe::new(
                        sqe.cid(),
                        Status::DATA_SGL_LENGTH_INVALID.with_dnr(),
                    ));
                    return Flow::Continue;
                }
                let mut buf = self.out.take_buffer(host_data_len);
                buf.copy_from_slice(&data[..host_data_len]);
                return self.execute(sqe, plan, buf, &ctrlr, cx, now);
            }
            if !sgl.is_transport() {
                self.send_response(Cqe::new(
                    sqe.cid(),
                    Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr(),
                ));
                return Flow::Continue;
            }
            if (sgl.length as usize) < host_data_len
                || host_data_len > self.context.limits.max_io_size as usize
            {
                self.send_response(Cqe::new(
                    sqe.cid(),
                    Status::DATA_SGL_LENGTH_INVALID.with_dnr(),
                ));
                return Flow::Continue;
            }
            // Ask the host for the data; the command runs when all of it has arrived.
            let data = self.out.take_buffer(host_data_len);
            let Some(tag) = self.store_command(Command {
                sqe,
                stage: Stage::AwaitData,
                data,
                received: 0,
                plan,
            }) else {
                self.send_response(Cqe::new(sqe.cid(), Status::INTERNAL_ERROR));
                return Flow::Continue;
            };
            let r2tl = u32::try_from(host_data_len).unwrap_or(u32::MAX);
            let neg = &self.negotiated;
            self.out
                .put(|out| outbound::r2t(out, neg, sqe.cid(), tag, 0, r2tl));
            return Flow::Continue;
        }
        self.execute(sqe, plan, Vec::new(), &ctrlr, cx, now)
    }

    fn handle_h2c_data(
        &mut self,
        h2c: &super::inbound::H2CData<'_>,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        let tag = h2c.ttag;
        let valid = match self.command_mut(tag) {
            Some(cmd) if matches!(cmd.stage, Stage::AwaitData) && cmd.sqe.cid() == h2c.cccid => {
                let offset = h2c.datao as usize;
                offset == cmd.received && offset + h2c.data.len() <= cmd.data.len()
            }
            _ => false,
        };
        if !valid {
            let err = InboundError::out_of_range("H2CData does not match an outstanding R2T");
            self.terminate(&err, &[]);
            return Flow::Close;
        }
        let Some(cmd) = self.command_mut(tag) else {
            return Flow::Close;
        };
        let offset = h2c.datao as usize;
        cmd.data[offset..offset + h2c.data.len()].copy_from_slice(h2c.data);
        cmd.received += h2c.data.len();
        let complete = cmd.received == cmd.data.len();
        if !h2c.data_digest_ok {
            // A bad data digest fails the command but keeps the connection (NVMe/TCP 7.4.6).
            if complete || h2c.last {
                if let Some(cmd) = self.take_command(tag) {
                    self.send_response(Cqe::new(cmd.sqe.cid(), Status::TRANSIENT_TRANSPORT_ERROR));
                    self.out.recycle(cmd.data);
                }
            }
            return Flow::Continue;
        }
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
        let Some(ctrlr) = self.controller().cloned() else {
            return Flow::Close;
        };
        self.execute(cmd.sqe, cmd.plan, cmd.data, &ctrlr, cx, now)
    }

    /// Runs a command whose host data (if any) is all here.
    fn execute(
        &mut self,
        sqe: Sqe,
        plan: Option<IoPlan>,
        data: Vec<u8>,
        ctrlr: &Arc<Controller>,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        let Some(plan) = plan else {
            return self.execute_admin(&sqe, &data, ctrlr, now);
        };
        if let IoOp::Read { len, .. } = plan.op {
            if plan.ns.backend().reads_zeroes() {
                // The controller checked the range; nothing to read, no buffer to fill.
                trace!(cid = sqe.cid(), "read of zeroes");
                let len = usize::try_from(len).unwrap_or(0);
                self.send_zeroes(sqe.cid(), len, Cqe::new(sqe.cid(), Status::SUCCESS));
                self.out.recycle(data);
                return Flow::Continue;
            }
        }
        let request = match &plan.op {
            // Backends fill the whole buffer of a read that succeeds.
            IoOp::Read { offset, len } | IoOp::Compare { offset, len } => IoRequest {
                kind: IoKind::Read,
                offset: *offset,
                len: *len,
                buf: self.out.take_buffer(usize::try_from(*len).unwrap_or(0)),
            },
            IoOp::Write { offset, len, fua } => IoRequest {
                kind: IoKind::Write { fua: *fua },
                offset: *offset,
                len: *len,
                buf: Vec::new(),
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
            IoOp::Deallocate(_) => match crate::controller::dsm_ranges(&plan.ns, &data) {
                Ok(ranges) => IoRequest {
                    kind: IoKind::Deallocate(ranges),
                    offset: 0,
                    len: 0,
                    buf: Vec::new(),
                },
                Err(status) => {
                    self.send_response(Cqe::new(sqe.cid(), status));
                    return Flow::Continue;
                }
            },
            IoOp::None => {
                self.send_response(Cqe::new(sqe.cid(), Status::SUCCESS));
                return Flow::Continue;
            }
        };
        let is_write = matches!(plan.op, IoOp::Write { .. });
        let (request, keep) = if is_write {
            (
                IoRequest {
                    buf: data,
                    ..request
                },
                Vec::new(),
            )
        } else {
            (request, data)
        };
        let backend = Arc::clone(plan.ns.backend());
        let Some(tag) = self.store_command(Command {
            sqe,
            stage: Stage::Executing,
            data: keep,
            received: 0,
            plan: Some(plan),
        }) else {
            self.send_response(Cqe::new(sqe.cid(), Status::INTERNAL_ERROR));
            return Flow::Continue;
        };
        trace!(cid = sqe.cid(), tag, "submit");
        if let Some(mut done) = backend.submit(cx.token(tag), request, cx.completions()) {
            done.token = u64::from(tag);
            return self.handle_io_done(done, cx, now);
        }
        Flow::Continue
    }

    fn execute_admin(
        &mut self,
        sqe: &Sqe,
        data: &[u8],
        ctrlr: &Arc<Controller>,
        now: Instant,
    ) -> Flow {
        let disconnect = sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::DISCONNECT;
        match ctrlr.handle_admin(sqe, data, now) {
            AdminOutcome::Complete { cqe, data } => {
                let limit = (sqe.sgl().length as usize).min(data.len());
                if limit > 0 && transfer_direction(sqe) == Direction::ControllerToHost {
                    self.send_data_and_response(sqe.cid(), &data[..limit], cqe);
                } else {
                    self.send_response(cqe);
                }
            }
            AdminOutcome::Deferred => {}
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

    /// C2HData carrying a copy of `data`, then the response (or the SUCCESS flag).
    fn send_data_and_response(&mut self, cid: u16, data: &[u8], cqe: Cqe) {
        let success_only = self.success_only(&cqe);
        let neg = &self.negotiated;
        self.out
            .put(|out| outbound::c2h_data(out, neg, cid, 0, data, true, success_only));
        if !success_only {
            self.send_response(cqe);
        }
    }

    /// C2HData carrying the buffer a read filled, sent from where it lies (the data digest
    /// computed once, over it there), then the response (or the SUCCESS flag).
    fn send_read_data(&mut self, cid: u16, data: Vec<u8>, cqe: Cqe) {
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
        if !success_only {
            self.send_response(cqe);
        }
    }

    fn terminate(&mut self, err: &InboundError, header: &[u8]) {
        warn!(error = %err, "terminating connection");
        self.out.put(|out| outbound::c2h_term_req(out, err, header));
        self.state = State::Terminating;
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

fn host_to_controller_len(plan: &IoPlan) -> usize {
    match plan.op {
        IoOp::Write { .. } | IoOp::Compare { .. } | IoOp::Deallocate(_) => plan.data_len as usize,
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
#[path = "qpair_tests.rs"]
mod tests;
