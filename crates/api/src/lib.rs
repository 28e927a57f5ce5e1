//! Afterview's HTTP and WebSocket API.
//!
//! Job: answer HTTP quickly and never do heavy work itself. Handlers validate, enqueue through
//! the engine's [`Client`] and read results; they never import renderers.
//! (This crate grows with the API issue; today it serves the health endpoints.)

use std::future::Future;
use std::time::Duration;

use afterview_engine::Client;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The task engine.
    pub client: Client,
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<AppState>) -> Response {
    let check = async {
        st.client.broker().ping().await?;
        st.client.backend().ping().await
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(())) => Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => unavailable(&e.to_string()),
        Err(_) => unavailable("the broker did not answer within 2 s"),
    }
}

fn unavailable(msg: &str) -> Response {
    let body = Json(json!({"error": {"code": "unavailable", "message": msg}}));
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}
