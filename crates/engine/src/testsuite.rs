//! The conformance suite every broker/result backend must pass.
//!
//! A backend crate instantiates it with [`broker_conformance!`](crate::broker_conformance)
//! and a factory `async fn(Duration) -> Fixture` (the argument is the result expiry). Each case
//! is its own `#[tokio::test]`. Durable backends also instantiate the `durable` cases, whose
//! fixture can reopen the same storage. A backend that keeps no time of its own (nothing
//! outside the process expires keys or measures leases) runs the suite with
//! `broker_conformance!(paused factory)`: on one thread with tokio's clock paused and the
//! engine's clock ([`crate::time::now`]) following it, so waits cost no wall time and
//! nothing depends on the machine's speed.
//!
//! The cases cover the broker contract (ordering, ETA, leases, fencing, retries, revocations,
//! purge, dead letters, presence), the result contract (store, terminal guard, expiry, watch)
//! and the worker runtime end to end on that backend (success, progress, unknown tasks, bad
//! arguments, malformed messages, retries, time limits, revocation, shutdown).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::backend::{Broker, ClaimRequest, Delivery, ResultBackend, StoreOutcome, WorkerReport};
use crate::client::Client;
use crate::message::{SendOptions, TaskMessage, TimeLimits};
use crate::result::TaskError;
use crate::result::{ResultMeta, TaskState};
use crate::task::{Registry, Task, TaskContext};
use crate::worker::{Shutdown, Worker, WorkerConfig};

mod gated;

/// Reopens the same storage (durable backends only).
pub type Reopen = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Fixture> + Send>> + Send + Sync>;

/// What a backend under test provides.
#[derive(Clone)]
pub struct Fixture {
    pub broker: Arc<dyn Broker>,
    /// The result backend (usually the same object).
    pub backend: Arc<dyn ResultBackend>,
    /// Reopens the same storage, as a restarted process would.
    pub reopen: Option<Reopen>,
}

/// Instantiates the suite: `broker_conformance!(factory)` for every backend, and
/// `broker_conformance!(durable factory)` for those that persist.
#[macro_export]
macro_rules! broker_conformance {
    (durable $factory:path) => {
        $crate::broker_conformance!(@cases [wall] $factory; survives_reopen);
    };
    (paused $factory:path) => {
        $crate::broker_conformance!(@all [paused] $factory);
    };
    (@all [$clock:ident] $factory:path) => {
        $crate::broker_conformance!(@cases [$clock] $factory;
            claim_orders_by_priority_then_fifo,
            claim_respects_max_and_queues,
            claim_prefers_earlier_queues_at_equal_priority,
            eta_is_not_claimed_early,
            expired_lease_is_redelivered_and_fenced,
            renewal_keeps_the_lease,
            ack_is_fenced,
            release_gives_the_message_back,
            retry_is_atomic,
            revoke_removes_queued_and_delayed_copies,
            revoke_flags_running_and_late_copies,
            revocation_log_has_a_cursor,
            results_keep_terminal_states,
            results_expire,
            watch_yields_current_then_changes,
            watch_gives_the_current_state_after_a_dropped_first_read,
            watch_ends_on_a_revocation_between_retries,
            watch_follows_the_attempt_after_a_countless_retry,
            purge_and_queue_stats,
            dead_letters_are_kept,
            raw_messages_are_stored_as_given,
            heartbeats_list_workers,
            concurrent_claims_never_share_a_message,
            worker_runs_tasks_and_reports_progress,
            worker_fails_unknown_tasks_and_bad_arguments,
            worker_sets_malformed_messages_aside,
            worker_sets_aside_ids_that_are_not_utf8,
            expired_leases_come_back_whatever_numbers_they_hold,
            worker_retries_with_backoff,
            worker_enforces_soft_and_hard_limits,
            worker_revokes_queued_delayed_and_running,
            worker_follows_revocations_from_before_its_first_log_read,
            worker_shutdown_gives_unfinished_tasks_back,
            worker_shutdown_gives_back_messages_not_started,
            worker_takes_nothing_more_once_stopping,
            worker_keeps_the_newer_run_of_a_message_it_got_back,
            worker_stops_a_run_when_its_lease_runs_out_unrenewed,
            worker_survives_one_renewal_that_never_answers,
            worker_fails_a_task_whose_arguments_panic_in_decoding,
            worker_expires_tasks,
            worker_marks_waiting_tasks_received,
            worker_writes_started_only_for_longer_runs,
        );
    };
    (@cases [wall] $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testsuite::$name(&$factory).await;
            }
        )*
    };
    (@cases [paused] $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(start_paused = true)]
            async fn $name() {
                $crate::time::follow_tokio_clock();
                $crate::testsuite::$name(&$factory).await;
            }
        )*
    };
    ($factory:path) => {
        $crate::broker_conformance!(@all [wall] $factory);
    };
}

/// A factory as the macro receives it.
pub trait Factory: Fn(Duration) -> Self::Fut {
    /// Its future.
    type Fut: Future<Output = Fixture>;
}
impl<F, Fut> Factory for F
where
    F: Fn(Duration) -> Fut,
    Fut: Future<Output = Fixture>,
{
    type Fut = Fut;
}

const DAY: Duration = Duration::from_secs(86_400);

fn msg(task: &str, queue: &str, opts: SendOptions) -> TaskMessage {
    TaskMessage::new(task, vec![], Map::new(), queue, opts).expect("valid test message")
}

fn prio(p: u8) -> SendOptions {
    SendOptions {
        priority: Some(p),
        ..Default::default()
    }
}

fn req(queues: &[&str], max: usize, lease_ms: u64) -> ClaimRequest {
    ClaimRequest {
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        max,
        worker: "test@host".into(),
        lease: Duration::from_millis(lease_ms),
    }
}

fn ids(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.lease.task_id.clone()).collect()
}

fn kw(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Lower priority numbers first, FIFO within a priority.
pub async fn claim_orders_by_priority_then_fifo(f: &impl Factory) {
    let fx = f(DAY).await;
    let a = msg("t", "q", prio(5));
    let b = msg("t", "q", prio(0));
    let c = msg("t", "q", prio(0));
    let d = msg("t", "q", prio(9));
    for m in [&a, &b, &c, &d] {
        fx.broker.publish(m).await.unwrap();
        sleep_ms(2).await;
    }
    let got = fx.broker.claim(&req(&["q"], 10, 10_000)).await.unwrap();
    assert_eq!(ids(&got), vec![b.id, c.id, a.id, d.id]);
}

/// A claim returns at most `max` messages, only from the queues asked for.
/// At equal priority a claim takes from the worker's earlier queues first (`-Q urgent,bulk`:
/// an urgent message published after a bulk backlog is next), and a queue named twice is
/// read once.
pub async fn claim_prefers_earlier_queues_at_equal_priority(f: &impl Factory) {
    let fx = f(DAY).await;
    let b = &fx.broker;
    let (m1, m2) = (
        msg("t", "bulk", SendOptions::default()),
        msg("t", "bulk", SendOptions::default()),
    );
    let u = msg("t", "urgent", SendOptions::default());
    for m in [&m1, &m2, &u] {
        b.publish(m).await.unwrap();
        sleep_ms(2).await;
    }
    let first = b.claim(&req(&["urgent", "bulk"], 1, 10_000)).await.unwrap();
    assert_eq!(ids(&first), vec![u.id.clone()]);
    let rest = b
        .claim(&req(&["urgent", "bulk", "bulk"], 4, 10_000))
        .await
        .unwrap();
    assert_eq!(ids(&rest), vec![m1.id.clone(), m2.id.clone()]);
}

pub async fn claim_respects_max_and_queues(f: &impl Factory) {
    let fx = f(DAY).await;
    for q in ["q1", "q1", "q2"] {
        fx.broker
            .publish(&msg("t", q, SendOptions::default()))
            .await
            .unwrap();
    }
    let one = fx.broker.claim(&req(&["q1"], 1, 10_000)).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].queue, "q1");
    let rest = fx.broker.claim(&req(&["q1"], 10, 10_000)).await.unwrap();
    assert_eq!(rest.len(), 1, "only one q1 message left");
    let none = fx.broker.claim(&req(&["q3"], 10, 10_000)).await.unwrap();
    assert!(none.is_empty());
    let q2 = fx
        .broker
        .claim(&req(&["q1", "q2"], 10, 10_000))
        .await
        .unwrap();
    assert_eq!(q2.len(), 1);
    assert_eq!(q2[0].queue, "q2");
}

