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
    /// A short-lived URL a client may download `key` from directly, when the store can sign
    /// one (S3); `None` otherwise (the API streams the bytes).
    async fn signed_url(
        &self,
        _key: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

/// A [`BlobStore`] over any `object_store` backend.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    signer: Option<Arc<dyn object_store::signer::Signer>>,
    /// Store Content-Type (and, for exports, Content-Disposition) with each object, so a
    /// presigned download answers like the API would. Only S3 keeps attributes.
    attributes: bool,
    description: String,
}

/// How long an S3 request (with its retries) may take before the store counts as unavailable.
pub const S3_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// S3 settings that override the standard `AWS_*` variables (tests, config files).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint, e.g. `http://127.0.0.1:9000` for MinIO or a local test server.
    pub endpoint: Option<String>,
    /// Region [default: `AWS_REGION`, else us-east-1].
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
}

fn unavailable(e: object_store::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The media type of a blob, from its key's extension.
pub fn content_type(key: &str) -> &'static str {
    match key.rsplit_once('.').map(|(_, e)| e) {
        Some("pdf") => "application/pdf",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
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
        Self::local_with(dir, false)
    }

    /// As [`local`](Self::local); with `fsync` every file and its directory are synced before
    /// a write returns, so a stored photo survives a power loss (not merely a crash).
    pub fn local_with(dir: &Path, fsync: bool) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(unavailable)?
            .with_fsync(fsync);
        Ok(Self {
            store: Arc::new(fs),
            signer: None,
            attributes: false,
            description: format!("local {}", dir.display()),
        })
    }

    /// An S3-compatible bucket, `s3://bucket[/prefix]`. Credentials, region and endpoint come
    /// from the standard variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for a local endpoint), as AWS tools read them;
    /// `options` override them. Requests give up after [`S3_TIMEOUT`] (the API answers 503 and
    /// the task is retried) instead of hanging while the store is down.
    pub fn s3(url: &str, options: &S3Options) -> Result<Self, StoreError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            StoreError::Unavailable(format!("{url:?} is not s3://bucket[/prefix]"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            return Err(StoreError::Unavailable(format!("{url:?} names no bucket")));
        }
        use object_store::aws::AmazonS3Builder;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            b = b.with_region("us-east-1");
        }
        if let Some(e) = &options.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &options.region {
            b = b.with_region(r);
        }
        if let Some(k) = &options.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &options.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if options.allow_http {
            b = b.with_allow_http(true);
        }
        // Per key, so what the environment set (AWS_ALLOW_HTTP, ...) is kept.
        use object_store::ClientConfigKey;
        use object_store::aws::AmazonS3ConfigKey;
        let b = b
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: S3_TIMEOUT,
            })
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                "3s",
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                format!("{}s", S3_TIMEOUT.as_secs()),
            );
        let s3 = b.build().map_err(unavailable)?;
        let (store, signer): (Arc<dyn ObjectStore>, Arc<dyn object_store::signer::Signer>) =
            if prefix.is_empty() {
                let s3 = Arc::new(s3);
                (s3.clone(), s3)
            } else {
                let p = Arc::new(object_store::prefix::PrefixStore::new(s3, prefix));
                (p.clone(), p)
            };
        Ok(Self {
            store,
            signer: Some(signer),
            attributes: true,
            description: format!("s3://{bucket}/{prefix}"),
        })
    }

    /// From a storage URL: `file://path`, a plain path, or `s3://bucket[/prefix]` (with the
    /// standard `AWS_*` variables).
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_url_with(url, false)
    }

    /// As [`from_url`](Self::from_url); `fsync` as in [`local_with`](Self::local_with), for
    /// local files only (an S3 store has its own durability).
    pub fn from_url_with(url: &str, fsync: bool) -> Result<Self, StoreError> {
        if url.starts_with("s3://") {
            return Self::s3(url, &S3Options::default());
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(StoreError::Unavailable(format!(
                "unknown storage URL {url:?}: use file://path or s3://bucket[/prefix]"
            )));
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        Self::local_with(Path::new(path), fsync)
    }

    /// In memory (tests).
    pub fn memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            signer: None,
            attributes: false,
            description: "memory".into(),
        }
    }

    /// Any `object_store` backend.
    pub fn new(store: Arc<dyn ObjectStore>, description: impl Into<String>) -> Self {
        Self {
            store,
            signer: None,
            attributes: false,
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
        let path = path(key)?;
        let mut opts = object_store::PutOptions::default();
        if self.attributes {
            use object_store::Attribute;
            let a = &mut opts.attributes;
            a.insert(Attribute::ContentType, content_type(key).into());
            a.insert(Attribute::CacheControl, "private, no-store".into());
            if key.starts_with("exports/") {
                a.insert(Attribute::ContentDisposition, "attachment".into());
            }
        }
        self.store
            .put_opts(&path, bytes.into(), opts)
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
        // Listing the top level fails when the bucket is missing or the credentials are wrong,
        // where a HEAD of a missing key would pass.
        self.store
            .list_with_delimiter(None)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn signed_url(
        &self,
        key: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(object_store::signer::Method::GET, &path(key)?, ttl)
            .await
            .map_err(unavailable)?;
        Ok(Some(url.to_string()))
    }
}
