//! Reload: what changes between the declaration that is serving and a new one. Pure: the
//! plan is computed from two declarations and touches nothing; `daemon::reload` applies it.

pub mod plan;
#[cfg(test)]
mod tests;

pub use plan::{Plan, RestartField, Step, plan};
