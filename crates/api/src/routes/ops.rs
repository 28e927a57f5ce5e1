//! Operations: `/healthz` (the process answers), `/readyz` (every dependency answers, within
//! 3 s), `/metrics` (Prometheus text, optionally behind a token), the OpenAPI document and the
//! docs page.

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::{AppState, openapi};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/api/openapi.json",
            get(|| async { Json(openapi::document()) }),
        )
        .route(
            "/api/docs",
            get(|| async { axum::response::Html(openapi::docs_page()) }),
        )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<AppState>) -> Response {
    let check = async {
        st.client
            .broker()
            .ping()
            .await
            .map_err(|e| format!("broker: {e}"))?;
        st.client
            .backend()
            .ping()
            .await
            .map_err(|e| format!("result backend: {e}"))?;
        st.meta
            .ping()
            .await
            .map_err(|e| format!("metadata store: {e}"))?;
        st.blobs
            .ping()
            .await
            .map_err(|e| format!("blob store: {e}"))
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => {
            // Which dependency is down is for the log; the probe only says "not ready".
            tracing::warn!(error = %e, "not ready");
            ApiError::unavailable(
                e.split(':').next().unwrap_or("a dependency").to_owned() + " unavailable",
            )
            .into_response()
        }
        Err(_) => ApiError::unavailable("a dependency did not answer within 3 s").into_response(),
    }
}

/// The broker's queue counts, at most a second old: requests at once wait for the one count
/// under way and share it (a scraper every second, or a flood of requests, costs the broker
/// one count a second). A failed count is kept for the second too (none): requests waiting
/// behind a count that timed out do not each wait for their own.
async fn queue_counts(st: &AppState) -> crate::QueueCounts {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(1);
    let mut cached = st.queue_counts.lock().await;
    if let Some((at, counts)) = cached.as_ref()
        && at.elapsed() < FRESH
    {
        return counts.clone();
    }
    let counts = st.client.queue_stats(None).await.unwrap_or_default();
    *cached = Some((std::time::Instant::now(), counts.clone()));
    counts
}

/// `/metrics`: open by default (it shows request counts and latencies by route, task counts
/// by task name and queue depths: no user, photo or token); with `metrics_token` set, only
/// `Authorization: Bearer <that token>`.
async fn metrics_text(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(want) = &st.metrics_token {
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let same = got.len() == want.len()
            && got
                .bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return ApiError::unauthorized("unauthorized", "/metrics needs the metrics token")
                .into_response();
        }
    }
    // One count of every queue (it reads every message), then the known queues that are empty.
    let mut queues = queue_counts(&st).await;
    for q in st.client.known_queues() {
        if !queues.iter().any(|k| k.queue == q) {
            queues.push(afterview_engine::backend::QueueStats {
                queue: q,
                ..Default::default()
            });
        }
    }
    queues.sort_by(|a, b| a.queue.cmp(&b.queue));
    let body = st.metrics.render(&queues);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
