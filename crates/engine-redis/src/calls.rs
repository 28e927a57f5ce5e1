//! Where the Lua scripts are called: the compiled set, the fenced-call shape, error mapping,
//! and the calls the broker and the control plane share (declare, publish, revoke).

use std::time::Duration;

use afterview_engine::BackendError;
use afterview_engine::backend::{Cause, Delivery, LeaseRef, Revocation};
use afterview_engine::policy;
use afterview_engine::time::now_ms;
use chrono::{TimeZone, Utc};

use crate::{Inner, celery, scripts};

/// Every script, compiled once (EVALSHA after the first call).
pub(crate) struct Scripts {
    pub(crate) claim: redis::Script,
    pub(crate) ack: redis::Script,
    pub(crate) release: redis::Script,
    pub(crate) renew: redis::Script,
    pub(crate) requeue_expired: redis::Script,
    pub(crate) retry: redis::Script,
    pub(crate) defer: redis::Script,
    pub(crate) publish: redis::Script,
    pub(crate) revoke: redis::Script,
    pub(crate) revocations_since: redis::Script,
    pub(crate) queue_stats: redis::Script,
    pub(crate) purge: redis::Script,
    pub(crate) dead: redis::Script,
    pub(crate) reply: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        use scripts::*;
        Self {
            claim: with_helpers(CLAIM),
            ack: with_helpers(ACK),
            release: with_helpers(RELEASE),
            renew: with_helpers(RENEW),
            requeue_expired: with_helpers(REQUEUE_EXPIRED),
            retry: with_helpers(RETRY),
            defer: with_helpers(DEFER),
            publish: with_helpers(PUBLISH),
            revoke: with_helpers(REVOKE),
            revocations_since: with_helpers(REVOCATIONS_SINCE),
            queue_stats: with_helpers(QUEUE_STATS),
            purge: with_helpers(PURGE),
            dead: with_helpers(DEAD),
            reply: with_helpers(REPLY),
        }
    }
}

/// A call of a lease-fenced script: ARGV starts with the lease's tag and epoch.
pub(crate) fn fenced_call<'a>(
    script: &'a redis::Script,
    lease: &LeaseRef,
) -> redis::ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    call.arg(&lease.delivery_tag).arg(lease.epoch);
    call
}

/// A Redis error as the engine sees it: a reply of the wrong shape is corrupt data, anything
/// else is the store being unavailable.
pub(crate) fn unavailable(e: redis::RedisError) -> BackendError {
    if e.kind() == redis::ErrorKind::Parse || e.kind() == redis::ErrorKind::UnexpectedReturnType {
        BackendError::Corrupt(Cause::with_source(e.to_string(), e))
    } else if e.code() == Some("OOM") {
        // Refused before any write (a script's first write, or a plain command).
        BackendError::Full(Cause::with_source(e.to_string(), e))
    } else {
        BackendError::Unavailable(Cause::with_source(e.to_string(), e))
    }
}

/// A claim's row as the claim script returns it.
/// The tag and task id are bytes as the script read them from the envelope: a producer may
/// have written any (see [`Unreadable`]).
pub(crate) type ClaimRow = (Vec<u8>, Vec<u8>, String, Vec<u8>, u64, String);

/// A claimed message whose delivery tag or task id is not UTF-8: it cannot be a [`Delivery`]
/// (nor be acked through one), so the broker sets it aside itself by its tag's bytes.
pub(crate) struct Unreadable {
    pub(crate) tag: Vec<u8>,
    pub(crate) epoch: u64,
    pub(crate) queue: String,
    pub(crate) raw: Vec<u8>,
}

/// The delivery of a claimed (or pushed) row.
pub(crate) fn delivery(
    (tag, task_id, queue, raw, epoch, rev): ClaimRow,
) -> Result<Delivery, Unreadable> {
    let (tag, task_id) = match (String::from_utf8(tag), String::from_utf8(task_id)) {
        (Ok(t), Ok(i)) => (t, i),
        (t, _) => {
            let tag = t.map_or_else(|e| e.into_bytes(), String::into_bytes);
            return Err(Unreadable {
                tag,
                epoch,
                queue,
                raw,
            });
        }
    };
    let revoked = if rev.is_empty() {
        None
    } else {
        parse_revocation(&task_id, &rev)
    };
    Ok(Delivery {
        lease: LeaseRef {
            task_id,
            delivery_tag: tag,
            epoch,
        },
        queue,
        raw,
        deliveries: epoch.min(u64::from(u32::MAX)) as u32,
        redelivered: epoch > 1,
        revoked,
    })
}

/// A revocation tombstone (`terminate|at_ms|seq`).
pub(crate) fn parse_revocation(task_id: &str, v: &str) -> Option<Revocation> {
    let mut parts = v.split('|');
    let terminate = parts.next()? == "1";
    let at: i64 = parts.next()?.parse().ok()?;
    let seq: u64 = parts.next()?.parse().ok()?;
    Some(Revocation {
        task_id: task_id.to_owned(),
        terminate,
        at: Utc
            .timestamp_millis_opt(at)
            .single()
            .unwrap_or_else(Utc::now),
        seq,
    })
}

impl Inner {
    pub(crate) async fn declare(&self, queue: &str) -> Result<(), BackendError> {
        if self.declared.lock().expect("declared lock").contains(queue) {
            return Ok(());
        }
        policy::check_queue(queue)?;
        let member = format!("{queue}{sep}{sep}{queue}", sep = celery::SEP);
        let mut c = self.conn();
        redis::pipe()
            .atomic()
            .sadd(format!("_kombu.binding.{queue}"), &member)
            .sadd(format!("_kombu.binding_permanent.{queue}"), &member)
            .sadd("afterview:queues", queue)
            .query_async::<()>(&mut c)
            .await
            .map_err(unavailable)?;
        self.declared
            .lock()
            .expect("declared lock")
            .insert(queue.to_owned());
        Ok(())
    }

    pub(crate) async fn publish_one(
        &self,
        queue: &str,
        priority: u8,
        run_at: i64,
        raws: &[String],
    ) -> Result<(), BackendError> {
        self.declare(queue).await?;
        let mut c = self.conn();
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.arg(queue).arg(priority).arg(run_at).arg(now_ms());
        for r in raws {
            inv.arg(r.as_str());
        }
        inv.invoke_async::<i64>(&mut c).await.map_err(unavailable)?;
        Ok(())
    }

    pub(crate) async fn revoke(
        &self,
        task_id: &str,
        terminate: bool,
        keep: Duration,
    ) -> Result<(u64, bool, bool), BackendError> {
        let mut c = self.conn();
        let (seq, running, new): (u64, i64, i64) = self
            .scripts
            .revoke
            .arg(task_id)
            .arg(if terminate { "1" } else { "0" })
            .arg(now_ms())
            .arg(keep.as_millis().max(1) as u64)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok((seq, running == 1, new == 1))
    }
}
