//! The schema and its migrations (`PRAGMA user_version` holds the applied version).

use rusqlite::Connection;

/// Each entry upgrades the schema from version `index` to `index + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: messages, results, revocations, dead letters, workers.
    "
    CREATE TABLE messages (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        tag         TEXT    NOT NULL UNIQUE,
        task_id     TEXT    NOT NULL,
        queue       TEXT    NOT NULL,
        priority    INTEGER NOT NULL,
        run_at      INTEGER NOT NULL,
        raw         BLOB    NOT NULL,
        state       INTEGER NOT NULL,
        lease_owner TEXT,
        lease_until INTEGER,
        epoch       INTEGER NOT NULL DEFAULT 0,
        deliveries  INTEGER NOT NULL DEFAULT 0,
        redelivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX messages_ready     ON messages (queue, priority, seq) WHERE state = 0;
    CREATE INDEX messages_scheduled ON messages (run_at) WHERE state = 1;
    CREATE INDEX messages_leased    ON messages (lease_until) WHERE state = 2;

    CREATE TABLE results (
        task_id    TEXT    NOT NULL UNIQUE,
        seq        INTEGER NOT NULL,
        status     TEXT    NOT NULL,
        meta       TEXT    NOT NULL,
        origin     TEXT    NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX results_seq    ON results (seq);
    CREATE INDEX results_expiry ON results (expires_at);

    CREATE TABLE revocations (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id    TEXT    NOT NULL UNIQUE,
        terminate  INTEGER NOT NULL,
        at         INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX revocations_expiry ON revocations (expires_at);

    CREATE TABLE dead_letters (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        queue   TEXT    NOT NULL,
        task_id TEXT,
        reason  TEXT    NOT NULL,
        payload BLOB    NOT NULL,
        at      INTEGER NOT NULL
    );

    CREATE TABLE counters (
        name  TEXT    PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters (name, value) VALUES ('results_seq', 0);

    CREATE TABLE workers (
        node         TEXT    PRIMARY KEY,
        report       TEXT    NOT NULL,
        heartbeat_at INTEGER NOT NULL
    );
    ",
    // 2: messages by task id. A revoke deletes a task's waiting messages and asks whether it is
    // running; without this index both scanned the whole table, holding the writer (and every
    // write of the process) ~50 ms per revoke at 100,000 waiting messages. Task ids are
    // time-ordered, so the index grows at one end.
    "
    CREATE INDEX messages_task ON messages (task_id);
    ",
];

/// Brings the schema to the latest version (safe when several processes open at once). An
/// up-to-date database (every open but the first) is only read: no write lock, so a process
/// holding it for long (a purge of a large backlog) does not stop another from starting.
pub(crate) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == MIGRATIONS.len() as i64 {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let version: usize =
            conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
        if version > MIGRATIONS.len() {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "the database has schema version {version}, newer than this build knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(sql)?;
            conn.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
