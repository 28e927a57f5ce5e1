//! Redis broker and result backend for Afterview's task engine, wire-compatible with Celery 5
//! on kombu's Redis transport (Celery's message protocol v2).
//!
//! What travels on the wire is what Python writes and reads: task lists and priority buckets
//! (`<q>`, `<q>\x06\x16{3,6,9}`), the `unacked`/`unacked_index` bookkeeping, result keys
//! `celery-task-meta-<id>` written with SETEX and PUBLISH, pidbox control on
//! `/{db}.celery.pidbox` with replies through `_kombu.binding.reply.celery.pidbox`, and events on
//! `/{db}.celeryev/<type>`. So Python producers, Celery workers and Flower share queues, results
//! and the control plane with Afterview's workers.
//!
//! Invariants, beyond Celery's own:
//! - Every transition is one Lua script ([`scripts`]): a message is always in a queue, in the
//!   schedule or in `unacked` with a lease; there is no fetch-then-record window.
//! - A claim takes a per-message *lease* (epoch-fenced) that the running worker renews; a crashed
//!   worker's message is back within the lease, a live one is never redelivered. Python's
//!   visibility-timeout sweep never touches a leased message (its `unacked_index` score is kept
//!   fresh), and our sweep returns Python workers' messages after the same visibility timeout.
//! - Results are fenced by the lease and written in the same script as the ack.
//! - A message an Afterview client publishes while a worker of its queue is idle is claimed for
//!   that worker in the publish script and pushed on the worker's channel (`src/push.rs`): recorded
//!   exactly as a claim records it, so a push lost in transit comes back with its lease.
//! - Revocations are tombstones in Redis with a TTL and a bounded log, checked at claim, so they
//!   survive restarts of workers and of Redis (with AOF); they are also broadcast on the pidbox
//!   so Python workers honour them.
//! - Everything this crate writes is bounded: results and tombstones expire, the revocation log
//!   and dead letters are capped, reply lists expire.
//! - Blocking reads (pidbox replies) use their own connection; pub/sub has its own connection
//!   that resubscribes after a reconnect and re-reads what it follows.

// Only its provider feature: see Cargo.toml.
use rustls as _;

mod broker;
mod calls;
mod celery;
mod conn;
mod control;
pub use control::ControlRequest;
mod options;
pub use options::{ClientCert, RedisOptions, redact};
mod pubsub;
mod push;
mod results;
mod scripts;
#[cfg(feature = "testing")]
pub mod testing;
mod wake;
mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use afterview_engine::BackendError;
use afterview_engine::events::EventHub;
use redis::aio::ConnectionManager;
use tokio::sync::{Notify, mpsc};
use tracing::debug;

use crate::calls::{Scripts, unavailable};
use crate::conn::{Conn, transient};
use crate::control::Control;
use crate::options::manager_config;
use crate::wake::Wake;
use crate::writer::{StoreReq, store_writer};

/// Prefix of result keys and channels (Celery's default).
pub const RESULT_PREFIX: &str = "celery-task-meta-";

pub(crate) struct Inner {
    client: redis::Client,
    conn: Conn,
    results: Conn,
    broker_db: i64,
    opts: RedisOptions,
    scripts: Scripts,
    hub: EventHub,
    wake: Wake,
    revoke_wake: Notify,
    claim_seen: Mutex<HashMap<Vec<String>, (u64, i64)>>,
    pushes: push::Pushes,
    subs: mpsc::UnboundedSender<pubsub::Cmd>,
    stores: mpsc::UnboundedSender<StoreReq>,
    control: Control,
    declared: Mutex<HashSet<String>>,
    keyevents: AtomicBool,
    /// Subscribed (or asked to be) to the channels workers wait on.
    worker_channels: AtomicBool,
    description: String,
    broker_url: String,
}

/// A Redis broker and result backend (one object implements both traits).
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("at", &self.inner.description)
            .finish()
    }
}

/// Every connection to Redis: requests go out at once (redis-rs leaves Nagle's algorithm on:
/// a request sent while an earlier one on the same connection is unanswered waited for that
/// answer), and a peer that vanished without closing (a host gone in a failover, a dropped
/// route) is noticed by keepalive probes within about a minute, so the pub/sub connection
/// reconnects and its followers read again instead of waiting for ever.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(3);
    redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(std::time::Duration::from_secs(60))
}

