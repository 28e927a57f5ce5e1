//! The two storage traits every backend implements: [`Broker`] (queues, leases, revocations,
//! worker presence) and [`ResultBackend`] (result metas and the event stream).
//!
//! Invariants every implementation keeps (the conformance suite in `testsuite` checks them):
//! - Delivery is at-least-once. A claim gives the message a *lease* (owner, deadline, epoch);
//!   only the holder of the current epoch may ack, retry, release or store results for it
//!   ("fencing"), so a stale run can never overwrite the work of the run that replaced it.
//! - A message whose lease ran out goes back to its queue; nothing else returns it.
//! - Delayed (ETA) messages stay in the broker until due; claims never return them early.
//! - Lower priority numbers are served first (Celery-on-Redis semantics), FIFO within a priority.
//! - Revocations are stored by the broker (with an expiry), so they survive restarts; a claim
//!   flags a revoked message instead of hiding it, so the worker can record why it did not run.
//! - Results expire; `cleanup` removes whatever has expired, so nothing grows without bound.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::events::EventHub;
use crate::message::TaskMessage;
use crate::result::ResultMeta;

/// A failure of the storage behind a broker or result backend.
#[derive(Debug)]
pub enum BackendError {
    /// The store cannot be reached or is busy; retrying later may succeed.
    Unavailable(Cause),
    /// The request itself is invalid (bad queue name, malformed id, ...).
    Invalid(Cause),
    /// Stored data could not be read back.
    Corrupt(Cause),
    /// The store is full (Redis at `maxmemory` with noeviction) and refused the write whole:
    /// nothing of it was written. Retrying once there is room may succeed.
    Full(Cause),
}

impl BackendError {
    /// [`BackendError::Unavailable`].
    pub fn unavailable(cause: impl Into<Cause>) -> Self {
        Self::Unavailable(cause.into())
    }
    /// [`BackendError::Invalid`].
    pub fn invalid(cause: impl Into<Cause>) -> Self {
        Self::Invalid(cause.into())
    }
    /// [`BackendError::Corrupt`].
    pub fn corrupt(cause: impl Into<Cause>) -> Self {
        Self::Corrupt(cause.into())
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(c) => write!(f, "backend unavailable: {c}"),
            Self::Invalid(c) => write!(f, "invalid request: {c}"),
            Self::Corrupt(c) => write!(f, "corrupt data: {c}"),
            Self::Full(c) => write!(f, "backend full: {c}"),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let (Self::Unavailable(c) | Self::Invalid(c) | Self::Corrupt(c) | Self::Full(c)) = self;
        c.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Why a backend call failed: a message for logs and operators, and the error it came from
/// (Redis, SQLite, ...) when there is one, kept as the [`BackendError`]'s source.
#[derive(Debug)]
pub struct Cause {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// `message`, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// Identifies one delivery of one message: the token a worker must present to ack or store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseRef {
    pub task_id: String,
    /// The message copy (unique per publish).
    pub delivery_tag: String,
    /// Incremented at every claim of that copy; the fencing token.
    pub epoch: u64,
}

/// A claimed message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The lease this delivery holds.
    pub lease: LeaseRef,
    /// Queue it was claimed from.
    pub queue: String,
    /// The envelope bytes exactly as published.
    pub raw: Vec<u8>,
    /// How many times this copy has been claimed, this claim included.
    pub deliveries: u32,
    /// Given back by a lost lease or a shutdown before.
    pub redelivered: bool,
    /// Set when the task id was revoked: the worker must not run it.
    pub revoked: Option<Revocation>,
}

/// What a worker asks for when it claims.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Queues to take from, in preference order for equal priority.
    pub queues: Vec<String>,
    /// At most this many messages.
    pub max: usize,
    /// The claiming worker's node name.
    pub worker: String,
    /// Lease length.
    pub lease: Duration,
}

/// A stored revocation (a tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    /// Revoked task id.
    pub task_id: String,
    /// Stop a running task at once rather than after the grace period.
    pub terminate: bool,
    /// When it was revoked.
    pub at: DateTime<Utc>,
    /// Position in the revocation log (for `revocations_since`).
    pub seq: u64,
}

/// What `revoke` found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevokeOutcome {
    /// Queued or delayed copies removed.
    pub removed: u64,
    /// A copy is currently leased by a worker (it will be cancelled there).
    pub running: bool,
}

/// Messages per queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Ready to run now.
    pub ready: u64,
    /// Waiting for their ETA.
    pub scheduled: u64,
    /// Held by workers.
    pub leased: u64,
}

/// A message set aside because it could not be processed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Queue it came from.
    pub queue: String,
    /// Task id, when it could be read.
    pub task_id: Option<String>,
    /// Why it was set aside.
    pub reason: String,
    /// The message as received (lossy UTF-8).
    pub payload: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Most of a dead letter's message kept (a 10 MB garbage message must not cost 10 MB for a
