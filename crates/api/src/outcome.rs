//! What became of a task, for a user: the result backend's state, and the metadata store's
//! record of its output when the backend has none.

use afterview_engine::{ResultMeta, TaskState};

use crate::AppState;
use crate::error::ApiError;

/// A task's state as the result backend has it; when it has none (PENDING) but the task's
/// output is recorded in the metadata store (a preview, comparison or report is stored under
/// its task's id), SUCCESS with that record's result. Results live in the result backend and
/// expire; a backend that lost its data (a Redis without AOF restarted) must not turn finished
/// work back into waiting work, for the page, the lists or the per-user task limit.
pub(crate) async fn task_meta(
    st: &AppState,
    owner: &str,
    id: &str,
) -> Result<ResultMeta, ApiError> {
    let m = st.client.result(id).await?;
    if m.status != TaskState::Pending {
        return Ok(m);
    }
    if let Some(v) = st.meta.get_visualization(owner, id).await? {
        return Ok(ResultMeta::new(id, TaskState::Success, v.result));
    }
    if let Some(e) = st.meta.get_export(owner, id).await? {
        return Ok(ResultMeta::new(id, TaskState::Success, e.result));
    }
    Ok(m)
}
