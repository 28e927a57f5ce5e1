//! Conformance suites: [`metadata_conformance!`](crate::metadata_conformance) for
//! [`MetadataStore`] implementations and [`blob_conformance!`](crate::blob_conformance) for
//! [`BlobStore`] ones. A factory returns a fresh, empty store.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{Duration, Utc};
use serde_json::json;

use crate::{
    BlobStore, EngineKind, ExportFormat, ExportKind, ExportRecord, IdempotencyClaim,
    IdempotentResponse, ImageRecord, MetadataStore, StoreError, TaskRecord, VisualizationKind,
    VisualizationRecord, image_key, visualization_key,
};

/// Instantiates the metadata suite.
#[macro_export]
macro_rules! metadata_conformance {
    ($factory:path) => {
        $crate::metadata_conformance!(@cases $factory;
            images_are_owner_scoped,
            lists_are_newest_first_and_limited,
            deleting_an_image_cascades,
            visualizations_and_exports_round_trip,
            tasks_record_ownership,
            finished_tasks_leave_the_open_list,
            single_deletes_are_owner_scoped,
            ids_no_record_can_have_are_not_found,
            idempotency_keeps_the_first_answer,
            idempotency_claims_are_exclusive,
            slots_cap_holders_everywhere,
            duplicate_ids_conflict,
            cleanup_expires_old_records,
        );
    };
    (@cases $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testsuite::$name($factory().await).await;
            }
        )*
    };
}

/// Instantiates the blob suite.
#[macro_export]
macro_rules! blob_conformance {
    ($factory:path) => {
        $crate::blob_conformance!(@cases $factory; blobs_round_trip, blob_keys_are_checked);
    };
    (@cases $factory:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testsuite::$name($factory().await).await;
            }
        )*
    };
}

fn image(owner: &str, id: &str, age_s: i64) -> ImageRecord {
    ImageRecord {
        id: id.into(),
        owner: owner.into(),
        blob_key: image_key(id),
        width: 640,
        height: 480,
        bytes: 1234,
        source_format: "jpeg".into(),
        created_at: Utc::now() - Duration::seconds(age_s),
    }
}

fn viz(owner: &str, id: &str, image_id: &str) -> VisualizationRecord {
    VisualizationRecord {
        id: id.into(),
        owner: owner.into(),
        image_id: image_id.into(),
        kind: VisualizationKind::Single,
        procedure_ids: vec!["rhinoplasty".into()],
        engine: EngineKind::Local,
        blob_key: visualization_key(id),
        result: json!({"id": id, "after_image_url": "/x"}),
        task_id: Some(format!("task-{id}")),
        created_at: Utc::now(),
    }
}

fn export(owner: &str, id: &str, image_ids: &[&str]) -> ExportRecord {
    ExportRecord {
        id: id.into(),
        owner: owner.into(),
        kind: ExportKind::Report,
        format: ExportFormat::Pdf,
        blob_key: format!("exports/{id}.pdf"),
        size: 99,
        image_ids: image_ids.iter().map(|s| (*s).to_owned()).collect(),
        result: json!({"id": id}),
        task_id: None,
        created_at: Utc::now(),
    }
}

/// Someone else's id reads exactly like a missing one.
pub async fn images_are_owner_scoped(s: Arc<dyn MetadataStore>) {
    s.insert_image(&image("alice", "i1", 0)).await.unwrap();
    let got = s.get_image("alice", "i1").await.unwrap().unwrap();
    assert_eq!(got.width, 640);
    assert_eq!(
        got.created_at.timestamp_micros(),
        got.created_at.timestamp_micros()
    );
    assert!(s.get_image("bob", "i1").await.unwrap().is_none());
    assert!(s.get_image("alice", "nope").await.unwrap().is_none());
    assert!(s.list_images("bob", 10).await.unwrap().is_empty());
    assert!(
        s.delete_image("bob", "i1").await.unwrap().is_none(),
        "bob cannot delete alice's image"
    );
    assert!(s.get_image("alice", "i1").await.unwrap().is_some());
}

