//! The conformance suite against the in-memory backend.

use std::sync::Arc;
use std::time::Duration;

use afterview_engine::memory::MemoryBackend;
use afterview_engine::testsuite::Fixture;

async fn memory(result_expires: Duration) -> Fixture {
    let b = Arc::new(MemoryBackend::new(result_expires));
    Fixture {
        broker: b.clone(),
        backend: b,
        reopen: None,
    }
}

afterview_engine::broker_conformance!(paused memory);
