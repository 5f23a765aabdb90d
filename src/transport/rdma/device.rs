//! The RDMA devices a listener's connections arrive on: one protection domain per device,
//! opened at the first connection request it brings and kept for the next ones, with what
//! the device allows.

use std::collections::HashMap;
use std::io;

use tracing::info;

use crate::sys::verbs::{Device, DeviceAttrs, Pd};

/// One device and its protection domain.
#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub device: Device,
    pub pd: Pd,
    pub attrs: DeviceAttrs,
}

/// The devices seen so far, by identity.
#[derive(Debug, Default)]
pub struct Devices {
    by_handle: HashMap<usize, DeviceEntry>,
}

impl Devices {
    /// Whether `device` was opened already.
    pub fn knows(&self, device: &Device) -> bool {
        self.by_handle.contains_key(&device.handle())
    }

    /// The entry of `device`, opened (PD allocated, attributes queried) the first time.
    pub fn get_or_open(&mut self, device: Device) -> io::Result<DeviceEntry> {
        if let Some(entry) = self.by_handle.get(&device.handle()) {
            return Ok(entry.clone());
        }
        let attrs = device.attributes()?;
        let pd = Pd::new(&device)?;
        info!(
            device = %device.name(),
            max_qp_wr = attrs.max_qp_wr,
            max_cqe = attrs.max_cqe,
            max_qp_init_rd_atom = attrs.max_qp_init_rd_atom,
            "RDMA device in use"
        );
        let entry = DeviceEntry { device, pd, attrs };
        self.by_handle.insert(device.handle(), entry.clone());
        Ok(entry)
    }

    /// Forgets every device (one went away: DEVICE_REMOVAL); connections keep what they hold
    /// until they close.
    pub fn clear(&mut self) {
        self.by_handle.clear();
    }
}
