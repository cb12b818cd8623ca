#!/usr/bin/env python3
"""Drives load through a compose cluster's router while one worker container is stopped
and started again, and reports what a client saw (failed requests), where each prompt
prefix went before, during and after (which prefixes moved), and how long the router took
to notice each change (from its admin API). Run by scripts/compose-test.sh; stdlib only.

A prefix's worker is the `meta_info.worker_id` of its answers. While all workers are up
each prefix must stay on one worker; while one is down only that worker's prefixes may
move; once it is back every prefix must be where it was before.
"""

import argparse
import datetime
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict


def post(url, body, timeout):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def get(url, token, timeout=2):
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def prompt(key):
    # Distinct from the first characters on, so that every routing key differs.
    return f"Tenant {key:03d} system prompt: you answer questions about order {key * 7919}. Question: status?"


class Load:
    """Closed-loop clients sending the keys round-robin; every answer is recorded."""

    def __init__(self, router, keys, concurrency):
        self.router, self.keys, self.concurrency = router, keys, concurrency
        self.records = []  # (sent, done, key, worker or None, error or None)
        self.lock = threading.Lock()
        self.next = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(concurrency)]

    def client(self):
        while not self.stop.is_set():
            with self.lock:
                key = self.next % self.keys
                self.next += 1
            sent = time.time()
            worker, error = None, None
            try:
                status, body = post(
                    f"{self.router}/generate",
                    {"text": prompt(key), "sampling_params": {"max_new_tokens": 2}},
                    timeout=60,
                )
                worker = body.get("meta_info", {}).get("worker_id")
                if status != 200 or not worker:
                    error = f"status {status}"
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}: {e.read()[:200]!r}"
            except Exception as e:  # noqa: BLE001 - every failure a client sees counts
                error = repr(e)
            with self.lock:
                self.records.append((sent, time.time(), key, worker, error))

    def start(self):
        for t in self.threads:
            t.start()

    def end(self):
        self.stop.set()
        for t in self.threads:
            t.join()

    def mapping(self, since, until):
        """Each key's workers among answers sent in [since, until)."""
        seen = defaultdict(Counter)
        with self.lock:
            for sent, _, key, worker, error in self.records:
                if since <= sent < until and error is None:
                    seen[key][worker] += 1
        return seen


