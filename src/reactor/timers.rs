//! Deadlines of a reactor's subscribers, earliest first.
//!
//! A key is the subscriber to tell when the entry fires (a connection's keep-alive or setup
//! timeout, a listener's accept retry). This module only orders keys.
//!
//! Subscribers move their deadlines (keep-alive is pushed forward by traffic), so entries are
//! never updated in place: an entry that fires early is checked against the subscriber's real
//! deadline, which re-arms itself. That keeps wake-ups to about one per deadline period. An
//! entry whose subscriber has closed names a stale id and does nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::transport::subscriber::SubscriberId;

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, SubscriberId)>>,
}

impl Timers {
    pub fn arm(&mut self, at: Instant, key: SubscriberId) {
        self.heap.push(Reverse((at, key)));
    }

    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the keys of every entry due at `now`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<SubscriberId>) {
        while let Some(Reverse((at, key))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            out.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(index: u32) -> SubscriberId {
        SubscriberId {
            index,
            generation: 0,
        }
    }

    #[test]
    fn expires_in_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.arm(t0 + Duration::from_secs(2), id(2));
        timers.arm(t0 + Duration::from_secs(1), id(1));
        timers.arm(t0 + Duration::from_secs(3), id(3));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        let mut due = Vec::new();
        timers.expire(t0 + Duration::from_secs(2), &mut due);
        assert_eq!(due, vec![id(1), id(2)]);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(3)));
    }
}
