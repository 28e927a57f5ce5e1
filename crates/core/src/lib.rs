//! Afterview's domain types, shared by every other crate. No I/O, no async.
//!
//! - [`catalog`]: the procedure catalog (ids, descriptions, recovery, risks, cost breakdowns),
//!   built in and overridable by a file.
//! - [`tasks`]: the task names, queues, typed arguments and results of the product's tasks — the
//!   contract between the API (which enqueues) and the jobs (which run).
//! - [`ids`]: identifiers and their validation.
//! - [`errors`]: the stable error codes clients see.

pub mod catalog;
pub mod errors;
pub mod ids;
pub mod tasks;

pub use errors::ErrorCode;
