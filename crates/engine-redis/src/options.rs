//! How the backend is tuned and connects: [`RedisOptions`], connection-manager bounds, URL
//! redaction.

use std::time::Duration;

use afterview_engine::policy;
use redis::aio::ConnectionManagerConfig;

/// Tunables; the defaults are Celery's where Celery has one.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// How long results live (Celery's `result_expires`, default 1 day).
    pub result_expires: Duration,
    /// Messages of foreign consumers (Python workers) unacked for longer than this go back to
    /// their queue (kombu's `visibility_timeout`, default 1 h). Ours are governed by leases.
    pub visibility_timeout: Duration,
    /// Send task events (`task-received`, `task-started`, ...), as `celery worker -E`. Flower's
    /// `enable_events` also turns them on.
    pub task_events: bool,
    /// Ask Redis for keyspace notifications on list pushes, so workers wake at once for tasks that
    /// Python producers LPUSH (they publish no wake-up). Without them workers poll every 100 ms.
    pub keyspace_events: bool,
    /// Hand a message published by an Afterview client straight to an idle worker of its queue
    /// (claimed for it in the publish script and sent on its channel) instead of queueing it
    /// and waking the workers, who then claim it: one round trip less between a publish and
    /// the start of the task. Messages LPUSHed by Python producers are unaffected.
    pub push_to_idle: bool,
    /// Dead letters kept.
    pub dead_letters_max: usize,
    /// For `rediss://` URLs: trust only the CA certificates (PEM) in this file instead of the
    /// system's trust store (a private CA, a self-signed server).
    pub ca_file: Option<std::path::PathBuf>,
    /// For `rediss://` URLs on a server that asks for client certificates
    /// (`tls-auth-clients yes`): this client's certificate chain and private key (PEM files).
    pub client_cert: Option<ClientCert>,
}

/// A client certificate for mutual TLS: two PEM files, read when the backend opens.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The certificate (and any intermediates), PEM.
    pub cert_file: std::path::PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            result_expires: Duration::from_secs(86_400),
            visibility_timeout: Duration::from_secs(3_600),
            task_events: false,
            keyspace_events: true,
            push_to_idle: true,
            dead_letters_max: policy::DEAD_LETTER_CAP,
            ca_file: None,
            client_cert: None,
        }
    }
}

/// `redis://host:port/db` with any password replaced, for logs and `inspect`.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

pub(crate) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}
