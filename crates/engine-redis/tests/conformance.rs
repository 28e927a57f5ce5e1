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

/// A backend on a fresh database of the shared server, and a plain connection to it.
async fn fresh() -> (Arc<RedisBackend>, redis::Connection) {
    let server = shared();
    let db = server.fresh_db();
    (server.backend(db).await, server.connection(db))
}

/// The one entry of the schedule, decoded.
fn only_scheduled(c: &mut redis::Connection) -> serde_json::Value {
    let scheduled: Vec<String> = redis::cmd("ZRANGE")
        .arg("afterview:scheduled")
        .arg(0)
        .arg(-1)
        .query(c)
        .unwrap();
    assert_eq!(scheduled.len(), 1, "{scheduled:?}");
    serde_json::from_str(&scheduled[0]).unwrap()
}

/// Up to 10 messages of queue `q`, leased for `lease`.
async fn claim_q(
    broker: &dyn afterview_engine::Broker,
    lease: Duration,
) -> Vec<afterview_engine::backend::Delivery> {
    broker
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
        // A header key that ends in `delivery_info` (the script finds the key by that tail),
        // holding a `delivery_tag` of its own.
        (
            r#"{"body": "W10=", "headers": {"id": "t-tail", "x_delivery_info": {"delivery_tag": "d-wrong"}}, "properties": {"delivery_info": {"exchange": "", "routing_key": "q"}, "delivery_tag": "d-tail"}}"#,
            "d-tail",
            "t-tail",
        ),
    ];
    for (raw, _, _) in &envelopes {
        f.broker.publish_raw("q", raw.as_bytes()).await.unwrap();
    }
    let got = claim_q(f.broker.as_ref(), Duration::from_secs(10)).await;
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

/// The anchor the scripts keep in every lease key (a member or field longer than Redis's
/// listpack limits).
const ANCHOR: &str =
    "afterview:anchor:keeps-this-sorted-set-a-skiplist:longer-than-zset-max-listpack-value";

