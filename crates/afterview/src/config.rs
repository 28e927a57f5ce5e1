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

use afterview_core::tasks::EngineKind;
use anyhow::Context;

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
    // The line and column, never the line itself: it may hold a password or a token.
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            let at = e.span().map_or(String::new(), |s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {col}")
            });
            usage!(
                "invalid config file {}{at}: {}",
                path.display(),
                e.message().trim_end()
            );
        }
    };
    let mut out = BTreeMap::new();
    let mut put = |key: &str, value: &toml::Value, section: Option<&str>| -> anyhow::Result<()> {
        let var = variable_of(key);
        let place = section.map_or(String::new(), |s| format!(" in [{s}]"));
        if !known.contains(&var) {
            usage!(
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
                    other => usage!(
                        "{}: `{key}`{place} must list strings (found a value of type {})",
                        path.display(),
                        other.type_str()
                    ),
                })
                .collect::<anyhow::Result<_>>()?,
            other => usage!(
                "{}: `{key}`{place} has a value of type {}; use a string, number, boolean or list of strings",
                path.display(),
                other.type_str()
            ),
        };
        if out.insert(var, values).is_some() {
            usage!("{}: `{key}` is set twice", path.display());
        }
        Ok(())
    };
    for (k, v) in &table {
        match v {
            toml::Value::Table(t) => {
                if !SECTIONS.contains(&k.as_str()) {
                    usage!(
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
    /// CA file for Redis's TLS, `rediss://` (None = the system trust store).
    pub redis_ca_file: Option<PathBuf>,
    /// Client certificate and key for Redis's mutual TLS.
    pub redis_client_cert: Option<(PathBuf, PathBuf)>,
    /// Blob storage URL (None = `<data-dir>/blobs`).
    pub storage_url: Option<String>,
    /// How long results are kept.
    pub result_expires: Duration,
    /// Log filter.
    pub log: Option<String>,
    /// Sync every SQLite commit.
    pub sqlite_synchronous_full: bool,
    /// Redis workers take messages pushed by the publisher while idle.
    pub redis_push_to_idle: bool,
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
    /// `--redis-ca-file`.
    pub redis_ca_file: Option<PathBuf>,
    /// `--redis-client-cert`.
    pub redis_client_cert: Option<PathBuf>,
    /// `--redis-client-key`.
    pub redis_client_key: Option<PathBuf>,
    /// `--storage`.
    pub storage_url: Option<String>,
    /// `--result-expires`.
    pub result_expires: Option<u64>,
    /// `--log`.
    pub log: Option<String>,
    /// `--sqlite-synchronous-full`.
    pub sqlite_synchronous_full: Option<bool>,
    /// `--redis-push-to-idle`.
    pub redis_push_to_idle: Option<bool>,
}

impl Settings {
    /// Applies the defaults and checks what clap cannot.
    pub fn resolve(g: GlobalLayer) -> anyhow::Result<Self> {
        let result_expires = g
            .result_expires
            .map_or(DEFAULT_RESULT_EXPIRES, Duration::from_secs);
        if result_expires.is_zero() {
            usage!("result expiry must be at least one second (results must not be kept forever)");
        }
        Ok(Self {
            data_dir: g
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            broker_url: g.broker_url,
            result_backend: g.result_backend,
            database_url: g.database_url,
            database_ca_file: g.database_ca_file,
            redis_ca_file: g.redis_ca_file,
            redis_client_cert: match (g.redis_client_cert, g.redis_client_key) {
                (None, None) => None,
                (Some(c), Some(k)) => Some((c, k)),
                (Some(_), None) => usage!("--redis-client-cert needs --redis-client-key"),
                (None, Some(_)) => usage!("--redis-client-key needs --redis-client-cert"),
            },
            storage_url: g.storage_url,
            result_expires,
            log: g.log,
            sqlite_synchronous_full: g.sqlite_synchronous_full.unwrap_or(false),
            redis_push_to_idle: g.redis_push_to_idle.unwrap_or(true),
        })
    }
}

/// Seconds given on the command line or in the file, checked.
pub fn secs(what: &str, v: f64) -> anyhow::Result<Duration> {
    if !v.is_finite() || v < 0.0 {
        usage!("{what} must be a non-negative number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// The product's settings as given (flag, variable or file), before checking.
#[derive(Debug, Clone, Default)]
pub struct ProductLayer {
    /// `--preview-engine`.
    pub preview_engine: Option<String>,
    /// `--allowed-engines`.
    pub allowed_engines: Option<String>,
    /// `--preview-label`.
    pub preview_label: Option<String>,
    /// `--catalog`.
    pub catalog: Option<PathBuf>,
    /// `--report-fonts`.
    pub report_fonts: Option<Vec<String>>,
    /// `--gemini-api-key-file`.
    pub gemini_api_key_file: Option<PathBuf>,
    /// `--gemini-model`.
    pub gemini_model: Option<String>,
    /// `--gemini-base-url`.
    pub gemini_base_url: Option<String>,
}

/// What the product's tasks run with: preview engines, catalog, label, Gemini. Resolved and
/// checked once, before anything starts.
#[derive(Debug, Clone)]
pub struct ProductSettings {
    /// The engine of a request that names none.
    pub default_engine: EngineKind,
    /// Engines a request may choose (the default first).
    pub allowed_engines: Vec<EngineKind>,
    /// Corner label: `None` = the built-in one, `Some("")` = none.
    pub preview_label: Option<String>,
    /// A catalog file replacing the built-in catalog.
    pub catalog: Option<PathBuf>,
    /// Fallback font files for report text, in the order they are tried.
    pub report_fonts: Vec<PathBuf>,
    /// Gemini, when a key is configured.
    pub gemini: Option<GeminiSettings>,
}

/// How to reach Gemini. The key comes from a file or `AFTERVIEW_GEMINI_API_KEY`, never a flag,
/// and is never printed (`Debug` shows `***`).
#[derive(Clone)]
pub struct GeminiSettings {
    /// The API key.
    pub key: String,
    /// Model override.
    pub model: Option<String>,
    /// Endpoint override.
    pub base_url: Option<String>,
}

impl std::fmt::Debug for GeminiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeminiSettings")
            .field("key", &"***")
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .finish()
    }
}

fn engine_named(name: &str) -> Option<EngineKind> {
    match name {
        "local" => Some(EngineKind::Local),
        "gemini" => Some(EngineKind::Gemini),
        _ => None,
    }
}

impl ProductSettings {
    /// Checks `l`: known engines, Gemini configured when named, a readable key file.
    pub fn resolve(l: ProductLayer) -> anyhow::Result<Self> {
        let name = l.preview_engine.as_deref().unwrap_or("local");
        let Some(default_engine) = engine_named(name) else {
            usage!("unknown preview engine {name:?}: use local or gemini");
        };
        let gemini = gemini_key(l.gemini_api_key_file.as_ref())?.map(|key| GeminiSettings {
            key,
            model: l.gemini_model.clone(),
            base_url: l.gemini_base_url.clone(),
        });
        if gemini.is_none() && default_engine == EngineKind::Gemini {
            usage!(
                "AFTERVIEW_PREVIEW_ENGINE=gemini needs AFTERVIEW_GEMINI_API_KEY (or --gemini-api-key-file)"
            );
        }
        let mut allowed_engines = vec![default_engine];
        for name in l
            .allowed_engines
            .iter()
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let Some(e) = engine_named(name) else {
                usage!("AFTERVIEW_ALLOWED_ENGINES: unknown engine {name:?} (local, gemini)");
            };
            if e == EngineKind::Gemini && gemini.is_none() {
                usage!(
                    "AFTERVIEW_ALLOWED_ENGINES names gemini but no Gemini API key is configured"
                );
            }
            if !allowed_engines.contains(&e) {
                allowed_engines.push(e);
            }
        }
        Ok(Self {
            default_engine,
            allowed_engines,
            preview_label: l.preview_label,
            catalog: l.catalog,
            report_fonts: report_fonts(l.report_fonts),
            gemini,
        })
    }
}

/// Fonts for report text the bundled DejaVu lacks, used when none are configured: those of
/// Debian's packages that are installed (fonts-noto-cjk covers Chinese, Japanese and Korean;
/// fonts-wqy-zenhei too, in less space; fonts-droid-fallback Chinese and Japanese only).
pub const SYSTEM_REPORT_FONTS: &[&str] = &[
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
];

/// The report's fallback fonts: those given (`none`: none), else [`SYSTEM_REPORT_FONTS`]
/// that exist.
fn report_fonts(given: Option<Vec<String>>) -> Vec<PathBuf> {
    match given {
        Some(v) => v
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty() && *p != "none")
            .map(PathBuf::from)
            .collect(),
        None => SYSTEM_REPORT_FONTS
            .iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect(),
    }
}

/// The Gemini key: from a file when given, else from `AFTERVIEW_GEMINI_API_KEY`. Never a flag,
/// so it never shows in `ps`.
fn gemini_key(file: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    let from_env = std::env::var("AFTERVIEW_GEMINI_API_KEY").is_ok_and(|v| !v.trim().is_empty());
    if from_env && file.is_some() {
        // Neither may silently win: a key rotated through one would not be the key used.
        usage!(
            "both AFTERVIEW_GEMINI_API_KEY and a key file (--gemini-api-key-file, \
             AFTERVIEW_GEMINI_API_KEY_FILE or gemini_api_key_file) are set: keep one"
        );
    }
    if let Some(p) = file {
        let k = match std::fs::read_to_string(p) {
            Ok(k) => k,
            Err(e) => usage!("cannot read the Gemini key file {}: {e}", p.display()),
        };
        let k = k.trim().to_owned();
        if k.is_empty() {
            usage!("the Gemini key file {} is empty", p.display());
        }
        return Ok(Some(k));
    }
    Ok(std::env::var("AFTERVIEW_GEMINI_API_KEY")
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_settings_are_checked_before_anything_starts() {
        let bad = ProductSettings::resolve(ProductLayer {
            preview_engine: Some("dall-e".into()),
            ..ProductLayer::default()
        });
        assert!(bad.unwrap_err().to_string().contains("dall-e"));
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "  k-123 \n").unwrap();
        let ok = ProductSettings::resolve(ProductLayer {
            allowed_engines: Some("gemini, local,gemini".into()),
            gemini_api_key_file: Some(key.clone()),
            ..ProductLayer::default()
        })
        .unwrap();
        assert_eq!(ok.default_engine, EngineKind::Local);
        assert_eq!(ok.allowed_engines, [EngineKind::Local, EngineKind::Gemini]);
        let g = ok.gemini.unwrap();
        assert_eq!(g.key, "k-123");
        assert!(
            !format!("{g:?}").contains("k-123"),
            "the key is never printed"
        );
        std::fs::write(&key, " ").unwrap();
        let empty = ProductSettings::resolve(ProductLayer {
            gemini_api_key_file: Some(key),
            ..ProductLayer::default()
        });
        assert!(empty.unwrap_err().to_string().contains("empty"));
    }

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