class Watcher:
    """Polls the router's admin API and notes when the victim's state changes."""

    def __init__(self, admin, token, victim):
        self.admin, self.token, self.victim = admin, token, victim
        self.events = []  # (time, state)
        self.state = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def victim_state(self):
        workers = get(f"{self.admin}/admin/workers", self.token)["workers"]
        mine = [w for w in workers if w.get("worker_id") == self.victim]
        if not mine:
            return "absent"
        return "up" if any(w["healthy"] for w in mine) else "down"

    def run(self):
        while not self.stop.is_set():
            try:
                state = self.victim_state()
            except Exception:  # noqa: BLE001 - the admin API may not answer yet
                state = None
            if state is not None and state != self.state:
                self.events.append((time.time(), state))
                self.state = state
            time.sleep(0.02)

    def wait_for(self, states, since, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for t, s in self.events:
                if t >= since and s in states:
                    return t
            time.sleep(0.02)
        raise SystemExit(f"router did not report {self.victim} as {states} within {timeout}s")


def log_times(compose, service, needle):
    """When the service's container logged lines containing `needle` (Docker's own
    timestamps, on this machine's clock), as Unix seconds."""
    out = subprocess.run(compose + ["logs", "-t", "--no-color", service],
                         capture_output=True, text=True).stdout
    times = []
    for line in out.splitlines():
        if needle not in line:
            continue
        stamp = next((w for w in line.split() if w[:4].isdigit() and "T" in w and w.endswith("Z")), None)
        if stamp:
            day, frac = stamp[:-1].split(".") if "." in stamp else (stamp[:-1], "0")
            t = datetime.datetime.strptime(day, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
            times.append(t.timestamp() + float("0." + frac))
    return times


def owner(counter):
    return counter.most_common(1)[0][0] if counter else None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--router", default="http://127.0.0.1:8000")
    ap.add_argument("--admin", default="http://127.0.0.1:8100")
    ap.add_argument("--token", required=True)
    ap.add_argument("--compose", required=True, help="the compose command, e.g. 'docker-compose -p x'")
    ap.add_argument("--victim-service", default="worker2")
    ap.add_argument("--victim-id", default="worker2:8001")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--keys", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--phase-s", type=float, default=8.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    compose = a.compose.split()

    # Every worker up and identified before the run starts.
    deadline = time.time() + 120
    while True:
        try:
            ws = get(f"{a.admin}/admin/workers", a.token)["workers"]
            if sum(1 for w in ws if w["healthy"] and w.get("worker_id")) >= a.workers:
                break
        except Exception:  # noqa: BLE001
            pass
        if time.time() > deadline:
            raise SystemExit("the router never listed every worker as up")
        time.sleep(0.2)

    watcher = Watcher(a.admin, a.token, a.victim_id)
    watcher.thread.start()
    load = Load(a.router, a.keys, a.concurrency)
    load.start()
    t0 = time.time()
    time.sleep(a.phase_s)
    before = load.mapping(t0, time.time())

    t_stop = time.time()
    subprocess.run(compose + ["stop", a.victim_service], check=True, capture_output=True)
    t_stopped = time.time()
    t_noticed_down = watcher.wait_for({"down", "absent"}, t_stop, 60)
    t_removed = watcher.wait_for({"absent"}, t_stop, 60)
    down_from = max(t_stopped, t_noticed_down)
    time.sleep(a.phase_s)
    during = load.mapping(down_from, time.time())

    t_start = time.time()
    subprocess.run(compose + ["start", a.victim_service], check=True, capture_output=True)
    t_started = time.time()
    t_noticed_up = watcher.wait_for({"up"}, t_start, 120)
    time.sleep(a.phase_s)
    after = load.mapping(t_noticed_up, time.time())
    load.end()
    watcher.stop.set()

    # The worker's own view: when it got SIGTERM, and when it listened again.
    drained = [t for t in log_times(compose, a.victim_service, "draining") if t >= t_stop]
    listening = [t for t in log_times(compose, a.victim_service, "listening on") if t >= t_start]
    failed = [r for r in load.records if r[4] is not None]
    keys = range(a.keys)
    own_before = {k: owner(before[k]) for k in keys}
    split = [k for k in keys if len(before[k]) > 1]
    victims = [k for k in keys if own_before[k] == a.victim_id]
    own_during = {k: owner(during[k]) for k in keys}
    own_after = {k: owner(after[k]) for k in keys}
    moved_during = [k for k in keys if own_during[k] != own_before[k]]
    moved_other = [k for k in moved_during if own_before[k] != a.victim_id]
    on_victim_during = [k for k in keys if a.victim_id in during[k]]
    moved_after = [k for k in keys if own_after[k] != own_before[k]]
    report = {
        "requests": len(load.records),
        "failed": len(failed),
        "failed_examples": [r[4] for r in failed[:5]],
        "keys": a.keys,
        "workers_before": dict(Counter(own_before.values())),
        "keys_split_before": len(split),
        "victim_share_before": len(victims) / a.keys,
        "moved_share_while_down": len(moved_during) / a.keys,
        "moved_not_victims_while_down": len(moved_other),
        "answered_by_victim_while_down": len(on_victim_during),
        "moved_share_after_return": len(moved_after) / a.keys,
        "stop_command_s": t_stopped - t_stop,
        "noticed_down_s": t_noticed_down - t_stop,
        "removed_by_discovery_s": t_removed - t_stop,
        "start_command_s": t_started - t_start,
        "noticed_up_s": t_noticed_up - t_start,
        "sigterm_to_noticed_down_s": t_noticed_down - drained[0] if drained else None,
        "sigterm_to_removed_s": t_removed - drained[0] if drained else None,
        "listening_to_noticed_up_s": t_noticed_up - listening[0] if listening else None,
        "victim_events": [(round(t - t0, 3), s) for t, s in watcher.events],
    }
    with open(f"{a.out}/worker-loss.json", "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    ok = (
        report["failed"] == 0
        and report["keys_split_before"] == 0
        and report["moved_not_victims_while_down"] == 0
        and report["answered_by_victim_while_down"] == 0
        and report["moved_share_while_down"] == report["victim_share_before"]
        and report["moved_share_after_return"] == 0
        and len(victims) > 0
    )
    print("compose test:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
