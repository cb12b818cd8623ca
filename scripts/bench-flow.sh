#!/usr/bin/env bash
# Flow control benchmark: tenants through locus's router with each admission policy
# (fifo, fair, priority) and through sglang-router (cache_aware, pinned in
# scripts/peer-routers.sh), in front of the same 3 `locus worker` processes (one compute
# thread each). Every pass starts its own router, runs one scenario's load with
# scripts/flow-load.py, stops the router, waits for the workers to go idle and flushes
# their caches. Rounds alternate the order of the configurations (odd rounds as listed,
# even rounds reversed), so drift hits each alike; a round's passes share its seed, so
# they see the same arrivals and prompts.
#
# Scenarios (CAP: FIFO's capacity in req/s of the victim's shape; the env var, else
# $OUT/capacity/CAP, else measured by `capacity` first):
#   capacity  FIFO's highest rate, in CAP_STEP steps of CAP_DURATION s, with TTFT p90 <=
#             CAP_TTFT_P90 s and every request answered 200 (victim's shape, one tenant)
#   solo      each tenant of the scenarios below alone (through SOLO_CONFIG), for the
#             "victim's TTFT p99 over its solo run" ratio
#   victim    victim at VICTIM_X x CAP (short prompts); aggressor at AGGR_SHARE_X x its
#             fair share (CAP / 2), same shape
#   long      both at LONG_RATE_X x CAP; the aggressor's prompts LONG_FACTOR x longer
#   bands     interactive (priority 3, short) at BANDS_INTER_X x CAP beside batch
#             (priority 0, long prompts) at BANDS_BATCH_X x CAP (saturating)
#   retry     victim's setting with the aggressor retrying 429/503 at once (immediate) or
#             after Retry-After (honour), through RETRY_CONFIGS; the router's queue caps
#             are made small (RETRY_LOCUS_FLAGS, RETRY_SGLANG_FLAGS) so that refusals
#             happen
#   all       capacity (when CAP is not known), solo, victim, long, bands, retry
# Results: $OUT/<scenario>/<round>-<config>.json (+ .txt: the table, .router.log), then
# scripts/flow-summary.py "$OUT" prints the markdown tables (also in $OUT/summary.md).
#
# Needs: a build of locus (LOCUS, default target/release/locus, else target/debug/locus;
# copied first so that a rebuild meanwhile changes nothing), PyPI or an installed
# target/peer-venv (sglang-router; aiohttp is added to it when missing).
# Usage: scripts/bench-flow.sh SCENARIO...     e.g. ROUNDS=1 DURATION=60 scripts/bench-flow.sh victim
set -euo pipefail
cd "$(dirname "$0")/.."

# --- locus router flags of flow control (change here if they are renamed) ---------------
ADMISSION_FLAG=--admission
TENANT_HEADER=x-tenant-id
PRIORITY_HEADER=x-priority
FLOW_FLAGS=(--tenant-header "$TENANT_HEADER" --priority-header "$PRIORITY_HEADER")
ROUTER_POLICY=prefix-aware
# Extra flags for every locus router / sglang-router / worker (words split on spaces).
read -r -a LOCUS_ROUTER_FLAGS <<<"${LOCUS_ROUTER_FLAGS:-}"
read -r -a SGLANG_FLAGS <<<"${SGLANG_FLAGS:-}"
read -r -a WORKER_FLAGS <<<"${WORKER_FLAGS:-}"
# Small queues for the retry scenario, so that refusals (and so retries) happen.
read -r -a RETRY_LOCUS_FLAGS <<<"${RETRY_LOCUS_FLAGS:---queue-max 32 --band-max 16}"
read -r -a RETRY_SGLANG_FLAGS <<<"${RETRY_SGLANG_FLAGS:---max-concurrent-requests 48 --queue-size 16}"