/// week): the start, which names what it was, and the size of the rest.
pub const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;

impl DeadLetter {
    /// A dead letter made now, its payload cut at [`DEAD_LETTER_PAYLOAD_MAX`] bytes and its
    /// reason at 1 KiB.
    pub fn new(queue: &str, task_id: Option<&str>, reason: &str, raw: &[u8]) -> Self {
        let mut payload =
            String::from_utf8_lossy(&raw[..raw.len().min(DEAD_LETTER_PAYLOAD_MAX)]).into_owned();
        if raw.len() > DEAD_LETTER_PAYLOAD_MAX {
            payload.push_str(&format!(
                "… ({} more bytes not kept)",
                raw.len() - DEAD_LETTER_PAYLOAD_MAX
            ));
        }
        Self {
            queue: queue.to_owned(),
            task_id: task_id.map(str::to_owned),
            reason: crate::message::cut(reason, crate::message::REASON_MAX),
            payload,
            at: crate::time::now(),
        }
    }
}

/// A task a worker is running, as `inspect active` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveTask {
    /// Task id.
    pub id: String,
    /// Task name.
    pub name: String,
    /// Python-style repr of the positional arguments.
    pub args: String,
    /// Python-style repr of the keyword arguments.
    pub kwargs: String,
    pub queue: String,
    /// When the run started.
    pub time_start: DateTime<Utc>,
    /// Retries so far.
    pub retries: u32,
    pub delivery_tag: String,
    /// Whether this is a redelivery.
    pub redelivered: bool,
}

/// A worker's self-description, refreshed at every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Node name (`name@host`).
    pub node: String,
    pub hostname: String,
    /// Process id.
    pub pid: u32,
    /// Queues consumed.
    pub queues: Vec<String>,
    /// Concurrent task slots.
    pub concurrency: usize,
    /// Maximum messages held (running + prefetched).
    pub prefetch_count: usize,
    /// Registered task names.
    pub registered: Vec<String>,
    /// Running tasks.
    pub active: Vec<ActiveTask>,
    /// Tasks finished, by name.
    pub total: BTreeMap<String, u64>,
    /// When the worker started.
    pub started_at: DateTime<Utc>,
    /// When this report was written.
    pub heartbeat_at: DateTime<Utc>,
    /// Software identity.
    pub sw_ident: String,
    /// Software version.
    pub sw_ver: String,
    /// Seconds between heartbeats.
    pub freq: f64,
}

/// What a cleanup pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupStats {
    /// Expired results.
    pub results: u64,
    /// Expired revocations.
    pub revocations: u64,
    /// Old dead letters.
    pub dead_letters: u64,
    /// Stale worker records.
    pub workers: u64,
}

/// Outcome of a result write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Written and published.
    Stored,
    /// The fence (lease) is no longer current: the write came from a stale run and was dropped.
    Fenced,
    /// An unfenced write met a terminal state and left it alone.
    KeptTerminal,
}

