//! The process entry: umask, the config file's values as the arguments' defaults, parsing,
//! settings, logging, the runtime, and dispatch to [`crate::commands`].

use std::process::ExitCode;

use crate::cli::{Cli, Command, EXIT_USAGE};
use crate::commands;
use crate::config::Settings;

/// Every `AFTERVIEW_*` variable an argument of `cmd` (or of its subcommands) reads.
fn variables(cmd: &clap::Command) -> std::collections::BTreeSet<String> {
    let mut out: std::collections::BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env()?.to_str().map(str::to_owned))
        .collect();
    for sc in cmd.get_subcommands() {
        out.extend(variables(sc));
    }
    out
}

/// The config file's values become the arguments' defaults: below variables and flags. They
/// are not shown by `--help` (a database URL with its password, a metrics token).
fn with_file_defaults(
    cmd: clap::Command,
    file: &std::collections::BTreeMap<String, Vec<String>>,
) -> clap::Command {
    let set = |a: clap::Arg| -> clap::Arg {
        let values = a
            .get_env()
            .and_then(|e| e.to_str())
            .and_then(|e| file.get(e));
        match values {
            // Parsed once per process; clap keeps `&'static str` defaults.
            Some(v) => a
                .default_values(v.iter().map(|s| &*Box::leak(s.clone().into_boxed_str())))
                .hide_default_value(true),
            None => a,
        }
    };
    let cmd = cmd.mut_args(set);
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    names
        .iter()
        .fold(cmd, |c, n| c.mut_subcommand(n, |sc| sc.mut_args(set)))
}

/// An error and its causes on one line, each cause once: a backend error's message already
/// holds its source's text (Redis's answer), which anyhow's `{:#}` printed again for every
/// link of the chain (`backend full: "OOM" …: "OOM" …: "OOM" …`).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for link in e.chain() {
        let text = link.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    private_files();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = <Cli as clap::CommandFactory>::command();
    if let Some(path) = crate::config::file_for(&argv) {
        match crate::config::load_file(&path, &variables(&cmd)) {
            Ok(file) => cmd = with_file_defaults(cmd, &file),
            Err(e) => {
                eprintln!("afterview: {}", describe(&e));
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let matches = cmd.get_matches_from(&argv);
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let layer = cli.global_layer();
    let settings = match Settings::resolve(layer) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("afterview: {}", describe(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    tighten(&settings.data_dir);
    let long_running = matches!(cli.command, Command::Serve(_) | Command::Worker(_));
    init_logging(
        settings
            .log
            .as_deref()
            .unwrap_or(if long_running { "info" } else { "warn" }),
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("afterview: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => commands::serve(settings, *a).await,
            Command::Worker(a) => commands::worker(settings, a).await,
            Command::Call(a) => commands::call(settings, a).await,
            Command::Result(a) => commands::result(settings, a).await,
            Command::Revoke(a) => commands::revoke(settings, a).await,
            Command::Purge(a) => commands::purge(settings, a).await,
            Command::Inspect(a) => commands::inspect(settings, a).await,
            Command::Migrate => commands::migrate(settings).await,
        }
    });
    // Blocking threads (the SQLite writer, abandoned CPU-bound runs) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match out {
        Ok(code) => code,
        Err(e) => {
            eprintln!("afterview: {}", describe(&e));
            if e.chain().any(|c| c.is::<crate::cli::Usage>()) {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Everything the process creates (data dir, databases, blobs, tokens) is the owner's only:
/// directories 0700, files 0600. Called first in `main`, before any thread exists.
#[allow(unsafe_code)]
fn private_files() {
    // SAFETY: umask(2) cannot fail and only changes this process's file-creation mask; no
    // other thread exists yet, so no concurrent file creation sees a half-set mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// A data dir left group- or world-accessible by an older version is made the owner's only.
fn tighten(dir: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(dir)
            && meta.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
}

#[cfg(test)]
mod describe_tests {
    use super::describe;

    #[derive(Debug)]
    struct Leaf;
    impl std::fmt::Display for Leaf {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("\"OOM\": command not allowed")
        }
    }
    impl std::error::Error for Leaf {}

    #[derive(Debug)]
    struct Wrapper(Leaf);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "backend full: {}", self.0)
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_said_once() {
        let e = anyhow::Error::new(Wrapper(Leaf)).context("inspect");
        assert_eq!(
            describe(&e),
            "inspect: backend full: \"OOM\": command not allowed"
        );
        let plain = anyhow::anyhow!("no such task").context("result");
        assert_eq!(describe(&plain), "result: no such task");
    }
}
