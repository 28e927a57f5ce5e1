//! A Redis that is full (`maxmemory` reached, `maxmemory-policy noeviction`, as deploy.md asks
//! for): a new task is refused whole and the producer hears it, while the work already inside
//! keeps moving (claims, STARTED, results and acks, a revocation), so the backlog drains
//! instead of every transition failing until results expire a day later. Checked against a
//! private `redis-server` whose limit is set below what it holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use afterview_engine::{
    Broker, Client, Registry, ResultBackend, SendOptions, Shutdown, TaskState, Worker, WorkerConfig,
};
use afterview_engine_redis::RedisBackend;
use afterview_engine_redis::testing::{RedisServer, redis};
use serde_json::Map;

fn noop() -> (
    &'static str,
    Vec<serde_json::Value>,
    Map<String, serde_json::Value>,
) {
    ("afterview.noop", vec![], Map::new())
}

async fn send(client: &Client) -> Result<String, afterview_engine::ClientError> {
    let (name, args, kwargs) = noop();
    client
        .send_task(name, args, kwargs, SendOptions::default())
        .await
}

fn set_maxmemory(c: &mut redis::Connection, bytes: u64) {
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query(c)
        .unwrap();
}

/// Every key with its type and length, to show a refused publish changed nothing.
fn snapshot(c: &mut redis::Connection) -> Vec<(String, i64)> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(c).unwrap();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let len: i64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&k)
                .query(c)
                .unwrap_or(0);
            (k, len)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_new_tasks_whole_and_still_drains_what_it_holds() {
    let server = RedisServer::start_with(2, false, &["--maxmemory-policy", "noeviction"]);
    let backend: Arc<RedisBackend> = server.backend(0).await;
    let client = Client::new(backend.clone(), backend.clone());
    let mut c = server.connection(0);

    // A backlog, sent while there was room.
    let mut queued = Vec::new();
    for _ in 0..6 {
        queued.push(send(&client).await.unwrap());
    }
    let to_revoke = queued.pop().unwrap();

    // Full: any command that may grow memory is refused from now on.
    set_maxmemory(&mut c, 1);
    let before = snapshot(&mut c);
    let refused = send(&client)
        .await
        .expect_err("a full Redis takes no new task");
    assert!(
        matches!(
            refused,
            afterview_engine::ClientError::Backend(afterview_engine::BackendError::Full(_))
        ),
        "the producer hears why: {refused:?}"
    );
    assert_eq!(
        snapshot(&mut c),
        before,
        "nothing of the refused task was written"
    );

    // A revocation still lands (it is how an operator makes room).
    client
        .revoke(&to_revoke, false)
        .await
        .expect("a revocation while full");

    // A worker started now (its own connection, so it declares its queues, which a full
    // Redis refuses) claims the backlog, stores STARTED and the results, and acks.
    let backend: Arc<RedisBackend> = server.backend(0).await;
    let shutdown = Shutdown::new();
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 2,
            node: "full@test".into(),
            ..WorkerConfig::default()
        },
        backend.clone() as Arc<dyn Broker>,
        backend.clone() as Arc<dyn ResultBackend>,
        Registry::with_builtins(),
    );
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    for id in &queued {
        let r = client.wait(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(r.status, TaskState::Success, "{id}");
    }
    let r = client
        .wait(&to_revoke, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.status, TaskState::Revoked);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let unacked: i64 = redis::cmd("HLEN").arg("unacked").query(&mut c).unwrap();
        if unacked == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{unacked} messages never acked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Room again: new tasks are taken and run.
    set_maxmemory(&mut c, 0);
    let id = send(&client).await.unwrap();
    let r = client.wait(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.status, TaskState::Success);

    shutdown.trigger();
    shutdown.trigger();
    let _ = handle.await;
}
