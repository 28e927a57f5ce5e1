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
    meta: Arc<SqliteMetadata>,
    blobs: Arc<FlakyBlobs>,
    _dir: tempfile::TempDir,
}

/// Memory blobs whose deletes fail while `down` is set (an S3 outage).
struct FlakyBlobs {
    inner: ObjectBlobStore,
    down: std::sync::atomic::AtomicBool,
    /// Writes and deletes wait while a test holds this for writing (a slow bucket).
    gate: tokio::sync::RwLock<()>,
}

#[async_trait::async_trait]
impl afterview_store::BlobStore for FlakyBlobs {
    async fn put(&self, key: &str, bytes: bytes::Bytes) -> Result<(), afterview_store::StoreError> {
        let _open = self.gate.read().await;
        self.inner.put(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, afterview_store::StoreError> {
        self.inner.get(key).await
    }
    async fn delete(&self, key: &str) -> Result<(), afterview_store::StoreError> {
        let _open = self.gate.read().await;
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(afterview_store::StoreError::Unavailable(
                "the bucket is down".into(),
            ));
        }
        self.inner.delete(key).await
    }
    async fn ping(&self) -> Result<(), afterview_store::StoreError> {
        self.inner.ping().await
    }
}

fn app() -> App {
    app_with(|_| {})
}

/// The app with `adjust` applied to its state first (limits, lifetimes).
fn app_with(adjust: impl FnOnce(&mut Inner)) -> App {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryBackend::new(Duration::from_secs(60)));
    let meta = Arc::new(SqliteMetadata::open(&dir.path().join("m.db")).unwrap());
    let blobs = Arc::new(FlakyBlobs {
        inner: ObjectBlobStore::memory(),
        down: Default::default(),
        gate: Default::default(),
    });
    let mut app = App {
        router: axum::Router::new(),
        backend,
        meta,
        blobs,
        _dir: dir,
    };
    app.router = another_host(&app, adjust);
    app
}

/// One more API host beside `app`'s: its own process state, the same stores and broker.
fn another_host(app: &App, adjust: impl FnOnce(&mut Inner)) -> axum::Router {
    let auth = Auth {
        static_tokens: Auth::parse_static(
            "alice-token-0123456789=alice,bob-token-0123456789ab=bob",
        )
        .unwrap(),
        ..Auth::default()
    };
    let mut inner = Inner::new(
        Client::new(app.backend.clone(), app.backend.clone()),
        app.meta.clone(),
        app.blobs.clone(),
        Arc::new(Catalog::builtin()),
        auth,
        afterview_intake::Limits::default(),
        Arc::new(Metrics::default()),
    );
    adjust(&mut inner);
    router(Arc::new(inner))
}

/// `(status, JSON body)` of one request as `token`'s user.
async fn call(app: &App, method: &str, uri: &str, token: &str, body: Value) -> (StatusCode, Value) {
    call_with(app, (method, uri), token, body, None).await
}

/// As [`call`], with an `Idempotency-Key` when given.
async fn call_with(
    app: &App,
    (method, uri): (&str, &str),
    token: &str,
    body: Value,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let req = req
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

/// The next message waiting in the default queue, claimed and decoded.
async fn claim_one(app: &App) -> afterview_engine::message::TaskMessage {
    use afterview_engine::backend::{Broker, ClaimRequest};
    let claimed = app
        .backend
        .claim(&ClaimRequest {
            queues: vec!["celery".into()],
            max: 1,
            worker: "t@h".into(),
            lease: Duration::from_secs(5),
        })
        .await
        .unwrap();
    afterview_engine::message::TaskMessage::from_envelope(&claimed[0].raw, &claimed[0].queue)
        .unwrap()
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
        (
            "/api/exports",
            json!({"visualization_ids": ["v"], "patient": {"name": "W".repeat(201)}}),
            StatusCode::BAD_REQUEST,
            "field_too_long",
        ),
        (
            "/api/exports",
            json!({"visualization_ids": ["v"], "patient": {"notes": "n".repeat(2001)}}),
            StatusCode::BAD_REQUEST,
            "field_too_long",
        ),
        (
            "/api/exports/cost-infographic",
            json!({"procedure_ids": ["rhinoplasty", "facelift", "rhinoplasty"]}),
            StatusCode::BAD_REQUEST,
            "invalid_options",
        ),
        (
            // 1e39 is past f32's range: it would read as infinity, which no message can carry.
            "/api/visualizations",
            json!({"image_id": "0b0e5b0c-6f2c-4a4e-9d8e-2f7d1c3b4a59", "procedure_id": "rhinoplasty",
                   "options": {"control_points": {"right_eye": [1e39, 250.0], "left_eye": [300.0, 250.0],
                   "nose_tip": [250.0, 320.0], "mouth_right": [220.0, 380.0], "mouth_left": [280.0, 380.0]}}}),
            StatusCode::BAD_REQUEST,
            "invalid_control_points",
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
    let (alice, st) = alice_status(&app, &id).await;
    assert_eq!(alice, StatusCode::OK, "{st}");
    // The message holds exactly the seed's keyword arguments plus the owner.
    // This client has no task routes (the binary adds them), so the default queue.
    let msg = claim_one(&app).await;
    assert_eq!(
        Value::Object(msg.kwargs),
        json!({"procedure_ids": ["rhinoplasty", "blepharoplasty"], "format": "png", "user_id": "alice"})
    );
}

/// `GET /api/tasks/{id}/status` as alice.
async fn alice_status(app: &App, id: &str) -> (StatusCode, Value) {
    let uri = format!("/api/tasks/{id}/status");
    call(app, "GET", &uri, "alice-token-0123456789", Value::Null).await
}

/// Sends `n` asynchronous infographic requests at once as alice; their statuses.
/// One asynchronous infographic as alice: the cheapest task to send.
async fn send_async(app: &App) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        "/api/exports/cost-infographic?async_processing=true",
        "alice-token-0123456789",
        json!({"procedure_ids": ["rhinoplasty"]}),
    )
    .await
}

