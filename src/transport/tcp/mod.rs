//! NVMe/TCP: wire format, queue pairs and connections.

mod connection;
mod context;
mod inbound;
mod outbound;
pub mod pdu;
mod qpair;
mod send_queue;
pub mod wire;

pub use connection::TcpConnection;
pub use context::TcpContext;
pub use qpair::TcpQpair;

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
mod fixture_tests;
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod fuzz_tests;
