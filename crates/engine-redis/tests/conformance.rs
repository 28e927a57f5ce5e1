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
