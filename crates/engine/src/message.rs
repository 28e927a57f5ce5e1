//! The task message: Celery's protocol v2, as it travels on the wire.
//!
//! A [`TaskMessage`] is what a producer sends and a worker receives. [`TaskMessage::to_envelope`]
//! writes the exact kombu envelope a Python Celery client would write (body base64-encoded,
//! `delivery_info` and `delivery_tag` always present), and [`TaskMessage::from_envelope`] reads
//! both protocol v2 and the old v1 body, so the same bytes can sit in the embedded broker or in a
//! Redis list that Python workers share.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::time::{format_iso, parse_iso};

/// The queue used when neither the task nor the caller names one (Celery's `task_default_queue`).
pub const DEFAULT_QUEUE: &str = "celery";
/// Highest accepted priority value; larger values are clamped (as kombu does).
pub const MAX_PRIORITY: u8 = 9;
/// Upper bound on a task id's length, so ids can be used as keys everywhere.
pub const MAX_TASK_ID_LEN: usize = 255;

/// Per-call time limits in seconds, in the order Celery's header uses: `[hard, soft]`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeLimits {
    /// Hard limit: the run is abandoned and the task fails with `TimeLimitExceeded`.
    pub hard: Option<f64>,
    /// Soft limit: the task's cancellation fires; it may clean up.
    pub soft: Option<f64>,
}

/// One task invocation, as Celery protocol v2 describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Task id (usually a UUID); also the result key.
    pub id: String,
    /// Registered task name, e.g. `app.tasks.visualization_tasks.generate_visualization`.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Not before this instant.
    pub eta: Option<DateTime<Utc>>,
    /// After this instant the task is revoked (reason `expired`) instead of run.
    pub expires: Option<DateTime<Utc>>,
    /// How many times this task has been retried so far.
    pub retries: u32,
    /// Per-call time limits.
    pub timelimit: TimeLimits,
    /// First task of the workflow (the task's own id when it has no parent).
    pub root_id: String,
    /// Task that sent this one (a retry names itself).
    pub parent_id: Option<String>,
    /// Group id, when part of a group.
    pub group: Option<String>,
    /// 0-9; as in Celery on Redis, lower numbers are served first.
    pub priority: u8,
    /// Destination queue (the routing key).
    pub queue: String,
    /// Unique per publish; identifies this copy of the message in the broker.
    pub delivery_tag: String,
    /// Sender node name.
    pub origin: Option<String>,
    /// Set when a broker gave this message back after a lost lease or a shutdown.
    pub redelivered: bool,
    /// Do not store a result (`ignore_result`); `None` means the task's default.
    pub ignore_result: Option<bool>,
    /// Its consumer holds it until its `eta`, as Celery does: the broker hands it out at once.
    /// Set for tasks the sending client does not know (a Python Celery worker's), whose
    /// consumers may all be foreign workers: a broker that kept such a message until its
    /// ETA, for Afterview's workers to take, would keep it from them. False for Afterview's
    /// own tasks, which wait in the broker (no worker holds them in memory). Not on the wire.
    pub consumer_holds_eta: bool,
}

/// Options a caller may set when sending a task.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Task id; a new UUID when absent.
    pub task_id: Option<String>,
    /// Queue; the task's default queue when absent.
    pub queue: Option<String>,
    /// Run at this instant.
    pub eta: Option<DateTime<Utc>>,
    /// Run this many seconds from now (ignored when `eta` is set).
    pub countdown: Option<f64>,
    /// Expire at this instant.
    pub expires: Option<DateTime<Utc>>,
    /// Priority 0-9.
    pub priority: Option<u8>,
    /// Per-call time limits.
    pub timelimit: TimeLimits,
    /// Parent task id.
    pub parent_id: Option<String>,
    /// Root task id.
    pub root_id: Option<String>,
}

impl TaskMessage {
    /// Builds a message for `task` with `args`/`kwargs` and the options given.
    pub fn new(
        task: impl Into<String>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        default_queue: &str,
        opts: SendOptions,
    ) -> Result<Self, MessageError> {
        let id = opts.task_id.unwrap_or_else(new_id);
        validate_task_id(&id)?;
        let task = task.into();
        if task.is_empty() {
            return Err(MessageError::Invalid("task name is empty".into()));
        }
        let queue = opts.queue.unwrap_or_else(|| default_queue.to_owned());
        validate_queue(&queue)?;
        let eta = match (opts.eta, opts.countdown) {
            (Some(eta), _) => Some(eta),
            (None, Some(secs)) => {
                if !secs.is_finite() || secs < 0.0 {
                    return Err(MessageError::Invalid(format!(
                        "countdown must be a non-negative number of seconds, got {secs}"
                    )));
                }
                let at = chrono::Duration::try_milliseconds((secs * 1000.0) as i64)
                    .and_then(|d| crate::time::now().checked_add_signed(d));
                Some(at.ok_or_else(|| {
                    MessageError::Invalid(format!("countdown of {secs} seconds is too far away"))
                })?)
            }
            (None, None) => None,
        };
        let priority = opts.priority.unwrap_or(0);
        if priority > MAX_PRIORITY {
            return Err(MessageError::Invalid(format!(
                "priority must be 0-{MAX_PRIORITY}, got {priority}"
            )));
        }
        for (what, v) in [
            ("time limit", opts.timelimit.hard),
            ("soft time limit", opts.timelimit.soft),
        ] {
            if let Some(v) = v
                && (!v.is_finite() || v <= 0.0)
            {
                return Err(MessageError::Invalid(format!(
                    "{what} must be positive, got {v}"
                )));
            }
        }
        Ok(Self {
            root_id: opts.root_id.unwrap_or_else(|| id.clone()),
            id,
            task,
            args,
            kwargs,
            eta,
            expires: opts.expires,
            retries: 0,
            timelimit: opts.timelimit,
            parent_id: opts.parent_id,
            group: None,
            priority,
            queue,
            delivery_tag: new_id(),
            origin: Some(origin()),
            redelivered: false,
            ignore_result: None,
            consumer_holds_eta: false,
        })
    }

