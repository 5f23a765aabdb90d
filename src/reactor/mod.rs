//! Reactor threads: one mio event loop per core of the core mask, hosting subscribers.
//!
//! A reactor knows no transport: it hosts [`Subscriber`](crate::transport::subscriber)s (a
//! TCP listener, a TCP connection, later vfio-user endpoints, RDMA channels or an io_uring
//! engine), each of which registers its own descriptors under keys of its choosing and is
//! called when one is ready, when its deadline passes, when a backend completes its I/O or
//! when buffers it waited for are granted. Subscribers stay on one reactor for life; a
//! listener hands the connections it accepts to the least loaded reactor.
//!
//! In interrupt mode a reactor with nothing to do sleeps in `epoll_wait` until a descriptor,
//! a timer deadline or one of its own eventfds (the mailbox: new subscribers, async events,
//! shutdown; the backend completions) rouses it. After activity it keeps polling for
//! `busy_poll` before sleeping again, which buys back most of the wake-up latency under load.
//! In poll mode it spins with a zero timeout.

pub mod stats;

mod event_loop;
mod mailbox;
pub mod pollers;
mod slab;
mod timers;

pub use event_loop::{Reactor, ReactorConfig, ReactorHandle};
pub use mailbox::{Mailbox, ReactorMessage};
pub use stats::{ReactorStats, StatsSnapshot};
