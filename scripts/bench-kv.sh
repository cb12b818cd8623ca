#!/usr/bin/env bash
# KV on the move (issue 24): 3 `locus worker` processes (one compute thread each, the
# cluster token shared), each held to an equal CPU share by a cgroup quota of its own, so
# that a hot worker cannot borrow an idle worker's core; a locus router with the same
# token in front of them, and sglang-router (cache_aware, pinned in scripts/peer-routers.sh)
# beside it.
#
# Scenarios:
#   pull    a TOKENS-token prefix pulled from its holder vs computed (scripts/kv-pull.py),
#           alone and while the holder decodes BUSY streams
#   sweep   `locus bench` rate sweeps (RATES) of each WORKLOADS entry, ROUNDS rounds; each
#           round runs every locus configuration (POLICIES, rotated by `locus bench`) and
#           sglang-router (unless SGLANG=0), taking turns going first
# Results: $OUT/pull-*.jsonl, $OUT/<workload>/<round>-{locus,sglang}/report.{md,json}.
#
# Workers have no admin token (their flush and KV events are open, as on a private
# network); the router's admin API has one (policy swaps by `locus bench`).
# Needs: root with a writable cgroup cpu controller (v1 cpu.cfs_quota_us or v2 cpu.max),
# a release build, PyPI or an installed target/peer-venv (for sweep).
# Usage: scripts/bench-kv.sh [pull] [sweep]
set -euo pipefail
cd "$(dirname "$0")/.."
LOCUS=${LOCUS:-target/release/locus}
OUT=${OUT:-bench-out/kv}
CPU_SHARE=${CPU_SHARE:-0.6}      # cores per worker (3 x 0.6 leaves 0.2 of 2 for the rest)
TOKENS=${TOKENS:-512}
PULL_ROUNDS=${PULL_ROUNDS:-8}
BUSY=${BUSY:-8}
ROUNDS=${ROUNDS:-3}
RATES=${RATES:-1,2,3,4}
WORKLOADS=(${WORKLOADS:-tenants:tenants=8,zipf=1.5,requests=60 multi-turn})
POLICIES=${POLICIES:-prefix-aware,prefix-aware:pulls=off,hash,random}
SGLANG=${SGLANG:-1}              # 0: leave sglang-router out of the sweep
PREFIX_BYTES=${PREFIX_BYTES:-216000000}
TOKEN=kv-bench-admin
CLUSTER=kv-bench-cluster
PORTS=(18201 18202 18203)
SCENARIOS=("${@:-pull sweep}")
read -r -a SCENARIOS <<<"${SCENARIOS[*]}"
mkdir -p "$OUT"