/// Lists are the owner's, newest first, bounded.
pub async fn lists_are_newest_first_and_limited(s: Arc<dyn MetadataStore>) {
    for (i, age) in [("old", 30), ("new", 1), ("mid", 10)] {
        s.insert_image(&image("alice", i, age)).await.unwrap();
    }
    s.insert_image(&image("bob", "bobs", 0)).await.unwrap();
    let ids: Vec<String> = s
        .list_images("alice", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["new", "mid", "old"]);
    assert_eq!(s.list_images("alice", 2).await.unwrap().len(), 2);
}

/// Deleting an image removes its visualizations and the exports made from it.
pub async fn deleting_an_image_cascades(s: Arc<dyn MetadataStore>) {
    s.insert_image(&image("alice", "i1", 0)).await.unwrap();
    s.insert_image(&image("alice", "i2", 0)).await.unwrap();
    s.insert_visualization(&viz("alice", "v1", "i1"))
        .await
        .unwrap();
    s.insert_visualization(&viz("alice", "v2", "i2"))
        .await
        .unwrap();
    s.insert_export(&export("alice", "e1", &["i1"]))
        .await
        .unwrap();
    s.insert_export(&export("alice", "e2", &["i2"]))
        .await
        .unwrap();
    let d = s.delete_image("alice", "i1").await.unwrap().unwrap();
    assert_eq!((d.visualizations, d.exports), (1, 1));
    let mut keys = d.blob_keys.clone();
    keys.sort();
    assert_eq!(
        keys,
        ["exports/e1.pdf", "images/i1.png", "visualizations/v1.png"]
    );
    assert!(s.get_image("alice", "i1").await.unwrap().is_none());
    assert!(s.get_visualization("alice", "v1").await.unwrap().is_none());
    assert!(s.get_export("alice", "e1").await.unwrap().is_none());
    assert!(
        s.get_visualization("alice", "v2").await.unwrap().is_some(),
        "other images' work stays"
    );
    assert!(s.get_export("alice", "e2").await.unwrap().is_some());
    assert!(
        s.delete_image("alice", "i1").await.unwrap().is_none(),
        "a second delete finds nothing"
    );
}

/// Visualizations and exports keep every field.
pub async fn visualizations_and_exports_round_trip(s: Arc<dyn MetadataStore>) {
    let v = viz("alice", "v1", "i1");
    s.insert_visualization(&v).await.unwrap();
    let got = s.get_visualization("alice", "v1").await.unwrap().unwrap();
    assert_eq!(
        (got.procedure_ids, got.result, got.task_id),
        (v.procedure_ids, v.result, v.task_id)
    );
    assert!(s.get_visualization("bob", "v1").await.unwrap().is_none());
    assert_eq!(s.list_visualizations("alice", 5).await.unwrap().len(), 1);
    let e = export("alice", "e1", &["i1", "i2"]);
    s.insert_export(&e).await.unwrap();
    let got = s.get_export("alice", "e1").await.unwrap().unwrap();
    assert_eq!(
        (got.image_ids, got.size, got.format),
        (e.image_ids, 99, ExportFormat::Pdf)
    );
    assert!(s.get_export("bob", "e1").await.unwrap().is_none());
    assert_eq!(s.list_exports("alice", 5).await.unwrap().len(), 1);
}

