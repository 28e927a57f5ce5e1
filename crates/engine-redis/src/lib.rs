//! Redis broker and result backend for Afterview's task engine, wire-compatible with Celery 5
//! on kombu's Redis transport (`../shared/docs/celery-protocol.md`).
//!
//! What travels on the wire is what Python writes and reads: task lists and priority buckets
//! (`<q>`, `<q>\x06\x16{3,6,9}`), the `unacked`/`unacked_index` bookkeeping, result keys
//! `celery-task-meta-<id>` written with SETEX and PUBLISH, pidbox control on
//! `/{db}.celery.pidbox` with replies through `_kombu.binding.reply.celery.pidbox`, and events on
//! `/{db}.celeryev/<type>`. So Python producers, Celery workers and Flower share queues, results
//! and the control plane with Afterview's workers.
//!
//! Invariants, beyond Celery's own:
//! - Every transition is one Lua script ([`scripts`]): a message is always in a queue, in the
//!   schedule or in `unacked` with a lease; there is no fetch-then-record window.
//! - A claim takes a per-message *lease* (epoch-fenced) that the running worker renews; a crashed
//!   worker's message is back within the lease, a live one is never redelivered. Python's
//!   visibility-timeout sweep never touches a leased message (its `unacked_index` score is kept
//!   fresh), and our sweep returns Python workers' messages after the same visibility timeout.
//! - Results are fenced by the lease and written in the same script as the ack.
//! - Revocations are tombstones in Redis with a TTL and a bounded log, checked at claim, so they
//!   survive restarts of workers and of Redis (with AOF); they are also broadcast on the pidbox
//!   so Python workers honour them.
//! - Everything this crate writes is bounded: results and tombstones expire, the revocation log
//!   and dead letters are capped, reply lists expire.
//! - Blocking reads (pidbox replies) use their own connection; pub/sub has its own connection
//!   that resubscribes after a reconnect and re-reads what it follows.

mod celery;
mod control;
pub use control::ControlRequest;
mod pubsub;
mod scripts;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use afterview_engine::BackendError;
use afterview_engine::backend::{
    Broker, ClaimRequest, CleanupStats, DeadLetter, Delivery, LeaseRef, QueueStats, ResultBackend,
    Revocation, RevokeOutcome, StoreOutcome, WorkerReport,
};
use afterview_engine::events::EventHub;
use afterview_engine::message::{EnvelopeInfo, TaskMessage};
use afterview_engine::policy;
use afterview_engine::result::ResultMeta;
use afterview_engine::time::now_ms;
use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::debug;

use crate::control::Control;

/// Prefix of result keys and channels (Celery's default).
pub const RESULT_PREFIX: &str = "celery-task-meta-";

/// Tunables; the defaults are Celery's where Celery has one.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// How long results live (Celery's `result_expires`, default 1 day).
    pub result_expires: Duration,
    /// Messages of foreign consumers (Python workers) unacked for longer than this go back to
    /// their queue (kombu's `visibility_timeout`, default 1 h). Ours are governed by leases.
    pub visibility_timeout: Duration,
    /// Send task events (`task-received`, `task-started`, ...), as `celery worker -E`. Flower's
    /// `enable_events` also turns them on.
    pub task_events: bool,
    /// Ask Redis for keyspace notifications on list pushes, so workers wake at once for tasks that
    /// Python producers LPUSH (they publish no wake-up). Without them workers poll every 100 ms.
    pub keyspace_events: bool,
    /// Dead letters kept.
    pub dead_letters_max: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            result_expires: Duration::from_secs(86_400),
            visibility_timeout: Duration::from_secs(3_600),
            task_events: false,
            keyspace_events: true,
            dead_letters_max: policy::DEAD_LETTER_CAP,
        }
    }
}

struct Scripts {
    claim: redis::Script,
    ack: redis::Script,
    release: redis::Script,
    renew: redis::Script,
    requeue_expired: redis::Script,
    retry: redis::Script,
    defer: redis::Script,
    publish: redis::Script,
    revoke: redis::Script,
    revocations_since: redis::Script,
    queue_stats: redis::Script,
    purge: redis::Script,
    dead: redis::Script,
    reply: redis::Script,
}

impl Scripts {
    fn new() -> Self {
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

/// Wake-ups for idle claimers: a generation counter plus a notifier, so a wake-up between an
/// empty claim and the wait is never lost.
#[derive(Default)]
pub(crate) struct Wake {
    generation: AtomicU64,
    notify: Notify,
}

impl Wake {
    pub(crate) fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

pub(crate) struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    results: ConnectionManager,
    broker_db: i64,
    opts: RedisOptions,
    scripts: Scripts,
    hub: EventHub,
    wake: Wake,
    revoke_wake: Notify,
    claim_seen: Mutex<HashMap<Vec<String>, (u64, i64)>>,
    subs: mpsc::UnboundedSender<pubsub::Cmd>,
    stores: mpsc::UnboundedSender<StoreReq>,
    control: Control,
    declared: Mutex<HashSet<String>>,
    keyevents: AtomicBool,
    description: String,
    broker_url: String,
}

/// A Redis broker and result backend (one object implements both traits).
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("at", &self.inner.description)
            .finish()
    }
}

