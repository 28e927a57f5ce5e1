//! `deploy`: preview throughput of the whole product — API, queue, worker, stores — on the
//! embedded default (one `serve` process: SQLite queue and metadata, local files) against the
//! many-hosts setup (`serve --no-worker` plus `worker` processes on a private Redis, a fresh
//! PostgreSQL database and a private S3 server), with one and two worker processes, in the same
//! run. Every configuration has the same number of preview slots per worker process (`-c 1`)
//! so rows differ only in where the work and the bytes go.
//!
//! Each row: upload a 1024×1024 portrait, two warm-up previews, then `--n` previews sent at
//! once (`async_processing=true`, procedures in turn) and followed until the last is SUCCESS.
//! Throughput = n / wall time; the ratio is against the embedded default with one slot.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use afterview_engine_redis::testing::RedisServer;
use afterview_store::testing::{PostgresDb, S3Server};
use serde_json::{Value, json};

use crate::api::{Conn, bin, serve_env, upload};

const PROCEDURES: &[&str] = &["rhinoplasty", "facelift", "brow-lift", "lip-augmentation"];

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(data: &std::path::Path, args: &[String], vars: &[(&str, String)]) -> Worker {
    std::fs::create_dir_all(data).unwrap();
    let ready = data.join("ready");
    let child = Command::new(bin())
        .arg("--data-dir")
        .arg(data)
        .arg("worker")
        .args(args)
        .args([
            "-Q",
            "visualizations,exports,celery",
            "-c",
            "1",
            "--ready-file",
        ])
        .arg(&ready)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AFTERVIEW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the afterview binary runs");
    let t0 = Instant::now();
    while !ready.exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "worker not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Worker(child)
}

/// Follows the tasks (oldest first) until every one succeeded.
async fn follow(c: &mut Conn, ids: Vec<String>) {
    let mut pending = std::collections::VecDeque::from(ids);
    while let Some(id) = pending.front() {
        let (_, b) = c.send("GET", &format!("/api/tasks/{id}/status"), "").await;
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        match v["state"].as_str() {
            Some("SUCCESS") => {
                pending.pop_front();
            }
            Some("FAILURE" | "REVOKED") => panic!("a preview failed: {v}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Sends `k` previews of `image`; their task ids.
async fn submit(c: &mut Conn, image: &str, k: usize) -> Vec<String> {
    let mut ids = vec![];
    for i in 0..k {
        let b = json!({"image_id": image, "procedure_id": PROCEDURES[i % PROCEDURES.len()]})
            .to_string();
        let (st, r) = c
            .send("POST", "/api/visualizations?async_processing=true", &b)
            .await;
        assert_eq!(st, 202, "{}", String::from_utf8_lossy(&r));
        let v: Value = serde_json::from_slice(&r).unwrap();
        ids.push(v["task_id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Sends `n` previews and waits for all; previews per second.
async fn throughput(addr: &str, n: usize) -> f64 {
    let png = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/portraits/astronaut.png"
    ))
    .unwrap();
    let mut c = Conn::open(addr).await;
    let image = upload(&mut c, &png).await;
    let warm = submit(&mut c, &image, 2).await;
    follow(&mut c, warm).await;
    let t0 = Instant::now();
    let ids = submit(&mut c, &image, n).await;
    follow(&mut c, ids).await;
    n as f64 / t0.elapsed().as_secs_f64()
}

pub(crate) async fn run(n: usize) {
    println!(
        "# afterview-bench deploy: {n} previews (1024x1024), release binary {}\n",
        bin().display()
    );
    let mut rows: Vec<(String, f64)> = vec![];

    for slots in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let c = slots.to_string();
        let s = serve_env(&dir.path().join("data"), &["-c", &c], &[]);
        let r = throughput(&s.addr, n).await;
        rows.push((
            format!("embedded default (`serve -c {slots}`: SQLite + local files)"),
            r,
        ));
    }

    let redis = RedisServer::start(4, false);
    let s3 = S3Server::start();
    for workers in [1, 2] {
        let db = PostgresDb::fresh();
        let bucket = s3.fresh_bucket();
        let shared = vec![
            "--broker".to_owned(),
            redis.url(2 * (workers - 1)),
            "--result-backend".into(),
            redis.url(2 * (workers - 1) + 1),
            "--database".into(),
            db.url(),
            "--storage".into(),
            format!("s3://{bucket}"),
        ];
        let vars = s3.env();
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<&str> = shared.iter().map(String::as_str).collect();
        args.push("--no-worker");
        let api = serve_env(&dir.path().join("api"), &args, &vars);
        let ws: Vec<Worker> = (0..workers)
            .map(|i| worker(&dir.path().join(format!("w{i}")), &shared, &vars))
            .collect();
        let r = throughput(&api.addr, n).await;
        rows.push((
            format!("Redis + PostgreSQL + S3, `serve --no-worker` + {workers} × `worker -c 1`"),
            r,
        ));
        drop(ws);
        drop(api);
    }

    let base = rows[0].1;
    println!("| configuration | previews/s | vs embedded -c 1 |");
    println!("|---|---:|---:|");
    for (name, r) in &rows {
        println!("| {name} | {r:.2} | {:.2}x |", r / base);
    }
}
