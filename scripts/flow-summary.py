#!/usr/bin/env python3
"""Summarises scripts/bench-flow.sh's results ($OUT, default bench-out/flow) as markdown.

Per scenario and configuration: the median over rounds (min-max when there are several) of
each figure. Ratios are taken within a round, then summarised: the victim's TTFT p99 over
the same tenant's solo run of that round (solo/<round>-<scenario>.<tenant>.json; the retry
scenario uses the victim scenario's), the mean service gap and tokens/s over FIFO's (for
retry, over fifo with the same retry behaviour)."""
import glob
import json
import os
import statistics
import sys

# The tenant whose latency each scenario is about, and the solo run it is compared with.
VICTIM = {"victim": "victim", "long": "victim", "bands": "interactive", "retry": "victim"}
SOLO_OF = {"victim": "victim", "long": "long", "bands": "bands", "retry": "victim"}


def fmt(xs, digits=2):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.median(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({min(xs):.{digits}f}-{max(xs):.{digits}f})"


def load_runs(sdir):
    """{config: {round: report}} from <round>-<config>.json."""
    runs = {}
    for f in glob.glob(os.path.join(sdir, "*.json")):
        rnd, cfg = os.path.basename(f)[:-5].split("-", 1)
        with open(f) as fh:
            runs.setdefault(cfg, {})[rnd] = json.load(fh)
    return runs


def capacity(root):
    d = os.path.join(root, "capacity")
    files = glob.glob(os.path.join(d, "rate-*.json"))
    if not files:
        return
    print("\n### capacity (FIFO, the victim's shape alone)\n")
    print("| rate req/s | answered | TTFT p50 s | TTFT p90 s | tokens/s |")
    print("|---:|---:|---:|---:|---:|")
    for f in sorted(files, key=lambda f: float(os.path.basename(f)[5:-5])):
        with open(f) as fh:
            r = json.load(fh)
        t = r["tenants"]["victim"]
        print(f"| {os.path.basename(f)[5:-5]} | {t['successes']}/{t['sent']} | "
              f"{fmt([t['ttft_p50']])} | {fmt([t['ttft_p90']])} | {r['tokens_per_s']:.1f} |")
    cap = os.path.join(d, "CAP")
    if os.path.exists(cap):
        print(f"\ncapacity: {open(cap).read().strip()} req/s")


def solo_table(solo):
    print("\n### solo runs (each tenant alone, FIFO)\n")
    print("| scenario.tenant | rounds | TTFT p50 s | TTFT p99 s | answered |")
    print("|---|---:|---:|---:|---:|")
    for name, rs in sorted(solo.items()):
        t = [next(iter(r["tenants"].values())) for r in rs.values()]
        ok = sum(x["successes"] for x in t)
        sent = sum(x["sent"] for x in t)
        print(f"| {name} | {len(rs)} | {fmt([x['ttft_p50'] for x in t])} | "
              f"{fmt([x['ttft_p99'] for x in t])} | {ok}/{sent} |")


def main(root):
    capacity(root)
    solo = {}
    for f in glob.glob(os.path.join(root, "solo", "*.json")):
        rnd, name = os.path.basename(f)[:-5].split("-", 1)
        with open(f) as fh:
            solo.setdefault(name, {})[rnd] = json.load(fh)
    if solo:
        solo_table(solo)
    for s in ("victim", "long", "bands", "retry"):
        runs = load_runs(os.path.join(root, s))
        if not runs:
            continue
        v = VICTIM[s]
        print(f"\n### {s}\n")
        print(f"| config | rounds | {v} TTFT p50 s | {v} TTFT p99 s | p99 / solo p99 | "
              "gap max | gap mean | gap mean / fifo | Jain | tokens/s | / fifo | "
              "refusals (tenant: status code x n) | unfinished at the end (tenant: n) | "
              "attempts per success (others) | 5xx not 503 |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|")
        for cfg, rs in sorted(runs.items()):
            base_cfg = "fifo" + cfg[cfg.index("-"):] if "-" in cfg else "fifo"
            p50, p99, ratio, gmax, gmean, grel, jain, tps, rel, att, fx = ([] for _ in range(11))
            refusals, unfinished = {}, {}
            for rnd, d in rs.items():
                t = d["tenants"].get(v, {})
                p50.append(t.get("ttft_p50"))
                p99.append(t.get("ttft_p99"))
                so = solo.get(f"{SOLO_OF[s]}.{v}", {}).get(rnd)
                if so and t.get("ttft_p99") and so["tenants"][v]["ttft_p99"]:
                    ratio.append(t["ttft_p99"] / so["tenants"][v]["ttft_p99"])
                gmax.append(d.get("gap_max"))
                gmean.append(d.get("gap_mean"))
                jain.append(d.get("jain_mean"))
                tps.append(d["tokens_per_s"])
                base = runs.get(base_cfg, {}).get(rnd)
                if base:
                    rel.append(d["tokens_per_s"] / base["tokens_per_s"])
                    if base.get("gap_mean") and d.get("gap_mean") is not None:
                        grel.append(d["gap_mean"] / base["gap_mean"])
                for n, tt in d["tenants"].items():
                    for code, k in tt["refusals"].items():
                        # Earlier reports counted attempts cancelled before an answer.
                        if code.split()[0].isdigit():
                            refusals[(n, code)] = refusals.get((n, code), 0) + k
                    left = tt["outcomes"].get("unfinished", 0)
                    unfinished[n] = unfinished.get(n, 0) + left
                    if n != v:
                        att.append(tt["attempts_per_success"])
                fx.append(d["five_xx_not_503"])
            refs = ", ".join(f"{n}: {c} x {k}" for (n, c), k in sorted(refusals.items()))
            left = ", ".join(f"{n}: {k}" for n, k in sorted(unfinished.items()) if k)
            print(f"| {cfg} | {len(rs)} | {fmt(p50)} | {fmt(p99)} | {fmt(ratio)} | "
                  f"{fmt(gmax, 0)} | {fmt(gmean, 0)} | {fmt(grel)} | {fmt(jain)} | "
                  f"{fmt(tps, 1)} | {fmt(rel)} | {refs or 'none'} | {left or 'none'} | {fmt(att)} | "
                  f"{sum(fx)} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-out/flow")
