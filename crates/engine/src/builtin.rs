//! Built-in tasks for operators and benchmarks: `afterview.noop`, `afterview.sleep`,
//! `afterview.fail`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::result::{RetryHint, TaskError};
use crate::task::{Registry, Task, TaskContext, TaskOptions};

/// Registers the built-ins.
pub fn register(r: &mut Registry) {
    r.register(Noop).register(Sleep).register(Fail);
}

/// Returns `{"args": [...], "kwargs": {...}}` exactly as given.
#[derive(Debug, Clone, Copy)]
pub struct Noop;

impl Task for Noop {
    const NAME: &'static str = "afterview.noop";
    type Args = ();
    type Output = Value;

    fn decode(_: Vec<Value>, _: Map<String, Value>) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, ctx: TaskContext, _: ()) -> Result<Value, TaskError> {
        Ok(json!({"args": ctx.raw_args(), "kwargs": ctx.raw_kwargs()}))
    }
}

/// Arguments of [`Sleep`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    /// How long to sleep.
    pub seconds: f64,
    /// Keep sleeping when cancelled (to exercise the hard time limit).
    #[serde(default)]
    pub ignore_cancel: bool,
    /// Spin on a blocking thread instead of sleeping (CPU-bound work).
    #[serde(default)]
    pub cpu: bool,
    /// Report exactly this many progress updates, evenly spaced (the last one at 100 %), as
    /// the Celery benchmark's `tasks.progress` does. Default: about ten for sleeps of 100 ms or
    /// more, none for shorter ones (such updates would be stale before anyone read them).
    #[serde(default)]
    pub progress_steps: Option<u32>,
}

/// Sleeps `seconds`, reporting progress, and stops when cancelled.
#[derive(Debug, Clone, Copy)]
pub struct Sleep;

impl Task for Sleep {
    const NAME: &'static str = "afterview.sleep";
    type Args = SleepArgs;
    type Output = Value;

    async fn run(&self, ctx: TaskContext, a: SleepArgs) -> Result<Value, TaskError> {
        if !a.seconds.is_finite() || !(0.0..=86_400.0).contains(&a.seconds) {
            return Err(TaskError::invalid_arguments(
                "seconds must be between 0 and 86400",
            ));
        }
        let total = Duration::from_secs_f64(a.seconds);
        if a.cpu {
            let ignore = a.ignore_cancel;
            return ctx
                .blocking(move |flag| {
                    let start = std::time::Instant::now();
                    let mut spins = 0u64;
                    while start.elapsed() < total {
                        if !ignore && flag.is_cancelled() {
                            return Err(TaskError::cancelled());
                        }
                        for i in 0..10_000u64 {
                            spins = spins.wrapping_add(std::hint::black_box(i));
                        }
                    }
                    Ok(json!({"slept": a.seconds, "spins": spins % 7}))
                })
                .await?;
        }
        let steps = match a.progress_steps {
            Some(n) => Some(n.min(10_000)),
            None if total < Duration::from_millis(100) => Some(0),
            None => None,
        };
        if let Some(n) = steps {
            let slice = total / n.max(1);
            for i in 1..=n.max(1) {
                nap(&ctx, slice, a.ignore_cancel).await?;
                if n > 0 {
                    ctx.progress((u64::from(i) * 100 / u64::from(n)) as u8, "Sleeping")
                        .await;
                }
            }
            return Ok(json!({"slept": a.seconds}));
        }
        let start = tokio::time::Instant::now();
        let tick = (total / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        ctx.progress(0, "Sleeping").await;
        while start.elapsed() < total {
            let left = total.saturating_sub(start.elapsed()).min(tick);
            nap(&ctx, left, a.ignore_cancel).await?;
            let pct = (start.elapsed().as_secs_f64() / a.seconds.max(1e-9) * 100.0).min(100.0);
            if pct < 100.0 {
                ctx.progress(pct as u8, "Sleeping").await;
            }
        }
        Ok(json!({"slept": a.seconds}))
    }
}

/// Sleeps `d`, or stops early with `cancelled` unless told to ignore cancellation.
async fn nap(ctx: &TaskContext, d: Duration, ignore_cancel: bool) -> Result<(), TaskError> {
    if ignore_cancel {
        tokio::time::sleep(d).await;
        return Ok(());
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = ctx.cancelled() => Err(TaskError::cancelled()),
    }
}

/// Arguments of [`Fail`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    /// The error message.
    #[serde(default = "default_fail_message")]
    pub message: String,
    /// The error code.
    #[serde(default = "default_fail_code")]
    pub code: String,
    /// Fail with a transient error, retried per the retry policy.
    #[serde(default)]
    pub transient: bool,
    /// Succeed once the task has been retried this many times (with `transient`).
    #[serde(default)]
    pub succeed_after: Option<u32>,
    /// Retry after exactly this many seconds instead of the policy's backoff.
    #[serde(default)]
    pub countdown: Option<f64>,
}

fn default_fail_message() -> String {
    "failed on purpose".into()
}
fn default_fail_code() -> String {
    "task_failed".into()
}

/// Fails with the given message (or, with `succeed_after`, until retried enough).
#[derive(Debug, Clone, Copy)]
pub struct Fail;

impl Task for Fail {
    const NAME: &'static str = "afterview.fail";
    type Args = FailArgs;
    type Output = Value;

    fn options(&self) -> TaskOptions {
        let mut o = TaskOptions::default();
        o.retry.base = Duration::from_millis(200);
        o.retry.max_delay = Duration::from_secs(10);
        o
    }

    async fn run(&self, ctx: TaskContext, a: FailArgs) -> Result<Value, TaskError> {
        if let Some(n) = a.succeed_after
            && ctx.retries() >= n
        {
            return Ok(json!({"succeeded_after_retries": ctx.retries()}));
        }
        let mut err = TaskError::new(a.code, a.message);
        if a.transient {
            err.retry = match a.countdown {
                Some(s) if s.is_finite() && s >= 0.0 => RetryHint::After(s),
                _ => RetryHint::Policy,
            };
        }
        Err(err)
    }
}

impl Registry {
    /// A registry with the built-in `afterview.*` tasks.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        register(&mut r);
        r
    }
}
