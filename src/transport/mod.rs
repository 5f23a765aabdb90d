//! Fabrics transports.

pub mod buffer_pool;
pub mod context;
pub mod tcp;
