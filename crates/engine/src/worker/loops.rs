//! The worker's loops: fetch (claims and spawns one supervisor per delivery) and the
//! background loops (lease renewal, revocations, heartbeat, maintenance).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::run::RunControl;
use super::{RunKey, Shared, Shutdown, process, run_key};
use crate::backend::{ClaimRequest, LeaseRef, WorkerReport};
use crate::task::CancelReason;

/// How often a worker polls a broker that pushes wake-ups (a safety net only).
const PUSHED_POLL: Duration = Duration::from_secs(5);

fn idle_wait(s: &Shared) -> Duration {
    if s.broker.pushes_wakeups() {
        s.cfg.idle_wait.max(PUSHED_POLL)
    } else {
        s.cfg.idle_wait
    }
}

/// The rhythm of a background loop: the first [`Period::next`] answers at once, each later one
/// after `every`; `false` once `stop` fires.
struct Period {
    every: Duration,
    stop: CancellationToken,
    first: bool,
}

impl Period {
    fn new(every: Duration, stop: CancellationToken) -> Self {
        Self {
            every,
            stop,
            first: true,
        }
    }

    async fn next(&mut self) -> bool {
        if std::mem::take(&mut self.first) {
            return !self.stop.is_cancelled();
        }
        tokio::select! {
            _ = tokio::time::sleep(self.every) => true,
            _ = self.stop.cancelled() => false,
        }
    }
}

/// How many messages one claim asks for at most, and how many must be free before the worker
/// claims while its run slots are still fed: half and a quarter of the window. With half the
/// window per claim, the next claim runs in Redis while the worker runs and stores the
/// previous half (measured: +9 % drain at `-c 8`); with the quarter, one finished run does not
/// cost a claim of one message.
fn claim_sizes(capacity: usize) -> (usize, usize) {
    (capacity.div_ceil(2), (capacity / 4).max(1))
}

/// How many messages the fetch loop may claim now, or `None` to wait for a run to end.
///
/// `held` counts messages waiting for a slot or running: the window (`capacity`) bounds it.
/// With more held than run slots, a run that ends starts a prefetched one, so the loop waits
/// until `low_water` of the window is free rather than claim one message per finished run.
/// `settling` counts ended runs whose state is being stored: a whole window of them (a slow
/// result backend) stops the claims too.
fn claim_room(
    capacity: usize,
    concurrency: usize,
    (per_claim, low_water): (usize, usize),
    held: usize,
    settling: usize,
) -> Option<usize> {
    let free = capacity.saturating_sub(held);
    if free == 0 || settling >= capacity || (free < low_water && held > concurrency) {
        return None;
    }
    Some(free.min(per_claim))
}

