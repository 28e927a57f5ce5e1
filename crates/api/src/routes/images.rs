//! `/api/images`: upload (checked, EXIF applied and stripped), list, metadata, content, face
//! detection, delete (revoking the tasks that work on the photo).

use afterview_core::ErrorCode;
use afterview_core::ids::new_id;
use afterview_core::tasks;
use afterview_store::{ImageRecord, image_key};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::Multipart;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{
    DownloadQuery, ListQuery, delete_with_files, png_response, stored_file, thumbnail_file,
};
use crate::error::ApiError;
use crate::idempotency::{self, Sending, Sent};
use crate::submit::submit;
use crate::{AppState, User};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/images/{id}", get(get_image).delete(delete_image))
        .route("/api/images/{id}/content", get(image_content))
        .route("/api/images/{id}/thumbnail", get(image_thumbnail))
        .route("/api/images/{id}/face", get(image_face))
}

fn image_view(r: &ImageRecord) -> Value {
    json!({
        "id": r.id,
        "url": tasks::image_url(&r.id),
        "thumbnail_url": tasks::image_thumbnail_url(&r.id),
        "width": r.width,
        "height": r.height,
        "size_bytes": r.bytes,
        "source_format": r.source_format,
        "created_at": r.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// `POST /api/images` (multipart field `file`).
pub(crate) async fn upload_image(
    State(st): State<AppState>,
    user: User,
    headers: HeaderMap,
    mp: Multipart,
) -> Response {
    // Bounded memory: each upload holds its bytes until its decode; past the host's or the
    // user's share of uploads the body is dropped as it arrives, and a body that does not
    // arrive in time gives its slot back.
    let _receiving = match st.uploads.enter(&user.0) {
        Ok(turn) => turn,
        Err(e) => {
            st.uploads.discard(mp).await;
            return e.into_response();
        }
    };
    let file = tokio::time::timeout(
        crate::uploads::BODY_DEADLINE,
        file_field(mp, st.limits.max_bytes),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the photo did not arrive within {} s; retry on a faster connection",
                crate::uploads::BODY_DEADLINE.as_secs()
            ),
        ))
    });
    let file = match file {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let body = file.clone();
    let uid = user.0.clone();
    idempotency::once(
        &st.clone(),
        &uid,
        &headers,
        ("POST /api/images", &body),
        |sent| async move { store_photo(&st, &user, file, sent).await },
        None,
    )
    .await
}

/// The multipart body's `file` field.
async fn file_field(mut mp: Multipart, limit: usize) -> Result<Bytes, ApiError> {
    let mut file: Option<Bytes> = None;
    while let Some(field) = mp.next_field().await.map_err(|e| upload_error(&e, limit))? {
        if field.name() == Some("file") {
            if file.is_some() {
                // One photo per upload: silently keeping one of several would store a photo
                // the user did not mean.
                return Err(ApiError::bad_request(
                    "the upload has more than one `file` field; send one photo per request",
                ));
            }
            file = Some(field.bytes().await.map_err(|e| upload_error(&e, limit))?);
        }
    }
    file.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_file",
            "the upload has no `file` field",
        )
    })
}

/// 403 when the user's photo count or bytes are at the quota.
async fn check_quota(st: &AppState, user: &User) -> Result<(), ApiError> {
    let lim = &st.user_limits;
    let stored = st
        .meta
        .list_images(&user.0, (lim.photos + 1) as u32)
        .await?;
    let bytes: u64 = stored.iter().map(|r| r.bytes).sum();
    if stored.len() >= lim.photos || bytes >= lim.storage_bytes {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "storage_quota_exceeded",
            format!(
                "the photo quota is full ({} photos, {} MB); delete some first",
                lim.photos,
                lim.storage_bytes / 1_000_000
            ),
        ));
    }
    Ok(())
}

