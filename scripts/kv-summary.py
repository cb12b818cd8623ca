#!/usr/bin/env python3
"""Tables of scripts/bench-kv.sh's sweep: every round's records pooled per workload,
configuration and rate.

Usage: kv-summary.py OUT_DIR   (reads OUT_DIR/<workload>/<round>-<router>/report.json)

Per configuration and rate: requests, failures, TTFT p50/p90/p99 (ms, pooled over the
rounds), the rounds' TTFT p90 range, prefix-token hits and tokens pulled from another
worker (shares of prompt tokens; pulled KV bytes at 36,864 B per token, distilgpt2 in f32),
max/mean requests per worker (the rounds' median). Then each configuration's highest
sustained rate: the highest rate at which every round had TTFT p90 <= 2 s and no failed
request. Standard library only.
"""

import glob
import json
import os
import statistics
import sys
from collections import defaultdict

KV_BYTES_PER_TOKEN = 36_864
SUSTAINED_P90_MS = 2000


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    out = sys.argv[1]
    for wdir in sorted(glob.glob(os.path.join(out, "*/"))):
        runs = sorted(glob.glob(os.path.join(wdir, "*-*/report.json")))
        if not runs:
            continue
        recs = defaultdict(list)  # (config, rate) -> records
        rounds = defaultdict(lambda: defaultdict(list))  # (config, rate) -> round -> records
        workers = 3
        for path in runs:
            rnd = os.path.basename(os.path.dirname(path)).split("-")[0]
            rep = json.load(open(path))["report"]
            workers = rep.get("workers") or workers
            for r in rep["records"]:
                key = (r["policy"], r["rate"])
                recs[key].append(r)
                rounds[key][rnd].append(r)
        print(f"#### {os.path.basename(os.path.normpath(wdir))} ({len(runs)} runs)\n")
        print("| config | rate req/s | requests | failed | TTFT p50 ms | p90 | p99 | p90 per round | "
              "prefix hits | pulled | pulled MB | max / mean per worker |")
        print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
        sustained = defaultdict(list)
        for (cfg, rate) in sorted(recs, key=lambda k: (k[1] or 0, k[0])):
            rs = recs[(cfg, rate)]
            ok = [r for r in rs if r["status"] == 200 and not r.get("error")]
            ttft = [r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None]
            prompt = sum(r["prompt_tokens"] for r in ok) or 1
            cached = sum(r["cached_tokens"] for r in ok)
            moved = sum(r.get("transferred_tokens", 0) for r in ok)
            p90s, loads, held = [], [], True
            for rnd, rr in sorted(rounds[(cfg, rate)].items()):
                okr = [r for r in rr if r["status"] == 200 and not r.get("error")]
                t = [r["ttft_ms"] for r in okr if r.get("ttft_ms") is not None]
                p90 = pct(t, 0.9)
                p90s.append(p90)
                per = defaultdict(int)
                for r in okr:
                    per[r["worker"]] += 1
                loads.append(max(per.values()) / (len(okr) / workers) if okr else float("nan"))
                held &= len(okr) == len(rr) and p90 <= SUSTAINED_P90_MS
            sustained[cfg].append((rate, held))
            print(f"| {cfg} | {rate} | {len(rs)} | {len(rs) - len(ok)} | {pct(ttft, .5):.0f} | "
                  f"{pct(ttft, .9):.0f} | {pct(ttft, .99):.0f} | "
                  f"{', '.join(f'{p:.0f}' for p in p90s)} | {100 * cached / prompt:.1f}% | "
                  f"{100 * moved / prompt:.1f}% | {moved * KV_BYTES_PER_TOKEN / 1e6:.0f} | "
                  f"{statistics.median(loads):.2f} |")
        print("\nHighest sustained rate (every round: TTFT p90 <= 2 s, no failed request):\n")
        for cfg, rs in sustained.items():
            best = None
            for rate, held in sorted(rs, key=lambda x: x[0] or 0):
                if not held:
                    break
                best = rate
            print(f"- {cfg}: {best if best is not None else 'none of the rates'}"
                  + (" (the highest rate swept)" if best == max(r for r, _ in rs) else ""))
        print()


if __name__ == "__main__":
    main()
