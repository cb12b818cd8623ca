#!/usr/bin/env bash
# The cost of the router's signals: requests/s at 32 connections through `locus router` to a
# static backend that answers instantly (nginx), with ~1 KB prompts, for
#   - a 0.1.0 policy (`hash`): no tokenizing;
#   - a 0.2.0 policy (the `probe` test guest) with tokenizing and KV events off;
#   - the same with the prompt tokenized into block hashes (--route-tokens 1024), with one
#     prompt (as when clients share a system prompt) and with no two prompts alike;
#   - the same with KV events flowing from the backend at a set rate (scripts/kv-event-source.py
#     behind nginx's /kv_events and /load), and, to tell the router's cost from the event
#     source's own CPU on a small machine, with the source running but not followed.
# Each router run is followed by the backend alone again, to show the machine's drift.
#
# Needs: nginx and wrk (Debian: apt-get install nginx-light wrk), a release build
# (cargo build --release -p locus; the probe guest is built with it).
# Usage: scripts/bench-signals.sh [seconds per run] [stored events per second]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
RATE=${2:-1000}
LOCUS=${LOCUS:-target/release/locus}
BACKEND_PORT=18080
SIGNALS_PORT=18081
ROUTER_PORT=18000
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f $WORK/nginx.pid ] && kill $(cat $WORK/nginx.pid) 2>/dev/null || true; rm -rf $WORK' EXIT

for tool in nginx wrk python3 "$LOCUS"; do
  command -v "$tool" >/dev/null || [ -x "$tool" ] || { echo "missing $tool (see the header of $0)" >&2; exit 1; }
done
PROBE=$(ls -t target/release/build/locus-*/out/guests/wasm32-wasip2/guest/locus_test_guest_probe.wasm | head -1)

source scripts/static-backend.sh
static_backend "$WORK" $BACKEND_PORT $SIGNALS_PORT
# A ~1 KB prompt: a system prompt and a question, as a chat client would send.
PROMPT=$(python3 -c 'print(("You are a careful assistant for a cache-aware inference platform. " * 15)[:1000] + " What is routing?")')
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"text": "$PROMPT", "sampling_params": {"max_new_tokens": 16}}'
LUA

# The same size, but no two prompts alike anywhere (a counter every ~60 bytes), so that no
# tokenized chunk is ever reused: the router's worst case.
cat > "$WORK/unique.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local tag = tostring(math.random(1, 1e9)) .. "-" .. n
  local parts = {}
  for i = 1, 16 do parts[i] = "careful assistant " .. tag .. " for routing " .. i .. "." end
  local body = '{"text": "' .. table.concat(parts, " ") .. '", "sampling_params": {"max_new_tokens": 16}}'
  return wrk.format(nil, nil, nil, body)
end
LUA
SCRIPT=post.lua
rps() { wrk -t2 -c32 -d"${DUR}s" -s "$WORK/$SCRIPT" "$1" | awk '/Requests\/sec/ {print $2}'; }
metric() { curl -s http://127.0.0.1:$ROUTER_PORT/metrics | awk -v m="$1" '$1 ~ "^"m {s+=$2} END {print s+0}'; }

start_router() {
  "$LOCUS" router --port $ROUTER_PORT --admin-addr 127.0.0.1:18100 \
    --workers http://127.0.0.1:$BACKEND_PORT "$@" >"$WORK/router.log" 2>&1 &
  ROUTER_PID=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:$ROUTER_PORT/health >/dev/null && return; sleep 0.1; done
  echo "router did not start" >&2; cat "$WORK/router.log" >&2; exit 1
}

echo "signals benchmark: ${DUR}s per run, ~1 KB prompts ($(echo -n "$PROMPT" | wc -c) bytes), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
echo
echo "| setup | req/s (32 conn) | backend alone right after | KV events applied/s |"
echo "|---|---:|---:|---:|"
B=http://127.0.0.1:$BACKEND_PORT/generate
echo "| nginx static backend alone | $(rps $B) | | |"
run() {
  local label=$1 events=$2; shift 2
  [ "$events" = on ] && { python3 scripts/kv-event-source.py $SIGNALS_PORT "$RATE" & SRC=$!; sleep 0.3; }
  start_router "$@"
  sleep 1
  local e0; e0=$(metric locus_router_kv_events_total)
  local t0; t0=$(date +%s.%N)
  local r; r=$(rps http://127.0.0.1:$ROUTER_PORT/generate)
  local e1; e1=$(metric locus_router_kv_events_total)
  local t1; t1=$(date +%s.%N)
  kill $ROUTER_PID; wait $ROUTER_PID 2>/dev/null || true
  [ "$events" = on ] && { kill $SRC; wait $SRC 2>/dev/null || true; }
  printf "| %s | %s | %s | %.0f |\n" "$label" "$r" "$(SCRIPT=post.lua rps $B)" "$(echo "($e1 - $e0) / ($t1 - $t0)" | bc -l)"
}
run "0.1.0 hash (no tokenizing)" off --policy hash --no-kv-events
run "0.2.0 probe, no tokenizing, no KV events" off --policy "$PROBE" --route-tokens 0 --no-kv-events
run "0.2.0 probe, tokenizing 1 KB prompts" off --policy "$PROBE" --no-kv-events
SCRIPT=unique.lua run "0.2.0 probe, tokenizing 1 KB prompts, no two alike" off --policy "$PROBE" --no-kv-events
SCRIPT=unique.lua run "0.1.0 hash, prompts no two alike" off --policy hash --no-kv-events
run "0.2.0 probe, tokenizing, event source running but not followed" on --policy "$PROBE" --no-kv-events
run "0.2.0 probe, tokenizing + KV events at ${RATE} stored/s" on --policy "$PROBE"
run "0.1.0 hash (no tokenizing), again" off --policy hash --no-kv-events
