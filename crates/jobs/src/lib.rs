//! The product's tasks, registered with the engine under the seed's names.
//!
//! Job: glue. Each task loads what it needs from the stores (checking that the caller owns it),
//! runs the CPU work off the async threads, saves the result (blob + record) and reports
//! progress as the seed did. Every failure ends with a stable code ([`afterview_core::ErrorCode`]).
//!
//! Idempotency under at-least-once delivery: a result's id is derived from its task id, so a
//! redelivered run writes the same blob and finds the record already there; it then returns the
//! stored result instead of making a second one.

mod export;
mod unsaved;
mod visualize;

use std::sync::Arc;

use afterview_core::ErrorCode;
use afterview_core::catalog::Catalog;
use afterview_core::tasks::EngineKind;
use afterview_engine::{Registry, RetryPolicy, Task, TaskContext, TaskError, TaskOptions};
use afterview_gemini::GeminiClient;
use afterview_imaging::Limits;
use afterview_store::{BlobStore, MetadataStore, StoreError};

pub use afterview_reports::Fonts as ReportFonts;
pub use export::{GenerateCostInfographicTask, GenerateExportTask};
pub use visualize::{DetectFaceTask, GenerateComparisonTask, GenerateVisualizationTask};

/// How previews are made.
#[derive(Debug, Clone)]
pub struct PreviewSettings {
    /// Engine used when a request does not name one.
    pub default_engine: EngineKind,
    /// Corner label on every preview (`None`: no label).
    pub label: Option<String>,
    /// The Gemini client, when configured.
    pub gemini: Option<GeminiClient>,
    /// Limits for decoding generated pictures.
    pub limits: Limits,
    /// Engines a request may name in `options.engine` (the operator's choice: a request
    /// cannot spend a Gemini quota on a server set up for the local engine).
    pub allowed_engines: Vec<EngineKind>,
}

impl Default for PreviewSettings {
    fn default() -> Self {
        Self {
            default_engine: EngineKind::Local,
            label: Some(afterview_imaging::DEFAULT_LABEL.into()),
            gemini: None,
            limits: Limits::default(),
            allowed_engines: vec![EngineKind::Local],
        }
    }
}

impl PreviewSettings {
    /// The engine for a request: the one it names (if the operator allows it) or the default.
    pub fn engine_for(&self, requested: Option<EngineKind>) -> Result<EngineKind, TaskError> {
        match requested {
            None => Ok(self.default_engine),
            Some(e) if e == self.default_engine || self.allowed_engines.contains(&e) => Ok(e),
            Some(e) => Err(fail(
                ErrorCode::InvalidOptions,
                format!(
                    "the {} engine is not enabled on this server (AFTERVIEW_ALLOWED_ENGINES)",
                    e.as_str()
                ),
            )),
        }
    }
}

/// What the tasks use.
pub struct Deps {
    /// Metadata.
    pub meta: Arc<dyn MetadataStore>,
    /// Bytes.
    pub blobs: Arc<dyn BlobStore>,
    /// The procedure catalog.
    pub catalog: Arc<Catalog>,
    /// Preview settings.
    pub preview: PreviewSettings,
    /// The faces reports are set in (the bundled ones and the operator's fallbacks).
    pub report_fonts: ReportFonts,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("preview", &self.preview)
            .field("report_fonts", &self.report_fonts)
            .finish_non_exhaustive()
    }
}

/// Registers the product's tasks.
pub fn register(registry: &mut Registry, deps: Arc<Deps>) {
    registry
        .register(GenerateVisualizationTask(deps.clone()))
        .register(GenerateComparisonTask(deps.clone()))
        .register(DetectFaceTask(deps.clone()))
        .register(GenerateExportTask(deps.clone()))
        .register(GenerateCostInfographicTask(deps.clone()))
        .register(DeleteFilesTask(deps));
}

/// `afterview.delete_files`: removes files whose records are gone, retried (with backoff, for
/// about a day) while the blob store is unavailable. Only keys under the product's prefixes.
/// Its time limits are an hour, not the previews' 4-5 minutes: a store that answers slowly
/// (30 s a delete, its retries included) would otherwise stop it at its limit, which is not
/// retried, with files left behind.
#[derive(Debug, Clone)]
pub struct DeleteFilesTask(pub Arc<Deps>);

impl Task for DeleteFilesTask {
    const NAME: &'static str = afterview_core::tasks::DELETE_FILES;
    type Args = afterview_core::tasks::DeleteFiles;
    type Output = serde_json::Value;

