//! Adaptive interrupts (SPDK's adaptive IRQs; off with `disable_adaptive_irq = true`).
//!
//! While the device is polled every turn (poll mode with mapped doorbells), a batch that posts
//! completions to an I/O completion queue does not raise the queue's interrupt at once: it is
//! held. Every poll then looks at each queue with a held interrupt, with the host's head (its
//! doorbell, or its shadow) and our tail as they are at that poll:
//!
//! - head = tail: the host consumed everything posted; it is owed nothing;
//! - head moved since the previous poll: the host is consuming, and will see the rest;
//! - head still where it was at the previous poll, entries behind it: the host is not looking,
//!   and gets the interrupt now.
//!
//! A host busy consuming a queue gets no interrupt per batch, and a host that stopped looking
//! gets one a turn later. Nothing is lost while the device is polled: a held interrupt stays
//! held until the host catches up or stalls, and a stall shows at the next poll. So the
//! interrupts are adaptive only where every turn polls; in interrupt mode nothing guarantees
//! a later turn, and every batch fires at once, as does the admin queue's always.
//!
//! SPDK remembers the tail it last fired at instead of a held flag; after the tail has gone
//! round the ring back to that value, an unannounced entry would look announced. The flag
//! cannot wrap.
//!
//! No I/O and no clock: the device says what it posted and what each poll saw, and fires the
//! vectors this says to.

/// What a batch that posted completions does with its queue's interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Posted {
    /// Fire it now.
    Fire,
    /// Held for the next polls to decide.
    Held,
}

/// The interrupt of one completion queue (one with interrupts enabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqInterrupt {
    adaptive: bool,
    /// Completions were posted that no interrupt has announced.
    held: bool,
    /// The host's head at the previous poll.
    last_head: u32,
}

impl CqInterrupt {
    /// The interrupt of completion queue `qid`, adaptive if `adaptive` (the device is polled
    /// every turn and adaptive interrupts are on) and the queue is an I/O queue: the admin
    /// queue (0) always fires at once.
    pub fn new(qid: u16, adaptive: bool) -> Self {
        Self {
            adaptive: adaptive && qid != 0,
            held: false,
            last_head: 0,
        }
    }

    pub fn is_adaptive(&self) -> bool {
        self.adaptive
    }

    /// Completions were posted that the host has not consumed (as far as the polls saw) and
    /// no interrupt announced: the device must go on being polled.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// A batch posted completions to the queue.
    pub fn handle_posted(&mut self) -> Posted {
        if !self.adaptive {
            return Posted::Fire;
        }
        self.held = true;
        Posted::Held
    }

    /// One poll of the device, with the host's `head` and our `tail` as they are now: whether
    /// the held interrupt fires now. Called on every poll, held or not, so that the head it
    /// compares with is the one of the previous poll.
    pub fn poll_fire(&mut self, head: u32, tail: u32) -> bool {
        let previous = std::mem::replace(&mut self.last_head, head);
        if !self.held {
            return false;
        }
        if head == tail {
            // Consumed without an interrupt.
            self.held = false;
            return false;
        }
        if head != previous {
            // Consuming: the host will see the rest, or stall and be told at a later poll.
            return false;
        }
        self.held = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An adaptive I/O queue that has been polled once with the host's head at `head`.
    fn io_queue(head: u32) -> CqInterrupt {
        let mut irq = CqInterrupt::new(1, true);
        assert!(!irq.poll_fire(head, head));
        irq
    }

    #[test]
    fn fires_when_the_head_stalls_behind_the_tail() {
        let mut irq = io_queue(0);
        assert_eq!(irq.handle_posted(), Posted::Held);
        assert!(irq.is_held());
        assert!(
            irq.poll_fire(0, 3),
            "the host did not move: told at the next poll"
        );
        assert!(!irq.is_held());
    }

    #[test]
    fn does_not_fire_while_the_head_moves() {
        let mut irq = io_queue(0);
        irq.handle_posted();
        // The host consumes one entry a poll, never catching up with new completions.
        for head in 1..10 {
            irq.handle_posted();
            assert!(!irq.poll_fire(head, head + 3), "consuming at head {head}");
            assert!(irq.is_held(), "still owed at head {head}");
        }
    }

    #[test]
    fn fires_when_a_host_that_was_consuming_stops() {
        let mut irq = io_queue(0);
        irq.handle_posted();
        // The first poll after the completion finds the head moved (older entries consumed),
        // but not up to the tail: nothing yet.
        assert!(!irq.poll_fire(2, 5));
        // The host stops there: the next poll fires.
        assert!(irq.poll_fire(2, 5));
    }

    #[test]
    fn does_not_fire_twice_for_the_same_completions() {
        let mut irq = io_queue(0);
        irq.handle_posted();
        assert!(irq.poll_fire(0, 4));
        for _ in 0..5 {
            assert!(
                !irq.poll_fire(0, 4),
                "already told; the host is in its handler"
            );
        }
        // New completions are new news.
        irq.handle_posted();
        assert!(irq.poll_fire(0, 6));
    }

    #[test]
    fn a_host_that_consumed_everything_is_owed_nothing() {
        let mut irq = io_queue(7);
        irq.handle_posted();
        assert!(!irq.poll_fire(9, 9), "consumed before the poll");
        assert!(!irq.is_held());
        assert!(!irq.poll_fire(9, 9));
    }

    #[test]
    fn the_tail_coming_round_to_where_it_fired_is_still_news() {
        // A ring of 4: fired at tail 1; the host consumes, and later completions bring the
        // tail round to 1 again with entries behind the host's head.
        let mut irq = io_queue(0);
        irq.handle_posted();
        assert!(irq.poll_fire(0, 1));
        assert!(!irq.poll_fire(1, 1));
        irq.handle_posted();
        assert!(!irq.poll_fire(2, 0), "consuming");
        irq.handle_posted();
        assert!(!irq.poll_fire(3, 1), "consuming");
        assert!(irq.poll_fire(3, 1), "stalled at 3 with the tail at 1 again");
    }

    #[test]
    fn the_admin_queue_is_never_held() {
        let mut irq = CqInterrupt::new(0, true);
        assert!(!irq.is_adaptive());
        assert_eq!(irq.handle_posted(), Posted::Fire);
        assert!(!irq.is_held());
        assert!(!irq.poll_fire(0, 1), "the poll has nothing to fire");
    }

    #[test]
    fn disabled_fires_every_batch_at_once() {
        let mut irq = CqInterrupt::new(1, false);
        assert!(!irq.is_adaptive());
        for tail in 1..4 {
            assert_eq!(irq.handle_posted(), Posted::Fire);
            assert!(!irq.is_held());
            assert!(!irq.poll_fire(0, tail));
        }
    }
}
