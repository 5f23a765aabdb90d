//! The NVMe controller a VM sees through vfio-user: the PCI function (`device.rs`,
//! `msix.rs`), BAR0 mapped onto the controller's registers, and its queues in guest memory,
//! each submission queue driven by the transport-neutral [`QueueCore`].
//!
//! Protocol messages ([`Device`]) only record what changed: a doorbell write moves a ring's
//! tail, a CC write creates or drops the admin queue. The owner then calls
//! [`NvmeDevice::run_queues`] once per batch of messages (with the reactor's context), which
//! fetches the new commands, runs them, posts completions and fires each completion queue's
//! interrupt once. With adaptive interrupts (polled doorbells, `irq_coalescing.rs`) an I/O
//! completion queue's interrupt is held instead, and the polls decide when it fires.
//!
//! Shadow doorbells in interrupt mode: while the reactor busy-polls, its polls
//! ([`NvmeDevice::poll_doorbells`]) read the shadows and keep every I/O queue's EventIdx
//! parked just behind what they took (`doorbells::parked_event_idx`), so the guest does not
//! ring; before it sleeps, [`NvmeDevice::before_sleep`] arms
//! each queue again (EventIdx = the tail taken, a full fence, the shadow read again) and
//! serves what came meanwhile, which keeps the reactor awake for a turn. Served outside the
//! polls (a trapped doorbell, a completion), a queue is armed as it is served, as in poll mode.
//!
//! Bounds: a submission queue holds at most `entries - 1` commands in flight, and a command is
//! fetched only when its completion queue has room for it beside every completion already
//! owed, so posting never finds a completion queue full and a guest that stops consuming
//! completions stops its own submissions, nothing more.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, trace, warn};

use super::device::{Bar0Access, ConfigChange, PciDevice, region};
use super::doorbells::{Doorbell, DoorbellPage, ShadowDoorbells, parked_event_idx};
use super::irq_coalescing::{CqInterrupt, Posted};
use super::memory::{GuestMemory, Prot};
use super::msix::{Delivery, Interrupts};
use super::protocol::{device_flags, dma_unmap_flags};
use super::prp::{self, Segment};
use super::queues::{CompletionRing, SubmissionRing};
use super::server::{Device, DeviceInfo, DmaMap, DmaUnmap, Errno, IrqInfo, IrqSet, RegionInfo};
use crate::backend::IoDone;
use crate::controller::{
    Controller, InvalidDoorbell, QueueEpoch, QueueRequest, RegisterEffect, TransportLimits,
};
use crate::nvme::properties::PropertySize;
use crate::nvme::{Cqe, Status};
use crate::transport::buffer_pool::DataBuf;
use crate::transport::context::{AsyncNotifier, Flow, IoCx};
use crate::transport::queue::{DataRequest, HostData, QueueCore, Received, Responder};

/// Zeroes written into guest memory for reads of zeroes and zero tails.
static ZEROES: [u8; 4096] = [0; 4096];

/// Where a command's data lies in guest memory, kept from its SQE until it completes.
#[derive(Debug, Clone, Copy)]
struct DataPointer {
    prp1: u64,
    prp2: u64,
}

/// One submission queue: its ring, its completion queue, and the core that runs its commands.
#[derive(Debug)]
struct Sq {
    ring: SubmissionRing,
    cqid: u16,
    core: QueueCore,
    /// Data pointers of the commands in flight, by CID.
    pointers: HashMap<u16, DataPointer>,
    /// Commands fetched whose completion is not posted yet.
    owed: usize,
    /// The ring became unusable (its memory was unmapped, an SQE could not be read): nothing
    /// more is fetched from it until the host recreates it.
    stopped: bool,
    /// Its ring's memory was unmapped (DMA_UNMAP): nothing is fetched until a DMA_MAP makes
    /// the ring whole again.
    memory_gone: bool,
    /// The shadow tail last read (shadow doorbells, I/O queues).
    shadow_seen: u32,
}

#[derive(Debug)]
struct Cq {
    ring: CompletionRing,
    vector: Option<u16>,
    /// Completions owed by the submission queues on it.
    owed: usize,
    /// Something was posted in this batch.
    notify: bool,
    /// Its ring's memory was unmapped: its submission queues fetch nothing until a DMA_MAP
    /// makes the ring whole again.
    memory_gone: bool,
    /// Whether the batch's interrupt fires at once or is held for the polls.
    irq: CqInterrupt,
    /// The shadow head last read (shadow doorbells, I/O queues).
    shadow_seen: u32,
}

/// Why [`NvmeDevice::drain_ring`] stopped fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Nothing more to fetch, or it waits for its own commands to complete.
    Done,
    /// Its completion queue has no room for more: it waits for the host's head.
    CqFull,
}

/// Rounds of serving and rearming one shadowed submission queue before the others get their
/// turn: a host that keeps submitting as fast as it is served cannot hold the reactor.
const SHADOW_ROUNDS: usize = 4;

/// The admin queue before CC.EN, or after a reset: its registers only.
const ADMIN: u16 = 0;

/// The NVMe controller of one vfio-user client.
pub struct NvmeDevice {
    ctrlr: Arc<Controller>,
    pci: PciDevice,
    irqs: Interrupts,
    mem: GuestMemory,
    /// By queue ID; index 0 is the admin queue.
    sqs: Vec<Option<Sq>>,
    cqs: Vec<Option<Cq>>,
    /// Submission queues whose tail moved since the last [`run_queues`](Self::run_queues).
    rung: Vec<u16>,
    /// What every queue's responder shares while a call runs.
    scratch: Scratch,
    /// Bits of a backend tag that name the command within its queue; the queue ID goes above.
    tag_bits: u32,
    /// The doorbell page the VMM maps, when doorbells are mappable (polled).
    doorbells: Option<DoorbellPage>,
    /// The host's shadow doorbell and EventIdx buffers, after Doorbell Buffer Config.
    shadow: Option<ShadowDoorbells>,
    /// Shadowed submission queues still moving when their rounds ran out: served again at
    /// the next turn ([`retry_at`](Self::retry_at)).
    unsettled: Vec<u16>,
    /// The time of the last call, for [`retry_at`](Self::retry_at).
    last_now: Option<Instant>,
    /// A DMA_UNMAP waits for the commands in flight: nothing is fetched meanwhile.
    quiescing: bool,
    counts: DoorbellCounts,
    /// I/O completion queues' interrupts are adaptive: asked for, and the doorbells are polled
    /// every turn (a doorbell page, which the declaration allows in poll mode only).
    adaptive_irq: bool,
    irq_counts: IrqCounts,
    /// The reactor is in interrupt mode: it polls only while it busy-polls and calls
    /// [`before_sleep`](Self::before_sleep) before it sleeps.
    interrupt_mode: bool,
    shadow_counts: ShadowCounts,
    /// The I/O queues' EventIdx are parked (just behind what was taken, moved as more is): a
    /// poll took them over, and [`before_sleep`](Self::before_sleep) must arm them before the
    /// reactor sleeps.
    parked: bool,
}

/// How doorbell writes came, for the log when the client goes.
#[derive(Debug, Default, Clone, Copy)]
struct DoorbellCounts {
    /// As REGION_WRITE messages.
    trapped: u64,
    /// As stores into the mapped page, found by polling.
    polled: u64,
    /// Trapped after the first polled one: a VMM that mapped the page sends none.
    trapped_after_mapped: u64,
}