/// Claims keep both lease indexes (kombu's `unacked_index` and our deadlines) in Redis's
/// skiplist encoding and the lease and running hashes in its hashtable encoding, where an
/// insert or lookup costs O(log n) or O(1) instead of a scan of the whole list, and the anchor
/// that does it is invisible: not leased, not due, not restored. A message whose tag or task id
/// is spelled as the anchor is leased (under a tag of its own) and leaves the anchor as it was.
#[tokio::test]
async fn lease_keys_keep_their_fast_encodings_and_their_anchor_is_invisible() {
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
    let crafted = format!(
        r#"{{"body": "W10=", "headers": {{"id": "t-anchor"}}, "properties": {{"delivery_info": {{"exchange": "", "routing_key": "q"}}, "delivery_tag": "{ANCHOR}"}}}}"#
    );
    f.broker.publish_raw("q", crafted.as_bytes()).await.unwrap();
    // And a task id spelled as the anchor.
    let crafted_id = format!(
        r#"{{"body": "W10=", "headers": {{"id": "{ANCHOR}"}}, "properties": {{"delivery_info": {{"exchange": "", "routing_key": "q"}}, "delivery_tag": "d-anchor-id"}}}}"#
    );
    f.broker
        .publish_raw("q", crafted_id.as_bytes())
        .await
        .unwrap();
    let got = claim_q(f.broker.as_ref(), Duration::from_millis(200)).await;
    assert_eq!(got.len(), 5);
    let odd = got.iter().find(|d| d.lease.task_id == "t-anchor").unwrap();
    assert_ne!(odd.lease.delivery_tag, ANCHOR);
    let mut c = redis::Client::open(server.url(db))
        .unwrap()
        .get_connection()
        .unwrap();
    for (key, want) in [
        ("unacked_index", "skiplist"),
        ("afterview:leases", "skiplist"),
        ("afterview:lease", "hashtable"),
        ("afterview:running", "hashtable"),
    ] {
        let enc: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query(&mut c)
            .unwrap();
        assert_eq!(enc, want, "{key}");
    }
    // The anchor's value in both hashes: present and empty (no lease, no tag).
    let anchors = |c: &mut redis::Connection| -> Vec<Option<String>> {
        ["afterview:lease", "afterview:running"]
            .iter()
            .map(|key| redis::cmd("HGET").arg(*key).arg(ANCHOR).query(c).unwrap())
            .collect()
    };
    let empty = vec![Some(String::new()); 2];
    assert_eq!(anchors(&mut c), empty);
    assert!(f.broker.ack(&odd.lease).await.unwrap());
    let odd_id = got.iter().find(|d| d.lease.task_id == ANCHOR).unwrap();
    assert_eq!(odd_id.lease.delivery_tag, "d-anchor-id");
    assert!(f.broker.ack(&odd_id.lease).await.unwrap());
    assert_eq!(anchors(&mut c), empty, "after the acks");
    let stats = f.broker.queue_stats(Some(&["q".to_owned()])).await.unwrap();
    assert_eq!((stats[0].ready, stats[0].leased), (0, 3));
    // The leases run out: the three messages come back, and only they.
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.broker.requeue_expired().await.unwrap();
    let again = claim_q(f.broker.as_ref(), Duration::from_secs(10)).await;
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

/// A Celery envelope (tag `tag`, id `id`) with an extra header nested `depth` levels deep:
/// valid JSON that the worker's reader takes, past cjson's nesting limit (1000).
fn deep_envelope(tag: &str, id: &str, depth: usize) -> String {
    format!(
        r#"{{"body": "W10=", "content-type": "application/json", "content-encoding": "utf-8", "headers": {{"id": "{id}", "task": "afterview.noop", "deep": {open}1{close}}}, "properties": {{"body_encoding": "base64", "delivery_info": {{"exchange": "", "routing_key": "q"}}, "delivery_tag": "{tag}"}}}}"#,
        open = "[".repeat(depth),
        close = "]".repeat(depth),
    )
}

/// A message whose `unacked` copy cjson cannot decode is still given back when its lease runs
/// out, byte for byte, and moved to the schedule when it is early: never dropped.
#[tokio::test]
async fn a_message_cjson_cannot_decode_is_given_back_and_deferred_not_dropped() {
    use afterview_engine::Broker;
    let (b, mut c) = fresh().await;
    let raw = deep_envelope("d-deep", "t-deep", 1100);
    b.publish_raw("q", raw.as_bytes()).await.unwrap();
    let claim = |lease_ms| afterview_engine::backend::ClaimRequest {
        queues: vec!["q".into()],
        max: 10,
        lease: Duration::from_millis(lease_ms),
        worker: "w".into(),
    };
    let got = b.claim(&claim(100)).await.unwrap();
    assert_eq!(got.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.requeue_expired().await.unwrap(), 1, "restored");
    let again = b.claim(&claim(10_000)).await.unwrap();
    assert_eq!(again.len(), 1, "the message is back in its queue");
    assert_eq!(again[0].raw, raw.as_bytes(), "as it came");
    // Early: moved to the schedule, whole.
    let later = afterview_engine::time::now().timestamp_millis() + 60_000;
    assert!(b.defer(&again[0].lease, later).await.unwrap());
    let entry = only_scheduled(&mut c);
    assert_eq!(entry["m"].as_str(), Some(raw.as_str()));
    assert_eq!(entry["q"].as_str(), Some("q"));
    assert!(b.dead_letters(10).await.unwrap().is_empty());
}

/// Dead letters expire: the list lives a week after its newest entry, and entries older than
/// a week leave from its tail.
#[tokio::test]
async fn dead_letters_expire_a_week_after_the_newest() {
    use afterview_engine::Broker;
    let (b, mut c) = fresh().await;
    let old = serde_json::json!({"queue": "q", "task_id": null, "reason": "old",
        "payload": "x", "at": "2020-01-01T00:00:00Z"});
    let _: i64 = redis::cmd("RPUSH")
        .arg("afterview:dead")
        .arg(old.to_string())
        .query(&mut c)
        .unwrap();
    b.dead_letter(None, "q", b"{broken", "not JSON", None)
        .await
        .unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg("afterview:dead")
        .query(&mut c)
        .unwrap();
    assert!(
        ttl_ms > 0 && ttl_ms <= 7 * 86_400_000,
        "the list expires: {ttl_ms} ms"
    );
    let left = b.dead_letters(10).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(),
        ["not JSON"],
        "the 2020 entry is gone"
    );
}

