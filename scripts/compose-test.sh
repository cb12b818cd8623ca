#!/usr/bin/env bash
# The compose cluster, for real: builds the image (scripts/image.sh), brings
# docker-compose.yml up from a clean state, times the first answered request, drives load
# through the router while worker2 is stopped (SIGTERM, as `docker stop` sends) and started
# again, and checks what a client saw (scripts/compose_load.py): no failed request, only
# the stopped worker's prefixes moved while it was down, every prefix back after. Tears
# the cluster down (containers, network, volume) at the end, whatever happened.
#
#   scripts/compose-test.sh            (OUT=DIR for the report, default bench-out/compose)
#
# Skipped, with a message, where no Docker Engine answers. LOCUS_IMAGE_BUILT=1 skips
# the image build (the tag locus:latest must exist).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/compose-lib.sh
need_compose compose-test

out=${OUT:-bench-out/compose}
mkdir -p "$out"
project=locus-compose-test
export LOCUS_ADMIN_TOKEN=${LOCUS_ADMIN_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export LOCUS_CLUSTER_TOKEN=${LOCUS_CLUSTER_TOKEN:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
# Ports of their own, so that a `locus run` on 8000 does not get in the way.
export LOCUS_ROUTER_PORT=${LOCUS_ROUTER_PORT:-18000} LOCUS_ADMIN_PORT=${LOCUS_ADMIN_PORT:-18100}
router=http://127.0.0.1:$LOCUS_ROUTER_PORT
dc=("${compose[@]}" -p "$project" -f docker-compose.yml)

teardown() {
  "${dc[@]}" logs --no-color >"$out/compose.log" 2>&1 || true
  "${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
}
trap teardown EXIT

if [[ "${LOCUS_IMAGE_BUILT:-}" != 1 ]]; then
  scripts/image.sh locus:latest
fi
size=$(docker image inspect -f '{{.Size}}' locus:latest)

# A clean state: nothing left from an earlier run.
"${dc[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
start=$(date +%s.%N)
"${dc[@]}" up -d --no-build
first=""
for _ in $(seq 1 1200); do
  if curl -sf -m 5 -o /dev/null "$router/generate" -H 'content-type: application/json' \
    -d '{"text": "The capital of France is", "sampling_params": {"max_new_tokens": 4}}'; then
    first=$(date +%s.%N)
    break
  fi
  sleep 0.1
done
if [[ -z "$first" ]]; then
  echo "compose-test: FAIL: no answer through the router within 120 s" >&2
  "${dc[@]}" ps >&2
  exit 1
fi
up_s=$(python3 -c "print(f'{$first - $start:.2f}')")

set +e
python3 scripts/compose_load.py --router "$router" --admin "http://127.0.0.1:$LOCUS_ADMIN_PORT" \
  --token "$LOCUS_ADMIN_TOKEN" --compose "${dc[*]}" --out "$out"
rc=$?
set -e
docker stats --no-stream --format '{{.Name}} {{.MemUsage}}' \
  $("${dc[@]}" ps -q) >"$out/memory.txt" 2>/dev/null || true

{
  echo "image locus:latest: $((size / 1024 / 1024)) MiB"
  echo "docker compose up to the first answered request: ${up_s} s"
  echo "memory after the run:"
  sed 's/^/  /' "$out/memory.txt"
} | tee "$out/summary.txt"
exit $rc
