#!/usr/bin/env bash
# locus's router beside SGLang's (sglang-router, pinned in scripts/peer-routers.sh) in front
# of the same 3 `locus worker` processes (one compute thread each): `locus bench` runs the
# tenants workload through each router in turn, round after round, flushing the workers
# before every pass. Reports land in $OUT/<round>-<router>/.
#
# Needs: a release build (cargo build --release -p locus) and PyPI for the peer routers
# (or an already installed target/peer-venv).
# Usage: scripts/bench-peer.sh [rate req/s] [rounds] [extra locus bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-3}
ROUNDS=${2:-2}
shift $(( $# > 2 ? 2 : $# ))
LOCUS=${LOCUS:-target/release/locus}
OUT=${OUT:-bench-out/peer}
WORKLOAD=${WORKLOAD:-tenants:requests=120}
PREFIX_BYTES=${PREFIX_BYTES:-216000000}
TOKEN=peer-bench-token
WORKERS=(18101 18102 18103)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
mkdir -p "$(dirname "$OUT")"

BIN=$(bash scripts/peer-routers.sh | tail -1)
urls=()
for i in "${!WORKERS[@]}"; do
  RAYON_NUM_THREADS=1 LOCUS_ADMIN_TOKEN=$TOKEN "$LOCUS" worker --port "${WORKERS[$i]}" \
    --worker-id "worker-$((i + 1))" --prefix-cache-bytes "$PREFIX_BYTES" >/dev/null &
  urls+=("http://127.0.0.1:${WORKERS[$i]}")
done
LIST=$(IFS=,; echo "${urls[*]}")
LOCUS_ADMIN_TOKEN=$TOKEN LOCUS_WORKER_TOKEN=$TOKEN "$LOCUS" router --port 18100 \
  --admin-addr 127.0.0.1:18110 --workers "$LIST" --policy prefix-aware >/dev/null &
# HF fetches kept on this machine: sglang-router looks for a tokenizer a worker names.
HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost HF_HUB_OFFLINE=1 \
  "$BIN/python" -m sglang_router.launch_router --host 127.0.0.1 --port 18120 \
  --policy cache_aware --prometheus-port 18129 --worker-urls "${urls[@]}" >"$OUT.sglang.log" 2>&1 &

wait_up() { for _ in $(seq 120); do curl --noproxy '*' -sf "$1" >/dev/null && return; sleep 0.5; done; echo "$1 did not come up" >&2; exit 1; }
for u in "${urls[@]}"; do wait_up "$u/health"; done
wait_up http://127.0.0.1:18100/health
wait_up http://127.0.0.1:18120/health

# Both routers stay up throughout (locus polls /load and follows /kv_events, sglang-router
# health-checks): each pass runs beside the other router's background traffic.
bench_locus() {
  LOCUS_ADMIN_TOKEN=$TOKEN "$LOCUS" bench --router http://127.0.0.1:18100 \
    --admin http://127.0.0.1:18110 --policies prefix-aware --workload "$WORKLOAD" \
    --rate "$RATE" --seed "$1" --out "$OUT/$1-locus" "${@:2}"
}
bench_sglang() {
  LOCUS_ADMIN_TOKEN=$TOKEN "$LOCUS" bench --router http://127.0.0.1:18120 --workers "$LIST" \
    --label sglang-cache-aware --workload "$WORKLOAD" --rate "$RATE" --seed "$1" \
    --out "$OUT/$1-sglang" "${@:2}"
}
# The two take turns going first, so drift hits both alike.
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then
    bench_locus "$round" "$@"; bench_sglang "$round" "$@"
  else
    bench_sglang "$round" "$@"; bench_locus "$round" "$@"
  fi
done
