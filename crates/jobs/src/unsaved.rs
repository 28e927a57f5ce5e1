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
//!
//! [`write_file`] covers the other way a record goes while its file is written: its owner
//! deleted it.

use std::sync::Arc;

use afterview_core::ErrorCode;
use afterview_engine::{CancelReason, TaskContext, TaskError};
use afterview_store::{BlobStore, MetadataStore, StoreError};

use crate::{Deps, fail, storage};

/// What the record is.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Visualization,
    Export,
}

impl Kind {
    /// Whether record `id` of `owner` is there.
    async fn recorded(
        self,
        meta: &dyn MetadataStore,
        owner: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        Ok(match self {
            Kind::Visualization => meta.get_visualization(owner, id).await?.is_some(),
            Kind::Export => meta.get_export(owner, id).await?.is_some(),
        })
    }

    /// Removes record `id` of `owner`, if it is there.
    async fn delete(
        self,
        meta: &dyn MetadataStore,
        owner: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        match self {
            Kind::Visualization => meta.delete_visualization(owner, id).await.map(drop),
            Kind::Export => meta.delete_export(owner, id).await.map(drop),
        }
    }
}

/// A record `(kind, owner, id, file key)`.
pub(crate) type Record<'a> = (Kind, &'a str, &'a str, &'a str);

/// Writes the file of record `what`, claimed by this run when `inserted`, checking the photos
/// it was made from (`photos_gone`) before and after: a photo deleted meanwhile takes the
/// record and file with it (whoever wrote the record), and the run fails with `gone`. Any
/// other failure (the file's write, the store that answers the check) removes the record and
/// file when this run inserted them, at once: a record naming no file would stay in the
/// owner's history when the run is not tried again. After the file, the record is read again
/// (a record deleted meanwhile: its file goes too, and the run fails).
pub(crate) async fn write_file<G, W>(
    d: &Deps,
    (what, inserted): (Record<'_>, bool),
    photos_gone: impl Fn() -> G,
    gone: impl Fn() -> TaskError,
    write: W,
) -> Result<(), TaskError>
where
    G: std::future::Future<Output = Result<bool, TaskError>>,
    W: std::future::Future<Output = Result<(), TaskError>>,
{
    let check = async || match photos_gone().await {
        Ok(false) => Ok(()),
        Ok(true) => {
            remove(d, what).await;
            Err(gone())
        }
        Err(e) => {
            if inserted {
                remove(d, what).await;
            }
            Err(e)
        }
    };
    check().await?;
    if let Err(e) = write.await {
        if inserted {
            remove(d, what).await;
        }
        return Err(e);
    }
    check().await?;
    // The record read again: deleted meanwhile (the delete found no file yet), the file goes
    // too and the run fails.
    let (kind, owner, id, _) = what;
    match kind.recorded(&*d.meta, owner, id).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(deleted_meanwhile(d, what).await),
        Err(e) => {
            if inserted {
                remove(d, what).await;
            }
            Err(storage(e))
        }
    }
}

/// Removes record `what` and its file now.
async fn remove(d: &Deps, (kind, owner, id, key): Record<'_>) {
    if let Err(e) = kind.delete(&*d.meta, owner, id).await {
        tracing::warn!(error = %e, id, "A record whose file was not saved could not be removed.");
    }
    delete_file(&*d.blobs, key).await;
}

/// Deletes file `key` and its small copy (the API may have made one while the record was
/// there), each three times over about 3 s if it must: nothing else names them any more. One
/// that stays is logged by its key (a random id, nothing of the patient's).
pub(crate) async fn delete_file(blobs: &dyn BlobStore, key: &str) {
    for key in afterview_store::with_thumbnails(vec![key.to_owned()]) {
        let mut last = None;
        for wait_ms in [0, 500, 2_500] {
            tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            match blobs.delete(&key).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::error!(key, error = %e, "A file no record names could not be deleted; delete it by hand.");
        }
    }
}

/// The record `(kind, owner, id, file key)` was deleted while its file was written: the file
/// goes too, and the run fails with the record's not-found code.
async fn deleted_meanwhile(d: &Deps, (kind, _, id, key): Record<'_>) -> TaskError {
    delete_file(&*d.blobs, key).await;
    let (code, what) = match kind {
        Kind::Visualization => (ErrorCode::VisualizationNotFound, "visualization"),
        Kind::Export => (ErrorCode::ExportNotFound, "export"),
    };
    fail(code, format!("{what} {id} was deleted while it was saved"))
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

    /// The run fails after this save succeeded (a comparison whose later part failed): the
    /// record and file go now, not when the guard is dropped, so that the next run, which
    /// writes the same ids, is not undone by a delayed delete. Nothing when another run owns
    /// the task (its lease ran out).
    pub(crate) async fn undo_now(&mut self) {
        let Some(u) = self.undo.as_ref() else { return };
        if u.ctx.cancelled_for(CancelReason::LeaseLost) {
            self.undo = None;
            return;
        }
        if let Err(e) = u.kind.delete(&*u.meta, &u.owner, &u.id).await {
            tracing::warn!(error = %e, id = %u.id, "The record of a failed run could not be removed.");
        }
        delete_file(&*u.blobs, &u.key).await;
        // Armed until both are done: a run stopped meanwhile is undone by the guard's drop.
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
            if let Err(e) = u.kind.delete(&*u.meta, &u.owner, &u.id).await {
                tracing::warn!(error = %e, id = %u.id, "The record of a run stopped while it saved could not be removed.");
            }
            delete_file(&*u.blobs, &u.key).await;
            if again {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                let _ = u.blobs.delete(&u.key).await;
            }
        });
    }
}
