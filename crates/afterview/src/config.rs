//! Typed configuration, layered: defaults < config file < environment < flags — for every
//! setting.
//!
//! Every setting is a clap argument with an `AFTERVIEW_*` variable (clap makes a flag beat its
//! variable). The TOML file (`--config`, or `<data-dir>/afterview.toml` when it exists) is read
//! first and its values become those arguments' defaults, so it sits below the environment and
//! the flags and is parsed and checked exactly like them. A key is the variable's name without
//! `AFTERVIEW_`, lowercased (`max_upload_bytes`, `broker_url`); keys may sit at the top level or
//! in any of the sections `[serve]`, `[worker]`, `[preview]`, `[storage]`, `[auth]`,
//! `[limits]`. Unknown keys and sections are an error that names them. Secrets have `*_file`
//! keys, never values.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./afterview-data";
/// The default HTTP address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";
/// Results are kept one day by default, as Celery does.
pub const DEFAULT_RESULT_EXPIRES: Duration = Duration::from_secs(86_400);

/// Sections a key may be grouped in (they are for people; keys are global).
const SECTIONS: &[&str] = &["serve", "worker", "preview", "storage", "auth", "limits"];

/// Keys whose variable is not simply `AFTERVIEW_<KEY>`.
const ALIASES: &[(&str, &str)] = &[("node", "AFTERVIEW_NODE_NAME")];

/// The variable a file key stands for.
fn variable_of(key: &str) -> String {
    ALIASES.iter().find(|(k, _)| *k == key).map_or_else(
        || format!("AFTERVIEW_{}", key.to_ascii_uppercase()),
        |(_, v)| (*v).to_owned(),
    )
}

/// The config file for this command line: `--config`/`AFTERVIEW_CONFIG`, else
/// `<data-dir>/afterview.toml` when it exists (`--data-dir`/`AFTERVIEW_DATA_DIR`, else the
/// default data dir). `None`: no file.
pub fn file_for(args: &[OsString]) -> Option<PathBuf> {
    let flag = |name: &str| -> Option<PathBuf> {
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            let a = a.to_string_lossy();
            if a == "--" {
                break;
            }
            if a == name {
                return it.next().map(PathBuf::from);
            }
            if let Some(v) = a.strip_prefix(&format!("{name}=")) {
                return Some(PathBuf::from(v));
            }
        }
        None
    };
    if let Some(p) =
        flag("--config").or_else(|| std::env::var_os("AFTERVIEW_CONFIG").map(PathBuf::from))
    {
        return Some(p);
    }
    let dir = flag("--data-dir")
        .or_else(|| std::env::var_os("AFTERVIEW_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let p = dir.join("afterview.toml");
    p.exists().then_some(p)
}

/// Reads `path` into `variable → values`, checking every key against `known` variables.
pub fn load_file(
    path: &Path,
    known: &std::collections::BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    let mut out = BTreeMap::new();
    let mut put = |key: &str, value: &toml::Value, section: Option<&str>| -> anyhow::Result<()> {
        let var = variable_of(key);
        let place = section.map_or(String::new(), |s| format!(" in [{s}]"));
        if !known.contains(&var) {
            bail!(
                "{}: unknown key `{key}`{place} (keys are the AFTERVIEW_* variables' names, lowercased; see docs/deploy.md)",
                path.display()
            );
        }
        let values = match value {
            toml::Value::String(s) => vec![s.clone()],
            toml::Value::Integer(i) => vec![i.to_string()],
            toml::Value::Float(f) => vec![f.to_string()],
            toml::Value::Boolean(b) => vec![b.to_string()],
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => bail!(
                        "{}: `{key}`{place} must list strings, got {other:?}",
                        path.display()
                    ),
                })
                .collect::<anyhow::Result<_>>()?,
            other => bail!(
                "{}: `{key}`{place} has an unsupported value {other:?}",
                path.display()
            ),
        };
        if out.insert(var, values).is_some() {
            bail!("{}: `{key}` is set twice", path.display());
        }
        Ok(())
    };
    for (k, v) in &table {
        match v {
            toml::Value::Table(t) => {
                if !SECTIONS.contains(&k.as_str()) {
                    bail!(
                        "{}: unknown section [{k}] (sections: {})",
                        path.display(),
                        SECTIONS.join(", ")
                    );
                }
                for (k2, v2) in t {
                    put(k2, v2, Some(k))?;
                }
            }
            _ => put(k, v, None)?,
        }
    }
    Ok(out)
}

