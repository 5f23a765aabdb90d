//! One reactor: its thread, its poll, the subscribers it hosts and its mailbox.
//!
//! The loop knows no transport. Each turn it waits, hands every ready descriptor to the
//! subscriber whose id is in the token, polls the subscribers that watch memory (every turn in
//! poll mode, in the busy-poll window in interrupt mode), then serves the mailbox, backend
//! completions, granted buffers and due timers, and afterwards asks the subscriber it called
//! for its next deadline. Before an interrupt-mode reactor sleeps, the subscribers it polls
//! arm their wake-ups and look once more (`before_sleep`); work found there keeps it awake.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll};
use tracing::{debug, info, warn};

use super::mailbox::{Mailbox, ReactorMessage, least_loaded};
use super::pollers::{
    COMPLETIONS_ID, MAILBOX_ID, PollerInfo, PollerKind, ReactorReport, RunCount, URING_ID,
    subscriber_poller_id, timer_poller_id,
};
use super::slab::{RESERVED_INDEX, Slab};
use super::stats::ReactorStats;
use super::timers::Timers;
use crate::backend::{Completions, IoDone, Uring};
use crate::controller::Controller;
use crate::transport::buffer_pool::{BufferPool, CreditWaker, SharedPool};
use crate::transport::context::{AsyncNotifier, Flow, IoCx};
use crate::transport::subscriber::{
    NewSubscriber, Polled, QueuePairs, Readiness, Subscriber, SubscriberCx, SubscriberId,
};

/// The reactor's own descriptors are keys of the one id the slab never hands out; they carry
/// no work of their own: their wake-up is enough, the mailbox and the completions are looked
/// at every turn.
const OWN: SubscriberId = SubscriberId {
    index: RESERVED_INDEX,
    generation: 0,
};
const MAILBOX_KEY: u16 = 0;
const COMPLETIONS_KEY: u16 = 1;
/// Submit-and-reap rounds of the io_uring per turn: completions that start more requests
/// (a read that moved part of its bytes, a command that waited for its buffers) get them
/// going in the same turn, without one turn taking the ring for itself.
const URING_ROUNDS: usize = 4;
/// How long shutdown waits for in-flight commands before closing anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How a reactor runs.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    pub index: usize,
    /// The CPU to pin the thread to; `None` leaves it unpinned.
    pub core: Option<usize>,
    pub interrupt_mode: bool,
    /// Interrupt mode keeps polling this long after the last activity before sleeping.
    pub busy_poll: Duration,
}

/// A running reactor seen from the thread that started it.
pub struct ReactorHandle {
    pub config: ReactorConfig,
    pub mailbox: Mailbox,
    thread: Option<JoinHandle<()>>,
}

impl ReactorHandle {
    pub fn stats(&self) -> &Arc<ReactorStats> {
        &self.mailbox.stats
    }

    pub fn send(&self, message: ReactorMessage) {
        self.mailbox.send(message);
    }

    /// Waits for the thread to end.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                warn!(reactor = self.config.index, "reactor thread panicked");
            }
        }
    }
}

/// A reactor before its thread starts; [`Reactor::prepare`] then [`Reactor::start`], so that
/// every mailbox exists before any reactor runs and can hand connections to the others.
pub struct Reactor {
    config: ReactorConfig,
    poll: Poll,
    mailbox: Mailbox,
    completions: Completions,
}