/// A call of a lease-fenced script: ARGV starts with the lease's tag and epoch.
fn fenced_call<'a>(script: &'a redis::Script, lease: &LeaseRef) -> redis::ScriptInvocation<'a> {
    let mut call = script.prepare_invoke();
    call.arg(&lease.delivery_tag).arg(lease.epoch);
    call
}

fn unavailable(e: redis::RedisError) -> BackendError {
    if e.kind() == redis::ErrorKind::Parse || e.kind() == redis::ErrorKind::UnexpectedReturnType {
        BackendError::Corrupt(e.to_string())
    } else {
        BackendError::Unavailable(e.to_string())
    }
}

/// `redis://host:port/db` with any password replaced, for logs and `inspect`.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

impl RedisBackend {
    /// Connects to the broker at `broker_url` (`redis://[:password@]host[:port][/db]`) and the
    /// result backend at `result_url` (same server, any database; default: the broker's).
    pub async fn open(
        broker_url: &str,
        result_url: Option<&str>,
        opts: RedisOptions,
    ) -> Result<Self, BackendError> {
        let client = redis::Client::open(broker_url).map_err(|e| {
            BackendError::Invalid(format!("bad Redis URL {}: {e}", redact(broker_url)))
        })?;
        let result_client = match result_url {
            Some(u) => redis::Client::open(u)
                .map_err(|e| BackendError::Invalid(format!("bad Redis URL {}: {e}", redact(u))))?,
            None => client.clone(),
        };
        let (a, b) = (
            client.get_connection_info(),
            result_client.get_connection_info(),
        );
        if format!("{:?}", a.addr()) != format!("{:?}", b.addr()) {
            return Err(BackendError::Invalid(format!(
                "the result backend {} must be on the broker's Redis server {} (results are fenced by leases in one atomic script)",
                redact(result_url.unwrap_or_default()),
                redact(broker_url)
            )));
        }
        let broker_db = a.redis_settings().db();
        let backend_db = b.redis_settings().db();
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config())
            .await
            .map_err(|e| {
                BackendError::Unavailable(format!(
                    "cannot reach Redis at {}: {e}",
                    redact(broker_url)
                ))
            })?;
        let results = if backend_db == broker_db {
            conn.clone()
        } else {
            ConnectionManager::new_with_config(result_client.clone(), manager_config())
                .await
                .map_err(unavailable)?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (stores, stores_rx) = mpsc::unbounded_channel();
        tokio::spawn(store_writer(
            conn.clone(),
            stores_rx,
            (broker_db, backend_db),
            opts.result_expires.as_millis() as u64,
        ));
        let description = match result_url {
            Some(u) if backend_db != broker_db => {
                format!("redis {} (results {})", redact(broker_url), redact(u))
            }
            _ => format!("redis {}", redact(broker_url)),
        };
        let inner = Arc::new(Inner {
            client: client.clone(),
            conn,
            results,
            broker_db,
            control: Control::new(opts.task_events),
            opts,
            scripts: Scripts::new(),
            hub: EventHub::default(),
            wake: Wake::default(),
            revoke_wake: Notify::new(),
            claim_seen: Mutex::default(),
            subs: tx.clone(),
            stores,
            declared: Mutex::default(),
            keyevents: AtomicBool::new(false),
            description,
            broker_url: redact(broker_url),
        });
        inner.hub.set_listener(move |interest| {
            let _ = tx.send(pubsub::Cmd::Interest(interest));
        });
        inner.enable_keyevents().await;
        tokio::spawn(pubsub::run(Arc::downgrade(&inner), client, rx));
        Ok(Self { inner })
    }

    /// What this backend is connected to (password redacted).
    pub fn description(&self) -> &str {
        &self.inner.description
    }

    /// Sends a control command to every worker (Python or ours) and collects the replies for
    /// `timeout`, as `celery inspect` does. Returns `(node, reply)` pairs.
    pub async fn broadcast(
        &self,
        method: &str,
        arguments: serde_json::Value,
        destination: Option<Vec<String>>,
        timeout: Duration,
    ) -> Result<Vec<(String, serde_json::Value)>, BackendError> {
        self.inner
            .broadcast(method, arguments, destination, timeout, true)
            .await
    }

    /// Runs a [`fenced_call`]: true when the lease was still current and the script acted.
    async fn fenced(&self, call: redis::ScriptInvocation<'_>) -> Result<bool, BackendError> {
        let mut c = self.inner.conn();
        let n: i64 = call.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(n == 1)
    }
}

