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

//!
//! Where each step lives: [`admission`] (decode and refuse), [`supervise`] (slot, STARTED,
//! limits), [`settle`] (every ending as a fenced state), [`loops`] (fetch and background
//! loops), [`run`] (a held message's shared state).

mod admission;
mod loops;
mod run;
mod settle;
mod supervise;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backend::{BackendError, Broker, Delivery, LeaseRef, ResultBackend, Revocation};
use crate::result::TaskError;
use crate::task::{CancelReason, Registry};
use run::{Run, RunControl};
use settle::{MetaBase, settle_killed, settle_run, store};
use supervise::Limits;

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

struct Shared {
    cfg: WorkerConfig,
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    registry: Registry,
    /// Held messages by delivery tag and lease epoch: a message whose lease ran out while this
    /// worker still ran it (a stall longer than a lease) may come back to the same worker under
    /// the same tag at the next epoch, and each entry must stay its own run's.
    runs: Mutex<HashMap<RunKey, Run>>,
    /// Revocations the control loop read, kept for [`RECENT_KEEP`]: a claim that the broker
    /// answered just before a revocation (so its copy is not flagged) may reach `runs` after
    /// the loop read it, and a second copy of a task (a retry, a reused id) may be claimed
    /// while the first still runs. Locked only while `runs` is held.
    recent_revocations: Mutex<RecentRevocations>,
    totals: Mutex<BTreeMap<String, u64>>,
    slots: Arc<Semaphore>,
    /// Messages claimed and not yet settling: waiting for a slot or running. The prefetch
    /// window (`concurrency × prefetch_multiplier`) bounds this count.
    held: AtomicUsize,
    /// Messages whose run has ended and whose final state is being stored (and acked). They
    /// hold no slot and are no longer prefetched, so they do not count against the window
    /// (Celery acks before the run and counts only unacked messages); at most a window of
    /// them at once, so a slow backend stops the fetching instead of piling results up.
    settling: AtomicUsize,
    freed: Notify,
    /// Fired when a graceful shutdown begins: messages claimed but not started are given back
    /// instead of taking the slots that running tasks free during the grace period.
    draining: CancellationToken,
    started_at: chrono::DateTime<Utc>,
}

/// A held message's key: its delivery tag and lease epoch.
type RunKey = (String, u64);

fn run_key(lease: &LeaseRef) -> RunKey {
    (lease.delivery_tag.clone(), lease.epoch)
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
                recent_revocations: Mutex::default(),
                totals: Mutex::default(),
                held: AtomicUsize::new(0),
                settling: AtomicUsize::new(0),
                freed: Notify::new(),
                draining: CancellationToken::new(),
                started_at: crate::time::now(),
            }),
        }
    }

    /// The node name.
    pub fn node(&self) -> &str {
        &self.shared.cfg.node
    }

    /// Runs until `shutdown` fires and every held message is finished or given back.
    ///
    /// The worker's loops run as a task of the current runtime, not on the thread that awaits
    /// this: awaited from `block_on` (as `afterview worker` does), the fetch loop would sit on
    /// the main thread and every claim and finished run would cross threads (a context switch
    /// each; 8 % of the worker's CPU in a drain profile).
    pub async fn run(self, shutdown: Shutdown) -> Result<(), BackendError> {
        match tokio::spawn(self.run_loops(shutdown)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(BackendError::unavailable(format!(
                "the worker was stopped: {e}"
            ))),
        }
    }

    async fn run_loops(self, shutdown: Shutdown) -> Result<(), BackendError> {
        let s = self.shared;
        info!(
            node = %s.cfg.node,
            queues = %s.cfg.queues.join(","),
            concurrency = s.cfg.concurrency,
            broker = s.broker.kind(),
            "Worker started."
        );
        // The revocation log's position is read before the first claim: a revocation recorded
        // after it reaches the control loop, one recorded before it is flagged at claim (while
        // its tombstone is kept; a message whose id the broker could not read is checked by
        // its own id at admission). Read later (a slow or failed first read), a task revoked
        // while running in between would be missed.
        let Some(cursor) = loops::revocation_cursor(&s, &shutdown.graceful).await else {
            info!(node = %s.cfg.node, "Worker stopped before its first claim.");
            return Ok(());
        };
        let bg = CancellationToken::new();
        let mut loops = JoinSet::new();
        loops.spawn(loops::renew_loop(s.clone(), bg.clone()));
        loops.spawn(loops::control_loop(s.clone(), cursor, bg.clone()));
        loops.spawn(loops::heartbeat_loop(s.clone(), bg.clone()));
        loops.spawn(loops::maintenance_loop(s.clone(), bg.clone()));

        let mut runs = JoinSet::new();
        loops::fetch_loop(&s, &shutdown, &mut runs).await;
        // Off the idle lists first: a message published during the drain goes to a live
        // worker (bounded: a broker that does not answer leaves it to the lease).
        match tokio::time::timeout(STOP_TAKING, s.broker.stop_taking(&s.cfg.node)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "Could not leave the idle workers' lists."),
            Err(_) => warn!("The broker did not answer when leaving the idle workers' lists."),
        }
        s.draining.cancel();
        drain(&s, &shutdown, &mut runs).await;
        bg.cancel();
        while loops.join_next().await.is_some() {}
        if let Err(e) = s.broker.worker_gone(&s.cfg.node).await {
            warn!(error = %e, "Could not remove the worker record.");
        }
        info!(node = %s.cfg.node, "Worker stopped.");
        Ok(())
    }
}

