//! Settlement: how each way a delivery can end becomes a stored state, always fenced by the
//! delivery's lease, so a stale run never overwrites the run that replaced it.
//!
//! Final states go through [`finish`] (state + ack in one backend call); intermediate states
//! through [`store`]. Both retry a briefly unavailable backend and otherwise log and give up:
//! the lease then expires and the message is delivered again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::Shared;
use super::supervise::{Limits, RunEnd};
use crate::backend::{BackendError, LeaseRef, StoreOutcome};
use crate::message::TaskMessage;
use crate::result::{ResultMeta, RetryHint, TaskError, TaskState};
use crate::task::{CancelReason, RetryPolicy};
use crate::time::format_iso;

/// The fields every meta of one message shares.
#[derive(Clone)]
pub(super) struct MetaBase {
    task_id: String,
    name: String,
    worker: String,
    retries: u32,
    queue: String,
    parent_id: Option<String>,
}

impl MetaBase {
    pub(super) fn new(node: &str, m: &TaskMessage) -> Self {
        Self {
            task_id: m.id.clone(),
            name: m.task.clone(),
            worker: node.to_owned(),
            retries: m.retries,
            queue: m.queue.clone(),
            parent_id: m.parent_id.clone(),
        }
    }

    pub(super) fn meta(&self, status: TaskState, result: Value) -> ResultMeta {
        let mut m = ResultMeta::new(&self.task_id, status, result);
        m.name = Some(self.name.clone());
        m.worker = Some(self.worker.clone());
        m.retries = Some(self.retries);
        m.queue = Some(self.queue.clone());
        m.parent_id = self.parent_id.clone();
        m
    }

    pub(super) fn error(&self, status: TaskState, e: &TaskError) -> ResultMeta {
        let mut m = self.meta(status, e.to_exception());
        m.traceback = Some(e.traceback());
        m
    }
}

/// Stores the outcome of a supervised run.
pub(super) async fn settle_run(
    s: &Arc<Shared>,
    base: &MetaBase,
    msg: &TaskMessage,
    lease: &LeaseRef,
    retry: &RetryPolicy,
    limits: Limits,
    (end, reason): (RunEnd, Option<CancelReason>),
) {
    match end {
        RunEnd::Ok(v) if reason != Some(CancelReason::LeaseLost) => {
            s.count(&msg.task);
            finish(s, lease, base.meta(TaskState::Success, v)).await;
        }
        RunEnd::Ok(_) => info!(task_id = %msg.id, "Stale run finished; result dropped (fenced)."),
        RunEnd::Err(err) => match reason {
            Some(CancelReason::SoftTimeLimit) => {
                s.count(&msg.task);
                fail(s, base, lease, &TaskError::soft_time_limit(limits.soft)).await;
            }
            Some(r) => settle_killed(s, base, lease, r).await,
            None => fail_or_retry(s, base, msg, lease, retry, err).await,
        },
        RunEnd::Panicked(text) => {
            warn!(task_id = %msg.id, panic = %text, "Task panicked.");
            s.count(&msg.task);
            let e = TaskError::panicked(format!("task panicked: {text}"));
            fail(s, base, lease, &e).await;
        }
        RunEnd::HardLimit(limit) => {
            warn!(task_id = %msg.id, limit_s = limit, "Hard time limit reached; run abandoned.");
            s.count(&msg.task);
            fail(s, base, lease, &TaskError::time_limit(limit)).await;
        }
        RunEnd::Killed(r) => settle_killed(s, base, lease, r).await,
    }
}

/// Ends a run that was stopped from outside.
pub(super) async fn settle_killed(
    s: &Arc<Shared>,
    base: &MetaBase,
    lease: &LeaseRef,
    reason: CancelReason,
) {
    match reason {
        CancelReason::Revoked => {
            info!(task_id = %lease.task_id, "Running task revoked.");
            revoke(s, base, lease, "terminated").await;
        }
        CancelReason::Shutdown => match s.broker.release(lease).await {
            Ok(true) => info!(task_id = %lease.task_id, "Task given back to the queue."),
            Ok(false) => debug!(task_id = %lease.task_id, "Lease already lost at shutdown."),
            Err(e) => {
                warn!(task_id = %lease.task_id, error = %e, "Could not give the task back; its lease will expire.")
            }
        },
        CancelReason::LeaseLost => info!(task_id = %lease.task_id, "Run stopped: lease lost."),
        CancelReason::SoftTimeLimit => {
            fail(s, base, lease, &TaskError::soft_time_limit(0.0)).await;
        }
    }
}

/// The longest delay a retry may ask for: a year. A task asking for more (`countdown=1e13`)
/// would otherwise overflow the clock's range and panic its supervisor on every delivery.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(365 * 86_400);

/// The retry delay a failed run asks for, if it is to be retried at all.
pub(super) fn retry_delay(err: &TaskError, policy: &RetryPolicy, retries: u32) -> Option<Duration> {
    let delay = match err.retry {
        RetryHint::Never => None,
        RetryHint::Policy => Some(policy.delay(retries).min(MAX_RETRY_DELAY)),
        RetryHint::After(secs) if secs > 0.0 => Some(
            Duration::try_from_secs_f64(secs).map_or(MAX_RETRY_DELAY, |d| d.min(MAX_RETRY_DELAY)),
        ),
        RetryHint::After(_) => Some(Duration::ZERO),
    };
    delay.filter(|_| retries < policy.max_retries)
}