/// Delayed messages wait in the broker until due, and `wait_for_work` wakes for them.
pub async fn eta_is_not_claimed_early(f: &impl Factory) {
    let fx = f(DAY).await;
    let m = msg(
        "t",
        "q",
        SendOptions {
            countdown: Some(0.4),
            ..Default::default()
        },
    );
    fx.broker.publish(&m).await.unwrap();
    assert!(
        fx.broker
            .claim(&req(&["q"], 10, 10_000))
            .await
            .unwrap()
            .is_empty()
    );
    let stats = fx.broker.queue_stats(Some(&["q".into()])).await.unwrap();
    assert_eq!((stats[0].ready, stats[0].scheduled), (0, 1));
    let t0 = tokio::time::Instant::now();
    let mut got = vec![];
    while got.is_empty() && t0.elapsed() < Duration::from_secs(5) {
        fx.broker
            .wait_for_work(&["q".into()], Duration::from_secs(2))
            .await;
        got = fx.broker.claim(&req(&["q"], 10, 10_000)).await.unwrap();
    }
    assert_eq!(ids(&got), vec![m.id]);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "claimed after {waited:?}, before its ETA"
    );
    assert!(
        waited < Duration::from_millis(2500),
        "claimed only after {waited:?}"
    );
}

/// A lost lease sends the message back with a new epoch; the old holder is fenced out.
pub async fn expired_lease_is_redelivered_and_fenced(f: &impl Factory) {
    let fx = f(DAY).await;
    let m = msg("t", "q", SendOptions::default());
    fx.broker.publish(&m).await.unwrap();
    let first = fx
        .broker
        .claim(&req(&["q"], 1, 150))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        fx.broker.requeue_expired().await.unwrap(),
        0,
        "lease still valid"
    );
    assert!(
        fx.broker
            .claim(&req(&["q"], 1, 150))
            .await
            .unwrap()
            .is_empty(),
        "leased message is not claimable"
    );
    sleep_ms(250).await;
    assert_eq!(fx.broker.requeue_expired().await.unwrap(), 1);
    let second = fx
        .broker
        .claim(&req(&["q"], 1, 10_000))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.lease.task_id, m.id);
    assert!(second.lease.epoch > first.lease.epoch);
    assert!(second.redelivered);
    assert_eq!(second.deliveries, 2);
    let stale = ResultMeta::new(&m.id, TaskState::Success, json!("stale"));
    assert_eq!(
        fx.backend.store(&stale, Some(&first.lease)).await.unwrap(),
        StoreOutcome::Fenced
    );
    assert!(
        !fx.broker.ack(&first.lease).await.unwrap(),
        "stale ack is refused"
    );
    let fresh = ResultMeta::new(&m.id, TaskState::Success, json!("fresh"));
    assert_eq!(
        fx.backend.store(&fresh, Some(&second.lease)).await.unwrap(),
        StoreOutcome::Stored
    );
    assert!(fx.broker.ack(&second.lease).await.unwrap());
    assert_eq!(
        fx.backend.get(&m.id).await.unwrap().unwrap().result,
        json!("fresh")
    );
}

/// Renewing a lease keeps the message from being redelivered.
pub async fn renewal_keeps_the_lease(f: &impl Factory) {
    let fx = f(DAY).await;
    fx.broker
        .publish(&msg("t", "q", SendOptions::default()))
        .await
        .unwrap();
    let d = fx
        .broker
        .claim(&req(&["q"], 1, 300))
        .await
        .unwrap()
        .remove(0);
    for _ in 0..4 {
        sleep_ms(150).await;
        let lost = fx
            .broker
            .renew(std::slice::from_ref(&d.lease), Duration::from_millis(300))
            .await
            .unwrap();
        assert!(lost.is_empty());
        assert_eq!(fx.broker.requeue_expired().await.unwrap(), 0);
    }
    assert!(fx.broker.ack(&d.lease).await.unwrap());
    let lost = fx
        .broker
        .renew(std::slice::from_ref(&d.lease), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(
        lost,
        vec![d.lease.clone()],
        "an acked lease cannot be renewed"
    );
}

/// Ack removes the message once; a second ack is refused.
pub async fn ack_is_fenced(f: &impl Factory) {
    let fx = f(DAY).await;
    fx.broker
        .publish(&msg("t", "q", SendOptions::default()))
        .await
        .unwrap();
    let d = fx
        .broker
        .claim(&req(&["q"], 1, 10_000))
        .await
        .unwrap()
        .remove(0);
    assert!(fx.broker.ack(&d.lease).await.unwrap());
    assert!(!fx.broker.ack(&d.lease).await.unwrap());
    let stats = fx.broker.queue_stats(Some(&["q".into()])).await.unwrap();
    assert_eq!(
        (stats[0].ready, stats[0].scheduled, stats[0].leased),
        (0, 0, 0)
    );
}

/// Release returns the message to the front of its queue, flagged as redelivered.
pub async fn release_gives_the_message_back(f: &impl Factory) {
    let fx = f(DAY).await;
    let a = msg("t", "q", SendOptions::default());
    fx.broker.publish(&a).await.unwrap();
    sleep_ms(2).await;
    fx.broker
        .publish(&msg("t", "q", SendOptions::default()))
        .await
        .unwrap();
    let d = fx
        .broker
        .claim(&req(&["q"], 1, 10_000))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(d.lease.task_id, a.id);
    assert!(fx.broker.release(&d.lease).await.unwrap());
    assert!(
        !fx.broker.release(&d.lease).await.unwrap(),
        "released lease is no longer held"
    );
    let again = fx
        .broker
        .claim(&req(&["q"], 1, 10_000))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        again.lease.task_id, a.id,
        "the released message keeps its place"
    );
    assert!(again.redelivered);
}

/// A retry acks the old copy and schedules the new one in one step.
pub async fn retry_is_atomic(f: &impl Factory) {
    let fx = f(DAY).await;
    let m = msg("t", "q", SendOptions::default());
    fx.broker.publish(&m).await.unwrap();
    let d = fx
        .broker
        .claim(&req(&["q"], 1, 10_000))
        .await
        .unwrap()
        .remove(0);
    let next = m.retried(chrono::Utc::now() + chrono::Duration::milliseconds(300));
    assert!(fx.broker.retry(&d.lease, &next).await.unwrap());
    assert!(!fx.broker.ack(&d.lease).await.unwrap(), "old copy is gone");
    assert!(
        !fx.broker.retry(&d.lease, &next).await.unwrap(),
        "a stale retry is refused"
    );
    assert!(
        fx.broker
            .claim(&req(&["q"], 1, 10_000))
            .await
            .unwrap()
            .is_empty(),
        "retry waits for its ETA"
    );
    sleep_ms(400).await;
    let r = fx.broker.claim(&req(&["q"], 5, 10_000)).await.unwrap();
    assert_eq!(r.len(), 1);
    let back = TaskMessage::from_envelope(&r[0].raw, "q").unwrap();
    assert_eq!((back.id.as_str(), back.retries), (m.id.as_str(), 1));
}

/// Revoked queued and delayed copies never run; the revocation is recorded durably.
pub async fn revoke_removes_queued_and_delayed_copies(f: &impl Factory) {
    // A broker may remove revoked copies (SQLite, memory) or keep them and flag them at claim
    // (Redis, where lists are shared with Celery): either way they never come back unflagged.
    let fx = f(DAY).await;
    let a = msg("t", "q", SendOptions::default());
    let b = msg(
        "t",
        "q",
        SendOptions {
            countdown: Some(0.3),
            ..Default::default()
        },
    );
    let keep = msg("t", "q", SendOptions::default());
    for m in [&a, &b, &keep] {
        fx.broker.publish(m).await.unwrap();
    }
    let ra = fx.broker.revoke(&a.id, false, DAY).await.unwrap();
    let rb = fx.broker.revoke(&b.id, false, DAY).await.unwrap();
    assert!(!ra.running && !rb.running);
    assert!(ra.removed <= 1 && rb.removed <= 1);
    assert!(fx.broker.revocation(&a.id).await.unwrap().is_some());
    assert!(fx.broker.revocation(&keep.id).await.unwrap().is_none());
    sleep_ms(400).await;
    let got = fx.broker.claim(&req(&["q"], 10, 10_000)).await.unwrap();
    for d in &got {
        if d.lease.task_id == a.id || d.lease.task_id == b.id {
            assert!(d.revoked.is_some(), "a revoked copy is flagged at claim");
        } else {
            assert_eq!(d.lease.task_id, keep.id);
            assert!(d.revoked.is_none());
        }
    }
    assert!(got.iter().any(|d| d.lease.task_id == keep.id));
    let unknown = fx.broker.revoke("never-sent", true, DAY).await.unwrap();
    assert_eq!((unknown.removed, unknown.running), (0, false));
    assert!(
        fx.broker
            .revocation("never-sent")
            .await
            .unwrap()
            .unwrap()
            .terminate
    );
}