/// Claims while the window has room, until a graceful shutdown; one spawned supervisor per
/// delivery.
pub(super) async fn fetch_loop(s: &Arc<Shared>, shutdown: &Shutdown, runs: &mut JoinSet<()>) {
    let capacity = s.cfg.concurrency * s.cfg.prefetch_multiplier.max(1);
    let mut backoff = Duration::from_millis(100);
    let sizes = claim_sizes(capacity);
    loop {
        while runs.try_join_next().is_some() {}
        if shutdown.graceful.is_cancelled() {
            return;
        }
        let room = claim_room(
            capacity,
            s.cfg.concurrency,
            sizes,
            s.held.load(Ordering::SeqCst),
            s.settling.load(Ordering::SeqCst),
        );
        let Some(max) = room else {
            let freed = s.freed.notified();
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.graceful.cancelled() => return,
            }
            continue;
        };
        let req = ClaimRequest {
            queues: s.cfg.queues.clone(),
            max,
            worker: s.cfg.node.clone(),
            lease: s.cfg.lease,
        };
        let asked_at = Instant::now();
        match s.broker.claim(&req).await {
            Ok(batch) => {
                backoff = Duration::from_millis(100);
                // Nothing due, or (with pushed wake-ups) a short batch that took everything due:
                // claiming again before a wake-up would only come back empty (one wasted round
                // trip per task when tasks arrive one by one).
                let wait = batch.is_empty() || (batch.len() < req.max && s.broker.pushes_wakeups());
                let claimed_at = Instant::now();
                for d in batch {
                    spawn_run(s, runs, d, (asked_at, claimed_at));
                }
                if wait {
                    tokio::select! {
                        _ = s.broker.wait_for_work(&s.cfg.queues, idle_wait(s)) => {}
                        _ = shutdown.graceful.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "Claim failed.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.graceful.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Holds a delivery and spawns its supervisor, which releases the hold when it ends.
fn spawn_run(
    s: &Arc<Shared>,
    runs: &mut JoinSet<()>,
    mut d: crate::backend::Delivery,
    (asked_at, claimed_at): (Instant, Instant),
) {
    let ctrl = Arc::new(RunControl::default());
    s.held.fetch_add(1, Ordering::SeqCst);
    s.register(&mut d, &ctrl, asked_at);
    let hold = Hold {
        s: s.clone(),
        key: run_key(&d.lease),
        ctrl: ctrl.clone(),
    };
    let s = s.clone();
    runs.spawn(async move {
        process(&s, d, &ctrl, claimed_at).await;
        drop(hold);
    });
}

/// A delivery's place in the worker: its `runs` entry and its count in the window, given up
/// when the supervisor ends, or unwinds (a panic outside the handler, in its arguments'
/// decoding say, would otherwise keep the lease renewed and the slot taken forever; the
/// message then comes back after its lease).
struct Hold {
    s: Arc<Shared>,
    key: RunKey,
    ctrl: Arc<RunControl>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Ok(mut runs) = self.s.runs.lock() {
            runs.remove(&self.key);
        }
        self.s.release(&self.ctrl);
    }
}

/// Extends held leases every third of a lease; a lost lease kills its run. A renewal that
/// fails or does not answer (each waits at most a third of a lease) is tried again at once;
/// when none succeeds, a run is killed as its lease runs out: at the lease's end counted from when the last renewal that succeeded was sent (or its
/// claim, if later), on a timer of its own, not when a hung call gives up (the broker's reply
/// timeout, 10 s, let a partitioned worker run on for seconds after another took the task).
pub(super) async fn renew_loop(s: Arc<Shared>, stop: CancellationToken) {
    let every = (s.cfg.lease / 3).max(Duration::from_millis(50));
    let mut renewed_at = Instant::now();
    let mut period = Period::new(every, stop.clone());
    // After a renewal that failed or did not answer, the next is tried at once (a failure
    // after a short pause), not a period later: one slow answer must not cost every run.
    let mut retry: Option<Duration> = None;
    loop {
        let go = match retry.take() {
            Some(pause) => tokio::select! {
                () = tokio::time::sleep(pause) => true,
                () = tokio::time::sleep_until(lease_end(&s, renewed_at)) => true,
                () = stop.cancelled() => false,
            },
            None => tokio::select! {
                more = period.next() => more,
                () = tokio::time::sleep_until(lease_end(&s, renewed_at)) => !stop.is_cancelled(),
            },
        };
        if !go {
            return;
        }
        kill_expired(&s, renewed_at);
        let leases: Vec<LeaseRef> = s
            .runs
            .lock()
            .expect("runs lock")
            .values()
            .map(|r| r.lease.clone())
            .collect();
        if leases.is_empty() {
            renewed_at = Instant::now();
            continue;
        }
        let sent = Instant::now();
        let answer = tokio::select! {
            r = tokio::time::timeout(every, s.broker.renew(&leases, s.cfg.lease)) => r.ok(),
            () = tokio::time::sleep_until(lease_end(&s, renewed_at)) => None,
        };
        match answer {
            Some(Ok(lost)) => {
                renewed_at = sent;
                let runs = s.runs.lock().expect("runs lock");
                for l in lost {
                    // The run of that epoch only: the message may be held again at a newer one.
                    if let Some(r) = runs.get(&run_key(&l)) {
                        warn!(task_id = %l.task_id, "Lease lost; stopping the run.");
                        r.ctrl.kill(CancelReason::LeaseLost);
                    }
                }
            }
            Some(Err(e)) => {
                warn!(error = %e, "Lease renewal failed.");
                kill_expired(&s, renewed_at);
                retry = Some(Duration::from_millis(100).min(every));
            }
            None => {
                warn!("Lease renewal did not answer in time.");
                kill_expired(&s, renewed_at);
                retry = Some(Duration::ZERO);
            }
        }
    }
}

/// When the first held lease of a run not yet killed ends, as far as this worker knows: a
/// lease after its claim or the last renewal that succeeded, whichever is later. Far ahead
/// with nothing held (a killed run may stay held while blocking work of it finishes).
fn lease_end(s: &Shared, renewed_at: Instant) -> Instant {
    s.runs
        .lock()
        .expect("runs lock")
        .values()
        .filter(|r| r.ctrl.killed().is_none())
        .map(|r| r.leased_at.max(renewed_at) + s.cfg.lease)
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400))
}

/// Kills the runs whose lease has ended (see [`lease_end`]): another worker may run them now.
fn kill_expired(s: &Shared, renewed_at: Instant) {
    let now = Instant::now();
    for r in s.runs.lock().expect("runs lock").values() {
        if r.ctrl.killed().is_none() && r.leased_at.max(renewed_at) + s.cfg.lease <= now {
            warn!(task_id = %r.lease.task_id, "Lease ran out without a renewal; stopping the run.");
            r.ctrl.kill(CancelReason::LeaseLost);
        }
    }
}

/// The revocation log's current end, read until the broker answers; `None` when `stop` fires
/// first. No task is claimed before it is known.
pub(super) async fn revocation_cursor(s: &Shared, stop: &CancellationToken) -> Option<u64> {
    let mut failures = 0u32;
    loop {
        let read = tokio::select! {
            r = s.broker.revocations_since(u64::MAX) => r,
            _ = stop.cancelled() => return None,
        };
        match read {
            Ok((_, c)) => return Some(c),
            Err(e) => {
                failures += 1;
                if failures % 30 == 1 {
                    warn!(error = %e, failures, "Cannot read the revocation log; no task is claimed until it can be read.");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }
}

/// Follows the broker's revocation log from `cursor` and cancels matching runs: at once with
/// `terminate`, else cooperatively and hard after `revoke_grace`. A read that returned
/// revocations is followed by another at once (a backlog is read in the broker's pages without
/// waiting for a wake-up between them).
pub(super) async fn control_loop(s: Arc<Shared>, mut cursor: u64, stop: CancellationToken) {
    // Revocations are pushed by some brokers; the poll is then only a safety net.
    let poll = if s.broker.pushes_wakeups() {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(250)
    };
    let mut more = false;
    loop {
        if !more {
            tokio::select! {
                _ = s.broker.wait_for_work(&[], poll) => {}
                _ = stop.cancelled() => return,
            }
        } else if stop.is_cancelled() {
            return;
        }
        let (revs, next) = match s.broker.revocations_since(cursor).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "Reading revocations failed.");
                more = false;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        more = !revs.is_empty();
        cursor = next;
        for rev in revs {
            for ctrl in s.controls_of(&rev) {
                info!(task_id = %rev.task_id, terminate = rev.terminate, "Cancelling revoked task.");
                if rev.terminate {
                    ctrl.kill(CancelReason::Revoked);
                } else {
                    ctrl.cancel(CancelReason::Revoked);
                    let grace = s.cfg.revoke_grace;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        ctrl.kill(CancelReason::Revoked);
                    });
                }
            }
        }
    }
}

/// The worker's current self-description.
pub(super) fn report(s: &Shared) -> WorkerReport {
    let active = s
        .runs
        .lock()
        .expect("runs lock")
        .iter()
        .filter_map(|((tag, _), r)| {
            let a = r.ctrl.active.lock().expect("active lock");
            a.as_ref().map(|a| a.render(tag))
        })
        .collect();
    WorkerReport {
        node: s.cfg.node.clone(),
        hostname: crate::hostname(),
        pid: std::process::id(),
        queues: s.cfg.queues.clone(),
        concurrency: s.cfg.concurrency,
        prefetch_count: s.cfg.concurrency * s.cfg.prefetch_multiplier.max(1),
        registered: s.registry.names(),
        active,
        total: s.totals.lock().expect("totals lock").clone(),
        started_at: s.started_at,
        heartbeat_at: crate::time::now(),
        sw_ident: "afterview".into(),
        sw_ver: env!("CARGO_PKG_VERSION").into(),
        freq: s.cfg.heartbeat.as_secs_f64(),
    }
}

/// A full heartbeat every period; sooner (at most every 250 ms) when the set of running tasks
/// or the finished count changed, so `inspect` is fresh without a write per task at high rates.
pub(super) async fn heartbeat_loop(s: Arc<Shared>, stop: CancellationToken) {
    let mut last = Instant::now() - s.cfg.heartbeat;
    let mut last_active: Vec<RunKey> = vec![];
    let mut last_done = 0u64;
    let period = Duration::from_millis(250).min(s.cfg.heartbeat);
    let mut period = Period::new(period, stop);
    while period.next().await {
        let mut active: Vec<RunKey> = s
            .runs
            .lock()
            .expect("runs lock")
            .iter()
            .filter(|(_, r)| r.ctrl.active.lock().expect("active lock").is_some())
            .map(|(key, _)| key.clone())
            .collect();
        active.sort();
        let done: u64 = s.totals.lock().expect("totals lock").values().sum();
        if last.elapsed() >= s.cfg.heartbeat || active != last_active || done != last_done {
            last_done = done;
            last = Instant::now();
            last_active = active;
            if let Err(e) = s.broker.heartbeat(&report(&s)).await {
                warn!(error = %e, "Heartbeat failed.");
            }
        }
    }
}

/// How often expired leases are swept back to their queues: a fifth of the lease, so a dead
/// worker's task is back within 1.2 leases, between 100 ms and 2 s.
pub(super) fn requeue_interval(lease: Duration) -> Duration {
    (lease / 5).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Returns expired leases to their queues; removes expired results, revocations and dead
/// letters every `cleanup_interval`.
pub(super) async fn maintenance_loop(s: Arc<Shared>, stop: CancellationToken) {
    let mut last_cleanup = Instant::now() - s.cfg.cleanup_interval;
    let mut period = Period::new(requeue_interval(s.cfg.lease), stop);
    while period.next().await {
        match s.broker.requeue_expired().await {
            Ok(0) => {}
            Ok(n) => info!(
                count = n,
                "Messages with expired leases returned to their queues."
            ),
            Err(e) => warn!(error = %e, "Requeueing expired leases failed."),
        }
        if last_cleanup.elapsed() < s.cfg.cleanup_interval {
            continue;
        }
        last_cleanup = Instant::now();
        match s.backend.cleanup().await {
            Ok(n) if n > 0 => debug!(count = n, "Expired results removed."),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "Result cleanup failed."),
        }
        if let Err(e) = s.broker.cleanup().await {
            warn!(error = %e, "Broker cleanup failed.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_leases_are_swept_every_fifth_of_a_lease_within_bounds() {
        assert_eq!(
            requeue_interval(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(
            requeue_interval(Duration::from_secs(1)),
            Duration::from_millis(200)
        );
        assert_eq!(
            requeue_interval(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        assert_eq!(
            requeue_interval(Duration::from_secs(600)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_window_counts_waiting_and_running_messages_not_settling_ones() {
        // -c 8, prefetch 4: a window of 32, claims of at most 16, refills of at least 8.
        let room = |held, settling| claim_room(32, 8, claim_sizes(32), held, settling);
        assert_eq!(room(0, 0), Some(16));
        assert_eq!(room(20, 0), Some(12));
        // A full window waits; so does a nearly full one while prefetched messages wait.
        assert_eq!(room(32, 0), None);
        assert_eq!(room(27, 0), None);
        // With no more held than run slots, any room is claimed (slots would idle).
        assert_eq!(claim_room(4, 4, claim_sizes(4), 4, 0), None);
        assert_eq!(claim_room(4, 4, claim_sizes(4), 3, 0), Some(1));
        // Settling messages leave the window: 16 results being stored do not stop a claim...
        assert_eq!(room(8, 16), Some(16));
        // ...but a whole window of them does (the result backend is not keeping up).
        assert_eq!(room(0, 31), Some(16));
        assert_eq!(room(0, 32), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_answers_at_once_then_every_period_until_stopped() {
        let stop = CancellationToken::new();
        let t0 = Instant::now();
        let mut ticks = vec![];
        let mut period = Period::new(Duration::from_secs(1), stop.clone());
        while period.next().await {
            ticks.push(t0.elapsed().as_secs());
            if ticks.len() == 3 {
                stop.cancel();
            }
        }
        assert_eq!(ticks, [0, 1, 2]);
    }
}
