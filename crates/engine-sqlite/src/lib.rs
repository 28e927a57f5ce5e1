//! The embedded broker and result backend: one SQLite file in the data dir, in WAL mode.
//!
//! Job: make `afterview serve` durable with no server to install. Several processes may open the
//! same file (a `worker` in one shell, a `call` in another); SQLite's locking serializes their
//! writes and every process sees the others' changes.
//!
//! How it works:
//! - Writes go through one writer thread per process ([`writer`]), which commits them in
//!   batches; an operation returns only after its commit.
//! - Reads use a small pool of read connections; WAL lets them run beside the writer.
//! - A watcher thread polls `PRAGMA data_version` (a cheap counter that changes when *another*
//!   connection commits). On a change it wakes waiting workers and re-publishes result changes
//!   written by other processes on this process's event hub, so WebSocket followers in `serve`
//!   see progress from a `worker` running elsewhere. Writes of this process are published
//!   directly after their commit.
//!
//! Invariants (beyond those of [`afterview_engine::backend`]):
//! - `messages.state` is 0 = ready, 1 = scheduled (ETA in the future), 2 = leased (SQL uses
//!   the literals). Scheduled
//!   messages are promoted when due, inside the claim transaction.
//! - Each result write gets a new, never reused `results.seq` (one above the highest ever given,
//!   kept in `counters` when rows are deleted), which is what the watcher follows.
//! - The WAL is copied back into the database beside the writer ([`checkpoint`], once 1,000
//!   frames wait; looked at every 100 ms), and the writer still checkpoints it itself (SQLite's auto-checkpoint):
//!   only a checkpoint between two of the writer's commits lets the WAL restart from its start
//!   (a checkpoint beside a busy writer never catches up; alone, the WAL grew without bound:
//!   1.3 GB in 12 s), and the background one leaves it almost nothing to copy or sync.
//! - With `synchronous = NORMAL` (the default) a commit survives a killed process; `FULL` also
//!   survives power loss.

mod checkpoint;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use afterview_engine::backend::{
    BackendError, Broker, ClaimRequest, CleanupStats, DeadLetter, Delivery, LeaseRef, QueueStats,
    ResultBackend, Revocation, RevokeOutcome, StoreOutcome, WorkerReport,
};
use afterview_engine::events::EventHub;
use afterview_engine::message::{EnvelopeInfo, TaskMessage, new_id};
use afterview_engine::policy;
use afterview_engine::result::ResultMeta;
use afterview_engine::time::{from_ms, now_ms};
use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::writer::{AfterCommit, Writer};

const READY: i64 = 0;
const SCHEDULED: i64 = 1;

/// Whether a task has an unexpired final state (`policy::TERMINAL_STATES`, a test checks).
const HAS_TERMINAL_RESULT: &str = "SELECT EXISTS(SELECT 1 FROM results WHERE task_id = ?1
    AND expires_at > ?2 AND status IN ('SUCCESS', 'FAILURE', 'REVOKED'))";

/// The ready messages of one queue a claim may take, in delivery order.
const CLAIM_CANDIDATES: &str = "SELECT priority, seq FROM messages WHERE state = 0 AND queue = ?1
     ORDER BY priority, seq LIMIT ?2";

/// A revoke: drops the task's messages that wait (ready or scheduled); `messages_task` finds them.
const REVOKE_WAITING: &str = "DELETE FROM messages WHERE task_id = ?1 AND state IN (0, 1)";

/// A revoke: whether the task is running here or elsewhere (a leased message of it).
const IS_RUNNING: &str = "SELECT EXISTS(SELECT 1 FROM messages WHERE state = 2 AND task_id = ?1)";

/// How the file is opened.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long results are kept.
    pub result_expires: Duration,
    /// `FULL` syncs every commit to disk (survives power loss); `NORMAL` survives a crash of the
    /// process and is much faster.
    pub synchronous_full: bool,
    /// How long a write waits for another process's lock.
    pub busy_timeout: Duration,
    /// Tests: how long the watcher thread sleeps before it starts (a late-scheduled thread).
    #[cfg(test)]
    watch_delay: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            result_expires: Duration::from_secs(24 * 3600),
            synchronous_full: false,
            busy_timeout: Duration::from_secs(5),
            #[cfg(test)]
            watch_delay: Duration::ZERO,
        }
    }
}

struct Inner {
    path: PathBuf,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    hub: EventHub,
    wake: Notify,
    origin: String,
    opts: SqliteOptions,
    /// Stops the background checkpointer when the backend is dropped.
    _checkpointer: checkpoint::Checkpointer,
}

impl Inner {
    fn wake(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BackendError> {
        let conn = self.readers.lock().expect("reader pool lock").pop();
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.path, &self.opts, true).map_err(unavailable)?,
        };
        let out = f(&conn).map_err(unavailable);
        let mut pool = self.readers.lock().expect("reader pool lock");
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }
}

/// The SQLite broker and result backend (one object implements both traits).
#[derive(Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn unavailable(e: rusqlite::Error) -> BackendError {
    BackendError::Unavailable(afterview_engine::backend::Cause::with_source(
        e.to_string(),
        e,
    ))
}

/// The size (bytes) a restarted WAL is cut back to: above the auto-checkpoint's ~40 MB.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

