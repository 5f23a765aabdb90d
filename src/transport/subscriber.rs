//! What a reactor hosts: subscribers that own descriptors and register them themselves.
//!
//! A reactor knows no socket kind. A TCP listener, a TCP connection, and later a vfio-user
//! endpoint (a UNIX socket plus a doorbell eventfd per queue), an RDMA channel or an io_uring
//! engine are each a [`Subscriber`]: it registers its descriptors in [`Subscriber::init`]
//! under keys of its own choosing, and the reactor calls [`Subscriber::process`] with the key
//! of each descriptor that becomes ready. Deadlines, backend completions, granted buffers and
//! controller events reach it through the other `handle_*` methods. The shape follows
//! Firecracker's `event-manager` subscribers and cloud-hypervisor's `EpollHelper`.
//!
//! The trait lives with the transports, not in `reactor`, so that a transport implements it
//! without knowing the event loop: the dependency arrow stays `transport <- reactor`.
//!
//! Tokens: a subscriber is a [`SubscriberId`] (slab index and generation, so an event or a
//! completion for a subscriber since closed, whose slot was reused, is recognised and dropped),
//! and both the poll's tokens and the backends' tokens are that id in the high bits and a
//! 16-bit number in the low ones: the descriptor's key for the poll, the command's tag for a
//! backend.

use std::sync::Arc;
use std::time::Instant;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::backend::IoDone;
use crate::controller::{Controller, ListenerAddr};
use crate::transport::context::{Flow, IoCx};

#[cfg(not(target_pointer_width = "64"))]
compile_error!("poll tokens carry a 64-bit subscriber token: a 64-bit target is required");

/// Queue pairs counted by kind, as SPDK's poll groups count them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueuePairs {
    pub admin: u64,
    pub io: u64,
    /// Connected but not yet attached to a controller (no Connect yet).
    pub unassociated: u64,
}

impl QueuePairs {
    /// One queue with this queue id, or one not yet connected (`None`).
    pub fn one(qid: Option<u16>) -> Self {
        match qid {
            Some(0) => Self {
                admin: 1,
                ..Self::default()
            },
            Some(_) => Self {
                io: 1,
                ..Self::default()
            },
            None => Self {
                unassociated: 1,
                ..Self::default()
            },
        }
    }

    pub fn add(&mut self, other: Self) {
        self.admin += other.admin;
        self.io += other.io;
        self.unassociated += other.unassociated;
    }
}

/// Which subscriber of a reactor: a slab index and the generation of that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriberId {
    pub index: u32,
    pub generation: u16,
}

impl SubscriberId {
    /// The token of this subscriber's descriptor `key`, or of its command `tag` (the low 16
    /// bits are the subscriber's own).
    pub fn token(self, low: u16) -> u64 {
        (u64::from(self.index) << 32) | (u64::from(self.generation) << 16) | u64::from(low)
    }

    /// The subscriber and the low 16 bits of a token made by [`token`](Self::token).
    pub fn split(token: u64) -> (Self, u16) {
        #[allow(clippy::cast_possible_truncation)]
        let id = Self {
            index: (token >> 32) as u32,
            generation: (token >> 16) as u16,
        };
        #[allow(clippy::cast_possible_truncation)]
        let low = token as u16;
        (id, low)
    }

    /// The poll token of descriptor `key`.
    pub fn poll_token(self, key: u16) -> Token {
        // Lossless: the target is 64-bit (checked above).
        Token(usize::try_from(self.token(key)).unwrap_or(usize::MAX))
    }

    /// The subscriber and key a poll token names.
    pub fn from_poll_token(token: Token) -> (Self, u16) {
        Self::split(u64::try_from(token.0).unwrap_or(u64::MAX))
    }
}

/// What became of one of a subscriber's descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The key the descriptor was registered under.
    pub key: u16,
    pub readable: bool,
    pub writable: bool,
    /// The peer shut its side down (or the descriptor hung up).
    pub read_closed: bool,
    pub error: bool,
}

impl Readiness {
    pub fn of(key: u16, event: &mio::event::Event) -> Self {
        Self {
            key,
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            error: event.is_error(),
        }
    }
}

/// What one [`Subscriber::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// Things it found to do (doorbells the guest moved): a turn with some counts as busy.
    pub work: u64,
    pub flow: Flow,
}

