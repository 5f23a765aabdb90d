//! vfio-user: an emulated NVMe PCI controller that a VM's own `nvme` driver uses, served to a
//! VMM (QEMU's `vfio-user-pci`) over a UNIX socket.
//!
//! `msix` is the controller's interrupts (the MSI-X table and PBA, the eventfds the VMM hands
//! over, masking and pending bits); it knows neither the socket nor NVMe commands.

pub mod msix;
