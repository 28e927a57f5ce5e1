//! The router, `ROUTES` and the OpenAPI document agree: every listed route is really routed
//! (it does not fall through to the 404 fallback, and its method is allowed), in process over
//! the in-memory engine and stores.

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
use tower::ServiceExt;

#[tokio::test]
async fn every_listed_route_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(MemoryBackend::new(Duration::from_secs(60)));
    let inner = Inner::new(
        Client::new(backend.clone(), backend),
        Arc::new(SqliteMetadata::open(&dir.path().join("m.db")).unwrap()),
        Arc::new(ObjectBlobStore::memory()),
        Arc::new(Catalog::builtin()),
        Auth::default(),
        afterview_intake::Limits::default(),
        Arc::new(Metrics::default()),
    );
    let app = router(Arc::new(inner));
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
