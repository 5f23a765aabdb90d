//! NVMe/TCP: PDU codec, queue pairs and connections.

mod connection;
mod context;
mod inbound;
mod outbound;
mod qpair;

pub use connection::TcpConnection;
pub use context::{IoCx, TcpContext};
pub use qpair::{Flow, TcpQpair};
