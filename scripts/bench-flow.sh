#!/usr/bin/env bash
# Flow control (issue 23): tenants through locus's router with each admission policy, and
# through sglang-router (pinned in scripts/peer-routers.sh) where it can express the
# setting, in front of the same 3 `locus worker` processes (one compute thread each).
# Rounds alternate the order of the configurations; workers' caches are flushed before
# every pass; each pass starts a fresh router. Results: $OUT/<scenario>/<round>-<config>.json,
# summarised by scripts/flow-summary.py.
#
# Scenarios (CAP = FIFO's capacity in req/s of the base shape, measured first by
# `capacity` unless given):
#   victim  victim at 0.4 CAP, aggressor at 3x its share (1.5 CAP), same shape
#   long    equal rates (0.6 CAP each), the aggressor's prompts 8x longer
#   bands   interactive (band 3, short) at 0.3 CAP beside batch (band 0, long) at 1.5 CAP
#   retry   victim's setting, the aggressor retrying 429/503 at once or after Retry-After
# `solo` runs (a tenant alone) give the victim's TTFT to compare with.
#
# Needs: cargo build -p locus (LOCUS=path to use another build), PyPI for the peer venv,
# aiohttp. Usage: scripts/bench-flow.sh [rounds] [scenarios...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
shift || true
SCENARIOS=("$@")
(( ${#SCENARIOS[@]} )) || SCENARIOS=(victim long bands retry)
LOCUS=${LOCUS:-target/debug/locus}
OUT=${OUT:-bench-out/flow}
DURATION=${DURATION:-40}
DRAIN=${DRAIN:-30}
WINDOW=${WINDOW:-10}
WORKERS=(18201 18202 18203)
ROUTER=18200
ADMIN=18210
SGL=18220
PY=${PY:-python3}
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
mkdir -p "$OUT"

BIN=$(bash scripts/peer-routers.sh | tail -1)
urls=()
for i in "${!WORKERS[@]}"; do
  RAYON_NUM_THREADS=1 "$LOCUS" worker --port "${WORKERS[$i]}" --worker-id "worker-$((i + 1))" \
    >"$OUT/worker-$i.log" 2>&1 &
  urls+=("http://127.0.0.1:${WORKERS[$i]}")
done
LIST=$(IFS=,; echo "${urls[*]}")
wait_up() { for _ in $(seq 240); do curl --noproxy '*' -sf "$1" >/dev/null && return; sleep 0.5; done; echo "$1 did not come up" >&2; exit 1; }
for u in "${urls[@]}"; do wait_up "$u/health"; done
HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost HF_HUB_OFFLINE=1 \
  "$BIN/python" -m sglang_router.launch_router --host 127.0.0.1 --port $SGL \
  --policy cache_aware --prometheus-port 18229 --worker-urls "${urls[@]}" >"$OUT/sglang.log" 2>&1 &
wait_up http://127.0.0.1:$SGL/health

flush() { for u in "${urls[@]}"; do curl --noproxy '*' -sf -X POST "$u/flush_cache" >/dev/null || true; done; }

# One pass: config (fifo|fair|priority|sglang), output file, then the tenants.
pass() {
  local config=$1 out=$2; shift 2
  flush
  local url pid=""
  if [[ $config == sglang ]]; then
    url=http://127.0.0.1:$SGL
  else
    "$LOCUS" router --port $ROUTER --admin-addr 127.0.0.1:$ADMIN --workers "$LIST" \
      --policy prefix-aware --admission "$config" >"$out.router.log" 2>&1 &
    pid=$!
    wait_up http://127.0.0.1:$ROUTER/health
    url=http://127.0.0.1:$ROUTER
  fi
  local args=()
  for t in "$@"; do args+=(--tenant "$t"); done
  "$PY" scripts/flow-load.py --url "$url" --duration "$DURATION" --drain "$DRAIN" \
    --window "$WINDOW" --seed "$SEED" --label "$(basename "$out")" --out "$out" "${args[@]}"
  if [[ -n $pid ]]; then kill "$pid"; wait "$pid" 2>/dev/null || true; fi
}

r() { "$PY" -c "print(round($1, 2))"; }

if [[ -z ${CAP:-} ]]; then
  # FIFO's highest rate of the base shape with TTFT p90 <= 2 s and no failure.
  mkdir -p "$OUT/capacity"
  CAP=0
  SEED=1
  for rate in ${CAP_STEPS:-1 1.5 2 2.5 3 3.5 4 5}; do
    f="$OUT/capacity/rate-$rate.json"
    DURATION=30 pass fifo "$f" "name=base,rate=$rate,prompt_tokens=128,max_tokens=32"
    ok=$("$PY" -c "import json;d=json.load(open('$f'))['tenants']['base'];print(int(d['ok']==d['sent'] and (d['ttft_p90'] or 99)<=2))")
    [[ $ok == 1 ]] || break
    CAP=$rate
  done
  echo "capacity: $CAP req/s" | tee "$OUT/capacity/CAP"
fi
[[ $CAP != 0 ]] || { echo "no capacity found" >&2; exit 1; }

VICTIM="name=victim,rate=$(r "0.4*$CAP"),prompt_tokens=128,max_tokens=32"
AGGR="name=aggressor,rate=$(r "1.5*$CAP"),prompt_tokens=128,max_tokens=32"
SHORT="name=victim,rate=$(r "0.6*$CAP"),prompt_tokens=64,max_tokens=32"
LONG="name=aggressor,rate=$(r "0.6*$CAP"),prompt_tokens=512,max_tokens=32"
INTER="name=interactive,rate=$(r "0.3*$CAP"),prompt_tokens=64,max_tokens=16,priority=3"
BATCH="name=batch,rate=$(r "1.5*$CAP"),prompt_tokens=256,max_tokens=32,priority=0"

for round in $(seq "$ROUNDS"); do
  SEED=$round
  for s in "${SCENARIOS[@]}"; do
    d="$OUT/$s"; mkdir -p "$d"
    case $s in
      victim) configs=(solo fifo fair sglang) ;;
      long) configs=(solo fifo fair sglang) ;;
      bands) configs=(solo fifo priority) ;;
      retry) configs=(immediate honour) ;;
    esac
    # Odd rounds in order, even rounds reversed, so drift hits every config alike.
    if (( round % 2 == 0 )); then
      rev=(); for ((i=${#configs[@]}-1; i>=0; i--)); do rev+=("${configs[$i]}"); done; configs=("${rev[@]}")
    fi
    for c in "${configs[@]}"; do
      f="$d/$round-$c.json"
      case $s/$c in
        victim/solo) pass fifo "$f" "$VICTIM" ;;
        victim/*) pass "$c" "$f" "$VICTIM" "$AGGR" ;;
        long/solo) pass fifo "$f" "$SHORT" ;;
        long/*) pass "$c" "$f" "$SHORT" "$LONG" ;;
        bands/solo) pass fifo "$f" "$INTER" ;;
        bands/*) pass "$c" "$f" "$INTER" "$BATCH" ;;
        retry/*) pass fair "$f" "$VICTIM" "$AGGR,retry=$c" ;;
      esac
    done
  done
done
"$PY" scripts/flow-summary.py "$OUT"
