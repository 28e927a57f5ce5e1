//! Typed configuration, layered: defaults < config file < environment < flags.
//!
//! Flags and `AFTERVIEW_*` variables are read by clap (a flag beats its variable); whatever they
//! leave unset comes from the TOML file (`--config`, or `<data-dir>/afterview.toml` when it
//! exists), then from the defaults here. Unknown keys in the file are an error that names them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./afterview-data";
/// The default HTTP address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";
/// Results are kept one day by default, as Celery does.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Broker URL.
    pub broker_url: Option<String>,
    /// Result backend URL.
    pub result_backend: Option<String>,
    /// Metadata database URL.
    pub database_url: Option<String>,
    /// CA certificates (PEM) the database's TLS certificate must chain to.
    pub database_ca_file: Option<PathBuf>,
    /// Blob storage URL.
    pub storage_url: Option<String>,
    /// Seconds results are kept.
    pub result_expires: Option<u64>,
    /// Log filter.
    pub log: Option<String>,
    /// Sync every SQLite commit to disk.
    pub sqlite_synchronous_full: Option<bool>,
    /// `serve` settings.
    #[serde(default)]
    pub serve: ServeFile,
    /// Worker settings (also used by the worker embedded in `serve`).
    #[serde(default)]
    pub worker: WorkerFile,
}

/// `[serve]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// Listen address.
    pub bind: Option<String>,
    /// Seconds presigned download URLs live (0 or absent: stream through the API).
    pub presign_downloads: Option<u64>,
}

/// `[worker]` in the config file.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Queues to consume.
    pub queues: Option<Vec<String>>,
    /// Concurrent tasks.
    pub concurrency: Option<usize>,
    /// Node name.
    pub node: Option<String>,
    /// Messages held per slot.
    pub prefetch_multiplier: Option<usize>,
    /// Lease seconds.
    pub lease: Option<f64>,
    /// Shutdown grace seconds.
    pub shutdown_grace: Option<f64>,
    /// Revoke grace seconds.
    pub revoke_grace: Option<f64>,
}

impl FileConfig {
    /// Reads `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Settings shared by every command, resolved from all layers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory (SQLite file, later images).
    pub data_dir: PathBuf,
    /// Broker URL as given (None = embedded SQLite in the data dir).
    pub broker_url: Option<String>,
    /// Result backend URL as given (None = same as the broker).
    pub result_backend: Option<String>,
    /// Metadata database URL (None = SQLite `<data-dir>/metadata.db`).
    pub database_url: Option<String>,
    /// CA file for the database's TLS (None = the system trust store).
    pub database_ca_file: Option<PathBuf>,
    /// Blob storage URL (None = `<data-dir>/blobs`).
    pub storage_url: Option<String>,
    /// How long results are kept.
    pub result_expires: Duration,
    /// Log filter.
    pub log: Option<String>,
    /// Sync every SQLite commit.
    pub sqlite_synchronous_full: bool,
    /// The file layer, for command-specific settings.
    pub worker_file: WorkerFile,
    /// `[serve] bind`.
    pub serve_bind: Option<String>,
    /// `[serve] presign_downloads`.
    pub serve_presign_downloads: Option<u64>,
}

/// The global flags as clap parsed them (flag or env).
#[derive(Debug, Clone, Default)]
pub struct GlobalLayer {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--broker`.
    pub broker_url: Option<String>,
    /// `--result-backend`.
    pub result_backend: Option<String>,
    /// `--database`.
    pub database_url: Option<String>,
    /// `--database-ca-file`.
    pub database_ca_file: Option<PathBuf>,
    /// `--storage`.
    pub storage_url: Option<String>,
    /// `--result-expires`.
    pub result_expires: Option<u64>,
    /// `--log`.
    pub log: Option<String>,
    /// `--sqlite-synchronous-full`.
    pub sqlite_synchronous_full: Option<bool>,
}

impl Settings {
    /// Resolves the layers.
    pub fn resolve(g: GlobalLayer) -> anyhow::Result<Self> {
        let file = match &g.config {
            Some(p) => FileConfig::load(p)?,
            None => {
                let dir = g
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
                let p = dir.join("afterview.toml");
                if p.exists() {
                    FileConfig::load(&p)?
                } else {
                    FileConfig::default()
                }
            }
        };
        let result_expires = g
            .result_expires
            .or(file.result_expires)
            .map(Duration::from_secs);
        let result_expires = result_expires.unwrap_or(DEFAULT_RESULT_EXPIRES);
        if result_expires.is_zero() {
            bail!("result expiry must be at least one second (results must not be kept forever)");
        }
        Ok(Self {
            data_dir: g
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            broker_url: g.broker_url.or(file.broker_url),
            result_backend: g.result_backend.or(file.result_backend),
            database_url: g.database_url.or(file.database_url),
            database_ca_file: g.database_ca_file.or(file.database_ca_file),
            storage_url: g.storage_url.or(file.storage_url),
            result_expires,
            log: g.log.or(file.log),
            sqlite_synchronous_full: g
                .sqlite_synchronous_full
                .or(file.sqlite_synchronous_full)
                .unwrap_or(false),
            worker_file: file.worker,
            serve_bind: file.serve.bind,
            serve_presign_downloads: file.serve.presign_downloads,
        })
    }
}

/// Seconds given on the command line or in the file, checked.
pub fn secs(what: &str, v: f64) -> anyhow::Result<Duration> {
    if !v.is_finite() || v < 0.0 {
        bail!("{what} must be a non-negative number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("afterview.toml"),
            "result_expires = 60\nbroker_url = \"memory://\"\ndatabase_url = \"postgres://db/a\"\n\
             storage_url = \"s3://b/p\"\n[serve]\npresign_downloads = 300\n[worker]\nconcurrency = 3\n",
        )
        .unwrap();
        let s = Settings::resolve(GlobalLayer {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.result_expires, Duration::from_secs(60));
        assert_eq!(s.broker_url.as_deref(), Some("memory://"));
        assert_eq!(s.worker_file.concurrency, Some(3));
        assert_eq!(s.database_url.as_deref(), Some("postgres://db/a"));
        assert_eq!(s.storage_url.as_deref(), Some("s3://b/p"));
        assert_eq!(s.serve_presign_downloads, Some(300));
        let s = Settings::resolve(GlobalLayer {
            data_dir: Some(dir.path().into()),
            result_expires: Some(5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.result_expires,
            Duration::from_secs(5),
            "flags/env beat the file"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "brokr_url = \"x\"\n").unwrap();
        let err = Settings::resolve(GlobalLayer {
            config: Some(p),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("brokr_url"), "{err:#}");
    }
}
