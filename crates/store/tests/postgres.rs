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

/// `sslmode=require` speaks TLS and verifies the server: accepted with the server's own
/// certificate as the CA file (and the session is encrypted), refused when only the public CAs
/// are trusted. A server without TLS refuses `sslmode=require` outright.
#[tokio::test]
async fn sslmode_require_is_tls_and_verifies_the_server() {
    use afterview_store::testing::postgres_admin_value;
    let db = PostgresDb::fresh();
    let url = format!(
        "{}?sslmode=require",
        db.url().replace("@127.0.0.1:", "@localhost:")
    );
    if postgres_admin_value("SHOW ssl").as_deref() != Some("on") {
        assert!(PostgresMetadata::connect(&url).await.is_err());
        return;
    }
    let cert = postgres_admin_value("SHOW ssl_cert_file").unwrap();
    let store = PostgresMetadata::connect_with_ca(&url, Some(std::path::Path::new(&cert)))
        .await
        .expect("TLS with the server's certificate trusted");
    store.ping().await.unwrap();
    let encrypted = postgres_admin_value(&format!(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = '{}' AND a.application_name = 'afterview' AND s.ssl",
        db.name
    ))
    .unwrap();
    assert_ne!(encrypted, "0", "the store's sessions use TLS");
    drop(store);
    // Trusting only the public CAs, the machine's self-signed certificate is refused.
    let public = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    let err = match PostgresMetadata::connect_with_ca(&url, Some(public)).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an untrusted server certificate was accepted"),
    };
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// A statement the store gives up on is ended by the server too (`statement_timeout`): an
/// INSERT slowed past the limit (a trigger that sleeps 6 s) fails, and its row is not committed
/// after the caller was told it failed (the API then answered 503 for a task that would read
/// PENDING for a day). The store answers again at once, on a fresh connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_given_up_on_commits_nothing() {
    use afterview_store::TaskRecord;
    let db = PostgresDb::fresh();
    let store = PostgresMetadata::connect(&db.url()).await.unwrap();
    let (admin, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(6); RETURN NEW; END $$ LANGUAGE plpgsql;
             CREATE TRIGGER slow BEFORE INSERT ON tasks FOR EACH ROW EXECUTE FUNCTION slow();",
        )
        .await
        .unwrap();
    let rec = TaskRecord {
        id: "0b0e5b0c-6f2c-4a4e-9d8e-2f7d1c3b4a59".into(),
        owner: "u".into(),
        name: "afterview.noop".into(),
        image_ids: vec![],
        created_at: chrono::Utc::now(),
    };
    let t0 = std::time::Instant::now();
    assert!(store.insert_task(&rec).await.is_err());
    assert!(t0.elapsed() < std::time::Duration::from_millis(5_500));
    // Past the trigger's sleep: nothing was committed behind the error.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    admin
        .batch_execute("DROP TRIGGER slow ON tasks")
        .await
        .unwrap();
    assert_eq!(store.get_task("u", &rec.id).await.unwrap(), None);
    store.insert_task(&rec).await.unwrap();
    assert!(store.get_task("u", &rec.id).await.unwrap().is_some());
    drop(store);
}
