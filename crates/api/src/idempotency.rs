//! `Idempotency-Key` on POSTs: a retried request gets the first answer instead of paying twice.
//!
//! Keys are per user. The first successful answer is stored with a fingerprint of the request
//! (method, path, body); the same key with another request is refused (422). Requests sharing
//! a key are serialized, so two concurrent retries cannot both run. Failed answers are not
//! stored: a retry may succeed.

use std::sync::Arc;

use afterview_store::IdempotentResponse;
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
        match st.meta.get_idempotent(user, &key).await {
            Err(e) => ApiError::from(e).into_response(),
            Ok(Some(prev)) if prev.fingerprint != fingerprint => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            )
            .into_response(),
            Ok(Some(prev)) => answer(
                Ok((
                    StatusCode::from_u16(prev.status).unwrap_or(StatusCode::OK),
                    prev.body,
                )),
                true,
            ),
            Ok(None) => {
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
                    if let Err(e) = st.meta.put_idempotent(user, &key, &rec).await {
                        tracing::warn!(error = %e, "Could not store an idempotent answer.");
                    }
                }
                answer(out, false)
            }
        }
    };
    let mut locks = st.idem_locks.lock().expect("idempotency lock map");
    if Arc::strong_count(&lock) <= 2 {
        locks.remove(&(user.to_owned(), key));
    }
    out
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
