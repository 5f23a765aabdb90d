//! An NVMe/TCP host (initiator), used by tests and by `nvmf-perf`.
