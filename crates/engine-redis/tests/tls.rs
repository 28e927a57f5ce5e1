//! `rediss://`: the backend over TLS to a private redis-server whose certificate a private CA
//! signed (both made here with `openssl`). Verified against the CA file given,
//! refused without it (the system's trust store does not know it), and a CA file with a plain
//! `redis://` URL is a configuration error, not a silent plain connection.

use std::sync::Arc;
use std::time::Duration;

use afterview_engine::{
    Broker, Client, Registry, ResultBackend, SendOptions, Shutdown, TaskState, Worker, WorkerConfig,
};
use afterview_engine_redis::testing::RedisServer;
use afterview_engine_redis::{RedisBackend, RedisOptions};
use serde_json::Map;

/// A private CA and a certificate it signed for localhost and 127.0.0.1, in `dir`: the CA's
/// certificate, the server's certificate and its key.
fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let p = |f: &str| dir.join(f);
    let openssl = |args: &[&str]| {
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
    };
    std::fs::write(
        p("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ]
        .iter()
        .copied()
        .chain([
            "-subj",
            "/CN=afterview test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ]
        .iter()
        .copied()
        .chain(["-keyout", "server.key", "-out", "server.csr"])
        .collect::<Vec<_>>(),
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
        ]
        .iter()
        .copied()
        .chain([
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ])
        .collect::<Vec<_>>(),
    );
    [p("ca.pem"), p("server.pem"), p("server.key")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_is_verified_against_the_ca_file_and_runs_tasks() {
    let dir = std::env::temp_dir().join(format!("afterview-tls-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let [ca, cert, key] = certificates(&dir);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let (a, c, k) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let _server = RedisServer::start_with(
        2,
        false,
        &[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            c,
            "--tls-key-file",
            k,
            "--tls-ca-cert-file",
            a,
            "--tls-auth-clients",
            "no",
        ],
    );
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
