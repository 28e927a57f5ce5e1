//! Celery's control plane on Redis: pidbox commands (answered for every worker node this process
//! runs), broadcasts with replies (what `inspect` and [`Broker::workers`] use), and monitoring
//! events (`worker-*` always, `task-*` when enabled), so `celery inspect`, `celery control` and
//! Flower see Afterview workers as they see Celery's.
//!
//! [`Broker::workers`]: afterview_engine::Broker::workers

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use afterview_engine::BackendError;
use afterview_engine::backend::{ActiveTask, WorkerReport};
use afterview_engine::message::py_repr;
use afterview_engine::result::{ResultMeta, TaskState};
use chrono::{DateTime, TimeZone, Utc};
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::calls::unavailable;
use crate::celery::{self, SEP};
use crate::conn::Conn;
use crate::{Inner, pubsub};

/// How long revocations received over the pidbox are kept (Celery keeps them 3 h in memory).
const PIDBOX_REVOKE_KEEP: Duration = Duration::from_secs(86_400);
/// How long an undelivered reply list lives.
const REPLY_TTL_MS: u64 = 60_000;

struct Node {
    report: WorkerReport,
    last_event: Instant,
}

/// Control-plane state of this process.
pub(crate) struct Control {
    nodes: Mutex<HashMap<String, Node>>,
    clock: AtomicU64,
    task_events: AtomicBool,
    started: Mutex<HashMap<String, Instant>>,
    pidbox: tokio::sync::OnceCell<()>,
}

impl Control {
    pub(crate) fn new(task_events: bool) -> Self {
        Self {
            nodes: Mutex::default(),
            clock: AtomicU64::new(0),
            task_events: AtomicBool::new(task_events),
            started: Mutex::default(),
            pidbox: tokio::sync::OnceCell::new(),
        }
    }

    /// Remembers when `uuid` started, for its `task-succeeded` event's runtime. Runs whose
    /// final state another process stored (a lost lease, a retry taken elsewhere) leave their
    /// entry: once there are 10,000, those older than a day are forgotten.
    fn note_started(&self, uuid: &str) {
        let mut started = self.started.lock().expect("started lock");
        if started.len() >= 10_000 {
            started.retain(|_, t| t.elapsed() < std::time::Duration::from_secs(86_400));
        }
        started.insert(uuid.to_owned(), Instant::now());
    }

    /// Lamport clock: the next value.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Lamport clock: merge a received value.
    fn adjust(&self, other: u64) {
        let _ = self
            .clock
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                Some(c.max(other) + 1)
            });
    }

    fn events_on(&self) -> bool {
        self.task_events.load(Ordering::Relaxed)
    }
}

fn epoch_secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

fn from_epoch_secs(v: &Value) -> DateTime<Utc> {
    v.as_f64()
        .and_then(|s| Utc.timestamp_micros((s * 1e6) as i64).single())
        .unwrap_or_else(Utc::now)
}

fn loadavg() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() == 3 {
        json!(v)
    } else {
        json!([0.0, 0.0, 0.0])
    }
}

fn rusage() -> Value {
    // From /proc: CPU times in clock ticks (100 Hz on Linux), peak RSS in KiB.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    let count = |i: usize| {
        fields
            .get(i)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    json!({
        "utime": ticks(11), "stime": ticks(12), "maxrss": hwm,
        "ixrss": 0, "idrss": 0, "isrss": 0,
        "minflt": count(7), "majflt": count(9), "nswap": 0,
        "inblock": 0, "oublock": 0, "nvcsw": 0, "nivcsw": 0,
    })
}

/// A pidbox command, decoded: what a control message asks, of whom.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    /// The command (`ping`, `revoke`, ...).
    pub method: String,
    /// Its arguments (an object).
    pub arguments: Value,
    /// Explicit node names, when given.
    pub destination: Option<Vec<String>>,
    /// A glob over node names, when given.
    pub pattern: Option<String>,
    /// The sender's logical clock.
    pub clock: Option<u64>,
    /// The whole body (ticket, reply_to).
    pub body: Value,
}

