//! The single writer: one thread owns the write connection and commits every write of this
//! process in batches ("group commit").
//!
//! Callers submit a closure; the thread takes every job that is waiting (up to
//! [`MAX_BATCH`]), runs them inside one `BEGIN IMMEDIATE` transaction, commits once, and only
//! then answers each caller. An answer therefore always means "durable" (as durable as the
//! `synchronous` setting). Effects that must follow a commit (publishing events, waking
//! workers) run after it.
//!
//! A failing job never takes its neighbours' writes with it: a batch first runs without
//! savepoints (each one copies the pages the job touches into a sub-journal: 4-13 % of a
//! drain), and if a job fails, the whole transaction is rolled back and the batch runs again
//! with each job under its own savepoint, so only the failing job's changes are undone. Jobs
//! are therefore `FnMut`, pure functions of the database: a job may run twice, and only the
//! outcome of the run that was committed is delivered.

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
    /// Runs inside the open transaction; `false` when it failed (its changes must be undone).
    /// May run again in a new transaction if a job of the batch failed; the last run counts.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Delivers the outcome; `commit_error` is set when the batch could not be committed.
    fn finish(self: Box<Self>, commit_error: Option<String>);
}

struct FnJob<T, F> {
    f: F,
    out: Option<Result<(T, Option<AfterCommit>), BackendError>>,
    reply: Option<oneshot::Sender<Result<T, BackendError>>>,
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> Result<(T, Option<AfterCommit>), BackendError> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let out = (self.f)(conn);
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

    /// Runs `f` in the next batch; resolves once it is committed. `f` may run more than once
    /// (see the module's documentation); only the committed run's outcome is delivered.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<(T, Option<AfterCommit>), BackendError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(FnJob {
            f,
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
        let mut outcome = attempt(&conn, &mut batch, false);
        // A lone failed job was rolled back already: its own error is its answer.
        if matches!(outcome, Attempt::JobFailed) && batch.len() > 1 {
            outcome = attempt(&conn, &mut batch, true);
        }
        let error = match outcome {
            Attempt::Failed(e) => Some(e),
            Attempt::Committed | Attempt::JobFailed => None,
        };
        for j in batch {
            j.finish(error.clone());
        }
    }
}

/// How one run of a batch ended.
enum Attempt {
    /// Committed (with savepoints, failed jobs' changes were undone before the commit).
    Committed,
    /// Without savepoints, a job failed: the transaction was rolled back.
    JobFailed,
    /// The transaction could not be opened or committed, and was rolled back.
    Failed(String),
}

