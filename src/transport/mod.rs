//! Fabrics transports.

pub mod buffer_pool;
pub mod context;
pub mod queue;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod subscriber;
pub mod tcp;
pub mod vfio_user;
