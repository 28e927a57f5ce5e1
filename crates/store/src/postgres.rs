//! The PostgreSQL metadata store, for API and worker processes on many hosts.
//!
//! Same contract and conformance suite as the SQLite store. A connection pool
//! (`deadpool-postgres`, 16 connections by default); migrations run at open under a
//! transaction-scoped advisory lock, so hosts starting together migrate once; every query is
//! owner-scoped. Lists of ids are `jsonb` arrays (photos of an export, photos of a task), so
//! "everything made from photo X" is one indexed `@>` query.
//!
//! Errors: connection failures and timeouts are `Unavailable` (the API answers 503 and the
//! task is retried); a unique violation is `Conflict`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::{Value, json};
use tokio_postgres::{NoTls, Row};

use crate::{
    Deleted, ExportRecord, IdempotencyClaim, IdempotentResponse, ImageRecord, MetadataStore,
    StoreError, TaskRecord, VisualizationRecord,
};

/// Schema versions, applied in order; `afterview_schema` remembers the last one.
const MIGRATIONS: &[&str] = &[
    // 1: the SQLite store's tables, PostgreSQL types.
    "
    CREATE TABLE images (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, blob_key TEXT NOT NULL,
        width INTEGER NOT NULL, height INTEGER NOT NULL, bytes BIGINT NOT NULL,
        source_format TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX images_owner ON images (owner, created_at DESC, id);
    CREATE TABLE visualizations (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, image_id TEXT NOT NULL, kind TEXT NOT NULL,
        procedure_ids JSONB NOT NULL, engine TEXT NOT NULL, blob_key TEXT NOT NULL,
        result JSONB NOT NULL, task_id TEXT, created_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX visualizations_owner ON visualizations (owner, created_at DESC, id);
    CREATE INDEX visualizations_image ON visualizations (image_id);
    CREATE TABLE exports (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL, format TEXT NOT NULL,
        blob_key TEXT NOT NULL, size BIGINT NOT NULL, image_ids JSONB NOT NULL,
        result JSONB NOT NULL, task_id TEXT, created_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX exports_owner ON exports (owner, created_at DESC, id);
    CREATE INDEX exports_images ON exports USING GIN (image_ids);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL,
        image_ids JSONB NOT NULL DEFAULT '[]', created_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX tasks_owner ON tasks (owner, created_at DESC, id);
    CREATE INDEX tasks_images ON tasks USING GIN (image_ids);
    CREATE TABLE idempotency (
        owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,
        body JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (owner, key)
    );
    CREATE INDEX idempotency_age ON idempotency (created_at);
    ",
    // 2: per-user slots (synchronous requests in flight) shared by every API host.
    "
    CREATE TABLE slots (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX slots_owner ON slots (owner, kind);
    ",
    // 3: everyone's recent tasks (the operators' monitor).
    "CREATE INDEX tasks_age ON tasks (created_at DESC);",
    // 4: tasks seen in a final state, so the per-user limit reads only the others.
    "
    ALTER TABLE tasks ADD COLUMN finished BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE INDEX tasks_open ON tasks (owner, created_at DESC, id) WHERE NOT finished;
    ",
];

const POOL_SIZE: usize = 16;
/// Longest wait for a connection or a statement before the store counts as unavailable.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The server's own limit on a statement (`statement_timeout`), under [`TIMEOUT`]: a statement
/// the client gave up on is ended, and its transaction rolled back, by the server too, not
/// committed after the caller was told it failed.
const STATEMENT_TIMEOUT_MS: u64 = 4_000;
/// Migrations may wait for another host's, and may take longer than a request's statement.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection whose statement did not answer in time: dropped, not returned to the pool
/// (its socket may be dead, as after a failover that dropped packets, or still busy with the
/// statement), so the next request gets a fresh one.
fn timed_out(c: deadpool_postgres::Object, what: &str) -> StoreError {
    drop(deadpool_postgres::Object::take(c));
    StoreError::Unavailable(format!("PostgreSQL did not answer {what}"))
}

/// The answer of work bounded by [`TIMEOUT`] on connection `c`: none in time, `c` is dropped
/// ([`timed_out`]).
fn answered<T>(
    answer: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
    c: deadpool_postgres::Object,
) -> Result<T, StoreError> {
    answer.unwrap_or_else(|_| Err(timed_out(c, "in 5 s")))
}

/// The PostgreSQL metadata store.
#[derive(Clone)]
pub struct PostgresMetadata {
    pool: Pool,
    /// Runs when the last clone is dropped (tests drop their database with it).
    on_drop: Option<std::sync::Arc<OnDrop>>,
}

/// A closure run once, on drop.
pub struct OnDrop(std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.lock().ok().and_then(|mut g| g.take()) {
            f();
        }
    }
}

impl std::fmt::Debug for PostgresMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresMetadata").finish_non_exhaustive()
    }
}

/// The error and its causes ("creating a connection: TLS handshake: invalid certificate"),
/// for the log: the cause is what an operator needs.
fn unavailable(e: impl std::error::Error) -> StoreError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    StoreError::Unavailable(text)
}

