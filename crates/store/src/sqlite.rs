//! The embedded metadata store: one SQLite file (WAL) in the data dir, its own migrations.
//! Queries run on the blocking pool; one connection serializes this process's access.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::{
    Deleted, ExportRecord, IdempotencyClaim, IdempotentResponse, ImageRecord, MetadataStore,
    StoreError, TaskRecord, VisualizationRecord,
};

const MIGRATIONS: &[&str] = &[
    // 1: images, visualizations, exports, tasks, idempotency.
    "
    CREATE TABLE images (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, blob_key TEXT NOT NULL,
        width INTEGER NOT NULL, height INTEGER NOT NULL, bytes INTEGER NOT NULL,
        source_format TEXT NOT NULL, created_at TEXT NOT NULL
    );
    CREATE INDEX images_owner ON images (owner, created_at);
    CREATE TABLE visualizations (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, image_id TEXT NOT NULL, kind TEXT NOT NULL,
        procedure_ids TEXT NOT NULL, engine TEXT NOT NULL, blob_key TEXT NOT NULL,
        result TEXT NOT NULL, task_id TEXT, created_at TEXT NOT NULL
    );
    CREATE INDEX visualizations_owner ON visualizations (owner, created_at);
    CREATE INDEX visualizations_image ON visualizations (image_id);
    CREATE TABLE exports (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL, format TEXT NOT NULL,
        blob_key TEXT NOT NULL, size INTEGER NOT NULL, image_ids TEXT NOT NULL,
        result TEXT NOT NULL, task_id TEXT, created_at TEXT NOT NULL
    );
    CREATE INDEX exports_owner ON exports (owner, created_at);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, created_at TEXT NOT NULL
    );
    CREATE INDEX tasks_owner ON tasks (owner, created_at);
    CREATE TABLE idempotency (
        owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,
        body TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (owner, key)
    );
    ",
    // 2: the photos a task works on (deleting a photo revokes its running tasks).
    "ALTER TABLE tasks ADD COLUMN image_ids TEXT NOT NULL DEFAULT '[]';",
    // 3: per-user slots (synchronous requests in flight) shared by every API process.
    "CREATE TABLE slots (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL, kind TEXT NOT NULL, expires_at TEXT NOT NULL
    );
    CREATE INDEX slots_owner ON slots (owner, kind);",
    // 4: everyone's recent tasks (the operators' monitor).
    "CREATE INDEX tasks_age ON tasks (created_at);",
    // 5: tasks seen in a final state, so the per-user limit reads only the others.
    "ALTER TABLE tasks ADD COLUMN finished INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX tasks_open ON tasks (owner, created_at) WHERE finished = 0;",
];

/// The SQLite metadata store.
#[derive(Clone)]
pub struct SqliteMetadata {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteMetadata").finish_non_exhaustive()
    }
}

fn err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn json_col(s: &str) -> rusqlite::Result<Value> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A string-valued enum column (`VisualizationKind`, `ExportKind`, `ExportFormat`); an unknown
/// value is corrupt data.
fn enum_col<T: serde::de::DeserializeOwned>(s: String) -> rusqlite::Result<T> {
    serde_json::from_value(Value::String(s)).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn strings_col(s: &str) -> rusqlite::Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn image_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        id: r.get(0)?,
        owner: r.get(1)?,
        blob_key: r.get(2)?,
        width: r.get(3)?,
        height: r.get(4)?,
        bytes: r.get::<_, i64>(5)? as u64,
        source_format: r.get(6)?,
        created_at: parse_ts(&r.get::<_, String>(7)?)?,
    })
}

fn viz_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VisualizationRecord> {
    Ok(VisualizationRecord {
        id: r.get(0)?,
        owner: r.get(1)?,
        image_id: r.get(2)?,
        kind: enum_col(r.get(3)?)?,
        procedure_ids: strings_col(&r.get::<_, String>(4)?)?,
        engine: enum_col(r.get(5)?)?,
        blob_key: r.get(6)?,
        result: json_col(&r.get::<_, String>(7)?)?,
        task_id: r.get(8)?,
        created_at: parse_ts(&r.get::<_, String>(9)?)?,
    })
}