/// The broker's and the result backend's clients: valid URLs on one server (results are fenced
/// by leases in one atomic script, so they cannot live elsewhere). `rediss://` is TLS, the
/// server verified against the system's trust store or, given `ca_file`, only against it; a
/// client certificate is presented when the options name one (mutual TLS). TLS files with a
/// plain `redis://` URL are refused, never ignored.
fn clients(
    broker_url: &str,
    result_url: Option<&str>,
    opts: &RedisOptions,
) -> Result<(redis::Client, redis::Client), BackendError> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            BackendError::invalid(format!("cannot read the Redis {what} {}: {e}", p.display()))
        })
    };
    let ca = match &opts.ca_file {
        None => None,
        Some(p) => Some(read("CA file", p)?),
    };
    let client_tls = match &opts.client_cert {
        None => None,
        Some(c) => Some(redis::ClientTlsConfig {
            client_cert: read("client certificate", &c.cert_file)?,
            client_key: read("client key", &c.key_file)?,
        }),
    };
    let tls = (ca.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
        client_tls,
        root_cert: ca,
    });
    let open = |u: &str| {
        let bad = |e: redis::RedisError| {
            BackendError::invalid(format!("bad Redis URL {}: {e}", redact(u)))
        };
        let info = redis::IntoConnectionInfo::into_connection_info(u).map_err(bad)?;
        let info = info.set_tcp_settings(tcp_settings());
        match &tls {
            None => redis::Client::open(info).map_err(bad),
            Some(_) if !u.starts_with("rediss://") => Err(BackendError::invalid(format!(
                "a Redis CA file or client certificate is given but {} is not a rediss:// (TLS) URL",
                redact(u)
            ))),
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()).map_err(|e| {
                BackendError::invalid(format!(
                    "the Redis TLS files for {} cannot be used: {e}",
                    redact(u)
                ))
            }),
        }
    };
    let client = open(broker_url)?;
    let result_client = match result_url {
        Some(u) => open(u)?,
        None => client.clone(),
    };
    let (a, b) = (
        client.get_connection_info(),
        result_client.get_connection_info(),
    );
    if format!("{:?}", a.addr()) != format!("{:?}", b.addr()) {
        return Err(BackendError::invalid(format!(
            "the result backend {} must be on the broker's Redis server {} (results are fenced by leases in one atomic script)",
            redact(result_url.unwrap_or_default()),
            redact(broker_url)
        )));
    }
    Ok((client, result_client))
}

/// Redis Cluster spreads keys over nodes by their hash; the scripts read and write several keys
/// at once (a queue, its leases, the running tasks), which would fail part-way, after some
/// writes, when the keys live on different nodes. Refused at once, by name.
async fn refuse_cluster(conn: &Conn, url: &str) -> Result<(), BackendError> {
    let mut c = conn.clone();
    // A server that does not answer INFO (an ACL user without it, a proxy that renames it)
    // cannot be told apart: it is taken as it was before this check.
    let Ok(info) = redis::cmd("INFO")
        .arg("cluster")
        .query_async::<String>(&mut c)
        .await
    else {
        return Ok(());
    };
    if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        return Err(BackendError::invalid(format!(
            "{} is a Redis Cluster node; Afterview needs a standalone Redis (a primary, with \
             replicas if you like), as Celery's Redis transport does",
            redact(url)
        )));
    }
    Ok(())
}

