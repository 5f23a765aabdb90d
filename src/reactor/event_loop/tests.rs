//! A reactor hosting a toy subscriber with two eventfds and a timer, in both modes.

use std::sync::mpsc::{Receiver, Sender, channel};

use super::*;
use crate::controller::ListenerAddr;
use crate::sys::EventFd;
use crate::transport::buffer_pool::PoolLimits;
use crate::transport::subscriber::Polled;

const FIRST: u16 = 10;
const SECOND: u16 = 20;
const TIMER_AFTER: Duration = Duration::from_millis(30);

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Init,
    Ready(u16),
    /// The timer fired; whether it was at or after the deadline.
    Timer {
        on_time: bool,
    },
    Closed,
    /// A handed-off connection started on this reactor thread.
    HostedOn(String),
}

/// Two descriptors under two keys, one deadline; reports everything it is told.
struct Toy {
    fds: [Arc<EventFd>; 2],
    deadline: Option<Instant>,
    seen: Sender<Seen>,
}

impl Subscriber for Toy {
    fn init(&mut self, cx: &mut SubscriberCx<'_>, now: Instant) -> std::io::Result<()> {
        cx.register(&mut &*self.fds[0], FIRST, Interest::READABLE)?;
        cx.register(&mut &*self.fds[1], SECOND, Interest::READABLE)?;
        self.deadline = Some(now + TIMER_AFTER);
        let _ = self.seen.send(Seen::Init);
        Ok(())
    }

    fn process(&mut self, ready: Readiness, _cx: &mut SubscriberCx<'_>, _now: Instant) -> Flow {
        let fd = if ready.key == FIRST {
            &self.fds[0]
        } else {
            &self.fds[1]
        };
        let _ = fd.drain();
        let _ = self.seen.send(Seen::Ready(ready.key));
        Flow::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn handle_timer(&mut self, _cx: &mut SubscriberCx<'_>, now: Instant) -> Flow {
        if let Some(at) = self.deadline.take() {
            let _ = self.seen.send(Seen::Timer { on_time: now >= at });
        }
        Flow::Continue
    }

    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        for fd in &self.fds {
            let _ = cx.deregister(&mut &**fd);
        }
        let _ = self.seen.send(Seen::Closed);
    }
}

/// Hands off two connections each time its eventfd is notified.
struct Acceptor {
    fd: Arc<EventFd>,
    listener: ListenerAddr,
    seen: Sender<Seen>,
}

impl Subscriber for Acceptor {
    fn init(&mut self, cx: &mut SubscriberCx<'_>, _now: Instant) -> std::io::Result<()> {
        cx.register(&mut &*self.fd, 0, Interest::READABLE)
    }

    fn process(&mut self, _ready: Readiness, cx: &mut SubscriberCx<'_>, _now: Instant) -> Flow {
        for _ in 0..2 {
            cx.hand_off(Box::new(Connection {
                listener: self.listener.clone(),
                seen: self.seen.clone(),
            }));
        }
        Flow::Continue
    }

    fn listening_on(&self) -> Option<&ListenerAddr> {
        Some(&self.listener)
    }

    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        let _ = cx.deregister(&mut &*self.fd);
    }
}

/// A connection with no descriptor: says where it runs and when it closes.
struct Connection {
    listener: ListenerAddr,
    seen: Sender<Seen>,
}

impl Subscriber for Connection {
    fn init(&mut self, _cx: &mut SubscriberCx<'_>, _now: Instant) -> std::io::Result<()> {
        let thread = std::thread::current().name().unwrap_or_default().to_owned();
        let _ = self.seen.send(Seen::HostedOn(thread));
        Ok(())
    }

    fn process(&mut self, _ready: Readiness, _cx: &mut SubscriberCx<'_>, _now: Instant) -> Flow {
        Flow::Continue
    }

    fn accepted_on(&self) -> Option<&ListenerAddr> {
        Some(&self.listener)
    }

    fn close(&mut self, _cx: &mut SubscriberCx<'_>) {
        let _ = self.seen.send(Seen::Closed);
    }
}

fn start(interrupt_mode: bool, subscribers: Vec<NewSubscriber>) -> ReactorHandle {
    start_many(interrupt_mode, vec![subscribers]).remove(0)
}

