//! Prometheus metrics, rendered by hand (text format 0.0.4): request latency by route, tasks
//! by name and state, task run time, queue depth. Small enough not to need an exporter crate.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use afterview_engine::backend::QueueStats;
use afterview_engine::{ResultMeta, TaskState};

const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const TASK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const MAX_TRACKED: usize = 50_000;

#[derive(Debug, Clone)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Self {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.buckets.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Default)]
struct Inner {
    http: BTreeMap<(String, String, u16), Histogram>,
    tasks: BTreeMap<(String, String), u64>,
    runtime: BTreeMap<String, Histogram>,
    started: HashMap<String, Instant>,
}

/// The registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Records one HTTP request.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, secs: f64) {
        let mut g = self.inner.lock().expect("metrics lock");
        g.http
            .entry((method.to_owned(), route.to_owned(), status))
            .or_insert_with(|| Histogram::new(HTTP_BUCKETS))
            .observe(secs);
    }

    /// Records a task state change seen on the event stream.
    pub fn observe_task(&self, m: &ResultMeta) {
        let name = m.name.clone().unwrap_or_else(|| "unknown".into());
        let mut g = self.inner.lock().expect("metrics lock");
        *g.tasks
            .entry((name.clone(), m.status.as_str().to_owned()))
            .or_default() += 1;
        match m.status {
            // A run's start is its first STARTED or progress update (a worker writes STARTED
            // only for runs that outlast 20 ms without reporting progress).
            TaskState::Started | TaskState::Processing => {
                if g.started.len() >= MAX_TRACKED {
                    g.started.clear();
                }
                g.started
                    .entry(m.task_id.clone())
                    .or_insert_with(Instant::now);
            }
            ref s if s.is_terminal() => {
                if let Some(t0) = g.started.remove(&m.task_id) {
                    g.runtime
                        .entry(name)
                        .or_insert_with(|| Histogram::new(TASK_BUCKETS))
                        .observe(t0.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }

    /// The text exposition, with the current queue depths.
    pub fn render(&self, queues: &[QueueStats]) -> String {
        let g = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        out.push_str(
            "# HELP afterview_http_request_duration_seconds HTTP request latency by route.\n",
        );
        out.push_str("# TYPE afterview_http_request_duration_seconds histogram\n");
        for ((m, r, s), h) in &g.http {
            h.render(
                &mut out,
                "afterview_http_request_duration_seconds",
                &format!("method=\"{m}\",route=\"{}\",status=\"{s}\"", esc(r)),
            );
        }
        out.push_str(
            "# HELP afterview_task_events_total Task state changes seen, by task name and state.\n",
        );
        out.push_str("# TYPE afterview_task_events_total counter\n");
        for ((n, s), c) in &g.tasks {
            let _ = writeln!(
                out,
                "afterview_task_events_total{{name=\"{}\",state=\"{}\"}} {c}",
                esc(n),
                esc(s)
            );
        }
        out.push_str("# HELP afterview_task_runtime_seconds Time from STARTED or the first progress update to a terminal state, by task name (runs under 20 ms that report no progress are not observed).\n");
        out.push_str("# TYPE afterview_task_runtime_seconds histogram\n");
        for (n, h) in &g.runtime {
            h.render(
                &mut out,
                "afterview_task_runtime_seconds",
                &format!("name=\"{}\"", esc(n)),
            );
        }
        out.push_str("# HELP afterview_queue_messages Messages per queue and state.\n");
        out.push_str("# TYPE afterview_queue_messages gauge\n");
        for q in queues {
            for (state, n) in [
                ("ready", q.ready),
                ("scheduled", q.scheduled),
                ("running", q.leased),
            ] {
                let _ = writeln!(
                    out,
                    "afterview_queue_messages{{queue=\"{}\",state=\"{state}\"}} {n}",
                    esc(&q.queue)
                );
            }
        }
        out
    }
}