/// How the shadowed queues' EventIdx went between polling and sleeping (interrupt mode), for
/// the log when the client goes.
#[derive(Debug, Default, Clone, Copy)]
struct ShadowCounts {
    /// Polls that parked them.
    parked: u64,
    /// Sleeps they were armed for.
    armed: u64,
    /// Queues whose shadow had moved when they were armed (served before the sleep).
    raced: u64,
}

/// What became of completion queues' interrupts, for the log when the client goes.
#[derive(Debug, Default, Clone, Copy)]
struct IrqCounts {
    /// Fired by the batch that posted.
    immediate: u64,
    /// Batches whose interrupt was held (adaptive interrupts).
    held: u64,
    /// Held interrupts a poll fired: the host had stopped consuming.
    fired: u64,
}

impl std::fmt::Debug for NvmeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmeDevice")
            .field("cntlid", &self.ctrlr.cntlid())
            .finish_non_exhaustive()
    }
}

/// Tag bits needed for queues of up to `max_entries` entries (a queue holds at most
/// `entries - 1` commands), and the highest queue ID that leaves room for.
pub fn tag_layout(max_entries: u32) -> (u32, u16) {
    let tags = max_entries.saturating_sub(1).max(1);
    let bits = u32::BITS - (tags - 1).leading_zeros();
    let bits = bits.clamp(1, 15);
    let max_qid = u16::try_from((1u32 << (16 - bits)) - 1).unwrap_or(u16::MAX);
    (bits, max_qid)
}

impl NvmeDevice {
    /// The device of `ctrlr`; with `doorbells` (and `pci` made with mappable doorbells)
    /// BAR0's doorbell page is that page, which the owner polls
    /// ([`poll_doorbells`](Self::poll_doorbells)) every turn. `adaptive_irq` holds I/O
    /// completion queues' interrupts for those polls to fire; without `doorbells` nothing
    /// promises a poll, and every batch fires at once. `interrupt_mode`: the owner polls only
    /// while its reactor busy-polls, and calls [`before_sleep`](Self::before_sleep) before
    /// it sleeps.
    pub fn new(
        ctrlr: Arc<Controller>,
        pci: PciDevice,
        limits: TransportLimits,
        notifier: AsyncNotifier,
        doorbells: Option<DoorbellPage>,
        adaptive_irq: bool,
        interrupt_mode: bool,
    ) -> Self {
        let (tag_bits, max_qid) = tag_layout(limits.max_queue_depth);
        let max_qid = max_qid.min(super::doorbells::MAX_QID);
        let io_queues = usize::try_from(limits.max_io_qpairs_per_ctrlr).unwrap_or(0);
        let queues = io_queues.min(usize::from(max_qid)) + 1;
        ctrlr.set_async_event_notifier(notifier);
        let irqs = Interrupts::new(pci.params().msix_vectors);
        let adaptive_irq = adaptive_irq && doorbells.is_some();
        Self {
            ctrlr,
            pci,
            irqs,
            mem: GuestMemory::new(),
            sqs: (0..queues).map(|_| None).collect(),
            cqs: (0..queues).map(|_| None).collect(),
            rung: Vec::new(),
            scratch: Scratch::default(),
            tag_bits,
            doorbells,
            shadow: None,
            unsettled: Vec::new(),
            last_now: None,
            quiescing: false,
            counts: DoorbellCounts::default(),
            adaptive_irq,
            irq_counts: IrqCounts::default(),
            interrupt_mode,
            shadow_counts: ShadowCounts::default(),
            parked: false,
        }
    }

    /// Its doorbells are memory to poll: a mapped doorbell page (poll mode), shadow doorbells
    /// (every turn in poll mode, while the reactor busy-polls in interrupt mode).
    pub fn polls_doorbells(&self) -> bool {
        self.doorbells.is_some() || self.shadow.is_some()
    }

    /// The owner is to call [`poll_doorbells`](Self::poll_doorbells) every turn: the doorbells
    /// are polled, or a completion queue has a held interrupt, which only a poll fires
    /// (adaptive interrupts need the doorbell page, so the first holds whenever the second
    /// does; the second is asked only to say so).
    pub fn wants_poll(&self) -> bool {
        self.polls_doorbells() || self.cqs.iter().flatten().any(|cq| cq.irq.is_held())
    }

    /// When the owner is to call [`run_queues`](Self::run_queues) although nothing rang: a
    /// shadowed queue was still moving when its turn ended.
    pub fn retry_at(&self) -> Option<Instant> {
        self.last_now.filter(|_| !self.unsettled.is_empty())
    }

    /// Looks at the mapped doorbell and the shadow doorbells of every live queue: each one the
    /// guest moved is taken as a trapped write would be; held interrupts fire where the host's
    /// head stalled since the last poll (so a completion posted at this turn is judged at the
    /// next); then the queues run. Returns how many doorbells moved and interrupts fired. In
    /// interrupt mode the shadowed queues' EventIdx are parked first: the polls look, the guest
    /// need not ring, until [`before_sleep`](Self::before_sleep). In poll mode with the doorbell
    /// page mapped every turn polls, so they stay parked: a guest never needs to ring.
    pub fn poll_doorbells(&mut self, cx: &mut IoCx<'_>, now: Instant) -> u64 {
        let may_park = self.interrupt_mode || self.doorbells.is_some();
        if may_park && !self.parked {
            self.park();
        }
        let mut moved = 0;
        if self.doorbells.is_some() {
            for qid in 0..=self.max_qid() {
                let q = usize::from(qid);
                let live = [
                    (self.sqs[q].is_some(), Doorbell::SqTail(qid)),
                    (self.cqs[q].is_some(), Doorbell::CqHead(qid)),
                ];
                for (live, doorbell) in live {
                    let Some(page) = self.doorbells.as_mut().filter(|_| live) else {
                        continue;
                    };
                    if let Some(value) = page.take(doorbell) {
                        if self.counts.polled == 0 {
                            debug!(
                                ?doorbell,
                                value, "the VMM mapped the doorbell page: first store seen"
                            );
                        }
                        self.counts.polled += 1;
                        moved += 1;
                        self.doorbell(doorbell, value);
                    }
                }
            }
        }
        moved += self.poll_shadows();
        let fired = self.poll_held_interrupts();
        if moved > 0 || !self.unsettled.is_empty() {
            self.run_queues(cx, now);
        }
        moved + fired
    }

