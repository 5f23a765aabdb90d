//! NVMe/TCP: wire format, queue pairs and connections.

mod connection;
mod context;
mod inbound;
mod outbound;
mod qpair;
pub mod wire;

pub use connection::TcpConnection;
pub use context::{AsyncNotifier, IoCx, TcpContext};
pub use qpair::{Flow, TcpQpair};
