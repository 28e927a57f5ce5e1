//! Task states and the result meta, in Celery's result-backend encoding.
//!
//! A [`ResultMeta`] serializes to exactly what Celery stores under `celery-task-meta-<id>`:
//! `status`, `result`, `traceback`, `children`, `date_done`, `task_id`, plus the extended fields
//! (`name`, `worker`, `retries`, `queue`) Celery writes with `result_extended`. Failures carry
//! Celery's exception dict (`exc_type`, `exc_message`, `exc_module`) and a stable `code`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};

use crate::time::{format_iso, parse_iso};

/// The state of a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Unknown to the result backend: queued, delayed, or never sent.
    Pending,
    /// Held by a worker that has not started it yet.
    Received,
    /// Running.
    Started,
    /// Running and reporting progress (`result` = `{progress, status}`).
    Processing,
    /// Finished; `result` is the return value.
    Success,
    /// Failed; `result` is the exception dict.
    Failure,
    /// Failed and scheduled to run again; `result` is the exception dict plus the next ETA.
    Retry,
    /// Revoked before or while running, or expired.
    Revoked,
    /// A custom state written by another Celery worker (e.g. `PROGRESS`).
    Custom(String),
}

impl TaskState {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "PENDING",
            Self::Received => "RECEIVED",
            Self::Started => "STARTED",
            Self::Processing => "PROCESSING",
            Self::Success => "SUCCESS",
            Self::Failure => "FAILURE",
            Self::Retry => "RETRY",
            Self::Revoked => "REVOKED",
            Self::Custom(s) => s,
        }
    }

    /// SUCCESS, FAILURE and REVOKED end a task (Celery's `READY_STATES`).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Success | Self::Failure | Self::Revoked)
    }

    /// FAILURE, RETRY and REVOKED carry an exception as their result.
    pub fn is_exception(&self) -> bool {
        matches!(self, Self::Failure | Self::Retry | Self::Revoked)
    }
}

impl FromStr for TaskState {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "PENDING" => Self::Pending,
            "RECEIVED" => Self::Received,
            "STARTED" => Self::Started,
            "PROCESSING" => Self::Processing,
            "SUCCESS" => Self::Success,
            "FAILURE" => Self::Failure,
            "RETRY" => Self::Retry,
            "REVOKED" => Self::Revoked,
            other => Self::Custom(other.to_owned()),
        })
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TaskState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TaskState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(s.parse().unwrap_or(Self::Pending))
    }
}

/// What the result backend stores for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultMeta {
    /// Current state.
    pub status: TaskState,
    /// Return value, exception dict, progress or STARTED info.
    #[serde(default)]
    pub result: Value,
    /// A traceback-like text for failures.
    #[serde(default)]
    pub traceback: Option<String>,
    /// Child results (Celery canvas); always empty here.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub children: Vec<Value>,
    /// When a terminal state was reached.
    #[serde(default, with = "opt_iso")]
    pub date_done: Option<DateTime<Utc>>,
    /// The task id (Python clients route pub/sub notifications by it).
    pub task_id: String,
    /// Task name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Worker node that wrote this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Retries so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Queue the task came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Parent task id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    Ok(Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default())
}

