#!/usr/bin/env python3
"""Issue 15's figures from one `bench/figures.sh` run: a table against the goals and a PNG chart,
written into BENCHMARKS.md between `<!-- figures:begin -->` and `<!-- figures:end -->`.

usage: figures.py --harness OUT_DIR --json FIGURES.jsonl --benchmarks BENCHMARKS.md --png CHART.png

OUT_DIR holds the Celery harness's results (`celery/`, `afterview/`, `afterview+rs-producer/`,
each with results.json, from bench/celery-side-by-side.sh); FIGURES.jsonl the lines the other
benchmarks appended (afterview-bench engine, redis-cost, ws-fanout; bench/latency_trace.py;
the fault test). Every ratio compares figures measured in this one run.
"""
import argparse
import datetime
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from celery_compare import load  # noqa: E402


def best(runs, kind, metric, lowest=False, split_acks=False):
    """(value, config) of the best configuration, each configuration's median over repetitions.

    `split_acks`: early- and late-ack runs are different configurations (Celery's: late ack also
    sets prefetch 1), not repetitions of one. Our worker has one configuration per pool (it takes
    no ACKS_LATE), so its two runs are repetitions; Celery's best is its best of either."""
    groups = {}
    for r in runs:
        if r.get("kind") == kind and r.get(metric) is not None:
            late = " acks_late" if split_acks and r.get("acks_late") else ""
            groups.setdefault(f"{r.get('pool')} c{r.get('conc')}{late}", []).append(r[metric])
    if not groups:
        return None, None
    meds = {g: statistics.median(v) for g, v in groups.items()}
    g = (min if lowest else max)(meds, key=meds.get)
    return meds[g], g


def lines(path):
    out = []
    for line in open(path):
        line = line.strip()
        if line:
            out.append(json.loads(line))
    return out