impl Reactor {
    pub fn prepare(config: ReactorConfig) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let mailbox = Mailbox::new()?;
        poll.registry().register(
            &mut mailbox.wake_fd(),
            OWN.poll_token(MAILBOX_KEY),
            Interest::READABLE,
        )?;
        let completions = Completions::new()?;
        poll.registry().register(
            &mut completions.wake_fd(),
            OWN.poll_token(COMPLETIONS_KEY),
            Interest::READABLE,
        )?;
        Ok(Self {
            config,
            poll,
            mailbox,
            completions,
        })
    }

    pub fn mailbox(&self) -> Mailbox {
        self.mailbox.clone()
    }

    /// Starts the thread, hosting `subscribers` first (the first reactor gets the
    /// listeners); `peers` are every reactor's mailboxes, this one included, in index order.
    /// `buffers` is the data buffer pool every reactor shares.
    pub fn start(
        self,
        buffers: Arc<SharedPool>,
        subscribers: Vec<NewSubscriber>,
        peers: Arc<Vec<Mailbox>>,
    ) -> std::io::Result<ReactorHandle> {
        let config = self.config.clone();
        let mailbox = self.mailbox.clone();
        let name = format!("reactor_{}", config.index);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut running = Running::new(self, buffers, peers);
            let now = Instant::now();
            for subscriber in subscribers {
                running.host(subscriber, now);
            }
            running.run();
        })?;
        Ok(ReactorHandle {
            config,
            mailbox,
            thread: Some(thread),
        })
    }
}

/// What a turn waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A look that does not block (poll mode, interrupt mode's busy-poll window): the
    /// subscribers that want it are polled.
    Poll,
    /// Interrupt mode: epoll until an event or the timeout (zero when a timer is due).
    Sleep(Option<Duration>),
}

impl Wait {
    /// Whether the wait may block: the pollers are to arm their wake-ups first.
    fn sleeps(self) -> bool {
        self != Self::Poll && self != Self::Sleep(Some(Duration::ZERO))
    }
}

/// A subscriber and what the reactor keeps beside it.
struct Hosted {
    subscriber: NewSubscriber,
    /// What its controller calls to have [`Subscriber::handle_async_events`] called.
    notifier: AsyncNotifier,
    /// The earliest timer entry armed for it, if any is pending.
    timer_armed: Option<Instant>,
    /// Counted in the reactor's connections (it was accepted on a listener).
    is_connection: bool,
    /// In [`Running::pollers`].
    polled: bool,
    /// Calls into it, and calls that found work.
    count: RunCount,
    /// Its deadlines that passed.
    timer_count: RunCount,
}

struct Running {
    config: ReactorConfig,
    poll: Poll,
    mailbox: Mailbox,
    peers: Arc<Vec<Mailbox>>,
    hosted: Slab<Hosted>,
    /// Hosted subscribers that are connections.
    connections: usize,
    timers: Timers,
    completions: Completions,
    /// The reactor's io_uring for `file` namespaces; `None` where the kernel refuses one.
    uring: Option<Uring>,
    done: Vec<IoDone>,
    /// Data buffers of this reactor's commands, bounded by the shared pool.
    pool: BufferPool,
    /// New subscribers handed off during a call, placed once it returns.
    handed_off: Vec<NewSubscriber>,
    /// Subscribers that want [`Subscriber::poll`] every turn (poll mode) or every busy-poll
    /// turn and [`Subscriber::before_sleep`] (interrupt mode).
    pollers: Vec<SubscriberId>,
    /// The pollers of the turn in progress (a poll may change `pollers`).
    polling: Vec<SubscriberId>,
    next_peer: usize,
    shutting_down: Option<Instant>,
    /// Turns that looked at the mailbox, the backend completions and the io_uring, and those
    /// that found something there.
    mailbox_count: RunCount,
    completions_count: RunCount,
    uring_count: RunCount,
    /// The queue pairs of subscribers that closed.
    closed_queues: QueuePairs,
}

