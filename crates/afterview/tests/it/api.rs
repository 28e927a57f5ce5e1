//! The HTTP and WebSocket API against the real `afterview serve` on port 0: every endpoint, the
//! seed's curl examples, authentication failures, ownership, idempotency, bad uploads, task ids,
//! cancel with the WebSocket watching, late WebSockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{Env, Proc};

pub(crate) const ALICE: &str = "alice-token-0123456789abcdef";
pub(crate) const BOB: &str = "bob-token-0123456789abcdefgh";
const PROJECT: &str = "afterview-test";
const PORTRAITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/portraits");
const JWT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/jwt");

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) proc: Proc,
    pub(crate) env: Env,
    pub(crate) stdout: Vec<String>,
}

impl Server {
    pub(crate) fn start(extra_env: &[(&str, &str)], args: &[&str]) -> Self {
        Self::start_in(Env::new(), extra_env, args)
    }

    /// In `env`'s data dir (a server started again on the data another one left).
    pub(crate) fn start_in(env: Env, extra_env: &[(&str, &str)], args: &[&str]) -> Self {
        let log = env
            .dir
            .path()
            .join(format!("serve-{}.log", crate::unique()));
        let mut cmd = env.cmd(&["serve", "--bind", "127.0.0.1:0", "-c", "4"]);
        cmd.args(args);
        cmd.env("AFTERVIEW_LOG", "info")
            .env_remove("AFTERVIEW_AUTH_TOKENS")
            .env_remove("AFTERVIEW_FIREBASE_PROJECT_ID");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut reader = BufReader::new(out);
        let mut first = String::new();
        reader.read_line(&mut first).unwrap();
        let base = first
            .trim()
            .strip_prefix("afterview serving on ")
            .unwrap_or_else(|| panic!("unexpected: {first:?}"))
            .to_owned();
        let mut stdout = vec![first.trim().to_owned()];
        // A dev token (when no auth is configured) follows on the next lines.
        if extra_env.iter().all(|(k, _)| *k != "AFTERVIEW_AUTH_TOKENS") {
            for _ in 0..2 {
                let mut l = String::new();
                reader.read_line(&mut l).unwrap();
                stdout.push(l.trim().to_owned());
            }
        }
        let proc = Proc { child, log };
        if !args.contains(&"--no-worker") {
            proc.wait_log("Worker started", Duration::from_secs(20));
        }
        Self {
            base,
            proc,
            env,
            stdout,
        }
    }

    /// Alice and Bob, with extra command-line arguments.
    pub(crate) fn with_users_args(args: &[&str]) -> Self {
        let tokens = format!("{ALICE}=alice,{BOB}=bob");
        Self::start(&[("AFTERVIEW_AUTH_TOKENS", tokens.as_str())], args)
    }