impl ControlRequest {
    /// Decodes a kombu pidbox envelope; `None` when unreadable, without a method, or expired
    /// at `now` (seconds since the epoch). Never panics, whatever the bytes.
    pub fn decode(raw: &[u8], now: f64) -> Option<ControlRequest> {
        let (headers, body) = celery::open(raw)?;
        if let Some(exp) = headers.get("expires").and_then(Value::as_f64)
            && exp > 0.0
            && exp < now
        {
            return None;
        }
        let method = body.get("method")?.as_str()?.to_owned();
        let arguments = match body.get("arguments") {
            Some(v @ Value::Object(_)) => v.clone(),
            _ => json!({}),
        };
        let destination = body.get("destination").and_then(Value::as_array).map(|a| {
            a.iter()
                .take(1024)
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        });
        let pattern = body
            .get("pattern")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(ControlRequest {
            method,
            arguments,
            destination,
            pattern,
            clock: headers.get("clock").and_then(Value::as_u64),
            body,
        })
    }

    /// Whether the command is for `node`.
    pub fn addresses(&self, node: &str) -> bool {
        self.destination
            .as_ref()
            .is_none_or(|d| d.iter().any(|x| x == node))
            && self.pattern.as_deref().is_none_or(|p| glob(p, node))
    }
}

/// Longest `pattern` a control message may carry (node names are far shorter).
const MAX_PATTERN: usize = 256;
/// Most task ids one `revoke` control message may name; the rest are ignored (logged).
const MAX_REVOKE_IDS: usize = 10_000;