impl Running {
    fn new(reactor: Reactor, buffers: Arc<SharedPool>, peers: Arc<Vec<Mailbox>>) -> Self {
        // Credits coming back on another reactor wake this one; its next turn serves the
        // commands that wait for them.
        let mailbox = reactor.mailbox.clone();
        let wake: CreditWaker = Arc::new(move || mailbox.wake());
        let pool = BufferPool::new(buffers, reactor.config.index, wake);
        let uring = open_uring(&reactor.config, &reactor.completions);
        Self {
            config: reactor.config,
            poll: reactor.poll,
            mailbox: reactor.mailbox,
            peers,
            hosted: Slab::default(),
            connections: 0,
            timers: Timers::default(),
            completions: reactor.completions,
            uring,
            done: Vec::new(),
            pool,
            handed_off: Vec::new(),
            pollers: Vec::new(),
            polling: Vec::new(),
            next_peer: 0,
            shutting_down: None,
            mailbox_count: RunCount::default(),
            completions_count: RunCount::default(),
            uring_count: RunCount::default(),
            closed_queues: QueuePairs::default(),
        }
    }

    fn run(&mut self) {
        let span =
            tracing::info_span!("reactor", core = ?self.config.core, index = self.config.index);
        let _guard = span.enter();
        if let Some(core) = self.config.core {
            if let Err(err) = crate::sys::pin_current_thread(core) {
                warn!(core, %err, "cannot pin reactor to its core");
            }
        }
        self.mailbox.stats.set_thread_id(crate::sys::thread_id());
        info!(
            interrupt_mode = self.config.interrupt_mode,
            "reactor started"
        );
        let mut events = Events::with_capacity(256);
        let mut last_activity: Option<Instant> = None;
        let mut due = Vec::new();
        // One clock read per idle turn, two per busy one: a turn starts when the last ended.
        let mut before = Instant::now();
        loop {
            let mut wait = self.wait(before, last_activity);
            if wait.sleeps() && !self.pollers.is_empty() {
                // The pollers arm their wake-ups; what came before that is served now, and
                // this turn does not sleep.
                let found = self.call_pollers(before, |sub, cx, now| sub.before_sleep(cx, now));
                if found > 0 {
                    let end = Instant::now();
                    self.mailbox.stats.add_busy(end - before);
                    self.mailbox.stats.add_events(found);
                    last_activity = Some(end);
                    before = end;
                    wait = Wait::Sleep(Some(Duration::ZERO));
                }
            }
            let (timeout, polling) = match wait {
                Wait::Poll => (Some(Duration::ZERO), true),
                Wait::Sleep(timeout) => (timeout, false),
            };
            let blocking = timeout != Some(Duration::ZERO);
            // What the pollers started before the sleep goes to the kernel now.
            self.submit_uring();
            if blocking {
                self.mailbox.stats.begin_wait(before);
            }
            let polled = self.poll.poll(&mut events, timeout);
            let after = Instant::now();
            if blocking {
                // The sleep is idle time from the moment it ends, never missing from a reading.
                self.mailbox.stats.end_wait(after - before);
            }
            if let Err(err) = polled {
                if err.kind() != std::io::ErrorKind::Interrupted {
                    warn!(%err, "poll failed");
                }
                before = Instant::now();
                continue;
            }
            if blocking {
                self.mailbox.stats.add_wakeup();
            }
            let mut work = 0u64;
            for event in &events {
                work += 1;
                let (id, key) = SubscriberId::from_poll_token(event.token());
                if id.index == RESERVED_INDEX {
                    continue;
                }
                let ready = Readiness::of(key, event);
                self.call(id, after, |sub, cx| sub.process(ready, cx, after));
            }
            if polling {
                work += self.call_pollers(after, |sub, cx, now| sub.poll(cx, now));
            }
            work += self.handle_inbox(after);
            work += self.handle_completions(after);
            work += self.grant_buffers(after);
            self.timers.expire(after, &mut due);
            for id in due.drain(..) {
                self.handle_timer(id, after);
            }
            work += self.pump_uring(after);
            if !blocking {
                self.mailbox.stats.add_idle(after - before);
            }
            let end = if work > 0 {
                let end = Instant::now();
                self.mailbox.stats.add_busy(end - after);
                self.mailbox.stats.add_events(work);
                self.mailbox.stats.set_buffers(&self.pool.stats());
                last_activity = Some(end);
                end
            } else {
                after
            };
            before = end;
            if let Some(started) = self.shutting_down {
                if self.hosted.is_empty() || end - started > SHUTDOWN_GRACE {
                    break;
                }
            }
        }
        self.close_where(|_| true, "reactor stopping");
        info!("reactor stopped");
    }

