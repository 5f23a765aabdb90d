//! The control socket: JSON-RPC 2.0 over a UNIX stream socket.
//!
//! `nvmf-tgt status` (and later `reload`/`plan`) talk to the running target here, and so can
//! SPDK's `scripts/rpc.py`: requests are JSON objects read back to back from the stream, with
//! or without newlines between them, which is how rpc.py frames them.

mod client;
mod server;

pub use client::{ControlClientError, call};
pub use server::{ControlServer, ControlServerError, Handler, RpcError};
