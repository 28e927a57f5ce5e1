//! `redis-cost`: what one task costs Redis on the worker side. `--n` `afterview.noop` tasks are
//! enqueued in batches (not measured), then one worker (`--concurrency`, prefetch 4) drains
//! them with results stored; Redis's own counters (`INFO commandstats`, `INFO cpu`) are read
//! before and after the drain. Reported per task: the script calls (each one round trip; the
//! worker sends nothing else while draining), the commands Redis executed for them, and Redis's
//! CPU time.
//! Issue 15's goals: ≤ 6 commands and ≤ 15 µs of Redis CPU per task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use afterview_engine::{Broker, Client, Registry, ResultBackend, Shutdown, Worker, WorkerConfig};
use afterview_engine_redis::testing::{RedisServer, command_stats, publish_noops, redis};
use afterview_engine_redis::{RedisBackend, RedisOptions};

/// `(calls and µs per command, CPU seconds)` from the server's counters.
fn counters(url: &str) -> (BTreeMap<String, (u64, u64)>, f64) {
    let calls = command_stats(url);
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .unwrap();
    let cpu: String = redis::cmd("INFO").arg("cpu").query(&mut conn).unwrap();
    let secs = cpu
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "used_cpu_sys_main_thread" | "used_cpu_user_main_thread")
                .then(|| v.trim().parse::<f64>().ok())?
        })
        .sum();
    (calls, secs)
}

pub(crate) async fn run(n: usize, concurrency: usize) {
    let server = RedisServer::start(2, false);
    let url = server.url(0);
    let backend = Arc::new(
        RedisBackend::open(&url, Some(&server.url(1)), RedisOptions::default())
            .await
            .unwrap(),
    );
    let client = Client::new(backend.clone(), backend.clone());
    let msgs = publish_noops(&client, n).await;
    let last = msgs.last().unwrap().id.clone();
    let (calls0, cpu0) = counters(&url);
    let t0 = Instant::now();
    let shutdown = Shutdown::new();
    let worker = Worker::new(
        WorkerConfig {
            concurrency,
            prefetch_multiplier: 4,
            ..WorkerConfig::default()
        },
        backend.clone() as Arc<dyn Broker>,
        backend.clone() as Arc<dyn ResultBackend>,
        Registry::with_builtins(),
    );
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    // Poll the last task's result (one GET) until it is terminal, and only then the queue's
    // counts: the count script decodes every leased envelope, and run during the drain it was
    // Redis work of the measurement, not of the worker.
    while !client.result(&last).await.unwrap().status.is_terminal() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    loop {
        let stats = backend
            .queue_stats(Some(&["celery".to_owned()]))
            .await
            .unwrap();
        if stats
            .iter()
            .map(|q| q.ready + q.scheduled + q.leased)
            .sum::<u64>()
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = t0.elapsed();
    let (calls1, cpu1) = counters(&url);
    shutdown.trigger();
    shutdown.trigger();
    let _ = handle.await;
    let delta = |k: &str| {
        let (c1, u1) = calls1.get(k).copied().unwrap_or_default();
        let (c0, u0) = calls0.get(k).copied().unwrap_or_default();
        ((c1 - c0) as f64 / n as f64, (u1 - u0) as f64 / n as f64)
    };
    let per = |k: &str| delta(k).0;
    println!(
        "# afterview-bench redis-cost: {n} afterview.noop tasks, one worker -c {concurrency} (prefetch 4), results stored\n"
    );
    println!(
        "drain {:.0} tasks/s; Redis CPU {:.1} µs per task\n",
        n as f64 / wall.as_secs_f64(),
        (cpu1 - cpu0) * 1e6 / n as f64
    );
    println!(
        "| command (executed by Redis, inside scripts or not) | per task | µs per task |\n|---|---|---|"
    );
    let mut executed = 0.0;
    for k in calls1.keys() {
        let v = per(k);
        if v < 0.005 || k == "info" || k == "evalsha" || k == "eval" {
            continue;
        }
        executed += v;
        println!("| {k} | {v:.2} | {:.2} |", delta(k).1);
    }
    let scripts = per("evalsha") + per("eval");
    let script_us = delta("evalsha").1 + delta("eval").1;
    crate::emit(
        "redis-cost",
        serde_json::json!({
            "n": n,
            "concurrency": concurrency,
            "drain_per_s": n as f64 / wall.as_secs_f64(),
            "redis_cpu_us_per_task": (cpu1 - cpu0) * 1e6 / n as f64,
            "script_calls_per_task": scripts,
            "commands_per_task": executed,
        }),
    );
    println!(
        "\nper task: {scripts:.3} script calls (round trips: claims and result writes go in batches), {executed:.1} commands executed inside Redis; the scripts' own time {script_us:.1} µs (the commands inside included)"
    );
    drop(server);
}
