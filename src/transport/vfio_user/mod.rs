//! vfio-user: an emulated NVMe PCI controller for a VM, served over a UNIX socket
//! (`DIR/cntrl`) to a VMM (QEMU's `vfio-user-pci`, cloud-hypervisor's `--user-device`).
//!
//! Rooms: `protocol` (the messages), `server` (one VMM's connection, non-blocking, knowing no
//! PCI), `device` and `msix` (the PCI function), `memory`, `prp` and `queues` (guest memory,
//! checked at every access), `nvme_device` (BAR0 onto the controller, queues onto the
//! transport-neutral queue core), `endpoint` (the reactor subscriber for the socket).

pub mod device;
pub mod memory;
pub mod msix;
pub mod protocol;
pub mod prp;
pub mod queues;
pub mod server;
