//! The worker runtime: claims messages, runs their handlers under leases and time limits,
//! stores every state change, retries, honours revocations, and shuts down without losing work.
//!
//! One [`Worker`] runs these loops until its [`Shutdown`] fires:
//! - **fetch**: claims due messages while fewer than `concurrency × prefetch_multiplier` are
//!   held, and spawns one supervisor per delivery;
//! - **renew**: extends the leases of held messages every `lease / 3`; a lease that cannot be
//!   renewed cancels its run (another worker owns the task now, and fencing drops its writes);
//! - **control**: follows the broker's revocation log and cancels matching runs (cooperatively,
//!   then hard after `revoke_grace`, or at once with `terminate`);
//! - **heartbeat**: publishes a [`WorkerReport`] every `heartbeat` (what `inspect` shows);
//! - **maintenance**: returns expired leases to their queues (every fifth of a lease, 0.1-2 s)
//!   and removes expired results, revocations and dead letters (every `cleanup_interval`).
//!
//! A supervisor enforces the limits: at the soft limit the task's cancellation fires and it may
//! clean up (if it then fails, the result is `SoftTimeLimitExceeded`); at the hard limit the run
//! is abandoned, the slot is freed and the result is `TimeLimitExceeded`, whether or not the
//! task's code cooperates.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::{
    ActiveTask, BackendError, Broker, ClaimRequest, Delivery, LeaseRef, ResultBackend,
    StoreOutcome, WorkerReport,
};
use crate::message::{TaskMessage, py_repr};
use crate::result::{ResultMeta, RetryHint, TaskError, TaskState};
use crate::task::{CancelReason, ContextParts, ProgressSink, Registry, TaskContext};
use crate::time::format_iso;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Node name, `name@host`.
    pub node: String,
    /// Queues to consume.
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub concurrency: usize,
    /// Messages held per slot (1 = claim only for free slots: no hidden backlog).
    pub prefetch_multiplier: usize,
    /// Lease length; renewed every third of it while the run lives.
    pub lease: Duration,
    /// Longest wait between claims when idle (backends wake the worker sooner on new work).
    pub idle_wait: Duration,
    /// How long a revoked running task may clean up before it is abandoned.
    pub revoke_grace: Duration,
    /// How long running tasks may finish at shutdown before they are given back.
    pub shutdown_grace: Duration,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Period of the expired-results/revocations/dead-letters cleanup.
    pub cleanup_interval: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            node: default_node_name(),
            queues: vec![crate::message::DEFAULT_QUEUE.to_owned()],
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            prefetch_multiplier: 1,
            lease: Duration::from_secs(10),
            idle_wait: Duration::from_secs(1),
            revoke_grace: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(2),
            cleanup_interval: Duration::from_secs(60),
        }
    }
}

/// `afterview-<pid>@<host>`.
pub fn default_node_name() -> String {
    format!("afterview-{}@{}", std::process::id(), crate::hostname())
}

/// Expands Celery's `%h` (host), `%n` (host without domain) and `%p` (pid) in a node name.
pub fn expand_node_name(name: &str) -> String {
    let host = crate::hostname();
    let short = host.split('.').next().unwrap_or(&host).to_owned();
    name.replace("%h", &host)
        .replace("%n", &short)
        .replace("%p", &std::process::id().to_string())
}

/// Two-stage shutdown: the first trigger stops fetching and starts the grace period; the
/// second cuts it short.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop fetching; let running tasks finish within the grace period.
    pub graceful: CancellationToken,
    /// Give the remaining tasks back now.
    pub immediate: CancellationToken,
}

impl Shutdown {
    /// A shutdown that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the next stage.
    pub fn trigger(&self) {
        if self.graceful.is_cancelled() {
            self.immediate.cancel();
        } else {
            self.graceful.cancel();
        }
    }
}

/// Per-run control shared between the supervisor and the control loops.
#[derive(Default)]
struct RunControl {
    ctx: Mutex<Option<TaskContext>>,
    pending: Mutex<Option<CancelReason>>,
    kill: Notify,
    kill_reason: Mutex<Option<CancelReason>>,
    active: Mutex<Option<Running>>,
    /// Whether STARTED was written; held while it is being written, so no later state of the
    /// run can be stored before it.
    start: tokio::sync::Mutex<StartMark>,
}

