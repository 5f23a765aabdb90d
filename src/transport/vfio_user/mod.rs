//! vfio-user: an emulated NVMe PCI controller that a VM's own driver uses, served to a VMM
//! (QEMU's `vfio-user-pci`) over a UNIX socket. Guest memory comes as DMA regions
//! (`memory`), commands name their data with PRPs (`prp`), and the queues are rings in that
//! memory (`queues`).

pub mod memory;
pub mod prp;
pub mod queues;
