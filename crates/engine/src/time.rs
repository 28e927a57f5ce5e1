//! Timestamps as Celery writes them: ISO-8601 with microseconds and a `+00:00` offset.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Formats like Python's `datetime.isoformat()` on an aware UTC value.
pub fn format_iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// Parses ISO-8601 with an offset, or a naive value (taken as UTC, as Celery does by default).
pub fn parse_iso(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc());
        }
    }
    Err(format!("{s:?} is not an ISO-8601 date-time"))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The instant `ms` milliseconds after the Unix epoch.
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python() {
        let t = parse_iso("2026-11-29T07:58:50.099633+00:00").unwrap();
        assert_eq!(format_iso(t), "2026-11-29T07:58:50.099633+00:00");
    }

    #[test]
    fn naive_and_offset_values_parse() {
        assert_eq!(
            format_iso(parse_iso("2026-11-29T08:58:50+01:00").unwrap()),
            "2026-11-29T07:58:50.000000+00:00"
        );
        assert!(parse_iso("2026-11-29 07:58:50.5").is_ok());
        assert!(parse_iso("tomorrow").is_err());
    }
}