/// Runs `batch` in one transaction, each job under a savepoint when `savepoints` is set.
fn attempt(conn: &Connection, batch: &mut [Box<dyn Job>], savepoints: bool) -> Attempt {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        warn!(error = %e, jobs = batch.len(), "Could not start a write transaction.");
        return Attempt::Failed(format!("database is busy: {e}"));
    }
    for j in batch.iter_mut() {
        if !savepoints {
            if !j.run(conn) {
                let _ = exec(conn, "ROLLBACK");
                return Attempt::JobFailed;
            }
            continue;
        }
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            // Not run in this attempt, the job would be answered with its first run's outcome.
            error!(error = %e, "Savepoint failed; rolling back the batch.");
            let _ = exec(conn, "ROLLBACK");
            return Attempt::Failed(format!("savepoint failed: {e}"));
        }
        let end = if j.run(conn) {
            exec(conn, "RELEASE job")
        } else if conn.is_autocommit() {
            // SQLite rolled the whole transaction back itself (a full disk, an I/O error, out
            // of memory): the jobs before this one are undone, and each later savepoint would
            // open and commit a transaction of its own while the batch is answered as failed.
            error!("The write transaction was rolled back by SQLite; failing the batch.");
            return Attempt::Failed("the write transaction was rolled back".into());
        } else {
            exec(conn, "ROLLBACK TO job").and_then(|_| exec(conn, "RELEASE job"))
        };
        if let Err(e) = end {
            error!(error = %e, "Closing a savepoint failed; rolling back the batch.");
            let _ = exec(conn, "ROLLBACK");
            return Attempt::Failed(format!("closing a savepoint failed: {e}"));
        }
    }
    match exec(conn, "COMMIT") {
        Ok(()) => Attempt::Committed,
        Err(e) => {
            warn!(error = %e, "Commit failed; rolling back the batch.");
            let _ = exec(conn, "ROLLBACK");
            Attempt::Failed(format!("commit failed: {e}"))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A job inserting `name` (then failing, if `fail`), counting its runs.
    fn job(
        name: &'static str,
        fail: bool,
        runs: Arc<AtomicUsize>,
    ) -> (Box<dyn Job>, oneshot::Receiver<Result<(), BackendError>>) {
        let (reply, rx) = oneshot::channel();
        let f = move |c: &Connection| -> Result<((), Option<AfterCommit>), BackendError> {
            runs.fetch_add(1, Ordering::SeqCst);
            let map = |e: rusqlite::Error| BackendError::unavailable(e.to_string());
            c.execute("INSERT INTO t (name) VALUES (?1)", [name])
                .map_err(map)?;
            if fail {
                c.execute("INSERT INTO missing_table VALUES (1)", [])
                    .map_err(map)?;
            }
            Ok(((), None))
        };
        let job: Box<dyn Job> = Box::new(FnJob {
            f,
            out: None,
            reply: Some(reply),
        });
        (job, rx)
    }

    /// Runs `jobs` as one batch (queued before the writer starts) and returns the names stored.
    fn one_batch(jobs: Vec<Box<dyn Job>>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (name TEXT NOT NULL)")
            .unwrap();
        let (tx, rx) = mpsc::sync_channel(16);
        for j in jobs {
            tx.send(j).unwrap();
        }
        drop(tx);
        run(conn, rx);
        let conn = Connection::open(&path).unwrap();
        let mut st = conn.prepare("SELECT name FROM t ORDER BY name").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_batch_without_failures_runs_each_job_once() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, ra) = job("a", false, runs.clone());
        let (b, rb) = job("b", false, runs.clone());
        assert_eq!(one_batch(vec![a, b]), ["a", "b"]);
        assert!(ra.blocking_recv().unwrap().is_ok());
        assert!(rb.blocking_recv().unwrap().is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// The batch is rolled back and run again with savepoints: the failing job's own insert is
    /// undone and it gets its error; its neighbours are committed once and answered `Ok`.
    #[test]
    fn a_failing_job_is_undone_alone() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, ra) = job("a", false, runs.clone());
        let (b, rb) = job("b", true, runs.clone());
        let (c, rc) = job("c", false, runs.clone());
        assert_eq!(one_batch(vec![a, b, c]), ["a", "c"]);
        assert!(ra.blocking_recv().unwrap().is_ok());
        let err = rb.blocking_recv().unwrap().unwrap_err();
        assert!(err.to_string().contains("missing_table"), "{err}");
        assert!(rc.blocking_recv().unwrap().is_ok());
        // a and b ran in the first attempt, all three in the second.
        assert_eq!(runs.load(Ordering::SeqCst), 5);
    }

    /// A job during which SQLite rolls the whole transaction back (as on a full disk or an I/O
    /// error; here the job ends it itself): no job of the batch is answered `Ok`, and nothing
    /// after it is committed behind the batch's back.
    #[test]
    fn a_transaction_rolled_back_under_the_batch_fails_it_whole() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, ra) = job("a", false, runs.clone());
        let (reply, rb) = oneshot::channel();
        let b: Box<dyn Job> = Box::new(FnJob {
            f: |c: &Connection| -> Result<((), Option<AfterCommit>), BackendError> {
                c.execute_batch("INSERT INTO t (name) VALUES ('b'); ROLLBACK")
                    .map_err(|e| BackendError::unavailable(e.to_string()))?;
                Err(BackendError::unavailable("disk full"))
            },
            out: None,
            reply: Some(reply),
        });
        let (c, rc) = job("c", false, runs.clone());
        let stored = one_batch(vec![a, b, c]);
        let answers = [ra, rb, rc].map(|r| r.blocking_recv().unwrap().is_ok());
        assert!(stored.is_empty(), "nothing committed: {stored:?}");
        assert_eq!(answers, [false, false, false]);
    }

    #[test]
    fn a_lone_failing_job_is_answered_without_a_second_run() {
        let runs = Arc::new(AtomicUsize::new(0));
        let (b, rb) = job("b", true, runs.clone());
        assert!(one_batch(vec![b]).is_empty());
        assert!(rb.blocking_recv().unwrap().is_err());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
