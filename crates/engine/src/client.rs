//! The producer side: send tasks, read and follow results, revoke, purge, inspect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::backend::{
    BackendError, Broker, QueueStats, ResultBackend, RevokeOutcome, StoreOutcome, WorkerReport,
};
use crate::message::{DEFAULT_QUEUE, MessageError, SendOptions, TaskMessage, validate_task_id};
use crate::result::ResultMeta;
use crate::task::{Registry, Task};
use crate::watch::{TaskWatch, wait_ready, wait_watch};

/// How long a revocation is kept by default.
pub const DEFAULT_REVOKE_KEEP: Duration = crate::policy::REVOKE_KEEP;

/// What can go wrong when using the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request is invalid.
    #[error(transparent)]
    Invalid(#[from] MessageError),
    /// The broker or result backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Sends tasks and reads their results.
#[derive(Clone)]
pub struct Client {
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    routes: Arc<HashMap<String, String>>,
    revoke_keep: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("broker", &self.broker.kind())
            .finish()
    }
}

impl Client {
    /// A client on `broker` and `backend`; task names in `routes` go to their queue.
    pub fn new(broker: Arc<dyn Broker>, backend: Arc<dyn ResultBackend>) -> Self {
        Self {
            broker,
            backend,
            routes: Arc::default(),
            revoke_keep: DEFAULT_REVOKE_KEEP,
        }
    }

    /// Routes every task of `registry` to its default queue.
    pub fn with_routes_from(mut self, registry: &Registry) -> Self {
        let routes = registry
            .names()
            .into_iter()
            .filter_map(|n| registry.get(&n).map(|t| (n, t.options().queue)))
            .collect();
        self.routes = Arc::new(routes);
        self
    }

    /// Adds one route.
    pub fn route(mut self, task: &str, queue: &str) -> Self {
        Arc::make_mut(&mut self.routes).insert(task.to_owned(), queue.to_owned());
        self
    }

    /// Sets how long revocations are kept.
    pub fn with_revoke_keep(mut self, keep: Duration) -> Self {
        self.revoke_keep = keep;
        self
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The result backend.
    pub fn backend(&self) -> &Arc<dyn ResultBackend> {
        &self.backend
    }

    /// Every queue some route names, plus the default queue, sorted.
    pub fn known_queues(&self) -> Vec<String> {
        let mut q: Vec<String> = self.routes.values().cloned().collect();
        q.push(DEFAULT_QUEUE.to_owned());
        q.sort();
        q.dedup();
        q
    }

    /// The queue `task` is routed to.
    pub fn queue_for(&self, task: &str) -> &str {
        self.routes
            .get(task)
            .map(String::as_str)
            .unwrap_or(DEFAULT_QUEUE)
    }

    /// Builds the message for a call without sending it.
    pub fn message(
        &self,
        task: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        opts: SendOptions,
    ) -> Result<TaskMessage, ClientError> {
        let mut msg = TaskMessage::new(task, args, kwargs, self.queue_for(task), opts)?;
        // A task this client does not route is another worker's (a Python Celery worker's):
        // its consumer holds its ETA, as Celery's do.
        msg.consumer_holds_eta =
            msg.eta.is_some() && !self.routes.is_empty() && !self.routes.contains_key(task);
        Ok(msg)
    }

    /// Sends `task` by name; returns its id.
    pub async fn send_task(
        &self,
        task: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        opts: SendOptions,
    ) -> Result<String, ClientError> {
        let msg = self.message(task, args, kwargs, opts)?;
        self.broker.publish(&msg).await?;
        Ok(msg.id)
    }

    /// Sends the typed task `T` with keyword arguments `kwargs`.
    pub async fn send<T: Task>(
        &self,
        kwargs: &impl Serialize,
        opts: SendOptions,
    ) -> Result<String, ClientError> {
        let kwargs = match serde_json::to_value(kwargs) {
            Ok(Value::Object(m)) => m,
            Ok(Value::Null) => Map::new(),
            Ok(_) | Err(_) => {
                return Err(MessageError::Invalid(
                    "task arguments must serialize to a JSON object".into(),
                )
                .into());
            }
        };
        self.send_task(T::NAME, vec![], kwargs, opts).await
    }

    /// The current state (PENDING when nothing is stored).
    pub async fn result(&self, task_id: &str) -> Result<ResultMeta, ClientError> {
        validate_task_id(task_id)?;
        Ok(self
            .backend
            .get(task_id)
            .await?
            .unwrap_or_else(|| ResultMeta::pending(task_id)))
    }

    /// Follows a task: current state first, then every change.
    pub fn watch(&self, task_id: &str) -> TaskWatch {
        TaskWatch::new(self.backend.clone(), task_id)
    }

    /// Waits for a terminal state, or returns the last state after `timeout`.
    pub async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta, ClientError> {
        validate_task_id(task_id)?;
        Ok(wait_ready(self.backend.clone(), task_id, timeout).await?)
    }

    /// Publishes `msg` and waits for its terminal state (or the last state after `timeout`).
    /// The watch starts before the publish, so the result subscription and the publish overlap.
    pub async fn publish_and_wait(
        &self,
        msg: &TaskMessage,
        timeout: Duration,
    ) -> Result<ResultMeta, ClientError> {
        let watch = TaskWatch::new(self.backend.clone(), &msg.id);
        self.broker.publish(msg).await?;
        Ok(wait_watch(watch, timeout).await?)
    }

    /// Revokes a task: queued or delayed copies never run, a running one is cancelled, and the
    /// revocation is stored so that it survives restarts. A task not running is marked REVOKED
    /// at once (unless it already ended). The revocation is kept for the client's revoke keep
    /// (7 days by default, [`with_revoke_keep`](Self::with_revoke_keep)): a copy delayed past
    /// it by an ETA is refused only where the broker deletes delayed copies (SQLite, memory);
    /// on Redis, as with Celery's revocations, it would run.
    pub async fn revoke(
        &self,
        task_id: &str,
        terminate: bool,
    ) -> Result<RevokeOutcome, ClientError> {
        validate_task_id(task_id)?;
        let out = self
            .broker
            .revoke(task_id, terminate, self.revoke_keep)
            .await?;
        if !out.running {
            match self
                .backend
                .store(&ResultMeta::revoked(task_id), None)
                .await?
            {
                StoreOutcome::Stored | StoreOutcome::KeptTerminal | StoreOutcome::Fenced => {}
            }
        }
        Ok(out)
    }

    /// Deletes queued and delayed messages of `queues`.
    pub async fn purge(&self, queues: &[String]) -> Result<u64, ClientError> {
        Ok(self.broker.purge(queues).await?)
    }

    /// Live workers.
    pub async fn workers(&self, timeout: Duration) -> Result<Vec<WorkerReport>, ClientError> {
        Ok(self.broker.workers(timeout).await?)
    }

    /// Queue lengths.
    pub async fn queue_stats(
        &self,
        queues: Option<&[String]>,
    ) -> Result<Vec<QueueStats>, ClientError> {
        Ok(self.broker.queue_stats(queues).await?)
    }
}