fn open_conn(path: &Path, opts: &SqliteOptions, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(opts.busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        if opts.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        },
    )?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Plans that never depend on bound values. Without it, SQLite (3.46 and later) reads a
    // bound `LIMIT ?` while planning and marks the statement to be compiled again whenever
    // that parameter is bound: the claim's candidate query was parsed and planned anew on
    // every claim, 7 % of the writer thread's time in a drain (`perf`, BENCHMARKS.md).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // SQLite's default 2 MiB page cache, not more: a B-tree split that reorders its new pages
    // parks one under the locking page's number (page 262,145 at 4 KiB), and the next commit
    // then walks the cache's whole hash table to drop pages beyond the end of the file. With a
    // 32 MB cache that walk (8,192 slots and every cached page) took 6 % of the writer thread's
    // profile; the pages the cache no longer keeps come from the OS page cache. Measured (drain,
    // `afterview-bench engine --n 20000`, 3 runs each): NORMAL 13,655 -> 14,399 tasks/s,
    // FULL 10,990 -> 12,232 (medians).
    conn.pragma_update(None, "cache_size", -2_000i64)?;
    // Checkpoint every ~40 MB of WAL rather than 4 MB: hot pages are copied back once.
    conn.pragma_update(None, "wal_autocheckpoint", 10_000i64)?;
    // A WAL that one large transaction grew (a purge of a big backlog) is cut back to this when
    // it restarts; without a limit it kept its peak size for as long as the file stayed open.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    if read_only {
        conn.pragma_update(None, "query_only", true)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteBackend {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>, opts: SqliteOptions) -> Result<Self, BackendError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                BackendError::unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = open_conn(&path, &opts, false).map_err(|e| {
            BackendError::unavailable(format!("cannot open {}: {e}", path.display()))
        })?;
        schema::migrate(&conn).map_err(|e| match e.sqlite_error_code() {
            // Another process holds the write lock: try again, nothing is wrong with the file.
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                BackendError::unavailable(format!("cannot migrate {}: {e}", path.display()))
            }
            _ => BackendError::corrupt(format!("schema migration failed: {e}")),
        })?;
        let writer = Writer::start(conn, "av-sqlite-write".into());
        let checkpointer = open_conn(&path, &opts, false)
            .map_err(unavailable)
            .and_then(|c| {
                checkpoint::Checkpointer::start(c, &path).map_err(|e| {
                    BackendError::unavailable(format!("cannot start the checkpointer: {e}"))
                })
            })?;
        let inner = Arc::new(Inner {
            path: path.clone(),
            writer,
            readers: Mutex::default(),
            hub: EventHub::default(),
            wake: Notify::new(),
            origin: new_id(),
            opts: opts.clone(),
            _checkpointer: checkpointer,
        });
        let watch_conn = open_conn(&path, &opts, true).map_err(unavailable)?;
        // Read here, not in the thread: a result written after `open` returns must be above
        // it. Read in the thread, a late-scheduled watcher (a loaded machine) could start above
        // a result that a caller's first read missed, and that caller would never hear of it.
        let last_seq = max_result_seq(&watch_conn).map_err(unavailable)?;
        let weak = Arc::downgrade(&inner);
        #[cfg(test)]
        let delay = opts.watch_delay;
        std::thread::Builder::new()
            .name("av-sqlite-watch".into())
            .spawn(move || {
                #[cfg(test)]
                std::thread::sleep(delay);
                watch(weak, watch_conn, last_seq)
            })
            .map_err(|e| BackendError::unavailable(format!("cannot start the watcher: {e}")))?;
        Ok(Self { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in the writer's next batch (it may run twice: see `writer`).
    async fn write<T, F>(&self, mut f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<(T, Option<AfterCommit>)> + Send + 'static,
    {
        self.inner
            .writer
            .write(move |c| f(c).map_err(unavailable))
            .await
    }

    /// What wakes this process's waiting workers after a commit; `.effect()` inside a job.
    fn after_wake(&self) -> WakeOnCommit {
        WakeOnCommit(self.inner.clone())
    }
}

/// Builds a fresh after-commit wake-up each time a job runs (a job may run twice).
struct WakeOnCommit(Arc<Inner>);

impl WakeOnCommit {
    fn effect(&self) -> Option<AfterCommit> {
        let inner = self.0.clone();
        Some(Box::new(move || inner.wake()))
    }
}

fn max_result_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM results", [], |r| {
        r.get(0)
    })
}

