//! The one pub/sub connection of a process: result channels of followed tasks (feeding the
//! [`EventHub`](afterview_engine::events::EventHub)), wake-ups for idle workers (our own channel
//! and keyevent notifications of list pushes by Python producers), revocation wake-ups, and the
//! pidbox of the worker nodes this process runs.
//!
//! After a reconnect it subscribes to everything again and re-reads the followed results, so a
//! change published while it was disconnected is not lost (Celery's result consumer does the
//! same with MGET).
//!
//! Result subscriptions come and go with every followed task (a client's `publish_and_wait`
//! makes one per task), so they are queued on the connection without waiting for each
//! confirmation: the previous task's UNSUBSCRIBE and the next task's SUBSCRIBE leave together,
//! in request order (which keeps a task followed again right after it was let go subscribed),
//! and a follower is told its subscription is live when its own confirmation arrives.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use afterview_engine::events::Interest;
use afterview_engine::result::ResultMeta;
use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::push::PUSH_PREFIX;
use crate::{Inner, RESULT_PREFIX};

/// Requests to the pub/sub task.
pub(crate) enum Cmd {
    /// What the event hub's subscribers follow.
    Interest(Interest),
    /// Subscribe to this process's pidbox channel; answer once subscribed.
    Pidbox(oneshot::Sender<()>),
    /// Subscribe to the push channel of a worker node; the flag is true while subscribed.
    Push(String, Arc<AtomicBool>),
    /// Subscribe to what workers wait on (wake-ups, revocations, list pushes); answer once
    /// subscribed. A process that only publishes and follows results never does.
    Worker(oneshot::Sender<()>),
}

#[derive(Default)]
struct State {
    /// Followed tasks; `true` when subscribed individually (not through the pattern).
    watched: HashMap<String, (watch::Sender<bool>, bool)>,
    all: bool,
    pidbox: bool,
    pidbox_waiters: Vec<oneshot::Sender<()>>,
    /// Worker nodes taking pushes, with their "subscribed" flags.
    push: Vec<(String, Arc<AtomicBool>)>,
    /// Workers run here: subscribed to wake-ups, revocations and list pushes.
    worker: bool,
    worker_waiters: Vec<oneshot::Sender<()>>,
}

const WAKE: &str = "afterview:wake";
const REVOKE: &str = "afterview:revoke";
const ALL_RESULTS: &str = "celery-task-meta-*";

fn channel(task_id: &str) -> String {
    format!("{RESULT_PREFIX}{task_id}")
}

/// Runs until the backend is dropped.
pub(crate) async fn run(
    inner: Weak<Inner>,
    client: redis::Client,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let mut st = State::default();
    let mut backoff = Duration::from_millis(100);
    let mut reconnect = false;
    let db = match inner.upgrade() {
        Some(i) => i.broker_db,
        None => return,
    };
    let pidbox_channel = format!("/{db}.celery.pidbox");
    let keyevents = [
        format!("__keyevent@{db}__:lpush"),
        format!("__keyevent@{db}__:rpush"),
    ];
    loop {
        let ps = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Redis pub/sub connection failed.");
                if !wait_offline(&mut st, &mut rx, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                reconnect = true;
                continue;
            }
        };
        let (mut sink, mut stream) = ps.split();
        if let Err(e) = subscribe(&mut st, &mut sink, &pidbox_channel, &keyevents).await {
            warn!(error = %e, "Redis pub/sub subscription failed; reconnecting.");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            reconnect = true;
            continue;
        }
        backoff = Duration::from_millis(100);
        let Some(i) = inner.upgrade() else { return };
        connected(&i, &mut st, reconnect).await;
        drop(i);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(i) = inner.upgrade() else { return };
                    dispatch(&i, &msg, &pidbox_channel, &keyevents);
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    if let Err(e) = apply(&mut st, &mut sink, cmd, &pidbox_channel, &keyevents).await {
                        warn!(error = %e, "Redis pub/sub command failed; reconnecting.");
                        break;
                    }
                }
            }
        }
        reconnect = true;
        warn!("Redis pub/sub connection lost; reconnecting.");
        // Followers must not trust their subscriptions until they are back.
        for (tx, _) in st.watched.values() {
            let _ = tx.send(false);
        }
        for (_, ready) in &st.push {
            ready.store(false, Ordering::SeqCst);
        }
        // No wake-up can arrive until the catch-up after the reconnect turns keyspace
        // notifications back on (a restarted Redis forgot them): workers poll meanwhile.
        if let Some(i) = inner.upgrade() {
            i.keyevents.store(false, Ordering::SeqCst);
        }
    }
}