    /// The reactor is about to sleep (interrupt mode): if the polls parked the shadowed
    /// queues' EventIdx, each queue is armed again (EventIdx = the tail taken, or the head for
    /// a completion queue its submission queue waits on; a full fence; the shadow read again)
    /// and the queues whose shadow moved meanwhile are served, the guest may not have rung for
    /// them. Returns how many moved: the reactor does not sleep this turn if any did.
    pub fn before_sleep(&mut self, cx: &mut IoCx<'_>, now: Instant) -> u64 {
        if !std::mem::take(&mut self.parked) {
            // Nothing was parked: every queue was armed when it was last served.
            return 0;
        }
        self.shadow_counts.armed += 1;
        let mut moved = 0;
        for qid in 1..=self.max_qid() {
            let Some(sq) = self.sqs[usize::from(qid)].as_ref() else {
                continue;
            };
            // Commands left in the ring wait for room in the completion queue (or for their
            // own completions, which wake us anyway): the head is armed too.
            let waits = if sq.ring.is_empty() {
                Drained::Done
            } else {
                Drained::CqFull
            };
            if self.rearm(qid, sq.cqid, waits) {
                moved += 1;
                if !self.rung.contains(&qid) {
                    self.rung.push(qid);
                }
            }
        }
        if moved > 0 {
            trace!(
                moved,
                "the guest moved a shadow doorbell as the queues were armed"
            );
            self.shadow_counts.raced += moved;
            self.run_queues(cx, now);
        }
        moved
    }

    /// Parks the EventIdx of every live shadowed queue just behind the value taken: the
    /// polls look at the shadows.
    fn park(&mut self) {
        let Some(shadow) = self.shadow else {
            return;
        };
        for qid in 1..=self.max_qid() {
            let q = usize::from(qid);
            if let Some(sq) = &self.sqs[q] {
                let (tail, entries) = (sq.ring.tail(), sq.ring.entries());
                shadow.park(&self.mem, Doorbell::SqTail(qid), tail, entries);
            }
            if let Some(cq) = &self.cqs[q] {
                let (head, entries) = (cq.ring.head(), cq.ring.entries());
                shadow.park(&self.mem, Doorbell::CqHead(qid), head, entries);
            }
        }
        self.parked = true;
        self.shadow_counts.parked += 1;
    }

    /// The EventIdx a new shadowed queue of `entries` starts with: parked behind 0 while the
    /// polls look, else 0 (its first value rings).
    fn initial_event_idx(&self, entries: u32) -> u32 {
        if self.parked {
            parked_event_idx(0, entries)
        } else {
            0
        }
    }

    /// One poll of every adaptive completion queue's interrupt, with the head just taken from
    /// the doorbells (or shadows): fires those whose host stopped consuming. Returns how many
    /// fired.
    fn poll_held_interrupts(&mut self) -> u64 {
        if !self.adaptive_irq {
            return 0;
        }
        let mut fired = 0;
        for cq in self.cqs.iter_mut().skip(1).flatten() {
            let Some(vector) = cq.vector.filter(|_| cq.irq.is_adaptive()) else {
                continue;
            };
            if cq.irq.poll_fire(cq.ring.head(), cq.ring.tail()) {
                trace!(vector, "a held interrupt fires: the host stopped consuming");
                fire(&mut self.irqs, vector);
                fired += 1;
            }
        }
        self.irq_counts.fired += fired;
        fired
    }

