//! Pushed deliveries: a publish of one due message while a worker of its queue is idle claims
//! the message for that worker in the publish script itself and PUBLISHes it on the worker's
//! channel `afterview:push:<node>` (see `PUBLISH` and `CLAIM` in [`crate::scripts`]). The
//! worker's next claim takes it from here without a round trip: the wake-up *is* the delivery.
//!
//! Invariants:
//! - A node registers as idle (through its claim) only while this process is subscribed to its
//!   channel, and the publish script pushes only to a channel with a subscriber; otherwise the
//!   message goes to its queue as before.
//! - A pushed message is recorded (lease, `unacked`) before it is sent, exactly as a claim
//!   records it. One lost on the way (a dropped connection) is therefore redelivered when its
//!   lease runs out, as after a worker crash; one that arrives after its worker stopped is
//!   given back to its queue at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use afterview_engine::backend::Delivery;

use crate::calls::{ClaimRow, delivery};

/// Prefix of the workers' push channels.
pub(crate) const PUSH_PREFIX: &str = "afterview:push:";

/// The idle entry of a worker in its queues' idle sets: `"<lease_ms> <node>"`, then each of
/// its queues after a newline when it has several (as the `CLAIM` script writes it).
pub(crate) fn idle_entry(lease_ms: u64, node: &str, queues: &[String]) -> String {
    let mut e = format!("{lease_ms} {node}");
    if queues.len() > 1 {
        for q in queues {
            e.push('\n');
            e.push_str(q);
        }
    }
    e
}

/// The idle workers of queue `q` (a zset by registration time).
pub(crate) fn waiters_key(q: &str) -> String {
    format!("afterview:idle:{q}")
}

#[derive(Default)]
struct Node {
    /// True while the pub/sub connection is subscribed to the node's channel.
    ready: Arc<AtomicBool>,
    /// Pushed deliveries not yet taken by a claim.
    queue: VecDeque<Delivery>,
    /// The idle entry and queues of the node's last registering claim.
    registered: Option<(String, Vec<String>)>,
    /// The worker stopped: pushes that still arrive go back to their queue.
    closed: bool,
}

/// Per worker node of this process: its push subscription and the deliveries pushed to it.
#[derive(Default)]
pub(crate) struct Pushes {
    nodes: Mutex<HashMap<String, Node>>,
}

/// What a claim should do about pushes.
pub(crate) enum Idle {
    /// Register as idle if the claim comes back short.
    Register,
    /// Do not register; the first claim of a node also asks for its subscription (this flag
    /// turns true once subscribed).
    Subscribe(Arc<AtomicBool>),
    /// Do not register.
    No,
}

impl Pushes {
    /// Takes up to `max` deliveries pushed to `node`.
    pub(crate) fn take(&self, node: &str, max: usize) -> Vec<Delivery> {
        let mut nodes = self.nodes.lock().expect("pushes lock");
        match nodes.get_mut(node) {
            Some(n) if !n.queue.is_empty() => {
                let k = max.min(n.queue.len());
                n.queue.drain(..k).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Whether a claim of `node` on `queues` with leases of `lease_ms` may register it as idle.
    pub(crate) fn idle(&self, node: &str, lease_ms: u64, queues: &[String]) -> Idle {
        let mut nodes = self.nodes.lock().expect("pushes lock");
        match nodes.get_mut(node) {
            None => {
                let n = Node::default();
                let flag = n.ready.clone();
                nodes.insert(node.to_owned(), n);
                Idle::Subscribe(flag)
            }
            Some(n) if n.closed || !n.ready.load(Ordering::SeqCst) => Idle::No,
            Some(n) => {
                n.registered = Some((idle_entry(lease_ms, node, queues), queues.to_vec()));
                Idle::Register
            }
        }
    }

    /// A pushed delivery for `node`, held for its next claim; returned (to give back to its
    /// queue) when no running worker of this process is that node.
    pub(crate) fn add(&self, node: &str, d: Delivery) -> Option<Delivery> {
        let mut nodes = self.nodes.lock().expect("pushes lock");
        match nodes.get_mut(node) {
            Some(n) if !n.closed => {
                n.queue.push_back(d);
                None
            }
            _ => Some(d),
        }
    }

    /// The worker `node` stopped: returns its idle registration (to remove) and the pushed
    /// deliveries it never took (to give back). Later pushes are refused.
    pub(crate) fn close(&self, node: &str) -> (Option<(String, Vec<String>)>, Vec<Delivery>) {
        let mut nodes = self.nodes.lock().expect("pushes lock");
        match nodes.get_mut(node) {
            Some(n) => {
                n.closed = true;
                (n.registered.take(), n.queue.drain(..).collect())
            }
            None => (None, Vec::new()),
        }
    }
}

/// A pushed message: `[tag, task_id, queue, epoch, revoked]` as JSON, a newline, the envelope.
pub(crate) fn parse(payload: &[u8]) -> Option<Delivery> {
    let nl = payload.iter().position(|&b| b == b'\n')?;
    let (tag, task_id, queue, epoch, rev): (String, String, String, u64, String) =
        serde_json::from_slice(&payload[..nl]).ok()?;
    let row: ClaimRow = (
        tag.into_bytes(),
        task_id.into_bytes(),
        queue,
        payload[nl + 1..].to_vec(),
        epoch,
        rev,
    );
    delivery(row).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_message_keeps_its_envelope_byte_for_byte() {
        let raw = br#"{"body":"e30=","headers":{"id":"t1"},"properties":{"delivery_tag":"d1"}}"#;
        let mut payload = br#"["d1","t1","celery",3,""]"#.to_vec();
        payload.push(b'\n');
        payload.extend_from_slice(raw);
        let d = parse(&payload).expect("a push");
        assert_eq!(d.raw, raw);
        assert_eq!(d.lease.delivery_tag, "d1");
        assert_eq!(d.lease.task_id, "t1");
        assert_eq!(d.lease.epoch, 3);
        assert!(d.redelivered);
        assert!(d.revoked.is_none());
        assert!(parse(b"no newline").is_none());
        assert!(parse(b"[\"d1\"]\n{}").is_none());
    }

    #[test]
    fn a_node_registers_only_once_subscribed_and_never_after_it_stopped() {
        let p = Pushes::default();
        let q = vec!["celery".to_owned()];
        let Idle::Subscribe(flag) = p.idle("w", 1000, &q) else {
            panic!("the first claim asks for the subscription")
        };
        assert!(matches!(p.idle("w", 1000, &q), Idle::No));
        flag.store(true, Ordering::SeqCst);
        assert!(matches!(p.idle("w", 1000, &q), Idle::Register));
        let d = parse(b"[\"d1\",\"t1\",\"celery\",1,\"\"]\n{}").unwrap();
        assert!(p.add("w", d).is_none());
        assert!(p.take("other", 5).is_empty());
        let (reg, left) = p.close("w");
        assert_eq!(reg, Some(("1000 w".to_owned(), q.clone())));
        assert_eq!(left.len(), 1);
        assert!(matches!(p.idle("w", 1000, &q), Idle::No));
        let d = parse(b"[\"d2\",\"t2\",\"celery\",1,\"\"]\n{}").unwrap();
        assert!(p.add("w", d).is_some(), "a stopped node refuses pushes");
    }
}
