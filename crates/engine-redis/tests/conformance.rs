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

/// Up to 10 messages of queue `q`, leased for `lease`.
async fn claim_q(f: &Fixture, lease: Duration) -> Vec<afterview_engine::backend::Delivery> {
    f.broker
        .claim(&afterview_engine::backend::ClaimRequest {
            queues: vec!["q".into()],
            max: 10,
            lease,
            worker: "w".into(),
        })
        .await
        .unwrap()
}

/// The claim script reads a message's delivery tag and task id as text when it can, and
/// decodes the JSON when it cannot: both ways give what a JSON parser reads.
#[tokio::test]
async fn claims_read_tag_and_id_as_a_json_parser_does() {
    let f = fixture(Duration::from_secs(60)).await;
    let envelopes = [
        // kombu's spacing; a header string before `id` that quotes `"id": "x"` (escaped).
        (
            r#"{"body": "W10=", "headers": {"argsrepr": "{\"id\": \"evil\"}", "id": "t-kombu"}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q"}, "delivery_tag": "d-kombu"}}"#,
            "d-kombu",
            "t-kombu",
        ),
        // serde_json's compact form.
        (
            r#"{"body":"W10=","headers":{"id":"t-compact"},"properties":{"delivery_info":{"exchange":"","routing_key":"q"},"delivery_tag":"d-compact"}}"#,
            "d-compact",
            "t-compact",
        ),
        // An escaped quote in the id: decoded, not read as text.
        (
            r#"{"body": "W10=", "headers": {"id": "t-\"q\""}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q"}, "delivery_tag": "d-escaped"}}"#,
            "d-escaped",
            "t-\"q\"",
        ),
        // No header id.
        (
            r#"{"body": "W10=", "headers": {}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q"}, "delivery_tag": "d-noid"}}"#,
            "d-noid",
            "",
        ),
    ];
    for (raw, _, _) in &envelopes {
        f.broker.publish_raw("q", raw.as_bytes()).await.unwrap();
    }
    let got = claim_q(&f, Duration::from_secs(10)).await;
    let mut read: Vec<(String, String)> = got
        .iter()
        .map(|d| (d.lease.delivery_tag.clone(), d.lease.task_id.clone()))
        .collect();
    read.sort();
    let mut want: Vec<(String, String)> = envelopes
        .iter()
        .map(|(_, tag, id)| (tag.to_string(), id.to_string()))
        .collect();
    want.sort();
    assert_eq!(read, want);
    for d in &got {
        assert!(f.broker.ack(&d.lease).await.unwrap(), "each lease is held");
    }
}

/// Claims keep both lease indexes (kombu's `unacked_index` and our deadlines) in Redis's
/// skiplist encoding, where an insert costs O(log n) instead of a scan of the whole list, and
/// the anchor that does it is invisible: not leased, not due, not restored.
#[tokio::test]
async fn lease_indexes_stay_skiplists_and_their_anchor_is_invisible() {
    use afterview_engine_redis::testing::redis;
    let server = shared();
    let db = server.fresh_db();
    let f = open(server.url(db), Duration::from_secs(60)).await;
    for i in 0..3 {
        let raw = format!(
            r#"{{"body": "W10=", "headers": {{"id": "t{i}"}}, "properties": {{"delivery_info": {{"exchange": "", "routing_key": "q"}}, "delivery_tag": "d{i}"}}}}"#
        );
        f.broker.publish_raw("q", raw.as_bytes()).await.unwrap();
    }
    let got = claim_q(&f, Duration::from_millis(200)).await;
    assert_eq!(got.len(), 3);
    let mut c = redis::Client::open(server.url(db))
        .unwrap()
        .get_connection()
        .unwrap();
    for key in ["unacked_index", "afterview:leases"] {
        let enc: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query(&mut c)
            .unwrap();
        assert_eq!(enc, "skiplist", "{key}");
    }
    let stats = f.broker.queue_stats(Some(&["q".to_owned()])).await.unwrap();
    assert_eq!((stats[0].ready, stats[0].leased), (0, 3));
    // The leases run out: the three messages come back, and only they.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.broker.requeue_expired().await.unwrap();
    let again = claim_q(&f, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 3);
    for d in &again {
        assert!(f.broker.ack(&d.lease).await.unwrap());
    }
    let stats = f.broker.queue_stats(Some(&["q".to_owned()])).await.unwrap();
    assert_eq!((stats[0].ready, stats[0].leased), (0, 0));
}

/// Leased counts read kombu's `unacked` entries (ours and a Python worker's) by their routing
/// key: as text when it is plain, decoded when it is not (an escaped quote, a long name), and
/// not at all when the entry names no queue. Every entry is read once, for all queues asked.
#[tokio::test]
async fn leased_counts_read_the_routing_key_of_every_unacked_shape() {
    use afterview_engine_redis::testing::redis;
    let server = shared();
    let db = server.fresh_db();
    let f = open(server.url(db), Duration::from_secs(60)).await;
    let long = "l".repeat(100);
    let env = r#"{"body": "W10=", "headers": {"id": "x"}, "properties": {"delivery_tag": "t"}}"#;
    let entries = [
        format!(r#"[{env}, "", "plain"]"#),
        format!(r#"[{env}, "celery", "plain"]"#),
        format!(r#"[{env},"","plain"]"#),
        // `q"x`: the text after the escaped quote is `x`, which must not be counted.
        format!(r#"[{env}, "", "q\"x"]"#),
        format!(r#"[{env}, "", "{long}"]"#),
        format!(r#"[{env}, "", null]"#),
        // Not kombu's three elements: decoded, the third counts.
        format!(r#"[{env}, "", "third", 5]"#),
        "not json".to_owned(),
    ];
    let mut c = redis::Client::open(server.url(db))
        .unwrap()
        .get_connection()
        .unwrap();
    for (i, e) in entries.iter().enumerate() {
        let _: () = redis::cmd("HSET")
            .arg("unacked")
            .arg(format!("tag-{i}"))
            .arg(e)
            .query(&mut c)
            .unwrap();
    }
    let asked: Vec<String> = ["plain", "q\"x", "x", long.as_str(), "third", "none"]
        .iter()
        .map(|q| q.to_string())
        .collect();
    let stats = f.broker.queue_stats(Some(&asked)).await.unwrap();
    let leased: Vec<(String, u64)> = stats.into_iter().map(|s| (s.queue, s.leased)).collect();
    let want: Vec<(String, u64)> = asked.iter().cloned().zip([3, 1, 0, 1, 1, 0]).collect();
    assert_eq!(leased, want);
}
