//! Images, procedures, visualizations and exports.

use afterview_core::ErrorCode;
use afterview_core::ids::new_id;
use afterview_core::tasks::{self, GenerateComparison, GenerateVisualization, PreviewOptions};
use afterview_engine::{SendOptions, TaskState};
use afterview_store::{ImageRecord, TaskRecord, image_key};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{AppState, User, idempotency};

/// `?async_processing=true|false` (default false, as the seed).
#[derive(Debug, Deserialize)]
pub(crate) struct AsyncQuery {
    #[serde(default)]
    async_processing: Option<String>,
}

impl AsyncQuery {
    fn is_async(&self) -> Result<bool, ApiError> {
        match self
            .async_processing
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "async_processing must be true or false, got {other:?}"
            ))),
        }
    }
}

/// `?limit=` for lists (1-200, default 50).
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    offset: Option<u32>,
}

/// The deepest page a list reaches (`offset` beyond it is refused).
pub(crate) const MAX_OFFSET: u32 = 10_000;

impl ListQuery {
    /// `(offset, limit)`, checked.
    pub(crate) fn window(&self) -> Result<(u32, u32), ApiError> {
        let offset = self.offset.unwrap_or(0);
        if offset > MAX_OFFSET {
            return Err(ApiError::bad_request(format!(
                "offset must be 0-{MAX_OFFSET}, got {offset}"
            )));
        }
        Ok((offset, self.limit()?))
    }

    /// One page of a newest-first list: fetches `offset + limit + 1` rows with `fetch` and
    /// answers `{"items": [...], "next_offset": n | null}`.
    pub(crate) async fn page<T, F, Fut>(
        &self,
        fetch: F,
        view: impl Fn(T) -> Value,
    ) -> Result<Json<Value>, ApiError>
    where
        F: FnOnce(u32) -> Fut,
        Fut: Future<Output = Result<Vec<T>, ApiError>>,
    {
        let (offset, limit) = self.window()?;
        let rows = fetch(offset + limit + 1).await?;
        let more = rows.len() > (offset + limit) as usize;
        let items: Vec<Value> = rows
            .into_iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(view)
            .collect();
        Ok(Json(
            json!({"items": items, "next_offset": more.then_some(offset + limit)}),
        ))
    }

    pub(crate) fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=200).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::bad_request(format!(
                "limit must be 1-200, got {n}"
            ))),
        }
    }
}

/// Parses a JSON body into `T`, with errors in the API's shape.
pub(crate) fn parse_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        && !ct.starts_with("application/json")
        && !ct.starts_with("text/plain")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request",
            format!("expected application/json, got {ct}"),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    afterview_engine::task::decode_json(v)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