/// A producer that reuses a delivery tag: the second message, of another task, gets a tag of
/// its own while the first holds its lease; both are leased, both can be acked, nothing is
/// orphaned in `unacked` or the task index.
#[tokio::test]
async fn a_reused_delivery_tag_does_not_take_over_the_first_messages_lease() {
    use afterview_engine::Broker;
    let (b, mut c) = fresh().await;
    let claim = || afterview_engine::backend::ClaimRequest {
        queues: vec!["q".into()],
        max: 10,
        lease: Duration::from_secs(30),
        worker: "w".into(),
    };
    let env = |id: &str| {
        format!(
            r#"{{"body": "W10=", "headers": {{"id": "{id}", "task": "afterview.noop"}}, "properties": {{"delivery_info": {{"exchange": "", "routing_key": "q"}}, "delivery_tag": "same-tag"}}}}"#
        )
    };
    b.publish_raw("q", env("t-first").as_bytes()).await.unwrap();
    let first = b.claim(&claim()).await.unwrap();
    assert_eq!(first[0].lease.delivery_tag, "same-tag");
    // Later, and twice in one batch.
    b.publish_raw("q", env("t-second").as_bytes())
        .await
        .unwrap();
    b.publish_raw("q", env("t-third").as_bytes()).await.unwrap();
    let later = b.claim(&claim()).await.unwrap();
    assert_eq!(later.len(), 2);
    for d in &later {
        assert_ne!(d.lease.delivery_tag, "same-tag", "{:?}", d.lease);
        assert_ne!(later[0].lease.delivery_tag, later[1].lease.delivery_tag);
    }
    let unacked: String = redis::cmd("HGET")
        .arg("unacked")
        .arg("same-tag")
        .query(&mut c)
        .unwrap();
    assert!(unacked.contains("t-first"), "the first keeps its entry");
    assert!(
        b.ack(&first[0].lease).await.unwrap(),
        "the first still holds its lease"
    );
    for d in &later {
        assert!(b.ack(&d.lease).await.unwrap(), "{:?}", d.lease);
    }
    let running: Vec<String> = redis::cmd("HKEYS")
        .arg("afterview:running")
        .query(&mut c)
        .unwrap();
    assert!(
        running.iter().all(|k| k == ANCHOR),
        "no task left marked running: {running:?}"
    );
}

/// Tags that mean something inside the scripts are never taken from a producer: an empty tag
/// (to the stores: "no lease") and one spelled as a held message's. Such messages are kept
/// under tags of their own, so their ack clears everything: before, the empty tag's message
/// was never acked and came back after every lease, and the other's `unacked` entry stayed
/// for the sweep to hand out again.
#[tokio::test]
async fn tags_the_scripts_use_as_markers_are_replaced() {
    use afterview_engine::Broker;
    let (b, mut c) = fresh().await;
    for tag in ["", "afterview-malformed-1"] {
        let env = format!(
            r#"{{"body": "W10=", "headers": {{"id": "t-marker", "task": "afterview.noop"}}, "properties": {{"delivery_info": {{"exchange": "", "routing_key": "q"}}, "delivery_tag": "{tag}"}}}}"#
        );
        b.publish_raw("q", env.as_bytes()).await.unwrap();
        let got = claim_q(b.as_ref(), Duration::from_secs(30)).await;
        assert_eq!(got.len(), 1);
        let own = &got[0].lease.delivery_tag;
        assert!(!own.is_empty() && own != tag, "{tag:?} kept: {own:?}");
        assert!(b.ack(&got[0].lease).await.unwrap(), "{tag:?}");
        let unacked: Vec<String> = redis::cmd("HKEYS").arg("unacked").query(&mut c).unwrap();
        let held: u64 = redis::cmd("HLEN")
            .arg("afterview:held")
            .query(&mut c)
            .unwrap();
        assert!(
            unacked.iter().all(|k| k == ANCHOR) && held == 0,
            "{tag:?}: left {unacked:?}, {held} held"
        );
        assert_eq!(b.requeue_expired().await.unwrap(), 0, "{tag:?}");
    }
}

