//! Pushes to idle workers: a publish of one due message while a worker of its queue waits
//! claims the message for that worker and sends it on the worker's channel. Checked against a
//! private `redis-server`: the message never sits in the queue, it is leased exactly as a claim
//! leases it, a gone worker's registration falls back to the queue, and a worker that stops
//! gives back what was pushed to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use afterview_engine::backend::{ClaimRequest, Delivery};
use afterview_engine::{Broker, Client, SendOptions};
use afterview_engine_redis::testing::{RedisServer, redis};
use afterview_engine_redis::{RedisBackend, RedisOptions};
use serde_json::Map;

const QUEUE: &str = "pushq";
const WAITERS: &str = "afterview:idle:pushq";

fn request(worker: &str) -> ClaimRequest {
    ClaimRequest {
        queues: vec![QUEUE.into()],
        max: 4,
        lease: Duration::from_secs(30),
        worker: worker.into(),
    }
}

/// Claims (empty) until the worker is registered as idle in the queue's list.
async fn wait_idle(b: &RedisBackend, c: &mut redis::Connection, worker: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(b.claim(&request(worker)).await.unwrap().is_empty());
        let entries: Vec<String> = redis::cmd("ZRANGE")
            .arg(WAITERS)
            .arg(0)
            .arg(-1)
            .query(c)
            .unwrap();
        if entries.iter().any(|e| e.ends_with(worker)) {
            assert_eq!(entries.len(), 1, "one entry per idle worker: {entries:?}");
            return;
        }
        assert!(Instant::now() < deadline, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish(client: &Client) -> String {
    client
        .send_task(
            "afterview.noop",
            vec![],
            Map::new(),
            SendOptions {
                queue: Some(QUEUE.into()),
                ..SendOptions::default()
            },
        )
        .await
        .unwrap()
}

/// Claims until something arrives (a push lands asynchronously).
async fn claim_some(b: &RedisBackend, worker: &str) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        b.wait_for_work(&[QUEUE.into()], Duration::from_millis(50))
            .await;
        let got = b.claim(&request(worker)).await.unwrap();
        if !got.is_empty() || Instant::now() > deadline {
            return got;
        }
    }
}

fn llen(c: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("LLEN").arg(key).query(c).unwrap()
}

fn idle_workers(c: &mut redis::Connection) -> i64 {
    redis::cmd("ZCARD").arg(WAITERS).query(c).unwrap()
}

/// Subscribers of channel `ch`.
fn listeners(c: &mut redis::Connection, ch: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(ch).query(c).unwrap();
    n
}

