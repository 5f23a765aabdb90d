//! The owner of one RDMA connection: its CM id and QP, its completion queue (the completion
//! channel's descriptor in the reactor in interrupt mode, polled every turn in poll mode),
//! its own CM event channel (disconnects), and the registered memory its work requests use,
//! all sized when the connection is accepted and registered once:
//!
//! - receives: the device's shared receive queue, or (`no_srq`) `recv_depth` slots of one
//!   capsule (64 bytes + `in_capsule_data_size`) posted on the QP's own receive queue;
//! - responses: one 16-byte slot per response the host can take at once;
//! - staging: [`MAX_STAGING_SLOTS`] slots (at most the queue's depth) of `max_io_size` bytes,
//!   where RDMA READs land host data and from which RDMA WRITEs send data to the host. The
//!   bytes are copied between a staging slot and the command's pool buffer.
//!
//! It moves completions into the [`RdmaQpair`] and what the queue pair wants posted onto the
//! QP, nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;
use tracing::{debug, warn};

use super::RdmaContext;
use super::alarms::{AlarmGuard, Alarms, Uses};
use super::cq::{CqDriver, CqMode, POLL_BATCH};
use super::device::{DeviceEntry, Retired, SharedReceives};
use super::protocol::{CmAccept, CmRequest, QueueSizes};
use super::qpair::{Chunk, Post, QpairResources, RdmaQpair};
use crate::backend::IoDone;
use crate::controller::{Controller, ListenerAddr};
use crate::nvme::cqe::CQE_LEN;
use crate::nvme::sqe::SQE_LEN;
use crate::sys::verbs::{
    AcceptParams, CmEventKind, CmId, Cq, EventChannel, MemoryRegion, QpInit, SendOp, SendWr,
    WcOpcode, WcStatus, WorkCompletion,
};
use crate::transport::context::{Flow, IoCx};
use crate::transport::subscriber::{
    Polled, QueuePairs, Readiness, Subscriber, SubscriberCx, each_io_done,
};

/// Staging slots per queue at most: the data of this many commands moves at once, the
/// others wait (each slot is `max_io_size` bytes of registered memory).
pub const MAX_STAGING_SLOTS: u16 = 16;

/// The keys of the connection's descriptors.
const CM_CHANNEL: u16 = 0;
const COMPLETIONS: u16 = 1;

/// Work request kinds, in the high half of a work request ID; the low half is the slot.
mod wr_kind {
    /// 0, so that a receive's ID is its slot, as the device's shared receive queue posts it.
    pub const RECV: u64 = 0;
    pub const READ: u64 = 2;
    pub const WRITE: u64 = 3;
    pub const SEND: u64 = 4;
}

/// The error of work asked of a connection already closed.
fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "the connection is closed")
}

fn wr_id(kind: u64, slot: u16) -> u64 {
    (kind << 32) | u64::from(slot)
}

fn split_wr_id(wr_id: u64) -> (u64, u16) {
    #[allow(clippy::cast_possible_truncation)]
    let slot = wr_id as u16;
    (wr_id >> 32, slot)
}

/// Why the CQ is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// Its channel woke the reactor (interrupt mode).
    Event,
    /// A polled turn: poll mode, or interrupt mode's busy-poll window.
    Poll,
    /// The reactor is about to sleep (interrupt mode): re-arm and look once more.
    BeforeSleep,
}

/// What a work completion said, copied out of the poll batch.
#[derive(Debug, Clone, Copy)]
struct Completed {
    wr_id: u64,
    status: WcStatus,
    opcode: WcOpcode,
    byte_len: u32,
}

impl From<&WorkCompletion> for Completed {
    fn from(wc: &WorkCompletion) -> Self {
        Self {
            wr_id: wc.wr_id(),
            status: wc.status(),
            opcode: wc.opcode(),
            byte_len: wc.byte_len(),
        }
    }
}

/// Where the connection's command capsules arrive.
enum Receives {
    /// Its QP's own receive queue, posted from these slots (`no_srq`).
    Own(MemoryRegion),
    /// The device's shared receive queue.
    Shared(Arc<SharedReceives>),
}

