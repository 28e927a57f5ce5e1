//! A private `redis-server` for tests: started on a free loopback port in a temporary
//! directory, never shared with the machine's Redis, stopped on drop or, for statics (never
//! dropped), by a watchdog that shuts it down by its port once the test process is gone.

/// The Redis client crate, for tests that read keys directly.
pub use redis;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running private server.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its working directory (AOF files live here).
    pub dir: PathBuf,
    child: Option<Child>,
    watchdog: Option<Child>,
    next_db: AtomicU32,
    databases: u32,
    aof: bool,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl RedisServer {
    /// Starts a server with `databases` logical databases; `aof` turns on the append-only file
    /// (fsync every write) so a restart keeps everything.
    pub fn start(databases: u32, aof: bool) -> Self {
        Self::start_with(databases, aof, &[])
    }

    /// As [`RedisServer::start`], with more `redis-server` arguments.
    pub fn start_with(databases: u32, aof: bool, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "afterview-redis-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut s = Self {
            port: free_port(),
            dir,
            child: None,
            watchdog: None,
            next_db: AtomicU32::new(0),
            databases,
            aof,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut c = Command::new("redis-server");
        c.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(if self.aof {
            ["--appendonly", "yes", "--appendfsync", "always"].as_slice()
        } else {
            ["--appendonly", "no"].as_slice()
        })
        .arg("--dir")
        .arg(&self.dir)
        .args([
            "--databases",
            &self.databases.to_string(),
            "--daemonize",
            "no",
        ])
        .args(["--loglevel", "warning", "--logfile"])
        .arg(self.dir.join("redis.log"))
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        self.child = Some(
            c.spawn()
                .expect("redis-server must be installed (apt install redis-server)"),
        );
        if self.watchdog.is_none() {
            // Statics are never dropped: when the test process is gone, shut the server down
            // by its port (never by a pid, which the system may have reused).
            let script = format!(
                "while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; \
                 redis-cli -p {port} shutdown nosave >/dev/null 2>&1",
                parent = std::process::id(),
                port = self.port,
            );
            self.watchdog = Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok();
        }
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = redis::Client::open(self.url(0))
                && let Ok(mut conn) = c.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {} (see {}/redis.log)",
                self.port,
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// A backend with its broker in database `db` and its results in `db + 1`, default options.
    pub async fn backend(&self, db: u32) -> std::sync::Arc<crate::RedisBackend> {
        std::sync::Arc::new(
            crate::RedisBackend::open(
                &self.url(db),
                Some(&self.url(db + 1)),
                crate::RedisOptions::default(),
            )
            .await
            .expect("open redis backend"),
        )
    }

    /// A plain blocking connection to database `db`, for reading keys and server state.
    pub fn connection(&self, db: u32) -> redis::Connection {
        redis::Client::open(self.url(db))
            .and_then(|c| c.get_connection())
            .expect("connect")
    }

    /// A database no other caller of this server received, emptied.
    pub fn fresh_db(&self) -> u32 {
        let db = self.next_db.fetch_add(1, Ordering::SeqCst);
        assert!(db < self.databases, "out of databases on the test server");
        let c = redis::Client::open(self.url(db)).expect("url");
        let mut conn = c.get_connection().expect("connect");
        redis::cmd("FLUSHDB")
            .query::<()>(&mut conn)
            .expect("flushdb");
        db
    }

    /// Stops the server the hard way (as a crash would) and starts it again on the same port
    /// and directory; with AOF, everything written before is back.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the server (SHUTDOWN NOSAVE; the AOF was fsynced at every write).
    pub fn stop(&mut self) {
        if let Ok(c) = redis::Client::open(self.url(0))
            && let Ok(mut conn) = c.get_connection()
        {
            let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut conn);
        }
        if let Some(mut ch) = self.child.take() {
            let _ = ch.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server per test process, with plenty of databases.
pub fn shared() -> &'static RedisServer {
    static S: OnceLock<RedisServer> = OnceLock::new();
    S.get_or_init(|| RedisServer::start(1024, false))
}

/// The server's per-command counters (`INFO commandstats`): command name → `(calls, µs)`, the
/// commands run inside scripts included.
pub fn command_stats(url: &str) -> BTreeMap<String, (u64, u64)> {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connect");
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .expect("INFO commandstats");
    stats
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// Publishes a backlog of `n` `afterview.noop` messages in batches of 500 (what drain tests
/// and benches start from); returns them in publish order.
pub async fn publish_noops(
    client: &afterview_engine::Client,
    n: usize,
) -> Vec<afterview_engine::TaskMessage> {
    let msgs: Vec<_> = (0..n)
        .map(|_| {
            client
                .message(
                    "afterview.noop",
                    vec![],
                    serde_json::Map::new(),
                    afterview_engine::SendOptions::default(),
                )
                .expect("a noop message")
        })
        .collect();
    for chunk in msgs.chunks(500) {
        afterview_engine::Broker::publish_batch(client.broker().as_ref(), chunk)
            .await
            .expect("publish");
    }
    msgs
}
