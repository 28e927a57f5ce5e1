//! The `afterview` binary as a library: command-line parsing, typed configuration, backend
//! wiring, and the commands (`serve`, `worker`, `call`, `result`, `revoke`, `purge`, `inspect`).
//!
//! This is the only crate that chooses backends: everything below receives trait objects.

pub mod backends;
pub mod cli;
pub mod commands;
pub mod config;

use afterview_engine::Registry;

/// Every task this binary can run: the built-ins and the product's tasks.
pub fn registry() -> Registry {
    Registry::with_builtins()
}
