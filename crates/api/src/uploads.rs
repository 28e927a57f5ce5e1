//! How many uploads an API host receives at once. Each holds its bytes (up to
//! `--max-upload-bytes`) from the first byte until its decode, so the host takes at most
//! `slots` at once and one user at most half of them; past either, the upload is answered
//! 503 `busy` (with `Retry-After`). A refused body is read and dropped first
//! ([`UploadGate::discard`]), since a client still sending would take an answer before the end
//! of its body for a broken connection; at most [`DRAINS`] at once, for at most
//! [`DRAIN_DEADLINE`] each (the multipart reader may buffer a body without boundaries, up to the
//! route's limit), the others answered at once. A body must arrive within [`BODY_DEADLINE`]: a
//! stalled or trickling upload does not hold a slot for ever.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// How long an upload's body may take to arrive: 20 MB at about 1 Mbit/s.
pub const BODY_DEADLINE: Duration = Duration::from_secs(180);

/// Refused bodies read and dropped at once, per host.
pub const DRAINS: usize = 4;

/// How long a refused body is read before its answer goes anyway.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The host's upload slots and who holds them.
#[derive(Debug)]
pub struct UploadGate {
    slots: Arc<Semaphore>,
    drains: Arc<Semaphore>,
    per_user: usize,
    users: Mutex<HashMap<String, usize>>,
}

/// One upload's slot, given back when dropped (whatever way the request ends).
#[derive(Debug)]
pub struct UploadTurn {
    _slot: OwnedSemaphorePermit,
    gate: Arc<UploadGate>,
    user: String,
}

impl UploadGate {
    /// `slots` uploads at once, at most half of them (at least one) one user's.
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(slots)),
            drains: Arc::new(Semaphore::new(DRAINS)),
            per_user: (slots / 2).max(1),
            users: Mutex::default(),
        })
    }

    /// A slot for `user`'s upload, or `503 busy` when the host's or the user's are taken.
    pub fn enter(self: &Arc<Self>, user: &str) -> Result<UploadTurn, ApiError> {
        let busy = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many photos are being received; retry shortly",
            )
        };
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let held = users.get(user).copied().unwrap_or(0);
        if held >= self.per_user {
            return Err(busy());
        }
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| busy())?;
        users.insert(user.to_owned(), held + 1);
        Ok(UploadTurn {
            _slot: slot,
            gate: self.clone(),
            user: user.to_owned(),
        })
    }

    /// Reads a refused upload's body to its end (for at most [`DRAIN_DEADLINE`], at most
    /// [`DRAINS`] at once; else not at all) and drops it, so that its answer reaches a client
    /// still sending it.
    pub(crate) async fn discard(&self, mut mp: axum::extract::Multipart) {
        let Ok(_drain) = self.drains.clone().try_acquire_owned() else {
            return;
        };
        let drain = async {
            while let Ok(Some(mut field)) = mp.next_field().await {
                while let Ok(Some(_)) = field.chunk().await {}
            }
        };
        let _ = tokio::time::timeout(DRAIN_DEADLINE, drain).await;
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.slots.available_permits()
    }
}

impl Drop for UploadTurn {
    fn drop(&mut self) {
        let mut users = self.gate.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A multipart upload whose body never ends (a client that stalls).
    async fn stalled() -> axum::extract::Multipart {
        use axum::extract::FromRequest;
        let body = axum::body::Body::from_stream(futures_util::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >());
        let req = axum::http::Request::post("/api/images")
            .header("content-type", "multipart/form-data; boundary=XX")
            .body(body)
            .unwrap();
        axum::extract::Multipart::from_request(req, &())
            .await
            .unwrap()
    }

    /// Refused bodies are read at most `DRAINS` at once: the next is answered at once.
    #[tokio::test(start_paused = true)]
    async fn refused_bodies_are_drained_a_few_at_once_for_a_while() {
        let gate = UploadGate::new(2);
        let mut draining = tokio::task::JoinSet::new();
        for _ in 0..DRAINS {
            let (gate, mp) = (gate.clone(), stalled().await);
            draining.spawn(async move { gate.discard(mp).await });
        }
        tokio::task::yield_now().await;
        let t0 = tokio::time::Instant::now();
        gate.discard(stalled().await).await;
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "not drained: the drains are taken"
        );
        // The stalled ones give up at the deadline.
        draining.join_all().await;
        assert_eq!(t0.elapsed(), DRAIN_DEADLINE);
    }

    #[test]
    fn one_user_holds_at_most_half_the_slots_and_drops_give_them_back() {
        let gate = UploadGate::new(4);
        let a1 = gate.enter("alice").unwrap();
        let _a2 = gate.enter("alice").unwrap();
        assert_eq!(gate.enter("alice").unwrap_err().code, "busy", "her half");
        let b1 = gate.enter("bob").unwrap();
        let _b2 = gate.enter("bob").unwrap();
        assert!(gate.enter("carol").is_err(), "the host's four");
        drop(b1);
        let _c = gate.enter("carol").unwrap();
        drop(a1);
        assert_eq!(gate.free(), 1);
        let _a3 = gate.enter("alice").unwrap();
        assert_eq!(gate.free(), 0);
    }
}
