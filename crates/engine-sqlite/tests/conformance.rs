//! The conformance suite against the SQLite backend, each case on a fresh file.

use std::sync::Arc;
use std::time::Duration;

use afterview_engine::testsuite::{Fixture, Reopen};
use afterview_engine_sqlite::{SqliteBackend, SqliteOptions};

async fn sqlite(result_expires: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("afterview.db");
    // The directory lives as long as the test process; each case gets its own.
    std::mem::forget(dir);
    let opts = SqliteOptions {
        result_expires,
        ..SqliteOptions::default()
    };
    let reopen: Reopen = {
        let (path, opts) = (path.clone(), opts.clone());
        Arc::new(move || {
            let (path, opts) = (path.clone(), opts.clone());
            Box::pin(async move { fixture(&path, opts, None) })
        })
    };
    fixture(&path, opts, Some(reopen))
}

fn fixture(path: &std::path::Path, opts: SqliteOptions, reopen: Option<Reopen>) -> Fixture {
    let b = Arc::new(SqliteBackend::open(path, opts).unwrap());
    Fixture {
        broker: b.clone(),
        backend: b,
        reopen,
    }
}

afterview_engine::broker_conformance!(sqlite);

mod durable {
    use super::sqlite;
    afterview_engine::broker_conformance!(durable sqlite);
}
