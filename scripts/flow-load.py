#!/usr/bin/env python3
"""Open-loop multi-tenant load through a router, for flow control (issue 23).

Each tenant sends Poisson arrivals (seeded) of streamed OpenAI completions with prompts
of distinct random words (no response-cache hits), and the report says, per tenant:
status counts, attempts per success, TTFT (from the first attempt's send to the first
event carrying text) p50/p90/p99, and tokens served; over the run: tokens/s, and per
window the service gap as VTC defines it (Sheng et al., OSDI'24) and Jain's index over the
backlogged tenants.

Service is counted in weighted tokens (input x 1 at the first token, output x 2 at the
end), divided by the tenant's weight. A tenant's unmet demand at a window's end = the
weighted tokens (input + 2 x max_tokens) of its requests sent by then and not finished by
then. Gap per window = sum over tenants i of min(max_j S_j - S_i, unmet_i).

Usage: flow-load.py --url http://127.0.0.1:8000 --duration 60 --seed 1 --out run.json \
         --tenant name=victim,rate=0.5,prompt_tokens=64,max_tokens=16 \
         --tenant name=aggr,rate=3,prompt_tokens=512,max_tokens=16,priority=0,retry=honour
Tenant keys: name, rate (req/s), prompt_tokens, max_tokens, priority (x-priority, 0-3),
retry (none|immediate|honour: on 429/503 resend at once, or after Retry-After; 20 tries),
weight (for the gap and Jain's index), key (Authorization: Bearer), header (tenant header
name, default x-tenant-id).
"""
import argparse
import asyncio
import json
import math
import random
import sys
import time

import aiohttp

WORDS = (
    "time year people way day man thing woman life child world school state family student "
    "group country problem hand part place case week company system program question work "
    "government number night point home water room mother area money story fact month lot "
    "right study book eye job word business issue side kind head house service friend father "
    "power hour game line end member law car city community name president team minute idea "
    "kid body information back parent face others level office door health person art war "
    "history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy music market sense nation plan college interest death "
    "experience effect use class control care field development role effort rate heart drug "
    "show leader light voice wife police mind price report decision son view relationship town "
    "road arm difference value building action model season society tax director position "
    "player record paper space ground form event official matter center couple site project "
    "activity star table need court oil situation cost industry figure street image phone data "
    "picture practice piece land product doctor wall patient worker news test movie north love "
    "support technology step baby computer type attention film tree source organization hair "
    "window evidence population site skin"
).split()


def parse_tenant(spec):
    t = {"rate": 1.0, "prompt_tokens": 64, "max_tokens": 16, "priority": None,
         "retry": "none", "weight": 1.0, "key": None, "header": "x-tenant-id"}
    for kv in spec.split(","):
        k, v = kv.split("=", 1)
        if k in ("rate", "weight"):
            t[k] = float(v)
        elif k in ("prompt_tokens", "max_tokens", "priority"):
            t[k] = int(v)
        else:
            t[k] = v
    assert "name" in t, spec
    assert t["retry"] in ("none", "immediate", "honour"), spec
    return t


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(p / 100 * len(xs))) - 1)]


