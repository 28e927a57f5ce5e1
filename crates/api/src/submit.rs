//! Sending a task for a user: the per-user limits (active tasks, synchronous requests), the task
//! record (owner and photos, before the message exists anywhere), and the answer: `202` with the
//! task's URLs, or the result when the caller waits.

use afterview_engine::{BackendError, SendOptions, TaskState};
use afterview_store::TaskRecord;
use axum::http::StatusCode;
use serde_json::Value;

use crate::error::ApiError;
use crate::idempotency::{Sending, Sent, accepted};
use crate::{AppState, User};

/// 429 when the user already has `active_tasks` tasks waiting or running: their tasks not yet
/// seen finished (sent within the results' lifetime), read back from the result store. Tasks
/// found in a final state are marked finished in the metadata store and never read again, so
/// a burst of cancelled or finished tasks cannot push older waiting ones out of view (sending
/// and cancelling fillers got around the limit). Tasks older than the results' lifetime do not
/// count: a result the backend no longer has reads as PENDING, and past that lifetime it is an
/// expired result, not a task still waiting. Call it holding the user's [`submit_lock`].
async fn check_active_tasks(st: &AppState, user: &User) -> Result<(), ApiError> {
    let cap = st.user_limits.active_tasks;
    if cap == 0 {
        return Ok(()); // unlimited
    }
    let horizon = chrono::Utc::now()
        - chrono::Duration::from_std(st.result_expires).unwrap_or(chrono::Duration::days(1));
    let page = (cap * 2 + 10).min(1000);
    // A page whose finished tasks were marked may hide open ones behind it: read again (the
    // marked ones are gone from the list), a few times at most.
    for _ in 0..8 {
        let open = st
            .meta
            .list_open_tasks(&user.0, horizon, page as u32)
            .await?;
        let (mut active, mut finished) = (0, vec![]);
        for t in &open {
            let m = crate::outcome::task_meta(st, &user.0, &t.id).await?;
            if m.status.is_terminal() {
                finished.push(t.id.clone());
                continue;
            }
            active += 1;
            if active >= cap {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_tasks",
                    format!(
                        "at most {cap} tasks may be waiting or running per user; retry when one finishes"
                    ),
                ));
            }
        }
        st.meta.mark_tasks_finished(&user.0, &finished).await?;
        if open.len() < page || finished.is_empty() {
            break;
        }
    }
    Ok(())
}

