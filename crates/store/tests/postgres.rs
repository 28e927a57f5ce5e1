//! The metadata conformance suite against PostgreSQL: the server this machine runs on
//! 127.0.0.1:5432 (trust auth; `AFTERVIEW_TEST_POSTGRES` to use another), a fresh database per
//! case, created here and dropped when the case's store is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use afterview_store::MetadataStore;
use afterview_store::postgres::PostgresMetadata;

fn server() -> String {
    std::env::var("AFTERVIEW_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Runs one SQL statement on the maintenance database, on its own thread and runtime (so it
/// can run from a `Drop`).
fn admin(sql: String) {
    let statements: Vec<String> = sql.split("; ").map(str::to_owned).collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&format!("{}/postgres", server()), tokio_postgres::NoTls)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (trust auth) is needed for this test");
            tokio::spawn(conn);
            for st in &statements {
                // Each alone: CREATE/DROP DATABASE cannot run in a transaction block.
                c.batch_execute(st).await.unwrap();
            }
        });
    })
    .join()
    .unwrap();
}

async fn postgres() -> Arc<dyn MetadataStore> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "afterview_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    admin(format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"));
    let store = PostgresMetadata::connect(&format!("{}/{name}", server()))
        .await
        .unwrap()
        .on_drop(move || admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")));
    Arc::new(store)
}

afterview_store::metadata_conformance!(postgres);

#[tokio::test]
async fn migrations_run_once_and_are_idempotent() {
    let name = format!("afterview_test_{}_migrate", std::process::id());
    admin(format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"));
    let url = format!("{}/{name}", server());
    // Two hosts starting together.
    let (a, b) = tokio::join!(PostgresMetadata::connect(&url), PostgresMetadata::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.migrate().await.unwrap(), b.migrate().await.unwrap());
    drop((a, b));
    admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}
