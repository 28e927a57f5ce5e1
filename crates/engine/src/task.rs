//! The typed task API: [`Task`], its [`TaskOptions`], the run [`TaskContext`], and the
//! [`Registry`] that maps names to handlers.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::message::DEFAULT_QUEUE;
use crate::result::TaskError;

/// Celery's defaults, kept by the seed: 4 min soft, 5 min hard.
pub const DEFAULT_SOFT_TIME_LIMIT: Duration = Duration::from_secs(240);
/// See [`DEFAULT_SOFT_TIME_LIMIT`].
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(300);

/// Exponential backoff with jitter, capped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first run (0 = never retry).
    pub max_retries: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Spread each delay uniformly over [delay/2, delay].
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(600),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retries + 1`.
    pub fn delay(&self, retries: u32) -> Duration {
        let exp = self.base.as_secs_f64() * 2f64.powi(retries.min(30) as i32);
        let capped = exp.min(self.max_delay.as_secs_f64());
        let secs = if self.jitter {
            capped * (0.5 + fastrand::f64() * 0.5)
        } else {
            capped
        };
        Duration::from_secs_f64(secs)
    }
}

/// A task's defaults: queue, limits, retries.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    /// Queue the task is routed to unless the caller names another.
    pub queue: String,
    /// Soft time limit.
    pub soft_time_limit: Duration,
    /// Hard time limit.
    pub time_limit: Duration,
    /// Retry policy for transient errors.
    pub retry: RetryPolicy,
}

impl Default for TaskOptions {
    fn default() -> Self {
        Self {
            queue: DEFAULT_QUEUE.to_owned(),
            soft_time_limit: DEFAULT_SOFT_TIME_LIMIT,
            time_limit: DEFAULT_TIME_LIMIT,
            retry: RetryPolicy::default(),
        }
    }
}

/// A task: a type with a stable name whose `run` does the work.
///
/// Arguments arrive as Celery's `args`/`kwargs`; [`Task::decode`] turns them into
/// [`Task::Args`] (by default: the kwargs object, or the args list when there are no kwargs).
pub trait Task: Send + Sync + 'static {
    /// The stable name clients send (e.g. `app.tasks.visualization_tasks.generate_visualization`).
    const NAME: &'static str;
    /// Typed arguments.
    type Args: DeserializeOwned + Send + 'static;
    /// The return value, stored as the SUCCESS result.
    type Output: Serialize + Send + 'static;

    /// Queue, limits and retry policy.
    fn options(&self) -> TaskOptions {
        TaskOptions::default()
    }

    /// Builds the typed arguments from the message's `args`/`kwargs`.
    fn decode(args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Self::Args, String> {
        let v = match (args.is_empty(), kwargs.is_empty()) {
            (true, _) => Value::Object(kwargs),
            (false, true) => Value::Array(args),
            (false, false) => {
                return Err(
                    "this task takes keyword arguments only; got positional ones too".into(),
                );
            }
        };
        decode_json(v)
    }

    /// Does the work.
    fn run(
        &self,
        ctx: TaskContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;
}

/// Deserializes `v` into `T`; the error names the offending field (`seconds: invalid type ...`).
pub fn decode_json<T: DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Why a run's cancellation fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The task was revoked.
    Revoked,
    /// The soft time limit passed.
    SoftTimeLimit,
    /// The worker is shutting down; the task goes back to the queue.
    Shutdown,
    /// The worker lost the lease; another run owns the task now.
    LeaseLost,
}

/// Receives progress reports from a running task.
pub trait ProgressSink: Send + Sync {
    /// Stores and publishes `{progress, status}` (PROCESSING).
    fn report(&self, progress: u8, status: String)
    -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

struct CtxInner {
    id: String,
    name: String,
    retries: u32,
    queue: String,
    worker: String,
    cancel: CancellationToken,
    reason: Mutex<Option<CancelReason>>,
    /// Every reason given, in any order (one bit per [`CancelReason`]).
    reasons: std::sync::atomic::AtomicU8,
    sink: Arc<dyn ProgressSink>,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
    /// When the run's first time limit (soft, else hard) falls; set as the run starts.
    deadline: std::sync::OnceLock<tokio::time::Instant>,
}

/// What a running task can see and do: its identity, progress, cancellation.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<CtxInner>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .finish()
    }
}

/// A cheap, `Send` handle that blocking code polls to notice cancellation.
#[derive(Debug, Clone)]
pub struct CancelFlag(CancellationToken);

impl CancelFlag {
    /// True once the run has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// `Err(cancelled)` once the run has been asked to stop: use with `?` in loops.
    pub fn check(&self) -> Result<(), TaskError> {
        if self.is_cancelled() {
            Err(TaskError::cancelled())
        } else {
            Ok(())
        }
    }

    /// A flag that is never cancelled (for calling task code outside a worker).
    pub fn never() -> Self {
        Self(CancellationToken::new())
    }
}

/// Everything needed to build a [`TaskContext`]; used by the worker runtime.
#[derive(Clone)]
pub struct ContextParts {
    /// Task id.
    pub id: String,
    /// Task name.
    pub name: String,
    /// Retries so far.
    pub retries: u32,
    pub queue: String,
    /// Worker node name.
    pub worker: String,
    /// Where progress goes.
    pub sink: Arc<dyn ProgressSink>,
    /// Raw positional arguments.
    pub args: Vec<Value>,
    /// Raw keyword arguments.
    pub kwargs: Map<String, Value>,
}

impl TaskContext {
    /// A context with a fresh cancellation token.
    pub fn new(parts: ContextParts) -> Self {
        Self {
            inner: Arc::new(CtxInner {
                id: parts.id,
                name: parts.name,
                retries: parts.retries,
                queue: parts.queue,
                worker: parts.worker,
                cancel: CancellationToken::new(),
                reason: Mutex::new(None),
                reasons: std::sync::atomic::AtomicU8::new(0),
                sink: parts.sink,
                args: parts.args,
                kwargs: parts.kwargs,
                deadline: std::sync::OnceLock::new(),
            }),
        }
    }

    /// How long until the run's first time limit (its soft limit, else its hard one): work
    /// that waits on others (a remote API and its retries) should give up before it, with an
    /// error of its own, rather than be cut off by the limit. `None` outside a worker's run.
    pub fn time_left(&self) -> Option<Duration> {
        self.inner
            .deadline
            .get()
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// Sets when the run's first time limit falls (the worker, as the run starts).
    pub(crate) fn set_deadline(&self, at: tokio::time::Instant) {
        let _ = self.inner.deadline.set(at);
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
    /// The task name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// How many times this task was retried before this run.
    pub fn retries(&self) -> u32 {
        self.inner.retries
    }
    /// The queue the message came from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }
    /// The worker node running it.
    pub fn worker(&self) -> &str {
        &self.inner.worker
    }
    /// Raw positional arguments as sent.
    pub fn raw_args(&self) -> &[Value] {
        &self.inner.args
    }
    /// Raw keyword arguments as sent.
    pub fn raw_kwargs(&self) -> &Map<String, Value> {
        &self.inner.kwargs
    }

    /// Reports progress (0-100) with a status text: stored as PROCESSING and pushed to watchers.
    pub async fn progress(&self, progress: u8, status: impl Into<String>) {
        self.inner
            .sink
            .report(progress.min(100), status.into())
            .await;
    }

    /// True once the run has been asked to stop (revoke, soft limit, shutdown, lost lease).
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Completes when the run is asked to stop.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await;
    }

    /// Why the run was asked to stop, if it was.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        *self.inner.reason.lock().expect("cancel reason lock")
    }

    /// `Err(cancelled)` once the run has been asked to stop.
    pub fn check_cancelled(&self) -> Result<(), TaskError> {
        if self.is_cancelled() {
            Err(TaskError::cancelled())
        } else {
            Ok(())
        }
    }

    /// A flag for blocking code.
    pub fn cancel_flag(&self) -> CancelFlag {
        CancelFlag(self.inner.cancel.clone())
    }

    /// Runs CPU-bound or blocking work on a blocking thread, off the async workers. The closure
    /// should poll its [`CancelFlag`]; if it does not, the hard time limit still frees the slot.
    pub async fn blocking<F, R>(&self, f: F) -> Result<R, TaskError>
    where
        F: FnOnce(&CancelFlag) -> R + Send + 'static,
        R: Send + 'static,
    {
        let flag = self.cancel_flag();
        tokio::task::spawn_blocking(move || f(&flag))
            .await
            .map_err(|e| TaskError::panicked(format!("blocking work failed: {e}")))
    }

    /// Whether the run was asked to stop for `reason`, first or later (a revoke or a lost lease
    /// after the soft time limit passed, say).
    pub fn cancelled_for(&self, reason: CancelReason) -> bool {
        self.inner.reasons.load(std::sync::atomic::Ordering::SeqCst) & (1 << reason as u8) != 0
    }

    /// Asks the run to stop (first reason wins). Used by the worker runtime.
    pub fn cancel(&self, reason: CancelReason) {
        self.inner
            .reasons
            .fetch_or(1 << reason as u8, std::sync::atomic::Ordering::SeqCst);
        {
            let mut r = self.inner.reason.lock().expect("cancel reason lock");
            if r.is_none() {
                *r = Some(reason);
            }
        }
        self.inner.cancel.cancel();
    }
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A task with its types erased, as the registry holds it.
pub trait ErasedTask: Send + Sync {
    /// The task name.
    fn name(&self) -> &'static str;
    fn options(&self) -> TaskOptions;
    /// Decodes the arguments and runs it; the output is JSON.
    fn call(
        self: Arc<Self>,
        ctx: TaskContext,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<BoxFut<'static, Result<Value, TaskError>>, TaskError>;
}

struct Typed<T: Task>(T);

impl<T: Task> ErasedTask for Typed<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn options(&self) -> TaskOptions {
        self.0.options()
    }
    fn call(
        self: Arc<Self>,
        ctx: TaskContext,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<BoxFut<'static, Result<Value, TaskError>>, TaskError> {
        let typed = T::decode(args, kwargs).map_err(TaskError::invalid_arguments)?;
        Ok(Box::pin(async move {
            let out = self.0.run(ctx, typed).await?;
            serde_json::to_value(out)
                .map_err(|e| TaskError::panicked(format!("task output is not JSON: {e}")))
        }))
    }
}

/// Maps task names to handlers.
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<&'static str, Arc<dyn ErasedTask>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tasks.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task; a later registration under the same name replaces the earlier one.
    pub fn register<T: Task>(&mut self, task: T) -> &mut Self {
        self.tasks.insert(T::NAME, Arc::new(Typed(task)));
        self
    }

    /// The handler for `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn ErasedTask>> {
        self.tasks.get(name).cloned()
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tasks.keys().map(|s| (*s).to_owned()).collect()
    }

    /// Every queue some registered task routes to, sorted and deduplicated.
    pub fn queues(&self) -> Vec<String> {
        let mut q: Vec<String> = self.tasks.values().map(|t| t.options().queue).collect();
        q.sort();
        q.dedup();
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoSink;
    impl ProgressSink for NoSink {
        fn report(
            &self,
            _progress: u8,
            _status: String,
        ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
    }

    /// The first reason is the run's reason; every reason given is known (a revoke or a lost
    /// lease after the soft time limit passed must not read as the soft limit alone).
    #[test]
    fn every_cancel_reason_is_kept() {
        let ctx = TaskContext::new(ContextParts {
            id: "t".into(),
            name: "n".into(),
            retries: 0,
            queue: "q".into(),
            worker: "w".into(),
            sink: Arc::new(NoSink),
            args: vec![],
            kwargs: Map::new(),
        });
        assert!(!ctx.cancelled_for(CancelReason::Revoked));
        ctx.cancel(CancelReason::SoftTimeLimit);
        ctx.cancel(CancelReason::LeaseLost);
        assert_eq!(ctx.cancel_reason(), Some(CancelReason::SoftTimeLimit));
        assert!(ctx.cancelled_for(CancelReason::SoftTimeLimit));
        assert!(ctx.cancelled_for(CancelReason::LeaseLost));
        assert!(!ctx.cancelled_for(CancelReason::Revoked));
        assert!(!ctx.cancelled_for(CancelReason::Shutdown));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            jitter: false,
        };
        assert_eq!(p.delay(0), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(4));
        assert_eq!(p.delay(9), Duration::from_secs(5));
        let j = RetryPolicy { jitter: true, ..p };
        for _ in 0..100 {
            let d = j.delay(1).as_secs_f64();
            assert!((1.0..=2.0).contains(&d), "{d}");
        }
    }
}
