//! One reactor: its thread, its poll, its connections and its mailbox.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, info, warn};

use super::stats::ReactorStats;
use super::timers::Timers;
use crate::backend::{Completions, IoDone};
use crate::controller::{Controller, ListenerAddr};
use crate::transport::buffer_pool::{BufferPool, CreditWaker, SharedPool};
use crate::transport::context::{AsyncNotifier, Flow, IoCx};
use crate::transport::tcp::{TcpConnection, TcpContext};

const WAKER: Token = Token(usize::MAX - 1);
/// The eventfd of the reactor's backend completions.
const COMPLETIONS: Token = Token(usize::MAX - 2);
/// Tokens and timer keys from here up are listener indexes (an accept retry, for timers);
/// below it they are connection slots.
const LISTENER_BASE: usize = 1 << 30;
/// How long a listener waits to accept again after running out of descriptors or memory.
///
/// Epoll is edge-triggered, so a backlog left non-empty after a failed accept raises no new
/// event: without this timer the listener would never accept again. The timer is the only
/// extra wake-up, and only while the shortage lasts. We retry rather than keep a reserve
/// descriptor to accept-and-close pending hosts with: a shortage usually passes (connections
/// close, setup timeouts free theirs), and a host waiting in the backlog is then served
/// within one retry period, while a host whose connection was closed is lost until it
/// reconnects by itself (the Linux host waits `reconnect_delay`, 10 s by default, and a
/// plain `nvme connect` just fails). A reserve descriptor is also not reliable here: any of
/// the target's other threads (file workers, control socket, reload) may take the slot it
/// frees before the reactor does.
const ACCEPT_RETRY: Duration = Duration::from_millis(200);
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

/// What other threads ask of a reactor.
#[derive(Debug)]
pub enum ReactorMessage {
    /// Serve a connection the acceptor took.
    Adopt {
        stream: std::net::TcpStream,
        peer: SocketAddr,
        listener: ListenerAddr,
    },
    /// A controller has async events for the admin queue in this slot.
    AsyncEvents { index: usize, generation: u16 },
    /// A controller went away (keep-alive expiry, disconnect, teardown): close its queues.
    ControllerGone(Arc<Controller>),
    /// Accept on one more listening socket (sent to the acceptor reactor).
    AddListener {
        listener: std::net::TcpListener,
        addr: ListenerAddr,
    },
    /// Stop accepting on this listener (sent to the acceptor reactor).
    RemoveListener(ListenerAddr),
    /// Close every connection accepted on this listener (its socket is gone).
    CloseConnections(ListenerAddr),
    /// Stop accepting, let in-flight commands finish, close everything and exit.
    Shutdown,
}

/// The address of a reactor for other threads: its inbox, its waker and its figures.
#[derive(Clone)]
pub struct Mailbox {
    inbox: Arc<Mutex<Vec<ReactorMessage>>>,
    /// Set after a message is queued, so the reactor takes the lock only when there is mail.
    has_mail: Arc<AtomicBool>,
    waker: Arc<Waker>,
    pub stats: Arc<ReactorStats>,
}

impl Mailbox {
    pub fn send(&self, message: ReactorMessage) {
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
        self.has_mail.store(true, Ordering::Release);
        if let Err(err) = self.waker.wake() {
            warn!(%err, "cannot wake reactor");
        }
    }
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

/// A listening socket on the acceptor reactor.
struct Listener {
    socket: TcpListener,
    addr: ListenerAddr,
    /// Set from the first accept that fails for want of resources until the backlog is
    /// drained again.
    shortage: Option<AcceptShortage>,
}

/// One burst of failed accepts: logged once when it starts and once when it ends.
struct AcceptShortage {
    started: Instant,
    failed_attempts: u64,
    /// Connections accepted between failures, while the backlog was still not drained.
    accepted: u64,
    /// When the armed retry is due; at most one is armed per listener.
    retry_at: Option<Instant>,
}

/// What a failed `accept` means for the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// The pending connection failed before it was taken (reset, network error, a signal)
    /// and the kernel dropped it, or the call was interrupted: take the next one.
    Connection,
    /// Out of descriptors or memory, or an error that should not happen: nothing more can be
    /// accepted now, and no event will say when it can; retry on a timer.
    Resources,
}

