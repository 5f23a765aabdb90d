//! Fabrics transports.

pub mod tcp;