    /// Takes the shadow doorbells the host moved, and notes their queues to run; how many
    /// moved.
    fn poll_shadows(&mut self) -> u64 {
        if self.shadow.is_none() {
            return 0;
        }
        let mut moved = 0;
        for qid in 1..=self.max_qid() {
            if self.take_shadow_head(qid) {
                moved += 1;
                self.ring_sqs_of(qid);
            }
            if self.take_shadow_tail(qid) {
                moved += 1;
                if !self.rung.contains(&qid) {
                    self.rung.push(qid);
                }
            }
        }
        moved
    }

    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctrlr
    }

    /// I/O submission queues the guest has created.
    pub fn io_queues(&self) -> u64 {
        self.sqs.iter().skip(1).flatten().count() as u64
    }

    /// Commands in flight on every queue.
    pub fn in_flight(&self) -> usize {
        self.sqs
            .iter()
            .flatten()
            .map(|sq| sq.core.in_flight())
            .sum()
    }

    /// Fetches and runs the commands of every submission queue whose doorbell rang, carries
    /// out queue creations and deletions, and fires the interrupts of completion queues that
    /// got entries.
    pub fn run_queues(&mut self, cx: &mut IoCx<'_>, now: Instant) -> Flow {
        self.last_now = Some(now);
        for qid in std::mem::take(&mut self.unsettled) {
            if !self.rung.contains(&qid) {
                self.rung.push(qid);
            }
        }
        while let Some(qid) = self.rung.pop() {
            self.drain(qid, cx, now);
            if qid == ADMIN {
                self.carry_out_queue_requests(cx);
            }
        }
        self.finish(cx);
        Flow::Continue
    }

    /// Backends finished commands; the low bits of each tag name the command, the high bits
    /// its queue. Each queue they were on is then served once, and interrupts raised once.
    pub fn handle_io_done(
        &mut self,
        done: &mut dyn Iterator<Item = IoDone>,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) {
        let mut queues: Vec<u16> = Vec::new();
        for mut io in done {
            let Ok(token) = u16::try_from(io.token & 0xFFFF) else {
                continue;
            };
            let (qid, tag) = self.split_tag(token);
            io.token = u64::from(tag);
            self.with_queue(qid, cx, |core, out, cx| {
                core.io_done(io, cx, out, now);
            });
            if !queues.contains(&qid) {
                queues.push(qid);
            }
        }
        for qid in queues {
            self.drain(qid, cx, now);
        }
        self.finish(cx);
    }

    /// The buffers a command waited for are reserved.
    pub fn handle_buffers_granted(
        &mut self,
        token: u16,
        credits: u32,
        cx: &mut IoCx<'_>,
        now: Instant,
    ) {
        let (qid, tag) = self.split_tag(token);
        let mut served = false;
        self.with_queue(qid, cx, |core, out, cx| {
            served = true;
            core.buffers_granted(tag, credits, cx, out, now);
        });
        if !served {
            cx.pool.give_credits(credits);
        }
        self.finish(cx);
    }

    /// The controller has async events: complete parked Asynchronous Event Requests.
    pub fn handle_async_events(&mut self, cx: &mut IoCx<'_>) {
        self.with_queue(ADMIN, cx, |core, out, _| core.poll_async_events(out));
        self.finish(cx);
    }

    /// The client is gone: every queue detaches; returns the controller, which is gone too.
    pub fn tear_down(&mut self, cx: &mut IoCx<'_>) -> Arc<Controller> {
        for sq in self.sqs.iter_mut().skip(1).flatten() {
            sq.core.detach();
        }
        self.sqs.iter_mut().for_each(|sq| *sq = None);
        self.cqs.iter_mut().for_each(|cq| *cq = None);
        self.give_spent(cx);
        self.mem.unmap_all();
        let counts = self.counts;
        info!(
            mapped = self.doorbells.is_some(),
            trapped = counts.trapped,
            polled = counts.polled,
            trapped_after_mapped = counts.trapped_after_mapped,
            "doorbell writes"
        );
        if self.interrupt_mode {
            let shadow = self.shadow_counts;
            info!(
                parked = shadow.parked,
                armed = shadow.armed,
                raced = shadow.raced,
                "shadow doorbells polled"
            );
        }
        let irqs = self.irq_counts;
        info!(
            adaptive = self.adaptive_irq,
            immediate = irqs.immediate,
            held = irqs.held,
            fired = irqs.fired,
            "completion interrupts"
        );
        self.ctrlr.tear_down();
        Arc::clone(&self.ctrlr)
    }

    /// The highest queue ID the device has doorbells for.
    fn max_qid(&self) -> u16 {
        u16::try_from(self.sqs.len().saturating_sub(1)).unwrap_or(u16::MAX)
    }

    fn split_tag(&self, token: u16) -> (u16, u16) {
        (token >> self.tag_bits, token & ((1 << self.tag_bits) - 1))
    }

    /// Runs `f` on queue `qid`'s core with a responder over its completion queue; nothing if
    /// the queue is gone.
    fn with_queue(
        &mut self,
        qid: u16,
        cx: &mut IoCx<'_>,
        f: impl FnOnce(&mut QueueCore, &mut PcieOutput<'_>, &mut IoCx<'_>),
    ) {
        let Some((sq, cq)) = queue_pair(&mut self.sqs, &mut self.cqs, qid) else {
            return;
        };
        let mut out = PcieOutput {
            mem: &self.mem,
            cq,
            pointers: Some(&mut sq.pointers),
            owed: &mut sq.owed,
            scratch: &mut self.scratch,
        };
        cx.set_tag_prefix(qid << self.tag_bits);
        f(&mut sq.core, &mut out, cx);
        cx.set_tag_prefix(0);
    }

    /// Fetches and submits commands from `qid` while it has some and room for them. A
    /// shadowed queue takes its shadow tail (and its completion queue's shadow head) first,
    /// and after each round publishes EventIdx and looks again, until the host stops moving
    /// them or [`SHADOW_ROUNDS`] pass; while its EventIdx is parked it takes them once (the
    /// next poll looks again, and `before_sleep` arms it).
    fn drain(&mut self, qid: u16, cx: &mut IoCx<'_>, now: Instant) {
        if qid == ADMIN || self.shadow.is_none() {
            self.drain_ring(qid, cx, now);
            return;
        }
        self.unsettled.retain(|&q| q != qid);
        if self.parked {
            let Some(sq) = self.sqs.get(usize::from(qid)).and_then(|s| s.as_ref()) else {
                return;
            };
            let cqid = sq.cqid;
            self.take_shadow_tail(qid);
            self.take_shadow_head(cqid);
            self.drain_ring(qid, cx, now);
            return;
        }
        for _ in 0..SHADOW_ROUNDS {
            let Some(cqid) = self.sqs.get(usize::from(qid)).and_then(|s| s.as_ref()) else {
                return;
            };
            let cqid = cqid.cqid;
            self.take_shadow_tail(qid);
            self.take_shadow_head(cqid);
            let drained = self.drain_ring(qid, cx, now);
            if !self.rearm(qid, cqid, drained) {
                return;
            }
        }
        trace!(
            qid,
            "the host keeps submitting; the queue goes on at the next turn"
        );
        self.unsettled.push(qid);
    }

    /// Publishes the EventIdx of SQ `qid` (the tail served up to) and, when it waits for
    /// room, of its CQ `cqid` (the head seen), then reads both shadows again: true if the host
    /// moved one meanwhile (and may not have rung).
    fn rearm(&self, qid: u16, cqid: u16, drained: Drained) -> bool {
        let Some(shadow) = self.shadow else {
            return false;
        };
        let Some(sq) = self.sqs.get(usize::from(qid)).and_then(Option::as_ref) else {
            return false;
        };
        if sq.stopped {
            return false;
        }
        let tail = shadow.rearm(&self.mem, Doorbell::SqTail(qid), sq.ring.tail());
        let mut moved = tail.is_some_and(|tail| tail != sq.shadow_seen);
        if drained == Drained::CqFull {
            if let Some(cq) = self.cqs.get(usize::from(cqid)).and_then(Option::as_ref) {
                let head = shadow.rearm(&self.mem, Doorbell::CqHead(cqid), cq.ring.head());
                moved |= head.is_some_and(|head| head != cq.shadow_seen);
            }
        }
        moved
    }

    /// Takes SQ `qid`'s shadow tail into its ring if the host moved it; true if it did. A
    /// value the ring refuses is ignored like an invalid doorbell write.
    fn take_shadow_tail(&mut self, qid: u16) -> bool {
        let Some(shadow) = self.shadow.filter(|_| qid != ADMIN) else {
            return false;
        };
        let Some(sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut) else {
            return false;
        };
        let Some(value) = shadow.read(&self.mem, Doorbell::SqTail(qid)) else {
            return false;
        };
        if value == sq.shadow_seen {
            return false;
        }
        sq.shadow_seen = value;
        match sq.ring.set_tail(value) {
            Ok(()) => {
                if self.parked {
                    // Before the completions of what was taken: the host is never asked.
                    shadow.park(&self.mem, Doorbell::SqTail(qid), value, sq.ring.entries());
                }
                true
            }
            Err(err) => {
                warn!(qid, value, error = %err, "invalid shadow submission queue doorbell");
                false
            }
        }
    }

    /// Takes CQ `cqid`'s shadow head into its ring if the host moved it; true if it did.
    fn take_shadow_head(&mut self, cqid: u16) -> bool {
        let Some(shadow) = self.shadow.filter(|_| cqid != ADMIN) else {
            return false;
        };
        let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) else {
            return false;
        };
        let Some(value) = shadow.read(&self.mem, Doorbell::CqHead(cqid)) else {
            return false;
        };
        if value == cq.shadow_seen {
            return false;
        }
        cq.shadow_seen = value;
        match cq.ring.set_head(value) {
            Ok(()) => {
                if self.parked {
                    // Before the completions the room it gives lets us post.
                    shadow.park(&self.mem, Doorbell::CqHead(cqid), value, cq.ring.entries());
                }
                true
            }
            Err(err) => {
                warn!(qid = cqid, value, error = %err, "invalid shadow completion queue doorbell");
                false
            }
        }
    }

    /// Notes the submission queues on CQ `cqid` that have commands waiting, to run: it has
    /// room again.
    fn ring_sqs_of(&mut self, cqid: u16) {
        for (sqid, sq) in self.sqs.iter().enumerate() {
            if let Some(sq) = sq.as_ref().filter(|sq| sq.cqid == cqid) {
                let sqid = u16::try_from(sqid).unwrap_or(0);
                if !sq.ring.is_empty() && !self.rung.contains(&sqid) {
                    self.rung.push(sqid);
                }
            }
        }
    }

    /// Notes every live shadowed submission queue to run: a doorbell rang while shadow
    /// doorbells are on, and the shadows say what moved.
    fn ring_shadowed(&mut self) {
        for (sqid, sq) in self.sqs.iter().enumerate().skip(1) {
            let sqid = u16::try_from(sqid).unwrap_or(0);
            if sq.is_some() && !self.rung.contains(&sqid) {
                self.rung.push(sqid);
            }
        }
    }

    /// Fetches and submits commands from `qid`'s ring while it has some and room for them.
    fn drain_ring(&mut self, qid: u16, cx: &mut IoCx<'_>, now: Instant) -> Drained {
        let tag_bits = self.tag_bits;
        if self.quiescing {
            return Drained::Done;
        }
        let Some((sq, cq)) = queue_pair(&mut self.sqs, &mut self.cqs, qid) else {
            return Drained::Done;
        };
        cx.set_tag_prefix(qid << tag_bits);
        let mut drained = Drained::Done;
        while !sq.stopped && !sq.memory_gone && !cq.memory_gone && !sq.ring.is_empty() {
            // The host catches up first: it consumes completions, commands complete.
            let cq_room = cq.ring.entries() as usize - 1;
            if cq.ring.pending() as usize + cq.owed >= cq_room {
                drained = Drained::CqFull;
                break;
            }
            if sq.owed + 1 >= sq.ring.entries() as usize {
                break;
            }
            let sqe = match sq.ring.pop(&self.mem) {
                Some(Ok(sqe)) => sqe,
                Some(Err(err)) => {
                    warn!(qid, error = %err, "cannot read a submission queue entry; the queue stops");
                    sq.stopped = true;
                    break;
                }
                None => break,
            };
            sq.owed += 1;
            cq.owed += 1;
            let mut out = PcieOutput {
                mem: &self.mem,
                cq: &mut *cq,
                pointers: Some(&mut sq.pointers),
                owed: &mut sq.owed,
                scratch: &mut self.scratch,
            };
            match sq.core.receive(&out) {
                Received::Accepted => {}
                Received::Stale | Received::Overflow => {
                    debug!(qid, "queue no longer serves; the command is dropped");
                    out.forget_one();
                    sq.stopped = true;
                    break;
                }
            }
            let cid = sqe.cid();
            let refused = if sqe.psdt() != 0 {
                // Identify says PRPs only (SGLS = 0).
                Some(Status::INVALID_FIELD.with_dnr())
            } else if out.pointers.as_ref().is_some_and(|p| p.contains_key(&cid)) {
                Some(Status::COMMAND_ID_CONFLICT.with_dnr())
            } else {
                None
            };
            if let Some(status) = refused {
                // Its completion must not forget the data pointer of the command in flight
                // under the same CID.
                out.pointers = None;
                sq.core.respond(Cqe::new(cid, status), &mut out);
                continue;
            }
            if let Some(pointers) = out.pointers.as_deref_mut() {
                pointers.insert(
                    cid,
                    DataPointer {
                        prp1: sqe.prp1(),
                        prp2: sqe.prp2(),
                    },
                );
            }
            trace!(qid, cid, opcode = sqe.opcode(), "command");
            // PRPs carry no length: the command's own fields say how much moves, and the PRP
            // walk checks every page of it.
            let flow = sq
                .core
                .submit(sqe, u32::MAX, |_| Ok(HostData::Fetch), cx, &mut out, now);
            if flow == Flow::Close && qid != ADMIN {
                sq.stopped = true;
            }
        }
        cx.set_tag_prefix(0);
        sq.core.report_activity(now);
        drained
    }

    /// Carries out the Create/Delete I/O Queue commands of the admin batch, and completes them.
    fn carry_out_queue_requests(&mut self, cx: &mut IoCx<'_>) {
        let requests = std::mem::take(&mut self.scratch.queue_requests);
        for (cid, request) in requests {
            let status = self.carry_out(request).err().unwrap_or(Status::SUCCESS);
            if !status.is_success() {
                self.ctrlr.undo_queue_request(&request);
            }
            self.with_queue(ADMIN, cx, |core, out, _| {
                core.respond(Cqe::new(cid, status), out);
            });
        }
    }

    fn carry_out(&mut self, request: QueueRequest) -> Result<(), Status> {
        let invalid = Status::INVALID_FIELD.with_dnr();
        match request {
            QueueRequest::CreateCq {
                qid,
                entries,
                base,
                vector,
            } => {
                let slot = self.cqs.get_mut(usize::from(qid)).ok_or(invalid)?;
                let ring =
                    CompletionRing::new(&self.mem, base, u32::from(entries)).map_err(|err| {
                        warn!(qid, base, error = %err, "completion queue outside guest memory");
                        invalid
                    })?;
                *slot = Some(Cq {
                    ring,
                    vector,
                    owed: 0,
                    notify: false,
                    memory_gone: false,
                    irq: CqInterrupt::new(qid, self.adaptive_irq),
                    shadow_seen: 0,
                });
                if let Some(page) = self.doorbells.as_mut() {
                    page.reset(Doorbell::CqHead(qid));
                }
                if let Some(shadow) = self.shadow {
                    shadow.write(&self.mem, Doorbell::CqHead(qid), 0);
                    let event_idx = self.initial_event_idx(u32::from(entries));
                    shadow.publish(&self.mem, Doorbell::CqHead(qid), event_idx);
                }
                debug!(qid, entries, ?vector, "I/O completion queue created");
            }
            QueueRequest::CreateSq {
                qid,
                entries,
                base,
                cqid,
                ..
            } => {
                if self.sqs.get(usize::from(qid)).is_none() {
                    return Err(invalid);
                }
                let ring =
                    SubmissionRing::new(&self.mem, base, u32::from(entries)).map_err(|err| {
                        warn!(qid, base, error = %err, "submission queue outside guest memory");
                        invalid
                    })?;
                let epoch = self.ctrlr.attach_pcie_io_queue(qid)?;
                let mut core = QueueCore::new();
                core.attach(Arc::clone(&self.ctrlr), qid, epoch, entries);
                self.sqs[usize::from(qid)] = Some(Sq {
                    ring,
                    cqid,
                    core,
                    pointers: HashMap::new(),
                    owed: 0,
                    stopped: false,
                    memory_gone: false,
                    shadow_seen: 0,
                });
                if let Some(page) = self.doorbells.as_mut() {
                    page.reset(Doorbell::SqTail(qid));
                }
                if let Some(shadow) = self.shadow {
                    shadow.write(&self.mem, Doorbell::SqTail(qid), 0);
                    let event_idx = self.initial_event_idx(u32::from(entries));
                    shadow.publish(&self.mem, Doorbell::SqTail(qid), event_idx);
                }
                debug!(qid, entries, cqid, "I/O submission queue created");
            }
            QueueRequest::DeleteSq { qid } => {
                if let Some(mut sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::take) {
                    // Its commands are aborted: their completions are no longer owed.
                    if let Some(cq) = self
                        .cqs
                        .get_mut(usize::from(sq.cqid))
                        .and_then(Option::as_mut)
                    {
                        cq.owed = cq.owed.saturating_sub(sq.owed);
                    }
                    sq.core.detach();
                    debug!(qid, "I/O submission queue deleted");
                }
            }
            QueueRequest::DeleteCq { qid } => {
                if let Some(slot) = self.cqs.get_mut(usize::from(qid)) {
                    *slot = None;
                    debug!(qid, "I/O completion queue deleted");
                }
            }
            QueueRequest::DoorbellBuffers { shadow, event_idx } => {
                self.configure_shadows(shadow, event_idx)?;
            }
        }
        Ok(())
    }

    /// Doorbell Buffer Config: both buffers must be readable and writable guest memory. What
    /// the doorbells said so far goes into the shadows, and each EventIdx asks for the next
    /// value, so the switch loses nothing.
    fn configure_shadows(&mut self, shadow: u64, event_idx: u64) -> Result<(), Status> {
        let len = ShadowDoorbells::len(self.max_qid());
        for gpa in [shadow, event_idx] {
            if let Err(err) = self.mem.check(gpa, len, Prot::READ_WRITE) {
                warn!(shadow, event_idx, error = %err, "doorbell buffers outside guest memory");
                return Err(Status::INVALID_FIELD.with_dnr());
            }
        }
        let buffers = ShadowDoorbells::new(shadow, event_idx);
        for (qid, sq) in self.sqs.iter_mut().enumerate().skip(1) {
            let Some(sq) = sq else {
                continue;
            };
            let doorbell = Doorbell::SqTail(u16::try_from(qid).unwrap_or(0));
            sq.shadow_seen = sq.ring.tail();
            buffers.write(&self.mem, doorbell, sq.shadow_seen);
            buffers.publish(&self.mem, doorbell, sq.shadow_seen);
        }
        for (qid, cq) in self.cqs.iter_mut().enumerate().skip(1) {
            let Some(cq) = cq else {
                continue;
            };
            let doorbell = Doorbell::CqHead(u16::try_from(qid).unwrap_or(0));
            cq.shadow_seen = cq.ring.head();
            buffers.write(&self.mem, doorbell, cq.shadow_seen);
            buffers.publish(&self.mem, doorbell, cq.shadow_seen);
        }
        self.shadow = Some(buffers);
        debug!(shadow, event_idx, "shadow doorbells configured");
        Ok(())
    }

    /// After a DMA map or unmap: a queue whose ring is no longer wholly in guest memory stops
    /// (its memory went, and nothing may touch it), one whose ring is whole again goes on.
    fn check_queue_memory(&mut self) {
        for (qid, sq) in self.sqs.iter_mut().enumerate() {
            let Some(sq) = sq.as_mut() else {
                continue;
            };
            let len = u64::from(sq.ring.entries()) * 64;
            let gone = self.mem.check(sq.ring.base(), len, Prot::READ).is_err();
            if gone != sq.memory_gone {
                warn_memory_change(qid, "submission", gone);
                sq.memory_gone = gone;
            }
        }
        for (qid, cq) in self.cqs.iter_mut().enumerate() {
            let Some(cq) = cq.as_mut() else {
                continue;
            };
            let len = u64::from(cq.ring.entries()) * 16;
            let gone = self.mem.check(cq.ring.base(), len, Prot::WRITE).is_err();
            if gone != cq.memory_gone {
                warn_memory_change(qid, "completion", gone);
                cq.memory_gone = gone;
            }
        }
        // Whatever came back runs at the end of the call; a queue still without memory
        // fetches nothing.
        self.ring_pending();
    }

    /// The held DMA_UNMAP was handled: fetching goes on, from every queue that has entries
    /// (their doorbells may have rung meanwhile).
    fn end_quiesce(&mut self) {
        if std::mem::take(&mut self.quiescing) {
            self.ring_pending();
        }
    }

    /// Notes every live submission queue that may have entries, to run.
    fn ring_pending(&mut self) {
        for (sqid, sq) in self.sqs.iter().enumerate() {
            let sqid = u16::try_from(sqid).unwrap_or(0);
            if let Some(sq) = sq {
                let shadowed = sqid != ADMIN && self.shadow.is_some();
                if (shadowed || !sq.ring.is_empty()) && !self.rung.contains(&sqid) {
                    self.rung.push(sqid);
                }
            }
        }
    }

    /// Ends a batch: buffers back to the pool, an interrupt for every completion queue that
    /// got entries, fired now or held for the polls (adaptive interrupts).
    fn finish(&mut self, cx: &mut IoCx<'_>) {
        self.give_spent(cx);
        for cq in self.cqs.iter_mut().flatten() {
            if !std::mem::take(&mut cq.notify) {
                continue;
            }
            let Some(vector) = cq.vector else {
                continue;
            };
            match cq.irq.handle_posted() {
                Posted::Fire => {
                    fire(&mut self.irqs, vector);
                    self.irq_counts.immediate += 1;
                }
                Posted::Held => self.irq_counts.held += 1,
            }
        }
    }

    fn give_spent(&mut self, cx: &mut IoCx<'_>) {
        for buf in self.scratch.spent.drain(..) {
            cx.pool.give(buf);
        }
    }

    /// CC.EN 0 -> 1: the admin queue from AQA, ASQ and ACQ.
    fn create_admin_queue(&mut self, aqa: u32, asq: u64, acq: u64) {
        let sq_entries = u16::try_from((aqa & 0xFFF) + 1).unwrap_or(1);
        let cq_entries = u16::try_from(((aqa >> 16) & 0xFFF) + 1).unwrap_or(1);
        let rings = SubmissionRing::new(&self.mem, asq, u32::from(sq_entries)).and_then(|sq| {
            CompletionRing::new(&self.mem, acq, u32::from(cq_entries)).map(|cq| (sq, cq))
        });
        let (sq_ring, cq_ring) = match rings {
            Ok(rings) => rings,
            Err(err) => {
                warn!(asq, acq, error = %err, "admin queue outside guest memory; it cannot serve");
                return;
            }
        };
        let mut core = QueueCore::new();
        core.attach(
            Arc::clone(&self.ctrlr),
            ADMIN,
            QueueEpoch::ADMIN,
            sq_entries,
        );
        self.sqs[0] = Some(Sq {
            ring: sq_ring,
            cqid: ADMIN,
            core,
            pointers: HashMap::new(),
            owed: 0,
            stopped: false,
            memory_gone: false,
            shadow_seen: 0,
        });
        self.cqs[0] = Some(Cq {
            ring: cq_ring,
            // The admin completion queue always interrupts on vector 0.
            vector: Some(0),
            owed: 0,
            notify: false,
            memory_gone: false,
            irq: CqInterrupt::new(ADMIN, self.adaptive_irq),
            shadow_seen: 0,
        });
        if let Some(page) = self.doorbells.as_mut() {
            page.reset(Doorbell::SqTail(ADMIN));
            page.reset(Doorbell::CqHead(ADMIN));
        }
        debug!(sq_entries, cq_entries, "admin queue created");
    }

    /// A controller reset or shutdown: every queue is gone; commands in flight are dropped
    /// (a backend completion for one finds no queue and is ignored).
    fn drop_queues(&mut self) {
        for sq in self.sqs.iter_mut().skip(1).flatten() {
            sq.core.detach();
        }
        self.sqs.iter_mut().for_each(|sq| *sq = None);
        self.cqs.iter_mut().for_each(|cq| *cq = None);
        self.rung.clear();
        self.scratch.queue_requests.clear();
        if let Some(page) = self.doorbells.as_mut() {
            page.clear();
        }
        if self.shadow.take().is_some() {
            debug!("shadow doorbells forgotten");
        }
        self.parked = false;
        self.unsettled.clear();
    }

    /// A doorbell write, trapped or polled: moves a ring and notes the queues to run. A value
    /// the ring refuses changes nothing. With shadow doorbells, an I/O queue's doorbell only
    /// says "look at the shadows" (the host wrote its value there first, and may have moved
    /// it again since): every shadowed queue runs, and takes its shadow values.
    /// A write to the doorbell of a queue that does not exist, or a value its ring refuses,
    /// is reported to the host as an Error asynchronous event (Write to Invalid Doorbell
    /// Register, Invalid Doorbell Write Value), as a PCIe controller does.
    fn doorbell(&mut self, doorbell: Doorbell, value: u32) {
        let (Doorbell::SqTail(qid) | Doorbell::CqHead(qid)) = doorbell;
        let exists = match doorbell {
            Doorbell::SqTail(_) => self.sqs.get(usize::from(qid)).is_some_and(Option::is_some),
            Doorbell::CqHead(_) => self.cqs.get(usize::from(qid)).is_some_and(Option::is_some),
        };
        if !exists {
            debug!(qid, ?doorbell, "doorbell of a queue that does not exist");
            self.ctrlr
                .report_invalid_doorbell(InvalidDoorbell::Register);
            return;
        }
        if qid != ADMIN && self.shadow.is_some() {
            self.ring_shadowed();
            return;
        }
        match doorbell {
            Doorbell::SqTail(qid) => {
                let Some(sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut) else {
                    return;
                };
                if let Err(err) = sq.ring.set_tail(value) {
                    warn!(qid, value, error = %err, "invalid submission queue doorbell write");
                    self.ctrlr.report_invalid_doorbell(InvalidDoorbell::Value);
                    return;
                }
                if !self.rung.contains(&qid) {
                    self.rung.push(qid);
                }
            }
            Doorbell::CqHead(qid) => {
                let Some(cq) = self.cqs.get_mut(usize::from(qid)).and_then(Option::as_mut) else {
                    return;
                };
                if let Err(err) = cq.ring.set_head(value) {
                    warn!(qid, value, error = %err, "invalid completion queue doorbell write");
                    self.ctrlr.report_invalid_doorbell(InvalidDoorbell::Value);
                    return;
                }
                // Room in the completion queue: submission queues that waited for it go on.
                self.ring_sqs_of(qid);
            }
        }
    }

    /// A doorbell write that came as a message (always, or before the VMM mapped the page).
    fn trapped_doorbell(&mut self, doorbell: Doorbell, value: u64) {
        let value = u32::try_from(value & 0xFFFF_FFFF).unwrap_or(0);
        trace!(?doorbell, value, "doorbell write");
        self.counts.trapped += 1;
        if self.counts.polled > 0 {
            self.counts.trapped_after_mapped += 1;
        }
        if let Some(page) = self.doorbells.as_mut() {
            page.record(doorbell, value);
        }
        self.doorbell(doorbell, value);
    }

    fn bar0_read(&self, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        let value = match Bar0Access::decode(offset, data.len(), self.max_qid()) {
            Bar0Access::Register { offset, size } => {
                // Registers we do not have (INTMS, INTMC, NSSR, CMB...) read as zero.
                self.ctrlr.read_register(offset, size).unwrap_or(0)
            }
            // Doorbells are write-only.
            Bar0Access::SqTail { .. } | Bar0Access::CqHead { .. } => 0,
            Bar0Access::Invalid => return Err(libc::EINVAL),
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(bytes.len());
        data[..n].copy_from_slice(&bytes[..n]);
        Ok(())
    }

    fn bar0_write(&mut self, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(bytes);
        match Bar0Access::decode(offset, data.len(), self.max_qid()) {
            Bar0Access::Register { offset, size } => {
                match self.ctrlr.write_register(offset, size, value) {
                    Ok(RegisterEffect::None) => {}
                    Ok(RegisterEffect::Enabled { aqa, asq, acq }) => {
                        self.create_admin_queue(aqa, asq, acq);
                    }
                    Ok(RegisterEffect::Reset | RegisterEffect::ShutDown) => self.drop_queues(),
                    Err(status) => {
                        debug!(offset, %status, "register write refused");
                    }
                }
                Ok(())
            }
            Bar0Access::SqTail { qid } => {
                self.trapped_doorbell(Doorbell::SqTail(qid), value);
                Ok(())
            }
            Bar0Access::CqHead { qid } => {
                self.trapped_doorbell(Doorbell::CqHead(qid), value);
                Ok(())
            }
            Bar0Access::Invalid => Err(libc::EINVAL),
        }
    }
}

