//! The blob store: bytes by key, over `object_store`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::StoreError;

/// Bytes by key.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores (or replaces) `key`.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError>;
    /// The bytes of `key`, if present.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;
    /// Deletes `key` (absent keys are fine).
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Cheap reachability check.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A [`BlobStore`] over any `object_store` backend.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    description: String,
}

fn unavailable(e: object_store::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn path(key: &str) -> Result<ObjectPath, StoreError> {
    if key.is_empty() || key.contains("..") || key.starts_with('/') {
        return Err(StoreError::Corrupt(format!("invalid blob key {key:?}")));
    }
    ObjectPath::parse(key)
        .map_err(|e| StoreError::Corrupt(format!("invalid blob key {key:?}: {e}")))
}

impl ObjectBlobStore {
    /// Files under `dir` (created if missing); writes go to a temporary file and are renamed.
    pub fn local(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(unavailable)?;
        Ok(Self {
            store: Arc::new(fs),
            description: format!("local {}", dir.display()),
        })
    }

    /// In memory (tests).
    pub fn memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            description: "memory".into(),
        }
    }

    /// Any `object_store` backend.
    pub fn new(store: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            store,
            description: description.into(),
        }
    }

    /// What this is, for logs.
    pub fn description(&self) -> &str {
        &self.description
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.store
            .put(&path(key)?, bytes.into())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match self.store.get(&path(key)?).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(unavailable)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self.store.head(&ObjectPath::from("afterview-ping")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }
}