/// Waits `backoff` while recording requests; `false` when the backend is gone.
async fn wait_offline(
    st: &mut State,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    backoff: Duration,
) -> bool {
    let sleep = tokio::time::sleep(backoff);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            cmd = rx.recv() => match cmd {
                None => return false,
                Some(c) => offline(st, c),
            },
        }
    }
}

/// The channels workers wait on.
fn worker_channels(keyevents: &[String; 2]) -> Vec<String> {
    let mut v: Vec<String> = vec![WAKE.into(), REVOKE.into()];
    v.extend(keyevents.iter().cloned());
    v
}

/// Subscribes a fresh connection to everything followed: wake-ups, revocations and list pushes
/// when workers run here, the pidbox when a node listens, push channels, and every followed
/// result (or all of them).
async fn subscribe(
    st: &mut State,
    sink: &mut redis::aio::PubSubSink,
    pidbox_channel: &str,
    keyevents: &[String; 2],
) -> redis::RedisResult<()> {
    let mut fixed: Vec<String> = Vec::new();
    if st.worker {
        fixed = worker_channels(keyevents);
    }
    if st.pidbox {
        fixed.push(pidbox_channel.to_owned());
    }
    fixed.extend(
        st.push
            .iter()
            .map(|(node, _)| format!("{PUSH_PREFIX}{node}")),
    );
    if !fixed.is_empty() {
        sink.subscribe(&fixed).await?;
    }
    if st.all {
        sink.psubscribe(ALL_RESULTS).await?;
    }
    let individual: Vec<String> = st
        .watched
        .iter_mut()
        .map(|(id, (_, sub))| {
            *sub = !st.all;
            id.clone()
        })
        .collect();
    if !st.all {
        for chunk in individual.chunks(500) {
            let chans: Vec<String> = chunk.iter().map(|id| channel(id)).collect();
            sink.subscribe(&chans).await?;
        }
    }
    Ok(())
}

/// Tells followers their subscriptions are live; after a reconnect, catches up with what
/// happened while away (pushed lists, written results).
async fn connected(i: &Arc<Inner>, st: &mut State, reconnect: bool) {
    for (tx, _) in st.watched.values() {
        let _ = tx.send(true);
    }
    for w in st.pidbox_waiters.drain(..) {
        let _ = w.send(());
    }
    for w in st.worker_waiters.drain(..) {
        let _ = w.send(());
    }
    for (_, ready) in &st.push {
        ready.store(true, Ordering::SeqCst);
    }
    if reconnect {
        info!("Redis pub/sub reconnected.");
        i.wake.wake();
        i.revoke_wake.notify_waiters();
        let ids: Vec<String> = st.watched.keys().cloned().collect();
        // Off this task: requests and messages keep flowing while it tries.
        tokio::spawn(catch_up(Arc::downgrade(i), ids));
    }
}