fn image_view(r: &ImageRecord) -> Value {
    json!({
        "id": r.id,
        "url": tasks::image_url(&r.id),
        "width": r.width,
        "height": r.height,
        "size_bytes": r.bytes,
        "source_format": r.source_format,
        "created_at": r.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

fn png_response(bytes: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// With presigned downloads on and a store that signs (S3): `307` to a short-lived URL, so
/// the bytes do not pass through the API host. `None`: stream them.
async fn presigned(st: &AppState, key: &str) -> Result<Option<Response>, ApiError> {
    let Some(ttl) = st.presign else {
        return Ok(None);
    };
    let Some(url) = st.blobs.signed_url(key, ttl).await? else {
        return Ok(None);
    };
    let location = HeaderValue::from_str(&url)
        .map_err(|_| ApiError::unavailable("the blob store signed an unusable URL"))?;
    Ok(Some(
        (
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, location),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, no-store"),
                ),
            ],
        )
            .into_response(),
    ))
}

// ------------------------------------------------------------------------------------ images

/// `POST /api/images` (multipart field `file`).
pub(crate) async fn upload_image(
    State(st): State<AppState>,
    user: User,
    headers: HeaderMap,
    mut mp: Multipart,
) -> Response {
    let mut file: Option<Bytes> = None;
    loop {
        match mp.next_field().await {
            Ok(Some(field)) => {
                if field.name() == Some("file") {
                    match field.bytes().await {
                        Ok(b) => file = Some(b),
                        Err(e) => return upload_error(e.to_string()).into_response(),
                    }
                }
            }
            Ok(None) => break,
            Err(e) => return upload_error(e.to_string()).into_response(),
        }
    }
    let Some(file) = file else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_file",
            "the upload has no `file` field",
        )
        .into_response();
    };
    let body = file.clone();
    let uid = user.0.clone();
    idempotency::once(
        &st.clone(),
        &uid,
        &headers,
        "POST /api/images",
        &body,
        || async move {
            let limits = st.limits;
            let stored = st
                .meta
                .list_images(&user.0, (st.user_limits.photos + 1) as u32)
                .await?;
            let bytes: u64 = stored.iter().map(|r| r.bytes).sum();
            if stored.len() >= st.user_limits.photos || bytes >= st.user_limits.storage_bytes {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "storage_quota_exceeded",
                    format!(
                        "the photo quota is full ({} photos, {} MB); delete some first",
                        st.user_limits.photos,
                        st.user_limits.storage_bytes / 1_000_000
                    ),
                ));
            }
            // Bounded work: at most `decode_slots()` photos decode at once; the others wait,
            // then get 503 with Retry-After rather than exhaust memory.
            let _slot = tokio::time::timeout(crate::DECODE_WAIT, st.decodes.acquire())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "busy",
                        "too many photos are being processed; retry shortly",
                    )
                })?
                .map_err(|_| {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "shutting down")
                })?;
            let n = tokio::task::spawn_blocking(move || afterview_intake::intake(&file, &limits))
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal_error",
                        e.to_string(),
                    )
                })?
                .map_err(|e| ApiError::domain(e.code(), e.to_string()))?;
            let id = new_id();
            let rec = ImageRecord {
                id: id.clone(),
                owner: user.0.clone(),
                blob_key: image_key(&id),
                width: n.width,
                height: n.height,
                bytes: n.png.len() as u64,
                source_format: n.source_format.as_str().into(),
                created_at: chrono::Utc::now(),
            };
            st.blobs.put(&rec.blob_key, Bytes::from(n.png)).await?;
            st.meta.insert_image(&rec).await?;
            Ok((StatusCode::CREATED, image_view(&rec)))
        },
    )
    .await
}

fn upload_error(msg: String) -> ApiError {
    if msg.contains("length limit") || msg.contains("too large") {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the upload is larger than the limit (20 MB)",
        )
    } else {
        ApiError::bad_request(format!("malformed multipart body: {msg}"))
    }
}

/// `GET /api/images`.
pub(crate) async fn list_images(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    q.page(
        |n| async move { Ok(st.meta.list_images(&user.0, n).await?) },
        |r| image_view(&r),
    )
    .await
}

async fn owned_image(st: &AppState, user: &User, id: &str) -> Result<ImageRecord, ApiError> {
    st.meta.get_image(&user.0, id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ImageNotFound.as_str(),
            format!("image {id} not found"),
        )
    })
}

/// `GET /api/images/{id}`.
pub(crate) async fn get_image(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(image_view(&owned_image(&st, &user, &id).await?)))
}

/// `GET /api/images/{id}/content`.
pub(crate) async fn image_content(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = owned_image(&st, &user, &id).await?;
    if let Some(r) = presigned(&st, &rec.blob_key).await? {
        return Ok(r);
    }
    let bytes = st
        .blobs
        .get(&rec.blob_key)
        .await?
        .ok_or_else(|| ApiError::not_found("image content"))?;
    Ok(png_response(bytes))
}

/// `GET /api/images/{id}/face`: where the previews will work (box, key points, outline), found
/// by the `afterview.detect_face` task; `422 no_face_detected` when there is no face.
pub(crate) async fn image_face(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    owned_image(&st, &user, &id).await?;
    let args = afterview_core::tasks::DetectFace {
        image_id: id,
        user_id: user.0.clone(),
    };
    let kwargs = serde_json::to_value(args).expect("arguments serialize");
    let (status, body) = submit(&st, &user, tasks::DETECT_FACE, kwargs, true).await?;
    Ok((status, Json(body)).into_response())
}