/// Follows other processes' commits after result `last_seq`: wakes waiters and re-publishes
/// their result changes.
fn watch(inner: Weak<Inner>, conn: Connection, mut last_seq: i64) {
    let mut last_version: i64 = -1;
    let mut idle = Duration::ZERO;
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let version: i64 = match conn.query_row("PRAGMA data_version", [], |r| r.get(0)) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "Watching the database failed.");
                drop(inner);
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if version != last_version {
            last_version = version;
            idle = Duration::ZERO;
            inner.wake();
            // Every write since last time; only other processes' writes need publishing here.
            let rows: rusqlite::Result<Vec<(i64, Option<String>)>> = conn
                .prepare_cached(
                    "SELECT seq, CASE WHEN origin != ?2 THEN meta END FROM results
                     WHERE seq > ?1 ORDER BY seq LIMIT 5000",
                )
                .and_then(|mut st| {
                    st.query_map(params![last_seq, inner.origin], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect()
                });
            match rows {
                Ok(rows) => {
                    if rows.len() == 5000 {
                        last_version = -1; // more to read: come back at once
                    }
                    for (seq, meta) in rows {
                        last_seq = last_seq.max(seq);
                        if let Some(m) = meta.and_then(|m| ResultMeta::from_json(&m).ok()) {
                            inner.hub.publish(m);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "Reading result changes failed.");
                    // Read again after a pause (an error that persists is not read 500 times
                    // a second), not only after the next write.
                    last_version = -1;
                    drop(inner);
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        } else {
            idle += poll_interval(idle);
        }
        let pause = poll_interval(idle);
        drop(inner);
        std::thread::sleep(pause);
    }
}

/// 2 ms right after activity, easing to 20 ms after a second of quiet.
fn poll_interval(idle: Duration) -> Duration {
    if idle < Duration::from_secs(1) {
        Duration::from_millis(2)
    } else {
        Duration::from_millis(20)
    }
}

/// A row to insert into `messages`.
struct NewMessage {
    tag: String,
    task_id: String,
    queue: String,
    priority: u8,
    run_at: i64,
    raw: Vec<u8>,
}

impl NewMessage {
    fn from_message(m: &TaskMessage) -> Result<Self, BackendError> {
        policy::check_queue(&m.queue)?;
        Ok(Self {
            tag: m.delivery_tag.clone(),
            task_id: m.id.clone(),
            queue: m.queue.clone(),
            priority: m.priority,
            run_at: m.run_at_ms(),
            raw: m.to_envelope().into_bytes(),
        })
    }

    fn insert(&self, c: &Connection, now: i64) -> rusqlite::Result<()> {
        let state = if self.run_at > now { SCHEDULED } else { READY };
        c.prepare_cached(
            "INSERT INTO messages (tag, task_id, queue, priority, run_at, raw, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (tag) DO NOTHING",
        )?
        .execute(params![
            self.tag,
            self.task_id,
            self.queue,
            self.priority,
            self.run_at,
            self.raw,
            state
        ])?;
        Ok(())
    }
}

/// Writes a result with the next change number (`seq`), which the watcher follows.
fn upsert_result(
    c: &Connection,
    id: &str,
    status: &str,
    json: &str,
    origin: &str,
    expires_at: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO results (task_id, seq, status, meta, origin, expires_at)
         VALUES (?1, MAX((SELECT COALESCE(MAX(seq), 0) FROM results),
                         (SELECT value FROM counters WHERE name = 'results_seq')) + 1,
                 ?2, ?3, ?4, ?5)
         ON CONFLICT (task_id) DO UPDATE SET
             seq = excluded.seq, status = excluded.status, meta = excluded.meta,
             origin = excluded.origin, expires_at = excluded.expires_at",
    )?
    .execute(params![id, status, json, origin, expires_at])?;
    Ok(())
}

/// Remembers the highest result `seq` before rows are deleted, so it is never given again.
fn keep_seq_high_water(c: &Connection) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE counters SET value = MAX(value, (SELECT COALESCE(MAX(seq), 0) FROM results))
         WHERE name = 'results_seq'",
    )?
    .execute([])?;
    Ok(())
}

/// Deletes the message `l` holds, if it still holds it (the fenced ack); whether it did.
fn delete_held(c: &Connection, l: &LeaseRef) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached("DELETE FROM messages WHERE tag = ?1 AND epoch = ?2 AND state = 2")?
        .execute(params![l.delivery_tag, l.epoch as i64])?;
    Ok(n == 1)
}

fn holds(c: &Connection, l: &LeaseRef) -> rusqlite::Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM messages WHERE tag = ?1 AND epoch = ?2 AND state = 2)",
    )?
    .query_row(params![l.delivery_tag, l.epoch as i64], |r| r.get(0))
}

fn revocation_of(c: &Connection, task_id: &str) -> rusqlite::Result<Option<Revocation>> {
    c.prepare_cached("SELECT task_id, terminate, at, seq FROM revocations WHERE task_id = ?1 AND expires_at > ?2")?
        .query_row(params![task_id, now_ms()], row_revocation)
        .optional()
}

fn row_revocation(r: &rusqlite::Row<'_>) -> rusqlite::Result<Revocation> {
    Ok(Revocation {
        task_id: r.get(0)?,
        terminate: r.get(1)?,
        at: from_ms(r.get(2)?),
        seq: r.get::<_, i64>(3)? as u64,
    })
}

#[async_trait]
impl Broker for SqliteBackend {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn publish(&self, msg: &TaskMessage) -> Result<(), BackendError> {
        self.publish_batch(std::slice::from_ref(msg)).await
    }

    async fn publish_batch(&self, msgs: &[TaskMessage]) -> Result<(), BackendError> {
        let rows = msgs
            .iter()
            .map(NewMessage::from_message)
            .collect::<Result<Vec<_>, _>>()?;
        let wake = self.after_wake();
        self.write(move |c| {
            let now = now_ms();
            for row in &rows {
                row.insert(c, now)?;
            }
            Ok(((), wake.effect()))
        })
        .await
    }

