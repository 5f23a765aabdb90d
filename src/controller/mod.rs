//! NVMe controllers and subsystems as state machines with no I/O.
