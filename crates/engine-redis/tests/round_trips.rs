//! What one task costs in round trips when tasks come one at a time (the latency path): the
//! producer's publish, one claim, one fenced store with the ack. A worker that took everything
//! due waits for the pushed wake-up instead of claiming again at once.

use std::sync::Arc;
use std::time::Duration;

use afterview_engine::{
    Broker, Client, Registry, ResultBackend, SendOptions, Shutdown, TaskState, Worker, WorkerConfig,
};
use afterview_engine_redis::testing::{RedisServer, command_stats};
use afterview_engine_redis::{RedisBackend, RedisOptions};
use serde_json::Map;

/// Script calls the server has executed so far.
fn script_calls(url: &str) -> u64 {
    let stats = command_stats(url);
    ["evalsha", "eval"]
        .iter()
        .filter_map(|k| stats.get(*k))
        .map(|(calls, _)| calls)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_task_at_a_time_costs_three_script_calls() {
    let server = RedisServer::start(2, false);
    let url = server.url(0);
    let backend = Arc::new(
        RedisBackend::open(&url, Some(&server.url(1)), RedisOptions::default())
            .await
            .unwrap(),
    );
    assert!(backend.pushes_wakeups());
    let client = Client::new(backend.clone(), backend.clone());
    let shutdown = Shutdown::new();
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 8,
            prefetch_multiplier: 4,
            ..WorkerConfig::default()
        },
        backend.clone() as Arc<dyn Broker>,
        backend.clone() as Arc<dyn ResultBackend>,
        Registry::with_builtins(),
    );
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let one = || async {
        let id = client
            .send_task("afterview.noop", vec![], Map::new(), SendOptions::default())
            .await
            .unwrap();
        let r = client.wait(&id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(r.status, TaskState::Success);
    };
    for _ in 0..5 {
        one().await;
    }
    let n = 40;
    let before = script_calls(&url);
    for _ in 0..n {
        one().await;
    }
    let per_task = (script_calls(&url) - before) as f64 / n as f64;
    // publish + claim + store = 3; the worker's background loops (lease sweep, revocation log,
    // heartbeat) add a few calls over the whole run. A claim right after each claim made it 4+.
    assert!(
        per_task < 3.5,
        "{per_task:.2} script calls per task one at a time (3 expected)"
    );
    shutdown.trigger();
    shutdown.trigger();
    let _ = handle.await;
}
