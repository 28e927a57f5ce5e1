//! Admission: what a claimed delivery is before anything runs. It is decoded and checked
//! (revoked, expired, early, already finished, unknown task); only an [`Admitted`] message
//! goes on to a slot. Every refusal is settled here, so nothing is left unrecorded.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use super::Shared;
use super::run::RunControl;
use super::settle::{MetaBase, ack, fail, revoke, settle_killed, store};
use crate::backend::Delivery;
use crate::message::{DecodeError, TaskMessage};
use crate::result::{ResultMeta, TaskError, TaskState};
use crate::task::{CancelReason, ErasedTask};
use crate::time::format_iso;

/// What a delivery is, judged from its bytes and flags alone.
#[derive(Debug)]
pub(super) enum Admission {
    /// Not a task message: set aside as a dead letter.
    Malformed(DecodeError),
    /// Not to be run: REVOKED with this reason (`revoked`, `expired`).
    Refused(TaskMessage, &'static str),
    /// Sent before its ETA (Celery clients do): back into the broker's schedule.
    Early(TaskMessage, DateTime<Utc>),
    /// Due now.
    Due(TaskMessage),
}

/// How far ahead of its ETA a message may run.
const ETA_SLACK_MS: i64 = 20;

/// Classifies a delivery at `now`.
pub(super) fn classify(d: &Delivery, now: DateTime<Utc>) -> Admission {
    let msg = match TaskMessage::from_envelope(&d.raw, &d.queue) {
        Ok(m) => m,
        Err(e) => return Admission::Malformed(e),
    };
    if d.revoked.is_some() {
        return Admission::Refused(msg, "revoked");
    }
    if msg.expires.is_some_and(|exp| exp <= now) {
        return Admission::Refused(msg, "expired");
    }
    match msg.eta {
        Some(eta) if eta > now + chrono::Duration::milliseconds(ETA_SLACK_MS) => {
            Admission::Early(msg, eta)
        }
        _ => Admission::Due(msg),
    }
}

/// A message cleared to run.
pub(super) struct Admitted {
    pub(super) msg: TaskMessage,
    pub(super) handler: Arc<dyn ErasedTask>,
    pub(super) base: MetaBase,
}

/// Admits `d`, or settles it and answers `None`.
pub(super) async fn admit(s: &Arc<Shared>, d: &Delivery, ctrl: &RunControl) -> Option<Admitted> {
    let msg = match classify(d, crate::time::now()) {
        Admission::Malformed(e) => {
            set_aside(s, d, e).await;
            return None;
        }
        Admission::Refused(msg, why) => {
            debug!(task_id = %msg.id, why, "Task not run.");
            if finished(s, &msg.id).await {
                // A later copy of a finished task (a reused id, a copy handed out again):
                // the result stays what the run gave.
                ack(s, &d.lease).await;
            } else {
                revoke(s, &MetaBase::new(&s.cfg.node, &msg), &d.lease, why).await;
            }
            return None;
        }
        Admission::Early(msg, eta) => wait_for_eta(s, d, ctrl, msg, eta).await?,
        Admission::Due(msg) => msg,
    };
    if d.lease.task_id != msg.id && revoked_by_own_id(s, d, &msg).await {
        revoke(s, &MetaBase::new(&s.cfg.node, &msg), &d.lease, "revoked").await;
        return None;
    }
    if (d.redelivered || msg.redelivered) && already_finished(s, &msg).await {
        info!(task_id = %msg.id, "Redelivered task already finished; acking.");
        ack(s, &d.lease).await;
        return None;
    }
    let base = MetaBase::new(&s.cfg.node, &msg);
    let Some(handler) = s.registry.get(&msg.task) else {
        warn!(task_id = %msg.id, task = %msg.task, "Unknown task.");
        if finished(s, &msg.id).await {
            // Another message reusing a finished task's id: its result stays.
            ack(s, &d.lease).await;
        } else {
            fail(s, &base, &d.lease, &TaskError::not_registered(&msg.task)).await;
        }
        return None;
    };
    Some(Admitted { msg, handler, base })
}

/// The broker read another task id than the message's own (a protocol 1 message keeps its id
/// in the body; a header may nest another `"id"` before the task's): its claim-time revocation
/// check and the run's entry followed by revocations used that one. Points the entry at the
/// message's id (so a later `terminate` finds the run), then asks for that id's revocation.
async fn revoked_by_own_id(s: &Arc<Shared>, d: &Delivery, msg: &TaskMessage) -> bool {
    {
        let mut runs = s.runs.lock().expect("runs lock");
        if let Some(r) = runs.get_mut(&super::run_key(&d.lease)) {
            r.lease.task_id = msg.id.clone();
        }
        // Read by the control loop while the entry still had the other id.
        if s.recently_revoked(&msg.id).is_some() {
            return true;
        }
    }
    match s.broker.revocation(&msg.id).await {
        Ok(r) => r.is_some(),
        Err(e) => {
            warn!(task_id = %msg.id, error = %e, "Could not read the task's revocation; running it.");
            false
        }
    }
}

/// Records a malformed message's failure (when it names a task id) and dead-letters it.
async fn set_aside(s: &Arc<Shared>, d: &Delivery, e: DecodeError) {
    warn!(queue = %d.queue, task_id = ?e.task_id, reason = %e.reason, "Malformed message set aside.");
    // A finished task's result is not replaced by a malformed message reusing its id.
    if let Some(id) = e.task_id.as_ref()
        && !finished(s, id).await
    {
        let mut meta = ResultMeta::error(
            id,
            TaskState::Failure,
            &TaskError::malformed_message(e.to_string()),
        );
        meta.name = e.task_name.clone();
        meta.worker = Some(s.cfg.node.clone());
        if store(s, &meta, &d.lease).await.is_none() {
            // Not dead-lettered (which acks) without its FAILURE: the task would stay PENDING
            // for good. Still leased, the message comes back after its lease and is tried again.
            warn!(task_id = ?e.task_id, "Malformed message kept until its failure can be stored.");
            return;
        }
    }
    let dead = s
        .broker
        .dead_letter(
            Some(&d.lease),
            &d.queue,
            &d.raw,
            &e.reason,
            e.task_id.as_deref(),
        )
        .await;
    if let Err(err) = dead {
        warn!(error = %err, "Could not dead-letter a malformed message.");
    }
}

/// Gives an early message back to the broker's schedule; a broker without one makes the
/// worker wait. `Some` when the message is due now and should run.
async fn wait_for_eta(
    s: &Arc<Shared>,
    d: &Delivery,
    ctrl: &RunControl,
    msg: TaskMessage,
    eta: DateTime<Utc>,
) -> Option<TaskMessage> {
    match s.broker.defer(&d.lease, eta.timestamp_millis()).await {
        Ok(true) => {
            debug!(task_id = %msg.id, eta = %format_iso(eta), "Task deferred to its ETA.");
            None
        }
        Ok(false) => {
            let wait = (eta - crate::time::now()).to_std().unwrap_or_default();
            let reason = tokio::select! {
                _ = tokio::time::sleep(wait) => return Some(msg),
                _ = ctrl.kill.notified() => ctrl.killed().unwrap_or(CancelReason::Shutdown),
                () = s.draining.cancelled() => CancelReason::Shutdown,
            };
            settle_killed(s, &MetaBase::new(&s.cfg.node, &msg), &d.lease, reason).await;
            None
        }
        Err(e) => {
            warn!(task_id = %msg.id, error = %e, "Could not defer the task; it will come back after its lease.");
            None
        }
    }
}

/// Whether an earlier run of this delivery stored its final state and died before acking.
/// Whether `task_id` has a terminal result stored.
async fn finished(s: &Arc<Shared>, task_id: &str) -> bool {
    matches!(s.backend.get(task_id).await, Ok(Some(prev)) if prev.status.is_terminal())
}

async fn already_finished(s: &Arc<Shared>, msg: &TaskMessage) -> bool {
    matches!(
        s.backend.get(&msg.id).await,
        Ok(Some(prev)) if prev.status.is_terminal() && prev.retries.unwrap_or(0) >= msg.retries
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{LeaseRef, Revocation};
    use crate::message::SendOptions;

    fn delivery(msg: &TaskMessage) -> Delivery {
        Delivery {
            lease: LeaseRef {
                task_id: msg.id.clone(),
                delivery_tag: "tag".into(),
                epoch: 1,
            },
            queue: "celery".into(),
            raw: msg.to_envelope().into_bytes(),
            deliveries: 1,
            redelivered: false,
            revoked: None,
        }
    }

    fn message(opts: SendOptions) -> TaskMessage {
        TaskMessage::new("t", vec![], serde_json::Map::new(), "celery", opts).unwrap()
    }

    #[test]
    fn a_plain_message_is_due() {
        let m = message(SendOptions::default());
        assert!(matches!(classify(&delivery(&m), Utc::now()), Admission::Due(x) if x.id == m.id));
    }

    #[test]
    fn bytes_that_are_not_an_envelope_are_malformed() {
        let mut d = delivery(&message(SendOptions::default()));
        d.raw = b"{\"body\": 3".to_vec();
        assert!(matches!(classify(&d, Utc::now()), Admission::Malformed(_)));
    }

    #[test]
    fn revoked_and_expired_messages_are_refused_with_their_reason() {
        let m = message(SendOptions::default());
        let mut d = delivery(&m);
        d.revoked = Some(Revocation {
            task_id: m.id.clone(),
            terminate: false,
            at: Utc::now(),
            seq: 1,
        });
        assert!(matches!(
            classify(&d, Utc::now()),
            Admission::Refused(_, "revoked")
        ));
        let expiring = message(SendOptions {
            expires: Some(Utc::now() + chrono::Duration::seconds(5)),
            ..SendOptions::default()
        });
        let later = Utc::now() + chrono::Duration::seconds(6);
        assert!(matches!(
            classify(&delivery(&expiring), later),
            Admission::Refused(_, "expired")
        ));
    }

    #[test]
    fn an_eta_beyond_the_slack_is_early_and_within_it_due() {
        let eta = Utc::now() + chrono::Duration::seconds(60);
        let m = message(SendOptions {
            eta: Some(eta),
            ..SendOptions::default()
        });
        assert!(
            matches!(classify(&delivery(&m), Utc::now()), Admission::Early(_, t) if t.timestamp_millis() == eta.timestamp_millis())
        );
        let almost = eta - chrono::Duration::milliseconds(ETA_SLACK_MS / 2);
        assert!(matches!(classify(&delivery(&m), almost), Admission::Due(_)));
    }
}