impl Inner {
    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Turns on keyevent notifications for list pushes if the server allows CONFIG.
    pub(crate) async fn enable_keyevents(&self) {
        if !self.opts.keyspace_events {
            return;
        }
        let mut c = self.conn();
        let cur: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut c)
            .await;
        let flags = match cur {
            Ok(v) => v.get(1).cloned().unwrap_or_default(),
            Err(e) => {
                debug!(error = %e, "CONFIG GET refused; workers will poll for Python-produced tasks.");
                return;
            }
        };
        let has_list = flags.contains('l') || flags.contains('A');
        let ok = if flags.contains('E') && has_list {
            true
        } else {
            let mut want = flags.clone();
            if !want.contains('E') {
                want.push('E');
            }
            if !has_list {
                want.push('l');
            }
            let r: Result<(), _> = redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(&want)
                .query_async(&mut c)
                .await;
            match r {
                Ok(()) => true,
                Err(e) => {
                    debug!(error = %e, "CONFIG SET refused; workers will poll for Python-produced tasks.");
                    false
                }
            }
        };
        self.keyevents.store(ok, Ordering::SeqCst);
    }

    async fn declare(&self, queue: &str) -> Result<(), BackendError> {
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

    async fn publish_one(
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

    async fn revoke(
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

    async fn store_meta(
        &self,
        meta: &ResultMeta,
        fence: Option<&LeaseRef>,
        ack: bool,
    ) -> Result<StoreOutcome, BackendError> {
        let (tag, epoch) = fence.map_or((String::new(), 0), |l| (l.delivery_tag.clone(), l.epoch));
        let (reply, rx) = oneshot::channel();
        self.stores
            .send(StoreReq {
                key: format!("{RESULT_PREFIX}{}", meta.task_id),
                meta: meta.to_json(),
                tag,
                epoch,
                ack,
                reply,
            })
            .map_err(|_| BackendError::Unavailable("result writer stopped".into()))?;
        let out = rx
            .await
            .map_err(|_| BackendError::Unavailable("result writer stopped".into()))??;
        let outcome = match out.as_str() {
            "stored" => StoreOutcome::Stored,
            "fenced" => StoreOutcome::Fenced,
            _ => StoreOutcome::KeptTerminal,
        };
        if outcome == StoreOutcome::Stored {
            self.task_event(meta).await;
        }
        Ok(outcome)
    }
}

/// One result write waiting for the writer.
struct StoreReq {
    key: String,
    meta: String,
    tag: String,
    epoch: u64,
    ack: bool,
    reply: oneshot::Sender<Result<String, BackendError>>,
}

/// Writes results in batches: concurrent writes (many tasks finishing at once) go to Redis in
/// one script call while the previous call is in flight, like a group commit.
async fn store_writer(
    mut conn: ConnectionManager,
    mut rx: mpsc::UnboundedReceiver<StoreReq>,
    dbs: (i64, i64),
    ttl_ms: u64,
) {
    let script = scripts::with_helpers(scripts::STORE);
    let mut batch: Vec<StoreReq> = Vec::with_capacity(128);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 128 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut inv = script.prepare_invoke();
        inv.arg(dbs.1).arg(dbs.0).arg(ttl_ms);
        for r in &batch {
            inv.arg(&r.key)
                .arg(&r.meta)
                .arg(&r.tag)
                .arg(r.epoch)
                .arg(if r.ack { "1" } else { "0" });
        }
        let res: Result<Vec<String>, BackendError> =
            inv.invoke_async(&mut conn).await.map_err(unavailable);
        match res {
            Ok(verdicts) if verdicts.len() == batch.len() => {
                for (r, v) in batch.drain(..).zip(verdicts) {
                    let _ = r.reply.send(Ok(v));
                }
            }
            Ok(v) => {
                let e = BackendError::Corrupt(format!(
                    "result script answered {} verdicts for {} writes",
                    v.len(),
                    batch.len()
                ));
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(BackendError::Corrupt(e.to_string())));
                }
            }
            Err(e) => {
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(BackendError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

fn parse_revocation(task_id: &str, v: &str) -> Option<Revocation> {
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

type ClaimRow = (String, String, String, Vec<u8>, u64, String);

#[async_trait]
impl Broker for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, msg: &TaskMessage) -> Result<(), BackendError> {
        self.inner
            .publish_one(
                &msg.queue,
                msg.priority,
                msg.run_at_ms(),
                &[msg.to_envelope()],
            )
            .await
    }

    async fn publish_batch(&self, msgs: &[TaskMessage]) -> Result<(), BackendError> {
        let now = now_ms();
        let mut i = 0;
        while i < msgs.len() {
            let first = &msgs[i];
            let due = first.run_at_ms() <= now;
            let mut raws = vec![first.to_envelope()];
            let mut j = i + 1;
            while due
                && j < msgs.len()
                && raws.len() < 500
                && msgs[j].queue == first.queue
                && msgs[j].priority == first.priority
                && msgs[j].run_at_ms() <= now
            {
                raws.push(msgs[j].to_envelope());
                j += 1;
            }
            let run_at = if due { 0 } else { first.run_at_ms() };
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
        let generation = self.inner.wake.generation.load(Ordering::SeqCst);
        let mut c = self.inner.conn();
        let mut inv = self.inner.scripts.claim.prepare_invoke();
        inv.arg(now_ms())
            .arg(req.lease.as_millis() as u64)
            .arg(req.max)
            .arg(&req.worker);
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
        for (tag, task_id, queue, raw, epoch, rev) in rows {
            let revoked = if rev.is_empty() {
                None
            } else {
                parse_revocation(&task_id, &rev)
            };
            self.inner.received(&req.worker, &raw).await;
            out.push(Delivery {
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
            });
        }
        Ok(out)
    }

    /// True while keyspace notifications for list pushes are on: then Python producers'
    /// LPUSHes wake us as our own PUBLISHed wake-ups do, and polling is only a safety net.
    fn pushes_wakeups(&self) -> bool {
        self.inner.keyevents.load(Ordering::SeqCst)
    }

    async fn wait_for_work(&self, queues: &[String], max_wait: Duration) {
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
        let entry = DeadLetter {
            queue: queue.to_owned(),
            task_id: task_id.map(str::to_owned),
            reason: reason.to_owned(),
            payload: String::from_utf8_lossy(raw).into_owned(),
            at: Utc::now(),
        };
        let entry =
            serde_json::to_string(&entry).map_err(|e| BackendError::Invalid(e.to_string()))?;
        let (tag, epoch) = lease.map_or((String::new(), 0), |l| (l.delivery_tag.clone(), l.epoch));
        let mut c = self.inner.conn();
        self.inner
            .scripts
            .dead
            .arg(tag)
            .arg(epoch)
            .arg(entry)
            .arg(self.inner.opts.dead_letters_max.max(1))
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(())
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
        let since = if cursor == u64::MAX {
            u64::MAX >> 1
        } else {
            cursor
        };
        let v: Vec<redis::Value> = self
            .inner
            .scripts
            .revocations_since
            .arg(since)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        let mut it = v.into_iter();
        let seq: u64 = it
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| BackendError::Corrupt(e.to_string()))?
            .unwrap_or(0);
        if cursor == u64::MAX {
            return Ok((vec![], seq));
        }
        let mut out = vec![];
        let mut next = if seq < cursor { 0 } else { cursor };
        for row in it {
            let (s, id, terminate, at): (u64, String, String, i64) =
                redis::from_redis_value(row).map_err(|e| BackendError::Corrupt(e.to_string()))?;
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
        for q in &report.queues {
            self.inner.declare(q).await?;
        }
        self.inner.heartbeat(report).await
    }

    async fn worker_gone(&self, node: &str) -> Result<(), BackendError> {
        self.inner.worker_gone(node).await
    }

    async fn workers(&self, timeout: Duration) -> Result<Vec<WorkerReport>, BackendError> {
        self.inner.workers(timeout).await
    }

    async fn cleanup(&self) -> Result<CleanupStats, BackendError> {
        // Results, tombstones, leases and reply lists carry TTLs; the revocation log and dead
        // letters are capped at write time: nothing is left to sweep.
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

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn store(
        &self,
        meta: &ResultMeta,
        fence: Option<&LeaseRef>,
    ) -> Result<StoreOutcome, BackendError> {
        self.inner.store_meta(meta, fence, false).await
    }

    async fn complete(
        &self,
        meta: &ResultMeta,
        lease: &LeaseRef,
    ) -> Result<StoreOutcome, BackendError> {
        self.inner.store_meta(meta, Some(lease), true).await
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let mut c = self.inner.results.clone();
        let v: Option<String> = c
            .get(format!("{RESULT_PREFIX}{task_id}"))
            .await
            .map_err(unavailable)?;
        match v {
            None => Ok(None),
            Some(s) => ResultMeta::from_json(&s)
                .map(Some)
                .map_err(|e| BackendError::Corrupt(format!("result of {task_id}: {e}"))),
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let mut c = self.inner.results.clone();
        c.del::<_, i64>(format!("{RESULT_PREFIX}{task_id}"))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn events(&self) -> &EventHub {
        &self.inner.hub
    }

    async fn cleanup(&self) -> Result<u64, BackendError> {
        // Result keys are written with SETEX: Redis expires them.
        Ok(0)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Broker::ping(self).await
    }
}
