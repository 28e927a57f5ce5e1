//! The commands. Each returns the process exit code; errors are printed by the caller.

use std::process::ExitCode;
use std::time::Duration;

use afterview_engine::message::validate_queue;
use afterview_engine::worker::expand_node_name;
use afterview_engine::{
    Client, SendOptions, Shutdown, TaskState, TimeLimits, Worker, WorkerConfig,
};
use anyhow::Context;
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use crate::backends::{self, Backends};
use crate::cli::{
    CallArgs, EXIT_FAILURE, EXIT_NO_WORKERS, EXIT_REVOKED, EXIT_TIMEOUT, EXIT_USAGE, InspectArgs,
    InspectWhat, PurgeArgs, ResultArgs, RevokeArgs, ServeArgs, WorkerArgs,
};
use crate::config::{DEFAULT_BIND, ProductSettings, Settings, secs};
use crate::product::Product;

fn client(b: &Backends) -> Client {
    crate::with_routes(Client::new(b.broker.clone(), b.results.clone()))
}

/// Resolves worker settings (flags, variables and the file arrive through clap) over defaults.
fn worker_config(a: &WorkerArgs) -> anyhow::Result<WorkerConfig> {
    let d = WorkerConfig::default();
    let queues = a.queues.clone().unwrap_or_else(crate::all_queues);
    let queues: Vec<String> = queues
        .into_iter()
        .map(|q| q.trim().to_owned())
        .filter(|q| !q.is_empty())
        .collect();
    if queues.is_empty() {
        usage!("no queues to consume: give -Q with at least one queue");
    }
    for q in &queues {
        if let Err(e) = validate_queue(q) {
            usage!("{e}");
        }
    }
    let concurrency = a.concurrency.unwrap_or(d.concurrency);
    if concurrency == 0 || concurrency > 10_000 {
        usage!("concurrency must be 1-10000, got {concurrency}");
    }
    let lease = match a.lease {
        Some(v) => secs("lease", v)?,
        None => d.lease,
    };
    if lease < Duration::from_millis(300) {
        usage!("lease must be at least 0.3 seconds");
    }
    Ok(WorkerConfig {
        node: a.node.as_deref().map(expand_node_name).unwrap_or(d.node),
        queues,
        concurrency,
        prefetch_multiplier: a.prefetch_multiplier.unwrap_or(1).max(1),
        lease,
        shutdown_grace: match a.shutdown_grace {
            Some(v) => secs("shutdown grace", v)?,
            None => d.shutdown_grace,
        },
        revoke_grace: match a.revoke_grace {
            Some(v) => secs("revoke grace", v)?,
            None => d.revoke_grace,
        },
        ..d
    })
}

/// Turns SIGTERM/SIGINT into shutdown stages: the first is graceful, the second immediate.
fn watch_signals(shutdown: Shutdown) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                warn!("Cannot install signal handlers.");
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if shutdown.graceful.is_cancelled() {
                    info!("Second signal: giving running tasks back now.");
                    shutdown.trigger();
                    return;
                }
                info!("Shutting down gracefully; send the signal again to stop at once.");
                shutdown.trigger();
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.trigger();
            let _ = tokio::signal::ctrl_c().await;
            shutdown.trigger();
        }
    });
}

