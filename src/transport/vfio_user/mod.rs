//! vfio-user: an emulated NVMe PCI controller that a VM's own driver uses, reached by a VMM
//! (QEMU's `vfio-user-pci`) over a UNIX socket.
//!
//! `protocol` is the wire format (messages, no I/O); `server` is one client connection on a
//! non-blocking socket, dispatching to a [`server::Device`] that knows PCI but no socket.

pub mod protocol;
pub mod server;
