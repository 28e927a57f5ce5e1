//! Following results over Redis pub/sub: the process's one subscriber connection queues
//! SUBSCRIBE and UNSUBSCRIBE without waiting for each confirmation (a task's UNSUBSCRIBE and
//! the next task's SUBSCRIBE leave together), so their order on the connection is what keeps a
//! follower subscribed. After a reconnect (a Redis restart) the process catches up: it
//! re-reads followed results and turns keyspace notifications back on, trying again while its
//! command connections find their way back. Checked against a private `redis-server`, with
//! results written by a second process's connection so that they can only arrive through
//! pub/sub.

use std::sync::Arc;
use std::time::Duration;

use afterview_engine::{ResultBackend, ResultMeta, TaskState};
use afterview_engine_redis::RedisBackend;
use afterview_engine_redis::testing::RedisServer;
use serde_json::json;

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
    let follower = server.backend(0).await;
    let writer = server.backend(0).await;
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
    let follower = server.backend(0).await;
    let writer = server.backend(0).await;
    for i in 0..200 {
        let id = format!("in-turn-{i}");
        let got = follow_then_store(&follower, &writer, &id, Duration::ZERO).await;
        assert_eq!(got.task_id, id);
        assert_eq!(got.status, TaskState::Success);
    }
    // Every subscription was let go again (the UNSUBSCRIBEs nobody waited for went out).
    let mut c = server.connection(0);
    eventually(Duration::from_secs(5), || {
        let channels: Vec<String> = afterview_engine_redis::testing::redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("celery-task-meta-*")
            .query(&mut c)
            .unwrap();
        if channels.is_empty() {
            Ok(())
        } else {
            Err(format!("still subscribed to {channels:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_hears_a_result_stored_after_redis_restarted() {
    let mut server = RedisServer::start(2, false);
    let follower = server.backend(0).await;
    let client = afterview_engine::Client::new(follower.clone(), follower.clone());
    let mut watch = client.watch("after-restart");
    let first = watch.next().await.unwrap().expect("a first state");
    assert_eq!(first.status, TaskState::Pending);
    server.restart();
    // The follower's connection is gone with the old server; the result is written by a new
    // process's connection, whenever that comes relative to the follower's reconnect (then it
    // subscribes again and re-reads what it follows).
    let writer = server.backend(0).await;
    writer
        .store(
            &ResultMeta::new("after-restart", TaskState::Success, json!(1)),
            None,
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the follower never heard the result stored after the restart")
        .unwrap()
        .expect("a change");
    assert_eq!(got.status, TaskState::Success);
}

/// A restarted Redis forgets `CONFIG SET`: the reconnect turns keyspace notifications for list
/// pushes back on, or workers would hear of Python producers' tasks only at their safety poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_after_a_restart_turns_list_push_notifications_back_on() {
    let mut server = RedisServer::start(2, false);
    let backend = server.backend(0).await;
    let flags = |server: &RedisServer| -> String {
        let mut c = server.connection(0);
        let v: Vec<String> = afterview_engine_redis::testing::redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query(&mut c)
            .unwrap();
        v.get(1).cloned().unwrap_or_default()
    };
    assert!(flags(&server).contains('l'), "{}", flags(&server));
    server.restart();
    assert!(
        !flags(&server).contains('l'),
        "a fresh server starts without them"
    );
    eventually(Duration::from_secs(15), || {
        let f = flags(&server);
        if f.contains('l') && afterview_engine::Broker::pushes_wakeups(&*backend) {
            Ok(())
        } else {
            Err(format!(
                "notifications still off after the reconnect: {f:?}"
            ))
        }
    })
    .await;
}

/// The first command on a connection after Redis restarted fails (the connection learns of the
/// restart from it and reconnects): a read is sent again and succeeds; a publish, which Redis
/// may already have run when it fails that way under load, is not repeated and fails visibly,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_reads_succeed_and_a_publish_fails_at_most_once_visibly() {
    let mut server = RedisServer::start(2, false);
    let backend = server.backend(0).await;
    let client = afterview_engine::Client::new(backend.clone(), backend.clone());
    let send = || {
        client.send_task(
            "afterview.noop",
            vec![],
            serde_json::Map::new(),
            afterview_engine::SendOptions {
                queue: Some("after-restart".into()),
                ..Default::default()
            },
        )
    };
    send().await.unwrap();
    server.restart();
    let id = match send().await {
        Ok(id) => id,
        Err(e) => {
            assert!(e.to_string().contains("broken pipe"), "{e}");
            send().await.expect("the publish after the failed one")
        }
    };
    server.restart();
    let state = client
        .result(&id)
        .await
        .expect("the first read after the restart");
    assert_eq!(state.status, TaskState::Pending);
}

/// Polls `check` every 20 ms until it passes; fails with its last complaint after `limit`.
async fn eventually(limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = std::time::Instant::now() + limit;
    while let Err(why) = check() {
        assert!(std::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
