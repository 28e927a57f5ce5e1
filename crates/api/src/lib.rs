//! Afterview's HTTP and WebSocket API.
//!
//! Job: answer quickly and never do heavy work itself. Handlers authenticate, check ownership,
//! validate, enqueue through the engine's [`Client`] and read results. This crate never links
//! the preview engine or the renderers: tasks are sent by name with payloads from
//! `afterview-core`.
//!
//! Invariants:
//! - Every image, visualization, export and task has an owner; anyone else gets 404, exactly as
//!   for an id that does not exist (reads, downloads, cancel, WebSocket).
//! - Every error leaves through [`error::ApiError`]: `{"error": {"code", "message"}}`.
//! - Progress is pushed (WebSocket) from the engine's event stream: no polling.

pub mod auth;
pub mod error;
mod idempotency;
pub mod metrics;
pub mod openapi;
mod outcome;
mod routes;
mod submit;
pub mod uploads;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use afterview_core::catalog::Catalog;
use afterview_engine::Client;
use afterview_intake::Limits;
use afterview_store::{BlobStore, MetadataStore};
use axum::Router;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;

use crate::auth::{Auth, AuthError};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What a multipart upload may carry beyond its file (the form's framing and headers).
pub const MULTIPART_FRAMING: usize = 1024 * 1024;
/// Largest JSON body.
pub const MAX_JSON_BODY: usize = 256 * 1024;

/// Serializes the requests of one `(user, Idempotency-Key)`.
pub(crate) type KeyLock = Arc<tokio::sync::Mutex<()>>;

/// Everything handlers use.
pub struct Inner {
    /// The task engine.
    pub client: Client,
    /// Metadata.
    pub meta: Arc<dyn MetadataStore>,
    /// Bytes.
    pub blobs: Arc<dyn BlobStore>,
    /// The procedure catalog.
    pub catalog: Arc<Catalog>,
    /// Authentication.
    pub auth: Auth,
    /// Upload limits.
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Longest a synchronous request waits for its task (the hard limit plus slack).
    pub sync_timeout: Duration,
    /// How long task results are kept (a task's result missing past this is an expired one).
    pub result_expires: Duration,
    /// Serializes requests sharing an Idempotency-Key.
    idem_locks: Mutex<HashMap<(String, String), KeyLock>>,
    /// Serializes one user's task submissions on this host (the metadata store's slot then
    /// orders hosts), so waiting requests queue here instead of polling the store.
    pub(crate) submit_locks: Mutex<HashMap<String, KeyLock>>,
    /// The last WebSocket frame made per followed task, shared by its followers.
    pub(crate) frames: routes::tasks::FrameMemo,
    /// Open WebSockets per user.
    pub sockets: Mutex<HashMap<String, usize>>,
    /// Cancelled when the server begins to shut down: WebSockets then close with 1001 (going
    /// away), so their clients reconnect to another instance.
    pub closing: tokio_util::sync::CancellationToken,
    /// User ids allowed to see `/api/monitor` (everyone else gets 404).
    pub operators: std::collections::HashSet<String>,
    /// What `/api/config` answers (no secrets: how clients sign in).
    pub client_config: serde_json::Value,
    /// When set, downloads answer `307` to a presigned URL of the blob store valid this long
    /// (when the store can sign; S3), instead of streaming the bytes through the API.
    pub presign: Option<Duration>,
    /// Per-user limits.
    pub user_limits: UserLimits,
    /// When set, `/metrics` requires it as a bearer token.
    pub metrics_token: Option<String>,
    /// Photo decodes allowed at once: each holds up to ~3 bytes per pixel (120 MB at the 40 MP
    /// limit), so uploads beyond this wait (then 503 + Retry-After) instead of adding up.
    pub decodes: Arc<tokio::sync::Semaphore>,
    /// Uploads received or held at once ([`UPLOADS_PER_DECODE`] per decode slot, half of them
    /// one user's): see [`uploads`].
    pub uploads: Arc<uploads::UploadGate>,
    /// `/metrics`' queue counts, read at most once a second by one request at a time: the
    /// count reads every scheduled and held message in the broker (on Redis one script that
    /// blocks the server meanwhile), and `/metrics` is open by default.
    pub(crate) queue_counts: tokio::sync::Mutex<Option<(std::time::Instant, QueueCounts)>>,
}

/// Queue counts as read by `/metrics`.
pub(crate) type QueueCounts = Vec<afterview_engine::backend::QueueStats>;

/// What one user may hold at once. Defaults are generous for a clinic and small for an abuser;
/// every value has a `serve` flag and an `AFTERVIEW_*` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimits {
    /// Tasks waiting or running (beyond: 429 `too_many_tasks`; 0: unlimited). This also keeps
    /// the shared queue fair: one user can put at most this many tasks ahead of anyone else's.
    pub active_tasks: usize,
    /// Synchronous requests (waiting for their task) at once (beyond: 429 `too_many_requests`;
    /// 0: unlimited).
    pub sync_requests: usize,
    /// Photos stored (beyond: 403 `storage_quota_exceeded`).
    pub photos: usize,
    /// Bytes of stored photos (beyond: 403 `storage_quota_exceeded`).
    pub storage_bytes: u64,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            active_tasks: 10,
            sync_requests: 2,
            photos: 1000,
            storage_bytes: 2_000_000_000,
        }
    }
}

