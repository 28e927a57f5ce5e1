//! The command line's shape (clap) and the exit codes. Every flag is also an `AFTERVIEW_*`
//! environment variable and an `afterview.toml` key. A leaf: it knows no command; `entry`
//! parses and dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{GlobalLayer, ProductLayer};

/// Exit code for an error in the arguments or the configuration.
pub const EXIT_USAGE: u8 = 2;

/// A bad argument or configuration value found after parsing (an unknown broker URL, a
/// concurrency of 0): the process exits with [`EXIT_USAGE`], as for clap's own errors, so a
/// script or a service manager tells a typo from a task's failure.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}
/// Exit code when a waited-for task ended in FAILURE.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code when a waited-for task was REVOKED.
pub const EXIT_REVOKED: u8 = 3;
/// Exit code when waiting timed out.
pub const EXIT_TIMEOUT: u8 = 4;
/// Exit code when no worker answered an inspect (as Celery: `EX_UNAVAILABLE`).
pub const EXIT_NO_WORKERS: u8 = 69;

/// Afterview: surgical previews and reports, run as Celery-compatible tasks.
#[derive(Debug, Parser)]
#[command(name = "afterview", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// The global flags as the lowest-but-one configuration layer (above the file).
    pub(crate) fn global_layer(&self) -> GlobalLayer {
        let g = &self.global;
        GlobalLayer {
            data_dir: g.data_dir.clone(),
            broker_url: g.broker_url.clone(),
            result_backend: g.result_backend.clone(),
            database_url: g.database_url.clone(),
            database_ca_file: g.database_ca_file.clone(),
            redis_ca_file: g.redis_ca_file.clone(),
            redis_client_cert: g.redis_client_cert.clone(),
            redis_client_key: g.redis_client_key.clone(),
            storage_url: g.storage_url.clone(),
            result_expires: g.result_expires,
            log: g.log.clone(),
            sqlite_synchronous_full: g.sqlite_synchronous_full,
            redis_push_to_idle: g.redis_push_to_idle,
        }
    }
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Data directory (embedded database, stored files).
    #[arg(long, global = true, env = "AFTERVIEW_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML config file (default: <data-dir>/afterview.toml when it exists); read before
    /// parsing, its keys are the variables' names without AFTERVIEW_, lowercased.
    #[arg(long, global = true, env = "AFTERVIEW_CONFIG", value_name = "FILE")]
    #[allow(dead_code)]
    config: Option<PathBuf>,
    /// Broker: sqlite://[path] (default, embedded), redis://[:password@]host[:port][/db] (shared
    /// with Celery), memory://.
    #[arg(
        long = "broker",
        global = true,
        env = "AFTERVIEW_BROKER_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    broker_url: Option<String>,
    /// Result backend (default: the broker's store; with Redis, another database of the same
    /// server, e.g. redis://host:6379/1).
    #[arg(
        long,
        global = true,
        env = "AFTERVIEW_RESULT_BACKEND",
        value_name = "URL",
        hide_env_values = true
    )]
    result_backend: Option<String>,
    /// Metadata database: sqlite://[path] (default: <data-dir>/metadata.db) or
    /// postgres://user[:password]@host[:port]/db (shared by many hosts).
    #[arg(
        long = "database",
        global = true,
        env = "AFTERVIEW_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// With `sslmode=require` in the database URL: trust only the CA certificates (PEM) in
    /// this file [default: the system trust store].
    #[arg(
        long,
        global = true,
        env = "AFTERVIEW_DATABASE_CA_FILE",
        value_name = "FILE"
    )]
    database_ca_file: Option<PathBuf>,
    /// With a rediss:// (TLS) broker URL: trust only the CA certificates (PEM) in this file
    /// [default: the system trust store].
    #[arg(
        long,
        global = true,
        env = "AFTERVIEW_REDIS_CA_FILE",
        value_name = "FILE"
    )]
    redis_ca_file: Option<PathBuf>,
    /// With a rediss:// broker URL on a server that asks for client certificates: this
    /// client's certificate chain (PEM); needs --redis-client-key.
    #[arg(
        long,
        global = true,
        env = "AFTERVIEW_REDIS_CLIENT_CERT",
        value_name = "FILE"
    )]
    redis_client_cert: Option<PathBuf>,
    /// The private key (PEM) of --redis-client-cert.
    #[arg(
        long,
        global = true,
        env = "AFTERVIEW_REDIS_CLIENT_KEY",
        value_name = "FILE"
    )]
    redis_client_key: Option<PathBuf>,
    /// Where photos, previews and reports are stored: file://path (default: <data-dir>/blobs)
    /// or s3://bucket[/prefix] (credentials and endpoint from the standard AWS_* variables).
    #[arg(
        long = "storage",
        global = true,
        env = "AFTERVIEW_STORAGE_URL",
        value_name = "URL"
    )]
    storage_url: Option<String>,
    /// Seconds results are kept [default: 86400].
    #[arg(
        long,
        global = true,
        env = "AFTERVIEW_RESULT_EXPIRES",
        value_name = "SECS"
    )]
    result_expires: Option<u64>,
    /// Log filter, e.g. `info` or `afterview_engine=debug` [default: info for serve/worker, warn otherwise].
    #[arg(long, global = true, env = "AFTERVIEW_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Sync every commit of the embedded SQLite files (queue, results, metadata) and every
    /// locally stored file to disk before answering (survives power loss, slower).
    #[arg(long, global = true, env = "AFTERVIEW_SQLITE_SYNCHRONOUS_FULL")]
    sqlite_synchronous_full: Option<bool>,
    /// Redis: hand a message straight to an idle worker of its queue (one round trip less).
    #[arg(long, global = true, env = "AFTERVIEW_REDIS_PUSH_TO_IDLE")]
    redis_push_to_idle: Option<bool>,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API with an embedded worker.
    Serve(Box<ServeArgs>),
    /// Run a worker.
    Worker(WorkerArgs),
    /// Send a task; print its id (or, with --wait, its result).
    Call(CallArgs),
    /// Print a task's result.
    Result(ResultArgs),
    /// Revoke a task: queued copies never run, a running one is cancelled.
    Revoke(RevokeArgs),
    /// Delete all waiting messages of queues.
    Purge(PurgeArgs),
    /// Ask the live workers.
    Inspect(InspectArgs),
    /// Create or upgrade the metadata schema (also done at every start) and check the storage.
    Migrate,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "AFTERVIEW_BIND", value_name = "ADDR")]
    pub bind: Option<String>,
    /// Run the API only, without the embedded worker.
    #[arg(long, env = "AFTERVIEW_NO_WORKER")]
    pub no_worker: bool,
    /// Firebase project whose ID tokens are accepted.
    #[arg(long, env = "AFTERVIEW_FIREBASE_PROJECT_ID", value_name = "PROJECT")]
    pub firebase_project_id: Option<String>,
    /// The Firebase project's web API key (public, from the Firebase console): with
    /// --firebase-project-id, the web app offers "Sign in with Google".
    #[arg(long, env = "AFTERVIEW_FIREBASE_WEB_API_KEY", value_name = "KEY")]
    pub firebase_web_api_key: Option<String>,
    /// User ids that may open the monitor (`/monitor`, `/api/monitor`), comma-separated; for
    /// everyone else it does not exist (404).
    #[arg(long, env = "AFTERVIEW_OPERATORS", value_name = "USERS")]
    pub operators: Option<String>,
    /// Where Firebase's signing keys are fetched [default: Google's securetoken JWKS].
    #[arg(long, env = "AFTERVIEW_FIREBASE_JWKS_URL", value_name = "URL")]
    pub firebase_jwks_url: Option<String>,
    /// An OIDC issuer whose tokens are accepted (with --oidc-audience and --oidc-jwks-url).
    #[arg(long, env = "AFTERVIEW_OIDC_ISSUER", value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// The audience OIDC tokens must carry.
    #[arg(long, env = "AFTERVIEW_OIDC_AUDIENCE", value_name = "AUD")]
    pub oidc_audience: Option<String>,
    /// The OIDC issuer's JWKS URL.
    #[arg(long, env = "AFTERVIEW_OIDC_JWKS_URL", value_name = "URL")]
    pub oidc_jwks_url: Option<String>,
    /// File of static tokens, `token=user` per line or comma-separated (else AFTERVIEW_AUTH_TOKENS).
    #[arg(long, env = "AFTERVIEW_AUTH_TOKENS_FILE", value_name = "FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Largest accepted upload in bytes [default: 20000000].
    #[arg(long, env = "AFTERVIEW_MAX_UPLOAD_BYTES", value_name = "BYTES")]
    pub max_upload_bytes: Option<usize>,
    /// Largest accepted photo in pixels [default: 40000000].
    #[arg(long, env = "AFTERVIEW_MAX_PIXELS", value_name = "PIXELS")]
    pub max_pixels: Option<u64>,
    /// A token `/metrics` requires (`Authorization: Bearer …`); without it `/metrics` is open.
    #[arg(
        long,
        env = "AFTERVIEW_METRICS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
    /// Tasks one user may have waiting or running; 0 for no limit [default: 10].
    #[arg(long, env = "AFTERVIEW_MAX_ACTIVE_TASKS_PER_USER", value_name = "N")]
    pub max_active_tasks_per_user: Option<usize>,
    /// Synchronous requests one user may have open; 0 for no limit [default: 2].
    #[arg(long, env = "AFTERVIEW_MAX_SYNC_REQUESTS_PER_USER", value_name = "N")]
    pub max_sync_requests_per_user: Option<usize>,
    /// Photos one user may store [default: 1000].
    #[arg(long, env = "AFTERVIEW_MAX_PHOTOS_PER_USER", value_name = "N")]
    pub max_photos_per_user: Option<usize>,
    /// Bytes of photos one user may store [default: 2000000000].
    #[arg(
        long,
        env = "AFTERVIEW_MAX_STORAGE_BYTES_PER_USER",
        value_name = "BYTES"
    )]
    pub max_storage_bytes_per_user: Option<u64>,
    /// Downloads answer 307 to a presigned URL of the object store valid this many seconds
    /// (S3 storage only), so the bytes skip the API host; 0 streams them [default: 0].
    #[arg(long, env = "AFTERVIEW_PRESIGN_DOWNLOADS", value_name = "SECS")]
    pub presign_downloads: Option<u64>,
    /// Allow the dev token (no authentication configured) on an address other than loopback.
    /// Without it, `serve` refuses to start there: anyone on the network could read every photo.
    #[arg(long, env = "AFTERVIEW_ALLOW_DEV_TOKEN_ON_NETWORK")]
    pub allow_dev_token_on_network: bool,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