/// The STARTED write of a run (see [`STARTED_AFTER`]).
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum StartMark {
    /// Not written yet.
    #[default]
    Pending,
    Written,
    /// A later state came first; STARTED is never written.
    Superseded,
}

impl RunControl {
    fn cancel(&self, reason: CancelReason) {
        if let Some(ctx) = &*self.ctx.lock().expect("run ctx lock") {
            ctx.cancel(reason);
        } else {
            self.pending
                .lock()
                .expect("run pending lock")
                .get_or_insert(reason);
        }
    }

    fn attach(&self, ctx: TaskContext) {
        if let Some(r) = *self.pending.lock().expect("run pending lock") {
            ctx.cancel(r);
        }
        *self.ctx.lock().expect("run ctx lock") = Some(ctx);
    }

    fn kill(&self, reason: CancelReason) {
        self.cancel(reason);
        self.kill_reason
            .lock()
            .expect("kill reason lock")
            .get_or_insert(reason);
        self.kill.notify_one();
    }

    /// Called before any state after STARTED is stored: waits for a STARTED write in flight,
    /// and cancels one not begun.
    async fn supersede_start(&self) {
        let mut m = self.start.lock().await;
        if *m == StartMark::Pending {
            *m = StartMark::Superseded;
        }
    }

    fn killed(&self) -> Option<CancelReason> {
        *self.kill_reason.lock().expect("kill reason lock")
    }

    fn reason(&self) -> Option<CancelReason> {
        self.ctx
            .lock()
            .expect("run ctx lock")
            .as_ref()
            .and_then(TaskContext::cancel_reason)
            .or(*self.pending.lock().expect("run pending lock"))
    }
}

/// What `inspect active` shows of a started run; rendered only when a report is written.
struct Running {
    msg: Arc<TaskMessage>,
    time_start: chrono::DateTime<Utc>,
    redelivered: bool,
}

impl Running {
    fn render(&self, tag: &str) -> ActiveTask {
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

struct Run {
    lease: LeaseRef,
    ctrl: Arc<RunControl>,
}

struct Shared {
    cfg: WorkerConfig,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Registry,
    runs: Mutex<HashMap<String, Run>>,
    totals: Mutex<BTreeMap<String, u64>>,
    slots: Arc<Semaphore>,
    held: AtomicUsize,
    freed: Notify,
    started_at: chrono::DateTime<Utc>,
}

/// A worker bound to a broker, a result backend and a registry.
pub struct Worker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("node", &self.shared.cfg.node)
            .finish()
    }
}

impl Worker {
    /// A worker with `cfg`.
    pub fn new(
        cfg: WorkerConfig,
        broker: Arc<dyn Broker>,
        backend: Arc<dyn ResultBackend>,
        registry: Registry,
    ) -> Self {
        let concurrency = cfg.concurrency.max(1);
        Self {
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(concurrency)),
                cfg: WorkerConfig { concurrency, ..cfg },
                broker,
                backend,
                registry,
                runs: Mutex::default(),
                totals: Mutex::default(),
                held: AtomicUsize::new(0),
                freed: Notify::new(),
                started_at: Utc::now(),
            }),
        }
    }

    /// The node name.
    pub fn node(&self) -> &str {
        &self.shared.cfg.node
    }

    /// Runs until `shutdown` fires and every held message is finished or given back.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), BackendError> {
        let s = self.shared;
        info!(
            node = %s.cfg.node,
            queues = %s.cfg.queues.join(","),
            concurrency = s.cfg.concurrency,
            broker = s.broker.kind(),
            "Worker started."
        );
        let bg = CancellationToken::new();
        let mut loops = JoinSet::new();
        loops.spawn(renew_loop(s.clone(), bg.clone()));
        loops.spawn(control_loop(s.clone(), bg.clone()));
        loops.spawn(heartbeat_loop(s.clone(), bg.clone()));
        loops.spawn(maintenance_loop(s.clone(), bg.clone()));

        let mut runs = JoinSet::new();
        fetch_loop(&s, &shutdown, &mut runs).await;

        // Drain: let running tasks finish within the grace period.
        let deadline = Instant::now() + s.cfg.shutdown_grace;
        while s.held.load(Ordering::SeqCst) > 0 {
            let freed = s.freed.notified();
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.immediate.cancelled() => break,
            }
            while runs.try_join_next().is_some() {}
        }
        let remaining: Vec<Arc<RunControl>> = s
            .runs
            .lock()
            .expect("runs lock")
            .values()
            .map(|r| r.ctrl.clone())
            .collect();
        if !remaining.is_empty() {
            info!(
                count = remaining.len(),
                "Giving unfinished tasks back to the queue."
            );
        }
        for ctrl in remaining {
            ctrl.kill(CancelReason::Shutdown);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while runs.join_next().await.is_some() {}
        })
        .await;
        bg.cancel();
        while loops.join_next().await.is_some() {}
        if let Err(e) = s.broker.worker_gone(&s.cfg.node).await {
            warn!(error = %e, "Could not remove the worker record.");
        }
        info!(node = %s.cfg.node, "Worker stopped.");
        Ok(())
    }
}

