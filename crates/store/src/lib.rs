//! Afterview's storage.
//!
//! - [`MetadataStore`]: who owns which image, visualization, export and task; idempotency
//!   records. Every read takes the owner: asking for someone else's id answers `None`, exactly
//!   like an id that does not exist, so the API can answer 404 without a second check.
//!   Implementations: embedded SQLite ([`sqlite::SqliteMetadata`]) and PostgreSQL
//!   ([`postgres::PostgresMetadata`]) for many hosts.
//! - [`BlobStore`]: the bytes (photos, previews, reports), over the `object_store` crate
//!   ([`blob::ObjectBlobStore`]: a local directory by default, S3-compatible storage for many
//!   hosts, in memory for tests).
//!
//! Both traits have a conformance suite (feature `testsuite`) that every implementation passes.
//! Blob keys never contain user ids (they are derived from resource ids only).

pub mod blob;
mod pgtls;
pub mod postgres;
pub mod sqlite;
#[cfg(feature = "testsuite")]
pub mod testing;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use afterview_core::tasks::{EngineKind, ExportFormat, ExportKind, VisualizationKind};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use blob::{BlobStore, ObjectBlobStore, S3Options};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or failed; retrying may help.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A record with this id (or key) exists already.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data could not be read back.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

/// An uploaded photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Image id.
    pub id: String,
    pub owner: String,
    /// Blob key of the normalized PNG.
    pub blob_key: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Size of the stored PNG.
    pub bytes: u64,
    /// What was uploaded (`jpeg`, `png`, `webp`).
    pub source_format: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A preview or a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisualizationRecord {
    /// Visualization id.
    pub id: String,
    pub owner: String,
    /// The source photo.
    pub image_id: String,
    /// One preview or a comparison.
    pub kind: VisualizationKind,
    /// Procedures, in order.
    pub procedure_ids: Vec<String>,
    /// The engine that made it.
    pub engine: EngineKind,
    /// Blob key of the after picture (or the comparison composite).
    pub blob_key: String,
    /// The task result as returned to clients.
    pub result: Value,
    /// The task that made it.
    pub task_id: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A report or an infographic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// Export id.
    pub id: String,
    pub owner: String,
    /// Report or infographic.
    pub kind: ExportKind,
    /// The file's format.
    pub format: ExportFormat,
    pub blob_key: String,
    /// Size in bytes.
    pub size: u64,
    /// Photos it was made from (deleting one deletes the export).
    pub image_ids: Vec<String>,
    /// The task result as returned to clients.
    pub result: Value,
    /// The task that made it.
    pub task_id: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Who sent which task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    pub owner: String,
    /// Task name.
    pub name: String,
    /// Photos it works on (deleting one revokes the task).
    #[serde(default)]
    pub image_ids: Vec<String>,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
}

/// A stored answer to a request with an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotentResponse {
    /// A fingerprint of the request (method, path, body), so a reused key with another request
    /// is detected.
    pub fingerprint: String,
    /// HTTP status.
    pub status: u16,
    /// Response body.
    pub body: Value,
    /// When it was first answered.
    pub created_at: DateTime<Utc>,
}

/// What claiming an `Idempotency-Key` found.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyClaim {
    /// The key is now this request's: answer, then [`MetadataStore::put_idempotent`] (or
    /// [`MetadataStore::release_idempotent`] when the answer is not to be kept).
    Claimed,
    /// Another request holds the key and has not answered yet (perhaps on another host).
    InProgress {
        /// That request's fingerprint.
        fingerprint: String,
    },
    /// Answered before.
    Answered(IdempotentResponse),
}

/// What deleting an image removed (the caller deletes these blobs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deleted {
    /// Blob keys of the image and everything derived from it.
    pub blob_keys: Vec<String>,
    /// Visualizations removed.
    pub visualizations: u64,
    /// Exports removed.
    pub exports: u64,
}