/// Photo decodes at once (the machine's cores, at least 1, at most 4).
pub fn decode_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// Uploads received or held at once per decode slot (see [`Inner::uploads`]).
pub const UPLOADS_PER_DECODE: usize = 4;

/// How long an upload waits for a decode slot before it is answered 503.
pub const DECODE_WAIT: Duration = Duration::from_secs(20);

/// One of the photo decode slots ([`decode_slots`]), waited for at most [`DECODE_WAIT`]:
/// `503 busy` (with `Retry-After`) when they stay taken, or when the server is closing.
pub(crate) async fn decode_slot(
    st: &AppState,
) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    let busy = |m: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", m);
    tokio::time::timeout(DECODE_WAIT, st.decodes.clone().acquire_owned())
        .await
        .map_err(|_| busy("too many pictures are being processed; retry shortly"))?
        .map_err(|_| busy("shutting down"))
}

impl Inner {
    /// Assembles the state.
    pub fn new(
        client: Client,
        meta: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        catalog: Arc<Catalog>,
        auth: Auth,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            meta,
            blobs,
            catalog,
            auth,
            limits,
            metrics,
            sync_timeout: afterview_engine::task::DEFAULT_TIME_LIMIT + Duration::from_secs(15),
            result_expires: Duration::from_secs(86_400),
            idem_locks: Mutex::default(),
            submit_locks: Mutex::default(),
            frames: routes::tasks::FrameMemo::default(),
            decodes: Arc::new(tokio::sync::Semaphore::new(decode_slots())),
            uploads: uploads::UploadGate::new(decode_slots() * UPLOADS_PER_DECODE),
            sockets: Mutex::default(),
            closing: tokio_util::sync::CancellationToken::new(),
            presign: None,
            operators: std::collections::HashSet::new(),
            client_config: json!({"firebase": null}),
            user_limits: UserLimits::default(),
            metrics_token: None,
            queue_counts: tokio::sync::Mutex::default(),
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner").finish_non_exhaustive()
    }
}

/// The shared state.
pub type AppState = Arc<Inner>;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct User(pub String);

/// `?token=` of a request, percent-decoded (a browser's `encodeURIComponent` escapes the `+`,
/// `/` and `=` of a static token). A `+` stays a `+`: a token is not form text. A value that is
/// not valid percent-encoded UTF-8 is no token.
fn query_token(parts: &Parts) -> Option<String> {
    let q = parts.uri.query()?;
    let raw = q.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    percent_decode(raw)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The bearer token of a request: the `Authorization` header, or (on the WebSocket route only,
/// where browsers cannot set headers) `?token=`. Tokens in URLs end up in proxy logs and
/// browser history, so no other route takes them.
fn bearer(parts: &Parts) -> Result<String, ApiError> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = match header {
        Some(h) => match h.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => Some(t.trim().to_owned()),
            _ => {
                return Err(ApiError::unauthorized(
                    "unauthorized",
                    "the Authorization header must be `Bearer <token>`",
                ));
            }
        },
        None if parts.method == Method::GET && parts.uri.path().starts_with("/api/ws/") => {
            query_token(parts)
        }
        None => None,
    };
    token.ok_or_else(|| ApiError::unauthorized("unauthorized", "no bearer token"))
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Expired => ApiError::unauthorized("token_expired", e.to_string()),
        other => ApiError::unauthorized("unauthorized", other.to_string()),
    }
}

impl FromRequestParts<AppState> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        st.auth
            .authenticate(&token)
            .await
            .map(User)
            .map_err(auth_error)
    }
}

/// The caller and when their token expires (for connections that outlive a request).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub user: User,
    /// Seconds since the epoch; `None` for static tokens.
    pub expires_at: Option<i64>,
}

impl FromRequestParts<AppState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let id = st.auth.identify(&token).await.map_err(auth_error)?;
        Ok(Session {
            user: User(id.user),
            expires_at: id.expires_at,
        })
    }
}

