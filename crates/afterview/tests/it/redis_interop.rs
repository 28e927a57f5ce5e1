//! Redis as broker and result backend, against real peers: a private `redis-server` per test,
//! Python Celery clients and workers, the `celery` CLI and Flower (pinned, from the venv that
//! `scripts/python-env.sh` prepares), and our own workers killed and Redis restarted for real.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use afterview_engine_redis::testing::{RedisServer, redis};
use serde_json::{Value, json};

use crate::Env;
use crate::api::{ALICE, Server, body};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The pinned Celery/Flower venv (created on first use; reused afterwards).
pub(crate) fn venv() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        let out = Command::new("bash")
            .arg(format!("{REPO}/scripts/python-env.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/python-env.sh");
        assert!(out.status.success(), "scripts/python-env.sh failed");
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("venv path").trim())
    })
}

/// Runs a Python script in the venv; returns its stdout (it must succeed).
pub(crate) fn python(script: &str, env: &[(&str, &str)]) -> String {
    let mut c = Command::new(venv().join("bin/python"));
    c.arg("-c").arg(script);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("python runs");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Sends `n` `afterview.sleep` tasks of `seconds` from Python Celery through one producer
/// connection, with task ids `<prefix>-<i>` (broker on db 0, results on db 1 of `redis`).
pub(crate) fn celery_send_sleeps(redis: &RedisServer, n: usize, seconds: f64, prefix: &str) {
    python(
        r#"
import os
from celery import Celery
app = Celery('p', broker=os.environ['B'], backend=os.environ['R'])
with app.producer_or_acquire() as p:
    for i in range(int(os.environ['N'])):
        app.send_task('afterview.sleep', kwargs={'seconds': float(os.environ['S'])},
                      task_id=os.environ['P'] + f'-{i}', producer=p)
"#,
        &[
            ("B", &redis.url(0)),
            ("R", &redis.url(1)),
            ("N", &n.to_string()),
            ("S", &seconds.to_string()),
            ("P", prefix),
        ],
    );
}

/// A Python process we started (Celery worker, Flower), killed with its group on drop.
struct PyProc {
    child: Child,
}

impl PyProc {
    fn spawn(args: &[&str], dir: &Path, log: PathBuf, env: &[(&str, &str)]) -> Self {
        let mut c = Command::new(venv().join("bin/celery"));
        c.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        Self {
            child: c.spawn().expect("celery runs"),
        }
    }
}

impl Drop for PyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Broker and backend flags for our processes.
pub(crate) fn redis_args(r: &RedisServer) -> [String; 4] {
    [
        "--broker".into(),
        r.url(0),
        "--result-backend".into(),
        r.url(1),
    ]
}

pub(crate) fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

const PY_CLIENT: &str = r#"
import json, os, time
from celery import Celery
from celery.exceptions import TaskRevokedError
app = Celery('client', broker=os.environ['B'], backend=os.environ['R'])
img = os.environ['IMG']
out = {}

def run(name, queue, **kw):
    return app.send_task(name, kwargs=kw, queue=queue).get(timeout=120)

vis = run('app.tasks.visualization_tasks.generate_visualization', 'visualizations',
          image_id=img, procedure_id='rhinoplasty', user_id='alice')
out['visualization'] = vis
out['comparison'] = run('app.tasks.visualization_tasks.generate_comparison', 'visualizations',
          image_id=img, procedure_ids=['rhinoplasty', 'brow-lift'], user_id='alice')
out['export'] = run('app.tasks.export_tasks.generate_export', 'exports',
          visualization_ids=[vis['id']], user_id='alice')
out['infographic'] = run('app.tasks.export_tasks.generate_cost_infographic', 'exports',
          procedure_ids=['rhinoplasty', 'facelift'], user_id='alice')
out['noop'] = app.send_task('afterview.noop', args=[1, 'a'], kwargs={'k': True}).get(timeout=30)

# An ETA task LPUSHed now (as Celery does) waits in our schedule, not in a worker's memory.
t0 = time.time()
r = app.send_task('afterview.noop', args=['later'], countdown=2)
out['eta'] = {'result': r.get(timeout=30), 'seconds': time.time() - t0}

# A revoke of a task that waits for its ETA marks it REVOKED at once, as Celery 5.6.2+
# workers do: a waiter does not wait for the ETA.
r = app.send_task('afterview.noop', args=['never'], countdown=60)
time.sleep(0.5)
t1 = time.time()
app.control.revoke(r.id)
try:
    r.get(timeout=10)
    out['revoke_waiting'] = 'no exception'
except TaskRevokedError:
    out['revoke_waiting'] = {'state': r.state, 'seconds': time.time() - t1}
except Exception as e:
    out['revoke_waiting'] = {'error': type(e).__name__, 'state': r.state}

r = app.send_task('afterview.fail', kwargs={'message': 'boom from rust'})
try:
    r.get(timeout=30)
    out['fail'] = 'no exception'
except Exception as e:
    out['fail'] = {'type': type(e).__name__, 'text': str(e), 'state': r.state}

r = app.send_task('no.such.task', args=[1])
try:
    r.get(timeout=30)
except Exception as e:
    out['unknown'] = {'type': type(e).__name__, 'text': str(e)}

r = app.send_task('afterview.sleep', kwargs={'seconds': 3})
seen = []
t0 = time.time()
while time.time() - t0 < 20:
    if r.state == 'PROCESSING':
        seen.append(r.info)
    if r.ready():
        break
    time.sleep(0.1)
out['progress'] = seen
out['sleep'] = r.get(timeout=30)

r = app.send_task('afterview.sleep', kwargs={'seconds': 60})
t0 = time.time()
while r.state != 'PROCESSING' and time.time() - t0 < 20:
    time.sleep(0.05)
out['active'] = app.control.inspect(timeout=1).active()
out['running_id'] = r.id
open(os.environ['RUNNING'], 'w').write(r.id)
# Held running until the test has asked the worker about it (at most 60 s).
while os.environ.get('RELEASE') and not os.path.exists(os.environ['RELEASE']) and time.time() - t0 < 60:
    time.sleep(0.05)
t1 = time.time()
app.control.revoke(r.id, terminate=True)
try:
    r.get(timeout=30)
    out['revoke'] = 'no exception'
except TaskRevokedError as e:
    out['revoke'] = {'text': str(e), 'state': r.state, 'seconds': time.time() - t1}

# `celery control terminate SIGTERM <id>` sends the `terminate` command (not `revoke`).
r = app.send_task('afterview.sleep', kwargs={'seconds': 60})
t0 = time.time()
while r.state != 'PROCESSING' and time.time() - t0 < 20:
    time.sleep(0.05)
t1 = time.time()
replies = app.control.broadcast('terminate', arguments={'signal': 'SIGTERM', 'task_id': r.id}, reply=True, timeout=1)
try:
    r.get(timeout=30)
    out['terminate'] = 'no exception'
except TaskRevokedError as e:
    out['terminate'] = {'replies': replies, 'state': r.state, 'seconds': time.time() - t1}
out['ping'] = app.control.inspect(timeout=1).ping()
print(json.dumps(out))
"#;

/// Python `send_task` of every seed task and of the built-ins runs on our worker; results,
/// failures, progress and revoke-with-terminate look to Python as they would from Celery; the
/// `celery` CLI's `inspect ping` and `inspect active` get our worker's answers; and our API's
/// WebSocket follows a task that a worker in another process runs, through the result channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_drive_our_worker_and_the_websocket_follows_through_redis() {
    let redis = RedisServer::start(4, false);
    let ra = redis_args(&redis);
    let mut serve_args = vec!["--no-worker"];
    serve_args.extend(strs(&ra));
    let s = Server::with_users_args(&serve_args);
    let mut wargs = strs(&ra);
    wargs.extend(["-Q", "celery,visualizations,exports"]);
    let worker = s.env.worker("rs1@%h", &wargs);
    let node = format!("rs1@{}", afterview_engine::hostname());

    // The API (no worker of its own) and the worker process meet only in Redis.
    let image_id = s.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let (st, acc) = body(
        s.post(
            ALICE,
            "/api/visualizations?async_processing=true",
            json!({"image_id": image_id, "procedure_id": "facelift"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 202, "{acc}");
    let frames = s.ws(ALICE, acc["task_id"].as_str().unwrap()).await;
    assert!(
        frames.iter().any(|f| f["type"] == "progress"),
        "progress pushed through Redis pub/sub: {frames:?}"
    );
    let last = frames.last().unwrap();
    assert_eq!(
        (&last["type"], &last["data"]["state"]),
        (&json!("complete"), &json!("SUCCESS"))
    );

    let running_file = s.env.dir.path().join("running-id");
    let release_file = s.env.dir.path().join("release");
    let client = {
        let (b, r, img, run, release) = (
            redis.url(0),
            redis.url(1),
            image_id.clone(),
            running_file.display().to_string(),
            release_file.display().to_string(),
        );
        std::thread::spawn(move || {
            python(
                PY_CLIENT,
                &[
                    ("B", &b),
                    ("R", &r),
                    ("IMG", &img),
                    ("RUNNING", &run),
                    ("RELEASE", &release),
                ],
            )
        })
    };
    // While Python holds a long task running on our worker, the real `celery` CLI asks it.
    let running = eventually("the long task to start", Duration::from_secs(120), || {
        std::fs::read_to_string(&running_file).ok()
    });
    let cli = |what: &str| -> Value {
        let out = Command::new(venv().join("bin/celery"))
            .args([
                "-b",
                &redis.url(0),
                "inspect",
                what,
                "--json",
                "--timeout",
                "2",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("celery inspect {what}: {e}: {text}"))
    };
    let active = cli("active");
    assert!(
        active[&node]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == running.as_str() && t["name"] == "afterview.sleep"),
        "{active}"
    );
    assert_eq!(cli("ping")[&node], json!({"ok": "pong"}));
    // The Python client revokes it now (a fixed hold raced a cold `celery` CLI's start: it
    // saw the next task running).
    std::fs::write(&release_file, b"").unwrap();

    let out: Value = serde_json::from_str(client.join().unwrap().trim()).unwrap();
    assert_eq!(out["visualization"]["procedure_id"], "rhinoplasty");
    assert!(
        out["visualization"]["after_image_url"]
            .as_str()
            .unwrap()
            .starts_with("/api/")
    );
    assert_eq!(out["comparison"]["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        (&out["export"]["kind"], &out["export"]["format"]),
        (&json!("report"), &json!("pdf"))
    );
    assert_eq!(out["infographic"]["kind"], "infographic");
    assert_eq!(
        out["noop"],
        json!({"args": [1, "a"], "kwargs": {"k": true}})
    );
    assert_eq!(out["fail"]["state"], "FAILURE");
    assert!(
        out["fail"]["text"]
            .as_str()
            .unwrap()
            .contains("boom from rust"),
        "{}",
        out["fail"]
    );
    assert_eq!(
        out["unknown"]["type"], "NotRegistered",
        "{}",
        out["unknown"]
    );
    let progress = out["progress"].as_array().unwrap();
    assert!(
        !progress.is_empty(),
        "PROCESSING visible to AsyncResult.info"
    );
    assert!(
        progress
            .iter()
            .all(|p| p["progress"].as_u64().is_some_and(|v| v <= 100))
    );
    assert_eq!(out["sleep"], json!({"slept": 3.0}));
    assert_eq!(
        out["revoke_waiting"]["state"], "REVOKED",
        "{}",
        out["revoke_waiting"]
    );
    assert!(out["revoke_waiting"]["seconds"].as_f64().unwrap() < 5.0);
    assert_eq!(out["revoke"]["state"], "REVOKED", "{}", out["revoke"]);
    assert!(
        out["revoke"]["text"]
            .as_str()
            .unwrap()
            .contains("terminated")
    );
    assert!(
        out["revoke"]["seconds"].as_f64().unwrap() < 5.0,
        "terminated promptly"
    );
    assert_eq!(out["terminate"]["state"], "REVOKED", "{}", out["terminate"]);
    assert!(
        !out["terminate"]["replies"].to_string().contains("KeyError"),
        "{}",
        out["terminate"]
    );
    assert!(out["terminate"]["seconds"].as_f64().unwrap() < 5.0);
    assert_eq!(out["ping"][&node], json!({"ok": "pong"}));
    drop(worker);
}

const PY_TASKS: &str = r#"
import os, time
from celery import Celery
app = Celery('pytasks', broker=os.environ['B'], backend=os.environ['R'])

@app.task(name='pytasks.add')
def add(x, y):
    return x + y

@app.task(name='pytasks.boom')
def boom():
    raise ValueError('python says no')
"#;

/// `afterview call` feeds a Python Celery worker and reads its results; `afterview inspect`
/// lists Python and Rust workers alike; Flower shows our worker online and our tasks' states.
#[test]
fn our_producer_feeds_python_workers_and_flower_sees_ours() {
    let redis = RedisServer::start(4, false);
    let env = Env::new();
    let ra = redis_args(&redis);
    let dir = env.dir.path().to_path_buf();
    std::fs::write(dir.join("pytasks.py"), PY_TASKS).unwrap();
    let penv = [("B", redis.url(0)), ("R", redis.url(1))];
    let penv: Vec<(&str, &str)> = penv.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _py = PyProc::spawn(
        &[
            "-A",
            "pytasks",
            "worker",
            "--pool=solo",
            "-Q",
            "pyq",
            "-n",
            "py1@%h",
            "--loglevel=INFO",
        ],
        &dir,
        dir.join("pyworker.log"),
        &penv,
    );
    let mut wargs = strs(&ra);
    wargs.extend(["-Q", "celery"]);
    let rs = env.worker("rs2@%h", &wargs);
    let host = afterview_engine::hostname();
    let (py_node, rs_node) = (format!("py1@{host}"), format!("rs2@{host}"));
    let cmd = |args: &[&str]| -> std::process::Output {
        let mut a = strs(&ra);
        a.extend_from_slice(args);
        env.run(&a)
    };
    eventually(
        "both workers to answer ping",
        Duration::from_secs(60),
        || {
            let out = cmd(&["inspect", "ping", "--timeout", "1"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v.get(&py_node).is_some() && v.get(&rs_node).is_some()).then_some(())
        },
    );

    let out = cmd(&[
        "call",
        "pytasks.add",
        "--args",
        "[2, 3]",
        "--queue",
        "pyq",
        "--wait",
        "--timeout",
        "30",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    // A countdown for a Python task goes onto its queue at once with its `eta` header, for
    // the Python worker to hold (Celery's way). Kept in our schedule, it waited for one of
    // our workers to move it, and with none of ours about it never ran.
    let add_in = |countdown: &str, wait: &[&str]| {
        let mut a = vec![
            "call",
            "pytasks.add",
            "--args",
            "[4, 5]",
            "--queue",
            "pyq",
            "--countdown",
            countdown,
        ];
        a.extend_from_slice(wait);
        cmd(&a)
    };
    assert!(add_in("30", &[]).status.success());
    let mut c = redis.connection(0);
    let scheduled: i64 = redis::cmd("ZCARD")
        .arg("afterview:scheduled")
        .query(&mut c)
        .unwrap();
    assert_eq!(scheduled, 0, "not in our schedule");
    let out = add_in("1", &["--wait", "--timeout", "30"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "9");
    let out = cmd(&[
        "call",
        "pytasks.boom",
        "--queue",
        "pyq",
        "--wait",
        "--timeout",
        "30",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("python says no"), "{err}");

    let stats: Value = serde_json::from_slice(&cmd(&["inspect", "stats"]).stdout).unwrap();
    assert_eq!(stats[&py_node]["total"]["pytasks.add"], 2, "{stats}");
    assert_eq!(stats[&rs_node]["queues"], json!(["celery"]));

    // The operators' monitor (an API host on the same Redis) lists both workers, Celery's too.
    let tokens = format!("{}=alice", crate::api::ALICE);
    let mut sargs = vec!["--no-worker"];
    sargs.extend(strs(&ra));
    let api = crate::api::Server::start(
        &[
            ("AFTERVIEW_AUTH_TOKENS", tokens.as_str()),
            ("AFTERVIEW_OPERATORS", "alice"),
        ],
        &sargs,
    );
    let monitor = eventually(
        "the monitor to list both workers",
        Duration::from_secs(20),
        || {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "10", "-H"])
                .arg(format!("Authorization: Bearer {}", crate::api::ALICE))
                .arg(api.url("/api/monitor"))
                .output()
                .ok()?;
            let m: Value = serde_json::from_slice(&out.stdout).ok()?;
            let nodes: Vec<String> = m["workers"]
                .as_array()?
                .iter()
                .filter_map(|w| w["node"].as_str().map(str::to_owned))
                .collect();
            (nodes.contains(&py_node) && nodes.contains(&rs_node)).then_some(m)
        },
    );
    let py = monitor["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["node"] == py_node.as_str())
        .unwrap();
    assert!(
        py["queues"].as_array().unwrap().contains(&json!("pyq")),
        "{py}"
    );
    drop(api);

    // Flower, pointed at the same Redis, lists our worker and follows our tasks by events.
    let port = free_port();
    let flower = PyProc::spawn(
        &[
            "-b",
            &redis.url(0),
            "flower",
            &format!("--port={port}"),
            "--address=127.0.0.1",
        ],
        &dir,
        dir.join("flower.log"),
        &[("FLOWER_UNAUTHENTICATED_API", "true")],
    );
    let get = |path: &str| -> Option<Value> {
        let out = Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "10",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    eventually("Flower to start", Duration::from_secs(60), || {
        get("/api/workers")
    });
    // Flower turns task events on by itself (enable_events), then sees what runs.
    eventually("task events enabled", Duration::from_secs(30), || {
        rs.log_text().contains("Task events enabled").then_some(())
    });
    let ok = env.ok(&[
        &ra[0],
        &ra[1],
        &ra[2],
        &ra[3],
        "call",
        "afterview.noop",
        "--args",
        "[7]",
        "--wait",
    ]);
    assert_eq!(ok, r#"{"args":[7],"kwargs":{}}"#);
    let failed = cmd(&[
        "call",
        "afterview.fail",
        "--kwargs",
        r#"{"message": "flower should see this"}"#,
    ]);
    let failed_id = String::from_utf8_lossy(&failed.stdout).trim().to_owned();
    let workers = eventually("Flower to list our worker", Duration::from_secs(30), || {
        let w = get("/api/workers?refresh=1")?;
        w.get(&rs_node)?.get("stats")?;
        Some(w)
    });
    assert_eq!(workers[&rs_node]["stats"]["pool"]["max-concurrency"], 2);
    assert!(
        workers[&rs_node]["registered"]
            .as_array()
            .unwrap()
            .contains(&json!("afterview.noop"))
    );
    let tasks = eventually("Flower to see our tasks", Duration::from_secs(30), || {
        let t = get("/api/tasks")?;
        let fail = t.get(&failed_id)?;
        (fail["state"] == "FAILURE").then_some(t)
    });
    let ours: Vec<&Value> = tasks
        .as_object()
        .unwrap()
        .values()
        .filter(|t| t["worker"] == rs_node.as_str())
        .collect();
    assert!(
        ours.iter()
            .any(|t| t["name"] == "afterview.noop" && t["state"] == "SUCCESS"),
        "{tasks}"
    );
    assert!(
        tasks[&failed_id]["exception"]
            .as_str()
            .unwrap()
            .contains("flower should see this")
    );
    let online = eventually(
        "Flower to call our worker online",
        Duration::from_secs(30),
        || {
            let s = get("/api/workers?status=true")?;
            (s[&rs_node] == true).then_some(s)
        },
    );
    assert_eq!(online[&rs_node], true);
    drop(flower);
}

/// SIGKILL of our worker mid-task: another worker completes it once the lease runs out, and
/// there is one SUCCESS, written by the survivor.
#[test]
fn a_killed_workers_task_completes_on_another_within_the_lease() {
    let redis = RedisServer::start(4, false);
    let env = Env::new();
    let ra = redis_args(&redis);
    let mut wargs = strs(&ra);
    wargs.extend(["-Q", "celery", "--lease", "2"]);
    let a = env.worker("victim@test", &wargs);
    let mut call = strs(&ra);
    call.extend(["call", "afterview.sleep", "--kwargs", r#"{"seconds": 3}"#]);
    let id = env.ok(&call);
    let meta = |env: &Env| -> Value {
        let mut a = strs(&ra);
        a.extend(["result", &id, "--meta"]);
        serde_json::from_slice(&env.run(&a).stdout).unwrap_or(Value::Null)
    };
    eventually("the victim to run it", Duration::from_secs(20), || {
        (meta(&env)["status"] == "PROCESSING").then_some(())
    });
    let b = env.worker("survivor@test", &wargs);
    a.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let done = eventually("the survivor to finish it", Duration::from_secs(30), || {
        let m = meta(&env);
        (m["status"] == "SUCCESS").then_some(m)
    });
    assert_eq!(done["worker"], "survivor@test");
    assert!(
        killed_at.elapsed() < Duration::from_secs(2 + 1 + 3 + 3),
        "redelivered within the lease (2 s) plus the sweep, and rerun (3 s)"
    );
    let mut st = strs(&ra);
    st.extend(["inspect", "stats", "--timeout", "2"]);
    let stats = eventually("the survivor's stats", Duration::from_secs(20), || {
        let v: Value = serde_json::from_slice(&env.run(&st).stdout).ok()?;
        v.get("survivor@test")?
            .get("total")?
            .get("afterview.sleep")?;
        Some(v)
    });
    assert_eq!(
        stats["survivor@test"]["total"]["afterview.sleep"], 1,
        "ran once on the survivor: {stats}"
    );
    drop(b);
}

/// Redis restarted (AOF on) while 1,000 tasks drain: none is lost, and the workers resume by
/// themselves.
#[test]
fn a_redis_restart_mid_run_loses_no_task() {
    let mut redis = RedisServer::start(4, true);
    let env = Env::new();
    let ra = redis_args(&redis);
    let mut wargs = strs(&ra);
    wargs.extend(["-Q", "celery", "--lease", "3"]);
    let mut w1 = env.worker("r1@test", &wargs);
    let mut w2 = env.worker("r2@test", &wargs);
    let n = 1000;
    celery_send_sleeps(&redis, n, 0.02, "aof");
    let results = |r: &RedisServer| -> Option<Vec<Option<String>>> {
        let c = redis::Client::open(r.url(1)).ok()?;
        let mut conn = c.get_connection().ok()?;
        let keys: Vec<String> = (0..n)
            .map(|i| format!("celery-task-meta-aof-{i}"))
            .collect();
        redis::cmd("MGET").arg(&keys).query(&mut conn).ok()
    };
    let success = |v: &[Option<String>]| {
        v.iter()
            .flatten()
            .filter(|s| s.contains("\"SUCCESS\""))
            .count()
    };
    eventually(
        "a part of the run to finish",
        Duration::from_secs(60),
        || results(&redis).filter(|v| success(v) >= 150).map(|_| ()),
    );
    redis.restart();
    let before = success(&results(&redis).unwrap());
    assert!(
        before >= 150,
        "results written before the restart survive (AOF): {before}"
    );
    eventually(
        "every task to finish after the restart",
        Duration::from_secs(120),
        || results(&redis).filter(|v| success(v) == n).map(|_| ()),
    );
    for w in [&mut w1, &mut w2] {
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "still running: {}",
            w.log_text()
        );
    }
    let mut st = strs(&ra);
    st.extend(["inspect", "ping", "--timeout", "2"]);
    let ping: Value = serde_json::from_str(&env.ok(&st)).unwrap();
    assert!(
        ping.get("r1@test").is_some() && ping.get("r2@test").is_some(),
        "both resumed: {ping}"
    );
}