/// `afterview serve`.
pub async fn serve(s: Settings, a: ServeArgs) -> anyhow::Result<ExitCode> {
    let wcfg = worker_config(&a.worker)?;
    let b = backends::open_with(&s, a.worker.events).await?;
    let ps = ProductSettings::resolve(a.worker.product.layer())?;
    let product = Product::open(&s, &ps).await?;
    let registry = product.registry(&ps)?;
    let client = client(&b);
    let bind = a.bind.clone().unwrap_or_else(|| DEFAULT_BIND.into());
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    watch_signals(shutdown.clone());
    info!(broker = %b.description, stores = %product.description, "Storage opened.");
    spawn_metadata_cleanup(&product, s.result_expires, shutdown.clone());

    // Every check that can refuse to start comes before the worker: a worker stopped by a
    // refusal would leave the message it just claimed to wait out its lease.
    let (auth, dev_token) = build_auth(&s, &a)?;
    if dev_token.is_some() && !addr.ip().is_loopback() && !a.allow_dev_token_on_network {
        usage!(
            "refusing to serve on {addr} without authentication: configure AFTERVIEW_AUTH_TOKENS \
             (or --auth-tokens-file, Firebase, OIDC), bind to 127.0.0.1, or pass \
             --allow-dev-token-on-network"
        );
    }
    let (mut inner, web) = api_state(&s, &a, client, &product, auth)?;
    inner.closing = shutdown.graceful.clone();
    let worker = (!a.no_worker).then(|| {
        let w = Worker::new(wcfg, b.broker.clone(), b.results.clone(), registry.clone());
        tokio::spawn(w.run(shutdown.clone()))
    });
    print_banner(&s, addr, dev_token.as_deref());
    write_ready_file(a.worker.ready_file.as_deref())?;
    let state = std::sync::Arc::new(inner);
    let app = afterview_api::router(state.clone()).merge(afterview_web::router(&web));
    let (stop, now) = (shutdown.graceful.clone(), shutdown.immediate.clone());
    let http = afterview_api::serve(
        listener,
        app,
        async move { stop.cancelled().await },
        async move { now.cancelled().await },
    );
    http.await.context("the HTTP server failed")?;
    // WebSocket followers run in tasks of their own, which the HTTP drain does not wait for:
    // they were told to close (1001, reconnect); give them a moment to have said it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !state.sockets.lock().map(|m| m.is_empty()).unwrap_or(true)
        && std::time::Instant::now() < deadline
        && !shutdown.immediate.is_cancelled()
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if let Some(w) = worker {
        w.await.context("the worker panicked")??;
    }
    Ok(ExitCode::SUCCESS)
}