impl AcceptFailure {
    fn of(err: &std::io::Error) -> Self {
        // accept(2): Linux passes pending network errors of the new socket up from accept,
        // and they should be treated like EAGAIN (go on).
        match err.raw_os_error() {
            Some(
                libc::ECONNABORTED
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH,
            ) => Self::Connection,
            // EMFILE, ENFILE, ENOBUFS, ENOMEM, and anything unexpected: never stop accepting.
            _ => Self::Resources,
        }
    }
}

struct Slot {
    conn: TcpConnection,
    generation: u16,
    writable_armed: bool,
    /// The earliest timer entry armed for this connection, if any is pending.
    timer_armed: Option<Instant>,
    notifier: AsyncNotifier,
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
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let completions = Completions::new()?;
        poll.registry()
            .register(&mut completions.wake_fd(), COMPLETIONS, Interest::READABLE)?;
        Ok(Self {
            config,
            poll,
            completions,
            mailbox: Mailbox {
                inbox: Arc::new(Mutex::new(Vec::new())),
                has_mail: Arc::new(AtomicBool::new(false)),
                waker,
                stats: Arc::new(ReactorStats::default()),
            },
        })
    }

    pub fn mailbox(&self) -> Mailbox {
        self.mailbox.clone()
    }

    /// Starts the thread. `listeners` are accepted on this reactor (the first one gets them
    /// all); `peers` are every reactor's mailboxes, this one included, in index order.
    /// `buffers` is the data buffer pool every reactor shares.
    pub fn start(
        self,
        context: Arc<TcpContext>,
        buffers: Arc<SharedPool>,
        listeners: Vec<(std::net::TcpListener, ListenerAddr)>,
        peers: Arc<Vec<Mailbox>>,
    ) -> std::io::Result<ReactorHandle> {
        let config = self.config.clone();
        let mailbox = self.mailbox.clone();
        let name = format!("reactor_{}", config.index);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let mut running = Running::new(self, context, buffers, peers);
            running.add_listeners(listeners);
            running.run();
        })?;
        Ok(ReactorHandle {
            config,
            mailbox,
            thread: Some(thread),
        })
    }
}

struct Running {
    config: ReactorConfig,
    poll: Poll,
    mailbox: Mailbox,
    context: Arc<TcpContext>,
    peers: Arc<Vec<Mailbox>>,
    listeners: Vec<Option<Listener>>,
    slots: Vec<Option<Slot>>,
    generations: Vec<u16>,
    free: Vec<usize>,
    timers: Timers,
    completions: Completions,
    done: Vec<IoDone>,
    /// Data buffers of this reactor's commands, bounded by the shared pool.
    pool: BufferPool,
    next_peer: usize,
    shutting_down: Option<Instant>,
}

impl Running {
    fn new(
        reactor: Reactor,
        context: Arc<TcpContext>,
        buffers: Arc<SharedPool>,
        peers: Arc<Vec<Mailbox>>,
    ) -> Self {
        let completions = reactor.completions;
        // Credits coming back on another reactor wake this one; its next turn serves the
        // commands that wait for them.
        let waker = Arc::clone(&reactor.mailbox.waker);
        let wake: CreditWaker = Arc::new(move || {
            let _ = waker.wake();
        });
        let pool = BufferPool::new(buffers, reactor.config.index, wake);
        Self {
            config: reactor.config,
            poll: reactor.poll,
            mailbox: reactor.mailbox,
            context,
            peers,
            listeners: Vec::new(),
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            timers: Timers::default(),
            completions,
            done: Vec::new(),
            pool,
            next_peer: 0,
            shutting_down: None,
        }
    }

    fn add_listeners(&mut self, listeners: Vec<(std::net::TcpListener, ListenerAddr)>) {
        for (listener, addr) in listeners {
            let index = self.listeners.len();
            let mut socket = TcpListener::from_std(listener);
            match self.poll.registry().register(
                &mut socket,
                Token(LISTENER_BASE + index),
                Interest::READABLE,
            ) {
                Ok(()) => self.listeners.push(Some(Listener {
                    socket,
                    addr,
                    shortage: None,
                })),
                Err(err) => warn!(%err, listener = %addr, "cannot watch listener"),
            }
        }
    }

