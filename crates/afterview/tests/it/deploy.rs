//! The many-hosts deployment for real: API processes (`serve --no-worker`) and workers, each
//! with a data dir of its own (nothing shared on disk), meeting only in a private Redis, a fresh
//! PostgreSQL database and a private S3 server. Then outages of PostgreSQL and S3, cut at a TCP
//! proxy between the API and the store, with nothing lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use afterview_engine_redis::testing::RedisServer;
use afterview_store::testing::{PostgresDb, S3Server};
use serde_json::{Value, json};

use crate::api::{ALICE, BOB, Server, body, http};

/// The tokens both API hosts accept.
fn tokens() -> String {
    format!("{ALICE}=alice,{BOB}=bob")
}

fn owned(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Flags every process of the deployment shares.
fn shared_args(redis: &RedisServer, db: &PostgresDb, bucket: &str) -> Vec<String> {
    vec![
        "--broker".into(),
        redis.url(0),
        "--result-backend".into(),
        redis.url(1),
        "--database".into(),
        db.url(),
        "--storage".into(),
        format!("s3://{bucket}/deploy"),
    ]
}

fn env_of(s3: &S3Server, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut v = s3.env();
    v.push(("AFTERVIEW_AUTH_TOKENS", tokens()));
    v.extend(extra.iter().cloned());
    v
}

fn borrowed<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn state(s: &Server, token: &str, task: &str) -> String {
    let (_, st) = body(s.get(token, &format!("/api/tasks/{task}/status")).await).await;
    st["state"].as_str().unwrap_or_default().to_owned()
}

/// Rows of `sql` (a `SELECT count(*)`) in the test database.
async fn count(db: &PostgresDb, sql: &str) -> i64 {
    let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let h = tokio::spawn(conn);
    let n: i64 = c.query_one(sql, &[]).await.unwrap().get(0);
    drop(c);
    let _ = h.await;
    n
}

/// Two API hosts and two workers on Redis + PostgreSQL + S3: upload on one host, generate on
/// the other, follow the WebSocket on the first, download from the second (a presigned
/// redirect there, streamed on the first); a worker SIGKILLed mid-task and the other finishes
/// it; idempotency keys and per-user limits hold across hosts; nobody sees another user's
/// things from either host; afterwards the objects are in the bucket and the records in
/// PostgreSQL, and no process wrote any of them to its own disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_hosts_and_two_workers_share_redis_postgres_and_s3() {
    let redis = RedisServer::start(4, false);
    let db = PostgresDb::fresh();
    let s3 = S3Server::start();
    let bucket = s3.fresh_bucket();
    let shared = shared_args(&redis, &db, &bucket);

    let mut a_args = vec!["--no-worker", "--max-sync-requests-per-user", "1"];
    a_args.extend(owned(&shared));
    let a_env = env_of(&s3, &[]);
    let a = Server::start(&borrowed(&a_env), &a_args);
    let mut b_args = a_args.clone();
    b_args.extend(["--presign-downloads", "60"]);
    let b = Server::start(&borrowed(&a_env), &b_args);

    let mut w_args = owned(&shared);
    w_args.extend(["-Q", "celery,visualizations,exports", "--lease", "2"]);
    let w_env = s3.env();
    let w_env = borrowed(&w_env);
    let w1 = a.env.worker_env("w1@deploy", &w_args, &w_env);

    // Upload on A; B knows the photo at once; Bob sees nothing of it on either host.
    let image = a.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let (st, img) = body(b.get(ALICE, &format!("/api/images/{image}")).await).await;
    assert_eq!((st, img["width"].as_u64()), (200, Some(512)), "{img}");
    for host in [&a, &b] {
        assert_eq!(
            host.get(BOB, &format!("/api/images/{image}"))
                .await
                .status(),
            404
        );
        let (_, list) = body(host.get(BOB, "/api/images").await).await;
        assert!(list["items"].as_array().unwrap().is_empty(), "{list}");
    }

    // Generate on B, follow on A's WebSocket while w1 runs it... and is killed mid-task.
    let (st, acc) = body(
        b.post(
            ALICE,
            "/api/visualizations/compare?async_processing=true",
            json!({"image_id": image, "procedure_ids": ["rhinoplasty", "facelift", "brow-lift", "lip-augmentation"]}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 202, "{acc}");
    let task = acc["task_id"].as_str().unwrap().to_owned();
    let follow = {
        let (base, task) = (a.base.clone(), task.clone());
        tokio::spawn(async move { ws_frames(&base, &task).await })
    };
    poll(
        "w1 to start the comparison",
        Duration::from_secs(30),
        || async { (state(&a, ALICE, &task).await == "PROCESSING").then_some(()) },
    )
    .await;
    w1.signal(libc::SIGKILL);
    let w2 = b.env.worker_env("w2@deploy", &w_args, &w_env);
    let frames = tokio::time::timeout(Duration::from_secs(120), follow)
        .await
        .expect("the WebSocket on A ends")
        .unwrap();
    let last = frames.last().expect("frames");
    assert_eq!(
        (&last["type"], &last["data"]["state"]),
        (&json!("complete"), &json!("SUCCESS")),
        "{frames:?}"
    );
    assert_eq!(last["data"]["result"]["items"].as_array().unwrap().len(), 4);
    let out = a.env.run(&{
        let mut v = owned(&shared);
        v.extend(["result", &task, "--meta"]);
        v
    });
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        meta["worker"], "w2@deploy",
        "the survivor finished it: {meta}"
    );

    // Download from B: a redirect to a presigned URL of the bucket, which serves the PNG
    // without credentials; A streams the same bytes.
    let pic = last["data"]["result"]["comparison_image_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(b.url(&pic))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&s3.endpoint()), "{location}");
    let direct = http().get(&location).send().await.unwrap();
    assert_eq!(direct.status(), 200);
    assert_eq!(direct.headers()["content-type"], "image/png");
    let direct = direct.bytes().await.unwrap();
    let streamed = a.get(ALICE, &pic).await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.bytes().await.unwrap(), direct);
    // The web app cannot follow a redirect to the bucket from `fetch` (its CSP, the bucket's
    // CORS): it asks B for the bytes.
    let asked = no_redirects
        .get(b.url(&format!("{pic}?redirect=false")))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(asked.status(), 200);
    assert_eq!(asked.headers()["content-type"], "image/png");
    assert_eq!(asked.bytes().await.unwrap(), direct);
    let odd = no_redirects
        .get(b.url(&format!("{pic}?redirect=maybe")))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 400);
    assert_eq!(
        no_redirects
            .get(b.url(&pic))
            .bearer_auth(BOB)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // One Idempotency-Key sent to both hosts at once pays once.
    let send = |host: &Server| {
        http()
            .post(host.url("/api/visualizations?async_processing=true"))
            .bearer_auth(ALICE)
            .header("Idempotency-Key", "deploy-key-1")
            .json(&json!({"image_id": image, "procedure_id": "rhinoplasty"}))
            .send()
    };
    let (ra, rb) = tokio::join!(send(&a), send(&b));
    let (sa, va) = body(ra.unwrap()).await;
    let (sb, vb) = body(rb.unwrap()).await;
    let ids: Vec<&str> = [(sa, &va), (sb, &vb)]
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, v)| v["task_id"].as_str().unwrap())
        .collect();
    assert!(!ids.is_empty(), "{sa} {va} / {sb} {vb}");
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one task: {ids:?}");
    for (s, v) in [(sa, &va), (sb, &vb)] {
        assert!(
            s == 202 || (s == 409 && v["error"]["code"] == "idempotency_key_in_progress"),
            "{s} {v}"
        );
    }
    let first = ids[0].to_owned();
    for host in [&a, &b] {
        let (s, v) = body(send(host).await.unwrap()).await;
        assert_eq!(
            (s, v["task_id"].as_str()),
            (202, Some(first.as_str())),
            "{v}"
        );
    }
    poll("the idempotent task", Duration::from_secs(60), || async {
        (state(&a, ALICE, &first).await == "SUCCESS").then_some(())
    })
    .await;

    // Alice's one synchronous request, held open on A (workers paused), makes B refuse a
    // second; when it ends B accepts again.
    w2.signal(libc::SIGSTOP);
    let held = {
        let (url, image) = (a.url("/api/visualizations"), image.clone());
        tokio::spawn(async move {
            http()
                .post(url)
                .bearer_auth(ALICE)
                .json(&json!({"image_id": image, "procedure_id": "facelift"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    poll(
        "A's request to hold its slot",
        Duration::from_secs(20),
        || async { (count(&db, "SELECT count(*) FROM slots").await == 1).then_some(()) },
    )
    .await;
    let (st, refused) = body(
        b.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image, "procedure_id": "brow-lift"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "too_many_requests");
    w2.signal(libc::SIGCONT);
    assert_eq!(held.await.unwrap(), 200);
    let (s, v) = body(
        b.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image, "procedure_id": "brow-lift"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // Bob cannot see or cancel Alice's task from either host.
    for host in [&a, &b] {
        assert_eq!(
            host.get(BOB, &format!("/api/tasks/{task}/status"))
                .await
                .status(),
            404
        );
        assert_eq!(
            host.post(BOB, &format!("/api/tasks/{task}/cancel"), json!({}))
                .await
                .status(),
            404
        );
        let (_, v) = body(host.get(BOB, "/api/visualizations").await).await;
        assert!(v["items"].as_array().unwrap().is_empty(), "{v}");
    }

    // The objects are in the bucket and the records in PostgreSQL; no host kept any locally.
    let keys = s3.list(&bucket);
    assert!(
        keys.contains(&format!("deploy/images/{image}.png")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .filter(|k| k.starts_with("deploy/visualizations/"))
            .count()
            >= 7,
        "a comparison, its 4 items and 2 singles: {keys:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM images WHERE owner = 'alice'").await,
        1
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM visualizations WHERE owner = 'alice'"
        )
        .await
            >= 7
    );
    assert!(count(&db, "SELECT count(*) FROM tasks WHERE owner = 'alice'").await >= 4);
    assert_eq!(
        count(&db, "SELECT count(*) FROM slots").await,
        0,
        "slots given back"
    );
    for dir in [a.env.data(), b.env.data()] {
        assert!(!dir.join("blobs").exists(), "{}", dir.display());
        assert!(!dir.join("metadata.db").exists(), "{}", dir.display());
    }
    drop(w2);
}

async fn ws_frames(base: &str, task: &str) -> Vec<Value> {
    use futures_util::StreamExt;
    let url = format!(
        "{}/api/ws/tasks/{task}?token={ALICE}",
        base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut frames = vec![];
    while let Some(Ok(m)) = ws.next().await {
        match m {
            tokio_tungstenite::tungstenite::Message::Text(t) => {
                frames.push(serde_json::from_str(&t).unwrap());
            }
            tokio_tungstenite::tungstenite::Message::Close(_) => break,
            _ => {}
        }
    }
    frames
}

/// A TCP proxy the test can cut: while cut, it drops open connections and refuses new ones,
/// as a network partition or a stopped server would.
struct Cuttable {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Cuttable {
    async fn start(upstream: String) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: connection reset
                }
                let mut rx = g.subscribe();
                let up = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(&up).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            cut,
            generation,
        }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        if cut {
            self.generation.send_modify(|g| *g += 1);
        }
    }
}

/// PostgreSQL or S3 going away turns `/readyz` and the requests that need them into 503 with
/// Retry-After; a preview asked for while S3 is away waits in retries and completes once it is
/// back; everything recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outages_answer_503_and_heal_by_themselves() {
    let redis = RedisServer::start(4, false);
    let db = PostgresDb::fresh();
    let s3 = S3Server::start();
    let bucket = s3.fresh_bucket();
    // The server the test databases live on (AFTERVIEW_TEST_POSTGRES may name another).
    let server = afterview_store::testing::postgres_server();
    let host_port = server
        .rsplit_once('@')
        .map_or(server.as_str(), |(_, hp)| hp)
        .trim_start_matches("postgres://")
        .trim_start_matches("postgresql://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // The proxy needs the port, PostgreSQL's default when the URL leaves it out.
    let target = if host_port.contains(':') {
        host_port.clone()
    } else {
        format!("{host_port}:5432")
    };
    let pg = Cuttable::start(target).await;
    let s3p = Cuttable::start(format!("127.0.0.1:{}", s3.port)).await;
    let pg_url = db
        .url()
        .replace(&format!("{host_port}/"), &format!("127.0.0.1:{}/", pg.port));
    assert_ne!(pg_url, db.url(), "the database goes through the proxy");
    let vars = vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", s3p.port)),
        ("AWS_REGION", "us-east-1".into()),
        (
            "AWS_ACCESS_KEY_ID",
            afterview_store::testing::S3_ACCESS_KEY.into(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            afterview_store::testing::S3_SECRET_KEY.into(),
        ),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AFTERVIEW_AUTH_TOKENS", tokens()),
    ];
    let args = [
        "--broker".to_owned(),
        redis.url(0),
        "--result-backend".into(),
        redis.url(1),
        "--database".into(),
        pg_url,
        "--storage".into(),
        format!("s3://{bucket}"),
        "-Q".into(),
        "celery,visualizations,exports".into(),
    ];
    let s = Server::start(&borrowed(&vars), &owned(&args));
    let ready = || async { http().get(s.url("/readyz")).send().await.unwrap() };
    assert_eq!(ready().await.status(), 200);
    let image = s.upload_portrait(ALICE, "grace_hopper.jpg").await;

    // S3 away: not ready, downloads 503 + Retry-After; a preview asked now is retried.
    s3p.set_cut(true);
    let r = ready().await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let r = s.get(ALICE, &format!("/api/images/{image}/content")).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let (st, v) = body(r).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    let (st, acc) = body(
        s.post(
            ALICE,
            "/api/visualizations?async_processing=true",
            json!({"image_id": image, "procedure_id": "rhinoplasty"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 202, "metadata is up, so the task is accepted: {acc}");
    let task = acc["task_id"].as_str().unwrap().to_owned();
    poll("the worker to retry", Duration::from_secs(30), || async {
        s.proc.log_text().contains("Retrying task.").then_some(())
    })
    .await;
    s3p.set_cut(false);
    poll(
        "the preview after S3 came back",
        Duration::from_secs(60),
        || async {
            match state(&s, ALICE, &task).await.as_str() {
                "SUCCESS" => Some(()),
                "FAILURE" => panic!("the preview failed instead of waiting for S3"),
                _ => None,
            }
        },
    )
    .await;
    poll("ready again", Duration::from_secs(20), || async {
        (ready().await.status() == 200).then_some(())
    })
    .await;

    // PostgreSQL away: not ready; reads and task submissions 503 + Retry-After.
    pg.set_cut(true);
    let r = ready().await;
    assert_eq!(r.status(), 503);
    let r = s.get(ALICE, "/api/images").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let r = s
        .post(
            ALICE,
            "/api/visualizations?async_processing=true",
            json!({"image_id": image, "procedure_id": "facelift"}),
        )
        .await;
    assert_eq!(r.status(), 503);
    pg.set_cut(false);
    poll("ready again", Duration::from_secs(20), || async {
        (ready().await.status() == 200).then_some(())
    })
    .await;
    let (st, list) = body(s.get(ALICE, "/api/images").await).await;
    assert_eq!(st, 200, "{list}");
    let (st, v) = body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image, "procedure_id": "facelift"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 200, "{v}");
}
