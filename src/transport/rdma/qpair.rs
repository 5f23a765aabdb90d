//! One NVMe/RDMA queue pair as a state machine with no verbs.
//!
//! `AwaitConnect -> Ready -> Closing`. What the connection's completion queue reports goes in
//! ([`RdmaQpair::handle_capsule`] for a received command, [`RdmaQpair::handle_read_done`]
//! for host data an RDMA READ brought, [`RdmaQpair::handle_send_done`] for a response the
//! host has); what to post comes out of [`RdmaQpair::poll_post`], with the registered slots
//! it uses already chosen: a staging slot for data (READ target, WRITE source), a send slot
//! for the 16-byte response. Every resource is a fixed pool sized when the queue was
//! accepted, so a host can make the queue hold no more than that: a command whose data or
//! response finds no free slot waits, in order, until one is freed.
//!
//! What every transport's queue does (the command table, SQ head, buffers, backend requests,
//! admin commands) is the [`QueueCore`]'s; this file keeps what is NVMe/RDMA: capsules, keyed
//! and offset SGLs, RDMA READ for host data, RDMA WRITE then SEND for data to the host, SEND
//! with Invalidate when the host asks for it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::RdmaContext;
use super::protocol::{Capsule, DataDescriptor, QueueSizes, SglLimits, parse_sgl};
use crate::backend::IoDone;
use crate::controller::{Controller, ListenerAddr};
use crate::nvme::connect::{ConnectCmd, invalid_parameter_dw0, sqe_offset};
use crate::nvme::opcode::{self, fctype};
use crate::nvme::{Cqe, Sgl, Sqe, Status};
use crate::transport::buffer_pool::DataBuf;
use crate::transport::context::{Flow, IoCx};
use crate::transport::queue::{
    DataProgress, DataRequest, HostData, QueueCore, Received, Responder,
};

/// How long a connected host may take to send Connect.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The fabrics Connect command's data.
const CONNECT_DATA_LEN: u32 = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitConnect,
    Ready,
    /// A protocol error or a disconnect: nothing more is taken in.
    Closing,
}

/// How many of each registered slot a queue has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpairResources {
    /// Staging buffers of `max_io_size` bytes: data in flight to or from the host.
    pub staging_slots: u16,
    /// Response buffers (16 bytes): responses posted and not yet completed.
    pub send_slots: u16,
    /// RDMA READs in flight at most (the ORD the accept granted).
    pub read_depth: u16,
}

/// One thing for the connection to post.
#[derive(Debug)]
pub enum Post {
    /// RDMA READ of `len` bytes of the host's memory into staging slot `slot`.
    Read {
        slot: u16,
        len: u32,
        remote_addr: u64,
        rkey: u32,
    },
    /// A response: optionally an RDMA WRITE of data from a staging slot first, then a SEND of
    /// the completion from send slot `send_slot` (with Invalidate of `invalidate`).
    Respond {
        send_slot: u16,
        cqe: Cqe,
        data: Option<DataOut>,
        invalidate: Option<u32>,
    },
}

/// Data to RDMA WRITE to the host before a response.
#[derive(Debug)]
pub struct DataOut {
    pub slot: u16,
    pub len: u32,
    pub remote_addr: u64,
    pub rkey: u32,
    /// What the connection copies into the staging slot before posting.
    pub fill: Fill,
}

/// The bytes of a [`DataOut`].
#[derive(Debug)]
pub enum Fill {
    /// A buffer a read filled: copied, then given back to the pool.
    Buffer(DataBuf),
    /// Bytes the controller produced (admin data); the rest of the length is zeroes.
    Bytes(Vec<u8>),
    /// `len` zero bytes.
    Zeroes,
}

/// A piece of what a [`Fill`] puts into a staging slot.
#[derive(Debug, Clone, Copy)]
pub enum Chunk<'a> {
    Bytes(&'a [u8]),
    Zeroes(usize),
}