/// How long a prefetched message may wait for a free slot before its state becomes RECEIVED.
const RECEIVED_AFTER: Duration = Duration::from_millis(100);

/// How long a freshly claimed task runs before STARTED is written. One that ends sooner goes
/// straight to its final state: one result write instead of two, and one Redis round trip less
/// from send to result (Celery does not store STARTED at all by default). A claim older than a
/// third of the lease (a prefetched task that waited) writes STARTED, fenced, before it runs,
/// so a task whose lease was lost never starts.
const STARTED_AFTER: Duration = Duration::from_millis(20);

/// How often a worker polls a broker that pushes wake-ups (a safety net only).
const PUSHED_POLL: Duration = Duration::from_secs(5);

fn idle_wait(s: &Shared) -> Duration {
    if s.broker.pushes_wakeups() {
        s.cfg.idle_wait.max(PUSHED_POLL)
    } else {
        s.cfg.idle_wait
    }
}

async fn fetch_loop(s: &Arc<Shared>, shutdown: &Shutdown, runs: &mut JoinSet<()>) {
    let capacity = s.cfg.concurrency * s.cfg.prefetch_multiplier.max(1);
    let mut backoff = Duration::from_millis(100);
    loop {
        while runs.try_join_next().is_some() {}
        if shutdown.graceful.is_cancelled() {
            return;
        }
        let held = s.held.load(Ordering::SeqCst);
        if held >= capacity {
            let freed = s.freed.notified();
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.graceful.cancelled() => return,
            }
            continue;
        }
        let req = ClaimRequest {
            queues: s.cfg.queues.clone(),
            max: capacity - held,
            worker: s.cfg.node.clone(),
            lease: s.cfg.lease,
        };
        match s.broker.claim(&req).await {
            Ok(batch) if batch.is_empty() => {
                backoff = Duration::from_millis(100);
                tokio::select! {
                    _ = s.broker.wait_for_work(&s.cfg.queues, idle_wait(s)) => {}
                    _ = shutdown.graceful.cancelled() => return,
                }
            }
            Ok(batch) => {
                backoff = Duration::from_millis(100);
                let claimed_at = Instant::now();
                for d in batch {
                    let ctrl = Arc::new(RunControl::default());
                    s.held.fetch_add(1, Ordering::SeqCst);
                    s.runs.lock().expect("runs lock").insert(
                        d.lease.delivery_tag.clone(),
                        Run {
                            lease: d.lease.clone(),
                            ctrl: ctrl.clone(),
                        },
                    );
                    let s2 = s.clone();
                    runs.spawn(async move {
                        let tag = d.lease.delivery_tag.clone();
                        process(&s2, d, &ctrl, claimed_at).await;
                        s2.runs.lock().expect("runs lock").remove(&tag);
                        s2.held.fetch_sub(1, Ordering::SeqCst);
                        s2.freed.notify_waiters();
                        s2.freed.notify_one();
                    });
                }
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Claim failed.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.graceful.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How a supervised run ended.
enum RunEnd {
    Ok(Value),
    Err(TaskError),
    Panicked(String),
    HardLimit(f64),
    Killed(CancelReason),
}

async fn process(s: &Arc<Shared>, d: Delivery, ctrl: &Arc<RunControl>, claimed_at: Instant) {
    let lease = d.lease.clone();
    let msg = match TaskMessage::from_envelope(&d.raw, &d.queue) {
        Ok(m) => m,
        Err(e) => {
            warn!(queue = %d.queue, task_id = ?e.task_id, reason = %e.reason, "Malformed message set aside.");
            if let Some(id) = &e.task_id {
                let mut meta = ResultMeta::error(
                    id,
                    TaskState::Failure,
                    &TaskError::malformed_message(e.to_string()),
                );
                meta.name = e.task_name.clone();
                meta.worker = Some(s.cfg.node.clone());
                store(s, &meta, &lease).await;
            }
            if let Err(err) = s
                .broker
                .dead_letter(
                    Some(&lease),
                    &d.queue,
                    &d.raw,
                    &e.reason,
                    e.task_id.as_deref(),
                )
                .await
            {
                warn!(error = %err, "Could not dead-letter a malformed message.");
            }
            return;
        }
    };
    let base = MetaBase::new(s, &msg);

    if d.revoked.is_some() {
        debug!(task_id = %msg.id, "Revoked task not run.");
        finish(
            s,
            &base,
            &lease,
            TaskState::Revoked,
            TaskError::revoked("revoked").to_exception(),
            None,
        )
        .await;
        return;
    }
    if let Some(exp) = msg.expires
        && exp <= Utc::now()
    {
        debug!(task_id = %msg.id, "Expired task not run.");
        finish(
            s,
            &base,
            &lease,
            TaskState::Revoked,
            TaskError::revoked("expired").to_exception(),
            None,
        )
        .await;
        return;
    }
    if let Some(eta) = msg.eta
        && eta > Utc::now() + chrono::Duration::milliseconds(20)
    {
        // Enqueued early by its producer (Celery clients do): back into the broker's schedule.
        match s.broker.defer(&lease, eta.timestamp_millis()).await {
            Ok(true) => {
                debug!(task_id = %msg.id, eta = %format_iso(eta), "Task deferred to its ETA.");
                return;
            }
            Ok(false) => {
                let wait = (eta - Utc::now()).to_std().unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctrl.kill.notified() => {
                        settle_killed(s, &base, &lease, ctrl.killed().unwrap_or(CancelReason::Shutdown)).await;
                        return;
                    }
                }
            }
            Err(e) => {
                warn!(task_id = %msg.id, error = %e, "Could not defer the task; it will come back after its lease.");
                return;
            }
        }
    }
    if d.redelivered || msg.redelivered {
        // A previous run may have stored its final state and died before acking.
        if let Ok(Some(prev)) = s.backend.get(&msg.id).await
            && prev.status.is_terminal()
            && prev.retries.unwrap_or(0) >= msg.retries
        {
            info!(task_id = %msg.id, status = %prev.status, "Redelivered task already finished; acking.");
            ack(s, &lease).await;
            return;
        }
    }
    let Some(handler) = s.registry.get(&msg.task) else {
        warn!(task_id = %msg.id, task = %msg.task, "Unknown task.");
        let err = TaskError::not_registered(&msg.task);
        finish(
            s,
            &base,
            &lease,
            TaskState::Failure,
            err.to_exception(),
            Some(err.traceback()),
        )
        .await;
        return;
    };
    let opts = handler.options();

    // Wait for a slot (only prefetched messages ever wait here). A task that waits longer than
    // RECEIVED_AFTER shows RECEIVED; a shorter wait is not worth a result write.
    let permit = match s.slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let acquire = s.slots.clone().acquire_owned();
            tokio::pin!(acquire);
            let mut announced = false;
            loop {
                tokio::select! {
                    p = &mut acquire => break p.expect("semaphore never closed"),
                    _ = tokio::time::sleep(RECEIVED_AFTER), if !announced => {
                        announced = true;
                        let received = base.meta(TaskState::Received, Value::Null);
                        store(s, &received, &lease).await;
                    }
                    _ = ctrl.kill.notified() => {
                        settle_killed(s, &base, &lease, ctrl.killed().unwrap_or(CancelReason::Shutdown)).await;
                        return;
                    }
                }
            }
        }
    };

    let soft = msg
        .timelimit
        .soft
        .unwrap_or(opts.soft_time_limit.as_secs_f64());
    let hard = msg.timelimit.hard.unwrap_or(opts.time_limit.as_secs_f64());
    let soft = soft.min(hard);

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
        time_start: Utc::now(),
        redelivered: d.redelivered || msg.redelivered,
    });
    let started = base.meta(
        TaskState::Started,
        json!({"pid": std::process::id(), "hostname": s.cfg.node}),
    );
    let defer_start = claimed_at.elapsed() < s.cfg.lease / 3;
    if !defer_start {
        *ctrl.start.lock().await = StartMark::Written;
        if store(s, &started, &lease).await == Some(StoreOutcome::Fenced) {
            info!(task_id = %msg.id, "Lease lost before start; another worker owns the task.");
            return;
        }
    }
    if let Some(reason) = ctrl.reason() {
        // Revoked or shut down between claim and start.
        settle_killed(s, &base, &lease, reason).await;
        return;
    }

    let fut = match handler.call(ctx.clone(), msg.args.clone(), msg.kwargs.clone()) {
        Ok(f) => f,
        Err(err) => {
            warn!(task_id = %msg.id, task = %msg.task, error = %err.message, "Invalid task arguments.");
            let meta = base.error(TaskState::Failure, &err);
            if store(s, &meta, &lease).await == Some(StoreOutcome::Stored)
                && let Err(e) = s
                    .broker
                    .dead_letter(Some(&lease), &d.queue, &d.raw, &err.message, Some(&msg.id))
                    .await
            {
                warn!(error = %e, "Could not dead-letter a message with invalid arguments.");
            }
            return;
        }
    };

    let t0 = Instant::now();
    let mut join = tokio::spawn(fut);
    let soft_at = t0 + Duration::from_secs_f64(soft);
    let hard_at = t0 + Duration::from_secs_f64(hard);
    let mut soft_fired = false;
    let started_at = t0 + STARTED_AFTER;
    let mut start_due = defer_start;
    let end = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(started_at), if start_due => {
                start_due = false;
                let mut mark = ctrl.start.lock().await;
                if *mark == StartMark::Pending {
                    *mark = StartMark::Written;
                    if store(s, &started, &lease).await == Some(StoreOutcome::Fenced) {
                        drop(mark);
                        join.abort();
                        break RunEnd::Killed(CancelReason::LeaseLost);
                    }
                }
            }
            res = &mut join => break match res {
                Ok(Ok(v)) => RunEnd::Ok(v),
                Ok(Err(e)) => RunEnd::Err(e),
                Err(je) if je.is_panic() => RunEnd::Panicked(panic_text(je.into_panic())),
                Err(_) => RunEnd::Killed(ctrl.killed().unwrap_or(CancelReason::Shutdown)),
            },
            _ = tokio::time::sleep_until(soft_at), if !soft_fired && soft < hard => {
                soft_fired = true;
                info!(task_id = %msg.id, limit_s = soft, "Soft time limit reached; cancelling.");
                ctrl.cancel(CancelReason::SoftTimeLimit);
            }
            _ = tokio::time::sleep_until(hard_at) => {
                join.abort();
                break RunEnd::HardLimit(hard);
            }
            _ = ctrl.kill.notified() => {
                join.abort();
                break RunEnd::Killed(ctrl.killed().unwrap_or(CancelReason::Shutdown));
            }
        }
    };
    drop(permit);
    ctrl.supersede_start().await;
    let runtime = t0.elapsed();
    let reason = ctx.cancel_reason();
    match end {
        RunEnd::Ok(v) if reason != Some(CancelReason::LeaseLost) => {
            debug!(task_id = %msg.id, runtime_ms = runtime.as_millis() as u64, "Task succeeded.");
            count(s, &msg.task);
            finish(s, &base, &lease, TaskState::Success, v, None).await;
        }
        RunEnd::Ok(_) => info!(task_id = %msg.id, "Stale run finished; result dropped (fenced)."),
        RunEnd::Err(err) => match reason {
            Some(CancelReason::SoftTimeLimit) => {
                count(s, &msg.task);
                let e = TaskError::soft_time_limit(soft);
                finish(
                    s,
                    &base,
                    &lease,
                    TaskState::Failure,
                    e.to_exception(),
                    Some(e.traceback()),
                )
                .await;
            }
            Some(r) => settle_killed(s, &base, &lease, r).await,
            None => fail_or_retry(s, &base, &msg, &lease, &opts.retry, err).await,
        },
        RunEnd::Panicked(text) => {
            warn!(task_id = %msg.id, panic = %text, "Task panicked.");
            count(s, &msg.task);
            let e = TaskError::panicked(format!("task panicked: {text}"));
            finish(
                s,
                &base,
                &lease,
                TaskState::Failure,
                e.to_exception(),
                Some(e.traceback()),
            )
            .await;
        }
        RunEnd::HardLimit(limit) => {
            warn!(task_id = %msg.id, limit_s = limit, "Hard time limit reached; run abandoned.");
            ctrl.cancel(CancelReason::SoftTimeLimit);
            count(s, &msg.task);
            let e = TaskError::time_limit(limit);
            finish(
                s,
                &base,
                &lease,
                TaskState::Failure,
                e.to_exception(),
                Some(e.traceback()),
            )
            .await;
        }
        RunEnd::Killed(r) => settle_killed(s, &base, &lease, r).await,
    }
}

