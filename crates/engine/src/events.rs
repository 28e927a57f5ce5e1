//! The event stream: every stored state change, pushed to in-process subscribers.
//!
//! Backends call [`EventHub::publish`] after each successful write. Subscribers follow one task
//! ([`TaskWatch`]: the current state first, then every change, ending at a terminal state) or
//! all tasks ([`EventHub::subscribe_all`]). Nothing here polls: a watch waits on a channel.
//! Per-task channels exist only while someone subscribes, so the hub's size is bounded by its
//! subscribers, not by the number of tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::backend::{BackendError, ResultBackend};
use crate::result::{ResultMeta, TaskState};

const PER_TASK_CAPACITY: usize = 64;
const ALL_CAPACITY: usize = 4096;

/// What subscribers want, told to a backend that must subscribe upstream (e.g. Redis pub/sub).
#[derive(Debug)]
pub enum Interest {
    /// Someone follows this task; call `ready` once upstream changes of it will arrive.
    Watch(String, tokio::sync::watch::Sender<bool>),
    /// Nobody follows this task any more.
    Unwatch(String),
    /// Someone follows every task.
    All,
}

type Listener = Box<dyn Fn(Interest) + Send + Sync>;

struct Channel {
    tx: broadcast::Sender<Arc<ResultMeta>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

/// Fan-out of result changes to in-process subscribers.
pub struct EventHub {
    per_task: Mutex<HashMap<String, Channel>>,
    all: broadcast::Sender<Arc<ResultMeta>>,
    listener: std::sync::OnceLock<Listener>,
    all_announced: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("watched", &self.watched_tasks())
            .finish()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            per_task: Mutex::default(),
            all: broadcast::channel(ALL_CAPACITY).0,
            listener: std::sync::OnceLock::new(),
            all_announced: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl EventHub {
    /// Installs the backend's listener (once): it hears which tasks are followed.
    pub fn set_listener(&self, l: impl Fn(Interest) + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(l));
    }

    /// Publishes a stored change.
    pub fn publish(&self, meta: ResultMeta) {
        let meta = Arc::new(meta);
        let gone = {
            let mut map = self.per_task.lock().expect("event hub lock");
            match map.get(&meta.task_id) {
                Some(ch) if ch.tx.send(meta.clone()).is_err() => {
                    map.remove(&meta.task_id);
                    true
                }
                _ => false,
            }
        };
        if gone && let Some(l) = self.listener.get() {
            l(Interest::Unwatch(meta.task_id.clone()));
        }
        let _ = self.all.send(meta);
    }

    /// Every change of every task (a lagging receiver loses the oldest).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<ResultMeta>> {
        if !self
            .all_announced
            .swap(true, std::sync::atomic::Ordering::SeqCst)
            && let Some(l) = self.listener.get()
        {
            l(Interest::All);
        }
        self.all.subscribe()
    }

    fn subscribe(
        &self,
        task_id: &str,
    ) -> (
        broadcast::Receiver<Arc<ResultMeta>>,
        tokio::sync::watch::Receiver<bool>,
    ) {
        let mut announce = None;
        let out = {
            let mut map = self.per_task.lock().expect("event hub lock");
            let ch = map.entry(task_id.to_owned()).or_insert_with(|| {
                let ready = self.listener.get().is_none();
                let (tx, rx) = tokio::sync::watch::channel(ready);
                if !ready {
                    announce = Some(tx);
                }
                Channel {
                    tx: broadcast::channel(PER_TASK_CAPACITY).0,
                    ready: rx,
                }
            });
            (ch.tx.subscribe(), ch.ready.clone())
        };
        if let (Some(tx), Some(l)) = (announce, self.listener.get()) {
            l(Interest::Watch(task_id.to_owned(), tx));
        }
        out
    }

    fn release(&self, task_id: &str) {
        let removed = {
            let mut map = self.per_task.lock().expect("event hub lock");
            if map
                .get(task_id)
                .is_some_and(|ch| ch.tx.receiver_count() == 0)
            {
                map.remove(task_id);
                true
            } else {
                false
            }
        };
        if removed && let Some(l) = self.listener.get() {
            l(Interest::Unwatch(task_id.to_owned()));
        }
    }

    /// Number of tasks someone is watching (for metrics and tests).
    pub fn watched_tasks(&self) -> usize {
        self.per_task.lock().expect("event hub lock").len()
    }
}

/// Follows one task: yields its current state first, then each change, and ends after a
/// terminal state.
pub struct TaskWatch {
    backend: Arc<dyn ResultBackend>,
    task_id: String,
    rx: Option<broadcast::Receiver<Arc<ResultMeta>>>,
    ready: tokio::sync::watch::Receiver<bool>,
    last: Option<ResultMeta>,
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
        if self.done {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            // Upstream subscriptions (Redis) must be in place before the first read, or a
            // change between the read and the subscription would be lost.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.ready.wait_for(|r| *r)).await;
            let current = self
                .backend
                .get(&self.task_id)
                .await?
                .unwrap_or_else(|| ResultMeta::pending(&self.task_id));
            return Ok(Some(self.emit(current)));
        }
        loop {
            let rx = self.rx.as_mut().expect("receiver present until done");
            match rx.recv().await {
                Ok(meta) => {
                    // Skip repeats, and changes older than what was already yielded (the first
                    // state read from the backend may be newer than events still queued).
                    if self
                        .last
                        .as_ref()
                        .is_some_and(|l| *l == *meta || order(&meta) < order(l))
                    {
                        continue;
                    }
                    return Ok(Some(self.emit((*meta).clone())));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // We missed some changes; the latest state is what matters.
                    if let Some(current) = self.backend.get(&self.task_id).await?
                        && self.last.as_ref() != Some(&current)
                    {
                        return Ok(Some(self.emit(current)));
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
                        && self.last.as_ref() != Some(&current)
                    {
                        return Ok(Some(self.emit(current)));
                    }
                }
            }
        }
    }

    fn emit(&mut self, meta: ResultMeta) -> ResultMeta {
        if meta.status.is_terminal() {
            self.done = true;
        }
        self.last = Some(meta.clone());
        meta
    }

    /// The last state yielded.
    pub fn last(&self) -> Option<&ResultMeta> {
        self.last.as_ref()
    }
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        self.rx.take();
        self.backend.events().release(&self.task_id);
    }
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
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Ok(Some(meta))) if meta.status.is_terminal() => return Ok(meta),
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
