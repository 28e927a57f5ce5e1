//! Sending a task for a user: the per-user limits (active tasks, synchronous requests), the task
//! record (owner and photos, before the message exists anywhere), and the answer: `202` with the
//! task's URLs, or the result when the caller waits.

use afterview_engine::{SendOptions, TaskState};
use afterview_store::TaskRecord;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{AppState, User};

/// 429 when the user already has `active_tasks` tasks waiting or running (their most recent
/// tasks, read back from the result store).
async fn check_active_tasks(st: &AppState, user: &User) -> Result<(), ApiError> {
    let cap = st.user_limits.active_tasks;
    if cap == 0 {
        return Ok(()); // unlimited
    }
    let recent = st
        .meta
        .list_tasks(&user.0, (cap * 2 + 10).min(1000) as u32)
        .await?;
    let mut active = 0;
    for t in &recent {
        let done = match st.client.result(&t.id).await {
            Ok(m) => m.status.is_terminal(),
            Err(_) => false,
        };
        if !done {
            active += 1;
            if active >= cap {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_tasks",
                    format!(
                        "at most {cap} tasks may be waiting or running per user; retry when one finishes"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A user's synchronous request in flight: a slot in the metadata store, so the limit holds
/// across every API host. Given back when the guard drops; a crashed host's slot expires.
struct SyncSlot {
    st: AppState,
    id: Option<String>,
}

impl SyncSlot {
    async fn take(st: &AppState, user: &User) -> Result<SyncSlot, ApiError> {
        let cap = st.user_limits.sync_requests;
        if cap == 0 {
            return Ok(SyncSlot {
                st: st.clone(),
                id: None,
            });
        }
        let expires = chrono::Utc::now()
            + chrono::Duration::from_std(st.sync_timeout + std::time::Duration::from_secs(60))
                .unwrap_or(chrono::Duration::minutes(10));
        let cap32 = u32::try_from(cap).unwrap_or(u32::MAX);
        match st.meta.take_slot(&user.0, "sync", cap32, expires).await? {
            Some(id) => Ok(SyncSlot {
                st: st.clone(),
                id: Some(id),
            }),
            None => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!(
                    "at most {cap} synchronous requests per user at once; use ?async_processing=true"
                ),
            )),
        }
    }
}

impl SyncSlot {
    /// Gives the slot back before the answer leaves, so a client's next synchronous request
    /// (sent the moment this one is answered) finds it free on every host. A request dropped
    /// midway (the client went away) gives it back from `Drop` instead.
    async fn release(mut self) {
        if let Some(id) = self.id.take()
            && let Err(e) = self.st.meta.release_slot(&id).await
        {
            tracing::warn!(error = %e, "Could not give a request slot back; it expires by itself.");
        }
    }
}

impl Drop for SyncSlot {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let meta = self.st.meta.clone();
            tokio::spawn(async move {
                if let Err(e) = meta.release_slot(&id).await {
                    tracing::warn!(error = %e, "Could not give a request slot back; it expires by itself.");
                }
            });
        }
    }
}

/// Records the owner, sends the task, and answers 202 or waits for the result.
pub(crate) async fn submit(
    st: &AppState,
    user: &User,
    task: &str,
    kwargs: Value,
    wait: bool,
) -> Result<(StatusCode, Value), ApiError> {
    let Value::Object(kwargs) = kwargs else {
        unreachable!("task arguments are objects")
    };
    check_active_tasks(st, user).await?;
    let sync = if wait {
        Some(SyncSlot::take(st, user).await?)
    } else {
        None
    };
    let image_ids = photos_of(st, user, &kwargs).await?;
    let msg = st
        .client
        .message(task, vec![], kwargs, SendOptions::default())?;
    st.meta
        .insert_task(&TaskRecord {
            id: msg.id.clone(),
            owner: user.0.clone(),
            name: task.into(),
            image_ids,
            created_at: chrono::Utc::now(),
        })
        .await?;
    if !wait {
        st.client.broker().publish(&msg).await?;
        return Ok((
            StatusCode::ACCEPTED,
            json!({
                "task_id": msg.id,
                "status": "processing",
                "status_url": format!("/api/tasks/{}/status", msg.id),
                "websocket_url": format!("/api/ws/tasks/{}", msg.id),
            }),
        ));
    }
    let meta = st.client.publish_and_wait(&msg, st.sync_timeout).await;
    if let Some(slot) = sync {
        slot.release().await;
    }
    waited(st, &msg.id, meta?)
}

/// The photos a task works on (deleting one of them revokes the task): its `image_id`, and
/// those of its `visualization_ids`.
async fn photos_of(
    st: &AppState,
    user: &User,
    kwargs: &serde_json::Map<String, Value>,
) -> Result<Vec<String>, ApiError> {
    let mut image_ids: Vec<String> = kwargs
        .get("image_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect();
    for v in kwargs
        .get("visualization_ids")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some(r) = st.meta.get_visualization(&user.0, v).await?
            && !image_ids.contains(&r.image_id)
        {
            image_ids.push(r.image_id);
        }
    }
    Ok(image_ids)
}

/// The answer to a synchronous request from the state the task reached.
fn waited(
    st: &AppState,
    id: &str,
    meta: afterview_engine::ResultMeta,
) -> Result<(StatusCode, Value), ApiError> {
    match meta.status {
        TaskState::Success => Ok((StatusCode::OK, meta.result)),
        TaskState::Failure | TaskState::Revoked => {
            let info = meta
                .error_info()
                .unwrap_or_else(|| afterview_engine::ErrorInfo {
                    code: "task_failed".into(),
                    message: String::new(),
                });
            Err(ApiError::from_task(
                &info,
                meta.status == TaskState::Revoked,
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "task {id} did not finish within {} s; follow it at /api/tasks/{id}/status",
                st.sync_timeout.as_secs(),
            ),
        )),
    }
}