async fn fail_or_retry(
    s: &Arc<Shared>,
    base: &MetaBase,
    msg: &TaskMessage,
    lease: &LeaseRef,
    policy: &RetryPolicy,
    err: TaskError,
) {
    let Some(delay) = retry_delay(&err, policy, msg.retries) else {
        debug!(task_id = %msg.id, error = %err, "Task failed.");
        s.count(&msg.task);
        fail(s, base, lease, &err).await;
        return;
    };
    let eta = crate::time::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    let next = msg.retried(eta);
    let mut exc = err.to_exception();
    exc["retry_eta"] = json!(format_iso(eta));
    exc["retries"] = json!(next.retries);
    let mut meta = base.meta(TaskState::Retry, exc);
    meta.traceback = Some(err.traceback());
    info!(task_id = %msg.id, retries = next.retries, delay_ms = delay.as_millis() as u64, error = %err, "Retrying task.");
    if store(s, &meta, lease).await != Some(StoreOutcome::Stored) {
        return;
    }
    match s.broker.retry(lease, &next).await {
        Ok(true) => {}
        Ok(false) => info!(task_id = %msg.id, "Retry dropped: lease lost."),
        Err(e) => {
            warn!(task_id = %msg.id, error = %e, "Could not schedule the retry; the lease will expire and the task run again.")
        }
    }
}

/// Ends a delivery as FAILURE with `e` (exception and traceback).
pub(super) async fn fail(s: &Arc<Shared>, base: &MetaBase, lease: &LeaseRef, e: &TaskError) {
    finish(s, lease, base.error(TaskState::Failure, e)).await;
}

/// Ends a delivery as REVOKED (`why`: revoked, expired, terminated).
pub(super) async fn revoke(s: &Arc<Shared>, base: &MetaBase, lease: &LeaseRef, why: &str) {
    let meta = base.meta(TaskState::Revoked, TaskError::revoked(why).to_exception());
    finish(s, lease, meta).await;
}

/// Stores a terminal state and acks, atomically and fenced by the lease.
pub(super) async fn finish(s: &Arc<Shared>, lease: &LeaseRef, meta: ResultMeta) {
    let mut tries = 0;
    loop {
        match s.backend.complete(&meta, lease).await {
            Ok(StoreOutcome::Fenced) => {
                info!(task_id = %lease.task_id, "Result dropped: another run owns the task now.");
                return;
            }
            Ok(_) => return,
            Err(BackendError::Unavailable(e) | BackendError::Full(e)) if tries < 5 => {
                tries += 1;
                warn!(task_id = %meta.task_id, error = %e, attempt = tries, "Result store unavailable; retrying.");
                tokio::time::sleep(Duration::from_millis(100 << tries)).await;
            }
            Err(e) => {
                // The lease will expire and the task be redelivered.
                warn!(task_id = %meta.task_id, status = %meta.status, error = %e, "Could not store the result.");
                return;
            }
        }
    }
}

/// Acks a delivery whose final state is already stored.
pub(super) async fn ack(s: &Arc<Shared>, lease: &LeaseRef) {
    match s.broker.ack(lease).await {
        Ok(true) => {}
        Ok(false) => debug!(task_id = %lease.task_id, "Ack after lease loss ignored."),
        Err(e) => {
            warn!(task_id = %lease.task_id, error = %e, "Ack failed; the task may be redelivered.")
        }
    }
}

/// Stores a state fenced by `lease`. `None` when the backend failed (logged).
pub(super) async fn store(
    s: &Arc<Shared>,
    meta: &ResultMeta,
    lease: &LeaseRef,
) -> Option<StoreOutcome> {
    let mut tries = 0;
    loop {
        match s.backend.store(meta, Some(lease)).await {
            Ok(o) => return Some(o),
            Err(BackendError::Unavailable(e) | BackendError::Full(e)) if tries < 5 => {
                tries += 1;
                warn!(task_id = %meta.task_id, error = %e, attempt = tries, "Result store unavailable; retrying.");
                tokio::time::sleep(Duration::from_millis(100 << tries)).await;
            }
            Err(e) => {
                warn!(task_id = %meta.task_id, status = %meta.status, error = %e, "Could not store the result.");
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_the_hint_and_stop_at_the_policy_maximum() {
        let policy = RetryPolicy::default();
        let transient = TaskError::new("E", "busy").with_retry(RetryHint::After(2.0));
        assert_eq!(
            retry_delay(&transient, &policy, 0),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_delay(&transient, &policy, policy.max_retries), None);
        assert_eq!(retry_delay(&TaskError::new("E", "bad"), &policy, 0), None);
        // Absurd delays are a year at most, and never panic.
        for secs in [1e13, 1e20, f64::INFINITY] {
            let e = TaskError::new("E", "x").with_retry(RetryHint::After(secs));
            assert_eq!(retry_delay(&e, &policy, 0), Some(MAX_RETRY_DELAY), "{secs}");
        }
        for secs in [-1.0, f64::NAN] {
            let e = TaskError::new("E", "x").with_retry(RetryHint::After(secs));
            assert_eq!(retry_delay(&e, &policy, 0), Some(Duration::ZERO), "{secs}");
        }
    }

    #[test]
    fn every_meta_of_a_message_carries_its_identity() {
        let msg = TaskMessage::new(
            "t.name",
            vec![],
            serde_json::Map::new(),
            "q",
            crate::message::SendOptions::default(),
        )
        .unwrap();
        let base = MetaBase::new("w@h", &msg);
        let m = base.error(TaskState::Failure, &TaskError::new("ValueError", "x"));
        assert_eq!(m.task_id, msg.id);
        assert_eq!(m.name.as_deref(), Some("t.name"));
        assert_eq!(m.worker.as_deref(), Some("w@h"));
        assert_eq!(m.queue.as_deref(), Some("q"));
        assert!(m.traceback.is_some());
    }
}