impl Device for NvmeDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            flags: device_flags::RESET | device_flags::PCI,
            num_regions: region::COUNT,
            num_irqs: super::msix::index::COUNT,
        }
    }

    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let desc = self.pci.region_desc(index)?;
        let mmap = match &self.doorbells {
            Some(page) if index == region::BAR0 && !desc.sparse_mmap.is_empty() => {
                Some(page.region_mmap())
            }
            _ => None,
        };
        Some(RegionInfo {
            flags: desc.flags,
            size: desc.size,
            mmap,
        })
    }

    fn irq_info(&self, index: u32) -> Option<IrqInfo> {
        let desc = self.irqs.irq_desc(index)?;
        Some(IrqInfo {
            flags: desc.flags,
            count: desc.count,
        })
    }

    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        match index {
            region::BAR0 => self.bar0_read(offset, data),
            region::BAR4 => self.irqs.table_read(offset, data).map_err(|e| e.errno()),
            region::BAR5 => self.irqs.pba_read(offset, data).map_err(|e| e.errno()),
            region::CONFIG => self.pci.config_read(offset, data).map_err(|e| e.errno()),
            _ => Err(libc::EINVAL),
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        match index {
            region::BAR0 => self.bar0_write(offset, data),
            region::BAR4 => self.irqs.table_write(offset, data).map_err(|e| e.errno()),
            region::BAR5 => self.irqs.pba_write(offset, data).map_err(|e| e.errno()),
            region::CONFIG => {
                let changes = self.pci.config_write(offset, data).map_err(|e| e.errno())?;
                for change in changes {
                    let applied = match change {
                        ConfigChange::MsixControl(control) => {
                            self.irqs.set_msix_control(control.enabled, control.masked)
                        }
                        ConfigChange::Command(command) => {
                            self.irqs.set_intx_disabled(command.intx_disabled)
                        }
                    };
                    applied.map_err(|e| e.errno())?;
                }
                Ok(())
            }
            _ => Err(libc::EINVAL),
        }
    }

    fn dma_map(&mut self, map: DmaMap, fd: Option<OwnedFd>) -> Result<(), Errno> {
        let prot = Prot::from_dma_flags(map.flags).ok_or(libc::EINVAL)?;
        self.mem
            .map(map.iova, map.size, prot, fd.map(|fd| (fd, map.offset)))
            .map_err(|err| err.to_errno())?;
        self.check_queue_memory();
        Ok(())
    }

    fn dma_unmap(&mut self, unmap: DmaUnmap) -> Result<(), Errno> {
        let result = if unmap.flags & dma_unmap_flags::ALL != 0 {
            self.mem.unmap_all();
            Ok(())
        } else {
            self.mem
                .unmap(unmap.iova, unmap.size)
                .map_err(|err| err.to_errno())
        };
        self.check_queue_memory();
        self.end_quiesce();
        result
    }

    fn quiesce(&mut self) -> bool {
        // Commands the guest submitted before the unmap (their doorbells rang) are fetched
        // first: the owner runs the queues when this call's message batch ends.
        if !self.rung.is_empty() || !self.unsettled.is_empty() {
            return false;
        }
        self.quiescing = true;
        self.in_flight() == 0
    }

    fn set_irqs(&mut self, set: IrqSet, fds: Vec<OwnedFd>) -> Result<(), Errno> {
        self.irqs
            .set_irqs(set.index, set.flags, set.start, set.count, &set.data, fds)
            .map_err(|e| e.errno())
    }

    fn reset(&mut self) -> Result<(), Errno> {
        debug!("device reset");
        let _ =
            self.ctrlr
                .write_register(crate::nvme::properties::offset::CC, PropertySize::Four, 0);
        self.drop_queues();
        self.pci.reset();
        self.irqs.reset();
        Ok(())
    }
}

