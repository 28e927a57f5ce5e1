//! `/api/procedures`: the catalog with cost totals.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::{AppState, User};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/procedures", get(list_procedures))
        .route("/api/procedures/{id}", get(get_procedure))
}

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
