//! `ws-fanout`: many WebSocket followers on one API process. `--clients` sockets (16 per user,
//! the per-user cap) each follow their user's running `afterview.sleep` task, which reports
//! progress every `--every-ms`. Measured: the server's resident memory per open socket (RSS
//! with every socket open and idle, minus RSS before, over the count) and the delay from each
//! progress update (`updated_at_ms`, the server's clock) to its arrival at each follower.
//! Baseline in the same run: the same measure with 16 followers (one user, one task). The
//! many-follower round runs twice: task starts spread over one progress period (steady load)
//! and all at once (every update of every task in the same millisecond: the worst burst).
//! Delays are also reported per update round (updates grouped by their `updated_at_ms`, one
//! period each): the first, the last (which meets the tasks' results and 10,000 closes) and the
//! worst p99 of the rounds between; and how long after its last progress each follower received
//! the result (stored right after it: a Nagle delay shows here); and the CPU the server and the
//! bench used in the last round against a round between (`/proc/<pid>/stat` every 20 ms): the
//! last round's extra CPU is what the results and the closes cost, a steadier figure than the
//! delays. `FANOUT_DUMP=<prefix>` writes every `updated_at_ms delay` pair to
//! `<prefix>-<followers>-<spread>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use afterview_engine::Client;
use afterview_engine_sqlite::{SqliteBackend, SqliteOptions};
use afterview_store::MetadataStore;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::api::{Serve, pct, send_sleep, serve_env};

/// Sockets per user (the API's cap).
const PER_USER: usize = 16;