    async fn publish_raw(&self, queue: &str, raw: &[u8]) -> Result<(), BackendError> {
        policy::check_queue(queue)?;
        let info = EnvelopeInfo::peek(raw);
        let now = now_ms();
        let row = NewMessage {
            tag: info.delivery_tag.unwrap_or_else(new_id),
            task_id: info.task_id.unwrap_or_default(),
            queue: queue.to_owned(),
            priority: info.priority,
            run_at: info.eta_ms.unwrap_or(now),
            raw: raw.to_vec(),
        };
        let wake = self.after_wake();
        self.write(move |c| {
            row.insert(c, now)?;
            Ok(((), wake.effect()))
        })
        .await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Delivery>, BackendError> {
        if req.max == 0 || req.queues.is_empty() {
            return Ok(vec![]);
        }
        let req = req.clone();
        self.write(move |c| {
            let now = now_ms();
            c.prepare_cached("UPDATE messages SET state = 0 WHERE state = 1 AND run_at <= ?1")?
                .execute([now])?;
            // (priority, the queue's place in the worker's list, seq): at equal priority the
            // worker's earlier queues first, as the trait asks and Redis does.
            let mut candidates: Vec<(i64, usize, i64)> = Vec::new();
            {
                let mut st = c.prepare_cached(CLAIM_CANDIDATES)?;
                for (place, q) in req.queues.iter().enumerate() {
                    if req.queues[..place].contains(q) {
                        continue;
                    }
                    let rows = st.query_map(params![q, req.max as i64], |r| {
                        Ok((r.get(0)?, place, r.get(1)?))
                    })?;
                    for row in rows {
                        candidates.push(row?);
                    }
                }
            }
            candidates.sort_unstable();
            candidates.truncate(req.max);
            let until = now + req.lease.as_millis() as i64;
            let mut out = Vec::with_capacity(candidates.len());
            let mut take = c.prepare_cached(
                "UPDATE messages SET state = 2, lease_owner = ?1, lease_until = ?2,
                        epoch = epoch + 1, deliveries = deliveries + 1
                 WHERE seq = ?3 AND state = 0
                 RETURNING tag, task_id, queue, raw, epoch, deliveries, redelivered",
            )?;
            for (_, _, seq) in candidates {
                let row = take
                    .query_row(params![req.worker, until, seq], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Vec<u8>>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                            r.get::<_, bool>(6)?,
                        ))
                    })
                    .optional()?;
                let Some((tag, task_id, queue, raw, epoch, deliveries, redelivered)) = row else {
                    continue;
                };
                let revoked = if task_id.is_empty() {
                    None
                } else {
                    revocation_of(c, &task_id)?
                };
                out.push(Delivery {
                    lease: LeaseRef {
                        task_id,
                        delivery_tag: tag,
                        epoch: epoch as u64,
                    },
                    queue,
                    raw,
                    deliveries: deliveries as u32,
                    redelivered,
                    revoked,
                });
            }
            Ok((out, None))
        })
        .await
    }

    async fn wait_for_work(&self, queues: &[String], max_wait: Duration) {
        let notified = self.inner.wake.notified();
        let next_due = if queues.is_empty() {
            None
        } else {
            self.inner
                .read(|c| {
                    c.prepare_cached("SELECT MIN(run_at) FROM messages WHERE state = 1")?
                        .query_row([], |r| r.get::<_, Option<i64>>(0))
                })
                .ok()
                .flatten()
        };
        let wait = match next_due {
            Some(t) => Duration::from_millis((t - now_ms()).max(0) as u64).min(max_wait),
            None => max_wait,
        };
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, notified).await;
        }
    }

    async fn renew(
        &self,
        leases: &[LeaseRef],
        lease: Duration,
    ) -> Result<Vec<LeaseRef>, BackendError> {
        let leases = leases.to_vec();
        self.write(move |c| {
            let until = now_ms() + lease.as_millis() as i64;
            let mut st = c.prepare_cached(
                "UPDATE messages SET lease_until = ?1 WHERE tag = ?2 AND epoch = ?3 AND state = 2",
            )?;
            let mut lost = vec![];
            for l in &leases {
                if st.execute(params![until, l.delivery_tag, l.epoch as i64])? == 0 {
                    lost.push(l.clone());
                }
            }
            Ok((lost, None))
        })
        .await
    }

    async fn ack(&self, lease: &LeaseRef) -> Result<bool, BackendError> {
        let l = lease.clone();
        self.write(move |c| Ok((delete_held(c, &l)?, None))).await
    }

    async fn release(&self, lease: &LeaseRef) -> Result<bool, BackendError> {
        let l = lease.clone();
        let wake = self.after_wake();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE messages SET state = 0, lease_owner = NULL, lease_until = NULL, redelivered = 1
                     WHERE tag = ?1 AND epoch = ?2 AND state = 2",
                )?
                .execute(params![l.delivery_tag, l.epoch as i64])?;
            Ok((n == 1, wake.effect()))
        })
        .await
    }

    async fn retry(&self, lease: &LeaseRef, next: &TaskMessage) -> Result<bool, BackendError> {
        let l = lease.clone();
        let row = NewMessage::from_message(next)?;
        let wake = self.after_wake();
        self.write(move |c| {
            if !delete_held(c, &l)? {
                return Ok((false, None));
            }
            row.insert(c, now_ms())?;
            Ok((true, wake.effect()))
        })
        .await
    }

    async fn dead_letter(
        &self,
        lease: Option<&LeaseRef>,
        queue: &str,
        raw: &[u8],
        reason: &str,
        task_id: Option<&str>,
    ) -> Result<(), BackendError> {
        let l = lease.cloned();
        let DeadLetter {
            queue,
            task_id,
            reason,
            payload,
            ..
        } = DeadLetter::new(queue, task_id, reason, raw);
        let raw = payload.into_bytes();
        self.write(move |c| {
            if let Some(l) = &l {
                delete_held(c, l)?;
            }
            c.prepare_cached("INSERT INTO dead_letters (queue, task_id, reason, payload, at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![queue, task_id, reason, raw, now_ms()])?;
            Ok(((), None))
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.inner.read(|c| {
            c.prepare_cached("SELECT queue, task_id, reason, payload, at FROM dead_letters ORDER BY seq DESC LIMIT ?1")?
                .query_map([limit as i64], |r| {
                    Ok(DeadLetter {
                        queue: r.get(0)?,
                        task_id: r.get(1)?,
                        reason: r.get(2)?,
                        payload: String::from_utf8_lossy(&r.get::<_, Vec<u8>>(3)?).into_owned(),
                        at: from_ms(r.get(4)?),
                    })
                })?
                .collect()
        })
    }

    async fn requeue_expired(&self) -> Result<u64, BackendError> {
        let wake = self.after_wake();
        self.write(move |c| {
            let now = now_ms();
            let n = c
                .prepare_cached(
                    "UPDATE messages SET state = CASE WHEN run_at > ?1 THEN 1 ELSE 0 END,
                            lease_owner = NULL, lease_until = NULL, redelivered = 1
                     WHERE state = 2 AND lease_until < ?1",
                )?
                .execute([now])?;
            Ok((n as u64, if n > 0 { wake.effect() } else { None }))
        })
        .await
    }

    async fn revoke(
        &self,
        task_id: &str,
        terminate: bool,
        keep: Duration,
    ) -> Result<RevokeOutcome, BackendError> {
        let id = task_id.to_owned();
        let wake = self.after_wake();
        self.write(move |c| {
            let now = now_ms();
            let until = now + keep.as_millis() as i64;
            // A repeat never weakens a revocation (as on Redis): one that terminates stays so,
            // and its keep only grows; only a terminate after a cancel is logged anew.
            let cur: Option<bool> = c
                .prepare_cached(
                    "SELECT terminate FROM revocations WHERE task_id = ?1 AND expires_at > ?2",
                )?
                .query_row(params![id, now], |r| r.get(0))
                .optional()?;
            if cur.is_some_and(|t| t || !terminate) {
                c.prepare_cached(
                    "UPDATE revocations SET expires_at = MAX(expires_at, ?2) WHERE task_id = ?1",
                )?
                .execute(params![id, until])?;
            } else {
                c.prepare_cached(
                    "INSERT OR REPLACE INTO revocations (task_id, terminate, at, expires_at)
                     VALUES (?1, ?2, ?3, MAX(?4, COALESCE((SELECT expires_at FROM revocations WHERE task_id = ?1), 0)))",
                )?
                .execute(params![id, terminate, now, until])?;
            }
            let removed = c.prepare_cached(REVOKE_WAITING)?.execute([&id])? as u64;
            let running: bool = c.prepare_cached(IS_RUNNING)?.query_row([&id], |r| r.get(0))?;
            Ok((RevokeOutcome { removed, running }, wake.effect()))
        })
        .await
    }

    async fn revocations_since(&self, cursor: u64) -> Result<(Vec<Revocation>, u64), BackendError> {
        self.inner.read(|c| {
            let end: i64 = c.query_row("SELECT COALESCE(MAX(seq), 0) FROM revocations", [], |r| r.get(0))?;
            if cursor == u64::MAX {
                return Ok((vec![], end as u64));
            }
            let revs: Vec<Revocation> = c
                .prepare_cached(
                    "SELECT task_id, terminate, at, seq FROM revocations WHERE seq > ?1 ORDER BY seq LIMIT 10000",
                )?
                .query_map([cursor as i64], row_revocation)?
                .collect::<rusqlite::Result<_>>()?;
            let next = revs.last().map(|r| r.seq).unwrap_or(cursor).max(cursor);
            Ok((revs, next))
        })
    }

    async fn revocation(&self, task_id: &str) -> Result<Option<Revocation>, BackendError> {
        self.inner.read(|c| revocation_of(c, task_id))
    }

    async fn purge(&self, queues: &[String]) -> Result<u64, BackendError> {
        let queues = queues.to_vec();
        self.write(move |c| {
            let mut st =
                c.prepare_cached("DELETE FROM messages WHERE queue = ?1 AND state IN (0, 1)")?;
            let mut n = 0;
            for q in &queues {
                n += st.execute([q])? as u64;
            }
            Ok((n, None))
        })
        .await
    }

    async fn queue_stats(
        &self,
        queues: Option<&[String]>,
    ) -> Result<Vec<QueueStats>, BackendError> {
        // Counting reads every message (122 ms at 100,000 waiting): off the runtime's threads, which
        // carry every request and WebSocket follower of the process.
        let inner = self.inner.clone();
        let count = move || {
            inner.read(|c| {
                c.prepare_cached(
                    "SELECT queue,
                        SUM(state = 0 OR (state = 1 AND run_at <= ?1)),
                        SUM(state = 1 AND run_at > ?1),
                        SUM(state = 2)
                 FROM messages GROUP BY queue ORDER BY queue",
                )?
                .query_map([now_ms()], |r| {
                    Ok(QueueStats {
                        queue: r.get(0)?,
                        ready: r.get::<_, i64>(1)? as u64,
                        scheduled: r.get::<_, i64>(2)? as u64,
                        leased: r.get::<_, i64>(3)? as u64,
                    })
                })?
                .collect()
            })
        };
        let mut stats: Vec<QueueStats> = tokio::task::spawn_blocking(count)
            .await
            .map_err(|e| BackendError::unavailable(e.to_string()))??;
        if let Some(qs) = queues {
            stats.retain(|s| qs.contains(&s.queue));
            for q in qs {
                if !stats.iter().any(|s| &s.queue == q) {
                    stats.push(QueueStats {
                        queue: q.clone(),
                        ..Default::default()
                    });
                }
            }
            stats.sort_by(|a, b| a.queue.cmp(&b.queue));
        }
        Ok(stats)
    }

    async fn heartbeat(&self, report: &WorkerReport) -> Result<(), BackendError> {
        let json =
            serde_json::to_string(report).map_err(|e| BackendError::invalid(e.to_string()))?;
        let node = report.node.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO workers (node, report, heartbeat_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![node, json, now_ms()])?;
            Ok(((), None))
        })
        .await
    }

    async fn worker_gone(&self, node: &str) -> Result<(), BackendError> {
        let node = node.to_owned();
        self.write(move |c| {
            c.prepare_cached("DELETE FROM workers WHERE node = ?1")?
                .execute([&node])?;
            Ok(((), None))
        })
        .await
    }

    async fn workers(&self, _timeout: Duration) -> Result<Vec<WorkerReport>, BackendError> {
        let rows: Vec<String> = self.inner.read(|c| {
            c.prepare_cached("SELECT report FROM workers ORDER BY node")?
                .query_map([], |r| r.get(0))?
                .collect()
        })?;
        let now = afterview_engine::time::now();
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str::<WorkerReport>(r).ok())
            .filter(|w| policy::worker_alive(w, now))
            .collect())
    }

    async fn cleanup(&self) -> Result<CleanupStats, BackendError> {
        self.write(|c| {
            let now = now_ms();
            let revocations = c.execute("DELETE FROM revocations WHERE expires_at <= ?1", [now])? as u64;
            let mut dead_letters = c.execute(
                "DELETE FROM dead_letters WHERE at < ?1",
                [now - policy::DEAD_LETTER_KEEP.as_millis() as i64],
            )? as u64;
            dead_letters += c.execute(
                "DELETE FROM dead_letters WHERE seq <= (SELECT seq FROM dead_letters ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
                [policy::DEAD_LETTER_CAP as i64],
            )? as u64;
            let workers = c.execute("DELETE FROM workers WHERE heartbeat_at < ?1", [now - policy::STALE_WORKER.as_millis() as i64])? as u64;
            Ok((CleanupStats { results: 0, revocations, dead_letters, workers }, None))
        })
        .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.inner.read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }
}

