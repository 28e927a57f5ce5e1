//! The engine's clock, and timestamps as Celery writes them: ISO-8601 with microseconds and a
//! `+00:00` offset.
//!
//! Every wall-clock reading of the engine and its backends goes through [`now`] (or
//! [`now_ms`]). It is the system clock, except on a thread that called [`follow_tokio_clock`]:
//! there it advances with tokio's clock, so a test on paused time (`start_paused`) moves
//! leases, ETAs, expiries and time limits together without sleeping on the wall.

use std::cell::Cell;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

thread_local! {
    /// The wall time and tokio instant this thread's clock was anchored at, when it follows
    /// tokio's clock.
    static ANCHOR: Cell<Option<(DateTime<Utc>, tokio::time::Instant)>> = const { Cell::new(None) };
}

/// Makes [`now`] on this thread follow tokio's clock from here on (for tests on paused time,
/// which run on one thread). Production code never calls it.
pub fn follow_tokio_clock() {
    ANCHOR.set(Some((Utc::now(), tokio::time::Instant::now())));
}

/// Whether this thread's clock follows tokio's (see [`follow_tokio_clock`]).
pub fn follows_tokio_clock() -> bool {
    ANCHOR.get().is_some()
}

/// The current time.
pub fn now() -> DateTime<Utc> {
    match ANCHOR.get() {
        None => Utc::now(),
        Some((wall, at)) => {
            wall + chrono::Duration::from_std(at.elapsed()).unwrap_or(chrono::TimeDelta::MAX)
        }
    }
}

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
    now().timestamp_millis()
}

/// The instant `ms` milliseconds after the Unix epoch.
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_thread_that_follows_tokio_moves_with_paused_time() {
        follow_tokio_clock();
        let t0 = now();
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!((now() - t0).num_seconds(), 3600);
    }

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
