//! A broker that holds one kind of call until the test opens a gate: the first read of its
//! revocation log's end (the late first read a slow or briefly unreachable broker gives a
//! starting worker), or every lease renewal (a worker stalled for longer than a lease: a
//! paused VM, a starved process).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use crate::backend::{
    BackendError, Broker, ClaimRequest, CleanupStats, DeadLetter, Delivery, LeaseRef, QueueStats,
    Revocation, RevokeOutcome, WorkerReport,
};
use crate::message::TaskMessage;

/// Which calls wait for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// The first `revocations_since(u64::MAX)`.
    FirstLogRead,
    /// Every `renew`.
    Renewals,
    /// The second `renew` only, for ever (one answer lost: the others pass).
    SecondRenewal,
}

/// Delegates everything to `inner`; the calls `hold` names wait for [`Gated::open`].
pub(super) struct Gated {
    inner: Arc<dyn Broker>,
    hold: Hold,
    gate: Semaphore,
    passed: AtomicBool,
    renewals: std::sync::atomic::AtomicUsize,
}

impl Gated {
    pub(super) fn new(inner: Arc<dyn Broker>, hold: Hold) -> Self {
        Self {
            inner,
            hold,
            gate: Semaphore::new(0),
            passed: AtomicBool::new(false),
            renewals: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Lets the held calls (and every later one) through.
    pub(super) fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    async fn pass(&self) {
        let _held = self.gate.acquire().await.expect("the gate is never closed");
    }
}

#[async_trait]
impl Broker for Gated {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn publish(&self, msg: &TaskMessage) -> Result<(), BackendError> {
        self.inner.publish(msg).await
    }
    async fn publish_batch(&self, msgs: &[TaskMessage]) -> Result<(), BackendError> {
        self.inner.publish_batch(msgs).await
    }
    async fn publish_raw(&self, queue: &str, raw: &[u8]) -> Result<(), BackendError> {
        self.inner.publish_raw(queue, raw).await
    }
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Delivery>, BackendError> {
        self.inner.claim(req).await
    }
    async fn wait_for_work(&self, queues: &[String], max_wait: Duration) {
        self.inner.wait_for_work(queues, max_wait).await
    }
    fn pushes_wakeups(&self) -> bool {
        self.inner.pushes_wakeups()
    }
    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> Result<Vec<LeaseRef>, BackendError> {
        match self.hold {
            Hold::Renewals => self.pass().await,
            Hold::SecondRenewal if self.renewals.fetch_add(1, Ordering::SeqCst) == 1 => {
                std::future::pending::<()>().await;
            }
            _ => {}
        }
        self.inner.renew(leases, lease).await
    }
    async fn ack(&self, lease: &LeaseRef) -> Result<bool, BackendError> {
        self.inner.ack(lease).await
    }
    async fn release(&self, lease: &LeaseRef) -> Result<bool, BackendError> {
        self.inner.release(lease).await
    }
    async fn retry(&self, lease: &LeaseRef, next: &TaskMessage) -> Result<bool, BackendError> {
        self.inner.retry(lease, next).await
    }
    async fn defer(&self, lease: &LeaseRef, run_at_ms: i64) -> Result<bool, BackendError> {
        self.inner.defer(lease, run_at_ms).await
    }
    async fn dead_letter(
        &self,
        lease: Option<&LeaseRef>,
        queue: &str,
        raw: &[u8],
        reason: &str,
        task_id: Option<&str>,
    ) -> Result<(), BackendError> {
        self.inner
            .dead_letter(lease, queue, raw, reason, task_id)
            .await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.inner.dead_letters(limit).await
    }
    async fn requeue_expired(&self) -> Result<u64, BackendError> {
        self.inner.requeue_expired().await
    }
    async fn revoke(
        &self,
        task_id: &str,
        terminate: bool,
        keep: Duration,
    ) -> Result<RevokeOutcome, BackendError> {
        self.inner.revoke(task_id, terminate, keep).await
    }
    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BackendError> {
        if self.hold == Hold::FirstLogRead
            && cursor == u64::MAX
            && !self.passed.swap(true, Ordering::SeqCst)
        {
            self.pass().await;
        }
        self.inner.revocations_since(cursor).await
    }
    async fn revocation(&self, task_id: &str) -> Result<Option<Revocation>, BackendError> {
        self.inner.revocation(task_id).await
    }
    async fn purge(&self, queues: &[String]) -> Result<u64, BackendError> {
        self.inner.purge(queues).await
    }
    async fn queue_stats(
        &self,
        queues: Option<&[String]>,
    ) -> Result<Vec<QueueStats>, BackendError> {
        self.inner.queue_stats(queues).await
    }
    async fn heartbeat(&self, report: &WorkerReport) -> Result<(), BackendError> {
        self.inner.heartbeat(report).await
    }
    async fn stop_taking(&self, node: &str) -> Result<(), BackendError> {
        self.inner.stop_taking(node).await
    }
    async fn worker_gone(&self, node: &str) -> Result<(), BackendError> {
        self.inner.worker_gone(node).await
    }
    async fn workers(&self, timeout: Duration) -> Result<Vec<WorkerReport>, BackendError> {
        self.inner.workers(timeout).await
    }
    async fn cleanup(&self) -> Result<CleanupStats, BackendError> {
        self.inner.cleanup().await
    }
    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.ping().await
    }
}
