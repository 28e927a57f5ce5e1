//! The HTTP routes, one module per resource, each with its router fragment; what they share
//! (query parameters, JSON bodies, picture answers, background blob deletion) is here.

mod exports;
mod images;
pub(crate) mod monitor;
mod ops;
mod procedures;
pub(crate) mod tasks;
mod visualizations;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::submit::{submit, wait_again};
use crate::{AppState, User};
use crate::{MAX_JSON_BODY, MULTIPART_FRAMING, idempotency};

/// Every route (listed in [`crate::ROUTES`]; a test checks the two agree).
/// `max_upload` is the largest photo intake accepts (`--max-upload-bytes`); the upload route
/// reads that and the form's framing, no more.
pub(crate) fn all(max_upload: usize) -> Router<AppState> {
    let uploads = Router::new()
        .route(
            "/api/images",
            post(images::upload_image).get(images::list_images),
        )
        .layer(DefaultBodyLimit::max(
            max_upload.saturating_add(MULTIPART_FRAMING),
        ));
    let api = images::routes()
        .merge(procedures::routes())
        .merge(visualizations::routes())
        .merge(exports::routes())
        .merge(tasks::routes())
        .merge(monitor::routes())
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    uploads.merge(api).merge(ops::routes())
}

/// `?async_processing=true|false` (default false, as the seed).
#[derive(Debug, Deserialize)]
pub(crate) struct AsyncQuery {
    #[serde(default)]
    async_processing: Option<String>,
}

impl AsyncQuery {
    pub(crate) fn is_async(&self) -> Result<bool, ApiError> {
        flag("async_processing", self.async_processing.as_deref(), false)
    }
}

/// A true/false query parameter, `default` when absent. It takes what the seed's FastAPI
/// (pydantic's `bool`) took, in any case: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`,
/// `t`/`f`, `y`/`n`.
fn flag(name: &str, v: Option<&str>, default: bool) -> Result<bool, ApiError> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on" | "t" | "y") => Ok(true),
        Some("false" | "0" | "no" | "off" | "f" | "n") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

/// `?redirect=true|false` on file downloads (default true): `false` asks for the bytes even
/// when presigned downloads are on. A browser page cannot follow the redirect with `fetch`
/// (its Content-Security-Policy and the bucket's CORS rules stand in the way), so the web app
/// asks for the bytes.
#[derive(Debug, Deserialize)]
pub(crate) struct DownloadQuery {
    #[serde(default)]
    redirect: Option<String>,
}

impl DownloadQuery {
    /// Whether a presigned redirect may answer.
    pub(crate) fn redirect(&self) -> Result<bool, ApiError> {
        flag("redirect", self.redirect.as_deref(), true)
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

/// What a task-sending POST is: its route (for the idempotency fingerprint) and its task.
pub(crate) struct Post {
    pub(crate) route: &'static str,
    pub(crate) task: &'static str,
}

/// The sequence every task-sending POST follows: read `?async_processing`, prepare the
/// arguments (parse and check; a refusal answers at once and costs nothing), then, once per
/// `Idempotency-Key`, [`submit`].
pub(crate) async fn post_task(
    st: &AppState,
    user: &User,
    q: &AsyncQuery,
    (headers, body): (&HeaderMap, &Bytes),
    post: Post,
    prepare: impl Future<Output = Result<Value, ApiError>>,
) -> Response {
    let wait = match q.is_async() {
        Ok(a) => !a,
        Err(e) => return e.into_response(),
    };
    let kwargs = match prepare.await {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let path = format!("{}?async={}", post.route, !wait);
    let (st2, user2) = (st.clone(), user.clone());
    let (st3, user3) = (st.clone(), user.clone());
    idempotency::once(
        st,
        &user.0,
        headers,
        (&path, body),
        |sent| async move { submit(&st2, &user2, (post.task, kwargs), wait, &sent).await },
        Some(Box::new(
            move |task_id: String| -> idempotency::Answer<'static> {
                Box::pin(async move {
                    if wait {
                        wait_again(&st3, &user3, &task_id).await
                    } else {
                        Ok((StatusCode::ACCEPTED, idempotency::accepted(&task_id)))
                    }
                })
            },
        )),
    )
    .await
}

/// A task's arguments from a request body: the body's fields and the caller as `user_id`,
/// decoded into the task's own type, so what the task would refuse (an unknown field, a
/// wrong type) is refused here with a 400. A body naming its own `user_id` is refused.
pub(crate) fn task_args<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    user: &User,
) -> Result<T, ApiError> {
    let mut v = json_body(headers, body)?;
    let Some(fields) = v.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if fields.contains_key("user_id") {
        return Err(ApiError::bad_request(
            "invalid request: unknown field `user_id`",
        ));
    }
    fields.insert("user_id".into(), json!(user.0));
    afterview_engine::task::decode_json(v)
        .map_err(|e| ApiError::bad_request(format!("invalid request: {e}")))
}

/// A task's arguments as the message's kwargs.
pub(crate) fn kwargs<T: serde::Serialize>(args: &T) -> Value {
    serde_json::to_value(args).expect("task arguments serialize")
}

/// Parses a JSON body into `T`, with errors in the API's shape.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        && !ct.starts_with("application/json")
        && !ct.starts_with("text/plain")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected application/json, got {ct}"),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}

fn png_response(bytes: Bytes) -> Response {
    picture_response("image/png", bytes)
}

/// A picture's bytes, never cached on disk (they are a patient's face).
fn picture_response(content_type: &'static str, bytes: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// A picture's small copy (`image/jpeg`, see [`afterview_intake::thumbnail`]) for picture
/// `key`: the stored one, or one made now from the picture (under a decode slot) and stored
/// for the next time, in a job of its own that asks `still_there` after the write: a picture
/// deleted meanwhile takes its copy with it (the delete may have run before the write).
async fn thumbnail_file<F, Fut>(
    st: &AppState,
    key: &str,
    what: &str,
    still_there: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<bool, afterview_store::StoreError>> + Send,
{
    let thumb = afterview_store::thumbnail_key(key).ok_or_else(|| ApiError::not_found(what))?;
    if let Some(bytes) = st.blobs.get(&thumb).await? {
        return Ok(picture_response("image/jpeg", bytes));
    }
    // The slot first: it bounds the pictures held in memory too (History asks for 20 at once).
    let slot = crate::decode_slot(st).await?;
    let full = st
        .blobs
        .get(key)
        .await?
        .ok_or_else(|| ApiError::not_found(what))?;
    let small = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        afterview_intake::decode_png(&full).map(|img| afterview_intake::thumbnail(&img))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("the stored picture could not be read: {e}")))?;
    let small = Bytes::from(small);
    let (blobs, copy) = (st.blobs.clone(), small.clone());
    tokio::spawn(async move {
        // A write that failed may have landed all the same (a timeout): it goes too.
        let stored = blobs.put(&thumb, copy).await.is_ok();
        if !(stored && matches!(still_there().await, Ok(true)))
            && let Err(e) = blobs.delete(&thumb).await
        {
            tracing::warn!(key = %thumb, error = %e, "A small copy no picture names could not be removed.");
        }
    });
    Ok(picture_response("image/jpeg", small))
}

/// A stored file's answer: with presigned downloads on, a store that signs (S3) and a caller
/// that did not ask for the bytes (`?redirect=false`), `307` to a short-lived URL, so the
/// bytes do not pass through the API host; otherwise `respond` with the bytes (404 naming
/// `what` when the file is gone).
async fn stored_file(
    st: &AppState,
    (key, q): (&str, &DownloadQuery),
    what: &str,
    respond: impl FnOnce(Bytes) -> Response,
) -> Result<Response, ApiError> {
    let redirect = q.redirect()?;
    if let Some(ttl) = st.presign.filter(|_| redirect)
        && let Some(url) = st.blobs.signed_url(key, ttl).await?
    {
        let location = HeaderValue::from_str(&url)
            .map_err(|_| ApiError::unavailable("the blob store signed an unusable URL"))?;
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [
                (header::LOCATION, location),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("private, no-store"),
                ),
            ],
        )
            .into_response());
    }
    let bytes = st
        .blobs
        .get(key)
        .await?
        .ok_or_else(|| ApiError::not_found(what))?;
    Ok(respond(bytes))
}

