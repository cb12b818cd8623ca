#!/usr/bin/env python3
"""Summarises scripts/bench-flow.sh's results as markdown: per scenario and configuration,
the median over rounds (min-max) of each figure; ratios are taken within a round (the
victim's TTFT p99 over its solo run's, tokens/s over FIFO's), then summarised."""
import glob
import json
import os
import statistics
import sys

VICTIM = {"victim": "victim", "long": "victim", "bands": "interactive", "retry": "victim"}


def fmt(xs, digits=2):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def main(root):
    for sdir in sorted(glob.glob(os.path.join(root, "*"))):
        s = os.path.basename(sdir)
        if s not in VICTIM:
            continue
        runs = {}
        for f in glob.glob(os.path.join(sdir, "*.json")):
            rnd, cfg = os.path.basename(f)[:-5].split("-", 1)
            runs.setdefault(cfg, {})[rnd] = json.load(open(f))
        if not runs:
            continue
        v = VICTIM[s]
        print(f"\n### {s}\n")
        print("| config | rounds | victim TTFT p50 s | victim TTFT p99 s | p99 / solo p99 | "
              "gap max | gap mean | Jain | tokens/s | / fifo | refusals seen (tenant: code x n) "
              "| attempts per success (aggressor) | 5xx |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
        for cfg, rs in sorted(runs.items()):
            p50, p99, ratio, gmax, gmean, jain, tps, rel, att, fx = ([] for _ in range(10))
            refusals = {}
            for rnd, d in rs.items():
                t = d["tenants"].get(v, {})
                p50.append(t.get("ttft_p50"))
                p99.append(t.get("ttft_p99"))
                solo = runs.get("solo", {}).get(rnd)
                if solo and t.get("ttft_p99") and solo["tenants"][v]["ttft_p99"]:
                    ratio.append(t["ttft_p99"] / solo["tenants"][v]["ttft_p99"])
                gmax.append(d.get("gap_max"))
                gmean.append(d.get("gap_mean"))
                jain.append(d.get("jain_mean"))
                tps.append(d["tokens_per_s"])
                base = runs.get("fifo", {}).get(rnd)
                if base:
                    rel.append(d["tokens_per_s"] / base["tokens_per_s"])
                for n, tt in d["tenants"].items():
                    for code, k in tt["refusals_seen"].items():
                        refusals[(n, code)] = refusals.get((n, code), 0) + k
                a = [tt["attempts_per_success"] for n, tt in d["tenants"].items() if n != v]
                att.extend(a)
                fx.append(d["five_xx"])
            refs = ", ".join(f"{n}: {c} x {k}" for (n, c), k in sorted(refusals.items())) or "none"
            print(f"| {cfg} | {len(rs)} | {fmt(p50)} | {fmt(p99)} | {fmt(ratio)} | {fmt(gmax, 0)} | "
                  f"{fmt(gmean, 0)} | {fmt(jain)} | {fmt(tps, 1)} | {fmt(rel)} | {refs} | "
                  f"{fmt(att)} | {sum(fx)} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-out/flow")
