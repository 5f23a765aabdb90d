//! Reactor threads: mio event loops in interrupt or poll mode.