/// Tasks remember their owner.
/// The open list (what the per-user limit counts): the owner's tasks sent after a time and not
/// marked finished, newest first; marking is owner-scoped and skips unknown ids.
pub async fn finished_tasks_leave_the_open_list(s: Arc<dyn MetadataStore>) {
    let start = Utc::now();
    let task = |id: &str, owner: &str, secs: i64| TaskRecord {
        id: id.into(),
        owner: owner.into(),
        name: "afterview.noop".into(),
        image_ids: vec![],
        created_at: start + Duration::seconds(secs),
    };
    for t in [
        task("old", "alice", -3600),
        task("a1", "alice", 1),
        task("a2", "alice", 2),
        task("a3", "alice", 3),
        task("b1", "bob", 4),
    ] {
        s.insert_task(&t).await.unwrap();
    }
    let open = |owner: &'static str, limit: u32| {
        let s = s.clone();
        async move {
            s.list_open_tasks(owner, start - Duration::seconds(60), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        open("alice", 10).await,
        ["a3", "a2", "a1"],
        "newest first, since"
    );
    assert_eq!(open("alice", 2).await, ["a3", "a2"]);
    s.mark_tasks_finished("alice", &["a3".into(), "a2".into(), "nope".into()])
        .await
        .unwrap();
    s.mark_tasks_finished("bob", &["a1".into()]).await.unwrap();
    s.mark_tasks_finished("alice", &[]).await.unwrap();
    assert_eq!(open("alice", 2).await, ["a1"], "bob cannot mark alice's");
    assert_eq!(open("bob", 10).await, ["b1"]);
    assert_eq!(
        s.list_tasks("alice", 10).await.unwrap().len(),
        4,
        "finished tasks are still listed"
    );
}

pub async fn tasks_record_ownership(s: Arc<dyn MetadataStore>) {
    let t = TaskRecord {
        id: "t1".into(),
        owner: "alice".into(),
        name: "afterview.noop".into(),
        image_ids: vec!["i1".into(), "i2".into()],
        created_at: Utc::now(),
    };
    s.insert_task(&t).await.unwrap();
    let got = s.get_task("alice", "t1").await.unwrap().unwrap();
    assert_eq!(
        (got.name.as_str(), got.image_ids),
        ("afterview.noop", t.image_ids.clone())
    );
    assert!(s.get_task("bob", "t1").await.unwrap().is_none());
    assert_eq!(s.list_tasks("alice", 10).await.unwrap().len(), 1);
    // The tasks working on a photo, for its owner only.
    assert_eq!(
        s.tasks_for_image("alice", "i2").await.unwrap(),
        vec!["t1".to_owned()]
    );
    assert!(s.tasks_for_image("alice", "i3").await.unwrap().is_empty());
    assert!(s.tasks_for_image("bob", "i1").await.unwrap().is_empty());
    // Everyone's, newest first, for the operators' monitor.
    s.insert_task(&TaskRecord {
        id: "t2".into(),
        owner: "bob".into(),
        created_at: Utc::now() + Duration::seconds(1),
        ..t.clone()
    })
    .await
    .unwrap();
    let recent: Vec<String> = s
        .recent_tasks(10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(recent, ["t2", "t1"]);
    assert_eq!(s.recent_tasks(1).await.unwrap().len(), 1);
    // A task the broker refused is forgotten, by its owner only.
    assert!(!s.delete_task("alice", "t2").await.unwrap(), "bob's");
    assert!(s.delete_task("alice", "t1").await.unwrap());
    assert!(s.get_task("alice", "t1").await.unwrap().is_none());
    assert!(s.tasks_for_image("alice", "i1").await.unwrap().is_empty());
    assert!(!s.delete_task("alice", "t1").await.unwrap(), "already gone");
    assert!(s.get_task("bob", "t2").await.unwrap().is_some());
}

/// Visualizations and exports are deleted one by one, by their owner only.
pub async fn single_deletes_are_owner_scoped(s: Arc<dyn MetadataStore>) {
    s.insert_image(&image("alice", "i1", 0)).await.unwrap();
    s.insert_visualization(&viz("alice", "v1", "i1"))
        .await
        .unwrap();
    s.insert_export(&export("alice", "e1", &["i1"]))
        .await
        .unwrap();
    assert!(s.delete_visualization("bob", "v1").await.unwrap().is_none());
    assert!(s.delete_export("bob", "e1").await.unwrap().is_none());
    let key = s
        .delete_visualization("alice", "v1")
        .await
        .unwrap()
        .unwrap();
    assert!(key.starts_with("visualizations/"), "{key}");
    assert!(s.get_visualization("alice", "v1").await.unwrap().is_none());
    assert!(
        s.delete_visualization("alice", "v1")
            .await
            .unwrap()
            .is_none()
    );
    let key = s.delete_export("alice", "e1").await.unwrap().unwrap();
    assert!(key.starts_with("exports/"), "{key}");
    assert!(s.get_export("alice", "e1").await.unwrap().is_none());
    assert!(
        s.get_image("alice", "i1").await.unwrap().is_some(),
        "the photo stays"
    );
}

/// Ids no record can have (a NUL, which a URL's `%00` or a JSON `\u0000` delivers, and which
/// PostgreSQL's text refuses with an error) are simply not found, on every backend.
pub async fn ids_no_record_can_have_are_not_found(s: Arc<dyn MetadataStore>) {
    s.insert_image(&image("alice", "i1", 0)).await.unwrap();
    for id in ["\0", "i1\0", "a\0b"] {
        assert!(s.get_image("alice", id).await.unwrap().is_none(), "{id:?}");
        assert!(s.delete_image("alice", id).await.unwrap().is_none());
        assert!(s.get_visualization("alice", id).await.unwrap().is_none());
        assert!(s.delete_visualization("alice", id).await.unwrap().is_none());
        assert!(s.get_export("alice", id).await.unwrap().is_none());
        assert!(s.delete_export("alice", id).await.unwrap().is_none());
        assert!(s.get_task("alice", id).await.unwrap().is_none());
        assert!(!s.delete_task("alice", id).await.unwrap());
        assert!(s.tasks_for_image("alice", id).await.unwrap().is_empty());
    }
    assert!(s.get_image("alice", "i1").await.unwrap().is_some());
}

/// The first answer for a key wins; keys are per owner.
pub async fn idempotency_keeps_the_first_answer(s: Arc<dyn MetadataStore>) {
    let first = IdempotentResponse {
        fingerprint: "f1".into(),
        status: 202,
        body: json!({"task_id": "a"}),
        created_at: Utc::now(),
    };
    let second = IdempotentResponse {
        body: json!({"task_id": "b"}),
        ..first.clone()
    };
    assert!(s.put_idempotent("alice", "k", &first).await.unwrap());
    assert!(!s.put_idempotent("alice", "k", &second).await.unwrap());
    assert_eq!(
        s.get_idempotent("alice", "k").await.unwrap().unwrap().body,
        json!({"task_id": "a"})
    );
    assert!(s.get_idempotent("bob", "k").await.unwrap().is_none());
}

/// Of concurrent claimers of a key exactly one wins; the others see it in progress, then
/// its answer; a released claim can be taken again, a stale one is taken over.
pub async fn idempotency_claims_are_exclusive(s: Arc<dyn MetadataStore>) {
    let far_past = Utc::now() - Duration::hours(1);
    let claims = futures_join(
        (0..8)
            .map(|_| {
                let s = s.clone();
                async move {
                    s.claim_idempotent("alice", "k", "f1", far_past)
                        .await
                        .unwrap()
                }
            })
            .collect(),
    )
    .await;
    let won = claims
        .iter()
        .filter(|c| **c == IdempotencyClaim::Claimed)
        .count();
    assert_eq!(won, 1, "{claims:?}");
    assert!(claims.iter().all(|c| *c == IdempotencyClaim::Claimed
        || *c
            == IdempotencyClaim::InProgress {
                fingerprint: "f1".into()
            }));
    // Claims are not answers, and are per owner.
    assert!(s.get_idempotent("alice", "k").await.unwrap().is_none());
    assert_eq!(
        s.claim_idempotent("bob", "k", "f9", far_past)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    );
    // The answer replaces the claim; later claimers get it.
    let answer = IdempotentResponse {
        fingerprint: "f1".into(),
        status: 202,
        body: json!({"task_id": "t"}),
        created_at: Utc::now(),
    };
    assert!(s.put_idempotent("alice", "k", &answer).await.unwrap());
    match s
        .claim_idempotent("alice", "k", "f1", Utc::now())
        .await
        .unwrap()
    {
        IdempotencyClaim::Answered(a) => assert_eq!(a.body, answer.body),
        other => panic!("{other:?}"),
    }
    // Releasing an answer does nothing; releasing a claim frees the key.
    s.release_idempotent("alice", "k").await.unwrap();
    assert!(s.get_idempotent("alice", "k").await.unwrap().is_some());
    s.release_idempotent("bob", "k").await.unwrap();
    assert_eq!(
        s.claim_idempotent("bob", "k", "f2", far_past)
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    );
    // A claim older than `stale_before` is taken over; a fresh one is not.
    assert_eq!(
        s.claim_idempotent("bob", "k", "f3", far_past)
            .await
            .unwrap(),
        IdempotencyClaim::InProgress {
            fingerprint: "f2".into()
        }
    );
    assert_eq!(
        s.claim_idempotent("bob", "k", "f3", Utc::now() + Duration::seconds(5))
            .await
            .unwrap(),
        IdempotencyClaim::Claimed
    );
}

/// At most `cap` slots per owner and kind, even when many ask at once; released and expired
/// slots are free again.
pub async fn slots_cap_holders_everywhere(s: Arc<dyn MetadataStore>) {
    let later = Utc::now() + Duration::minutes(5);
    let taken = futures_join(
        (0..10)
            .map(|_| {
                let s = s.clone();
                async move { s.take_slot("alice", "sync", 3, later).await.unwrap() }
            })
            .collect(),
    )
    .await;
    let held: Vec<String> = taken.into_iter().flatten().collect();
    assert_eq!(held.len(), 3);
    assert!(
        s.take_slot("alice", "sync", 3, later)
            .await
            .unwrap()
            .is_none()
    );
    // Per owner and per kind.
    assert!(
        s.take_slot("bob", "sync", 3, later)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        s.take_slot("alice", "other", 1, later)
            .await
            .unwrap()
            .is_some()
    );
    s.release_slot(&held[0]).await.unwrap();
    let again = s.take_slot("alice", "sync", 3, later).await.unwrap();
    assert!(again.is_some());
    assert!(
        s.take_slot("alice", "sync", 3, later)
            .await
            .unwrap()
            .is_none()
    );
    // A crashed holder's slot expires.
    let soon = Utc::now() + Duration::milliseconds(300);
    assert!(
        s.take_slot("carol", "sync", 1, soon)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        s.take_slot("carol", "sync", 1, later)
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert!(
        s.take_slot("carol", "sync", 1, later)
            .await
            .unwrap()
            .is_some()
    );
}

/// Runs the futures concurrently, each on its own task.
async fn futures_join<T: Send + 'static>(
    fs: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// Ids are unique.
pub async fn duplicate_ids_conflict(s: Arc<dyn MetadataStore>) {
    s.insert_image(&image("alice", "i1", 0)).await.unwrap();
    assert!(matches!(
        s.insert_image(&image("bob", "i1", 0)).await,
        Err(StoreError::Conflict(_))
    ));
}

/// Old idempotency and task records are removed.
pub async fn cleanup_expires_old_records(s: Arc<dyn MetadataStore>) {
    let old = Utc::now() - Duration::days(3);
    let r = IdempotentResponse {
        fingerprint: "f".into(),
        status: 200,
        body: json!(1),
        created_at: old,
    };
    s.put_idempotent("alice", "old", &r).await.unwrap();
    s.put_idempotent(
        "alice",
        "new",
        &IdempotentResponse {
            created_at: Utc::now(),
            ..r
        },
    )
    .await
    .unwrap();
    s.insert_task(&TaskRecord {
        id: "t-old".into(),
        owner: "alice".into(),
        name: "n".into(),
        image_ids: vec![],
        created_at: old,
    })
    .await
    .unwrap();
    let n = s.cleanup(Utc::now() - Duration::days(1)).await.unwrap();
    assert_eq!(n, 2);
    assert!(s.get_idempotent("alice", "old").await.unwrap().is_none());
    assert!(s.get_idempotent("alice", "new").await.unwrap().is_some());
    s.ping().await.unwrap();
    assert!(s.schema_version().await.unwrap() >= 1);
}

/// Put, get, replace, delete.
pub async fn blobs_round_trip(b: Arc<dyn BlobStore>) {
    assert!(b.get("images/x.png").await.unwrap().is_none());
    b.put("images/x.png", Bytes::from_static(b"one"))
        .await
        .unwrap();
    assert_eq!(
        b.get("images/x.png").await.unwrap().unwrap(),
        Bytes::from_static(b"one")
    );
    b.put("images/x.png", Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(
        b.get("images/x.png").await.unwrap().unwrap(),
        Bytes::from_static(b"two")
    );
    let big = Bytes::from(vec![7u8; 3 << 20]);
    b.put("exports/big.pdf", big.clone()).await.unwrap();
    assert_eq!(b.get("exports/big.pdf").await.unwrap().unwrap(), big);
    b.delete("images/x.png").await.unwrap();
    b.delete("images/x.png").await.unwrap();
    assert!(b.get("images/x.png").await.unwrap().is_none());
    b.ping().await.unwrap();
}

/// Keys cannot escape the store.
pub async fn blob_keys_are_checked(b: Arc<dyn BlobStore>) {
    for bad in ["", "../etc/passwd", "/abs", "a/../../b"] {
        assert!(
            b.put(bad, Bytes::from_static(b"x")).await.is_err(),
            "{bad:?}"
        );
    }
}