/// After a reconnect: re-reads the followed results `ids` (a result stored while this
/// connection was away is read here or never heard) and turns keyspace notifications back on
/// (a restarted Redis forgot them). Redis may still be coming back (a restart, loading its
/// data): it tries again for a few seconds.
async fn catch_up(inner: Weak<Inner>, ids: Vec<String>) {
    let (mut keyevents, mut results) = (false, false);
    for pause_ms in [0, 50, 100, 200, 400, 800, 1600, 3200] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let Some(i) = inner.upgrade() else { return };
        keyevents = keyevents || i.enable_keyevents().await;
        results = results || refetch(&i, &ids).await;
        if keyevents && results {
            // Notifications are on again: a claim now catches what was pushed while they
            // were off.
            i.wake.wake();
            return;
        }
    }
    if !results {
        warn!(
            followed = ids.len(),
            "Could not re-read followed results after reconnecting; their followers hear the next change."
        );
    }
}

/// Records a request while disconnected (it takes effect at the next connection).
fn offline(st: &mut State, cmd: Cmd) {
    match cmd {
        Cmd::Interest(Interest::Watch(id, tx)) => {
            st.watched.insert(id, (tx, false));
        }
        Cmd::Interest(Interest::Unwatch(id)) => {
            st.watched.remove(&id);
        }
        Cmd::Interest(Interest::All) => st.all = true,
        Cmd::Pidbox(w) => {
            st.pidbox = true;
            st.pidbox_waiters.push(w);
        }
        Cmd::Push(node, ready) => st.push.push((node, ready)),
        Cmd::Worker(w) => {
            st.worker = true;
            st.worker_waiters.push(w);
        }
    }
}

/// Follows one task's result channel (unless every result is followed already).
fn watch(
    st: &mut State,
    sink: &redis::aio::PubSubSink,
    id: String,
    tx: tokio::sync::watch::Sender<bool>,
) {
    let sub = !st.all;
    if sub {
        // Queued now, confirmed later: the loop goes on with the next request (often the
        // previous task's UNSUBSCRIBE and this SUBSCRIBE leave in one write).
        let mut s = sink.clone();
        let ch = channel(&id);
        let confirmed = enqueue(async move { s.subscribe(ch).await });
        let ready = tx.clone();
        tokio::spawn(async move {
            match confirmed.await {
                Ok(()) => {
                    let _ = ready.send(true);
                }
                // The connection is going: the reconnect subscribes again, sets the flag and
                // re-reads what is followed. (A confirmation that arrived just before the
                // connection went may set the flag after the reconnect cleared it; that
                // re-read covers the gap.)
                Err(e) if crate::conn::transient(&e) => {
                    debug!(error = %e, "A result subscription was not confirmed.");
                }
                // Refused (an ACL without this channel): the follower reads the state after
                // its wait for the subscription times out, and hears no change.
                Err(e) => warn!(error = %e, "Redis refused a result subscription."),
            }
        });
    } else {
        let _ = tx.send(true);
    }
    st.watched.insert(id, (tx, sub));
}