    /// The message a retry sends: same id, one more retry, a new delivery tag, not before `eta`.
    pub fn retried(&self, eta: DateTime<Utc>) -> Self {
        Self {
            retries: self.retries + 1,
            eta: Some(eta),
            parent_id: Some(self.id.clone()),
            delivery_tag: new_id(),
            redelivered: false,
            ..self.clone()
        }
    }

    /// Milliseconds since the epoch at which the message may run (its ETA, or now).
    pub fn run_at_ms(&self) -> i64 {
        self.eta
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|| crate::time::now().timestamp_millis())
    }

    /// Encodes the kombu/Celery envelope (JSON), exactly the shape Python writes.
    pub fn to_envelope(&self) -> String {
        let body = json!([
            self.args,
            self.kwargs,
            {"callbacks": null, "errbacks": null, "chain": null, "chord": null}
        ]);
        let body = B64.encode(serde_json::to_vec(&body).expect("JSON values always serialize"));
        let mut delivery_info = json!({"exchange": "", "routing_key": self.queue});
        let mut headers = json!({
            "lang": "rs",
            "task": self.task,
            "id": self.id,
            "shadow": null,
            "eta": self.eta.map(format_iso),
            "expires": self.expires.map(format_iso),
            "group": self.group,
            "group_index": null,
            "retries": self.retries,
            "timelimit": [self.timelimit.hard, self.timelimit.soft],
            "root_id": self.root_id,
            "parent_id": self.parent_id,
            "argsrepr": repr_args(&self.args),
            "kwargsrepr": repr_kwargs(&self.kwargs),
            "origin": self.origin,
            "ignore_result": self.ignore_result,
            "replaced_task_nesting": 0,
            "stamped_headers": null,
            "stamps": {},
        });
        if self.redelivered {
            headers["redelivered"] = Value::Bool(true);
            delivery_info["redelivered"] = Value::Bool(true);
        }
        let mut properties = json!({
            "correlation_id": self.id,
            "reply_to": null,
            "delivery_mode": 2,
            "delivery_info": delivery_info,
            "priority": self.priority,
            "body_encoding": "base64",
            "delivery_tag": self.delivery_tag,
        });
        if let Some(expires) = self.expires {
            let ms = (expires - crate::time::now()).num_milliseconds().max(0);
            properties["expiration"] = Value::String(ms.to_string());
        }
        let env = json!({
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        });
        env.to_string()
    }

    /// Decodes an envelope. `queue` is the queue it was read from, used when the envelope's
    /// `delivery_info` does not name one.
    ///
    /// The fields read are deserialized straight into [`Fields`] (every other key is skipped,
    /// no map is built). An envelope that shape does not fit (not an object, a duplicated key,
    /// a container where a scalar goes, invalid JSON) is decoded again as a JSON tree, which
    /// gives the same message or the exact error; both paths share every rule below.
    pub fn from_envelope(raw: &[u8], queue: &str) -> Result<Self, DecodeError> {
        let fields = match serde_json::from_slice::<Obj<Fields>>(raw) {
            Ok(Obj(f)) => f,
            Err(_) => Fields::from_tree(raw)?,
        };
        Self::from_fields(fields, queue)
    }

    fn from_fields(f: Fields, queue: &str) -> Result<Self, DecodeError> {
        let headers = f.headers.map(|o| o.0).unwrap_or_default();
        let properties = f.properties.map(|o| o.0).unwrap_or_default();
        // Identify the task as early as possible, so a later failure can still be reported
        // against its id.
        let who = Who {
            id: text(&headers.id),
            task: text(&headers.task),
        };
        let body = envelope_body(&f.body, &f.content_type, &headers, &properties, &who)?;
        let facts = DeliveryFacts::read(&headers, &properties, queue, &who)?;
        if who.task.is_some() {
            Self::from_v2(&headers, body, facts, who)
        } else {
            Self::from_v1(body, facts, &who)
        }
    }

    /// Protocol v2: identity and options in the headers, `[args, kwargs, embed]` in the body.
    fn from_v2(
        headers: &Headers,
        body: Value,
        facts: DeliveryFacts,
        who: Who,
    ) -> Result<Self, DecodeError> {
        let fail = |reason: String| who.fail(reason);
        let id = who
            .id
            .clone()
            .ok_or_else(|| fail("headers.id is missing".into()))?;
        let task = who.task.clone().unwrap_or_default();
        let Value::Array(mut parts) = body else {
            return Err(fail("body is not [args, kwargs, embed]".into()));
        };
        if parts.len() < 2 {
            return Err(fail("body is not [args, kwargs, embed]".into()));
        }
        let Value::Array(args) = parts[0].take() else {
            return Err(fail("body args are not a list".into()));
        };
        let Value::Object(kwargs) = parts[1].take() else {
            return Err(fail("body kwargs are not an object".into()));
        };
        if let Some(Value::Object(embed)) = parts.get(2) {
            let used: Vec<&str> = ["callbacks", "errbacks", "chain", "chord"]
                .into_iter()
                .filter(|k| match embed.get(*k) {
                    None | Some(Value::Null) => false,
                    Some(Value::Array(a)) => !a.is_empty(),
                    Some(_) => true,
                })
                .collect();
            if !used.is_empty() {
                // Running the task and dropping what was to follow it would leave a chain's or
                // chord's `.get()` waiting for ever: the message fails, visibly, instead.
                return Err(fail(format!(
                    "Celery workflows are not supported: the message carries {} (link, \
                     link_error, chain or chord); send the tasks one by one",
                    used.join(", ")
                )));
            }
        }
        let timelimit = time_limits(headers.timelimit.as_ref()).map_err(fail)?;
        let retries = match &headers.retries {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .filter(|&r| r <= MAX_RETRIES_HEADER)
                .ok_or_else(|| {
                    fail(format!(
                        "retries {v} is not a count up to {MAX_RETRIES_HEADER}"
                    ))
                })?,
        };
        let msg = Self {
            root_id: text(&headers.root_id).unwrap_or_else(|| id.clone()),
            eta: opt_time(headers.eta.as_ref()).map_err(|e| fail(format!("eta: {e}")))?,
            expires: opt_time(headers.expires.as_ref())
                .map_err(|e| fail(format!("expires: {e}")))?,
            retries,
            parent_id: text(&headers.parent_id),
            group: text(&headers.group),
            origin: text(&headers.origin),
            ignore_result: headers.ignore_result.as_ref().and_then(Value::as_bool),
            id,
            task,
            args,
            kwargs,
            timelimit,
            priority: facts.priority,
            queue: facts.queue,
            delivery_tag: facts.delivery_tag,
            redelivered: facts.redelivered,
            consumer_holds_eta: false,
        };
        validate_task_id(&msg.id).map_err(|e| fail(e.to_string()))?;
        Ok(msg)
    }

    /// Protocol v1: everything is in the body.
    /// `header`: what the headers named (an id without a task name is still reported against
    /// that id, so its caller's `get()` ends with the failure instead of waiting).
    fn from_v1(body: Value, facts: DeliveryFacts, header: &Who) -> Result<Self, DecodeError> {
        let b = body.as_object().ok_or_else(|| {
            header.fail("no headers.task (a task name) and the body is not a v1 object".into())
        })?;
        let who = Who {
            id: b
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| header.id.clone()),
            task: b.get("task").and_then(Value::as_str).map(str::to_owned),
        };
        let fail = |reason: String| who.fail(reason);
        let (Some(idv), Some(taskv)) = (who.id.clone(), who.task.clone()) else {
            return Err(fail("v1 body lacks id or task".into()));
        };
        let args = match b.get("args") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(fail("v1 args are not a list".into())),
        };
        let kwargs = match b.get("kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(k)) => k.clone(),
            Some(_) => return Err(fail("v1 kwargs are not an object".into())),
        };
        validate_task_id(&idv).map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            root_id: idv.clone(),
            eta: opt_time(b.get("eta")).map_err(|e| fail(format!("eta: {e}")))?,
            expires: opt_time(b.get("expires")).map_err(|e| fail(format!("expires: {e}")))?,
            retries: b
                .get("retries")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(u64::from(MAX_RETRIES_HEADER)) as u32,
            id: idv,
            task: taskv,
            args,
            kwargs,
            timelimit: TimeLimits::default(),
            parent_id: None,
            group: None,
            priority: facts.priority,
            queue: facts.queue,
            delivery_tag: facts.delivery_tag,
            origin: None,
            redelivered: facts.redelivered,
            ignore_result: None,
            consumer_holds_eta: false,
        })
    }
}