/// Queues, leases, revocations and worker presence.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and `inspect` (`memory`, `sqlite`, `redis`).
    fn kind(&self) -> &'static str;

    /// Enqueues one message (at its ETA, if any).
    async fn publish(&self, msg: &TaskMessage) -> Result<(), BackendError>;

    /// Enqueues many messages at once.
    async fn publish_batch(&self, msgs: &[TaskMessage]) -> Result<(), BackendError> {
        for m in msgs {
            self.publish(m).await?;
        }
        Ok(())
    }

    /// Enqueues an envelope as given, even a malformed one (it is dead-lettered on claim).
    async fn publish_raw(&self, queue: &str, raw: &[u8]) -> Result<(), BackendError>;

    /// Takes up to `req.max` due messages, highest priority first, leasing them to `req.worker`.
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Delivery>, BackendError>;

    /// Returns when work may be available on `queues`, or after `max_wait`.
    async fn wait_for_work(&self, queues: &[String], max_wait: Duration);

    /// Whether `wait_for_work` is woken by pushes (new work, revocations) rather than found by
    /// polling; workers then poll rarely, as a safety net only. A backend that says so also
    /// promises that a claim answering fewer than `max` messages took everything due at that
    /// moment, and that `wait_for_work` returns at once if work came after that claim: a worker
    /// then waits instead of claiming again.
    fn pushes_wakeups(&self) -> bool {
        false
    }

    /// Extends the given leases; returns those that are no longer held (lost or fenced).
    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> Result<Vec<LeaseRef>, BackendError>;

    /// Removes the message for good. `false` when the lease is no longer current.
    async fn ack(&self, lease: &LeaseRef) -> Result<bool, BackendError>;

    /// Gives the message back to its queue untouched (shutdown). `false` when fenced.
    async fn release(&self, lease: &LeaseRef) -> Result<bool, BackendError>;

    /// Atomically acks `lease` and enqueues `next` (a retry). `false` when fenced.
    async fn retry(&self, lease: &LeaseRef, next: &TaskMessage) -> Result<bool, BackendError>;

    /// Moves a claimed message whose ETA is still ahead back into the broker's schedule (a
    /// producer may enqueue ETA tasks directly, as Celery does). `false` when fenced or when the
    /// broker never delivers early (the default).
    async fn defer(&self, lease: &LeaseRef, run_at_ms: i64) -> Result<bool, BackendError> {
        let _ = (lease, run_at_ms);
        Ok(false)
    }

    /// Sets a message aside with its reason (acking `lease` if given).
    async fn dead_letter(
        &self,
        lease: Option<&LeaseRef>,
        queue: &str,
        raw: &[u8],
        reason: &str,
        task_id: Option<&str>,
    ) -> Result<(), BackendError>;

    /// The newest dead letters, newest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError>;

    /// Returns messages whose lease ran out to their queues; how many.
    async fn requeue_expired(&self) -> Result<u64, BackendError>;

    /// Records a durable revocation (kept for `keep`) and removes queued/delayed copies.
    async fn revoke(
        &self,
        task_id: &str,
        terminate: bool,
        keep: Duration,
    ) -> Result<RevokeOutcome, BackendError>;

    /// Revocations recorded after position `cursor`, and the new cursor.
    /// `cursor == u64::MAX` asks only for the current end (no revocations).
    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BackendError>;

    /// The revocation of `task_id`, if any.
    async fn revocation(&self, task_id: &str) -> Result<Option<Revocation>, BackendError>;

    /// Deletes ready and delayed messages of `queues`; how many.
    async fn purge(&self, queues: &[String]) -> Result<u64, BackendError>;

    /// Message counts per queue (all known queues when `queues` is `None`).
    async fn queue_stats(&self, queues: Option<&[String]>)
    -> Result<Vec<QueueStats>, BackendError>;

    /// Publishes a worker's report (presence + what `inspect` shows).
    async fn heartbeat(&self, report: &WorkerReport) -> Result<(), BackendError>;

    /// The worker `node` stopped claiming (its shutdown began): nothing more may be handed
    /// to it. A broker that pushes messages to idle workers takes it off their lists and gives
    /// back what was pushed and not taken; a message published during the drain then goes to
    /// a live worker, not to one that waits out its running tasks. `worker_gone` does it too,
    /// if it was not done. Nothing to do for brokers that only answer claims.
    async fn stop_taking(&self, _node: &str) -> Result<(), BackendError> {
        Ok(())
    }

    /// Removes a worker's presence (clean exit).
    async fn worker_gone(&self, node: &str) -> Result<(), BackendError>;

    /// Live workers' latest reports.
    async fn workers(&self, timeout: Duration) -> Result<Vec<WorkerReport>, BackendError>;

    /// Removes expired revocations, old dead letters and stale worker records.
    async fn cleanup(&self) -> Result<CleanupStats, BackendError>;

    /// Cheap reachability check.
    async fn ping(&self) -> Result<(), BackendError>;
}

/// Result metas and the event stream of their changes.
#[async_trait]
pub trait ResultBackend: Send + Sync + 'static {
    /// Stores `meta` and publishes it on the event stream.
    ///
    /// With a `fence`, the write happens only if that lease is still current. Without one, a
    /// terminal state already stored is kept (like Celery's SUCCESS guard).
    async fn store(
        &self,
        meta: &ResultMeta,
        fence: Option<&LeaseRef>,
    ) -> Result<StoreOutcome, BackendError>;

    /// Stores a terminal `meta` fenced by `lease` and acks that message, in one atomic step.
    /// (A result backend sees the broker's leases, since fencing needs them; so it can ack.)
    async fn complete(
        &self,
        meta: &ResultMeta,
        lease: &LeaseRef,
    ) -> Result<StoreOutcome, BackendError>;

    /// The stored meta, if any (absent = PENDING).
    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError>;

    /// Deletes a stored meta.
    async fn forget(&self, task_id: &str) -> Result<(), BackendError>;

    /// The in-process event stream this backend feeds (including writes by other processes
    /// when the backend can observe them).
    fn events(&self) -> &EventHub;

    /// Removes expired metas; how many.
    async fn cleanup(&self) -> Result<u64, BackendError>;

    /// Cheap reachability check.
    async fn ping(&self) -> Result<(), BackendError>;
}

#[cfg(test)]
mod cause_tests {
    use super::*;

    #[test]
    fn a_backend_error_keeps_the_error_it_came_from() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = BackendError::Unavailable(Cause::with_source("cannot reach the store", io));
        assert_eq!(e.to_string(), "backend unavailable: cannot reach the store");
        let src = std::error::Error::source(&e).expect("a source");
        assert_eq!(
            src.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
        assert!(std::error::Error::source(&BackendError::invalid("bad queue")).is_none());
    }
}