/// Printed on stdout so scripts (and tests) can find the port when binding to :0. Written in
/// one go, and a reader that went away (a closed pipe) must not stop the server.
fn print_banner(s: &Settings, addr: std::net::SocketAddr, dev_token: Option<&str>) {
    let mut banner = format!("afterview serving on http://{addr}\n");
    if let Some(t) = dev_token {
        banner.push_str(&format!(
            "dev token (no authentication configured; kept in {}): {t}\n\
             open http://{addr}/#token={t} in a browser, or: curl -H 'Authorization: Bearer {t}' http://{addr}/api/procedures\n",
            s.data_dir.join("dev-token").display()
        ));
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
}

/// The API's state from the serve flags: upload and per-user limits, metrics, presigned
/// downloads, operators, and what the web app needs to sign in.
fn api_state(
    s: &Settings,
    a: &ServeArgs,
    client: Client,
    product: &Product,
    auth: afterview_api::auth::Auth,
) -> anyhow::Result<(afterview_api::Inner, afterview_web::WebConfig)> {
    let limits = afterview_intake::Limits {
        max_bytes: a
            .max_upload_bytes
            .unwrap_or(afterview_intake::DEFAULT_MAX_BYTES),
        max_pixels: a.max_pixels.unwrap_or(afterview_intake::DEFAULT_MAX_PIXELS),
    };
    let metrics = std::sync::Arc::new(afterview_api::metrics::Metrics::default());
    afterview_api::spawn_task_metrics(&client, metrics.clone());
    let mut inner = afterview_api::Inner::new(
        client,
        product.meta.clone(),
        product.blobs.clone(),
        product.catalog.clone(),
        auth,
        limits,
        metrics,
    );
    let d = afterview_api::UserLimits::default();
    inner.user_limits = afterview_api::UserLimits {
        active_tasks: a.max_active_tasks_per_user.unwrap_or(d.active_tasks),
        sync_requests: a.max_sync_requests_per_user.unwrap_or(d.sync_requests),
        photos: a.max_photos_per_user.unwrap_or(d.photos).max(1),
        storage_bytes: a.max_storage_bytes_per_user.unwrap_or(d.storage_bytes),
    };
    inner.result_expires = s.result_expires;
    inner.metrics_token = a.metrics_token.clone().filter(|t| !t.is_empty());
    inner.presign = presign(s, a.presign_downloads)?;
    inner.operators = a
        .operators
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    let firebase_web = match (&a.firebase_project_id, &a.firebase_web_api_key) {
        (Some(project), Some(key)) => Some(serde_json::json!({
            "apiKey": key,
            "authDomain": format!("{project}.firebaseapp.com"),
            "projectId": project,
        })),
        _ => None,
    };
    let web = afterview_web::WebConfig {
        firebase: firebase_web.is_some(),
    };
    // The upload limit too: the web app refuses a larger photo before sending it.
    inner.client_config = serde_json::json!({
        "firebase": firebase_web,
        "max_upload_bytes": inner.limits.max_bytes,
    });
    Ok((inner, web))
}

/// `--presign-downloads`: a lifetime up to S3's 7 days; only S3 storage can sign.
fn presign(s: &Settings, secs: Option<u64>) -> anyhow::Result<Option<Duration>> {
    let Some(ttl) = secs.filter(|&secs| secs > 0).map(Duration::from_secs) else {
        return Ok(None);
    };
    if ttl > Duration::from_secs(7 * 86_400) {
        usage!("presigned downloads may live at most 604800 seconds (7 days, S3's limit)");
    }
    if s.storage_url
        .as_deref()
        .is_none_or(|u| !u.starts_with("s3://"))
    {
        warn!("Presigned downloads need S3 storage; downloads are streamed.");
    }
    Ok(Some(ttl))
}

/// Every API host removes expired idempotency, task and slot records every ten minutes
/// (concurrent runs on several hosts are harmless). Records are kept as long as results, and at
/// least a day (an `Idempotency-Key` retried the next morning still replays).
fn spawn_metadata_cleanup(product: &Product, result_expires: Duration, shutdown: Shutdown) {
    let meta = product.meta.clone();
    let keep = result_expires.max(Duration::from_secs(86_400));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.graceful.cancelled() => return,
            }
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(1));
            match meta.cleanup(before).await {
                Ok(0) => {}
                Ok(n) => info!(removed = n, "Expired metadata records removed."),
                Err(e) => warn!(error = %e, "Metadata cleanup failed; retrying in ten minutes."),
            }
        }
    });
}

/// `afterview migrate`: opens (and so migrates) the metadata store, checks the blob store.
pub async fn migrate(s: Settings) -> anyhow::Result<ExitCode> {
    let (meta, md) = crate::product::open_metadata(&s).await?;
    let version = meta.schema_version().await?;
    println!("metadata {md}: schema version {version}");
    let (blobs, bd) = crate::product::open_blobs(&s)?;
    blobs
        .ping()
        .await
        .with_context(|| format!("the blob store {bd} is not reachable"))?;
    println!("blobs {bd}: reachable");
    Ok(ExitCode::SUCCESS)
}