/// Every route, as `(method, path)`: the router and the OpenAPI document are checked against it.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/images"),
    ("GET", "/api/images"),
    ("GET", "/api/images/{id}"),
    ("DELETE", "/api/images/{id}"),
    ("GET", "/api/images/{id}/content"),
    ("GET", "/api/images/{id}/thumbnail"),
    ("GET", "/api/images/{id}/face"),
    ("GET", "/api/procedures"),
    ("GET", "/api/procedures/{id}"),
    ("POST", "/api/visualizations"),
    ("POST", "/api/visualizations/compare"),
    ("GET", "/api/visualizations"),
    ("GET", "/api/visualizations/{id}"),
    ("DELETE", "/api/visualizations/{id}"),
    ("GET", "/api/visualizations/{id}/image"),
    ("GET", "/api/visualizations/{id}/thumbnail"),
    ("POST", "/api/exports"),
    ("POST", "/api/exports/cost-infographic"),
    ("GET", "/api/exports"),
    ("GET", "/api/exports/{id}"),
    ("DELETE", "/api/exports/{id}"),
    ("GET", "/api/exports/{id}/download"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/{id}/status"),
    ("POST", "/api/tasks/{id}/cancel"),
    ("GET", "/api/tasks/{id}/result"),
    ("GET", "/api/ws/tasks/{id}"),
    ("GET", "/api/me"),
    ("GET", "/api/config"),
    ("GET", "/api/monitor"),
    ("POST", "/api/monitor/tasks/{id}/revoke"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/docs"),
];

/// The router: every resource's routes, the 404 fallback, and request tracking.
pub fn router(state: AppState) -> Router {
    routes::all(state.limits.max_bytes)
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Records latency per matched route; adds `Cache-Control: no-store` to API answers (they carry
/// medical data); gives the API's error answers that no handler made the JSON error shape.
async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    // Labels come from fixed sets, never from the request: an invented method or path must
    // not add series to /metrics.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
    .to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let api = req.uri().path().starts_with("/api/");
    let mut resp = next.run(req).await;
    if api {
        resp = crate::error::json_error_body(resp).await;
    }
    st.metrics.observe_request(
        &method,
        &route,
        resp.status().as_u16(),
        t0.elapsed().as_secs_f64(),
    );
    if route.starts_with("/api/") && !resp.headers().contains_key(header::CACHE_CONTROL) {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// Feeds task metrics from the engine's event stream until the stream closes.
pub fn spawn_task_metrics(client: &Client, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
    let mut rx = client.backend().events().subscribe_all();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(m) => metrics.observe_task(&m),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Serves `router` on `listener` until `shutdown` completes; then closes the listener (new
/// connections are refused at once, not queued unanswered), lets open requests finish for up
/// to 30 s, and stops waiting for them when `immediate` completes (a second signal).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    immediate: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let mut shutdown = std::pin::pin!(shutdown);
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle delay: a small write while the previous one is unacknowledged (a WebSocket's
        // result right after its last progress) would wait for that ACK, which a client may
        // delay (40 ms on Linux). On loopback clients ACK at once (`ws-fanout`: the result
        // arrives 0.5 ms after the last progress either way); across a network they may not.
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let mut close = close_rx.clone();
        conns.spawn(async move {
            // A client must finish sending its headers (and, between keep-alive requests,
            // start the next) within HEADER_READ_TIMEOUT: half-sent requests do not hold a
            // connection open for ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = close.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = close_tx.send(true);
    let drained = tokio::time::timeout(GRACEFUL_CLOSE, async {
        while conns.join_next().await.is_some() {}
    });
    tokio::select! {
        _ = drained => {}
        () = immediate => {}
    }
    Ok(())
}

/// How long a client has to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests may take to finish at shutdown.
const GRACEFUL_CLOSE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::{percent_decode, query_token};

    fn token_of(uri: &str) -> Option<String> {
        let (parts, ()) = axum::http::Request::get(uri).body(()).unwrap().into_parts();
        query_token(&parts)
    }

    #[test]
    fn a_query_token_is_percent_decoded_whole() {
        // `encodeURIComponent` of a static token from `openssl rand -base64`.
        assert_eq!(
            token_of("/api/ws/tasks/x?token=abc%2Bdef%2F01%3D%3D").as_deref(),
            Some("abc+def/01==")
        );
        assert_eq!(
            token_of("/x?a=1&token=eyJ.eyJ%2e").as_deref(),
            Some("eyJ.eyJ.")
        );
        // A `+` is a `+`, not a space.
        assert_eq!(token_of("/x?token=a+b").as_deref(), Some("a+b"));
        assert_eq!(token_of("/x?tokens=a"), None);
        assert_eq!(token_of("/x"), None);
    }

    #[test]
    fn broken_escapes_are_no_token() {
        for s in ["%", "%2", "%zz", "%C3%28", "a%2"] {
            assert_eq!(percent_decode(s), None, "{s}");
        }
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    }
}