/// `DELETE /api/images/{id}`: the image and everything made from it. Tasks still working on
/// it are revoked first (a running one is terminated), so no preview of it is saved afterwards.
pub(crate) async fn delete_image(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    owned_image(&st, &user, &id).await?;
    for task in st.meta.tasks_for_image(&user.0, &id).await? {
        if let Err(e) = st.client.revoke(&task, true).await {
            tracing::warn!(task_id = %task, error = %e, "Could not revoke a task of a deleted photo.");
        }
    }
    let d = st.meta.delete_image(&user.0, &id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ImageNotFound.as_str(),
            format!("image {id} not found"),
        )
    })?;
    delete_blobs(&st, d.blob_keys);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/visualizations/{id}`: the preview (or comparison) and its picture.
pub(crate) async fn delete_visualization(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = st
        .meta
        .delete_visualization(&user.0, &id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::VisualizationNotFound.as_str(),
                format!("visualization {id} not found"),
            )
        })?;
    delete_blobs(&st, vec![key]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/exports/{id}`: the report or infographic and its file.
pub(crate) async fn delete_export(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = st
        .meta
        .delete_export(&user.0, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("export"))?;
    delete_blobs(&st, vec![key]);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes blobs in the background, retrying failures (5 attempts over about a minute): the
/// records are gone already, so the files are unreachable, but face data must not linger.
fn delete_blobs(st: &AppState, keys: Vec<String>) {
    let blobs = st.blobs.clone();
    tokio::spawn(async move {
        for key in keys {
            let mut wait = std::time::Duration::from_secs(2);
            for attempt in 1..=5 {
                match blobs.delete(&key).await {
                    Ok(()) => break,
                    Err(e) if attempt == 5 => {
                        tracing::error!(key = %key, error = %e, "A deleted photo's file could not be removed after 5 attempts.");
                    }
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, attempt, "Deleting a file failed; retrying.");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
    });
}

// -------------------------------------------------------------------------------- procedures

fn procedure_view(st: &AppState, p: &afterview_core::catalog::Procedure) -> Value {
    let mut v = serde_json::to_value(p).expect("procedures serialize");
    let t = p.costs.total();
    v["costs"]["total"] = json!({"low": t.low, "high": t.high});
    v["costs"]["currency"] = json!(st.catalog.currency);
    v
}

/// `GET /api/procedures`.
pub(crate) async fn list_procedures(State(st): State<AppState>, _user: User) -> Json<Value> {
    let items: Vec<Value> = st
        .catalog
        .procedures
        .iter()
        .map(|p| procedure_view(&st, p))
        .collect();
    Json(
        json!({"items": items, "currency": st.catalog.currency, "disclaimer": st.catalog.disclaimer}),
    )
}

/// `GET /api/procedures/{id}`.
pub(crate) async fn get_procedure(
    State(st): State<AppState>,
    _user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = st
        .catalog
        .get(&id)
        .ok_or_else(|| ApiError::not_found(&format!("procedure {id}")))?;
    Ok(Json(procedure_view(&st, p)))
}

// ---------------------------------------------------------------------------- sending tasks

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
    let _sync = if wait {
        Some(SyncSlot::take(st, user).await?)
    } else {
        None
    };
    // The photos the task works on: deleting one of them revokes the task.
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
    let meta = st.client.publish_and_wait(&msg, st.sync_timeout).await?;
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
                "task {} did not finish within {} s; follow it at /api/tasks/{}/status",
                msg.id,
                st.sync_timeout.as_secs(),
                msg.id
            ),
        )),
    }
}

