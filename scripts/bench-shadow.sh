#!/usr/bin/env bash
# The router's cost of a shadow policy: requests/s at 32 connections through `locus router`
# to a static backend that answers instantly (nginx), with and without a shadow attached
# (`locus swap --shadow`), alternating in each round (off then on, then on then off) so that
# the machine's drift hits both alike. Prompts: ~1 KB, 64 system prompts with a counter
# after them, so that decisions differ and the tokenizer's chunk cache works as with real
# clients. Two setups:
#   - live prefix-aware (0.2.0, tokenizing anyway), shadow least-loaded;
#   - live hash (0.1.0, no tokenizing), shadow prefix-aware: a shadow makes the router
#     tokenize, so this one also pays for the block hashes.
# After each shadowed run the trial's report gives how many decisions the shadow compared
# and how many it skipped (queue full).
#
# Needs: nginx and wrk (Debian: apt-get install nginx-light wrk), python3, a release build
# (cargo build --release -p locus). Usage: scripts/bench-shadow.sh [seconds per run] [rounds]
# SETUPS="live:shadow ..." picks other pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-3}
LOCUS=${LOCUS:-target/release/locus}
BACKEND_PORT=18080
ROUTER_PORT=18000
ADMIN=http://127.0.0.1:18100
TOKEN=bench-shadow
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; [ -f $WORK/nginx.pid ] && kill $(cat $WORK/nginx.pid) 2>/dev/null || true; rm -rf $WORK' EXIT

for tool in nginx wrk python3 "$LOCUS"; do
  command -v "$tool" >/dev/null || [ -x "$tool" ] || { echo "missing $tool (see the header of $0)" >&2; exit 1; }
done

source scripts/static-backend.sh
static_backend "$WORK" $BACKEND_PORT
cat > "$WORK/post.lua" <<'LUA'
local system = {}
for g = 0, 63 do
  system[g] = string.rep("System prompt " .. g .. ": you are a careful assistant for a cache-aware platform. ", 14)
end
local counter = 0
request = function()
  counter = counter + 1
  local body = '{"text": "' .. system[counter % 64] .. 'Question ' .. counter .. '?", "sampling_params": {"max_new_tokens": 16}}'
  return wrk.format("POST", "/generate", {["Content-Type"] = "application/json"}, body)
end
LUA

# cpu_ticks PID -> the process's user + system CPU so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# rps -> "requests/s router-CPU-µs-per-request" for one run through the router.
rps() {
  local t0 t1 out
  t0=$(cpu_ticks "$ROUTER_PID")
  out=$(wrk -t2 -c32 -d"${DUR}s" -s "$WORK/post.lua" "http://127.0.0.1:$ROUTER_PORT/generate")
  t1=$(cpu_ticks "$ROUTER_PID")
  echo "$out" | awk -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" '
    / requests in / {n=$1} /Requests\/sec/ {r=$2} END {printf "%s %.1f\n", r, ticks / hz * 1e6 / n}'
}

start_router() {
  "$LOCUS" --no-policy-cache router --port $ROUTER_PORT --admin-addr 127.0.0.1:18100 --admin-token $TOKEN \
    --workers http://127.0.0.1:$BACKEND_PORT --policy "$1" >"$WORK/router.log" 2>&1 &
  ROUTER_PID=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:$ROUTER_PORT/health >/dev/null && return; sleep 0.1; done
  echo "router did not start" >&2; cat "$WORK/router.log" >&2; exit 1
}

shadow_on() { "$LOCUS" swap --router $ADMIN --admin-token $TOKEN --actor bench --shadow "$1" >/dev/null; }
shadow_off() {
  curl -sf -H "authorization: Bearer $TOKEN" $ADMIN/admin/policy/trial |
    python3 -c 'import json,sys; t=json.load(sys.stdin)["trial"]; print(t["compared"], t["skipped"])' >"$WORK/counts"
  "$LOCUS" swap --router $ADMIN --admin-token $TOKEN --actor bench --abort >/dev/null
}

echo "shadow benchmark: ${DUR}s per run, $ROUNDS rounds, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ), git $(git rev-parse --short HEAD)"
echo
echo "| live | shadow | round | req/s without | req/s with shadow | ratio | router CPU µs/req without | with | ratio | shadow compared | skipped |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for setup in ${SETUPS:-prefix-aware:least-loaded hash:prefix-aware}; do
  live=${setup%%:*} shadow=${setup#*:}
  start_router "$live"
  ratios=(); cpus=()
  for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      read -r off offcpu < <(rps); shadow_on "$shadow"; read -r on oncpu < <(rps); shadow_off
    else
      shadow_on "$shadow"; read -r on oncpu < <(rps); shadow_off; read -r off offcpu < <(rps)
    fi
    read -r compared skipped <"$WORK/counts"
    ratio=$(python3 -c "print(f'{$on / $off:.3f}')")
    cpu=$(python3 -c "print(f'{$oncpu / $offcpu:.3f}')")
    ratios+=("$ratio"); cpus+=("$cpu")
    echo "| $live | $shadow | $round | $off | $on | $ratio | $offcpu | $oncpu | $cpu | $compared | $skipped |"
  done
  kill $ROUTER_PID; wait $ROUTER_PID 2>/dev/null || true
  median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  echo "| $live | $shadow | median | | | $(median "${ratios[@]}") | | | $(median "${cpus[@]}") | | |"
done