/// One reactor per entry of `subscribers`, each hosting its own.
fn start_many(interrupt_mode: bool, subscribers: Vec<Vec<NewSubscriber>>) -> Vec<ReactorHandle> {
    let prepared: Vec<Reactor> = (0..subscribers.len())
        .map(|index| {
            Reactor::prepare(ReactorConfig {
                index,
                core: None,
                interrupt_mode,
                busy_poll: Duration::ZERO,
            })
            .expect("reactor")
        })
        .collect();
    let peers = Arc::new(prepared.iter().map(Reactor::mailbox).collect::<Vec<_>>());
    let count = u32::try_from(prepared.len()).expect("a few reactors");
    let buffers = SharedPool::new(PoolLimits::spdk_tcp_defaults(count));
    prepared
        .into_iter()
        .zip(subscribers)
        .map(|(reactor, mine)| {
            reactor
                .start(Arc::clone(&buffers), mine, Arc::clone(&peers))
                .expect("thread")
        })
        .collect()
}

fn next(seen: &Receiver<Seen>) -> Seen {
    seen.recv_timeout(Duration::from_secs(5))
        .expect("the reactor reports within 5 s")
}

fn toy() -> (Toy, [Arc<EventFd>; 2], Receiver<Seen>) {
    let fds = [
        Arc::new(EventFd::new().expect("eventfd")),
        Arc::new(EventFd::new().expect("eventfd")),
    ];
    let (tx, rx) = channel();
    let toy = Toy {
        fds: fds.clone(),
        deadline: None,
        seen: tx,
    };
    (toy, fds, rx)
}

fn one_subscriber_with_two_fds_and_a_timer(interrupt_mode: bool) {
    let (toy, fds, seen) = toy();
    let reactor = start(interrupt_mode, vec![Box::new(toy)]);
    assert_eq!(next(&seen), Seen::Init);
    // Wait for the timer first, so the descriptors' events come after it, one by one.
    assert_eq!(next(&seen), Seen::Timer { on_time: true });
    for (fd, key) in [(&fds[1], SECOND), (&fds[0], FIRST), (&fds[0], FIRST)] {
        fd.notify().expect("notify");
        assert_eq!(next(&seen), Seen::Ready(key));
    }
    let wakeups = reactor.stats().snapshot().wakeups;
    if interrupt_mode {
        assert!(wakeups >= 3, "interrupt mode sleeps: {wakeups} wake-ups");
    } else {
        assert_eq!(wakeups, 0, "poll mode never blocks");
    }
    reactor.send(ReactorMessage::Shutdown);
    reactor.join();
    assert_eq!(next(&seen), Seen::Closed);
    assert!(seen.try_recv().is_err(), "nothing after close");
}

#[test]
fn several_fds_and_a_timer_per_subscriber_in_interrupt_mode() {
    one_subscriber_with_two_fds_and_a_timer(true);
}

#[test]
fn several_fds_and_a_timer_per_subscriber_in_poll_mode() {
    one_subscriber_with_two_fds_and_a_timer(false);
}

#[test]
fn a_subscriber_sent_later_is_hosted_and_stale_ids_are_ignored() {
    let reactor = start(true, Vec::new());
    let (toy, fds, seen) = toy();
    reactor.send(ReactorMessage::Subscribe(Box::new(toy)));
    assert_eq!(next(&seen), Seen::Init);
    // No subscriber has this generation: the message does nothing.
    reactor.send(ReactorMessage::AsyncEvents(SubscriberId {
        index: 0,
        generation: 9,
    }));
    fds[0].notify().expect("notify");
    let mut got = vec![next(&seen), next(&seen)];
    got.sort_by_key(|s| matches!(s, Seen::Timer { .. }));
    assert_eq!(got, vec![Seen::Ready(FIRST), Seen::Timer { on_time: true }]);
    reactor.send(ReactorMessage::Shutdown);
    reactor.join();
    assert_eq!(next(&seen), Seen::Closed);
}

#[test]
fn handed_off_connections_spread_over_reactors_and_close_with_their_listener() {
    let fd = Arc::new(EventFd::new().expect("eventfd"));
    let listener = ListenerAddr::Tcp(([127, 0, 0, 1], 4420).into());
    let (tx, seen) = channel();
    let acceptor = Acceptor {
        fd: Arc::clone(&fd),
        listener: listener.clone(),
        seen: tx,
    };
    let reactors = start_many(true, vec![vec![Box::new(acceptor)], Vec::new()]);
    fd.notify().expect("notify");
    let mut hosts = vec![next(&seen), next(&seen)];
    hosts.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        hosts,
        vec![
            Seen::HostedOn("reactor_0".into()),
            Seen::HostedOn("reactor_1".into())
        ],
        "the second connection goes to the reactor that has none"
    );
    let connections = || {
        reactors
            .iter()
            .map(|r| r.stats().snapshot().connections)
            .collect::<Vec<_>>()
    };
    assert_eq!(connections(), vec![1, 1]);
    for reactor in &reactors {
        reactor.send(ReactorMessage::CloseConnections(listener.clone()));
    }
    assert_eq!((next(&seen), next(&seen)), (Seen::Closed, Seen::Closed));
    let deadline = Instant::now() + Duration::from_secs(5);
    while connections() != vec![0, 0] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(connections(), vec![0, 0]);
    for reactor in reactors {
        reactor.send(ReactorMessage::Shutdown);
        reactor.join();
    }
}