/// Settings shared by every command, resolved from all layers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory (SQLite files, local blobs, the dev token).
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
}

/// The global arguments as clap resolved them (flag, variable, file or nothing).
#[derive(Debug, Clone, Default)]
pub struct GlobalLayer {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
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
    /// Applies the defaults and checks what clap cannot.
    pub fn resolve(g: GlobalLayer) -> anyhow::Result<Self> {
        let result_expires = g
            .result_expires
            .map_or(DEFAULT_RESULT_EXPIRES, Duration::from_secs);
        if result_expires.is_zero() {
            bail!("result expiry must be at least one second (results must not be kept forever)");
        }
        Ok(Self {
            data_dir: g
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            broker_url: g.broker_url,
            result_backend: g.result_backend,
            database_url: g.database_url,
            database_ca_file: g.database_ca_file,
            storage_url: g.storage_url,
            result_expires,
            log: g.log,
            sqlite_synchronous_full: g.sqlite_synchronous_full.unwrap_or(false),
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

    fn known() -> std::collections::BTreeSet<String> {
        [
            "AFTERVIEW_RESULT_EXPIRES",
            "AFTERVIEW_BROKER_URL",
            "AFTERVIEW_CONCURRENCY",
            "AFTERVIEW_QUEUES",
            "AFTERVIEW_NODE_NAME",
            "AFTERVIEW_MAX_UPLOAD_BYTES",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    #[test]
    fn keys_become_their_variables_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("afterview.toml");
        std::fs::write(
            &p,
            "result_expires = 60\nbroker_url = \"memory://\"\n[worker]\nconcurrency = 3\n\
             queues = [\"a\", \"b\"]\nnode = \"w1@%h\"\n[limits]\nmax_upload_bytes = 1000\n",
        )
        .unwrap();
        let m = load_file(&p, &known()).unwrap();
        assert_eq!(m["AFTERVIEW_RESULT_EXPIRES"], ["60"]);
        assert_eq!(m["AFTERVIEW_BROKER_URL"], ["memory://"]);
        assert_eq!(m["AFTERVIEW_CONCURRENCY"], ["3"]);
        assert_eq!(m["AFTERVIEW_QUEUES"], ["a", "b"]);
        assert_eq!(m["AFTERVIEW_NODE_NAME"], ["w1@%h"]);
        assert_eq!(m["AFTERVIEW_MAX_UPLOAD_BYTES"], ["1000"]);
    }

    #[test]
    fn unknown_keys_and_sections_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        for (text, needle) in [
            ("brokr_url = \"x\"\n", "unknown key `brokr_url`"),
            ("[worker]\nconcurency = 2\n", "`concurency` in [worker]"),
            ("[workers]\nconcurrency = 2\n", "unknown section [workers]"),
            ("queues = [1, 2]\n", "must list strings"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = format!("{:#}", load_file(&p, &known()).unwrap_err());
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn the_file_is_found_from_the_command_line() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            file_for(&args(&["afterview", "--config", "/etc/a.toml", "serve"])),
            Some(PathBuf::from("/etc/a.toml"))
        );
        assert_eq!(
            file_for(&args(&["afterview", "serve", "--config=/etc/b.toml"])),
            Some(PathBuf::from("/etc/b.toml"))
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        assert_eq!(
            file_for(&args(&["afterview", "--data-dir", &d, "serve"])),
            None
        );
        std::fs::write(dir.path().join("afterview.toml"), "").unwrap();
        assert_eq!(
            file_for(&args(&["afterview", "--data-dir", &d, "serve"])),
            Some(dir.path().join("afterview.toml"))
        );
    }
}
