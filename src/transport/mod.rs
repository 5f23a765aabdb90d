//! Fabrics transports.

pub mod buffer_pool;
pub mod context;
pub mod subscriber;
pub mod tcp;