/// Watches a counter nothing signals, as a doorbell page is: wants polling until its eventfd
/// says stop (if `stops`), and reports the times the counter moved as work.
struct Poller {
    fd: Arc<EventFd>,
    polls: Arc<std::sync::atomic::AtomicU64>,
    doorbell: Arc<std::sync::atomic::AtomicU64>,
    seen_doorbell: u64,
    served: Sender<u64>,
    wants: bool,
    stops: bool,
}

impl Subscriber for Poller {
    fn init(&mut self, cx: &mut SubscriberCx<'_>, _now: Instant) -> std::io::Result<()> {
        cx.register(&mut &*self.fd, 0, Interest::READABLE)
    }

    fn process(&mut self, _ready: Readiness, _cx: &mut SubscriberCx<'_>, _now: Instant) -> Flow {
        let _ = self.fd.drain();
        self.wants &= !self.stops;
        Flow::Continue
    }

    fn wants_poll(&self) -> bool {
        self.wants
    }

    fn poll(&mut self, _cx: &mut SubscriberCx<'_>, _now: Instant) -> Polled {
        use std::sync::atomic::Ordering;
        self.polls.fetch_add(1, Ordering::Relaxed);
        let value = self.doorbell.load(Ordering::Acquire);
        if value == self.seen_doorbell {
            return Polled::IDLE;
        }
        self.seen_doorbell = value;
        let _ = self.served.send(value);
        Polled::work(1)
    }

    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        let _ = cx.deregister(&mut &*self.fd);
    }
}

fn poller(
    stops: bool,
) -> (
    Poller,
    Arc<EventFd>,
    Arc<std::sync::atomic::AtomicU64>,
    Arc<std::sync::atomic::AtomicU64>,
    Receiver<u64>,
) {
    let fd = Arc::new(EventFd::new().expect("eventfd"));
    let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let doorbell = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tx, rx) = channel();
    let poller = Poller {
        fd: Arc::clone(&fd),
        polls: Arc::clone(&polls),
        doorbell: Arc::clone(&doorbell),
        seen_doorbell: 0,
        served: tx,
        wants: true,
        stops,
    };
    (poller, fd, polls, doorbell, rx)
}

#[test]
fn poll_mode_polls_every_turn_while_asked_and_a_poll_with_work_is_busy() {
    use std::sync::atomic::Ordering;
    let (poller, stop, polls, doorbell, served) = poller(true);
    let reactor = start(false, vec![Box::new(poller)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while polls.load(Ordering::Relaxed) < 1000 {
        assert!(Instant::now() < deadline, "the reactor does not poll");
        std::thread::yield_now();
    }
    let idle = reactor.stats().snapshot();
    assert_eq!(idle.events, 0, "polls that found nothing are no events");
    for value in 1..=3 {
        doorbell.store(value, Ordering::Release);
        let got = served
            .recv_timeout(Duration::from_secs(5))
            .expect("a store is found by polling, with nothing signalled");
        assert_eq!(got, value);
    }
    // A turn's work is counted when the turn ends, just after the poll that served it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut busy = reactor.stats().snapshot();
    while busy.events < 3 && Instant::now() < deadline {
        std::thread::yield_now();
        busy = reactor.stats().snapshot();
    }
    assert!(busy.events >= 3, "each poll with work counts: {busy:?}");
    assert!(busy.busy_ns > idle.busy_ns, "and its time is busy");

    // No longer wanted: polling stops.
    stop.notify().expect("notify");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = polls.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = polls.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "polling goes on");
        last = now;
    }
    doorbell.store(9, Ordering::Release);
    std::thread::sleep(Duration::from_millis(50));
    assert!(served.try_recv().is_err(), "nothing polled any more");
    reactor.send(ReactorMessage::Shutdown);
    reactor.join();
}

#[test]
fn interrupt_mode_never_polls() {
    use std::sync::atomic::Ordering;
    let (poller, ready, polls, doorbell, served) = poller(false);
    let reactor = start(true, vec![Box::new(poller)]);
    doorbell.store(1, Ordering::Release);
    // Turns come, each asking the poller (which still wants polling) after its call.
    for _ in 0..5 {
        ready.notify().expect("notify");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reactor.stats().snapshot().wakeups >= 5);
    assert_eq!(polls.load(Ordering::Relaxed), 0);
    assert!(served.try_recv().is_err());
    reactor.send(ReactorMessage::Shutdown);
    reactor.join();
}
