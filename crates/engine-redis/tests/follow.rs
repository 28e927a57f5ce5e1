//! Following results over Redis pub/sub: the process's one subscriber connection queues
//! SUBSCRIBE and UNSUBSCRIBE without waiting for each confirmation (a task's UNSUBSCRIBE and
//! the next task's SUBSCRIBE leave together), so their order on the connection is what keeps a
//! follower subscribed. Checked against a private `redis-server`, with results written by a
//! second process's connection so that they can only arrive through pub/sub.

use std::sync::Arc;
use std::time::Duration;

use afterview_engine::{ResultBackend, ResultMeta, TaskState};
use afterview_engine_redis::testing::RedisServer;
use afterview_engine_redis::{RedisBackend, RedisOptions};
use serde_json::json;

async fn open(server: &RedisServer) -> Arc<RedisBackend> {
    Arc::new(
        RedisBackend::open(
            &server.url(0),
            Some(&server.url(1)),
            RedisOptions::default(),
        )
        .await
        .expect("open redis backend"),
    )
}

/// Follows `id` until its first state (read once the subscription is confirmed), waits
/// `settle` (so that a stray UNSUBSCRIBE would have gone out), has `writer` store SUCCESS, and
/// returns what the follower hears next.
async fn follow_then_store(
    follower: &Arc<RedisBackend>,
    writer: &RedisBackend,
    id: &str,
    settle: Duration,
) -> ResultMeta {
    let client = afterview_engine::Client::new(follower.clone(), follower.clone());
    let mut watch = client.watch(id);
    let first = watch.next().await.unwrap().expect("a first state");
    assert_eq!(first.status, TaskState::Pending, "{id} starts unknown");
    tokio::time::sleep(settle).await;
    writer
        .store(&ResultMeta::new(id, TaskState::Success, json!(id)), None)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap_or_else(|_| panic!("the follower of {id} never heard its result"))
        .unwrap()
        .expect("a change")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_followed_again_right_after_it_was_let_go_is_still_heard() {
    let server = RedisServer::start(2, false);
    let follower = open(&server).await;
    let writer = open(&server).await;
    for round in 0..20 {
        let id = format!("refollow-{round}");
        // Follow and let go at once: UNSUBSCRIBE is queued behind SUBSCRIBE, and the next
        // SUBSCRIBE of the same channel behind that UNSUBSCRIBE.
        let client = afterview_engine::Client::new(follower.clone(), follower.clone());
        drop(client.watch(&id));
        let got = follow_then_store(&follower, &writer, &id, Duration::from_millis(50)).await;
        assert_eq!(got.status, TaskState::Success, "round {round}: {got:?}");
        assert_eq!(got.result, json!(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_tasks_one_after_another_each_hear_their_own_result() {
    let server = RedisServer::start(2, false);
    let follower = open(&server).await;
    let writer = open(&server).await;
    for i in 0..200 {
        let id = format!("in-turn-{i}");
        let got = follow_then_store(&follower, &writer, &id, Duration::ZERO).await;
        assert_eq!(got.task_id, id);
        assert_eq!(got.status, TaskState::Success);
    }
    // Every subscription was let go again (the UNSUBSCRIBEs nobody waited for went out).
    let mut c = afterview_engine_redis::testing::redis::Client::open(server.url(0))
        .unwrap()
        .get_connection()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let channels: Vec<String> = afterview_engine_redis::testing::redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("celery-task-meta-*")
            .query(&mut c)
            .unwrap();
        if channels.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still subscribed to {channels:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
