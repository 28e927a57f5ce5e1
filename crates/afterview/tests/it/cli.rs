//! The Celery-style verbs against a worker in another process.

use std::time::Duration;

use serde_json::{Value, json};

use crate::Env;

#[test]
fn call_wait_prints_results_and_exit_codes() {
    let env = Env::new();
    let _w = env.worker("cli@test", &[]);
    let out = env.ok(&[
        "call",
        "afterview.noop",
        "--args",
        "[1, \"x\"]",
        "--kwargs",
        "{\"k\": [true]}",
        "--wait",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"args": [1, "x"], "kwargs": {"k": [true]}})
    );

    let out = env.run(&[
        "call",
        "afterview.fail",
        "--kwargs",
        "{\"message\": \"boom\"}",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("task_failed: boom"), "{err}");

    let out = env.run(&["call", "no.such.task", "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_registered"));

    let out = env.run(&[
        "call",
        "afterview.sleep",
        "--kwargs",
        "{\"seconds\": 5}",
        "--wait",
        "--timeout",
        "0.5",
    ]);
    assert_eq!(out.status.code(), Some(4), "timed out waiting");
}

#[test]
fn result_shows_state_and_meta() {
    let env = Env::new();
    let id = env.call("afterview.noop", "{}", &[]);
    let out = env.run(&["result", &id]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "null");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PENDING"));
    let _w = env.worker("res@test", &[]);
    let m = env.wait_status(&id, &["SUCCESS"], Duration::from_secs(20));
    assert_eq!(m["name"], "afterview.noop");
    assert_eq!(m["worker"], "res@test");
    assert_eq!(m["task_id"], id.as_str());
    assert_eq!(env.ok(&["result", &id]), "{\"args\":[],\"kwargs\":{}}");
    let out = env.run(&["result", "bad id with spaces"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_arguments_are_named() {
    let env = Env::new();
    for (args, needle) in [
        (
            vec!["call", "afterview.noop", "--kwargs", "[1]"],
            "--kwargs must be a JSON object",
        ),
        (
            vec!["call", "afterview.noop", "--args", "{"],
            "--args is not valid JSON",
        ),
        (
            vec!["call", "afterview.noop", "--priority", "12"],
            "priority must be 0-9",
        ),
        (
            vec!["call", "afterview.noop", "--queue", "no spaces"],
            "queue name",
        ),
        (vec!["call", "afterview.noop", "--eta", "tomorrow"], "--eta"),
        (
            vec!["call", "afterview.noop", "--countdown=-3"],
            "countdown",
        ),
        (vec!["worker", "-c", "0"], "concurrency must be 1-10000"),
        (
            vec!["--broker", "amqp://x", "result", "x"],
            "unknown broker URL",
        ),
        (
            vec!["--broker", "amqp://app:s3cret@rabbit//", "result", "x"],
            "unknown broker URL",
        ),
        (
            vec!["--result-backend", "redis://:s3cret@r/1", "result", "x"],
            "must be the broker's store",
        ),
        (
            vec!["call", "afterview.noop", "--kwargs", "[1]", "--wait"],
            "--kwargs must be a JSON object",
        ),
        (
            vec!["--redis-client-cert", "c.pem", "result", "x"],
            "--redis-client-cert needs --redis-client-key",
        ),
        (
            vec!["--redis-client-key", "k.pem", "result", "x"],
            "--redis-client-key needs --redis-client-cert",
        ),
        // Configuration a service manager should not restart into (2, not 1).
        (vec!["worker", "-Q", "no spaces"], "queue name"),
        (vec!["purge", "-Q", "no spaces"], "queue name"),
        (
            vec![
                "--broker",
                "redis://:s3cret@127.0.0.1:1/0",
                "--redis-ca-file",
                "/nonexistent/ca.pem",
                "result",
                "x",
            ],
            "cannot read the Redis CA file",
        ),
        (
            vec!["--storage", "ftp://u:s3cret@host/x", "migrate"],
            "unknown storage URL",
        ),
        (
            vec!["worker", "--catalog", "/nonexistent/catalog.json"],
            "cannot read the catalog",
        ),
        (
            vec!["worker", "--gemini-api-key-file", "/nonexistent/key"],
            "cannot read the Gemini key file",
        ),
        (
            vec!["worker", "--report-fonts", "/nonexistent/font.ttf"],
            "cannot read the report font /nonexistent/font.ttf",
        ),
        (
            vec![
                "worker",
                "--report-fonts",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            ],
            "Cargo.toml is not a TrueType or OpenType font",
        ),
    ] {
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        // 2, as clap's own errors: a script tells a typo from a task's failure (1).
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("s3cret"), "no password in messages: {err}");
    }
}

#[test]
fn inspect_purge_and_queues() {
    let env = Env::new();
    let out = env.run(&["inspect", "ping"]);
    assert_eq!(out.status.code(), Some(69), "no workers yet");
    for _ in 0..3 {
        env.call("afterview.noop", "{}", &["--queue", "other"]);
    }
    env.call(
        "afterview.noop",
        "{}",
        &["--queue", "other", "--countdown", "60"],
    );
    let q: Value = serde_json::from_str(&env.ok(&["inspect", "queues"])).unwrap();
    let other = q
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "other")
        .unwrap()
        .clone();
    assert_eq!(
        (other["ready"].as_u64(), other["scheduled"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        env.ok(&["purge", "-Q", "other"]),
        "Purged 4 messages from other."
    );

    let _w = env.worker("insp@test", &["-Q", "celery,other"]);
    let id = env.call("afterview.sleep", "{\"seconds\": 10}", &[]);
    env.wait_status(&id, &["PROCESSING"], Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(600));
    let active: Value = serde_json::from_str(&env.ok(&["inspect", "active"])).unwrap();
    let tasks = active["insp@test"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{active}");
    assert_eq!(tasks[0]["id"], id.as_str());
    assert_eq!(tasks[0]["kwargs"], "{'seconds': 10}");
    let reg: Value = serde_json::from_str(&env.ok(&["inspect", "registered"])).unwrap();
    assert!(
        reg["insp@test"]
            .as_array()
            .unwrap()
            .contains(&json!("afterview.sleep"))
    );
    let stats: Value = serde_json::from_str(&env.ok(&["inspect", "stats"])).unwrap();
    assert_eq!(stats["insp@test"]["pool"]["max-concurrency"], 2);
    assert_eq!(stats["insp@test"]["queues"], json!(["celery", "other"]));
    env.ok(&["revoke", &id, "--terminate"]);
}

#[test]
fn revoke_from_another_process_stops_queued_delayed_and_running_tasks() {
    let env = Env::new();
    let queued = env.call("afterview.noop", "{}", &[]);
    let delayed = env.call("afterview.noop", "{}", &["--countdown", "1"]);
    assert!(
        env.ok(&["revoke", &queued, &delayed])
            .contains("removed from the queue")
    );
    let w = env.worker("rev@test", &["--revoke-grace", "0.5"]);
    let running = env.call("afterview.sleep", "{\"seconds\": 60}", &[]);
    env.wait_status(&running, &["PROCESSING"], Duration::from_secs(20));
    let t0 = std::time::Instant::now();
    assert!(env.ok(&["revoke", &running]).contains("running"));
    let m = env.wait_status(&running, &["REVOKED"], Duration::from_secs(10));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "cancelled within a second or two: {:?}",
        t0.elapsed()
    );
    assert_eq!(m["result"]["exc_message"], json!(["terminated"]));
    std::thread::sleep(Duration::from_millis(1500));
    for id in [&queued, &delayed] {
        let m = env.meta(id);
        assert_eq!(m["status"], "REVOKED", "{m}");
        assert_eq!(m["result"]["exc_message"], json!(["revoked"]));
        assert!(m.get("worker").is_none(), "never ran: {m}");
    }
    assert!(w.log_text().contains("Cancelling revoked task"));
}

/// `afterview migrate` creates the metadata schema on SQLite and on a fresh PostgreSQL database
/// (twice: the second run finds nothing to do) and checks the blob store; unknown or
/// unreachable stores are named, with passwords masked.
#[test]
fn migrate_reports_the_schema_and_names_bad_store_urls() {
    let env = Env::new();
    let out = env.ok(&["migrate"]);
    assert!(
        out.contains("metadata sqlite") && out.contains("schema version 5"),
        "{out}"
    );
    assert!(out.contains("reachable"), "{out}");
    let db = afterview_store::testing::PostgresDb::fresh();
    for _ in 0..2 {
        let out = env.ok(&["--database", &db.url(), "migrate"]);
        assert!(out.contains("schema version 4"), "{out}");
    }
    for (args, needle) in [
        (
            vec!["--database", "mysql://db/afterview", "migrate"],
            "unknown database URL",
        ),
        (
            vec!["--storage", "gs://bucket", "migrate"],
            "unknown storage URL",
        ),
        (
            vec![
                "--database",
                "postgres://app:s3cret@127.0.0.1:1/x",
                "migrate",
            ],
            "cannot open the metadata database postgres://app:***@127.0.0.1:1/x",
        ),
    ] {
        let out = env.run(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("s3cret"), "password shown: {err}");
    }
}

/// docs/deploy.md's reference names every flag and variable each command's `--help` shows, so
/// it cannot fall behind the code.
#[test]
fn the_deploy_reference_names_every_flag_and_variable() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deploy.md"))
        .unwrap();
    let env = Env::new();
    let mut missing = vec![];
    for cmd in [
        "serve", "worker", "call", "result", "revoke", "purge", "inspect", "migrate",
    ] {
        let help = env.ok(&[cmd, "--help"]);
        for word in
            help.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | '=' | '(' | ')'))
        {
            let word = word.trim_end_matches(']');
            let is_flag = word.starts_with("--") && word.len() > 2;
            let is_var = word.starts_with("AFTERVIEW_");
            if (is_flag || is_var)
                && !["--help", "--version"].contains(&word)
                && !doc.contains(&format!("`{word}"))
                && !doc.contains(&format!("{word} "))
                && !doc.contains(&format!("{word}`"))
            {
                missing.push(format!("{cmd}: {word}"));
            }
        }
    }
    missing.dedup();
    assert!(missing.is_empty(), "not in docs/deploy.md: {missing:?}");
}

