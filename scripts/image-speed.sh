#!/usr/bin/env bash
# Tokens per second of the image (static musl binary, in a container) against the native
# binary (glibc, target/release/locus) and the musl binary run natively, side by side:
# one worker of each, the same compute threads, the same open load, rounds alternating
# A B C so that drift on a shared machine hits all alike. Needs locus:latest
# (scripts/image.sh) and `cargo build --release -p locus`.
#
#   scripts/image-speed.sh [ROUNDS] [SECONDS_PER_PASS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-20} conc=${3:-4}
threads=${THREADS:-2}
native=target/release/locus
musl=target/x86_64-unknown-linux-musl/release/locus
name=locus-speed-$$
pids=()
cleanup() {
  docker rm -f -v "$name" >/dev/null 2>&1 || true
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
docker run -d --rm --name "$name" -e RAYON_NUM_THREADS="$threads" -p 127.0.0.1:18201:8001 \
  locus:latest worker --host 0.0.0.0 --port 8001 >/dev/null
RAYON_NUM_THREADS=$threads "$native" worker --port 18202 --worker-id native >/dev/null 2>&1 &
pids+=($!)
RAYON_NUM_THREADS=$threads "$musl" worker --port 18203 --worker-id musl >/dev/null 2>&1 &
pids+=($!)
python3 - "$rounds" "$secs" "$conc" <<'PY'
import json, sys, threading, time, urllib.request
rounds, secs, conc = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
targets = {"image (musl, container)": 18201, "native (glibc)": 18202, "musl (native)": 18203}
def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())
for port in targets.values():
    for _ in range(600):
        try:
            post(port, {"text": "warm", "sampling_params": {"max_new_tokens": 1}}); break
        except Exception:
            time.sleep(0.1)
n = [0]
def one_pass(port):
    tokens, stop = [0], time.time() + secs
    lock = threading.Lock()
    def client(c):
        while time.time() < stop:
            n[0] += 1
            # Unique prompts: no response-cache hit, real prefill and decode.
            a = post(port, {"text": f"Request {n[0]} from client {c}: tell me a story about the sea",
                            "sampling_params": {"max_new_tokens": 32, "ignore_eos": True}})
            with lock:
                tokens[0] += a["meta_info"]["completion_tokens"]
    t0 = time.time()
    ts = [threading.Thread(target=client, args=(c,)) for c in range(conc)]
    [t.start() for t in ts]; [t.join() for t in ts]
    return tokens[0] / (time.time() - t0)
rates = {k: [] for k in targets}
names = list(targets)
for r in range(rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for k in order:
        rates[k].append(one_pass(targets[k]))
        print(f"round {r + 1} {k}: {rates[k][-1]:.1f} tok/s", flush=True)
base = sorted(rates["native (glibc)"])[len(rates["native (glibc)"]) // 2]
print(f"\n| binary | tok/s (median of {rounds}) | vs native |\n|---|---|---|")
for k, v in rates.items():
    m = sorted(v)[len(v) // 2]
    print(f"| {k} | {m:.1f} | {m / base:.2f}x |")
PY