/// Authentication from the settings; with nothing configured, a dev token kept in the data dir
/// (returned so `serve` can print it).
fn build_auth(
    s: &Settings,
    a: &ServeArgs,
) -> anyhow::Result<(afterview_api::auth::Auth, Option<String>)> {
    use afterview_api::auth::{Auth, JwtVerifier};
    let from_env = std::env::var("AFTERVIEW_AUTH_TOKENS").is_ok_and(|v| !v.trim().is_empty());
    if from_env && a.auth_tokens_file.is_some() {
        // Neither may silently win: a token rotated through one would stay valid in the other.
        usage!(
            "both AFTERVIEW_AUTH_TOKENS and a tokens file (--auth-tokens-file, \
             AFTERVIEW_AUTH_TOKENS_FILE or auth_tokens_file) are set: keep one"
        );
    }
    let spec = match &a.auth_tokens_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => text,
            Err(e) => usage!("cannot read the tokens file {}: {e}", p.display()),
        }
        .lines()
        .collect::<Vec<_>>()
        .join(","),
        None => std::env::var("AFTERVIEW_AUTH_TOKENS").unwrap_or_default(),
    };
    let mut auth = Auth {
        static_tokens: Auth::parse_static(&spec).map_err(|e| {
            anyhow::Error::new(crate::cli::Usage(format!("AFTERVIEW_AUTH_TOKENS: {e}")))
        })?,
        verifiers: vec![],
    };
    if let Some(p) = &a.firebase_project_id {
        auth.verifiers
            .push(JwtVerifier::firebase(p, a.firebase_jwks_url.as_deref()));
    }
    // All three or none, wherever each comes from (clap's own `requires` does not see values
    // from the config file, which are its defaults: a partial setting was skipped silently
    // there, and serve fell back to a dev token).
    match (&a.oidc_issuer, &a.oidc_audience, &a.oidc_jwks_url) {
        (Some(iss), Some(aud), Some(jwks)) => {
            auth.verifiers.push(JwtVerifier::oidc(iss, aud, jwks));
        }
        (None, None, None) => {}
        (iss, aud, jwks) => {
            let missing: Vec<&str> = [
                ("--oidc-issuer (AFTERVIEW_OIDC_ISSUER)", iss.is_none()),
                ("--oidc-audience (AFTERVIEW_OIDC_AUDIENCE)", aud.is_none()),
                ("--oidc-jwks-url (AFTERVIEW_OIDC_JWKS_URL)", jwks.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, gone)| gone.then_some(name))
            .collect();
            usage!(
                "OIDC needs an issuer, an audience and a JWKS URL: missing {}",
                missing.join(", ")
            );
        }
    }
    if !auth.is_empty() {
        return Ok((auth, None));
    }
    let path = s.data_dir.join("dev-token");
    check_private(&path)?;
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => t.trim().to_owned(),
        _ => {
            let t = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            std::fs::create_dir_all(&s.data_dir)?;
            write_private(&path, &t).with_context(|| format!("cannot write {}", path.display()))?;
            t
        }
    };
    auth.static_tokens.insert(token.clone(), "dev".into());
    Ok((auth, Some(token)))
}

/// Refuses a secret file someone else owns or others may read (a planted or leaked token).
fn check_private(path: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Ok(()); // not there yet: it will be created 0600
        };
        let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if !meta.file_type().is_file() {
            anyhow::bail!("{} is not a regular file", path.display());
        }
        if me.is_some_and(|uid| uid != meta.uid()) {
            anyhow::bail!(
                "{} belongs to another user (uid {})",
                path.display(),
                meta.uid()
            );
        }
        if meta.mode() & 0o077 != 0 {
            anyhow::bail!(
                "{} is readable by others (mode {:o}): chmod 600 it or delete it",
                path.display(),
                meta.mode() & 0o777
            );
        }
    }
    Ok(())
}

/// Writes a secret readable by the owner only.
fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    o.open(path)?.write_all(content.as_bytes())
}

/// `--ready-file`: the process id, once the process is about to consume (and serve).
fn write_ready_file(f: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(f) = f {
        std::fs::write(f, std::process::id().to_string())
            .with_context(|| format!("cannot write the ready file {}", f.display()))?;
    }
    Ok(())
}

/// `afterview worker`.
pub async fn worker(s: Settings, a: WorkerArgs) -> anyhow::Result<ExitCode> {
    let cfg = worker_config(&a)?;
    let b = backends::open_with(&s, a.events).await?;
    let ps = ProductSettings::resolve(a.product.layer())?;
    let product = Product::open(&s, &ps).await?;
    let registry = product.registry(&ps)?;
    info!(broker = %b.description, stores = %product.description, "Storage opened.");
    let shutdown = Shutdown::new();
    watch_signals(shutdown.clone());
    write_ready_file(a.ready_file.as_deref())?;
    Worker::new(cfg, b.broker, b.results, registry)
        .run(shutdown)
        .await?;
    Ok(ExitCode::SUCCESS)
}

