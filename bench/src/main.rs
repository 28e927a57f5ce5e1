//! Benchmarks, run by hand: `cargo run --release -p afterview-bench -- engine [--n 20000]`,
//! `... -- preview`, `... -- deploy` (the embedded default against Redis + PostgreSQL + S3).
//!
//! `engine`: enqueue and drain of `afterview.noop` with results stored, and enqueue-to-result
//! latency, on the embedded SQLite backend; the in-memory backend is measured in the same run
//! as the baseline (what the engine costs without any storage), so figures come as ratios.

mod api;
mod celery_producer;
mod deploy;
mod fanout;
mod preview;
mod redis_cost;
mod reports;

use std::sync::Arc;
use std::time::{Duration, Instant};

use afterview_engine::memory::MemoryBackend;
use afterview_engine::{
    Broker, Client, Registry, ResultBackend, SendOptions, Shutdown, TaskState, Worker, WorkerConfig,
};
use afterview_engine_sqlite::{SqliteBackend, SqliteOptions};
use serde_json::{Map, json};

struct Figures {
    enqueue_seq: f64,
    enqueue_par: f64,
    enqueue_batch: f64,
    drain: f64,
    p50: f64,
    p95: f64,
    p99: f64,
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) a process has used: `pid` a number or `"self"` (`/proc/<pid>/stat`
/// counts clock ticks of 1/100 s, Linux's `USER_HZ`).
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// Appends `{"bench": bench, ..fields}` as one JSON line to the file `$BENCH_JSON` names, when
/// it is set: `bench/figures.sh` collects every benchmark's figures this way for its report.
pub(crate) fn emit(bench: &str, fields: serde_json::Value) {
    let Ok(path) = std::env::var("BENCH_JSON") else {
        return;
    };
    let mut line = json!({ "bench": bench });
    if let (Some(o), serde_json::Value::Object(f)) = (line.as_object_mut(), fields) {
        o.extend(f);
    }
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        eprintln!("afterview-bench: cannot append to BENCH_JSON={path}: {e}");
    }
}

/// The same allocator as the `afterview` binary, so in-process figures match it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "engine".into());
    match what.as_str() {
        "engine" => {}
        "preview" => return preview::run(arg("--iterations", 15)),
        "reports" => return reports::run(arg("--iterations", 15)),
        "api" => return api::run(arg("--rate", 2000), arg("--seconds", 10)).await,
        "deploy" => return deploy::run(arg("--n", 40)).await,
        "redis-cost" => return redis_cost::run(arg("--n", 20_000), arg("--concurrency", 32)).await,
        "ws-fanout" => {
            return fanout::run(
                arg("--clients", 10_000),
                arg("--every-ms", 500) as u64,
                arg("--seconds", 10),
            )
            .await;
        }
        "celery-producer" => {
            let rest: Vec<String> = std::env::args().skip(2).collect();
            // One thread, as Celery's Python producer: a result wakes the waiting request on the
            // thread that read it, not through another thread (BENCHMARKS.md, sitting 9).
            let one_thread = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime")
                    .block_on(celery_producer::run(&rest))
            });
            one_thread.join().expect("the producer thread");
            return;
        }
        _ => {
            eprintln!(
                "usage: afterview-bench engine [--n N] [--latency-n N] [--concurrency C] | preview [--iterations N] | reports [--iterations N] | api [--rate R] [--seconds S] | deploy [--n N] | redis-cost [--n N] [--concurrency C] | ws-fanout [--clients N] [--every-ms MS] [--seconds S] | celery-producer enqueue|latency|batch [--n N] [--task T]"
            );
            std::process::exit(2);
        }
    }
    let n = arg("--n", 20_000);
    let lat_n = arg("--latency-n", 2_000);
    let conc = arg("--concurrency", 32);
    println!("# afterview-bench engine: n={n}, latency n={lat_n}, worker concurrency={conc}\n");
    let mut rows = vec![];
    let only =
        std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "memory,sqlite,sqlite-full".into());
    for name in ["memory", "sqlite", "sqlite-full"] {
        if !only.split(',').any(|o| o == name) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let make = || -> (Arc<dyn Broker>, Arc<dyn ResultBackend>) {
            match name {
                "memory" => {
                    let b = Arc::new(MemoryBackend::default());
                    (b.clone(), b)
                }
                _ => {
                    let opts = SqliteOptions {
                        synchronous_full: name == "sqlite-full",
                        ..Default::default()
                    };
                    let b =
                        Arc::new(SqliteBackend::open(dir.path().join("bench.db"), opts).unwrap());
                    (b.clone(), b)
                }
            }
        };
        let (broker, backend) = make();
        let f = run(broker, backend, n, lat_n, conc).await;
        emit(
            "engine",
            json!({"backend": name, "drain_per_s": f.drain, "enqueue_batch_per_s": f.enqueue_batch, "p99_ms": f.p99, "concurrency": conc, "n": n}),
        );
        rows.push((name, f));
    }
    let base = &rows[0].1;
    println!(
        "| backend | enqueue 1 producer (tasks/s) | enqueue 16 producers | enqueue batches of 500 | drain, results stored (tasks/s) | latency p50 / p95 / p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, f) in &rows {
        println!(
            "| {name} | {:.0} ({:.2}x) | {:.0} ({:.2}x) | {:.0} ({:.2}x) | {:.0} ({:.2}x) | {:.2} / {:.2} / {:.2} |",
            f.enqueue_seq,
            f.enqueue_seq / base.enqueue_seq,
            f.enqueue_par,
            f.enqueue_par / base.enqueue_par,
            f.enqueue_batch,
            f.enqueue_batch / base.enqueue_batch,
            f.drain,
            f.drain / base.drain,
            f.p50,
            f.p95,
            f.p99
        );
    }
    println!("\n(ratios are against the in-memory backend measured in the same run)");
}