/// A running copy is reported as running; a copy arriving later is flagged at claim.
pub async fn revoke_flags_running_and_late_copies(f: &impl Factory) {
    let fx = f(DAY).await;
    let m = msg("t", "q", SendOptions::default());
    fx.broker.publish(&m).await.unwrap();
    let d = fx
        .broker
        .claim(&req(&["q"], 1, 10_000))
        .await
        .unwrap()
        .remove(0);
    assert!(d.revoked.is_none());
    let out = fx.broker.revoke(&m.id, false, DAY).await.unwrap();
    assert!(out.running);
    let mut late = m.clone();
    late.delivery_tag = crate::message::new_id();
    fx.broker.publish(&late).await.unwrap();
    let got = fx.broker.claim(&req(&["q"], 1, 10_000)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].revoked.is_some(),
        "a late copy of a revoked task is flagged"
    );
}

/// The revocation log reads from a cursor; `u64::MAX` gives the current end.
pub async fn revocation_log_has_a_cursor(f: &impl Factory) {
    let fx = f(DAY).await;
    let (none, end) = fx.broker.revocations_since(u64::MAX).await.unwrap();
    assert!(none.is_empty());
    fx.broker.revoke("r1", false, DAY).await.unwrap();
    fx.broker.revoke("r2", true, DAY).await.unwrap();
    let (revs, c) = fx.broker.revocations_since(end).await.unwrap();
    assert_eq!(
        revs.iter().map(|r| r.task_id.as_str()).collect::<Vec<_>>(),
        ["r1", "r2"]
    );
    let (more, c2) = fx.broker.revocations_since(c).await.unwrap();
    assert!(more.is_empty());
    assert_eq!(c, c2);
    // A repeat never weakens a revocation: a terminating one stays terminating (an owner's
    // cancel after an operator's terminate), and nothing new is logged for it; a terminate
    // after a cancel is logged, so workers that read the cancel kill the run.
    fx.broker.revoke("r2", false, DAY).await.unwrap();
    let (revs, c3) = fx.broker.revocations_since(c2).await.unwrap();
    assert!(revs.is_empty(), "{revs:?}");
    assert!(fx.broker.revocation("r2").await.unwrap().unwrap().terminate);
    fx.broker.revoke("r1", true, DAY).await.unwrap();
    let (revs, _) = fx.broker.revocations_since(c3).await.unwrap();
    assert_eq!(revs.len(), 1, "{revs:?}");
    assert!(revs[0].task_id == "r1" && revs[0].terminate, "{revs:?}");
    assert!(fx.broker.revocation("r1").await.unwrap().unwrap().terminate);
}

/// Unfenced writes never overwrite a terminal state; forget deletes.
pub async fn results_keep_terminal_states(f: &impl Factory) {
    let fx = f(DAY).await;
    assert!(fx.backend.get("r").await.unwrap().is_none());
    let started = ResultMeta::new("r", TaskState::Started, json!({"pid": 1}));
    assert_eq!(
        fx.backend.store(&started, None).await.unwrap(),
        StoreOutcome::Stored
    );
    assert_eq!(fx.backend.get("r").await.unwrap().unwrap(), started);
    let done = ResultMeta::new("r", TaskState::Success, json!({"x": [1, 2]}));
    fx.backend.store(&done, None).await.unwrap();
    let late = ResultMeta::new("r", TaskState::Processing, json!({"progress": 50}));
    assert_eq!(
        fx.backend.store(&late, None).await.unwrap(),
        StoreOutcome::KeptTerminal
    );
    let got = fx.backend.get("r").await.unwrap().unwrap();
    assert_eq!(got.status, TaskState::Success);
    assert_eq!(
        got.date_done.map(|d| d.timestamp_micros()),
        done.date_done.map(|d| d.timestamp_micros())
    );
    fx.backend.forget("r").await.unwrap();
    assert!(fx.backend.get("r").await.unwrap().is_none());
}

/// Results expire and cleanup removes them.
pub async fn results_expire(f: &impl Factory) {
    let fx = f(Duration::from_millis(200)).await;
    fx.backend
        .store(&ResultMeta::new("e", TaskState::Success, json!(1)), None)
        .await
        .unwrap();
    assert!(fx.backend.get("e").await.unwrap().is_some());
    sleep_ms(300).await;
    assert!(
        fx.backend.get("e").await.unwrap().is_none(),
        "an expired result is not served"
    );
    // Backends whose store expires keys by itself (Redis TTLs) have nothing left to remove.
    assert!(
        fx.backend.cleanup().await.unwrap() <= 1,
        "cleanup removes it"
    );
    assert_eq!(fx.backend.cleanup().await.unwrap(), 0);
}

/// A watch yields the current state first, then each change, and ends at a terminal state.
pub async fn watch_yields_current_then_changes(f: &impl Factory) {
    let fx = f(DAY).await;
    let mut fresh = crate::watch::TaskWatch::new(fx.backend.clone(), "w0");
    assert_eq!(
        fresh.next().await.unwrap().unwrap().status,
        TaskState::Pending
    );
    fx.backend
        .store(&ResultMeta::new("w", TaskState::Started, Value::Null), None)
        .await
        .unwrap();
    let mut watch = crate::watch::TaskWatch::new(fx.backend.clone(), "w");
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        TaskState::Started
    );
    let be = fx.backend.clone();
    tokio::spawn(async move {
        sleep_ms(50).await;
        be.store(
            &ResultMeta::new(
                "w",
                TaskState::Processing,
                json!({"progress": 20, "status": "x"}),
            ),
            None,
        )
        .await
        .unwrap();
        sleep_ms(50).await;
        be.store(&ResultMeta::new("w", TaskState::Success, json!(7)), None)
            .await
            .unwrap();
    });
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.progress(), Some((20, "x".into())));
    let last = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((last.status, last.result), (TaskState::Success, json!(7)));
    assert!(watch.next().await.unwrap().is_none());
    let mut late = crate::watch::TaskWatch::new(fx.backend.clone(), "w");
    assert_eq!(
        late.next().await.unwrap().unwrap().status,
        TaskState::Success,
        "late subscribers get the end"
    );
    assert!(late.next().await.unwrap().is_none());
}

/// A first read dropped midway (a `select!` whose other branch won: a WebSocket client's
/// ping) leaves the watch owing the current state, which its next call yields.
pub async fn watch_gives_the_current_state_after_a_dropped_first_read(f: &impl Factory) {
    let fx = f(DAY).await;
    fx.backend
        .store(&ResultMeta::new("wd", TaskState::Success, json!(1)), None)
        .await
        .unwrap();
    let mut watch = crate::watch::TaskWatch::new(fx.backend.clone(), "wd");
    // Polled once, then dropped, unless it was ready at once.
    let first = match tokio::time::timeout(Duration::ZERO, watch.next_shared()).await {
        Ok(first) => first,
        Err(_) => tokio::time::timeout(Duration::from_secs(5), watch.next_shared())
            .await
            .expect("the current state after a dropped first read"),
    };
    assert_eq!(first.unwrap().unwrap().status, TaskState::Success);
}

/// A task revoked while it waits for its second retry is stored REVOKED without a retry count
/// (the revoke does not know it): its followers still get that end, not a state they skip as
/// older than the RETRY they saw.
pub async fn watch_ends_on_a_revocation_between_retries(f: &impl Factory) {
    let fx = f(DAY).await;
    let client = Client::new(fx.broker.clone(), fx.backend.clone());
    let mut retry = ResultMeta::new("wr", TaskState::Retry, json!({"exc_type": "Retry"}));
    retry.retries = Some(1);
    fx.backend.store(&retry, None).await.unwrap();
    let mut watch = crate::watch::TaskWatch::new(fx.backend.clone(), "wr");
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        TaskState::Retry
    );
    client.revoke("wr", false).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the revocation reaches the follower")
        .unwrap()
        .unwrap();
    assert_eq!(end.status, TaskState::Revoked);
}

/// A Python worker's states carry no retry count: after its RETRY, the next attempt's
/// STARTED and progress still reach a follower (they would read as older than the RETRY).
pub async fn watch_follows_the_attempt_after_a_countless_retry(f: &impl Factory) {
    let fx = f(DAY).await;
    let retry = ResultMeta::new("wc", TaskState::Retry, json!({"exc_type": "Retry"}));
    fx.backend.store(&retry, None).await.unwrap();
    let mut watch = crate::watch::TaskWatch::new(fx.backend.clone(), "wc");
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        TaskState::Retry
    );
    let progress = ResultMeta::new("wc", TaskState::Processing, json!({"progress": 20}));
    fx.backend.store(&progress, None).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the next attempt's progress reaches the follower")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, TaskState::Processing);
}