fn token(u: usize) -> String {
    format!("fanout-user-{u:06}-token-0123456789")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The `updated_at_ms` field of a frame, found without parsing the rest.
fn updated_at_ms(frame: &str) -> Option<i64> {
    let rest = &frame[frame.find("\"updated_at_ms\":")? + 16..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct Outcome {
    sockets: usize,
    refused: usize,
    rss_per_socket_kib: f64,
    delays: Vec<f64>,
    /// Per update round (one period of `updated_at_ms` each), the sorted delays.
    rounds: Vec<Vec<f64>>,
    /// Per follower, how long after its last progress frame the result frame arrived; sorted.
    result_gaps: Vec<f64>,
    /// CPU (ms) of the server and of this process per update round, sampled every 20 ms.
    round_cpu: Vec<(f64, f64)>,
    wall: Duration,
}

/// `(epoch ms, server CPU s, bench CPU s)` every 20 ms until `stop` is set.
async fn sample_cpu(pid: u32, stop: Arc<std::sync::atomic::AtomicBool>) -> Vec<(f64, f64, f64)> {
    let pid = pid.to_string();
    let mut out = vec![];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        tick.tick().await;
        let at = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
        out.push((at, crate::cpu_seconds(&pid), crate::cpu_seconds("self")));
    }
    out
}

/// The CPU (ms; server, bench) between the samples at or before `from` and `to` (epoch ms).
fn cpu_between(samples: &[(f64, f64, f64)], from: f64, to: f64) -> (f64, f64) {
    let at = |t: f64| {
        samples
            .iter()
            .rev()
            .find(|s| s.0 <= t)
            .or(samples.first())
            .map_or((0.0, 0.0), |s| (s.1, s.2))
    };
    let (a, b) = (at(from), at(to));
    ((b.0 - a.0) * 1000.0, (b.1 - a.1) * 1000.0)
}

/// Groups `(updated_at_ms, delay)` pairs by period from the first update; each group sorted.
fn by_round(pairs: &[(f64, f64)], every_ms: u64) -> Vec<Vec<f64>> {
    let Some(t0) = pairs.iter().map(|p| p.0).reduce(f64::min) else {
        return vec![];
    };
    let mut rounds: Vec<Vec<f64>> = vec![];
    for &(at, d) in pairs {
        let i = ((at - t0) / every_ms as f64) as usize;
        if rounds.len() <= i {
            rounds.resize(i + 1, vec![]);
        }
        rounds[i].push(d);
    }
    for r in &mut rounds {
        r.sort_by(f64::total_cmp);
    }
    rounds
}

async fn round(clients: usize, every_ms: u64, seconds: f64, stagger: bool) -> Outcome {
    let users = clients.div_ceil(PER_USER);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let tokens: Vec<String> = (0..users)
        .map(|u| format!("{}=user{u}", token(u)))
        .collect();
    let s: Serve = serve_env(
        &data,
        &["-c", &users.to_string()],
        &[("AFTERVIEW_AUTH_TOKENS", tokens.join(","))],
    );
    let pid = s.child.id();
    let backend =
        Arc::new(SqliteBackend::open(data.join("afterview.db"), SqliteOptions::default()).unwrap());
    let meta = afterview_store::sqlite::SqliteMetadata::open(&data.join("metadata.db")).unwrap();
    let client = Client::new(backend.clone(), backend);
    let mut ids = vec![];
    for u in 0..users {
        let id = afterview_core::ids::new_id();
        meta.insert_task(&afterview_store::TaskRecord {
            id: id.clone(),
            owner: format!("user{u}"),
            name: "afterview.sleep".into(),
            image_ids: vec![],
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    // Connect every follower (bounded concurrency), each reading until its task ends.
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut hs = vec![];
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for c in 0..clients {
        let u = c / PER_USER;
        let url = format!("ws://{}/api/ws/tasks/{}?token={}", s.addr, ids[u], token(u));
        let (sem, refused, connected) = (sem.clone(), refused.clone(), connected.clone());
        hs.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.unwrap();
            // A 4 KiB read buffer, as the server's follower sockets have: with tungstenite's
            // default (128 KiB) every read zero-fills the buffer's free space, and 10,000
            // clients reading one burst spent 15 % of the machine in memset (perf), time the
            // server then waited for a core. A real follower is on another machine.
            let config = WebSocketConfig::default().read_buffer_size(4096);
            let ws = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await;
            drop(permit);
            let Ok((mut ws, _)) = ws else {
                refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return (vec![], None);
            };
            connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut d = vec![];
            let (mut last_progress, mut result_gap) = (None, None);
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    // Read only what is measured (the bench shares the machine's two cores
                    // with the server: a full JSON parse per frame would be the bench's cost).
                    let now = chrono::Utc::now().timestamp_micros() as f64 / 1000.0;
                    if !t.ends_with("\"type\":\"progress\"}") {
                        // The result: how long after the last progress it arrived (the server
                        // stores it right after that progress).
                        result_gap = last_progress.map(|l| now - l);
                        // Then as a browser does: the server's close, answered (a follower
                        // on another machine closes on its own CPU, not this one's).
                        let _ = tokio::time::timeout(Duration::from_secs(10), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        break;
                    }
                    if let Some(at) = updated_at_ms(&t) {
                        d.push((at as f64, now - at as f64));
                        last_progress = Some(now);
                    }
                }
            }
            (d, result_gap)
        }));
    }
    let t0 = Instant::now();
    while connected.load(std::sync::atomic::Ordering::SeqCst)
        + refused.load(std::sync::atomic::Ordering::SeqCst)
        < clients
        && t0.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sockets = connected.load(std::sync::atomic::Ordering::SeqCst);
    let after = rss_kib(pid);
    let steps = ((seconds * 1000.0) / every_ms as f64).round().max(1.0) as u64;
    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn(sample_cpu(pid, stop.clone()));
    let gap = Duration::from_micros(every_ms * 1000 / users as u64);
    for id in &ids {
        if stagger {
            // Starts spread over one period, so updates arrive steadily (as from tasks
            // started by different people), not all in the same millisecond.
            tokio::time::sleep(gap).await;
        }
        send_sleep(
            &client,
            id.clone(),
            json!({"seconds": seconds, "progress_steps": steps}),
        )
        .await;
    }
    let mut pairs = vec![];
    let mut result_gaps = vec![];
    for h in hs {
        let (d, gap) = h.await.unwrap();
        pairs.extend(d);
        result_gaps.extend(gap);
    }
    result_gaps.sort_by(f64::total_cmp);
    tokio::time::sleep(Duration::from_millis(40)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    if let Ok(p) = std::env::var("FANOUT_DUMP") {
        let txt: String = pairs.iter().map(|(a, d)| format!("{a} {d:.3}\n")).collect();
        std::fs::write(format!("{p}-{clients}-{stagger}"), txt).unwrap();
    }
    let mut delays: Vec<f64> = pairs.iter().map(|p| p.1).collect();
    delays.sort_by(f64::total_cmp);
    let rounds = by_round(&pairs, every_ms);
    // Each round's CPU: from its first update to the next round's (the last: to the end).
    let t0 = pairs.iter().map(|p| p.0).reduce(f64::min).unwrap_or(0.0);
    let end = samples.last().map_or(t0, |s| s.0);
    let round_cpu = (0..rounds.len())
        .map(|i| {
            let from = t0 + (i as u64 * every_ms) as f64;
            let to = if i + 1 == rounds.len() {
                end
            } else {
                from + every_ms as f64
            };
            cpu_between(&samples, from, to)
        })
        .collect();
    drop(s);
    Outcome {
        sockets,
        refused: refused.load(std::sync::atomic::Ordering::SeqCst),
        rss_per_socket_kib: (after.saturating_sub(before)) as f64 / sockets.max(1) as f64,
        delays,
        rounds,
        result_gaps,
        round_cpu,
        wall: start.elapsed(),
    }
}

pub(crate) async fn run(clients: usize, every_ms: u64, seconds: usize) {
    println!(
        "# afterview-bench ws-fanout: {clients} followers, 16 per user, progress every {every_ms} ms for {seconds} s\n"
    );
    println!(
        "| followers | tasks | starts | sockets open | refused | server RSS per socket (KiB) | updates received | p50 (ms) | p99 (ms) | max (ms) | wall (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut base_p99 = None;
    let mut per_round = vec![];
    for (n, stagger) in [(PER_USER, false), (clients, true), (clients, false)] {
        let o = round(n, every_ms, seconds as f64, stagger).await;
        let (p50, p99) = (pct(&o.delays, 0.5), pct(&o.delays, 0.99));
        let rounds = o.rounds.as_slice();
        let first = rounds.first().map_or(&[][..], Vec::as_slice);
        let last = rounds.last().map_or(&[][..], Vec::as_slice);
        let middle = rounds.get(1..rounds.len().saturating_sub(1)).unwrap_or(&[]);
        let worst_middle = middle.iter().map(|r| pct(r, 0.99)).fold(0.0, f64::max);
        // CPU per round: the last one's against the median of the rounds between.
        let cpu = o.round_cpu.as_slice();
        let mid_cpu = |f: fn(&(f64, f64)) -> f64| {
            let mut v: Vec<f64> = cpu
                .get(1..cpu.len().saturating_sub(1))
                .unwrap_or(&[])
                .iter()
                .map(f)
                .collect();
            v.sort_by(f64::total_cmp);
            pct(&v, 0.5)
        };
        let (mid_server, mid_bench) = (mid_cpu(|c| c.0), mid_cpu(|c| c.1));
        let (last_server, last_bench) = cpu.last().copied().unwrap_or((0.0, 0.0));
        let ratio = base_p99.map_or(String::new(), |b: f64| format!(" ({:.1}x)", p99 / b));
        base_p99.get_or_insert(p99);
        crate::emit(
            "ws-fanout",
            json!({
                "followers": n,
                "starts": if stagger { "spread" } else { "at once" },
                "sockets": o.sockets,
                "refused": o.refused,
                "rss_per_socket_kib": o.rss_per_socket_kib,
                "updates": o.delays.len(),
                "p50_ms": p50,
                "p99_ms": p99,
                "first_update_p50_ms": pct(first, 0.5),
                "first_update_p99_ms": pct(first, 0.99),
                "last_update_p50_ms": pct(last, 0.5),
                "last_update_p99_ms": pct(last, 0.99),
                "middle_updates_worst_p99_ms": worst_middle,
                "result_after_last_progress_p50_ms": pct(&o.result_gaps, 0.5),
                "result_after_last_progress_max_ms": o.result_gaps.last().copied().unwrap_or(0.0),
                "middle_round_server_cpu_ms": mid_server,
                "middle_round_bench_cpu_ms": mid_bench,
                "last_round_server_cpu_ms": last_server,
                "last_round_bench_cpu_ms": last_bench,
            }),
        );
        per_round.push(format!(
            "| {n} | {} | {:.2} / {:.2} | {worst_middle:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {mid_server:.0} / {mid_bench:.0} | {last_server:.0} / {last_bench:.0} |",
            if stagger { "spread" } else { "all at once" },
            pct(first, 0.5),
            pct(first, 0.99),
            pct(last, 0.5),
            pct(last, 0.99),
            pct(&o.result_gaps, 0.5),
            o.result_gaps.last().copied().unwrap_or(0.0),
        ));
        println!(
            "| {n} | {} | {} | {} | {} | {:.1} | {} | {p50:.2} | {p99:.2}{ratio} | {:.2} | {:.1} |",
            n.div_ceil(PER_USER),
            if stagger {
                "spread over a period"
            } else {
                "all at once"
            },
            o.sockets,
            o.refused,
            o.rss_per_socket_kib,
            o.delays.len(),
            o.delays.last().copied().unwrap_or(0.0),
            o.wall.as_secs_f64()
        );
    }
    println!(
        "\nPer update round (updates grouped by `updated_at_ms`, one period each; ms):\n\n| followers | starts | first update p50 / p99 | worst p99 of the rounds between | last update (with the results and closes) p50 / p99 | the result after the last progress, p50 / max | CPU of a round between, server / bench (ms, median) | CPU of the last round, server / bench (ms) |\n|---|---|---|---|---|---|---|---|"
    );
    for line in per_round {
        println!("{line}");
    }
}