fn noop(c: &Client, i: usize) -> afterview_engine::TaskMessage {
    let mut kw = Map::new();
    kw.insert("i".into(), json!(i));
    c.message("afterview.noop", vec![], kw, SendOptions::default())
        .unwrap()
}

async fn run(
    broker: Arc<dyn Broker>,
    backend: Arc<dyn ResultBackend>,
    n: usize,
    lat_n: usize,
    conc: usize,
) -> Figures {
    let registry = Registry::with_builtins();
    let client = Client::new(broker.clone(), backend.clone()).with_routes_from(&registry);
    let queues = vec!["celery".to_owned()];

    // Enqueue, one producer, one message per call.
    let t0 = Instant::now();
    for i in 0..n {
        broker.publish(&noop(&client, i)).await.unwrap();
    }
    let enqueue_seq = n as f64 / t0.elapsed().as_secs_f64();
    broker.purge(&queues).await.unwrap();

    // Enqueue, 16 concurrent producers.
    let t0 = Instant::now();
    let mut hs = vec![];
    for p in 0..16 {
        let (b, c) = (broker.clone(), client.clone());
        hs.push(tokio::spawn(async move {
            for i in (p..n).step_by(16) {
                b.publish(&noop(&c, i)).await.unwrap();
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let enqueue_par = n as f64 / t0.elapsed().as_secs_f64();
    broker.purge(&queues).await.unwrap();

    // Enqueue in batches (what the drain scenario starts from).
    let t0 = Instant::now();
    let msgs: Vec<_> = (0..n).map(|i| noop(&client, i)).collect();
    for chunk in msgs.chunks(500) {
        broker.publish_batch(chunk).await.unwrap();
    }
    let enqueue_batch = n as f64 / t0.elapsed().as_secs_f64();

    // Drain: start a worker on the full queue, count SUCCESS events.
    let mut events = backend.events().subscribe_all();
    let shutdown = Shutdown::new();
    let cfg = WorkerConfig {
        node: "bench@local".into(),
        queues: queues.clone(),
        concurrency: conc,
        idle_wait: Duration::from_millis(50),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(cfg, broker.clone(), backend.clone(), registry.clone());
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let t0 = Instant::now();
    let mut done = 0;
    let mut first: Option<Instant> = None;
    while done < n {
        match events.recv().await {
            Ok(m) if m.status == TaskState::Success => {
                first.get_or_insert_with(Instant::now);
                done += 1;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                panic!("event stream lagged by {k}")
            }
            Err(e) => panic!("{e}"),
        }
    }
    let _ = first;
    let drain = n as f64 / t0.elapsed().as_secs_f64();

    // Latency: one task at a time, publish to SUCCESS seen.
    let mut lat = Vec::with_capacity(lat_n);
    for i in 0..lat_n + 100 {
        let m = noop(&client, i);
        let t = Instant::now();
        let mut watch = client.watch(&m.id);
        broker.publish(&m).await.unwrap();
        loop {
            let s = watch.next().await.unwrap().unwrap();
            if s.status.is_terminal() {
                break;
            }
        }
        if i >= 100 {
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    shutdown.trigger();
    handle.await.unwrap().unwrap();
    Figures {
        enqueue_seq,
        enqueue_par,
        enqueue_batch,
        drain,
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
    }
}