/// Purge deletes ready and delayed messages; stats count what is left.
pub async fn purge_and_queue_stats(f: &impl Factory) {
    let fx = f(DAY).await;
    fx.broker
        .publish(&msg("t", "a", SendOptions::default()))
        .await
        .unwrap();
    fx.broker
        .publish(&msg(
            "t",
            "a",
            SendOptions {
                countdown: Some(60.0),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    fx.broker
        .publish(&msg("t", "a", SendOptions::default()))
        .await
        .unwrap();
    fx.broker
        .publish(&msg("t", "b", SendOptions::default()))
        .await
        .unwrap();
    fx.broker.claim(&req(&["a"], 1, 10_000)).await.unwrap();
    let stats = fx.broker.queue_stats(None).await.unwrap();
    let a = stats.iter().find(|s| s.queue == "a").unwrap();
    assert_eq!((a.ready, a.scheduled, a.leased), (1, 1, 1));
    assert_eq!(fx.broker.purge(&["a".into()]).await.unwrap(), 2);
    let stats = fx
        .broker
        .queue_stats(Some(&["a".into(), "b".into(), "c".into()]))
        .await
        .unwrap();
    let by: Vec<(String, u64, u64, u64)> = stats
        .into_iter()
        .map(|s| (s.queue, s.ready, s.scheduled, s.leased))
        .collect();
    assert_eq!(
        by,
        vec![
            ("a".into(), 0, 0, 1),
            ("b".into(), 1, 0, 0),
            ("c".into(), 0, 0, 0)
        ]
    );
}

/// Dead letters keep the payload and the reason.
pub async fn dead_letters_are_kept(f: &impl Factory) {
    let fx = f(DAY).await;
    fx.broker.publish_raw("q", b"{broken").await.unwrap();
    let d = fx
        .broker
        .claim(&req(&["q"], 1, 10_000))
        .await
        .unwrap()
        .remove(0);
    fx.broker
        .dead_letter(Some(&d.lease), "q", &d.raw, "not JSON", None)
        .await
        .unwrap();
    assert!(
        !fx.broker.ack(&d.lease).await.unwrap(),
        "dead-lettering acks"
    );
    let dl = fx.broker.dead_letters(10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (
            dl[0].queue.as_str(),
            dl[0].reason.as_str(),
            dl[0].payload.as_str()
        ),
        ("q", "not JSON", "{broken")
    );
    // A huge message keeps its start and its size, not all of it.
    let huge = vec![b'x'; 3 * crate::backend::DEAD_LETTER_PAYLOAD_MAX];
    fx.broker
        .dead_letter(None, "q", &huge, "too big to read", Some("t-huge"))
        .await
        .unwrap();
    let dl = fx.broker.dead_letters(1).await.unwrap();
    assert_eq!(dl[0].task_id.as_deref(), Some("t-huge"));
    assert!(dl[0].payload.starts_with("xxxx"));
    assert!(
        dl[0].payload.len() < crate::backend::DEAD_LETTER_PAYLOAD_MAX + 100
            && dl[0].payload.ends_with(&format!(
                "({} more bytes not kept)",
                2 * crate::backend::DEAD_LETTER_PAYLOAD_MAX
            )),
        "{} bytes kept",
        dl[0].payload.len()
    );
}

/// Raw envelopes are stored and delivered byte for byte.
pub async fn raw_messages_are_stored_as_given(f: &impl Factory) {
    let fx = f(DAY).await;
    let m = msg("t", "q", prio(3));
    let env = m.to_envelope();
    fx.broker.publish_raw("q", env.as_bytes()).await.unwrap();
    fx.broker
        .publish_raw("q", &[0xff, 0x00, 0x12])
        .await
        .unwrap();
    let got = fx.broker.claim(&req(&["q"], 10, 10_000)).await.unwrap();
    assert_eq!(got.len(), 2);
    let raws: HashSet<Vec<u8>> = got.iter().map(|d| d.raw.clone()).collect();
    assert!(raws.contains(env.as_bytes()));
    assert!(raws.contains(&vec![0xff, 0x00, 0x12]));
}

/// Heartbeats make a worker visible; leaving removes it.
pub async fn heartbeats_list_workers(f: &impl Factory) {
    let fx = f(DAY).await;
    let r = WorkerReport {
        node: "w1@h".into(),
        hostname: "h".into(),
        pid: 42,
        queues: vec!["q".into()],
        concurrency: 2,
        prefetch_count: 2,
        registered: vec!["afterview.noop".into()],
        active: vec![],
        total: Default::default(),
        started_at: chrono::Utc::now(),
        heartbeat_at: chrono::Utc::now(),
        sw_ident: "afterview".into(),
        sw_ver: "0".into(),
        freq: 2.0,
    };
    fx.broker.heartbeat(&r).await.unwrap();
    let ws = fx.broker.workers(Duration::from_secs(1)).await.unwrap();
    assert_eq!(ws.len(), 1);
    assert_eq!((ws[0].node.as_str(), ws[0].pid), ("w1@h", 42));
    fx.broker.worker_gone("w1@h").await.unwrap();
    assert!(
        fx.broker
            .workers(Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Concurrent claimers never receive the same message.
pub async fn concurrent_claims_never_share_a_message(f: &impl Factory) {
    let fx = f(DAY).await;
    let msgs: Vec<TaskMessage> = (0..200)
        .map(|_| msg("t", "q", SendOptions::default()))
        .collect();
    fx.broker.publish_batch(&msgs).await.unwrap();
    let mut tasks = vec![];
    for _ in 0..4 {
        let b = fx.broker.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = vec![];
            loop {
                let got = b.claim(&req(&["q"], 7, 10_000)).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|d| d.lease.task_id));
            }
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 200);
    assert_eq!(unique.len(), 200);
}

fn worker_cfg(queues: &[&str], concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        node: format!("suite-{}@test", crate::message::new_id()),
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        concurrency,
        lease: Duration::from_secs(3),
        idle_wait: Duration::from_millis(200),
        revoke_grace: Duration::from_millis(300),
        shutdown_grace: Duration::from_secs(5),
        heartbeat: Duration::from_millis(500),
        ..WorkerConfig::default()
    }
}

struct Running {
    client: Client,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("worker stops")
            .unwrap();
    }
}

fn start(fx: &Fixture, cfg: WorkerConfig) -> Running {
    start_with(fx, cfg, Registry::with_builtins())
}

fn start_with(fx: &Fixture, cfg: WorkerConfig, registry: Registry) -> Running {
    let client = Client::new(fx.broker.clone(), fx.backend.clone()).with_routes_from(&registry);
    let shutdown = Shutdown::new();
    let w = Worker::new(cfg, fx.broker.clone(), fx.backend.clone(), registry);
    let sd = shutdown.clone();
    let handle = tokio::spawn(async move { w.run(sd).await.unwrap() });
    Running {
        client,
        shutdown,
        handle,
    }
}

async fn call(c: &Client, task: &str, kwargs: Value, opts: SendOptions) -> String {
    c.send_task(task, vec![], kw(kwargs), opts).await.unwrap()
}

async fn wait(c: &Client, id: &str) -> ResultMeta {
    c.wait(id, Duration::from_secs(20)).await.unwrap()
}

/// Follows `id` until its run reports progress (PROCESSING), at most 10 s.
async fn until_processing(c: &Client, id: &str) {
    let mut watch = c.watch(id);
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if m.status == TaskState::Processing {
            return;
        }
    }
}

/// Success, positional and keyword arguments, progress events in order.
pub async fn worker_runs_tasks_and_reports_progress(f: &impl Factory) {
    let fx = f(DAY).await;
    let w = start(&fx, worker_cfg(&["celery"], 2));
    let id = w
        .client
        .send_task(
            "afterview.noop",
            vec![json!(1), json!("a")],
            kw(json!({"k": true})),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let r = wait(&w.client, &id).await;
    assert_eq!(r.status, TaskState::Success);
    assert_eq!(r.result, json!({"args": [1, "a"], "kwargs": {"k": true}}));
    assert_eq!(r.name.as_deref(), Some("afterview.noop"));

    let id = call(
        &w.client,
        "afterview.sleep",
        json!({"seconds": 0.5}),
        SendOptions::default(),
    )
    .await;
    let mut watch = w.client.watch(&id);
    let mut seen = vec![];
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push((m.status.clone(), m.progress().map(|p| p.0)));
    }
    assert_eq!(seen.last().unwrap().0, TaskState::Success, "{seen:?}");
    let progress: Vec<u8> = seen.iter().filter_map(|s| s.1).collect();
    assert!(progress.len() >= 3, "several progress updates: {seen:?}");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {seen:?}"
    );
    w.stop().await;
}