/// Logs a queue whose ring left or re-entered guest memory.
fn warn_memory_change(qid: usize, kind: &str, gone: bool) {
    if gone {
        warn!(
            qid,
            "the {kind} queue's memory was unmapped; the queue waits for it"
        );
    } else {
        info!(
            qid,
            "the {kind} queue's memory is mapped again; the queue goes on"
        );
    }
}

/// Raises a completion queue's `vector` (masked, it waits in the PBA).
fn fire(irqs: &mut Interrupts, vector: u16) {
    match irqs.trigger(vector) {
        Ok(Delivery::Signalled | Delivery::Pending | Delivery::Suppressed) => {}
        Err(err) => warn!(vector, error = %err, "cannot signal an interrupt"),
    }
}

/// Buffers every responder of the device uses in turn, kept to reuse their allocations.
#[derive(Debug, Default)]
struct Scratch {
    /// Create/Delete I/O Queue commands the controller accepted, carried out after the
    /// admin queue's batch (they change the queue tables the batch is borrowing).
    queue_requests: Vec<(u16, QueueRequest)>,
    /// Buffers whose data went into guest memory, for the pool.
    spent: Vec<DataBuf>,
    /// The guest segments of the command being answered.
    segments: Vec<Segment>,
}

/// Submission queue `qid` and its completion queue, if both exist.
fn queue_pair<'a>(
    sqs: &'a mut [Option<Sq>],
    cqs: &'a mut [Option<Cq>],
    qid: u16,
) -> Option<(&'a mut Sq, &'a mut Cq)> {
    let sq = sqs.get_mut(usize::from(qid))?.as_mut()?;
    let cq = cqs.get_mut(usize::from(sq.cqid))?.as_mut()?;
    Some((sq, cq))
}

