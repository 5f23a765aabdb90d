//! Reactor threads: one mio event loop per core of the core mask.
//!
//! In interrupt mode a reactor with nothing to do sleeps in `epoll_wait` until a socket, a
//! timer deadline or the waker (an eventfd: new connections, backend completions, shutdown)
//! rouses it. After activity it keeps polling for `busy_poll` before sleeping again, which buys
//! back most of the wake-up latency under load. In poll mode it spins with a zero timeout.
//! Connections are handed to reactors by the acceptor and stay on one reactor for life.

pub mod stats;

mod event_loop;
mod timers;

pub use event_loop::{Mailbox, Reactor, ReactorConfig, ReactorHandle, ReactorMessage};
pub use stats::{ReactorStats, StatsSnapshot};
