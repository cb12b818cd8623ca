#!/usr/bin/env bash
# The router's CPU cost per request as instructions (callgrind), which, unlike req/s on a
# shared machine, repeats from run to run: `locus router --policy hash` in front of a
# static nginx backend, 4 connections of wrk for N seconds after a warm-up, counters
# zeroed before and dumped after, total instructions / requests served.
#
# Needs: nginx, wrk, valgrind (Debian: apt-get install nginx-light wrk valgrind) and a
# release build. Usage: scripts/router-instructions.sh [seconds] [locus binary...]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}; shift || true
BINS=("$@"); [ ${#BINS[@]} -eq 0 ] && BINS=(target/release/locus)
W=$(mktemp -d)
trap '[ -f $W/nginx.pid ] && kill $(cat $W/nginx.pid) 2>/dev/null || true; rm -rf $W' EXIT
source scripts/static-backend.sh
static_backend "$W" 18080
echo "| binary | requests | instructions per request |"
echo "|---|---:|---:|"
for bin in "${BINS[@]}"; do
  valgrind --tool=callgrind --callgrind-out-file="$W/cg.%p" "$bin" router --port 18000 \
    --admin-addr 127.0.0.1:18100 --workers http://127.0.0.1:18080 --policy hash >"$W/router.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf http://127.0.0.1:18000/health >/dev/null && break; sleep 0.2; done
  wrk -t1 -c4 -d3s -s "$W/post.lua" http://127.0.0.1:18000/generate >/dev/null
  callgrind_control -z $pid >/dev/null 2>&1
  n=$(wrk -t1 -c4 -d"${DUR}s" -s "$W/post.lua" http://127.0.0.1:18000/generate | awk '/requests in/ {print $1}')
  callgrind_control -d $pid >/dev/null 2>&1
  sleep 1
  kill $pid; wait $pid 2>/dev/null || true
  ir=$(grep -hE "^(summary|totals):" "$W"/cg.$pid.* | head -1 | awk '{print $2}')
  echo "| $bin | $n | $((ir / n)) |"
  rm -f "$W"/cg.$pid*
done
