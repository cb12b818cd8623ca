#!/usr/bin/env bash
# A policy's first load in a new process (a start, or a swap to a component the process
# has not seen) with and without the compiled-policy cache on disk, side by side in
# alternating rounds.
#
# - start: `locus policy inspect NAME` in a fresh process: "compiled" with an empty cache
#   directory, "from the disk cache" with the one the previous run filled;
# - swap: a fresh `locus router` swapped to NAME through `PUT /admin/policy`, its answer's
#   `load_us` and `code`, with an empty cache and with a filled one.
#
#   scripts/bench-policy-start.sh [ROUNDS] [POLICY]     (default 7, prefix-aware)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7} name=${2:-prefix-aware}
locus=${LOCUS:-target/release/locus}
work=$(mktemp -d)
pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

load_ms() { sed -n 's/^load: *\([0-9.]*\) ms.*/\1/p'; }
swap_once() { # DIR -> "load_ms code"
  local dir=$1 port
  "$locus" router --workers http://127.0.0.1:9 --port 0 --admin-addr 127.0.0.1:0 \
    --admin-token t --policy-cache-dir "$dir" --policy random >"$work/router.out" 2>/dev/null &
  pid=$!
  for _ in $(seq 1 100); do grep -q "admin http" "$work/router.out" 2>/dev/null && break; sleep 0.05; done
  port=$(sed -n 's/.*admin http:\/\/[0-9.]*:\([0-9]*\)).*/\1/p' "$work/router.out")
  curl -s -X PUT -H 'authorization: Bearer t' "http://127.0.0.1:$port/admin/policy?name=$name" |
    python3 -c 'import json,sys; p=json.load(sys.stdin)["policy"]; print(p["load_us"]/1000, p["code"])'
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

echo "round,case,load_ms,code"
for r in $(seq 1 "$rounds"); do
  cold=$work/cold-$r warm=$work/warm
  mkdir -p -m 700 "$cold"
  [[ -d "$warm" ]] || { mkdir -m 700 "$warm"; "$locus" --policy-cache-dir "$warm" policy inspect "$name" >/dev/null; }
  echo "$r,start-compiled,$("$locus" --policy-cache-dir "$cold" policy inspect "$name" | load_ms),compiled"
  echo "$r,start-cached,$("$locus" --policy-cache-dir "$warm" policy inspect "$name" | load_ms),disk"
  rm -rf "$cold"; mkdir -m 700 "$cold"
  read -r ms code < <(swap_once "$cold"); echo "$r,swap-compiled,$ms,$code"
  read -r ms code < <(swap_once "$warm"); echo "$r,swap-cached,$ms,$code"
done