mod opt_iso {
    use super::*;
    pub(super) fn serialize<S: Serializer>(
        v: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&format_iso(*t)),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse_iso(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

impl ResultMeta {
    /// A bare meta in `status` for `task_id`.
    pub fn new(task_id: impl Into<String>, status: TaskState, result: Value) -> Self {
        let date_done = status.is_terminal().then(Utc::now);
        Self {
            status,
            result,
            traceback: None,
            children: vec![],
            date_done,
            task_id: task_id.into(),
            name: None,
            worker: None,
            retries: None,
            queue: None,
            parent_id: None,
        }
    }

    /// What a task that nobody has reported on looks like.
    pub fn pending(task_id: impl Into<String>) -> Self {
        Self::new(task_id, TaskState::Pending, Value::Null)
    }

    /// A FAILURE (or RETRY / REVOKED) meta carrying `err`.
    pub fn error(task_id: impl Into<String>, status: TaskState, err: &TaskError) -> Self {
        let mut m = Self::new(task_id, status, err.to_exception());
        m.traceback = Some(err.traceback());
        m
    }

    /// The REVOKED state stored for a task revoked before it ran (no traceback: nothing ran).
    pub fn revoked(task_id: impl Into<String>) -> Self {
        Self::new(
            task_id,
            TaskState::Revoked,
            TaskError::revoked("revoked").to_exception(),
        )
    }

    /// Progress as `{progress, status}` when the state is PROCESSING.
    pub fn progress(&self) -> Option<(u8, String)> {
        match (&self.status, &self.result) {
            (TaskState::Processing | TaskState::Custom(_), Value::Object(o)) => {
                let p = o.get("progress").and_then(Value::as_f64)?;
                let s = o
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                Some((p.clamp(0.0, 100.0) as u8, s))
            }
            _ => None,
        }
    }

    /// The error, when the state carries one.
    pub fn error_info(&self) -> Option<ErrorInfo> {
        self.status
            .is_exception()
            .then(|| ErrorInfo::from_exception(&self.result))
    }

    /// Serializes to the JSON Celery stores.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("result meta always serializes")
    }

    /// Parses stored JSON.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// A failure as clients see it: a stable code and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable, snake_case (e.g. `time_limit_exceeded`, `no_face_detected`).
    pub code: String,
    /// Human-readable text.
    pub message: String,
}

impl ErrorInfo {
    /// Reads an exception dict (ours, or a Python worker's).
    pub fn from_exception(v: &Value) -> Self {
        let exc_type = v
            .get("exc_type")
            .and_then(Value::as_str)
            .unwrap_or("Exception");
        let code = v
            .get("code")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| snake_case(exc_type));
        let message = match v.get("exc_message") {
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| p.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
            Some(Value::String(s)) => s.clone(),
            Some(other) if !other.is_null() => other.to_string(),
            _ => String::new(),
        };
        Self { code, message }
    }
}

/// How a failed run should be retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryHint {
    /// Never retry this error.
    Never,
    /// Retry per the task's retry policy (exponential backoff with jitter).
    Policy,
    /// Retry after exactly this many seconds (still bounded by `max_retries`).
    After(f64),
}

/// An error a task returns (or the runtime produces), with a stable code.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskError {
    /// Stable snake_case code.
    pub code: String,
    /// Human-readable text.
    pub message: String,
    /// Exception class name for Celery clients (`ValueError`, `TimeLimitExceeded`, ...).
    pub exc_type: String,
    /// Module of that class (`builtins`, `celery.exceptions`, or ours).
    pub exc_module: String,
    /// Whether and when to retry.
    pub retry: RetryHint,
}

