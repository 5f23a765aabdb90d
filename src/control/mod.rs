//! The control socket: JSON-RPC 2.0 over a UNIX stream socket.
//!
//! `nvmf-tgt status`, `reload` and `plan` talk to the running target here, and so can SPDK's
//! `scripts/rpc.py`: requests are JSON objects read back to back from the stream, with or
//! without newlines between them, which is how rpc.py frames them. The socket is mode 0600
//! (0660 with `control_socket_group`): whoever can connect can reload the target.

mod client;
pub mod os;
mod server;

pub use client::{ControlClientError, call};
pub use server::{ControlServer, ControlServerError, Handler, RpcError};