impl Polled {
    /// Nothing to do.
    pub const IDLE: Self = Self {
        work: 0,
        flow: Flow::Continue,
    };

    /// `work` things done; the subscriber goes on.
    pub fn work(work: u64) -> Self {
        Self {
            work,
            flow: Flow::Continue,
        }
    }
}

/// A new subscriber on its way to a reactor, with its descriptors not registered yet.
pub type NewSubscriber = Box<dyn Subscriber + Send>;

/// Something a reactor hosts: it owns descriptors, registers them through the context, and is
/// told when they are ready. Every call gets the time the reactor's turn started.
///
/// A subscriber is created anywhere (a listener is opened by the daemon, a connection by the
/// listener that accepted it), then moved to the reactor that serves it for life, which calls
/// `init` first and `close` last.
pub trait Subscriber {
    /// Registers the subscriber's descriptors. An error drops the subscriber (`close` is
    /// called, so it may deregister what it registered before the failure).
    fn init(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> std::io::Result<()>;

    /// One of its descriptors is ready.
    fn process(&mut self, ready: Readiness, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow;

    /// When the subscriber wants [`handle_timer`](Self::handle_timer), if ever. Asked after
    /// every call; a deadline may move either way.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// A timer armed for an earlier [`deadline`](Self::deadline) fired. Timer entries are not
    /// cancelled when a deadline moves, so this may come early: check what is due.
    fn handle_timer(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        let _ = (cx, now);
        Flow::Continue
    }

    /// Whether the reactor is to call [`poll`](Self::poll) every turn: the subscriber watches
    /// memory that nothing signals a change of (a doorbell page a VMM maps into its guest,
    /// shadow doorbells). Asked after every call. A reactor in poll mode polls it on every
    /// turn. One in interrupt mode polls it only on the turns of its busy-poll window (after
    /// activity, `busy_poll_us`), and calls [`before_sleep`](Self::before_sleep) before every
    /// sleep, so what nothing signals must be armed to signal there (EventIdx).
    fn wants_poll(&self) -> bool {
        false
    }

    /// One look at what the subscriber polls, on every turn of a poll-mode reactor, and on
    /// the busy-poll turns of an interrupt-mode one, while it
    /// [`wants_poll`](Self::wants_poll).
    fn poll(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Polled {
        let _ = (cx, now);
        Polled::IDLE
    }

    /// An interrupt-mode reactor is about to sleep (no poll comes until something it watches
    /// wakes it): the subscriber arms what it polled to wake the reactor, then looks once more
    /// for what came before it was armed. Work found (and done) keeps the reactor awake for
    /// this turn and counts as busy. Called on every subscriber that
    /// [`wants_poll`](Self::wants_poll), after its last poll and before every sleep; never in
    /// poll mode.
    fn before_sleep(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Polled {
        let _ = (cx, now);
        Polled::IDLE
    }

    /// A backend finished requests this subscriber submitted: every one that finished in this
    /// turn, so the answers go out together. Each `done.token` is the command's tag again (the
    /// low 16 bits of [`IoCx::token`]). What is not taken after a `Close` is dropped.
    fn handle_io_done(
        &mut self,
        done: &mut dyn Iterator<Item = IoDone>,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        let _ = (done, cx, now);
        Flow::Continue
    }

    /// The buffers command `tag` waited for (`cx.io.pool.wait`) are reserved for it.
    fn handle_buffers_granted(
        &mut self,
        tag: u16,
        credits: u32,
        cx: &mut SubscriberCx<'_>,
        now: Instant,
    ) -> Flow {
        let _ = (tag, now);
        cx.io.pool.give_credits(credits);
        Flow::Continue
    }

    /// Its controller raised async events (through [`IoCx::async_notifier`]).
    fn handle_async_events(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        let _ = (cx, now);
        Flow::Continue
    }

    /// The controller this subscriber serves a queue of, so that the queue is closed when the
    /// controller goes away on another reactor.
    fn controller(&self) -> Option<&Arc<Controller>> {
        None
    }

    /// The listener this subscriber was accepted on: it is a connection (counted for load
    /// balancing and status) and closes when that listener is removed.
    fn accepted_on(&self) -> Option<&ListenerAddr> {
        None
    }

    /// The address this subscriber listens on, if it is a listener.
    fn listening_on(&self) -> Option<&ListenerAddr> {
        None
    }

    /// What it is, for `thread_get_pollers`: a listener by its address, a connection by the
    /// listener it came through and its controller.
    fn describe(&self) -> String {
        if let Some(addr) = self.listening_on() {
            return format!("{addr} listener");
        }
        let mut name = match self.accepted_on() {
            Some(addr) => format!("{addr} connection"),
            None => "subscriber".to_owned(),
        };
        if let Some(ctrlr) = self.controller() {
            name.push_str(&format!(" cntlid {}", ctrlr.cntlid()));
        }
        name
    }

    /// The queue pairs it serves, for `nvmf_get_stats`.
    fn queue_pairs(&self) -> QueuePairs {
        QueuePairs::default()
    }

    /// Commands that have not completed; shutdown waits for them (within its grace period).
    fn in_flight(&self) -> usize {
        0
    }

    /// Tears down: deregisters the descriptors and reports controllers this tore down
    /// ([`IoCx::controller_gone`]). Nothing is called after it.
    fn close(&mut self, cx: &mut SubscriberCx<'_>);
}

/// What a call into a subscriber may use of its reactor.
pub struct SubscriberCx<'a> {
    /// What a queue's work may use: completions, backend tokens, buffers, async events.
    pub io: IoCx<'a>,
    id: SubscriberId,
    registry: &'a Registry,
    handed_off: &'a mut Vec<NewSubscriber>,
}

impl<'a> SubscriberCx<'a> {
    pub fn new(
        io: IoCx<'a>,
        id: SubscriberId,
        registry: &'a Registry,
        handed_off: &'a mut Vec<NewSubscriber>,
    ) -> Self {
        Self {
            io,
            id,
            registry,
            handed_off,
        }
    }

    pub fn id(&self) -> SubscriberId {
        self.id
    }

    /// Watches `source` for `interest`; its readiness comes back as `key`.
    pub fn register<S: Source + ?Sized>(
        &self,
        source: &mut S,
        key: u16,
        interest: Interest,
    ) -> std::io::Result<()> {
        self.registry
            .register(source, self.id.poll_token(key), interest)
    }

    /// Changes what `source`, registered as `key`, is watched for.
    pub fn reregister<S: Source + ?Sized>(
        &self,
        source: &mut S,
        key: u16,
        interest: Interest,
    ) -> std::io::Result<()> {
        self.registry
            .reregister(source, self.id.poll_token(key), interest)
    }

    pub fn deregister<S: Source + ?Sized>(&self, source: &mut S) -> std::io::Result<()> {
        self.registry.deregister(source)
    }

    /// Gives a new subscriber (a connection just accepted) to the least loaded reactor,
    /// once this call returns.
    pub fn hand_off(&mut self, subscriber: NewSubscriber) {
        self.handed_off.push(subscriber);
    }

    /// The controllers this call tore down, for the reactor to close their other queues.
    pub fn into_gone(self) -> Vec<Arc<Controller>> {
        self.io.into_gone()
    }
}

/// Hands a turn's completions one by one to `each` (a connection's queue pair) until one of
/// them ends the connection; the flow of the last one handled. What follows a `Close` is
/// dropped, as [`Subscriber::handle_io_done`] allows.
pub fn each_io_done(
    done: &mut dyn Iterator<Item = IoDone>,
    mut each: impl FnMut(IoDone) -> Flow,
) -> Flow {
    let mut flow = Flow::Continue;
    for io in done {
        flow = each(io);
        if flow == Flow::Close {
            break;
        }
    }
    flow
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let id = SubscriberId {
            index: 70_000,
            generation: 7,
        };
        assert_eq!(SubscriberId::split(id.token(42)), (id, 42));
        assert_eq!(SubscriberId::from_poll_token(id.poll_token(3)), (id, 3));
        let last = SubscriberId {
            index: u32::MAX - 1,
            generation: u16::MAX,
        };
        assert_eq!(SubscriberId::split(last.token(u16::MAX)), (last, u16::MAX));
    }

    #[test]
    fn the_id_and_the_low_bits_do_not_overlap() {
        let id = SubscriberId {
            index: 1,
            generation: 1,
        };
        assert_eq!(id.token(0), 0x0000_0001_0001_0000);
        assert_eq!(id.token(0xFFFF) & !0xFFFF, id.token(0));
        let other = SubscriberId {
            index: 1,
            generation: 2,
        };
        assert_ne!(id.token(5), other.token(5));
    }
}