# --- cgroups ----------------------------------------------------------------------------
if [[ -w /sys/fs/cgroup/cpu/cgroup.procs || -d /sys/fs/cgroup/cpu ]] && [[ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
  CG=/sys/fs/cgroup/cpu/locus-kv-bench; CGV=1
elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
  CG=/sys/fs/cgroup/locus-kv-bench; CGV=2
else
  echo "no writable cgroup cpu controller: cannot hold the workers to equal CPU shares" >&2
  exit 1
fi
mkdir -p "$CG"
[[ $CGV == 2 ]] && echo +cpu >"$CG/cgroup.subtree_control"
quota=$(python3 -c "print(int($CPU_SHARE * 100000))")
cg_make() {  # cg_make NAME: a cgroup of CPU_SHARE cores
  mkdir -p "$CG/$1"
  if [[ $CGV == 1 ]]; then
    echo 100000 >"$CG/$1/cpu.cfs_period_us"; echo "$quota" >"$CG/$1/cpu.cfs_quota_us"
  else
    echo "$quota 100000" >"$CG/$1/cpu.max"
  fi
}
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  for d in "$CG"/*/; do [[ -d $d ]] && rmdir "$d" 2>/dev/null || true; done
  rmdir "$CG" 2>/dev/null || true
  rm -rf "${BINDIR:-}"
}
trap cleanup EXIT

BINDIR=$(mktemp -d)
cp "$LOCUS" "$BINDIR/locus"
LOCUS=$BINDIR/locus
curl_() { curl --noproxy '*' -s --max-time 5 "$@"; }
wait_up() { for _ in $(seq 240); do curl_ -f "$1" >/dev/null && return; sleep 0.5; done; echo "$1 did not come up" >&2; exit 1; }

urls=()
for i in "${!PORTS[@]}"; do
  cg_make "w$i"
  # The shell joins the cgroup, then becomes the worker: every thread of it is held.
  sh -c 'echo $$ >"$0/cgroup.procs"; exec "$@"' "$CG/w$i" \
    env RAYON_NUM_THREADS=1 LOCUS_CLUSTER_TOKEN=$CLUSTER \
    "$LOCUS" worker --port "${PORTS[$i]}" --worker-id "worker-$((i + 1))" \
    --prefix-cache-bytes "$PREFIX_BYTES" >"$OUT/worker-$i.log" 2>&1 &
  urls+=("http://127.0.0.1:${PORTS[$i]}")
done
for u in "${urls[@]}"; do wait_up "$u/health"; done
LIST=$(IFS=,; echo "${urls[*]}")
echo "workers up, each held to $CPU_SHARE cores (cgroup v$CGV)"

pull() {
  for busy in 0 "$BUSY"; do
    echo "== pull vs compute, $TOKENS tokens, holder decoding $busy streams"
    python3 scripts/kv-pull.py "${urls[0]}" "${urls[1]}" "$CLUSTER" --tokens "$TOKENS" \
      --rounds "$PULL_ROUNDS" --busy "$busy" | tee "$OUT/pull-busy$busy.jsonl" | tail -1
    for u in "${urls[@]}"; do curl_ -X POST "$u/flush_cache" >/dev/null; done
  done
}

sweep() {
  BIN=$(bash scripts/peer-routers.sh | tail -1)
  LOCUS_ADMIN_TOKEN=$TOKEN LOCUS_CLUSTER_TOKEN=$CLUSTER "$LOCUS" router \
    --port 18200 --admin-addr 127.0.0.1:18210 --workers "$LIST" --policy prefix-aware \
    >"$OUT/router.log" 2>&1 &
  HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1,localhost HF_HUB_OFFLINE=1 \
    "$BIN/python" -m sglang_router.launch_router --host 127.0.0.1 --port 18220 \
    --policy cache_aware --prometheus-port 18229 --worker-urls "${urls[@]}" >"$OUT/sglang.log" 2>&1 &
  wait_up http://127.0.0.1:18200/health
  wait_up http://127.0.0.1:18220/health
  for w in "${WORKLOADS[@]}"; do
    name=${w%%:*}
    # Tenants in their steady state (every system prompt resident somewhere); a warm-up
    # of multi-turn would repeat its answers.
    warm=(); [[ $name == tenants ]] && warm=(--warm)
    for round in $(seq "$ROUNDS"); do
      locus_pass() {
        echo "-- $(date +%T) $name round $round: locus ($POLICIES)"
        LOCUS_ADMIN_TOKEN=$TOKEN "$LOCUS" bench --router http://127.0.0.1:18200 \
          --admin http://127.0.0.1:18210 --policies "$POLICIES" --workload "$w" "${warm[@]}" \
          --rate "$RATES" --seed "$round" --out "$OUT/$name/$round-locus" >/dev/null
      }
      sglang_pass() {
        [[ $SGLANG == 1 ]] || return 0
        echo "-- $(date +%T) $name round $round: sglang cache_aware"
        LOCUS_ADMIN_TOKEN=$TOKEN "$LOCUS" bench --router http://127.0.0.1:18220 \
          --workers "$LIST" --label sglang-cache-aware --workload "$w" "${warm[@]}" \
          --rate "$RATES" --seed "$round" --out "$OUT/$name/$round-sglang" >/dev/null
      }
      if (( round % 2 )); then locus_pass; sglang_pass; else sglang_pass; locus_pass; fi
    done
  done
}

for s in "${SCENARIOS[@]}"; do "$s"; done