# --- the runs ---------------------------------------------------------------------------
CONFIGS=(${CONFIGS:-fifo fair priority sglang})    # admission policies (POLICY+KEY=VALUE...), and the peer
RETRY_CONFIGS=(${RETRY_CONFIGS:-fifo fair})        # each with retry=immediate and =honour
SOLO_CONFIG=${SOLO_CONFIG:-fifo}
# Which solo runs (scenario.tenant); all of them by default. The summary compares only the
# victims' (victim.victim long.victim bands.interactive) with their runs beside others.
read -r -a SOLO_ONLY <<<"${SOLO_ONLY:-}"
ROUNDS=${ROUNDS:-3}
ROUND_FROM=${ROUND_FROM:-1}   # the first round's number (its seed): to interleave two runs
DURATION=${DURATION:-180}     # seconds of arrivals per pass
DRAIN=${DRAIN:-60}            # then seconds for requests still running
WINDOW=${WINDOW:-60}          # fairness window
OUT=${OUT:-bench-out/flow}
# --- capacity search ---
CAP_START=${CAP_START:-0.5}
CAP_STEP=${CAP_STEP:-0.5}
CAP_MAX=${CAP_MAX:-20}
CAP_DURATION=${CAP_DURATION:-30}
CAP_DRAIN=${CAP_DRAIN:-30}
CAP_TTFT_P90=${CAP_TTFT_P90:-2}
# --- request shapes (tokens) and rates (x CAP) ---
SHORT_PROMPT=${SHORT_PROMPT:-64}
SHORT_MAX=${SHORT_MAX:-32}
LONG_FACTOR=${LONG_FACTOR:-8}
INTER_MAX=${INTER_MAX:-16}
VICTIM_X=${VICTIM_X:-0.4}
AGGR_SHARE_X=${AGGR_SHARE_X:-3}
LONG_RATE_X=${LONG_RATE_X:-0.5}
BANDS_INTER_X=${BANDS_INTER_X:-0.3}
BANDS_BATCH_X=${BANDS_BATCH_X:-1.0}

TOKEN=flow-bench-token
WORKERS=(18501 18502 18503)
ROUTER_PORT=18500
ADMIN_PORT=18510
SGL_PORT=18520
SGL_PROM=18529

(( $# )) || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
SCENARIOS=("$@")
[[ " ${SCENARIOS[*]} " == *" all "* ]] && SCENARIOS=(solo victim long bands retry)
for s in "${SCENARIOS[@]}"; do
  case $s in capacity|solo|victim|long|bands|retry) ;; *) echo "unknown scenario $s" >&2; exit 2 ;; esac
done

if [[ -z ${LOCUS:-} ]]; then
  LOCUS=target/release/locus
  [[ -x $LOCUS ]] || LOCUS=target/debug/locus
fi
[[ -x $LOCUS ]] || { echo "no locus binary at $LOCUS (cargo build --release -p locus)" >&2; exit 1; }
mkdir -p "$OUT"
BINDIR=$(mktemp -d)
cp "$LOCUS" "$BINDIR/locus"
LOCUS=$BINDIR/locus
RPID=""
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$BINDIR"
}
trap cleanup EXIT

BIN=$(bash scripts/peer-routers.sh | tail -1)
PY=$BIN/python
"$PY" -c 'import aiohttp' 2>/dev/null || "$BIN/pip" install --disable-pip-version-check -q aiohttp >&2

curl_() { curl --noproxy '*' -s --max-time 5 "$@"; }
wait_up() {
  for _ in $(seq 240); do curl_ -f "$1" >/dev/null && return; sleep 0.5; done
  echo "$1 did not come up" >&2; exit 1
}
port_free() {
  for _ in $(seq 60); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
    sleep 0.5
  done
  echo "port $1 still taken" >&2; exit 1
}

urls=()
for i in "${!WORKERS[@]}"; do
  RAYON_NUM_THREADS=1 LOCUS_ADMIN_TOKEN=$TOKEN "$LOCUS" worker --port "${WORKERS[$i]}" \
    --worker-id "worker-$((i + 1))" "${WORKER_FLAGS[@]}" >"$OUT/worker-$((i + 1)).log" 2>&1 &
  urls+=("http://127.0.0.1:${WORKERS[$i]}")
done
LIST=$(IFS=,; echo "${urls[*]}")
for u in "${urls[@]}"; do wait_up "$u/health"; done

# Waits until no worker has a request waiting or running (cancelled requests of the last
# pass may still be finishing), then empties both cache levels of every worker.
idle_and_flush() {
  for _ in $(seq 240); do
    local busy=0
    for u in "${urls[@]}"; do
      curl_ "$u/load" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["waiting"] + d["running"] > 0)' \
        || busy=1
    done
    (( busy )) || break
    sleep 0.5
  done
  for u in "${urls[@]}"; do
    curl_ -f -X POST -H "Authorization: Bearer $TOKEN" "$u/flush_cache" >/dev/null \
      || { echo "flushing $u failed" >&2; exit 1; }
  done
}

