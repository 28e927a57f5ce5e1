//! An in-memory broker and result backend (one process, nothing persisted): for tests and for
//! embedding the engine where durability is not wanted. It keeps every invariant of
//! [`crate::backend`]; the conformance suite runs against it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::backend::{
    BackendError, Broker, ClaimRequest, CleanupStats, DeadLetter, Delivery, LeaseRef, QueueStats,
    ResultBackend, Revocation, RevokeOutcome, StoreOutcome, WorkerReport,
};
use crate::events::EventHub;
use crate::message::{EnvelopeInfo, TaskMessage, new_id};
use crate::policy;
use crate::result::ResultMeta;
use crate::time::now_ms;

struct Msg {
    seq: u64,
    task_id: String,
    queue: String,
    priority: u8,
    run_at: i64,
    raw: Vec<u8>,
    lease: Option<(String, i64)>,
    epoch: u64,
    deliveries: u32,
    redelivered: bool,
}

#[derive(Default)]
struct State {
    seq: u64,
    msgs: HashMap<String, Msg>,
    /// Unleased messages per queue, in serving order (priority, then publish order).
    waiting: HashMap<String, BTreeSet<(u8, u64, String)>>,
    results: HashMap<String, (ResultMeta, i64)>,
    revocations: HashMap<String, (Revocation, i64)>,
    rev_seq: u64,
    dead: VecDeque<DeadLetter>,
    workers: HashMap<String, WorkerReport>,
}

impl State {
    fn holds(&self, l: &LeaseRef) -> bool {
        self.msgs
            .get(&l.delivery_tag)
            .is_some_and(|m| m.epoch == l.epoch && m.lease.is_some() && m.task_id == l.task_id)
    }

    fn insert(
        &mut self,
        tag: String,
        task_id: String,
        queue: String,
        priority: u8,
        run_at: i64,
        raw: Vec<u8>,
    ) {
        self.seq += 1;
        self.msgs.insert(
            tag.clone(),
            Msg {
                seq: self.seq,
                task_id,
                queue,
                priority,
                run_at,
                raw,
                lease: None,
                epoch: 0,
                deliveries: 0,
                redelivered: false,
            },
        );
        self.unlease(&tag);
    }

    /// Marks a message as waiting (not leased).
    fn unlease(&mut self, tag: &str) {
        if let Some(m) = self.msgs.get_mut(tag) {
            m.lease = None;
            let key = (m.priority, m.seq, tag.to_owned());
            self.waiting.entry(m.queue.clone()).or_default().insert(key);
        }
    }

    /// Takes a message out of its queue's waiting set.
    fn unwait(&mut self, tag: &str) {
        if let Some(m) = self.msgs.get(tag)
            && let Some(set) = self.waiting.get_mut(&m.queue)
        {
            set.remove(&(m.priority, m.seq, tag.to_owned()));
        }
    }

    /// Removes a message, wherever it is.
    fn remove(&mut self, tag: &str) {
        self.unwait(tag);
        self.msgs.remove(tag);
    }

    /// Removes the waiting messages that match; how many.
    fn remove_waiting(&mut self, pred: impl Fn(&Msg) -> bool) -> u64 {
        let tags: Vec<String> = self
            .msgs
            .iter()
            .filter(|(_, m)| m.lease.is_none() && pred(m))
            .map(|(t, _)| t.clone())
            .collect();
        for t in &tags {
            self.remove(t);
        }
        tags.len() as u64
    }
}

/// The in-memory broker and result backend.
pub struct MemoryBackend {
    state: Mutex<State>,
    hub: EventHub,
    wake: Notify,
    result_expires: Duration,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl MemoryBackend {
    /// A backend whose results expire after `result_expires`.
    pub fn new(result_expires: Duration) -> Self {
        Self {
            state: Mutex::default(),
            hub: EventHub::default(),
            wake: Notify::new(),
            result_expires,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory backend lock")
    }

    fn wake(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new(Duration::from_secs(24 * 3600))
    }
}

#[async_trait]
impl Broker for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, msg: &TaskMessage) -> Result<(), BackendError> {
        policy::check_queue(&msg.queue)?;
        let raw = msg.to_envelope().into_bytes();
        self.lock().insert(
            msg.delivery_tag.clone(),
            msg.id.clone(),
            msg.queue.clone(),
            msg.priority,
            msg.run_at_ms(),
            raw,
        );
        self.wake();
        Ok(())
    }

