#!/usr/bin/env python3
"""Where the time of one Python `send_task(...).get()` goes, against Celery or Afterview.

usage: latency_trace.py {celery|afterview} --port P [--n 2000] [--conc 8] [--bin AFTERVIEW] [--client-drains]

Starts a private redis-server on --port and one worker (Celery 5.7 `-P threads -c CONC` with the
harness's tasks.py, or `afterview worker -c CONC`), warms it up, then sends N no-op tasks one at a
time with the Celery harness's app (Python producer, `AsyncResult.get()` on Redis pub/sub) while
`redis-cli monitor` (another process) logs every command Redis executes with its timestamp.
Per task, matched by task id in the log:

  send      the producer's call until its LPUSH reaches Redis
  inside    LPUSH -> the result's PUBLISH, both as Redis executed them: the worker's whole share
  back      the result's PUBLISH -> `get()` returns: the Python client receiving it

and the CPU seconds each process used.

--client-drains patches the producer's Celery client (in this process only) so that after a
`get()` answered by its first GET (the result was stored before the client asked) it reads what
its pub/sub socket already holds. The stock client leaves those messages (its SUBSCRIBE and
UNSUBSCRIBE confirmations and the result's PUBLISH) unread until a later `get()` finds its task
still PENDING and must wade through the whole backlog at ~0.1-0.3 ms of Python per message: with
a worker that often beats the GET, that later call pays for dozens of earlier tasks. The flag
shows the tail without that backlog; the goals are measured with the stock client.

MONITOR slows Redis down a little, so the end-to-end figures of the harness's own latency
scenario (measured without it) are the ones to compare; this run says where they come from.
With $BENCH_JSON set, appends one JSON line there.
Run with the Python of a venv that has celery and redis (scripts/python-env.sh).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Not CELERY_BENCH: Celery reads that variable itself (a benchmark mode that breaks its worker).
HARNESS = os.environ.get("AFTERVIEW_CELERY_HARNESS", os.path.join(HERE, "..", "..", "shared", "bench", "celery"))
os.environ.pop("CELERY_BENCH", None)
LINE = re.compile(r'^(\d+\.\d+) \[\d+ ([^\]]+)\] "(\w+)"(.*)$')


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def pct(vals, q):
    vals = sorted(vals)
    return vals[min(len(vals) - 1, max(0, int(q * len(vals) + 0.5) - 1))]


def start_worker(kind, port, conc, binary, data_dir):
    if kind == "celery":
        celery = os.path.join(os.path.dirname(sys.executable), "celery")
        return subprocess.Popen(
            [celery, "-A", "tasks", "worker", "-P", "threads", "-c", str(conc), "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-l", "warning"],
            cwd=HARNESS, env=dict(os.environ, REDIS_PORT=str(port)),
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(data_dir + "-celery.log"), "w"))
    return subprocess.Popen(
        [binary, "--log", "warn", "--data-dir", data_dir, "worker", "--broker",
         f"redis://127.0.0.1:{port}/0", "--result-backend", f"redis://127.0.0.1:{port}/1",
         "-Q", "celery", "-c", str(conc), "-n", "trace@%h", "--prefetch-multiplier", "4"])


def drain_after_get():
    """After `on_wait_for_pending` (the GET), read what the pub/sub socket already holds."""
    from celery.backends import redis as rb

    looked = rb.ResultConsumer.on_wait_for_pending

    def on_wait_for_pending(self, result, **kw):
        looked(self, result, **kw)
        ps = self._pubsub
        while ps is not None and ps.connection is not None and ps.connection.can_read(timeout=0):
            m = ps.get_message(timeout=0)
            if m and m["type"] == "message":
                self.on_state_change(self._decode_result(m["data"]), m)

    rb.ResultConsumer.on_wait_for_pending = on_wait_for_pending


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["celery", "afterview"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--client-drains", action="store_true",
                    help="read the pub/sub backlog after a get() answered by GET (see above)")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "afterview"))
    a = ap.parse_args()
    os.environ["REDIS_PORT"] = str(a.port)
    sys.path.insert(0, HARNESS)
    tmp = tempfile.mkdtemp(prefix="latency-trace-")
    redis_p = subprocess.Popen(["redis-server", "--port", str(a.port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL)
    worker = mon = None
    try:
        time.sleep(0.5)
        worker = start_worker(a.kind, a.port, a.conc, a.bin, os.path.join(tmp, "data"))
        import tasks  # the harness's app: same producer settings for both workers
        if a.client_drains:
            drain_after_get()
        send = tasks.app.send_task
        name = "tasks.noop" if a.kind == "celery" else "afterview.noop"
        for i in range(300):  # warm-up, also waits for the worker to be up
            send(name, args=(i,)).get(timeout=60)
        log_path = os.path.join(tmp, "monitor.txt")
        with open(log_path, "w") as log:
            mon = subprocess.Popen(["redis-cli", "-p", str(a.port), "monitor"], stdout=log)
            time.sleep(0.5)
            c0 = (cpu_s(worker.pid), cpu_s(redis_p.pid), time.process_time())
            rows = []
            for i in range(a.n):
                t0 = time.time()
                r = send(name, args=(i,))
                r.get(timeout=30)
                rows.append((r.id, t0, time.time()))
            c1 = (cpu_s(worker.pid), cpu_s(redis_p.pid), time.process_time())
            time.sleep(0.5)
            mon.terminate()
            mon.wait()
        lpush, publish = {}, {}
        for line in open(log_path, errors="replace"):
            m = LINE.match(line)
            if not m:
                continue
            cmd = m.group(3).upper()
            if cmd not in ("LPUSH", "PUBLISH"):
                continue
            ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", m.group(4))
            for tid in ids[:2]:
                (lpush if cmd == "LPUSH" else publish).setdefault(tid, float(m.group(1)))
        total, send_ms, inside, back = [], [], [], []
        for tid, t0, t2 in rows:
            total.append((t2 - t0) * 1e3)
            if tid in lpush and tid in publish:
                send_ms.append((lpush[tid] - t0) * 1e3)
                inside.append((publish[tid] - lpush[tid]) * 1e3)
                back.append((t2 - publish[tid]) * 1e3)
        out = {"bench": "latency-trace", "worker": a.kind, "n": a.n, "matched": len(inside),
               "client": "drains after GET" if a.client_drains else "stock"}
        for label, vals in (("total", total), ("send", send_ms), ("inside", inside), ("back", back)):
            out[f"{label}_p50_ms"] = round(pct(vals, 0.5), 3)
            out[f"{label}_p99_ms"] = round(pct(vals, 0.99), 3)
        out["cpu_ms_per_task"] = {k: round((c1[i] - c0[i]) * 1e3 / a.n, 3)
                                  for i, k in enumerate(("worker", "redis", "python producer"))}
        print(json.dumps(out))
        if os.environ.get("BENCH_JSON"):
            with open(os.environ["BENCH_JSON"], "a") as f:
                f.write(json.dumps(out) + "\n")
    finally:
        for p in (mon, worker, redis_p):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
