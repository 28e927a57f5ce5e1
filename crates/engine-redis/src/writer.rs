//! The result writer: every result write goes through one task that sends what has queued up
//! as one script call (a group commit), and the verdicts it answers.

use afterview_engine::BackendError;
use afterview_engine::backend::{LeaseRef, StoreOutcome};
use afterview_engine::result::ResultMeta;
use tokio::sync::{mpsc, oneshot};

use crate::calls::unavailable;
use crate::conn::Conn;
use crate::{Inner, RESULT_PREFIX, scripts};

/// The store script's verdict for one write; anything else is corrupt.
fn verdict(v: &str) -> Result<StoreOutcome, BackendError> {
    match v {
        "stored" => Ok(StoreOutcome::Stored),
        "fenced" => Ok(StoreOutcome::Fenced),
        "kept" => Ok(StoreOutcome::KeptTerminal),
        other => Err(BackendError::corrupt(format!(
            "the result script answered {other:?}"
        ))),
    }
}

/// One result write waiting for the writer.
pub(crate) struct StoreReq {
    key: String,
    meta: String,
    tag: String,
    epoch: u64,
    ack: bool,
    reply: oneshot::Sender<Result<StoreOutcome, BackendError>>,
}

/// Writes results in batches: concurrent writes (many tasks finishing at once) go to Redis in
/// one script call while the previous call is in flight, like a group commit.
pub(crate) async fn store_writer(
    mut conn: Conn,
    mut rx: mpsc::UnboundedReceiver<StoreReq>,
    dbs: (i64, i64),
    ttl_ms: u64,
) {
    let script = scripts::with_helpers(scripts::STORE);
    let mut batch: Vec<StoreReq> = Vec::with_capacity(128);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 128 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut inv = script.prepare_invoke();
        inv.arg(dbs.1).arg(dbs.0).arg(ttl_ms);
        for r in &batch {
            inv.arg(&r.key)
                .arg(&r.meta)
                .arg(&r.tag)
                .arg(r.epoch)
                .arg(if r.ack { "1" } else { "0" });
        }
        let res: Result<Vec<String>, BackendError> =
            inv.invoke_async(&mut conn).await.map_err(unavailable);
        match res {
            Ok(verdicts) if verdicts.len() == batch.len() => {
                for (r, v) in batch.drain(..).zip(verdicts) {
                    let _ = r.reply.send(verdict(&v));
                }
            }
            Ok(v) => {
                let e = BackendError::corrupt(format!(
                    "result script answered {} verdicts for {} writes",
                    v.len(),
                    batch.len()
                ));
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(BackendError::corrupt(e.to_string())));
                }
            }
            Err(e) => {
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(BackendError::unavailable(e.to_string())));
                }
            }
        }
    }
}

impl Inner {
    pub(crate) async fn store_meta(
        &self,
        meta: &ResultMeta,
        fence: Option<&LeaseRef>,
        ack: bool,
    ) -> Result<StoreOutcome, BackendError> {
        let (tag, epoch) = fence.map_or((String::new(), 0), |l| (l.delivery_tag.clone(), l.epoch));
        let (reply, rx) = oneshot::channel();
        self.stores
            .send(StoreReq {
                key: format!("{RESULT_PREFIX}{}", meta.task_id),
                meta: meta.to_json(),
                tag,
                epoch,
                ack,
                reply,
            })
            .map_err(|_| BackendError::unavailable("result writer stopped"))?;
        let out = rx
            .await
            .map_err(|_| BackendError::unavailable("result writer stopped"))??;
        let outcome = out;
        if outcome == StoreOutcome::Stored {
            self.task_event(meta).await;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_the_three_the_script_writes_and_nothing_else() {
        assert_eq!(verdict("stored").unwrap(), StoreOutcome::Stored);
        assert_eq!(verdict("fenced").unwrap(), StoreOutcome::Fenced);
        assert_eq!(verdict("kept").unwrap(), StoreOutcome::KeptTerminal);
        assert!(matches!(verdict("KEPT"), Err(BackendError::Corrupt(_))));
        for v in ["stored", "fenced", "kept"] {
            assert!(
                scripts::STORE.contains(&format!("'{v}'")),
                "the script writes {v}"
            );
        }
    }
}