/// How a submission queue's core answers: completions into its completion queue in guest
/// memory, data through the command's PRPs.
struct PcieOutput<'a> {
    mem: &'a GuestMemory,
    cq: &'a mut Cq,
    /// `None` while answering a command refused for its CID, which must leave the pointer of
    /// the command in flight under that CID alone.
    pointers: Option<&'a mut HashMap<u16, DataPointer>>,
    owed: &'a mut usize,
    scratch: &'a mut Scratch,
}

impl PcieOutput<'_> {
    /// A fetched command will get no completion.
    fn forget_one(&mut self) {
        *self.owed = self.owed.saturating_sub(1);
        self.cq.owed = self.cq.owed.saturating_sub(1);
    }

    fn pointer(&self, cid: u16) -> Option<DataPointer> {
        self.pointers.as_ref()?.get(&cid).copied()
    }

    /// The guest segments of `len` bytes of command `cid`'s data.
    fn segments_of(&mut self, cid: u16, len: usize) -> Result<(), Status> {
        let pointer = self.pointer(cid).ok_or(Status::INTERNAL_ERROR)?;
        prp::prp_segments(
            self.mem,
            pointer.prp1,
            pointer.prp2,
            len,
            &mut self.scratch.segments,
        )
    }

    /// Writes `data` then `zeroes` zero bytes to command `cid`'s buffer.
    fn write_data(&mut self, cid: u16, data: &[u8], zeroes: usize) -> Result<(), Status> {
        let len = data.len() + zeroes;
        if len == 0 {
            return Ok(());
        }
        self.segments_of(cid, len)?;
        let mut source = Source {
            data,
            zeroes,
            at: 0,
        };
        for segment in self.scratch.segments.iter() {
            let mut gpa = segment.gpa;
            let mut left = segment.len;
            while left > 0 {
                let chunk = source.next(left);
                self.mem.write(gpa, chunk).map_err(|err| err.to_status())?;
                gpa += chunk.len() as u64;
                left -= chunk.len();
            }
        }
        Ok(())
    }
}