fn db(e: tokio_postgres::Error) -> StoreError {
    match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn strings(v: Value) -> Vec<String> {
    serde_json::from_value(v).unwrap_or_default()
}

fn image_row(r: &Row) -> ImageRecord {
    ImageRecord {
        id: r.get(0),
        owner: r.get(1),
        blob_key: r.get(2),
        width: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
        height: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
        bytes: u64_of(r.get(5)),
        source_format: r.get(6),
        created_at: r.get(7),
    }
}

/// A string-valued enum column; an unknown value is corrupt data.
fn enum_col<T: serde::de::DeserializeOwned>(s: String) -> Result<T, StoreError> {
    serde_json::from_value(Value::String(s.clone()))
        .map_err(|_| StoreError::Corrupt(format!("unknown value {s:?}")))
}

fn viz_row(r: &Row) -> Result<VisualizationRecord, StoreError> {
    Ok(VisualizationRecord {
        id: r.get(0),
        owner: r.get(1),
        image_id: r.get(2),
        kind: enum_col(r.get(3))?,
        procedure_ids: strings(r.get(4)),
        engine: enum_col(r.get(5))?,
        blob_key: r.get(6),
        result: r.get(7),
        task_id: r.get(8),
        created_at: r.get(9),
    })
}

fn export_row(r: &Row) -> Result<ExportRecord, StoreError> {
    Ok(ExportRecord {
        id: r.get(0),
        owner: r.get(1),
        kind: enum_col(r.get(2))?,
        format: enum_col(r.get(3))?,
        blob_key: r.get(4),
        size: u64_of(r.get(5)),
        image_ids: strings(r.get(6)),
        result: r.get(7),
        task_id: r.get(8),
        created_at: r.get(9),
    })
}

fn task_row(r: &Row) -> TaskRecord {
    TaskRecord {
        id: r.get(0),
        owner: r.get(1),
        name: r.get(2),
        image_ids: strings(r.get(3)),
        created_at: r.get(4),
    }
}

const IMAGE_COLS: &str = "id, owner, blob_key, width, height, bytes, source_format, created_at";
const VIZ_COLS: &str =
    "id, owner, image_id, kind, procedure_ids, engine, blob_key, result, task_id, created_at";
const EXPORT_COLS: &str =
    "id, owner, kind, format, blob_key, size, image_ids, result, task_id, created_at";
const TASK_COLS: &str = "id, owner, name, image_ids, created_at";

impl PostgresMetadata {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db`) and migrates the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_ca(url, None).await
    }

    /// As [`connect`](Self::connect). With `sslmode=require` in the URL the connection is TLS,
    /// the server verified against the system trust store or, given `ca_file`, only against
    /// the certificates in it. Otherwise it is plain TCP (`sslmode=prefer`, the default, is
    /// taken as "no TLS": a silent downgrade would only hide a misconfiguration).
    pub async fn connect_with_ca(
        url: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, StoreError> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad PostgreSQL URL: {e}")))?;
        cfg.connect_timeout(TIMEOUT);
        // Data unacknowledged this long closes the socket (a peer gone without a reset), and
        // idle pooled sockets are probed, so a dead connection is found, not waited on.
        cfg.tcp_user_timeout(TIMEOUT);
        cfg.keepalives(true);
        cfg.keepalives_idle(Duration::from_secs(30));
        cfg.application_name("afterview");
        let mc = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match cfg.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => {
                Manager::from_config(cfg, crate::pgtls::RustlsConnect::new(ca_file)?, mc())
            }
            _ => {
                cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::from_config(cfg, NoTls, mc())
            }
        };
        // Set on each new connection, not as a startup `options` parameter, which PgBouncer
        // refuses (before 1.20) or ignores.
        let set_timeout = deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(async move {
                client
                    .batch_execute(&format!("SET statement_timeout = {STATEMENT_TIMEOUT_MS}"))
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        });
        let pool = Pool::builder(mgr)
            .post_create(set_timeout)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(TIMEOUT))
            .create_timeout(Some(TIMEOUT))
            .recycle_timeout(Some(TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(unavailable)?;
        let me = Self {
            pool,
            on_drop: None,
        };
        me.migrate().await?;
        Ok(me)
    }

    /// Runs `f` when the last clone of this store is dropped (after its pool is closed).
    pub fn on_drop(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.on_drop = Some(std::sync::Arc::new(OnDrop(std::sync::Mutex::new(Some(
            Box::new(f),
        )))));
        self
    }

    /// A pooled connection, within [`TIMEOUT`]: a new one's `SET statement_timeout` (the pool's
    /// post-create hook, which no pool timeout covers) must not wait without end either.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        tokio::time::timeout(TIMEOUT, self.pool.get())
            .await
            .map_err(|_| StoreError::Unavailable("PostgreSQL did not answer in 5 s".into()))?
            .map_err(unavailable)
    }

    /// Applies pending migrations (also `afterview migrate`); returns the schema version.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut c = self.client().await?;
        match tokio::time::timeout(MIGRATE_TIMEOUT, Self::migrate_on(&mut c)).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(c, "while migrating, in 120 s")),
        }
    }

    async fn migrate_on(c: &mut deadpool_postgres::Object) -> Result<usize, StoreError> {
        let tx = c.transaction().await.map_err(db)?;
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = {}",
            MIGRATE_TIMEOUT.as_millis()
        ))
        .await
        .map_err(db)?;
        // One host migrates at a time; the others wait here, then find nothing to do.
        tx.execute("SELECT pg_advisory_xact_lock(7262746973)", &[])
            .await
            .map_err(db)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS afterview_schema (version INTEGER NOT NULL)")
            .await
            .map_err(db)?;
        let current: i32 = match tx
            .query_opt("SELECT version FROM afterview_schema", &[])
            .await
            .map_err(db)?
        {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO afterview_schema (version) VALUES (0)", &[])
                    .await
                    .map_err(db)?;
                0
            }
        };
        let current = usize::try_from(current).unwrap_or(0);
        for sql in MIGRATIONS.iter().skip(current) {
            tx.batch_execute(sql).await.map_err(db)?;
        }
        let version = MIGRATIONS.len().max(current);
        tx.execute(
            "UPDATE afterview_schema SET version = $1",
            &[&(version as i32)],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(version)
    }

    async fn delete_image_on(
        c: &mut deadpool_postgres::Object,
        owner: &str,
        id: &str,
    ) -> Result<Option<Deleted>, StoreError> {
        let tx = c.transaction().await.map_err(db)?;
        let Some(row) = tx
            .query_opt(
                "DELETE FROM images WHERE id = $1 AND owner = $2 RETURNING blob_key",
                &[&id, &owner],
            )
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let mut d = Deleted {
            blob_keys: vec![row.get(0)],
            ..Default::default()
        };
        let viz = tx
            .query(
                "DELETE FROM visualizations WHERE image_id = $1 AND owner = $2 RETURNING blob_key",
                &[&id, &owner],
            )
            .await
            .map_err(db)?;
        d.visualizations = viz.len() as u64;
        d.blob_keys
            .extend(viz.iter().map(|r| r.get::<_, String>(0)));
        let exports = tx
            .query(
                "DELETE FROM exports WHERE owner = $2 AND image_ids @> $1 RETURNING blob_key",
                &[&json!([id]), &owner],
            )
            .await
            .map_err(db)?;
        d.exports = exports.len() as u64;
        d.blob_keys
            .extend(exports.iter().map(|r| r.get::<_, String>(0)));
        tx.commit().await.map_err(db)?;
        Ok(Some(d))
    }

    /// Deletes `table`'s rows created before `before`, 5,000 at a time, for at most a minute.
    async fn delete_batched(&self, table: &str, before: &DateTime<Utc>) -> Result<u64, StoreError> {
        let sql = format!(
            "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE created_at < $1 LIMIT 5000)"
        );
        let t0 = std::time::Instant::now();
        let mut total = 0;
        loop {
            let n = self.execute(&sql, &[before]).await?;
            total += n;
            if n < 5000 || t0.elapsed() > Duration::from_secs(60) {
                return Ok(total);
            }
        }
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let c = self.client().await?;
        let answer = tokio::time::timeout(TIMEOUT, c.query(sql, params)).await;
        answered(answer.map(|r| r.map_err(db)), c)
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let answer = tokio::time::timeout(TIMEOUT, c.execute(sql, params)).await;
        answered(answer.map(|r| r.map_err(db)), c)
    }

    /// Deletes row `id` of `table` if `owner` owns it; returns its blob key.
    async fn delete_owned(
        &self,
        table: &'static str,
        owner: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        if no_record_has(id) {
            return Ok(None);
        }
        let rows = self
            .query(
                &format!("DELETE FROM {table} WHERE id = $1 AND owner = $2 RETURNING blob_key"),
                &[&id, &owner],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }
}

/// An id PostgreSQL cannot hold (text refuses NUL, error 22021): no record has it, so it is
/// not found, as on SQLite, rather than an error that reads as the database being down.
fn no_record_has(id: &str) -> bool {
    id.contains('\0')
}

fn limit(n: u32) -> i64 {
    i64::from(n)
}

#[async_trait]
impl MetadataStore for PostgresMetadata {
    async fn insert_image(&self, r: &ImageRecord) -> Result<(), StoreError> {
        self.execute(
            &format!("INSERT INTO images ({IMAGE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
            &[
                &r.id,
                &r.owner,
                &r.blob_key,
                &(r.width as i32),
                &(r.height as i32),
                &(r.bytes as i64),
                &r.source_format,
                &r.created_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn get_image(&self, owner: &str, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        if no_record_has(id) {
            return Ok(None);
        }
        let rows = self
            .query(
                &format!("SELECT {IMAGE_COLS} FROM images WHERE id = $1 AND owner = $2"),
                &[&id, &owner],
            )
            .await?;
        Ok(rows.first().map(image_row))
    }

    async fn list_images(&self, owner: &str, n: u32) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {IMAGE_COLS} FROM images WHERE owner = $1 ORDER BY created_at DESC, id LIMIT $2"
                ),
                &[&owner, &limit(n)],
            )
            .await?;
        Ok(rows.iter().map(image_row).collect())
    }

    async fn delete_image(&self, owner: &str, id: &str) -> Result<Option<Deleted>, StoreError> {
        if no_record_has(id) {
            return Ok(None);
        }
        let mut c = self.client().await?;
        let answer = tokio::time::timeout(TIMEOUT, Self::delete_image_on(&mut c, owner, id)).await;
        answered(answer, c)
    }

    async fn insert_visualization(&self, r: &VisualizationRecord) -> Result<(), StoreError> {
        self.execute(
            &format!(
                "INSERT INTO visualizations ({VIZ_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            &[
                &r.id,
                &r.owner,
                &r.image_id,
                &r.kind.as_str(),
                &json!(r.procedure_ids),
                &r.engine.as_str(),
                &r.blob_key,
                &r.result,
                &r.task_id,
                &r.created_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn get_visualization(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<VisualizationRecord>, StoreError> {
        if no_record_has(id) {
            return Ok(None);
        }
        let rows = self
            .query(
                &format!("SELECT {VIZ_COLS} FROM visualizations WHERE id = $1 AND owner = $2"),
                &[&id, &owner],
            )
            .await?;
        rows.first().map(viz_row).transpose()
    }

    async fn list_visualizations(
        &self,
        owner: &str,
        n: u32,
    ) -> Result<Vec<VisualizationRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {VIZ_COLS} FROM visualizations WHERE owner = $1 ORDER BY created_at DESC, id LIMIT $2"
                ),
                &[&owner, &limit(n)],
            )
            .await?;
        rows.iter().map(viz_row).collect()
    }

    async fn delete_visualization(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.delete_owned("visualizations", owner, id).await
    }

    async fn insert_export(&self, r: &ExportRecord) -> Result<(), StoreError> {
        self.execute(
            &format!(
                "INSERT INTO exports ({EXPORT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            &[
                &r.id,
                &r.owner,
                &r.kind.as_str(),
                &r.format.as_str(),
                &r.blob_key,
                &(r.size as i64),
                &json!(r.image_ids),
                &r.result,
                &r.task_id,
                &r.created_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn get_export(&self, owner: &str, id: &str) -> Result<Option<ExportRecord>, StoreError> {
        if no_record_has(id) {
            return Ok(None);
        }
        let rows = self
            .query(
                &format!("SELECT {EXPORT_COLS} FROM exports WHERE id = $1 AND owner = $2"),
                &[&id, &owner],
            )
            .await?;
        rows.first().map(export_row).transpose()
    }

    async fn list_exports(&self, owner: &str, n: u32) -> Result<Vec<ExportRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {EXPORT_COLS} FROM exports WHERE owner = $1 ORDER BY created_at DESC, id LIMIT $2"
                ),
                &[&owner, &limit(n)],
            )
            .await?;
        rows.iter().map(export_row).collect()
    }

    async fn delete_export(&self, owner: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.delete_owned("exports", owner, id).await
    }

    async fn insert_task(&self, r: &TaskRecord) -> Result<(), StoreError> {
        self.execute(
            &format!("INSERT INTO tasks ({TASK_COLS}) VALUES ($1, $2, $3, $4, $5)"),
            &[&r.id, &r.owner, &r.name, &json!(r.image_ids), &r.created_at],
        )
        .await
        .map(|_| ())
    }

    async fn get_task(&self, owner: &str, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        if no_record_has(id) {
            return Ok(None);
        }
        let rows = self
            .query(
                &format!("SELECT {TASK_COLS} FROM tasks WHERE id = $1 AND owner = $2"),
                &[&id, &owner],
            )
            .await?;
        Ok(rows.first().map(task_row))
    }

    async fn list_tasks(&self, owner: &str, n: u32) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {TASK_COLS} FROM tasks WHERE owner = $1 ORDER BY created_at DESC, id LIMIT $2"
                ),
                &[&owner, &limit(n)],
            )
            .await?;
        Ok(rows.iter().map(task_row).collect())
    }

    async fn list_open_tasks(
        &self,
        owner: &str,
        since: DateTime<Utc>,
        n: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {TASK_COLS} FROM tasks WHERE owner = $1 AND NOT finished
                     AND created_at > $2 ORDER BY created_at DESC, id LIMIT $3"
                ),
                &[&owner, &since, &limit(n)],
            )
            .await?;
        Ok(rows.iter().map(task_row).collect())
    }

    async fn delete_task(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        if no_record_has(id) {
            return Ok(false);
        }
        let n = self
            .execute(
                "DELETE FROM tasks WHERE id = $1 AND owner = $2",
                &[&id, &owner],
            )
            .await?;
        Ok(n > 0)
    }

    async fn mark_tasks_finished(&self, owner: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.execute(
            "UPDATE tasks SET finished = TRUE WHERE owner = $1 AND id = ANY($2)",
            &[&owner, &ids],
        )
        .await?;
        Ok(())
    }

    async fn recent_tasks(&self, n: u32) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {TASK_COLS} FROM tasks ORDER BY created_at DESC, id LIMIT $1"),
                &[&limit(n)],
            )
            .await?;
        Ok(rows.iter().map(task_row).collect())
    }

    async fn tasks_for_image(
        &self,
        owner: &str,
        image_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        if no_record_has(image_id) {
            return Ok(vec![]);
        }
        let rows = self
            .query(
                "SELECT id FROM tasks WHERE owner = $1 AND image_ids @> $2",
                &[&owner, &json!([image_id])],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn get_idempotent(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<IdempotentResponse>, StoreError> {
        let rows = self
            .query(
                "SELECT fingerprint, status, body, created_at FROM idempotency
                 WHERE owner = $1 AND key = $2 AND status <> 0",
                &[&owner, &key],
            )
            .await?;
        Ok(rows.first().map(|r| IdempotentResponse {
            fingerprint: r.get(0),
            status: u16::try_from(r.get::<_, i32>(1)).unwrap_or(500),
            body: r.get(2),
            created_at: r.get(3),
        }))
    }

    async fn put_idempotent(
        &self,
        owner: &str,
        key: &str,
        r: &IdempotentResponse,
    ) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "INSERT INTO idempotency (owner, key, fingerprint, status, body, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (owner, key) DO UPDATE SET
                   fingerprint = excluded.fingerprint, status = excluded.status,
                   body = excluded.body, created_at = excluded.created_at
                 WHERE idempotency.status = 0",
                &[
                    &owner,
                    &key,
                    &r.fingerprint,
                    &i32::from(r.status),
                    &r.body,
                    &r.created_at,
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn claim_idempotent(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        stale_before: DateTime<Utc>,
    ) -> Result<IdempotencyClaim, StoreError> {
        // The upsert is atomic: of concurrent claimers exactly one inserts (or takes over a
        // stale claim); the others see the row and read it. A row released between the two
        // statements is claimed again.
        for _ in 0..3 {
            let n = self
                .execute(
                    "INSERT INTO idempotency (owner, key, fingerprint, status, body, created_at)
                     VALUES ($1, $2, $3, 0, 'null'::jsonb, now()) ON CONFLICT (owner, key)
                     DO UPDATE SET fingerprint = excluded.fingerprint, created_at = now()
                     WHERE idempotency.status = 0 AND idempotency.created_at < $4",
                    &[&owner, &key, &fingerprint, &stale_before],
                )
                .await?;
            if n == 1 {
                return Ok(IdempotencyClaim::Claimed);
            }
            let rows = self
                .query(
                    "SELECT fingerprint, status, body, created_at FROM idempotency
                     WHERE owner = $1 AND key = $2",
                    &[&owner, &key],
                )
                .await?;
            if let Some(r) = rows.first() {
                let status = u16::try_from(r.get::<_, i32>(1)).unwrap_or(500);
                return Ok(if status == 0 {
                    IdempotencyClaim::InProgress {
                        fingerprint: r.get(0),
                    }
                } else {
                    IdempotencyClaim::Answered(IdempotentResponse {
                        fingerprint: r.get(0),
                        status,
                        body: r.get(2),
                        created_at: r.get(3),
                    })
                });
            }
        }
        Err(StoreError::Unavailable(
            "an idempotency key kept changing hands".into(),
        ))
    }

    async fn release_idempotent(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        self.execute(
            "DELETE FROM idempotency WHERE owner = $1 AND key = $2 AND status = 0",
            &[&owner, &key],
        )
        .await
        .map(|_| ())
    }

    async fn take_slot(
        &self,
        owner: &str,
        kind: &str,
        cap: u32,
        expires: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let mut c = self.client().await?;
        let work = async {
            let tx = c.transaction().await.map_err(db)?;
            // One taker per (owner, kind) at a time, on every host: count and insert agree.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))",
                &[&owner, &kind],
            )
            .await
            .map_err(db)?;
            tx.execute(
                "DELETE FROM slots WHERE owner = $1 AND kind = $2 AND expires_at < now()",
                &[&owner, &kind],
            )
            .await
            .map_err(db)?;
            let held: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM slots WHERE owner = $1 AND kind = $2",
                    &[&owner, &kind],
                )
                .await
                .map_err(db)?
                .get(0);
            let out = if held < i64::from(cap) {
                let id = uuid::Uuid::new_v4().to_string();
                tx.execute(
                    "INSERT INTO slots (id, owner, kind, expires_at) VALUES ($1, $2, $3, $4)",
                    &[&id, &owner, &kind, &expires],
                )
                .await
                .map_err(db)?;
                Some(id)
            } else {
                None
            };
            tx.commit().await.map_err(db)?;
            Ok(out)
        };
        let answer = tokio::time::timeout(TIMEOUT, work).await;
        answered(answer, c)
    }

    async fn release_slot(&self, id: &str) -> Result<(), StoreError> {
        self.execute("DELETE FROM slots WHERE id = $1", &[&id])
            .await
            .map(|_| ())
    }

    async fn schema_version(&self) -> Result<usize, StoreError> {
        let rows = self
            .query("SELECT version FROM afterview_schema", &[])
            .await?;
        Ok(rows
            .first()
            .map_or(0, |r| usize::try_from(r.get::<_, i32>(0)).unwrap_or(0)))
    }

    async fn cleanup(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // In batches: each statement stays under the server's limit however large the backlog
        // (a shortened expiry), and every run removes some of it.
        let a = self.delete_batched("idempotency", &before).await?;
        let b = self.delete_batched("tasks", &before).await?;
        let d = self
            .execute("DELETE FROM slots WHERE expires_at < now()", &[])
            .await?;
        Ok(a + b + d)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.query("SELECT 1", &[]).await.map(|_| ())
    }
}
