//! Handler tests in process: the router over the in-memory engine, SQLite metadata in a temp
//! dir and memory blobs, driven with `tower::ServiceExt::oneshot` (no process, no socket).
//! Crashes, interop and transport limits stay in the spawned-binary tests.

use std::sync::Arc;
use std::time::Duration;

use afterview_api::auth::Auth;
use afterview_api::metrics::Metrics;
use afterview_api::{Inner, ROUTES, router};
use afterview_core::catalog::Catalog;
use afterview_engine::Client;
use afterview_engine::memory::MemoryBackend;
use afterview_store::ObjectBlobStore;
use afterview_store::sqlite::SqliteMetadata;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

struct App {
    router: axum::Router,
    backend: Arc<MemoryBackend>,
    _dir: tempfile::TempDir,
}

fn app() -> App {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryBackend::new(Duration::from_secs(60)));
    let auth = Auth {
        static_tokens: Auth::parse_static(
            "alice-token-0123456789=alice,bob-token-0123456789ab=bob",
        )
        .unwrap(),
        ..Auth::default()
    };
    let inner = Inner::new(
        Client::new(backend.clone(), backend.clone()),
        Arc::new(SqliteMetadata::open(&dir.path().join("m.db")).unwrap()),
        Arc::new(ObjectBlobStore::memory()),
        Arc::new(Catalog::builtin()),
        auth,
        afterview_intake::Limits::default(),
        Arc::new(Metrics::default()),
    );
    App {
        router: router(Arc::new(inner)),
        backend,
        _dir: dir,
    }
}

/// `(status, JSON body)` of one request as `token`'s user.
async fn call(app: &App, method: &str, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        })
        .unwrap();
    let r = app.router.clone().oneshot(req).await.unwrap();
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Messages waiting in the engine's queues (none may be sent for a refused request).
async fn queued(app: &App) -> u64 {
    use afterview_engine::backend::Broker;
    app.backend
        .queue_stats(None)
        .await
        .unwrap()
        .iter()
        .map(|q| q.ready + q.scheduled)
        .sum()
}

#[tokio::test]
async fn every_listed_route_is_routed() {
    let app = app().router;
    // The fallback's own answer, for comparison.
    let fallback = app
        .clone()
        .oneshot(
            Request::get("/api/no-such-thing")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(fallback.status(), StatusCode::NOT_FOUND);
    for (method, path) in ROUTES {
        let uri = path.replace("{id}", "0b0e5b0c-6f2c-4a4e-9d8e-2f7d1c3b4a59");
        let r = app
            .clone()
            .oneshot(
                Request::builder()
                    .method(*method)
                    .uri(&uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_ne!(
            r.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is not routed for its method"
        );
        assert_ne!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{method} {path} falls through"
        );
    }
}

#[tokio::test]
async fn task_posts_are_checked_with_the_tasks_own_types_before_anything_is_sent() {
    let app = app();
    let cases = [
        (
            "/api/exports",
            json!({"visualization_ids": ["v"], "patient": {"name": "A", "shoe_size": 9}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/api/exports",
            json!({"visualization_ids": ["v"], "paper": "legal"}),
            StatusCode::BAD_REQUEST,
            "invalid_options",
        ),
        (
            "/api/exports",
            json!({"visualization_ids": ["v"], "format": "docx"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_export_format",
        ),
        (
            "/api/exports",
            json!({"visualization_ids": []}),
            StatusCode::BAD_REQUEST,
            "invalid_options",
        ),
        (
            "/api/exports",
            json!({"visualization_ids": ["v"], "user_id": "bob"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/api/exports/cost-infographic",
            json!({"procedure_ids": ["rhinoplasty"], "colors": ["red", "green", "blue", "gold"]}),
            StatusCode::BAD_REQUEST,
            "invalid_options",
        ),
        (
            "/api/exports/cost-infographic",
            json!({"procedure_ids": ["tummy-tuck"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_procedure",
        ),
        (
            "/api/visualizations",
            json!({"image_id": "0b0e5b0c-6f2c-4a4e-9d8e-2f7d1c3b4a59", "procedure_id": "rhinoplasty", "extra": 1}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/api/visualizations/compare",
            json!({"image_id": "0b0e5b0c-6f2c-4a4e-9d8e-2f7d1c3b4a59", "procedure_ids": ["rhinoplasty"]}),
            StatusCode::NOT_FOUND,
            "image_not_found",
        ),
    ];
    for (path, body, status, code) in cases {
        let (got, answer) = call(&app, "POST", path, "alice-token-0123456789", body.clone()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {answer}"
        );
    }
    assert_eq!(queued(&app).await, 0, "no refused request sent a task");
}

#[tokio::test]
async fn a_good_infographic_request_is_sent_with_the_callers_id_and_seed_shaped_arguments() {
    let app = app();
    let (status, answer) = call(
        &app,
        "POST",
        "/api/exports/cost-infographic?async_processing=true",
        "alice-token-0123456789",
        json!({"procedure_ids": ["rhinoplasty", "blepharoplasty"]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let id = answer["task_id"].as_str().unwrap().to_owned();
    assert_eq!(queued(&app).await, 1);
    // Bob cannot see Alice's task; Alice can.
    let (bob, _) = call(
        &app,
        "GET",
        &format!("/api/tasks/{id}/status"),
        "bob-token-0123456789ab",
        Value::Null,
    )
    .await;
    assert_eq!(bob, StatusCode::NOT_FOUND);
    let (alice, st) = call(
        &app,
        "GET",
        &format!("/api/tasks/{id}/status"),
        "alice-token-0123456789",
        Value::Null,
    )
    .await;
    assert_eq!(alice, StatusCode::OK, "{st}");
    // The message holds exactly the seed's keyword arguments plus the owner.
    use afterview_engine::backend::{Broker, ClaimRequest};
    let claimed = app
        .backend
        .claim(&ClaimRequest {
            // This client has no task routes (the binary adds them), so the default queue.
            queues: vec!["exports".into(), "celery".into()],
            max: 1,
            worker: "t@h".into(),
            lease: Duration::from_secs(5),
        })
        .await
        .unwrap();
    let msg =
        afterview_engine::message::TaskMessage::from_envelope(&claimed[0].raw, &claimed[0].queue)
            .unwrap();
    assert_eq!(
        Value::Object(msg.kwargs),
        json!({"procedure_ids": ["rhinoplasty", "blepharoplasty"], "format": "png", "user_id": "alice"})
    );
}
