//! `afterview serve`: the API with its embedded worker, on the embedded defaults.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use crate::{Env, Proc, first_line};

fn get(addr: &str, path: &str) -> (u16, String) {
    for _ in 0..200 {
        // A loaded machine may not have the listener ready yet: retry a refused connection.
        let Ok(mut s) = TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        if let Some(status) = buf.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
            return (status, body);
        }
        // The listener is bound before the server loop starts: retry an early empty answer.
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no HTTP answer from {addr}{path}");
}

#[test]
fn serve_answers_health_runs_tasks_and_stops_on_sigterm() {
    let env = Env::new();
    let log = env.dir.path().join("serve.log");
    let ready = env.dir.path().join("ready");
    let mut child = env
        .cmd(&["serve", "--bind", "127.0.0.1:0", "-c", "2"])
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let line = first_line(&mut child);
    let addr = line
        .strip_prefix("afterview serving on http://")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    let mut p = Proc { child, log };
    assert_eq!(get(&addr, "/healthz"), (200, "{\"status\":\"ok\"}".into()));
    assert_eq!(get(&addr, "/readyz").0, 200);
    p.wait_log("Worker started", Duration::from_secs(10));
    assert_eq!(
        std::fs::read_to_string(&ready).unwrap(),
        p.pid().to_string(),
        "--ready-file holds serve's pid"
    );
    let out = env.ok(&[
        "call",
        "afterview.noop",
        "--kwargs",
        "{\"via\": \"serve\"}",
        "--wait",
        "--timeout",
        "20",
    ]);
    assert!(out.contains("serve"), "{out}");
    assert!(
        crate::exists(&env.data().join("afterview.db")),
        "the embedded store lives in the data dir"
    );
    // A request still open at the shutdown does not keep the port: new connections are
    // refused at once, not queued unanswered while the open one finishes.
    let token = std::fs::read_to_string(env.data().join("dev-token")).unwrap();
    let mut open = TcpStream::connect(&addr).unwrap();
    write!(
        open,
        "POST /api/images HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000\r\n\r\n\
         --b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\npartial",
        token.trim()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    p.signal(libc::SIGTERM);
    let t0 = std::time::Instant::now();
    loop {
        match TcpStream::connect(&addr) {
            Err(_) => break,
            Ok(_) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(3),
                    "the listener is closed once the shutdown begins"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // A second signal does not wait for the open request.
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(0));
    drop(open);
}
