//! kombu envelopes for the control plane: pidbox commands and replies, and monitoring events
//! in the shapes Celery 5.x and kombu 5.x write them (`redis_interop.rs` in the binary's tests
//! checks them against the real `celery` CLI and Flower).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

/// kombu's separator in binding members and priority queue names.
pub(crate) const SEP: &str = "\x06\x16";

/// A kombu envelope around `body` (JSON, base64-encoded as kombu writes it).
pub(crate) fn envelope(
    body: &Value,
    headers: Value,
    exchange: &str,
    routing_key: &str,
    delivery_mode: u8,
) -> String {
    json!({
        "body": B64.encode(body.to_string()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "delivery_mode": delivery_mode,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": uuid::Uuid::new_v4().to_string(),
        },
    })
    .to_string()
}

/// The decoded `(headers, body)` of an envelope.
pub(crate) fn open(raw: &[u8]) -> Option<(Value, Value)> {
    let env: Value = serde_json::from_slice(raw).ok()?;
    let headers = env.get("headers").cloned().unwrap_or(Value::Null);
    let body = env.get("body")?.as_str()?;
    let encoding = env
        .pointer("/properties/body_encoding")
        .and_then(Value::as_str)
        .unwrap_or("utf-8");
    let bytes = if encoding == "base64" {
        B64.decode(body.trim()).ok()?
    } else {
        body.as_bytes().to_vec()
    };
    Some((headers, serde_json::from_slice(&bytes).ok()?))
}

/// Seconds west of UTC / 3600, as Celery's `utcoffset`.
fn utcoffset() -> f64 {
    let offset = chrono::Local::now().offset().local_minus_utc();
    -(offset as f64) / 3600.0
}

/// The fields every event carries.
pub(crate) fn event(kind: &str, hostname: &str, clock: u64, extra: Value) -> Value {
    let mut m = Map::new();
    m.insert("hostname".into(), json!(hostname));
    m.insert("utcoffset".into(), json!(utcoffset()));
    m.insert("pid".into(), json!(std::process::id()));
    m.insert("clock".into(), json!(clock));
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    m.insert(
        "timestamp".into(),
        json!(chrono::Utc::now().timestamp_micros() as f64 / 1e6),
    );
    m.insert("type".into(), json!(kind));
    Value::Object(m)
}

/// Python-style repr of an exception from our exception dict.
pub(crate) fn exception_repr(result: &Value) -> String {
    let t = result
        .get("exc_type")
        .and_then(Value::as_str)
        .unwrap_or("Exception");
    let msg = match result.get("exc_message") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    format!("{t}('{}')", msg.replace('\'', "\\'"))
}