    pub(crate) fn with_users(extra: &[(&str, &str)]) -> Self {
        let tokens = format!("{ALICE}=alice,{BOB}=bob");
        let mut env = vec![("AFTERVIEW_AUTH_TOKENS", tokens.as_str())];
        env.extend_from_slice(extra);
        Self::start(&env, &[])
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replace("http://", "ws://"))
    }

    pub(crate) async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        http()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn post(&self, token: &str, path: &str, body: Value) -> reqwest::Response {
        http()
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn upload(
        &self,
        token: &str,
        bytes: Vec<u8>,
        name: &str,
    ) -> reqwest::Response {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        http()
            .post(self.url("/api/images"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub(crate) async fn upload_portrait(&self, token: &str, file: &str) -> String {
        let r = self
            .upload(
                token,
                std::fs::read(format!("{PORTRAITS}/{file}")).unwrap(),
                file,
            )
            .await;
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub(crate) async fn ws(&self, token: &str, task_id: &str) -> Vec<Value> {
        let url = self.ws_url(&format!("/api/ws/tasks/{task_id}?token={token}"));
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket opens");
        let mut frames = vec![];
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("frames keep coming")
        {
            match msg.unwrap() {
                Message::Text(t) => frames.push(serde_json::from_str(&t).unwrap()),
                Message::Close(c) => {
                    assert_eq!(c.map(|c| u16::from(c.code)), Some(1000), "closes normally");
                    break;
                }
                _ => {}
            }
        }
        frames
    }
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub(crate) async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flow_async_then_sync() {
    let s = Server::with_users(&[]);
    let image_id = s.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let (st, img) = body(s.get(ALICE, &format!("/api/images/{image_id}")).await).await;
    assert_eq!(st, 200);
    assert_eq!(
        (img["width"].as_u64(), img["height"].as_u64()),
        (Some(512), Some(600))
    );
    assert_eq!(img["url"], format!("/api/images/{image_id}/content"));

    // As the seed's curl example: async, then status, then WebSocket.
    let (st, acc) = body(
        s.post(
            ALICE,
            "/api/visualizations?async_processing=true",
            json!({"image_id": image_id, "procedure_id": "rhinoplasty"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 202);
    let task_id = acc["task_id"].as_str().unwrap().to_owned();
    assert_eq!(acc["status"], "processing");
    assert_eq!(acc["status_url"], format!("/api/tasks/{task_id}/status"));
    assert_eq!(acc["websocket_url"], format!("/api/ws/tasks/{task_id}"));
    let (st, status) = body(s.get(ALICE, &format!("/api/tasks/{task_id}/status")).await).await;
    assert_eq!(st, 200);
    for k in ["task_id", "state", "progress", "status"] {
        assert!(status.get(k).is_some(), "{k} in {status}");
    }
    let frames = s.ws(ALICE, &task_id).await;
    let last = frames.last().unwrap();
    assert_eq!(last["type"], "complete", "{frames:?}");
    assert_eq!(last["data"]["state"], "SUCCESS");
    assert_eq!(last["data"]["progress"], 100);
    let result = last["data"]["result"].clone();
    assert_eq!(result["procedure_id"], "rhinoplasty");
    assert!(
        frames
            .iter()
            .all(|f| f["data"]["task_id"] == task_id.as_str())
    );

    let (st, r) = body(s.get(ALICE, &format!("/api/tasks/{task_id}/result")).await).await;
    assert_eq!((st, &r["result"]), (200, &result));
    let (st, v) = body(
        s.get(
            ALICE,
            &format!("/api/visualizations/{}", result["id"].as_str().unwrap()),
        )
        .await,
    )
    .await;
    assert_eq!((st, v["kind"].as_str()), (200, Some("single")));
    let pic = s
        .get(ALICE, result["after_image_url"].as_str().unwrap())
        .await;
    assert_eq!(pic.status(), 200);
    assert_eq!(pic.headers()["content-type"], "image/png");
    assert!(pic.bytes().await.unwrap().starts_with(b"\x89PNG"));

    // Synchronous: the answer is the result object itself.
    let (st, sync) = body(
        s.post(ALICE, "/api/visualizations?async_processing=false", json!({"image_id": image_id, "procedure_id": "brow-lift", "options": {"intensity": "subtle"}}))
            .await,
    )
    .await;
    assert_eq!(st, 200, "{sync}");
    for k in ["id", "before_image_url", "after_image_url", "generated_at"] {
        assert!(sync.get(k).is_some(), "{k} in {sync}");
    }
    // The seed's form (`2025-12-07T15:52:00Z`), as the API's other times.
    let at = sync["generated_at"].as_str().unwrap();
    assert!(
        at.len() == 20 && at.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(at).is_ok(),
        "{at}"
    );
    assert_eq!(sync["intensity"], "subtle");

    let (st, cmp) = body(
        s.post(
            ALICE,
            "/api/visualizations/compare",
            json!({"image_id": image_id, "procedure_ids": ["rhinoplasty", "facelift"]}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 200, "{cmp}");
    assert_eq!(cmp["items"].as_array().unwrap().len(), 2);
    let composite = s
        .get(ALICE, cmp["comparison_image_url"].as_str().unwrap())
        .await;
    assert_eq!(composite.status(), 200);

    let (_, list) = body(s.get(ALICE, "/api/visualizations").await).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        5,
        "two singles, the comparison and its two items"
    );
    let (_, tasks) = body(s.get(ALICE, "/api/tasks").await).await;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 3);
    assert!(
        tasks["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] == "SUCCESS")
    );
    let (_, bob_tasks) = body(s.get(BOB, "/api/tasks").await).await;
    assert!(bob_tasks["items"].as_array().unwrap().is_empty());

    // A WebSocket opened after the end still gets the final state, then a normal close.
    let late = s.ws(ALICE, &task_id).await;
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["type"], "complete");

    // Deleting the photo removes what was made from it.
    let del = http()
        .delete(s.url(&format!("/api/images/{image_id}")))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    assert_eq!(
        s.get(
            ALICE,
            &format!("/api/visualizations/{}", result["id"].as_str().unwrap())
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        s.get(ALICE, &format!("/api/images/{image_id}/content"))
            .await
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_sees_or_cancels_what_is_not_theirs() {
    let s = Server::with_users(&[]);
    let image_id = s.upload_portrait(ALICE, "astronaut.png").await;
    let (_, v) = body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image_id, "procedure_id": "otoplasty"}),
        )
        .await,
    )
    .await;
    let viz = v["id"].as_str().unwrap().to_owned();
    let (_, tasks) = body(s.get(ALICE, "/api/tasks").await).await;
    let task_id = tasks["items"][0]["task_id"].as_str().unwrap().to_owned();
    for path in [
        format!("/api/images/{image_id}"),
        format!("/api/images/{image_id}/content"),
        format!("/api/visualizations/{viz}"),
        format!("/api/visualizations/{viz}/image"),
        format!("/api/tasks/{task_id}/status"),
        format!("/api/tasks/{task_id}/result"),
    ] {
        let (st, b) = body(s.get(BOB, &path).await).await;
        assert_eq!(st, 404, "{path}: {b}");
        assert!(b["error"]["code"].is_string());
    }
    assert_eq!(
        s.post(BOB, &format!("/api/tasks/{task_id}/cancel"), json!({}))
            .await
            .status(),
        404
    );
    let del = http()
        .delete(s.url(&format!("/api/images/{image_id}")))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404);
    let (st, b) = body(
        s.post(
            BOB,
            "/api/visualizations",
            json!({"image_id": image_id, "procedure_id": "rhinoplasty"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (st, code(&b)),
        (404, "image_not_found"),
        "bob cannot preview alice's photo"
    );
    let url = s.ws_url(&format!("/api/ws/tasks/{task_id}?token={BOB}"));
    let err = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    assert_eq!(
        s.get(ALICE, &format!("/api/images/{image_id}"))
            .await
            .status(),
        200,
        "alice still has it"
    );
}

fn mint(claims: &Value, key_file: &str, kid: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(format!("{JWT}/{key_file}")).unwrap(),
    )
    .unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

fn b64(v: &Value) -> String {
    use base64_lite::encode;
    encode(&serde_json::to_vec(v).unwrap())
}

mod base64_lite {
    /// URL-safe base64 without padding, for hand-built tokens.
    pub(super) fn encode(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..chunk.len() + 1 {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

/// Serves a JWKS document on a free port with `Cache-Control: max-age`.
fn jwks_server(file: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let body = std::fs::read_to_string(format!("{JWT}/{file}")).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: public, max-age=600\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes());
        }
    });
    format!("http://{addr}/jwks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_accepts_good_tokens_and_names_what_is_wrong_with_bad_ones() {
    let firebase_jwks = jwks_server("jwks.json");
    let oidc_jwks = jwks_server("jwks.json");
    let s = Server::with_users(&[
        ("AFTERVIEW_FIREBASE_PROJECT_ID", PROJECT),
        ("AFTERVIEW_FIREBASE_JWKS_URL", &firebase_jwks),
        ("AFTERVIEW_OIDC_ISSUER", "https://id.example.test"),
        ("AFTERVIEW_OIDC_AUDIENCE", "afterview-api"),
        ("AFTERVIEW_OIDC_JWKS_URL", &oidc_jwks),
        ("AFTERVIEW_FIREBASE_WEB_API_KEY", "web-key-123"),
    ]);
    // The web app learns how to offer Google sign-in, and its policy admits Google's SDK.
    let (st, cfg) = body(http().get(s.url("/api/config")).send().await.unwrap()).await;
    assert_eq!(st, 200);
    assert_eq!(
        cfg["firebase"],
        json!({"apiKey": "web-key-123", "authDomain": format!("{PROJECT}.firebaseapp.com"), "projectId": PROJECT})
    );
    let page = http().get(s.url("/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("https://www.gstatic.com"), "{csp}");
    let (_, me) = body(s.get(ALICE, "/api/me").await).await;
    assert_eq!(me, json!({"user_id": "alice", "operator": false}));
    let now = chrono::Utc::now().timestamp();
    let iss = format!("https://securetoken.google.com/{PROJECT}");
    let good = json!({"iss": iss, "aud": PROJECT, "sub": "firebase-uid-1", "iat": now - 10, "exp": now + 3600, "auth_time": now - 20});
    let ok = |t: String| {
        let s = &s;
        async move { s.get(&t, "/api/images").await.status().as_u16() }
    };
    assert_eq!(ok(mint(&good, "trusted.pem", "trusted-kid")).await, 200);
    let oidc = json!({"iss": "https://id.example.test", "aud": "afterview-api", "sub": "oidc-user", "iat": now, "exp": now + 60});
    assert_eq!(ok(mint(&oidc, "trusted.pem", "trusted-kid")).await, 200);

    // Firebase uids may be 128 characters long, OpenID Connect subjects 255: both sign in.
    let long_uid = {
        let mut c = good.clone();
        c["sub"] = json!("u".repeat(128));
        mint(&c, "trusted.pem", "trusted-kid")
    };
    assert_eq!(ok(long_uid).await, 200, "a 128-character Firebase uid");
    let long_sub = {
        let mut c = oidc.clone();
        c["sub"] = json!("s".repeat(255));
        mint(&c, "trusted.pem", "trusted-kid")
    };
    assert_eq!(ok(long_sub).await, 200, "a 255-character subject");
    // Firebase users own their uploads like anyone else.
    let fb = mint(&good, "trusted.pem", "trusted-kid");
    let id = s.upload_portrait(&fb, "astronaut.png").await;
    assert_eq!(
        s.get(ALICE, &format!("/api/images/{id}")).await.status(),
        404
    );
    // Issuers have their own namespaces: a token with `sub: "alice"` from Firebase or OIDC
    // is not the static user alice (who owns this photo).
    let alices = s.upload_portrait(ALICE, "astronaut.png").await;
    for fake in [
        mint(
            &{
                let mut c = good.clone();
                c["sub"] = json!("alice");
                c
            },
            "trusted.pem",
            "trusted-kid",
        ),
        mint(
            &{
                let mut c = oidc.clone();
                c["sub"] = json!("alice");
                c
            },
            "trusted.pem",
            "trusted-kid",
        ),
    ] {
        assert_eq!(
            s.get(&fake, &format!("/api/images/{alices}"))
                .await
                .status(),
            404
        );
    }

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let header_none = b64(&json!({"alg": "none", "typ": "JWT"}));
    let header_hs = b64(&json!({"alg": "HS256", "typ": "JWT", "kid": "trusted-kid"}));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            mint(
                &with("exp", json!(now - 3600)),
                "trusted.pem",
                "trusted-kid",
            ),
            "token_expired",
        ),
        (
            "wrong audience",
            mint(
                &with("aud", json!("someone-else")),
                "trusted.pem",
                "trusted-kid",
            ),
            "unauthorized",
        ),
        (
            "wrong issuer",
            mint(
                &with("iss", json!("https://securetoken.google.com/other")),
                "trusted.pem",
                "trusted-kid",
            ),
            "unauthorized",
        ),
        (
            "unknown kid",
            mint(&good, "trusted.pem", "no-such-kid"),
            "unauthorized",
        ),
        (
            "wrong key",
            mint(&good, "other.pem", "trusted-kid"),
            "unauthorized",
        ),
        (
            "issued in the future",
            mint(
                &with("iat", json!(now + 3600)),
                "trusted.pem",
                "trusted-kid",
            ),
            "unauthorized",
        ),
        (
            "no auth_time",
            mint(
                &{
                    let mut c = good.clone();
                    c.as_object_mut().unwrap().remove("auth_time");
                    c
                },
                "trusted.pem",
                "trusted-kid",
            ),
            "unauthorized",
        ),
        (
            "empty sub",
            mint(&with("sub", json!("")), "trusted.pem", "trusted-kid"),
            "unauthorized",
        ),
        (
            // Signed in, it would be refused by every task it submits (owners carry no spaces).
            "sub with a space",
            mint(&with("sub", json!("uid 1")), "trusted.pem", "trusted-kid"),
            "unauthorized",
        ),
        (
            "not yet valid (nbf)",
            mint(
                &with("nbf", json!(now + 3600)),
                "trusted.pem",
                "trusted-kid",
            ),
            "unauthorized",
        ),
        (
            "alg none",
            format!("{header_none}.{}.", b64(&good)),
            "unauthorized",
        ),
        (
            "HS256",
            format!("{header_hs}.{}.c2lnbmF0dXJl", b64(&good)),
            "unauthorized",
        ),
        ("garbage", "not.a.token".into(), "unauthorized"),
        (
            "unknown static",
            "some-random-token-value".into(),
            "unauthorized",
        ),
    ];
    for (what, token, want) in cases {
        let r = s.get(&token, "/api/images").await;
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{what}");
        let (_, b) = body(r).await;
        assert_eq!(code(&b), want, "{what}: {b}");
    }
    let (st, b) = body(http().get(s.url("/api/images")).send().await.unwrap()).await;
    assert_eq!((st, code(&b)), (401, "unauthorized"));
    let r = http()
        .get(s.url("/api/images"))
        .header("authorization", format!("Basic {ALICE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        http().get(s.url("/healthz")).send().await.unwrap().status(),
        200,
        "health needs no token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_first_answer() {
    let s = Server::with_users(&[]);
    let image_id = s.upload_portrait(ALICE, "astronaut.png").await;
    let req = json!({"image_id": image_id, "procedure_id": "facelift"});
    let send = |key: &'static str, body: Value| {
        let r = http()
            .post(s.url("/api/visualizations?async_processing=true"))
            .bearer_auth(ALICE)
            .header("Idempotency-Key", key)
            .json(&body)
            .send();
        async move { r.await.unwrap() }
    };
    let first = send("k-1", req.clone()).await;
    assert_eq!(first.status(), 202);
    let first = first.json::<Value>().await.unwrap();
    let again = send("k-1", req.clone()).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        first,
        "the same task, not a second one"
    );
    let other = send(
        "k-1",
        json!({"image_id": image_id, "procedure_id": "otoplasty"}),
    )
    .await;
    let (st, b) = body(other).await;
    assert_eq!((st, code(&b)), (422, "idempotency_key_reused"));
    let (_, tasks) = body(s.get(ALICE, "/api/tasks").await).await;
    assert_eq!(tasks["items"].as_array().unwrap().len(), 1, "paid once");
    // Keys are per user.
    let bob = http()
        .post(s.url("/api/visualizations?async_processing=true"))
        .bearer_auth(BOB)
        .header("Idempotency-Key", "k-1")
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(
        bob.status(),
        404,
        "bob's request is judged on its own (alice's photo is not his)"
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `--max-upload-bytes` raised past the default is the limit at the HTTP layer too: a 25 MB
/// photo (a PNG carrying 24 MB of private chunk) is taken under a 30 MB limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_upload_limit_is_the_limit() {
    let s = Server::with_users(&[("AFTERVIEW_MAX_UPLOAD_BYTES", "30000000")]);
    let png = std::fs::read(format!("{PORTRAITS}/astronaut.png")).unwrap();
    let (head, iend) = png.split_at(png.len() - 12);
    let mut chunk = b"afVw".to_vec();
    chunk.resize(4 + 24_000_000, 0x5a);
    let mut big = head.to_vec();
    big.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
    big.extend_from_slice(&chunk);
    big.extend_from_slice(&crc32(&chunk).to_be_bytes());
    big.extend_from_slice(iend);
    assert!(big.len() > 22 * 1024 * 1024);
    let (st, b) = body(s.upload(ALICE, big, "big.png").await).await;
    assert_eq!(st, 201, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_and_requests_get_clear_errors() {
    let s = Server::with_users(&[("AFTERVIEW_MAX_UPLOAD_BYTES", "1000000")]);
    let hopper = std::fs::read(format!("{PORTRAITS}/grace_hopper.jpg")).unwrap();
    let mut bomb = std::fs::read(format!("{PORTRAITS}/astronaut.png")).unwrap()[..33].to_vec();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let c = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&c.to_be_bytes());
    // One stored-deflate IDAT (a 1x1 black pixel), then IEND: a tiny file declaring 10 gigapixels.
    let idat_data: &[u8] = &[
        0x78, 0x01, 0x01, 0x04, 0x00, 0xFB, 0xFF, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01,
    ];
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(idat_data);
    bomb.extend_from_slice(&(idat_data.len() as u32).to_be_bytes());
    bomb.extend_from_slice(&idat);
    bomb.extend_from_slice(&crc32(&idat).to_be_bytes());
    bomb.extend_from_slice(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
    let big = std::fs::read(format!("{PORTRAITS}/astronaut.png")).unwrap();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("empty", vec![], 400, "empty_file"),
        (
            "text",
            b"hello, I am not a photo".to_vec(),
            415,
            "unsupported_format",
        ),
        (
            "gif",
            b"GIF89a\x01\x00\x01\x00".to_vec(),
            415,
            "unsupported_format",
        ),
        (
            "truncated jpeg",
            hopper[..hopper.len() / 2].to_vec(),
            422,
            "corrupt_image",
        ),
        ("decompression bomb", bomb, 413, "image_too_large"),
        (
            "over the byte limit",
            [big.clone(), big].concat(),
            413,
            "file_too_large",
        ),
    ];
    for (what, bytes, want_status, want_code) in cases {
        let (st, b) = body(s.upload(ALICE, bytes, "x.jpg").await).await;
        assert_eq!((st, code(&b)), (want_status, want_code), "{what}: {b}");
    }
    let form = reqwest::multipart::Form::new().text("photo", "no file field");
    let (st, b) = body(
        http()
            .post(s.url("/api/images"))
            .bearer_auth(ALICE)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((st, code(&b)), (400, "missing_file"));
    let (_, list) = body(s.get(ALICE, "/api/images").await).await;
    assert!(
        list["items"].as_array().unwrap().is_empty(),
        "nothing half-stored"
    );

    let image_id = s.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let raw = |b: &'static str| {
        http()
            .post(s.url("/api/visualizations"))
            .bearer_auth(ALICE)
            .header("content-type", "application/json")
            .body(b)
            .send()
    };
    let (st, b) = body(raw("{\"image_id\": ").await.unwrap()).await;
    assert_eq!((st, code(&b)), (400, "invalid_request"), "malformed JSON");
    let (st, b) = body(raw("[1, 2]").await.unwrap()).await;
    assert_eq!((st, code(&b)), (400, "invalid_request"));
    let (st, b) = body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image_id, "procedure_id": "rhinoplasty", "surprise": 1}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (st, code(&b)),
        (400, "invalid_request"),
        "unknown fields are refused: {b}"
    );
    let (st, b) = body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image_id, "procedure_id": "liposuction"}),
        )
        .await,
    )
    .await;
    assert_eq!((st, code(&b)), (422, "unknown_procedure"));
    let (st, b) = body(
        s.post(
            ALICE,
            "/api/visualizations?async_processing=maybe",
            json!({"image_id": image_id, "procedure_id": "rhinoplasty"}),
        )
        .await,
    )
    .await;
    assert_eq!((st, code(&b)), (400, "invalid_request"));
    let (st, b) = body(
        s.post(
            ALICE,
            "/api/visualizations/compare",
            json!({"image_id": image_id, "procedure_ids": ["rhinoplasty"]}),
        )
        .await,
    )
    .await;
    assert_eq!((st, code(&b)), (400, "invalid_procedure_count"));
    let coffee = s.upload_portrait(ALICE, "no_face_coffee.png").await;
    let (st, b) = body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": coffee, "procedure_id": "rhinoplasty"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (st, code(&b)),
        (422, "no_face_detected"),
        "a synchronous failure answers with the task's code"
    );

    let (st, b) = body(s.get(ALICE, "/api/tasks/not%20a%20valid%20id/status").await).await;
    assert_eq!((st, code(&b)), (400, "invalid_task_id"));
    let (st, b) = body(
        s.get(
            ALICE,
            "/api/tasks/00000000-0000-0000-0000-000000000000/status",
        )
        .await,
    )
    .await;
    assert_eq!((st, code(&b)), (404, "task_not_found"));
    let (st, b) = body(s.get(ALICE, "/api/nope").await).await;
    assert_eq!((st, code(&b)), (404, "not_found"));
    let (st, b) = body(s.get(ALICE, "/api/procedures/liposuction").await).await;
    assert_eq!((st, code(&b)), (404, "not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_task_ends_the_websocket_with_revoked() {
    use afterview_gemini::mock::{MockGemini, Scenario};
    let mock = MockGemini::start(
        "mock-key",
        vec![Scenario::Slow(20_000, Box::new(Scenario::Ok))],
    )
    .await;
    let s = Server::with_users(&[
        ("AFTERVIEW_GEMINI_API_KEY", "mock-key"),
        ("AFTERVIEW_GEMINI_BASE_URL", &mock.base_url),
        ("AFTERVIEW_ALLOWED_ENGINES", "local,gemini"),
        ("AFTERVIEW_REVOKE_GRACE", "0.5"),
    ]);
    let image_id = s.upload_portrait(ALICE, "astronaut.png").await;
    let (st, acc) = body(
        s.post(ALICE, "/api/visualizations?async_processing=true", json!({"image_id": image_id, "procedure_id": "rhinoplasty", "options": {"engine": "gemini"}}))
            .await,
    )
    .await;
    assert_eq!(st, 202, "{acc}");
    let task_id = acc["task_id"].as_str().unwrap().to_owned();
    let ws = {
        let url = s.ws_url(&format!("/api/ws/tasks/{task_id}"));
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {ALICE}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    let (mut tx, mut rx) = ws.split();
    // Wait until the task is generating (progress 20), then cancel.
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), rx.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["data"]["progress"] == 20 {
                break;
            }
        }
    }
    let (st, c) = body(
        s.post(ALICE, &format!("/api/tasks/{task_id}/cancel"), json!({}))
            .await,
    )
    .await;
    assert_eq!((st, c["status"].as_str()), (200, Some("cancelling")), "{c}");
    let mut last = Value::Null;
    let mut closed = None;
    while let Some(m) = tokio::time::timeout(Duration::from_secs(10), rx.next())
        .await
        .expect("the end comes quickly")
    {
        match m.unwrap() {
            Message::Text(t) => last = serde_json::from_str(&t).unwrap(),
            Message::Close(c) => {
                closed = c.map(|c| u16::from(c.code));
                break;
            }
            _ => {}
        }
    }
    let _ = tx.close().await;
    assert_eq!(closed, Some(1000));
    assert_eq!(last["type"], "error");
    assert_eq!(last["data"]["state"], "REVOKED");
    assert_eq!(last["data"]["error"]["code"], "terminated");
    let (st, b) = body(s.get(ALICE, &format!("/api/tasks/{task_id}/result")).await).await;
    assert_eq!((st, code(&b)), (410, "task_revoked"));
    let (_, again) = body(
        s.post(ALICE, &format!("/api/tasks/{task_id}/cancel"), json!({}))
            .await,
    )
    .await;
    assert_eq!(again["status"], "already_finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procedures_ops_endpoints_and_docs() {
    let s = Server::with_users(&[]);
    let (st, list) = body(s.get(ALICE, "/api/procedures").await).await;
    assert_eq!(st, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 8);
    assert_eq!(list["currency"], "USD");
    let (_, rhino) = body(s.get(ALICE, "/api/procedures/rhinoplasty").await).await;
    assert_eq!(rhino["costs"]["total"], json!({"low": 6550, "high": 12200}));
    assert!(rhino["cost_source"].as_str().unwrap().contains("ASPS"));
    assert_eq!(
        http().get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let image_id = s.upload_portrait(ALICE, "astronaut.png").await;
    let _ = s
        .post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image_id, "procedure_id": "brow-lift"}),
        )
        .await;
    let m = http()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("afterview_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/visualizations\",status=\"200\""), "{m}");
    assert!(m.contains("afterview_task_events_total{name=\"app.tasks.visualization_tasks.generate_visualization\",state=\"SUCCESS\"} 1"), "{m}");
    assert!(m.contains("afterview_task_runtime_seconds_count{name=\"app.tasks.visualization_tasks.generate_visualization\"} 1"));
    assert!(m.contains("afterview_queue_messages{queue=\"visualizations\",state=\"ready\"} 0"));
    let doc: Value = http()
        .get(s.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/tasks/{id}/status"]["get"].is_object());
    assert!(doc["x-error-codes"]["no_face_detected"].is_string());
    let page = http()
        .get(s.url("/api/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/api/ws/tasks/{id}") && page.contains("idempotency_key_reused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_auth_configured_serve_makes_and_keeps_a_dev_token() {
    let s = Server::start(&[], &[]);
    let line = &s.stdout[1];
    let token = line.rsplit(": ").next().unwrap().to_owned();
    assert!(line.contains("dev token") && token.len() >= 32, "{line}");
    assert_eq!(s.get(&token, "/api/images").await.status(), 200);
    let stored = std::fs::read_to_string(s.env.data().join("dev-token")).unwrap();
    assert_eq!(stored.trim(), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.env.data().join("dev-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only the owner can read it");
    }
    assert!(
        !s.proc.log_text().contains(&token),
        "the token is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_infographics_through_the_api() {
    let s = Server::with_users(&[]);
    let image_id = s.upload_portrait(ALICE, "grace_hopper.jpg").await;
    let (_, v1) = body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image_id, "procedure_id": "rhinoplasty"}),
        )
        .await,
    )
    .await;
    let (_, v2) = body(
        s.post(
            ALICE,
            "/api/visualizations",
            json!({"image_id": image_id, "procedure_id": "lip-augmentation"}),
        )
        .await,
    )
    .await;
    // A patient field the report does not know, or an unknown paper, is refused at the POST
    // (before any task runs), not by a task failing later.
    let (_, before) = body(s.get(ALICE, "/api/tasks").await).await;
    for (extra, code) in [
        (
            json!({"patient": {"name": "Ada", "ssn": "123"}}),
            "invalid_request",
        ),
        (json!({"paper": "tabloid"}), "invalid_options"),
    ] {
        let mut req = json!({"visualization_ids": [v1["id"]], "format": "pdf"});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        for q in ["", "?async_processing=true"] {
            let (st, e) = body(
                s.post(ALICE, &format!("/api/exports{q}"), req.clone())
                    .await,
            )
            .await;
            assert_eq!(
                (st, e["error"]["code"].as_str()),
                (400, Some(code)),
                "{req} {e}"
            );
        }
    }
    let (_, after) = body(s.get(ALICE, "/api/tasks").await).await;
    assert_eq!(before["items"], after["items"], "no task was sent");
    let (st, exp) = body(
        s.post(
            ALICE,
            "/api/exports",
            json!({"visualization_ids": [v1["id"], v2["id"]], "format": "pdf", "include_costs": true, "patient": {"name": "Ada Lovelace"}, "paper": "a4"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 200, "{exp}");
    for k in ["id", "format", "download_url", "created_at"] {
        assert!(exp.get(k).is_some(), "{k} in {exp}");
    }
    let dl = s.get(ALICE, exp["download_url"].as_str().unwrap()).await;
    assert_eq!(dl.status(), 200);
    assert_eq!(dl.headers()["content-type"], "application/pdf");
    assert!(
        dl.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    assert!(dl.bytes().await.unwrap().starts_with(b"%PDF-"));
    // A name in a script the bundled font lacks prints in an installed system face
    // (`scripts/test.sh` installs fonts-droid-fallback), found with no configuration.
    let (st, cjk) = body(
        s.post(
            ALICE,
            "/api/exports",
            json!({"visualization_ids": [v1["id"]], "format": "pdf", "patient": {"name": "王小明", "clinic": "東京美容クリニック"}}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 200, "{cjk}");
    let pdf = s.get(ALICE, cjk["download_url"].as_str().unwrap()).await;
    let fonts = pdf_tool("pdffonts", &pdf.bytes().await.unwrap()).to_lowercase();
    assert!(
        fonts.contains("droid") || fonts.contains("cjk") || fonts.contains("zenhei"),
        "a CJK face is embedded:\n{fonts}"
    );
    let (st, got) = body(
        s.get(
            ALICE,
            &format!("/api/exports/{}", exp["id"].as_str().unwrap()),
        )
        .await,
    )
    .await;
    assert_eq!((st, &got["id"]), (200, &exp["id"]));
    assert_eq!(
        s.get(BOB, exp["download_url"].as_str().unwrap())
            .await
            .status(),
        404
    );

    let (st, acc) = body(
        s.post(
            ALICE,
            "/api/exports/cost-infographic?async_processing=true",
            json!({"procedure_ids": ["facelift", "otoplasty"], "format": "svg"}),
        )
        .await,
    )
    .await;
    assert_eq!(st, 202);
    let frames = s.ws(ALICE, acc["task_id"].as_str().unwrap()).await;
    let done = frames.last().unwrap();
    assert_eq!(done["type"], "complete");
    let svg = s
        .get(
            ALICE,
            done["data"]["result"]["download_url"].as_str().unwrap(),
        )
        .await;
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().contains("Otoplasty"));
    let (_, list) = body(s.get(ALICE, "/api/exports").await).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    for (path, req, want) in [
        (
            "/api/exports",
            json!({"visualization_ids": [v1["id"]], "format": "docx"}),
            "unsupported_export_format",
        ),
        (
            "/api/exports",
            json!({"visualization_ids": ["00000000-0000-0000-0000-000000000000"]}),
            "visualization_not_found",
        ),
        (
            "/api/exports/cost-infographic",
            json!({"procedure_ids": ["facelift"], "format": "gif"}),
            "unsupported_export_format",
        ),
        (
            "/api/exports/cost-infographic",
            json!({"procedure_ids": ["liposuction"]}),
            "unknown_procedure",
        ),
    ] {
        let (st, b) = body(s.post(ALICE, path, req.clone()).await).await;
        assert!((400..500).contains(&st), "{req}: {st}");
        assert_eq!(code(&b), want, "{req}");
    }
    let (st, b) = body(
        s.post(
            BOB,
            "/api/exports",
            json!({"visualization_ids": [v1["id"]]}),
        )
        .await,
    )
    .await;
    assert_eq!((st, code(&b)), (404, "visualization_not_found"));
}

/// A key server that always answers 500, counting its requests.
fn failing_jwks_server(hits: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    format!("http://{addr}/jwks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_key_server_backs_off_and_sockets_close_when_the_token_expires() {
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dead = failing_jwks_server(hits.clone());
    let live = jwks_server("jwks.json");
    // Firebase keys from a dead server: 40 JWT requests are refused quickly, and the server is
    // asked a handful of times, not once per request.
    let s = Server::start(
        &[
            ("AFTERVIEW_AUTH_TOKENS", &format!("{ALICE}=alice")),
            ("AFTERVIEW_FIREBASE_PROJECT_ID", PROJECT),
            ("AFTERVIEW_FIREBASE_JWKS_URL", &dead),
        ],
        &["--no-worker"],
    );
    let now = chrono::Utc::now().timestamp();
    let iss = format!("https://securetoken.google.com/{PROJECT}");
    let claims = json!({"iss": iss, "aud": PROJECT, "sub": "u1", "iat": now - 10, "exp": now + 3600, "auth_time": now - 20});
    let token = mint(&claims, "trusted.pem", "trusted-kid");
    let t0 = std::time::Instant::now();
    let answers = futures_util::future::join_all(
        (0..40).map(|_| async { s.get(&token, "/api/images").await.status().as_u16() }),
    )
    .await;
    assert!(answers.iter().all(|&a| a == 401), "{answers:?}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let n = hits.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=3).contains(&n), "the key server was asked {n} times");
    drop(s);

    // A socket opened with a token that expires in 3 s is closed (1008) when it does.
    let s = Server::start(
        &[
            ("AFTERVIEW_AUTH_TOKENS", &format!("{ALICE}=alice")),
            ("AFTERVIEW_FIREBASE_PROJECT_ID", PROJECT),
            ("AFTERVIEW_FIREBASE_JWKS_URL", &live),
        ],
        &["--no-worker"],
    );
    let now = chrono::Utc::now().timestamp();
    let short = json!({"iss": iss, "aud": PROJECT, "sub": "u2", "iat": now - 10, "exp": now + 3, "auth_time": now - 20});
    let token = mint(&short, "trusted.pem", "trusted-kid");
    let image = s.upload_portrait(&token, "astronaut.png").await;
    let r = s
        .post(
            &token,
            "/api/visualizations?async_processing=true",
            json!({"image_id": image, "procedure_id": "rhinoplasty"}),
        )
        .await;
    let task = r.json::<Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(s.ws_url(&format!("/api/ws/tasks/{task}?token={token}")))
            .await
            .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(c)) = m {
                return c.map(|c| u16::from(c.code));
            }
        }
        None
    })
    .await
    .expect("closed within 10 s");
    assert_eq!(closed, Some(1008));
}

/// A WebSocket to a finished task whose result the broker no longer has (the memory broker,
/// restarted) but whose output is stored gets the end at once: `complete` with the stored
/// result, then a normal close (it said PENDING and waited for an hour). At shutdown every
/// WebSocket closes with 1001, going away, so its client reconnects elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_end_on_stored_outputs_and_close_going_away_at_shutdown() {
    let tokens = format!("{ALICE}=alice,{BOB}=bob");
    let vars = [("AFTERVIEW_AUTH_TOKENS", tokens.as_str())];
    let mut a = Server::start(&vars, &["--broker", "memory://"]);
    let uri = "/api/exports/cost-infographic?async_processing=true";
    let infographic = json!({"procedure_ids": ["rhinoplasty"]});
    let (status, sent) = body(a.post(ALICE, uri, infographic.clone()).await).await;
    assert_eq!(status, 202, "{sent}");
    let task = sent["task_id"].as_str().unwrap().to_owned();
    let frames = a.ws(ALICE, &task).await;
    let done = frames.last().unwrap().clone();
    assert_eq!(done["type"], "complete", "{frames:?}");
    a.proc.signal(libc::SIGTERM);
    assert_eq!(a.proc.wait_exit(Duration::from_secs(15)), Some(0));

    let Server { env, .. } = a;
    let b = Server::start_in(env, &vars, &["--broker", "memory://", "--no-worker"]);
    let frames = tokio::time::timeout(Duration::from_secs(10), b.ws(ALICE, &task))
        .await
        .expect("the end at once");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "complete");
    assert_eq!(frames[0]["data"]["result"], done["data"]["result"]);

    // No worker: this task waits. Its follower is told the server is going away.
    let (_, sent) = body(b.post(ALICE, uri, infographic).await).await;
    let waiting = sent["task_id"].as_str().unwrap().to_owned();
    let url = b.ws_url(&format!("/api/ws/tasks/{waiting}?token={ALICE}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("PENDING"), "{first:?}");
    // A synchronous request waiting for such a task is answered while the server drains (the
    // task goes on), not cut off with its connection after the drain's 30 s.
    let listed = async || {
        let (_, tasks) = body(b.get(ALICE, "/api/tasks").await).await;
        tasks["items"].as_array().map_or(0, Vec::len)
    };
    let before = listed().await;
    let sync = {
        let url = b.url("/api/exports/cost-infographic");
        tokio::spawn(async move {
            let r = http()
                .post(url)
                .bearer_auth(ALICE)
                .json(&json!({"procedure_ids": ["rhinoplasty"]}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    // Recorded, so taken by the server (a request sent after the shutdown began would find
    // the listener closed).
    let t0 = std::time::Instant::now();
    while listed().await == before {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the request was taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.proc.signal(libc::SIGTERM);
    let (status, answer) = tokio::time::timeout(Duration::from_secs(10), sync)
        .await
        .expect("answered at the shutdown")
        .unwrap();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restarting"),
        "{answer}"
    );
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(c)) = m {
                return c.map(|c| u16::from(c.code));
            }
        }
        None
    })
    .await
    .expect("closed at the shutdown");
    assert_eq!(close, Some(1001));
}

/// `tool` (poppler's `pdffonts`, `pdftotext`) run on `pdf`; its output.
fn pdf_tool(tool: &str, pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new(tool)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (apt-get install poppler-utils): {e}"));
    assert!(out.status.success(), "{tool}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
