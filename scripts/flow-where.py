#!/usr/bin/env python3
"""Where a flow benchmark's first-token time went, per pass and rank: the router's queue
wait (per band), and in the workers the wait for a place in the batch and the time to the
first token (arrival at the worker to first token), as count, mean and a bucket-bound p99.

Reads what scripts/bench-flow.sh keeps beside each pass: FILE.metrics (the router's
metrics, then each worker's, after the pass) and FILE.metrics-before (each worker's before
it: worker metrics run across passes, so a pass's share is the difference).

Usage: scripts/flow-where.py DIR...    (e.g. bench-out/flow12/bands)
"""

import collections
import pathlib
import re
import sys

SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? (\S+)$')


def histograms(text, names):
    """{(name, labels-without-le): {le: cumulative count}, plus '_sum' and '_count'}, summed
    over every worker in the text."""
    out = collections.defaultdict(lambda: collections.defaultdict(float))
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        metric, labels, value = m.groups()
        for name in names:
            if not metric.startswith(name):
                continue
            kind = metric[len(name):]
            if kind not in ("_bucket", "_sum", "_count"):
                continue
            pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels or ""))
            le = pairs.pop("le", None)
            key = (name, tuple(sorted(pairs.items())))
            out[key[0:2]][le if kind == "_bucket" else kind] += float(value)
    return out


def summary(h):
    n = h.get("_count", 0)
    if n <= 0:
        return None
    buckets = sorted((float(le), c) for le, c in h.items() if le not in ("_sum", "_count"))
    p99 = next((le for le, c in buckets if c >= 0.99 * n), float("inf"))
    return n, h["_sum"] / n, p99


NAMES = ["locus_router_queue_wait_seconds", "locus_worker_queue_seconds",
         "locus_router_runtime_lag_seconds", "locus_worker_runtime_lag_seconds",
         "locus_worker_time_to_first_token_seconds"]


def main(dirs):
    if not dirs:
        print(__doc__)
        return 2
    print("| pass | metric | labels | n | mean s | p99 <= s |")
    print("|---|---|---|---:|---:|---:|")
    for d in dirs:
        for after in sorted(pathlib.Path(d).glob("*.metrics")):
            before = after.with_suffix(".metrics-before")
            a = histograms(after.read_text(), NAMES)
            b = histograms(before.read_text(), NAMES) if before.exists() else {}
            for key in sorted(a):
                h = {k: v - b.get(key, {}).get(k, 0.0) for k, v in a[key].items()}
                s = summary(h)
                if s is None:
                    continue
                labels = ",".join(f"{k}={v}" for k, v in key[1])
                n, mean, p99 = s
                print(f"| {after.stem} | {key[0]} | {labels} | {n:.0f} | {mean:.3f} | {p99:g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