/// Checks, decodes (EXIF applied and stripped, re-encoded as PNG) and stores a photo. `sent`
/// learns the answer of the save, which runs on when the client goes away: an
/// `Idempotency-Key` then keeps it, and a retry gets the same photo instead of a second copy.
async fn store_photo(
    st: &AppState,
    user: &User,
    file: Bytes,
    sent: Sent,
) -> Result<(StatusCode, Value), ApiError> {
    check_quota(st, user).await?;
    // Bounded work: at most `decode_slots()` photos decode at once; the others wait, then get
    // 503 with Retry-After rather than exhaust memory.
    let slot = crate::decode_slot(st).await?;
    let limits = st.limits;
    // The slot goes with the decode: a client that hangs up drops this handler, not the
    // blocking decode, which would otherwise run on beside the next request's.
    let n = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        afterview_intake::intake(&file, &limits)
    })
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
    // File, then record, to the end even if the client goes away in between; a record that
    // cannot be written takes its file back with it: no photo stays stored without a record
    // naming it (nothing would ever delete it). Under the user's `upload` lock (one per user
    // on every host), with the quota checked again: parallel uploads each passed the first
    // check before any was stored.
    let (st2, user2) = (st.clone(), user.clone());
    sent.tell(Sending::Underway);
    let told = sent.clone();
    let saved = tokio::spawn(async move {
        let stored = async {
            let turn = crate::submit::user_lock(&st2, &user2, "upload").await?;
            let stored = store_checked(&st2, &user2, &rec, (n.png, n.thumbnail)).await;
            turn.release().await;
            stored
        }
        .await;
        match &stored {
            Ok((status, body)) => sent.tell(Sending::Done(*status, body.clone())),
            Err(_) => sent.tell(Sending::Failed),
        }
        stored
    })
    .await;
    saved.unwrap_or_else(|_| {
        told.tell(Sending::Failed);
        Err(ApiError::unavailable(
            "the photo could not be stored; retry",
        ))
    })
}

/// The quota checked again, then the files (the photo and its small copy) and the record (the
/// caller holds the user's `upload` lock); a record that fails takes its files back.
async fn store_checked(
    st: &AppState,
    user: &User,
    rec: &ImageRecord,
    (png, thumbnail): (Vec<u8>, Vec<u8>),
) -> Result<(StatusCode, Value), ApiError> {
    check_quota(st, user).await?;
    let keys = afterview_store::with_thumbnails(vec![rec.blob_key.clone()]);
    for (key, bytes) in keys.iter().zip([png, thumbnail]) {
        if let Err(e) = st.blobs.put(key, Bytes::from(bytes)).await {
            // A write that timed out may have been stored all the same: no record will ever
            // name these keys, so they go now.
            remove_files(st, &keys, "A failed upload's file could not be removed.").await;
            return Err(ApiError::from(e));
        }
    }
    if let Err(e) = st.meta.insert_image(rec).await {
        remove_files(
            st,
            &keys,
            "An upload's file could not be removed after its record failed.",
        )
        .await;
        return Err(ApiError::from(e));
    }
    Ok((StatusCode::CREATED, image_view(rec)))
}

/// Deletes the files of an upload that was not stored, logging (`failed`) those that stay.
async fn remove_files(st: &AppState, keys: &[String], failed: &str) {
    for key in keys {
        if let Err(d) = st.blobs.delete(key).await {
            tracing::warn!(error = %d, "{failed}");
        }
    }
}

/// A multipart body that could not be read: 413 when it passed the size limit (axum says so
/// by the error's status), else 400.
fn upload_error(e: &axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the upload is larger than the limit ({limit} bytes)"),
        )
    } else {
        ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
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

pub(super) async fn owned_image(
    st: &AppState,
    user: &User,
    id: &str,
) -> Result<ImageRecord, ApiError> {
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
    Query(q): Query<DownloadQuery>,
) -> Result<Response, ApiError> {
    let rec = owned_image(&st, &user, &id).await?;
    stored_file(&st, (&rec.blob_key, &q), "image content", png_response).await
}

/// `GET /api/images/{id}/thumbnail`: the photo's small copy (JPEG, stored at upload; made
/// from the photo for one stored before there were any).
pub(crate) async fn image_thumbnail(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = owned_image(&st, &user, &id).await?;
    let meta = st.meta.clone();
    thumbnail_file(&st, &rec.blob_key, "image content", move || async move {
        Ok(meta.get_image(&user.0, &id).await?.is_some())
    })
    .await
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
        user_id: afterview_core::ids::UserId::parse(&user.0).map_err(ApiError::bad_request)?,
    };
    let kwargs = serde_json::to_value(args).expect("arguments serialize");
    let (status, body) = submit(
        &st,
        &user,
        (tasks::DETECT_FACE, kwargs),
        true,
        &crate::idempotency::Sent::default(),
    )
    .await?;
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
    let target = id.clone();
    let found = delete_with_files(&st, &user, |st, user| async move {
        let d = st.meta.delete_image(&user.0, &target).await?;
        Ok(d.map(|d| d.blob_keys))
    })
    .await?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ImageNotFound.as_str(),
            format!("image {id} not found"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
