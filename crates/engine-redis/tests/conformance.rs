//! The engine's conformance suite against a private redis-server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use afterview_engine::testsuite::Fixture;
use afterview_engine_redis::testing::shared;
use afterview_engine_redis::{RedisBackend, RedisOptions};

fn open(url: String, expires: Duration) -> Pin<Box<dyn Future<Output = Fixture> + Send>> {
    Box::pin(async move {
        let b = Arc::new(
            RedisBackend::open(
                &url,
                None,
                RedisOptions {
                    result_expires: expires,
                    ..RedisOptions::default()
                },
            )
            .await
            .expect("open redis backend"),
        );
        let reopen_url = url.clone();
        Fixture {
            broker: b.clone(),
            backend: b,
            reopen: Some(Arc::new(move || open(reopen_url.clone(), expires))),
        }
    })
}

async fn fixture(expires: Duration) -> Fixture {
    let server = shared();
    let db = server.fresh_db();
    open(server.url(db), expires).await
}

afterview_engine::broker_conformance!(fixture);
afterview_engine::broker_conformance!(durable fixture);

/// On a server that allows CONFIG SET, list pushes are notified: the backend says so, and
/// workers then only poll as a safety net (a few commands a second when idle).
#[tokio::test]
async fn keyspace_notifications_make_wakeups_pushed() {
    use afterview_engine::Broker;
    let f = fixture(Duration::from_secs(60)).await;
    assert!(f.broker.pushes_wakeups());
    // Told not to rely on notifications, it polls.
    let server = shared();
    let polled = RedisBackend::open(
        &server.url(server.fresh_db()),
        None,
        RedisOptions {
            keyspace_events: false,
            ..RedisOptions::default()
        },
    )
    .await
    .expect("open redis backend");
    assert!(!polled.pushes_wakeups());
}
