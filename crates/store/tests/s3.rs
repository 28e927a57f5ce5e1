//! The blob conformance suite against a real S3 wire-protocol server (moto, started privately
//! on a free port for this test binary), with and without a key prefix, plus what only S3 does:
//! presigned downloads and a missing bucket reported by `ping`.

use std::sync::{Arc, OnceLock};

use afterview_store::testing::S3Server;
use afterview_store::{BlobStore, ObjectBlobStore};

fn server() -> &'static S3Server {
    static S: OnceLock<S3Server> = OnceLock::new();
    S.get_or_init(S3Server::start)
}

async fn bucket() -> Arc<dyn BlobStore> {
    let s = server();
    let b = s.fresh_bucket();
    Arc::new(ObjectBlobStore::s3(&format!("s3://{b}"), &s.options()).unwrap())
}

async fn prefixed() -> Arc<dyn BlobStore> {
    let s = server();
    let b = s.fresh_bucket();
    Arc::new(ObjectBlobStore::s3(&format!("s3://{b}/clinic-a/"), &s.options()).unwrap())
}

mod plain {
    use super::bucket;
    afterview_store::blob_conformance!(bucket);
}

mod with_prefix {
    use super::prefixed;
    afterview_store::blob_conformance!(prefixed);
}

#[tokio::test]
async fn objects_land_under_the_prefix() {
    let s = server();
    let b = s.fresh_bucket();
    let store = ObjectBlobStore::s3(&format!("s3://{b}/clinic-a"), &s.options()).unwrap();
    store
        .put("images/p.png", bytes::Bytes::from_static(b"png"))
        .await
        .unwrap();
    assert_eq!(s.list(&b), vec!["clinic-a/images/p.png".to_owned()]);
}

#[tokio::test]
async fn presigned_urls_download_without_credentials() {
    let s = server();
    let b = s.fresh_bucket();
    let store = ObjectBlobStore::s3(&format!("s3://{b}/p"), &s.options()).unwrap();
    store
        .put(
            "exports/r.pdf",
            bytes::Bytes::from_static(b"%PDF-1.7 report"),
        )
        .await
        .unwrap();
    let url = store
        .signed_url("exports/r.pdf", std::time::Duration::from_secs(60))
        .await
        .unwrap()
        .expect("S3 signs URLs");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let path = url.strip_prefix(&s.endpoint()).expect("on the server");
    let (status, head) = s.get_with_headers(path).expect("moto answers");
    assert_eq!(status, 200, "{url}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/pdf"), "{head}");
    assert!(head.contains("content-disposition: attachment"), "{head}");
    // The local store has no such thing: the API streams instead.
    let local = ObjectBlobStore::memory();
    assert!(
        local
            .signed_url("exports/r.pdf", std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_missing_bucket_or_a_dead_server_is_unavailable() {
    let s = server();
    let store = ObjectBlobStore::s3("s3://no-such-bucket-here", &s.options()).unwrap();
    assert!(store.ping().await.is_err());
    let mut opts = s.options();
    // Nothing listens on port 9 (discard) of loopback here.
    opts.endpoint = Some("http://127.0.0.1:9".into());
    let dead = ObjectBlobStore::s3("s3://b", &opts).unwrap();
    let t = std::time::Instant::now();
    assert!(matches!(
        dead.get("images/x.png").await,
        Err(afterview_store::StoreError::Unavailable(_))
    ));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn storage_urls_are_checked() {
    for bad in ["s3://", "gs://bucket", "ftp://x"] {
        assert!(ObjectBlobStore::from_url(bad).is_err(), "{bad}");
    }
}
