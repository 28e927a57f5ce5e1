//! The event stream: every stored state change, pushed to in-process subscribers.
//!
//! Backends call [`EventHub::publish`] after each successful write. Subscribers follow one task
//! ([`TaskWatch`]: the current state first, then every change, ending at a terminal state) or
//! all tasks ([`EventHub::subscribe_all`]). Nothing here polls: a watch waits on a channel.
//! Per-task channels exist only while someone subscribes, so the hub's size is bounded by its
//! subscribers, not by the number of tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::result::ResultMeta;

const PER_TASK_CAPACITY: usize = 64;
const ALL_CAPACITY: usize = 4096;

/// What subscribers want, told to a backend that must subscribe upstream (e.g. Redis pub/sub).
#[derive(Debug)]
pub enum Interest {
    /// Someone follows this task; call `ready` once upstream changes of it will arrive.
    Watch(String, tokio::sync::watch::Sender<bool>),
    /// Nobody follows this task any more.
    Unwatch(String),
    /// Someone follows every task.
    All,
}

type Listener = Box<dyn Fn(Interest) + Send + Sync>;

struct Channel {
    tx: broadcast::Sender<Arc<ResultMeta>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

/// Fan-out of result changes to in-process subscribers.
pub struct EventHub {
    per_task: Mutex<HashMap<String, Channel>>,
    all: broadcast::Sender<Arc<ResultMeta>>,
    listener: std::sync::OnceLock<Listener>,
    all_announced: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("watched", &self.watched_tasks())
            .finish()
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            per_task: Mutex::default(),
            all: broadcast::channel(ALL_CAPACITY).0,
            listener: std::sync::OnceLock::new(),
            all_announced: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl EventHub {
    /// Installs the backend's listener (once): it hears which tasks are followed. It is called
    /// with the hub's lock held, so the interests it hears are in the order of the map's
    /// changes (a follower's `Watch` can never be overtaken by the `Unwatch` of the follower
    /// before it): it must not block or call back into the hub (a channel send).
    pub fn set_listener(&self, l: impl Fn(Interest) + Send + Sync + 'static) {
        let _ = self.listener.set(Box::new(l));
    }

    /// Publishes a stored change.
    pub fn publish(&self, meta: ResultMeta) {
        let meta = Arc::new(meta);
        {
            let mut map = self.per_task.lock().expect("event hub lock");
            if let Some(ch) = map.get(&meta.task_id)
                && ch.tx.send(meta.clone()).is_err()
            {
                map.remove(&meta.task_id);
                if let Some(l) = self.listener.get() {
                    l(Interest::Unwatch(meta.task_id.clone()));
                }
            }
        }
        let _ = self.all.send(meta);
    }

    /// Every change of every task (a lagging receiver loses the oldest).
    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<ResultMeta>> {
        if !self
            .all_announced
            .swap(true, std::sync::atomic::Ordering::SeqCst)
            && let Some(l) = self.listener.get()
        {
            l(Interest::All);
        }
        self.all.subscribe()
    }

    /// Subscribes to one task's changes, with a flag that turns true once upstream changes
    /// will arrive; pair it with [`EventHub::release`] (as `watch::TaskWatch` does).
    pub(crate) fn subscribe(
        &self,
        task_id: &str,
    ) -> (
        broadcast::Receiver<Arc<ResultMeta>>,
        tokio::sync::watch::Receiver<bool>,
    ) {
        let mut announce = None;
        let mut map = self.per_task.lock().expect("event hub lock");
        let ch = map.entry(task_id.to_owned()).or_insert_with(|| {
            let ready = self.listener.get().is_none();
            let (tx, rx) = tokio::sync::watch::channel(ready);
            if !ready {
                announce = Some(tx);
            }
            Channel {
                tx: broadcast::channel(PER_TASK_CAPACITY).0,
                ready: rx,
            }
        });
        let out = (ch.tx.subscribe(), ch.ready.clone());
        if let (Some(tx), Some(l)) = (announce, self.listener.get()) {
            l(Interest::Watch(task_id.to_owned(), tx));
        }
        out
    }

    /// Drops a subscription made by [`EventHub::subscribe`].
    pub(crate) fn release(&self, task_id: &str) {
        let mut map = self.per_task.lock().expect("event hub lock");
        if map
            .get(task_id)
            .is_some_and(|ch| ch.tx.receiver_count() == 0)
        {
            map.remove(task_id);
            if let Some(l) = self.listener.get() {
                l(Interest::Unwatch(task_id.to_owned()));
            }
        }
    }

    /// Number of tasks someone is watching (for metrics and tests).
    pub fn watched_tasks(&self) -> usize {
        self.per_task.lock().expect("event hub lock").len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{EventHub, Interest};

    /// A follower that leaves while another arrives: the backend hears the leave before the
    /// arrival, whatever the threads' timing, so it ends subscribed (a leave heard last would
    /// unsubscribe upstream under the new follower, who would then hear nothing).
    #[test]
    fn interests_are_heard_in_the_order_followers_come_and_go() {
        let hub = Arc::new(EventHub::default());
        let heard = Arc::new(Mutex::new(Vec::<&'static str>::new()));
        let h = heard.clone();
        hub.set_listener(move |i| {
            let what = match i {
                Interest::Watch(..) => "watch",
                Interest::Unwatch(_) => {
                    // The leaving thread is slow to tell (pre-empted, say).
                    std::thread::sleep(Duration::from_millis(100));
                    "unwatch"
                }
                Interest::All => "all",
            };
            h.lock().unwrap().push(what);
        });
        let (rx, _ready) = hub.subscribe("t");
        drop(rx);
        let leaving = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.release("t"))
        };
        std::thread::sleep(Duration::from_millis(20));
        let (_rx, _ready) = hub.subscribe("t");
        leaving.join().unwrap();
        assert_eq!(*heard.lock().unwrap(), ["watch", "unwatch", "watch"]);
    }
}