impl TaskError {
    /// A non-retryable application error with `code` (snake_case).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        let code = code.into();
        Self {
            exc_type: camel_case(&code),
            exc_module: "afterview.errors".into(),
            code,
            message: message.into(),
            retry: RetryHint::Never,
        }
    }

    /// A transient error retried per the task's policy.
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            retry: RetryHint::Policy,
            ..Self::new(code, message)
        }
    }

    /// An error mapped to a Celery exception class.
    pub fn celery(exc_type: &str, module: &str, code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            exc_type: exc_type.into(),
            exc_module: module.into(),
            retry: RetryHint::Never,
        }
    }

    /// Sets the retry hint.
    pub fn with_retry(mut self, retry: RetryHint) -> Self {
        self.retry = retry;
        self
    }

    /// The task name is not registered on the worker (Celery's `NotRegistered`).
    pub fn not_registered(name: &str) -> Self {
        Self::celery(
            "NotRegistered",
            "celery.exceptions",
            "not_registered",
            format!("task {name:?} is not registered"),
        )
    }

    /// The arguments do not fit the task.
    pub fn invalid_arguments(msg: impl Into<String>) -> Self {
        Self::celery("TypeError", "builtins", "invalid_arguments", msg)
    }

    /// The message itself could not be decoded.
    pub fn malformed_message(msg: impl Into<String>) -> Self {
        Self::celery("ValueError", "builtins", "malformed_message", msg)
    }

    /// The soft time limit fired and the task did not complete.
    pub fn soft_time_limit(secs: f64) -> Self {
        Self::celery(
            "SoftTimeLimitExceeded",
            "celery.exceptions",
            "soft_time_limit_exceeded",
            format!("soft time limit ({secs}s) exceeded"),
        )
    }

    /// The hard time limit ended the run.
    pub fn time_limit(secs: f64) -> Self {
        Self::celery(
            "TimeLimitExceeded",
            "celery.exceptions",
            "time_limit_exceeded",
            format!("time limit ({secs}s) exceeded"),
        )
    }

    /// Revoked; `reason` is `revoked`, `terminated` or `expired`.
    pub fn revoked(reason: &str) -> Self {
        Self::celery("TaskRevokedError", "celery.exceptions", reason, reason)
    }

    /// The task observed its cancellation and stopped.
    pub fn cancelled() -> Self {
        Self::new("cancelled", "the task was cancelled")
    }

    /// The handler panicked.
    pub fn panicked(msg: impl Into<String>) -> Self {
        Self::celery("RuntimeError", "builtins", "internal_error", msg)
    }

    /// Celery's exception dict, plus our stable `code`.
    pub fn to_exception(&self) -> Value {
        json!({
            "exc_type": self.exc_type,
            "exc_message": [self.message],
            "exc_module": self.exc_module,
            "code": self.code,
        })
    }

    /// A short traceback-shaped text (no stack: Rust tasks do not have Python frames).
    pub fn traceback(&self) -> String {
        format!(
            "Traceback (most recent call last):\n  afterview task\n{}: {}\n",
            self.exc_type, self.message
        )
    }

    /// The client-facing view.
    pub fn info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.code.clone(),
            message: self.message.clone(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for TaskError {}

fn camel_case(code: &str) -> String {
    code.split(['_', '-'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_meta_matches_celery_shape() {
        let mut m = ResultMeta::new("23a7", TaskState::Success, json!(5));
        m.date_done = Some(parse_iso("2026-11-29T07:58:50.099633+00:00").unwrap());
        let v: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"status": "SUCCESS", "result": 5, "traceback": null, "children": [],
                   "date_done": "2026-11-29T07:58:50.099633+00:00", "task_id": "23a7"})
        );
    }

    #[test]
    fn python_failure_meta_parses() {
        let raw = r#"{"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}, "traceback": "Traceback...", "children": null, "date_done": "2026-11-29T07:58:50.127898+00:00", "task_id": "ab25"}"#;
        let m = ResultMeta::from_json(raw).unwrap();
        assert_eq!(m.status, TaskState::Failure);
        assert_eq!(
            m.error_info().unwrap(),
            ErrorInfo {
                code: "value_error".into(),
                message: "boom".into()
            }
        );
    }

    #[test]
    fn custom_states_survive() {
        let raw = r#"{"status": "PROGRESS", "result": {"current": 0, "total": 3}, "traceback": null, "children": [], "date_done": null, "task_id": "x"}"#;
        let m = ResultMeta::from_json(raw).unwrap();
        assert_eq!(m.status, TaskState::Custom("PROGRESS".into()));
        assert!(!m.status.is_terminal());
        assert!(m.to_json().contains("\"PROGRESS\""));
    }

    #[test]
    fn error_codes_round_trip_through_the_exception_dict() {
        let e = TaskError::new("no_face_detected", "no face in the photo");
        assert_eq!(e.exc_type, "NoFaceDetected");
        let m = ResultMeta::error("t", TaskState::Failure, &e);
        assert_eq!(m.error_info().unwrap(), e.info());
        let t = TaskError::time_limit(300.0);
        assert_eq!(
            ErrorInfo::from_exception(&t.to_exception()).code,
            "time_limit_exceeded"
        );
    }

    #[test]
    fn progress_is_read_from_processing_meta() {
        let m = ResultMeta::new(
            "t",
            TaskState::Processing,
            json!({"progress": 20, "status": "Loading"}),
        );
        assert_eq!(m.progress(), Some((20, "Loading".into())));
    }
}
