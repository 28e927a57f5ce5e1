//! Following one task: [`TaskWatch`] yields a task's current state, then every change from the
//! backend's [`EventHub`](crate::events::EventHub), ending at a terminal state; [`wait_ready`]
//! and [`wait_watch`] wait for that end.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::backend::{BackendError, ResultBackend};
use crate::result::{ResultMeta, TaskState};

/// Follows one task: yields its current state first, then each change, and ends after a
/// terminal state.
pub struct TaskWatch {
    backend: Arc<dyn ResultBackend>,
    task_id: String,
    rx: Option<broadcast::Receiver<Arc<ResultMeta>>>,
    ready: tokio::sync::watch::Receiver<bool>,
    last: Option<Arc<ResultMeta>>,
    started: bool,
    done: bool,
}

impl std::fmt::Debug for TaskWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskWatch")
            .field("task_id", &self.task_id)
            .field("done", &self.done)
            .finish()
    }
}

impl TaskWatch {
    /// Starts following `task_id`. Subscribes before reading the current state, so no change
    /// between the two is lost.
    pub fn new(backend: Arc<dyn ResultBackend>, task_id: &str) -> Self {
        let (rx, ready) = backend.events().subscribe(task_id);
        Self {
            backend,
            task_id: task_id.to_owned(),
            rx: Some(rx),
            ready,
            last: None,
            started: false,
            done: false,
        }
    }

    /// The next state: the current one on the first call, then each change. `None` after a
    /// terminal state has been yielded.
    pub async fn next(&mut self) -> Result<Option<ResultMeta>, BackendError> {
        Ok(self.next_shared().await?.map(Arc::unwrap_or_clone))
    }

    /// As [`TaskWatch::next`], without a copy: a change arrives as the one `Arc` the backend
    /// published, shared by every follower of the task (10,000 WebSocket followers of 625
    /// tasks receive 625 states, not 10,000 copies).
    pub async fn next_shared(&mut self) -> Result<Option<Arc<ResultMeta>>, BackendError> {
        if self.done {
            return Ok(None);
        }
        if !self.started {
            // Upstream subscriptions (Redis) must be in place before the first read, or a
            // change between the read and the subscription would be lost.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.ready.wait_for(|r| *r)).await;
            let current = self
                .backend
                .get(&self.task_id)
                .await?
                .unwrap_or_else(|| ResultMeta::pending(&self.task_id));
            // Only once the read is done: a caller that drops this future midway (a `select!`
            // that a client's ping won) gets the current state on its next call.
            self.started = true;
            return Ok(Some(self.emit(Arc::new(current))));
        }
        loop {
            let rx = self.rx.as_mut().expect("receiver present until done");
            match rx.recv().await {
                Ok(meta) => {
                    // Skip repeats, and changes older than what was already yielded (the first
                    // state read from the backend may be newer than events still queued). A
                    // terminal state is never older: nothing follows it (a task revoked while
                    // it waited for its retry is stored REVOKED without the retry's count).
                    if self.last.as_ref().is_some_and(|l| {
                        Arc::ptr_eq(l, &meta)
                            || **l == *meta
                            || (order(&meta) < order(l)
                                && !meta.status.is_terminal()
                                && !next_attempt(l, &meta))
                    }) {
                        continue;
                    }
                    return Ok(Some(self.emit(meta)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // We missed some changes; the latest state is what matters.
                    if let Some(current) = self.backend.get(&self.task_id).await?
                        && self.last.as_deref() != Some(&current)
                    {
                        return Ok(Some(self.emit(Arc::new(current))));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    // The hub dropped the channel (no receivers at some point): resubscribe.
                    let (rx, ready) = self.backend.events().subscribe(&self.task_id);
                    self.rx = Some(rx);
                    self.ready = ready;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), self.ready.wait_for(|r| *r))
                            .await;
                    if let Some(current) = self.backend.get(&self.task_id).await?
                        && self.last.as_deref() != Some(&current)
                    {
                        return Ok(Some(self.emit(Arc::new(current))));
                    }
                }
            }
        }
    }

    fn emit(&mut self, meta: Arc<ResultMeta>) -> Arc<ResultMeta> {
        if meta.status.is_terminal() {
            self.done = true;
        }
        self.last = Some(meta.clone());
        meta
    }

    /// The last state yielded.
    pub fn last(&self) -> Option<&ResultMeta> {
        self.last.as_deref()
    }
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        self.rx.take();
        self.backend.events().release(&self.task_id);
    }
}

/// Whether `m`, after the RETRY `l`, is the next attempt's although [`order`] cannot tell: a
/// Python worker's states carry no retry count, so its next attempt's STARTED would read as
/// older than the RETRY before it, and its progress would never reach a follower.
fn next_attempt(l: &ResultMeta, m: &ResultMeta) -> bool {
    l.status == TaskState::Retry && l.retries.is_none() && m.retries.is_none()
}

/// Where a state sits in a task's life: (attempt, phase, progress). Within one attempt states
/// only move forward; a retry starts a new attempt.
fn order(m: &ResultMeta) -> (u32, u8, u8) {
    let phase = match m.status {
        TaskState::Pending => 0,
        TaskState::Received => 1,
        TaskState::Started => 2,
        TaskState::Processing | TaskState::Custom(_) => 3,
        TaskState::Retry => 4,
        TaskState::Success | TaskState::Failure | TaskState::Revoked => 5,
    };
    let progress = if phase == 3 {
        m.progress().map_or(0, |p| p.0)
    } else {
        0
    };
    (m.retries.unwrap_or(0), phase, progress)
}

/// Waits until `task_id` reaches a terminal state, or `timeout`; returns the last state seen.
pub async fn wait_ready(
    backend: Arc<dyn ResultBackend>,
    task_id: &str,
    timeout: Duration,
) -> Result<ResultMeta, BackendError> {
    wait_watch(TaskWatch::new(backend, task_id), timeout).await
}

/// Waits on an existing watch until a terminal state, or `timeout`. A watch created before
/// the task is published lets its upstream subscription overlap the publish.
pub async fn wait_watch(
    mut watch: TaskWatch,
    timeout: Duration,
) -> Result<ResultMeta, BackendError> {
    let task_id = watch.task_id.clone();
    let task_id = task_id.as_str();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, watch.next_shared()).await {
            Ok(Ok(Some(meta))) if meta.status.is_terminal() => {
                return Ok(Arc::unwrap_or_clone(meta));
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => unreachable!("a watch ends only after a terminal state"),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Ok(watch.last().cloned().unwrap_or_else(|| ResultMeta {
                    status: TaskState::Pending,
                    ..ResultMeta::pending(task_id)
                }));
            }
        }
    }
}
