//! Real servers for tests (feature `testsuite`): a fresh PostgreSQL database on the machine's
//! server, dropped afterwards, and a private S3 server (moto, from the pinned Python tools of
//! `scripts/python-env.sh`) on a free port, stopped afterwards.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::S3Options;

/// The PostgreSQL server tests use: `AFTERVIEW_TEST_POSTGRES`, else the machine's
/// `postgres://postgres@127.0.0.1:5432` (trust auth).
pub fn postgres_server() -> String {
    std::env::var("AFTERVIEW_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Runs SQL statements (separated by `"; "`) on the maintenance database, each alone (CREATE
/// and DROP DATABASE cannot run in a transaction block), on a thread of its own so it can run
/// from a `Drop` inside a runtime.
pub fn postgres_admin(sql: &str) {
    let statements: Vec<String> = sql.split("; ").map(str::to_owned).collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(
                &format!("{}/postgres", postgres_server()),
                tokio_postgres::NoTls,
            )
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (trust auth) is needed for this test");
            tokio::spawn(conn);
            for st in &statements {
                c.batch_execute(st).await.expect("admin SQL");
            }
        });
    })
    .join()
    .expect("admin thread");
}

/// The first column of the first row of `sql` on the maintenance database, as text.
pub fn postgres_admin_value(sql: &str) -> Option<String> {
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(
                &format!("{}/postgres", postgres_server()),
                tokio_postgres::NoTls,
            )
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (trust auth) is needed for this test");
            tokio::spawn(conn);
            let rows = c.simple_query(&sql).await.expect("admin SQL");
            rows.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
        })
    })
    .join()
    .expect("admin thread")
}

/// A database created for one test and dropped (with its connections) when this is dropped.
#[derive(Debug)]
pub struct PostgresDb {
    pub name: String,
}

impl PostgresDb {
    /// Creates an empty database named after this process and a counter.
    pub fn fresh() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "afterview_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        postgres_admin(&format!(
            "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}"
        ));
        Self { name }
    }

    /// `postgres://…/<name>`.
    pub fn url(&self) -> String {
        format!("{}/{}", postgres_server(), self.name)
    }
}

impl Drop for PostgresDb {
    fn drop(&mut self) {
        postgres_admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// The venv `scripts/python-env.sh` prepares (once per process).
pub fn python_env() -> PathBuf {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/python-env.sh");
        let out = Command::new("bash")
            .arg(script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/python-env.sh");
        assert!(out.status.success(), "scripts/python-env.sh failed");
        let text = String::from_utf8(out.stdout).expect("utf-8 path");
        PathBuf::from(text.lines().last().expect("venv path").trim())
    })
    .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A private S3 server (moto) on 127.0.0.1, with credentials of its own; stopped on drop, or
/// by a watchdog once the test process is gone.
#[derive(Debug)]
pub struct S3Server {
    pub port: u16,
    child: Child,
}

/// The (fake, server-local) credentials the test server accepts.
pub const S3_ACCESS_KEY: &str = "afterview-test";
/// See [`S3_ACCESS_KEY`].
pub const S3_SECRET_KEY: &str = "afterview-test-secret";

impl S3Server {
    /// Starts the server and waits until it answers.
    pub fn start() -> Self {
        let moto = python_env().join("bin/moto_server");
        let port = free_port();
        // The shell is the server's parent: it stops the server when the test process is gone
        // or when it is itself told to stop, so no server outlives its tests.
        let script = format!(
            "\"{moto}\" -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; \
             trap 'kill $m 2>/dev/null; exit 0' TERM INT; \
             while kill -0 {parent} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.3; done; \
             kill $m 2>/dev/null",
            moto = moto.display(),
            parent = std::process::id(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sh");
        let s = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while s.request("GET", "/moto-api/").is_none() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Options reaching this server.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(S3_ACCESS_KEY.into()),
            secret_access_key: Some(S3_SECRET_KEY.into()),
            allow_http: true,
        }
    }

    /// The standard variables reaching this server (for child processes).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Creates a bucket (path-style `PUT /<bucket>`).
    pub fn create_bucket(&self, bucket: &str) {
        let status = self
            .request("PUT", &format!("/{bucket}"))
            .expect("moto answers");
        assert_eq!(status / 100, 2, "creating bucket {bucket}: HTTP {status}");
    }

    /// A bucket no other caller of this function received, created.
    pub fn fresh_bucket(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let b = format!(
            "afterview-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        self.create_bucket(&b);
        b
    }

    /// The keys stored in `bucket` (at most 1000).
    pub fn list(&self, bucket: &str) -> Vec<String> {
        let body = self
            .request_body("GET", &format!("/{bucket}?list-type=2"))
            .expect("moto answers");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    /// One plain HTTP/1.1 request; the status, or `None` when nothing answers.
    pub fn request(&self, method: &str, path: &str) -> Option<u16> {
        self.exchange(method, path).map(|(s, _)| s)
    }

    /// `GET path`: the status and the response head (status line and headers).
    pub fn get_with_headers(&self, path: &str) -> Option<(u16, String)> {
        self.exchange_raw("GET", path).map(|(s, t)| {
            let head = t.split_once("\r\n\r\n").map_or(t.as_str(), |(h, _)| h);
            (s, head.to_owned())
        })
    }

    fn request_body(&self, method: &str, path: &str) -> Option<String> {
        self.exchange(method, path).map(|(_, b)| b)
    }

    fn exchange(&self, method: &str, path: &str) -> Option<(u16, String)> {
        self.exchange_raw(method, path).map(|(status, text)| {
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            (status, body)
        })
    }

    fn exchange_raw(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut out = Vec::new();
        c.read_to_end(&mut out).ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        Some((status, text))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // SIGTERM to the shell (our child, so its pid cannot have been reused); it stops moto.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