impl Fill {
    /// Puts the first `len` bytes of what this holds, zero-filled past its end, through
    /// `put(offset, chunk)`; returns the buffer to give back to the pool, if any.
    pub fn copy_into(self, len: usize, mut put: impl FnMut(usize, Chunk<'_>)) -> Option<DataBuf> {
        let mut bytes_then_zeroes = |data: &[u8]| {
            let n = data.len().min(len);
            put(0, Chunk::Bytes(&data[..n]));
            if n < len {
                put(n, Chunk::Zeroes(len - n));
            }
        };
        match self {
            Self::Buffer(buf) => {
                bytes_then_zeroes(&buf);
                Some(buf)
            }
            Self::Bytes(data) => {
                bytes_then_zeroes(&data);
                None
            }
            Self::Zeroes => {
                put(0, Chunk::Zeroes(len));
                None
            }
        }
    }
}

/// What a READ brings the data of.
#[derive(Debug, Clone, Copy)]
enum ReadFor {
    /// A Connect whose data is in host memory (Linux's admin queue): connect once it is in.
    Connect(Sqe),
    /// A command's host data, for the core's `tag`.
    Command { tag: u16, cid: u16 },
}

#[derive(Debug)]
struct ReadRequest {
    purpose: ReadFor,
    len: u32,
    remote_addr: u64,
    rkey: u32,
}

#[derive(Debug)]
struct Response {
    cqe: Cqe,
    data: Option<(u32, u64, u32, Fill)>,
    invalidate: Option<u32>,
}

/// A fixed set of slot numbers, handed out and taken back.
#[derive(Debug)]
struct Slots {
    free: Vec<u16>,
}

impl Slots {
    fn new(n: u16) -> Self {
        Self {
            free: (0..n).rev().collect(),
        }
    }

    fn take(&mut self) -> Option<u16> {
        self.free.pop()
    }

    fn give(&mut self, slot: u16) {
        self.free.push(slot);
    }

    fn available(&self) -> usize {
        self.free.len()
    }
}

/// The sending half: the core's answers, turned into posts as slots allow.
#[derive(Debug)]
struct RdmaOutput {
    /// The data descriptor of each command in flight, by command ID.
    descriptors: HashMap<u16, DataDescriptor>,
    reads: VecDeque<ReadRequest>,
    responses: VecDeque<Response>,
    staging: Slots,
    send: Slots,
    /// What each staging slot holds a READ for (by slot).
    reading: Vec<Option<(ReadFor, u32)>>,
    /// The staging slot each send slot's response wrote its data from.
    writing: Vec<Option<u16>>,
    reads_in_flight: u16,
    read_depth: u16,
    max_io_size: u32,
}

impl RdmaOutput {
    fn respond(&mut self, cqe: Cqe, data: Option<Fill>, len: usize) {
        let desc = self.descriptors.remove(&cqe.cid);
        let invalidate = desc.and_then(|d| d.invalidate_key());
        let data = match (data, desc) {
            (
                Some(fill),
                Some(DataDescriptor::Keyed {
                    address,
                    key,
                    length,
                    ..
                }),
            ) if len > 0 => {
                let len = u32::try_from(len).unwrap_or(u32::MAX).min(length);
                Some((len, address, key, fill))
            }
            (Some(_), _) if len > 0 => {
                // Data for the host with nowhere to put it: the SGL was checked when the
                // command came, so this is a command that should have had none.
                warn!(
                    cid = cqe.cid,
                    "no host buffer for the data of a command; failing it"
                );
                let mut failed = cqe;
                failed.status = Status::DATA_SGL_LENGTH_INVALID.with_dnr();
                failed.dw0 = 0;
                failed.dw1 = 0;
                self.responses.push_back(Response {
                    cqe: failed,
                    data: None,
                    invalidate,
                });
                return;
            }
            _ => None,
        };
        self.responses.push_back(Response {
            cqe,
            data,
            invalidate,
        });
    }
}

impl Responder for RdmaOutput {
    fn complete(&mut self, cqe: Cqe) {
        self.respond(cqe, None, 0);
    }

