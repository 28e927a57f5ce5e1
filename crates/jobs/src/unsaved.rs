//! A record written by a run that never finished saving its file. A run stopped at its hard
//! time limit, or terminated by a revoke, is dropped wherever it waits, so the clean-up on its
//! own error paths never runs: its record would stay in the owner's history naming a file that
//! does not exist (and, once the task's result expired, read as the task's SUCCESS). The guard
//! removes both when it is dropped while armed: armed once the run's record is written,
//! disarmed when the save returns, with whatever outcome (those paths clean up themselves).
//!
//! Not when the run was stopped because another run owns the task now (its lease ran out):
//! the record is then that run's. When the worker is going away (the task goes back to its
//! queue), both go at once and the next run writes them anew; otherwise the file is deleted
//! once more a few seconds later, as a write the run had handed to a thread (the local store's
//! write and rename) may still land (not after a shutdown: the next run's file may be there).

use std::sync::Arc;

use afterview_engine::{CancelReason, TaskContext};
use afterview_store::{BlobStore, MetadataStore};

/// What the record is.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Visualization,
    Export,
}

/// See the module's documentation.
pub(crate) struct Unsaved {
    undo: Option<Undo>,
}

struct Undo {
    ctx: TaskContext,
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    kind: Kind,
    owner: String,
    id: String,
    key: String,
}

impl Unsaved {
    /// Not armed yet.
    pub(crate) fn new() -> Self {
        Self { undo: None }
    }

    /// The run wrote record `id` of `owner`, whose file is `key`.
    pub(crate) fn arm(
        &mut self,
        d: &crate::Deps,
        ctx: &TaskContext,
        what: (Kind, &str, &str, &str),
    ) {
        let (kind, owner, id, key) = what;
        self.undo = Some(Undo {
            ctx: ctx.clone(),
            meta: d.meta.clone(),
            blobs: d.blobs.clone(),
            kind,
            owner: owner.to_owned(),
            id: id.to_owned(),
            key: key.to_owned(),
        });
    }

    /// The save returned: nothing to undo here.
    pub(crate) fn disarm(&mut self) {
        self.undo = None;
    }
}

impl Drop for Unsaved {
    fn drop(&mut self) {
        let Some(u) = self.undo.take() else { return };
        if u.ctx.cancelled_for(CancelReason::LeaseLost) {
            return;
        }
        let again = !u.ctx.cancelled_for(CancelReason::Shutdown);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let gone = match u.kind {
                Kind::Visualization => u.meta.delete_visualization(&u.owner, &u.id).await,
                Kind::Export => u.meta.delete_export(&u.owner, &u.id).await,
            };
            if let Err(e) = gone {
                tracing::warn!(error = %e, id = %u.id, "The record of a run stopped while it saved could not be removed.");
            }
            let _ = u.blobs.delete(&u.key).await;
            if again {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let _ = u.blobs.delete(&u.key).await;
            }
        });
    }
}
