//! The storage conformance suites against the embedded implementations.

use std::sync::Arc;

use afterview_store::sqlite::SqliteMetadata;
use afterview_store::{BlobStore, MetadataStore, ObjectBlobStore};

fn tmp() -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().to_path_buf();
    std::mem::forget(dir);
    p
}

async fn sqlite() -> Arc<dyn MetadataStore> {
    Arc::new(SqliteMetadata::open(&tmp().join("metadata.db")).unwrap())
}

async fn local_blobs() -> Arc<dyn BlobStore> {
    Arc::new(ObjectBlobStore::local(&tmp().join("blobs")).unwrap())
}

async fn memory_blobs() -> Arc<dyn BlobStore> {
    Arc::new(ObjectBlobStore::memory())
}

afterview_store::metadata_conformance!(sqlite);

mod local {
    use super::local_blobs;
    afterview_store::blob_conformance!(local_blobs);
}

mod memory {
    use super::memory_blobs;
    afterview_store::blob_conformance!(memory_blobs);
}

fn image(id: String, owner: &str) -> afterview_store::ImageRecord {
    afterview_store::ImageRecord {
        blob_key: afterview_store::image_key(&id),
        id,
        owner: owner.into(),
        width: 10,
        height: 10,
        bytes: 100,
        source_format: "png".into(),
        created_at: chrono::Utc::now(),
    }
}

/// Two processes share `metadata.db` (`serve --no-worker` and workers on one data dir): a
/// delete beside the other's writes waits for the write lock instead of failing with
/// "database is locked" (its read-then-write transaction could not wait for the upgrade).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deletes_wait_for_another_processs_writes() {
    let path = tmp().join("metadata.db");
    let a = Arc::new(SqliteMetadata::open(&path).unwrap());
    let b = Arc::new(SqliteMetadata::open(&path).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b2, stop2) = (b.clone(), stop.clone());
    let writer = tokio::spawn(async move {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            b2.insert_image(&image(afterview_core::ids::new_id(), "bob"))
                .await
                .unwrap();
            n += 1;
        }
        n
    });
    for _ in 0..300 {
        let id = afterview_core::ids::new_id();
        a.insert_image(&image(id.clone(), "alice")).await.unwrap();
        let gone = a.delete_image("alice", &id).await.unwrap();
        assert!(gone.is_some());
        let key = a.delete_visualization("alice", &id).await.unwrap();
        assert!(key.is_none());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        writer.await.unwrap() > 0,
        "the other process wrote meanwhile"
    );
}
