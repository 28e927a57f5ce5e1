//! Supervision: a slot for the run, its context and STARTED write, and the select loop that
//! enforces the soft and hard time limits and obeys kills, ending in a typed [`RunEnd`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, info};

use super::Shared;
use super::run::{RunControl, Running, StartMark};
use super::settle::{MetaBase, store};
use crate::backend::{LeaseRef, StoreOutcome};
use crate::message::TaskMessage;
use crate::result::{ResultMeta, TaskError, TaskState};
use crate::task::{CancelReason, ContextParts, ProgressSink, TaskContext, TaskOptions};

/// How long a prefetched message may wait for a free slot before its state becomes RECEIVED.
const RECEIVED_AFTER: Duration = Duration::from_millis(100);

/// How long a freshly claimed task runs before STARTED is written. One that ends sooner goes
/// straight to its final state: one result write instead of two, and one Redis round trip less
/// from send to result (Celery does not store STARTED at all by default). A claim older than a
/// third of the lease (a prefetched task that waited) writes STARTED, fenced, before it runs,
/// so a task whose lease was lost never starts.
pub(super) const STARTED_AFTER: Duration = Duration::from_millis(20);

/// How a supervised run ended.
#[derive(Debug)]
pub(super) enum RunEnd {
    Ok(Value),
    Err(TaskError),
    Panicked(String),
    HardLimit(f64),
    Killed(CancelReason),
}

/// A run's time limits in seconds: the message's own, else the task's; soft never above hard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Limits {
    pub(super) soft: f64,
    pub(super) hard: f64,
}

impl Limits {
    pub(super) fn of(msg: &TaskMessage, opts: &TaskOptions) -> Self {
        let hard = msg.timelimit.hard.unwrap_or(opts.time_limit.as_secs_f64());
        let soft = msg
            .timelimit
            .soft
            .unwrap_or(opts.soft_time_limit.as_secs_f64());
        Self {
            soft: soft.min(hard),
            hard,
        }
    }
}

/// Waits for a free slot (only prefetched messages ever wait). A message that waits longer
/// than [`RECEIVED_AFTER`] shows RECEIVED; a shorter wait is not worth a result write. A kill
/// while waiting answers its reason.
pub(super) async fn acquire_slot(
    s: &Arc<Shared>,
    base: &MetaBase,
    lease: &LeaseRef,
    ctrl: &RunControl,
) -> Result<OwnedSemaphorePermit, CancelReason> {
    if s.draining.is_cancelled() {
        return Err(CancelReason::Shutdown);
    }
    if let Ok(p) = s.slots.clone().try_acquire_owned() {
        return Ok(p);
    }
    let acquire = s.slots.clone().acquire_owned();
    tokio::pin!(acquire);
    let mut announced = false;
    loop {
        tokio::select! {
            p = &mut acquire => return Ok(p.expect("semaphore never closed")),
            // Shutting down: a message that has not started goes back now, not into a slot
            // that a finished run frees during the grace period (and then killed at its end).
            () = s.draining.cancelled() => return Err(CancelReason::Shutdown),
            _ = tokio::time::sleep(RECEIVED_AFTER), if !announced => {
                announced = true;
                store(s, &base.meta(TaskState::Received, Value::Null), lease).await;
            }
            _ = ctrl.kill.notified() => {
                return Err(ctrl.killed().unwrap_or(CancelReason::Shutdown));
            }
        }
    }
}

/// A run about to be called: its context and its STARTED state.
pub(super) struct Begun {
    pub(super) ctx: TaskContext,
    pub(super) msg: Arc<TaskMessage>,
    started: ResultMeta,
    /// STARTED is written [`STARTED_AFTER`] into the run rather than before it.
    defer_start: bool,
}

/// Gives the run its context, makes it visible to `inspect active` and writes STARTED now
/// when the claim is old. `None` when that write found the lease lost.
pub(super) async fn begin(
    s: &Arc<Shared>,
    msg: TaskMessage,
    base: &MetaBase,
    lease: &LeaseRef,
    ctrl: &Arc<RunControl>,
    (claimed_at, redelivered): (Instant, bool),
) -> Option<Begun> {
    let sink = Arc::new(Sink {
        shared: s.clone(),
        lease: lease.clone(),
        base: base.clone(),
        ctrl: ctrl.clone(),
    });
    let ctx = TaskContext::new(ContextParts {
        id: msg.id.clone(),
        name: msg.task.clone(),
        retries: msg.retries,
        queue: msg.queue.clone(),
        worker: s.cfg.node.clone(),
        sink,
        args: msg.args.clone(),
        kwargs: msg.kwargs.clone(),
    });
    ctrl.attach(ctx.clone());
    let msg = Arc::new(msg);
    *ctrl.active.lock().expect("active lock") = Some(Running {
        msg: msg.clone(),
        time_start: crate::time::now(),
        redelivered: redelivered || msg.redelivered,
    });
    let started = base.meta(
        TaskState::Started,
        json!({"pid": std::process::id(), "hostname": s.cfg.node}),
    );
    let defer_start = claimed_at.elapsed() < s.cfg.lease / 3;
    if !defer_start {
        *ctrl.start.lock().await = StartMark::Written;
        if store(s, &started, lease).await == Some(StoreOutcome::Fenced) {
            info!(task_id = %msg.id, "Lease lost before start; another worker owns the task.");
            return None;
        }
    }
    Some(Begun {
        ctx,
        msg,
        started,
        defer_start,
    })
}

