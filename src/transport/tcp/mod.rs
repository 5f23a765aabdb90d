//! NVMe/TCP: wire format, queue pairs, connections and listeners. A [`TcpAcceptor`] and each
//! [`TcpConnection`] are reactor subscribers.

mod connection;
mod context;
mod inbound;
mod listener;
mod outbound;
pub mod pdu;
mod qpair;
mod send_queue;
pub mod wire;

pub use connection::TcpConnection;
pub use context::TcpContext;
pub use listener::TcpAcceptor;
pub use qpair::TcpQpair;

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
mod fixture_tests;
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod fuzz_tests;
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod pair_tests;
