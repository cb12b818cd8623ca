#!/usr/bin/env bash
# Chaos in containers, for real: under a steady open-loop load through the router, (a)
# partitions a worker from the routers' network for 10 s (`docker network disconnect`),
# (b) freezes a worker for 10 s (`docker pause`), (c) rolls every worker one at a time
# (stop, start, wait healthy), (d) stops the router with SIGTERM and starts it again, and
# (e) runs two router replicas in front of the same workers (the client spread over both;
# the prefix hit rate with one replica and with two) and stops one of them under load.
# The client retries as the OpenAI Python client does by default (2 retries, connection
# errors, 408/409/429/5xx, 0.5 s then 1 s with jitter).
#
# scripts/chaos_load.py drives it and counts every request: failed, retried, duplicated
# (workers' completed requests beyond the client's answers: a worker does not log request
# ids), those in flight on the faulted worker apart from those sent after the router
# detected the fault, time to detect and to recover, and the routers' view of each worker
# over time; its docstring says exactly what each figure counts. It prints the table and
# checks the targets: 0 failed among requests sent after detection in (a), (b), (c); 0
# failed after the client's retries in (d) and (e). Exit status 1 when one is missed.
#
#   scripts/chaos-test.sh            (OUT=DIR for the report and logs, default bench-out/chaos)
#
# One compose project (docker-compose.yml + scripts/chaos-compose.yml: a second router, and
# the workers' /metrics on loopback ports), brought up from a clean state and torn down at
# the end, whatever happened. The load runs about 4 minutes; the whole run, image present,
# about 4.5 on 2 cores (scripts/image.sh adds its build). Skipped, with a message, where
# no Docker Engine answers.
# LOCUS_IMAGE_BUILT=1 skips the image build (the tag locus:latest must exist).
# LOCUS_POLICY picks the routers' policy (default prefix-aware: it routes on the workers'
# load and KV events, which each replica follows on its own). CHAOS_ARGS passes more flags
# to chaos_load.py (--rate, --fault-s, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/compose-lib.sh
need_compose chaos-test

began=$(date +%s.%N)
out=${OUT:-bench-out/chaos}
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/report.* "$out"/timeline.txt "$out"/compose.log
project=locus-chaos
export LOCUS_ADMIN_TOKEN=${LOCUS_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export LOCUS_CLUSTER_TOKEN=${LOCUS_CLUSTER_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export LOCUS_POLICY=${LOCUS_POLICY:-prefix-aware}
# Ports of their own, so that a `locus run` or the compose test does not get in the way.
export LOCUS_ROUTER_PORT=${LOCUS_ROUTER_PORT:-18300} LOCUS_ADMIN_PORT=${LOCUS_ADMIN_PORT:-18400}
export LOCUS_ROUTER2_PORT=${LOCUS_ROUTER2_PORT:-18301} LOCUS_ADMIN2_PORT=${LOCUS_ADMIN2_PORT:-18401}
export LOCUS_WORKER1_PORT=${LOCUS_WORKER1_PORT:-18311} LOCUS_WORKER2_PORT=${LOCUS_WORKER2_PORT:-18312}
export LOCUS_WORKER3_PORT=${LOCUS_WORKER3_PORT:-18313}
router=http://127.0.0.1:$LOCUS_ROUTER_PORT
router2=http://127.0.0.1:$LOCUS_ROUTER2_PORT
dc=("${compose[@]}" -p "$project" -f docker-compose.yml -f scripts/chaos-compose.yml)

# shellcheck disable=SC2317 # run by the EXIT trap
teardown() {
  # A frozen container cannot take its SIGTERM: thaw whatever a failed run left paused.
  local paused
  paused=$(docker ps -q --filter status=paused --filter "label=com.docker.compose.project=$project" 2>/dev/null || true)
  if [[ -n "$paused" ]]; then
    # shellcheck disable=SC2086 # one id a word
    docker unpause $paused >/dev/null 2>&1 || true
  fi
  local t
  t=$(date +%s)
  "${dc[@]}" logs -t --no-color >"$out/compose.log" 2>&1 || true
  "${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  echo "chaos-test: torn down in $(($(date +%s) - t)) s"
}
trap teardown EXIT

if [[ "${LOCUS_IMAGE_BUILT:-}" != 1 ]]; then
  scripts/image.sh locus:latest
fi
docker image inspect locus:latest >/dev/null

# A clean state: nothing left from an earlier run.
"${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
started=$(date +%s.%N)
"${dc[@]}" up -d --no-build
for url in "$router" "$router2"; do
  answered=""
  for _ in $(seq 1 1200); do
    if curl -sf -m 5 -o /dev/null "$url/generate" -H 'content-type: application/json' \
      -d '{"text": "The capital of France is", "sampling_params": {"max_new_tokens": 4}}'; then
      answered=1
      break
    fi
    sleep 0.1
  done
  if [[ -z "$answered" ]]; then
    echo "chaos-test: FAIL: no answer through $url within 120 s" >&2
    "${dc[@]}" ps >&2
    exit 1
  fi
done
up_s=$(python3 -c "print(f'{$(date +%s.%N) - $started:.2f}')")

set +e
# shellcheck disable=SC2086 # CHAOS_ARGS is a list of flags
python3 scripts/chaos_load.py --routers "$router,$router2" \
  --admins "http://127.0.0.1:$LOCUS_ADMIN_PORT,http://127.0.0.1:$LOCUS_ADMIN2_PORT" \
  --workers "worker1=http://127.0.0.1:$LOCUS_WORKER1_PORT,worker2=http://127.0.0.1:$LOCUS_WORKER2_PORT,worker3=http://127.0.0.1:$LOCUS_WORKER3_PORT" \
  --token "$LOCUS_ADMIN_TOKEN" --compose "${dc[*]}" --out "$out" ${CHAOS_ARGS:-}
rc=$?
set -e
# shellcheck disable=SC2046 # one container id a word
docker stats --no-stream --format '{{.Name}} {{.MemUsage}}' \
  $("${dc[@]}" ps -q) >"$out/memory.txt" 2>/dev/null || true

wall=$(python3 -c "print(f'{$(date +%s.%N) - $began:.0f}')")
{
  echo "policy: $LOCUS_POLICY"
  echo "compose up to the first answer through both routers: ${up_s} s"
  echo "wall time of the run (image build included when there was one), before teardown: ${wall} s"
  echo "memory after the run:"
  sed 's/^/  /' "$out/memory.txt"
} | tee "$out/summary.txt"
if [[ $rc -eq 0 ]]; then
  echo "chaos-test: PASS"
else
  echo "chaos-test: FAIL (see $out/report.md)"
fi
exit $rc
