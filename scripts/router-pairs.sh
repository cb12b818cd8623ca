#!/usr/bin/env bash
# Two router binaries compared on a shared, noisy machine: N interleaved pairs of short
# runs (baseline, then candidate) of `locus router --policy hash` in front of a static
# nginx backend, wrk at 32 connections; prints each pair and the median ratio of req/s
# and of the router's CPU time per request (from /proc), which single runs cannot
# resolve here (they swing by +-20%).
#
# Needs: nginx, wrk, bc (Debian: apt-get install nginx-light wrk bc).
# Usage: scripts/router-pairs.sh BASELINE CANDIDATE [pairs=12] [seconds=5]
set -euo pipefail
BASE=$1; CAND=$2; PAIRS=${3:-12}; DUR=${4:-5}
W=$(mktemp -d)
trap '[ -f $W/nginx.pid ] && kill $(cat $W/nginx.pid) 2>/dev/null || true; rm -rf $W' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/static-backend.sh"
static_backend "$W" 18080
# run BIN -> "req/s cpu-us-per-request"
run() {
  "$1" router --port 18000 --admin-addr 127.0.0.1:18100 --workers http://127.0.0.1:18080 \
    --policy hash >"$W/router.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18000/health >/dev/null && break; sleep 0.1; done
  local t0 t1 out
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$(wrk -t2 -c32 -d"${DUR}s" -s "$W/post.lua" http://127.0.0.1:18000/generate)
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  kill $pid; wait $pid 2>/dev/null || true
  local rps n
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$rps $(echo "($t1 - $t0) * 1000000 / $(getconf CLK_TCK) / $n" | bc -l)"
}
echo "| pair | baseline req/s | candidate req/s | ratio | baseline CPU us/req | candidate CPU us/req |"
echo "|---:|---:|---:|---:|---:|---:|"
ratios=(); cpus=()
for i in $(seq "$PAIRS"); do
  read -r br bc < <(run "$BASE")
  read -r cr cc < <(run "$CAND")
  r=$(echo "$cr / $br" | bc -l); c=$(echo "$cc / $bc" | bc -l)
  ratios+=("$r"); cpus+=("$c")
  printf "| %d | %.0f | %.0f | %.3f | %.1f | %.1f |\n" "$i" "$br" "$cr" "$r" "$bc" "$cc"
done
median() { printf "%s\n" "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf "\nmedian req/s ratio (candidate / baseline): %.3f; median CPU-per-request ratio: %.3f\n" \
  "$(median "${ratios[@]}")" "$(median "${cpus[@]}")"