/// A private server, a worker backend registered as idle as `node`, a producer, and a plain
/// connection for reading keys.
async fn idle_worker(node: &str) -> (RedisServer, Arc<RedisBackend>, Client, redis::Connection) {
    let server = RedisServer::start(2, false);
    let worker = server.backend(0).await;
    let producer = server.backend(0).await;
    let client = Client::new(producer.clone(), producer);
    let mut c = server.connection(0);
    wait_idle(&worker, &mut c, node).await;
    (server, worker, client, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_takes_the_message_from_the_publish_itself() {
    let (_server, worker, client, mut c) = idle_worker("idle@test").await;

    let id = publish(&client).await;
    // Claimed for the worker inside the publish: never in the queue, already leased.
    assert_eq!(llen(&mut c, QUEUE), 0);
    assert_eq!(idle_workers(&mut c), 0, "the push used the registration");
    let running: Option<String> = redis::cmd("HGET")
        .arg("afterview:running")
        .arg(&id)
        .query(&mut c)
        .unwrap();
    let tag = running.expect("the pushed message is leased as a claim leases it");
    let unacked: bool = redis::cmd("HEXISTS")
        .arg("unacked")
        .arg(&tag)
        .query(&mut c)
        .unwrap();
    assert!(unacked, "kombu's bookkeeping holds the pushed message");

    let got = claim_some(&worker, "idle@test").await;
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.lease.task_id, id);
    assert_eq!(d.lease.delivery_tag, tag);
    assert_eq!((d.lease.epoch, d.redelivered), (1, false));
    assert_eq!(d.queue, QUEUE);
    assert!(
        worker.ack(&d.lease).await.unwrap(),
        "the push's lease is current"
    );
    let left: i64 = redis::cmd("HLEN").arg("unacked").query(&mut c).unwrap();
    assert_eq!(left, 0);

    // A worker that is busy (not registered) gets the next message the usual way.
    let id2 = publish(&client).await;
    assert_eq!(llen(&mut c, QUEUE), 1);
    let got = worker.claim(&request("idle@test")).await.unwrap();
    assert_eq!(got[0].lease.task_id, id2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_workers_registration_falls_back_to_the_queue() {
    let server = RedisServer::start(2, false);
    let producer = server.backend(0).await;
    let client = Client::new(producer.clone(), producer.clone());
    let mut c = server.connection(0);
    {
        let worker = server.backend(0).await;
        wait_idle(&worker, &mut c, "gone@test").await;
    }
    // The backend is dropped: its pub/sub connection closes, nobody listens on its channel.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if listeners(&mut c, "afterview:push:gone@test") == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dropped backend still listens"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&client).await;
    assert_eq!(llen(&mut c, QUEUE), 1, "queued, as without pushes");
    assert_eq!(idle_workers(&mut c), 0, "the stale registration is gone");
    let leases: i64 = redis::cmd("HLEN")
        .arg("afterview:lease")
        .query(&mut c)
        .unwrap();
    assert_eq!(leases, 0, "nothing was leased for the gone worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_gives_back_what_was_pushed_to_it() {
    let (server, worker, client, mut c) = idle_worker("stopping@test").await;
    let id = publish(&client).await;
    assert_eq!(llen(&mut c, QUEUE), 0, "pushed");
    // Let the push arrive, but stop before any claim takes it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    worker.worker_gone("stopping@test").await.unwrap();
    assert_eq!(llen(&mut c, QUEUE), 1, "given back to its queue at once");
    assert_eq!(idle_workers(&mut c), 0);
    // Anyone can claim it now; the earlier lease's epoch makes it a redelivery.
    let got = worker.claim(&request("other@test")).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].lease.task_id, id);
    assert!(got[0].redelivered);

    // With pushes off, a worker never registers.
    let off = RedisBackend::open(
        &server.url(0),
        Some(&server.url(1)),
        RedisOptions {
            push_to_idle: false,
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    for _ in 0..5 {
        assert!(off.claim(&request("off@test")).await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(idle_workers(&mut c), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_only_publishes_is_not_woken_by_tasks() {
    let server = RedisServer::start(2, false);
    let producer = server.backend(0).await;
    let client = Client::new(producer.clone(), producer.clone());
    let mut c = server.connection(0);
    let id = publish(&client).await;
    let r = client.wait(&id, Duration::from_millis(300)).await.unwrap();
    assert_eq!(r.status, afterview_engine::TaskState::Pending);
    // Publishing and following results subscribes to neither wake-ups nor list pushes, so
    // every task of every queue does not wake every API process.
    assert_eq!(listeners(&mut c, "afterview:wake"), 0);
    assert_eq!(listeners(&mut c, "__keyevent@0__:lpush"), 0);
    // A claim subscribes first, so no wake-up after it is missed.
    assert_eq!(producer.claim(&request("w@test")).await.unwrap().len(), 1);
    assert_eq!(listeners(&mut c, "afterview:wake"), 1);
    assert_eq!(listeners(&mut c, "__keyevent@0__:lpush"), 1);
}

/// A worker of two queues registers as idle in both; a push through one takes it out of the
/// other's idle set, so a message published to the other queue right after waits in its queue
/// for any worker instead of being pushed to one that may be full (where it sat unrenewed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_through_one_queue_takes_the_worker_out_of_its_other_queues() {
    let server = RedisServer::start(2, false);
    let worker = server.backend(0).await;
    let producer = server.backend(0).await;
    let client = Client::new(producer.clone(), producer);
    let mut c = server.connection(0);
    let queues = ["pusha", "pushb"];
    let req = ClaimRequest {
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        max: 1,
        lease: Duration::from_secs(30),
        worker: "two@test".into(),
    };
    let idle_in = |c: &mut redis::Connection, q: &str| -> i64 {
        redis::cmd("ZCARD")
            .arg(format!("afterview:idle:{q}"))
            .query(c)
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while idle_in(&mut c, "pusha") + idle_in(&mut c, "pushb") < 2 {
        assert!(worker.claim(&req).await.unwrap().is_empty());
        assert!(Instant::now() < deadline, "the worker never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let send = |q: &'static str| {
        client.send_task(
            "afterview.noop",
            vec![],
            Map::new(),
            SendOptions {
                queue: Some(q.into()),
                ..SendOptions::default()
            },
        )
    };
    let first = send("pusha").await.unwrap();
    assert_eq!(llen(&mut c, "pusha"), 0, "pushed");
    assert_eq!(
        (idle_in(&mut c, "pusha"), idle_in(&mut c, "pushb")),
        (0, 0),
        "out of both idle sets"
    );
    // The push wakes the worker; its claim takes the message without a script (a claim
    // before the push arrived would register it again). Full now, it claims nothing more.
    let names: Vec<String> = req.queues.clone();
    worker.wait_for_work(&names, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = worker.claim(&req).await.unwrap();
    assert_eq!(got.len(), 1, "the pushed message, taken");
    assert_eq!(got[0].lease.task_id, first);
    let second = send("pushb").await.unwrap();
    assert_eq!(
        llen(&mut c, "pushb"),
        1,
        "queued for any worker, not pushed"
    );
    let other = ClaimRequest {
        worker: "other@test".into(),
        ..req.clone()
    };
    assert_eq!(worker.claim(&other).await.unwrap()[0].lease.task_id, second);
}

/// A Redis Cluster node is refused at once, by name: the scripts' keys would be spread over
/// nodes and fail part-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_is_refused_by_name() {
    let server = RedisServer::start_with(1, false, &["--cluster-enabled", "yes"]);
    match RedisBackend::open(&server.url(0), None, RedisOptions::default()).await {
        Err(afterview_engine::BackendError::Invalid(c)) => {
            assert!(c.to_string().contains("Redis Cluster"), "{c}")
        }
        Err(e) => panic!("refused, but as {e}"),
        Ok(_) => panic!("a cluster node was accepted"),
    }
}

/// A server that does not answer INFO (renamed away, or an ACL user without it) opens as
/// before: the Cluster check cannot tell, so it does not refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_info_still_opens() {
    let server = RedisServer::start_with(2, false, &["--rename-command", "INFO", ""]);
    RedisBackend::open(
        &server.url(0),
        Some(&server.url(1)),
        RedisOptions::default(),
    )
    .await
    .expect("opens");
}