fn with_user(mut v: Value, user: &User) -> Value {
    v["user_id"] = json!(user.0);
    v
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVisualization {
    image_id: String,
    procedure_id: String,
    #[serde(default)]
    options: PreviewOptions,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateComparison {
    image_id: String,
    procedure_ids: Vec<String>,
    #[serde(default)]
    options: PreviewOptions,
}

fn known_procedure(st: &AppState, id: &str) -> Result<(), ApiError> {
    if st.catalog.get(id).is_none() {
        return Err(ApiError::domain(
            ErrorCode::UnknownProcedure,
            format!("unknown procedure {id:?}; see GET /api/procedures"),
        ));
    }
    Ok(())
}

/// `POST /api/visualizations`.
pub(crate) async fn create_visualization(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<AsyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepared = async {
        let wait = !q.is_async()?;
        let req: CreateVisualization = parse_body(&headers, &body)?;
        owned_image(&st, &user, &req.image_id).await?;
        known_procedure(&st, &req.procedure_id)?;
        let args = GenerateVisualization {
            image_id: req.image_id,
            procedure_id: req.procedure_id,
            options: req.options,
            user_id: user.0.clone(),
        };
        Ok::<_, ApiError>((
            wait,
            serde_json::to_value(args).expect("arguments serialize"),
        ))
    };
    let (wait, kwargs) = match prepared.await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let path = format!("POST /api/visualizations?async={}", !wait);
    let uid = user.0.clone();
    idempotency::once(&st.clone(), &uid, &headers, &path, &body, || async move {
        submit(&st, &user, tasks::GENERATE_VISUALIZATION, kwargs, wait).await
    })
    .await
}

/// `POST /api/visualizations/compare`.
pub(crate) async fn create_comparison(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<AsyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepared = async {
        let wait = !q.is_async()?;
        let req: CreateComparison = parse_body(&headers, &body)?;
        owned_image(&st, &user, &req.image_id).await?;
        tasks::check_comparison(&req.procedure_ids)
            .map_err(|m| ApiError::domain(ErrorCode::InvalidProcedureCount, m))?;
        for p in &req.procedure_ids {
            known_procedure(&st, p)?;
        }
        let args = GenerateComparison {
            image_id: req.image_id,
            procedure_ids: req.procedure_ids,
            options: req.options,
            user_id: user.0.clone(),
        };
        Ok::<_, ApiError>((
            wait,
            serde_json::to_value(args).expect("arguments serialize"),
        ))
    };
    let (wait, kwargs) = match prepared.await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let path = format!("POST /api/visualizations/compare?async={}", !wait);
    let uid = user.0.clone();
    idempotency::once(&st.clone(), &uid, &headers, &path, &body, || async move {
        submit(&st, &user, tasks::GENERATE_COMPARISON, kwargs, wait).await
    })
    .await
}

fn viz_view(r: &afterview_store::VisualizationRecord) -> Value {
    let mut v = r.result.clone();
    v["kind"] = json!(r.kind);
    v
}

/// `GET /api/visualizations`.
pub(crate) async fn list_visualizations(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    q.page(
        |n| async move { Ok(st.meta.list_visualizations(&user.0, n).await?) },
        |r| viz_view(&r),
    )
    .await
}

async fn owned_viz(
    st: &AppState,
    user: &User,
    id: &str,
) -> Result<afterview_store::VisualizationRecord, ApiError> {
    st.meta
        .get_visualization(&user.0, id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::VisualizationNotFound.as_str(),
                format!("visualization {id} not found"),
            )
        })
}

/// `GET /api/visualizations/{id}`.
pub(crate) async fn get_visualization(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(viz_view(&owned_viz(&st, &user, &id).await?)))
}

/// `GET /api/visualizations/{id}/image`: the after picture, or a comparison's composite.
pub(crate) async fn visualization_image(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = owned_viz(&st, &user, &id).await?;
    if let Some(r) = presigned(&st, &rec.blob_key).await? {
        return Ok(r);
    }
    let bytes = st
        .blobs
        .get(&rec.blob_key)
        .await?
        .ok_or_else(|| ApiError::not_found("visualization picture"))?;
    Ok(png_response(bytes))
}

// ----------------------------------------------------------------------------------- exports

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateExport {
    visualization_ids: Vec<String>,
    #[serde(default = "pdf")]
    format: String,
    #[serde(default = "yes")]
    include_costs: bool,
    /// The task's own type: an unknown field is refused here (400), not by the task later.
    #[serde(default)]
    patient: Option<afterview_core::tasks::PatientFields>,
    #[serde(default)]
    paper: Option<String>,
}

