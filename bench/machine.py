#!/usr/bin/env python3
"""The machine a `bench/figures.sh` sitting ran on, measured with Redis itself: one JSON line.

usage: machine.py [--port PORT] [--json FIGURES.jsonl]

Sittings run on different machines, and our latency and Redis figures move with two of their
properties more than with our code. Both are read here, on a private `redis-server`, with
`redis-benchmark` (Redis's own tool, no code of ours in the path):

* the **round trip**: one client sending PINGs one at a time (a PING is the cheapest request,
  so its time is the loopback hop and the two wake-ups: what a one-at-a-time task pays about
  four times, producer -> Redis -> worker -> Redis -> producer);
* **Redis CPU per request** of that one client (reading, answering and waiting for each);
* **Redis CPU per command**: 16 clients, pipelines of 32 PINGs, Redis's main-thread CPU
  (`INFO cpu`) over the commands it ran (the per-command floor that every script call and every
  command inside one pays on this machine).

The figures table shows both beside the goals, and Redis's CPU per task again in PINGs.
"""
import argparse
import csv
import io
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import emit, free_port, need  # noqa: E402


def cmd(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=True, capture_output=True,
                          text=True).stdout


def main_thread_cpu(port):
    info = dict(l.split(":", 1) for l in cmd(port, "INFO", "cpu").splitlines() if ":" in l)
    return float(info["used_cpu_sys_main_thread"]) + float(info["used_cpu_user_main_thread"])


def ping_calls(port):
    for l in cmd(port, "INFO", "commandstats").splitlines():
        if l.startswith("cmdstat_ping:"):
            return int(dict(kv.split("=") for kv in l.split(":", 1)[1].split(","))["calls"])
    return 0


def bench(port, *args):
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "ping", "--csv", *args], check=True,
                         capture_output=True, text=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return next(r for r in rows if r["test"] == "PING_MBULK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--json", default=os.environ.get("BENCH_JSON"))
    a = ap.parse_args()
    need("machine.py", ("redis-server", "redis-cli", "redis-benchmark"), "Debian: apt-get install redis-server redis-tools")
    port = a.port or free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                cmd(port, "PING")
                break
            except subprocess.CalledProcessError:
                time.sleep(0.02)
        bench(port, "-c", "1", "-n", "2000")  # warm-up
        c0, m0 = main_thread_cpu(port), ping_calls(port)
        one = bench(port, "-c", "1", "-n", "20000")
        c1, m1 = main_thread_cpu(port), ping_calls(port)
        cpu0, n0 = main_thread_cpu(port), ping_calls(port)
        bench(port, "-c", "16", "-P", "32", "-n", "2000000")
        cpu1, n1 = main_thread_cpu(port), ping_calls(port)
    finally:
        server.terminate()
        server.wait()
    line = {
        "bench": "machine",
        "ping_round_trip_avg_ms": float(one["avg_latency_ms"]),
        "ping_round_trip_p50_ms": float(one["p50_latency_ms"]),
        "ping_round_trip_p99_ms": float(one["p99_latency_ms"]),
        "redis_cpu_us_per_ping_one_client": (c1 - c0) / max(m1 - m0, 1) * 1e6,
        "redis_cpu_us_per_ping": (cpu1 - cpu0) / max(n1 - n0, 1) * 1e6,
    }
    emit(line, a.json)


if __name__ == "__main__":
    main()
