#!/usr/bin/env python3
"""Side-by-side ratios from the Celery harness's results.json files (one per implementation).

usage: python3 bench/celery_compare.py BASELINE.json OTHER.json [OTHER2.json ...]

Prints a markdown table: the baseline's median, each other run's median, and the ratio
(other / baseline for rates, baseline / other for times and costs, so > 1 is always better
for the other implementation). Medians over repetitions, as the harness's own report.
"""
import json
import statistics
import sys

# (kind, metric, label, higher_is_better, scale)
METRICS = [
    ("enqueue", "rate", "enqueue tasks/s", True, 1),
    ("drain", "rate_steady", "drain tasks/s (steady)", True, 1),
    ("drain", "rate_from_spawn", "drain tasks/s (incl. start-up)", True, 1),
    ("drain", "worker_ms_per_task", "worker CPU ms/task", False, 1),
    ("drain", "cmds_per_task", "Redis commands/task", False, 1),
    ("drain", "worker_rss_load_total_kib", "worker RSS under load MiB", False, 1 / 1024),
    ("latency", "p50_ms", "latency p50 ms", False, 1),
    ("latency", "p99_ms", "latency p99 ms", False, 1),
    ("sleep50", "rate", "2000 x sleep 50 ms, tasks/s", True, 1),
    ("progress", "rate", "2000 x 4 progress updates, tasks/s", True, 1),
    ("progress", "cmds_per_task", "progress: Redis commands/task", False, 1),
    ("idle", "worker_rss_idle_total_kib", "idle worker RSS MiB", False, 1 / 1024),
    ("idle", "idle_cmds_per_s", "idle Redis commands/s", False, 1),
]


def load(path):
    res = json.load(open(path))
    runs = res["runs"]
    for r in runs:
        if r.get("kind") == "drain" and r.get("worker_cpu_s") and r.get("n"):
            r["worker_ms_per_task"] = 1000 * r["worker_cpu_s"] / r["n"]
    return res.get("meta", {}).get("label", path), runs


def key(r):
    k = r["kind"]
    if k == "enqueue":
        return k, r.get("variant")
    if k == "drain":
        return k, f"{r.get('pool')} c{r.get('conc')}{' acks_late' if r.get('acks_late') else ''}"
    return k, f"{r.get('pool')} c{r.get('conc')}"


def medians(runs):
    out = {}
    for kind, metric, *_ in METRICS:
        groups = {}
        for r in runs:
            if r.get("kind") == kind and r.get(metric) is not None:
                groups.setdefault(key(r)[1], []).append(r[metric])
        for g, vals in groups.items():
            out[(kind, metric, g)] = statistics.median(vals)
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    base_label, base_runs = load(sys.argv[1])
    others = [load(p) for p in sys.argv[2:]]
    base = medians(base_runs)
    meds = [(label, medians(runs)) for label, runs in others]
    head = f"| scenario | config | {base_label} |" + "".join(f" {l} | ratio |" for l, _ in meds)
    print(head)
    print("|" + "---|" * (3 + 2 * len(meds)))
    for kind, metric, label, higher, scale in METRICS:
        configs = sorted({g for (k, m, g) in base if k == kind and m == metric}
                         | {g for _, md in meds for (k, m, g) in md if k == kind and m == metric})
        for g in configs:
            b = base.get((kind, metric, g))
            row = f"| {label} | {g} | {'-' if b is None else f'{b * scale:,.2f}'} |"
            for _, md in meds:
                v = md.get((kind, metric, g))
                if v is None:
                    row += " - | - |"
                    continue
                ratio = None
                if b:
                    ratio = (v / b) if higher else (b / v if v else None)
                row += f" {v * scale:,.2f} | {'-' if ratio is None else f'{ratio:.1f}x'} |"
            print(row)


if __name__ == "__main__":
    main()