async def one(session, url, t, rng, rec, deadline):
    words = " ".join(rng.choice(WORDS) for _ in range(t["prompt_tokens"]))
    body = {"model": "locus", "prompt": words, "max_tokens": t["max_tokens"], "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    headers = {t["header"]: t["name"]}
    if t["priority"] is not None:
        headers["x-priority"] = str(t["priority"])
    if t["key"]:
        headers["authorization"] = f"Bearer {t['key']}"
    rec["sent"] = time.monotonic()
    for attempt in range(20):
        rec["attempts"] = attempt + 1
        try:
            async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
                rec["statuses"].append(r.status)
                if r.status in (429, 503) and t["retry"] != "none" and time.monotonic() < deadline:
                    wait = 0.0
                    if t["retry"] == "honour":
                        wait = float(r.headers.get("retry-after", "1"))
                    await r.read()
                    await asyncio.sleep(wait)
                    continue
                if r.status != 200:
                    await r.read()
                    rec["status"] = r.status
                    return
                buf = b""
                async for chunk in r.content.iter_any():
                    buf += chunk
                    while b"\n\n" in buf:
                        ev, buf = buf.split(b"\n\n", 1)
                        if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                            continue
                        d = json.loads(ev[6:])
                        if "error" in d:
                            rec["status"] = "stream_error"
                            return
                        ch = d.get("choices") or []
                        if rec["ttft"] is None and ch and ch[0].get("text"):
                            rec["first"] = time.monotonic()
                            rec["ttft"] = rec["first"] - rec["sent"]
                        if d.get("usage"):
                            rec["prompt"] = d["usage"]["prompt_tokens"]
                            rec["completion"] = d["usage"]["completion_tokens"]
                rec["done"] = time.monotonic()
                rec["status"] = 200 if rec["completion"] is not None else "incomplete"
                return
        except asyncio.CancelledError:
            rec["status"] = "unfinished"
            raise
        except Exception as e:  # connection errors
            rec["statuses"].append("conn")
            rec["status"] = "conn:" + type(e).__name__
            return
    rec["status"] = rec["statuses"][-1]


async def tenant_loop(session, url, t, seed, start, duration, drain, recs, tasks):
    rng = random.Random(f"{seed}-{t['name']}")
    at = start
    while True:
        at += rng.expovariate(t["rate"])
        if at - start >= duration:
            return
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        rec = {"tenant": t["name"], "sent": None, "first": None, "ttft": None, "done": None,
               "status": None, "statuses": [], "attempts": 0, "prompt": None,
               "completion": None, "max_tokens": t["max_tokens"],
               "prompt_words": t["prompt_tokens"]}
        recs.append(rec)
        prng = random.Random(rng.random())
        tasks.append(asyncio.create_task(
            one(session, url, t, prng, rec, start + duration + drain)))


def report(tenants, recs, start, end, window):
    weight = {t["name"]: t["weight"] for t in tenants}
    out = {"tenants": {}, "windows": []}
    for t in tenants:
        rs = [r for r in recs if r["tenant"] == t["name"]]
        ok = [r for r in rs if r["status"] == 200]
        codes = {}
        for r in rs:
            codes[str(r["status"])] = codes.get(str(r["status"]), 0) + 1
        refusals = {}
        for r in rs:
            for s in r["statuses"]:
                if s != 200:
                    refusals[str(s)] = refusals.get(str(s), 0) + 1
        ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
        out["tenants"][t["name"]] = {
            "sent": len(rs), "ok": len(ok), "final_status": codes, "refusals_seen": refusals,
            "attempts_per_success": (sum(r["attempts"] for r in rs) / len(ok)) if ok else None,
            "ttft_p50": pct(ttfts, 50), "ttft_p90": pct(ttfts, 90), "ttft_p99": pct(ttfts, 99),
            "e2e_p50": pct([r["done"] - r["sent"] for r in ok], 50),
            "e2e_p99": pct([r["done"] - r["sent"] for r in ok], 99),
            "prompt_tokens": sum(r["prompt"] or 0 for r in ok),
            "completion_tokens": sum(r["completion"] or 0 for r in ok),
        }
    span = end - start
    total = sum(v["prompt_tokens"] + v["completion_tokens"] for v in out["tenants"].values())
    out["tokens_per_s"] = total / span
    out["five_xx"] = sum(1 for r in recs for s in r["statuses"] if isinstance(s, int) and s >= 500)
    # Windows over the sending period.
    names = [t["name"] for t in tenants]
    w0 = start
    while w0 + window <= end + 1e-9:
        w1 = w0 + window
        service = {n: 0.0 for n in names}
        unmet = {n: 0.0 for n in names}
        for r in recs:
            n = r["tenant"]
            if r["first"] is not None and w0 <= r["first"] < w1:
                service[n] += (r["prompt"] or r["prompt_words"]) / weight[n]
            if r["done"] is not None and w0 <= r["done"] < w1 and r["status"] == 200:
                service[n] += 2 * (r["completion"] or 0) / weight[n]
            if r["sent"] is not None and r["sent"] < w1 and (r["done"] is None or r["done"] >= w1):
                unmet[n] += (r["prompt_words"] + 2 * r["max_tokens"]) / weight[n]
        best = max(service.values())
        gap = sum(min(best - service[n], unmet[n]) for n in names)
        back = [service[n] for n in names if unmet[n] > 0]
        jain = (sum(back) ** 2 / (len(back) * sum(x * x for x in back))
                if back and sum(x * x for x in back) > 0 else None)
        out["windows"].append({"start": w0 - start, "service": service, "unmet": unmet,
                               "gap": gap, "jain": jain})
        w0 = w1
    gaps = [w["gap"] for w in out["windows"]]
    jains = [w["jain"] for w in out["windows"] if w["jain"] is not None]
    out["gap_max"] = max(gaps) if gaps else None
    out["gap_mean"] = sum(gaps) / len(gaps) if gaps else None
    out["jain_mean"] = sum(jains) / len(jains) if jains else None
    return out


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--drain", type=float, default=60)
    ap.add_argument("--window", type=float, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    ap.add_argument("--label", default="")
    ap.add_argument("--tenant", action="append", required=True, type=parse_tenant)
    a = ap.parse_args()
    recs, tasks = [], []
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=a.duration + a.drain + 30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as s:
        start = time.monotonic()
        await asyncio.gather(*(tenant_loop(s, a.url.rstrip("/"), t, a.seed, start, a.duration,
                                           a.drain, recs, tasks) for t in a.tenant))
        end = start + a.duration
        pending = [t for t in tasks if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=max(0.0, end + a.drain - time.monotonic()))
            for t in still:
                t.cancel()
            await asyncio.gather(*still, return_exceptions=True)
    for r in recs:
        if r["status"] is None:
            r["status"] = "unfinished"
    out = report(a.tenant, recs, start, end, a.window)
    out["label"] = a.label
    out["config"] = {"duration": a.duration, "window": a.window, "seed": a.seed,
                     "tenants": a.tenant}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)
    print(f"{a.label}: tokens/s {out['tokens_per_s']:.1f}, gap max/mean "
          f"{out['gap_max'] or 0:.0f}/{out['gap_mean'] or 0:.0f}, jain {out['jain_mean']}, "
          f"5xx {out['five_xx']}")
    for n, v in out["tenants"].items():
        f = lambda x: "-" if x is None else f"{x:.2f}"
        print(f"  {n}: sent {v['sent']} ok {v['ok']} final {v['final_status']} refusals "
              f"{v['refusals_seen']} att/ok {f(v['attempts_per_success'])} ttft p50/p90/p99 "
              f"{f(v['ttft_p50'])}/{f(v['ttft_p90'])}/{f(v['ttft_p99'])}")


if __name__ == "__main__":
    asyncio.run(main())