    fn remove_listener(&mut self, addr: &ListenerAddr) {
        for slot in &mut self.listeners {
            if slot.as_ref().is_some_and(|listener| &listener.addr == addr) {
                if let Some(mut listener) = slot.take() {
                    let _ = self.poll.registry().deregister(&mut listener.socket);
                    info!(listener = %addr, "stopped listening");
                }
            }
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
            let timeout = self.timeout(before, last_activity);
            let blocking = timeout != Some(Duration::ZERO);
            if blocking {
                self.mailbox.stats.begin_wait(before);
            }
            let polled = self.poll.poll(&mut events, timeout);
            if blocking {
                self.mailbox.stats.end_wait();
            }
            if let Err(err) = polled {
                if err.kind() != std::io::ErrorKind::Interrupted {
                    warn!(%err, "poll failed");
                }
                before = Instant::now();
                continue;
            }
            let after = Instant::now();
            if blocking {
                self.mailbox.stats.add_wakeup();
            }
            let mut work = 0u64;
            for event in &events {
                work += 1;
                match event.token() {
                    WAKER | COMPLETIONS => {}
                    Token(t) if t >= LISTENER_BASE => self.accept(t - LISTENER_BASE, after),
                    Token(t) => {
                        let closing = event.is_read_closed() || event.is_error();
                        let (readable, writable) = (event.is_readable(), event.is_writable());
                        self.handle_conn_event(t, readable, writable, closing, after);
                    }
                }
            }
            work += self.handle_inbox(after);
            work += self.handle_completions(after);
            work += self.grant_buffers(after);
            self.timers.expire(after, &mut due);
            for key in due.drain(..) {
                match key.checked_sub(LISTENER_BASE) {
                    Some(listener) => self.retry_accept(listener, after),
                    None => self.handle_conn_timer(key, after),
                }
            }
            let end = if work > 0 {
                let end = Instant::now();
                self.mailbox.stats.add_idle(after - before);
                self.mailbox.stats.add_busy(end - after);
                self.mailbox.stats.add_events(work);
                self.mailbox.stats.set_buffers(&self.pool.stats());
                last_activity = Some(end);
                end
            } else {
                self.mailbox.stats.add_idle(after - before);
                after
            };
            before = end;
            if let Some(started) = self.shutting_down {
                if self.live_connections() == 0 || end - started > SHUTDOWN_GRACE {
                    break;
                }
            }
        }
        self.close_all();
        info!("reactor stopped");
    }

