//! `Idempotency-Key` on POSTs: a retried request gets the first answer instead of paying twice.
//!
//! Keys are per user. The first successful answer is stored with a fingerprint of the request
//! (method, path, body); the same key with another request is refused (422). A request first
//! claims its key in the metadata store, atomically for every API host: a retry arriving on
//! another host while the first is still running gets `409 idempotency_key_in_progress` (as the
//! IETF Idempotency-Key draft says); on the same host it waits for the first and replays it.
//! Failed answers are not stored and their claim is dropped: a retry may succeed. Except once a
//! task was sent: from then on the key names that task, whatever the first answer was (a 504
//! because the synchronous wait ran out, a client that went away, the task's own failure), and
//! a retry is answered from that task ([`Resume`]) instead of sending a second one. A claim
//! whose host died is taken over once it is older than a synchronous request can run.

use std::sync::Arc;

use afterview_store::{IdempotencyClaim, IdempotentResponse};
use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;

/// FNV-1a, 64 bits: stable across builds (std's hasher is not).
fn fnv1a(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("{h:016x}")
}

/// What a request did about its task, told by its work (`submit`) and read when its answer is
/// stored, or when the request is dropped before it has one (then it waits for the sending to
/// end: the sending runs to its end on its own, see `submit`).
#[derive(Debug, Clone)]
pub(crate) struct Sent(Arc<tokio::sync::watch::Sender<Sending>>);

/// Where a request's task is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Sending {
    /// Nothing started: no task exists.
    Not,
    /// Being recorded and published.
    Underway,
    /// In the broker.
    Published(String),
    /// Recording or publishing failed: nothing runs (the record, if any, was revoked).
    Failed,
    /// Work without a task (an upload) finished, detached from its request: its answer, kept
    /// for a retry even when the request was dropped meanwhile.
    Done(StatusCode, Value),
}

impl Default for Sent {
    fn default() -> Self {
        Sent(Arc::new(tokio::sync::watch::channel(Sending::Not).0))
    }
}

impl Sent {
    /// Tells where the task is.
    pub(crate) fn tell(&self, s: Sending) {
        self.0.send_replace(s);
    }

    /// The answer a key keeps once the work has ended: a published task's [`accepted`], or
    /// the answer of detached work that finished (`None`: nothing was done).
    async fn settled(&self) -> Option<(StatusCode, Value)> {
        let mut rx = self.0.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Sending::Not | Sending::Failed => return None,
                Sending::Published(id) => return Some((StatusCode::ACCEPTED, accepted(id))),
                Sending::Done(status, body) => return Some((*status, body.clone())),
                Sending::Underway => {}
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// The answer stored for a key whose request sent `task_id` but has no answer of its own to
/// keep (the 202 an asynchronous request gets).
pub(crate) fn accepted(task_id: &str) -> Value {
    serde_json::json!({
        "task_id": task_id,
        "status": "processing",
        "status_url": format!("/api/tasks/{task_id}/status"),
        "websocket_url": format!("/api/ws/tasks/{task_id}"),
    })
}

/// How a retry is answered when the stored answer is the [`accepted`] one of a task (given its
/// id): an asynchronous request replays it, a synchronous one waits for the task again.
pub(crate) type Resume<'a> = Box<dyn FnOnce(String) -> Answer<'a> + Send + 'a>;

/// An answer to come.
pub(crate) type Answer<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(StatusCode, Value), ApiError>> + Send + 'a>>;

/// Runs `f` at most once per `(user, Idempotency-Key)` and replays its answer (through
/// `resume`, when the answer stored is a sent task's [`accepted`] one; requests that send no
/// task give `None`).
pub(crate) async fn once<'a, F, Fut>(
    st: &AppState,
    user: &str,
    headers: &HeaderMap,
    (method_path, body): (&str, &[u8]),
    f: F,
    resume: Option<Resume<'a>>,
) -> Response
where
    F: FnOnce(Sent) -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let Some(key) = headers.get("idempotency-key") else {
        return answer(f(Sent::default()).await, false);
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()) => {
            k.to_owned()
        }
        _ => {
            return ApiError::bad_request("Idempotency-Key must be 1-255 printable characters")
                .into_response();
        }
    };
    let fingerprint = fnv1a(&[method_path.as_bytes(), body]);
    let entry = LockEntry::take(st, user, &key);
    {
        let _guard = entry.lock.lock().await;
        let stale_before = chrono::Utc::now()
            - chrono::Duration::from_std(st.sync_timeout + std::time::Duration::from_secs(60))
                .unwrap_or(chrono::Duration::minutes(10));
        match st
            .meta
            .claim_idempotent(user, &key, &fingerprint, stale_before)
            .await
        {
            Err(e) => ApiError::from(e).into_response(),
            Ok(IdempotencyClaim::Answered(prev)) if prev.fingerprint != fingerprint => reused(),
            Ok(IdempotencyClaim::InProgress { fingerprint: f }) if f != fingerprint => reused(),
            Ok(IdempotencyClaim::Answered(prev)) => match (sent_task(&prev), resume) {
                (Some(task_id), Some(resume)) => answer(resume(task_id).await, true),
                _ => answer(
                    Ok((
                        StatusCode::from_u16(prev.status).unwrap_or(StatusCode::OK),
                        prev.body,
                    )),
                    true,
                ),
            },
            Ok(IdempotencyClaim::InProgress { .. }) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_progress",
                "a request with this Idempotency-Key is still running; retry shortly",
            )
            .into_response(),
            Ok(IdempotencyClaim::Claimed) => run_claimed(st, (user, &key), fingerprint, f).await,
        }
    }
}