/// How long a delete waits for the blob store to remove the files before handing the rest to
/// a task.
const DELETE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Deletes records (`delete` answers their files' keys, or `None` when there is no such
/// record) and then their files, in a job of its own: a client that hangs up once the records
/// are gone (a closed tab, a proxy's timeout) must not leave their files behind with nothing
/// left to name them. Whether there was a record.
pub(super) async fn delete_with_files<F, Fut>(
    st: &AppState,
    user: &User,
    delete: F,
) -> Result<bool, ApiError>
where
    F: FnOnce(AppState, User) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<Vec<String>>, afterview_store::StoreError>>
        + Send,
{
    let (st, user) = (st.clone(), user.clone());
    let job = tokio::spawn(async move {
        let Some(keys) = delete(st.clone(), user.clone()).await? else {
            return Ok(false);
        };
        delete_blobs(&st, &user, afterview_store::with_thumbnails(keys)).await;
        Ok(true)
    });
    job.await
        .map_err(|e| ApiError::unavailable(format!("the delete stopped: {e}")))?
}

/// Removes the files of deleted records. Tried at once; what the blob store does not confirm
/// within [`DELETE_WAIT`] (S3 down, say) goes to an `afterview.delete_files` task, which the
/// broker keeps and a worker retries for about a day: face photos must not linger in the
/// bucket, whatever happens to this process. Only when the task cannot be sent either is the
/// deletion retried here, in memory.
async fn delete_blobs(st: &AppState, user: &User, keys: Vec<String>) {
    let attempt = async {
        let mut left = vec![];
        for key in &keys {
            if let Err(e) = st.blobs.delete(key).await {
                tracing::warn!(key = %key, error = %e, "Deleting a file failed; a task will retry it.");
                left.push(key.clone());
            }
        }
        left
    };
    let left = tokio::time::timeout(DELETE_WAIT, attempt)
        .await
        .unwrap_or_else(|_| keys.clone());
    if left.is_empty() {
        return;
    }
    // Small copies in a task of their own: a worker older than them refuses their prefix, and
    // would refuse the pictures' own files with them.
    let (thumbs, files): (Vec<String>, Vec<String>) = left
        .into_iter()
        .partition(|k| k.starts_with(afterview_core::tasks::THUMBNAILS_PREFIX));
    for keys in [files, thumbs] {
        if keys.is_empty() {
            continue;
        }
        let kwargs = json!({"keys": keys, "user_id": user.0});
        let sent = st
            .client
            .send_task(
                afterview_core::tasks::DELETE_FILES,
                vec![],
                kwargs.as_object().cloned().unwrap_or_default(),
                afterview_engine::SendOptions::default(),
            )
            .await;
        if let Err(e) = sent {
            tracing::error!(error = %e, files = keys.len(), "Could not queue the removal of deleted files; retrying in memory.");
            retry_in_memory(st, keys);
        }
    }
}

/// The last resort of [`delete_blobs`]: 5 attempts over about a minute, in this process.
fn retry_in_memory(st: &AppState, keys: Vec<String>) {
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
