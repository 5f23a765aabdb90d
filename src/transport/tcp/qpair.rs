//! One NVMe/TCP queue pair as a state machine with no I/O.
//!
//! `AwaitIcReq -> AwaitConnect -> Ready -> Terminating`. Bytes from the socket go in through
//! [`TcpQpair::handle_input`]; PDUs to send accumulate in [`TcpQpair::output`]; backend requests
//! are submitted through the [`IoCx`] and come back through [`TcpQpair::handle_io_done`]. A PDU
//! that is wrong for the state becomes a C2HTermReq and the queue terminates; it never panics.
//!
//! What every transport's queue does (the command table, SQ head and flow control, buffers,
//! backend requests, admin commands) is the [`QueueCore`]'s; this file keeps what is NVMe/TCP:
//! ICReq, digests, in-capsule data and SGLs, R2T and H2CData, C2HData with SUCCESS, and
//! termination requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::TcpContext;
use super::inbound::{H2CData, Inbound, InboundError, Negotiated};
use super::outbound;
use super::send_queue::{self, SendQueue};
use super::wire;
use crate::backend::IoDone;
use crate::controller::{Controller, ListenerAddr};
use crate::nvme::{Cqe, Sgl, Sqe, Status};
use crate::transport::buffer_pool::DataBuf;
use crate::transport::context::{Flow, IoCx};
use crate::transport::queue::{
    DataProgress, DataRequest, HostData, QueueCore, Received, Responder,
};

/// How long a new connection may take to send ICReq, and then Connect.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a host may take to send the data an R2T asked for (the core's data timeout).
#[cfg(test)]
use crate::transport::queue::DATA_TIMEOUT as H2C_DATA_TIMEOUT;
/// Header and copied bytes a queue may hold unsent before it stops taking new commands from
/// its socket: a host that does not read its completions cannot make it hold more.
pub const BACKPRESSURE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    AwaitConnect,
    Ready,
    /// A C2HTermReq is queued; nothing more is read. The queue stays attached so that
    /// `close` still detaches it (and tears an admin queue's controller down).
    Terminating,
}