#[async_trait]
impl ResultBackend for SqliteBackend {
    async fn store(
        &self,
        meta: &ResultMeta,
        fence: Option<&LeaseRef>,
    ) -> Result<StoreOutcome, BackendError> {
        let json = meta.to_json();
        let status = meta.status.as_str().to_owned();
        let id = meta.task_id.clone();
        let fence = fence.cloned();
        let origin = self.inner.origin.clone();
        let expires = self.inner.opts.result_expires;
        let inner = self.inner.clone();
        let published = meta.clone();
        self.write(move |c| {
            let now = now_ms();
            match &fence {
                Some(l) if !holds(c, l)? => return Ok((StoreOutcome::Fenced, None)),
                Some(_) => {}
                None => {
                    let terminal: bool = c
                        .prepare_cached(HAS_TERMINAL_RESULT)?
                        .query_row(params![id, now], |r| r.get(0))?;
                    if terminal {
                        return Ok((StoreOutcome::KeptTerminal, None));
                    }
                }
            }
            upsert_result(
                c,
                &id,
                &status,
                &json,
                &origin,
                now + expires.as_millis() as i64,
            )?;
            let (inner, published) = (inner.clone(), published.clone());
            let after: AfterCommit = Box::new(move || inner.hub.publish(published));
            Ok((StoreOutcome::Stored, Some(after)))
        })
        .await
    }