/// `worker`, and the embedded worker of `serve`.
#[derive(Debug, Args, Clone, Default)]
pub struct WorkerArgs {
    /// Queues to consume, comma-separated [default: every queue a registered task uses].
    #[arg(
        short = 'Q',
        long,
        env = "AFTERVIEW_QUEUES",
        value_delimiter = ',',
        value_name = "QUEUES"
    )]
    pub queues: Option<Vec<String>>,
    /// Tasks run at once [default: number of CPUs].
    #[arg(short = 'c', long, env = "AFTERVIEW_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
    /// Node name; %h = host, %n = short host, %p = pid [default: afterview-<pid>@<host>].
    #[arg(
        short = 'n',
        long = "hostname",
        env = "AFTERVIEW_NODE_NAME",
        value_name = "NAME"
    )]
    pub node: Option<String>,
    /// Messages held per slot; 1 = never reserve work a busy slot cannot start [default: 1].
    #[arg(long, env = "AFTERVIEW_PREFETCH_MULTIPLIER", value_name = "N")]
    pub prefetch_multiplier: Option<usize>,
    /// Lease seconds: a dead worker's tasks come back this long after its last renewal [default: 10].
    #[arg(long, env = "AFTERVIEW_LEASE", value_name = "SECS")]
    pub lease: Option<f64>,
    /// Seconds running tasks may finish at shutdown before being given back [default: 30].
    #[arg(long, env = "AFTERVIEW_SHUTDOWN_GRACE", value_name = "SECS")]
    pub shutdown_grace: Option<f64>,
    /// Seconds a revoked running task may clean up before it is abandoned [default: 5].
    #[arg(long, env = "AFTERVIEW_REVOKE_GRACE", value_name = "SECS")]
    pub revoke_grace: Option<f64>,
    /// Send Celery task events (task-received, task-started, ...) for Flower and `celery events`,
    /// as `celery worker -E` (Redis broker; Flower also turns them on by itself).
    #[arg(short = 'E', long = "events", env = "AFTERVIEW_TASK_EVENTS")]
    pub events: bool,
    /// Write the process id to this file once the worker is connected and about to consume
    /// (for supervisors and benchmark harnesses).
    #[arg(long, env = "AFTERVIEW_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub product: ProductArgs,
}