# start_router CONFIG LOG [extra flags...]: CONFIG is an admission policy (with settings
# after `+`, e.g. fair+input-weight=4) or `sglang`;
# sets URL and RPID.
start_router() {
  local config=$1 log=$2; shift 2
  if [[ $config == sglang ]]; then
    port_free $SGL_PORT
    # HF fetches kept on this machine: sglang-router looks for a tokenizer a worker names.
    HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost HF_HUB_OFFLINE=1 \
      "$PY" -m sglang_router.launch_router --host 127.0.0.1 --port $SGL_PORT \
      --policy cache_aware --prometheus-port $SGL_PROM --worker-urls "${urls[@]}" \
      "${SGLANG_FLAGS[@]}" "$@" >"$log" 2>&1 &
    RPID=$!
    URL=http://127.0.0.1:$SGL_PORT
    wait_up "$URL/health"
  else
    port_free $ROUTER_PORT
    # CONFIG is POLICY[+KEY=VALUE...]: the admission policy and its settings.
    local settings=() kv st
    IFS=+ read -r -a kv <<<"$config"
    for st in "${kv[@]:1}"; do settings+=(--admission-setting "$st"); done
    LOCUS_ADMIN_TOKEN=$TOKEN LOCUS_WORKER_TOKEN=$TOKEN "$LOCUS" router --port $ROUTER_PORT \
      --admin-addr 127.0.0.1:$ADMIN_PORT --workers "$LIST" --policy $ROUTER_POLICY \
      $ADMISSION_FLAG "${kv[0]}" "${settings[@]}" "${FLOW_FLAGS[@]}" "${LOCUS_ROUTER_FLAGS[@]}" "$@" \
      >"$log" 2>&1 &
    RPID=$!
    URL=http://127.0.0.1:$ROUTER_PORT
    wait_up "$URL/health"
    # Every worker healthy, with a load report (the dispatch limit comes from it).
    for _ in $(seq 120); do
      curl_ -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT/admin/workers" |
        "$PY" -c 'import json,sys; w=json.load(sys.stdin)["workers"]; sys.exit(not (len(w) == int(sys.argv[1]) and all(x["healthy"] and x.get("load") for x in w)))' \
          "${#urls[@]}" && break
      sleep 0.5
    done
  fi
}

stop_router() {
  [[ -n $RPID ]] || return 0
  kill -TERM "$RPID" 2>/dev/null || true
  wait "$RPID" 2>/dev/null || true
  RPID=""
}

# run_pass CONFIG FILE SEED DURATION DRAIN [router flags...] -- TENANT...
run_pass() {
  local config=$1 file=$2 seed=$3 duration=$4 drain=$5; shift 5
  local rflags=()
  while (( $# )) && [[ $1 != -- ]]; do rflags+=("$1"); shift; done
  shift
  local targs=()
  for t in "$@"; do targs+=(--tenant "$t"); done
  idle_and_flush
  start_router "$config" "${file%.json}.router.log" "${rflags[@]}"
  # The workers' counters before the pass: their metrics run across passes.
  for u in "${urls[@]}"; do curl_ "$u/metrics"; done >"${file%.json}.metrics-before" || true
  echo "-- $(date +%T) $file ($config, seed $seed)"
  "$PY" scripts/flow-load.py --url "$URL" --duration "$duration" --drain "$drain" \
    --window "$WINDOW" --seed "$seed" --label "$(basename "$file" .json)" --out "$file" \
    --tenant-header "$TENANT_HEADER" --priority-header "$PRIORITY_HEADER" "${targs[@]}" |
    tee "${file%.json}.txt"
  # Where the time went (the router's queue wait per tenant, the workers' own timings).
  if [[ $config != sglang ]]; then
    { curl_ "$URL/metrics"; for u in "${urls[@]}"; do curl_ "$u/metrics"; done; } \
      >"${file%.json}.metrics" || true
  fi
  stop_router
}

x() { "$PY" -c "import sys; print(round(float(sys.argv[1]) * float(sys.argv[2]), 3))" "$1" "$2"; }

capacity() {
  local d=$OUT/capacity rate=$CAP_START best=0
  mkdir -p "$d"
  while "$PY" -c "import sys; sys.exit(not float(sys.argv[1]) <= float(sys.argv[2]) + 1e-9)" "$rate" "$CAP_MAX"; do
    local f=$d/rate-$rate.json
    run_pass fifo "$f" 1 "$CAP_DURATION" "$CAP_DRAIN" -- \
      "name=victim,rate=$rate,prompt_tokens=$SHORT_PROMPT,max_tokens=$SHORT_MAX"
    "$PY" - "$f" "$CAP_TTFT_P90" <<'EOF' || break
import json, sys
d = json.load(open(sys.argv[1]))["tenants"]["victim"]
ok = d["sent"] > 0 and d["successes"] == d["sent"] and (d["ttft_p90"] or 1e9) <= float(sys.argv[2])
print(f"capacity step: {d['successes']}/{d['sent']} ok, TTFT p90 {d['ttft_p90']}: "
      + ("sustained" if ok else "not sustained"))
sys.exit(not ok)
EOF
    best=$rate
    rate=$("$PY" -c "import sys; print(round(float(sys.argv[1]) + float(sys.argv[2]), 3))" "$rate" "$CAP_STEP")
  done
  echo "$best" >"$d/CAP"
  echo "capacity: $best req/s (victim's shape, FIFO, TTFT p90 <= $CAP_TTFT_P90 s)"
  CAP=$best
}

need_cap() {
  [[ -n ${CAP:-} ]] && return
  if [[ -s $OUT/capacity/CAP ]]; then CAP=$(cat "$OUT/capacity/CAP"); else capacity; fi
  "$PY" -c "import sys; sys.exit(not float(sys.argv[1]) > 0)" "$CAP" ||
    { echo "no sustainable rate found (CAP=$CAP); set CAP" >&2; exit 1; }
}

# The tenants of each scenario, as flow-load.py --tenant specs.
tenants_of() {
  local long=$((SHORT_PROMPT * LONG_FACTOR))
  local short="prompt_tokens=$SHORT_PROMPT,max_tokens=$SHORT_MAX"
  case $1 in
    victim|retry)
      echo "name=victim,rate=$(x "$VICTIM_X" "$CAP"),$short"
      echo "name=aggressor,rate=$(x "$(x "$AGGR_SHARE_X" 0.5)" "$CAP"),$short" ;;
    long)
      echo "name=victim,rate=$(x "$LONG_RATE_X" "$CAP"),$short"
      echo "name=aggressor,rate=$(x "$LONG_RATE_X" "$CAP"),prompt_tokens=$long,max_tokens=$SHORT_MAX" ;;
    bands)
      echo "name=interactive,rate=$(x "$BANDS_INTER_X" "$CAP"),prompt_tokens=$SHORT_PROMPT,max_tokens=$INTER_MAX,priority=3"
      echo "name=batch,rate=$(x "$BANDS_BATCH_X" "$CAP"),prompt_tokens=$long,max_tokens=$SHORT_MAX,priority=0" ;;
  esac
}

