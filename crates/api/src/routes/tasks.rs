//! Task status, result, cancel, list, and the WebSocket that pushes every change.

use std::collections::HashMap;
use std::sync::Arc;

use afterview_engine::message::validate_task_id;
use afterview_engine::{ResultMeta, TaskState};
use axum::Json;
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::SinkExt;
use serde_json::{Value, json};

use super::ListQuery;
use crate::error::ApiError;
use crate::outcome::task_meta;
use crate::{AppState, Session, User};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/tasks", get(list_tasks))
        .route("/api/tasks/{id}/status", get(task_status))
        .route("/api/tasks/{id}/cancel", post(cancel_task))
        .route("/api/tasks/{id}/result", get(task_result))
        .route("/api/ws/tasks/{id}", get(task_ws))
}

/// Checks the id and that the caller sent the task.
async fn owned_task(
    st: &AppState,
    user: &User,
    id: &str,
) -> Result<afterview_store::TaskRecord, ApiError> {
    validate_task_id(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_task_id", e.to_string()))?;
    st.meta.get_task(&user.0, id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "task_not_found",
            format!("task {id} not found"),
        )
    })
}

/// The seed's status shape: `{task_id, state, progress, status}` plus `result` on SUCCESS and
/// `error` on FAILURE/REVOKED. RECEIVED (a worker holds the task until a slot is free) is shown
/// as PENDING: the seed's clients know PENDING, STARTED, PROCESSING, SUCCESS, FAILURE, RETRY and
/// REVOKED, and Celery never stores RECEIVED in a result backend.
pub(crate) fn status_view(m: &ResultMeta) -> Value {
    let (progress, status) = match &m.status {
        TaskState::Pending | TaskState::Received => {
            (0, "Task is waiting to be processed".to_owned())
        }
        TaskState::Started => (0, "Task started".to_owned()),
        TaskState::Success => (100, "Task completed successfully".to_owned()),
        TaskState::Failure => (0, "Task failed".to_owned()),
        TaskState::Revoked => (0, "Task was cancelled".to_owned()),
        TaskState::Retry => (0, "Task failed and will be retried".to_owned()),
        TaskState::Processing | TaskState::Custom(_) => m.progress().unwrap_or((0, String::new())),
    };
    let mut v = json!({"task_id": m.task_id, "state": api_state(&m.status), "progress": progress, "status": status});
    match m.status {
        TaskState::Success => v["result"] = m.result.clone(),
        TaskState::Failure | TaskState::Revoked => {
            v["error"] = serde_json::to_value(m.error_info()).unwrap_or(Value::Null);
        }
        TaskState::Retry => {
            v["error"] = serde_json::to_value(m.error_info()).unwrap_or(Value::Null);
            v["retry_eta"] = m.result.get("retry_eta").cloned().unwrap_or(Value::Null);
        }
        _ => {}
    }
    if let Some(at) = m.result.get("at").and_then(Value::as_i64) {
        v["updated_at_ms"] = json!(at);
    }
    v
}

/// A state as the API names it to users: RECEIVED is PENDING (see [`status_view`]).
fn api_state(s: &TaskState) -> &str {
    match s {
        TaskState::Received => TaskState::Pending.as_str(),
        s => s.as_str(),
    }
}

/// `GET /api/tasks/{id}/status`.
pub(crate) async fn task_status(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    owned_task(&st, &user, &id).await?;
    Ok(Json(status_view(&task_meta(&st, &user.0, &id).await?)))
}

/// `GET /api/tasks/{id}/result`: 200 on SUCCESS, 202 while not finished, the error otherwise.
pub(crate) async fn task_result(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    owned_task(&st, &user, &id).await?;
    let m = task_meta(&st, &user.0, &id).await?;
    match m.status {
        TaskState::Success => Ok(Json(json!({"task_id": id, "result": m.result})).into_response()),
        TaskState::Failure | TaskState::Revoked => {
            let info = m
                .error_info()
                .unwrap_or_else(|| afterview_engine::ErrorInfo {
                    code: "task_failed".into(),
                    message: String::new(),
                });
            Err(ApiError::from_task(&info, m.status == TaskState::Revoked))
        }
        _ => Ok((StatusCode::ACCEPTED, Json(status_view(&m))).into_response()),
    }
}