    fn complete_with_data(&mut self, cid: u16, data: &[u8], zeroes: usize, cqe: Cqe) {
        let _ = cid;
        let len = data.len() + zeroes;
        let fill = Fill::Bytes(data.to_vec());
        self.respond(cqe, Some(fill), len);
    }

    fn complete_with_buffer(&mut self, cid: u16, data: DataBuf, cqe: Cqe) {
        let _ = cid;
        let len = data.len();
        self.respond(cqe, Some(Fill::Buffer(data)), len);
    }

    fn complete_with_zeroes(&mut self, cid: u16, len: usize, cqe: Cqe) {
        let _ = cid;
        self.respond(cqe, Some(Fill::Zeroes), len);
    }

    fn request_data(&mut self, cid: u16, tag: u16, buf: &mut [u8]) -> DataRequest {
        let Some(DataDescriptor::Keyed { address, key, .. }) = self.descriptors.get(&cid) else {
            return DataRequest::Failed(Status::SGL_DESCRIPTOR_TYPE_INVALID.with_dnr());
        };
        let Some(len) = u32::try_from(buf.len())
            .ok()
            .filter(|&l| l <= self.max_io_size)
        else {
            return DataRequest::Failed(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
        };
        self.reads.push_back(ReadRequest {
            purpose: ReadFor::Command { tag, cid },
            len,
            remote_addr: *address,
            rkey: *key,
        });
        DataRequest::Pending
    }

    /// Responses not yet posted. A posted SEND may have reached the host before its work
    /// completion reaches us, and the host may already have reused its slot.
    fn undelivered_completions(&self) -> usize {
        self.responses.len()
    }
}

/// The state machine of one queue pair.
#[derive(Debug)]
pub struct RdmaQpair {
    context: Arc<RdmaContext>,
    listener: ListenerAddr,
    /// The address the host connected to, reported in the discovery log for wildcards.
    local_ip: Option<IpAddr>,
    /// The queue the connect request asked for and the accept granted: its Connect must
    /// name the same queue and no more entries.
    accepted: QueueSizes,
    phase: Phase,
    core: QueueCore,
    out: RdmaOutput,
    setup_deadline: Option<Instant>,
}

impl RdmaQpair {
    pub fn new(
        context: Arc<RdmaContext>,
        listener: ListenerAddr,
        local_ip: Option<IpAddr>,
        resources: QpairResources,
        accepted: QueueSizes,
        now: Instant,
    ) -> Self {
        let max_io_size = context.limits.max_io_size;
        Self {
            context,
            listener,
            local_ip,
            accepted,
            phase: Phase::AwaitConnect,
            core: QueueCore::new(),
            out: RdmaOutput {
                descriptors: HashMap::new(),
                reads: VecDeque::new(),
                responses: VecDeque::new(),
                staging: Slots::new(resources.staging_slots),
                send: Slots::new(resources.send_slots),
                reading: (0..resources.staging_slots).map(|_| None).collect(),
                writing: (0..resources.send_slots).map(|_| None).collect(),
                reads_in_flight: 0,
                read_depth: resources.read_depth.max(1),
                max_io_size,
            },
            setup_deadline: Some(now + SETUP_TIMEOUT),
        }
    }

    pub fn listener(&self) -> &ListenerAddr {
        &self.listener
    }

    pub fn controller(&self) -> Option<&Arc<Controller>> {
        match self.phase {
            Phase::Ready => self.core.controller(),
            _ => None,
        }
    }