# in_order ROUND ITEMS...: the items, reversed in even rounds.
in_order() {
  local round=$1; shift
  local items=("$@")
  if (( round % 2 == 0 )); then
    for ((i = ${#items[@]} - 1; i >= 0; i--)); do echo "${items[$i]}"; done
  else
    printf '%s\n' "${items[@]}"
  fi
}

# A two-tenant scenario through every configuration, ROUNDS times.
scenario() {
  local s=$1 d=$OUT/$1
  mkdir -p "$d"
  mapfile -t tenants < <(tenants_of "$s")
  for round in $(seq "$ROUND_FROM" "$((ROUND_FROM + ROUNDS - 1))"); do
    for c in $(in_order "$round" "${CONFIGS[@]}"); do
      run_pass "$c" "$d/$round-$c.json" "$round" "$DURATION" "$DRAIN" -- "${tenants[@]}"
    done
  done
}

victim() { need_cap; scenario victim; }
long() { need_cap; scenario long; }
bands() { need_cap; scenario bands; }

retry() {
  need_cap
  local d=$OUT/retry
  mkdir -p "$d"
  mapfile -t tenants < <(tenants_of retry)
  local configs=()
  for c in "${RETRY_CONFIGS[@]}"; do configs+=("$c-immediate" "$c-honour"); done
  for round in $(seq "$ROUND_FROM" "$((ROUND_FROM + ROUNDS - 1))"); do
    for cfg in $(in_order "$round" "${configs[@]}"); do
      local c=${cfg%-*} how=${cfg##*-} flags=("${RETRY_LOCUS_FLAGS[@]}")
      [[ $c == sglang ]] && flags=("${RETRY_SGLANG_FLAGS[@]}")
      run_pass "$c" "$d/$round-$cfg.json" "$round" "$DURATION" "$DRAIN" "${flags[@]}" -- \
        "${tenants[0]}" "${tenants[1]},retry=$how"
    done
  done
}

# Each tenant of each scenario alone: solo/<round>-<scenario>.<tenant>.json.
solo() {
  need_cap
  local d=$OUT/solo
  mkdir -p "$d"
  local runs=()
  for s in victim long bands; do
    while read -r t; do
      local name=${t#name=}; name=${name%%,*}
      if (( ${#SOLO_ONLY[@]} )) && [[ " ${SOLO_ONLY[*]} " != *" $s.$name "* ]]; then continue; fi
      runs+=("$s.$t")
    done < <(tenants_of "$s")
  done
  for round in $(seq "$ROUND_FROM" "$((ROUND_FROM + ROUNDS - 1))"); do
    for run in $(in_order "$round" "${runs[@]}"); do
      local s=${run%%.*} spec=${run#*.}
      local name=${spec#name=}; name=${name%%,*}
      run_pass "$SOLO_CONFIG" "$d/$round-$s.$name.json" "$round" "$DURATION" "$DRAIN" -- "$spec"
    done
  done
}

for s in "${SCENARIOS[@]}"; do
  echo "== $(date +%T) scenario $s"
  "$s"
done
stop_router
"$PY" scripts/flow-summary.py "$OUT" | tee "$OUT/summary.md"