async fn apply(
    st: &mut State,
    sink: &mut redis::aio::PubSubSink,
    cmd: Cmd,
    pidbox_channel: &str,
    keyevents: &[String; 2],
) -> redis::RedisResult<()> {
    match cmd {
        Cmd::Interest(Interest::Watch(id, tx)) => watch(st, sink, id, tx),
        Cmd::Interest(Interest::Unwatch(id)) => {
            if let Some((_, true)) = st.watched.remove(&id) {
                // Nobody waits for this confirmation: messages still on the way are dropped by
                // the hub, which no longer has the task.
                let mut s = sink.clone();
                let ch = channel(&id);
                drop(enqueue(async move { s.unsubscribe(ch).await }));
            }
        }
        Cmd::Interest(Interest::All) => {
            if !st.all {
                sink.psubscribe(ALL_RESULTS).await?;
                st.all = true;
            }
        }
        // Each subscription is recorded (with its waiter) before it is asked for: should the
        // connection drop meanwhile, the next one makes it and answers the waiter, as for a
        // request made while disconnected (else the process would go without it for good).
        Cmd::Pidbox(w) => {
            st.pidbox_waiters.push(w);
            if !st.pidbox {
                st.pidbox = true;
                sink.subscribe(pidbox_channel).await?;
            }
            for w in st.pidbox_waiters.drain(..) {
                let _ = w.send(());
            }
        }
        Cmd::Push(node, ready) => {
            st.push.push((node.clone(), ready.clone()));
            sink.subscribe(format!("{PUSH_PREFIX}{node}")).await?;
            ready.store(true, Ordering::SeqCst);
        }
        Cmd::Worker(w) => {
            st.worker_waiters.push(w);
            if !st.worker {
                st.worker = true;
                sink.subscribe(worker_channels(keyevents)).await?;
            }
            for w in st.worker_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
    Ok(())
}

/// Polls a sink request once, which queues its command on the connection in call order, and
/// returns the rest of it: awaiting it waits for the confirmation; dropping it does not
/// withdraw the command.
fn enqueue<F>(request: F) -> Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>
where
    F: Future<Output = redis::RedisResult<()>> + Send + 'static,
{
    let mut request = Box::pin(request);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match request.as_mut().poll(&mut cx) {
        // The connection's writer is gone.
        Poll::Ready(r) => Box::pin(std::future::ready(r)),
        Poll::Pending => request,
    }
}

fn dispatch(i: &Arc<Inner>, msg: &redis::Msg, pidbox_channel: &str, keyevents: &[String; 2]) {
    let ch = msg.get_channel_name();
    if let Some(id) = ch.strip_prefix(RESULT_PREFIX) {
        match std::str::from_utf8(msg.get_payload_bytes())
            .ok()
            .and_then(|s| ResultMeta::from_json(s).ok())
        {
            Some(meta) if meta.task_id == id => i.hub.publish(meta),
            _ => debug!(task_id = id, "Ignoring an unreadable result notification."),
        }
    } else if let Some(node) = ch.strip_prefix(PUSH_PREFIX) {
        match crate::push::parse(msg.get_payload_bytes()) {
            Some(d) => match i.pushes.add(node, d) {
                None => i.wake.wake(),
                Some(d) => {
                    // Its worker stopped: give it back to its queue now, not after the lease.
                    let b = crate::RedisBackend { inner: i.clone() };
                    tokio::spawn(async move {
                        if let Err(e) = afterview_engine::Broker::release(&b, &d.lease).await {
                            warn!(error = %e, "Could not give back a message pushed to a stopped worker.");
                        }
                    });
                }
            },
            None => warn!(
                node,
                "Ignoring an unreadable pushed message (its lease will run out)."
            ),
        }
    } else if ch == WAKE {
        i.wake.wake();
    } else if ch == REVOKE {
        i.revoke_wake.notify_waiters();
    } else if keyevents.iter().any(|k| k == ch) {
        let key = String::from_utf8_lossy(msg.get_payload_bytes());
        if !key.starts_with("afterview:") && !key.contains(".reply.celery.pidbox") {
            i.wake.wake();
        }
    } else if ch == pidbox_channel {
        let raw = msg.get_payload_bytes().to_vec();
        let i = i.clone();
        tokio::spawn(async move { i.handle_pidbox(&raw).await });
    }
}

/// Re-reads followed results after a reconnect and publishes what changed meanwhile; `false`
/// when Redis could not be read (nothing is published then: followers skip repeats anyway).
async fn refetch(i: &Inner, ids: &[String]) -> bool {
    let mut found = Vec::new();
    for chunk in ids.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|id| channel(id)).collect();
        let mut c = i.results.clone();
        let vals: Result<Vec<Option<String>>, _> = c.mget(&keys).await;
        match vals {
            Ok(vals) => found.extend(vals.into_iter().flatten()),
            Err(e) => {
                debug!(error = %e, "Could not re-read followed results.");
                return false;
            }
        }
    }
    for v in found {
        if let Ok(meta) = ResultMeta::from_json(&v) {
            i.hub.publish(meta);
        }
    }
    true
}
