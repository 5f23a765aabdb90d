//! What every NVMe/TCP queue pair shares.

use std::sync::Arc;

use crate::controller::{Registry, TransportLimits};

/// Shared by every TCP queue pair of the target.
#[derive(Debug)]
pub struct TcpContext {
    pub registry: Arc<Registry>,
    pub limits: TransportLimits,
    /// Send C2HData with the SUCCESS flag instead of a response where the host allows it.
    pub c2h_success: bool,
}
