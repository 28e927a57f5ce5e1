//! The product's tasks and their dependencies, built from the settings: the metadata store
//! (SQLite `<data-dir>/metadata.db` by default, or PostgreSQL), the blob store
//! (`<data-dir>/blobs` by default, or an S3 bucket), the catalog, and the preview engines.

use std::path::PathBuf;
use std::sync::Arc;

use afterview_core::catalog::Catalog;
use afterview_engine::Registry;
use afterview_gemini::{GeminiClient, GeminiConfig};
use afterview_jobs::{Deps, PreviewSettings, ReportFonts};
use afterview_store::postgres::PostgresMetadata;
use afterview_store::sqlite::SqliteMetadata;
use afterview_store::{BlobStore, MetadataStore, ObjectBlobStore};
use anyhow::Context;

use crate::config::{ProductSettings, Settings};

/// The stores and catalog every process of the product shares.
#[derive(Clone)]
pub struct Product {
    /// Metadata.
    pub meta: Arc<dyn MetadataStore>,
    /// Bytes.
    pub blobs: Arc<dyn BlobStore>,
    /// The procedure catalog.
    pub catalog: Arc<Catalog>,
    /// What the stores are, for logs (no passwords).
    pub description: String,
}

/// Opens the metadata store the settings name (migrating its schema).
pub async fn open_metadata(s: &Settings) -> anyhow::Result<(Arc<dyn MetadataStore>, String)> {
    let url = s.database_url.as_deref().unwrap_or("sqlite://");
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let shown = redact(url);
        let m = PostgresMetadata::connect_with_ca(url, s.database_ca_file.as_deref())
            .await
            .with_context(|| format!("cannot open the metadata database {shown}"))?;
        return Ok((Arc::new(m), shown));
    }
    let Some(rest) = url.strip_prefix("sqlite://") else {
        usage!(
            "unknown database URL {}: use sqlite://[path] or postgres://user[:password]@host[:port]/db",
            redact(url)
        );
    };
    let path = if rest.is_empty() {
        s.data_dir.join("metadata.db")
    } else {
        PathBuf::from(rest)
    };
    let m = SqliteMetadata::open_with(&path, s.sqlite_synchronous_full)
        .with_context(|| format!("cannot open the metadata store {}", path.display()))?;
    Ok((Arc::new(m), format!("sqlite {}", path.display())))
}

/// Opens the blob store the settings name.
pub fn open_blobs(s: &Settings) -> anyhow::Result<(Arc<dyn BlobStore>, String)> {
    if let Some(url) = s.storage_url.as_deref()
        && url.contains("://")
        && !url.starts_with("file://")
        && !url.starts_with("s3://")
    {
        usage!(
            "unknown storage URL {}: use file://path, a path, or s3://bucket[/prefix]",
            redact(url)
        );
    }
    let b = match s.storage_url.as_deref() {
        None => ObjectBlobStore::local_with(&s.data_dir.join("blobs"), s.sqlite_synchronous_full),
        Some(url) => ObjectBlobStore::from_url_with(url, s.sqlite_synchronous_full),
    }
    .context("cannot open the blob store")?;
    let d = b.description().to_owned();
    Ok((Arc::new(b), d))
}

/// `scheme://user:secret@host` → `scheme://user:***@host`; a `password=` parameter (in the
/// query, `?password=…`, or a `key=value` connection string) keeps its name only.
pub fn redact(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    };
    let mut out = String::with_capacity(url.len());
    let mut rest = url.as_str();
    while let Some(i) = rest.to_ascii_lowercase().find("password=") {
        let value = i + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str("***");
        let end = rest[value..]
            .find(|c: char| c == '&' || c.is_whitespace())
            .map_or(rest.len(), |e| value + e);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

impl Product {
    /// Opens the stores and loads the catalog.
    pub async fn open(s: &Settings, p: &ProductSettings) -> anyhow::Result<Self> {
        let (meta, md) = open_metadata(s).await?;
        let (blobs, bd) = open_blobs(s)?;
        let catalog = match &p.catalog {
            Some(p) => {
                let text = match std::fs::read_to_string(p) {
                    Ok(text) => text,
                    Err(e) => usage!("cannot read the catalog {}: {e}", p.display()),
                };
                match Catalog::from_json(&text) {
                    Ok(c) => c,
                    Err(e) => usage!("the catalog {}: {e}", p.display()),
                }
            }
            None => Catalog::builtin(),
        };
        Ok(Self {
            meta,
            blobs,
            catalog: Arc::new(catalog),
            description: format!("metadata {md}, blobs {bd}"),
        })
    }

    /// A registry with the built-ins and the product's tasks.
    pub fn registry(&self, p: &ProductSettings) -> anyhow::Result<Registry> {
        let preview = preview_settings(p)?;
        let mut r = Registry::with_builtins();
        afterview_jobs::register(
            &mut r,
            Arc::new(Deps {
                meta: self.meta.clone(),
                blobs: self.blobs.clone(),
                catalog: self.catalog.clone(),
                preview,
                report_fonts: report_fonts(p)?,
            }),
        );
        Ok(r)
    }
}

/// The report's faces: the bundled ones, then each configured fallback file, read and checked
/// before anything starts.
fn report_fonts(p: &ProductSettings) -> anyhow::Result<ReportFonts> {
    let mut fonts = ReportFonts::bundled();
    for path in &p.report_fonts {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => usage!("cannot read the report font {}: {e}", path.display()),
        };
        fonts = match fonts.with_fallback(&path.display().to_string(), bytes) {
            Ok(f) => f,
            Err(e) => usage!("AFTERVIEW_REPORT_FONTS: {e}"),
        };
    }
    Ok(fonts)
}

fn preview_settings(p: &ProductSettings) -> anyhow::Result<PreviewSettings> {
    let gemini = match &p.gemini {
        Some(g) => {
            let mut cfg = GeminiConfig::new(g.key.clone());
            if let Some(m) = &g.model {
                cfg.model = m.clone();
            }
            if let Some(u) = &g.base_url {
                cfg.base_url = u.clone();
            }
            Some(GeminiClient::new(cfg).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
        None => None,
    };
    let defaults = PreviewSettings::default();
    let label = match p.preview_label.as_deref() {
        None => defaults.label.clone(),
        Some("") => None,
        Some(l) => Some(l.to_owned()),
    };
    Ok(PreviewSettings {
        default_engine: p.default_engine,
        label,
        gemini,
        allowed_engines: p.allowed_engines.clone(),
        ..defaults
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://app:s3cret@db:5432/afterview"),
            "postgres://app:***@db:5432/afterview"
        );
        assert_eq!(
            super::redact("postgres://app@db/afterview"),
            "postgres://app@db/afterview"
        );
        assert_eq!(super::redact("sqlite://"), "sqlite://");
        assert_eq!(
            super::redact("postgres://app@db/afterview?sslmode=require&password=s3cret&x=1"),
            "postgres://app@db/afterview?sslmode=require&password=***&x=1"
        );
        assert_eq!(
            super::redact("host=db user=app PASSWORD=s3cret dbname=afterview"),
            "host=db user=app PASSWORD=*** dbname=afterview"
        );
    }
}
