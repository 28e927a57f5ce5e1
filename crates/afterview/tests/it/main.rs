//! End-to-end tests of the real `afterview` binary: workers and CLI verbs as separate processes
//! sharing one data dir, killed and restarted for real.

mod api;
mod cli;
mod crash;
mod deploy;
mod faults;
mod hardening;
mod layout;
mod redis_interop;
mod serve;
mod web;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_afterview");

/// A data dir shared by the processes of one test.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
}

impl Env {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data-dir").arg(self.data()).args(args);
        c.env_remove("AFTERVIEW_BROKER_URL")
            .env_remove("AFTERVIEW_CONFIG");
        c
    }

    /// Runs a CLI verb to completion.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a CLI verb that must succeed; returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Sends a task; returns its id.
    pub(crate) fn call(&self, name: &str, kwargs: &str, extra: &[&str]) -> String {
        let mut args = vec!["call", name, "--kwargs", kwargs];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// The whole result meta.
    pub(crate) fn meta(&self, id: &str) -> Value {
        let out = self.run(&["result", id, "--meta"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "result --meta gave no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Waits until `id`'s status is one of `states`.
    pub(crate) fn wait_status(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let m = self.meta(id);
            if states.iter().any(|s| m["status"] == *s) {
                return m;
            }
            assert!(
                t0.elapsed() < timeout,
                "{id} never reached {states:?}; last: {m}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a worker process.
    pub(crate) fn worker(&self, name: &str, extra: &[&str]) -> Proc {
        self.worker_env(name, extra, &[])
    }

    /// Starts a worker process with extra environment variables.
    pub(crate) fn worker_env(&self, name: &str, extra: &[&str], vars: &[(&str, &str)]) -> Proc {
        let p = self.worker_unwaited(name, extra, vars);
        p.wait_log("Worker started", Duration::from_secs(20));
        p
    }

    /// Starts a worker process and returns at once, before it is up.
    pub(crate) fn worker_unwaited(
        &self,
        name: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Proc {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut args = vec!["worker", "-n", name, "-c", "2"];
        args.extend_from_slice(extra);
        let child = self
            .cmd(&args)
            .envs(vars.iter().copied())
            .env("AFTERVIEW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc { child, log }
    }
}

/// A running afterview process.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY-free: libc::kill is a plain syscall wrapper; a wrong pid only fails.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn wait_log(&self, needle: &str, timeout: Duration) {
        let t0 = Instant::now();
        while !self.log_text().contains(needle) {
            assert!(
                t0.elapsed() < timeout,
                "{needle:?} never logged:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                t0.elapsed() < timeout,
                "process did not exit:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the first stdout line of a spawned `serve`, which names its URL.
pub(crate) fn first_line(child: &mut Child) -> String {
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

pub(crate) fn exists(p: &Path) -> bool {
    p.exists()
}

/// A number no other call in this process returns (for file names).
pub(crate) fn unique() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
}
