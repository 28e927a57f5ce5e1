//! `api`: the HTTP API under a fixed request rate on loopback, and the delay from a task's
//! progress update to a WebSocket client receiving it.
//!
//! Runs the release `afterview` binary (`AFTERVIEW_BIN`, default the target dir's). Phase 1:
//! `serve --no-worker` (tasks queue, nothing competes for the CPU but the API), an open-loop
//! load at `--rate` req/s for `--seconds`: 25 % `POST /api/visualizations?async_processing=true`,
//! 75 % `GET /api/tasks/{id}/status`, latency counted from each request's scheduled start (no
//! coordinated omission). Baseline in the same run: `GET /healthz` at the same rate.
//! Phase 2: `serve` with its worker; `afterview.sleep` tasks report progress every 100 ms;
//! WebSocket clients measure `receive time - updated_at_ms`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use afterview_engine::{Client, SendOptions};
use afterview_engine_sqlite::{SqliteBackend, SqliteOptions};
use afterview_store::MetadataStore;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub(crate) const TOKEN: &str = "bench-token-0123456789abcdef";

pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn bin() -> PathBuf {
    std::env::var_os("AFTERVIEW_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
                .join("release/afterview")
        })
}

fn serve(data: &std::path::Path, extra: &[&str]) -> Serve {
    serve_env(data, extra, &[])
}

/// `serve` with extra flags and environment variables.
pub(crate) fn serve_env(data: &std::path::Path, extra: &[&str], vars: &[(&str, String)]) -> Serve {
    let mut child = Command::new(bin())
        .args(["--data-dir"])
        .arg(data)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .args(if extra.contains(&"-c") {
            &[][..]
        } else {
            &["-c", "8"][..]
        })
        .args(extra)
        .env("AFTERVIEW_AUTH_TOKENS", format!("{TOKEN}=bench"))
        // One user makes all the load: the per-user limits (which would answer 429) are lifted.
        .env("AFTERVIEW_MAX_ACTIVE_TASKS_PER_USER", "0")
        .env("AFTERVIEW_MAX_SYNC_REQUESTS_PER_USER", "0")
        .env("AFTERVIEW_LOG", "warn")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (build it with cargo build --release): {e}",
                bin().display()
            )
        });
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .trim_start_matches("afterview serving on http://")
        .to_owned();
    std::thread::sleep(Duration::from_millis(300));
    Serve { child, addr }
}

/// A minimal keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    pub(crate) async fn open(addr: &str) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        Self {
            r: BufReader::new(r),
            w,
        }
    }

    pub(crate) async fn send(&mut self, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.w.write_all(req.as_bytes()).await.unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).await.unwrap();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut buf = vec![0; len];
        self.r.read_exact(&mut buf).await.unwrap();
        (status, buf)
    }
}