fn parse_json_arg(flag: &str, raw: Option<&str>, want_list: bool) -> anyhow::Result<Value> {
    let Some(raw) = raw else {
        return Ok(if want_list { json!([]) } else { json!({}) });
    };
    let v: Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        Err(e) => usage!("{flag} is not valid JSON: {e}"),
    };
    match (&v, want_list) {
        (Value::Array(_), true) | (Value::Object(_), false) => Ok(v),
        (_, true) => usage!("{flag} must be a JSON list, e.g. '[1, \"a\"]'"),
        (_, false) => usage!("{flag} must be a JSON object, e.g. '{{\"seconds\": 2}}'"),
    }
}

/// `afterview call`.
pub async fn call(s: Settings, a: CallArgs) -> anyhow::Result<ExitCode> {
    let args = match parse_json_arg("--args", a.args.as_deref(), true)? {
        Value::Array(v) => v,
        _ => unreachable!("checked above"),
    };
    let kwargs: Map<String, Value> = match parse_json_arg("--kwargs", a.kwargs.as_deref(), false)? {
        Value::Object(m) => m,
        _ => unreachable!("checked above"),
    };
    let eta = a
        .eta
        .as_deref()
        .map(|e| {
            afterview_engine::time::parse_iso(e)
                .map_err(|m| anyhow::Error::new(crate::cli::Usage(format!("--eta: {m}"))))
        })
        .transpose()?;
    let expires = a
        .expires
        .map(|e| {
            secs("--expires", e)
                .map(|d| chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or_default())
        })
        .transpose()?;
    let opts = SendOptions {
        task_id: a.task_id.clone(),
        queue: a.queue.clone(),
        eta,
        countdown: a.countdown,
        expires,
        priority: a.priority,
        timelimit: TimeLimits {
            hard: a.time_limit,
            soft: a.soft_time_limit,
        },
        ..Default::default()
    };
    let b = backends::open(&s).await?;
    let client = client(&b);
    let msg = match client.message(&a.name, args, kwargs, opts) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("afterview: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    if !a.wait {
        b.broker
            .publish(&msg)
            .await
            .context("cannot enqueue the task")?;
        println!("{}", msg.id);
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = secs("--timeout", a.timeout.unwrap_or(330.0))?;
    let meta = client
        .publish_and_wait(&msg, timeout)
        .await
        .context("cannot enqueue the task")?;
    Ok(report_outcome(&meta, false))
}

/// Prints a result (stdout) or an error (stderr) and picks the exit code.
fn report_outcome(meta: &afterview_engine::ResultMeta, whole: bool) -> ExitCode {
    if whole {
        println!("{}", serde_json::to_string_pretty(meta).unwrap_or_default());
    }
    match &meta.status {
        TaskState::Success => {
            if !whole {
                println!("{}", meta.result);
            }
            ExitCode::SUCCESS
        }
        TaskState::Failure | TaskState::Revoked => {
            let err = meta
                .error_info()
                .unwrap_or_else(|| afterview_engine::ErrorInfo {
                    code: "unknown".into(),
                    message: String::new(),
                });
            eprintln!(
                "afterview: task {} {}: {}: {}",
                meta.task_id, meta.status, err.code, err.message
            );
            ExitCode::from(if meta.status == TaskState::Failure {
                EXIT_FAILURE
            } else {
                EXIT_REVOKED
            })
        }
        other => {
            if !whole {
                eprintln!("afterview: task {} is {other} (not finished)", meta.task_id);
                return ExitCode::from(EXIT_TIMEOUT);
            }
            ExitCode::SUCCESS
        }
    }
}

/// `afterview result`.
pub async fn result(s: Settings, a: ResultArgs) -> anyhow::Result<ExitCode> {
    let b = backends::open(&s).await?;
    let client = client(&b);
    let meta = match client.result(&a.id).await {
        Ok(m) => m,
        Err(afterview_engine::ClientError::Invalid(e)) => {
            eprintln!("afterview: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => return Err(e.into()),
    };
    if !a.meta && !meta.status.is_terminal() {
        eprintln!("afterview: task {} is {}", meta.task_id, meta.status);
        println!("null");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report_outcome(&meta, a.meta))
}

/// `afterview revoke`.
pub async fn revoke(s: Settings, a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let b = backends::open(&s).await?;
    let client = client(&b);
    for id in &a.ids {
        match client.revoke(id, a.terminate).await {
            Ok(out) => {
                let what = if out.running {
                    "running: cancelling it"
                } else if out.removed > 0 {
                    "removed from the queue"
                } else {
                    "recorded"
                };
                println!("{id}: revoked ({what})");
            }
            Err(afterview_engine::ClientError::Invalid(e)) => {
                eprintln!("afterview: {id}: {e}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `afterview purge`.
pub async fn purge(s: Settings, a: PurgeArgs) -> anyhow::Result<ExitCode> {
    let queues = a.queues.unwrap_or_else(crate::all_queues);
    for q in &queues {
        if let Err(e) = validate_queue(q) {
            usage!("{e}");
        }
    }
    let b = backends::open(&s).await?;
    let n = client(&b).purge(&queues).await?;
    println!(
        "Purged {n} message{} from {}.",
        if n == 1 { "" } else { "s" },
        queues.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// `afterview inspect`.
pub async fn inspect(s: Settings, a: InspectArgs) -> anyhow::Result<ExitCode> {
    let b = backends::open(&s).await?;
    let client = client(&b);
    let timeout = secs("--timeout", a.timeout)?;
    let workers = client.workers(timeout).await?;
    let mut out = Map::new();
    match a.what {
        InspectWhat::Queues => {
            let stats = client.queue_stats(None).await?;
            let consumers = |q: &str| -> Vec<String> {
                workers
                    .iter()
                    .filter(|w| w.queues.iter().any(|x| x == q))
                    .map(|w| w.node.clone())
                    .collect()
            };
            let mut names: Vec<String> = stats.iter().map(|s| s.queue.clone()).collect();
            for w in &workers {
                names.extend(w.queues.iter().cloned());
            }
            names.sort();
            names.dedup();
            let rows: Vec<Value> = names
                .iter()
                .map(|q| {
                    let st = stats.iter().find(|s| &s.queue == q).cloned().unwrap_or_default();
                    json!({"name": q, "ready": st.ready, "scheduled": st.scheduled, "running": st.leased,
                           "consumers": consumers(q)})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(ExitCode::SUCCESS);
        }
        _ if workers.is_empty() => {
            eprintln!("Error: No nodes replied within time constraint.");
            return Ok(ExitCode::from(EXIT_NO_WORKERS));
        }
        InspectWhat::Active => {
            for w in &workers {
                out.insert(w.node.clone(), serde_json::to_value(&w.active)?);
            }
        }
        InspectWhat::Registered => {
            for w in &workers {
                out.insert(w.node.clone(), json!(w.registered));
            }
        }
        InspectWhat::Ping => {
            for w in &workers {
                out.insert(w.node.clone(), json!({"ok": "pong"}));
            }
        }
        InspectWhat::Stats => {
            for w in &workers {
                let uptime = (chrono::Utc::now() - w.started_at).num_seconds();
                out.insert(
                    w.node.clone(),
                    json!({
                        "pid": w.pid,
                        "hostname": w.hostname,
                        "uptime": uptime,
                        "total": w.total,
                        "pool": {
                            "implementation": if w.sw_ident == "afterview" { "tokio" } else { "celery" },
                            "max-concurrency": w.concurrency,
                        },
                        "prefetch_count": w.prefetch_count,
                        "queues": w.queues,
                        "broker": {"transport": b.broker.kind()},
                        "sw_ident": w.sw_ident,
                        "sw_ver": w.sw_ver,
                        "heartbeat_at": afterview_engine::time::format_iso(w.heartbeat_at),
                    }),
                );
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&Value::Object(out))?);
    Ok(ExitCode::SUCCESS)
}
