//! Who the caller is (`/api/me`), what the web app needs to sign in (`/api/config`), and the
//! operators' monitor (`/api/monitor`): queues, live workers with their running tasks, and
//! everyone's recent tasks from the task records and the result store (so it survives restarts
//! of every process), with revoke. The monitor answers 404 to anyone not in the operators list,
//! exactly as an unknown path would.
//!
//! Nothing here shows task arguments: they hold user ids and patient fields.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::tasks::status_view;
use crate::error::ApiError;
use crate::{AppState, User};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/me", get(me))
        .route("/api/config", get(config))
        .route("/api/monitor", get(monitor))
        .route("/api/monitor/tasks/{id}/revoke", post(revoke))
}

/// How long the monitor waits for workers to answer.
const WORKERS_WAIT: Duration = Duration::from_millis(500);
/// Recent tasks shown.
const RECENT: u32 = 50;

/// `GET /api/me`.
pub(crate) async fn me(State(st): State<AppState>, user: User) -> Json<Value> {
    Json(json!({"user_id": user.0, "operator": st.operators.contains(&user.0)}))
}

/// `GET /api/config` (no authentication): how clients sign in.
pub(crate) async fn config(State(st): State<AppState>) -> Json<Value> {
    Json(st.client_config.clone())
}

fn operator(st: &AppState, user: &User) -> Result<(), ApiError> {
    if st.operators.contains(&user.0) {
        Ok(())
    } else {
        Err(ApiError::not_found("resource"))
    }
}

/// `GET /api/monitor`.
pub(crate) async fn monitor(
    State(st): State<AppState>,
    user: User,
) -> Result<Json<Value>, ApiError> {
    operator(&st, &user)?;
    let known = st.client.known_queues();
    let queues: Vec<Value> = st
        .client
        .queue_stats(Some(&known))
        .await?
        .into_iter()
        .map(|q| {
            json!({"queue": q.queue, "ready": q.ready, "scheduled": q.scheduled, "running": q.leased})
        })
        .collect();
    let now = chrono::Utc::now();
    let workers: Vec<Value> = st
        .client
        .workers(WORKERS_WAIT)
        .await?
        .into_iter()
        .map(|w| {
            let active: Vec<Value> = w
                .active
                .iter()
                .map(|t| {
                    json!({
                        "task_id": t.id, "name": t.name, "queue": t.queue, "retries": t.retries,
                        "running_seconds": (now - t.time_start).num_milliseconds().max(0) as f64 / 1000.0,
                    })
                })
                .collect();
            json!({
                "node": w.node, "hostname": w.hostname, "pid": w.pid, "queues": w.queues,
                "concurrency": w.concurrency, "software": w.sw_ident, "active": active,
                "processed": w.total.values().sum::<u64>(),
                "heartbeat_at": w.heartbeat_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
        })
        .collect();
    let mut tasks = vec![];
    for t in st.meta.recent_tasks(RECENT).await? {
        let m = st.client.result(&t.id).await?;
        let mut v = status_view(&m);
        if let Some(o) = v.as_object_mut() {
            o.remove("result");
            // Operators see RECEIVED as it is (a task a busy worker holds), which users see as
            // PENDING.
            o.insert("state".into(), json!(m.status.as_str()));
        }
        let end = m.date_done.unwrap_or(now);
        v["name"] = json!(t.name);
        v["owner"] = json!(t.owner);
        v["worker"] = json!(m.worker);
        v["retries"] = json!(m.retries.unwrap_or(0));
        v["created_at"] = json!(
            t.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        v["seconds"] = json!((end - t.created_at).num_milliseconds().max(0) as f64 / 1000.0);
        tasks.push(v);
    }
    Ok(Json(
        json!({"queues": queues, "workers": workers, "tasks": tasks}),
    ))
}

/// `POST /api/monitor/tasks/{id}/revoke`: revokes any task (a running one is terminated).
pub(crate) async fn revoke(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    operator(&st, &user)?;
    afterview_engine::message::validate_task_id(&id).map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_task_id",
            "malformed task id",
        )
    })?;
    let before = st.client.result(&id).await?;
    if before.status.is_terminal() {
        return Ok(Json(
            json!({"task_id": id, "status": "already_finished", "state": before.status.as_str()}),
        ));
    }
    let out = st.client.revoke(&id, true).await?;
    tracing::info!(task_id = %id, operator = %user.0, "Task revoked from the monitor.");
    Ok(Json(json!({
        "task_id": id,
        "status": if out.running { "cancelling" } else { "cancelled" },
    })))
}