impl RedisBackend {
    /// Connects to the broker at `broker_url` (`redis://[:password@]host[:port][/db]`) and the
    /// result backend at `result_url` (same server, any database; default: the broker's).
    pub async fn open(
        broker_url: &str,
        result_url: Option<&str>,
        opts: RedisOptions,
    ) -> Result<Self, BackendError> {
        let (client, result_client) = clients(broker_url, result_url, &opts)?;
        let (a, b) = (
            client.get_connection_info(),
            result_client.get_connection_info(),
        );
        let broker_db = a.redis_settings().db();
        let backend_db = b.redis_settings().db();
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config())
            .await
            .map(Conn::new)
            .map_err(|e| {
                BackendError::unavailable(format!(
                    "cannot reach Redis at {}: {e}",
                    redact(broker_url)
                ))
            })?;
        refuse_cluster(&conn, broker_url).await?;
        let results = if backend_db == broker_db {
            conn.clone()
        } else {
            ConnectionManager::new_with_config(result_client.clone(), manager_config())
                .await
                .map(Conn::new)
                .map_err(unavailable)?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (stores, stores_rx) = mpsc::unbounded_channel();
        tokio::spawn(store_writer(
            conn.clone(),
            stores_rx,
            (broker_db, backend_db),
            opts.result_expires.as_millis() as u64,
        ));
        let description = match result_url {
            Some(u) if backend_db != broker_db => {
                format!("redis {} (results {})", redact(broker_url), redact(u))
            }
            _ => format!("redis {}", redact(broker_url)),
        };
        let inner = Arc::new(Inner {
            client: client.clone(),
            conn,
            results,
            broker_db,
            control: Control::new(opts.task_events),
            opts,
            scripts: Scripts::new(),
            hub: EventHub::default(),
            wake: Wake::default(),
            revoke_wake: Notify::new(),
            claim_seen: Mutex::default(),
            pushes: push::Pushes::default(),
            subs: tx.clone(),
            stores,
            declared: Mutex::default(),
            keyevents: AtomicBool::new(false),
            worker_channels: AtomicBool::new(false),
            description,
            broker_url: redact(broker_url),
        });
        inner.hub.set_listener(move |interest| {
            let _ = tx.send(pubsub::Cmd::Interest(interest));
        });
        let _ = inner.enable_keyevents().await;
        tokio::spawn(pubsub::run(Arc::downgrade(&inner), client, rx));
        Ok(Self { inner })
    }

    /// What this backend is connected to (password redacted).
    pub fn description(&self) -> &str {
        &self.inner.description
    }

    /// Sends a control command to every worker (Python or ours) and collects the replies for
    /// `timeout`, as `celery inspect` does. Returns `(node, reply)` pairs.
    pub async fn broadcast(
        &self,
        method: &str,
        arguments: serde_json::Value,
        destination: Option<Vec<String>>,
        timeout: Duration,
    ) -> Result<Vec<(String, serde_json::Value)>, BackendError> {
        self.inner
            .broadcast(method, arguments, destination, timeout, true)
            .await
    }

    /// Runs a [`fenced_call`]: true when the lease was still current and the script acted.
    async fn fenced(&self, call: redis::ScriptInvocation<'_>) -> Result<bool, BackendError> {
        let mut c = self.inner.conn();
        match call
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(unavailable)?
        {
            1 => Ok(true),
            0 => Ok(false),
            n => Err(BackendError::corrupt(format!(
                "a fenced script answered {n} (expected 0 or 1)"
            ))),
        }
    }
}

impl Inner {
    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Subscribes this process to the channels workers wait on (wake-ups, revocations, list
    /// pushes) before its first claim or wait, so that no wake-up after that claim is missed;
    /// later calls return at once. A process that never claims is never woken by other
    /// processes' tasks.
    pub(crate) async fn worker_channels(&self) {
        if self.worker_channels.load(Ordering::SeqCst) {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.subs.send(pubsub::Cmd::Worker(tx)).is_ok() {
            // Redis down: the subscription is made when the connection comes back.
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
        self.worker_channels.store(true, Ordering::SeqCst);
    }

    /// Turns on keyevent notifications for list pushes if the server allows CONFIG.
    /// `false` when Redis could not be reached (the caller may try again); a refusal (CONFIG
    /// disabled) settles it: workers poll.
    pub(crate) async fn enable_keyevents(&self) -> bool {
        if !self.opts.keyspace_events {
            return true;
        }
        let mut c = self.conn();
        let cur: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut c)
            .await;
        let flags = match cur {
            Ok(v) => v.get(1).cloned().unwrap_or_default(),
            Err(e) if transient(&e) => return false,
            Err(e) => {
                debug!(error = %e, "CONFIG GET refused; workers will poll for Python-produced tasks.");
                self.keyevents.store(false, Ordering::SeqCst);
                return true;
            }
        };
        let has_list = flags.contains('l') || flags.contains('A');
        let ok = if flags.contains('E') && has_list {
            true
        } else {
            let mut want = flags.clone();
            if !want.contains('E') {
                want.push('E');
            }
            if !has_list {
                want.push('l');
            }
            let r: Result<(), _> = redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(&want)
                .query_async(&mut c)
                .await;
            match r {
                Ok(()) => true,
                Err(e) if transient(&e) => return false,
                Err(e) => {
                    debug!(error = %e, "CONFIG SET refused; workers will poll for Python-produced tasks.");
                    false
                }
            }
        };
        self.keyevents.store(ok, Ordering::SeqCst);
        true
    }
}
