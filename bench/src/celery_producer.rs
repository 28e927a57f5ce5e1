//! `celery-producer`: the Celery harness's producer CLI (`../shared/bench/celery/producer.py`)
//! reimplemented on Afterview's Redis client, so `bench.py --producer-cmd` measures our enqueue
//! and our enqueue-to-result latency with the harness's own scenarios and JSON output.
//!
//! ```text
//! afterview-bench celery-producer enqueue --n 20000 [--task noop] [--mode M] [--no-backend]
//! afterview-bench celery-producer latency --n 2000 [--warmup 100] [--task noop]
//! afterview-bench celery-producer batch --task sleep50 --n 2000 [--timeout 60]
//! ```
//! Redis: `127.0.0.1:$REDIS_PORT` (default 6391), broker db 0, results db 1, as `tasks.py`.
//! Task names and arguments follow `TASKSET` (`afterview` unless `celery`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use afterview_engine::{Client, SendOptions, TaskMessage, TaskState};
use afterview_engine_redis::{RedisBackend, RedisOptions};
use serde_json::{Map, Value, json};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `(task name, args, kwargs)` of scenario `key` for item `i`.
fn resolve(key: &str, i: usize) -> (String, Vec<Value>, Map<String, Value>) {
    let celery = std::env::var("TASKSET").as_deref() == Ok("celery");
    let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
    match (celery, key) {
        (true, k) => (format!("tasks.{k}"), vec![json!(i)], Map::new()),
        (false, "sleep50") => (
            "afterview.sleep".into(),
            vec![],
            obj(json!({"seconds": 0.05})),
        ),
        (false, "progress") => (
            "afterview.sleep".into(),
            vec![],
            obj(json!({"seconds": 0.0, "progress_steps": 4})),
        ),
        (false, _) => ("afterview.noop".into(), vec![json!(i)], Map::new()),
    }
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k]
}

async fn client() -> Client {
    let port = std::env::var("REDIS_PORT").unwrap_or_else(|_| "6391".into());
    let b = match RedisBackend::open(
        &format!("redis://127.0.0.1:{port}/0"),
        Some(&format!("redis://127.0.0.1:{port}/1")),
        RedisOptions::default(),
    )
    .await
    {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("celery-producer: {e} (set REDIS_PORT to the harness's redis-server port)");
            std::process::exit(69);
        }
    };
    Client::new(b.clone(), b)
}

fn message(c: &Client, key: &str, i: usize) -> TaskMessage {
    let (name, args, kwargs) = resolve(key, i);
    c.message(&name, args, kwargs, SendOptions::default())
        .expect("valid message")
}

async fn send(c: &Client, key: &str, i: usize) -> String {
    let msg = message(c, key, i);
    c.broker().publish(&msg).await.expect("publish");
    msg.id
}

/// Runs the subcommand; prints one JSON line.
pub(crate) async fn run(args: &[String]) {
    let cmd = args.first().map(String::as_str).unwrap_or("");
    if !matches!(cmd, "enqueue" | "latency" | "batch") {
        eprintln!(
            "celery-producer: unknown command {cmd:?}\nusage: afterview-bench celery-producer enqueue|latency|batch [--n N] [--task noop|sleep50|progress] [--warmup N] [--timeout S]"
        );
        std::process::exit(2);
    }
    let n: usize = flag(args, "--n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let task = flag(args, "--task").unwrap_or_else(|| "noop".into());
    let timeout = Duration::from_secs_f64(
        flag(args, "--timeout")
            .and_then(|v| v.parse().ok())
            .unwrap_or(60.0),
    );
    let c = client().await;
    let cpu0 = crate::cpu_seconds("self");
    let out = match cmd {
        "enqueue" => {
            let t0 = Instant::now();
            for i in 0..n {
                send(&c, &task, i).await;
            }
            let secs = t0.elapsed().as_secs_f64();
            json!({"cmd": "enqueue", "mode": flag(args, "--mode").unwrap_or_else(|| "apply_async".into()),
                   "no_backend": args.iter().any(|a| a == "--no-backend"),
                   "task": resolve(&task, 0).0, "n": n, "secs": secs, "rate": n as f64 / secs,
                   "producer_cpu_s": crate::cpu_seconds("self") - cpu0})
        }
        "latency" => {
            let warmup: usize = flag(args, "--warmup")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100);
            let mut lat = Vec::with_capacity(n);
            let t_all = Instant::now();
            for i in 0..warmup + n {
                let t0 = Instant::now();
                // As `apply_async` + `.get()`: subscribed to the result before the publish.
                let meta = c
                    .publish_and_wait(&message(&c, &task, i), timeout)
                    .await
                    .expect("result");
                assert_eq!(meta.status, TaskState::Success, "{meta:?}");
                if i >= warmup {
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
            }
            lat.sort_by(f64::total_cmp);
            json!({"cmd": "latency", "task": resolve(&task, 0).0, "n": n, "warmup": warmup,
                   "p50_ms": pct(&lat, 0.50), "p95_ms": pct(&lat, 0.95), "p99_ms": pct(&lat, 0.99),
                   "min_ms": lat[0], "max_ms": lat[lat.len() - 1],
                   "mean_ms": lat.iter().sum::<f64>() / lat.len() as f64,
                   "total_secs": t_all.elapsed().as_secs_f64(), "producer_cpu_s": crate::cpu_seconds("self") - cpu0})
        }
        "batch" => {
            let t0 = Instant::now();
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                ids.push(send(&c, &task, i).await);
            }
            let sent = t0.elapsed().as_secs_f64();
            let mut bad = 0;
            for id in &ids {
                let m = c.wait(id, timeout).await.expect("result");
                if m.status != TaskState::Success {
                    bad += 1;
                }
            }
            let secs = t0.elapsed().as_secs_f64();
            json!({"cmd": "batch", "task": resolve(&task, 0).0, "n": n, "secs": secs,
                   "rate": n as f64 / secs, "enqueue_secs": sent, "bad": bad,
                   "producer_cpu_s": crate::cpu_seconds("self") - cpu0})
        }
        _ => unreachable!("checked above"),
    };
    println!("{out}");
}
