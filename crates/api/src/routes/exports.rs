//! `/api/exports`: the patient report and the cost infographic (sent as tasks), list,
//! metadata, download, delete.

use afterview_core::tasks;
use afterview_core::tasks::{GenerateCostInfographic, GenerateExport};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::visualizations::{known_procedure, owned_viz};
use super::{
    AsyncQuery, DownloadQuery, ListQuery, Post, delete_with_files, kwargs, post_task, stored_file,
    task_args,
};
use crate::error::ApiError;
use crate::{AppState, User};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/exports", post(create_export).get(list_exports))
        .route("/api/exports/cost-infographic", post(create_infographic))
        .route("/api/exports/{id}", get(get_export).delete(delete_export))
        .route("/api/exports/{id}/download", get(download_export))
}

/// `POST /api/exports`: the patient report.
pub(crate) async fn create_export(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<AsyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepare = async {
        let args: GenerateExport = task_args(&headers, &body, &user)?;
        args.check()?;
        for id in &args.visualization_ids {
            owned_viz(&st, &user, id).await?;
        }
        Ok(kwargs(&args))
    };
    let post = Post {
        route: "POST /api/exports",
        task: tasks::GENERATE_EXPORT,
    };
    post_task(&st, &user, &q, (&headers, &body), post, prepare).await
}

/// `POST /api/exports/cost-infographic`.
pub(crate) async fn create_infographic(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<AsyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepare = async {
        let args: GenerateCostInfographic = task_args(&headers, &body, &user)?;
        args.check()?;
        for p in &args.procedure_ids {
            known_procedure(&st, p)?;
        }
        Ok(kwargs(&args))
    };
    let post = Post {
        route: "POST /api/exports/cost-infographic",
        task: tasks::GENERATE_COST_INFOGRAPHIC,
    };
    post_task(&st, &user, &q, (&headers, &body), post, prepare).await
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
    Query(q): Query<DownloadQuery>,
) -> Result<Response, ApiError> {
    let rec = owned_export(&st, &user, &id).await?;
    let ct = rec.format.content_type();
    // The id's last 8 characters, as the report prints its reference (a UUID v7's first 8
    // change only every ~65 s: reports made in a row had one name).
    let name = format!(
        "afterview-{}-{}.{}",
        rec.kind,
        rec.id[rec.id.len().saturating_sub(8)..].to_uppercase(),
        rec.format
    );
    stored_file(&st, (&rec.blob_key, &q), "export content", |bytes| {
        (
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
            .into_response()
    })
    .await
}

/// `DELETE /api/exports/{id}`: the report or infographic and its file.
pub(crate) async fn delete_export(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let found = delete_with_files(&st, &user, |st, user| async move {
        let key = st.meta.delete_export(&user.0, &id).await?;
        Ok(key.map(|k| vec![k]))
    })
    .await?;
    if !found {
        return Err(ApiError::not_found("export"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
