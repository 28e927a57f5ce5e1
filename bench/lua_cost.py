#!/usr/bin/env python3
"""What the worker's scripts cost Redis per task, in instructions: the same on every machine.

usage: $VENV/bin/python bench/lua_cost.py [--scripts crates/engine-redis/src/scripts.rs]
                                          [--n 640] [--batch 16] [--json FIGURES.jsonl]
($VENV from scripts/python-env.sh: it needs the `celery` and `redis` packages.)

Redis's CPU per task (`afterview-bench redis-cost`) moves by ±20 % between runs of one binary on
these shared two-core machines, more than most changes to the scripts would. This counts what
Redis executes instead: a private `redis-server` runs under valgrind's callgrind, which counts
instructions only inside `EVALSHA` (`--toggle-collect=evalShaCommand`: the scripts, the commands
they call, the conversions between Lua and Redis; not the network or the event loop). `--n` real
Celery envelopes (published with Celery's own `send_task`, as the Python producer of the side by
side does) are claimed `--batch` at a time with the CLAIM script and their results stored and
acked with the STORE script, as the worker does at `-c 8` (claims of up to 16); `--batch` is also
how many messages are in flight, so `--batch 128` is the shape of `-c 32` with prefetch 4 (the
lease keys then hold ~128 entries). `--one-by-one` is the shape of tasks arriving one at a time:
each is published, then claimed by a worker that takes pushes (asking for `--batch`, finding one,
registering as idle), then stored, so every call's fixed cost falls on one task. Both scripts are read from the source file given, with the
helpers each names (as the worker assembles them), so two versions of it compare in one sitting. The count per
task repeats within ±0.3 % (Redis's hash seeds differ between runs); read differences above 1 %.
Printed: instructions per task, and the part executed inside the commands the scripts call.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import emit, free_port, need  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def script(src, name):
    m = re.search(r'const %s: &str = r#"(.*?)"#;' % name, src, re.S)
    if not m:
        sys.exit(f"lua_cost.py: no const {name} in the scripts file")
    return m.group(1)


def assemble(helpers, body):
    """`body` after the helpers it names, directly or through others, in their order: what
    `scripts::assemble` in crates/engine-redis/src/scripts.rs sends Redis (the same cut, at the
    helpers' top-level `local` definitions with the comment lines above them)."""
    items, comments = [], ""
    for line in helpers.split("\n"):
        if line.startswith("--"):
            comments += line + "\n"
        elif line.startswith("local "):
            decl = line[len("local "):]
            if decl.startswith("function "):
                names = [decl[len("function "):].split("(")[0].strip()]
            else:
                names = [n.strip() for n in decl.split("=")[0].split(",")]
            items.append([comments + line + "\n", names])
            comments = ""
        elif items:
            items[-1][0] += comments + line + "\n"
            comments = ""
    words = lambda text: set(w for w in re.split(r"[^A-Za-z0-9_]+", text) if w)
    wanted, take = words(body), []
    for text, names in reversed(items):
        if any(n in wanted for n in names):
            take.append(text)
            wanted |= words(text)
    return "".join(reversed(take)) + body


def publisher(port):
    """A function publishing `n` no-op tasks as Celery's client does (kombu's envelope, queue
    `celery`)."""
    from celery import Celery

    app = Celery(broker=f"redis://127.0.0.1:{port}/0")
    producer = app.producer_pool.acquire(block=True)
    count = iter(range(1 << 62))

    def publish(n):
        for _ in range(n):
            app.send_task("afterview.noop", args=[next(count)], producer=producer)

    return publish


def inclusive(out, function):
    """Instructions executed inside `function` (callgrind_annotate's inclusive count)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", out], capture_output=True, text=True).stdout
    for line in text.splitlines():
        if re.search(r"\?\?\?:%s \[" % re.escape(function), line):
            return int(line.split()[0].replace(",", ""))
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scripts", default=os.path.join(HERE, "..", "crates", "engine-redis", "src", "scripts.rs"))
    ap.add_argument("--n", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--one-by-one", action="store_true",
                    help="tasks arrive one at a time: each is published, then claimed by a worker that takes "
                         "pushes (asking for --batch, finding one, registering as idle), then stored")
    ap.add_argument("--json", default=os.environ.get("BENCH_JSON"))
    a = ap.parse_args()
    need("lua_cost.py", ("valgrind", "callgrind_annotate", "redis-server"), "Debian: apt-get install valgrind redis-server")
    src = open(a.scripts).read()
    helpers = script(src, "HELPERS")
    claim, store = assemble(helpers, script(src, "CLAIM")), assemble(helpers, script(src, "STORE"))

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="lua-cost-")
    out = os.path.join(tmp, "callgrind.out")
    server = subprocess.Popen(["valgrind", "--tool=callgrind", "--toggle-collect=evalShaCommand",
                               f"--callgrind-out-file={out}", "redis-server", "--port", str(port), "--bind",
                               "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(600):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            sys.exit("lua_cost.py: redis-server under valgrind did not answer within 30 s")
        publish = publisher(port)
        if not a.one_by_one:
            publish(a.n)
        worker = "bench@localhost" if a.one_by_one else ""
        claim_sha, store_sha = r.script_load(claim), r.script_load(store)
        now, done, calls = 1_765_000_000_000, 0, 0
        while done < a.n:
            if a.one_by_one:
                publish(1)
            msgs, _ = r.evalsha(claim_sha, 0, now, 1_800_000, a.batch, worker, "celery")
            if not msgs:
                sys.exit(f"lua_cost.py: the claim came back empty after {done} of {a.n} tasks")
            args = [1, 0, 86_400_000]
            for tag, tid, _q, _raw, epoch, _rev in msgs:
                tid = tid.decode()
                # The meta our worker stores for a no-op (Celery's fields and the extended ones).
                meta = json.dumps({"status": "SUCCESS", "result": None, "traceback": None, "children": [],
                                   "date_done": "2026-12-06T21:00:00.000000+00:00", "task_id": tid,
                                   "name": "afterview.noop", "worker": "bench@localhost", "retries": 0,
                                   "queue": "celery"})
                args += [f"celery-task-meta-{tid}", meta, tag, epoch, 1]
            verdicts = r.evalsha(store_sha, 0, *args)
            if any(v != b"stored" for v in verdicts):
                sys.exit(f"lua_cost.py: the store answered {verdicts}")
            done += len(msgs)
            calls += 2
            now += 1
    finally:
        # On success and on failure alike: Redis stops on SIGTERM and callgrind writes its counts.
        server.terminate()
        server.wait(timeout=120)
    total = 0
    for line in open(out):
        if line.startswith(("totals:", "summary:")):
            total = int(line.split()[1])
    commands = inclusive(out, "scriptCall")
    shutil.rmtree(tmp, ignore_errors=True)
    line = {"bench": "lua-cost", "scripts": os.path.relpath(a.scripts), "tasks": a.n, "batch": a.batch,
            "one_by_one": a.one_by_one,
            "script_calls": calls, "instructions_per_task": total / a.n,
            "commands_instructions_per_task": commands / a.n}
    print(f"{line['instructions_per_task']:,.0f} instructions per task inside EVALSHA "
          f"({line['commands_instructions_per_task']:,.0f} of them in the commands the scripts call; "
          f"{a.n} tasks, " + (f"one at a time, each claim asking for {a.batch})" if a.one_by_one
                              else f"claims of {a.batch})"))
    emit(line, a.json)


if __name__ == "__main__":
    main()
