//! Device async events that break connections, delivered to them. A device reports a fatal
//! QP error, a CQ overrun, a broken SRQ or its own death on its async event descriptor, which
//! one listener's reactor reads; the connections it names live on any reactor. Each
//! connection registers what it uses (device, QP number, CQ, SRQ) with an alarm; the listener
//! raises the alarms an event names, and each raised connection's reactor is woken (the
//! notifier that also delivers controller events) to close it.
//!
//! A CQ that overran reports nothing more, and a QP in error flushes its work only if
//! something was posted: without the alarm such a connection would hang until keep-alive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::sys::verbs::{AsyncElement, AsyncEventKind};
use crate::transport::context::AsyncNotifier;

/// What one connection uses of its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses {
    /// The device, by [`Device::handle`](crate::sys::verbs::Device::handle).
    pub device: usize,
    pub qp_num: u32,
    /// Its CQ, by [`Cq::handle`](crate::sys::verbs::Cq::handle).
    pub cq: usize,
    /// The device's shared receive queue, by [`Srq::handle`](crate::sys::verbs::Srq::handle),
    /// if it receives from one.
    pub srq: Option<usize>,
}

/// What a connection learns when its alarm is raised.
#[derive(Debug, Default)]
pub struct AlarmState {
    raised: AtomicBool,
    /// The event was about the shared receive queue itself: it can take no more receives.
    srq_broken: AtomicBool,
}

impl AlarmState {
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    pub fn srq_broken(&self) -> bool {
        self.srq_broken.load(Ordering::Acquire)
    }
}

struct Entry {
    uses: Uses,
    state: Arc<AlarmState>,
    notify: AsyncNotifier,
}

/// Every connection's alarm, shared by all listeners (a device's async events reach only
/// one of them). One entry per live connection.
#[derive(Default)]
pub struct Alarms {
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: Mutex<u64>,
}

impl core::fmt::Debug for Alarms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let count = self.entries.lock().map_or(0, |e| e.len());
        f.debug_struct("Alarms")
            .field("connections", &count)
            .finish()
    }
}

/// A connection's registration; dropping it unregisters.
pub struct AlarmGuard {
    alarms: Arc<Alarms>,
    id: u64,
    state: Arc<AlarmState>,
}

impl core::fmt::Debug for AlarmGuard {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AlarmGuard").field("id", &self.id).finish()
    }
}

impl AlarmGuard {
    pub fn state(&self) -> &AlarmState {
        &self.state
    }
}

impl Drop for AlarmGuard {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.alarms.entries.lock() {
            entries.remove(&self.id);
        }
    }
}

/// Whether an event of `kind` about `element` on device `device` breaks a connection that
/// `uses` what it uses; and whether it broke the connection's SRQ.
fn breaks(device: usize, kind: AsyncEventKind, element: AsyncElement, uses: &Uses) -> Option<bool> {
    if uses.device != device {
        return None;
    }
    match (kind, element) {
        (
            AsyncEventKind::QpFatal
            | AsyncEventKind::QpRequestError
            | AsyncEventKind::QpAccessError,
            AsyncElement::Qp(num),
        ) => (num == uses.qp_num).then_some(false),
        (AsyncEventKind::CqError, AsyncElement::Cq(cq)) => (cq == uses.cq).then_some(false),
        (AsyncEventKind::SrqError, AsyncElement::Srq(srq)) => {
            (Some(srq) == uses.srq).then_some(true)
        }
        (AsyncEventKind::DeviceFatal, _) => Some(false),
        // Port changes, an SRQ low on receives (never armed), a QP's last WQE and the rest
        // break nothing by themselves: a QP that loses its path fails its own work.
        _ => None,
    }
}