/// Data followed by zeroes, handed out in pieces.
struct Source<'d> {
    data: &'d [u8],
    zeroes: usize,
    at: usize,
}

impl<'d> Source<'d> {
    /// The next piece, at most `max` bytes (never empty while something is left).
    fn next(&mut self, max: usize) -> &'d [u8] {
        if self.at < self.data.len() {
            let end = (self.at + max).min(self.data.len());
            let piece = &self.data[self.at..end];
            self.at = end;
            return piece;
        }
        let n = max.min(self.zeroes).min(ZEROES.len());
        self.zeroes -= n;
        &ZEROES[..n]
    }
}

impl Responder for PcieOutput<'_> {
    fn complete(&mut self, cqe: Cqe) {
        if let Some(pointers) = self.pointers.as_deref_mut() {
            pointers.remove(&cqe.cid);
        }
        *self.owed = self.owed.saturating_sub(1);
        self.cq.owed = self.cq.owed.saturating_sub(1);
        match self.cq.ring.post(self.mem, &cqe) {
            Ok(()) => self.cq.notify = true,
            Err(err) => warn!(cid = cqe.cid, error = %err, "cannot post a completion"),
        }
    }

    fn complete_with_data(&mut self, cid: u16, data: &[u8], zeroes: usize, mut cqe: Cqe) {
        if let Err(status) = self.write_data(cid, data, zeroes) {
            cqe.status = status;
        }
        self.complete(cqe);
    }

    fn complete_with_buffer(&mut self, cid: u16, data: DataBuf, mut cqe: Cqe) {
        if let Err(status) = self.write_data(cid, &data, 0) {
            cqe.status = status;
        }
        self.scratch.spent.push(data);
        self.complete(cqe);
    }

    fn complete_with_zeroes(&mut self, cid: u16, len: usize, mut cqe: Cqe) {
        if let Err(status) = self.write_data(cid, &[], len) {
            cqe.status = status;
        }
        self.complete(cqe);
    }

    fn request_data(&mut self, cid: u16, _tag: u16, buf: &mut [u8]) -> DataRequest {
        let copied = self
            .segments_of(cid, buf.len())
            .and_then(|()| prp::copy_from_guest(self.mem, &self.scratch.segments, buf));
        match copied {
            Ok(()) => DataRequest::Filled,
            Err(status) => DataRequest::Failed(status),
        }
    }

    fn undelivered_completions(&self) -> usize {
        // Fetching stops before the completion queue could overflow (see `drain`).
        0
    }

    fn queue_request(
        &mut self,
        _ctrlr: &Controller,
        cid: u16,
        request: QueueRequest,
    ) -> Option<Cqe> {
        self.scratch.queue_requests.push((cid, request));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_leave_room_for_the_queue_ids() {
        assert_eq!(tag_layout(256), (8, 255));
        assert_eq!(tag_layout(32), (5, 2047));
        assert_eq!(tag_layout(1024), (10, 63));
        assert_eq!(tag_layout(4096), (12, 15));
        assert_eq!(tag_layout(2), (1, 32767));
    }
}