/// What lives as long as the QP: the CM id holding it, the CM channel that reports its
/// disconnect, the CQ its work completes on.
struct Link {
    /// Declared first: dropping it destroys the QP, before the CQ and the memory go.
    id: CmId,
    /// The connection's own CM channel (the id was migrated onto it).
    events: EventChannel,
    cq: Cq,
}

pub struct RdmaConnection {
    /// Present until `close`, which may hand it to the device's shared receives (see
    /// [`Retired`]).
    link: Option<Link>,
    /// Raised when the device reports the QP, CQ or SRQ broken (see `alarms`); registered
    /// in `init`, where the reactor's notifier is known.
    alarms: Arc<Alarms>,
    alarm: Option<AlarmGuard>,
    device: usize,
    driver: CqDriver,
    recv: Receives,
    send: MemoryRegion,
    staging: MemoryRegion,
    capsule_len: usize,
    slot_len: usize,
    qpair: RdmaQpair,
    batch: Vec<WorkCompletion>,
    completed: Vec<Completed>,
    scratch: Vec<u8>,
    peer: Option<SocketAddr>,
    span: tracing::Span,
}

impl core::fmt::Debug for RdmaConnection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RdmaConnection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl RdmaConnection {
    /// Sets up the connection of a request (`id`, its event not yet answered) and accepts it.
    /// On failure the id comes back, to be rejected.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        mut id: CmId,
        request: &CmRequest,
        sizes: QueueSizes,
        read_depth: u8,
        device: &DeviceEntry,
        listener: ListenerAddr,
        context: Arc<RdmaContext>,
        now: Instant,
    ) -> Result<Self, (CmId, std::io::Error)> {
        let limits = context.limits;
        let capsule_len = SQE_LEN + limits.in_capsule_data_size as usize;
        let slot_len = limits.max_io_size as usize;
        let recv_depth = sizes.recv_depth;
        let staging_slots = recv_depth.min(MAX_STAGING_SLOTS);
        let resources = QpairResources {
            staging_slots,
            send_slots: sizes.send_depth,
            read_depth: u16::from(read_depth).min(staging_slots),
        };
        // Reads in flight, and a WRITE and a SEND per response in flight.
        let max_send_wr = u32::from(resources.read_depth) + 2 * u32::from(resources.send_slots);
        let cq_entries = u32::from(recv_depth) + max_send_wr;
        let attrs = device.attrs;
        if max_send_wr > attrs.max_qp_wr
            || u32::from(recv_depth) > attrs.max_qp_wr
            || cq_entries > attrs.max_cqe
        {
            let err = std::io::Error::other(format!(
                "the device allows {} work requests and {} CQ entries; the queue needs {} and {}",
                attrs.max_qp_wr, attrs.max_cqe, max_send_wr, cq_entries
            ));
            return Err((id, err));
        }
        let shared = device.shared_receives.clone();
        if let Some(shared) = &shared {
            shared.harvest(now);
        }
        let built = (|| {
            let events = EventChannel::new()?;
            let recv = match &shared {
                Some(shared) => Receives::Shared(Arc::clone(shared)),
                None => Receives::Own(MemoryRegion::new(
                    &device.pd,
                    capsule_len * usize::from(recv_depth),
                )?),
            };
            let send = MemoryRegion::new(
                &device.pd,
                CQE_LEN * usize::from(resources.send_slots.max(1)),
            )?;
            let staging =
                MemoryRegion::new(&device.pd, slot_len * usize::from(staging_slots.max(1)))?;
            let cq = Cq::new(&device.device, cq_entries)?;
            Ok::<_, std::io::Error>((events, recv, send, staging, cq))
        })();
        let (events, recv, send, staging, cq) = match built {
            Ok(parts) => parts,
            Err(err) => return Err((id, err)),
        };
        let setup = (|| {
            id.migrate(&events)?;
            let (srq, regions) = match &recv {
                Receives::Own(region) => (None, vec![region, &send, &staging]),
                Receives::Shared(shared) => (Some(shared.srq()), vec![&send, &staging]),
            };
            id.create_qp(
                &device.pd,
                &QpInit {
                    send_cq: &cq,
                    recv_cq: &cq,
                    srq,
                    max_send_wr,
                    max_recv_wr: u32::from(recv_depth),
                    max_send_sge: 1,
                    max_recv_sge: 1,
                },
                &regions,
            )?;
            if let Receives::Own(region) = &recv {
                for slot in 0..recv_depth {
                    let sge = region
                        .sge(usize::from(slot) * capsule_len, capsule_len)
                        .map_err(std::io::Error::other)?;
                    id.post_recv(wr_id(wr_kind::RECV, slot), &[sge])?;
                }
            }
            id.accept(
                &CmAccept::new(recv_depth).emit(),
                AcceptParams {
                    responder_resources: 0,
                    initiator_depth: read_depth,
                    rnr_retry_count: 7,
                },
            )
        })();
        if let Err(err) = setup {
            return Err((id, err));
        }
        let peer = id.peer_addr();
        let local_ip = id.local_addr().map(|a| a.ip());
        debug!(
            ?peer,
            qid = request.qid,
            recv_depth,
            send_slots = resources.send_slots,
            staging_slots,
            read_depth,
            srq = matches!(recv, Receives::Shared(_)),
            "RDMA connection accepted"
        );
        let mode = if context.interrupt_mode {
            CqMode::Interrupt
        } else {
            CqMode::Poll
        };
        let alarms = Arc::clone(&context.alarms);
        let qpair = RdmaQpair::new(context, listener, local_ip, resources, sizes, now);
        Ok(Self {
            link: Some(Link { id, events, cq }),
            alarms,
            alarm: None,
            device: device.device.handle(),
            driver: CqDriver::new(mode),
            recv,
            send,
            staging,
            capsule_len,
            slot_len,
            qpair,
            batch: (0..POLL_BATCH).map(|_| WorkCompletion::default()).collect(),
            completed: Vec::with_capacity(POLL_BATCH),
            scratch: vec![0; capsule_len.max(slot_len)],
            peer,
            span: tracing::info_span!(
                "qpair",
                peer = ?peer,
                qid = tracing::field::Empty,
                subnqn = tracing::field::Empty,
                cntlid = tracing::field::Empty
            ),
        })
    }

    /// Runs `f` inside the queue's span.
    fn in_span<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let span = self.span.clone();
        let _entered = span.enter();
        f(self)
    }

    /// Takes what the CQ holds (as `take` says: see `cq.rs`), handles it, and posts what
    /// follows.
    fn run_completions(&mut self, take: Take, cx: &mut IoCx<'_>, now: Instant) -> (u64, Flow) {
        let mut completed = std::mem::take(&mut self.completed);
        completed.clear();
        let collect = |wc: &WorkCompletion| completed.push(Completed::from(wc));
        let Some(link) = self.link.as_mut() else {
            return (0, Flow::Close);
        };
        let (cq, batch) = (&mut link.cq, &mut self.batch);
        let result = match take {
            Take::Event => self.driver.handle_event(cq, batch, collect),
            Take::Poll => self.driver.poll(cq, batch, collect),
            Take::BeforeSleep => self.driver.before_sleep(cq, batch, collect),
        };
        let mut flow = match result {
            Ok(_) => Flow::Continue,
            Err(err) => {
                warn!(%err, "completion queue failed; closing");
                Flow::Close
            }
        };
        let work = completed.len() as u64;
        for done in &completed {
            if flow == Flow::Close {
                break;
            }
            flow = self.handle_completion(*done, cx, now);
        }
        self.completed = completed;
        if work > 0 {
            self.qpair.report_activity(now);
        }
        (work, self.settle(flow, cx))
    }

    fn handle_completion(&mut self, done: Completed, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let (kind, slot) = split_wr_id(done.wr_id);
        if !done.status.is_success() {
            if let (wr_kind::RECV, Receives::Shared(shared)) = (kind, &self.recv) {
                // A receive the QP had taken from the device's SRQ: the slot goes back
                // to the other connections.
                let _ = shared.repost(slot);
            }
            if done.status == WcStatus::FLUSHED {
                debug!("work flushed: the connection is going down");
            } else {
                warn!(status = ?done.status, wr_id = done.wr_id, "work request failed; closing");
            }
            return Flow::Close;
        }
        match kind {
            wr_kind::RECV => {
                let len = (done.byte_len as usize).min(self.capsule_len);
                let copied = match &self.recv {
                    Receives::Own(region) => region.read_at(
                        usize::from(slot) * self.capsule_len,
                        &mut self.scratch[..len],
                    ),
                    Receives::Shared(shared) => shared.read(slot, &mut self.scratch[..len]),
                };
                // The capsule is copied out (or lost): the slot takes the next one at once.
                let repost = self.repost_receive(slot);
                if copied.is_err() {
                    return Flow::Close;
                }
                if let Err(err) = repost {
                    warn!(%err, "cannot post a receive; closing");
                    return Flow::Close;
                }
                let scratch = std::mem::take(&mut self.scratch);
                let flow = self.qpair.handle_capsule(&scratch[..len], cx, now);
                self.scratch = scratch;
                flow
            }
            wr_kind::READ => {
                let Some(len) = self.qpair.read_len(slot) else {
                    return Flow::Continue;
                };
                let len = (len as usize).min(self.slot_len);
                let at = usize::from(slot) * self.slot_len;
                if self.staging.read_at(at, &mut self.scratch[..len]).is_err() {
                    return Flow::Close;
                }
                let scratch = std::mem::take(&mut self.scratch);
                let flow = self.qpair.handle_read_done(slot, &scratch[..len], cx, now);
                self.scratch = scratch;
                flow
            }
            wr_kind::SEND => {
                self.qpair.handle_send_done(slot);
                Flow::Continue
            }
            wr_kind::WRITE => Flow::Continue,
            _ => {
                debug!(opcode = ?done.opcode, wr_id = done.wr_id, "completion of no work of ours");
                Flow::Continue
            }
        }
    }

    /// Gives a receive slot back: to the QP's own receive queue or to the device's SRQ.
    fn repost_receive(&self, slot: u16) -> std::io::Result<()> {
        match &self.recv {
            Receives::Own(region) => {
                let sge = region
                    .sge(usize::from(slot) * self.capsule_len, self.capsule_len)
                    .map_err(std::io::Error::other)?;
                let link = self.link.as_ref().ok_or_else(closed)?;
                link.id.post_recv(wr_id(wr_kind::RECV, slot), &[sge])
            }
            Receives::Shared(shared) => shared.repost(slot),
        }
    }

    /// Posts what the queue pair wants posted, then says whether the connection stays.
    fn settle(&mut self, flow: Flow, cx: &mut IoCx<'_>) -> Flow {
        if flow == Flow::Close || self.qpair.is_closing() {
            return Flow::Close;
        }
        while let Some(post) = self.qpair.poll_post() {
            if let Err(err) = self.post(post, cx) {
                warn!(%err, "cannot post work; closing");
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    fn post(&mut self, post: Post, cx: &mut IoCx<'_>) -> std::io::Result<()> {
        let id = &self.link.as_ref().ok_or_else(closed)?.id;
        match post {
            Post::Read {
                slot,
                len,
                remote_addr,
                rkey,
            } => {
                let sge = self
                    .staging
                    .sge(usize::from(slot) * self.slot_len, len as usize)
                    .map_err(std::io::Error::other)?;
                id.post_send(&[SendWr {
                    wr_id: wr_id(wr_kind::READ, slot),
                    op: SendOp::RdmaRead { remote_addr, rkey },
                    sges: &[sge],
                    signaled: true,
                }])
            }
            Post::Respond {
                send_slot,
                cqe,
                data,
                invalidate,
            } => {
                let mut bytes = [0u8; CQE_LEN];
                cqe.emit(&mut bytes);
                let at = usize::from(send_slot) * CQE_LEN;
                self.send
                    .write_at(at, &bytes)
                    .map_err(std::io::Error::other)?;
                let response = self.send.sge(at, CQE_LEN).map_err(std::io::Error::other)?;
                let send_op = match invalidate {
                    Some(rkey) => SendOp::SendWithInvalidate { rkey },
                    None => SendOp::Send,
                };
                let send = SendWr {
                    wr_id: wr_id(wr_kind::SEND, send_slot),
                    op: send_op,
                    sges: &[response],
                    signaled: true,
                };
                let Some(out) = data else {
                    return id.post_send(&[send]);
                };
                let len = (out.len as usize).min(self.slot_len);
                let base = usize::from(out.slot) * self.slot_len;
                let staging = &self.staging;
                let mut copied = Ok(());
                let buf = out.fill.copy_into(len, |offset, chunk| {
                    let done = match chunk {
                        Chunk::Bytes(data) => staging.write_at(base + offset, data),
                        Chunk::Zeroes(n) => staging.zero_at(base + offset, n),
                    };
                    if let Err(err) = done {
                        copied = Err(err);
                    }
                });
                if let Some(buf) = buf {
                    cx.pool.give(buf);
                }
                copied.map_err(std::io::Error::other)?;
                let data = staging.sge(base, len).map_err(std::io::Error::other)?;
                // The WRITE needs no completion of its own: the SEND after it completes
                // only once it has (a reliable connection's send queue runs in order).
                id.post_send(&[
                    SendWr {
                        wr_id: wr_id(wr_kind::WRITE, out.slot),
                        op: SendOp::RdmaWrite {
                            remote_addr: out.remote_addr,
                            rkey: out.rkey,
                        },
                        sges: &[data],
                        signaled: false,
                    },
                    send,
                ])
            }
        }
    }

    fn handle_cm_events(&mut self) -> Flow {
        let Some(link) = self.link.as_ref() else {
            return Flow::Close;
        };
        loop {
            match link.events.get_event() {
                Ok(Some(event)) => match event.kind {
                    CmEventKind::Established => debug!("connection established"),
                    CmEventKind::Disconnected
                    | CmEventKind::DeviceRemoval
                    | CmEventKind::TimewaitExit
                    | CmEventKind::ConnectError
                    | CmEventKind::Unreachable
                    | CmEventKind::Rejected => {
                        debug!(event = ?event.kind, "connection ended");
                        return Flow::Close;
                    }
                    other => debug!(event = ?other, "CM event"),
                },
                Ok(None) => return Flow::Continue,
                Err(err) => {
                    warn!(%err, "reading CM events failed; closing");
                    return Flow::Close;
                }
            }
        }
    }
}

impl Subscriber for RdmaConnection {
    fn init(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> std::io::Result<()> {
        let link = self.link.as_mut().ok_or_else(closed)?;
        let uses = Uses {
            device: self.device,
            qp_num: link.id.qp_num().unwrap_or(0),
            cq: link.cq.handle(),
            srq: match &self.recv {
                Receives::Shared(shared) => Some(shared.srq().handle()),
                Receives::Own(_) => None,
            },
        };
        self.alarm = Some(self.alarms.register(uses, cx.io.async_notifier()));
        cx.register(&mut link.events, CM_CHANNEL, Interest::READABLE)?;
        if self.driver.mode() == CqMode::Interrupt {
            cx.register(&mut link.cq, COMPLETIONS, Interest::READABLE)?;
        }
        // Arm (interrupt mode) and take what completed since the accept.
        let mut completed = std::mem::take(&mut self.completed);
        completed.clear();
        self.driver.start(&mut link.cq, &mut self.batch, |wc| {
            completed.push(Completed::from(wc));
        })?;
        let mut flow = Flow::Continue;
        for done in &completed {
            if flow == Flow::Close {
                break;
            }
            flow = self.handle_completion(*done, &mut cx.io, now);
        }
        self.completed = completed;
        if self.settle(flow, &mut cx.io) == Flow::Close {
            return Err(std::io::Error::other("connection failed while starting"));
        }
        Ok(())
    }

    fn process(&mut self, ready: Readiness, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        self.in_span(|conn| match ready.key {
            CM_CHANNEL => conn.handle_cm_events(),
            COMPLETIONS => conn.run_completions(Take::Event, &mut cx.io, now).1,
            _ => Flow::Continue,
        })
    }

    fn deadline(&self) -> Option<Instant> {
        self.qpair.deadline()
    }

    fn handle_timer(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        self.in_span(|conn| {
            let flow = conn.qpair.handle_timer(now);
            conn.settle(flow, &mut cx.io)
        })
    }

    /// Polled every turn in poll mode; in interrupt mode in the busy-poll window after work,
    /// with the CQ left unarmed until `before_sleep`.
    fn wants_poll(&self) -> bool {
        true
    }

    fn poll(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Polled {
        self.in_span(|conn| {
            let (work, flow) = conn.run_completions(Take::Poll, &mut cx.io, now);
            Polled { work, flow }
        })
    }

    fn before_sleep(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Polled {
        self.in_span(|conn| {
            let (work, flow) = conn.run_completions(Take::BeforeSleep, &mut cx.io, now);
            Polled { work, flow }
        })
    }

    fn handle_io_done(
        &mut self,
        done: &mut dyn Iterator<Item = IoDone>,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        self.in_span(|conn| {
            let flow = each_io_done(done, |io| conn.qpair.handle_io_done(io, &mut cx.io, now));
            conn.settle(flow, &mut cx.io)
        })
    }

    fn handle_buffers_granted(
        &mut self,
        tag: u16,
        credits: u32,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        self.in_span(|conn| {
            let flow = conn
                .qpair
                .handle_buffers_granted(tag, credits, &mut cx.io, now);
            conn.settle(flow, &mut cx.io)
        })
    }

    fn handle_async_events(&mut self, cx: &mut SubscriberCx<'_>, _now: Instant) -> Flow {
        self.in_span(|conn| {
            if let Some(state) = conn.alarm.as_ref().map(AlarmGuard::state) {
                if state.is_raised() {
                    if let (true, Receives::Shared(shared)) = (state.srq_broken(), &conn.recv) {
                        shared.mark_broken();
                    }
                    warn!("the RDMA device reported this connection's queues broken; closing");
                    return Flow::Close;
                }
            }
            conn.qpair.poll_async_events();
            conn.settle(Flow::Continue, &mut cx.io)
        })
    }

    fn queue_pairs(&self) -> QueuePairs {
        QueuePairs::one(self.qpair.qid())
    }

    fn controller(&self) -> Option<&Arc<Controller>> {
        self.qpair.controller()
    }

    fn accepted_on(&self) -> Option<&ListenerAddr> {
        Some(self.qpair.listener())
    }

    fn in_flight(&self) -> usize {
        self.qpair.in_flight()
    }

    /// Disconnects (posted work is flushed), tears the queue down (reporting the controller
    /// if this was its admin queue); the QP, CQ and memory go when the connection is dropped,
    /// or, on an SRQ, once the receives the QP took are back (see [`Retired`]).
    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        self.in_span(|conn| {
            conn.alarm = None;
            if let Some(mut link) = conn.link.take() {
                let _ = cx.deregister(&mut link.events);
                if conn.driver.mode() == CqMode::Interrupt {
                    let _ = cx.deregister(&mut link.cq);
                }
                let _ = link.id.disconnect();
                conn.driver.finish(&mut link.cq);
                if let Receives::Shared(shared) = &conn.recv {
                    let Link { id, events, cq } = link;
                    let now = Instant::now();
                    shared.retire(Retired::new(id, events, cq, now), now);
                }
            }
            if let Some(ctrlr) = conn.qpair.close() {
                cx.io.controller_gone(ctrlr);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::rdma::device::receive_slot;

    #[test]
    fn work_request_ids_round_trip() {
        for (kind, slot) in [
            (wr_kind::RECV, 0),
            (wr_kind::READ, 15),
            (wr_kind::SEND, 65535),
        ] {
            assert_eq!(split_wr_id(wr_id(kind, slot)), (kind, slot));
        }
        assert_ne!(wr_id(wr_kind::WRITE, 3), wr_id(wr_kind::SEND, 3));
        // The device's SRQ posts a receive with its slot as ID, and tells receives from the
        // rest of a retired QP's work by it.
        assert_eq!(wr_id(wr_kind::RECV, 4095), 4095);
        assert_eq!(receive_slot(wr_id(wr_kind::RECV, 7)), Some(7));
        for kind in [wr_kind::READ, wr_kind::WRITE, wr_kind::SEND] {
            assert_eq!(receive_slot(wr_id(kind, 7)), None);
        }
    }
}
