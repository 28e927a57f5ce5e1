//! `/api/visualizations`: previews and comparisons (sent as tasks), list, metadata, picture,
//! delete.

use afterview_core::ErrorCode;
use afterview_core::tasks;
use afterview_core::tasks::{GenerateComparison, GenerateVisualization};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::images::owned_image;
use super::{
    AsyncQuery, DownloadQuery, ListQuery, Post, delete_with_files, kwargs, png_response, post_task,
    stored_file, task_args, thumbnail_file,
};
use crate::error::ApiError;
use crate::{AppState, User};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/visualizations",
            post(create_visualization).get(list_visualizations),
        )
        .route("/api/visualizations/compare", post(create_comparison))
        .route(
            "/api/visualizations/{id}",
            get(get_visualization).delete(delete_visualization),
        )
        .route("/api/visualizations/{id}/image", get(visualization_image))
        .route(
            "/api/visualizations/{id}/thumbnail",
            get(visualization_thumbnail),
        )
}

pub(super) fn known_procedure(st: &AppState, id: &str) -> Result<(), ApiError> {
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
    let prepare = async {
        let args: GenerateVisualization = task_args(&headers, &body, &user)?;
        args.options.check()?;
        owned_image(&st, &user, &args.image_id).await?;
        known_procedure(&st, &args.procedure_id)?;
        Ok(kwargs(&args))
    };
    let post = Post {
        route: "POST /api/visualizations",
        task: tasks::GENERATE_VISUALIZATION,
    };
    post_task(&st, &user, &q, (&headers, &body), post, prepare).await
}

/// `POST /api/visualizations/compare`.
pub(crate) async fn create_comparison(
    State(st): State<AppState>,
    user: User,
    Query(q): Query<AsyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let prepare = async {
        let args: GenerateComparison = task_args(&headers, &body, &user)?;
        args.options.check()?;
        owned_image(&st, &user, &args.image_id).await?;
        tasks::check_comparison(&args.procedure_ids)
            .map_err(|m| ApiError::domain(ErrorCode::InvalidProcedureCount, m))?;
        for p in &args.procedure_ids {
            known_procedure(&st, p)?;
        }
        Ok(kwargs(&args))
    };
    let post = Post {
        route: "POST /api/visualizations/compare",
        task: tasks::GENERATE_COMPARISON,
    };
    post_task(&st, &user, &q, (&headers, &body), post, prepare).await
}

fn viz_view(r: &afterview_store::VisualizationRecord) -> Value {
    let mut v = r.result.clone();
    v["kind"] = json!(r.kind);
    v["thumbnail_url"] = json!(afterview_core::tasks::visualization_thumbnail_url(&r.id));
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

pub(super) async fn owned_viz(
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
    Query(q): Query<DownloadQuery>,
) -> Result<Response, ApiError> {
    let rec = owned_viz(&st, &user, &id).await?;
    stored_file(
        &st,
        (&rec.blob_key, &q),
        "visualization picture",
        png_response,
    )
    .await
}

/// `GET /api/visualizations/{id}/thumbnail`: the picture's small copy (JPEG).
pub(crate) async fn visualization_thumbnail(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rec = owned_viz(&st, &user, &id).await?;
    let meta = st.meta.clone();
    thumbnail_file(
        &st,
        &rec.blob_key,
        "visualization picture",
        move || async move { Ok(meta.get_visualization(&user.0, &id).await?.is_some()) },
    )
    .await
}

/// `DELETE /api/visualizations/{id}`: the preview (or comparison) and its picture.
pub(crate) async fn delete_visualization(
    State(st): State<AppState>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let target = id.clone();
    let found = delete_with_files(&st, &user, |st, user| async move {
        let key = st.meta.delete_visualization(&user.0, &target).await?;
        Ok(key.map(|k| vec![k]))
    })
    .await?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::VisualizationNotFound.as_str(),
            format!("visualization {id} not found"),
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
