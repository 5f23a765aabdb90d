//! Fabrics transports.

pub mod buffer_pool;
pub mod tcp;
