//! The single writer: one thread owns the write connection and commits every write of this
//! process in batches ("group commit").
//!
//! Callers submit a closure; the thread takes every job that is waiting (up to
//! [`MAX_BATCH`]), runs them inside one `BEGIN IMMEDIATE` transaction, each under its own
//! savepoint (a failing job is rolled back alone), commits once, and only then answers each
//! caller. An answer therefore always means "durable" (as durable as the `synchronous` setting).
//! Effects that must follow a commit (publishing events, waking workers) run after it.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use afterview_engine::backend::BackendError;
use rusqlite::Connection;
use tokio::sync::oneshot;
use tracing::{error, warn};

/// Most jobs committed in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Runs after a successful commit.
pub(crate) type AfterCommit = Box<dyn FnOnce() + Send>;

/// One unit of work for the writer thread.
pub(crate) trait Job: Send {
    /// Runs inside the open transaction. `false` asks for this job's savepoint to be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the outcome; `commit_error` is set when the batch could not be committed.
    fn finish(self: Box<Self>, commit_error: Option<String>);
}

struct FnJob<T, F> {
    f: Option<F>,
    out: Option<Result<(T, Option<AfterCommit>), BackendError>>,
    reply: Option<oneshot::Sender<Result<T, BackendError>>>,
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<(T, Option<AfterCommit>), BackendError> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("a job runs once");
        let out = f(conn);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(mut self: Box<Self>, commit_error: Option<String>) {
        let out = match (commit_error, self.out.take()) {
            (Some(e), _) => Err(BackendError::unavailable(e)),
            (None, None) => Err(BackendError::unavailable("the write was not run")),
            (None, Some(Err(e))) => Err(e),
            (None, Some(Ok((v, after)))) => {
                if let Some(after) = after {
                    after();
                }
                Ok(v)
            }
        };
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(out);
        }
    }
}

/// Handle to the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    tx: mpsc::SyncSender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the thread on `conn`.
    pub(crate) fn start(conn: Connection, name: String) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Box<dyn Job>>(4096);
        thread::Builder::new()
            .name(name)
            .spawn(move || run(conn, rx))
            .expect("spawn the SQLite writer thread");
        Self { tx }
    }

    /// Runs `f` in the next batch; resolves once it is committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<(T, Option<AfterCommit>), BackendError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(FnJob {
            f: Some(f),
            out: None,
            reply: Some(reply),
        });
        // The channel is bounded: when the writer is far behind, wait for room off the runtime.
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || tx.send(job))
                    .await
                    .map_err(|e| BackendError::unavailable(e.to_string()))?
                    .map_err(|_| BackendError::unavailable("the SQLite writer has stopped"))?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err(BackendError::unavailable("the SQLite writer has stopped"));
            }
        }
        rx.await
            .map_err(|_| BackendError::unavailable("the SQLite writer dropped the request"))?
    }
}

fn run(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut last_batch = 0usize;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        drain(&rx, &mut batch);
        if last_batch > 1 && batch.len() < last_batch / 2 {
            // Under load, the callers of the last batch are about to send their next writes:
            // a moment's wait lets one commit carry them all (group commit).
            std::thread::sleep(Duration::from_micros(50));
            drain(&rx, &mut batch);
        }
        last_batch = batch.len();
        if let Err(e) = exec(&conn, "BEGIN IMMEDIATE") {
            warn!(error = %e, jobs = batch.len(), "Could not start a write transaction.");
            for j in batch {
                j.finish(Some(format!("database is busy: {e}")));
            }
            continue;
        }
        for j in batch.iter_mut() {
            if let Err(e) = exec(&conn, "SAVEPOINT job") {
                error!(error = %e, "Savepoint failed.");
                continue;
            }
            let ok = j.run(&conn);
            let end = if ok {
                exec(&conn, "RELEASE job")
            } else {
                exec(&conn, "ROLLBACK TO job").and_then(|_| exec(&conn, "RELEASE job"))
            };
            if let Err(e) = end {
                error!(error = %e, "Closing a savepoint failed.");
            }
        }
        match exec(&conn, "COMMIT") {
            Ok(()) => {
                for j in batch {
                    j.finish(None);
                }
            }
            Err(e) => {
                warn!(error = %e, "Commit failed; rolling back the batch.");
                let _ = exec(&conn, "ROLLBACK");
                for j in batch {
                    j.finish(Some(format!("commit failed: {e}")));
                }
            }
        }
    }
}

fn drain(rx: &mpsc::Receiver<Box<dyn Job>>, batch: &mut Vec<Box<dyn Job>>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
}

/// Runs a parameterless statement through the statement cache (no re-parsing).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}