/// The task a stored answer names, when it is the [`accepted`] answer of a sent task.
fn sent_task(prev: &IdempotentResponse) -> Option<String> {
    if prev.status != StatusCode::ACCEPTED.as_u16() {
        return None;
    }
    prev.body.get("task_id")?.as_str().map(str::to_owned)
}

/// This host's lock of one `(user, key)`: requests with the same key wait for each other here.
/// The map entry is removed by the last request holding it, however that request ends (a
/// client that goes away drops its request mid-wait).
struct LockEntry {
    st: AppState,
    id: (String, String),
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl LockEntry {
    fn take(st: &AppState, user: &str, key: &str) -> Self {
        let id = (user.to_owned(), key.to_owned());
        let lock = st
            .idem_locks
            .lock()
            .expect("idempotency lock map")
            .entry(id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        LockEntry {
            st: st.clone(),
            id,
            lock,
        }
    }
}

impl Drop for LockEntry {
    fn drop(&mut self) {
        let mut locks = self.st.idem_locks.lock().expect("idempotency lock map");
        // The map's reference and this one: nobody else holds or waits for it.
        if Arc::strong_count(&self.lock) <= 2 {
            locks.remove(&self.id);
        }
    }
}

/// Runs `f` under a claim this request won: a success is stored for replays, as is the task
/// it sent when there is one (see the module's documentation); a failure that sent nothing (or
/// a client that went away before anything was sent) gives the key back.
async fn run_claimed<F, Fut>(
    st: &AppState,
    (user, key): (&str, &str),
    fingerprint: String,
    f: F,
) -> Response
where
    F: FnOnce(Sent) -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let sent = Sent::default();
    // Dropped unanswered (the client went away mid-request): see `Claim`'s `Drop`.
    let mut claim = Claim {
        st: st.clone(),
        user: user.to_owned(),
        key: key.to_owned(),
        fingerprint,
        sent: sent.clone(),
        open: true,
    };
    let out = f(sent).await;
    claim.open = false;
    let keep = match &out {
        Ok((status, body)) if status.is_success() => Some((*status, body.clone())),
        _ => claim.sent.settled().await,
    };
    match keep {
        Some((status, body)) => claim.keep(status, body).await,
        None => claim.release().await,
    }
    answer(out, false)
}

fn reused() -> Response {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request",
    )
    .into_response()
}

/// A claimed key not (yet) answered. Dropped open (the client went away), it keeps the task
/// the request sent once its sending ends, or is given back when nothing was sent.
struct Claim {
    st: AppState,
    user: String,
    key: String,
    fingerprint: String,
    sent: Sent,
    open: bool,
}

impl Claim {
    /// Stores `body` as the key's answer.
    async fn keep(&self, status: StatusCode, body: Value) {
        let rec = IdempotentResponse {
            fingerprint: self.fingerprint.clone(),
            status: status.as_u16(),
            body,
            created_at: chrono::Utc::now(),
        };
        if let Err(e) = self
            .st
            .meta
            .put_idempotent(&self.user, &self.key, &rec)
            .await
        {
            tracing::warn!(error = %e, "Could not store an idempotent answer.");
        }
    }

    /// Gives the key back: a retry runs afresh.
    async fn release(&self) {
        if let Err(e) = self.st.meta.release_idempotent(&self.user, &self.key).await {
            tracing::warn!(error = %e, "Could not release an idempotency claim; it goes stale by itself.");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.open {
            self.open = false;
            let claim = Claim {
                st: self.st.clone(),
                user: std::mem::take(&mut self.user),
                key: std::mem::take(&mut self.key),
                fingerprint: std::mem::take(&mut self.fingerprint),
                sent: self.sent.clone(),
                open: false,
            };
            tokio::spawn(async move {
                match claim.sent.settled().await {
                    Some((status, body)) => claim.keep(status, body).await,
                    None => claim.release().await,
                }
            });
        }
    }
}

fn answer(r: Result<(StatusCode, Value), ApiError>, replayed: bool) -> Response {
    match r {
        Ok((status, body)) => {
            let mut resp = (status, Json(body)).into_response();
            if replayed {
                resp.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            resp
        }
        Err(e) => e.into_response(),
    }
}
