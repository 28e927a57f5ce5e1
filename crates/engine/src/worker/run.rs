//! The state of one held message while the worker has it: how the supervisor and the control
//! loops talk to a run (cancel, kill, whether STARTED was written) and what `inspect active`
//! shows of it.

use std::sync::{Arc, Mutex};

use chrono::Utc;
use serde_json::Value;
use tokio::sync::Notify;

use crate::backend::{ActiveTask, LeaseRef};
use crate::message::{TaskMessage, py_repr};
use crate::task::{CancelReason, TaskContext};

/// Per-run control shared between the supervisor and the control loops.
#[derive(Default)]
pub(super) struct RunControl {
    ctx: Mutex<Option<TaskContext>>,
    pending: Mutex<Option<CancelReason>>,
    pub(super) kill: Notify,
    kill_reason: Mutex<Option<CancelReason>>,
    pub(super) active: Mutex<Option<Running>>,
    /// Whether STARTED was written; held while it is being written, so no later state of the
    /// run can be stored before it.
    pub(super) start: tokio::sync::Mutex<StartMark>,
    /// The run has ended and its final state is being stored ([`super::Shared::begin_settling`]).
    pub(super) settling: std::sync::atomic::AtomicBool,
}

/// The STARTED write of a run (see [`super::supervise::STARTED_AFTER`]).
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum StartMark {
    /// Not written yet.
    #[default]
    Pending,
    Written,
    /// A later state came first; STARTED is never written.
    Superseded,
}

impl RunControl {
    /// Asks the run to stop (its context's cancellation fires); remembered if it has not begun.
    pub(super) fn cancel(&self, reason: CancelReason) {
        if let Some(ctx) = &*self.ctx.lock().expect("run ctx lock") {
            ctx.cancel(reason);
        } else {
            self.pending
                .lock()
                .expect("run pending lock")
                .get_or_insert(reason);
        }
    }

    /// Gives the run its context; a cancellation that came first fires at once.
    pub(super) fn attach(&self, ctx: TaskContext) {
        if let Some(r) = *self.pending.lock().expect("run pending lock") {
            ctx.cancel(r);
        }
        *self.ctx.lock().expect("run ctx lock") = Some(ctx);
    }

    /// Tells the run's context when its first time limit falls ([`TaskContext::time_left`]).
    pub(super) fn set_deadline(&self, at: tokio::time::Instant) {
        if let Some(ctx) = self.ctx.lock().expect("run ctx lock").as_ref() {
            ctx.set_deadline(at);
        }
    }

    /// Cancels and makes the supervisor abandon the run; the first reason wins.
    pub(super) fn kill(&self, reason: CancelReason) {
        self.cancel(reason);
        self.kill_reason
            .lock()
            .expect("kill reason lock")
            .get_or_insert(reason);
        self.kill.notify_one();
    }

    /// Called before any state after STARTED is stored: waits for a STARTED write in flight,
    /// and cancels one not begun.
    pub(super) async fn supersede_start(&self) {
        let mut m = self.start.lock().await;
        if *m == StartMark::Pending {
            *m = StartMark::Superseded;
        }
    }

    /// Why the run was killed, if it was.
    pub(super) fn killed(&self) -> Option<CancelReason> {
        *self.kill_reason.lock().expect("kill reason lock")
    }

    /// Why the run was cancelled (through its context, or before it had one), if it was.
    pub(super) fn reason(&self) -> Option<CancelReason> {
        self.ctx
            .lock()
            .expect("run ctx lock")
            .as_ref()
            .and_then(TaskContext::cancel_reason)
            .or(*self.pending.lock().expect("run pending lock"))
    }
}

/// What `inspect active` shows of a started run; rendered only when a report is written.
pub(super) struct Running {
    pub(super) msg: Arc<TaskMessage>,
    pub(super) time_start: chrono::DateTime<Utc>,
    pub(super) redelivered: bool,
}

impl Running {
    pub(super) fn render(&self, tag: &str) -> ActiveTask {
        ActiveTask {
            id: self.msg.id.clone(),
            name: self.msg.task.clone(),
            args: py_repr(&Value::Array(self.msg.args.clone())),
            kwargs: py_repr(&Value::Object(self.msg.kwargs.clone())),
            queue: self.msg.queue.clone(),
            time_start: self.time_start,
            retries: self.msg.retries,
            delivery_tag: tag.to_owned(),
            redelivered: self.redelivered,
        }
    }
}

/// A held message: its lease (renewed by the renew loop) and its control.
pub(super) struct Run {
    pub(super) lease: LeaseRef,
    pub(super) ctrl: Arc<RunControl>,
    /// When the claim that leased it was asked for (its lease ends a lease later, unless
    /// renewed).
    pub(super) leased_at: tokio::time::Instant,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_before_the_context_exists_reaches_it_when_attached() {
        let ctrl = RunControl::default();
        ctrl.cancel(CancelReason::Revoked);
        assert_eq!(ctrl.reason(), Some(CancelReason::Revoked));
        assert_eq!(ctrl.killed(), None);
    }

    #[test]
    fn the_first_kill_reason_wins() {
        let ctrl = RunControl::default();
        ctrl.kill(CancelReason::LeaseLost);
        ctrl.kill(CancelReason::Shutdown);
        assert_eq!(ctrl.killed(), Some(CancelReason::LeaseLost));
    }

    #[tokio::test]
    async fn a_later_state_supersedes_a_start_not_yet_written() {
        let ctrl = RunControl::default();
        ctrl.supersede_start().await;
        assert_eq!(*ctrl.start.lock().await, StartMark::Superseded);
        let written = RunControl::default();
        *written.start.lock().await = StartMark::Written;
        written.supersede_start().await;
        assert_eq!(*written.start.lock().await, StartMark::Written);
    }
}
