//! A reactor hosting a toy subscriber with two eventfds and a timer, in both modes.

use std::sync::mpsc::{Receiver, Sender, channel};

use super::*;
use crate::sys::EventFd;
use crate::transport::buffer_pool::PoolLimits;

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

fn start(interrupt_mode: bool, subscribers: Vec<NewSubscriber>) -> ReactorHandle {
    let reactor = Reactor::prepare(ReactorConfig {
        index: 0,
        core: None,
        interrupt_mode,
        busy_poll: Duration::ZERO,
    })
    .expect("reactor");
    let peers = Arc::new(vec![reactor.mailbox()]);
    let buffers = SharedPool::new(PoolLimits::spdk_tcp_defaults(1));
    reactor.start(buffers, subscribers, peers).expect("thread")
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