/// A prefetched task that waits for a slot shows RECEIVED, then runs once the slot is free.
pub async fn worker_marks_waiting_tasks_received(f: &impl Factory) {
    let fx = f(DAY).await;
    let w = start(
        &fx,
        WorkerConfig {
            prefetch_multiplier: 2,
            ..worker_cfg(&["celery"], 1)
        },
    );
    let long = call(
        &w.client,
        "afterview.sleep",
        json!({"seconds": 1.0}),
        SendOptions::default(),
    )
    .await;
    let mut running = w.client.watch(&long);
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), running.next())
        .await
        .unwrap()
        .unwrap()
    {
        if matches!(m.status, TaskState::Started | TaskState::Processing) {
            break;
        }
    }
    let waiting = w
        .client
        .message("afterview.noop", vec![], Map::new(), SendOptions::default())
        .unwrap();
    let seen = history(&w.client, &waiting).await;
    assert_eq!(seen.last(), Some(&TaskState::Success), "{seen:?}");
    let received = seen.iter().position(|s| *s == TaskState::Received);
    let started = seen.iter().position(|s| *s == TaskState::Started);
    assert!(
        received.is_some(),
        "waited for the slot, so RECEIVED: {seen:?}"
    );
    if let Some(started) = started {
        assert!(
            received < Some(started),
            "RECEIVED before STARTED: {seen:?}"
        );
    }
    assert_eq!(wait(&w.client, &long).await.status, TaskState::Success);
    w.stop().await;
}

/// The states a follower sees of `msg`, watched from before it is published.
async fn history(c: &Client, msg: &TaskMessage) -> Vec<TaskState> {
    let mut watch = c.watch(&msg.id);
    c.broker().publish(msg).await.unwrap();
    let mut seen = vec![];
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push(m.status.clone());
    }
    seen
}

/// A task that ends at once goes straight to its final state (no STARTED write); one that runs
/// longer without reporting progress shows STARTED first.
pub async fn worker_writes_started_only_for_longer_runs(f: &impl Factory) {
    let fx = f(DAY).await;
    let w = start(&fx, worker_cfg(&["celery"], 2));
    let quick = w
        .client
        .message("afterview.noop", vec![], Map::new(), SendOptions::default())
        .unwrap();
    let seen = history(&w.client, &quick).await;
    assert_eq!(seen.last(), Some(&TaskState::Success), "{seen:?}");
    assert!(!seen.contains(&TaskState::Started), "{seen:?}");

    let slow = w
        .client
        .message(
            "afterview.sleep",
            vec![],
            kw(json!({"seconds": 0.3, "progress_steps": 0})),
            SendOptions::default(),
        )
        .unwrap();
    let seen = history(&w.client, &slow).await;
    assert_eq!(seen.last(), Some(&TaskState::Success), "{seen:?}");
    assert!(seen.contains(&TaskState::Started), "{seen:?}");
    w.stop().await;
}

/// Unknown task names and arguments of the wrong type end in FAILURE; the worker goes on.
pub async fn worker_fails_unknown_tasks_and_bad_arguments(f: &impl Factory) {
    let fx = f(DAY).await;
    let w = start(&fx, worker_cfg(&["celery"], 2));
    let id = call(&w.client, "no.such.task", json!({}), SendOptions::default()).await;
    let r = wait(&w.client, &id).await;
    assert_eq!(r.status, TaskState::Failure);
    assert_eq!(r.error_info().unwrap().code, "not_registered");
    let id = call(
        &w.client,
        "afterview.sleep",
        json!({"seconds": "soon"}),
        SendOptions::default(),
    )
    .await;
    let r = wait(&w.client, &id).await;
    assert_eq!(r.error_info().unwrap().code, "invalid_arguments");
    assert!(r.error_info().unwrap().message.contains("seconds"), "{r:?}");
    let id = call(
        &w.client,
        "afterview.fail",
        json!({"message": "boom", "code": "kaput"}),
        SendOptions::default(),
    )
    .await;
    let r = wait(&w.client, &id).await;
    assert_eq!(
        r.error_info().unwrap(),
        crate::ErrorInfo {
            code: "kaput".into(),
            message: "boom".into()
        }
    );
    let id = call(
        &w.client,
        "afterview.noop",
        json!({}),
        SendOptions::default(),
    )
    .await;
    assert_eq!(
        wait(&w.client, &id).await.status,
        TaskState::Success,
        "the worker keeps running"
    );
    w.stop().await;
}

/// Malformed messages are dead-lettered (with a FAILURE where the id is known).
pub async fn worker_sets_malformed_messages_aside(f: &impl Factory) {
    let fx = f(DAY).await;
    let w = start(&fx, worker_cfg(&["celery"], 2));
    fx.broker
        .publish_raw("celery", b"this is not json")
        .await
        .unwrap();
    let bad_b64 = r#"{"body": "%%%", "headers": {"task": "afterview.noop", "id": "bad-b64"}, "properties": {"body_encoding": "base64", "delivery_tag": "t1", "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#;
    fx.broker
        .publish_raw("celery", bad_b64.as_bytes())
        .await
        .unwrap();
    let r = wait(&w.client, "bad-b64").await;
    assert_eq!(r.status, TaskState::Failure);
    assert_eq!(r.error_info().unwrap().code, "malformed_message");
    let id = call(
        &w.client,
        "afterview.noop",
        json!({}),
        SendOptions::default(),
    )
    .await;
    assert_eq!(wait(&w.client, &id).await.status, TaskState::Success);
    let mut dl = vec![];
    for _ in 0..50 {
        dl = fx.broker.dead_letters(10).await.unwrap();
        if dl.len() >= 2 {
            break;
        }
        sleep_ms(100).await;
    }
    assert_eq!(dl.len(), 2, "{dl:?}");
    assert!(dl.iter().any(|d| d.reason.contains("not valid JSON")));
    assert!(
        dl.iter()
            .any(|d| d.task_id.as_deref() == Some("bad-b64") && d.reason.contains("base64"))
    );
    let left = fx
        .broker
        .queue_stats(Some(&["celery".into()]))
        .await
        .unwrap();
    assert_eq!(
        left[0].ready + left[0].leased,
        0,
        "nothing stuck in the queue"
    );
    // An id without a task name is still failed against that id (its caller's get() ends).
    let no_task = r#"{"body": "W10=", "headers": {"id": "no-task"}, "properties": {"body_encoding": "base64", "delivery_tag": "t2", "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#;
    fx.broker
        .publish_raw("celery", no_task.as_bytes())
        .await
        .unwrap();
    let r = wait(&w.client, "no-task").await;
    assert_eq!(r.error_info().unwrap().code, "malformed_message", "{r:?}");
    // A malformed or unknown-task message reusing a finished task's id leaves its result.
    let reused = bad_b64.replace("bad-b64", &id).replace("\"t1\"", "\"t3\"");
    fx.broker
        .publish_raw("celery", reused.as_bytes())
        .await
        .unwrap();
    let unknown = crate::message::TaskMessage::new(
        "no.such.task",
        vec![],
        serde_json::Map::new(),
        "celery",
        SendOptions {
            task_id: Some(id.clone()),
            ..SendOptions::default()
        },
    )
    .unwrap();
    fx.broker
        .publish_raw("celery", unknown.to_envelope().as_bytes())
        .await
        .unwrap();
    for _ in 0..100 {
        let q = fx
            .broker
            .queue_stats(Some(&["celery".into()]))
            .await
            .unwrap();
        if q[0].ready + q[0].leased == 0 {
            break;
        }
        sleep_ms(50).await;
    }
    sleep_ms(300).await;
    assert_eq!(
        w.client.result(&id).await.unwrap().status,
        TaskState::Success,
        "the finished task's result stays"
    );
    w.stop().await;
}

/// Transient failures are retried with backoff, RETRY is visible with its ETA, and the
/// retries are bounded.
pub async fn worker_retries_with_backoff(f: &impl Factory) {
    let fx = f(DAY).await;
    let w = start(&fx, worker_cfg(&["celery"], 2));
    let id = call(
        &w.client,
        "afterview.fail",
        json!({"transient": true, "succeed_after": 2}),
        SendOptions::default(),
    )
    .await;
    let mut watch = w.client.watch(&id);
    let mut retries_seen = vec![];
    while let Some(m) = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .unwrap()
        .unwrap()
    {
        if m.status == TaskState::Retry {
            assert!(
                m.result.get("retry_eta").and_then(Value::as_str).is_some(),
                "RETRY carries its ETA: {m:?}"
            );
            retries_seen.push(m.result["retries"].as_u64().unwrap());
        }
        if m.status.is_terminal() {
            assert_eq!(m.status, TaskState::Success);
            assert_eq!(m.result, json!({"succeeded_after_retries": 2}));
            assert_eq!(m.retries, Some(2));
        }
    }
    assert_eq!(retries_seen, vec![1, 2]);

    let t0 = tokio::time::Instant::now();
    let id = call(
        &w.client,
        "afterview.fail",
        json!({"transient": true, "message": "flaky"}),
        SendOptions::default(),
    )
    .await;
    let r = wait(&w.client, &id).await;
    assert_eq!(r.status, TaskState::Failure);
    assert_eq!(r.retries, Some(3), "gave up after max_retries");
    assert_eq!(r.error_info().unwrap().message, "flaky");
    // base 200 ms doubling with jitter in [d/2, d]: at least 100+200+400 ms in total.
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "backoff applied: {:?}",
        t0.elapsed()
    );
    w.stop().await;
}

