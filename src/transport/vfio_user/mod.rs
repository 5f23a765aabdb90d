//! vfio-user: an emulated NVMe PCI controller that a VM's own `nvme` driver uses, served to a
//! VMM (QEMU's `vfio-user-pci`) over a UNIX socket.
//!
//! `device` is the PCI function (config space, BARs, regions, BAR0 offsets decoded into
//! register and doorbell accesses) and `msix` its interrupts (the MSI-X table and PBA, the
//! eventfds the VMM hands over, masking and pending bits); neither knows the socket or NVMe
//! commands.

pub mod device;
pub mod msix;