/// Ends a run that was stopped from outside.
async fn settle_killed(s: &Arc<Shared>, base: &MetaBase, lease: &LeaseRef, reason: CancelReason) {
    match reason {
        CancelReason::Revoked => {
            info!(task_id = %lease.task_id, "Running task revoked.");
            finish(
                s,
                base,
                lease,
                TaskState::Revoked,
                TaskError::revoked("terminated").to_exception(),
                None,
            )
            .await;
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
            let e = TaskError::soft_time_limit(0.0);
            finish(
                s,
                base,
                lease,
                TaskState::Failure,
                e.to_exception(),
                Some(e.traceback()),
            )
            .await;
        }
    }
}

async fn fail_or_retry(
    s: &Arc<Shared>,
    base: &MetaBase,
    msg: &TaskMessage,
    lease: &LeaseRef,
    policy: &crate::task::RetryPolicy,
    err: TaskError,
) {
    let delay = match err.retry {
        RetryHint::Never => None,
        RetryHint::Policy => Some(policy.delay(msg.retries)),
        RetryHint::After(secs) => Some(Duration::from_secs_f64(secs)),
    };
    match delay {
        Some(delay) if msg.retries < policy.max_retries => {
            let eta = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
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
        _ => {
            debug!(task_id = %msg.id, error = %err, "Task failed.");
            count(s, &msg.task);
            finish(
                s,
                base,
                lease,
                TaskState::Failure,
                err.to_exception(),
                Some(err.traceback()),
            )
            .await;
        }
    }
}

/// Stores a terminal state and acks, atomically and fenced by the lease.
async fn finish(
    s: &Arc<Shared>,
    base: &MetaBase,
    lease: &LeaseRef,
    status: TaskState,
    result: Value,
    traceback: Option<String>,
) {
    let mut meta = base.meta(status, result);
    meta.traceback = traceback;
    let mut tries = 0;
    loop {
        match s.backend.complete(&meta, lease).await {
            Ok(StoreOutcome::Fenced) => {
                info!(task_id = %lease.task_id, "Result dropped: another run owns the task now.");
                return;
            }
            Ok(_) => return,
            Err(BackendError::Unavailable(e)) if tries < 5 => {
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

async fn ack(s: &Arc<Shared>, lease: &LeaseRef) {
    match s.broker.ack(lease).await {
        Ok(true) => {}
        Ok(false) => debug!(task_id = %lease.task_id, "Ack after lease loss ignored."),
        Err(e) => {
            warn!(task_id = %lease.task_id, error = %e, "Ack failed; the task may be redelivered.")
        }
    }
}

/// Stores a state fenced by `lease`. `None` when the backend failed (logged).
async fn store(s: &Arc<Shared>, meta: &ResultMeta, lease: &LeaseRef) -> Option<StoreOutcome> {
    let mut tries = 0;
    loop {
        match s.backend.store(meta, Some(lease)).await {
            Ok(o) => return Some(o),
            Err(BackendError::Unavailable(e)) if tries < 5 => {
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

fn count(s: &Arc<Shared>, name: &str) {
    *s.totals
        .lock()
        .expect("totals lock")
        .entry(name.to_owned())
        .or_default() += 1;
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The fields every meta of one message shares.
#[derive(Clone)]
struct MetaBase {
    task_id: String,
    name: String,
    worker: String,
    retries: u32,
    queue: String,
    parent_id: Option<String>,
}

impl MetaBase {
    fn new(s: &Shared, m: &TaskMessage) -> Self {
        Self {
            task_id: m.id.clone(),
            name: m.task.clone(),
            worker: s.cfg.node.clone(),
            retries: m.retries,
            queue: m.queue.clone(),
            parent_id: m.parent_id.clone(),
        }
    }

    fn meta(&self, status: TaskState, result: Value) -> ResultMeta {
        let mut m = ResultMeta::new(&self.task_id, status, result);
        m.name = Some(self.name.clone());
        m.worker = Some(self.worker.clone());
        m.retries = Some(self.retries);
        m.queue = Some(self.queue.clone());
        m.parent_id = self.parent_id.clone();
        m
    }

    fn error(&self, status: TaskState, e: &TaskError) -> ResultMeta {
        let mut m = self.meta(status, e.to_exception());
        m.traceback = Some(e.traceback());
        m
    }
}

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

async fn renew_loop(s: Arc<Shared>, stop: CancellationToken) {
    let period = (s.cfg.lease / 3).max(Duration::from_millis(50));
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
        let leases: Vec<LeaseRef> = s
            .runs
            .lock()
            .expect("runs lock")
            .values()
            .map(|r| r.lease.clone())
            .collect();
        if leases.is_empty() {
            last_ok = Instant::now();
            continue;
        }
        match s.broker.renew(&leases, s.cfg.lease).await {
            Ok(lost) => {
                last_ok = Instant::now();
                let runs = s.runs.lock().expect("runs lock");
                for l in lost {
                    if let Some(r) = runs.get(&l.delivery_tag) {
                        warn!(task_id = %l.task_id, "Lease lost; stopping the run.");
                        r.ctrl.kill(CancelReason::LeaseLost);
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "Lease renewal failed.");
                if last_ok.elapsed() >= s.cfg.lease {
                    // Our leases have run out: other workers may own these tasks now.
                    for r in s.runs.lock().expect("runs lock").values() {
                        r.ctrl.kill(CancelReason::LeaseLost);
                    }
                }
            }
        }
    }
}

async fn control_loop(s: Arc<Shared>, stop: CancellationToken) {
    let mut cursor = loop {
        match s.broker.revocations_since(u64::MAX).await {
            Ok((_, c)) => break c,
            Err(e) => {
                warn!(error = %e, "Cannot read the revocation log yet.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    // Revocations are pushed by some brokers; the poll is then only a safety net.
    let poll = if s.broker.pushes_wakeups() {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(250)
    };
    loop {
        tokio::select! {
            _ = s.broker.wait_for_work(&[], poll) => {}
            _ = stop.cancelled() => return,
        }
        let (revs, next) = match s.broker.revocations_since(cursor).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "Reading revocations failed.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        cursor = next;
        for rev in revs {
            let ctrls: Vec<Arc<RunControl>> = s
                .runs
                .lock()
                .expect("runs lock")
                .values()
                .filter(|r| r.lease.task_id == rev.task_id)
                .map(|r| r.ctrl.clone())
                .collect();
            for ctrl in ctrls {
                info!(task_id = %rev.task_id, terminate = rev.terminate, "Cancelling revoked task.");
                if rev.terminate {
                    ctrl.kill(CancelReason::Revoked);
                } else {
                    ctrl.cancel(CancelReason::Revoked);
                    let grace = s.cfg.revoke_grace;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        ctrl.kill(CancelReason::Revoked);
                    });
                }
            }
        }
    }
}

/// The worker's current self-description.
fn report(s: &Shared) -> WorkerReport {
    let active = s
        .runs
        .lock()
        .expect("runs lock")
        .iter()
        .filter_map(|(tag, r)| {
            r.ctrl
                .active
                .lock()
                .expect("active lock")
                .as_ref()
                .map(|a| a.render(tag))
        })
        .collect();
    WorkerReport {
        node: s.cfg.node.clone(),
        hostname: crate::hostname(),
        pid: std::process::id(),
        queues: s.cfg.queues.clone(),
        concurrency: s.cfg.concurrency,
        prefetch_count: s.cfg.concurrency * s.cfg.prefetch_multiplier.max(1),
        registered: s.registry.names(),
        active,
        total: s.totals.lock().expect("totals lock").clone(),
        started_at: s.started_at,
        heartbeat_at: Utc::now(),
        sw_ident: "afterview".into(),
        sw_ver: env!("CARGO_PKG_VERSION").into(),
        freq: s.cfg.heartbeat.as_secs_f64(),
    }
}

async fn heartbeat_loop(s: Arc<Shared>, stop: CancellationToken) {
    // A full heartbeat every period; sooner (at most every 250 ms) when the set of running
    // tasks changed, so `inspect active` is fresh without a write per task at high rates.
    let mut last = Instant::now() - s.cfg.heartbeat;
    let mut last_active: Vec<String> = vec![];
    let mut last_done = 0u64;
    loop {
        // Runs that have started (a claimed message becomes active once its run begins).
        let active: Vec<String> = {
            let mut v: Vec<String> = s
                .runs
                .lock()
                .expect("runs lock")
                .iter()
                .filter(|(_, r)| r.ctrl.active.lock().expect("active lock").is_some())
                .map(|(tag, _)| tag.clone())
                .collect();
            v.sort();
            v
        };
        // Finished-task counts too, so `inspect stats` is fresh right after a task ends.
        let done: u64 = s.totals.lock().expect("totals lock").values().sum();
        if last.elapsed() >= s.cfg.heartbeat || active != last_active || done != last_done {
            last_done = done;
            last = Instant::now();
            last_active = active;
            if let Err(e) = s.broker.heartbeat(&report(&s)).await {
                warn!(error = %e, "Heartbeat failed.");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250).min(s.cfg.heartbeat)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// How often expired leases are swept back to their queues: a fifth of the lease, so a dead
/// worker's task is back within 1.2 leases, between 100 ms and 2 s.
fn requeue_interval(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

async fn maintenance_loop(s: Arc<Shared>, stop: CancellationToken) {
    let mut last_cleanup = Instant::now() - s.cfg.cleanup_interval;
    let every = requeue_interval(s.cfg.lease);
    loop {
        match s.broker.requeue_expired().await {
            Ok(0) => {}
            Ok(n) => info!(
                count = n,
                "Messages with expired leases returned to their queues."
            ),
            Err(e) => warn!(error = %e, "Requeueing expired leases failed."),
        }
        if last_cleanup.elapsed() >= s.cfg.cleanup_interval {
            last_cleanup = Instant::now();
            match s.backend.cleanup().await {
                Ok(n) if n > 0 => debug!(count = n, "Expired results removed."),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "Result cleanup failed."),
            }
            if let Err(e) = s.broker.cleanup().await {
                warn!(error = %e, "Broker cleanup failed.");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