/// Metadata, scoped by owner.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Stores a new image.
    async fn insert_image(&self, r: &ImageRecord) -> Result<(), StoreError>;
    /// The owner's image.
    async fn get_image(&self, owner: &str, id: &str) -> Result<Option<ImageRecord>, StoreError>;
    /// The owner's images, newest first.
    async fn list_images(&self, owner: &str, limit: u32) -> Result<Vec<ImageRecord>, StoreError>;
    /// Deletes the owner's image and every visualization and export made from it.
    async fn delete_image(&self, owner: &str, id: &str) -> Result<Option<Deleted>, StoreError>;

    /// Stores a new visualization.
    async fn insert_visualization(&self, r: &VisualizationRecord) -> Result<(), StoreError>;
    /// The owner's visualization.
    async fn get_visualization(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<VisualizationRecord>, StoreError>;
    /// The owner's visualizations, newest first.
    async fn list_visualizations(
        &self,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<VisualizationRecord>, StoreError>;
    /// Deletes the owner's visualization; returns its blob key.
    async fn delete_visualization(
        &self,
        owner: &str,
        id: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Stores a new export.
    async fn insert_export(&self, r: &ExportRecord) -> Result<(), StoreError>;
    /// The owner's export.
    async fn get_export(&self, owner: &str, id: &str) -> Result<Option<ExportRecord>, StoreError>;
    /// The owner's exports, newest first.
    async fn list_exports(&self, owner: &str, limit: u32) -> Result<Vec<ExportRecord>, StoreError>;
    /// Deletes the owner's export; returns its blob key.
    async fn delete_export(&self, owner: &str, id: &str) -> Result<Option<String>, StoreError>;

    /// Records who sent a task.
    async fn insert_task(&self, r: &TaskRecord) -> Result<(), StoreError>;
    /// The owner's task.
    async fn get_task(&self, owner: &str, id: &str) -> Result<Option<TaskRecord>, StoreError>;
    /// The owner's tasks, newest first.
    async fn list_tasks(&self, owner: &str, limit: u32) -> Result<Vec<TaskRecord>, StoreError>;
    /// The owner's tasks sent after `since` and not marked finished, newest first (the
    /// per-user limit counts these: finished tasks never push waiting ones out of its view).
    async fn list_open_tasks(
        &self,
        owner: &str,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Forgets the owner's task `id` (its message never reached the broker: the request that
    /// sent it was refused); `false` when the owner has no such task.
    async fn delete_task(&self, owner: &str, id: &str) -> Result<bool, StoreError>;
    /// Marks the owner's tasks `ids` finished (seen in a final state); unknown ids are skipped.
    async fn mark_tasks_finished(&self, owner: &str, ids: &[String]) -> Result<(), StoreError>;
    /// Everyone's most recent tasks, newest first (the operators' monitor).
    async fn recent_tasks(&self, limit: u32) -> Result<Vec<TaskRecord>, StoreError>;
    /// The ids of the owner's tasks that work on `image_id`.
    async fn tasks_for_image(&self, owner: &str, image_id: &str)
    -> Result<Vec<String>, StoreError>;

    /// The stored answer for `(owner, key)`, if any (a claim not yet answered is not one).
    async fn get_idempotent(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<IdempotentResponse>, StoreError>;
    /// Stores an answer for `(owner, key)`, replacing a claim; `false` when an answer exists
    /// already (the first wins).
    async fn put_idempotent(
        &self,
        owner: &str,
        key: &str,
        r: &IdempotentResponse,
    ) -> Result<bool, StoreError>;
    /// Claims `(owner, key)` for a request with `fingerprint`, atomically across every process
    /// sharing the store: exactly one of concurrent claimers gets [`IdempotencyClaim::Claimed`].
    /// A claim made before `stale_before` and never answered (its host died) is taken over.
    async fn claim_idempotent(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        stale_before: DateTime<Utc>,
    ) -> Result<IdempotencyClaim, StoreError>;
    /// Drops an unanswered claim of `(owner, key)` (the request failed; a retry may run).
    async fn release_idempotent(&self, owner: &str, key: &str) -> Result<(), StoreError>;

    /// Takes one of `cap` slots of `kind` for `owner`, held until released or until `expires`
    /// (so a crashed holder's slot frees itself); `None` when all are taken. Atomic across
    /// every process sharing the store, so per-user limits hold across API hosts.
    async fn take_slot(
        &self,
        owner: &str,
        kind: &str,
        cap: u32,
        expires: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;
    /// Gives a slot back.
    async fn release_slot(&self, id: &str) -> Result<(), StoreError>;

    /// The schema version the store is at (migrations run when it opens).
    async fn schema_version(&self) -> Result<usize, StoreError>;

    /// Removes idempotency records and task records older than `before`.
    async fn cleanup(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Cheap reachability check.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The blob key of a photo.
pub fn image_key(id: &str) -> String {
    format!("images/{id}.png")
}

/// The blob key of a visualization picture.
pub fn visualization_key(id: &str) -> String {
    format!("visualizations/{id}.png")
}

/// The blob key of a picture's small copy (a JPEG: the API writes a photo's at upload and
/// any other on its first request), for a photo's or a visualization's key; `None` for files
/// that have none (exports). Whoever deletes a picture's file deletes this key too.
pub fn thumbnail_key(blob_key: &str) -> Option<String> {
    let stem = blob_key.strip_suffix(".png")?;
    (stem.starts_with("images/") || stem.starts_with("visualizations/"))
        .then(|| format!("{}{stem}.jpg", afterview_core::tasks::THUMBNAILS_PREFIX))
}

/// `keys` and, after each, its picture's small copy (see [`thumbnail_key`]).
pub fn with_thumbnails(keys: Vec<String>) -> Vec<String> {
    keys.into_iter()
        .flat_map(|k| {
            let thumb = thumbnail_key(&k);
            std::iter::once(k).chain(thumb)
        })
        .collect()
}

/// The blob key of an export.
pub fn export_key(id: &str, format: &str) -> String {
    format!("exports/{id}.{format}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_have_thumbnail_keys_and_exports_none() {
        assert_eq!(
            thumbnail_key(&image_key("a1")).as_deref(),
            Some("thumbnails/images/a1.jpg")
        );
        assert_eq!(
            thumbnail_key(&visualization_key("b2")).as_deref(),
            Some("thumbnails/visualizations/b2.jpg")
        );
        assert_eq!(thumbnail_key(&export_key("c3", "pdf")), None);
        assert_eq!(thumbnail_key(&export_key("c3", "png")), None);
        assert_eq!(
            with_thumbnails(vec![image_key("a1"), export_key("c3", "pdf")]),
            vec![
                "images/a1.png".to_string(),
                "thumbnails/images/a1.jpg".into(),
                "exports/c3.pdf".into()
            ]
        );
    }
}