/// How long a submission waits for the user's other submissions (each holds the lock for a few
/// store round trips) before it is answered 503.
const SUBMIT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// When a lock of a host that died is given up.
const SUBMIT_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// One user's turn to submit on this host: held from before the store's lock is asked for
/// until the task is recorded, so a burst from one user waits here, not in a polling loop.
struct LocalTurn {
    st: AppState,
    user: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl LocalTurn {
    async fn take(st: &AppState, user: &User) -> LocalTurn {
        let lock = st
            .submit_locks
            .lock()
            .expect("submit lock map")
            .entry(user.0.clone())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        LocalTurn {
            st: st.clone(),
            user: user.0.clone(),
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for LocalTurn {
    fn drop(&mut self) {
        let mut locks = self.st.submit_locks.lock().expect("submit lock map");
        drop(self.guard.take());
        // Nobody else holds or waits for it: forget the user's lock.
        if locks
            .get(&self.user)
            .is_some_and(|l| std::sync::Arc::strong_count(l) == 1)
        {
            locks.remove(&self.user);
        }
    }
}

/// One user's submissions, one at a time on every API host (a slot of capacity 1 in the
/// metadata store): counting the active tasks and recording the new one are then one step, so
/// parallel requests cannot all see room for one more. `None` when no task limit is set.
async fn submit_lock(st: &AppState, user: &User) -> Result<Option<Slot>, ApiError> {
    if st.user_limits.active_tasks == 0 {
        return Ok(None);
    }
    user_lock(st, user, "submit").await.map(Some)
}

/// One of the user's steps of `kind` at a time, on every API host (a slot of capacity 1 in the
/// metadata store), waited for at most [`SUBMIT_LOCK_WAIT`]: uploads take `upload` from their
/// quota's check to their record, so parallel uploads on several hosts stay within it.
pub(crate) async fn user_lock(st: &AppState, user: &User, kind: &str) -> Result<Slot, ApiError> {
    let deadline = tokio::time::Instant::now() + SUBMIT_LOCK_WAIT;
    let mut pause = std::time::Duration::from_millis(2);
    loop {
        if let Some(slot) = Slot::take(st, user, kind, 1, SUBMIT_LOCK_TTL).await? {
            return Ok(slot);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::unavailable(
                "this user's other requests are still being sent; retry shortly",
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// A slot of a user's in the metadata store (a synchronous request in flight, or the submit
/// lock), so a limit holds across every API host. Given back when the guard drops; a crashed
/// host's slot expires.
pub(crate) struct Slot {
    st: AppState,
    id: Option<String>,
}

impl Slot {
    /// One of `cap` slots of `kind`, held at most `ttl`; `None` when all are taken.
    async fn take(
        st: &AppState,
        user: &User,
        kind: &str,
        cap: usize,
        ttl: std::time::Duration,
    ) -> Result<Option<Slot>, ApiError> {
        let expires = chrono::Utc::now()
            + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(10));
        let cap32 = u32::try_from(cap).unwrap_or(u32::MAX);
        Ok(st
            .meta
            .take_slot(&user.0, kind, cap32, expires)
            .await?
            .map(|id| Slot {
                st: st.clone(),
                id: Some(id),
            }))
    }

    /// A synchronous request's slot: 429 when the user has `sync_requests` open.
    async fn sync(st: &AppState, user: &User) -> Result<Slot, ApiError> {
        let cap = st.user_limits.sync_requests;
        if cap == 0 {
            return Ok(Slot {
                st: st.clone(),
                id: None,
            });
        }
        let ttl = st.sync_timeout + std::time::Duration::from_secs(60);
        Slot::take(st, user, "sync", cap, ttl).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                format!(
                    "at most {cap} synchronous requests per user at once; use ?async_processing=true"
                ),
            )
        })
    }
}

impl Slot {
    /// Gives the slot back before the answer leaves, so a client's next synchronous request
    /// (sent the moment this one is answered) finds it free on every host. A request dropped
    /// midway (the client went away) gives it back from `Drop` instead.
    pub(crate) async fn release(mut self) {
        if let Some(id) = self.id.take()
            && let Err(e) = self.st.meta.release_slot(&id).await
        {
            tracing::warn!(error = %e, "Could not give a request slot back; it expires by itself.");
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let meta = self.st.meta.clone();
            tokio::spawn(async move {
                if let Err(e) = meta.release_slot(&id).await {
                    tracing::warn!(error = %e, "Could not give a request slot back; it expires by itself.");
                }
            });
        }
    }
}

/// Records the owner, sends the task, and answers 202 or waits for the result. `sent` learns
/// where the task is (an `Idempotency-Key` then names the task once it is published).
pub(crate) async fn submit(
    st: &AppState,
    user: &User,
    (task, kwargs): (&str, Value),
    wait: bool,
    sent: &Sent,
) -> Result<(StatusCode, Value), ApiError> {
    let Value::Object(kwargs) = kwargs else {
        unreachable!("task arguments are objects")
    };
    let turn = if st.user_limits.active_tasks == 0 {
        None
    } else {
        Some(LocalTurn::take(st, user).await)
    };
    let lock = submit_lock(st, user).await?;
    check_active_tasks(st, user).await?;
    let sync = if wait {
        Some(Slot::sync(st, user).await?)
    } else {
        None
    };
    let image_ids = photos_of(st, user, &kwargs).await?;
    let msg = st
        .client
        .message(task, vec![], kwargs, SendOptions::default())?;
    let rec = TaskRecord {
        id: msg.id.clone(),
        owner: user.0.clone(),
        name: task.into(),
        image_ids,
        created_at: chrono::Utc::now(),
    };
    // Followed before it is published, so the subscription and the publish overlap.
    let watch = wait.then(|| st.client.watch(&msg.id));
    record_and_send(st, rec, &msg, sent).await?;
    // Recorded (the next submission counts this task) and sent.
    if let Some(lock) = lock {
        lock.release().await;
    }
    drop(turn);
    let Some(watch) = watch else {
        return Ok((StatusCode::ACCEPTED, accepted(&msg.id)));
    };
    let meta = until_closing(
        st,
        afterview_engine::watch::wait_watch(watch, st.sync_timeout),
    )
    .await;
    if let Some(slot) = sync {
        slot.release().await;
    }
    waited(st, &msg.id, meta.ok_or_else(|| going_away(&msg.id))??)
}

/// `wait`'s outcome, or `None` when the server begins to shut down first: the wait ends with
/// an answer (and the request's slot and Idempotency-Key are settled) while the server still
/// drains, instead of being cut off with the connection 30 s later.
async fn until_closing<T>(st: &AppState, wait: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        out = wait => Some(out),
        () = st.closing.cancelled() => None,
    }
}

/// The answer to a synchronous request whose server shuts down while its task runs: the task
/// goes on (followed by its status, or by repeating the request with its Idempotency-Key).
fn going_away(id: &str) -> ApiError {
    ApiError::unavailable(format!(
        "the server is restarting; task {id} goes on: follow it at /api/tasks/{id}/status"
    ))
}

/// Waits again for a task an earlier request with the same `Idempotency-Key` sent (that
/// request's wait ran out, or its client went away): the answer it would have had.
pub(crate) async fn wait_again(
    st: &AppState,
    user: &User,
    task_id: &str,
) -> Result<(StatusCode, Value), ApiError> {
    // Finished, with its result lost by the backend but its output stored: that answer.
    let now = crate::outcome::task_meta(st, &user.0, task_id).await?;
    if now.status.is_terminal() {
        return waited(st, task_id, now);
    }
    let sync = Slot::sync(st, user).await?;
    let meta = until_closing(st, st.client.wait(task_id, st.sync_timeout)).await;
    sync.release().await;
    waited(st, task_id, meta.ok_or_else(|| going_away(task_id))??)
}

/// Records the task's owner, then publishes its message: in a task of its own, which runs to
/// its end even when the client goes away meanwhile (a recorded task whose message never left
/// would stay PENDING, and count against its owner's active tasks, for the results' whole
/// lifetime). A publish that fails revokes the task, best effort: it then reads REVOKED and
/// stops counting, and should the message have reached the broker after all, it never runs.
/// A broker that refused the message whole (a full Redis) has nothing to revoke: the record is
/// deleted instead. A record that fails is revoked too (it may have been committed after the
/// store's time ran out).
/// `sent` learns the outcome (an `Idempotency-Key` then names the task, or is given back).
async fn record_and_send(
    st: &AppState,
    rec: TaskRecord,
    msg: &afterview_engine::TaskMessage,
    sent: &Sent,
) -> Result<(), ApiError> {
    let (st, msg, sent) = (st.clone(), msg.clone(), sent.clone());
    sent.tell(Sending::Underway);
    let told = sent.clone();
    let job = tokio::spawn(async move {
        if let Err(e) = st.meta.insert_task(&rec).await {
            // A store that did not answer in time may still commit the record: revoked, it
            // reads REVOKED, not PENDING with nothing ever to run it.
            if let Err(r) = st.client.revoke(&msg.id, false).await {
                tracing::warn!(error = %r, task_id = %msg.id, "A task whose record could not be written could not be revoked either.");
            }
            sent.tell(Sending::Failed);
            return Err(ApiError::from(e));
        }
        match st.client.broker().publish(&msg).await {
            Ok(()) => {
                sent.tell(Sending::Published(msg.id.clone()));
                Ok(())
            }
            Err(e) => {
                if matches!(e, BackendError::Full(_)) {
                    // Refused whole: the message is nowhere, so nothing to revoke, and a revoke
                    // (a tombstone, a log entry, a result) would grow a full Redis with every
                    // retried request. The task never existed: its record goes too, so that it
                    // neither counts against its owner nor lists as PENDING for ever.
                    if let Err(r) = st.meta.delete_task(&rec.owner, &msg.id).await {
                        tracing::warn!(error = %r, task_id = %msg.id, "A task the broker refused could not be forgotten; it reads PENDING until its record expires.");
                    }
                } else if let Err(r) = st.client.revoke(&msg.id, false).await {
                    tracing::warn!(error = %r, task_id = %msg.id, "A task whose message could not be sent could not be revoked either; it reads PENDING until its record expires.");
                }
                sent.tell(Sending::Failed);
                Err(ApiError::from(e))
            }
        }
    });
    match job.await {
        Ok(out) => out,
        Err(_) => {
            told.tell(Sending::Failed);
            Err(ApiError::unavailable("the task could not be sent; retry"))
        }
    }
}

/// The photos a task works on (deleting one of them revokes the task): its `image_id`, and
/// those of its `visualization_ids`.
async fn photos_of(
    st: &AppState,
    user: &User,
    kwargs: &serde_json::Map<String, Value>,
) -> Result<Vec<String>, ApiError> {
    let mut image_ids: Vec<String> = kwargs
        .get("image_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect();
    for v in kwargs
        .get("visualization_ids")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if let Some(r) = st.meta.get_visualization(&user.0, v).await?
            && !image_ids.contains(&r.image_id)
        {
            image_ids.push(r.image_id);
        }
    }
    Ok(image_ids)
}

/// The answer to a synchronous request from the state the task reached.
fn waited(
    st: &AppState,
    id: &str,
    meta: afterview_engine::ResultMeta,
) -> Result<(StatusCode, Value), ApiError> {
    match meta.status {
        TaskState::Success => Ok((StatusCode::OK, meta.result)),
        TaskState::Failure | TaskState::Revoked => {
            let info = meta
                .error_info()
                .unwrap_or_else(|| afterview_engine::ErrorInfo {
                    code: "task_failed".into(),
                    message: String::new(),
                });
            Err(ApiError::from_task(
                &info,
                meta.status == TaskState::Revoked,
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "task {id} did not finish within {} s; follow it at /api/tasks/{id}/status",
                st.sync_timeout.as_secs(),
            ),
        )),
    }
}