    /// The next wait: a look in poll mode and inside the busy-poll window, otherwise a sleep
    /// until the next deadline, or forever.
    fn wait(&self, now: Instant, last_activity: Option<Instant>) -> Wait {
        if !self.config.interrupt_mode {
            return Wait::Poll;
        }
        if let Some(last) = last_activity {
            if now.duration_since(last) < self.config.busy_poll {
                return Wait::Poll;
            }
        }
        let mut timeout = self
            .timers
            .next()
            .map(|at| at.saturating_duration_since(now));
        if self.shutting_down.is_some() {
            // Re-check the grace period even if nothing else wakes us.
            timeout = Some(timeout.map_or(Duration::from_millis(50), |t| {
                t.min(Duration::from_millis(50))
            }));
        }
        Wait::Sleep(timeout)
    }

    /// Starts hosting a subscriber: gives it an id and lets it register its descriptors.
    /// During shutdown it is dropped instead, which closes its descriptors.
    fn host(&mut self, subscriber: NewSubscriber, now: Instant) {
        if self.shutting_down.is_some() {
            return;
        }
        let is_connection = subscriber.accepted_on().is_some();
        let mailbox = self.mailbox.clone();
        let inserted = self.hosted.insert_with(move |id| {
            let notifier: AsyncNotifier =
                Arc::new(move || mailbox.send(ReactorMessage::AsyncEvents(id)));
            Hosted {
                subscriber,
                notifier,
                timer_armed: None,
                is_connection,
                polled: false,
                count: RunCount::default(),
                timer_count: RunCount::default(),
            }
        });
        let Some(id) = inserted else {
            warn!("no room for another subscriber on this reactor");
            return;
        };
        if is_connection {
            self.connections += 1;
            self.update_connection_count();
        }
        debug!(index = id.index, "subscriber hosted");
        self.call(id, now, |sub, cx| match sub.init(cx, now) {
            Ok(()) => Flow::Continue,
            Err(err) => {
                warn!(%err, "cannot watch a new subscriber's descriptors");
                Flow::Close
            }
        });
    }