/// How the product's tasks run (previews, catalog).
#[derive(Debug, Args, Clone, Default)]
pub struct ProductArgs {
    /// Preview engine when a request names none: local (offline, deterministic) or gemini.
    #[arg(long, env = "AFTERVIEW_PREVIEW_ENGINE", value_name = "ENGINE")]
    pub preview_engine: Option<String>,
    /// Engines a request may choose with `options.engine`, comma-separated [default: only the
    /// preview engine].
    #[arg(long, env = "AFTERVIEW_ALLOWED_ENGINES", value_name = "ENGINES")]
    pub allowed_engines: Option<String>,
    /// Corner label on previews [default: SIMULATION]; empty for none.
    #[arg(long, env = "AFTERVIEW_PREVIEW_LABEL", value_name = "TEXT")]
    pub preview_label: Option<String>,
    /// A catalog JSON file replacing the built-in procedure catalog.
    #[arg(long, env = "AFTERVIEW_CATALOG", value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Font files for report text the bundled DejaVu lacks (Chinese, Japanese, Korean, Thai…),
    /// comma-separated, tried in order; `none` for none [default: whichever of Debian's
    /// fonts-noto-cjk, fonts-wqy-zenhei and fonts-droid-fallback are installed].
    #[arg(
        long,
        env = "AFTERVIEW_REPORT_FONTS",
        value_delimiter = ',',
        value_name = "FILES"
    )]
    pub report_fonts: Option<Vec<String>>,
    /// File holding the Gemini API key (else AFTERVIEW_GEMINI_API_KEY).
    #[arg(long, env = "AFTERVIEW_GEMINI_API_KEY_FILE", value_name = "FILE")]
    pub gemini_api_key_file: Option<PathBuf>,
    /// Gemini model [default: gemini-2.5-flash-image].
    #[arg(long, env = "AFTERVIEW_GEMINI_MODEL", value_name = "MODEL")]
    pub gemini_model: Option<String>,
    /// Gemini endpoint (tests and proxies) [default: https://generativelanguage.googleapis.com].
    #[arg(long, env = "AFTERVIEW_GEMINI_BASE_URL", value_name = "URL")]
    pub gemini_base_url: Option<String>,
}

