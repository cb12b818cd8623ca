#!/usr/bin/env bash
# The router's cold start: the time from exec of
#   locus router --port 18001 --admin-addr 127.0.0.1:18101 \
#     --workers http://127.0.0.1:18080 --policy hash
# until `GET /health` answers 200, polled every millisecond (a fresh connection per try),
# for each binary given; the median, min and max of RUNS runs, the router killed (SIGTERM,
# SIGKILL after 5 s) between runs. /health is 200 once the listener is up and one worker
# is healthy: workers start healthy, so the static nginx backend of
# scripts/static-backend.sh on 18080 is all it needs (the router asks its /load once at
# start; nginx answers at once and the router goes on without a load report).
#
# Policy compile cache: disabled by default (COLD_START_CACHE=off): every run passes
# --no-policy-cache, so each start compiles the `hash` component afresh, as a first start
# on a new host does. COLD_START_CACHE=warm instead gives each binary a private cache
# directory (--policy-cache-dir, mode 700), filled by one untimed run first, so the timed
# runs load the compiled policy from disk, as a restart does. Either way each run gets a
# fresh empty HOME and XDG_CACHE_HOME (temporary, removed after), so nothing depends on
# or touches the user's own ~/.cache/locus. Works with any build of `locus` whose router
# takes these flags, e.g. one from `cargo build --release --no-default-features`.
#
# Needs: nginx (Debian: apt-get install nginx-light), python3, curl.
# Usage: scripts/cold-start.sh [runs] [locus binary...]   (runs: 10, binary: the repo's
# target/release/locus by default). Prints a markdown table. Uses ports 18080 (nginx),
# 18001 and 18101 (the router), which must be free.
set -euo pipefail
RUNS=10
if [[ ${1:-} =~ ^[0-9]+$ ]]; then RUNS=$1; shift; fi
BINS=()
for b in "$@"; do BINS+=("$(realpath -- "$b")"); done   # as given, from the caller's directory
cd "$(dirname "$0")/.."
[ ${#BINS[@]} -eq 0 ] && BINS=("$PWD/target/release/locus")
MODE=${COLD_START_CACHE:-off}
case $MODE in off|warm) ;; *) echo "COLD_START_CACHE must be off or warm" >&2; exit 2 ;; esac
W=$(mktemp -d)
trap '[ -f $W/nginx.pid ] && kill $(cat $W/nginx.pid) 2>/dev/null || true; rm -rf $W' EXIT
source scripts/static-backend.sh
static_backend "$W" 18080
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/health >/dev/null && break; sleep 0.05; done

python3 - "$W" "$RUNS" "$MODE" "${BINS[@]}" <<'PY'
import os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

work, runs, mode, bins = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
PORT, ADMIN = 18001, 18101

def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0

REQ = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"

def health_status():
    """The status of GET /health, or None if nothing answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=1) as s:
            s.sendall(REQ)
            head = b""
            while b"\r\n" not in head:
                chunk = s.recv(256)
                if not chunk:
                    break
                head += chunk
            parts = head.split(b" ", 2)
            return int(parts[1]) if len(parts) > 1 else None
    except OSError:
        return None

def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill(); p.wait()

def one_run(binary, cache_args, log):
    for port in (PORT, ADMIN):
        if port_open(port):
            sys.exit(f"port {port} is already in use; stop what listens there first")
    home = tempfile.mkdtemp(dir=work, prefix="home.")
    env = dict(os.environ, HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"))
    env.pop("LOCUS_POLICY_CACHE_DIR", None)
    cmd = [binary, *cache_args, "router", "--port", str(PORT), "--admin-addr",
           f"127.0.0.1:{ADMIN}", "--workers", "http://127.0.0.1:18080", "--policy", "hash"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    try:
        deadline = t0 + 120
        while True:
            if health_status() == 200:
                ms = (time.perf_counter() - t0) * 1000
                break
            if p.poll() is not None:
                sys.exit(f"{binary} exited with {p.returncode} before /health answered 200 "
                         f"(log: see below)\n" + open(log.name).read()[-2000:])
            if time.perf_counter() > deadline:
                sys.exit(f"{binary}: /health not 200 within 120 s")
            time.sleep(0.001)
    finally:
        stop(p)
        shutil.rmtree(home, ignore_errors=True)
    return ms

print(f"Router cold start, exec to first `GET /health` 200, {runs} runs; policy cache: "
      + ("off (--no-policy-cache)" if mode == "off" else "warm (private --policy-cache-dir, one untimed run first)")
      + "; fresh HOME per run.\n")
print("| binary | size MiB | median ms | min ms | max ms |")
print("|---|---:|---:|---:|---:|")
for b in bins:
    binary = os.path.abspath(b)
    with open(os.path.join(work, "router.log"), "w") as log:
        if mode == "off":
            cache_args = ["--no-policy-cache"]
        else:
            cache = tempfile.mkdtemp(dir=work, prefix="cache.")
            os.chmod(cache, 0o700)
            cache_args = ["--policy-cache-dir", cache]
            one_run(binary, cache_args, log)
        times = [one_run(binary, cache_args, log) for _ in range(runs)]
    size = os.path.getsize(binary) / (1 << 20)
    print(f"| {b} | {size:.1f} | {statistics.median(times):.1f} | {min(times):.1f} | {max(times):.1f} |")
PY