    async fn publish_raw(&self, queue: &str, raw: &[u8]) -> Result<(), BackendError> {
        policy::check_queue(queue)?;
        let info = EnvelopeInfo::peek(raw);
        let tag = info.delivery_tag.unwrap_or_else(new_id);
        self.lock().insert(
            tag,
            info.task_id.unwrap_or_default(),
            queue.to_owned(),
            info.priority,
            info.eta_ms.unwrap_or_else(now_ms),
            raw.to_vec(),
        );
        self.wake();
        Ok(())
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Delivery>, BackendError> {
        let now = now_ms();
        let mut st = self.lock();
        // (priority, the queue's place in the worker's list, seq, tag): at equal priority the
        // worker's earlier queues first.
        let mut due: Vec<(u8, usize, u64, String)> = vec![];
        for (place, q) in req.queues.iter().enumerate() {
            if req.queues[..place].contains(q) {
                continue;
            }
            let Some(set) = st.waiting.get(q) else {
                continue;
            };
            let ready = set
                .iter()
                .filter(|(_, _, t)| st.msgs.get(t).is_some_and(|m| m.run_at <= now));
            due.extend(
                ready
                    .take(req.max)
                    .map(|(p, seq, t)| (*p, place, *seq, t.clone())),
            );
        }
        due.sort();
        due.truncate(req.max);
        let until = now + req.lease.as_millis() as i64;
        let mut out = Vec::with_capacity(due.len());
        for (_, _, _, tag) in due {
            st.unwait(&tag);
            let revoked = {
                let m = &st.msgs[&tag];
                st.revocations.get(&m.task_id).map(|(r, _)| r.clone())
            };
            let m = st.msgs.get_mut(&tag).expect("due message present");
            m.lease = Some((req.worker.clone(), until));
            m.epoch += 1;
            m.deliveries += 1;
            out.push(Delivery {
                lease: LeaseRef {
                    task_id: m.task_id.clone(),
                    delivery_tag: tag,
                    epoch: m.epoch,
                },
                queue: m.queue.clone(),
                raw: m.raw.clone(),
                deliveries: m.deliveries,
                redelivered: m.redelivered,
                revoked,
            });
        }
        Ok(out)
    }

    async fn wait_for_work(&self, queues: &[String], max_wait: Duration) {
        let notified = self.wake.notified();
        let next_eta = {
            let st = self.lock();
            st.msgs
                .values()
                .filter(|m| m.lease.is_none() && queues.contains(&m.queue))
                .map(|m| m.run_at)
                .min()
        };
        let wait = match next_eta {
            Some(t) => Duration::from_millis((t - now_ms()).max(0) as u64).min(max_wait),
            None => max_wait,
        };
        if wait.is_zero() {
            return;
        }
        let _ = tokio::time::timeout(wait, notified).await;
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> Result<Vec<LeaseRef>, BackendError> {
        let until = now_ms() + lease.as_millis() as i64;
        let mut st = self.lock();
        let mut lost = vec![];
        for l in leases {
            if st.holds(l) {
                let m = st
                    .msgs
                    .get_mut(&l.delivery_tag)
                    .expect("held message present");
                if let Some((_, u)) = &mut m.lease {
                    *u = until;
                }
            } else {
                lost.push(l.clone());
            }
        }
        Ok(lost)
    }

    async fn ack(&self, lease: &LeaseRef) -> Result<bool, BackendError> {
        let mut st = self.lock();
        if !st.holds(lease) {
            return Ok(false);
        }
        st.remove(&lease.delivery_tag);
        Ok(true)
    }

    async fn release(&self, lease: &LeaseRef) -> Result<bool, BackendError> {
        let ok = {
            let mut st = self.lock();
            if !st.holds(lease) {
                return Ok(false);
            }
            let m = st
                .msgs
                .get_mut(&lease.delivery_tag)
                .expect("held message present");
            m.redelivered = true;
            st.unlease(&lease.delivery_tag);
            true
        };
        self.wake();
        Ok(ok)
    }

    async fn retry(&self, lease: &LeaseRef, next: &TaskMessage) -> Result<bool, BackendError> {
        {
            let mut st = self.lock();
            if !st.holds(lease) {
                return Ok(false);
            }
            st.remove(&lease.delivery_tag);
            let raw = next.to_envelope().into_bytes();
            st.insert(
                next.delivery_tag.clone(),
                next.id.clone(),
                next.queue.clone(),
                next.priority,
                next.run_at_ms(),
                raw,
            );
        }
        self.wake();
        Ok(true)
    }

    async fn dead_letter(
        &self,
        lease: Option<&LeaseRef>,
        queue: &str,
        raw: &[u8],
        reason: &str,
        task_id: Option<&str>,
    ) -> Result<(), BackendError> {
        let mut st = self.lock();
        if let Some(l) = lease
            && st.holds(l)
        {
            st.remove(&l.delivery_tag);
        }
        st.dead
            .push_front(DeadLetter::new(queue, task_id, reason, raw));
        st.dead.truncate(policy::DEAD_LETTER_CAP);
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        Ok(self.lock().dead.iter().take(limit).cloned().collect())
    }

    async fn requeue_expired(&self) -> Result<u64, BackendError> {
        let now = now_ms();
        let mut n = 0;
        {
            let mut st = self.lock();
            let expired: Vec<String> = st
                .msgs
                .iter()
                .filter(|(_, m)| m.lease.as_ref().is_some_and(|(_, until)| *until < now))
                .map(|(t, _)| t.clone())
                .collect();
            for t in expired {
                st.msgs
                    .get_mut(&t)
                    .expect("expired message present")
                    .redelivered = true;
                st.unlease(&t);
                n += 1;
            }
        }
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    async fn revoke(
        &self,
        task_id: &str,
        terminate: bool,
        keep: Duration,
    ) -> Result<RevokeOutcome, BackendError> {
        let out = {
            let mut st = self.lock();
            let until = now_ms() + keep.as_millis() as i64;
            // A repeat never weakens a revocation: one that terminates stays so, and its
            // keep only grows; only a terminate after a cancel is logged anew.
            let cur = st
                .revocations
                .get_mut(task_id)
                .filter(|(_, exp)| *exp > now_ms());
            match cur {
                Some((rev, exp)) if rev.terminate || !terminate => *exp = (*exp).max(until),
                cur => {
                    let until = cur.map_or(until, |(_, exp)| (*exp).max(until));
                    st.rev_seq += 1;
                    let rev = Revocation {
                        task_id: task_id.to_owned(),
                        terminate,
                        at: crate::time::now(),
                        seq: st.rev_seq,
                    };
                    st.revocations.insert(task_id.to_owned(), (rev, until));
                }
            }
            let removed = st.remove_waiting(|m| m.task_id == task_id);
            let running = st
                .msgs
                .values()
                .any(|m| m.task_id == task_id && m.lease.is_some());
            RevokeOutcome { removed, running }
        };
        self.wake();
        Ok(out)
    }

    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BackendError> {
        let st = self.lock();
        if cursor == u64::MAX {
            return Ok((vec![], st.rev_seq));
        }
        let mut revs: Vec<Revocation> = st
            .revocations
            .values()
            .filter(|(r, _)| r.seq > cursor)
            .map(|(r, _)| r.clone())
            .collect();
        revs.sort_by_key(|r| r.seq);
        Ok((revs, st.rev_seq.max(cursor)))
    }

    async fn revocation(&self, task_id: &str) -> Result<Option<Revocation>, BackendError> {
        Ok(self.lock().revocations.get(task_id).map(|(r, _)| r.clone()))
    }

    async fn purge(&self, queues: &[String]) -> Result<u64, BackendError> {
        Ok(self.lock().remove_waiting(|m| queues.contains(&m.queue)))
    }

    async fn queue_stats(
        &self,
        queues: Option<&[String]>,
    ) -> Result<Vec<QueueStats>, BackendError> {
        let now = now_ms();
        let st = self.lock();
        let mut by: HashMap<String, QueueStats> = HashMap::new();
        if let Some(qs) = queues {
            for q in qs {
                by.insert(
                    q.clone(),
                    QueueStats {
                        queue: q.clone(),
                        ..Default::default()
                    },
                );
            }
        }
        for m in st.msgs.values() {
            if queues.is_some_and(|qs| !qs.contains(&m.queue)) {
                continue;
            }
            let e = by.entry(m.queue.clone()).or_insert_with(|| QueueStats {
                queue: m.queue.clone(),
                ..Default::default()
            });
            if m.lease.is_some() {
                e.leased += 1;
            } else if m.run_at > now {
                e.scheduled += 1;
            } else {
                e.ready += 1;
            }
        }
        let mut v: Vec<QueueStats> = by.into_values().collect();
        v.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(v)
    }

    async fn heartbeat(&self, report: &WorkerReport) -> Result<(), BackendError> {
        self.lock()
            .workers
            .insert(report.node.clone(), report.clone());
        Ok(())
    }

    async fn worker_gone(&self, node: &str) -> Result<(), BackendError> {
        self.lock().workers.remove(node);
        Ok(())
    }

    async fn workers(&self, _timeout: Duration) -> Result<Vec<WorkerReport>, BackendError> {
        let now = crate::time::now();
        let mut v: Vec<WorkerReport> = self
            .lock()
            .workers
            .values()
            .filter(|w| policy::worker_alive(w, now))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(v)
    }

    async fn cleanup(&self) -> Result<CleanupStats, BackendError> {
        let now = now_ms();
        let mut st = self.lock();
        let mut stats = CleanupStats::default();
        let before = st.revocations.len();
        st.revocations.retain(|_, (_, exp)| *exp > now);
        stats.revocations = (before - st.revocations.len()) as u64;
        let cutoff = crate::time::now()
            - chrono::Duration::from_std(policy::DEAD_LETTER_KEEP).unwrap_or_default();
        let before = st.dead.len();
        st.dead.retain(|d| d.at > cutoff);
        stats.dead_letters = (before - st.dead.len()) as u64;
        let before = st.workers.len();
        let t = crate::time::now();
        st.workers.retain(|_, w| policy::worker_alive(w, t));
        stats.workers = (before - st.workers.len()) as u64;
        Ok(stats)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[async_trait]
impl ResultBackend for MemoryBackend {
    async fn store(
        &self,
        meta: &ResultMeta,
        fence: Option<&LeaseRef>,
    ) -> Result<StoreOutcome, BackendError> {
        {
            let mut st = self.lock();
            match fence {
                Some(l) if !st.holds(l) => return Ok(StoreOutcome::Fenced),
                Some(_) => {}
                None => {
                    if st
                        .results
                        .get(&meta.task_id)
                        .is_some_and(|(m, _)| m.status.is_terminal())
                    {
                        return Ok(StoreOutcome::KeptTerminal);
                    }
                }
            }
            let exp = now_ms() + self.result_expires.as_millis() as i64;
            st.results.insert(meta.task_id.clone(), (meta.clone(), exp));
        }
        self.hub.publish(meta.clone());
        Ok(StoreOutcome::Stored)
    }

    async fn complete(
        &self,
        meta: &ResultMeta,
        lease: &LeaseRef,
    ) -> Result<StoreOutcome, BackendError> {
        {
            let mut st = self.lock();
            if !st.holds(lease) {
                return Ok(StoreOutcome::Fenced);
            }
            st.remove(&lease.delivery_tag);
            let exp = now_ms() + self.result_expires.as_millis() as i64;
            st.results.insert(meta.task_id.clone(), (meta.clone(), exp));
        }
        self.hub.publish(meta.clone());
        Ok(StoreOutcome::Stored)
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let now = now_ms();
        Ok(self
            .lock()
            .results
            .get(task_id)
            .filter(|(_, exp)| *exp > now)
            .map(|(m, _)| m.clone()))
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        self.lock().results.remove(task_id);
        Ok(())
    }

    fn events(&self) -> &EventHub {
        &self.hub
    }

    async fn cleanup(&self) -> Result<u64, BackendError> {
        let now = now_ms();
        let mut st = self.lock();
        let before = st.results.len();
        st.results.retain(|_, (_, exp)| *exp > now);
        Ok((before - st.results.len()) as u64)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
