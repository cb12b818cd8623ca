#!/usr/bin/env bash
# The router's own cost: requests/s at 32 connections and added latency at 1 connection,
# through `locus router` to a static backend that answers instantly (nginx), beside the
# backend alone, for the wasm `hash` policy and for the native fallback, in one run.
#
# Needs: nginx and wrk (Debian: apt-get install nginx-light wrk), a release build
# (cargo build --release -p locus). Usage: scripts/bench-router.sh [seconds per run]
# With LOCUS_BASELINE=path/to/another/locus, that binary is measured too, each policy
# right before the binary under test, so that a change is compared side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
LOCUS=${LOCUS:-target/release/locus}
BACKEND_PORT=18080
ROUTER_PORT=18000
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f $WORK/nginx.pid ] && kill $(cat $WORK/nginx.pid) 2>/dev/null || true; rm -rf $WORK' EXIT

for tool in nginx wrk "$LOCUS"; do
  command -v "$tool" >/dev/null || [ -x "$tool" ] || { echo "missing $tool (see the header of $0)" >&2; exit 1; }
done

source scripts/static-backend.sh
static_backend "$WORK" $BACKEND_PORT

# rps URL CONNECTIONS -> requests/s
rps() { wrk -t2 -c"$2" -d"${DUR}s" -s "$WORK/post.lua" "$1" | awk '/Requests\/sec/ {print $2}'; }
# lat URL -> "p50 p99" in ms at one connection
lat() {
  wrk -t1 -c1 -d"${DUR}s" --latency -s "$WORK/post.lua" "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +50%/ {p50=ms($2)} /^ +99%/ {p99=ms($2)} END {printf "%.3f %.3f\n", p50, p99}'
}

start_router() {
  "${BIN:-$LOCUS}" router --port $ROUTER_PORT --admin-addr 127.0.0.1:18100 \
    --workers http://127.0.0.1:$BACKEND_PORT --policy "$1" >"$WORK/router.log" 2>&1 &
  ROUTER_PID=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:$ROUTER_PORT/health >/dev/null && return; sleep 0.1; done
  echo "router did not start" >&2; cat "$WORK/router.log" >&2; exit 1
}

echo "router benchmark: ${DUR}s per run, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo
echo "| setup | req/s (32 conn) | p50 ms (1 conn) | p99 ms (1 conn) | added p50 ms | added p99 ms |"
echo "|---|---:|---:|---:|---:|---:|"
B=http://127.0.0.1:$BACKEND_PORT/generate
read -r b50 b99 < <(lat $B)
brps=$(rps $B 32)
echo "| nginx static backend alone | $brps | $b50 | $b99 | | |"
BINS=("$LOCUS"); [ -n "${LOCUS_BASELINE:-}" ] && BINS=("$LOCUS_BASELINE" "$LOCUS")
for policy in hash native; do
  for BIN in "${BINS[@]}"; do
    start_router $policy
    R=http://127.0.0.1:$ROUTER_PORT/generate
    r=$(rps $R 32)
    read -r r50 r99 < <(lat $R)
    kill $ROUTER_PID; wait $ROUTER_PID 2>/dev/null || true
    label="locus router, policy $policy"; [ $policy = hash ] && label="$label (wasm)"; [ $policy = native ] && label="$label (no wasm)"
    [ ${#BINS[@]} -gt 1 ] && label="$label, $BIN"
    printf "| %s | %s | %s | %s | %.3f | %.3f |\n" "$label" "$r" "$r50" "$r99" "$(echo "$r50 - $b50" | bc -l)" "$(echo "$r99 - $b99" | bc -l)"
    # The backend again, between router runs, to show the machine's drift.
    read -r b50 b99 < <(lat $B)
  done
done
echo "| nginx static backend alone, again | $(rps $B 32) | $b50 | $b99 | | |"
