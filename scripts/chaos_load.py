#!/usr/bin/env python3
"""Chaos under steady load, in containers: run by scripts/chaos-test.sh against the compose
cluster of docker-compose.yml + scripts/chaos-compose.yml (three workers, two routers).
Python 3.11, stdlib only.

A steady open-loop client sends /generate requests through the routers the whole time
(evenly spaced, --rate per second; each prompt is its tenant's shared system prompt, about
32 tokens, then a question of its own; 8 new tokens, ignore_eos) while these faults come
one after the other:

  steady  no fault (baseline)
  a       worker1 cut off the routers' network (`docker network disconnect`) for --fault-s,
          then connected again (with its aliases, so DNS names it again)
  b       worker2 frozen (`docker pause`) for --fault-s, then thawed
  c1..c3  every worker rolled, one at a time: `docker stop` (SIGTERM, Compose's grace),
          `docker start`, wait until Docker and the router both call it healthy
  d       the router stopped (`docker stop`: SIGTERM, it drains) and started again
  e-one   both routers up, the client on router1 only      } prefix hit rate, one replica
  e-two   the client spread over both routers               } against two
  e       router2 stopped (SIGTERM) under load, the client still spread over both; then
          started again

The client retries as the OpenAI Python client does by default: 2 retries, on a
connection error, a timeout, 408, 409, 429 or any 5xx; it waits what Retry-After says when
that is 0-60 s, else 0.5 s then 1 s, each times (1 - 0.25 x random). A retry keeps the
request's X-Request-Id. With two routers, the first attempt goes to router (n mod 2) and
each retry to the next router (a client resolving one name with both addresses).

What is recorded (all under --out, one JSON object a line):
  requests.jsonl  every request: id (X-Request-Id), phase and tenant, each client attempt
                  (router, start, end, HTTP status, error kind, the worker that answered:
                  `x-locus-worker` and `meta_info.worker_id`, prompt and cached tokens)
  views.jsonl     each router, every 200 ms: its /health status and its `GET
                  /admin/workers` (each worker's url, id, worker_id, healthy, in_flight)
  routers.jsonl   each router, every second: retries and attempt outcomes from /metrics
  workers.jsonl   each worker, every second: its /metrics (requests by status, prefix
                  tokens), read on its loopback port (scripts/chaos-compose.yml)
  events.jsonl    phases and fault commands, with the command's start and end

What is counted, per fault (the window of a fault: from its phase's start to the next
phase's start, by the time a request was first sent):
  sent            requests first sent in the window
  failed          requests that failed after the client's retries
  client retried  requests the client sent more than once; router retries: the routers'
                  locus_router_retries_total over the window
  F, D, E, R      F: the fault command's start. D (detected): for a worker, router1's
                  first view at or after F without the worker healthy (down, or dropped by
                  discovery); for a router, its first /health at or after F that is not
                  200. E: the command that ends the fault (connect, unpause, start) starts.
                  R (recovered): the first view at or after E (and after D) with the
                  worker healthy (for a router: /health 200 again), as seconds after E;
                  also when the first request sent to it after E was answered.
  in flight on the faulted worker
                  requests whose first attempt was open at F (sent before, not finished) or
                  was sent between F and D, and that the router sent to the faulted worker:
                  answered by it, or failed (the client's first attempt), or answered by
                  another worker only after --slow-s (the router's retry away from it);
                  beside it, router1's own count: its in_flight on the worker at F plus its
                  decisions for the worker between F and D. For a router fault: requests
                  whose first attempt went to that router, open at F or sent in [F, D).
  after detection requests first sent at or after D. For a, b and c a request counts as
                  failed here when its first attempt failed (the router did not hide the
                  fault), whatever the retries did; for d and e, when it failed after them.
  duplicated      a worker does not log request ids, so a request served by two workers
                  is counted from its traces: the requests the workers completed (the sum of
                  their locus_worker_requests_total{endpoint="generate",status="200"}
                  increments, scraped every second) less the requests the client was answered.
                  A request a worker completed whose answer never reached the client (the
                  client or the router gave up on it) counts here too: with a retry, that is
                  the same X-Request-Id served twice. A stopped worker's counter ends at its
                  last scrape; what it finished while draining is added from the client's side
                  (its answers since it started beyond that count); only what it completed and
                  did not deliver in that last second is not seen. Otherwise the run's total
                  is exact. Per
                  window, an increment counts in the window of the scrape that saw it and an
                  answer in the window of its worker's next scrape, which can put one request
                  on each side of an edge; so the per-fault figure is capped by the retries
                  that could have served a request twice (the routers' attempts in the window
                  that ended in a timeout, a broken answer or a 5xx, and the client's retries
                  after an attempt that was not refused) and floored at 0. Both the raw
                  per-window figures and the total are in the report.
  slowest         the longest a request of the window took, retries and waits included; the
                  report lists every retry that waited 5 s or more on a Retry-After.

Targets (the exit status is 1 when one is missed): no failure in `steady`; in a, b and c
no request sent after detection fails (first attempt); in d and e none fails after the
client's retries; every fault detected and recovered from.
"""

import argparse
import bisect
import http.client
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict

MAX_NEW = 8
PREFIX = ("Tenant {t:02d} system prompt: you are the support assistant of shop {shop}. "
          "Answer in one short sentence, politely, and always cite the order number.")


def prompt(tenant, seq):
    return PREFIX.format(t=tenant, shop=1000 + tenant * 7919) + \
        f" Question {seq}: where is parcel {seq * 7 % 100003} now?"


class Jsonl:
    def __init__(self, path):
        self.f = open(path, "w", buffering=1)
        self.lock = threading.Lock()

    def write(self, obj):
        line = json.dumps(obj, separators=(",", ":"))
        with self.lock:
            self.f.write(line + "\n")

    def close(self):
        with self.lock:
            self.f.close()