def row(rows, name, value, goal, higher, fmt, note="", short=None):
    """One goal: `value` against `goal`; score >= 1 means met. `short`: the chart's label."""
    if value is None:
        rows.append((name, "not measured", fmt(goal), None, note, short))
        return
    score = (value / goal) if higher else (goal / value if value else float("inf"))
    rows.append((name, fmt(value), fmt(goal), score, note, short))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--harness", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--benchmarks", required=True)
    ap.add_argument("--png", required=True)
    a = ap.parse_args()
    runs = {}
    for label in ("celery", "afterview", "afterview+rs-producer"):
        p = os.path.join(a.harness, label, "results.json")
        if os.path.exists(p):
            runs[label] = load(p)[1]
    figs = lines(a.json)

    def pick(bench, **match):
        return [f for f in figs if f.get("bench") == bench and all(f.get(k) == v for k, v in match.items())]

    rows = []
    x = lambda v: f"{v:.2f}x"
    cel_drain, cel_cfg = best(runs.get("celery", []), "drain", "rate_steady", split_acks=True)
    for label, name in (("afterview", "Python producer"), ("afterview+rs-producer", "Rust producer")):
        ours, cfg = best(runs.get(label, []), "drain", "rate_steady")
        ratio = ours / cel_drain if ours and cel_drain else None
        row(rows, f"drain, no-op with results ({name} pre-filling): ours / Celery's best pool", ratio, 30, True, x,
            f"{ours:,.0f} tasks/s ({cfg}) vs {cel_drain:,.0f} ({cel_cfg})" if ratio else "",
            f"drain vs Celery, {name} (goal 30x)")
    cel_p99, cel_lcfg = best(runs.get("celery", []), "latency", "p99_ms", lowest=True)
    for label, name, goal in (("afterview", "Python producer", 0.5), ("afterview+rs-producer", "our Rust client", 0.1)):
        ours, cfg = best(runs.get(label, []), "latency", "p99_ms", lowest=True)
        ratio = ours / cel_p99 if ours and cel_p99 else None
        row(rows, f"enqueue -> result p99, {name}: ours / Celery's", ratio, goal, False, x,
            f"{ours:.2f} ms ({cfg}) vs {cel_p99:.2f} ms ({cel_lcfg})" if ratio else "",
            f"latency p99 vs Celery, {name} (goal {goal}x)")
    tr = {f["worker"]: f for f in pick("latency-trace") if f.get("client", "stock") == "stock"}
    dr = {f["worker"]: f for f in pick("latency-trace") if f.get("client", "stock") != "stock"}
    if "celery" in tr and "afterview" in tr:
        c, o = tr["celery"], tr["afterview"]
        rows.append(("traced (Python producer): the worker's share, LPUSH -> result PUBLISH p99, ours / Celery's",
                     x(o["inside_p99_ms"] / c["inside_p99_ms"]), "-", None,
                     f"{o['inside_p99_ms']:.2f} vs {c['inside_p99_ms']:.2f} ms; the client's share (PUBLISH -> get() returns) "
                     f"p99 {o['back_p99_ms']:.2f} vs {c['back_p99_ms']:.2f} ms; Python producer CPU "
                     f"{o['cpu_ms_per_task']['python producer']:.2f} ms per task", None))
    if "celery" in dr and "afterview" in dr:
        c, o = dr["celery"], dr["afterview"]
        rows.append(("traced, the same Python producer reading its pub/sub backlog after a GET hit "
                     "(latency_trace.py --client-drains): p99 enqueue -> result, ours / Celery's",
                     x(o["total_p99_ms"] / c["total_p99_ms"]), "-", None,
                     f"{o['total_p99_ms']:.2f} vs {c['total_p99_ms']:.2f} ms (under MONITOR); the client's share p99 "
                     f"{o['back_p99_ms']:.2f} vs {c['back_p99_ms']:.2f} ms", None))
    mach = pick("machine")
    if mach:
        rows.append(("the machine (redis-benchmark on a private Redis, bench/machine.py; each of its runs in the sitting): PING round "
                     "trip of one client, p50 (ms); Redis CPU per request of that client / per pipelined PING (µs)",
                     " -> ".join(f"{m['ping_round_trip_p50_ms']:.3f}" for m in mach), "-", None,
                     "; ".join(f"{m['redis_cpu_us_per_ping_one_client']:.1f} / {m['redis_cpu_us_per_ping']:.2f} µs"
                               for m in mach), None))
    rc = pick("redis-cost")
    if rc:
        r = rc[-1]
        row(rows, "Redis commands executed per task (worker side)", r["commands_per_task"], 6, False,
            lambda v: f"{v:.1f}", f"in {r['script_calls_per_task']:.3f} round trips (script calls) per task",
            "Redis commands per task (goal 6)")
        row(rows, "Redis CPU per task (µs)", r["redis_cpu_us_per_task"], 15, False, lambda v: f"{v:.1f}",
            f"drain {r['drain_per_s']:,.0f} tasks/s at -c {r['concurrency']}" + (
                f"; the CPU of {r['redis_cpu_us_per_task'] / mach[0]['redis_cpu_us_per_ping']:.0f} pipelined PINGs on "
                "this machine" if mach else ""), "Redis CPU per task (goal 15 µs)")
    for f in pick("lua-cost"):
        shape = "tasks arriving one at a time" if f.get("one_by_one") else f"{f['batch']} in flight"
        rows.append((f"Redis instructions per task inside the worker's scripts, {shape} (bench/lua_cost.py, "
                     "callgrind: the same on every machine)", f"{f['instructions_per_task']:,.0f}", "-", None,
                     f"{f['commands_instructions_per_task']:,.0f} of them in the commands the scripts call; "
                     f"{f['tasks']} Celery envelopes, " + (f"each claim asking for {f['batch']}" if f.get("one_by_one")
                                                             else f"claims of {f['batch']}"), None))
    eng = {f["backend"]: f for f in pick("engine")}
    for backend, goal, name in (("sqlite", 15000, "NORMAL"), ("sqlite-full", 8000, "FULL")):
        f = eng.get(backend)
        note = ""
        if f and "memory" in eng:
            note = f"{f['drain_per_s'] / eng['memory']['drain_per_s']:.2f}x the in-memory backend's {eng['memory']['drain_per_s']:,.0f} (same run)"
        row(rows, f"embedded drain, SQLite synchronous={name} (tasks/s)", f and f["drain_per_s"], goal, True,
            lambda v: f"{v:,.0f}", note, f"embedded drain, {name} (goal {goal:,}/s)")
    ws = pick("ws-fanout")
    base = next((f for f in ws if f["followers"] < 100), None)
    for starts in ("spread", "at once"):
        f = next((f for f in ws if f["followers"] >= 10000 and f["starts"] == starts), None)
        note = f and f"{f['sockets']:,} sockets, {f['refused']} refused, {f['updates']:,} updates" + (
            f"; 16 followers: p99 {base['p99_ms']:.2f} ms" if base else "") + (
            f"; per update round: first p50/p99 {f['first_update_p50_ms']:.1f}/{f['first_update_p99_ms']:.1f}, "
            f"the worst between p99 {f['middle_updates_worst_p99_ms']:.1f}, last (with the results and closes) "
            f"{f['last_update_p50_ms']:.1f}/{f['last_update_p99_ms']:.1f}" if "first_update_p50_ms" in f else "") + (
            f"; CPU server/bench, a round between {f['middle_round_server_cpu_ms']:.0f}/{f['middle_round_bench_cpu_ms']:.0f} ms, "
            f"the last {f['last_round_server_cpu_ms']:.0f}/{f['last_round_bench_cpu_ms']:.0f} ms"
            if "last_round_server_cpu_ms" in f else "")
        row(rows, f"WebSocket: 10,000 followers, progress p99 (ms), starts {starts}", f and f["p99_ms"], 50, False,
            lambda v: f"{v:.1f}", note or "", f"WebSocket p99, starts {starts} (goal 50 ms)")
    f = next((f for f in ws if f["followers"] >= 10000), None)
    row(rows, "WebSocket: server memory per connection (KiB)", f and f["rss_per_socket_kib"], 32, False,
        lambda v: f"{v:.1f}", "", "WebSocket memory per socket (goal 32 KiB)")
    fl = pick("faults")
    if fl:
        f = fl[-1]
        rows.append((f"faults: {f['tasks']:,} tasks, 2 SIGKILLs, Redis AOF restart, rolling SIGTERM: lost",
                     str(f["lost"]), "0", 1.0 if f["lost"] == 0 else 0.0,
                     f"results stored twice {f['completed_twice']}, re-deliveries {f['redeliveries']}"
                     + (f" (receipts seen for {f['received_tasks']:,} of the tasks: events published while "
                        "Redis restarted are not seen)" if "received_tasks" in f else "") + ", Redis down "
                     f"{f['redis_down_ms']} ms, first result {f['recovery_ms']} ms after it was back, wall {f['wall_s']:.1f} s",
                     "faults: tasks lost (goal 0)"))

    md = [f"Run of {datetime.date.today().isoformat()} (`bench/figures.sh`; one sitting, every ratio within it).", "",
          "| goal | measured | goal | met | notes |", "|---|---|---|---|---|"]
    for name, val, goal, score, note, _ in rows:
        met = "-" if score is None else ("yes" if score >= 1 else "**no**")
        md.append(f"| {name} | {val} | {goal} | {met} | {note} |")
    md += ["", f"![measured against the goals]({os.path.relpath(a.png, os.path.dirname(os.path.abspath(a.benchmarks)))})", ""]
    chart(rows, a.png)
    text = open(a.benchmarks).read()
    begin, end = "<!-- figures:begin -->", "<!-- figures:end -->"
    block = begin + "\n" + "\n".join(md) + "\n" + end
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n## Issue 15: every figure in one run\n\n" + block + "\n"
    open(a.benchmarks, "w").write(text)
    print("\n".join(md))


def chart(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scored = [(short or n, s) for n, _, _, s, _, short in rows if s is not None]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(scored) + 1.4))
    names = [n for n, _ in scored]
    vals = [max(min(s, 1000), 0.01) for _, s in scored]
    colors = ["#2e7d32" if s >= 1 else "#ef6c00" for _, s in scored]
    ax.barh(range(len(vals)), vals, color=colors)
    ax.set_yticks(range(len(vals)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1, color="black", linewidth=1)
    ax.set_xlabel("measured relative to the goal (1 = goal; right of the line: met)")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    ax.set_title("Issue 15: one run on this 2-core machine", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