/// Soft limit: cancellation fires, failure is SoftTimeLimitExceeded. Hard limit: the slot is
/// freed on time even when the task ignores cancellation (async or CPU-bound).
pub async fn worker_enforces_soft_and_hard_limits(f: &impl Factory) {
    let fx = f(DAY).await;
    let w = start(&fx, worker_cfg(&["celery"], 1));
    let soft = SendOptions {
        timelimit: TimeLimits {
            soft: Some(0.3),
            hard: Some(5.0),
        },
        ..Default::default()
    };
    let t0 = tokio::time::Instant::now();
    let id = call(&w.client, "afterview.sleep", json!({"seconds": 30}), soft).await;
    let r = wait(&w.client, &id).await;
    assert_eq!(
        r.error_info().unwrap().code,
        "soft_time_limit_exceeded",
        "{r:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "soft limit acted at once: {:?}",
        t0.elapsed()
    );

    // A CPU-bound run spins on the machine's clock in a blocking thread, which paused time
    // cannot move: that variant runs in the suites on wall time (SQLite, Redis).
    let variants: &[bool] = if crate::time::follows_tokio_clock() {
        &[false]
    } else {
        &[false, true]
    };
    for &cpu in variants {
        let hard = SendOptions {
            timelimit: TimeLimits {
                soft: Some(0.2),
                hard: Some(0.6),
            },
            ..Default::default()
        };
        let t0 = tokio::time::Instant::now();
        let id = call(
            &w.client,
            "afterview.sleep",
            json!({"seconds": 3, "ignore_cancel": true, "cpu": cpu}),
            hard,
        )
        .await;
        let r = wait(&w.client, &id).await;
        let took = t0.elapsed();
        assert_eq!(
            r.error_info().unwrap().code,
            "time_limit_exceeded",
            "cpu={cpu} {r:?}"
        );
        assert!(
            took < Duration::from_millis(2500),
            "hard limit on time (cpu={cpu}): {took:?}"
        );
        // The single slot is free again although the abandoned run may still spin.
        let id = call(
            &w.client,
            "afterview.noop",
            json!({}),
            SendOptions::default(),
        )
        .await;
        let r = w
            .client
            .wait(&id, Duration::from_millis(1500))
            .await
            .unwrap();
        assert_eq!(
            r.status,
            TaskState::Success,
            "slot freed after the hard limit (cpu={cpu})"
        );
    }
    w.stop().await;
}

/// A starting worker whose first read of the revocation log comes late (a slow or briefly
/// unreachable broker) still cancels a running task revoked before that read: it claims
/// nothing before it knows where the log stands.
pub async fn worker_follows_revocations_from_before_its_first_log_read(f: &impl Factory) {
    let fx = f(DAY).await;
    let gated = Arc::new(gated::Gated::new(
        fx.broker.clone(),
        gated::Hold::FirstLogRead,
    ));
    let gfx = Fixture {
        broker: gated.clone(),
        ..fx.clone()
    };
    let w = start(&gfx, worker_cfg(&["celery"], 2));
    let id = call(
        &w.client,
        "afterview.sleep",
        json!({"seconds": 30}),
        SendOptions::default(),
    )
    .await;
    sleep_ms(500).await;
    let claimed_before_the_read = w.client.result(&id).await.unwrap().status != TaskState::Pending;
    if claimed_before_the_read {
        // The run started before the log was read: revoked now, the read then starts after it.
        let out = w.client.revoke(&id, false).await.unwrap();
        assert!(out.running);
        gated.open();
    } else {
        gated.open();
        until_processing(&w.client, &id).await;
        let out = w.client.revoke(&id, false).await.unwrap();
        assert!(out.running);
    }
    let r = wait(&w.client, &id).await;
    assert_eq!(
        r.status,
        TaskState::Revoked,
        "claimed before the log was read: {claimed_before_the_read}"
    );
    assert!(
        !claimed_before_the_read,
        "the worker claimed before it read where the revocation log stands"
    );
    w.stop().await;
}

/// Revoked queued and delayed tasks never run; a running one is cancelled.
pub async fn worker_revokes_queued_delayed_and_running(f: &impl Factory) {
    let fx = f(DAY).await;
    let registry = Registry::with_builtins();
    let client = Client::new(fx.broker.clone(), fx.backend.clone()).with_routes_from(&registry);
    let queued = call(&client, "afterview.noop", json!({}), SendOptions::default()).await;
    let delayed = call(
        &client,
        "afterview.noop",
        json!({}),
        SendOptions {
            countdown: Some(0.5),
            ..Default::default()
        },
    )
    .await;
    client.revoke(&queued, false).await.unwrap();
    client.revoke(&delayed, false).await.unwrap();
    let w = start(&fx, worker_cfg(&["celery"], 2));
    let running = call(
        &w.client,
        "afterview.sleep",
        json!({"seconds": 30}),
        SendOptions::default(),
    )
    .await;
    until_processing(&w.client, &running).await;
    let t0 = tokio::time::Instant::now();
    let out = w.client.revoke(&running, false).await.unwrap();
    assert!(out.running);
    let r = wait(&w.client, &running).await;
    assert_eq!(r.status, TaskState::Revoked);
    assert_eq!(r.error_info().unwrap().code, "terminated");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "cancelled promptly: {:?}",
        t0.elapsed()
    );
    sleep_ms(800).await;
    for id in [&queued, &delayed] {
        let r = w.client.result(id).await.unwrap();
        assert_eq!(r.status, TaskState::Revoked, "{id}");
        assert_eq!(r.error_info().unwrap().code, "revoked");
    }
    let stats = fx
        .broker
        .queue_stats(Some(&["celery".into()]))
        .await
        .unwrap();
    assert_eq!(
        stats[0].ready + stats[0].scheduled + stats[0].leased,
        0,
        "revoked copies are gone"
    );
    w.stop().await;
}

/// At shutdown, tasks that do not finish within the grace period go back to the queue and
/// complete on the next worker.
pub async fn worker_shutdown_gives_unfinished_tasks_back(f: &impl Factory) {
    let fx = f(DAY).await;
    let cfg = WorkerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..worker_cfg(&["celery"], 2)
    };
    let w = start(&fx, cfg);
    let quick = call(
        &w.client,
        "afterview.sleep",
        json!({"seconds": 0.1}),
        SendOptions::default(),
    )
    .await;
    let slow = call(
        &w.client,
        "afterview.sleep",
        json!({"seconds": 2.0}),
        SendOptions::default(),
    )
    .await;
    until_processing(&w.client, &slow).await;
    let client = w.client.clone();
    w.stop().await;
    assert_eq!(
        client.result(&quick).await.unwrap().status,
        TaskState::Success,
        "finished within the grace"
    );
    assert_ne!(
        client.result(&slow).await.unwrap().status,
        TaskState::Success
    );
    back_in_the_queue_then_run(&fx, &slow, "the slow task").await;
}

/// At a graceful shutdown, a message claimed but not started (prefetched, waiting for a slot)
/// goes back to the queue at once, as a Celery worker's warm shutdown restores its reserved
/// messages: it does not start in the slot a finished run frees during the grace period.
pub async fn worker_shutdown_gives_back_messages_not_started(f: &impl Factory) {
    let fx = f(DAY).await;
    let cfg = WorkerConfig {
        prefetch_multiplier: 2,
        ..worker_cfg(&["celery"], 1)
    };
    let w = start(&fx, cfg);
    let running = call(
        &w.client,
        "afterview.sleep",
        json!({"seconds": 2.0}),
        SendOptions::default(),
    )
    .await;
    until_processing(&w.client, &running).await;
    let waiting = call(
        &w.client,
        "afterview.noop",
        json!({}),
        SendOptions::default(),
    )
    .await;
    let t0 = tokio::time::Instant::now();
    loop {
        let stats = fx
            .broker
            .queue_stats(Some(&["celery".into()]))
            .await
            .unwrap();
        if stats[0].leased == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the second message is claimed while the first runs: {stats:?}"
        );
        sleep_ms(20).await;
    }
    let client = w.client.clone();
    w.stop().await;
    assert_eq!(
        client.result(&running).await.unwrap().status,
        TaskState::Success,
        "the running task finished within the grace"
    );
    assert_ne!(
        client.result(&waiting).await.unwrap().status,
        TaskState::Success,
        "the message that had not started was not run during the shutdown"
    );
    back_in_the_queue_then_run(&fx, &waiting, "the message not started").await;
}