/// A message kept under a tag of its own (no `delivery_info`) whose ETA is ahead goes to the
/// schedule like any other, instead of holding the worker's prefetch slot until its ETA.
#[tokio::test]
async fn a_held_message_with_a_later_eta_is_deferred() {
    use afterview_engine::Broker;
    let (b, mut c) = fresh().await;
    // Two held messages: one from the plain list, one from priority 9's bucket (as kombu
    // names it: the queue, `\x06\x16`, the bucket), which goes back to the schedule with
    // its queue and priority apart.
    for (list, priority) in [("q", 0), ("q\x06\x169", 9)] {
        let env = format!(
            r#"{{"body": "W10=", "headers": {{"id": "t-held-{priority}", "task": "afterview.noop", "eta": "2099-01-01T00:00:00+00:00"}}, "properties": {{"delivery_tag": "d-held"}}}}"#
        );
        let _: i64 = redis::cmd("LPUSH")
            .arg(list)
            .arg(&env)
            .query(&mut c)
            .unwrap();
        let got = claim_q(b.as_ref(), Duration::from_secs(30)).await;
        assert_eq!(got.len(), 1);
        let tag = &got[0].lease.delivery_tag;
        assert!(tag.starts_with("afterview-malformed-"), "{tag}");
        let run_at = 4_070_908_800_000;
        assert!(b.defer(&got[0].lease, run_at).await.unwrap(), "deferred");
        let entry = only_scheduled(&mut c);
        assert_eq!(entry["q"], "q", "{entry}");
        assert_eq!(entry["p"], priority, "{entry}");
        assert_eq!(entry["m"], env, "{entry}");
        let held: u64 = redis::cmd("HLEN")
            .arg("afterview:held")
            .query(&mut c)
            .unwrap();
        assert_eq!(held, 0, "no longer held");
        let _: i64 = redis::cmd("DEL")
            .arg("afterview:scheduled")
            .query(&mut c)
            .unwrap();
    }
}

/// A revoke heard again (the pidbox broadcast that follows a client's revoke reaches every
/// worker, which records it with the pidbox's one-day keep) never shortens the tombstone: a
/// task revoked for a week stays revoked for a week.
#[tokio::test]
async fn a_repeated_revoke_never_shortens_the_tombstone() {
    use afterview_engine::Broker;
    const DAY: Duration = Duration::from_secs(86_400);
    let (b, mut c) = fresh().await;
    let ttl = |c: &mut redis::Connection, id: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(format!("afterview:revoked:{id}"))
            .query(c)
            .unwrap()
    };
    b.revoke("t", false, 7 * DAY).await.unwrap();
    b.revoke("t", false, DAY).await.unwrap();
    assert!(ttl(&mut c, "t") > 6 * 86_400_000, "{} ms", ttl(&mut c, "t"));
    // Upgraded to terminate by a shorter-lived revoke: still a week.
    b.revoke("t", true, DAY).await.unwrap();
    assert!(ttl(&mut c, "t") > 6 * 86_400_000, "{} ms", ttl(&mut c, "t"));
    // A longer keep does lengthen it.
    b.revoke("u", false, DAY).await.unwrap();
    b.revoke("u", false, 7 * DAY).await.unwrap();
    assert!(ttl(&mut c, "u") > 6 * 86_400_000, "{} ms", ttl(&mut c, "u"));
}

/// A caller that gives up on `workers()` mid-wait (a monitor page closed) leaves no reply
/// binding behind: the set every control reply scans does not grow.
#[tokio::test]
async fn an_abandoned_broadcast_leaves_no_reply_binding() {
    use afterview_engine::Broker;
    let (b, mut c) = fresh().await;
    let members = |c: &mut redis::Connection| -> i64 {
        redis::cmd("SCARD")
            .arg("_kombu.binding.reply.celery.pidbox")
            .query(c)
            .unwrap()
    };
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(
            Duration::from_millis(150),
            b.workers(Duration::from_secs(5)),
        )
        .await;
        assert!(gave_up.is_err(), "the wait was cut short");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while members(&mut c) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(members(&mut c), 0);
}