fn pdf() -> String {
    "pdf".into()
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateInfographic {
    procedure_ids: Vec<String>,
    #[serde(default = "png")]
    format: String,
    #[serde(default)]
    colors: Option<Vec<String>>,
}

fn png() -> String {
    "png".into()
}

/// `POST /api/exports`: the patient report.
pub(crate) async fn create_export(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<AsyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepared = async {
        let wait = !q.is_async()?;
        let req: CreateExport = parse_body(&headers, &body)?;
        if req.format != "pdf" {
            return Err(ApiError::domain(
                ErrorCode::UnsupportedExportFormat,
                format!("reports are PDF; format {:?} is not supported", req.format),
            ));
        }
        if let Some(p) = &req.paper
            && afterview_core::tasks::PaperSize::parse(p).is_none()
        {
            return Err(ApiError::domain(
                ErrorCode::InvalidOptions,
                format!("paper must be letter or a4, got {p:?}"),
            ));
        }
        if req.visualization_ids.is_empty() || req.visualization_ids.len() > 8 {
            return Err(ApiError::bad_request("visualization_ids must hold 1-8 ids"));
        }
        for id in &req.visualization_ids {
            owned_viz(&st, &user, id).await?;
        }
        let mut kwargs = json!({
            "visualization_ids": req.visualization_ids,
            "format": req.format,
            "include_costs": req.include_costs,
            "patient": req.patient,
        });
        if let Some(p) = req.paper {
            kwargs["paper"] = json!(p);
        }
        Ok((wait, with_user(kwargs, &user)))
    };
    let (wait, kwargs) = match prepared.await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let path = format!("POST /api/exports?async={}", !wait);
    let uid = user.0.clone();
    idempotency::once(&st.clone(), &uid, &headers, &path, &body, || async move {
        submit(&st, &user, tasks::GENERATE_EXPORT, kwargs, wait).await
    })
    .await
}

/// `POST /api/exports/cost-infographic`.
pub(crate) async fn create_infographic(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<AsyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepared = async {
        let wait = !q.is_async()?;
        let req: CreateInfographic = parse_body(&headers, &body)?;
        if !["png", "svg"].contains(&req.format.as_str()) {
            return Err(ApiError::domain(
                ErrorCode::UnsupportedExportFormat,
                format!("format must be png or svg, got {:?}", req.format),
            ));
        }
        if req.procedure_ids.is_empty() || req.procedure_ids.len() > 8 {
            return Err(ApiError::bad_request("procedure_ids must hold 1-8 ids"));
        }
        for p in &req.procedure_ids {
            known_procedure(&st, p)?;
        }
        let mut kwargs = json!({"procedure_ids": req.procedure_ids, "format": req.format});
        if let Some(c) = req.colors {
            kwargs["colors"] = json!(c);
        }
        Ok((wait, with_user(kwargs, &user)))
    };
    let (wait, kwargs) = match prepared.await {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let path = format!("POST /api/exports/cost-infographic?async={}", !wait);
    let uid = user.0.clone();
    idempotency::once(&st.clone(), &uid, &headers, &path, &body, || async move {
        submit(&st, &user, tasks::GENERATE_COST_INFOGRAPHIC, kwargs, wait).await
    })
    .await
}

async fn owned_export(
    st: &AppState,
    user: &User,
    id: &str,
) -> Result<afterview_store::ExportRecord, ApiError> {
    st.meta
        .get_export(&user.0, id)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("export {id}")))
}

/// `GET /api/exports`.
pub(crate) async fn list_exports(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    q.page(
        |n| async move { Ok(st.meta.list_exports(&user.0, n).await?) },
        |r| r.result,
    )
    .await
}

/// `GET /api/exports/{id}`.
pub(crate) async fn get_export(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(owned_export(&st, &user, &id).await?.result))
}

/// `GET /api/exports/{id}/download`.
pub(crate) async fn download_export(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = owned_export(&st, &user, &id).await?;
    if let Some(r) = presigned(&st, &rec.blob_key).await? {
        return Ok(r);
    }
    let bytes = st
        .blobs
        .get(&rec.blob_key)
        .await?
        .ok_or_else(|| ApiError::not_found("export content"))?;
    let ct = match rec.format.as_str() {
        "pdf" => "application/pdf",
        "svg" => "image/svg+xml",
        _ => "image/png",
    };
    let name = format!(
        "afterview-{}-{}.{}",
        rec.kind,
        &rec.id[..8.min(rec.id.len())],
        rec.format
    );
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
                    .expect("ascii name"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        bytes,
    )
        .into_response())
}