/// `*` and `?` globbing, for `pattern` + `matcher: glob`: iterative (no recursion, so a pattern
/// of 300,000 `*` cannot overflow the stack) and O(pattern × text); a pattern longer than
/// [`MAX_PATTERN`] matches nothing.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    if p.len() > MAX_PATTERN {
        return false;
    }
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it has absorbed up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` absorb one more character and retry after it.
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn request_info(node: &WorkerReport, a: &ActiveTask) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "args": a.args,
        "kwargs": a.kwargs,
        "type": a.name,
        "hostname": node.node,
        "time_start": epoch_secs(a.time_start),
        "acknowledged": false,
        "delivery_info": {"exchange": "", "routing_key": a.queue, "priority": 0, "redelivered": a.redelivered},
        "worker_pid": node.pid,
    })
}

fn queue_info(q: &str) -> Value {
    json!({
        "name": q,
        "exchange": {"name": q, "type": "direct", "arguments": null, "durable": true, "passive": false,
                      "auto_delete": false, "delivery_mode": null, "no_declare": false},
        "routing_key": q,
        "queue_arguments": null, "binding_arguments": null, "consumer_arguments": null,
        "durable": true, "exclusive": false, "auto_delete": false, "no_ack": false,
        "alias": null, "bindings": [], "no_declare": null, "expires": null, "message_ttl": null,
        "max_length": null, "max_length_bytes": null, "max_priority": null,
    })
}

fn ids_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    }
}

/// One running task as a Celery worker's `inspect active` reports it.
fn foreign_active(t: &Value) -> ActiveTask {
    let text = |k: &str| match t.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => py_repr(v),
        None => String::new(),
    };
    ActiveTask {
        id: text("id"),
        name: text("name"),
        args: text("args"),
        kwargs: text("kwargs"),
        queue: t
            .pointer("/delivery_info/routing_key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        time_start: from_epoch_secs(t.get("time_start").unwrap_or(&Value::Null)),
        retries: 0,
        delivery_tag: String::new(),
        redelivered: t
            .pointer("/delivery_info/redelivered")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// Rebuilds a worker report from a Python (or any Celery) worker's inspect replies.
fn foreign_report(
    node: &str,
    stats: &Value,
    active: Option<&Value>,
    registered: Option<&Value>,
    queues: Option<&Value>,
) -> WorkerReport {
    let now = Utc::now();
    // A hundred years at most: a broken or hostile reply's `uptime` must not overflow the
    // clock's range (a panic of `inspect` and of the monitor's request).
    let uptime = stats
        .get("uptime")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .clamp(0, 100 * 365 * 86_400);
    let active = active
        .and_then(Value::as_array)
        .map(|a| a.iter().map(foreign_active).collect())
        .unwrap_or_default();
    let total: BTreeMap<String, u64> = stats
        .get("total")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    WorkerReport {
        node: node.to_owned(),
        hostname: node.split_once('@').map_or(node, |(_, h)| h).to_owned(),
        pid: stats.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32,
        queues: queues
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|q| q.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        concurrency: stats
            .pointer("/pool/max-concurrency")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize,
        prefetch_count: stats
            .get("prefetch_count")
            .and_then(Value::as_u64)
            .unwrap_or(0) as usize,
        registered: registered
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| {
                        n.as_str()
                            .map(|s| s.split(' ').next().unwrap_or(s).to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default(),
        active,
        total,
        started_at: now - chrono::Duration::seconds(uptime),
        heartbeat_at: now,
        sw_ident: "py-celery".into(),
        sw_ver: String::new(),
        freq: 2.0,
    }
}

impl Inner {
    /// Publishes one monitoring event on `/{db}.celeryev/<type with dots>`.
    pub(crate) async fn publish_event(&self, kind: &str, hostname: &str, fields: Value) {
        let body = celery::event(kind, hostname, self.control.tick(), fields);
        let rk = kind.replace('-', ".");
        let env = celery::envelope(&body, json!({"hostname": hostname}), "celeryev", &rk, 1);
        let mut c = self.conn();
        let r: Result<i64, _> = c
            .publish(format!("/{}.celeryev/{rk}", self.broker_db), env)
            .await;
        if let Err(e) = r {
            debug!(error = %e, event = kind, "Could not publish an event.");
        }
    }

    fn worker_fields(&self, r: &WorkerReport) -> Value {
        json!({
            "freq": r.freq,
            "active": r.active.len(),
            "processed": r.total.values().sum::<u64>(),
            "loadavg": loadavg(),
            "sw_ident": r.sw_ident,
            "sw_ver": r.sw_ver,
            "sw_sys": std::env::consts::OS,
        })
    }

    /// Records a worker's report, answers the pidbox for it and sends its worker events.
    pub(crate) async fn heartbeat(&self, report: &WorkerReport) -> Result<(), BackendError> {
        self.control
            .pidbox
            .get_or_try_init(|| async {
                let (tx, rx) = oneshot::channel();
                self.subs
                    .send(pubsub::Cmd::Pidbox(tx))
                    .map_err(|_| BackendError::unavailable("pub/sub task stopped"))?;
                match tokio::time::timeout(Duration::from_secs(5), rx).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(BackendError::unavailable(
                        "could not subscribe to the control channel",
                    )),
                }
            })
            .await?;
        let first_or_due = {
            let mut nodes = self.control.nodes.lock().expect("nodes lock");
            match nodes.get_mut(&report.node) {
                None => {
                    nodes.insert(
                        report.node.clone(),
                        Node {
                            report: report.clone(),
                            last_event: Instant::now(),
                        },
                    );
                    Some("worker-online")
                }
                Some(n) => {
                    n.report = report.clone();
                    let due = n.last_event.elapsed().as_secs_f64() >= report.freq * 0.9;
                    if due {
                        n.last_event = Instant::now();
                    }
                    due.then_some("worker-heartbeat")
                }
            }
        };
        if let Some(kind) = first_or_due {
            self.publish_event(kind, &report.node, self.worker_fields(report))
                .await;
        }
        Ok(())
    }

    /// A worker of this process stopped: it leaves the pidbox and says `worker-offline`.
    pub(crate) async fn worker_gone(&self, node: &str) -> Result<(), BackendError> {
        let gone = self.control.nodes.lock().expect("nodes lock").remove(node);
        if let Some(n) = gone {
            let mut r = n.report;
            r.active.clear();
            self.publish_event("worker-offline", node, self.worker_fields(&r))
                .await;
        }
        Ok(())
    }

    /// The `task-received` event, when task events are on.
    pub(crate) async fn received(&self, worker: &str, raw: &[u8]) {
        if !self.control.events_on() {
            return;
        }
        let Some((h, _)) = celery::open(raw) else {
            return;
        };
        let g = |k: &str| h.get(k).cloned().unwrap_or(Value::Null);
        self.publish_event(
            "task-received",
            worker,
            json!({
                "uuid": g("id"), "name": g("task"), "args": g("argsrepr"), "kwargs": g("kwargsrepr"),
                "root_id": g("root_id"), "parent_id": g("parent_id"), "retries": g("retries"),
                "eta": g("eta"), "expires": g("expires"),
            }),
        )
        .await;
    }

    /// The task event matching a stored state, when task events are on.
    pub(crate) async fn task_event(&self, meta: &ResultMeta) {
        if !self.control.events_on() {
            if meta.status.is_terminal() {
                self.control
                    .started
                    .lock()
                    .expect("started lock")
                    .remove(&meta.task_id);
            }
            return;
        }
        let host = meta
            .worker
            .clone()
            .unwrap_or_else(afterview_engine::message::origin);
        let uuid = &meta.task_id;
        let (kind, fields) = match meta.status {
            TaskState::Started => {
                self.control.note_started(uuid);
                ("task-started", json!({"uuid": uuid}))
            }
            TaskState::Success => {
                let runtime = self
                    .control
                    .started
                    .lock()
                    .expect("started lock")
                    .remove(uuid)
                    .map_or(0.0, |t| t.elapsed().as_secs_f64());
                (
                    "task-succeeded",
                    json!({"uuid": uuid, "result": py_repr(&meta.result), "runtime": runtime}),
                )
            }
            TaskState::Failure | TaskState::Retry => {
                // A retry's next attempt may start on another process.
                self.control
                    .started
                    .lock()
                    .expect("started lock")
                    .remove(uuid);
                (
                    if meta.status == TaskState::Failure {
                        "task-failed"
                    } else {
                        "task-retried"
                    },
                    json!({"uuid": uuid, "exception": celery::exception_repr(&meta.result),
                           "traceback": meta.traceback}),
                )
            }
            TaskState::Revoked => {
                self.control
                    .started
                    .lock()
                    .expect("started lock")
                    .remove(uuid);
                let reason = meta
                    .result
                    .pointer("/exc_message/0")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let terminated = reason == "terminated";
                (
                    "task-revoked",
                    json!({"uuid": uuid, "terminated": terminated,
                           "signum": if terminated { json!(15) } else { Value::Null },
                           "expired": reason == "expired"}),
                )
            }
            _ => return,
        };
        self.publish_event(kind, &host, fields).await;
    }

    /// Tells every worker (Python's included) that `task_id` is revoked: a cast, as
    /// `app.control.revoke` sends it.
    pub(crate) async fn cast_revoke(&self, task_id: &str, terminate: bool) {
        let body = json!({
            "method": "revoke",
            "arguments": {"task_id": task_id, "terminate": terminate,
                          "signal": if terminate { json!("SIGTERM") } else { Value::Null }},
            "destination": null, "pattern": null, "matcher": null,
        });
        let env = celery::envelope(
            &body,
            json!({"clock": self.control.tick(), "expires": 0}),
            "celery.pidbox",
            "",
            2,
        );
        let mut c = self.conn();
        let r: Result<i64, _> = c
            .publish(format!("/{}.celery.pidbox", self.broker_db), env)
            .await;
        if let Err(e) = r {
            warn!(error = %e, task_id, "Could not broadcast the revocation; workers see it at claim.");
        }
    }

    /// Handles one pidbox message (a control command) for the nodes of this process.
    pub(crate) async fn handle_pidbox(&self, raw: &[u8]) {
        let Some(c) = ControlRequest::decode(raw, epoch_secs(Utc::now())) else {
            debug!("Ignoring an unreadable or expired control message.");
            return;
        };
        if let Some(clock) = c.clock {
            self.control.adjust(clock);
        }
        let (method, args, body) = (c.method.as_str(), c.arguments.clone(), &c.body);
        let nodes: Vec<WorkerReport> = self
            .control
            .nodes
            .lock()
            .expect("nodes lock")
            .values()
            .map(|n| n.report.clone())
            .filter(|r| c.addresses(&r.node))
            .collect();
        let ticket = body.get("ticket").and_then(Value::as_str);
        let reply_rk = body
            .pointer("/reply_to/routing_key")
            .and_then(Value::as_str);
        for node in nodes {
            let reply = self.command(&node, method, &args).await;
            if let (Some(reply), Some(ticket), Some(rk)) = (reply, ticket, reply_rk) {
                self.send_reply(&node.node, reply, ticket, rk).await;
            }
        }
    }

    async fn send_reply(&self, node: &str, reply: Value, ticket: &str, rk: &str) {
        let env = celery::envelope(
            &json!({ node: reply }),
            json!({"ticket": ticket, "clock": self.control.tick()}),
            "reply.celery.pidbox",
            rk,
            1,
        );
        let mut c = self.conn();
        let r: Result<i64, _> = self
            .scripts
            .reply
            .arg(rk)
            .arg(env)
            .arg(REPLY_TTL_MS)
            .invoke_async(&mut c)
            .await;
        if let Err(e) = r {
            debug!(error = %e, "Could not deliver a control reply.");
        }
    }

    async fn recent_revoked(&self) -> Vec<String> {
        let mut c = self.conn();
        let rows: Result<redis::streams::StreamRangeReply, _> = c
            .xrevrange_count("afterview:revocations", "+", "-", 1000)
            .await;
        rows.map(|r| r.ids.iter().filter_map(|e| e.get::<String>("id")).collect())
            .unwrap_or_default()
    }

    fn stats(&self, r: &WorkerReport) -> Value {
        let addr = self.client.get_connection_info().addr().clone();
        let (host, port) = match &addr {
            redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
            other => (format!("{other:?}"), 0),
        };
        json!({
            "total": r.total,
            "pid": r.pid,
            "clock": self.control.clock.load(Ordering::SeqCst).to_string(),
            "uptime": (Utc::now() - r.started_at).num_seconds().max(0),
            "pool": {
                "implementation": "afterview:tokio",
                "max-concurrency": r.concurrency,
                "processes": [r.pid],
                "max-tasks-per-child": "N/A",
                "put-guarded-by-semaphore": false,
                "timeouts": [0, 0],
            },
            "broker": {
                "hostname": host, "port": port, "transport": "redis",
                "virtual_host": self.broker_db.to_string(), "userid": null, "insist": false,
                "ssl": matches!(addr, redis::ConnectionAddr::TcpTls { .. }),
                "login_method": null, "uri_prefix": null, "heartbeat": 120.0,
                "connect_timeout": 4, "failover_strategy": "round-robin",
                "alternates": [], "transport_options": {},
            },
            "prefetch_count": r.prefetch_count,
            "rusage": rusage(),
            "afterview": r,
        })
    }

    async fn command(&self, node: &WorkerReport, method: &str, args: &Value) -> Option<Value> {
        let clock = || self.control.clock.load(Ordering::SeqCst);
        Some(match method {
            "ping" => json!({"ok": "pong"}),
            "stats" => self.stats(node),
            "active" => json!(
                node.active
                    .iter()
                    .map(|a| request_info(node, a))
                    .collect::<Vec<_>>()
            ),
            // Prefetched and ETA messages stay in Redis (leases, schedule), not in the worker.
            "reserved" | "scheduled" => json!([]),
            "revoked" => json!(self.recent_revoked().await),
            "registered" => json!(node.registered),
            "active_queues" => json!(
                node.queues
                    .iter()
                    .map(|q| queue_info(q))
                    .collect::<Vec<_>>()
            ),
            "conf" => self.conf(node),
            "report" => json!({"ok": format!(
                "software -> afterview:{} ({})\nbroker -> {}\nqueues -> {}\nconcurrency -> {}",
                node.sw_ver, std::env::consts::OS, self.description, node.queues.join(", "), node.concurrency
            )}),
            "clock" => json!({"clock": clock()}),
            "query_task" => {
                let ids = ids_of(args.get("ids"));
                let found: serde_json::Map<String, Value> = node
                    .active
                    .iter()
                    .filter(|a| ids.contains(&a.id))
                    .map(|a| (a.id.clone(), json!(["active", request_info(node, a)])))
                    .collect();
                Value::Object(found)
            }
            "hello" => {
                if args.get("from_node").and_then(Value::as_str) == Some(node.node.as_str()) {
                    return None;
                }
                json!({"revoked": self.recent_revoked().await, "clock": clock()})
            }
            "heartbeat" => {
                self.publish_event("worker-heartbeat", &node.node, self.worker_fields(node))
                    .await;
                return None;
            }
            "enable_events" => {
                if !self.control.task_events.swap(true, Ordering::SeqCst) {
                    info!("Task events enabled by a control command.");
                }
                json!({"ok": "task events enabled"})
            }
            "disable_events" => {
                self.control.task_events.store(false, Ordering::SeqCst);
                json!({"ok": "task events disabled"})
            }
            "revoke" => self.revoke_command(node, args).await,
            "terminate" => {
                // `celery control terminate SIGNAL ID...`: Celery's worker treats it as a
                // revoke with terminate (the signal is ours to choose: cancel, then the kill).
                let mut args = args.clone();
                if let Value::Object(m) = &mut args {
                    m.insert("terminate".into(), Value::Bool(true));
                }
                self.revoke_command(node, &args).await
            }
            "shutdown" => {
                warn!(
                    "A control command asked for shutdown; stop Afterview workers with SIGTERM instead."
                );
                return None;
            }
            other => json!({"error": format!("KeyError('{other}')")}),
        })
    }

    /// `conf`: the settings Celery's `inspect conf` shows, as ours stand.
    fn conf(&self, node: &WorkerReport) -> Value {
        json!({
            "broker_url": self.broker_url,
            "worker_concurrency": node.concurrency,
            "worker_prefetch_multiplier": node.prefetch_count.checked_div(node.concurrency).unwrap_or(1),
            "task_acks_late": true,
            "task_default_queue": "celery",
            "result_expires": self.opts.result_expires.as_secs(),
            "worker_send_task_events": self.control.events_on(),
            "broker_transport_options": {"visibility_timeout": self.opts.visibility_timeout.as_secs()},
        })
    }

    /// `revoke` from the pidbox (Python's `AsyncResult.revoke`, `celery control revoke`): each
    /// id becomes a durable tombstone (at most [`MAX_REVOKE_IDS`] per command).
    async fn revoke_command(&self, node: &WorkerReport, args: &Value) -> Value {
        let mut ids = ids_of(args.get("task_id"));
        if ids.len() > MAX_REVOKE_IDS {
            warn!(
                count = ids.len(),
                kept = MAX_REVOKE_IDS,
                "A revoke named too many tasks; the rest are ignored."
            );
            ids.truncate(MAX_REVOKE_IDS);
        }
        let terminate = args
            .get("terminate")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut running = vec![];
        for id in &ids {
            match self.revoke(id, terminate, PIDBOX_REVOKE_KEEP).await {
                Ok((_, r, new)) => {
                    if node.active.iter().any(|a| &a.id == id) || r {
                        running.push(id.clone());
                    } else if new {
                        // Not running on any of our workers: REVOKED at once (the first of
                        // them to hear it), as a Celery 5.6.2+ worker marks a revoked task it
                        // does not run; a waiter would otherwise wait for its ETA.
                        self.mark_revoked(id).await;
                    }
                }
                Err(e) => {
                    warn!(error = %e, task_id = %id, "Could not record a revocation.")
                }
            }
        }
        if !terminate {
            json!({"ok": format!("tasks {} flagged as revoked", ids.join(", "))})
        } else if running.is_empty() {
            json!({"ok": "terminate: tasks unknown"})
        } else {
            json!({"ok": format!("terminate: {}", running.join(", "))})
        }
    }

    /// Stores REVOKED for `id` if it has not started anywhere we can see: its result is absent,
    /// PENDING, RECEIVED or RETRY (a foreign worker's STARTED or a final state is kept).
    async fn mark_revoked(&self, id: &str) {
        let mut c = self.results.clone();
        let current: Result<Option<String>, _> =
            c.get(format!("{}{id}", crate::RESULT_PREFIX)).await;
        let waiting = match current {
            Ok(None) => true,
            Ok(Some(s)) => ResultMeta::from_json(&s).is_ok_and(|m| {
                matches!(
                    m.status,
                    TaskState::Pending | TaskState::Received | TaskState::Retry
                )
            }),
            Err(_) => false,
        };
        if !waiting {
            return;
        }
        if let Err(e) = self.store_meta(&ResultMeta::revoked(id), None, false).await {
            warn!(error = %e, task_id = %id, "Could not store a revoked task's state.");
        }
    }

    /// Sends a command to all workers and collects `(node, reply)` for `timeout`.
    pub(crate) async fn broadcast(
        &self,
        method: &str,
        arguments: Value,
        destination: Option<Vec<String>>,
        timeout: Duration,
        want_reply: bool,
    ) -> Result<Vec<(String, Value)>, BackendError> {
        let oid = uuid::Uuid::new_v4().to_string();
        let ticket = uuid::Uuid::new_v4().to_string();
        let reply_q = format!("{oid}.reply.celery.pidbox");
        let member = format!("{oid}{SEP}{SEP}{reply_q}");
        let limit = destination.as_ref().map(Vec::len);
        let mut c = self.conn();
        let mut body = json!({
            "method": method, "arguments": arguments, "destination": destination,
            "pattern": null, "matcher": null,
        });
        let keys: Vec<String> = ["", "3", "6", "9"]
            .iter()
            .map(|p| {
                if p.is_empty() {
                    reply_q.clone()
                } else {
                    format!("{reply_q}{SEP}{p}")
                }
            })
            .collect();
        // Armed before the binding exists, so a caller that gives up at any point removes it.
        let binding = ReplyBinding {
            conn: want_reply.then(|| c.clone()),
            member: member.clone(),
            keys: keys.clone(),
        };
        if want_reply {
            c.sadd::<_, _, i64>("_kombu.binding.reply.celery.pidbox", &member)
                .await
                .map_err(unavailable)?;
            body["ticket"] = json!(ticket);
            body["reply_to"] = json!({"exchange": "reply.celery.pidbox", "routing_key": oid});
        }
        let expires = epoch_secs(Utc::now()) + timeout.as_secs_f64();
        let env = celery::envelope(
            &body,
            json!({"clock": self.control.tick(), "expires": if want_reply { expires } else { 0.0 }}),
            "celery.pidbox",
            "",
            2,
        );
        c.publish::<_, _, i64>(format!("/{}.celery.pidbox", self.broker_db), env)
            .await
            .map_err(unavailable)?;
        if !want_reply {
            return Ok(vec![]);
        }
        let collected = self.collect(&keys, &ticket, timeout, limit).await;
        binding.remove().await;
        collected
    }

    async fn collect(
        &self,
        keys: &[String],
        ticket: &str,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<(String, Value)>, BackendError> {
        // Blocking reads get their own connection (never the shared, multiplexed one).
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(None);
        let mut bc = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(unavailable)?;
        let deadline = Instant::now() + timeout;
        let mut out = vec![];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let secs = left.as_secs_f64().max(0.01);
            let got: Option<(String, Vec<u8>)> = bc.brpop(keys, secs).await.map_err(unavailable)?;
            let Some((_, raw)) = got else {
                break;
            };
            let Some((headers, body)) = celery::open(&raw) else {
                continue;
            };
            if headers.get("ticket").and_then(Value::as_str) != Some(ticket) {
                continue;
            }
            if let Value::Object(m) = body {
                out.extend(m);
            }
        }
        Ok(out)
    }

    /// Every live worker (Python or ours), from `stats`, `active`, `registered` and
    /// `active_queues` replies collected for `timeout`.
    pub(crate) async fn workers(
        &self,
        timeout: Duration,
    ) -> Result<Vec<WorkerReport>, BackendError> {
        let (stats, active, registered, queues) = tokio::join!(
            self.broadcast("stats", json!({}), None, timeout, true),
            self.broadcast("active", json!({"safe": true}), None, timeout, true),
            self.broadcast("registered", json!({}), None, timeout, true),
            self.broadcast("active_queues", json!({}), None, timeout, true),
        );
        let stats = stats?;
        let index = |v: Result<Vec<(String, Value)>, BackendError>| -> HashMap<String, Value> {
            v.unwrap_or_default().into_iter().collect()
        };
        let (active, registered, queues) = (index(active), index(registered), index(queues));
        let mut out: Vec<WorkerReport> = stats
            .into_iter()
            .map(|(node, s)| {
                match s
                    .get("afterview")
                    .and_then(|r| serde_json::from_value::<WorkerReport>(r.clone()).ok())
                {
                    Some(r) => r,
                    None => foreign_report(
                        &node,
                        &s,
                        active.get(&node),
                        registered.get(&node),
                        queues.get(&node),
                    ),
                }
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out.dedup_by(|a, b| a.node == b.node);
        Ok(out)
    }
}

/// A broadcast's reply binding (its member of `_kombu.binding.reply.celery.pidbox`) and reply
/// lists, removed however the broadcast ends. A caller that gives up mid-wait (a monitor page
/// closed, `inspect` interrupted) drops the broadcast; left behind, the binding set would grow
/// with every such call, and every control reply (ours and kombu's) scans it.
struct ReplyBinding {
    conn: Option<Conn>,
    member: String,
    keys: Vec<String>,
}

impl ReplyBinding {
    /// Removes them now (the broadcast ended).
    async fn remove(mut self) {
        if let Some(mut c) = self.conn.take() {
            let _: Result<i64, _> = c
                .srem("_kombu.binding.reply.celery.pidbox", &self.member)
                .await;
            let _: Result<i64, _> = c.del(&self.keys).await;
        }
    }
}

impl Drop for ReplyBinding {
    fn drop(&mut self) {
        if let Some(mut c) = self.conn.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (member, keys) = (
                std::mem::take(&mut self.member),
                std::mem::take(&mut self.keys),
            );
            rt.spawn(async move {
                let _: Result<i64, _> = c.srem("_kombu.binding.reply.celery.pidbox", &member).await;
                let _: Result<i64, _> = c.del(&keys).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{foreign_report, glob};

    #[test]
    fn an_absurd_uptime_in_a_foreign_reply_does_not_panic() {
        for uptime in [10_000_000_000_000_i64, i64::MAX, -5] {
            let r = foreign_report(
                "x@y",
                &serde_json::json!({"uptime": uptime}),
                None,
                None,
                None,
            );
            assert!(r.started_at <= chrono::Utc::now(), "{uptime}");
        }
    }

    #[test]
    fn glob_matches_like_fnmatch() {
        assert!(glob("w*@host", "w1@host"));
        assert!(glob("w?@*", "w1@vm"));
        assert!(!glob("w?@*", "w12@vm"));
        assert!(glob("*", ""));
        assert!(!glob("a", "b"));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("*a*b", "xxaxxbxx"));
        assert!(glob("a*", "a"));
        assert!(!glob("", "a"));
    }

    #[test]
    fn hostile_patterns_neither_overflow_nor_hang() {
        // 300,000 stars aborted the process with the recursive matcher.
        let stars = "*".repeat(300_000);
        let t = std::time::Instant::now();
        assert!(!glob(&stars, "w1@host"), "over the length limit: no match");
        let evil = format!("{}b", "*a".repeat(100));
        assert!(!glob(&evil, &"a".repeat(255)));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