/// Every setting has its `afterview.toml` key, and the layers hold: defaults < file <
/// variables < flags. The file's values are parsed exactly like flags; unknown keys are named.
#[test]
fn the_config_file_sits_below_variables_and_flags_for_every_setting() {
    let env = Env::new();
    std::fs::create_dir_all(env.data()).unwrap();
    let file = env.data().join("afterview.toml");
    std::fs::write(&file, "result_expires = 0\n").unwrap();
    let err = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();
    let out = env.run(&["migrate"]);
    assert!(!out.status.success());
    assert!(err(out).contains("result expiry must be at least one second"));
    // A variable beats the file; a flag beats the variable.
    let out = env
        .cmd(&["migrate"])
        .env("AFTERVIEW_RESULT_EXPIRES", "10")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", err(out));
    let out = env
        .cmd(&["--result-expires", "10", "migrate"])
        .env("AFTERVIEW_RESULT_EXPIRES", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", err(out));
    // Serve-only and worker-only settings have keys too, checked like their flags.
    std::fs::write(&file, "[limits]\nmax_pixels = \"lots\"\n").unwrap();
    let out = env.run(&["serve", "--bind", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(
        err(out).contains("--max-pixels"),
        "the file's value is checked like the flag"
    );
    std::fs::write(&file, "[worker]\nconcurrency = 0\n").unwrap();
    let out = env.run(&["worker"]);
    assert!(err(out).contains("concurrency must be 1-10000"));
    std::fs::write(&file, "[serve]\nmax_upload_byte = 5\n").unwrap();
    let out = env.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(err(out).contains("unknown key `max_upload_byte` in [serve]"));
    // A file that is not TOML is named with the place, never the line: it may hold a password.
    for (text, place) in [
        (
            "log = \"info\"\ndatabase_url = \"postgres://app:hunter2@pg/app\n",
            "line 2",
        ),
        (
            "database_url = [\"postgres://app:hunter2@pg/app\", 1]\n",
            "must list strings (found a value of type integer)",
        ),
        (
            "database_url = 2026-12-07T10:00:00Z\n",
            "has a value of type datetime",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = env.run(&["migrate"]);
        assert_eq!(out.status.code(), Some(2));
        let e = err(out);
        assert!(e.contains(place), "{e}");
        assert!(!e.contains("hunter2"), "the password is shown: {e}");
    }
}

/// `--help` shows no secret: not a database password from the config file, not a Redis
/// password from the environment.
#[test]
fn help_shows_no_secrets_from_the_file_or_the_environment() {
    let env = Env::new();
    std::fs::create_dir_all(env.data()).unwrap();
    std::fs::write(
        env.data().join("afterview.toml"),
        "database_url = \"postgres://app:pw-in-file@db/x\"\n",
    )
    .unwrap();
    for cmd in ["serve", "worker", "call"] {
        let out = env
            .cmd(&[cmd, "--help"])
            .env("AFTERVIEW_BROKER_URL", "redis://:pw-in-env@h:6379/0")
            .env("AFTERVIEW_RESULT_BACKEND", "redis://:pw-in-env@h:6379/1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--broker"), "{help}");
        assert!(!help.contains("pw-in-file"), "{cmd} --help: {help}");
        assert!(!help.contains("pw-in-env"), "{cmd} --help: {help}");
    }
}

/// A secret given both in a variable and as a file is refused, naming both: neither may win
/// silently (a token rotated through the variable stayed valid in the file, and the new one
/// was refused). The secrets are never printed.
#[test]
fn a_secret_given_both_as_a_variable_and_a_file_is_refused() {
    let env = Env::new();
    std::fs::create_dir_all(env.data()).unwrap();
    let tokens = env.data().join("tokens");
    std::fs::write(&tokens, "old-token-0123456789=alice\n").unwrap();
    let key = env.data().join("gemini-key");
    std::fs::write(&key, "old-gemini-key\n").unwrap();
    for (flag, file, var, value) in [
        (
            "--auth-tokens-file",
            &tokens,
            "AFTERVIEW_AUTH_TOKENS",
            "new-token-0123456789=alice",
        ),
        (
            "--gemini-api-key-file",
            &key,
            "AFTERVIEW_GEMINI_API_KEY",
            "new-gemini-key",
        ),
    ] {
        let out = env
            .cmd(&[
                "serve",
                "--bind",
                "127.0.0.1:0",
                flag,
                file.to_str().unwrap(),
            ])
            .env(var, value)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(var) && err.contains("keep one"), "{err}");
        assert!(!err.contains("new-") && !err.contains("old-"), "{err}");
    }
}

/// OIDC's three settings count wherever each comes from: two in the config file and the
/// issuer from the environment start (clap refused it), and a partial setting is refused,
/// naming what is missing (it was skipped silently, and serve fell back to a dev token).
#[test]
fn oidc_settings_from_the_file_and_the_environment_combine() {
    use std::io::BufRead;
    let env = Env::new();
    std::fs::create_dir_all(env.data()).unwrap();
    std::fs::write(
        env.data().join("afterview.toml"),
        "[auth]\noidc_audience = \"afterview-api\"\noidc_jwks_url = \"http://127.0.0.1:9/jwks.json\"\n",
    )
    .unwrap();
    let mut child = env
        .cmd(&["serve", "--bind", "127.0.0.1:0", "--no-worker"])
        .env("AFTERVIEW_OIDC_ISSUER", "https://id.example.test")
        .env_remove("AFTERVIEW_AUTH_TOKENS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("afterview serving on"), "{line}");

    std::fs::write(
        env.data().join("afterview.toml"),
        "[auth]\noidc_issuer = \"https://id.example.test\"\noidc_audience = \"afterview-api\"\n",
    )
    .unwrap();
    let out = env
        .cmd(&["serve", "--bind", "127.0.0.1:0", "--no-worker"])
        .env_remove("AFTERVIEW_OIDC_ISSUER")
        .env_remove("AFTERVIEW_AUTH_TOKENS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--oidc-jwks-url") && !err.contains("--oidc-issuer"),
        "{err}"
    );
}
