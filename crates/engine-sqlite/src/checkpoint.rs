//! The background checkpointer: copies the WAL back into the database file beside the writer,
//! so that the writer's own checkpoint (SQLite's auto-checkpoint, which bounds the WAL) finds
//! almost nothing left to do.
//!
//! Why: a checkpoint first syncs the WAL, and with `synchronous = NORMAL` commits do not, so
//! the writer's checkpoint every ~40 MB of WAL synced all of it at once: a 23-29 ms `fsync`,
//! then the copy, during which no commit could happen (measured with `strace` under
//! `afterview-bench ws-fanout`: every write of the process, progress included, stalled ~40 ms
//! every ~4 s). A passive checkpoint from another connection runs beside the writer (it takes
//! only the checkpoint lock), syncs what was written since the last one and copies it.
//!
//! Invariant: the writer keeps its auto-checkpoint. A checkpoint beside a busy writer never
//! catches up on its own (new frames arrive while it copies), so only the writer's, run between
//! two of its commits, lets the next write restart the WAL from its start; without it the WAL
//! grew without bound (1.3 GB in 12 s, issue 2's experiment).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;
use tracing::debug;

/// How often the WAL's backlog is looked at (a read of the WAL index, no I/O).
const EVERY: Duration = Duration::from_millis(100);
/// WAL frames (pages, 4 KiB each) not yet in the database file that start a checkpoint: SQLite's
/// default auto-checkpoint size. Checkpointing every 100 ms regardless cost the idle
/// one-at-a-time latency of the embedded engine its p99 (0.48 -> 0.95 ms): each checkpoint
/// syncs, and a commit writing a page under writeback waits for it.
const BACKLOG: i64 = 1_000;

/// Stops the thread when dropped.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts the thread on its own connection to `path`.
    pub(crate) fn start(conn: Connection, path: &Path) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        let path = path.display().to_string();
        std::thread::Builder::new()
            .name("av-sqlite-ckpt".into())
            .spawn(move || run(&conn, &rx, &path))?;
        Ok(Self { _stop: tx })
    }
}

fn run(conn: &Connection, stop: &mpsc::Receiver<()>, path: &str) {
    let counts = |mode: &str| -> rusqlite::Result<(i64, i64)> {
        // (busy, frames in the WAL, frames already in the database file); -1s when the
        // database is not in WAL mode. NOOP only reads them (SQLite 3.51).
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
    };
    loop {
        match stop.recv_timeout(EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The backend is gone (its sender dropped).
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let r = match counts("NOOP") {
            // Busy (another checkpoint holds the lock) is fine: that one does the work.
            Ok((log, done)) if log - done >= BACKLOG => counts("PASSIVE").map(|_| ()),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            debug!(error = %e, db = %path, "Background checkpoint failed; the writer's own checkpoint still runs.");
        }
    }
}