/// The task an envelope names (as far as it could be read), for errors reported against it.
struct Who {
    id: Option<String>,
    task: Option<String>,
}

/// The longest decode error kept: reasons quote the value they refuse (a 10 MB `eta` string),
/// and the reason goes into the task's FAILURE, the dead letter and a log line.
pub(crate) const REASON_MAX: usize = 1024;

/// The longest task name reported with a decode error.
const NAME_MAX: usize = 255;

impl Who {
    /// The error reported against this task: its id when it can be a result key (a foreign
    /// message may carry a 10 MB id; an id Celery takes but we refuse, `"order 17"`, still
    /// gets its FAILURE, or its caller's `get()` would wait for ever), its name and the reason
    /// cut.
    fn fail(&self, reason: String) -> DecodeError {
        DecodeError {
            task_id: self.id.clone().filter(|id| reportable_id(id)),
            task_name: self.task.as_deref().map(|t| cut(t, NAME_MAX)),
            reason: cut(&reason, REASON_MAX),
        }
    }
}

/// The longest id a decode error is stored under (Celery takes any string; ours are 36).
const REPORTED_ID_MAX: usize = 1024;

/// Whether a refused message's id can name its FAILURE: not empty, at most
/// [`REPORTED_ID_MAX`] bytes, no control characters (they would reach log lines).
fn reportable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= REPORTED_ID_MAX && !id.chars().any(char::is_control)
}

/// `s` cut at a character boundary within `max` bytes, marked when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &s[..end], s.len() - end)
}

/// The envelope's fields that decoding reads; all others are skipped. A `null` field reads as
/// absent, as it does in the JSON tree.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Fields {
    body: Option<Value>,
    #[serde(rename = "content-type")]
    content_type: Option<Value>,
    headers: Option<Obj<Headers>>,
    properties: Option<Obj<Properties>>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Headers {
    id: Option<Value>,
    task: Option<Value>,
    timelimit: Option<Value>,
    retries: Option<Value>,
    root_id: Option<Value>,
    parent_id: Option<Value>,
    group: Option<Value>,
    origin: Option<Value>,
    eta: Option<Value>,
    expires: Option<Value>,
    ignore_result: Option<Value>,
    redelivered: Option<Value>,
    compression: Option<Value>,
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct Properties {
    delivery_info: Option<Value>,
    priority: Option<Value>,
    delivery_tag: Option<Value>,
    body_encoding: Option<Value>,
}

/// A JSON object read as `T` (a derived struct alone would also accept an array).
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(Object(std::marker::PhantomData))
    }
}

