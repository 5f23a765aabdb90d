//! How other threads reach a reactor: a locked inbox, a flag that spares the lock when it is
//! empty, and an eventfd the reactor watches; and how a new subscriber finds its reactor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::warn;

use super::pollers::PollerReply;
use super::stats::ReactorStats;
use crate::controller::{Controller, ListenerAddr};
use crate::sys::EventFd;
use crate::transport::subscriber::{NewSubscriber, SubscriberId};

/// What other threads ask of a reactor.
pub enum ReactorMessage {
    /// Host a new subscriber: a connection another reactor accepted, a listener a reload
    /// opened.
    Subscribe(NewSubscriber),
    /// A controller has async events for the admin queue this subscriber serves.
    AsyncEvents(SubscriberId),
    /// A controller went away (keep-alive expiry, disconnect, teardown): close its queues.
    ControllerGone(Arc<Controller>),
    /// Stop listening on this address (sent to the reactor that hosts the listener).
    RemoveListener(ListenerAddr),
    /// Close every connection accepted on this listener (its socket is gone).
    CloseConnections(ListenerAddr),
    /// Send what the reactor runs (`thread_get_pollers`, `thread_get_stats`).
    DescribePollers(PollerReply),
    /// Stop accepting, let in-flight commands finish, close everything and exit.
    Shutdown,
}

impl core::fmt::Debug for ReactorMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Subscribe(_) => f.write_str("Subscribe(..)"),
            Self::AsyncEvents(id) => f.debug_tuple("AsyncEvents").field(id).finish(),
            Self::ControllerGone(ctrlr) => f.debug_tuple("ControllerGone").field(ctrlr).finish(),
            Self::RemoveListener(addr) => f.debug_tuple("RemoveListener").field(addr).finish(),
            Self::CloseConnections(addr) => f.debug_tuple("CloseConnections").field(addr).finish(),
            Self::DescribePollers(_) => f.write_str("DescribePollers(..)"),
            Self::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// The address of a reactor for other threads: its inbox, its wake-up and its figures.
#[derive(Clone)]
pub struct Mailbox {
    inbox: Arc<Mutex<Vec<ReactorMessage>>>,
    /// Set after a message is queued, so the reactor takes the lock only when there is mail.
    has_mail: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    pub stats: Arc<ReactorStats>,
}

impl Mailbox {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            inbox: Arc::new(Mutex::new(Vec::new())),
            has_mail: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(EventFd::new()?),
            stats: Arc::new(ReactorStats::default()),
        })
    }

    pub fn send(&self, message: ReactorMessage) {
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
        self.has_mail.store(true, Ordering::Release);
        self.wake();
    }

    /// Rouses the reactor for its next turn without a message (credits came back).
    pub fn wake(&self) {
        if let Err(err) = self.wake.notify() {
            warn!(%err, "cannot wake reactor");
        }
    }

    /// The descriptor the reactor watches to learn of mail.
    pub(super) fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Everything queued since the last call; empty, without locking, if nothing was.
    pub(super) fn take_mail(&self) -> Vec<ReactorMessage> {
        if !self.has_mail.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.inbox.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Which of `peers` takes the next connection: the one with the fewest, ties going round
/// robin from `next`, which moves past the one chosen.
pub(super) fn least_loaded(peers: &[Mailbox], next: &mut usize) -> usize {
    let count = peers.len().max(1);
    let connections = |i: usize| peers.get(i).map_or(u64::MAX, |p| p.stats.connections());
    let mut best = *next % count;
    for step in 0..count {
        let candidate = (*next + step) % count;
        if connections(candidate) < connections(best) {
            best = candidate;
        }
    }
    *next = (best + 1) % count;
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_least_loaded_reactor_ties_round_robin() {
        let peers: Vec<Mailbox> = (0..3).map(|_| Mailbox::new().expect("eventfd")).collect();
        let mut next = 0;
        let picks: Vec<usize> = (0..3).map(|_| least_loaded(&peers, &mut next)).collect();
        assert_eq!(picks, vec![0, 1, 2]);
        peers[0].stats.set_connections(5);
        peers[1].stats.set_connections(1);
        peers[2].stats.set_connections(3);
        assert_eq!(least_loaded(&peers, &mut next), 1);
    }

    #[test]
    fn mail_is_taken_once() {
        let mailbox = Mailbox::new().expect("eventfd");
        assert!(mailbox.take_mail().is_empty());
        mailbox.send(ReactorMessage::Shutdown);
        mailbox.send(ReactorMessage::Shutdown);
        assert_eq!(mailbox.take_mail().len(), 2);
        assert!(mailbox.take_mail().is_empty());
    }
}