/// A Redis that lost its last writes (AOF `everysec` after a crash, a failover) rolls the
/// revocation counter back; the next revocation still lands after every reader's cursor.
#[tokio::test]
async fn revocations_after_a_rolled_back_log_are_still_read() {
    use afterview_engine::Broker;
    const DAY: Duration = Duration::from_secs(86_400);
    let (b, mut c) = fresh().await;
    let (_, start) = b.revocations_since(u64::MAX).await.unwrap();
    b.revoke("a", false, DAY).await.unwrap();
    let (_, after_a) = b.revocations_since(start).await.unwrap();
    b.revoke("b", false, DAY).await.unwrap();
    let (read, cursor) = b.revocations_since(after_a).await.unwrap();
    assert_eq!(read.len(), 1);
    // "b" is lost: the log and the counter are as they were after "a".
    let _: () = redis::cmd("XDEL")
        .arg("afterview:revocations")
        .arg(format!("{cursor}-0"))
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("afterview:revocation-seq")
        .arg(after_a)
        .query(&mut c)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.revoke("c", true, DAY).await.unwrap();
    let (read, _) = b.revocations_since(cursor).await.unwrap();
    assert_eq!(
        read.iter().map(|r| r.task_id.as_str()).collect::<Vec<_>>(),
        ["c"],
        "the revocation after the loss reaches a reader past the lost one"
    );
}

/// A Python worker that died holding messages routed through a named exchange: the sweep
/// gives each back to the queue its binding names (as kombu's `restore_visible` does through
/// `_kombu.binding.<exchange>`), not to a list named after the routing key.
#[tokio::test]
async fn foreign_unacked_messages_go_back_to_their_bound_queue() {
    use afterview_engine::Broker;
    let (b, mut c) = fresh().await;
    let old = (chrono::Utc::now().timestamp() - 7_200) as f64;
    let env = |id: &str| {
        afterview_engine::TaskMessage::new(
            "t",
            vec![],
            serde_json::Map::new(),
            "x",
            afterview_engine::SendOptions {
                task_id: Some(id.into()),
                ..Default::default()
            },
        )
        .unwrap()
        .to_envelope()
    };
    let sep = "\u{6}\u{16}";
    for (tag, exchange, rk, member) in [
        (
            "py-direct",
            "tasks",
            "task.default",
            format!("task.default{sep}{sep}default"),
        ),
        (
            "py-topic",
            "media",
            "video.compress.hd",
            format!("video.#{sep}{sep}videos"),
        ),
        (
            "py-unbound",
            "other",
            "plain",
            format!("nothing{sep}{sep}elsewhere"),
        ),
    ] {
        let _: () = redis::cmd("SADD")
            .arg(format!("_kombu.binding.{exchange}"))
            .arg(member)
            .query(&mut c)
            .unwrap();
        let entry = format!("[{}, \"{exchange}\", \"{rk}\"]", env(tag));
        let _: () = redis::cmd("HSET")
            .arg("unacked")
            .arg(tag)
            .arg(entry)
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("ZADD")
            .arg("unacked_index")
            .arg(old)
            .arg(tag)
            .query(&mut c)
            .unwrap();
    }
    assert_eq!(b.requeue_expired().await.unwrap(), 3);
    let len =
        |c: &mut redis::Connection, q: &str| -> i64 { redis::cmd("LLEN").arg(q).query(c).unwrap() };
    assert_eq!(len(&mut c, "default"), 1, "the direct binding's queue");
    assert_eq!(len(&mut c, "videos"), 1, "the topic binding's queue");
    assert_eq!(
        len(&mut c, "plain"),
        1,
        "no binding matches: the routing key"
    );
    assert_eq!(
        len(&mut c, "task.default") + len(&mut c, "video.compress.hd"),
        0
    );
}
