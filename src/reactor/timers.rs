//! Deadlines of a reactor's connections, earliest first.
//!
//! A key is what the reactor does when the entry fires: keys are connection slots, and the
//! event loop keeps a second key space above them for listeners that retry accepting after
//! running out of file descriptors. This module only orders keys.
//!
//! Connections move their deadlines (keep-alive is pushed forward by traffic), so entries are
//! never updated in place: an entry that fires early is checked against the connection's real
//! deadline, which re-arms itself. That keeps wake-ups to about one per deadline period.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    pub fn arm(&mut self, at: Instant, key: usize) {
        self.heap.push(Reverse((at, key)));
    }

    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the keys of every entry due at `now`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<usize>) {
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

    #[test]
    fn expires_in_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.arm(t0 + Duration::from_secs(2), 2);
        timers.arm(t0 + Duration::from_secs(1), 1);
        timers.arm(t0 + Duration::from_secs(3), 3);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        let mut due = Vec::new();
        timers.expire(t0 + Duration::from_secs(2), &mut due);
        assert_eq!(due, vec![1, 2]);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(3)));
    }
}
