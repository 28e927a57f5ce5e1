//! [`ResultBackend`] over Redis: Celery's result keys, written through the group-commit writer.

use afterview_engine::BackendError;
use afterview_engine::backend::{Broker, LeaseRef, ResultBackend, StoreOutcome};
use afterview_engine::events::EventHub;
use afterview_engine::result::ResultMeta;
use async_trait::async_trait;
use redis::AsyncCommands;

use crate::calls::unavailable;
use crate::{RESULT_PREFIX, RedisBackend};

#[async_trait]
impl ResultBackend for RedisBackend {
    async fn store(
        &self,
        meta: &ResultMeta,
        fence: Option<&LeaseRef>,
    ) -> Result<StoreOutcome, BackendError> {
        self.inner.store_meta(meta, fence, false).await
    }

    async fn complete(
        &self,
        meta: &ResultMeta,
        lease: &LeaseRef,
    ) -> Result<StoreOutcome, BackendError> {
        self.inner.store_meta(meta, Some(lease), true).await
    }

    async fn get(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let mut c = self.inner.results.clone();
        let v: Option<String> = c
            .get(format!("{RESULT_PREFIX}{task_id}"))
            .await
            .map_err(unavailable)?;
        match v {
            None => Ok(None),
            Some(s) => ResultMeta::from_json(&s)
                .map(Some)
                .map_err(|e| BackendError::corrupt(format!("result of {task_id}: {e}"))),
        }
    }

    async fn forget(&self, task_id: &str) -> Result<(), BackendError> {
        let mut c = self.inner.results.clone();
        c.del::<_, i64>(format!("{RESULT_PREFIX}{task_id}"))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn events(&self) -> &EventHub {
        &self.inner.hub
    }

    async fn cleanup(&self) -> Result<u64, BackendError> {
        // Result keys are written with SETEX: Redis expires them.
        Ok(0)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Broker::ping(self).await
    }
}