    async fn complete(
        &self,
        meta: &ResultMeta,
        lease: &LeaseRef,
    ) -> Result<StoreOutcome, BackendError> {
        let json = meta.to_json();
        let status = meta.status.as_str().to_owned();
        let id = meta.task_id.clone();
        let l = lease.clone();
        let origin = self.inner.origin.clone();
        let expires = self.inner.opts.result_expires;
        let inner = self.inner.clone();
        let published = meta.clone();
        self.write(move |c| {
            let now = now_ms();
            if !delete_held(c, &l)? {
                return Ok((StoreOutcome::Fenced, None));
            }
            upsert_result(
                c,
                &id,
                &status,
                &json,
                &origin,
                now + expires.as_millis() as i64,
            )?;
            let (inner, published) = (inner.clone(), published.clone());
            let after: AfterCommit = Box::new(move || inner.hub.publish(published));
            Ok((StoreOutcome::Stored, Some(after)))
        })
        .await
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let raw: Option<String> = self.inner.read(|c| {
            c.prepare_cached("SELECT meta FROM results WHERE task_id = ?1 AND expires_at > ?2")?
                .query_row(params![task_id, now_ms()], |r| r.get(0))
                .optional()
        })?;
        raw.map(|s| {
            ResultMeta::from_json(&s)
                .map_err(|e| BackendError::corrupt(format!("result of {task_id}: {e}")))
        })
        .transpose()
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let id = task_id.to_owned();
        self.write(move |c| {
            // The sequence stays above the deleted row's: reused, it would hide the next
            // result from other processes' watchers (they read `seq >` what they saw).
            keep_seq_high_water(c)?;
            c.prepare_cached("DELETE FROM results WHERE task_id = ?1")?
                .execute([&id])?;
            Ok(((), None))
        })
        .await
    }

