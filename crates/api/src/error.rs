//! The one place where errors become HTTP: `{"error": {"code", "message"}}` with a stable code.

use afterview_core::ErrorCode;
use afterview_engine::{BackendError, ClientError, ErrorInfo};
use afterview_store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// API-level codes (task and preview codes come from [`ErrorCode`]).
pub const API_CODES: &[(&str, &str)] = &[
    (
        "unauthorized",
        "No valid credentials: send `Authorization: Bearer <token>` (WebSockets may pass `?token=`).",
    ),
    ("token_expired", "The token has expired."),
    (
        "not_found",
        "No such resource (or it belongs to someone else).",
    ),
    ("task_not_found", "No such task for this user."),
    ("invalid_task_id", "The task id is malformed."),
    (
        "conflict",
        "The resource already exists (an id taken by another request).",
    ),
    ("invalid_request", "The request body or query is malformed."),
    ("missing_file", "The upload has no `file` field."),
    ("payload_too_large", "The request body is over the limit."),
    (
        "request_timeout",
        "The upload's body did not arrive within 180 s; retry on a faster connection.",
    ),
    (
        "idempotency_key_reused",
        "The Idempotency-Key was used before with a different request.",
    ),
    (
        "idempotency_key_in_progress",
        "A request with this Idempotency-Key is still running (on another API host); retry after `Retry-After` seconds.",
    ),
    (
        "task_failed",
        "The task failed; `error.code` is the task's own code when known.",
    ),
    ("task_revoked", "The task was cancelled or expired."),
    ("timeout", "The task did not finish within its time limit."),
    (
        "unavailable",
        "The broker or a store is unreachable; retry after `Retry-After` seconds.",
    ),
    (
        "too_many_tasks",
        "The user has the most tasks waiting or running (10 by default); retry after `Retry-After` seconds.",
    ),
    (
        "too_many_requests",
        "The user has the most synchronous requests open (2 by default); use `?async_processing=true`.",
    ),
    (
        "storage_quota_exceeded",
        "The user's stored photos reached the quota (count or bytes); delete some first.",
    ),
    (
        "too_many_sockets",
        "The user has too many WebSockets open (16).",
    ),
    (
        "busy",
        "Too many photos are being received or decoded at once (on this host, or by this user); retry after `Retry-After` seconds.",
    ),
    ("internal_error", "An unexpected error."),
    (
        "method_not_allowed",
        "The route exists but not with this HTTP method (`Allow` lists the methods it takes).",
    ),
    (
        "unsupported_media_type",
        "The request body's `Content-Type` is not the one the route takes.",
    ),
];

/// Codes the task engine gives a task's failure (in `error.code` of a task's status, and as the
/// answer to a synchronous request), besides the catalogued [`ErrorCode`]s.
pub const ENGINE_CODES: &[(&str, &str)] = &[
    (
        "invalid_arguments",
        "The task's arguments do not fit it (sent by another producer, e.g. a Python Celery client).",
    ),
    ("not_registered", "No worker knows the task's name."),
    (
        "malformed_message",
        "The broker message could not be decoded.",
    ),
    (
        "time_limit_exceeded",
        "The task ran past its hard time limit (300 s by default).",
    ),
    (
        "soft_time_limit_exceeded",
        "The task ran past its soft time limit (240 s by default) and stopped.",
    ),
    ("revoked", "The task was cancelled before it ran."),
    ("terminated", "The task was cancelled while it ran."),
    ("expired", "The task was not started before its expiry."),
    ("cancelled", "The task saw its cancellation and stopped."),
];

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// 404 for anything unknown or foreign.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 400 for a malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401.
    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 500: something the server holds is wrong (not the request, not a passing outage).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A catalogued domain error with its natural status.
    pub fn domain(code: ErrorCode, message: impl Into<String>) -> Self {
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, code.as_str(), message)
    }

    /// A task's failure, as the answer to a synchronous request or `/result`.
    pub fn from_task(info: &ErrorInfo, revoked: bool) -> Self {
        if revoked {
            return Self::new(
                StatusCode::GONE,
                "task_revoked",
                format!("the task was {}: {}", info.code, info.message),
            );
        }
        Self::new(status_of(&info.code), &info.code, info.message.clone())
    }
}

/// The HTTP status for a task's error code: a catalogued [`ErrorCode`]'s own, or the engine's
/// codes' (time limits, unknown tasks, bad arguments); anything else is a 500.
pub fn status_of(code: &str) -> StatusCode {
    if let Some(c) = ErrorCode::parse(code) {
        return StatusCode::from_u16(c.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    match code {
        "invalid_arguments" => StatusCode::BAD_REQUEST,
        "not_registered" => StatusCode::NOT_IMPLEMENTED,
        "time_limit_exceeded" | "soft_time_limit_exceeded" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The code of an error answer that no handler made (axum's own rejections of a malformed
/// query, path, body or multipart, a body over the limit, a wrong method), by its status.
fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal_error",
        _ => "invalid_request",
    }
}

/// Gives an error answer of an `/api/` route that is not `{"error": {"code", "message"}}`
/// already (a rejection made by axum's extractors or router, in plain text or empty) that shape,
/// keeping its status and headers (`Allow` on a 405): every API error has a stable code.
pub(crate) async fn json_error_body(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // axum's rejection texts are short; anything longer is cut (and never echoed whole).
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if message.is_empty() {
        message = match status {
            StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_owned(),
            s => s.canonical_reason().unwrap_or("error").to_lowercase(),
        };
    }
    let code = code_for_status(status);
    let json = json!({"error": {"code": code, "message": message}}).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(json))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
            || self.code == "idempotency_key_in_progress"
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Internal details (database messages, file paths, broker addresses) are logged, never
/// answered: the client gets the code and a generic message.
impl From<afterview_core::tasks::Invalid> for ApiError {
    fn from(e: afterview_core::tasks::Invalid) -> Self {
        Self::domain(e.code, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "storage unavailable");
                Self::unavailable("storage is unavailable; retry shortly")
            }
            StoreError::Conflict(m) => {
                tracing::info!(error = %m, "storage conflict");
                Self::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the resource already exists",
                )
            }
            StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "storage returned corrupt data");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "an unexpected error",
                )
            }
        }
    }
}
impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(m) => {
                tracing::warn!(error = %m, "broker unavailable");
                Self::unavailable("the task broker is unavailable; retry shortly")
            }
            BackendError::Full(m) => {
                tracing::warn!(error = %m, "broker full");
                Self::unavailable("the task broker is full; retry later")
            }
            BackendError::Invalid(m) => Self::bad_request(m.to_string()),
            BackendError::Corrupt(m) => {
                tracing::error!(error = %m, "broker returned corrupt data");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "an unexpected error",
                )
            }
        }
    }
}
impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Invalid(m) => Self::bad_request(m.to_string()),
            ClientError::Backend(b) => b.into(),
        }
    }
}