/// `POST /api/images` of a PNG; the new image's id.
pub(crate) async fn upload(c: &mut Conn, png: &[u8]) -> String {
    let boundary = "benchboundary";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n").into_bytes();
    body.extend_from_slice(png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let up = format!(
        "POST /api/images HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.w.write_all(up.as_bytes()).await.unwrap();
    c.w.write_all(&body).await.unwrap();
    let mut line = String::new();
    c.r.read_line(&mut line).await.unwrap();
    let mut len = 0;
    loop {
        line.clear();
        c.r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut buf = vec![0; len];
    c.r.read_exact(&mut buf).await.unwrap();
    serde_json::from_slice::<Value>(&buf).unwrap()["id"]
        .as_str()
        .unwrap_or_else(|| panic!("upload failed: {}", String::from_utf8_lossy(&buf)))
        .to_owned()
}

/// The `p` quantile of `sorted` (0 when it is empty).
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

struct Load {
    achieved: f64,
    p50: f64,
    p95: f64,
    p99: f64,
    errors: usize,
}

/// Open-loop load: `rate` requests/s spread over `conns` connections for `secs`.
async fn load(
    addr: &str,
    rate: usize,
    secs: usize,
    conns: usize,
    mix: Arc<dyn Fn(usize) -> (String, String, String) + Send + Sync>,
) -> Load {
    let per_conn = rate as f64 / conns as f64;
    let start = Instant::now() + Duration::from_millis(100);
    let mut hs = vec![];
    for c in 0..conns {
        let addr = addr.to_owned();
        let mix = mix.clone();
        hs.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let n = (per_conn * secs as f64) as usize;
            let mut lat = Vec::with_capacity(n);
            let mut errors = 0;
            for i in 0..n {
                let due = start
                    + Duration::from_secs_f64((i as f64 + c as f64 / conns as f64) / per_conn);
                tokio::time::sleep_until(due.into()).await;
                let (m, p, b) = mix(i * conns + c);
                let (st, _) = conn.send(&m, &p, &b).await;
                if st >= 400 {
                    errors += 1;
                }
                lat.push(due.elapsed().as_secs_f64() * 1000.0);
            }
            (lat, errors)
        }));
    }
    let mut all = vec![];
    let mut errors = 0;
    for h in hs {
        let (l, e) = h.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let took = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Load {
        achieved: all.len() as f64 / took,
        p50: pct(&all, 0.5),
        p95: pct(&all, 0.95),
        p99: pct(&all, 0.99),
        errors,
    }
}

pub(crate) async fn run(rate: usize, secs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    println!(
        "# afterview-bench api: {rate} req/s for {secs} s, loopback, release binary {}\n",
        bin().display()
    );

    // Phase 1: the API alone.
    let s = serve(&data, &["--no-worker"]);
    let mut c = Conn::open(&s.addr).await;
    let png = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/portraits/astronaut.png"
    ))
    .unwrap();
    let image_id = upload(&mut c, &png).await;
    let post_body = json!({"image_id": image_id, "procedure_id": "rhinoplasty"}).to_string();
    let (_, first) = c
        .send(
            "POST",
            "/api/visualizations?async_processing=true",
            &post_body,
        )
        .await;
    let task_id = serde_json::from_slice::<Value>(&first).unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let conns = 32;
    let health = load(
        &s.addr,
        rate,
        secs,
        conns,
        Arc::new(|_| ("GET".into(), "/healthz".into(), String::new())),
    )
    .await;
    let status_path = format!("/api/tasks/{task_id}/status");
    let mix = load(
        &s.addr,
        rate,
        secs,
        conns,
        Arc::new(move |i| {
            if i % 4 == 0 {
                (
                    "POST".into(),
                    "/api/visualizations?async_processing=true".into(),
                    post_body.clone(),
                )
            } else {
                ("GET".into(), status_path.clone(), String::new())
            }
        }),
    )
    .await;
    drop(s);
    println!("| load | achieved req/s | p50 (ms) | p95 (ms) | p99 (ms) | errors |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| baseline: GET /healthz | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        health.achieved, health.p50, health.p95, health.p99, health.errors
    );
    println!(
        "| 25 % async POST /api/visualizations + 75 % GET status | {:.0} | {:.2} ({:.1}x) | {:.2} ({:.1}x) | {:.2} ({:.1}x) | {} |",
        mix.achieved,
        mix.p50,
        mix.p50 / health.p50,
        mix.p95,
        mix.p95 / health.p95,
        mix.p99,
        mix.p99 / health.p99,
        mix.errors
    );

    // Phase 2: progress → WebSocket.
    let s = serve(&data, &[]);
    let backend =
        Arc::new(SqliteBackend::open(data.join("afterview.db"), SqliteOptions::default()).unwrap());
    let meta = afterview_store::sqlite::SqliteMetadata::open(&data.join("metadata.db")).unwrap();
    let client = Client::new(backend.clone(), backend);
    let tasks = 16;
    let mut hs = vec![];
    for _ in 0..tasks {
        let id = afterview_core::ids::new_id();
        meta.insert_task(&afterview_store::TaskRecord {
            id: id.clone(),
            owner: "bench".into(),
            name: "afterview.sleep".into(),
            image_ids: vec![],
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
        let url = format!("ws://{}/api/ws/tasks/{id}?token={TOKEN}", s.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        hs.push(tokio::spawn(async move {
            let mut d = vec![];
            while let Some(Ok(m)) = ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if let Some(at) = v["data"]["updated_at_ms"].as_i64() {
                        d.push((chrono::Utc::now().timestamp_micros() as f64 / 1000.0) - at as f64);
                    }
                    if v["type"] != "progress" {
                        break;
                    }
                }
            }
            d
        }));
        send_sleep(&client, id, json!({"seconds": 2.0})).await;
    }
    let mut delays = vec![];
    for h in hs {
        delays.extend(h.await.unwrap());
    }
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "\nprogress update → WebSocket client: {} updates from {tasks} concurrent tasks, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        delays.len(),
        pct(&delays, 0.5),
        pct(&delays, 0.99),
        delays.last().copied().unwrap_or(0.0)
    );
}

/// Sends an `afterview.sleep` task with these keyword arguments under a chosen task id (which
/// the bench's followers already watch).
pub(crate) async fn send_sleep(client: &Client, id: String, kwargs: Value) {
    let kw = kwargs.as_object().cloned().unwrap_or_default();
    client
        .send_task(
            "afterview.sleep",
            vec![],
            kw,
            SendOptions {
                task_id: Some(id),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}
