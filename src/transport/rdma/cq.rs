//! When to poll a completion queue, arm it, and take and acknowledge its events: the rules
//! that make interrupt mode lose no completion, as a small state machine over any
//! [`CompletionQueue`] (the verbs CQ with its completion channel, or a fake in the tests).
//!
//! Interrupt mode: the CQ is armed (`ibv_req_notify_cq`) before the reactor sleeps; the next
//! completion makes the channel's descriptor readable. On wake the driver takes every event
//! the channel holds and drains the CQ, leaving it unarmed while the reactor's busy-poll
//! window polls it (`poll`: no event, no re-arm for completions that come in a burst); before
//! the reactor sleeps again it re-arms the CQ and drains it once more (`before_sleep`): a
//! completion that landed after the last drain but before the arm raised no event (the CQ was
//! not armed) and is found by that drain; one that lands after the arm raises an event and
//! wakes the reactor again (perhaps to find nothing, which costs one empty poll). Events are
//! acknowledged in batches (`ibv_ack_cq_events` takes a lock), never more than
//! [`ACK_BATCH`] left unacknowledged, and all of them before the CQ is destroyed (destroying
//! it waits for them).
//!
//! Poll mode: the reactor calls [`CqDriver::poll`] every turn; the CQ is never armed and its
//! channel never read.

use std::io;

use crate::sys::verbs::{Cq, WorkCompletion};

/// Events acknowledged at once, at most; the most left unacknowledged is one less.
pub const ACK_BATCH: u32 = 64;

/// Completions taken from the CQ per `poll` call: the caller's array.
pub const POLL_BATCH: usize = 32;

/// What the driver needs of a completion queue.
pub trait CompletionQueue {
    /// One work completion as the queue reports it.
    type Completion;

    /// Moves up to `out.len()` completions into `out`; how many.
    fn poll(&mut self, out: &mut [Self::Completion]) -> io::Result<usize>;

    /// Arms the queue: its next completion raises one event on the channel.
    fn req_notify(&mut self) -> io::Result<()>;

    /// Takes one event from the channel without blocking; `false` when there is none.
    fn get_event(&mut self) -> io::Result<bool>;

    /// Acknowledges `n` events taken with [`get_event`](Self::get_event).
    fn ack_events(&mut self, n: u32);
}

/// How the reactor serving the CQ runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CqMode {
    /// The reactor sleeps in epoll; the CQ is armed and its channel watched.
    Interrupt,
    /// The reactor spins and polls the CQ every turn.
    Poll,
}

/// The arm/drain/re-arm state of one CQ.
#[derive(Debug)]
pub struct CqDriver {
    mode: CqMode,
    armed: bool,
    /// Events taken and not yet acknowledged.
    unacked: u32,
}

impl CqDriver {
    pub fn new(mode: CqMode) -> Self {
        Self {
            mode,
            armed: false,
            unacked: 0,
        }
    }

    pub fn mode(&self) -> CqMode {
        self.mode
    }

    /// Whether the CQ is armed (interrupt mode, between a wake and the next).
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Events taken and not yet acknowledged (fewer than [`ACK_BATCH`]).
    pub fn unacked(&self) -> u32 {
        self.unacked
    }

    /// Gets a new CQ going: in interrupt mode, arms it and drains what completed before the
    /// arm (nothing, for a CQ just made, but the drain is what makes the arm safe).
    pub fn start<C: CompletionQueue>(
        &mut self,
        cq: &mut C,
        batch: &mut [C::Completion],
        handle: impl FnMut(&C::Completion),
    ) -> io::Result<usize> {
        self.before_sleep(cq, batch, handle)
    }

