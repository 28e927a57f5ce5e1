//! Crashes, freezes, restarts and shutdowns of real processes: nothing is lost, nothing is
//! overwritten by a stale run.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::Env;

#[test]
fn sigkill_mid_task_is_redelivered_and_completed_once() {
    let env = Env::new();
    let a = env.worker("a@test", &["--lease", "1"]);
    let id = env.call("afterview.sleep", "{\"seconds\": 2}", &[]);
    env.wait_status(&id, &["PROCESSING"], Duration::from_secs(20));
    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    let _b = env.worker("b@test", &["--lease", "1"]);
    let m = env.wait_status(&id, &["SUCCESS"], Duration::from_secs(30));
    assert_eq!(m["worker"], "b@test", "the second worker finished it: {m}");
    assert_eq!(m["result"], json!({"slept": 2.0}));
    // Lease 1 s + the 1 s requeue sweep + the 2 s run, with slack for a loaded machine.
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "redelivered within seconds: {:?}",
        killed.elapsed()
    );
    // Worker reports refresh within a heartbeat; wait for the one after the run.
    let t0 = Instant::now();
    let stats = loop {
        let stats: serde_json::Value =
            serde_json::from_str(&env.ok(&["inspect", "stats"])).unwrap();
        if stats["b@test"]["total"]["afterview.sleep"] == 1 || t0.elapsed() > Duration::from_secs(6)
        {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        stats["b@test"]["total"]["afterview.sleep"], 1,
        "ran exactly once on b: {stats}"
    );
    assert_eq!(
        stats["b@test"]["total"]["afterview.sleep"], 1,
        "ran exactly once on b: {stats}"
    );
    let q: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "queues"])).unwrap();
    assert!(
        q.as_array()
            .unwrap()
            .iter()
            .all(|r| r["ready"] == 0 && r["running"] == 0),
        "{q}"
    );
}

#[test]
fn a_frozen_worker_cannot_overwrite_the_redelivered_result() {
    let env = Env::new();
    let a = env.worker("frozen@test", &["--lease", "1"]);
    let id = env.call("afterview.sleep", "{\"seconds\": 2}", &[]);
    env.wait_status(&id, &["PROCESSING"], Duration::from_secs(20));
    a.signal(libc::SIGSTOP);
    let b = env.worker("fresh@test", &["--lease", "1"]);
    let m = env.wait_status(&id, &["SUCCESS"], Duration::from_secs(30));
    assert_eq!(m["worker"], "fresh@test");
    a.signal(libc::SIGCONT);
    // The frozen run wakes up with its wall-clock sleep over; its writes must be refused.
    std::thread::sleep(Duration::from_secs(3));
    let after = env.meta(&id);
    assert_eq!(
        after["worker"], "fresh@test",
        "the stale run did not overwrite: {after}"
    );
    assert_eq!(after["date_done"], m["date_done"]);
    // It notices by whichever comes first after the thaw: a renewal refused ("Lease lost"), its
    // own deadline passed ("Lease ran out without a renewal"), or the fenced store refused
    // ("another run owns", "result dropped (fenced)").
    let log = a.log_text();
    assert!(
        log.contains("Lease lost")
            || log.contains("Lease ran out")
            || log.contains("another run owns")
            || log.contains("result dropped (fenced)")
            || log.contains("lease lost"),
        "the stale worker noticed: {log}"
    );
    drop(b);
}

#[test]
fn queued_delayed_and_revoked_tasks_survive_killing_everything() {
    let env = Env::new();
    let a = env.worker("first@test", &["-Q", "nobody-listens"]);
    let queued = env.call("afterview.noop", "{\"n\": 1}", &[]);
    let delayed = env.call("afterview.noop", "{\"n\": 2}", &["--countdown", "2"]);
    let revoked = env.call("afterview.noop", "{\"n\": 3}", &["--countdown", "2"]);
    let running = env.call(
        "afterview.sleep",
        "{\"seconds\": 1}",
        &["--queue", "nobody-listens"],
    );
    env.wait_status(&running, &["PROCESSING"], Duration::from_secs(20));
    env.ok(&["revoke", &revoked]);
    a.signal(libc::SIGKILL);
    drop(a);
    let _b = env.worker(
        "second@test",
        &["-Q", "celery,nobody-listens", "--lease", "1"],
    );
    for (id, n) in [(&queued, 1), (&delayed, 2)] {
        let m = env.wait_status(id, &["SUCCESS"], Duration::from_secs(30));
        assert_eq!(m["result"]["kwargs"]["n"], n);
    }
    let m = env.wait_status(&running, &["SUCCESS"], Duration::from_secs(60));
    assert_eq!(m["worker"], "second@test");
    std::thread::sleep(Duration::from_millis(500));
    let m = env.meta(&revoked);
    assert_eq!(m["status"], "REVOKED");
    assert!(
        m.get("worker").is_none(),
        "a revoked task never runs, even after a restart: {m}"
    );
}

#[test]
fn sigterm_gives_unfinished_tasks_back_and_a_second_signal_cuts_the_grace() {
    let env = Env::new();
    let mut a = env.worker("term@test", &["--shutdown-grace", "1"]);
    let quick = env.call("afterview.sleep", "{\"seconds\": 0.3}", &[]);
    let slow = env.call("afterview.sleep", "{\"seconds\": 30}", &[]);
    env.wait_status(&slow, &["PROCESSING"], Duration::from_secs(20));
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(
        a.log_text().contains("Giving unfinished tasks back"),
        "{}",
        a.log_text()
    );
    assert_eq!(env.meta(&quick)["status"], "SUCCESS");
    let q: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "queues"])).unwrap();
    let celery = q
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "celery")
        .unwrap()
        .clone();
    assert_eq!(
        (celery["ready"].as_u64(), celery["running"].as_u64()),
        (Some(1), Some(0)),
        "{q}"
    );

    // Second signal: a long grace is cut short.
    let mut b = env.worker("term2@test", &["--shutdown-grace", "60"]);
    env.wait_status(&slow, &["PROCESSING"], Duration::from_secs(20));
    b.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let q: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "queues"])).unwrap();
    let celery = q
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "celery")
        .unwrap()
        .clone();
    assert_eq!(celery["ready"].as_u64(), Some(1), "given back again: {q}");
}
