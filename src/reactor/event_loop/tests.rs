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
    start_polling(interrupt_mode, Duration::ZERO, subscribers)
}

/// As [`start_many`], with a busy-poll window of `busy_poll` in interrupt mode.
fn start_polling(
    interrupt_mode: bool,
    busy_poll: Duration,
    subscribers: Vec<Vec<NewSubscriber>>,
) -> Vec<ReactorHandle> {
    let prepared: Vec<Reactor> = (0..subscribers.len())
        .map(|index| {
            Reactor::prepare(ReactorConfig {
                index,
                core: None,
                interrupt_mode,
                busy_poll,
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
/// says stop (if `stops`), and reports the times the counter moved as work. Before a sleep it
/// looks at the counter too, and reports work for its first `sleep_work` calls whatever it
/// finds (a subscriber whose re-check keeps finding something).
struct Poller {
    fd: Arc<EventFd>,
    polls: Arc<std::sync::atomic::AtomicU64>,
    before_sleeps: Arc<std::sync::atomic::AtomicU64>,
    doorbell: Arc<std::sync::atomic::AtomicU64>,
    seen_doorbell: u64,
    served: Sender<u64>,
    wants: bool,
    stops: bool,
    sleep_work: Arc<std::sync::atomic::AtomicU64>,
}

impl Poller {
    /// Takes a new counter value: 1 if it moved.
    fn look(&mut self) -> u64 {
        use std::sync::atomic::Ordering;
        let value = self.doorbell.load(Ordering::Acquire);
        if value == self.seen_doorbell {
            return 0;
        }
        self.seen_doorbell = value;
        let _ = self.served.send(value);
        1
    }
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
        Polled::work(self.look())
    }

    fn before_sleep(&mut self, _cx: &mut SubscriberCx<'_>, _now: Instant) -> Polled {
        use std::sync::atomic::Ordering;
        self.before_sleeps.fetch_add(1, Ordering::Relaxed);
        let forced = self
            .sleep_work
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        Polled::work(self.look().max(u64::from(forced)))
    }

    fn close(&mut self, cx: &mut SubscriberCx<'_>) {
        let _ = cx.deregister(&mut &*self.fd);
    }
}

/// A [`Poller`] and its other ends.
struct PollerEnds {
    /// Its eventfd: a turn with activity (and, if it stops, the end of its polling).
    fd: Arc<EventFd>,
    polls: Arc<std::sync::atomic::AtomicU64>,
    before_sleeps: Arc<std::sync::atomic::AtomicU64>,
    doorbell: Arc<std::sync::atomic::AtomicU64>,
    served: Receiver<u64>,
    /// How many of the next calls before a sleep report work whatever they find.
    sleep_work: Arc<std::sync::atomic::AtomicU64>,
}

impl PollerEnds {
    fn polls(&self) -> u64 {
        self.polls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn before_sleeps(&self) -> u64 {
        self.before_sleeps
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the polls have stopped for 20 ms; returns their count.
    fn settled_polls(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.polls();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.polls();
            if now == last {
                return now;
            }
            assert!(Instant::now() < deadline, "polling goes on");
            last = now;
        }
    }
}

fn poller(stops: bool) -> (Poller, PollerEnds) {
    let fd = Arc::new(EventFd::new().expect("eventfd"));
    let polls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let before_sleeps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let doorbell = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sleep_work = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tx, rx) = channel();
    let poller = Poller {
        fd: Arc::clone(&fd),
        polls: Arc::clone(&polls),
        before_sleeps: Arc::clone(&before_sleeps),
        doorbell: Arc::clone(&doorbell),
        seen_doorbell: 0,
        served: tx,
        wants: true,
        stops,
        sleep_work: Arc::clone(&sleep_work),
    };
    let ends = PollerEnds {
        fd,
        polls,
        before_sleeps,
        doorbell,
        served: rx,
        sleep_work,
    };
    (poller, ends)
}

#[test]
fn poll_mode_polls_every_turn_while_asked_and_a_poll_with_work_is_busy() {
    use std::sync::atomic::Ordering;
    let (poller, ends) = poller(true);
    let reactor = start(false, vec![Box::new(poller)]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ends.polls() < 1000 {
        assert!(Instant::now() < deadline, "the reactor does not poll");
        std::thread::yield_now();
    }
    let idle = reactor.stats().snapshot();
    assert_eq!(idle.events, 0, "polls that found nothing are no events");
    for value in 1..=3 {
        ends.doorbell.store(value, Ordering::Release);
        let got = ends
            .served
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
    assert_eq!(ends.before_sleeps(), 0, "poll mode never sleeps");

    // No longer wanted: polling stops.
    ends.fd.notify().expect("notify");
    ends.settled_polls();
    ends.doorbell.store(9, Ordering::Release);
    std::thread::sleep(Duration::from_millis(50));
    assert!(ends.served.try_recv().is_err(), "nothing polled any more");
    reactor.send(ReactorMessage::Shutdown);
    reactor.join();
}

#[test]
fn interrupt_mode_without_a_busy_poll_window_never_polls_and_arms_before_each_sleep() {
    use std::sync::atomic::Ordering;
    let (poller, ends) = poller(false);
    let reactor = start(true, vec![Box::new(poller)]);
    // Turns come, each asking the poller (which still wants polling) after its call.
    for _ in 0..5 {
        ends.fd.notify().expect("notify");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reactor.stats().snapshot().wakeups >= 5);
    assert_eq!(ends.polls(), 0);
    assert!(
        ends.before_sleeps() >= 5,
        "before each sleep: {}",
        ends.before_sleeps()
    );
    assert!(ends.served.try_recv().is_err());
    // What the re-check before a sleep finds is served there: nothing else would find it.
    ends.doorbell.store(1, Ordering::Release);
    ends.fd.notify().expect("notify");
    let got = ends.served.recv_timeout(Duration::from_secs(5));
    assert_eq!(got, Ok(1), "found before the next sleep");
    assert_eq!(ends.polls(), 0);
    reactor.send(ReactorMessage::Shutdown);
    reactor.join();
}

#[test]
fn interrupt_mode_polls_in_its_busy_poll_window_then_sleeps() {
    use std::sync::atomic::Ordering;
    let (poller, ends) = poller(false);
    let window = Duration::from_millis(30);
    let reactor = start_polling(true, window, vec![vec![Box::new(poller)]]).remove(0);
    // Nothing happened yet: no window, no polls.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(ends.polls(), 0);
    // Activity (the eventfd): the window after it polls, then the reactor sleeps.
    ends.fd.notify().expect("notify");
    let first = ends.settled_polls();
    assert!(first > 0, "polled in the window after activity");
    let asleep = reactor.stats().snapshot();
    let armed = ends.before_sleeps();
    assert!(armed >= 1, "armed before sleeping");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ends.polls(), first, "asleep: no polls");
    let still = reactor.stats().snapshot();
    assert_eq!(still.wakeups, asleep.wakeups, "and no wake-ups");
    assert_eq!(ends.before_sleeps(), armed);

    // A store the window's polls find: served without a signal, the window goes on from it.
    ends.fd.notify().expect("notify");
    std::thread::sleep(Duration::from_millis(5));
    let started = Instant::now();
    ends.doorbell.store(1, Ordering::Release);
    assert_eq!(
        ends.served.recv_timeout(Duration::from_secs(5)),
        Ok(1),
        "found by a poll"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let after = ends.settled_polls();
    assert!(after > first);
    let busy = reactor.stats().snapshot();
    assert!(
        busy.events > still.events,
        "the polls' work counts: {busy:?}"
    );
    assert!(busy.busy_ns > still.busy_ns);
    reactor.send(ReactorMessage::Shutdown);
    reactor.join();
}

#[test]
fn work_found_before_a_sleep_keeps_the_reactor_awake_and_counts_as_busy() {
    use std::sync::atomic::Ordering;
    let (poller, ends) = poller(false);
    let reactor = start(true, vec![Box::new(poller)]);
    std::thread::sleep(Duration::from_millis(50));
    let asleep = reactor.stats().snapshot();
    let calls = ends.before_sleeps();
    assert!(calls >= 1, "armed before its first sleep");
    ends.sleep_work.store(3, Ordering::Relaxed);
    ends.fd.notify().expect("notify");
    std::thread::sleep(Duration::from_millis(50));
    // Three calls found work, each kept the reactor up for a turn (no poll: there is no
    // window), the fourth found none and it slept.
    assert_eq!(
        ends.before_sleeps() - calls,
        4,
        "a call before every sleep that was to come"
    );
    assert_eq!(ends.polls(), 0);
    let stats = reactor.stats().snapshot();
    assert_eq!(stats.wakeups, asleep.wakeups + 1, "the eventfd's only");
    assert_eq!(
        stats.events - asleep.events,
        3 + 1,
        "the work found and the eventfd: {stats:?}"
    );
    assert!(stats.busy_ns > asleep.busy_ns);
    std::thread::sleep(Duration::from_millis(50));
    let later = reactor.stats().snapshot();
    assert_eq!(later.wakeups, stats.wakeups, "asleep now");
    assert_eq!(ends.before_sleeps() - calls, 4);
    reactor.send(ReactorMessage::Shutdown);
    reactor.join();
}
