//! Faults under load, all in one run: tasks drain through Redis (AOF on) while workers are
//! SIGKILLed and replaced, Redis is restarted, and every worker is then restarted in turn with
//! SIGTERM, as a deploy does. Nothing may be lost: every task ends SUCCESS, no task's result is
//! stored twice (a second run's write is fenced and sends no `task-succeeded`, so a task run
//! again shows as a re-delivery, not here), and re-deliveries stay within what the faults
//! explain (a SIGKILLed worker's held messages, runs cut by the Redis restart); they are a lower
//! bound, as receipts published while the subscriber reconnects are not seen. `AFTERVIEW_FAULT_TASKS` sets the size (2,000 by
//! default; 10,000 by hand). Counts come from the workers' own Celery task events
//! (`task-received` per delivery, `task-succeeded` per completion), read on Redis pub/sub.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use afterview_engine_redis::testing::{RedisServer, redis};
use base64::Engine as _;
use serde_json::Value;

use crate::Env;
use crate::redis_interop::{celery_send_sleeps, eventually, redis_args, strs};

/// Deliveries and completions per task id, from the task events.
#[derive(Default)]
struct Tally {
    received: HashMap<String, u32>,
    succeeded: HashMap<String, u32>,
}

/// Follows `task-received` and `task-succeeded` on pub/sub until `stop`, reconnecting when
/// Redis goes away.
fn follow_events(url: String, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(mut conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
        else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
        let mut ps = conn.as_pubsub();
        if ps.psubscribe("/0.celeryev/task.*").is_err() {
            continue;
        }
        while !stop.load(Ordering::SeqCst) {
            match ps.get_message() {
                Ok(m) => record(&m, &tally),
                Err(e) if e.is_timeout() => {}
                Err(_) => break,
            }
        }
    }
}

fn record(m: &redis::Msg, tally: &Mutex<Tally>) {
    let Ok(env) = serde_json::from_slice::<Value>(m.get_payload_bytes()) else {
        return;
    };
    let Some(body) = env["body"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return;
    };
    let Some(uuid) = body["uuid"].as_str() else {
        return;
    };
    let mut t = tally.lock().unwrap();
    let map = match m.get_channel_name() {
        c if c.ends_with("task.received") => &mut t.received,
        c if c.ends_with("task.succeeded") => &mut t.succeeded,
        _ => return,
    };
    *map.entry(uuid.to_owned()).or_default() += 1;
}

