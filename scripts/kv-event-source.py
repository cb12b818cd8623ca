#!/usr/bin/env python3
"""A stand-in worker for router benchmarks: answers GET /load with a fixed report and
streams GET /kv_events at a fixed rate (locus's event format), so that the router's cost of
following KV events can be measured against a static backend that answers instantly.

Each event stores 4 new blocks; once the worker "holds" 4,096 blocks, every stored event is
followed by a removed event for its 4 oldest, so the router's index stays bounded.

Usage: kv-event-source.py PORT EVENTS_PER_SECOND
"""
import json
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
RATE = float(sys.argv[2])
LOAD = {"worker_id": "static", "waiting": 0, "running": 0, "kv_blocks_used": 0,
        "kv_blocks_total": 1820, "prefix_blocks": 0, "prefix_blocks_total": 455,
        "tokens_per_second": 0.0, "generated_tokens": 0, "max_queue": 64,
        "queue_available": 64, "ts_us": 0}


def now_us():
    return int(time.time() * 1e6)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/load":
            body = json.dumps(dict(LOAD, ts_us=now_us())).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path != "/kv_events":
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        seq = 0
        held = deque()

        def send(kind, hashes, snapshot=False):
            nonlocal seq
            ev = {"seq": seq, "type": kind, "hashes": hashes, "ts_us": now_us()}
            if snapshot:
                ev.update(snapshot=True, worker_id="static", started_at_us=0)
            self.wfile.write(b"data: " + json.dumps(ev).encode() + b"\n\n")

        try:
            send("cleared", [], snapshot=True)
            send("stored", [], snapshot=True)
            self.wfile.flush()
            start = time.perf_counter()
            n = 0
            while True:
                n += 1
                seq += 1
                new = [(seq << 2) | j for j in range(4)]
                held.extend(new)
                send("stored", new)
                if len(held) > 4096:
                    seq += 1
                    send("removed", [held.popleft() for _ in range(4)])
                self.wfile.flush()
                delay = start + n / RATE - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            return


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