/// The task's future, as a handler returns it.
pub(super) type RunFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;

/// Runs `fut` to its end under the limits: writes a deferred STARTED, fires the soft limit's
/// cancellation, abandons the run at the hard limit or a kill.
pub(super) async fn supervise(
    s: &Arc<Shared>,
    fut: RunFuture,
    ctrl: &RunControl,
    lease: &LeaseRef,
    begun: &Begun,
    limits: Limits,
) -> RunEnd {
    let t0 = Instant::now();
    let mut join = tokio::spawn(fut);
    let soft_at = t0 + Duration::from_secs_f64(limits.soft);
    let hard_at = t0 + Duration::from_secs_f64(limits.hard);
    let mut soft_due = limits.soft < limits.hard;
    ctrl.set_deadline(if soft_due { soft_at } else { hard_at });
    let mut start_due = begun.defer_start;
    let end = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(t0 + STARTED_AFTER), if start_due => {
                start_due = false;
                if !write_deferred_start(s, ctrl, lease, &begun.started).await {
                    join.abort();
                    break RunEnd::Killed(CancelReason::LeaseLost);
                }
            }
            res = &mut join => break match res {
                Ok(Ok(v)) => RunEnd::Ok(v),
                Ok(Err(e)) => RunEnd::Err(e),
                Err(je) if je.is_panic() => RunEnd::Panicked(panic_text(je.into_panic())),
                Err(_) => RunEnd::Killed(ctrl.killed().unwrap_or(CancelReason::Shutdown)),
            },
            _ = tokio::time::sleep_until(soft_at), if soft_due => {
                soft_due = false;
                info!(task_id = %lease.task_id, limit_s = limits.soft, "Soft time limit reached; cancelling.");
                ctrl.cancel(CancelReason::SoftTimeLimit);
            }
            _ = tokio::time::sleep_until(hard_at) => {
                join.abort();
                // Anything the abandoned run started sees its cancellation.
                ctrl.cancel(CancelReason::SoftTimeLimit);
                break RunEnd::HardLimit(limits.hard);
            }
            _ = ctrl.kill.notified() => {
                join.abort();
                break RunEnd::Killed(ctrl.killed().unwrap_or(CancelReason::Shutdown));
            }
        }
    };
    debug!(task_id = %lease.task_id, runtime_ms = t0.elapsed().as_millis() as u64, "Run ended.");
    end
}

/// Writes STARTED unless a later state came first; `false` when the lease was lost.
async fn write_deferred_start(
    s: &Arc<Shared>,
    ctrl: &RunControl,
    lease: &LeaseRef,
    started: &ResultMeta,
) -> bool {
    let mut mark = ctrl.start.lock().await;
    if *mark != StartMark::Pending {
        return true;
    }
    *mark = StartMark::Written;
    store(s, started, lease).await != Some(StoreOutcome::Fenced)
}

pub(super) fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Where a run's progress goes: a PROCESSING state, fenced; a lost lease kills the run.
struct Sink {
    shared: Arc<Shared>,
    lease: LeaseRef,
    base: MetaBase,
    ctrl: Arc<RunControl>,
}

impl ProgressSink for Sink {
    fn report(
        &self,
        progress: u8,
        status: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.ctrl.supersede_start().await;
            // `at` (ms since the epoch) lets followers measure how fresh an update is.
            let meta = self.base.meta(
                TaskState::Processing,
                json!({"progress": progress, "status": status, "at": crate::time::now_ms()}),
            );
            if store(&self.shared, &meta, &self.lease).await == Some(StoreOutcome::Fenced) {
                self.ctrl.kill(CancelReason::LeaseLost);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SendOptions;

    fn message(hard: Option<f64>, soft: Option<f64>) -> TaskMessage {
        let mut m = TaskMessage::new(
            "t",
            vec![],
            serde_json::Map::new(),
            "q",
            SendOptions::default(),
        )
        .unwrap();
        m.timelimit.hard = hard;
        m.timelimit.soft = soft;
        m
    }

    #[test]
    fn the_message_limits_win_and_soft_never_exceeds_hard() {
        let opts = TaskOptions {
            soft_time_limit: Duration::from_secs(50),
            time_limit: Duration::from_secs(60),
            ..TaskOptions::default()
        };
        assert_eq!(
            Limits::of(&message(None, None), &opts),
            Limits {
                soft: 50.0,
                hard: 60.0
            }
        );
        assert_eq!(
            Limits::of(&message(Some(10.0), None), &opts),
            Limits {
                soft: 10.0,
                hard: 10.0
            }
        );
        assert_eq!(
            Limits::of(&message(None, Some(5.0)), &opts),
            Limits {
                soft: 5.0,
                hard: 60.0
            }
        );
    }

    #[test]
    fn panic_payloads_become_text() {
        assert_eq!(panic_text(Box::new("boom")), "boom");
        assert_eq!(panic_text(Box::new(String::from("bang"))), "bang");
        assert_eq!(panic_text(Box::new(3)), "unknown panic");
    }
}