    /// The reactor is about to sleep (interrupt mode): if an event used the arm up, re-arms
    /// the CQ and drains it once more, for what completed before the arm took effect.
    /// Returns the completions handled; nothing to do in poll mode or while still armed.
    pub fn before_sleep<C: CompletionQueue>(
        &mut self,
        cq: &mut C,
        batch: &mut [C::Completion],
        handle: impl FnMut(&C::Completion),
    ) -> io::Result<usize> {
        if self.mode == CqMode::Poll || self.armed {
            return Ok(0);
        }
        let mut handle = handle;
        cq.req_notify()?;
        self.armed = true;
        drain(cq, batch, &mut handle, usize::MAX)
    }

    /// The channel's descriptor is readable (interrupt mode): takes and acknowledges its
    /// events and drains. The CQ stays unarmed until [`before_sleep`](Self::before_sleep).
    /// Returns the completions handled. In poll mode this only polls (a poll-mode reactor
    /// never watches the channel).
    pub fn handle_event<C: CompletionQueue>(
        &mut self,
        cq: &mut C,
        batch: &mut [C::Completion],
        handle: impl FnMut(&C::Completion),
    ) -> io::Result<usize> {
        let mut handle = handle;
        if self.mode == CqMode::Poll {
            return drain(cq, batch, &mut handle, usize::MAX);
        }
        while cq.get_event()? {
            // An event means the arm fired: `before_sleep` renews it.
            self.armed = false;
            self.unacked += 1;
            if self.unacked >= ACK_BATCH {
                cq.ack_events(self.unacked);
                self.unacked = 0;
            }
        }
        drain(cq, batch, &mut handle, usize::MAX)
    }

    /// One polled turn (poll mode, or interrupt mode's busy-poll window): takes up to one
    /// batch of completions, never arming.
    pub fn poll<C: CompletionQueue>(
        &mut self,
        cq: &mut C,
        batch: &mut [C::Completion],
        handle: impl FnMut(&C::Completion),
    ) -> io::Result<usize> {
        let mut handle = handle;
        drain(cq, batch, &mut handle, 1)
    }

    /// Before the CQ is destroyed: acknowledges every event still unacknowledged (destroying
    /// a CQ waits for them) and takes and acknowledges any left on the channel.
    pub fn finish<C: CompletionQueue>(&mut self, cq: &mut C) {
        if self.mode == CqMode::Interrupt {
            while let Ok(true) = cq.get_event() {
                self.unacked += 1;
            }
        }
        if self.unacked > 0 {
            cq.ack_events(self.unacked);
            self.unacked = 0;
        }
        self.armed = false;
    }
}

impl CompletionQueue for Cq {
    type Completion = WorkCompletion;

    fn poll(&mut self, out: &mut [WorkCompletion]) -> io::Result<usize> {
        Cq::poll(self, out)
    }

    fn req_notify(&mut self) -> io::Result<()> {
        Cq::req_notify(self)
    }

    fn get_event(&mut self) -> io::Result<bool> {
        Cq::get_event(self)
    }

    fn ack_events(&mut self, n: u32) {
        Cq::ack_events(self, n);
    }
}