    /// How long the next wait may sleep: zero in poll mode and inside the busy-poll window,
    /// otherwise until the next deadline, or forever.
    fn timeout(&self, now: Instant, last_activity: Option<Instant>) -> Option<Duration> {
        if !self.config.interrupt_mode {
            return Some(Duration::ZERO);
        }
        if let Some(last) = last_activity {
            if now.duration_since(last) < self.config.busy_poll {
                return Some(Duration::ZERO);
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
        timeout
    }

    fn live_connections(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Accepts until the backlog is empty, or until accepting fails for want of descriptors
    /// or memory; then retries on a timer (see [`ACCEPT_RETRY`]).
    ///
    /// A shortage is logged once when it starts and once when the backlog has been drained,
    /// not at the first success: with the target held at its limit, accepts would alternate
    /// between success and failure on every retry and flood the log.
    fn accept(&mut self, index: usize, now: Instant) {
        loop {
            let Some(Some(listener)) = self.listeners.get_mut(index) else {
                return;
            };
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    if let Some(shortage) = &mut listener.shortage {
                        shortage.accepted += 1;
                    }
                    let addr = listener.addr.clone();
                    self.hand_off(stream, peer, addr, now);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(shortage) = listener.shortage.take() {
                        let lasted = now.saturating_duration_since(shortage.started);
                        info!(
                            listener = %listener.addr,
                            failed_attempts = shortage.failed_attempts,
                            accepted_meanwhile = shortage.accepted,
                            lasted_ms = lasted.as_millis(),
                            "accepting again: the backlog is drained"
                        );
                    }
                    return;
                }
                Err(err) => match AcceptFailure::of(&err) {
                    AcceptFailure::Connection => {
                        debug!(%err, "pending connection lost before accept");
                    }
                    AcceptFailure::Resources => {
                        let shortage = listener.shortage.get_or_insert_with(|| {
                            warn!(
                                listener = %listener.addr,
                                %err,
                                retry_ms = ACCEPT_RETRY.as_millis(),
                                "accept failed; retrying on a timer, silently until the \
                                 backlog is drained"
                            );
                            AcceptShortage {
                                started: now,
                                failed_attempts: 0,
                                accepted: 0,
                                retry_at: None,
                            }
                        });
                        shortage.failed_attempts += 1;
                        if shortage.retry_at.is_none() {
                            let at = now + ACCEPT_RETRY;
                            shortage.retry_at = Some(at);
                            self.timers.arm(at, LISTENER_BASE + index);
                        }
                        return;
                    }
                },
            }
        }
    }

    /// The accept retry timer of listener `index` fired. Entries left over from an earlier
    /// shortage, or from a listener since removed, do nothing.
    fn retry_accept(&mut self, index: usize, now: Instant) {
        let Some(Some(listener)) = self.listeners.get_mut(index) else {
            return;
        };
        let Some(shortage) = &mut listener.shortage else {
            return;
        };
        if shortage.retry_at.is_some_and(|at| at <= now) {
            shortage.retry_at = None;
            self.accept(index, now);
        }
    }

    /// Gives the connection to the least loaded reactor (ties go round robin).
    fn hand_off(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        listener: ListenerAddr,
        now: Instant,
    ) {
        let count = self.peers.len();
        let mut best = self.next_peer % count.max(1);
        for step in 0..count {
            let candidate = (self.next_peer + step) % count;
            if self.peers[candidate].stats.connections() < self.peers[best].stats.connections() {
                best = candidate;
            }
        }
        self.next_peer = (best + 1) % count.max(1);
        if best == self.config.index {
            self.adopt(stream, peer, listener, now);
        } else {
            // Count it now so a burst of accepts spreads out before the peer wakes.
            let stats = &self.peers[best].stats;
            stats.set_connections(usize::try_from(stats.connections() + 1).unwrap_or(usize::MAX));
            let stream: std::net::TcpStream = stream.into();
            self.peers[best].send(ReactorMessage::Adopt {
                stream,
                peer,
                listener,
            });
        }
    }

    fn adopt(&mut self, stream: TcpStream, peer: SocketAddr, listener: ListenerAddr, now: Instant) {
        if self.shutting_down.is_some() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.generations.push(0);
            self.slots.len() - 1
        });
        let mut conn = TcpConnection::new(stream, peer, listener, Arc::clone(&self.context), now);
        if let Err(err) =
            self.poll
                .registry()
                .register(conn.source(), Token(index), Interest::READABLE)
        {
            warn!(%err, %peer, "cannot watch connection");
            self.free.push(index);
            return;
        }
        debug!(%peer, slot = index, "connection adopted");
        let timer_armed = conn.deadline();
        if let Some(at) = timer_armed {
            self.timers.arm(at, index);
        }
        let generation = self.generations[index];
        let mailbox = self.mailbox.clone();
        let notifier: AsyncNotifier =
            Arc::new(move || mailbox.send(ReactorMessage::AsyncEvents { index, generation }));
        self.slots[index] = Some(Slot {
            conn,
            generation,
            writable_armed: false,
            timer_armed,
            notifier,
        });
        self.update_connection_count();
    }

    fn update_connection_count(&self) {
        self.mailbox.stats.set_connections(self.live_connections());
    }

    fn handle_inbox(&mut self, now: Instant) -> u64 {
        if !self.mailbox.has_mail.swap(false, Ordering::Acquire) {
            return 0;
        }
        let messages = std::mem::take(
            &mut *self
                .mailbox
                .inbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let count = messages.len() as u64;
        for message in messages {
            match message {
                ReactorMessage::Adopt {
                    stream,
                    peer,
                    listener,
                } => {
                    // Dropping the stream on failure closes it: nothing leaks.
                    match stream.set_nonblocking(true) {
                        Ok(()) => self.adopt(TcpStream::from_std(stream), peer, listener, now),
                        Err(err) => warn!(%err, %peer, "cannot adopt connection"),
                    }
                }
                ReactorMessage::ControllerGone(ctrlr) => self.close_where(
                    |conn| conn.controller().is_some_and(|c| Arc::ptr_eq(c, &ctrlr)),
                    "controller gone",
                ),
                ReactorMessage::AsyncEvents { index, generation } => {
                    if let Some(Some(slot)) = self.slots.get_mut(index) {
                        if slot.generation == generation {
                            let mut cx = IoCx::new(
                                &self.completions,
                                io_token_base(index, generation),
                                &slot.notifier,
                                &mut self.pool,
                            );
                            let flow = slot.conn.handle_controller_events(&mut cx, now);
                            self.after_conn_work(index, flow);
                        }
                    }
                }
                ReactorMessage::AddListener { listener, addr } => {
                    if self.shutting_down.is_none() {
                        self.add_listeners(vec![(listener, addr)]);
                    }
                }
                ReactorMessage::RemoveListener(addr) => self.remove_listener(&addr),
                ReactorMessage::CloseConnections(listener) => {
                    self.close_where(|conn| conn.listener() == &listener, "listener removed");
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
        for slot in &mut self.listeners {
            if let Some(mut listener) = slot.take() {
                let _ = self.poll.registry().deregister(&mut listener.socket);
            }
        }
        let idle: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| (s.as_ref()?.conn.in_flight() == 0).then_some(i))
            .collect();
        for index in idle {
            self.close(index, "target shutting down");
        }
    }

    fn handle_completions(&mut self, now: Instant) -> u64 {
        if !self.completions.drain_into(&mut self.done) {
            return 0;
        }
        let mut done = std::mem::take(&mut self.done);
        let count = done.len() as u64;
        for mut io in done.drain(..) {
            let (index, generation, tag) = split_token(io.token);
            let flow = match self.slots.get_mut(index) {
                Some(Some(slot)) if slot.generation == generation => {
                    io.token = u64::from(tag);
                    let mut cx = IoCx::new(
                        &self.completions,
                        io_token_base(index, generation),
                        &slot.notifier,
                        &mut self.pool,
                    );
                    let flow = slot.conn.handle_io_done(io, &mut cx, now);
                    let gone = cx.into_gone();
                    self.broadcast_gone(gone);
                    flow
                }
                // The connection closed while this I/O ran: drop the result.
                _ => continue,
            };
            self.after_conn_work(index, flow);
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
            let (index, generation, tag) = split_token(key);
            let Some(Some(slot)) = self.slots.get_mut(index) else {
                self.pool.give_credits(credits);
                continue;
            };
            let tag = u16::try_from(tag)
                .ok()
                .filter(|_| slot.generation == generation);
            let Some(tag) = tag else {
                self.pool.give_credits(credits);
                continue;
            };
            let mut cx = IoCx::new(
                &self.completions,
                io_token_base(index, generation),
                &slot.notifier,
                &mut self.pool,
            );
            let flow = slot.conn.handle_buffers_granted(tag, credits, &mut cx, now);
            let gone = cx.into_gone();
            self.broadcast_gone(gone);
            self.after_conn_work(index, flow);
        }
        granted
    }

    fn handle_conn_event(
        &mut self,
        index: usize,
        readable: bool,
        writable: bool,
        closing: bool,
        now: Instant,
    ) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        let mut cx = IoCx::new(
            &self.completions,
            io_token_base(index, slot.generation),
            &slot.notifier,
            &mut self.pool,
        );
        let flow = slot
            .conn
            .handle_event(readable, writable, closing, &mut cx, now);
        let gone = cx.into_gone();
        self.broadcast_gone(gone);
        self.after_conn_work(index, flow);
    }

    fn handle_conn_timer(&mut self, index: usize, now: Instant) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        let mut cx = IoCx::new(
            &self.completions,
            io_token_base(index, slot.generation),
            &slot.notifier,
            &mut self.pool,
        );
        // This entry fired; after_conn_work arms the connection's current deadline.
        slot.timer_armed = None;
        let flow = slot.conn.handle_timer(&mut cx, now);
        let gone = cx.into_gone();
        self.broadcast_gone(gone);
        self.after_conn_work(index, flow);
    }

    /// Tells every reactor about controllers this connection's work tore down.
    fn broadcast_gone(&self, gone: Vec<Arc<Controller>>) {
        for ctrlr in gone {
            for peer in self.peers.iter() {
                peer.send(ReactorMessage::ControllerGone(Arc::clone(&ctrlr)));
            }
        }
    }

    fn after_conn_work(&mut self, index: usize, flow: Flow) {
        let Some(Some(slot)) = self.slots.get_mut(index) else {
            return;
        };
        if flow == Flow::Close {
            self.close(index, "closed by protocol");
            return;
        }
        if let Some(at) = slot.conn.deadline() {
            if slot.timer_armed.is_none_or(|armed| at < armed) {
                self.timers.arm(at, index);
                slot.timer_armed = Some(at);
            }
        }
        let wants = slot.conn.wants_writable();
        if wants != slot.writable_armed {
            let interest = if wants {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(err) =
                self.poll
                    .registry()
                    .reregister(slot.conn.source(), Token(index), interest)
            {
                warn!(%err, "cannot change interest");
            }
            slot.writable_armed = wants;
        }
        if self.shutting_down.is_some() && slot.conn.in_flight() == 0 {
            self.close(index, "target shutting down");
        }
    }

    fn close(&mut self, index: usize, why: &str) {
        let Some(slot) = self.slots.get_mut(index).and_then(Option::take) else {
            return;
        };
        let mut conn = slot.conn;
        let _ = self.poll.registry().deregister(conn.source());
        let gone = conn.close();
        let generation = slot.generation;
        self.pool.forget_waiters(|key| {
            let (i, g, _) = split_token(key);
            i == index && g == generation
        });
        debug!(slot = index, why, "connection closed");
        self.broadcast_gone(gone.into_iter().collect());
        self.generations[index] = self.generations[index].wrapping_add(1);
        self.free.push(index);
        self.update_connection_count();
    }

    /// Closes every connection `doomed` picks.
    fn close_where(&mut self, doomed: impl Fn(&TcpConnection) -> bool, why: &str) {
        let picked: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| doomed(&s.as_ref()?.conn).then_some(i))
            .collect();
        for index in picked {
            self.close(index, why);
        }
    }

    fn close_all(&mut self) {
        for index in 0..self.slots.len() {
            self.close(index, "reactor stopping");
        }
    }
}

