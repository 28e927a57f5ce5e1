//! Attacks from issue 12, each against the real binary: hostile broker messages on a private
//! Redis, hostile uploads and requests against `serve`.

use std::time::Duration;

use afterview_engine_redis::testing::{RedisServer, redis};
use serde_json::{Value, json};

use crate::Env;
use crate::api::{ALICE, Server};

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Celery protocol v2 envelope as any Redis client could LPUSH it.
fn task_envelope(id: &str, task: &str, kwargs: Value, timelimit: Value) -> String {
    let body =
        json!([[], kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    json!({
        "body": b64(body.to_string().as_bytes()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task, "id": id, "root_id": id, "parent_id": null,
            "group": null, "eta": null, "expires": null, "retries": 0,
            "timelimit": timelimit, "argsrepr": "()", "kwargsrepr": "{}", "origin": "attacker",
        },
        "properties": {
            "correlation_id": id, "reply_to": "x", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"},
            "priority": 0, "body_encoding": "base64", "delivery_tag": format!("tag-{id}"),
        },
    })
    .to_string()
}

/// A pidbox broadcast as `celery inspect` would PUBLISH it, with any `pattern`.
fn pidbox(method: &str, pattern: &str) -> String {
    let body = json!({
        "method": method, "arguments": {}, "destination": null,
        "pattern": pattern, "matcher": "glob",
    });
    json!({
        "body": b64(body.to_string().as_bytes()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": null},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            "priority": 0, "body_encoding": "base64", "delivery_tag": "pidbox-tag",
        },
    })
    .to_string()
}

#[test]
fn hostile_broker_messages_neither_kill_nor_wedge_a_worker() {
    let r = RedisServer::start(4, false);
    let env = Env::new();
    let flags = [
        "--broker".to_owned(),
        r.url(0),
        "--result-backend".to_owned(),
        r.url(1),
    ];
    let f: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut wargs = f.clone();
    wargs.extend(["-Q", "celery"]);
    let worker = env.worker("target@test", &wargs);
    let client = redis::Client::open(r.url(0)).unwrap();
    let mut c = client.get_connection().unwrap();

    // 1. A pidbox command whose pattern is 300,000 stars (a recursive glob overflowed the stack
    //    and aborted the process).
    let _: i64 = redis::cmd("PUBLISH")
        .arg("/0.celery.pidbox")
        .arg(pidbox("ping", &"*".repeat(300_000)))
        .query(&mut c)
        .unwrap();
    // 2. Three tasks with impossible time limits on a -c 2 worker (each used to panic after
    //    starting, keeping its slot and lease forever).
    let bad: Vec<String> = (0..3).map(|i| format!("bad-limit-{i}")).collect();
    for (id, tl) in bad
        .iter()
        .zip([json!([-1, null]), json!([1e300, null]), json!([null, "x"])])
    {
        let e = task_envelope(id, "afterview.sleep", json!({"seconds": 0.05}), tl);
        let _: i64 = redis::cmd("LPUSH")
            .arg("celery")
            .arg(e)
            .query(&mut c)
            .unwrap();
    }
    // Each becomes a FAILURE with a clear code, and is set aside.
    for id in &bad {
        let mut a = f.clone();
        a.extend(["result", id.as_str(), "--meta"]);
        let t0 = std::time::Instant::now();
        let meta = loop {
            let m: Value = serde_json::from_slice(&env.run(&a).stdout).unwrap_or(Value::Null);
            if m["status"] == "FAILURE" {
                break m;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{id}: {m}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(meta["result"]["code"], "malformed_message", "{meta}");
        assert!(
            meta["result"]["exc_message"]
                .to_string()
                .contains("timelimit"),
            "{meta}"
        );
    }
    // The worker is alive and still runs work at full concurrency.
    let ids: Vec<String> = (0..4)
        .map(|_| {
            let mut a = f.clone();
            a.extend(["call", "afterview.sleep", "--kwargs", r#"{"seconds": 0.2}"#]);
            env.ok(&a)
        })
        .collect();
    for id in &ids {
        let mut a = f.clone();
        a.extend(["result", id.as_str(), "--meta"]);
        let t0 = std::time::Instant::now();
        loop {
            let m: Value = serde_json::from_slice(&env.run(&a).stdout).unwrap_or(Value::Null);
            if m["status"] == "SUCCESS" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{id} never ran: {m}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut ping = f.clone();
    ping.extend(["inspect", "ping", "--timeout", "2"]);
    let out = env.ok(&ping);
    assert!(out.contains("target@test"), "{out}");
    assert!(alive(worker.pid()), "the worker is still running");
    // The malformed messages are in the dead-letter list, not lost.
    let dead: Vec<String> = redis::cmd("LRANGE")
        .arg("afterview:dead")
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    for id in &bad {
        assert!(
            dead.iter().any(|d| d.contains(id.as_str())),
            "{id} dead-lettered"
        );
    }
    let log = worker.log_text();
    assert!(log.contains("Malformed message set aside"), "{log}");
}

/// Whether a process exists (signal 0 delivers nothing).
fn alive(pid: i32) -> bool {
    std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// A small file that decodes to a huge picture: 6300×6300 RGBA, 16 bits per channel
/// (40 megapixels, under the limit; 317 MB as 16-bit RGBA), one flat colour (~300 KB).
fn sixteen_bit_png() -> Vec<u8> {
    let (w, h) = (6300u32, 6300u32);
    let mut out = vec![];
    {
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(png::ColorType::Rgba);
        e.set_depth(png::BitDepth::Sixteen);
        e.set_compression(png::Compression::Fast);
        let mut writer = e.write_header().unwrap();
        let mut stream = writer.stream_writer().unwrap();
        let row: Vec<u8> = [0x80u8, 0x10, 0x60, 0x20, 0x40, 0x30, 0xff, 0xff]
            .iter()
            .copied()
            .cycle()
            .take(w as usize * 8)
            .collect();
        for _ in 0..h {
            std::io::Write::write_all(&mut stream, &row).unwrap();
        }
        stream.finish().unwrap();
    }
    out
}

/// Peak resident memory of a process, bytes (`VmHWM`).
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_parallel_decompression_uploads_stay_under_a_gibibyte() {
    let bomb = sixteen_bit_png();
    assert!(bomb.len() < 2_000_000, "{} bytes", bomb.len());
    let s = Server::with_users(&[]);
    let pid = s.proc.pid();
    let before = peak_rss(pid);
    let uploads = (0..8).map(|i| {
        let bytes = bomb.clone();
        let s = &s;
        async move { (i, s.upload(ALICE, bytes, "big.png").await) }
    });
    let answers = futures_util::future::join_all(uploads).await;
    let mut created = 0;
    for (i, r) in answers {
        let status = r.status().as_u16();
        let retry = r.headers().get("retry-after").is_some();
        let (_, body) = crate::api::body(r).await;
        match status {
            201 => {
                created += 1;
                assert_eq!(body["width"], 6300, "{body}");
            }
            503 => {
                assert_eq!(body["error"]["code"], "busy", "{body}");
                assert!(retry, "503 carries Retry-After");
            }
            other => panic!("upload {i}: {other} {body}"),
        }
    }
    assert!(created >= 1, "at least one upload went through");
    let peak = peak_rss(pid);
    eprintln!("peak RSS {} MiB, {created} of 8 created", peak >> 20);
    assert!(
        peak < 1 << 30,
        "peak RSS {} MiB (was {} MiB before the uploads)",
        peak >> 20,
        before >> 20
    );
}

#[test]
fn no_authentication_on_an_open_address_is_refused() {
    let env = Env::new();
    let out = env
        .cmd(&["serve", "--bind", "0.0.0.0:0", "--no-worker"])
        .env_remove("AFTERVIEW_AUTH_TOKENS")
        .env_remove("AFTERVIEW_FIREBASE_PROJECT_ID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve on 0.0.0.0"), "{err}");
    assert!(err.contains("--allow-dev-token-on-network"), "{err}");
}

#[test]
fn files_at_rest_are_the_owners_only_and_a_leaky_dev_token_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.ok(&["call", "afterview.noop"]);
    let mut open = vec![];
    let mut stack = vec![env.data()];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        seen += 1;
        if meta.permissions().mode() & 0o077 != 0 {
            open.push(format!(
                "{} {:o}",
                p.display(),
                meta.permissions().mode() & 0o777
            ));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    // The database file at least (its -wal and -shm exist only while a connection holds them
    // open: a clean close checkpoints and removes them).
    assert!(seen >= 2, "the data dir has files");
    assert!(
        env.data().join("afterview.db").is_file(),
        "the database is there"
    );
    assert!(open.is_empty(), "group/world-accessible: {open:?}");

    // A dev-token file others can read is refused, not used.
    std::fs::write(env.data().join("dev-token"), "x".repeat(64)).unwrap();
    std::fs::set_permissions(
        env.data().join("dev-token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = env
        .cmd(&["serve", "--bind", "127.0.0.1:0", "--no-worker"])
        .env_remove("AFTERVIEW_AUTH_TOKENS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by others"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_limits_half_sent_requests_url_tokens_and_sockets() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    // No worker: tasks stay pending, so sockets stay open.
    let s = Server::with_users_args(&["--no-worker"]);
    let addr = s.base.trim_start_matches("http://").to_owned();

    // A half-sent request is dropped after the header timeout (10 s), not held for ever.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    let answered = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || answered.contains("408"), "{answered}");
    assert!(t0.elapsed() >= Duration::from_secs(9), "{:?}", t0.elapsed());

    // ?token= works on the WebSocket route only.
    let r = crate::api::http()
        .get(s.url(&format!("/api/images?token={ALICE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // One user holds at most 16 sockets; the 17th is refused with 429.
    let image = s.upload_portrait(ALICE, "astronaut.png").await;
    let r = s
        .post(
            ALICE,
            "/api/visualizations?async_processing=true",
            json!({"image_id": image, "procedure_id": "rhinoplasty"}),
        )
        .await;
    let task: Value = r.json().await.unwrap();
    let task = task["task_id"].as_str().unwrap().to_owned();
    let ws_url = format!(
        "{}/api/ws/tasks/{task}?token={ALICE}",
        s.base.replace("http://", "ws://")
    );
    let mut open = vec![];
    for _ in 0..16 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
        let first = ws.next().await.unwrap().unwrap();
        assert!(matches!(first, Message::Text(_)), "{first:?}");
        open.push(ws);
    }
    match tokio_tungstenite::connect_async(&ws_url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 429)
        }
        other => panic!("the 17th socket: {:?}", other.map(|_| ())),
    }
    // A client message of up to 4 KiB is read (in steps: the server's read buffer is 512 bytes)
    // and ignored; the socket stays and answers a ping.
    let mut small = open.pop().unwrap();
    small
        .send(Message::Text("y".repeat(4000).into()))
        .await
        .unwrap();
    small
        .send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .unwrap();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), small.next())
            .await
            .expect("the socket answers")
            .expect("the socket stays open")
            .unwrap();
        match m {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"still there?");
                break;
            }
            Message::Text(_) => {}
            other => panic!("the socket ended after a 4,000-byte message: {other:?}"),
        }
    }
    open.push(small);
    // A client message over 4 KiB ends that socket; the others stay.
    let mut big = open.pop().unwrap();
    big.send(Message::Text("x".repeat(100_000).into()))
        .await
        .unwrap_or(());
    let end = tokio::time::timeout(Duration::from_secs(5), big.next())
        .await
        .unwrap();
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    // Closing sockets frees the slots.
    drop(big);
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_reach_clients_as_codes_not_paths() {
    let s = Server::with_users_args(&["--no-worker"]);
    let first = s.upload_portrait(ALICE, "astronaut.png").await;
    assert!(!first.is_empty());
    // Break the blob store under the running server: its directory becomes a file.
    let blobs = s.env.data().join("blobs");
    std::fs::remove_dir_all(&blobs).unwrap();
    std::fs::write(&blobs, b"not a directory").unwrap();
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/portraits/astronaut.png"
    ))
    .unwrap();
    let r = s.upload(ALICE, bytes, "a.png").await;
    let status = r.status().as_u16();
    let (_, body) = crate::api::body(r).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let text = body.to_string();
    let dir = s.env.dir.path().display().to_string();
    assert!(!text.contains(&dir) && !text.contains("os error"), "{text}");
    // The details are in the server's log instead.
    assert!(s.proc.log_text().contains("storage unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_photo_mid_task_leaves_nothing_of_it() {
    let s = Server::with_users(&[]);
    let image = s.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let r = s
        .post(
            ALICE,
            "/api/visualizations/compare?async_processing=true",
            json!({"image_id": image, "procedure_ids": ["rhinoplasty", "facelift", "brow-lift", "skin-resurfacing"]}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let task = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Delete as soon as the task has started.
    let t0 = std::time::Instant::now();
    loop {
        let (_, st) =
            crate::api::body(s.get(ALICE, &format!("/api/tasks/{task}/status")).await).await;
        if st["state"] != "PENDING" || t0.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.get(ALICE, &format!("/api/images/{image}")).await.status(),
        200
    );
    let del = crate::api::http()
        .delete(s.url(&format!("/api/images/{image}")))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    // The task ends (revoked, or failed on the missing photo) and nothing of the photo stays.
    let end = loop {
        let (_, st) =
            crate::api::body(s.get(ALICE, &format!("/api/tasks/{task}/status")).await).await;
        if ["SUCCESS", "FAILURE", "REVOKED"].contains(&st["state"].as_str().unwrap_or("")) {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(end["state"], "SUCCESS", "{end}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, list) = crate::api::body(s.get(ALICE, "/api/visualizations").await).await;
    assert_eq!(list["items"], json!([]), "{list}");
    let viz_dir = s.env.data().join("blobs/visualizations");
    let left: Vec<_> = std::fs::read_dir(&viz_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "preview files left: {left:?}");
    let img_dir = s.env.data().join("blobs/images");
    let left: Vec<_> = std::fs::read_dir(&img_dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "photo files left: {left:?}");
    for dir in ["blobs/thumbnails/images", "blobs/thumbnails/visualizations"] {
        let left: Vec<_> = std::fs::read_dir(s.env.data().join(dir))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "small copies left in {dir}: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visualizations_and_exports_have_their_own_delete() {
    let s = Server::with_users(&[]);
    let image = s.upload_portrait(ALICE, "astronaut.png").await;
    let (st, v) = crate::api::body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image, "procedure_id": "rhinoplasty"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let vid = v["id"].as_str().unwrap().to_owned();
    let (st, e) = crate::api::body(
        s.post(
            ALICE,
            "/api/exports",
            json!({"visualization_ids": [vid], "format": "pdf"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 200, "{e}");
    let eid = e["id"].as_str().unwrap().to_owned();
    // The preview's small copy, made on this first request and stored.
    let thumb = s
        .get(ALICE, &format!("/api/visualizations/{vid}/thumbnail"))
        .await;
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    let thumbs = s.env.data().join("blobs/thumbnails/visualizations");
    let t0 = std::time::Instant::now();
    while std::fs::read_dir(&thumbs).map_or(0, Iterator::count) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the small copy is stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delete = |token: &'static str, path: String| {
        let s = &s;
        async move {
            crate::api::http()
                .delete(s.url(&path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    const BOB: &str = "bob-token-0123456789abcdefgh";
    assert_eq!(
        delete(BOB, format!("/api/exports/{eid}")).await,
        404,
        "not Bob's"
    );
    assert_eq!(delete(BOB, format!("/api/visualizations/{vid}")).await, 404);
    assert_eq!(delete(ALICE, format!("/api/exports/{eid}")).await, 204);
    assert_eq!(delete(ALICE, format!("/api/exports/{eid}")).await, 404);
    assert_eq!(
        delete(ALICE, format!("/api/visualizations/{vid}")).await,
        204
    );
    assert_eq!(
        s.get(ALICE, &format!("/api/visualizations/{vid}"))
            .await
            .status(),
        404
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for dir in [
        "blobs/visualizations",
        "blobs/exports",
        "blobs/thumbnails/visualizations",
    ] {
        let left: Vec<_> = std::fs::read_dir(s.env.data().join(dir))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    assert_eq!(
        s.get(ALICE, &format!("/api/images/{image}")).await.status(),
        200,
        "the photo stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_flood_the_queue_the_disk_or_the_engine_choice() {
    // No worker: every task stays waiting. Small limits to keep the test short.
    let s = Server::with_users_args(&[
        "--no-worker",
        "--max-active-tasks-per-user",
        "3",
        "--max-photos-per-user",
        "2",
    ]);
    const BOB: &str = "bob-token-0123456789abcdefgh";
    let image = s.upload_portrait(ALICE, "astronaut.png").await;
    let send = |token: &'static str, image: String| {
        let s = &s;
        async move {
            let r = s
                .post(
                    token,
                    "/api/visualizations?async_processing=true",
                    json!({"image_id": image, "procedure_id": "rhinoplasty"}),
                )
                .await;
            let retry = r.headers().get("retry-after").is_some();
            let (st, b) = crate::api::body(r).await;
            (st, b, retry)
        }
    };
    for _ in 0..3 {
        assert_eq!(send(ALICE, image.clone()).await.0, 202);
    }
    let (st, b, retry) = send(ALICE, image.clone()).await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (429, Some("too_many_tasks")),
        "{b}"
    );
    assert!(retry, "429 carries Retry-After");
    // Another user is not held back by Alice's flood.
    let bobs = s.upload_portrait(BOB, "astronaut.png").await;
    assert_eq!(send(BOB, bobs).await.0, 202);
    // Cancelling one of Alice's tasks frees a slot.
    let (_, list) = crate::api::body(s.get(ALICE, "/api/tasks").await).await;
    let first = list["items"][0]["task_id"].as_str().unwrap().to_owned();
    let r = s
        .post(ALICE, &format!("/api/tasks/{first}/cancel"), json!({}))
        .await;
    assert!(r.status().is_success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(send(ALICE, image.clone()).await.0, 202);

    // Two photos at most: the third upload is refused with its own code.
    let _second = s.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/portraits/astronaut.png"
    ))
    .unwrap();
    let (st, b) = crate::api::body(s.upload(ALICE, bytes, "third.png").await).await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (403, Some("storage_quota_exceeded")),
        "{b}"
    );
}

#[test]
fn a_request_cannot_choose_an_engine_the_operator_did_not_allow() {
    let env = Env::new();
    // The worker runs the local engine only; the message asks for Gemini.
    let _w = env.worker("w@test", &[]);
    let id = env.call(
        "app.tasks.visualization_tasks.generate_visualization",
        r#"{"image_id": "00000000-0000-4000-8000-000000000001", "procedure_id": "rhinoplasty", "user_id": "alice", "options": {"engine": "gemini"}}"#,
        &[],
    );
    let m = env.wait_status(&id, &["FAILURE", "SUCCESS"], Duration::from_secs(30));
    assert_eq!(m["result"]["code"], "invalid_options", "{m}");
    assert!(
        m["result"]["exc_message"]
            .to_string()
            .contains("not enabled"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_task_cannot_overwrite_another_users_picture() {
    let r = RedisServer::start(4, false);
    let (b, rb) = (r.url(0), r.url(1));
    let s = Server::with_users_args(&["--broker", &b, "--result-backend", &rb]);
    const BOB: &str = "bob-token-0123456789abcdefgh";
    let alices = s.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let (st, v) = crate::api::body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": alices, "procedure_id": "rhinoplasty"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let vid = v["id"].as_str().unwrap().to_owned();
    let picture = |token: &'static str| {
        let s = &s;
        let vid = vid.clone();
        async move {
            s.get(token, &format!("/api/visualizations/{vid}/image"))
                .await
                .bytes()
                .await
                .unwrap()
        }
    };
    let before = picture(ALICE).await;
    // Bob, who can write to the broker, sends a task whose id is Alice's visualization id.
    let bobs = s.upload_portrait(BOB, "astronaut.png").await;
    let forged = task_envelope(
        &vid,
        "app.tasks.visualization_tasks.generate_visualization",
        json!({"image_id": bobs, "procedure_id": "lip-augmentation", "user_id": "bob"}),
        json!([null, null]),
    )
    .replace(
        "\"routing_key\":\"celery\"",
        "\"routing_key\":\"visualizations\"",
    );
    let client = redis::Client::open(b.as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: i64 = redis::cmd("LPUSH")
        .arg("visualizations")
        .arg(forged)
        .query(&mut c)
        .unwrap();
    let t0 = std::time::Instant::now();
    while !s
        .proc
        .log_text()
        .contains("names another user's visualization; refused")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the forged task was not refused: {}",
            s.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(picture(ALICE).await, before, "Alice's picture is untouched");
    assert_eq!(
        s.get(BOB, &format!("/api/visualizations/{vid}"))
            .await
            .status(),
        404
    );
}

/// A full Redis (`maxmemory` reached, noeviction): a new preview is refused with 503 and
/// `Retry-After`, and nothing of it lands in Redis, not even the revocation a failed publish
/// otherwise gets (a tombstone, a log entry and a result per retried request would grow a full
/// Redis with nothing to free it). With room again, the next request runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_new_previews_and_grows_by_nothing() {
    let r = RedisServer::start(4, false);
    let (b, rb) = (r.url(0), r.url(1));
    let s = Server::with_users_args(&["--broker", &b, "--result-backend", &rb]);
    let image = s.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let preview = json!({"image_id": image, "procedure_id": "rhinoplasty"});
    let path = "/api/visualizations";
    // Warm: the queues are declared, one preview runs.
    let (st, v) = crate::api::body(s.post(ALICE, path, preview.clone()).await).await;
    assert_eq!(st, 200, "{v}");

    let mut c = r.connection(0);
    let mut backend = r.connection(1);
    let size = |c: &mut redis::Connection| -> i64 { redis::cmd("DBSIZE").query(c).unwrap() };
    let before = (size(&mut c), size(&mut backend));
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut c)
        .unwrap();
    for _ in 0..3 {
        let resp = s.post(ALICE, path, preview.clone()).await;
        assert!(resp.headers().contains_key("retry-after"));
        let (st, v) = crate::api::body(resp).await;
        assert_eq!(st, 503, "{v}");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
    }
    assert_eq!(
        (size(&mut c), size(&mut backend)),
        before,
        "refused previews left keys in Redis"
    );
    // Refused, they never existed: the task list holds the warm-up preview alone.
    let (st, v) = crate::api::body(s.get(ALICE, "/api/tasks").await).await;
    assert_eq!(st, 200, "{v}");
    let listed = v["items"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 1, "{v}");

    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(&mut c)
        .unwrap();
    let (st, v) = crate::api::body(s.post(ALICE, path, preview).await).await;
    assert_eq!(st, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_add_no_metric_series_and_metrics_can_require_a_token() {
    let s = Server::start(
        &[
            ("AFTERVIEW_AUTH_TOKENS", &format!("{ALICE}=alice")),
            ("AFTERVIEW_METRICS_TOKEN", "metrics-secret-0123456789"),
        ],
        &["--no-worker"],
    );
    let http = crate::api::http();
    let metrics = |token: Option<&'static str>| {
        let (http, url) = (http.clone(), s.url("/metrics"));
        async move {
            let mut r = http.get(url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(metrics(None).await.0, 401);
    assert_eq!(
        metrics(Some(ALICE)).await.0,
        401,
        "a user token is not the metrics token"
    );
    let (st, before) = metrics(Some("metrics-secret-0123456789")).await;
    assert_eq!(st, 200);
    for i in 0..150 {
        let m = reqwest::Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let _ = http.request(m, s.url("/api/images")).send().await.unwrap();
    }
    let (_, after) = metrics(Some("metrics-secret-0123456789")).await;
    let grew = after.lines().count() as i64 - before.lines().count() as i64;
    assert!(grew < 40, "150 invented methods added {grew} lines");
    assert!(
        !after.contains("INVENTED"),
        "raw methods never become labels"
    );
}

/// Schemathesis (pinned in `scripts/python-env.sh`) against `/api/openapi.json` with a bounded
/// number of examples per operation: no 5xx, and every response matches the document.
#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let venv = crate::redis_interop::venv();
    let s = Server::with_users(&[]);
    let out = std::process::Command::new(venv.join("bin/schemathesis"))
        .args(["run", &s.url("/api/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {ALICE}")])
        .args(["--max-examples", "8", "--seed", "20261130"])
        .args(["--checks", "not_a_server_error,response_schema_conformance"])
        .args(["--request-timeout", "120", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(s.env.dir.path()) // its cache stays out of the repository
        .output()
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
}
