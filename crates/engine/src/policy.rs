//! Backend policy: the limits and rules every broker and result backend applies the same way.
//! A backend takes them from here; nothing restates them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::{BackendError, WorkerReport};
use crate::result::TaskState;

/// Dead letters kept at most (newest first); older ones are dropped.
pub const DEAD_LETTER_CAP: usize = 10_000;

/// How long a dead letter is kept.
pub const DEAD_LETTER_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a revocation is kept unless the caller says otherwise (Celery keeps revokes in
/// memory only; ours survive restarts for this long).
pub const REVOKE_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a worker record outlives its last heartbeat before cleanup removes it.
pub const STALE_WORKER: Duration = Duration::from_secs(60);

/// The states that end a task, as stored (Celery's `READY_STATES`). Scripts and queries
/// that list them are checked against this by their backend's tests.
pub const TERMINAL_STATES: [TaskState; 3] =
    [TaskState::Success, TaskState::Failure, TaskState::Revoked];

/// A worker is alive while its last heartbeat is younger than three periods (min. 5 s).
pub fn worker_alive(w: &WorkerReport, now: DateTime<Utc>) -> bool {
    let window = (w.freq * 3.0).max(5.0);
    (now - w.heartbeat_at).num_milliseconds() as f64 <= window * 1000.0
}

/// A queue name a backend accepts (see [`crate::message::validate_queue`]).
pub fn check_queue(queue: &str) -> Result<(), BackendError> {
    crate::message::validate_queue(queue).map_err(|e| BackendError::invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminal_list_is_what_is_terminal() {
        for s in [
            "PENDING",
            "RECEIVED",
            "STARTED",
            "PROCESSING",
            "RETRY",
            "SUCCESS",
            "FAILURE",
            "REVOKED",
        ] {
            let st: TaskState = s.parse().unwrap();
            assert_eq!(TERMINAL_STATES.contains(&st), st.is_terminal(), "{s}");
        }
    }

    #[test]
    fn bad_queue_names_are_invalid_requests() {
        assert!(check_queue("celery").is_ok());
        assert!(matches!(check_queue(""), Err(BackendError::Invalid(_))));
    }
}