def request(url, method="GET", body=None, headers=None, timeout=1.0):
    """(status, headers as a lower-cased dict, body bytes); raises OSError and
    http.client.HTTPException on a failed connection, socket.timeout on a timeout."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        path = u.path + ("?" + u.query if u.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def error_kind(e):
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, http.client.RemoteDisconnected):
        return "closed"
    if isinstance(e, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(e, http.client.HTTPException):
        return "http:" + type(e).__name__
    if isinstance(e, OSError):
        return f"oserror:{e.errno}"
    return type(e).__name__


# ---------------------------------------------------------------------------------------
# The client


class Client:
    """Open loop: one request every 1/rate s, each in a thread of its own, with the OpenAI
    client's retries."""

    def __init__(self, routers, log, rate, tenants, timeout, max_retries, seed):
        self.routers = routers  # [(name, url)]
        self.log, self.rate, self.tenants = log, rate, tenants
        self.timeout, self.max_retries = timeout, max_retries
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.phase, self.targets = "setup", [0]
        self.records = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = []
        self.run_id = f"{int(time.time()) % 100000:05d}"
        self.dispatcher = threading.Thread(target=self.dispatch, daemon=True)

    def set(self, phase, targets):
        with self.lock:
            self.phase, self.targets = phase, list(targets)

    def dispatch(self):
        seq, t_next = 0, time.time()
        while not self.stop.is_set():
            delay = t_next - time.time()
            if delay > 0:
                time.sleep(delay)
            with self.lock:
                phase, targets = self.phase, self.targets
            th = threading.Thread(target=self.one, args=(seq, phase, targets), daemon=True)
            th.start()
            self.threads.append(th)
            seq += 1
            t_next += 1.0 / self.rate

    def jitter(self):
        with self.rng_lock:
            return 1 - 0.25 * self.rng.random()

    def attempt(self, router, rid, body):
        name, url = self.routers[router]
        a = {"router": name, "start": time.time()}
        try:
            status, headers, data = request(
                f"{url}/generate", "POST", body,
                {"content-type": "application/json", "x-request-id": rid}, self.timeout)
        except Exception as e:  # noqa: BLE001 - every failure a client sees counts
            a.update(end=time.time(), status=0, error=error_kind(e), retry=True)
            return a
        a.update(end=time.time(), status=status, worker=headers.get("x-locus-worker"))
        if status == 200:
            try:
                meta = json.loads(data).get("meta_info", {})
                a.update(worker_id=meta.get("worker_id"), prompt_tokens=meta.get("prompt_tokens"),
                         cached_tokens=meta.get("cached_tokens"))
                a["ok"] = bool(meta.get("worker_id"))
            except ValueError:
                a["ok"] = False
            if not a["ok"]:
                a.update(error="bad answer", retry=False)
            return a
        try:
            err = json.loads(data).get("error", {})
            a["error"] = f"http {status} {err.get('code') or err.get('type') or ''}".strip()
            a["message"] = str(err.get("message", ""))[:300]
        except ValueError:
            a["error"] = f"http {status}"
        should = headers.get("x-should-retry")
        if should in ("true", "false"):
            a["retry"] = should == "true"
        else:
            a["retry"] = status in (408, 409, 429) or status >= 500
        for h, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            try:
                a["retry_after"] = float(headers[h]) * scale
                break
            except (KeyError, ValueError):
                pass
        return a

    def one(self, seq, phase, targets):
        tenant = seq % self.tenants
        rid = f"chaos-{self.run_id}-{seq:06d}"
        body = json.dumps({"text": prompt(tenant, seq),
                           "sampling_params": {"max_new_tokens": MAX_NEW, "ignore_eos": True}}).encode()
        attempts = []
        for n in range(self.max_retries + 1):
            a = self.attempt(targets[(seq + n) % len(targets)], rid, body)
            attempts.append(a)
            if a.get("ok") or not a.get("retry") or n == self.max_retries:
                break
            wait = a.get("retry_after")
            if wait is None or not 0 < wait <= 60:
                wait = min(0.5 * 2 ** n, 8.0) * self.jitter()
            time.sleep(wait)
        last = attempts[-1]
        rec = {"id": rid, "seq": seq, "phase": phase, "tenant": tenant,
               "sent": attempts[0]["start"], "end": last["end"], "attempts": attempts,
               "ok": bool(last.get("ok")), "status": last["status"],
               "error": None if last.get("ok") else last.get("error"),
               "worker": last.get("worker"), "worker_id": last.get("worker_id")}
        self.log.write(rec)
        with self.lock:
            self.records.append(rec)

    def start(self):
        self.dispatcher.start()

    def end(self, wait_s):
        self.stop.set()
        self.dispatcher.join()
        deadline = time.time() + wait_s
        for th in self.threads:
            th.join(max(0.0, deadline - time.time()))
        return sum(th.is_alive() for th in self.threads)


# ---------------------------------------------------------------------------------------
# What the routers and the workers say