/// A worker whose shutdown began takes nothing more: a message published while it waits for
/// its running task goes to a live worker at once (with pushes to idle workers, a stopping
/// worker left on the idle list was handed the message, which then waited for its drain).
pub async fn worker_takes_nothing_more_once_stopping(f: &impl Factory) {
    let fx = f(DAY).await;
    let cfg = WorkerConfig {
        shutdown_grace: Duration::from_secs(20),
        ..worker_cfg(&["celery"], 2)
    };
    let a = start(&fx, cfg);
    let slow = call(
        &a.client,
        "afterview.sleep",
        json!({"seconds": 6.0}),
        SendOptions::default(),
    )
    .await;
    until_processing(&a.client, &slow).await;
    // A second slot free: A claims again, comes back short, and waits for work.
    sleep_ms(500).await;
    a.shutdown.trigger();
    sleep_ms(300).await;
    let b = start(&fx, worker_cfg(&["celery"], 2));
    sleep_ms(300).await;
    let t0 = tokio::time::Instant::now();
    let quick = call(
        &b.client,
        "afterview.noop",
        json!({}),
        SendOptions::default(),
    )
    .await;
    let r = wait(&b.client, &quick).await;
    assert_eq!(r.status, TaskState::Success);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "run by the live worker at once, not after the stopping one's drain: {:?}",
        t0.elapsed()
    );
    assert_eq!(wait(&b.client, &slow).await.status, TaskState::Success);
    tokio::time::timeout(Duration::from_secs(20), a.handle)
        .await
        .expect("the stopping worker ends")
        .unwrap();
    b.stop().await;
}

/// `id` is the one message in the queue, none leased, and the next worker runs it.
async fn back_in_the_queue_then_run(fx: &Fixture, id: &str, what: &str) {
    let stats = fx
        .broker
        .queue_stats(Some(&["celery".into()]))
        .await
        .unwrap();
    assert_eq!(
        (stats[0].ready, stats[0].leased),
        (1, 0),
        "{what} is back in the queue"
    );
    let w = start(fx, worker_cfg(&["celery"], 2));
    assert_eq!(wait(&w.client, id).await.status, TaskState::Success);
    w.stop().await;
}

/// Sleeps `seconds` (dropped when its run is stopped), counting its runs.
struct CountedSleep {
    started: Arc<AtomicUsize>,
}

#[derive(serde::Deserialize)]
struct CountedSleepArgs {
    seconds: f64,
}

impl Task for CountedSleep {
    const NAME: &'static str = "suite.counted_sleep";
    type Args = CountedSleepArgs;
    type Output = Value;

    async fn run(&self, _ctx: TaskContext, a: CountedSleepArgs) -> Result<Value, TaskError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
        Ok(json!({"slept": a.seconds}))
    }
}

/// A worker stalled for longer than a lease (its renewals held: a paused VM, a starved
/// process) gets the message back under the same delivery tag at the next epoch. The earlier
/// run is the one stopped, and the later one runs to the end under its renewed lease; keyed by
/// the tag alone, the late answer "epoch 1 lost" stopped the new run instead, while the old one
/// ran on unseen by renewals and revocations, and the task was handed out again and again.
pub async fn worker_keeps_the_newer_run_of_a_message_it_got_back(f: &impl Factory) {
    let fx = f(DAY).await;
    let gated = Arc::new(gated::Gated::new(fx.broker.clone(), gated::Hold::Renewals));
    let gfx = Fixture {
        broker: gated.clone(),
        ..fx.clone()
    };
    let started = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::with_builtins();
    registry.register(CountedSleep {
        started: started.clone(),
    });
    let cfg = WorkerConfig {
        lease: Duration::from_millis(1500),
        ..worker_cfg(&["celery"], 2)
    };
    let w = start_with(&gfx, cfg, registry);
    let id = call(
        &w.client,
        CountedSleep::NAME,
        json!({"seconds": 3.0}),
        SendOptions::default(),
    )
    .await;
    // The lease runs out while its renewals wait; the worker's own sweep gives the message
    // back and its free slot claims it again.
    let t0 = tokio::time::Instant::now();
    while started.load(Ordering::SeqCst) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the message came back and was claimed again ({} runs)",
            started.load(Ordering::SeqCst)
        );
        sleep_ms(20).await;
    }
    gated.open();
    let r = wait(&w.client, &id).await;
    assert_eq!(r.status, TaskState::Success, "{r:?}");
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "the run of the newer lease was not stopped in place of the older"
    );
    w.stop().await;
}

/// Sleeps `seconds`; notes when it started and when its run was stopped (its future dropped).
struct StopStamp {
    started: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    stopped: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

/// Sets its stamp when dropped (the first drop's: a later run's end does not hide an earlier
/// run's stop).
struct Stamp(Arc<std::sync::Mutex<Option<tokio::time::Instant>>>);

impl Drop for Stamp {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap()
            .get_or_insert_with(tokio::time::Instant::now);
    }
}

impl Task for StopStamp {
    const NAME: &'static str = "suite.stop_stamp";
    type Args = CountedSleepArgs;
    type Output = Value;

    async fn run(&self, _ctx: TaskContext, a: CountedSleepArgs) -> Result<Value, TaskError> {
        self.started
            .lock()
            .unwrap()
            .get_or_insert_with(tokio::time::Instant::now);
        let _stamp = Stamp(self.stopped.clone());
        tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
        Ok(json!({"slept": a.seconds}))
    }
}

type Stamped = Arc<std::sync::Mutex<Option<tokio::time::Instant>>>;

/// A one-slot worker with a [`StopStamp`] task, on a broker whose renewals `hold` names, with
/// leases of `lease`: the worker, the broker, and the task's start and stop stamps.
fn stamped_worker(
    fx: &Fixture,
    hold: gated::Hold,
    lease: Duration,
) -> (Running, Arc<gated::Gated>, Stamped, Stamped) {
    let gated = Arc::new(gated::Gated::new(fx.broker.clone(), hold));
    let gfx = Fixture {
        broker: gated.clone(),
        ..fx.clone()
    };
    let task = StopStamp {
        started: Arc::default(),
        stopped: Arc::default(),
    };
    let (started, stopped) = (task.started.clone(), task.stopped.clone());
    let mut registry = Registry::with_builtins();
    registry.register(task);
    let cfg = WorkerConfig {
        lease,
        ..worker_cfg(&["celery"], 1)
    };
    (start_with(&gfx, cfg, registry), gated, started, stopped)
}

/// A worker whose renewals go unanswered (a network partition: the calls hang until the
/// client's reply timeout) stops a run when its lease runs out, counted from its claim or last
/// renewal: another worker may take the task from then on. It waited for the hung call to
/// give up (10 s on Redis), and the run went on beside the other worker's.
pub async fn worker_stops_a_run_when_its_lease_runs_out_unrenewed(f: &impl Factory) {
    let (w, gated, started, stopped) =
        stamped_worker(&f(DAY).await, gated::Hold::Renewals, Duration::from_secs(1));
    call(
        &w.client,
        StopStamp::NAME,
        json!({"seconds": 20.0}),
        SendOptions::default(),
    )
    .await;
    let t0 = tokio::time::Instant::now();
    let (began, ended) = loop {
        let (b, e) = (*started.lock().unwrap(), *stopped.lock().unwrap());
        if let (Some(b), Some(e)) = (b, e) {
            break (b, e);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "the run was not stopped as its lease ran out"
        );
        sleep_ms(20).await;
    };
    assert!(
        ended - began < Duration::from_millis(1500),
        "stopped {:?} after it began, with a lease of 1 s",
        ended - began
    );
    gated.open();
    w.stop().await;
}

/// One renewal whose answer never comes (a lost reply) costs nothing: the next is tried at
/// once, succeeds, and the run ends normally (waiting a whole period after the timeout let
/// the lease run out, and every run of the worker was stopped).
pub async fn worker_survives_one_renewal_that_never_answers(f: &impl Factory) {
    let (w, _gated, started, stopped) = stamped_worker(
        &f(DAY).await,
        gated::Hold::SecondRenewal,
        Duration::from_millis(1500),
    );
    let id = call(
        &w.client,
        StopStamp::NAME,
        json!({"seconds": 4.0}),
        SendOptions::default(),
    )
    .await;
    let r = wait(&w.client, &id).await;
    assert_eq!(r.status, TaskState::Success, "{r:?}");
    let ran = stopped.lock().unwrap().unwrap() - started.lock().unwrap().unwrap();
    assert!(ran >= Duration::from_secs(4), "ran {ran:?}, not stopped");
    w.stop().await;
}

/// Arguments whose decoding panics (a hand-written `Deserialize`).
struct Explosive;

impl<'de> serde::Deserialize<'de> for Explosive {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("this Deserialize panics")
    }
}

struct PanicsInDecoding;

impl Task for PanicsInDecoding {
    const NAME: &'static str = "suite.panics_in_decoding";
    type Args = Explosive;
    type Output = Value;

