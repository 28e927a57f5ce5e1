//! `Idempotency-Key` on POSTs: a retried request gets the first answer instead of paying twice.
//!
//! Keys are per user. The first successful answer is stored with a fingerprint of the request
//! (method, path, body); the same key with another request is refused (422). A request first
//! claims its key in the metadata store, atomically for every API host: a retry arriving on
//! another host while the first is still running gets `409 idempotency_key_in_progress` (as the
//! IETF Idempotency-Key draft says); on the same host it waits for the first and replays it.
//! Failed answers are not stored and their claim is dropped: a retry may succeed. A claim whose
//! host died is taken over once it is older than a synchronous request can run.

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

/// Runs `f` at most once per `(user, Idempotency-Key)` and replays its answer.
pub(crate) async fn once<F, Fut>(
    st: &AppState,
    user: &str,
    headers: &HeaderMap,
    method_path: &str,
    body: &[u8],
    f: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let Some(key) = headers.get("idempotency-key") else {
        return answer(f().await, false);
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
    let lock = {
        let mut locks = st.idem_locks.lock().expect("idempotency lock map");
        locks
            .entry((user.to_owned(), key.clone()))
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    };
    let out = {
        let _guard = lock.lock().await;
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
            Ok(IdempotencyClaim::Answered(prev)) => answer(
                Ok((
                    StatusCode::from_u16(prev.status).unwrap_or(StatusCode::OK),
                    prev.body,
                )),
                true,
            ),
            Ok(IdempotencyClaim::InProgress { .. }) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_progress",
                "a request with this Idempotency-Key is still running; retry shortly",
            )
            .into_response(),
            Ok(IdempotencyClaim::Claimed) => run_claimed(st, (user, &key), fingerprint, f).await,
        }
    };
    let mut locks = st.idem_locks.lock().expect("idempotency lock map");
    if Arc::strong_count(&lock) <= 2 {
        locks.remove(&(user.to_owned(), key));
    }
    out
}

/// Runs `f` under a claim this request won: a success is stored for replays; a failure (or a
/// client that went away) gives the key back.
async fn run_claimed<F, Fut>(
    st: &AppState,
    (user, key): (&str, &str),
    fingerprint: String,
    f: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    // Dropped unanswered (the client went away mid-request): give the key back.
    let mut claim = Claim {
        st: st.clone(),
        user: user.to_owned(),
        key: key.to_owned(),
        open: true,
    };
    let out = f().await;
    if let Ok((status, body)) = &out
        && status.is_success()
    {
        let rec = IdempotentResponse {
            fingerprint,
            status: status.as_u16(),
            body: body.clone(),
            created_at: chrono::Utc::now(),
        };
        if let Err(e) = st.meta.put_idempotent(user, key, &rec).await {
            tracing::warn!(error = %e, "Could not store an idempotent answer.");
        }
    } else if let Err(e) = st.meta.release_idempotent(user, key).await {
        tracing::warn!(error = %e, "Could not release an idempotency claim; it goes stale by itself.");
    }
    claim.open = false;
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

/// A claimed key not (yet) answered; released when dropped open.
struct Claim {
    st: AppState,
    user: String,
    key: String,
    open: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.open {
            let (meta, user, key) = (
                self.st.meta.clone(),
                std::mem::take(&mut self.user),
                std::mem::take(&mut self.key),
            );
            tokio::spawn(async move {
                if let Err(e) = meta.release_idempotent(&user, &key).await {
                    tracing::warn!(error = %e, "Could not release an idempotency claim; it goes stale by itself.");
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