impl Fields {
    /// The slow path: the envelope as a JSON tree, with its errors (a later key wins over an
    /// earlier duplicate, as in any JSON object read into a map).
    fn from_tree(raw: &[u8]) -> Result<Self, DecodeError> {
        let env: Value = serde_json::from_slice(raw)
            .map_err(|e| DecodeError::anonymous(format!("envelope is not valid JSON: {e}")))?;
        let Value::Object(env) = env else {
            return Err(DecodeError::anonymous("envelope is not a JSON object"));
        };
        for (key, what) in [
            ("headers", "envelope headers are not an object"),
            ("properties", "envelope properties are not an object"),
        ] {
            if !matches!(env.get(key), None | Some(Value::Null | Value::Object(_))) {
                return Err(DecodeError::anonymous(what));
            }
        }
        // Now the shape fits `Fields` (a map has no duplicate keys; every field takes any
        // value), so the same derived read picks the fields: the two reads cannot drift apart.
        serde_json::from_value(Value::Object(env))
            .map_err(|e| DecodeError::anonymous(format!("envelope fields: {e}")))
    }
}

/// A string field's value (absent when missing, null or not a string).
fn text(v: &Option<Value>) -> Option<String> {
    v.as_ref().and_then(Value::as_str).map(str::to_owned)
}

/// The envelope's body as JSON: only `application/json`, uncompressed, in UTF-8 or base64.
fn envelope_body(
    body: &Option<Value>,
    content_type: &Option<Value>,
    headers: &Headers,
    properties: &Properties,
    who: &Who,
) -> Result<Value, DecodeError> {
    let fail = |reason: String| who.fail(reason);
    let content_type = content_type
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or("application/json");
    if content_type != "application/json" {
        return Err(fail(format!(
            "content type {content_type:?} is not accepted (only application/json)"
        )));
    }
    if headers.compression.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(fail("compressed bodies are not accepted".into()));
    }
    let body_str = body
        .as_ref()
        .and_then(Value::as_str)
        .ok_or_else(|| fail("envelope has no string body".into()))?;
    let encoding = properties
        .body_encoding
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or("utf-8");
    let decoded;
    let body_bytes = match encoding {
        "base64" => {
            decoded = B64
                .decode(body_str.trim())
                .map_err(|e| fail(format!("body is not valid base64: {e}")))?;
            decoded.as_slice()
        }
        "utf-8" | "utf8" => body_str.as_bytes(),
        other => return Err(fail(format!("unsupported body encoding {other:?}"))),
    };
    serde_json::from_slice(body_bytes).map_err(|e| fail(format!("body is not valid JSON: {e}")))
}

/// Where and how a message was delivered, from its headers and properties.
struct DeliveryFacts {
    queue: String,
    redelivered: bool,
    priority: u8,
    delivery_tag: String,
}

impl DeliveryFacts {
    fn read(
        headers: &Headers,
        properties: &Properties,
        queue: &str,
        who: &Who,
    ) -> Result<Self, DecodeError> {
        let delivery_info = properties.delivery_info.as_ref().and_then(Value::as_object);
        let flag = |v: Option<&Value>| v.and_then(Value::as_bool).unwrap_or(false);
        // Through the default exchange (`""`), the routing key is the queue's name; through a
        // named one (`media` routing `video.compress` to the list `videos`), it is not, and the
        // queue is the one the message was read from (a retry goes back there).
        let direct = delivery_info
            .and_then(|d| d.get("exchange"))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        Ok(Self {
            queue: delivery_info
                .filter(|_| direct || queue.is_empty())
                .and_then(|d| d.get("routing_key"))
                .and_then(Value::as_str)
                .filter(|q| !q.is_empty())
                .unwrap_or(queue)
                .to_owned(),
            redelivered: flag(headers.redelivered.as_ref())
                || flag(delivery_info.and_then(|d| d.get("redelivered"))),
            priority: properties
                .priority
                .as_ref()
                .and_then(Value::as_u64)
                .map(|p| p.min(u64::from(MAX_PRIORITY)) as u8)
                .unwrap_or(0),
            delivery_tag: match &properties.delivery_tag {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(who.fail("properties.delivery_tag is missing".into())),
            },
        })
    }
}

/// Scheduling facts a broker needs about an envelope it stores, read even from a malformed one.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeInfo {
    /// Task id, if readable.
    pub task_id: Option<String>,
    /// Delivery tag, if present.
    pub delivery_tag: Option<String>,
    /// Priority (0 when unreadable).
    pub priority: u8,
    /// ETA in ms since the epoch, if any.
    pub eta_ms: Option<i64>,
}

