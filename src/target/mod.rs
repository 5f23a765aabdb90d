//! The running target: builds subsystems and listeners from the declaration.