impl ProductArgs {
    /// The product flags as a configuration layer.
    pub(crate) fn layer(&self) -> ProductLayer {
        ProductLayer {
            preview_engine: self.preview_engine.clone(),
            allowed_engines: self.allowed_engines.clone(),
            preview_label: self.preview_label.clone(),
            catalog: self.catalog.clone(),
            report_fonts: self.report_fonts.clone(),
            gemini_api_key_file: self.gemini_api_key_file.clone(),
            gemini_model: self.gemini_model.clone(),
            gemini_base_url: self.gemini_base_url.clone(),
        }
    }
}

/// `call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// Task name, e.g. afterview.noop.
    pub name: String,
    /// Positional arguments as a JSON list.
    #[arg(long, value_name = "JSON")]
    pub args: Option<String>,
    /// Keyword arguments as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub kwargs: Option<String>,
    /// Queue [default: the task's queue].
    #[arg(long)]
    pub queue: Option<String>,
    /// Run this many seconds from now.
    #[arg(long, value_name = "SECS")]
    pub countdown: Option<f64>,
    /// Run at this ISO-8601 time.
    #[arg(long, value_name = "ISO")]
    pub eta: Option<String>,
    /// Revoke (reason `expired`) if not started within this many seconds.
    #[arg(long, value_name = "SECS")]
    pub expires: Option<f64>,
    /// Priority 0-9 (0 is served first, as Celery on Redis).
    #[arg(long)]
    pub priority: Option<u8>,
    /// Hard time limit in seconds.
    #[arg(long, value_name = "SECS")]
    pub time_limit: Option<f64>,
    /// Soft time limit in seconds.
    #[arg(long, value_name = "SECS")]
    pub soft_time_limit: Option<f64>,
    /// Task id [default: a new UUID].
    #[arg(long)]
    pub task_id: Option<String>,
    /// Wait for the result and print it.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with --wait [default: 330].
    #[arg(long, value_name = "SECS", requires = "wait")]
    pub timeout: Option<f64>,
}

/// `result`.
#[derive(Debug, Args)]
pub struct ResultArgs {
    /// Task id.
    pub id: String,
    /// Print the whole meta (status, result, traceback, ...).
    #[arg(long)]
    pub meta: bool,
}

/// `revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Task ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Stop a running task at once instead of letting it clean up.
    #[arg(long)]
    pub terminate: bool,
}

/// `purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Queues, comma-separated [default: every queue a registered task uses].
    #[arg(short = 'Q', long, value_delimiter = ',')]
    pub queues: Option<Vec<String>>,
}

/// `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// What to ask.
    pub what: InspectWhat,
    /// Seconds to wait for answers.
    #[arg(long, default_value_t = 1.0)]
    pub timeout: f64,
}

/// `inspect` subjects.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InspectWhat {
    /// Tasks running now.
    Active,
    /// Worker statistics.
    Stats,
    /// Registered task names.
    Registered,
    /// Consumed queues and their lengths.
    Queues,
    /// Workers that answer.
    Ping,
}