    fn options(&self) -> TaskOptions {
        TaskOptions {
            queue: afterview_core::tasks::QUEUE_EXPORTS.into(),
            soft_time_limit: std::time::Duration::from_secs(3300),
            time_limit: std::time::Duration::from_secs(3600),
            retry: RetryPolicy {
                max_retries: 40,
                base: std::time::Duration::from_secs(5),
                max_delay: std::time::Duration::from_secs(3600),
                jitter: true,
            },
        }
    }

    async fn run(
        &self,
        _ctx: TaskContext,
        a: afterview_core::tasks::DeleteFiles,
    ) -> Result<serde_json::Value, TaskError> {
        if let Some(k) = a.keys.iter().find(|k| {
            !afterview_core::tasks::FILE_PREFIXES
                .iter()
                .any(|p| k.starts_with(p))
                || k.contains("..")
        }) {
            return Err(TaskError::invalid_arguments(format!(
                "{k:?} is not a file this task removes"
            )));
        }
        for k in &a.keys {
            self.0.blobs.delete(k).await.map_err(storage)?;
        }
        tracing::info!(owner = %a.user_id, files = a.keys.len(), "Deleted files removed from storage.");
        Ok(serde_json::json!({"deleted": a.keys.len()}))
    }
}

/// `Err(cancelled)` when the run was revoked (not for the other reasons a run is asked to stop:
/// a soft time limit that passed, a worker going away, a lease that ran out).
pub(crate) fn revoked(ctx: &TaskContext) -> Result<(), TaskError> {
    if ctx.cancelled_for(afterview_engine::CancelReason::Revoked) {
        Err(TaskError::cancelled())
    } else {
        Ok(())
    }
}

/// A task error with a catalogued code.
pub(crate) fn fail(code: ErrorCode, message: impl Into<String>) -> TaskError {
    TaskError::new(code.as_str(), message)
}

/// Storage failures are transient: the task is retried. The store's own message (database
/// errors, paths) is logged, not put in the result clients read.
pub(crate) fn storage(e: StoreError) -> TaskError {
    tracing::warn!(error = %e, "storage failed in a task");
    TaskError::transient(
        ErrorCode::StorageUnavailable.as_str(),
        ErrorCode::StorageUnavailable.description(),
    )
}

/// A result's time (`generated_at`, `created_at`): UTC to the second with `Z`, as the seed's
/// answers show it (`2025-12-07T15:52:00Z`) and as the API's own records are written.
pub(crate) fn stamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The id of result `index` of task `task_id`: the task id itself for index 0, otherwise a
/// variation of it (still a UUID), so re-runs of the task produce the same ids.
///
/// A Celery producer may name its task anything printable (`apply_async(task_id="export-42")`):
/// such an id is first mapped to a name-based UUID (version 5), so its results keep stable ids
/// too (a redelivered run finds its own record instead of saving a second one).
pub(crate) fn derived_id(task_id: &str, index: u8) -> String {
    let base = match uuid::Uuid::parse_str(task_id) {
        Ok(u) if afterview_core::ids::is_resource_id(task_id) => u,
        _ => uuid::Uuid::new_v5(&TASK_ID_NAMESPACE, task_id.as_bytes()),
    };
    let mut b = *base.as_bytes();
    b[15] ^= index;
    b[14] ^= index.wrapping_mul(31);
    uuid::Uuid::from_bytes(b).to_string()
}

/// The namespace of [`derived_id`]'s name-based ids (a fixed random UUID of Afterview's).
const TASK_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_2a57_93d4_4e0b_a8c1_5d27_e94b_0f36);

#[cfg(test)]
mod tests {
    use super::derived_id;
    use afterview_core::ids::is_resource_id;

    #[test]
    fn results_of_a_uuid_task_derive_from_its_id() {
        let task = "7d4c8f0e-2b1a-4c3d-9e8f-0a1b2c3d4e5f";
        assert_eq!(derived_id(task, 0), task);
        assert_ne!(derived_id(task, 1), task);
        assert_eq!(derived_id(task, 1), derived_id(task, 1));
    }

    #[test]
    fn results_of_a_task_named_by_its_producer_keep_stable_ids() {
        // A Celery producer's own task id: a redelivered run must find the same ids.
        for task in ["export-42", "7D4C8F0E-2B1A-4C3D-9E8F-0A1B2C3D4E5F", "x"] {
            let first = derived_id(task, 0);
            assert!(is_resource_id(&first), "{first}");
            assert_eq!(first, derived_id(task, 0), "{task}");
            assert_ne!(first, derived_id(task, 1), "{task}");
            assert_eq!(derived_id(task, 2), derived_id(task, 2), "{task}");
        }
        assert_ne!(derived_id("export-42", 0), derived_id("export-43", 0));
    }
}