/// The state machine of one queue pair.
#[derive(Debug)]
pub struct TcpQpair {
    context: Arc<TcpContext>,
    listener: ListenerAddr,
    /// The address the host dialled, reported in the discovery log for wildcard listeners.
    local_ip: Option<std::net::IpAddr>,
    phase: Phase,
    core: QueueCore,
    out: TcpOutput,
    setup_deadline: Option<Instant>,
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
            phase: Phase::AwaitIcReq,
            core: QueueCore::new(),
            out: TcpOutput {
                queue: SendQueue::with_capacity(4096),
                negotiated: Negotiated::before_icreq(),
                success_flag: false,
            },
            setup_deadline: Some(now + SETUP_TIMEOUT),
        }
    }

    /// What waits to be written; the connection drains it from the front.
    pub fn output(&mut self) -> &mut SendQueue {
        &mut self.out.queue
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        match self.phase {
            Phase::Ready => self.core.controller(),
            _ => None,
        }
    }

    pub fn qid(&self) -> Option<u16> {
        match self.phase {
            Phase::Ready => self.core.qid(),
            _ => None,
        }
    }

    /// Commands received and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Commands that count against the queue depth: those in flight, and those whose
    /// completion is queued but not written (the host cannot have seen it yet).
    pub fn outstanding(&self) -> usize {
        self.core.outstanding(&self.out)
    }

    pub fn is_terminating(&self) -> bool {
        self.phase == Phase::Terminating
    }

    /// Whether so much waits to be written that no new command should be read.
    pub fn is_backpressured(&self) -> bool {
        self.out.queue.unsent_copied() >= BACKPRESSURE_BYTES
    }

    /// The largest PDU this queue accepts, so the connection sizes its receive buffer.
    pub fn max_pdu_len(&self) -> usize {
        self.out.negotiated.max_pdu_len
    }

    /// The next moment [`handle_timer`](Self::handle_timer) must run.
    pub fn deadline(&self) -> Option<Instant> {
        let setup = match self.phase {
            Phase::AwaitIcReq | Phase::AwaitConnect => self.setup_deadline,
            Phase::Ready | Phase::Terminating => None,
        };
        match (setup, self.core.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timer(&mut self, now: Instant) -> Flow {
        if matches!(self.phase, Phase::AwaitIcReq | Phase::AwaitConnect)
            && self.setup_deadline.is_some_and(|at| now >= at)
        {
            warn!("host did not finish connecting in time; closing");
            return Flow::Close;
        }
        self.core.check_timers(now)
    }

    /// Consumes as many whole PDUs from `input` as it holds, and stops early while
    /// [`is_backpressured`](Self::is_backpressured); returns how many bytes were used.
    pub fn handle_input(&mut self, input: &[u8], cx: &mut IoCx<'_>, now: Instant) -> (usize, Flow) {
        let mut used = 0;
        let mut flow = Flow::Continue;
        while !self.is_terminating() && !self.is_backpressured() {
            match Inbound::parse(&input[used..], &self.out.negotiated) {
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
        self.core.report_activity(now);
        (used, flow)
    }

    /// Gives the buffers of written data back to the pool.
    pub fn handle_sent(&mut self, cx: &mut IoCx<'_>) {
        for buf in self.out.queue.take_sent_buffers() {
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
        if self.is_terminating() {
            cx.pool.give_credits(credits);
            return Flow::Continue;
        }
        self.core
            .buffers_granted(tag, credits, cx, &mut self.out, now)
    }

    /// A backend request finished; `done.token` is the command's tag.
    pub fn handle_io_done(&mut self, done: IoDone, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        self.core.io_done(done, cx, &mut self.out, now)
    }

    /// The connection is going away: tell the controller its queue is gone. Returns the
    /// controller if that tore it down (an admin queue), so its other queues can be closed.
    /// Buffers still held return their credits as they drop.
    pub fn close(&mut self) -> Option<Arc<Controller>> {
        self.phase = Phase::Terminating;
        self.out.queue.clear();
        self.core.detach()
    }

    /// Any completions the controller produced on its own (async events), for admin queues.
    pub fn poll_async_events(&mut self) {
        if self.phase == Phase::Ready {
            self.core.poll_async_events(&mut self.out);
        }
    }

    fn handle_pdu(&mut self, pdu: Inbound<'_>, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        match (self.phase, pdu) {
            (Phase::AwaitIcReq, Inbound::IcReq(icreq)) => {
                match self
                    .out
                    .negotiated
                    .accept_icreq(&icreq, &self.context.limits)
                {
                    Ok(icresp) => {
                        self.out.queue.put(|out| outbound::icresp(out, &icresp));
                        self.phase = Phase::AwaitConnect;
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
            (Phase::AwaitIcReq, _) | (_, Inbound::IcReq(_)) => {
                self.terminate(&InboundError::sequence("PDU before or after ICReq"), &[]);
                Flow::Close
            }
            (
                Phase::AwaitConnect,
                Inbound::Capsule {
                    sqe,
                    data,
                    data_digest_ok,
                },
            ) => {
                self.handle_connect(&sqe, data, data_digest_ok, cx, now);
                Flow::Continue
            }
            (
                Phase::Ready,
                Inbound::Capsule {
                    sqe,
                    data,
                    data_digest_ok,
                },
            ) => self.handle_capsule(sqe, data, data_digest_ok, cx, now),
            (Phase::Ready, Inbound::H2CData(h2c)) => self.handle_h2c_data(&h2c, cx, now),
            (Phase::AwaitConnect, Inbound::H2CData(_)) => {
                self.terminate(&InboundError::sequence("H2CData before Connect"), &[]);
                Flow::Close
            }
            (Phase::Terminating, _) => Flow::Close,
        }
    }

    fn handle_connect(
        &mut self,
        sqe: &Sqe,
        data: &[u8],
        digest_ok: bool,
        cx: &IoCx<'_>,
        now: Instant,
    ) {
        let attached = self.core.connect(
            sqe,
            data,
            digest_ok,
            &self.context.registry,
            &self.listener,
            self.local_ip,
            cx,
            &mut self.out,
            now,
        );
        let Some(qid) = attached else {
            return;
        };
        if qid != 0 {
            // I/O queues take no more in-capsule data than Identify advertises (IOCCSZ).
            self.out
                .negotiated
                .set_capsule_data_limit(self.context.limits.in_capsule_data_size as usize);
        }
        // C2HData may stand in for the response only where the host gave up SQ flow control.
        self.out.success_flag = self.context.c2h_success && !self.core.sq_flow_control();
        self.setup_deadline = None;
        self.phase = Phase::Ready;
    }

    fn handle_capsule(
        &mut self,
        sqe: Sqe,
        data: &[u8],
        digest_ok: bool,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        match self.core.receive(&self.out) {
            Received::Accepted => {}
            Received::Stale => return Flow::Close,
            Received::Overflow => {
                self.terminate(
                    &InboundError::sequence("more commands than the queue holds"),
                    &[],
                );
                return Flow::Close;
            }
        }
        if !digest_ok {
            let cqe = Cqe::new(sqe.cid(), Status::TRANSIENT_TRANSPORT_ERROR);
            self.core.respond(cqe, &mut self.out);
            return Flow::Continue;
        }
        let sgl = sqe.sgl();
        let max_io_size = self.context.limits.max_io_size as usize;
        let locate = |len| locate_host_data(&sgl, data, len, max_io_size);
        self.core
            .submit(sqe, sgl.length, locate, cx, &mut self.out, now)
    }

    fn handle_h2c_data(&mut self, h2c: &H2CData<'_>, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        if self.core.is_stale() {
            return Flow::Close;
        }
        let offset = h2c.datao as usize;
        let progress =
            self.core
                .data_received(h2c.ttag, h2c.cccid, offset, h2c.data, h2c.data_digest_ok);
        let complete = match progress {
            DataProgress::Complete => true,
            DataProgress::More => false,
            DataProgress::Unexpected => {
                let err = InboundError::out_of_range("H2CData does not match an outstanding R2T");
                self.terminate(&err, &[]);
                return Flow::Close;
            }
        };
        if h2c.last != complete {
            let err = InboundError::out_of_range("LAST_PDU flag does not match the data length");
            self.terminate(&err, &[]);
            return Flow::Close;
        }
        if !complete {
            return Flow::Continue;
        }
        self.core.data_complete(h2c.ttag, cx, &mut self.out, now)
    }

    fn terminate(&mut self, err: &InboundError, header: &[u8]) {
        warn!(error = %err, "terminating connection");
        self.out
            .queue
            .put(|out| outbound::c2h_term_req(out, err, header));
        self.phase = Phase::Terminating;
    }
}

/// Where the `len` bytes of host data of a command described by `sgl` are: in the capsule
/// (`data`, at offset 0 only), or to be asked for with R2T (a transport SGL).
fn locate_host_data<'d>(
    sgl: &Sgl,
    data: &'d [u8],
    len: usize,
    max_io_size: usize,
) -> Result<HostData<'d>, Status> {
    if sgl.is_in_capsule() {
        if sgl.address != 0 {
            return Err(Status::INVALID_SGL_OFFSET.with_dnr());
        }
        if data.len() < len || (sgl.length as usize) < len {
            return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
        }
        return Ok(HostData::InCapsule(&data[..len]));
    }
    if !sgl.is_transport() {
        return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr());
    }
    if (sgl.length as usize) < len || len > max_io_size {
        return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
    }
    Ok(HostData::Fetch)
}

/// The sending half of a queue pair: PDUs in order, as negotiated.
#[derive(Debug)]
struct TcpOutput {
    queue: SendQueue,
    negotiated: Negotiated,
    /// C2HData with the SUCCESS flag may stand in for a plain successful response: the host
    /// disabled SQ flow control and the target allows it.
    success_flag: bool,
}

impl TcpOutput {
    /// Whether the SUCCESS flag of the C2HData stands in for `cqe`: nothing else to report.
    fn success_only(&self, cqe: &Cqe) -> bool {
        self.success_flag && cqe.status.is_success() && cqe.dw0 == 0 && cqe.dw1 == 0
    }

    fn finish_read_data(&mut self, digest: Option<[u8; 4]>, cqe: Cqe, success_only: bool) {
        if let Some(digest) = digest {
            self.queue.put(|out| out.extend_from_slice(&digest));
        }
        if success_only {
            self.queue.end_completion();
        } else {
            self.complete(cqe);
        }
    }
}

impl Responder for TcpOutput {
    fn complete(&mut self, cqe: Cqe) {
        let neg = &self.negotiated;
        self.queue.put(|out| outbound::capsule_resp(out, neg, &cqe));
        self.queue.end_completion();
    }

    /// C2HData carrying a copy of `data` and then `zeroes` zero bytes, then the response (or
    /// the SUCCESS flag).
    fn complete_with_data(&mut self, cid: u16, data: &[u8], zeroes: usize, cqe: Cqe) {
        let success_only = self.success_only(&cqe);
        let neg = &self.negotiated;
        let len = data.len() + zeroes;
        let digest = self
            .queue
            .put(|out| {
                let digest = outbound::c2h_data_header(out, neg, cid, len, success_only);
                out.extend_from_slice(data);
                digest
            })
            .then(|| {
                let crc = crc32c::crc32c(data);
                send_queue::zeroes_digest_after(crc, zeroes)
            });
        self.queue.push_zeroes(zeroes);
        self.finish_read_data(digest, cqe, success_only);
    }

    /// C2HData carrying the buffer a read filled, sent from where it lies (the data digest
    /// computed once, over it there), then the response (or the SUCCESS flag).
    fn complete_with_buffer(&mut self, cid: u16, data: DataBuf, cqe: Cqe) {
        let success_only = self.success_only(&cqe);
        let neg = &self.negotiated;
        let len = data.len();
        let digest = self
            .queue
            .put(|out| outbound::c2h_data_header(out, neg, cid, len, success_only))
            .then(|| wire::digest(&data));
        self.queue.push_data(data);
        self.finish_read_data(digest, cqe, success_only);
    }

    /// C2HData carrying `len` zeroes from a backend that only holds zeroes, then the response
    /// (or the SUCCESS flag).
    fn complete_with_zeroes(&mut self, cid: u16, len: usize, cqe: Cqe) {
        let success_only = self.success_only(&cqe);
        let neg = &self.negotiated;
        let digest = self
            .queue
            .put(|out| outbound::c2h_data_header(out, neg, cid, len, success_only))
            .then(|| send_queue::zeroes_digest(len));
        self.queue.push_zeroes(len);
        self.finish_read_data(digest, cqe, success_only);
    }

    /// R2T for the whole buffer: the data comes back as H2CData PDUs.
    fn request_data(&mut self, cid: u16, tag: u16, buf: &mut [u8]) -> DataRequest {
        let r2tl = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let neg = &self.negotiated;
        self.queue
            .put(|out| outbound::r2t(out, neg, cid, tag, 0, r2tl));
        DataRequest::Pending
    }

    fn undelivered_completions(&self) -> usize {
        self.queue.unsent_completions()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
#[path = "qpair_tests.rs"]
pub(super) mod tests;