    /// Calls into subscriber `id`, if it is still here, then does what its answer and its
    /// new state ask: close it, arm its deadline, place what it handed off, close the queues
    /// of controllers it tore down.
    fn call(
        &mut self,
        id: SubscriberId,
        now: Instant,
        work: impl FnOnce(&mut (dyn Subscriber + Send), &mut SubscriberCx<'_>) -> Flow,
    ) {
        let Some(hosted) = self.hosted.get_mut(id) else {
            return;
        };
        // Busy unless a poll finds nothing (see `call_pollers`).
        hosted.count.ran(true);
        let io = IoCx::new(
            &self.completions,
            id.token(0),
            &hosted.notifier,
            &mut self.pool,
        )
        .with_uring(self.uring.as_mut());
        let mut cx = SubscriberCx::new(io, id, self.poll.registry(), &mut self.handed_off);
        let flow = work(hosted.subscriber.as_mut(), &mut cx);
        let gone = cx.into_gone();
        self.broadcast_gone(gone);
        if !self.handed_off.is_empty() {
            self.place_handed_off(now);
        }
        self.after_call(id, flow);
    }

    fn after_call(&mut self, id: SubscriberId, flow: Flow) {
        let Some(hosted) = self.hosted.get_mut(id) else {
            return;
        };
        if flow == Flow::Close {
            self.close(id, "closed itself");
            return;
        }
        if let Some(at) = hosted.subscriber.deadline() {
            if hosted.timer_armed.is_none_or(|armed| at < armed) {
                self.timers.arm(at, id);
                hosted.timer_armed = Some(at);
            }
        }
        let wants_poll = hosted.subscriber.wants_poll();
        if wants_poll != hosted.polled {
            hosted.polled = wants_poll;
            if wants_poll {
                self.pollers.push(id);
            } else {
                self.pollers.retain(|&p| p != id);
            }
        }
        if self.shutting_down.is_some() && hosted.subscriber.in_flight() == 0 {
            self.close(id, "target shutting down");
        }
    }

    /// Calls `f` ([`Subscriber::poll`] or [`Subscriber::before_sleep`]) on every subscriber
    /// that wants polling; returns the work they found.
    fn call_pollers(
        &mut self,
        now: Instant,
        f: fn(&mut (dyn Subscriber + Send), &mut SubscriberCx<'_>, Instant) -> Polled,
    ) -> u64 {
        if self.pollers.is_empty() {
            return 0;
        }
        let mut polling = std::mem::take(&mut self.polling);
        polling.extend_from_slice(&self.pollers);
        let mut work = 0;
        for id in polling.drain(..) {
            let mut found = 0;
            self.call(id, now, |sub, cx| {
                let polled = f(sub, cx, now);
                found = polled.work;
                polled.flow
            });
            if found == 0 {
                if let Some(hosted) = self.hosted.get_mut(id) {
                    // The poll ran idle.
                    hosted.count.busy = hosted.count.busy.saturating_sub(1);
                }
            }
            work += found;
        }
        self.polling = polling;
        work
    }

    /// A timer entry of `id` fired; [`Self::after_call`] arms its current deadline.
    fn handle_timer(&mut self, id: SubscriberId, now: Instant) {
        let Some(hosted) = self.hosted.get_mut(id) else {
            return;
        };
        hosted.timer_armed = None;
        hosted.timer_count.ran(true);
        self.call(id, now, |sub, cx| sub.handle_timer(cx, now));
    }

    /// Gives each new subscriber (a connection just accepted) to the least loaded reactor.
    fn place_handed_off(&mut self, now: Instant) {
        let mut handed_off = std::mem::take(&mut self.handed_off);
        for subscriber in handed_off.drain(..) {
            let best = least_loaded(&self.peers, &mut self.next_peer);
            match self.peers.get(best) {
                Some(peer) if best != self.config.index => {
                    if subscriber.accepted_on().is_some() {
                        // Count it now so a burst of accepts spreads out before the peer
                        // wakes; the peer's own count replaces this one.
                        let stats = &peer.stats;
                        stats.set_connections(
                            usize::try_from(stats.connections() + 1).unwrap_or(usize::MAX),
                        );
                    }
                    peer.send(ReactorMessage::Subscribe(subscriber));
                }
                _ => self.host(subscriber, now),
            }
        }
        // Keep the allocation for the next accept.
        if self.handed_off.is_empty() {
            self.handed_off = handed_off;
        }
    }

    fn update_connection_count(&self) {
        self.mailbox.stats.set_connections(self.connections);
    }

    fn handle_inbox(&mut self, now: Instant) -> u64 {
        let messages = self.mailbox.take_mail();
        self.mailbox_count.ran(!messages.is_empty());
        if messages.is_empty() {
            return 0;
        }
        let count = messages.len() as u64;
        for message in messages {
            match message {
                ReactorMessage::Subscribe(subscriber) => self.host(subscriber, now),
                ReactorMessage::AsyncEvents(id) => {
                    self.call(id, now, |sub, cx| sub.handle_async_events(cx, now));
                }
                ReactorMessage::ControllerGone(ctrlr) => self.close_where(
                    |sub| sub.controller().is_some_and(|c| Arc::ptr_eq(c, &ctrlr)),
                    "controller gone",
                ),
                ReactorMessage::RemoveListener(addr) => {
                    self.close_where(|sub| sub.listening_on() == Some(&addr), "listener removed");
                }
                ReactorMessage::CloseConnections(addr) => {
                    self.close_where(|sub| sub.accepted_on() == Some(&addr), "listener removed");
                }
                ReactorMessage::DescribePollers(reply) => {
                    // Nobody waits any more if the reply does not fit: drop it.
                    let _ = reply.try_send(self.report(now));
                }
                ReactorMessage::Shutdown => self.begin_shutdown(now),
            }
        }
        self.update_connection_count();
        count
    }

    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutting_down.is_some() {
            return;
        }
        info!("shutting down: no new connections, finishing in-flight commands");
        self.shutting_down = Some(now);
        // Listeners have nothing in flight: they close here, and nothing new is accepted.
        self.close_where(|sub| sub.in_flight() == 0, "target shutting down");
    }

    fn handle_completions(&mut self, now: Instant) -> u64 {
        let found = self.completions.drain_into(&mut self.done);
        self.completions_count.ran(found);
        if !found {
            return 0;
        }
        self.route_done(now)
    }

    /// Hands the turn's io_uring requests to the kernel and routes what finished, for a few
    /// rounds while rounds finish something.
    fn pump_uring(&mut self, now: Instant) -> u64 {
        let mut work = 0;
        for _ in 0..URING_ROUNDS {
            self.submit_uring();
            let Some(uring) = self.uring.as_mut() else {
                return 0;
            };
            let idle = uring.reap(&self.completions, &mut self.done) == 0 && self.done.is_empty();
            self.uring_count.ran(!idle);
            if idle {
                break;
            }
            work += self.route_done(now);
        }
        work
    }

    fn submit_uring(&mut self) {
        if let Some(uring) = self.uring.as_mut() {
            if let Err(err) = uring.submit() {
                warn!(%err, "io_uring submission failed");
            }
        }
    }

    /// Delivers the finished requests in `self.done` to their subscribers, each its own in
    /// one call (in the order they finished), so that it answers them with one send.
    fn route_done(&mut self, now: Instant) -> u64 {
        let mut done = std::mem::take(&mut self.done);
        let count = done.len() as u64;
        // Groups by subscriber, taken from the end; the sort is stable, so each group keeps
        // its order.
        done.sort_by_key(|io| std::cmp::Reverse(io.token >> 16));
        while let Some(last) = done.last() {
            let id = SubscriberId::split(last.token).0;
            let mine = done
                .iter()
                .rev()
                .take_while(|io| SubscriberId::split(io.token).0 == id)
                .count();
            let from = done.len() - mine;
            let mut batch = done.drain(from..).map(|mut io| {
                io.token = u64::from(SubscriberId::split(io.token).1);
                io
            });
            // A subscriber closed while these ran is gone: the results are dropped.
            self.call(id, now, |sub, cx| sub.handle_io_done(&mut batch, cx, now));
        }
        // Keep the allocation for the next batch.
        self.done = done;
        count
    }

    /// Hands buffers to the commands that wait for them, oldest first.
    fn grant_buffers(&mut self, now: Instant) -> u64 {
        self.pool.collect_strays();
        let mut granted = 0;
        while let Some((key, credits)) = self.pool.poll_granted() {
            granted += 1;
            let (id, tag) = SubscriberId::split(key);
            if self.hosted.get_mut(id).is_none() {
                self.pool.give_credits(credits);
                continue;
            }
            self.call(id, now, |sub, cx| {
                sub.handle_buffers_granted(tag, credits, cx, now)
            });
        }
        granted
    }

    /// Tells every reactor about controllers a subscriber's work tore down.
    fn broadcast_gone(&self, gone: Vec<Arc<Controller>>) {
        for ctrlr in gone {
            for peer in self.peers.iter() {
                peer.send(ReactorMessage::ControllerGone(Arc::clone(&ctrlr)));
            }
        }
    }

    fn close(&mut self, id: SubscriberId, why: &str) {
        let Some(mut hosted) = self.hosted.remove(id) else {
            return;
        };
        let io = IoCx::new(
            &self.completions,
            id.token(0),
            &hosted.notifier,
            &mut self.pool,
        )
        .with_uring(self.uring.as_mut());
        let mut cx = SubscriberCx::new(io, id, self.poll.registry(), &mut self.handed_off);
        self.closed_queues.add(hosted.subscriber.queue_pairs());
        hosted.subscriber.close(&mut cx);
        let gone = cx.into_gone();
        self.pool
            .forget_waiters(|key| SubscriberId::split(key).0 == id);
        if hosted.polled {
            self.pollers.retain(|&p| p != id);
        }
        debug!(index = id.index, why, "subscriber closed");
        if hosted.is_connection {
            self.connections -= 1;
            self.update_connection_count();
        }
        self.broadcast_gone(gone);
        // A subscriber hands nothing off as it closes; drop anything it tried to.
        self.handed_off.clear();
    }

    /// What this reactor runs and serves, for `thread_get_pollers` and `nvmf_get_stats`.
    fn report(&self, now: Instant) -> ReactorReport {
        let mut queues = QueuePairs::default();
        let mut in_flight = 0;
        for (_, hosted) in self.hosted.iter() {
            queues.add(hosted.subscriber.queue_pairs());
            in_flight += hosted.subscriber.in_flight() as u64;
        }
        ReactorReport {
            reactor: self.config.index,
            pollers: self.describe_pollers(now),
            queues,
            closed: self.closed_queues,
            in_flight,
        }
    }

    /// What this reactor runs, for `thread_get_pollers`: its own sources, then each
    /// subscriber, then each armed deadline.
    fn describe_pollers(&self, now: Instant) -> Vec<PollerInfo> {
        let source = |name: &str, id, count| PollerInfo {
            name: name.to_owned(),
            id,
            kind: PollerKind::Active,
            count,
            due_in_ns: None,
        };
        let mut out = vec![
            source("mailbox", MAILBOX_ID, self.mailbox_count),
            source(
                "backend_completions",
                COMPLETIONS_ID,
                self.completions_count,
            ),
        ];
        if self.uring.is_some() {
            out.push(source("io_uring", URING_ID, self.uring_count));
        }
        let mut timed = Vec::new();
        for (id, hosted) in self.hosted.iter() {
            let name = hosted.subscriber.describe();
            if let Some(at) = hosted.timer_armed {
                timed.push(PollerInfo {
                    name: format!("{name} timer"),
                    id: timer_poller_id(id.token(0)),
                    kind: PollerKind::Timed,
                    count: hosted.timer_count,
                    due_in_ns: Some(
                        u64::try_from(at.saturating_duration_since(now).as_nanos())
                            .unwrap_or(u64::MAX),
                    ),
                });
            }
            out.push(PollerInfo {
                name,
                id: subscriber_poller_id(id.token(0)),
                kind: PollerKind::Active,
                count: hosted.count,
                due_in_ns: None,
            });
        }
        out.extend(timed);
        out
    }

    /// Closes every subscriber `doomed` picks.
    fn close_where(&mut self, doomed: impl Fn(&(dyn Subscriber + Send)) -> bool, why: &str) {
        for id in self
            .hosted
            .ids_where(|hosted| doomed(hosted.subscriber.as_ref()))
        {
            self.close(id, why);
        }
    }
}

/// The reactor's io_uring, signalling the completion eventfd in interrupt mode (poll mode
/// reaps every turn and needs no wake-up).
fn open_uring(config: &ReactorConfig, completions: &Completions) -> Option<Uring> {
    let uring = match Uring::open() {
        Ok(uring) => uring,
        Err(err) => {
            debug!(%err, "no io_uring: file namespaces use worker threads");
            return None;
        }
    };
    if config.interrupt_mode {
        if let Err(err) = uring.signal(completions.wake_fd()) {
            warn!(%err, "io_uring cannot signal the reactor: file namespaces use worker threads");
            return None;
        }
    }
    Some(uring)
}

#[cfg(test)]
mod tests;