    fn events(&self) -> &EventHub {
        &self.inner.hub
    }

    async fn cleanup(&self) -> Result<u64, BackendError> {
        let n = self
            .write(|c| {
                keep_seq_high_water(c)?;
                let n = c.execute("DELETE FROM results WHERE expires_at <= ?1", [now_ms()])?;
                Ok((n as u64, None))
            })
            .await?;
        if n > 0 {
            debug!(count = n, "Expired results removed.");
        }
        Ok(n)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Broker::ping(self).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use afterview_engine::policy::TERMINAL_STATES;
    use afterview_engine::result::{ResultMeta, TaskState};
    use afterview_engine::{Client, ResultBackend};

    use rusqlite::Connection;

    use super::{SqliteBackend, SqliteOptions};

    /// Opening a database whose schema is current needs no write lock: a process that holds it
    /// (a long purge) does not stop another from starting. A migration that cannot get the
    /// lock is "unavailable", never "corrupt data" (which invites deleting the file).
    #[test]
    fn opening_waits_for_no_write_lock_and_a_busy_migration_is_not_corruption() {
        use afterview_engine::BackendError;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.db");
        drop(SqliteBackend::open(&path, SqliteOptions::default()).unwrap());
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let quick = SqliteOptions {
            busy_timeout: Duration::from_millis(100),
            ..SqliteOptions::default()
        };
        SqliteBackend::open(&path, quick.clone()).expect("opens beside a writer");
        let fresh = dir.path().join("fresh.db");
        let other = Connection::open(&fresh).unwrap();
        other
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x); BEGIN IMMEDIATE")
            .unwrap();
        match SqliteBackend::open(&fresh, quick) {
            Err(BackendError::Unavailable(_)) => {}
            Err(e) => panic!("a busy migration is {e}"),
            Ok(_) => panic!("migrated under another writer's lock"),
        }
        holder.execute_batch("COMMIT").unwrap();
    }

    /// One large transaction grows the WAL; it is cut back once it restarts (it kept its peak
    /// size while the file stayed open).
    #[test]
    fn the_wal_shrinks_after_a_large_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.db");
        let _backend = SqliteBackend::open(&path, SqliteOptions::default()).unwrap();
        let c = super::open_conn(&path, &SqliteOptions::default(), false).unwrap();
        c.execute_batch("CREATE TABLE filler (b BLOB); BEGIN")
            .unwrap();
        for _ in 0..100 {
            c.execute("INSERT INTO filler VALUES (randomblob(1048576))", [])
                .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        let wal = dir.path().join("big.db-wal");
        let peak = std::fs::metadata(&wal).unwrap().len();
        c.execute_batch("DELETE FROM filler").unwrap();
        assert!(peak > 100 << 20, "the transaction grew the WAL: {peak}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // The checkpointer copies the WAL back; the next write restarts it from the start.
            c.execute("INSERT INTO filler VALUES (1)", []).unwrap();
            let now = std::fs::metadata(&wal).unwrap().len();
            if now <= super::WAL_SIZE_LIMIT as u64 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL stays at {now} bytes"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Another process's result written after `open` returned reaches this process's waiters
    /// even when the watcher thread starts late (it once read its starting point itself, after
    /// the result, and the waiter timed out PENDING).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_late_watcher_still_delivers_results_written_after_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let other = SqliteBackend::open(&path, SqliteOptions::default()).unwrap();
        let late = SqliteOptions {
            watch_delay: Duration::from_millis(500),
            ..SqliteOptions::default()
        };
        let here = Arc::new(SqliteBackend::open(&path, late).unwrap());
        let client = Client::new(here.clone(), here);
        let waiting =
            tokio::spawn(async move { client.wait("late-watcher", Duration::from_secs(5)).await });
        // Let the waiter read PENDING first, then write from the "other process".
        tokio::time::sleep(Duration::from_millis(100)).await;
        let meta = ResultMeta::new("late-watcher", TaskState::Success, serde_json::json!(1));
        other.store(&meta, None).await.unwrap();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.status, TaskState::Success);
    }

