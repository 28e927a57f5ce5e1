//! The web app in a real browser: `tests/web/flow.py` drives Debian's headless Chromium with
//! Playwright (pinned in `scripts/python-env.sh`) through sign-in, the consultation flow,
//! history, cancel and the monitor, at desktop and phone sizes, against two real `serve`
//! processes (one with a worker, one without, where tasks wait). Screenshots go to a temporary
//! directory, or to `AFTERVIEW_SCREENSHOTS` (e.g. `docs/screenshots`) to refresh the docs.

use std::process::Command;

use crate::api::{ALICE, BOB, Server};

const FLOW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/flow.py");
const PORTRAITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/portraits");

fn chromium() -> String {
    std::env::var("AFTERVIEW_CHROMIUM").unwrap_or_else(|_| {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("chromium is needed for the web tests (apt-get install chromium)")
            .to_owned()
    })
}

#[test]
fn the_web_app_works_end_to_end_in_chromium_at_desktop_and_phone_sizes() {
    let tokens = format!("{ALICE}=alice,{BOB}=bob");
    let env = [
        ("AFTERVIEW_AUTH_TOKENS", tokens.as_str()),
        ("AFTERVIEW_OPERATORS", "alice"),
    ];
    let busy = Server::start(&env, &[]);
    let idle = Server::start(&env, &["--no-worker"]);
    let shots = std::env::var("AFTERVIEW_SCREENSHOTS").unwrap_or_else(|_| {
        busy.env
            .dir
            .path()
            .join("screenshots")
            .display()
            .to_string()
    });
    let venv = afterview_store::testing::python_env();
    let out = Command::new(venv.join("bin/python"))
        .arg(FLOW)
        .env("BASE", &busy.base)
        .env("BASE_IDLE", &idle.base)
        .env("ALICE", ALICE)
        .env("BOB", BOB)
        .env("PORTRAITS", PORTRAITS)
        .env("SHOTS", &shots)
        .env("CHROMIUM", chromium())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "the browser flow failed:\n{}\n{}\n--- serve log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        busy.proc.log_text()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("desktop: ok") && text.contains("phone: ok"),
        "{text}"
    );
}
