//! The `afterview` binary as a library: command-line parsing, typed configuration, backend
//! wiring, and the commands (`serve`, `worker`, `call`, `result`, `revoke`, `purge`, `inspect`).
//!
//! This is the only crate that chooses backends: everything below receives trait objects.

/// Returns a [`cli::Usage`] error (bad arguments or configuration: exit code 2), formatted as
/// `bail!` would.
macro_rules! usage {
    ($($t:tt)*) => {
        return Err(anyhow::Error::new($crate::cli::Usage(format!($($t)*))))
    };
}

pub mod backends;
pub mod cli;
pub mod commands;
pub mod config;
pub mod entry;
pub mod product;

use afterview_core::tasks;
use afterview_engine::Client;

/// Task name → queue for every task this binary knows (built-ins and the product's), so
/// producers route correctly without building the tasks themselves.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    let mut r: Vec<(&'static str, &'static str)> = afterview_engine::Registry::with_builtins()
        .names()
        .into_iter()
        .map(|n| (leak(n), afterview_engine::message::DEFAULT_QUEUE))
        .collect();
    r.extend([
        (tasks::GENERATE_VISUALIZATION, tasks::QUEUE_VISUALIZATIONS),
        (tasks::GENERATE_COMPARISON, tasks::QUEUE_VISUALIZATIONS),
        (tasks::DETECT_FACE, tasks::QUEUE_VISUALIZATIONS),
        (tasks::GENERATE_EXPORT, tasks::QUEUE_EXPORTS),
        (tasks::GENERATE_COST_INFOGRAPHIC, tasks::QUEUE_EXPORTS),
        (tasks::DELETE_FILES, tasks::QUEUE_EXPORTS),
    ]);
    r
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Every queue some known task uses, sorted.
pub fn all_queues() -> Vec<String> {
    let mut q: Vec<String> = routes().into_iter().map(|(_, q)| q.to_owned()).collect();
    q.sort();
    q.dedup();
    q
}

/// Adds the routes to a client.
pub fn with_routes(mut client: Client) -> Client {
    for (task, queue) in routes() {
        client = client.route(task, queue);
    }
    client
}
