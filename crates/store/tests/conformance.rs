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