class Watch:
    """Per router: /health and /admin/workers every 200 ms, /metrics every second. Per
    worker: /metrics every second."""

    def __init__(self, routers, admins, token, workers, out):
        self.routers, self.admins, self.token, self.workers = routers, admins, token, workers
        self.views = defaultdict(list)  # router -> [(t, health, workers or None)]
        self.rmetrics = defaultdict(list)  # router -> [(t, {metric: value})]
        self.wmetrics = defaultdict(list)  # worker -> [(t, {metric: value} or None)]
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.vlog = Jsonl(f"{out}/views.jsonl")
        self.rlog = Jsonl(f"{out}/routers.jsonl")
        self.wlog = Jsonl(f"{out}/workers.jsonl")
        self.threads = [threading.Thread(target=self.router_loop, args=(i,), daemon=True)
                        for i in range(len(routers))]
        self.threads += [threading.Thread(target=self.worker_loop, args=(w,), daemon=True)
                         for w in workers]

    def router_loop(self, i):
        name, url = self.routers[i]
        admin = self.admins[i]
        auth = {"authorization": f"Bearer {self.token}"}
        next_metrics = 0.0
        while not self.stop.is_set():
            t = time.time()
            try:
                health = request(f"{url}/health", timeout=1.0)[0]
            except Exception as e:  # noqa: BLE001
                health = error_kind(e)
            workers = None
            try:
                status, _, data = request(f"{admin}/admin/workers", headers=auth, timeout=1.0)
                if status == 200:
                    workers = [{k: w.get(k) for k in ("url", "id", "worker_id", "healthy", "in_flight",
                                                      "kv_blocks", "load_age_ms")}
                               for w in json.loads(data)["workers"]]
            except Exception:  # noqa: BLE001 - a stopped router does not answer
                pass
            with self.lock:
                self.views[name].append((t, health, workers))
            self.vlog.write({"t": t, "router": name, "health": health, "workers": workers})
            if t >= next_metrics:
                next_metrics = t + 1.0
                try:
                    status, _, data = request(f"{url}/metrics", timeout=1.0)
                    m = parse_metrics(data.decode(), ("locus_router_retries_total",
                                                      "locus_router_attempt_outcomes_total",
                                                      "locus_router_decisions_total"))
                    with self.lock:
                        self.rmetrics[name].append((t, m))
                    self.rlog.write({"t": t, "router": name, "metrics": m})
                except Exception:  # noqa: BLE001
                    pass
            self.stop.wait(max(0.0, 0.2 - (time.time() - t)))

    def worker_loop(self, worker):
        url = self.workers[worker]
        while not self.stop.is_set():
            t = time.time()
            m = None
            try:
                status, _, data = request(f"{url}/metrics", timeout=1.0)
                if status == 200:
                    m = parse_metrics(data.decode(), ("locus_worker_requests_total",
                                                      "locus_worker_prefix_tokens_total",
                                                      "locus_worker_cancelled_total"))
            except Exception:  # noqa: BLE001 - paused, cut off or stopped
                pass
            with self.lock:
                self.wmetrics[worker].append((t, m))
            self.wlog.write({"t": t, "worker": worker, "metrics": m})
            self.stop.wait(max(0.0, 1.0 - (time.time() - t)))

    def start(self):
        for th in self.threads:
            th.start()

    def end(self):
        self.stop.set()
        for th in self.threads:
            th.join()
        for log in (self.vlog, self.rlog, self.wlog):
            log.close()

    # Live questions, asked by the faults.
    def last_view(self, router):
        with self.lock:
            return self.views[router][-1] if self.views[router] else None

    def wait(self, what, timeout, every=0.1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if what():
                return True
            time.sleep(every)
        return False


METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def parse_metrics(text, names):
    out = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m and m.group(1) in names:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def worker_state(workers, worker_id):
    """'up', 'down' (listed, none healthy), 'absent', or None when the view failed."""
    if workers is None:
        return None
    mine = [w for w in workers if w.get("worker_id") == worker_id]
    if not mine:
        return "absent"
    return "up" if any(w.get("healthy") for w in mine) else "down"


def healthy_ids(workers):
    return {w["worker_id"] for w in workers or [] if w.get("healthy") and w.get("worker_id")}


# ---------------------------------------------------------------------------------------
# Faults


def sh(cmd, check=True):
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return t, time.time(), r


class Cluster:
    def __init__(self, compose, events):
        self.compose, self.events = compose, events
        self.ids = {}

    def cid(self, service):
        if service not in self.ids:
            out = sh(self.compose + ["ps", "-q", service])[2].stdout.split()
            if not out:
                raise SystemExit(f"no container for the service {service}")
            self.ids[service] = out[0]
        return self.ids[service]

    def do(self, what, service, cmd):
        t0, t1, r = sh(cmd)
        self.events.write({"event": what, "service": service, "start": t0, "end": t1,
                           "cmd": " ".join(cmd)})
        return t0, t1

    def workers_net(self, service):
        """The network the routers share with the worker, and the worker's aliases on it."""
        nets = json.loads(sh(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                              self.cid(service)])[2].stdout)
        name = next(n for n in nets if n.endswith("_workers"))
        aliases = [a for a in nets[name].get("Aliases") or [] if not self.cid(service).startswith(a)]
        return name, aliases

    def health(self, service):
        r = sh(["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                self.cid(service)], check=False)[2]
        return r.stdout.strip()


# ---------------------------------------------------------------------------------------
# Analysis


def first_attempt_ok(r):
    return bool(r["attempts"][0].get("ok"))


def summarize_fault(f, records, watch, slow_s, windows):
    """One row of the table (see the module's doc)."""
    w0, w1 = windows[f["phase"]]
    reqs = [r for r in records if w0 <= r["sent"] < w1]
    F, E = f["F"], f["E"]
    row = {"fault": f["phase"], "what": f["what"], "victim": f["victim"], "sent": len(reqs),
           "failed": sum(not r["ok"] for r in reqs),
           "client_retried": sum(len(r["attempts"]) > 1 for r in reqs),
           "first_attempt_failed": sum(not first_attempt_ok(r) for r in reqs),
           "fault_command_s": round(f["F_end"] - F, 3),
           "end_command_s": round(f["E_end"] - E, 3) if E else None}
    routers = [n for n, _ in watch.routers]
    detect, recover = {}, {}
    if f["kind"] == "worker":
        for name in routers:
            vs = watch.views[name]
            d = next((t for t, _, ws in vs if t >= F and worker_state(ws, f["victim"]) in ("down", "absent")), None)
            absent = next((t for t, _, ws in vs if t >= F and (not E or t < E)
                           and worker_state(ws, f["victim"]) == "absent"), None)
            # Up again: after the fault ended and after this router had seen it (a router
            # that has not noticed a stop yet still lists the worker as up).
            since = max(E or 0, d or 0)
            r = next((t for t, _, ws in vs if E and t >= since and worker_state(ws, f["victim"]) == "up"), None)
            detect[name] = {"down_s": d and round(d - F, 3), "dropped_s": absent and round(absent - F, 3)}
            recover[name] = r and round(r - E, 3)
        D = F + detect["router1"]["down_s"] if detect["router1"]["down_s"] is not None else None
        served = sorted(a["end"] for r in records for a in r["attempts"]
                        if E and a["start"] >= E and a.get("worker_id") == f["victim"] and a.get("ok"))
        first_served = served[0] - E if served else None
        on_victim = lambda r: (r["attempts"][0].get("worker_id") == f["victim"]  # noqa: E731
                               or not first_attempt_ok(r)
                               or r["attempts"][0]["end"] - r["attempts"][0]["start"] >= slow_s)
        # router1's own count: in flight on the worker at F, plus its decisions for it up to D.
        before = [ws for t, _, ws in watch.views["router1"] if t <= F and ws]
        at_f = sum(w.get("in_flight") or 0 for w in (before[-1] if before else [])
                   if w.get("worker_id") == f["victim"])
        urls = {w["url"] for _, _, ws in watch.views["router1"] for w in ws or []
                if w.get("worker_id") == f["victim"]}
        decided = 0
        if D is not None:
            ms = watch.rmetrics["router1"]
            m_f = [m for t, m in ms if t <= F]
            m_d = [m for t, m in ms if t >= D]
            if m_f and m_d:
                for u in urls:
                    k = f'locus_router_decisions_total{{worker="{u}"}}'
                    decided += max(0, m_d[0].get(k, 0) - m_f[-1].get(k, 0))
        row["router_in_flight_at_fault"] = at_f
        row["router_decisions_before_detection"] = int(decided)
    else:
        for name in routers:
            vs = watch.views[name]
            if name != f["victim"]:
                continue
            d = next((t for t, h, _ in vs if t >= F and h != 200), None)
            since = max(E or 0, d or 0)
            r = next((t for t, h, ws in vs if E and t >= since and h == 200 and healthy_ids(ws)), None)
            detect[name] = {"down_s": d and round(d - F, 3)}
            recover[name] = r and round(r - E, 3)
        D = F + detect[f["victim"]]["down_s"] if detect[f["victim"]]["down_s"] is not None else None
        served = sorted(a["end"] for r in records for a in r["attempts"]
                        if E and a["start"] >= E and a["router"] == f["victim"] and a.get("ok"))
        first_served = served[0] - E if served else None
        on_victim = lambda r: r["attempts"][0]["router"] == f["victim"]  # noqa: E731
    row["detect"], row["recover"] = detect, recover
    row["detect_s"] = round(D - F, 3) if D is not None else None
    row["recover_s"] = recover.get("router1" if f["kind"] == "worker" else f["victim"])
    row["first_served_after_end_s"] = round(first_served, 3) if first_served is not None else None
    exposed = [r for r in reqs
               if (r["attempts"][0]["start"] < F < r["attempts"][0]["end"])
               or (D is not None and F <= r["attempts"][0]["start"] < D)
               or (D is None and r["attempts"][0]["start"] >= F)]
    exposed += [r for r in records if not (w0 <= r["sent"] < w1)
                and r["attempts"][0]["start"] < F < r["attempts"][0]["end"]]
    inflight = [r for r in exposed if on_victim(r)]
    after = [r for r in reqs if D is not None and r["sent"] >= D]
    worker_fault = f["kind"] == "worker"
    row.update({
        "exposed_before_detection": len(exposed),
        "in_flight_on_faulted": len(inflight),
        "in_flight_failed": sum(not r["ok"] for r in inflight),
        "in_flight_first_attempt_failed": sum(not first_attempt_ok(r) for r in inflight),
        "in_flight_answered_by_victim": sum(r["attempts"][0].get("worker_id") == f["victim"] for r in inflight)
        if worker_fault else None,
        "after_detection": len(after),
        "after_detection_failed": sum((not first_attempt_ok(r)) if worker_fault else (not r["ok"]) for r in after),
        "after_detection_failed_after_retries": sum(not r["ok"] for r in after),
        "slowest_s": round(max((r["end"] - r["sent"] for r in reqs), default=0.0), 3),
        "retry_after_waits": [{"id": r["id"], "sent_after_fault_s": round(r["sent"] - F, 3),
                               "status": a["status"], "error": a.get("error"), "message": a.get("message"),
                               "retry_after_s": a["retry_after"], "took_s": round(r["end"] - r["sent"], 3)}
                              for r in reqs for a in r["attempts"][:-1] if (a.get("retry_after") or 0) >= 5],
        "possible_duplicates": sum(1 for r in reqs for a in r["attempts"][:-1] if a.get("error") != "refused"),
        "failures": [{"id": r["id"], "sent_after_fault_s": round(r["sent"] - F, 3),
                      "attempts": [{"router": a["router"], "start_s": round(a["start"] - F, 3),
                                    "end_s": round(a["end"] - F, 3), "status": a["status"],
                                    "error": a.get("error"), "message": a.get("message"),
                                    "worker_id": a.get("worker_id")} for a in r["attempts"]]}
                     for r in reqs if not first_attempt_ok(r)][:40],
    })
    return row


def served_beyond_delivered(records, watch, windows, stops):
    """Per window: requests the workers completed less the requests the client was
    answered (see the module's doc), and the run's total. A worker's increments count in
    the window of the scrape that saw them, and so does each answer from that worker (the
    window of its first scrape after the answer), so that the two line up at the edges."""
    inc = defaultdict(float)  # window -> completed
    edges = sorted(windows.items(), key=lambda kv: kv[1][0])

    def window_of(t):
        for name, (a, b) in edges:
            if a <= t < b:
                return name
        return None
    key = 'locus_worker_requests_total{endpoint="generate",status="200"}'
    scraped = {}  # worker id -> times of its answered scrapes
    for worker, samples in watch.wmetrics.items():
        prev = None
        times = scraped.setdefault(f"{worker}:8001", [])
        for t, m in samples:
            if m is None:
                continue
            v = m.get(key, 0.0)
            if prev is not None:
                d = v - prev if v >= prev else v  # a restart starts the counter at 0
                w = window_of(t)
                if w:
                    inc[w] += d
            prev = v
            times.append(t)

    def window_of_answer(worker_id, end):
        times = scraped.get(worker_id, [])
        i = bisect.bisect_left(times, end)
        return window_of(times[i] if i < len(times) else end)
    # A stopped worker's drain: what it completed after its last scrape is not in any
    # scrape. It completed at least every answer the client had from it since it (re)started,
    # so the answers beyond its last scraped count are added (in the window of the stop).
    # Nothing it completed and did not deliver in that last second can be seen.
    firsts = {}
    for worker, samples in watch.wmetrics.items():
        ok = [(t, m.get(key, 0.0)) for t, m in samples if m is not None]
        if ok:
            firsts[f"{worker}:8001"] = ok[0]
    restarted = {}
    for s in sorted(stops, key=lambda s: s["F"]):
        v = s["victim"]
        samples = [(t, m.get(key, 0.0)) for t, m in watch.wmetrics.get(s["service"], [])
                   if m is not None and restarted.get(v, 0) <= t < s["E"]]
        if not samples or v not in firsts:
            continue
        begin, base = (restarted[v], 0.0) if v in restarted else firsts[v]
        answered = sum(1 for r in records for a in r["attempts"]
                       if a.get("ok") and a.get("worker_id") == v and begin < a["end"] <= s["E"])
        tail = max(0.0, answered - (samples[-1][1] - base))
        w = window_of(s["F"])
        if w:
            inc[w] += tail
        restarted[v] = s["E"]
    delivered = Counter(window_of_answer(r["worker_id"], r["end"]) for r in records if r["ok"])
    per = {name: int(round(inc[name] - delivered.get(name, 0))) for name, _ in edges}
    total_done = sum(inc.values())
    total_delivered = sum(delivered[name] for name, _ in edges)
    return per, int(round(total_done)), total_delivered


def router_counts(watch, windows):
    """Per window, per router: retries and attempt outcomes (deltas of /metrics)."""
    out = defaultdict(lambda: defaultdict(float))
    for router, samples in watch.rmetrics.items():
        prev = None
        for t, m in samples:
            if prev is not None:
                for name, (a, b) in windows.items():
                    if a <= t < b:
                        for k, v in m.items():
                            if k.startswith("locus_router_decisions_total"):
                                continue
                            d = v - prev.get(k, 0.0) if v >= prev.get(k, 0.0) else v
                            short = k.replace("locus_router_attempt_outcomes_total", "outcome") \
                                     .replace("locus_router_retries_total", "retries")
                            out[name][short] += d
            prev = m
    return {w: {k: int(v) for k, v in c.items() if v} for w, c in out.items()}


def hit_rate(records, phase):
    ok = [a for r in records if r["phase"] == phase for a in r["attempts"] if a.get("ok")]
    prompt = sum(a.get("prompt_tokens") or 0 for a in ok)
    cached = sum(a.get("cached_tokens") or 0 for a in ok)
    tenants = defaultdict(set)
    for r in records:
        if r["phase"] == phase and r["ok"]:
            tenants[r["tenant"]].add(r["worker_id"])
    return {"answers": len(ok), "prompt_tokens": prompt, "cached_tokens": cached,
            "hit_rate": round(cached / prompt, 4) if prompt else None,
            "answers_with_a_hit": sum((a.get("cached_tokens") or 0) > 0 for a in ok),
            "workers_per_tenant": round(sum(len(s) for s in tenants.values()) / len(tenants), 2)
            if tenants else None}


def timeline(watch, t0, faults):
    """Each router's view of each worker: its changes of state, as seconds since t0, with
    the faults' commands among them."""
    lines = []
    marks = sorted([(f["F"], f"--- {f['phase']}: {f['what']}: fault command") for f in faults]
                   + [(f["E"], f"--- {f['phase']}: {f['what']}: command ending it") for f in faults if f["E"]])
    for router, samples in sorted(watch.views.items()):
        last = {}
        lines.append(f"## {router}")
        pending = list(marks)
        for t, health, ws in samples:
            while pending and pending[0][0] <= t:
                mt, text = pending.pop(0)
                lines.append(f"{mt - t0:8.2f}  {text}")
            if ws is None:
                # The router does not answer: what it thought of the workers is unknown.
                state = dict(last)
                state["(router)"] = f"admin API: no answer (health {health})"
            else:
                state = {"(router)": f"health {health}"}
                for w in ws:
                    key = w.get("worker_id") or "?"
                    s = f"{'up' if w.get('healthy') else 'down'} {w['url']}"
                    state[key] = s if key not in state else state[key] + ", " + s
            for k in sorted(set(state) | set(last)):
                if state.get(k) != last.get(k):
                    lines.append(f"{t - t0:8.2f}  {k:14s} {state.get(k, 'absent')}")
            last = state
    return "\n".join(lines) + "\n"


def fmt(x, digits=2):
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def table(rows, steady, dup, rc_counts):
    head = ("| fault | sent | failed (after client retries) | client retried | router retries "
            "| in flight on the faulted worker/router (failed: first attempt / after retries) "
            "| router1's count in flight | sent after detection (failed) | time to detect s "
            "| time to recover s (healthy / first served) | slowest request s | duplicated |")
    out = [head, "|" + "---|" * 12]
    out.append(f"| none (steady) | {steady['sent']} | {steady['failed']} | {steady['client_retried']} "
               f"| {rc_counts.get('steady', {}).get('retries', 0)} | - | - | - | - | - "
               f"| {fmt(steady['slowest_s'])} | {dup.get('steady', 0)} |")
    for r in rows:
        router_count = (f"{r['router_in_flight_at_fault']} + {r['router_decisions_before_detection']}"
                        if "router_in_flight_at_fault" in r else "-")
        out.append(
            f"| {r['fault']}: {r['what']} | {r['sent']} | {r['failed']} | {r['client_retried']} "
            f"| {rc_counts.get(r['fault'], {}).get('retries', 0)} "
            f"| {r['in_flight_on_faulted']} ({r['in_flight_first_attempt_failed']} / {r['in_flight_failed']}) "
            f"| {router_count} "
            f"| {r['after_detection']} ({r['after_detection_failed']}) "
            f"| {fmt(r['detect_s'])} | {fmt(r['recover_s'])} / {fmt(r['first_served_after_end_s'])} "
            f"| {fmt(r['slowest_s'])} | {dup.get(r['fault'], 0)} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="`chaos_load.py --analyze DIR` writes the report again from a run's files.")
    ap.add_argument("--routers", required=True, help="router1 URL,router2 URL")
    ap.add_argument("--admins", required=True, help="their admin URLs, in the same order")
    ap.add_argument("--workers", required=True,
                    help="service=URL of each worker's loopback port, comma separated")
    ap.add_argument("--token", required=True, help="the routers' admin token")
    ap.add_argument("--compose", required=True, help="the compose command, e.g. 'docker-compose -p x -f a -f b'")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=3.5, help="requests per second (open loop)")
    ap.add_argument("--tenants", type=int, default=12)
    ap.add_argument("--timeout-s", type=float, default=30.0, help="the client's read timeout")
    ap.add_argument("--max-retries", type=int, default=2)
    ap.add_argument("--steady-s", type=float, default=20.0)
    ap.add_argument("--pre-s", type=float, default=5.0, help="load before each fault")
    ap.add_argument("--fault-s", type=float, default=10.0, help="partition and freeze length")
    ap.add_argument("--post-s", type=float, default=20.0, help="load after each fault ends")
    ap.add_argument("--settle-s", type=float, default=5.0, help="between two workers of the roll")
    ap.add_argument("--hit-s", type=float, default=20.0, help="each of the hit-rate windows in (e)")
    ap.add_argument("--slow-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=7)
    if "--analyze" in sys.argv[1:2]:
        return analyze(sys.argv[2])
    a = ap.parse_args()
    compose = a.compose.split()
    routers = [(f"router{i + 1}", u) for i, u in enumerate(a.routers.split(","))]
    admins = a.admins.split(",")
    workers = dict(kv.split("=", 1) for kv in a.workers.split(","))
    services = {w: f"{w}:8001" for w in workers}  # service -> worker id (HOSTNAME:PORT)

    events = Jsonl(f"{a.out}/events.jsonl")
    cluster = Cluster(compose, events)
    watch = Watch(routers, admins, a.token, workers, a.out)
    watch.start()
    # Every worker up and identified, in both routers' views, before the load starts.
    want = set(services.values())
    if not watch.wait(lambda: all((v := watch.last_view(n)) and want <= healthy_ids(v[2])
                                  for n, _ in routers), 120):
        raise SystemExit("the routers never listed every worker as healthy")
    # ... and every worker's counters read once, so that the load's requests are all counted.
    if not watch.wait(lambda: all(any(m for _, m in list(watch.wmetrics[w])) for w in workers), 30):
        raise SystemExit("a worker's /metrics did not answer on its loopback port")
    client = Client(routers, Jsonl(f"{a.out}/requests.jsonl"), a.rate, a.tenants, a.timeout_s,
                    a.max_retries, a.seed)
    t0 = time.time()
    phases = []  # (name, start)
    faults = []
    stops = []

    def say(msg):
        print(f"[{time.time() - t0:7.2f}s] {msg}", flush=True)

    def phase(name, targets):
        client.set(name, targets)
        phases.append((name, time.time()))
        events.write({"event": "phase", "phase": name, "start": time.time(), "targets": targets})
        say(f"phase {name} (client on {', '.join(routers[i][0] for i in targets)})")

    def up_in(router, worker_id):
        v = watch.last_view(router)
        return bool(v) and worker_id in healthy_ids(v[2])

    phase("steady", [0])
    client.start()
    time.sleep(a.steady_s)

    # (a) partition worker1 from the routers' network.
    phase("a", [0])
    time.sleep(a.pre_s)
    svc = "worker1"
    net, aliases = cluster.workers_net(svc)
    F, F_end = cluster.do("disconnect", svc, ["docker", "network", "disconnect", net, cluster.cid(svc)])
    say(f"{svc} disconnected from {net} (aliases {aliases})")
    time.sleep(max(0.0, F + a.fault_s - time.time()))
    cmd = ["docker", "network", "connect"] + [x for al in aliases for x in ("--alias", al)] + [net, cluster.cid(svc)]
    E, E_end = cluster.do("connect", svc, cmd)
    say(f"{svc} connected again")
    watch.wait(lambda: up_in("router1", services[svc]), 60)
    faults.append({"phase": "a", "what": f"partition {svc} {a.fault_s:g} s", "kind": "worker",
                   "victim": services[svc], "F": F, "F_end": F_end, "E": E, "E_end": E_end})
    time.sleep(max(0.0, E + a.post_s - time.time()))

    # (b) freeze worker2.
    phase("b", [0])
    time.sleep(a.pre_s)
    svc = "worker2"
    F, F_end = cluster.do("pause", svc, ["docker", "pause", cluster.cid(svc)])
    say(f"{svc} paused")
    time.sleep(max(0.0, F + a.fault_s - time.time()))
    E, E_end = cluster.do("unpause", svc, ["docker", "unpause", cluster.cid(svc)])
    say(f"{svc} thawed")
    watch.wait(lambda: up_in("router1", services[svc]), 60)
    faults.append({"phase": "b", "what": f"freeze {svc} {a.fault_s:g} s", "kind": "worker",
                   "victim": services[svc], "F": F, "F_end": F_end, "E": E, "E_end": E_end})
    time.sleep(max(0.0, E + a.post_s - time.time()))

    # (c) roll every worker, one at a time.
    for i, svc in enumerate(sorted(workers)):
        name = f"c{i + 1}"
        phase(name, [0])
        time.sleep(a.settle_s if i == 0 else 1.0)
        F, F_end = cluster.do("stop", svc, ["docker", "stop", "-t", "30", cluster.cid(svc)])
        say(f"{svc} stopped ({F_end - F:.2f} s)")
        E, E_end = cluster.do("start", svc, ["docker", "start", cluster.cid(svc)])
        ok = watch.wait(lambda: cluster.health(svc) == "healthy" and up_in("router1", services[svc]), 90, 0.2)
        say(f"{svc} started, {'healthy' if ok else 'NOT healthy'} after {time.time() - E:.2f} s")
        f = {"phase": name, "what": f"roll {svc}", "kind": "worker", "victim": services[svc],
             "F": F, "F_end": F_end, "E": E, "E_end": E_end, "service": svc}
        faults.append(f)
        stops.append(f)
        time.sleep(a.settle_s)

    # (d) the router: SIGTERM, start again.
    phase("d", [0])
    time.sleep(a.pre_s)
    F, F_end = cluster.do("stop", "router", ["docker", "stop", "-t", "30", cluster.cid("router")])
    say(f"router stopped ({F_end - F:.2f} s)")
    E, E_end = cluster.do("start", "router", ["docker", "start", cluster.cid("router")])
    ok = watch.wait(lambda: (v := watch.last_view("router1")) and v[1] == 200 and want <= healthy_ids(v[2]), 60)
    say(f"router started, {'serving' if ok else 'NOT serving'} after {time.time() - E:.2f} s")
    faults.append({"phase": "d", "what": "restart router (SIGTERM)", "kind": "router", "victim": "router1",
                   "F": F, "F_end": F_end, "E": E, "E_end": E_end})
    time.sleep(max(0.0, E + a.post_s * 0.75 - time.time()))

    # (e) two replicas: the hit rate with one and with two, then one replica stopped.
    phase("e-one", [0])
    time.sleep(a.hit_s)
    phase("e-two", [0, 1])
    time.sleep(a.hit_s)
    phase("e", [0, 1])
    time.sleep(a.pre_s)
    F, F_end = cluster.do("stop", "router2", ["docker", "stop", "-t", "30", cluster.cid("router2")])
    say(f"router2 stopped ({F_end - F:.2f} s)")
    time.sleep(max(0.0, F + a.fault_s - time.time()))
    E, E_end = cluster.do("start", "router2", ["docker", "start", cluster.cid("router2")])
    ok = watch.wait(lambda: (v := watch.last_view("router2")) and v[1] == 200 and want <= healthy_ids(v[2]), 60)
    say(f"router2 started, {'serving' if ok else 'NOT serving'} after {time.time() - E:.2f} s")
    faults.append({"phase": "e", "what": "stop router2 of two (SIGTERM)", "kind": "router", "victim": "router2",
                   "F": F, "F_end": F_end, "E": E, "E_end": E_end})
    time.sleep(max(0.0, E + a.post_s / 2 - time.time()))

    phases.append(("end", time.time()))
    say("load stopped; waiting for the requests still open")
    left = client.end(a.timeout_s * (a.max_retries + 1) + 15)
    time.sleep(1.5)  # one more scrape of every worker
    watch.end()
    t_end = time.time()
    events.close()

    run = {"t0": t0, "t_end": t_end, "phases": phases, "faults": faults, "stops": stops,
           "unfinished": left, "routers": routers, "rate": a.rate, "tenants": a.tenants,
           "timeout_s": a.timeout_s, "max_retries": a.max_retries, "slow_s": a.slow_s}
    with open(f"{a.out}/run.json", "w") as f:
        json.dump(run, f, indent=1)
    return analyze(a.out)


class Saved:
    """What a Watch gathered, read back from its files."""

    def __init__(self, out, routers):
        self.routers = [tuple(r) for r in routers]
        self.views, self.rmetrics, self.wmetrics = defaultdict(list), defaultdict(list), defaultdict(list)
        for x in read_jsonl(f"{out}/views.jsonl"):
            self.views[x["router"]].append((x["t"], x["health"], x["workers"]))
        for x in read_jsonl(f"{out}/routers.jsonl"):
            self.rmetrics[x["router"]].append((x["t"], x["metrics"]))
        for x in read_jsonl(f"{out}/workers.jsonl"):
            self.wmetrics[x["worker"]].append((x["t"], x["metrics"]))
        for d in (self.views, self.rmetrics, self.wmetrics):
            for v in d.values():
                v.sort(key=lambda x: x[0])


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def analyze(out):
    """The report, from the files of a run (--analyze DIR runs it again on them)."""
    with open(f"{out}/run.json") as f:
        run = json.load(f)
    watch = Saved(out, run["routers"])
    records = sorted(read_jsonl(f"{out}/requests.jsonl"), key=lambda r: r["seq"])
    t0, t_end, phases, faults, stops = run["t0"], run["t_end"], run["phases"], run["faults"], run["stops"]
    left = run["unfinished"]
    windows = {name: (start, phases[i + 1][1] if phases[i + 1][0] != "end" else t_end)
               for i, (name, start) in enumerate(phases[:-1])}
    rows = [summarize_fault(f, records, watch, run["slow_s"], windows) for f in faults]
    beyond, done_total, delivered_total = served_beyond_delivered(records, watch, windows, stops)
    rc_counts = router_counts(watch, windows)
    steady = [r for r in records if r["phase"] == "steady"]
    steady_row = {"sent": len(steady), "failed": sum(not r["ok"] for r in steady),
                  "client_retried": sum(len(r["attempts"]) > 1 for r in steady),
                  "slowest_s": round(max((r["end"] - r["sent"] for r in steady), default=0.0), 3),
                  "possible_duplicates": sum(1 for r in steady for a in r["attempts"][:-1]
                                             if a.get("error") != "refused")}
    # A request is served twice only if it was sent twice: by the router (its retries) or
    # by the client (a retry after an attempt that may have reached a worker).
    possible = {"steady": steady_row["possible_duplicates"]}
    possible.update({r["fault"]: r["possible_duplicates"] for r in rows})
    # The routers' attempts that may have reached a worker before they were retried: a
    # timeout, a broken answer or a 5xx (not a refused connection, nor a worker's 503).
    reached = {w: sum(n for k, n in c.items() if k in (f'outcome{{outcome="{o}"}}' for o in ("timeout", "broken", "failed")))
               for w, c in rc_counts.items()}
    dup = {w: max(0, min(beyond[w], possible.get(w, 0) + reached.get(w, 0))) for w in beyond}
    hits = {"one replica (e-one)": hit_rate(records, "e-one"),
            "two replicas (e-two)": hit_rate(records, "e-two"),
            "steady (one replica, from cold caches)": hit_rate(records, "steady")}

    checks = [("steady: 0 failed", steady_row["failed"] == 0)]
    for r in rows:
        if r["fault"] in ("a", "b", "c1", "c2", "c3"):
            checks.append((f"{r['fault']}: 0 failed among the {r['after_detection']} sent after detection",
                           r["detect_s"] is not None and r["after_detection_failed"] == 0))
        else:
            checks.append((f"{r['fault']}: 0 failed after the client's retries ({r['sent']} sent)",
                           r["failed"] == 0))
        checks.append((f"{r['fault']}: detected and recovered",
                       r["detect_s"] is not None and r["recover_s"] is not None))
    checks.append(("every request finished", left == 0))
    ok = all(c for _, c in checks)

    tbl = table(rows, steady_row, dup, rc_counts)
    lines = [
        "# Chaos in containers",
        "",
        f"load: {run['rate']:g} req/s open loop, {run['tenants']} tenants, {len(records)} requests over "
        f"{t_end - t0:.0f} s; client timeout {run['timeout_s']:g} s, {run['max_retries']} retries "
        "(OpenAI's defaults but the timeout)",
        "",
        tbl,
        "",
        "In flight: requests whose first attempt was open at the fault or sent before detection "
        "and went to the faulted worker (router); router1's count: its in_flight on the worker at the "
        "fault + its decisions for it before detection. After detection: for a-c failed = the first "
        "attempt failed; for d-e = failed after the client's retries. Times in seconds from the fault "
        "command's start (detect) and from the start of the command ending the fault (recover).",
        "",
        f"Duplicated, whole run: the workers completed {done_total} requests, the client was "
        f"answered {delivered_total} ({done_total - delivered_total} beyond). Per fault: the "
        "requests the workers completed beyond those answered in its window (off by one at a "
        "window's edge: {}), capped by the retries that could have served a request twice "
        "(the routers' attempts that timed out, broke or got a 5xx, and the client's retries after "
        "an attempt that was not refused)."
        .format(json.dumps(beyond)),
        "",
        "## Prefix hit rate (cached / prompt tokens in the answers)",
        "",
        "| window | answers | hit rate | answers with a hit | workers per tenant |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, h in hits.items():
        lines.append(f"| {k} | {h['answers']} | {fmt(h['hit_rate'], 3)} | {h['answers_with_a_hit']} "
                     f"| {fmt(h['workers_per_tenant'])} |")
    # Each replica follows the workers on its own: what each knew in the middle of e-two.
    if "e-two" in windows:
        mid = sum(windows["e-two"]) / 2
        lines += ["", "Each router's own view in the middle of e-two (worker: KV blocks it knows from "
                  "the worker's events, age of its last load report):", ""]
        for name, _ in watch.routers:
            near = min(((abs(t - mid), ws) for t, _, ws in watch.views.get(name, []) if ws),
                       default=(None, None), key=lambda x: x[0])[1]
            if near:
                lines.append(f"- {name}: " + ", ".join(
                    f"{w.get('worker_id')}: {w.get('kv_blocks')} blocks, load {w.get('load_age_ms')} ms old"
                    for w in sorted(near, key=lambda w: w.get("worker_id") or "")))
    lines += ["", "## Targets", ""] + [f"- [{'x' if c else ' '}] {n}" for n, c in checks]
    lines += ["", "## Router outcomes per window (from /metrics)", ""]
    for w in windows:
        lines.append(f"- {w}: {json.dumps(rc_counts.get(w, {}), sort_keys=True)}")
    lines += ["", "## Detection and recovery, per router", ""]
    for r in rows:
        lines.append(f"- {r['fault']}: detect {json.dumps(r['detect'])}, recover {json.dumps(r['recover'])}, "
                     f"fault command {r['fault_command_s']} s, end command {r['end_command_s']} s")
    waits = [(r["fault"], x) for r in rows for x in r["retry_after_waits"]]
    if waits:
        lines += ["", "## Retries that waited 5 s or more on the answer's Retry-After", ""]
        for fault, x in waits:
            lines.append(f"- {fault} {x['id']} sent at {x['sent_after_fault_s']:+.2f} s from the fault: "
                         f"{x['status']} {x['error']} ({x['message']}), Retry-After {x['retry_after_s']:g} s; "
                         f"answered after {x['took_s']:.2f} s")
    failures = [(r["fault"], x) for r in rows for x in r["failures"]]
    if failures:
        lines += ["", "## Requests whose first attempt failed (times from the fault command's start)", ""]
        for fault, x in failures[:60]:
            lines.append(f"- {fault} {x['id']}: " + "; ".join(
                f"{y['router']} {y['start_s']:+.2f}..{y['end_s']:+.2f} s {y['status']} {y['error'] or 'ok'}"
                + (f" ({y['message'][:160]})" if y.get("message") else "") for y in x["attempts"]))
    lines += ["", f"RESULT: {'PASS' if ok else 'FAIL'}"]
    report = "\n".join(lines) + "\n"
    with open(f"{out}/report.md", "w") as f:
        f.write(report)
    with open(f"{out}/report.json", "w") as f:
        json.dump({"rows": rows, "steady": steady_row, "duplicated": dup, "served_beyond_answered": beyond,
                   "completed_total": done_total,
                   "answered_total": delivered_total, "router_counts": rc_counts, "hit_rates": hits,
                   "checks": checks, "windows": {k: [v[0] - t0, v[1] - t0] for k, v in windows.items()},
                   "faults": [{k: (v - t0 if k in ("F", "F_end", "E", "E_end") and v else v) for k, v in f.items()}
                              for f in faults],
                   "unfinished": left, "pass": ok}, f, indent=2)
    with open(f"{out}/timeline.txt", "w") as f:
        f.write(timeline(watch, t0, faults))
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