impl Alarms {
    /// Registers a connection: `notify` wakes its reactor to look at the alarm.
    pub fn register(self: &Arc<Self>, uses: Uses, notify: AsyncNotifier) -> AlarmGuard {
        let id = self.next_id.lock().map_or(0, |mut next| {
            *next += 1;
            *next
        });
        let state = Arc::new(AlarmState::default());
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(
                id,
                Entry {
                    uses,
                    state: Arc::clone(&state),
                    notify,
                },
            );
        }
        AlarmGuard {
            alarms: Arc::clone(self),
            id,
            state,
        }
    }

    /// Raises the alarm of every connection the event breaks; returns how many.
    pub fn raise(&self, device: usize, kind: AsyncEventKind, element: AsyncElement) -> usize {
        let mut woken = Vec::new();
        if let Ok(entries) = self.entries.lock() {
            for entry in entries.values() {
                if let Some(srq) = breaks(device, kind, element, &entry.uses) {
                    entry.state.srq_broken.fetch_or(srq, Ordering::AcqRel);
                    entry.state.raised.store(true, Ordering::Release);
                    woken.push(Arc::clone(&entry.notify));
                }
            }
        }
        // Outside the lock: a notifier may run the connection's reactor turn at once.
        for notify in &woken {
            notify();
        }
        woken.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn uses(qp_num: u32, cq: usize) -> Uses {
        Uses {
            device: 7,
            qp_num,
            cq,
            srq: Some(99),
        }
    }

    fn counter() -> (Arc<AtomicUsize>, AsyncNotifier) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        let notify: AsyncNotifier = Arc::new(move || {
            seen.fetch_add(1, Ordering::Relaxed);
        });
        (count, notify)
    }

    #[test]
    fn an_event_raises_only_the_connections_it_names() {
        let alarms = Arc::new(Alarms::default());
        let (woke_a, notify_a) = counter();
        let (woke_b, notify_b) = counter();
        let a = alarms.register(uses(10, 0x100), notify_a);
        let b = alarms.register(uses(11, 0x200), notify_b);

        // Another device's QP 10, a port error, an SRQ limit: nobody.
        assert_eq!(
            alarms.raise(8, AsyncEventKind::QpFatal, AsyncElement::Qp(10)),
            0
        );
        assert_eq!(
            alarms.raise(7, AsyncEventKind::PortError, AsyncElement::Port(1)),
            0
        );
        assert_eq!(
            alarms.raise(7, AsyncEventKind::SrqLimitReached, AsyncElement::Srq(99)),
            0
        );
        assert!(!a.state().is_raised() && !b.state().is_raised());

        assert_eq!(
            alarms.raise(7, AsyncEventKind::QpFatal, AsyncElement::Qp(10)),
            1
        );
        assert!(a.state().is_raised() && !a.state().srq_broken());
        assert!(!b.state().is_raised());
        assert_eq!(woke_a.load(Ordering::Relaxed), 1);
        assert_eq!(woke_b.load(Ordering::Relaxed), 0);

        assert_eq!(
            alarms.raise(7, AsyncEventKind::CqError, AsyncElement::Cq(0x200)),
            1
        );
        assert!(b.state().is_raised());
    }

    #[test]
    fn a_broken_srq_or_device_raises_everyone_on_it() {
        let alarms = Arc::new(Alarms::default());
        let (_, notify) = counter();
        let a = alarms.register(uses(10, 0x100), Arc::clone(&notify));
        let b = alarms.register(uses(11, 0x200), Arc::clone(&notify));
        assert_eq!(
            alarms.raise(7, AsyncEventKind::SrqError, AsyncElement::Srq(99)),
            2
        );
        assert!(a.state().srq_broken() && b.state().srq_broken());

        let c = alarms.register(uses(12, 0x300), notify);
        assert_eq!(
            alarms.raise(7, AsyncEventKind::DeviceFatal, AsyncElement::Device),
            3
        );
        assert!(c.state().is_raised() && !c.state().srq_broken());
    }

    #[test]
    fn a_closed_connection_is_not_raised() {
        let alarms = Arc::new(Alarms::default());
        let (woke, notify) = counter();
        drop(alarms.register(uses(10, 0x100), notify));
        assert_eq!(
            alarms.raise(7, AsyncEventKind::QpFatal, AsyncElement::Qp(10)),
            0
        );
        assert_eq!(woke.load(Ordering::Relaxed), 0);
    }
}