fn export_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExportRecord> {
    Ok(ExportRecord {
        id: r.get(0)?,
        owner: r.get(1)?,
        kind: enum_col(r.get(2)?)?,
        format: enum_col(r.get(3)?)?,
        blob_key: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        image_ids: strings_col(&r.get::<_, String>(6)?)?,
        result: json_col(&r.get::<_, String>(7)?)?,
        task_id: r.get(8)?,
        created_at: parse_ts(&r.get::<_, String>(9)?)?,
    })
}

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    Ok(TaskRecord {
        id: r.get(0)?,
        owner: r.get(1)?,
        name: r.get(2)?,
        created_at: parse_ts(&r.get::<_, String>(3)?)?,
        image_ids: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
    })
}

const IMAGE_COLS: &str = "id, owner, blob_key, width, height, bytes, source_format, created_at";
const VIZ_COLS: &str =
    "id, owner, image_id, kind, procedure_ids, engine, blob_key, result, task_id, created_at";
const EXPORT_COLS: &str =
    "id, owner, kind, format, blob_key, size, image_ids, result, task_id, created_at";

impl SqliteMetadata {
    /// Deletes row `id` of `table` if `owner` owns it; returns its blob key.
    async fn delete_owned(
        &self,
        table: &'static str,
        owner: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.run(move |c| {
            // Immediate: a read that later writes must take the write lock first. A deferred
            // transaction's upgrade does not wait for another process's writer (no busy wait
            // on an upgrade) and failed as "database is locked".
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let key = tx
                .query_row(
                    &format!("SELECT blob_key FROM {table} WHERE id = ?1 AND owner = ?2"),
                    params![id, owner],
                    |r| r.get::<_, String>(0),
                )
                .optional()?;
            if key.is_some() {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE id = ?1 AND owner = ?2"),
                    params![id, owner],
                )?;
            }
            tx.commit()?;
            Ok(key)
        })
        .await
    }

    /// Opens (creating and migrating) the database at `path`; commits are synced at WAL
    /// checkpoints (`synchronous = NORMAL`: a power loss may drop the last commits).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, false)
    }

    /// As [`open`](Self::open); with `synchronous_full` every commit is synced before it
    /// returns (`synchronous = FULL`: commits survive a power loss).
    pub fn open_with(path: &Path, synchronous_full: bool) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        let synchronous = if synchronous_full { "FULL" } else { "NORMAL" };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(err)?;
        migrate(&conn)
            .map_err(|e| StoreError::Corrupt(format!("metadata migration failed: {e}")))?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().expect("metadata connection lock");
            f(&mut c).map_err(err)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("metadata task failed: {e}")))?
    }
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let out = (|| {
        let v = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(v) {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        Ok(())
    })();
    match out {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize")
}

#[async_trait]
impl MetadataStore for SqliteMetadata {
    async fn insert_image(&self, r: &ImageRecord) -> Result<(), StoreError> {
        let r = r.clone();
        self.run(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO images ({IMAGE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    r.id,
                    r.owner,
                    r.blob_key,
                    r.width,
                    r.height,
                    r.bytes as i64,
                    r.source_format,
                    ts(&r.created_at)
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_image(&self, owner: &str, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {IMAGE_COLS} FROM images WHERE id = ?1 AND owner = ?2"),
                params![id, owner],
                image_row,
            )
            .optional()
        })
        .await
    }

    async fn list_images(&self, owner: &str, limit: u32) -> Result<Vec<ImageRecord>, StoreError> {
        let owner = owner.to_owned();
        self.run(move |c| {
            c.prepare(&format!("SELECT {IMAGE_COLS} FROM images WHERE owner = ?1 ORDER BY created_at DESC, id LIMIT ?2"))?
                .query_map(params![owner, limit], image_row)?
                .collect()
        })
        .await
    }

    async fn delete_image(&self, owner: &str, id: &str) -> Result<Option<Deleted>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.run(move |c| {
            // Immediate, as in `delete_owned`.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let Some(key) = tx
                .query_row(
                    "SELECT blob_key FROM images WHERE id = ?1 AND owner = ?2",
                    params![id, owner],
                    |r| r.get::<_, String>(0),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let mut d = Deleted {
                blob_keys: vec![key],
                ..Default::default()
            };
            let viz: Vec<String> = tx
                .prepare("SELECT blob_key FROM visualizations WHERE image_id = ?1 AND owner = ?2")?
                .query_map(params![id, owner], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            d.visualizations = viz.len() as u64;
            d.blob_keys.extend(viz);
            let exports: Vec<(String, String)> = tx
                .prepare(
                    "SELECT id, blob_key FROM exports WHERE owner = ?2
                     AND EXISTS (SELECT 1 FROM json_each(exports.image_ids) WHERE value = ?1)",
                )?
                .query_map(params![id, owner], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            d.exports = exports.len() as u64;
            for (eid, key) in exports {
                tx.execute("DELETE FROM exports WHERE id = ?1", [eid])?;
                d.blob_keys.push(key);
            }
            tx.execute(
                "DELETE FROM visualizations WHERE image_id = ?1 AND owner = ?2",
                params![id, owner],
            )?;
            tx.execute(
                "DELETE FROM images WHERE id = ?1 AND owner = ?2",
                params![id, owner],
            )?;
            tx.commit()?;
            Ok(Some(d))
        })
        .await
    }

    async fn insert_visualization(&self, r: &VisualizationRecord) -> Result<(), StoreError> {
        let r = r.clone();
        self.run(move |c| {
            c.execute(
                &format!("INSERT INTO visualizations ({VIZ_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    r.id,
                    r.owner,
                    r.image_id,
                    r.kind.as_str(),
                    to_json(&r.procedure_ids),
                    r.engine.as_str(),
                    r.blob_key,
                    to_json(&r.result),
                    r.task_id,
                    ts(&r.created_at)
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_visualization(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<VisualizationRecord>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {VIZ_COLS} FROM visualizations WHERE id = ?1 AND owner = ?2"),
                params![id, owner],
                viz_row,
            )
            .optional()
        })
        .await
    }

    async fn list_visualizations(
        &self,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<VisualizationRecord>, StoreError> {
        let owner = owner.to_owned();
        self.run(move |c| {
            c.prepare(&format!("SELECT {VIZ_COLS} FROM visualizations WHERE owner = ?1 ORDER BY created_at DESC, id LIMIT ?2"))?
                .query_map(params![owner, limit], viz_row)?
                .collect()
        })
        .await
    }

    async fn insert_export(&self, r: &ExportRecord) -> Result<(), StoreError> {
        let r = r.clone();
        self.run(move |c| {
            c.execute(
                &format!("INSERT INTO exports ({EXPORT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    r.id,
                    r.owner,
                    r.kind.as_str(),
                    r.format.as_str(),
                    r.blob_key,
                    r.size as i64,
                    to_json(&r.image_ids),
                    to_json(&r.result),
                    r.task_id,
                    ts(&r.created_at)
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_export(&self, owner: &str, id: &str) -> Result<Option<ExportRecord>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.run(move |c| {
            c.query_row(
                &format!("SELECT {EXPORT_COLS} FROM exports WHERE id = ?1 AND owner = ?2"),
                params![id, owner],
                export_row,
            )
            .optional()
        })
        .await
    }

    async fn list_exports(&self, owner: &str, limit: u32) -> Result<Vec<ExportRecord>, StoreError> {
        let owner = owner.to_owned();
        self.run(move |c| {
            c.prepare(&format!("SELECT {EXPORT_COLS} FROM exports WHERE owner = ?1 ORDER BY created_at DESC, id LIMIT ?2"))?
                .query_map(params![owner, limit], export_row)?
                .collect()
        })
        .await
    }

    async fn insert_task(&self, r: &TaskRecord) -> Result<(), StoreError> {
        let r = r.clone();
        self.run(move |c| {
            c.execute(
                "INSERT INTO tasks (id, owner, name, created_at, image_ids) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    r.id,
                    r.owner,
                    r.name,
                    ts(&r.created_at),
                    serde_json::to_string(&r.image_ids).expect("ids serialize")
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_task(&self, owner: &str, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.run(move |c| {
            c.query_row(
                "SELECT id, owner, name, created_at, image_ids FROM tasks WHERE id = ?1 AND owner = ?2",
                params![id, owner],
                task_row,
            )
            .optional()
        })
        .await
    }

    async fn list_tasks(&self, owner: &str, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        let owner = owner.to_owned();
        self.run(move |c| {
            c.prepare("SELECT id, owner, name, created_at, image_ids FROM tasks WHERE owner = ?1 ORDER BY created_at DESC, id LIMIT ?2")?
                .query_map(params![owner, limit], task_row)?
                .collect()
        })
        .await
    }

    async fn list_open_tasks(
        &self,
        owner: &str,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let (owner, since) = (owner.to_owned(), ts(&since));
        self.run(move |c| {
            c.prepare_cached(
                "SELECT id, owner, name, created_at, image_ids FROM tasks
                 WHERE owner = ?1 AND finished = 0 AND created_at > ?2
                 ORDER BY created_at DESC, id LIMIT ?3",
            )?
            .query_map(params![owner, since, limit], task_row)?
            .collect()
        })
        .await
    }

    async fn delete_task(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.run(move |c| {
            c.execute(
                "DELETE FROM tasks WHERE id = ?1 AND owner = ?2",
                params![id, owner],
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn mark_tasks_finished(&self, owner: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (owner, ids) = (owner.to_owned(), ids.to_vec());
        self.run(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut st = tx
                    .prepare_cached("UPDATE tasks SET finished = 1 WHERE id = ?1 AND owner = ?2")?;
                for id in &ids {
                    st.execute(params![id, owner])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn recent_tasks(&self, limit: u32) -> Result<Vec<TaskRecord>, StoreError> {
        self.run(move |c| {
            c.prepare("SELECT id, owner, name, created_at, image_ids FROM tasks ORDER BY created_at DESC, id LIMIT ?1")?
                .query_map(params![limit], task_row)?
                .collect()
        })
        .await
    }

    async fn tasks_for_image(
        &self,
        owner: &str,
        image_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (owner, image_id) = (owner.to_owned(), image_id.to_owned());
        self.run(move |c| {
            c.prepare(
                "SELECT id FROM tasks WHERE owner = ?1
                 AND EXISTS (SELECT 1 FROM json_each(tasks.image_ids) WHERE value = ?2)",
            )?
            .query_map(params![owner, image_id], |r| r.get(0))?
            .collect()
        })
        .await
    }

    async fn delete_visualization(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        self.delete_owned("visualizations", owner, id).await
    }

    async fn delete_export(&self, owner: &str, id: &str) -> Result<Option<String>, StoreError> {
        self.delete_owned("exports", owner, id).await
    }

    async fn get_idempotent(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<IdempotentResponse>, StoreError> {
        let (owner, key) = (owner.to_owned(), key.to_owned());
        self.run(move |c| {
            c.query_row(
                "SELECT fingerprint, status, body, created_at FROM idempotency
                 WHERE owner = ?1 AND key = ?2 AND status <> 0",
                params![owner, key],
                |r| {
                    Ok(IdempotentResponse {
                        fingerprint: r.get(0)?,
                        status: r.get(1)?,
                        body: json_col(&r.get::<_, String>(2)?)?,
                        created_at: parse_ts(&r.get::<_, String>(3)?)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn put_idempotent(
        &self,
        owner: &str,
        key: &str,
        r: &IdempotentResponse,
    ) -> Result<bool, StoreError> {
        let (owner, key, r) = (owner.to_owned(), key.to_owned(), r.clone());
        self.run(move |c| {
            let n = c.execute(
                "INSERT INTO idempotency (owner, key, fingerprint, status, body, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (owner, key) DO UPDATE SET
                   fingerprint = excluded.fingerprint, status = excluded.status,
                   body = excluded.body, created_at = excluded.created_at
                 WHERE idempotency.status = 0",
                params![
                    owner,
                    key,
                    r.fingerprint,
                    r.status,
                    to_json(&r.body),
                    ts(&r.created_at)
                ],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn claim_idempotent(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        stale_before: DateTime<Utc>,
    ) -> Result<IdempotencyClaim, StoreError> {
        let (owner, key, fp) = (owner.to_owned(), key.to_owned(), fingerprint.to_owned());
        let (now, stale) = (ts(&Utc::now()), ts(&stale_before));
        self.run(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "INSERT INTO idempotency (owner, key, fingerprint, status, body, created_at)
                 VALUES (?1, ?2, ?3, 0, 'null', ?4) ON CONFLICT (owner, key) DO UPDATE SET
                   fingerprint = excluded.fingerprint, created_at = excluded.created_at
                 WHERE idempotency.status = 0 AND idempotency.created_at < ?5",
                params![owner, key, fp, now, stale],
            )?;
            let out = if n == 1 {
                IdempotencyClaim::Claimed
            } else {
                let (fingerprint, status, body, created_at) = tx.query_row(
                    "SELECT fingerprint, status, body, created_at FROM idempotency
                     WHERE owner = ?1 AND key = ?2",
                    params![owner, key],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, u16>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    },
                )?;
                if status == 0 {
                    IdempotencyClaim::InProgress { fingerprint }
                } else {
                    IdempotencyClaim::Answered(IdempotentResponse {
                        fingerprint,
                        status,
                        body: json_col(&body)?,
                        created_at: parse_ts(&created_at)?,
                    })
                }
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn release_idempotent(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        let (owner, key) = (owner.to_owned(), key.to_owned());
        self.run(move |c| {
            c.execute(
                "DELETE FROM idempotency WHERE owner = ?1 AND key = ?2 AND status = 0",
                params![owner, key],
            )
            .map(|_| ())
        })
        .await
    }

    async fn take_slot(
        &self,
        owner: &str,
        kind: &str,
        cap: u32,
        expires: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let (owner, kind) = (owner.to_owned(), kind.to_owned());
        let (now, expires) = (ts(&Utc::now()), ts(&expires));
        self.run(move |c| {
            // IMMEDIATE: the count and the insert are one writer's, whichever process asks.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM slots WHERE owner = ?1 AND kind = ?2 AND expires_at < ?3",
                params![owner, kind, now],
            )?;
            let held: u32 = tx.query_row(
                "SELECT COUNT(*) FROM slots WHERE owner = ?1 AND kind = ?2",
                params![owner, kind],
                |r| r.get(0),
            )?;
            let out = if held < cap {
                let id = uuid::Uuid::new_v4().to_string();
                tx.execute(
                    "INSERT INTO slots (id, owner, kind, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, owner, kind, expires],
                )?;
                Some(id)
            } else {
                None
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn release_slot(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.run(move |c| {
            c.execute("DELETE FROM slots WHERE id = ?1", [id])
                .map(|_| ())
        })
        .await
    }

    async fn schema_version(&self) -> Result<usize, StoreError> {
        self.run(|c| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|v| usize::try_from(v).unwrap_or(0))
    }

    async fn cleanup(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let cutoff = ts(&before);
        self.run(move |c| {
            let a = c.execute("DELETE FROM idempotency WHERE created_at < ?1", [&cutoff])?;
            let b = c.execute("DELETE FROM tasks WHERE created_at < ?1", [&cutoff])?;
            let now = ts(&Utc::now());
            let d = c.execute("DELETE FROM slots WHERE expires_at < ?1", [&now])?;
            Ok((a + b + d) as u64)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }
}

#[cfg(test)]
mod tests {
    use super::SqliteMetadata;

    /// `--sqlite-synchronous-full` reaches the metadata database too, not only the queue.
    #[test]
    fn synchronous_full_syncs_every_metadata_commit() {
        let dir = tempfile::tempdir().unwrap();
        for (full, expected) in [(false, 1), (true, 2)] {
            let m = SqliteMetadata::open_with(&dir.path().join("m.db"), full).unwrap();
            let c = m.conn.lock().unwrap();
            let level: i64 = c
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(level, expected, "synchronous_full = {full}");
        }
    }
}