/// Alice cancels task `id`.
async fn cancel(app: &App, id: &str) -> (StatusCode, Value) {
    call(
        app,
        "POST",
        &format!("/api/tasks/{id}/cancel"),
        "alice-token-0123456789",
        Value::Null,
    )
    .await
}

async fn burst(app: &App, n: usize) -> Vec<StatusCode> {
    let calls = (0..n).map(|_| send_async(app));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

#[tokio::test]
async fn the_active_task_limit_holds_for_requests_sent_at_once() {
    let app = app_with(|i| i.user_limits.active_tasks = 3);
    let statuses = burst(&app, 20).await;
    let accepted = statuses
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((accepted, refused), (3, 17), "{statuses:?}");
    assert_eq!(queued(&app).await, 3);
}

#[tokio::test]
async fn tasks_whose_results_are_gone_past_their_lifetime_do_not_count_as_active() {
    // Nothing runs the tasks here: their results stay missing (PENDING), as a finished task's
    // does once its result expired.
    let app = app_with(|i| {
        i.user_limits.active_tasks = 2;
        i.result_expires = Duration::from_millis(600);
    });
    assert_eq!(burst(&app, 2).await, [StatusCode::ACCEPTED; 2]);
    assert_eq!(burst(&app, 1).await, [StatusCode::TOO_MANY_REQUESTS]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        burst(&app, 1).await,
        [StatusCode::ACCEPTED],
        "a user whose old tasks' results expired can send again"
    );
}

/// `(status, headers, JSON body)` of a raw request as alice.
async fn raw(
    app: &App,
    req: axum::http::request::Builder,
    body: Body,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let req = req
        .header("authorization", "Bearer alice-token-0123456789")
        .body(body)
        .unwrap();
    let r = app.router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, headers, json)
}