/// The last lines of each worker's log, for a failure message.
fn logs_of(workers: &[crate::Proc]) -> String {
    workers
        .iter()
        .map(|w| {
            let text = w.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            format!("--- {}\n{tail}", w.log.display())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn successes(r: &RedisServer, n: usize) -> Option<usize> {
    let c = redis::Client::open(r.url(1)).ok()?;
    let mut conn = c.get_connection().ok()?;
    let mut done = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|i| format!("celery-task-meta-fault-{i}"))
            .collect();
        let vals: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query(&mut conn).ok()?;
        done += vals
            .iter()
            .flatten()
            .filter(|s| s.contains("\"SUCCESS\""))
            .count();
    }
    Some(done)
}

#[test]
fn kills_a_redis_restart_and_a_rolling_restart_lose_nothing() {
    let n: usize = std::env::var("AFTERVIEW_FAULT_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (concurrency, prefetch) = (2, 1); // `Env::worker` runs `-c 2`
    let mut redis = RedisServer::start(4, true);
    let env = Env::new();
    let ra = redis_args(&redis);
    let mut wargs = strs(&ra);
    wargs.extend(["-Q", "celery", "--lease", "2", "-E"]);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let events = {
        let (url, stop, tally) = (redis.url(0), stop.clone(), tally.clone());
        std::thread::spawn(move || follow_events(url, stop, tally))
    };
    // Every task is queued before the workers start: when the workers consumed while the
    // producer was still sending (slowly, on a loaded machine), the whole run could end before
    // the Redis restart, and no recovery could be seen.
    celery_send_sleeps(&redis, n, 0.01, "fault");
    let t0 = Instant::now();
    let mut workers: Vec<crate::Proc> = (0..3)
        .map(|i| env.worker(&format!("w{i}@faults"), &wargs))
        .collect();
    let mut spawned = 3;
    let at = |share: f64, r: &RedisServer| {
        eventually("the run to progress", Duration::from_secs(240), || {
            successes(r, n).filter(|&d| d as f64 >= share * n as f64)
        })
    };
    let kill = |workers: &mut Vec<crate::Proc>, spawned: &mut usize| {
        let victim = workers.remove(0);
        victim.signal(libc::SIGKILL);
        // The replacement starts while the run goes on (waiting for it here would let the
        // remaining work drain before the next fault).
        workers.push(env.worker_unwaited(&format!("w{spawned}@faults"), &wargs, &[]));
        *spawned += 1;
    };
    // 1. A SIGKILL at 10 %.
    at(0.1, &redis);
    kill(&mut workers, &mut spawned);
    // 2. Redis restarted (a crash: SHUTDOWN NOSAVE, AOF replayed) at 30 %.
    at(0.3, &redis);
    let down = Instant::now();
    redis.restart();
    let outage = down.elapsed();
    // What survived the crash (AOF), then how long until the workers add to it.
    let before = successes(&redis, n).unwrap();
    let restarted = Instant::now();
    let recovery = loop {
        if successes(&redis, n).is_some_and(|d| d > before) {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "no new result within 60 s of the Redis restart ({before} before it, {:?} now); the workers' logs:\n{}",
            successes(&redis, n),
            logs_of(&workers)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // 3. Another SIGKILL at 50 %.
    at(0.5, &redis);
    kill(&mut workers, &mut spawned);
    // 4. A rolling restart at 60 %: each worker gets SIGTERM (running tasks finish or go back),
    //    exits, and its replacement starts.
    at(0.6, &redis);
    for _ in 0..workers.len() {
        let mut w = workers.remove(0);
        w.wait_log("Worker started", Duration::from_secs(20));
        w.signal(libc::SIGTERM);
        eventually("a graceful exit", Duration::from_secs(40), || {
            w.child.try_wait().unwrap().map(|_| ())
        });
        workers.push(env.worker(&format!("w{spawned}@faults"), &wargs));
        spawned += 1;
    }
    let done = eventually("every task to finish", Duration::from_secs(300), || {
        successes(&redis, n).filter(|&d| d == n)
    });
    let wall = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    events.join().unwrap();
    let t = tally.lock().unwrap();
    let deliveries: u32 = t.received.values().sum();
    let twice: Vec<_> = t.succeeded.iter().filter(|(_, c)| **c > 1).collect();
    let redelivered = deliveries.saturating_sub(n as u32);
    eprintln!(
        "faults: {n} tasks in {:.1} s, lost 0 ({done} SUCCESS), 2 SIGKILLs, 1 Redis restart ({} ms down; the first new result {} ms after it was back), rolling SIGTERM of 3 workers; {} completions seen, none twice; {deliveries} deliveries seen: {redelivered} beyond one per task",
        wall.as_secs_f64(),
        outage.as_millis(),
        recovery.as_millis(),
        t.succeeded.len()
    );
    // The fault run is also a benchmark: `bench/figures.sh` collects this line.
    if let Ok(path) = std::env::var("BENCH_JSON") {
        use std::io::Write;
        let line = serde_json::json!({
            "bench": "faults",
            "tasks": n,
            "wall_s": wall.as_secs_f64(),
            "lost": n - done,
            "completed_twice": twice.len(),
            "redeliveries": redelivered,
            // Events are read on pub/sub: a receipt published while the subscriber reconnects
            // (the Redis restart) is not seen, so re-deliveries are a lower bound.
            "received_tasks": t.received.len(),
            "redis_down_ms": outage.as_millis() as u64,
            "recovery_ms": recovery.as_millis() as u64,
        });
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"))
            .expect("append to BENCH_JSON");
    }
    assert_eq!(done, n, "lost tasks");
    assert!(twice.is_empty(), "tasks completed twice: {twice:?}");
    // What the faults explain: each SIGKILL re-delivers at most the messages its worker held
    // (concurrency × prefetch); the Redis crash can cost at most the runs in flight on the three
    // workers (their leases may run out while Redis is down; the test server fsyncs every
    // write, so no acknowledged claim is undone). A rolling SIGTERM gives back only what could
    // not finish in the grace period.
    let bound = 2 * concurrency * prefetch + 3 * concurrency * prefetch;
    assert!(
        (redelivered as usize) <= bound,
        "{redelivered} re-deliveries, more than the faults explain ({bound})"
    );
    for w in &mut workers {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "a replacement died: {}",
            w.log_text()
        );
    }
}
