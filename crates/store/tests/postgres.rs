//! The metadata conformance suite against PostgreSQL: the server this machine runs on
//! 127.0.0.1:5432 (trust auth; `AFTERVIEW_TEST_POSTGRES` to use another), a fresh database per
//! case, created here and dropped when the case's store is dropped.

use std::sync::Arc;

use afterview_store::MetadataStore;
use afterview_store::postgres::PostgresMetadata;
use afterview_store::testing::PostgresDb;

async fn postgres() -> Arc<dyn MetadataStore> {
    let db = PostgresDb::fresh();
    let store = PostgresMetadata::connect(&db.url())
        .await
        .unwrap()
        .on_drop(move || drop(db));
    Arc::new(store)
}

afterview_store::metadata_conformance!(postgres);

#[tokio::test]
async fn migrations_run_once_and_are_idempotent() {
    let db = PostgresDb::fresh();
    // Two hosts starting together.
    let url = db.url();
    let (a, b) = tokio::join!(
        PostgresMetadata::connect(&url),
        PostgresMetadata::connect(&url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let v = a.migrate().await.unwrap();
    assert_eq!(v, b.migrate().await.unwrap());
    assert_eq!(a.schema_version().await.unwrap(), v);
    drop((a, b));
}

/// Two stores on one database are two hosts: a claim or a slot taken through one is seen by
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_slots_hold_across_hosts() {
    use afterview_store::IdempotencyClaim;
    let db = PostgresDb::fresh();
    let a = PostgresMetadata::connect(&db.url()).await.unwrap();
    let b = PostgresMetadata::connect(&db.url()).await.unwrap();
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let later = chrono::Utc::now() + chrono::Duration::minutes(5);
    assert_eq!(
        a.claim_idempotent("u", "k", "f", past).await.unwrap(),
        IdempotencyClaim::Claimed
    );
    assert_eq!(
        b.claim_idempotent("u", "k", "f", past).await.unwrap(),
        IdempotencyClaim::InProgress {
            fingerprint: "f".into()
        }
    );
    let (x, y) = tokio::join!(
        a.take_slot("u", "sync", 1, later),
        b.take_slot("u", "sync", 1, later)
    );
    assert_eq!(
        usize::from(x.unwrap().is_some()) + usize::from(y.unwrap().is_some()),
        1
    );
    drop((a, b));
}