#[tokio::test]
async fn requests_the_framework_refuses_still_answer_the_json_error_shape() {
    let app = app();
    let get = |uri: &str| Request::get(uri.to_owned());
    let multipart = |boundary: &str| {
        Request::post("/api/images")
            .header("content-type", format!("multipart/form-data{boundary}"))
    };
    let two_files = "--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\nA\r\n\
                     --XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.png\"\r\n\r\nB\r\n--XX--\r\n";
    let cases: Vec<(axum::http::request::Builder, Body, StatusCode, &str)> = vec![
        (
            Request::post("/api/visualizations").header("content-type", "application/xml"),
            Body::from("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            get("/api/images?limit=abc"),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            get("/api/tasks?offset=-1"),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            get("/api/images/%FF%FE"),
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            get("/api/tasks/0b0e5b0c-6f2c-4a4e-9d8e-2f7d1c3b4a59/cancel"),
            Body::empty(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Request::post("/api/exports").header("content-type", "application/json"),
            Body::from(format!(
                "{{\"visualization_ids\": [\"{}\"]}}",
                "v".repeat(300_000)
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            multipart(""),
            Body::from("x"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            multipart("; boundary=XX"),
            Body::from(two_files),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (req, body, status, code) in cases {
        let what = format!("{:?} {:?}", req.method_ref(), req.uri_ref());
        let (got, headers, answer) = raw(&app, req, body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
        if got == StatusCode::METHOD_NOT_ALLOWED {
            assert!(
                headers.contains_key("allow"),
                "{what}: a 405 still lists the methods"
            );
        }
    }
    assert_eq!(queued(&app).await, 0);
}

/// An export of alice's, stored (record and file); its id and file key.
async fn stored_export(app: &App) -> (String, String) {
    stored_export_as(app, afterview_core::ids::new_id()).await
}

/// As [`stored_export`], under the given id (a task's output is stored under its task's id).
async fn stored_export_as(app: &App, id: String) -> (String, String) {
    use afterview_store::{BlobStore, MetadataStore};
    let key = afterview_store::export_key(&id, "svg");
    app.blobs
        .put(&key, b"<svg/>".to_vec().into())
        .await
        .unwrap();
    app.meta
        .insert_export(&afterview_store::ExportRecord {
            id: id.clone(),
            owner: "alice".into(),
            kind: afterview_store::ExportKind::Infographic,
            format: afterview_core::tasks::ExportFormat::Svg,
            blob_key: key.clone(),
            size: 6,
            image_ids: vec![],
            result: json!({"id": id, "format": "svg"}),
            task_id: Some(id.clone()),
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    (id, key)
}

async fn delete_export(app: &App, id: &str) -> StatusCode {
    let uri = format!("/api/exports/{id}");
    call(app, "DELETE", &uri, "alice-token-0123456789", Value::Null)
        .await
        .0
}

#[tokio::test]
async fn files_the_store_cannot_delete_now_are_handed_to_a_task_not_forgotten() {
    use afterview_store::BlobStore;
    let app = app();
    // The store answers: the file goes at once, no task.
    let (id, key) = stored_export(&app).await;
    let status = delete_export(&app, &id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(app.blobs.get(&key).await.unwrap().is_none());
    assert_eq!(queued(&app).await, 0);
    // The store is down: the record goes, and a task that removes the file is queued.
    let (id, key) = stored_export(&app).await;
    app.blobs
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let status = delete_export(&app, &id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(queued(&app).await, 1);
    let msg = claim_one(&app).await;
    assert_eq!(msg.task, afterview_core::tasks::DELETE_FILES);
    assert_eq!(
        Value::Object(msg.kwargs),
        json!({"keys": [key], "user_id": "alice"})
    );
    // A photo: its file and its small copy, in two tasks (a worker older than small copies
    // refuses their prefix, and would refuse the photo's file with them).
    app.blobs
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, photo) = upload(&app).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = photo["id"].as_str().unwrap();
    app.blobs
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let uri = format!("/api/images/{id}");
    let (status, _) = call(&app, "DELETE", &uri, "alice-token-0123456789", Value::Null).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(queued(&app).await, 2);
    let mut sent: Vec<Value> = vec![];
    for _ in 0..2 {
        sent.push(claim_one(&app).await.kwargs["keys"].clone());
    }
    let image = afterview_store::image_key(id);
    let thumb = afterview_store::thumbnail_key(&image).unwrap();
    assert_eq!(sent, [json!([image]), json!([thumb])]);
}

#[tokio::test]
async fn a_task_whose_result_is_gone_but_whose_output_is_stored_reads_as_finished() {
    // The result backend lost the task's result (a Redis without AOF restarted): its output,
    // stored under its id, still says it finished, for the status and for the task limit.
    let app = app_with(|i| i.user_limits.active_tasks = 1);
    let (status, sent) = send_async(&app).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = sent["task_id"].as_str().unwrap().to_owned();
    assert_eq!(burst(&app, 1).await, [StatusCode::TOO_MANY_REQUESTS]);
    stored_export_as(&app, id.clone()).await;
    let (status, st) = alice_status(&app, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (st["state"].as_str(), st["result"]["format"].as_str()),
        (Some("SUCCESS"), Some("svg")),
        "{st}"
    );
    assert_eq!(burst(&app, 1).await, [StatusCode::ACCEPTED]);
}

/// One request as alice with an `Idempotency-Key`.
async fn call_keyed(app: &App, uri: &str, key: &str, body: Value) -> (StatusCode, Value) {
    call_with(
        app,
        ("POST", uri),
        "alice-token-0123456789",
        body,
        Some(key),
    )
    .await
}

/// A synchronous request whose wait ran out (504) is retried with its `Idempotency-Key`: the
/// retry waits for the same task instead of sending a second one (which would be paid twice).
#[tokio::test]
async fn a_retry_after_a_timeout_waits_for_the_task_it_sent() {
    let app = app_with(|i| i.sync_timeout = Duration::from_millis(200));
    let body = json!({"procedure_ids": ["rhinoplasty"], "format": "png"});
    let uri = "/api/exports/cost-infographic";
    let (s1, b1) = call_keyed(&app, uri, "retry-me", body.clone()).await;
    assert_eq!(s1, StatusCode::GATEWAY_TIMEOUT, "{b1}");
    let (s2, b2) = call_keyed(&app, uri, "retry-me", body.clone()).await;
    assert_eq!(s2, StatusCode::GATEWAY_TIMEOUT, "{b2}");
    assert_eq!(queued(&app).await, 1, "one task for one key");
    assert_eq!(
        b1["error"]["message"], b2["error"]["message"],
        "the same task"
    );
    // The task ends: the retry answers its result.
    let msg = claim_one(&app).await;
    use afterview_engine::ResultBackend;
    app.backend
        .store(
            &afterview_engine::ResultMeta::new(
                &msg.id,
                afterview_engine::TaskState::Success,
                json!({"id": "x", "download_url": "/api/exports/x/download"}),
            ),
            None,
        )
        .await
        .unwrap();
    let (s3, b3) = call_keyed(&app, uri, "retry-me", body).await;
    assert_eq!(s3, StatusCode::OK, "{b3}");
    assert_eq!(b3["id"], "x");
}

/// A retried request whose task finished, but whose result the backend lost (a Redis without
/// persistence restarted) while its output is stored, answers that output (it waited for the
/// result again and answered a second 504).
#[tokio::test]
async fn a_retry_answers_the_stored_output_of_a_task_whose_result_was_lost() {
    let app = app_with(|i| i.sync_timeout = Duration::from_millis(200));
    let body = json!({"procedure_ids": ["rhinoplasty"], "format": "svg"});
    let uri = "/api/exports/cost-infographic";
    let (s1, b1) = call_keyed(&app, uri, "lost-result", body.clone()).await;
    assert_eq!(s1, StatusCode::GATEWAY_TIMEOUT, "{b1}");
    let msg = claim_one(&app).await;
    stored_export_as(&app, msg.id.clone()).await;
    let (s2, b2) = call_keyed(&app, uri, "lost-result", body).await;
    assert_eq!(s2, StatusCode::OK, "{b2}");
    assert_eq!(b2["format"], "svg");
}

/// The memory broker, with faults: `refusals` (the next publishes refused: an outage between
/// recording a task and sending it), `ends_before_revoke` (the task stores SUCCESS just
/// before a revoke reaches the broker).
struct Faulty {
    inner: Arc<MemoryBackend>,
    refusals: std::sync::atomic::AtomicUsize,
    ends_before_revoke: bool,
}

#[async_trait::async_trait]
impl afterview_engine::Broker for Faulty {
    fn kind(&self) -> &'static str {
        "faulty"
    }
    async fn publish(
        &self,
        m: &afterview_engine::TaskMessage,
    ) -> Result<(), afterview_engine::BackendError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .refusals
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(afterview_engine::BackendError::unavailable(
                "the broker is down",
            ));
        }
        self.inner.publish(m).await
    }
    async fn publish_raw(&self, q: &str, raw: &[u8]) -> Result<(), afterview_engine::BackendError> {
        self.inner.publish_raw(q, raw).await
    }
    async fn claim(
        &self,
        r: &afterview_engine::backend::ClaimRequest,
    ) -> Result<Vec<afterview_engine::backend::Delivery>, afterview_engine::BackendError> {
        self.inner.claim(r).await
    }
    async fn wait_for_work(&self, q: &[String], d: Duration) {
        self.inner.wait_for_work(q, d).await;
    }
    async fn renew(
        &self,
        l: &[afterview_engine::backend::LeaseRef],
        d: Duration,
    ) -> Result<Vec<afterview_engine::backend::LeaseRef>, afterview_engine::BackendError> {
        self.inner.renew(l, d).await
    }
    async fn ack(
        &self,
        l: &afterview_engine::backend::LeaseRef,
    ) -> Result<bool, afterview_engine::BackendError> {
        self.inner.ack(l).await
    }
    async fn release(
        &self,
        l: &afterview_engine::backend::LeaseRef,
    ) -> Result<bool, afterview_engine::BackendError> {
        self.inner.release(l).await
    }
    async fn retry(
        &self,
        l: &afterview_engine::backend::LeaseRef,
        m: &afterview_engine::TaskMessage,
    ) -> Result<bool, afterview_engine::BackendError> {
        self.inner.retry(l, m).await
    }
    async fn dead_letter(
        &self,
        l: Option<&afterview_engine::backend::LeaseRef>,
        q: &str,
        raw: &[u8],
        reason: &str,
        id: Option<&str>,
    ) -> Result<(), afterview_engine::BackendError> {
        self.inner.dead_letter(l, q, raw, reason, id).await
    }
    async fn dead_letters(
        &self,
        n: usize,
    ) -> Result<Vec<afterview_engine::backend::DeadLetter>, afterview_engine::BackendError> {
        self.inner.dead_letters(n).await
    }
    async fn requeue_expired(&self) -> Result<u64, afterview_engine::BackendError> {
        self.inner.requeue_expired().await
    }
    async fn revoke(
        &self,
        id: &str,
        terminate: bool,
        keep: Duration,
    ) -> Result<afterview_engine::backend::RevokeOutcome, afterview_engine::BackendError> {
        if self.ends_before_revoke {
            use afterview_engine::ResultBackend;
            let done = afterview_engine::ResultMeta::new(
                id,
                afterview_engine::TaskState::Success,
                json!({"id": "x"}),
            );
            self.inner.store(&done, None).await?;
        }
        self.inner.revoke(id, terminate, keep).await
    }
    async fn revocations_since(
        &self,
        c: u64,
    ) -> Result<(Vec<afterview_engine::backend::Revocation>, u64), afterview_engine::BackendError>
    {
        self.inner.revocations_since(c).await
    }
    async fn revocation(
        &self,
        id: &str,
    ) -> Result<Option<afterview_engine::backend::Revocation>, afterview_engine::BackendError> {
        self.inner.revocation(id).await
    }
    async fn purge(&self, q: &[String]) -> Result<u64, afterview_engine::BackendError> {
        self.inner.purge(q).await
    }
    async fn queue_stats(
        &self,
        q: Option<&[String]>,
    ) -> Result<Vec<afterview_engine::backend::QueueStats>, afterview_engine::BackendError> {
        self.inner.queue_stats(q).await
    }
    async fn heartbeat(
        &self,
        r: &afterview_engine::backend::WorkerReport,
    ) -> Result<(), afterview_engine::BackendError> {
        self.inner.heartbeat(r).await
    }
    async fn worker_gone(&self, n: &str) -> Result<(), afterview_engine::BackendError> {
        self.inner.worker_gone(n).await
    }
    async fn workers(
        &self,
        t: Duration,
    ) -> Result<Vec<afterview_engine::backend::WorkerReport>, afterview_engine::BackendError> {
        self.inner.workers(t).await
    }
    async fn cleanup(
        &self,
    ) -> Result<afterview_engine::backend::CleanupStats, afterview_engine::BackendError> {
        afterview_engine::Broker::cleanup(&*self.inner).await
    }
    async fn ping(&self) -> Result<(), afterview_engine::BackendError> {
        afterview_engine::Broker::ping(&*self.inner).await
    }
}

/// The app over a [`Faulty`] broker.
fn faulty_app(refusals: usize, ends_before_revoke: bool) -> App {
    let b = Arc::new(MemoryBackend::new(Duration::from_secs(60)));
    let mut app = app_with(|i| {
        let broker = Faulty {
            inner: b.clone(),
            refusals: refusals.into(),
            ends_before_revoke,
        };
        i.client = Client::new(Arc::new(broker), b.clone());
        i.user_limits.active_tasks = 2;
    });
    app.backend = b;
    app
}

/// A task recorded but never sent (the broker refused the message) is revoked, so it does not
/// stay PENDING and count against its owner's active tasks for a day.
#[tokio::test]
async fn a_task_that_could_not_be_sent_does_not_count_as_active() {
    let app = faulty_app(usize::MAX, false);
    let body = json!({"procedure_ids": ["rhinoplasty"], "format": "png"});
    let uri = "/api/exports/cost-infographic?async_processing=true";
    for _ in 0..3 {
        let (s, b) = call(&app, "POST", uri, "alice-token-0123456789", body.clone()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "not 429: {b}");
    }
    let (s, list) = call(
        &app,
        "GET",
        "/api/tasks",
        "alice-token-0123456789",
        Value::Null,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(
        items.iter().all(|t| t["state"] == "REVOKED"),
        "ended, not waiting: {list}"
    );
}

/// A cancel that meets the task's own end answers what the task became, not "cancelled".
#[tokio::test]
async fn a_cancel_that_meets_the_tasks_end_answers_its_end() {
    let app = faulty_app(0, true);
    let body = json!({"procedure_ids": ["rhinoplasty"], "format": "png"});
    let (s, b) = call(
        &app,
        "POST",
        "/api/exports/cost-infographic?async_processing=true",
        "alice-token-0123456789",
        body,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["task_id"].as_str().unwrap().to_owned();
    let (s, b) = cancel(&app, &id).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["status"].as_str(), b["state"].as_str()),
        (Some("already_finished"), Some("SUCCESS")),
        "{b}"
    );
}

/// A request whose publish failed (503) gives its `Idempotency-Key` back: the retry the 503
/// asks for sends the task, instead of replaying a task that never left.
#[tokio::test]
async fn a_key_whose_publish_failed_is_given_back() {
    let app = faulty_app(1, false);
    let body = json!({"procedure_ids": ["rhinoplasty"], "format": "png"});
    let uri = "/api/exports/cost-infographic?async_processing=true";
    let (s1, b1) = call_keyed(&app, uri, "after-outage", body.clone()).await;
    assert_eq!(s1, StatusCode::SERVICE_UNAVAILABLE, "{b1}");
    let (s2, b2) = call_keyed(&app, uri, "after-outage", body.clone()).await;
    assert_eq!(s2, StatusCode::ACCEPTED, "{b2}");
    assert_eq!(queued(&app).await, 1, "the retry's task is in the queue");
    let (s3, b3) = call_keyed(&app, uri, "after-outage", body).await;
    assert_eq!(
        (s3, &b3["task_id"]),
        (StatusCode::ACCEPTED, &b2["task_id"]),
        "now replayed"
    );
    assert_eq!(queued(&app).await, 1);
}

/// A photo upload as alice, with an optional `Idempotency-Key`.
fn upload_request(key: Option<&str>) -> Request<Body> {
    let photo = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/portraits/grace_hopper.jpg"
    ))
    .unwrap();
    let mut body =
        b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.jpg\"\r\n\r\n"
            .to_vec();
    body.extend_from_slice(&photo);
    body.extend_from_slice(b"\r\n--XX--\r\n");
    let mut req = Request::post("/api/images")
        .header("authorization", "Bearer alice-token-0123456789")
        .header("content-type", "multipart/form-data; boundary=XX");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.body(Body::from(body)).unwrap()
}

async fn alice_photos(app: &App) -> usize {
    use afterview_store::MetadataStore;
    app.meta.list_images("alice", 100).await.unwrap().len()
}

/// Parallel uploads of a user one photo below the quota, on two API hosts: one is stored, the
/// others are refused (each passed the quota's first check before any was stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_uploads_stay_within_the_photo_quota() {
    let app = app_with(|i| i.user_limits.photos = 1);
    let other = another_host(&app, |i| i.user_limits.photos = 1);
    let mut uploads = tokio::task::JoinSet::new();
    for host in [&app.router, &other, &app.router, &other] {
        uploads.spawn(host.clone().oneshot(upload_request(None)));
    }
    let mut statuses: Vec<u16> = uploads
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 403, 403, 403]);
    assert_eq!(alice_photos(&app).await, 1);
}

/// An upload whose client went away while the photo was being stored (a slow bucket) is
/// stored all the same; its retry with the same `Idempotency-Key` gets that photo, not a
/// second copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_retried_after_a_dropped_connection_is_stored_once() {
    let app = app();
    let slow = app.blobs.gate.write().await;
    let first = tokio::time::timeout(
        Duration::from_millis(500),
        app.router.clone().oneshot(upload_request(Some("photo-1"))),
    )
    .await;
    assert!(
        first.is_err(),
        "the client gave up while the photo was stored"
    );
    drop(slow);
    for _ in 0..100 {
        if alice_photos(&app).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(alice_photos(&app).await, 1, "stored after the client left");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = app
        .router
        .clone()
        .oneshot(upload_request(Some("photo-1")))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.headers().get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(alice_photos(&app).await, 1, "no second copy");
}

/// A delete whose client went away once the record was gone (a closed tab, a proxy's
/// timeout) still removes the file: nothing else would ever name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_dropped_by_its_client_still_removes_the_file() {
    use afterview_store::BlobStore;
    let app = app();
    let (id, key) = stored_export(&app).await;
    let slow = app.blobs.gate.write().await;
    let req = Request::delete(format!("/api/exports/{id}"))
        .header("authorization", "Bearer alice-token-0123456789")
        .body(Body::empty())
        .unwrap();
    let dropped =
        tokio::time::timeout(Duration::from_millis(300), app.router.clone().oneshot(req)).await;
    assert!(dropped.is_err(), "the client gave up during the delete");
    drop(slow);
    for _ in 0..100 {
        if app.blobs.get(&key).await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the file of the deleted export is still stored");
}

/// Sending and cancelling filler tasks does not get around the active-task limit: finished
/// tasks leave the limit's view, so an older waiting task is still counted (only the newest
/// few dozen records were read, and fillers pushed waiting tasks out of them).
#[tokio::test]
async fn cancelled_fillers_do_not_hide_waiting_tasks_from_the_limit() {
    let app = app_with(|i| i.user_limits.active_tasks = 2);
    assert_eq!(burst(&app, 1).await, [StatusCode::ACCEPTED], "one waits");
    for _ in 0..14 {
        let (status, sent) = send_async(&app).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
        let id = sent["task_id"].as_str().unwrap();
        let (status, answer) = cancel(&app, id).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let mut two = vec![];
    for _ in 0..2 {
        two.extend(burst(&app, 1).await);
    }
    assert_eq!(
        two,
        [StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS],
        "the first task still counts"
    );
}

/// `?async_processing=` takes what the seed's FastAPI took for a `bool` (pydantic: yes/no,
/// on/off, t/f, y/n, 1/0, true/false, any case); anything else is a 400 naming the parameter.
#[tokio::test]
async fn async_processing_takes_every_spelling_the_seed_took() {
    let app = app_with(|i| {
        i.sync_timeout = Duration::from_millis(50);
        i.user_limits.active_tasks = 0;
    });
    let send = |v: &'static str| {
        let app = &app;
        async move {
            call(
                app,
                "POST",
                &format!("/api/exports/cost-infographic?async_processing={v}"),
                "alice-token-0123456789",
                json!({"procedure_ids": ["rhinoplasty"]}),
            )
            .await
        }
    };
    for v in ["true", "TRUE", "1", "yes", "On", "t", "Y"] {
        assert_eq!(send(v).await.0, StatusCode::ACCEPTED, "{v}");
    }
    for v in ["false", "0", "No", "off", "f", "n"] {
        // Synchronous: no worker here, so the wait runs out.
        assert_eq!(send(v).await.0, StatusCode::GATEWAY_TIMEOUT, "{v}");
    }
    let (status, body) = send("maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("async_processing")
    );
}

/// A download's file name ends in the id's last 8 characters, the reference the report prints
/// (the first 8 of a time-ordered id are the same for everything made within a minute).
#[tokio::test]
async fn downloads_are_named_by_the_reference_the_report_prints() {
    let app = app();
    let mut names = vec![];
    for _ in 0..2 {
        let (id, _) = stored_export(&app).await;
        let req = Request::get(format!("/api/exports/{id}/download"))
            .header("authorization", "Bearer alice-token-0123456789")
            .body(Body::empty())
            .unwrap();
        let r = app.router.clone().oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let cd = r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_owned();
        let reference = id[id.len() - 8..].to_uppercase();
        assert!(cd.contains(&format!("-{reference}.svg")), "{cd}");
        names.push(cd);
    }
    assert_ne!(names[0], names[1]);
}

/// `/metrics`, open by default, reads the broker's queue counts (every scheduled and held
/// message) at most once a second: a request within the second gets the count before.
#[tokio::test]
async fn metrics_read_the_queue_counts_at_most_once_a_second() {
    let app = app();
    let ready = |app: &App| {
        let router = app.router.clone();
        async move {
            let req = Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap();
            let r = router.oneshot(req).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            // Every queue's ready messages (this app's client has no routes: its tasks go to
            // the default queue).
            text.lines()
                .filter(|l| {
                    l.starts_with("afterview_queue_messages{") && l.contains("state=\"ready\"")
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum::<u64>()
        }
    };
    let first = std::time::Instant::now();
    assert_eq!(ready(&app).await, 0);
    assert_eq!(send_async(&app).await.0, StatusCode::ACCEPTED);
    let again = ready(&app).await;
    if first.elapsed() < Duration::from_millis(900) {
        assert_eq!(again, 0, "counted again within the second");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ready(&app).await, 1, "counted again after the second");
}

/// `(status, JSON body)` of a photo upload as alice; a 503 must carry `Retry-After`.
async fn upload(app: &App) -> (StatusCode, Value) {
    let r = app
        .router
        .clone()
        .oneshot(upload_request(None))
        .await
        .unwrap();
    let status = r.status();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        assert!(r.headers().get("retry-after").is_some());
    }
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// `(status, content type, bytes)` of a GET as `token`'s user.
async fn get_bytes(app: &App, uri: &str, token: &str) -> (StatusCode, String, bytes::Bytes) {
    let req = Request::get(uri)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let r = app.router.clone().oneshot(req).await.unwrap();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = r.status();
    (
        status,
        ct,
        axum::body::to_bytes(r.into_body(), 1 << 26).await.unwrap(),
    )
}

/// Polls until blob `key` is stored (`true`) or gone (`false`).
async fn blob_becomes(app: &App, key: &str, stored: bool) {
    use afterview_store::BlobStore;
    for _ in 0..200 {
        if app.blobs.get(key).await.unwrap().is_some() == stored {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{key} never became {}",
        if stored { "stored" } else { "gone" }
    );
}

/// A picture's small copy for lists: the photo's, stored at upload; a visualization's (or an
/// older photo's), made on its first request and stored; only its owner's; and gone with its
/// picture, also when the picture is deleted as part of its photo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pictures_have_small_copies_that_go_with_them() {
    use afterview_store::{BlobStore, MetadataStore, thumbnail_key};
    let app = app();
    let alice = "alice-token-0123456789";
    let (status, photo) = upload(&app).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = photo["id"].as_str().unwrap().to_owned();
    let url = photo["thumbnail_url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("/api/images/{id}/thumbnail"));
    let photo_thumb = thumbnail_key(&afterview_store::image_key(&id)).unwrap();
    assert!(
        app.blobs.get(&photo_thumb).await.unwrap().is_some(),
        "stored at upload"
    );
    let (status, ct, bytes) = get_bytes(&app, &url, alice).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "image/jpeg"));
    let small = image::load_from_memory(&bytes).unwrap();
    let (w, h) = (
        photo["width"].as_u64().unwrap(),
        photo["height"].as_u64().unwrap(),
    );
    assert_eq!(u64::from(small.width().max(small.height())), 256);
    let aspect = |a: u64, b: u64| a as f64 / b as f64;
    assert!((aspect(w, h) - aspect(small.width().into(), small.height().into())).abs() < 0.01);
    assert!(bytes.len() < 40_000, "{} bytes", bytes.len());
    for (uri, token) in [
        (url.as_str(), "bob-token-0123456789ab"),
        (
            "/api/images/0123456789abcdef0123456789abcdef/thumbnail",
            alice,
        ),
        (
            "/api/visualizations/0123456789abcdef0123456789abcdef/thumbnail",
            alice,
        ),
    ] {
        assert_eq!(
            get_bytes(&app, uri, token).await.0,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
    // A photo stored before there were small copies gets one on its first request.
    app.blobs.delete(&photo_thumb).await.unwrap();
    let again = get_bytes(&app, &url, alice).await;
    assert_eq!((again.0, again.1.as_str()), (StatusCode::OK, "image/jpeg"));
    blob_becomes(&app, &photo_thumb, true).await;
    // A visualization of the photo (its picture is the photo itself here).
    let viz = afterview_core::ids::new_id();
    let viz_key = afterview_store::visualization_key(&viz);
    let full = get_bytes(&app, &format!("/api/images/{id}/content"), alice)
        .await
        .2;
    app.blobs.put(&viz_key, full).await.unwrap();
    app.meta
        .insert_visualization(&afterview_store::VisualizationRecord {
            id: viz.clone(),
            owner: "alice".into(),
            image_id: id.clone(),
            kind: afterview_store::VisualizationKind::Single,
            procedure_ids: vec!["rhinoplasty".into()],
            engine: afterview_store::EngineKind::Local,
            blob_key: viz_key.clone(),
            result: json!({"id": viz, "image_id": id, "procedure_id": "rhinoplasty"}),
            task_id: None,
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let (_, list) = call(&app, "GET", "/api/visualizations", alice, Value::Null).await;
    let viz_url = list["items"][0]["thumbnail_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(viz_url, format!("/api/visualizations/{viz}/thumbnail"));
    let (status, ct, bytes) = get_bytes(&app, &viz_url, alice).await;
    assert_eq!((status, ct.as_str()), (StatusCode::OK, "image/jpeg"));
    let copy = image::load_from_memory(&bytes).unwrap();
    assert_eq!(
        (copy.width(), copy.height()),
        (small.width(), small.height())
    );
    let viz_thumb = thumbnail_key(&viz_key).unwrap();
    blob_becomes(&app, &viz_thumb, true).await;
    assert_eq!(
        get_bytes(&app, &viz_url, "bob-token-0123456789ab").await.0,
        StatusCode::NOT_FOUND
    );
    // The photo deleted: its visualization goes with it, and every file of both.
    let (status, _) = call(
        &app,
        "DELETE",
        &format!("/api/images/{id}"),
        alice,
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for key in [
        afterview_store::image_key(&id),
        photo_thumb,
        viz_key,
        viz_thumb,
    ] {
        blob_becomes(&app, &key, false).await;
    }
}

/// Uploads past the host's slots or the user's half of them are answered 503 `busy` with
/// `Retry-After` (their bytes dropped as they arrive: each held would be up to 20 MB until its
/// decode), and stored once the others are done.
#[tokio::test]
async fn uploads_past_the_hosts_or_the_users_share_are_turned_away() {
    let gate = afterview_api::uploads::UploadGate::new(2);
    let shared = gate.clone();
    let app = app_with(move |i| i.uploads = shared);
    // Bob's upload takes one of the two slots: alice's one is her share.
    let bobs = gate.enter("bob").unwrap();
    let alices = gate.enter("alice").unwrap();
    let (status, body) = upload(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "busy", "{body}");
    drop(alices);
    let receiving = bobs;
    let other = gate.enter("carol").unwrap();
    let (status, body) = upload(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "busy", "{body}");
    assert_eq!(alice_photos(&app).await, 0);
    drop((receiving, other));
    assert_eq!(upload(&app).await.0, StatusCode::CREATED);
    assert_eq!(gate.free(), 2, "given back");
}
