//! What a reactor runs, listed the way SPDK's `thread_get_pollers` lists a thread's pollers,
//! so `spdk_top` can show it: every subscriber (listener, connection) and the reactor's own
//! sources of work (its mailbox, the backend completions, its io_uring) as active pollers,
//! each deadline a subscriber has armed (keep-alive, data and setup timeouts, accept retry)
//! as a timed poller. Nothing is ever paused: a subscriber that has nothing to do is simply
//! not woken.

use std::sync::mpsc::SyncSender;

use crate::transport::subscriber::QueuePairs;

/// Which of SPDK's three lists a poller belongs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollerKind {
    /// Runs when its descriptors are ready, or every turn while polled.
    Active,
    /// Runs when its deadline passes.
    Timed,
}

/// How often something ran, and how often it found work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCount {
    pub runs: u64,
    pub busy: u64,
}

impl RunCount {
    pub fn ran(&mut self, busy: bool) {
        self.runs += 1;
        self.busy += u64::from(busy);
    }
}

/// One entry of a reactor's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerInfo {
    pub name: String,
    /// Unique on its reactor, and the same from one listing to the next.
    pub id: u64,
    pub kind: PollerKind,
    pub count: RunCount,
    /// For a timed poller: nanoseconds until it next runs.
    pub due_in_ns: Option<u64>,
}

/// What a reactor says of itself when asked: what it runs and the queues it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReactorReport {
    /// The reactor's index.
    pub reactor: usize,
    pub pollers: Vec<PollerInfo>,
    /// Queue pairs it serves now.
    pub queues: QueuePairs,
    /// Queue pairs it served that have closed (so `queues + closed` is every one it had).
    pub closed: QueuePairs,
    /// Commands its queues hold that have not completed.
    pub in_flight: u64,
}

/// Where a reactor sends its report; a report that is no longer awaited is dropped.
pub type PollerReply = SyncSender<ReactorReport>;

/// Ids of the reactor's own sources; subscribers' ids start above them.
pub const MAILBOX_ID: u64 = 1;
pub const COMPLETIONS_ID: u64 = 2;
pub const URING_ID: u64 = 3;
const FIRST_SUBSCRIBER_ID: u64 = 16;
/// Set in the id of a subscriber's timer, which is listed beside the subscriber itself.
const TIMER_BIT: u64 = 1 << 62;

/// The poller id of the subscriber whose token (with the low 16 bits clear) is `token`.
pub fn subscriber_poller_id(token: u64) -> u64 {
    (token >> 16) + FIRST_SUBSCRIBER_ID
}

/// The poller id of that subscriber's timer.
pub fn timer_poller_id(token: u64) -> u64 {
    subscriber_poller_id(token) | TIMER_BIT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_sources_subscribers_and_timers_never_meet() {
        let a = subscriber_poller_id(0);
        let b = subscriber_poller_id(1 << 16);
        assert!(a > URING_ID && b != a);
        assert_ne!(timer_poller_id(0), a);
        assert_ne!(timer_poller_id(0), timer_poller_id(1 << 16));
    }

    #[test]
    fn a_run_counts_as_busy_only_when_it_found_work() {
        let mut count = RunCount::default();
        count.ran(true);
        count.ran(false);
        assert_eq!(count, RunCount { runs: 2, busy: 1 });
    }
}
