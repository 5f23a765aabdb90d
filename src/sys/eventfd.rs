//! A non-blocking eventfd: how another thread (a backend worker, a peer reactor) wakes a
//! reactor, and how a future io_uring engine says its ring has completions.
//!
//! It is a [`mio::event::Source`] like a socket, so the reactor watches it with the rest of
//! its descriptors. Watched edge-triggered, every [`notify`](EventFd::notify) raises a new
//! event whether or not the counter was read since, so a reactor need not read it back (a
//! syscall per wake-up saved); [`drain`](EventFd::drain) exists for the owners that want a
//! level they can test.

use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// One eventfd, closed on drop.
#[derive(Debug)]
pub struct EventFd {
    /// A `File` only for its `read` and `write` on the descriptor, which the kernel treats as
    /// eventfd operations.
    fd: File,
}

impl EventFd {
    /// A new eventfd with its counter at zero, non-blocking and closed on exec.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the flags are valid for it.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor eventfd just opened, owned by nothing else; the
        // `OwnedFd` becomes its only owner and closes it once.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self {
            fd: File::from(owned),
        })
    }

    /// Adds one to the counter, which makes the descriptor readable and wakes its watcher.
    pub fn notify(&self) -> std::io::Result<()> {
        match (&self.fd).write(&1u64.to_ne_bytes()) {
            Ok(_) => Ok(()),
            // The counter would overflow (it never does in practice: that takes 2^64 - 1
            // wake-ups nobody read): reset it and wake again.
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                self.drain()?;
                (&self.fd).write(&1u64.to_ne_bytes()).map(|_| ())
            }
            Err(err) => Err(err),
        }
    }

    /// Resets the counter to zero; returns what it was (0 if nothing was notified).
    pub fn drain(&self) -> std::io::Result<u64> {
        let mut count = [0u8; 8];
        match (&self.fd).read(&mut count) {
            Ok(_) => Ok(u64::from_ne_bytes(count)),
            Err(err) if err.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(err) => Err(err),
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Registering takes `&mut`, but an eventfd shared behind an `Arc` is registered through
/// `&EventFd`: the descriptor is the same, and the registry keeps no pointer to the value.
impl Source for &EventFd {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> std::io::Result<()> {
        SourceFd(&self.as_raw_fd()).register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> std::io::Result<()> {
        SourceFd(&self.as_raw_fd()).reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> std::io::Result<()> {
        SourceFd(&self.as_raw_fd()).deregister(registry)
    }
}

impl Source for EventFd {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> std::io::Result<()> {
        (&*self).register(registry, token, interest)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> std::io::Result<()> {
        (&*self).reregister(registry, token, interest)
    }

    fn deregister(&mut self, registry: &Registry) -> std::io::Result<()> {
        (&*self).deregister(registry)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_notifications_until_drained() {
        let fd = EventFd::new().expect("eventfd");
        assert_eq!(fd.drain().expect("drain"), 0);
        fd.notify().expect("notify");
        fd.notify().expect("notify");
        assert_eq!(fd.drain().expect("drain"), 2);
        assert_eq!(fd.drain().expect("drain"), 0);
    }

    #[test]
    fn every_notification_wakes_an_edge_triggered_poll_without_a_read() {
        let mut poll = mio::Poll::new().expect("poll");
        let fd = EventFd::new().expect("eventfd");
        poll.registry()
            .register(&mut &fd, Token(7), Interest::READABLE)
            .expect("register");
        let mut events = mio::Events::with_capacity(4);
        for _ in 0..3 {
            fd.notify().expect("notify");
            poll.poll(&mut events, Some(Duration::from_secs(5)))
                .expect("poll");
            let tokens: Vec<Token> = events.iter().map(mio::event::Event::token).collect();
            assert_eq!(tokens, vec![Token(7)]);
        }
        poll.poll(&mut events, Some(Duration::ZERO)).expect("poll");
        assert!(events.is_empty(), "no edge without a notification");
    }
}