/// Polls until the CQ is empty, batch by batch, at most `max_batches` batches.
fn drain<C: CompletionQueue>(
    cq: &mut C,
    batch: &mut [C::Completion],
    handle: &mut impl FnMut(&C::Completion),
    max_batches: usize,
) -> io::Result<usize> {
    let mut handled = 0;
    for _ in 0..max_batches {
        let n = cq.poll(batch)?;
        for wc in batch.iter().take(n) {
            handle(wc);
        }
        handled += n;
        if n < batch.len() || n == 0 {
            break;
        }
    }
    Ok(handled)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A CQ in memory that behaves like a verbs CQ with a completion channel: a completion
    /// pushed while armed raises one event and disarms it; events wait on the channel until
    /// taken; acknowledgements are counted.
    #[derive(Default)]
    struct FakeCq {
        entries: VecDeque<u64>,
        armed: bool,
        channel: u32,
        events_taken: u32,
        acked: u32,
        arms: u32,
        polls: u32,
        /// Completions that land the moment before the next arm takes effect: after the
        /// drain, before `req_notify`.
        land_before_arm: Vec<u64>,
    }

    impl FakeCq {
        fn complete(&mut self, wr_id: u64) {
            self.entries.push_back(wr_id);
            if self.armed {
                self.armed = false;
                self.channel += 1;
            }
        }
    }

    impl CompletionQueue for FakeCq {
        type Completion = u64;

        fn poll(&mut self, out: &mut [u64]) -> io::Result<usize> {
            self.polls += 1;
            let mut n = 0;
            while n < out.len() {
                let Some(wr_id) = self.entries.pop_front() else {
                    break;
                };
                out[n] = wr_id;
                n += 1;
            }
            Ok(n)
        }

        fn req_notify(&mut self) -> io::Result<()> {
            for wr_id in std::mem::take(&mut self.land_before_arm) {
                self.complete(wr_id);
            }
            self.arms += 1;
            self.armed = true;
            Ok(())
        }

        fn get_event(&mut self) -> io::Result<bool> {
            if self.channel == 0 {
                return Ok(false);
            }
            self.channel -= 1;
            self.events_taken += 1;
            Ok(true)
        }

        fn ack_events(&mut self, n: u32) {
            self.acked += n;
        }
    }

    /// The reactor wakes on the channel, has no busy-poll window, and goes back to sleep.
    fn wake(driver: &mut CqDriver, cq: &mut FakeCq, seen: &mut Vec<u64>) -> usize {
        let mut batch = [0u64; 4];
        let woken = driver
            .handle_event(cq, &mut batch, |&wr_id| seen.push(wr_id))
            .expect("fake CQ");
        woken
            + driver
                .before_sleep(cq, &mut batch, |&wr_id| seen.push(wr_id))
                .expect("fake CQ")
    }

    #[test]
    fn a_completion_between_drain_and_rearm_is_not_lost() {
        let mut cq = FakeCq::default();
        let mut driver = CqDriver::new(CqMode::Interrupt);
        let mut seen = Vec::new();
        let mut batch = [0u64; 4];
        driver
            .start(&mut cq, &mut batch, |&w| seen.push(w))
            .expect("start");
        assert!(cq.armed);
        cq.complete(1);
        assert_eq!(cq.channel, 1, "the armed CQ raised an event");
        // Completion 2 lands after the drain that finds 1 and before the re-arm: it raises no
        // event, so only the drain after the re-arm can find it.
        cq.land_before_arm.push(2);
        assert_eq!(wake(&mut driver, &mut cq, &mut seen), 2);
        assert_eq!(seen, [1, 2]);
        assert!(cq.armed && driver.is_armed());
        assert_eq!(
            cq.channel, 0,
            "no event is pending: nothing would wake the reactor"
        );
        // And the next completion wakes it again.
        cq.complete(3);
        assert_eq!(cq.channel, 1);
        assert_eq!(wake(&mut driver, &mut cq, &mut seen), 1);
        assert_eq!(seen, [1, 2, 3]);
    }

    #[test]
    fn a_busy_poll_window_polls_unarmed_and_arms_only_before_sleeping() {
        let mut cq = FakeCq::default();
        let mut driver = CqDriver::new(CqMode::Interrupt);
        let mut batch = [0u64; 4];
        let mut seen = Vec::new();
        driver
            .start(&mut cq, &mut batch, |&w| seen.push(w))
            .expect("start");
        cq.complete(1);
        let arms = cq.arms;
        driver
            .handle_event(&mut cq, &mut batch, |&w| seen.push(w))
            .expect("event");
        assert!(
            !driver.is_armed() && !cq.armed,
            "unarmed while the window polls"
        );
        // A burst during the window: polled, no event raised, no arm spent.
        for wr_id in 2..=5 {
            cq.complete(wr_id);
            driver
                .poll(&mut cq, &mut batch, |&w| seen.push(w))
                .expect("poll");
        }
        assert_eq!(cq.channel, 0);
        assert_eq!(cq.arms, arms);
        // Completion 6 lands as the arm is made: the drain after it finds it.
        cq.land_before_arm.push(6);
        let found = driver
            .before_sleep(&mut cq, &mut batch, |&w| seen.push(w))
            .expect("before sleep");
        assert_eq!(found, 1);
        assert_eq!(seen, (1..=6).collect::<Vec<_>>());
        assert!(driver.is_armed() && cq.armed);
        assert_eq!(cq.arms, arms + 1);
        // Armed already: a second look before sleeping arms nothing.
        driver
            .before_sleep(&mut cq, &mut batch, |&w| seen.push(w))
            .expect("before sleep");
        assert_eq!(cq.arms, arms + 1);
    }

    #[test]
    fn a_drain_takes_more_than_one_batch() {
        let mut cq = FakeCq::default();
        let mut driver = CqDriver::new(CqMode::Interrupt);
        let mut batch = [0u64; 4];
        driver.start(&mut cq, &mut batch, |_| {}).expect("start");
        for wr_id in 0..10 {
            cq.complete(wr_id);
        }
        let mut seen = Vec::new();
        assert_eq!(wake(&mut driver, &mut cq, &mut seen), 10);
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_spurious_wake_finds_nothing_and_stays_armed() {
        let mut cq = FakeCq::default();
        let mut driver = CqDriver::new(CqMode::Interrupt);
        let mut batch = [0u64; 4];
        driver.start(&mut cq, &mut batch, |_| {}).expect("start");
        let arms = cq.arms;
        let mut seen = Vec::new();
        assert_eq!(wake(&mut driver, &mut cq, &mut seen), 0);
        assert_eq!(
            cq.arms, arms,
            "still armed: no event was taken, so no re-arm"
        );
        assert!(cq.armed);
    }

    #[test]
    fn events_are_acked_in_bounded_batches_and_all_at_finish() {
        let mut cq = FakeCq::default();
        let mut driver = CqDriver::new(CqMode::Interrupt);
        let mut batch = [0u64; 4];
        driver.start(&mut cq, &mut batch, |_| {}).expect("start");
        let mut seen = Vec::new();
        for wr_id in 0..200 {
            cq.complete(wr_id);
            wake(&mut driver, &mut cq, &mut seen);
            assert!(driver.unacked() < ACK_BATCH);
            assert_eq!(cq.acked + driver.unacked(), cq.events_taken);
        }
        assert_eq!(cq.events_taken, 200);
        assert!(cq.acked >= 200 - ACK_BATCH);
        // An event still on the channel at teardown is taken and acknowledged too.
        cq.complete(200);
        assert_eq!(cq.channel, 1);
        driver.finish(&mut cq);
        assert_eq!(cq.channel, 0);
        assert_eq!(cq.acked, cq.events_taken);
        assert_eq!(cq.acked, 201);
        assert_eq!(driver.unacked(), 0);
    }

    #[test]
    fn poll_mode_never_arms_nor_reads_the_channel() {
        let mut cq = FakeCq::default();
        let mut driver = CqDriver::new(CqMode::Poll);
        let mut batch = [0u64; 4];
        let mut seen = Vec::new();
        driver
            .start(&mut cq, &mut batch, |&w| seen.push(w))
            .expect("start");
        for wr_id in 0..6 {
            cq.complete(wr_id);
        }
        // One turn takes at most one batch.
        let n = driver
            .poll(&mut cq, &mut batch, |&w| seen.push(w))
            .expect("poll");
        assert_eq!(n, 4);
        let n = driver
            .poll(&mut cq, &mut batch, |&w| seen.push(w))
            .expect("poll");
        assert_eq!(n, 2);
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        driver.finish(&mut cq);
        assert_eq!(cq.arms, 0);
        assert_eq!(cq.events_taken, 0);
        assert_eq!(cq.acked, 0);
        assert!(!driver.is_armed());
    }
}