/// `POST /api/tasks/{id}/cancel`: a queued task never runs; a running one is cancelled.
pub(crate) async fn cancel_task(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    owned_task(&st, &user, &id).await?;
    let before = task_meta(&st, &user.0, &id).await?;
    if before.status.is_terminal() {
        return Ok(Json(
            json!({"task_id": id, "status": "already_finished", "state": api_state(&before.status)}),
        ));
    }
    let out = st.client.revoke(&id, false).await?;
    if out.running {
        return Ok(Json(
            json!({"task_id": id, "status": "cancelling", "state": api_state(&before.status)}),
        ));
    }
    // Not running: the revoke stored REVOKED, unless the task ended in between (its own end is
    // kept, and is what its status and result say).
    let after = task_meta(&st, &user.0, &id).await?;
    if after.status.is_terminal() && after.status != TaskState::Revoked {
        return Ok(Json(
            json!({"task_id": id, "status": "already_finished", "state": api_state(&after.status)}),
        ));
    }
    Ok(Json(
        json!({"task_id": id, "status": "cancelled", "state": "REVOKED"}),
    ))
}

/// `GET /api/tasks`: the caller's recent tasks with their current state.
pub(crate) async fn list_tasks(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let (offset, limit) = q.window()?;
    let rows = st.meta.list_tasks(&user.0, offset + limit + 1).await?;
    let more = rows.len() > (offset + limit) as usize;
    let mut items = vec![];
    for t in rows.into_iter().skip(offset as usize).take(limit as usize) {
        let m = task_meta(&st, &user.0, &t.id).await?;
        let mut v = status_view(&m);
        v["name"] = json!(t.name);
        v["created_at"] = json!(
            t.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if let Some(o) = v.as_object_mut() {
            o.remove("result");
        }
        items.push(v);
    }
    Ok(Json(
        json!({"items": items, "next_offset": more.then_some(offset + limit)}),
    ))
}

/// Most WebSockets one user may hold open.
pub(crate) const MAX_SOCKETS_PER_USER: usize = 16;

/// A follower socket's read buffer: a follower sends pings and a close (a longer message, up to
/// [`MAX_CLIENT_MESSAGE`], is read in several steps). Small because tungstenite allocates it per
/// socket and zero-fills its free space each time it polls for a message, which the follow
/// loop does after every frame it sends (4 KiB: 1.5 % of the machine in a burst, `perf`).
const WS_READ_BUFFER: usize = 512;
/// Frames fed without a flush are written together up to this size (`send` flushes; only a
/// state that is already final when the socket opens is fed, to go out with the close).
const WS_WRITE_COALESCE: usize = 4096;
/// The most a follower socket buffers for a slow reader before it is closed.
const WS_MAX_BACKLOG: usize = 256 * 1024;
/// Longest a WebSocket stays open (clients reconnect and get the current state first).
pub(crate) const MAX_SOCKET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest message a client may send (it has nothing to say but pings and a close).
pub(crate) const MAX_CLIENT_MESSAGE: usize = 4096;

/// Counts a user's open sockets; the count drops when the guard does.
struct SocketSlot {
    st: AppState,
    user: String,
}

impl SocketSlot {
    fn take(st: &AppState, user: &str) -> Option<SocketSlot> {
        let mut m = st.sockets.lock().expect("sockets lock");
        let n = m.entry(user.to_owned()).or_insert(0);
        if *n >= MAX_SOCKETS_PER_USER {
            return None;
        }
        *n += 1;
        Some(SocketSlot {
            st: st.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut m = self.st.sockets.lock().expect("sockets lock");
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// `WS /api/ws/tasks/{id}`: the current state at once, then every change, then a normal close.
/// At most [`MAX_SOCKETS_PER_USER`] per user (429 `too_many_sockets`); closed (1008) when the
/// token expires and (1001) after [`MAX_SOCKET_LIFETIME`] or when the server begins to shut down; a
/// finished task whose result the backend lost but whose output is stored gets `complete` at
/// once; client messages over
/// [`MAX_CLIENT_MESSAGE`] end the connection.
pub(crate) async fn task_ws(
    State(st): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    owned_task(&st, &session.user, &id).await?;
    // A task whose result the backend no longer has, but whose output is stored, is finished:
    // its followers get the end at once, not PENDING until the socket's lifetime runs out.
    let now = crate::outcome::task_meta(&st, &session.user.0, &id).await?;
    let finished = now.status.is_terminal().then_some(now);
    let slot = SocketSlot::take(&st, &session.user.0).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sockets",
            format!("at most {MAX_SOCKETS_PER_USER} open WebSockets per user"),
        )
    })?;
    let until = session.expires_at;
    // Small buffers: a follower sends almost nothing and receives small frames, and thousands
    // of sockets stay open at once (tungstenite's defaults are 128 KiB each way per socket).
    // Frames are written at once (each `send` flushes: progress is latency-bound); the close
    // follows the final state a moment later (`close_after_final`). A reader too slow for 256 KiB of
    // backlog is dropped rather than buffered without bound.
    Ok(ws
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_COALESCE)
        .max_write_buffer_size(WS_MAX_BACKLOG)
        .on_upgrade(move |socket| async move {
            let ended = follow(st.clone(), id, socket, until, finished).await;
            // The user's count drops as the task ends: a client that opens the next task's
            // socket on the final state is not refused for this one's delayed close.
            drop(slot);
            if let Some(socket) = ended {
                close_after_final(&st, socket).await;
            }
        }))
}

/// The last frame made for each followed task: its followers (up to 16 per user, any number of
/// users for an operator's task) receive the same state, so it is serialized once per change,
/// not once per socket. Followers share the state the backend published (one `Arc`), so the
/// memo recognizes it by pointer; a state read anew (a follower's first) is compared by value.
/// Bounded: cleared when it holds 10,000 tasks.
#[derive(Default)]
pub(crate) struct FrameMemo(std::sync::Mutex<HashMap<String, (Arc<ResultMeta>, Utf8Bytes)>>);

const FRAME_MEMO_MAX: usize = 10_000;

impl FrameMemo {
    fn frame(&self, m: &Arc<ResultMeta>) -> Utf8Bytes {
        let mut map = self.0.lock().expect("frame memo lock");
        if let Some((seen, text)) = map.get(&m.task_id)
            && (Arc::ptr_eq(seen, m) || **seen == **m)
        {
            return text.clone();
        }
        let text: Utf8Bytes = frame(m).into();
        if map.len() >= FRAME_MEMO_MAX {
            map.clear();
        }
        map.insert(m.task_id.clone(), (m.clone(), text.clone()));
        text
    }
}

/// How long a follower's socket stays open after its task's final state went out, before the
/// server closes it (1000, "task finished").
const CLOSE_AFTER_FINAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Closes a follower's socket [`CLOSE_AFTER_FINAL`] after its final state was flushed (at once
/// when the server begins to shut down). Tasks followed by many sockets tend to finish
/// together (a batch, a clinic's session, the bench's 625 tasks in one millisecond), and the
/// teardown of a socket (its close frame, `close`, the poller's deregistration, and on the
/// client's side its close handshake) costs about as much as a frame: done at once, 10,000
/// closes took their place in the runtime's queue among other followers' final states. The
/// socket is not read meanwhile: a client that closed first is noticed when the close fails.
async fn close_after_final(st: &AppState, mut socket: WebSocket) {
    tokio::select! {
        () = tokio::time::sleep(CLOSE_AFTER_FINAL) => {}
        () = st.closing.cancelled() => {}
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "task finished".into(),
        })))
        .await;
}

