//! Afterview's task engine.
//!
//! The job of this crate: run Celery-model tasks reliably. It owns the data model (Celery
//! protocol v2 messages in [`message`], result metas and states in [`result`]), the typed task
//! API ([`task`]), the worker runtime ([`worker`]), the producer API ([`client`]), the event
//! stream ([`events`], followed through [`watch`]), the storage traits every backend implements
//! ([`backend`]) and the rules they share ([`policy`]), an in-memory implementation
//! ([`memory`]), the clock ([`time`]) and the built-in `afterview.*` tasks ([`builtin`]).
//!
//! It knows nothing of previews, HTTP or SQL: backends live in their own crates
//! (`afterview-engine-sqlite`, `afterview-engine-redis`) and pass the conformance suite in
//! [`testsuite`] (feature `testsuite`).
//!
//! Invariants:
//! - A message is never lost: it leaves the broker only when acked by the holder of its current
//!   lease, when revoked while queued, or when dead-lettered with its reason.
//! - A stale run (one whose lease was lost) can neither ack nor store results (fencing).
//! - Every state change is stored before it is published, so a late subscriber reading the
//!   backend sees at least what earlier subscribers were sent.

pub mod backend;
pub mod builtin;
pub mod client;
pub mod events;
pub mod memory;
pub mod message;
pub mod policy;
pub mod result;
pub mod task;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod time;
pub mod watch;
pub mod worker;

pub use backend::{BackendError, Broker, ResultBackend};
pub use client::{Client, ClientError};
pub use message::{SendOptions, TaskMessage, TimeLimits};
pub use result::{ErrorInfo, ResultMeta, RetryHint, TaskError, TaskState};
pub use task::{CancelFlag, CancelReason, Registry, RetryPolicy, Task, TaskContext, TaskOptions};
pub use worker::{Shutdown, Worker, WorkerConfig};

/// This machine's host name (cached).
pub fn hostname() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
        .clone()
}