impl EnvelopeInfo {
    /// Reads what it can; never fails.
    pub fn peek(raw: &[u8]) -> Self {
        let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        let headers = v.get("headers");
        let props = v.get("properties");
        Self {
            task_id: headers
                .and_then(|h| h.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            delivery_tag: props
                .and_then(|p| p.get("delivery_tag"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            priority: props
                .and_then(|p| p.get("priority"))
                .and_then(Value::as_u64)
                .map(|p| p.min(u64::from(MAX_PRIORITY)) as u8)
                .unwrap_or(0),
            eta_ms: headers
                .and_then(|h| h.get("eta"))
                .and_then(Value::as_str)
                .and_then(|s| parse_iso(s).ok())
                .map(|t| t.timestamp_millis()),
        }
    }
}

fn opt_time(v: Option<&Value>) -> Result<Option<DateTime<Utc>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_iso(s).map(Some),
        Some(other) => Err(format!("expected an ISO-8601 string, got {other}")),
    }
}

/// A new task id / delivery tag: a version 7 UUID, so ids made later sort later.
///
/// Its first 48 bits are the Unix time in milliseconds and the other 74 a counter seeded at random
/// each millisecond plus random bits (RFC 9562), so ids from many processes stay unique. Ordered ids
/// are what keeps the embedded engine's indexes on them (`messages.tag`, `results.task_id`)
/// appending at one end instead of touching a random page per task. A task id grants nothing: every
/// read of a task checks its owner.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Checks a task id: 1-255 printable ASCII characters without spaces.
pub fn validate_task_id(id: &str) -> Result<(), MessageError> {
    if id.is_empty() || id.len() > MAX_TASK_ID_LEN {
        return Err(MessageError::Invalid(format!(
            "task id must be 1-{MAX_TASK_ID_LEN} characters"
        )));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(MessageError::Invalid(
            "task id must be printable ASCII without spaces".into(),
        ));
    }
    Ok(())
}

/// Checks a queue name: 1-200 characters of `[A-Za-z0-9._:-]`.
pub fn validate_queue(q: &str) -> Result<(), MessageError> {
    if q.is_empty()
        || q.len() > 200
        || !q
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(MessageError::Invalid(format!(
            "queue name {q:?} must be 1-200 characters of letters, digits, '.', '_', ':', '-'"
        )));
    }
    Ok(())
}

/// The node name of this process when it sends tasks (`gen<pid>@<host>`, as Celery clients do).
pub fn origin() -> String {
    format!("gen{}@{}", std::process::id(), crate::hostname())
}

/// A Python-like `repr` of positional arguments, as Celery's `argsrepr` header carries.
fn repr_args(args: &[Value]) -> String {
    let inner: Vec<String> = args.iter().map(py_repr).collect();
    let s = if inner.len() == 1 {
        format!("({},)", inner[0])
    } else {
        format!("({})", inner.join(", "))
    };
    truncate_repr(s)
}

fn repr_kwargs(kwargs: &Map<String, Value>) -> String {
    let inner: Vec<String> = kwargs
        .iter()
        .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
        .collect();
    truncate_repr(format!("{{{}}}", inner.join(", ")))
}