fn frame(m: &ResultMeta) -> String {
    let kind = match m.status {
        TaskState::Success => "complete",
        TaskState::Failure | TaskState::Revoked => "error",
        _ => "progress",
    };
    json!({"type": kind, "data": status_view(m)}).to_string()
}

/// Follows task `id` on `socket`; gives the socket back when the task's final state went out,
/// for [`close_after_final`].
async fn follow(
    st: AppState,
    id: String,
    mut socket: WebSocket,
    expires_at: Option<i64>,
    finished: Option<ResultMeta>,
) -> Option<WebSocket> {
    if let Some(m) = finished {
        if socket.feed(Message::Text(frame(&m).into())).await.is_ok() {
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "task finished".into(),
                })))
                .await;
        }
        return None;
    }
    let mut watch = st.client.watch(&id);
    let now = chrono::Utc::now().timestamp();
    let expiry = expires_at.map_or(MAX_SOCKET_LIFETIME, |e| {
        std::time::Duration::from_secs(u64::try_from(e - now).unwrap_or(0)).min(MAX_SOCKET_LIFETIME)
    });
    let token_bound = expires_at.is_some_and(|e| e - now <= MAX_SOCKET_LIFETIME.as_secs() as i64);
    let deadline = tokio::time::sleep(expiry);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = st.closing.cancelled() => {
                let reason = "server shutting down; reconnect";
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: reason.into() }))).await;
                return None;
            }
            () = &mut deadline => {
                let (code, reason) = if token_bound {
                    (1008, "token expired")
                } else {
                    (1001, "connection lifetime reached; reconnect")
                };
                let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                return None;
            }
            next = watch.next_shared() => match next {
                Ok(Some(m)) => {
                    let text = Message::Text(st.frames.frame(&m));
                    if m.status.is_terminal() {
                        return socket.send(text).await.is_ok().then_some(socket);
                    }
                    if socket.send(text).await.is_err() {
                        return None;
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    // The backend's own words (addresses, paths) go to the log, not the client;
                    // the frame has no `state`: the task goes on, the client reconnects.
                    tracing::warn!(error = %e, task_id = %id, "A WebSocket follower lost the result store.");
                    let msg = json!({"type": "error", "data": {"task_id": id, "error": {"code": "unavailable", "message": "the result store is unavailable; reconnect to follow the task"}}});
                    let _ = socket.send(Message::Text(msg.to_string().into())).await;
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1011, reason: "backend unavailable".into() }))).await;
                    return None;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_serialized_once_for_all_its_followers() {
        let memo = FrameMemo::default();
        let mut m = ResultMeta::new(
            "t1",
            TaskState::Processing,
            json!({"progress": 40, "status": "Warping", "at": 1}),
        );
        let shared = Arc::new(m.clone());
        let a = memo.frame(&shared);
        let b = memo.frame(&shared.clone());
        assert_eq!(a.as_str().as_ptr(), b.as_str().as_ptr(), "the same bytes");
        let copy = memo.frame(&Arc::new(m.clone()));
        assert_eq!(
            a.as_str().as_ptr(),
            copy.as_str().as_ptr(),
            "an equal state read anew reuses the frame"
        );
        assert!(a.as_str().contains("\"progress\":40"));
        m.result = json!({"progress": 60, "status": "Warping", "at": 2});
        let c = memo.frame(&Arc::new(m));
        assert!(
            c.as_str().contains("\"progress\":60"),
            "a change is framed anew"
        );
        for i in 0..FRAME_MEMO_MAX + 5 {
            memo.frame(&Arc::new(ResultMeta::new(
                format!("t{i}"),
                TaskState::Pending,
                Value::Null,
            )));
        }
        assert!(memo.0.lock().unwrap().len() <= FRAME_MEMO_MAX, "bounded");
    }
    #[test]
    fn a_received_task_is_shown_as_pending() {
        let v = status_view(&ResultMeta::new("t1", TaskState::Received, Value::Null));
        assert_eq!(v["state"], "PENDING");
        assert_eq!(v["progress"], 0);
        let v = status_view(&ResultMeta::new("t1", TaskState::Started, Value::Null));
        assert_eq!(v["state"], "STARTED");
        assert_eq!(api_state(&TaskState::Received), "PENDING");
        assert_eq!(api_state(&TaskState::Revoked), "REVOKED");
    }
}
