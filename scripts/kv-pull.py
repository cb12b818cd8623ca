#!/usr/bin/env python3
"""A prompt's prefix pulled from the worker that holds it vs computed, side by side.

Usage: kv-pull.py HOLDER_URL IMPORTER_URL TOKEN [--rounds N] [--tokens T] [--busy S]

The holder computes a prompt of T tokens (plus one, so that T tokens are whole blocks
before the last) once. Then, round after round, the importer's caches are flushed and it
answers the same prompt (1 new token) twice, in alternating order: once computing the
prompt, once told to pull it from the holder (`x-locus-kv-source` with the cluster token).
With --busy S the holder decodes S streams meanwhile. Prints one JSON line per run and a
summary: median seconds to the answer each way, and their ratio.
Standard library only.
"""

import argparse
import json
import random
import statistics
import sys
import threading
import time
import urllib.request


def post(url, body, headers=None, timeout=120):
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def generate(url, ids, n=1, headers=None):
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": n, "temperature": 0}}
    t0 = time.perf_counter()
    out = post(f"{url}/generate", body, headers)
    return time.perf_counter() - t0, out


def busy(url, stop, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        ids = [rng.randrange(1000, 40000) for _ in range(32)]
        body = {
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": 200, "temperature": 0, "ignore_eos": True},
        }
        try:
            post(f"{url}/generate", body)
        except Exception as e:  # a busy stream failing is reported, not fatal
            print(f"busy stream: {e}", file=sys.stderr)
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("holder")
    ap.add_argument("importer")
    ap.add_argument("token")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--busy", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    ids = [rng.randrange(1000, 40000) for _ in range(a.tokens + 1)]
    pull_headers = {"x-locus-kv-source": a.holder, "x-locus-cluster-token": a.token}
    generate(a.holder, ids)
    stop = threading.Event()
    threads = [
        threading.Thread(target=busy, args=(a.holder, stop, 100 + i), daemon=True)
        for i in range(a.busy)
    ]
    for t in threads:
        t.start()
    if a.busy:
        time.sleep(3)  # the streams reach their decode phase
    times = {"compute": [], "pull": []}
    # The importer must have measured its prefill speed before it pulls (the pull's
    # deadline): one computed run first, not counted.
    post(f"{a.importer}/flush_cache", {})
    generate(a.importer, ids)
    for r in range(a.rounds):
        order = ["compute", "pull"] if r % 2 == 0 else ["pull", "compute"]
        for way in order:
            post(f"{a.importer}/flush_cache", {})
            secs, out = generate(a.importer, ids, headers=pull_headers if way == "pull" else None)
            meta = out["meta_info"]
            moved = meta.get("transferred_tokens")
            if way == "pull" and moved != a.tokens:
                print(f"round {r}: pulled {moved} of {a.tokens} tokens", file=sys.stderr)
            times[way].append(secs)
            print(json.dumps({"round": r, "way": way, "seconds": round(secs, 4),
                              "transferred_tokens": moved, "cached_tokens": meta["cached_tokens"],
                              "busy": a.busy}))
    stop.set()
    c, p = statistics.median(times["compute"]), statistics.median(times["pull"])
    print(json.dumps({"summary": True, "tokens": a.tokens, "busy": a.busy, "rounds": a.rounds,
                      "compute_median_s": round(c, 4), "pull_median_s": round(p, 4),
                      "compute_range_s": [round(min(times["compute"]), 4),
                                          round(max(times["compute"]), 4)],
                      "pull_range_s": [round(min(times["pull"]), 4), round(max(times["pull"]), 4)],
                      "pull_over_compute": round(p / c, 4)}))


if __name__ == "__main__":
    main()