    /// The queue id once connected.
    pub fn qid(&self) -> Option<u16> {
        match self.phase {
            Phase::Ready => self.core.qid(),
            _ => None,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    pub fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    pub fn deadline(&self) -> Option<Instant> {
        let setup = match self.phase {
            Phase::AwaitConnect => self.setup_deadline,
            Phase::Ready | Phase::Closing => None,
        };
        match (setup, self.core.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timer(&mut self, now: Instant) -> Flow {
        if self.phase == Phase::AwaitConnect && self.setup_deadline.is_some_and(|at| now >= at) {
            warn!("host did not send Connect in time; closing");
            return Flow::Close;
        }
        self.core.check_timers(now)
    }

    fn sgl_limits(&self) -> SglLimits {
        SglLimits {
            max_io_size: self.context.limits.max_io_size,
            in_capsule_data_size: self.context.limits.in_capsule_data_size,
        }
    }

    /// A receive completed with `received` bytes: one command capsule.
    pub fn handle_capsule(&mut self, received: &[u8], cx: &mut IoCx<'_>, now: Instant) -> Flow {
        let Some(capsule) = Capsule::parse(received) else {
            warn!(
                len = received.len(),
                "capsule shorter than a command; closing"
            );
            self.phase = Phase::Closing;
            return Flow::Close;
        };
        match self.phase {
            Phase::AwaitConnect => self.handle_connect_capsule(capsule, cx, now),
            Phase::Ready => self.handle_command(capsule, cx, now),
            Phase::Closing => Flow::Close,
        }
    }

    fn handle_connect_capsule(
        &mut self,
        capsule: Capsule<'_>,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        let sqe = capsule.sqe;
        let is_connect = sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::CONNECT;
        let desc = parse_sgl(&sqe, capsule.data.len(), &self.sgl_limits());
        match (is_connect, desc) {
            (true, Ok(desc @ DataDescriptor::Keyed { .. })) => {
                // Linux's host sends the admin queue's Connect data by reference: fetch it,
                // then connect (`handle_read_done`).
                let DataDescriptor::Keyed {
                    address,
                    length,
                    key,
                    ..
                } = desc
                else {
                    return Flow::Continue;
                };
                if length < CONNECT_DATA_LEN {
                    let cqe = Cqe::new(sqe.cid(), Status::CONNECT_INVALID_PARAMETERS.with_dnr());
                    self.core.respond(cqe, &mut self.out);
                    return Flow::Continue;
                }
                self.out.descriptors.insert(sqe.cid(), desc);
                self.out.reads.push_back(ReadRequest {
                    purpose: ReadFor::Connect(sqe),
                    len: CONNECT_DATA_LEN,
                    remote_addr: address,
                    rkey: key,
                });
                Flow::Continue
            }
            (true, Ok(DataDescriptor::InCapsule { offset, length })) => {
                let (start, len) = (offset as usize, length as usize);
                let data = &capsule.data[start..start + len];
                self.connect(&sqe, data, cx, now);
                Flow::Continue
            }
            (true, Err(status)) => {
                self.core
                    .respond(Cqe::new(sqe.cid(), status), &mut self.out);
                Flow::Continue
            }
            // Anything before Connect: the core answers with a sequence error.
            (false, _) => {
                self.connect(&sqe, &[], cx, now);
                Flow::Continue
            }
        }
    }

    /// Hands a Connect to the core, with its data (in the capsule or fetched); the core takes
    /// Connect data as in-capsule, so a fetched Connect is shown to it that way.
    fn connect(&mut self, sqe: &Sqe, data: &[u8], cx: &IoCx<'_>, now: Instant) {
        let mut shown = *sqe;
        if sqe.opcode() == opcode::FABRICS && sqe.fctype() == fctype::CONNECT {
            if let Some(cqe) = self.mismatched_connect(sqe) {
                self.core.respond(cqe, &mut self.out);
                return;
            }
            shown.set_sgl(Sgl::in_capsule(u32::try_from(data.len()).unwrap_or(0)));
        }
        let attached = self.core.connect(
            &shown,
            data,
            true,
            &self.context.registry,
            &self.listener,
            self.local_ip,
            cx,
            &mut self.out,
            now,
        );
        if attached.is_some() {
            self.setup_deadline = None;
            self.phase = Phase::Ready;
        }
    }

    /// A Connect for another queue than the connection was accepted for, or for more entries
    /// than the receives posted for it (NVMe/RDMA 1.0b, 3.2: QID and SQSIZE match the private
    /// data's QID and HSQSIZE): refused as an invalid parameter, pointing at the field, so a
    /// host cannot attach a queue whose depth the accept never granted.
    fn mismatched_connect(&self, sqe: &Sqe) -> Option<Cqe> {
        let cmd = ConnectCmd::parse(sqe);
        let ipo = if cmd.qid != self.accepted.qid {
            sqe_offset::QID
        } else if u32::from(cmd.sqsize) + 1 > u32::from(self.accepted.recv_depth) {
            sqe_offset::SQSIZE
        } else {
            return None;
        };
        debug!(
            qid = cmd.qid,
            sqsize = cmd.sqsize,
            accepted_qid = self.accepted.qid,
            accepted_entries = self.accepted.recv_depth,
            "Connect does not match the connect request"
        );
        let mut cqe = Cqe::new(sqe.cid(), Status::CONNECT_INVALID_PARAMETERS.with_dnr());
        cqe.dw0 = invalid_parameter_dw0(false, ipo);
        Some(cqe)
    }

    fn handle_command(&mut self, capsule: Capsule<'_>, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        match self.core.receive(&self.out) {
            Received::Accepted => {}
            Received::Stale => return Flow::Close,
            Received::Overflow => {
                warn!("more commands than the queue holds; closing");
                self.phase = Phase::Closing;
                return Flow::Close;
            }
        }
        let sqe = capsule.sqe;
        let cid = sqe.cid();
        let desc = match parse_sgl(&sqe, capsule.data.len(), &self.sgl_limits()) {
            Ok(DataDescriptor::InCapsule { length, .. })
                if length > 0 && transfers_to_host(&sqe) =>
            {
                // In-capsule data is host-to-controller only (Linux's nvmet answers so too).
                Err(Status::INVALID_FIELD.with_dnr())
            }
            other => other,
        };
        let desc = match desc {
            Ok(desc) => desc,
            Err(status) => {
                self.core.respond(Cqe::new(cid, status), &mut self.out);
                return Flow::Continue;
            }
        };
        self.out.descriptors.insert(cid, desc);
        let data = capsule.data;
        let locate = move |len: usize| match desc {
            DataDescriptor::InCapsule { offset, length } => {
                if len > length as usize {
                    return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
                }
                let start = offset as usize;
                Ok(HostData::InCapsule(&data[start..start + len]))
            }
            DataDescriptor::Keyed { length, .. } => {
                if len > length as usize {
                    return Err(Status::DATA_SGL_LENGTH_INVALID.with_dnr());
                }
                Ok(HostData::Fetch)
            }
        };
        self.core
            .submit(sqe, desc.length(), locate, cx, &mut self.out, now)
    }

    /// Bytes a READ into staging slot `slot` brings, if one is in flight there.
    pub fn read_len(&self, slot: u16) -> Option<u32> {
        self.out
            .reading
            .get(usize::from(slot))
            .copied()
            .flatten()
            .map(|(_, len)| len)
    }

    /// The READ into `slot` completed with `data` (what the connection copied out of the
    /// slot, [`read_len`](Self::read_len) bytes).
    pub fn handle_read_done(
        &mut self,
        slot: u16,
        data: &[u8],
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        let Some((purpose, _)) = self
            .out
            .reading
            .get_mut(usize::from(slot))
            .and_then(Option::take)
        else {
            return Flow::Continue;
        };
        self.out.staging.give(slot);
        self.out.reads_in_flight = self.out.reads_in_flight.saturating_sub(1);
        match purpose {
            ReadFor::Connect(sqe) => {
                if self.phase == Phase::AwaitConnect {
                    self.connect(&sqe, data, cx, now);
                }
                Flow::Continue
            }
            ReadFor::Command { tag, cid } => {
                if self.phase != Phase::Ready {
                    return Flow::Continue;
                }
                if self.core.is_stale() {
                    return Flow::Close;
                }
                match self.core.data_received(tag, cid, 0, data, true) {
                    DataProgress::Complete => self.core.data_complete(tag, cx, &mut self.out, now),
                    // One READ brings all of a command's data.
                    DataProgress::More | DataProgress::Unexpected => {
                        debug!(cid, tag, "data for no command waiting for it");
                        Flow::Continue
                    }
                }
            }
        }
    }

    /// The SEND of send slot `send_slot` completed: the host has the response; its slots are
    /// free again.
    pub fn handle_send_done(&mut self, send_slot: u16) {
        let Some(writing) = self.out.writing.get_mut(usize::from(send_slot)) else {
            return;
        };
        if let Some(staging) = writing.take() {
            self.out.staging.give(staging);
        }
        self.out.send.give(send_slot);
    }

    /// The next work request to post, if its slots are free.
    pub fn poll_post(&mut self) -> Option<Post> {
        let out = &mut self.out;
        // Responses first: they free slots; reads take them.
        if let Some(front) = out.responses.front() {
            let needs_staging = front.data.is_some();
            if out.send.available() > 0 && (!needs_staging || out.staging.available() > 0) {
                let response = out.responses.pop_front()?;
                let send_slot = out.send.take()?;
                let data = match response.data {
                    Some((len, remote_addr, rkey, fill)) => {
                        let slot = out.staging.take()?;
                        out.writing[usize::from(send_slot)] = Some(slot);
                        Some(DataOut {
                            slot,
                            len,
                            remote_addr,
                            rkey,
                            fill,
                        })
                    }
                    None => None,
                };
                return Some(Post::Respond {
                    send_slot,
                    cqe: response.cqe,
                    data,
                    invalidate: response.invalidate,
                });
            }
        }
        if !out.reads.is_empty()
            && out.reads_in_flight < out.read_depth
            && out.staging.available() > 0
        {
            let read = out.reads.pop_front()?;
            let slot = out.staging.take()?;
            out.reading[usize::from(slot)] = Some((read.purpose, read.len));
            out.reads_in_flight += 1;
            return Some(Post::Read {
                slot,
                len: read.len,
                remote_addr: read.remote_addr,
                rkey: read.rkey,
            });
        }
        None
    }

    pub fn handle_buffers_granted(
        &mut self,
        tag: u16,
        credits: u32,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) -> Flow {
        if self.phase != Phase::Ready {
            cx.pool.give_credits(credits);
            return Flow::Continue;
        }
        self.core
            .buffers_granted(tag, credits, cx, &mut self.out, now)
    }

    pub fn handle_io_done(&mut self, done: IoDone, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        self.core.io_done(done, cx, &mut self.out, now)
    }

    /// Completions the controller produced on its own (async events), on an admin queue.
    pub fn poll_async_events(&mut self) {
        if self.phase == Phase::Ready {
            self.core.poll_async_events(&mut self.out);
        }
    }

    /// Tells the controller of the commands that arrived since the last call.
    pub fn report_activity(&mut self, now: Instant) {
        self.core.report_activity(now);
    }

    /// The connection is going away: tell the controller its queue is gone. Returns the
    /// controller if that tore it down (an admin queue). Buffers still held return their
    /// credits as they drop.
    pub fn close(&mut self) -> Option<Arc<Controller>> {
        self.phase = Phase::Closing;
        self.out.responses.clear();
        self.out.reads.clear();
        self.core.detach()
    }
}

/// Whether a command moves data from the controller to the host (bits 1:0 of the opcode, or
/// of the fabrics command type).
fn transfers_to_host(sqe: &Sqe) -> bool {
    let code = if sqe.opcode() == opcode::FABRICS {
        sqe.fctype()
    } else {
        sqe.opcode()
    };
    code & 0x3 == 0x2
}

#[cfg(test)]
#[path = "qpair_tests.rs"]
mod tests;
