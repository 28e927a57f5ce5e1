//! `rediss://`: the backend over TLS to a private redis-server whose certificate a private CA
//! signed (both made here with `openssl`). Verified against the CA file given,
//! refused without it (the system's trust store does not know it), and a CA file with a plain
//! `redis://` URL is a configuration error, not a silent plain connection. A server that asks
//! for client certificates (mutual TLS) gets the one configured.

use std::sync::Arc;
use std::time::Duration;

use afterview_engine::{
    Broker, Client, Registry, ResultBackend, SendOptions, Shutdown, TaskState, Worker, WorkerConfig,
};
use afterview_engine_redis::testing::RedisServer;
use afterview_engine_redis::{ClientCert, RedisBackend, RedisOptions};
use serde_json::Map;

/// Runs `openssl` in `dir`; panics with its message when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate `<name>.pem` with its key `<name>.key`, signed by the CA in `dir`, with the
/// extensions in `ext` (openssl's extfile syntax).
fn signed(dir: &std::path::Path, name: &str, subject: &str, ext: &str) {
    let (key, csr, pem, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).unwrap();
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &extfile,
            "-out",
            &pem,
        ],
    );
}

/// A private CA and, signed by it, a server certificate for localhost and 127.0.0.1 and a
/// client certificate, in `dir`: `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
fn certificates(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=afterview test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    signed(
        dir,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    );
    signed(
        dir,
        "client",
        "/CN=afterview worker",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
}

/// A private redis-server listening for TLS only, with the certificates of `dir`; `clients`
/// is its `tls-auth-clients` (`yes`: a client certificate signed by the CA is required).
fn tls_server(dir: &std::path::Path, clients: &str) -> (RedisServer, String) {
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let f = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let server = RedisServer::start_with(
        2,
        false,
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &f("server.pem"),
            "--tls-key-file",
            &f("server.key"),
            "--tls-ca-cert-file",
            &f("ca.pem"),
            "--tls-auth-clients",
            clients,
        ],
    );
    (server, tls_port)
}

/// Runs one no-op task through `backend` with a worker of its own.
async fn runs_a_task(backend: Arc<RedisBackend>) {
    let shutdown = Shutdown::new();
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 2,
            node: "tls@test".into(),
            ..WorkerConfig::default()
        },
        backend.clone() as Arc<dyn Broker>,
        backend.clone() as Arc<dyn ResultBackend>,
        Registry::with_builtins(),
    );
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let client = Client::new(backend.clone(), backend.clone());
    let id = client
        .send_task("afterview.noop", vec![], Map::new(), SendOptions::default())
        .await
        .unwrap();
    let r = client.wait(&id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(r.status, TaskState::Success);
    shutdown.trigger();
    shutdown.trigger();
    let _ = handle.await;
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("afterview-tls-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_is_verified_against_the_ca_file_and_runs_tasks() {
    let dir = temp_dir();
    certificates(&dir);
    let ca = dir.join("ca.pem");
    let (_server, tls_port) = tls_server(&dir, "no");
    let url = format!("rediss://localhost:{tls_port}/0");

    // Not trusted by the system's store: refused, not used unverified.
    let untrusted = tokio::time::timeout(
        Duration::from_secs(60),
        RedisBackend::open(&url, None, RedisOptions::default()),
    )
    .await
    .expect("an answer");
    assert!(untrusted.is_err(), "an unknown CA is refused");

    // A CA file with a plain URL: refused, never a silent plain connection.
    let plain = format!("redis://localhost:{tls_port}/0");
    let with_ca = || RedisOptions {
        ca_file: Some(ca.clone()),
        ..RedisOptions::default()
    };
    let Err(err) = RedisBackend::open(&plain, None, with_ca()).await else {
        panic!("a CA file with a redis:// URL was taken");
    };
    assert!(err.to_string().contains("rediss://"), "{err}");

    // With the CA: tasks run through it.
    let backend = Arc::new(RedisBackend::open(&url, None, with_ca()).await.unwrap());
    runs_a_task(backend).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Mutual TLS: a server with `tls-auth-clients yes` refuses a client without a certificate
/// and serves one that presents the certificate the CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_asking_for_client_certificates_gets_the_configured_one() {
    let dir = temp_dir();
    certificates(&dir);
    let (_server, tls_port) = tls_server(&dir, "yes");
    let url = format!("rediss://localhost:{tls_port}/0");
    let opts = |client_cert: Option<ClientCert>| RedisOptions {
        ca_file: Some(dir.join("ca.pem")),
        client_cert,
        ..RedisOptions::default()
    };
    let ours = || ClientCert {
        cert_file: dir.join("client.pem"),
        key_file: dir.join("client.key"),
    };

    let without = tokio::time::timeout(
        Duration::from_secs(60),
        RedisBackend::open(&url, None, opts(None)),
    )
    .await
    .expect("an answer");
    assert!(without.is_err(), "the server asks for a client certificate");

    // A missing key file is named; a client certificate with a plain URL is refused.
    let missing = ClientCert {
        key_file: dir.join("nowhere.key"),
        ..ours()
    };
    let Err(err) = RedisBackend::open(&url, None, opts(Some(missing))).await else {
        panic!("a missing key file was taken");
    };
    assert!(err.to_string().contains("nowhere.key"), "{err}");
    let plain = format!("redis://localhost:{tls_port}/0");
    let Err(err) = RedisBackend::open(&plain, None, opts(Some(ours()))).await else {
        panic!("a client certificate with a redis:// URL was taken");
    };
    assert!(err.to_string().contains("rediss://"), "{err}");

    let backend = Arc::new(
        RedisBackend::open(&url, None, opts(Some(ours())))
            .await
            .unwrap(),
    );
    runs_a_task(backend).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
