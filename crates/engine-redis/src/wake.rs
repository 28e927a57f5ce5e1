//! Wake-ups for idle claimers.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Wake-ups for idle claimers: a generation counter plus a notifier, so a wake-up between an
/// empty claim and the wait is never lost.
#[derive(Default)]
pub(crate) struct Wake {
    pub(crate) generation: AtomicU64,
    pub(crate) notify: Notify,
}

impl Wake {
    pub(crate) fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}
