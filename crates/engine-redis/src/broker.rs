//! [`Broker`] over Redis: each operation is one script call or one command.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use afterview_engine::BackendError;
use afterview_engine::backend::{
    Broker, ClaimRequest, CleanupStats, DeadLetter, Delivery, LeaseRef, QueueStats, Revocation,
    RevokeOutcome, WorkerReport,
};
use afterview_engine::message::{EnvelopeInfo, TaskMessage};
use afterview_engine::time::now_ms;
use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use redis::AsyncCommands;

use crate::RedisBackend;
use crate::calls::{ClaimRow, Unreadable, delivery, fenced_call, parse_revocation, unavailable};
use crate::pubsub;
use crate::push::{Idle, waiters_key};

/// When a message goes onto its queue's list: at once when its consumer holds its ETA (a
/// foreign worker's task, Celery's way: the `eta` header travels with it), else at its ETA
/// (until then it waits in `afterview:scheduled`).
fn list_at(msg: &TaskMessage) -> i64 {
    if msg.consumer_holds_eta {
        0
    } else {
        msg.run_at_ms()
    }
}

#[async_trait]
impl Broker for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, msg: &TaskMessage) -> Result<(), BackendError> {
        self.inner
            .publish_one(&msg.queue, msg.priority, list_at(msg), &[msg.to_envelope()])
            .await
    }

    async fn publish_batch(&self, msgs: &[TaskMessage]) -> Result<(), BackendError> {
        let now = now_ms();
        let mut i = 0;
        while i < msgs.len() {
            let first = &msgs[i];
            let due = list_at(first) <= now;
            let mut raws = vec![first.to_envelope()];
            let mut j = i + 1;
            while due
                && j < msgs.len()
                && raws.len() < 500
                && msgs[j].queue == first.queue
                && msgs[j].priority == first.priority
                && list_at(&msgs[j]) <= now
            {
                raws.push(msgs[j].to_envelope());
                j += 1;
            }
            let run_at = if due { 0 } else { list_at(first) };
            self.inner
                .publish_one(&first.queue, first.priority, run_at, &raws)
                .await?;
            i = j;
        }
        Ok(())
    }

    async fn publish_raw(&self, queue: &str, raw: &[u8]) -> Result<(), BackendError> {
        self.inner.declare(queue).await?;
        let info = EnvelopeInfo::peek(raw);
        let mut c = self.inner.conn();
        self.inner
            .scripts
            .publish
            .arg(queue)
            .arg(info.priority)
            .arg(0)
            .arg(now_ms())
            .arg(raw)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Delivery>, BackendError> {
        if req.max == 0 || req.queues.is_empty() {
            return Ok(vec![]);
        }
        self.inner.worker_channels().await;
        // Pushed to this worker since its last claim: taken without a round trip, and without
        // recording a claim (the next wait returns at once, so the worker claims again and
        // registers as idle again when the queues are still empty).
        let pushed = self.inner.pushes.take(&req.worker, req.max);
        if !pushed.is_empty() {
            for d in &pushed {
                self.inner.received(&req.worker, &d.raw).await;
            }
            return Ok(pushed);
        }
        let lease_ms = req.lease.as_millis() as u64;
        let idle = if self.inner.opts.push_to_idle {
            self.inner.pushes.idle(&req.worker, lease_ms, &req.queues)
        } else {
            Idle::No
        };
        let register = match idle {
            Idle::Register => true,
            Idle::Subscribe(ready) => {
                let _ = self
                    .inner
                    .subs
                    .send(pubsub::Cmd::Push(req.worker.clone(), ready));
                false
            }
            Idle::No => false,
        };
        let generation = self.inner.wake.generation.load(Ordering::SeqCst);
        let mut c = self.inner.conn();
        let mut inv = self.inner.scripts.claim.prepare_invoke();
        inv.arg(now_ms())
            .arg(lease_ms)
            .arg(req.max)
            .arg(if register { req.worker.as_str() } else { "" });
        for q in &req.queues {
            inv.arg(q);
        }
        let (rows, next_due): (Vec<ClaimRow>, i64) =
            inv.invoke_async(&mut c).await.map_err(unavailable)?;
        self.inner
            .claim_seen
            .lock()
            .expect("claim lock")
            .insert(req.queues.clone(), (generation, next_due));
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            self.inner.received(&req.worker, &row.3).await;
            match delivery(row) {
                Ok(d) => out.push(d),
                // Failing the claim instead would fail its whole batch, after every lease.
                Err(u) => self.set_aside_unreadable(u).await,
            }
        }
        Ok(out)
    }

    /// True while keyspace notifications for list pushes are on: then Python producers'
    /// LPUSHes wake us as our own PUBLISHed wake-ups do, and polling is only a safety net.
    fn pushes_wakeups(&self) -> bool {
        self.inner.keyevents.load(Ordering::SeqCst)
    }

    async fn wait_for_work(&self, queues: &[String], max_wait: Duration) {
        self.inner.worker_channels().await;
        if queues.is_empty() {
            let _ = tokio::time::timeout(max_wait, self.inner.revoke_wake.notified()).await;
            return;
        }
        let notified = self.inner.wake.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let seen = self
            .inner
            .claim_seen
            .lock()
            .expect("claim lock")
            .get(queues)
            .copied();
        let mut wait = if self.inner.keyevents.load(Ordering::SeqCst) {
            max_wait
        } else {
            max_wait.min(Duration::from_millis(100))
        };
        if let Some((generation, next_due)) = seen {
            if self.inner.wake.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if next_due >= 0 {
                let until = Duration::from_millis((next_due - now_ms()).max(0) as u64);
                wait = wait.min(until);
            }
        }
        let _ = tokio::time::timeout(wait, notified).await;
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> Result<Vec<LeaseRef>, BackendError> {
        if leases.is_empty() {
            return Ok(vec![]);
        }
        let mut c = self.inner.conn();
        let mut inv = self.inner.scripts.renew.prepare_invoke();
        inv.arg(lease.as_millis() as u64).arg(now_ms());
        for l in leases {
            inv.arg(&l.delivery_tag).arg(l.epoch);
        }
        let lost: Vec<String> = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        let lost: HashSet<String> = lost.into_iter().collect();
        Ok(leases
            .iter()
            .filter(|l| lost.contains(&l.delivery_tag))
            .cloned()
            .collect())
    }

    async fn ack(&self, lease: &LeaseRef) -> Result<bool, BackendError> {
        self.fenced(fenced_call(&self.inner.scripts.ack, lease))
            .await
    }

    async fn release(&self, lease: &LeaseRef) -> Result<bool, BackendError> {
        self.fenced(fenced_call(&self.inner.scripts.release, lease))
            .await
    }

    async fn retry(&self, lease: &LeaseRef, next: &TaskMessage) -> Result<bool, BackendError> {
        let mut call = fenced_call(&self.inner.scripts.retry, lease);
        call.arg(&next.queue)
            .arg(next.priority)
            .arg(next.run_at_ms())
            .arg(now_ms())
            .arg(next.to_envelope());
        self.fenced(call).await
    }

    async fn defer(&self, lease: &LeaseRef, run_at_ms: i64) -> Result<bool, BackendError> {
        let mut call = fenced_call(&self.inner.scripts.defer, lease);
        call.arg(run_at_ms);
        self.fenced(call).await
    }

    async fn dead_letter(
        &self,
        lease: Option<&LeaseRef>,
        queue: &str,
        raw: &[u8],
        reason: &str,
        task_id: Option<&str>,
    ) -> Result<(), BackendError> {
        let (tag, epoch) = lease.map_or((&b""[..], 0), |l| (l.delivery_tag.as_bytes(), l.epoch));
        self.dead_by_tag(tag, epoch, queue, raw, reason, task_id)
            .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        if limit == 0 {
            return Ok(vec![]);
        }
        let mut c = self.inner.conn();
        let rows: Vec<String> = c
            .lrange("afterview:dead", 0, limit as isize - 1)
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }

    async fn requeue_expired(&self) -> Result<u64, BackendError> {
        let mut c = self.inner.conn();
        let n: u64 = self
            .inner
            .scripts
            .requeue_expired
            .arg(now_ms())
            .arg(self.inner.opts.visibility_timeout.as_secs())
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(n)
    }

    async fn revoke(
        &self,
        task_id: &str,
        terminate: bool,
        keep: Duration,
    ) -> Result<RevokeOutcome, BackendError> {
        let (_, running, _) = self.inner.revoke(task_id, terminate, keep).await?;
        // Python workers keep revocations in memory only: tell them too, as `control.revoke` does.
        self.inner.cast_revoke(task_id, terminate).await;
        Ok(RevokeOutcome {
            removed: 0,
            running,
        })
    }

    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BackendError> {
        let mut c = self.inner.conn();
        if cursor == u64::MAX {
            // Only the end: the sequence number, without the script (which would read from 0
            // when asked for a position past the end).
            let seq: Option<u64> = redis::cmd("GET")
                .arg("afterview:revocation-seq")
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            return Ok((vec![], seq.unwrap_or(0)));
        }
        let v: Vec<redis::Value> = self
            .inner
            .scripts
            .revocations_since
            .arg(cursor)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut it = v.into_iter();
        let seq: u64 = it
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| BackendError::corrupt(e.to_string()))?
            .unwrap_or(0);
        let mut out = vec![];
        let mut next = if seq < cursor { 0 } else { cursor };
        for row in it {
            let (s, id, terminate, at): (u64, String, String, i64) =
                redis::from_redis_value(row).map_err(|e| BackendError::corrupt(e.to_string()))?;
            next = next.max(s);
            out.push(Revocation {
                task_id: id,
                terminate: terminate == "1",
                at: Utc
                    .timestamp_millis_opt(at)
                    .single()
                    .unwrap_or_else(Utc::now),
                seq: s,
            });
        }
        Ok((out, next))
    }

    async fn revocation(&self, task_id: &str) -> Result<Option<Revocation>, BackendError> {
        let mut c = self.inner.conn();
        let v: Option<String> = c
            .get(format!("afterview:revoked:{task_id}"))
            .await
            .map_err(unavailable)?;
        Ok(v.and_then(|v| parse_revocation(task_id, &v)))
    }

    async fn purge(&self, queues: &[String]) -> Result<u64, BackendError> {
        if queues.is_empty() {
            return Ok(0);
        }
        let mut c = self.inner.conn();
        let mut inv = self.inner.scripts.purge.prepare_invoke();
        for q in queues {
            inv.arg(q);
        }
        inv.invoke_async(&mut c).await.map_err(unavailable)
    }

    async fn queue_stats(
        &self,
        queues: Option<&[String]>,
    ) -> Result<Vec<QueueStats>, BackendError> {
        let mut c = self.inner.conn();
        let names: Vec<String> = match queues {
            Some(q) => q.to_vec(),
            None => {
                let mut v: Vec<String> =
                    c.smembers("afterview:queues").await.map_err(unavailable)?;
                v.sort();
                v
            }
        };
        if names.is_empty() {
            return Ok(vec![]);
        }
        let mut inv = self.inner.scripts.queue_stats.prepare_invoke();
        inv.arg(now_ms());
        for q in &names {
            inv.arg(q);
        }
        let rows: Vec<(String, u64, u64, u64)> =
            inv.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|(queue, ready, scheduled, leased)| QueueStats {
                queue,
                ready,
                scheduled,
                leased,
            })
            .collect())
    }

    async fn heartbeat(&self, report: &WorkerReport) -> Result<(), BackendError> {
        // The queues' bindings are best effort (declared again on the next beat): a Redis that
        // is full refuses their SADDs, and the worker must still join the control channel and
        // be seen while it drains.
        for q in &report.queues {
            if let Err(e) = self.inner.declare(q).await {
                tracing::warn!(error = %e, queue = %q, "Could not declare a queue's binding; trying again at the next heartbeat.");
            }
        }
        self.inner.heartbeat(report).await
    }

    async fn worker_gone(&self, node: &str) -> Result<(), BackendError> {
        self.stop_taking(node).await?;
        self.inner.worker_gone(node).await
    }

    async fn stop_taking(&self, node: &str) -> Result<(), BackendError> {
        // No more pushes: leave the idle sets, give back what was pushed and never taken.
        let (registered, left) = self.inner.pushes.close(node);
        if let Some((entry, queues)) = registered {
            let mut pipe = redis::pipe();
            for q in &queues {
                pipe.zrem(waiters_key(q), &entry).ignore();
            }
            let mut c = self.inner.conn();
            pipe.query_async::<()>(&mut c).await.map_err(unavailable)?;
        }
        for d in left {
            self.release(&d.lease).await?;
        }
        Ok(())
    }

    async fn workers(&self, timeout: Duration) -> Result<Vec<WorkerReport>, BackendError> {
        self.inner.workers(timeout).await
    }

    async fn cleanup(&self) -> Result<CleanupStats, BackendError> {
        // Results, tombstones, leases and reply lists carry TTLs; the revocation log is capped
        // and dead letters are capped and aged out at write time (the list itself expires a
        // week after its newest entry): nothing is left to sweep.
        Ok(CleanupStats::default())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut c = self.inner.conn();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

impl RedisBackend {
    /// Records a dead letter and, when the lease `tag` (its bytes as stored) is still held at
    /// `epoch`, acks its message (`tag` empty: no message to ack).
    async fn dead_by_tag(
        &self,
        tag: &[u8],
        epoch: u64,
        queue: &str,
        raw: &[u8],
        reason: &str,
        task_id: Option<&str>,
    ) -> Result<(), BackendError> {
        let entry = DeadLetter::new(queue, task_id, reason, raw);
        let cutoff = (entry.at
            - chrono::Duration::from_std(afterview_engine::policy::DEAD_LETTER_KEEP)
                .unwrap_or_default())
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
        let entry =
            serde_json::to_string(&entry).map_err(|e| BackendError::invalid(e.to_string()))?;
        let mut c = self.inner.conn();
        self.inner
            .scripts
            .dead
            .arg(tag)
            .arg(epoch)
            .arg(entry)
            .arg(self.inner.opts.dead_letters_max.max(1))
            .arg(cutoff)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// A claimed message whose tag or task id is not UTF-8: dead-lettered and acked here (the
    /// worker could neither read nor ack it). Should that fail, its lease runs out and the
    /// next claim tries again.
    async fn set_aside_unreadable(&self, u: Unreadable) {
        tracing::warn!(queue = %u.queue, "A claimed message's delivery tag or task id is not UTF-8; set aside.");
        let reason = "the message's delivery tag or task id is not UTF-8";
        if let Err(e) = self
            .dead_by_tag(&u.tag, u.epoch, &u.queue, &u.raw, reason, None)
            .await
        {
            tracing::warn!(error = %e, "Could not set the message aside; it comes back after its lease.");
        }
    }
}