    /// The WAL reaches the database file without the writer's own checkpoint (which waits for
    /// 10,000 frames, ~40 MB): the background checkpointer copies it once 1,000 frames are
    /// waiting. 400 results of 4 KiB (~2,000 frames) are written; read with `immutable=1`,
    /// which ignores the WAL, the file holds only what was checkpointed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_checkpointed_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.db");
        let backend = SqliteBackend::open(&path, SqliteOptions::default()).unwrap();
        let payload = "x".repeat(4096);
        for i in 0..400 {
            let meta = ResultMeta::new(
                format!("ckpt-{i}"),
                TaskState::Success,
                serde_json::json!(payload),
            );
            backend.store(&meta, None).await.unwrap();
        }
        // What the file alone holds, or why it could not be read (no table yet: nothing
        // checkpointed; a CI run once found 0 after 10 s, and the reason was not kept).
        let in_file = || -> Result<i64, String> {
            let uri = format!("file:{}?immutable=1", path.display());
            let c = rusqlite::Connection::open_with_flags(
                uri,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(|e| e.to_string())?;
            c.query_row(
                "SELECT COUNT(*) FROM results WHERE task_id LIKE 'ckpt-%'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())
        };
        let wal = || {
            let w = path.with_extension("db-wal");
            std::fs::metadata(w).map_or(0, |m| m.len())
        };
        let t0 = std::time::Instant::now();
        while in_file().map_or(true, |n| n < 200) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the WAL was not checkpointed into the database file: {:?} of 400 results \
                 there, the WAL {} bytes",
                in_file(),
                wal()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Counting the queues reads every message; the runtime's thread stays free meanwhile (a
    /// current-thread runtime: a ticker task must run while the count is under way).
    #[tokio::test(flavor = "current_thread")]
    async fn counting_a_long_queue_leaves_the_runtime_free() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use afterview_engine::Broker;
        use afterview_engine::message::{SendOptions, TaskMessage};

        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBackend::open(dir.path().join("q.db"), SqliteOptions::default()).unwrap();
        for _ in 0..50 {
            let msgs: Vec<TaskMessage> = (0..1000)
                .map(|_| {
                    TaskMessage::new(
                        "afterview.noop",
                        vec![],
                        Default::default(),
                        "celery",
                        SendOptions::default(),
                    )
                    .unwrap()
                })
                .collect();
            b.publish_batch(&msgs).await.unwrap();
        }
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = ticks.load(Ordering::Relaxed);
        let stats = b.queue_stats(None).await.unwrap();
        let during = ticks.load(Ordering::Relaxed) - before;
        ticker.abort();
        assert_eq!(stats[0].ready, 50_000);
        assert!(during > 0, "the count held the runtime's only thread");
    }

    /// A write connection to a new file with the current schema (keep the directory alive).
    fn migrated() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            super::open_conn(&dir.path().join("t.db"), &SqliteOptions::default(), false).unwrap();
        crate::schema::migrate(&conn).unwrap();
        (dir, conn)
    }

    /// A cached statement runs as compiled: binding another `LIMIT` does not make SQLite parse
    /// and plan the claim's query again (it did on every claim before the planner was told to
    /// ignore bound values).
    #[test]
    fn a_claim_query_is_compiled_once() {
        let (_dir, conn) = migrated();
        for limit in [1i64, 8, 128, 3] {
            let mut st = conn.prepare_cached(super::CLAIM_CANDIDATES).unwrap();
            let rows: Vec<i64> = st
                .query_map(rusqlite::params!["celery", limit], |r| r.get(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(rows.is_empty());
            assert_eq!(
                st.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "the claim query was compiled again after binding LIMIT {limit}"
            );
        }
    }

    /// A revoke finds the task's messages through an index, whatever the backlog (a scan of
    /// 100,000 waiting messages held the writer ~50 ms per revoke).
    #[test]
    fn a_revoke_finds_its_messages_by_index() {
        let (_dir, conn) = migrated();
        for sql in [super::REVOKE_WAITING, super::IS_RUNNING] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(["t"], |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                plan.iter().any(|p| p.contains("INDEX messages_task")),
                "{sql}: {plan:?}"
            );
            assert!(
                !plan.iter().any(|p| p.starts_with("SCAN messages")),
                "{sql}: {plan:?}"
            );
        }
    }

    /// A file made by the first schema is upgraded in place: its messages stay and are found by
    /// task id afterwards.
    #[test]
    fn a_version_1_file_is_upgraded_with_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(crate::schema::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO messages (tag, task_id, queue, priority, run_at, raw, state)
                 VALUES ('g', 'old-task', 'celery', 0, 0, x'7b7d', 0)",
                [],
            )
            .unwrap();
        }
        let conn = super::open_conn(&path, &SqliteOptions::default(), false).unwrap();
        crate::schema::migrate(&conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, crate::schema::MIGRATIONS.len());
        let removed = conn
            .prepare(super::REVOKE_WAITING)
            .unwrap()
            .execute(["old-task"])
            .unwrap();
        assert_eq!(removed, 1);
    }

    #[test]
    fn the_terminal_query_lists_exactly_the_terminal_states() {
        let list = super::HAS_TERMINAL_RESULT
            .split("IN (")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .expect("an IN list");
        let listed: Vec<&str> = list.split(", ").map(|s| s.trim_matches('\'')).collect();
        let terminal: Vec<&str> = TERMINAL_STATES.iter().map(|s| s.as_str()).collect();
        assert_eq!(listed, terminal);
    }
}