/// How long a stopping worker waits for the broker to take it off the idle lists.
const STOP_TAKING: Duration = Duration::from_secs(2);

/// Lets running tasks finish within the grace period, then gives the rest back. Messages not
/// started yet are given back at once (they no longer wait for a slot: `draining`), as a
/// Celery worker's warm shutdown restores its reserved messages.
async fn drain(s: &Arc<Shared>, shutdown: &Shutdown, runs: &mut JoinSet<()>) {
    let deadline = Instant::now() + s.cfg.shutdown_grace;
    while s.in_hand() > 0 {
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
}

impl Shared {
    /// Every message the worker holds: prefetched, running or settling.
    fn in_hand(&self) -> usize {
        // `settling` is raised before `held` is lowered, so a message moving between the two
        // is never missed.
        self.held.load(Ordering::SeqCst) + self.settling.load(Ordering::SeqCst)
    }

    /// A run ended: its message moves from the window to the settling count, and the fetch
    /// loop may claim in its place while its state is stored.
    fn begin_settling(&self, ctrl: &RunControl) {
        if !ctrl.settling.swap(true, Ordering::SeqCst) {
            self.settling.fetch_add(1, Ordering::SeqCst);
            self.held.fetch_sub(1, Ordering::SeqCst);
            self.freed.notify_one();
        }
    }

    /// The delivery of `ctrl` is done with: its count drops, wherever it was.
    fn release(&self, ctrl: &RunControl) {
        if ctrl.settling.load(Ordering::SeqCst) {
            self.settling.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
        self.freed.notify_waiters();
        self.freed.notify_one();
    }

    /// Counts a finished run of `name` (what `inspect stats` shows).
    fn count(&self, name: &str) {
        *self
            .totals
            .lock()
            .expect("totals lock")
            .entry(name.to_owned())
            .or_default() += 1;
    }

    /// The controls of the held runs a revocation read from the log applies to. The revocation
    /// is also remembered (under the same lock that registers runs), so that a delivery of the
    /// task registered afterwards is refused by [`Shared::register`].
    fn controls_of(&self, rev: &Revocation) -> Vec<Arc<RunControl>> {
        let runs = self.runs.lock().expect("runs lock");
        self.recent_revocations
            .lock()
            .expect("recent revocations lock")
            .remember(rev, Instant::now());
        runs.values()
            .filter(|r| r.lease.task_id == rev.task_id)
            .map(|r| r.ctrl.clone())
            .collect()
    }

    /// Registers a claimed delivery as held; a delivery of a task whose revocation the control
    /// loop already read is flagged as revoked, as a later claim is.
    ///
    /// A run of the same message at an older epoch has lost its lease (the broker gave the
    /// message out again, to this worker): it is stopped now rather than at its next renewal.
    fn register(&self, d: &mut Delivery, ctrl: &Arc<RunControl>, leased_at: Instant) {
        let mut runs = self.runs.lock().expect("runs lock");
        if d.revoked.is_none() {
            d.revoked = self.recently_revoked(&d.lease.task_id);
        }
        // A first delivery, nearly every one, has no earlier epoch: no scan.
        if d.lease.epoch > 1 {
            let older =
                |(tag, epoch): &RunKey| *tag == d.lease.delivery_tag && *epoch < d.lease.epoch;
            for r in runs.iter().filter(|(k, _)| older(k)).map(|(_, r)| r) {
                warn!(task_id = %r.lease.task_id, "The message came back after its lease ran out; stopping the earlier run.");
                r.ctrl.kill(CancelReason::LeaseLost);
            }
        }
        runs.insert(
            run_key(&d.lease),
            Run {
                lease: d.lease.clone(),
                ctrl: ctrl.clone(),
                leased_at,
            },
        );
    }

    /// The revocation of `task_id` the control loop read lately, if any. Called with `runs`
    /// held.
    fn recently_revoked(&self, task_id: &str) -> Option<Revocation> {
        self.recent_revocations
            .lock()
            .expect("recent revocations lock")
            .get(task_id, Instant::now())
    }
}

/// How long a revocation read from the log is remembered: far longer than a claim's reply takes
/// to reach the fetch loop.
const RECENT_KEEP: Duration = Duration::from_secs(30);
/// At most this many are remembered (a mass revocation of queued tasks).
const RECENT_MAX: usize = 100_000;

/// Revocations read lately, oldest first.
#[derive(Default)]
struct RecentRevocations {
    by_id: HashMap<String, Revocation>,
    order: VecDeque<(Instant, String)>,
}

impl RecentRevocations {
    fn remember(&mut self, rev: &Revocation, now: Instant) {
        self.expire(now);
        if self.order.len() >= RECENT_MAX
            && let Some((_, id)) = self.order.pop_front()
        {
            self.by_id.remove(&id);
        }
        if self
            .by_id
            .insert(rev.task_id.clone(), rev.clone())
            .is_none()
        {
            self.order.push_back((now, rev.task_id.clone()));
        }
    }

    fn get(&mut self, task_id: &str, now: Instant) -> Option<Revocation> {
        if self.order.is_empty() {
            return None;
        }
        self.expire(now);
        self.by_id.get(task_id).cloned()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && now.duration_since(*at) >= RECENT_KEEP
        {
            let (_, id) = self.order.pop_front().expect("a front entry");
            self.by_id.remove(&id);
        }
        if self.order.is_empty() && self.order.capacity() > 1024 {
            // After a mass revocation: the memory goes back.
            self.order = VecDeque::new();
            self.by_id = HashMap::new();
        }
    }
}

/// One delivery from claim to settlement: admission, a slot, the run under supervision, and
/// its end stored fenced by the lease.
async fn process(s: &Arc<Shared>, d: Delivery, ctrl: &Arc<RunControl>, claimed_at: Instant) {
    let Some(admission::Admitted { msg, handler, base }) = admission::admit(s, &d, ctrl).await
    else {
        return;
    };
    let lease = &d.lease;
    // The task's own code runs here outside its run (its options, its arguments' decoding):
    // a panic there fails the task as a panic in the run does.
    let opts = match catch_unwind(AssertUnwindSafe(|| handler.options())) {
        Ok(o) => o,
        Err(p) => return panicked_outside_run(s, &base, lease, "in its options", p).await,
    };
    let permit = match supervise::acquire_slot(s, &base, lease, ctrl).await {
        Ok(p) => p,
        Err(reason) => return settle_killed(s, &base, lease, reason).await,
    };
    let limits = Limits::of(&msg, &opts);
    let (args, kwargs) = (msg.args.clone(), msg.kwargs.clone());
    let Some(begun) =
        supervise::begin(s, msg, &base, lease, ctrl, (claimed_at, d.redelivered)).await
    else {
        return;
    };
    if let Some(reason) = ctrl.reason() {
        // Revoked or shut down between claim and start.
        return settle_killed(s, &base, lease, reason).await;
    }
    let fut = match catch_unwind(AssertUnwindSafe(|| {
        handler.call(begun.ctx.clone(), args, kwargs)
    })) {
        Ok(Ok(f)) => f,
        Ok(Err(err)) => return invalid_arguments(s, &d, &base, err).await,
        Err(p) => {
            return panicked_outside_run(s, &base, lease, "decoding its arguments", p).await;
        }
    };
    let end = supervise::supervise(s, fut, ctrl, lease, &begun, limits).await;
    drop(permit);
    s.begin_settling(ctrl);
    ctrl.supersede_start().await;
    let reason = begun.ctx.cancel_reason();
    settle_run(
        s,
        &base,
        &begun.msg,
        lease,
        &opts.retry,
        limits,
        (end, reason),
    )
    .await;
}

/// The task's code panicked before its run (`during`): FAILURE, as a panic in the run.
async fn panicked_outside_run(
    s: &Arc<Shared>,
    base: &MetaBase,
    lease: &LeaseRef,
    during: &str,
    p: Box<dyn std::any::Any + Send>,
) {
    let text = supervise::panic_text(p);
    warn!(task_id = %lease.task_id, panic = %text, during, "Task panicked outside its run.");
    let e = TaskError::panicked(format!("task panicked {during}: {text}"));
    settle::fail(s, base, lease, &e).await;
}

/// Arguments the handler refuses: FAILURE, and the message set aside as a dead letter.
async fn invalid_arguments(s: &Arc<Shared>, d: &Delivery, base: &MetaBase, err: TaskError) {
    warn!(task_id = %d.lease.task_id, error = %err.message, "Invalid task arguments.");
    let meta = base.error(crate::result::TaskState::Failure, &err);
    if store(s, &meta, &d.lease).await == Some(crate::backend::StoreOutcome::Stored)
        && let Err(e) = s
            .broker
            .dead_letter(
                Some(&d.lease),
                &d.queue,
                &d.raw,
                &err.message,
                Some(&d.lease.task_id),
            )
            .await
    {
        warn!(error = %e, "Could not dead-letter a message with invalid arguments.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(r: Option<Revocation>) -> Option<String> {
        r.map(|r| r.task_id)
    }

    fn rev(id: &str) -> Revocation {
        Revocation {
            task_id: id.into(),
            terminate: false,
            at: crate::time::now(),
            seq: 1,
        }
    }

    #[test]
    fn recent_revocations_are_kept_for_a_while_then_dropped() {
        let t0 = Instant::now();
        let mut u = RecentRevocations::default();
        assert_eq!(id(u.get("a", t0)), None);
        u.remember(&rev("a"), t0);
        u.remember(&rev("a"), t0 + Duration::from_secs(1));
        assert_eq!(u.order.len(), 1, "one entry per task id");
        u.remember(&rev("b"), t0 + Duration::from_secs(10));
        assert_eq!(
            id(u.get("a", t0 + Duration::from_secs(29))),
            Some("a".into())
        );
        assert_eq!(id(u.get("c", t0 + Duration::from_secs(29))), None);
        assert_eq!(id(u.get("a", t0 + RECENT_KEEP)), None, "kept for a while");
        assert_eq!(
            id(u.get("b", t0 + RECENT_KEEP)),
            Some("b".into()),
            "only the old ones go"
        );
        assert_eq!(u.by_id.len(), 1);
        assert_eq!(id(u.get("b", t0 + RECENT_KEEP * 2)), None);
        assert!(u.by_id.is_empty() && u.order.is_empty());
    }

    fn delivery(task_id: &str, tag: &str) -> Delivery {
        Delivery {
            lease: crate::backend::LeaseRef {
                task_id: task_id.into(),
                delivery_tag: tag.into(),
                epoch: 1,
            },
            queue: "celery".into(),
            raw: vec![],
            deliveries: 1,
            redelivered: false,
            revoked: None,
        }
    }

    /// A claim the broker answered just before a revocation (its copy not flagged) that
    /// reaches `runs` after the control loop read that revocation is refused, as is a second
    /// copy of a task whose held run it cancels; other tasks' deliveries are untouched.
    #[tokio::test]
    async fn a_claim_that_crossed_a_revocation_is_refused_when_registered() {
        let mem = Arc::new(crate::memory::MemoryBackend::new(Duration::from_secs(60)));
        let w = Worker::new(
            WorkerConfig::default(),
            mem.clone(),
            mem,
            Registry::with_builtins(),
        );
        let s = &w.shared;
        let ctrl = Arc::new(RunControl::default());
        let mut held = delivery("held", "tag-1");
        s.register(&mut held, &ctrl, Instant::now());
        assert_eq!(s.controls_of(&rev("held")).len(), 1, "a held run is found");
        assert!(s.controls_of(&rev("crossing")).is_empty());
        let mut late = delivery("crossing", "tag-2");
        s.register(&mut late, &ctrl, Instant::now());
        assert_eq!(late.revoked.map(|r| r.task_id), Some("crossing".into()));
        let mut other = delivery("other", "tag-3");
        s.register(&mut other, &ctrl, Instant::now());
        assert!(other.revoked.is_none());
        let mut again = delivery("held", "tag-4");
        s.register(&mut again, &ctrl, Instant::now());
        assert_eq!(
            again.revoked.map(|r| r.task_id),
            Some("held".into()),
            "a second copy of a task whose run was cancelled (a retry, a reused id)"
        );
    }

    #[test]
    fn recent_revocations_are_bounded() {
        let t0 = Instant::now();
        let mut u = RecentRevocations::default();
        for i in 0..RECENT_MAX + 5 {
            u.remember(&rev(&i.to_string()), t0);
        }
        assert_eq!(u.order.len(), RECENT_MAX);
        assert_eq!(u.by_id.len(), RECENT_MAX);
        assert_eq!(id(u.get("0", t0)), None, "the oldest went first");
        assert!(u.get(&(RECENT_MAX + 4).to_string(), t0).is_some());
    }
}
