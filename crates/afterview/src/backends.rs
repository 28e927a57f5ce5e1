//! Chooses and opens the broker and result backend from the settings.

use std::sync::Arc;

use afterview_engine::memory::MemoryBackend;
use afterview_engine::{Broker, ResultBackend};
use afterview_engine_redis::{ClientCert, RedisBackend, RedisOptions};
use afterview_engine_sqlite::{SqliteBackend, SqliteOptions};
use anyhow::Context;

use crate::config::Settings;

/// The opened backends.
#[derive(Clone)]
pub struct Backends {
    pub broker: Arc<dyn Broker>,
    /// The result backend.
    pub results: Arc<dyn ResultBackend>,
    /// What was opened, for logs.
    pub description: String,
}

/// Opens what the settings name. Default: the embedded SQLite file `<data-dir>/afterview.db`.
pub async fn open(s: &Settings) -> anyhow::Result<Backends> {
    open_with(s, false).await
}

/// As [`open`]; `task_events` makes a Redis backend send Celery task events (`worker -E`).
pub async fn open_with(s: &Settings, task_events: bool) -> anyhow::Result<Backends> {
    let broker_url = s.broker_url.clone().unwrap_or_else(|| "sqlite://".into());
    if broker_url.starts_with("redis://") || broker_url.starts_with("rediss://") {
        return open_redis(s, &broker_url, task_events).await;
    }
    if let Some(rb) = &s.result_backend
        && rb != &broker_url
    {
        usage!(
            "the result backend ({}) must be the broker's store ({}) so that results can be fenced by leases",
            crate::product::redact(rb),
            crate::product::redact(&broker_url)
        );
    }
    if broker_url == "memory://" {
        let b = Arc::new(MemoryBackend::new(s.result_expires));
        return Ok(Backends {
            broker: b.clone(),
            results: b,
            description: "memory (not durable)".into(),
        });
    }
    if let Some(rest) = broker_url
        .strip_prefix("sqlite://")
        .or(if broker_url == "sqlite" {
            Some("")
        } else {
            None
        })
    {
        let path = if rest.is_empty() {
            s.data_dir.join("afterview.db")
        } else {
            rest.into()
        };
        let opts = SqliteOptions {
            result_expires: s.result_expires,
            synchronous_full: s.sqlite_synchronous_full,
            ..SqliteOptions::default()
        };
        let b = Arc::new(
            SqliteBackend::open(&path, opts)
                .with_context(|| format!("cannot open the embedded broker {}", path.display()))?,
        );
        return Ok(Backends {
            broker: b.clone(),
            results: b,
            description: format!("sqlite {}", path.display()),
        });
    }
    usage!(
        "unknown broker URL {:?}: use sqlite://[path], memory://, redis://host:port/db or rediss:// (TLS)",
        crate::product::redact(&broker_url)
    )
}

/// A Redis broker, with its results on the same server (another database, when given).
async fn open_redis(s: &Settings, broker_url: &str, task_events: bool) -> anyhow::Result<Backends> {
    let result_url = match &s.result_backend {
        None => None,
        Some(r) if r.starts_with("redis://") || r.starts_with("rediss://") => Some(r.as_str()),
        Some(r) => usage!(
            "the result backend ({}) must be on the broker's Redis server when the broker is Redis",
            afterview_engine_redis::redact(r)
        ),
    };
    let opts = RedisOptions {
        result_expires: s.result_expires,
        task_events,
        push_to_idle: s.redis_push_to_idle,
        ca_file: s.redis_ca_file.clone(),
        client_cert: s
            .redis_client_cert
            .clone()
            .map(|(cert_file, key_file)| ClientCert {
                cert_file,
                key_file,
            }),
        ..RedisOptions::default()
    };
    let shown = afterview_engine_redis::redact(broker_url);
    let b = match RedisBackend::open(broker_url, result_url, opts).await {
        Ok(b) => Arc::new(b),
        // The URLs or TLS files themselves: the configuration, not an outage.
        Err(e @ afterview_engine::backend::BackendError::Invalid(_)) => {
            usage!("cannot open the Redis broker {shown}: {e}")
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot open the Redis broker {shown}"))
            );
        }
    };
    Ok(Backends {
        description: b.description().to_owned(),
        broker: b.clone(),
        results: b,
    })
}