fn truncate_repr(mut s: String) -> String {
    if s.len() > 1024 {
        let mut cut = 1021;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Python `repr` of a JSON value (what Flower and `celery events` display).
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A message that cannot be built.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MessageError {
    /// A field is out of range or malformed.
    #[error("{0}")]
    Invalid(String),
}

/// Longest time limit a message may ask for: a week (anything longer is a mistake or an
/// attack; Celery itself takes any float).
pub const MAX_TIME_LIMIT_SECS: f64 = 7.0 * 86_400.0;
/// Most retries a message's header may claim.
pub const MAX_RETRIES_HEADER: u32 = 1_000_000;

/// `timelimit: [hard, soft]`: each null or a finite number of seconds in
/// `0..=MAX_TIME_LIMIT_SECS`. A negative, NaN, infinite or enormous limit used to panic the
/// worker after the task had started.
fn time_limits(v: Option<&Value>) -> Result<TimeLimits, String> {
    let one = |x: Option<&Value>, what: &str| -> Result<Option<f64>, String> {
        match x {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                // 0 is "no limit of the message's own", as Celery reads it
                // (`time_limit or task.time_limit`): the task's default applies.
                Some(0.0) => Ok(None),
                Some(s) if s.is_finite() && (0.0..=MAX_TIME_LIMIT_SECS).contains(&s) => Ok(Some(s)),
                _ => Err(format!(
                    "timelimit: the {what} limit {v} is not a number of seconds between 0 and \
                     {MAX_TIME_LIMIT_SECS}"
                )),
            },
        }
    };
    match v {
        None | Some(Value::Null) => Ok(TimeLimits::default()),
        Some(Value::Array(tl)) if tl.len() <= 2 => Ok(TimeLimits {
            hard: one(tl.first(), "hard")?,
            soft: one(tl.get(1), "soft")?,
        }),
        Some(other) => Err(format!("timelimit {other} is not [hard, soft]")),
    }
}

/// A message that cannot be decoded; carries the task id and name when they could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The task id, if the headers named one.
    pub task_id: Option<String>,
    /// The task name, if the headers named one.
    pub task_name: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl DecodeError {
    fn anonymous(reason: impl Into<String>) -> Self {
        Self {
            task_id: None,
            task_name: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed message")?;
        if let Some(id) = &self.task_id {
            write!(f, " (task id {id})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_in_the_order_they_were_made() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(
            ids.iter()
                .all(|id| validate_task_id(id).is_ok() && id.len() == 36)
        );
    }

    fn msg() -> TaskMessage {
        let mut kw = Map::new();
        kw.insert("seconds".into(), json!(1.5));
        TaskMessage::new(
            "afterview.sleep",
            vec![json!(2), json!("x")],
            kw,
            DEFAULT_QUEUE,
            SendOptions {
                priority: Some(5),
                countdown: Some(30.0),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn envelope_round_trips() {
        let m = msg();
        let env = m.to_envelope();
        let back = TaskMessage::from_envelope(env.as_bytes(), "ignored").unwrap();
        assert_eq!(back.id, m.id);
        assert_eq!(back.task, m.task);
        assert_eq!(back.args, m.args);
        assert_eq!(back.kwargs, m.kwargs);
        assert_eq!(back.priority, 5);
        assert_eq!(back.queue, "celery");
        assert_eq!(back.delivery_tag, m.delivery_tag);
        assert_eq!(
            back.eta.unwrap().timestamp_micros(),
            m.eta.unwrap().timestamp_micros(),
            "ETA keeps microseconds"
        );
    }

    #[test]
    fn hostile_time_limits_and_retries_are_refused_with_the_task_id() {
        let m = msg();
        for bad in [
            json!([-1, null]),
            json!([1e300, null]),
            json!([null, -0.5]),
            json!(["10", null]),
            json!([1, 2, 3]),
            json!(7),
        ] {
            let mut env: Value = serde_json::from_str(&m.to_envelope()).unwrap();
            env["headers"]["timelimit"] = bad.clone();
            let e = TaskMessage::from_envelope(env.to_string().as_bytes(), "celery").unwrap_err();
            assert_eq!(e.task_id.as_deref(), Some(m.id.as_str()), "{bad}");
            assert!(e.reason.contains("timelimit"), "{bad}: {}", e.reason);
        }
        let mut env: Value = serde_json::from_str(&m.to_envelope()).unwrap();
        env["headers"]["timelimit"] = json!([3600, 60.5]);
        env["headers"]["retries"] = json!(3);
        let ok = TaskMessage::from_envelope(env.to_string().as_bytes(), "celery").unwrap();
        assert_eq!(
            ok.timelimit,
            TimeLimits {
                hard: Some(3600.0),
                soft: Some(60.5)
            }
        );
        assert_eq!(ok.retries, 3);
        env["headers"]["retries"] = json!(-1);
        assert!(TaskMessage::from_envelope(env.to_string().as_bytes(), "celery").is_err());
        env["headers"]["retries"] = json!(u64::MAX);
        assert!(TaskMessage::from_envelope(env.to_string().as_bytes(), "celery").is_err());
    }

    #[test]
    fn envelope_has_the_fields_celery_requires() {
        let env: Value = serde_json::from_str(&msg().to_envelope()).unwrap();
        assert_eq!(env["content-type"], "application/json");
        assert_eq!(env["properties"]["body_encoding"], "base64");
        assert_eq!(env["properties"]["delivery_info"]["routing_key"], "celery");
        assert!(env["properties"]["delivery_tag"].is_string());
        assert_eq!(env["headers"]["argsrepr"], "(2, 'x')");
        assert_eq!(env["headers"]["kwargsrepr"], "{'seconds': 1.5}");
        let body = B64.decode(env["body"].as_str().unwrap()).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body[0], json!([2, "x"]));
        assert_eq!(body[2]["chain"], Value::Null);
    }

    #[test]
    fn decodes_the_captured_python_envelope() {
        let raw = r#"{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "11111111-1111-1111-1111-111111111111", "shadow": null, "eta": null, "expires": null, "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "11111111-1111-1111-1111-111111111111", "parent_id": null, "argsrepr": "(2, 3)", "kwargsrepr": "{}", "origin": "gen10233@vm", "ignore_result": null, "replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}}, "properties": {"correlation_id": "11111111-1111-1111-1111-111111111111", "reply_to": "f68550c3-e817-3b75-b5d2-9ff285a5c6fa", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "b2f69138-37d4-40fd-afab-f38d818d4a63"}}"#;
        let m = TaskMessage::from_envelope(raw.as_bytes(), "celery").unwrap();
        assert_eq!(m.task, "tasks.add");
        assert_eq!(m.args, vec![json!(2), json!(3)]);
        assert!(m.kwargs.is_empty());
        assert_eq!(m.timelimit, TimeLimits::default());
        assert_eq!(m.delivery_tag, "b2f69138-37d4-40fd-afab-f38d818d4a63");
    }

    /// The typed read and the JSON-tree read give the same message or the same error, and the
    /// typed read is the one that runs for every well-formed envelope.
    #[test]
    fn the_typed_read_and_the_tree_read_agree() {
        let slow = |raw: &str| {
            Fields::from_tree(raw.as_bytes()).and_then(|f| TaskMessage::from_fields(f, "q"))
        };
        let ours = msg().to_envelope();
        let mut redelivered = msg();
        redelivered.redelivered = true;
        let python = r#"{"body": "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVsbCwgImNob3JkIjogbnVsbH1d", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "tasks.add", "id": "p1", "shadow": null, "eta": null, "expires": null, "group": "g", "retries": 3, "timelimit": [10, 5.5], "root_id": "r", "parent_id": "pa", "argsrepr": "(2, 3)", "origin": "gen@vm", "ignore_result": true, "stamps": {"x": [1, {"y": null}]}}, "properties": {"correlation_id": "p1", "reply_to": "f6", "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "videos", "redelivered": true}, "priority": 12, "body_encoding": "base64", "delivery_tag": 42}}"#;
        let typed = [
            ours.clone(),
            redelivered.to_envelope(),
            python.to_owned(),
            format!(" \n\t{ours}"),
            r#"{"body": "[[], {}, {}]", "headers": null, "properties": null}"#.to_owned(),
            r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "i", "eta": null, "timelimit": null, "retries": null}, "properties": {"delivery_tag": "x", "delivery_info": "not an object", "priority": "high"}}"#.to_owned(),
            r#"{"body": "{\"task\": \"t.v1\", \"id\": \"v1\", \"args\": [1]}", "properties": {"delivery_tag": "d"}}"#.to_owned(),
            r#"{"body": 5, "headers": {"task": "t", "id": "i"}, "properties": {"delivery_tag": "x"}}"#.to_owned(),
            r#"{"body": "[[], {}, {}]", "content-type": "application/x-yaml", "headers": {"task": "t", "id": "i"}, "properties": {"delivery_tag": "x"}}"#.to_owned(),
            r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "i", "compression": "zlib"}, "properties": {"delivery_tag": "x"}}"#.to_owned(),
            r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "i", "timelimit": [-1, null]}, "properties": {"delivery_tag": "x"}}"#.to_owned(),
            r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "i", "retries": -2}, "properties": {"delivery_tag": ""}}"#.to_owned(),
        ];
        // `raw` takes the typed read (or not), and decodes as the tree read does.
        let agree = |raw: &str, typed: bool| {
            let fits = serde_json::from_slice::<Obj<Fields>>(raw.as_bytes()).is_ok();
            assert_eq!(fits, typed, "typed read of {raw}");
            assert_eq!(
                TaskMessage::from_envelope(raw.as_bytes(), "q"),
                slow(raw),
                "{raw}"
            );
        };
        for raw in &typed {
            agree(raw, true);
        }
        let tree_only = [
            "not json",
            "[1, 2]",
            "[\"body\", null, null, null]",
            "{\"headers\": [\"t\", \"i\"]}",
            "{\"headers\": {}, \"properties\": 7}",
            r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "first", "id": "last"}, "properties": {"delivery_tag": "x"}}"#,
            r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "i"}, "properties": {"delivery_tag": "x"}} trailing"#,
        ];
        for raw in tree_only {
            agree(raw, false);
        }
        // A duplicated key: the later one wins, as before.
        let m = TaskMessage::from_envelope(tree_only[5].as_bytes(), "q").unwrap();
        assert_eq!(m.id, "last");
        let e = TaskMessage::from_envelope(tree_only[3].as_bytes(), "q").unwrap_err();
        assert_eq!(e.reason, "envelope headers are not an object");
        let e = TaskMessage::from_envelope(tree_only[2].as_bytes(), "q").unwrap_err();
        assert_eq!(e.reason, "envelope is not a JSON object");
    }

    #[test]
    fn raw_json_body_and_naive_eta_are_accepted() {
        let raw = r#"{"body": "[[1], {}, {}]", "content-type": "application/json",
            "headers": {"task": "t", "id": "abc", "eta": "2026-01-01T10:00:00"},
            "properties": {"delivery_tag": "d1", "delivery_info": {"exchange": "", "routing_key": "q"}}}"#;
        let m = TaskMessage::from_envelope(raw.as_bytes(), "x").unwrap();
        assert_eq!(m.queue, "q");
        assert_eq!(
            format_iso(m.eta.unwrap()),
            "2026-01-01T10:00:00.000000+00:00"
        );
    }

    #[test]
    fn malformed_envelopes_say_what_is_wrong_and_keep_the_id() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("not json", "not valid JSON", None),
            ("[1,2]", "not a JSON object", None),
            (
                r#"{"body": "!!!", "headers": {"task": "t", "id": "i1"}, "properties": {"body_encoding": "base64", "delivery_tag": "x"}}"#,
                "base64",
                Some("i1"),
            ),
            (
                r#"{"body": "[1, {}, {}]", "headers": {"task": "t", "id": "i2"}, "properties": {"delivery_tag": "x"}}"#,
                "args are not a list",
                Some("i2"),
            ),
            (
                r#"{"body": "[[], [], {}]", "headers": {"task": "t", "id": "i3"}, "properties": {"delivery_tag": "x"}}"#,
                "kwargs are not an object",
                Some("i3"),
            ),
            (
                r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "i4"}, "properties": {}}"#,
                "delivery_tag",
                Some("i4"),
            ),
            (
                r#"{"body": "[[], {}, {}]", "content-type": "application/x-python-serialize", "headers": {"task": "t", "id": "i5"}, "properties": {"delivery_tag": "x"}}"#,
                "not accepted",
                Some("i5"),
            ),
            (
                r#"{"body": "[[], {}, {}]", "headers": {"task": "t", "id": "i6", "eta": "yesterday"}, "properties": {"delivery_tag": "x"}}"#,
                "eta",
                Some("i6"),
            ),
        ];
        for (raw, needle, id) in cases {
            let err = TaskMessage::from_envelope(raw.as_bytes(), "q").unwrap_err();
            assert!(err.reason.contains(needle), "{raw}: {err}");
            assert_eq!(err.task_id.as_deref(), *id, "{raw}");
        }
    }

    /// A decode error quotes what it refuses, cut: a 1 MB `eta` string must not become a 1 MB
    /// FAILURE, dead-letter reason and log line; an id that is not one is not reported against.
    #[test]
    fn decode_errors_are_cut_and_name_only_valid_ids() {
        let long = "9".repeat(1 << 20);
        let raw = format!(
            r#"{{"body": "[[], {{}}, {{}}]", "headers": {{"task": "{long}", "id": "i7", "eta": "{long}"}}, "properties": {{"delivery_tag": "x"}}}}"#
        );
        let err = TaskMessage::from_envelope(raw.as_bytes(), "q").unwrap_err();
        assert!(err.reason.starts_with("eta: "), "{}", &err.reason[..40]);
        assert!(err.reason.len() < 1100, "{} bytes", err.reason.len());
        assert!(err.reason.ends_with("more bytes)"));
        assert_eq!(err.task_id.as_deref(), Some("i7"));
        assert!(err.task_name.is_some_and(|n| n.len() < 300));
        let raw = format!(
            r#"{{"body": "[[], {{}}, {{}}]", "headers": {{"task": "t", "id": "{long}"}}, "properties": {{"delivery_tag": "x"}}}}"#
        );
        let err = TaskMessage::from_envelope(raw.as_bytes(), "q").unwrap_err();
        assert_eq!(err.task_id, None, "no result key of 1 MB");
        // An id Celery takes and we refuse still names the refusal: its caller's get() ends.
        for (id, kept) in [("order 17", true), ("ordre-été", true), ("a\\nb", false)] {
            let raw = format!(
                r#"{{"body": "[[], {{}}, {{}}]", "headers": {{"task": "t", "id": "{id}"}}, "properties": {{"delivery_tag": "x"}}}}"#
            );
            let err = TaskMessage::from_envelope(raw.as_bytes(), "q").unwrap_err();
            assert!(err.reason.contains("task id"), "{id}: {}", err.reason);
            assert_eq!(err.task_id.is_some(), kept, "{id}");
        }
        // Cut at a character boundary.
        assert_eq!(super::cut("ééé", 3), "é… (4 more bytes)");
    }

    #[test]
    fn protocol_v1_body_is_understood() {
        let body =
            B64.encode(br#"{"task": "t.v1", "id": "v1id", "args": [1], "kwargs": {"a": 2}}"#);
        let raw = format!(
            r#"{{"body": "{body}", "headers": {{}}, "properties": {{"body_encoding": "base64", "delivery_tag": "d"}}}}"#
        );
        let m = TaskMessage::from_envelope(raw.as_bytes(), "q").unwrap();
        assert_eq!((m.task.as_str(), m.id.as_str()), ("t.v1", "v1id"));
        assert_eq!(m.kwargs["a"], 2);
    }

    #[test]
    fn bad_send_options_are_rejected() {
        let bad = |o: SendOptions| TaskMessage::new("t", vec![], Map::new(), "q", o).unwrap_err();
        bad(SendOptions {
            priority: Some(10),
            ..Default::default()
        });
        bad(SendOptions {
            countdown: Some(-1.0),
            ..Default::default()
        });
        bad(SendOptions {
            queue: Some("bad queue".into()),
            ..Default::default()
        });
        bad(SendOptions {
            task_id: Some("has space".into()),
            ..Default::default()
        });
        bad(SendOptions {
            timelimit: TimeLimits {
                hard: Some(0.0),
                soft: None,
            },
            ..Default::default()
        });
    }

    #[test]
    fn a_countdown_beyond_the_clock_is_refused_not_a_panic() {
        for secs in [1e13, 1e20, 1e300] {
            let e = TaskMessage::new(
                "t",
                vec![],
                Map::new(),
                "q",
                SendOptions {
                    countdown: Some(secs),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains("too far"), "{secs}: {e}");
        }
    }

    /// A time limit of 0 on the wire is Celery's "none of the message's own".
    #[test]
    fn a_zero_time_limit_means_the_tasks_default() {
        let m = msg();
        let mut env: Value = serde_json::from_str(&m.to_envelope()).unwrap();
        env["headers"]["timelimit"] = json!([0, 0.0]);
        let read = TaskMessage::from_envelope(env.to_string().as_bytes(), "celery").unwrap();
        assert_eq!(read.timelimit, TimeLimits::default());
    }

    /// Through a named exchange the routing key is not a queue: the message belongs to the
    /// queue it was read from (where a retry goes back).
    #[test]
    fn the_queue_is_the_one_read_from_unless_routed_directly() {
        let m = msg();
        let mut env: Value = serde_json::from_str(&m.to_envelope()).unwrap();
        env["properties"]["delivery_info"] =
            json!({"exchange": "media", "routing_key": "video.compress"});
        let read = TaskMessage::from_envelope(env.to_string().as_bytes(), "videos").unwrap();
        assert_eq!(read.queue, "videos");
        env["properties"]["delivery_info"] = json!({"exchange": "", "routing_key": "videos"});
        let read = TaskMessage::from_envelope(env.to_string().as_bytes(), "other").unwrap();
        assert_eq!(read.queue, "videos");
    }

    /// Links, error links, chains and chords would be dropped by a worker that only runs the
    /// task: such a message fails, with a reason, instead of leaving `.get()` waiting.
    #[test]
    fn workflow_messages_fail_visibly() {
        let m = msg();
        let env: Value = serde_json::from_str(&m.to_envelope()).unwrap();
        let body = |embed: Value| {
            let mut e = env.clone();
            e["body"] = json!(B64.encode(json!([[1], {}, embed]).to_string()));
            e.to_string()
        };
        let sig = json!({"task": "tasks.next", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false});
        for (key, v) in [
            ("callbacks", json!([sig])),
            ("errbacks", json!([sig])),
            ("chain", json!([sig])),
            ("chord", sig.clone()),
        ] {
            let mut embed =
                json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null});
            embed[key] = v;
            let e = TaskMessage::from_envelope(body(embed).as_bytes(), "celery").unwrap_err();
            assert_eq!(e.task_id.as_deref(), Some(m.id.as_str()));
            assert!(
                e.reason.contains("workflows are not supported"),
                "{key}: {}",
                e.reason
            );
            assert!(e.reason.contains(key), "{key}: {}", e.reason);
        }
        let plain = json!({"callbacks": [], "errbacks": null, "chain": [], "chord": null});
        assert!(TaskMessage::from_envelope(body(plain).as_bytes(), "celery").is_ok());
    }

    #[test]
    fn retried_message_keeps_the_id() {
        let m = msg();
        let r = m.retried(Utc::now());
        assert_eq!(r.id, m.id);
        assert_eq!(r.retries, 1);
        assert_ne!(r.delivery_tag, m.delivery_tag);
        assert_eq!(r.parent_id.as_deref(), Some(m.id.as_str()));
    }
}