/// Backend tokens carry the connection slot, its generation (so a completion for a closed
/// connection whose slot was reused is recognised and dropped) and the command's tag.
fn io_token_base(index: usize, generation: u16) -> u64 {
    ((index as u64 & 0xFFFF) << 48) | (u64::from(generation) << 32)
}

fn split_token(token: u64) -> (usize, u16, u32) {
    #[allow(clippy::cast_possible_truncation)]
    let (generation, tag) = ((token >> 32) as u16, token as u32);
    (
        usize::try_from(token >> 48).unwrap_or(usize::MAX),
        generation,
        tag,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_for_want_of_resources_retry_and_lost_connections_go_on() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EINVAL,
        ] {
            let err = std::io::Error::from_raw_os_error(errno);
            assert_eq!(AcceptFailure::of(&err), AcceptFailure::Resources, "{err}");
        }
        for errno in [
            libc::ECONNABORTED,
            libc::EINTR,
            libc::EPROTO,
            libc::ENETUNREACH,
        ] {
            let err = std::io::Error::from_raw_os_error(errno);
            assert_eq!(AcceptFailure::of(&err), AcceptFailure::Connection, "{err}");
        }
    }

    #[test]
    fn tokens_round_trip() {
        let token = io_token_base(513, 7) | 42;
        assert_eq!(split_token(token), (513, 7, 42));
    }
}