    async fn run(&self, _ctx: TaskContext, _a: Explosive) -> Result<Value, TaskError> {
        Ok(Value::Null)
    }
}

/// A panic in the task's code before its run (decoding its arguments) fails the task as a
/// panic in the run does, and the worker goes on: its message no longer holds the window (with
/// one slot the worker claimed nothing more) or has its lease renewed for ever.
pub async fn worker_fails_a_task_whose_arguments_panic_in_decoding(f: &impl Factory) {
    let fx = f(DAY).await;
    let mut registry = Registry::with_builtins();
    registry.register(PanicsInDecoding);
    let w = start_with(&fx, worker_cfg(&["celery"], 1), registry);
    let id = call(
        &w.client,
        PanicsInDecoding::NAME,
        json!({}),
        SendOptions::default(),
    )
    .await;
    let r = wait(&w.client, &id).await;
    assert_eq!(r.status, TaskState::Failure, "{r:?}");
    let e = r.error_info().unwrap();
    assert_eq!(e.code, "internal_error");
    assert!(e.message.contains("this Deserialize panics"), "{e:?}");
    let next = call(
        &w.client,
        "afterview.noop",
        json!({}),
        SendOptions::default(),
    )
    .await;
    assert_eq!(wait(&w.client, &next).await.status, TaskState::Success);
    w.stop().await;
}

/// A message whose id is not UTF-8 (a producer writing raw bytes) is set aside as malformed;
/// claimed in the same batch as good messages, it does not take them down with it (read as one
/// reply, the batch failed, came back after the lease and failed again, for ever).
pub async fn worker_sets_aside_ids_that_are_not_utf8(f: &impl Factory) {
    let fx = f(DAY).await;
    let registry = Registry::with_builtins();
    let client = Client::new(fx.broker.clone(), fx.backend.clone()).with_routes_from(&registry);
    let good = call(&client, "afterview.noop", json!({}), SendOptions::default()).await;
    let mut bad = br#"{"body": "W10=", "headers": {"task": "afterview.noop", "id": "bad-"#.to_vec();
    bad.extend_from_slice(b"\xff\xfe");
    bad.extend_from_slice(br#""}, "properties": {"body_encoding": "base64", "delivery_tag": "utf8-t1", "delivery_info": {"exchange": "", "routing_key": "celery"}}}"#);
    fx.broker.publish_raw("celery", &bad).await.unwrap();
    let later = call(&client, "afterview.noop", json!({}), SendOptions::default()).await;
    // Both good messages and the bad one are due before the worker starts: one claim.
    let w = start(&fx, worker_cfg(&["celery"], 4));
    for id in [&good, &later] {
        assert_eq!(wait(&w.client, id).await.status, TaskState::Success, "{id}");
    }
    let mut dl = vec![];
    for _ in 0..50 {
        dl = fx.broker.dead_letters(10).await.unwrap();
        if !dl.is_empty() {
            break;
        }
        sleep_ms(100).await;
    }
    assert_eq!(dl.len(), 1, "{dl:?}");
    let left = fx
        .broker
        .queue_stats(Some(&["celery".into()]))
        .await
        .unwrap();
    assert_eq!(left[0].ready + left[0].leased, 0, "nothing stuck");
    w.stop().await;
}

/// An envelope holding a number a JSON writer cannot write back (`1e999`, read as infinity)
/// still goes back to its queue when its lease runs out, and does not keep the other expired
/// leases from coming back (the sweep stopped at it, every time).
pub async fn expired_leases_come_back_whatever_numbers_they_hold(f: &impl Factory) {
    let fx = f(DAY).await;
    let odd = msg("t", "q", SendOptions::default())
        .to_envelope()
        .replacen("\"headers\":", "\"x-huge\": 1e999, \"headers\":", 1);
    assert!(odd.contains("1e999"), "{odd}");
    fx.broker.publish_raw("q", odd.as_bytes()).await.unwrap();
    let plain = msg("t", "q", SendOptions::default());
    fx.broker.publish(&plain).await.unwrap();
    let got = fx.broker.claim(&req(&["q"], 10, 100)).await.unwrap();
    assert_eq!(got.len(), 2);
    sleep_ms(300).await;
    let mut back = 0;
    for _ in 0..20 {
        back += fx.broker.requeue_expired().await.unwrap();
        if back >= 2 {
            break;
        }
        sleep_ms(100).await;
    }
    assert_eq!(back, 2, "both expired leases came back");
    let again = fx.broker.claim(&req(&["q"], 10, 60_000)).await.unwrap();
    assert_eq!(again.len(), 2, "both are in the queue again");
    assert!(
        again
            .iter()
            .any(|d| String::from_utf8_lossy(&d.raw).contains("1e999")),
        "the odd one as it came"
    );
}

/// A task past its `expires` is revoked with reason `expired`, not run.
pub async fn worker_expires_tasks(f: &impl Factory) {
    let fx = f(DAY).await;
    let registry = Registry::with_builtins();
    let client = Client::new(fx.broker.clone(), fx.backend.clone()).with_routes_from(&registry);
    let exp = chrono::Utc::now() + chrono::Duration::milliseconds(100);
    let id = call(
        &client,
        "afterview.noop",
        json!({}),
        SendOptions {
            expires: Some(exp),
            ..Default::default()
        },
    )
    .await;
    sleep_ms(200).await;
    let w = start(&fx, worker_cfg(&["celery"], 1));
    let r = wait(&w.client, &id).await;
    assert_eq!(r.status, TaskState::Revoked);
    assert_eq!(r.error_info().unwrap().code, "expired");
    // A later copy of a finished task, past its `expires`, leaves the result as it is.
    let done = call(&client, "afterview.noop", json!({}), SendOptions::default()).await;
    assert_eq!(wait(&w.client, &done).await.status, TaskState::Success);
    let copy = call(
        &client,
        "afterview.noop",
        json!({}),
        SendOptions {
            task_id: Some(done.clone()),
            expires: Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(copy, done);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fx
        .broker
        .queue_stats(None)
        .await
        .unwrap()
        .iter()
        .any(|q| q.ready + q.leased > 0)
    {
        assert!(std::time::Instant::now() < deadline, "the copy was taken");
        sleep_ms(20).await;
    }
    sleep_ms(100).await;
    let kept = fx.backend.get(&done).await.unwrap().unwrap();
    assert_eq!(kept.status, TaskState::Success, "{kept:?}");
    w.stop().await;
}

/// Queued, delayed and revoked tasks and results survive closing and reopening the storage.
pub async fn survives_reopen(f: &impl Factory) {
    let fx = f(DAY).await;
    let reopen = fx.reopen.clone().expect("a durable fixture can reopen");
    let queued = msg("t", "q", SendOptions::default());
    let delayed = msg(
        "t",
        "q",
        SendOptions {
            countdown: Some(0.3),
            ..Default::default()
        },
    );
    let revoked = msg(
        "t",
        "q",
        SendOptions {
            countdown: Some(0.3),
            ..Default::default()
        },
    );
    for m in [&queued, &delayed, &revoked] {
        fx.broker.publish(m).await.unwrap();
    }
    fx.broker.revoke(&revoked.id, false, DAY).await.unwrap();
    fx.backend
        .store(
            &ResultMeta::new("kept", TaskState::Success, json!({"a": 1})),
            None,
        )
        .await
        .unwrap();
    let leased = msg("t", "q2", SendOptions::default());
    fx.broker.publish(&leased).await.unwrap();
    let held = fx
        .broker
        .claim(&req(&["q2"], 1, 300))
        .await
        .unwrap()
        .remove(0);
    drop(fx);

    let fx = reopen().await;
    assert_eq!(
        fx.backend.get("kept").await.unwrap().unwrap().result,
        json!({"a": 1})
    );
    assert!(fx.broker.revocation(&revoked.id).await.unwrap().is_some());
    sleep_ms(400).await;
    let got = fx.broker.claim(&req(&["q"], 10, 10_000)).await.unwrap();
    assert!(
        got.iter()
            .all(|d| (d.lease.task_id == revoked.id) == d.revoked.is_some()),
        "the revoked copy, if still stored, is flagged"
    );
    let runnable: Vec<Delivery> = got.into_iter().filter(|d| d.revoked.is_none()).collect();
    let mut got_ids = ids(&runnable);
    got_ids.sort();
    let mut want = vec![queued.id.clone(), delayed.id.clone()];
    want.sort();
    assert_eq!(got_ids, want, "queued and delayed survive the reopen");
    assert_eq!(
        fx.broker.requeue_expired().await.unwrap(),
        1,
        "the lease taken before the restart expires"
    );
    let again = fx
        .broker
        .claim(&req(&["q2"], 1, 10_000))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.lease.task_id, leased.id);
    assert!(again.lease.epoch > held.lease.epoch);
}
