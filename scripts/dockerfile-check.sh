#!/usr/bin/env bash
# Builds the Dockerfile as written, build stage included, on a machine that cannot pull its
# base image. A stand-in for rust:1.95-bookworm is imported under that tag: this machine's
# own Debian bookworm userland, its Rust toolchain (with the wasm32-wasip2 and musl
# targets already added) and its cargo cache, with CARGO_NET_OFFLINE set. The stand-in
# is a test double for the pulled base image, nothing else. The script then runs
# `docker build .` exactly as `docker compose up` would on a user's machine, checks that
# the image runs and serves, and removes the stand-in and the image it built.
#
#   scripts/dockerfile-check.sh     (about 15 minutes on 2 cores: a full release build)
set -euo pipefail
cd "$(dirname "$0")/.."
base=rust:1.95-bookworm
tag=locus:dockerfile-check
if docker image inspect "$base" >/dev/null 2>&1; then
  echo "dockerfile-check: $base exists already (a real one?); not replacing it" >&2
  exit 1
fi
rustup target add wasm32-wasip2 x86_64-unknown-linux-musl >/dev/null
toolchain=$(rustup show active-toolchain | cut -d' ' -f1)
# The build stage's result is left untagged by the builder: remove those this run made.
dangling_before=$(docker images -q -f dangling=true | sort)
cleanup() {
  docker rm -f -v locus-dockerfile-check >/dev/null 2>&1 || true
  docker rmi -f "$tag" "$base" >/dev/null 2>&1 || true
  comm -13 <(echo "$dangling_before") <(docker images -q -f dangling=true | sort) |
    xargs -r docker rmi -f >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "dockerfile-check: importing a stand-in for $base (toolchain $toolchain)"
tar -C / -c \
  --exclude=usr/lib/google-cloud-sdk --exclude=usr/lib/jvm --exclude=usr/lib/llvm-14 \
  --exclude=usr/share/doc --exclude=usr/share/man --exclude=usr/share/locale \
  --exclude=usr/local --exclude="root/.rustup/toolchains/$toolchain/share/doc" \
  bin sbin lib lib64 usr etc \
  "root/.rustup/toolchains/$toolchain" root/.rustup/settings.toml \
  root/.cargo/bin root/.cargo/registry \
  --transform 's,^root/.rustup,usr/local/rustup,;s,^root/.cargo,usr/local/cargo,' 2>/dev/null |
  docker import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo CARGO_NET_OFFLINE=true' \
    - "$base" >/dev/null

start=$(date +%s)
docker build -t "$tag" . >target/dockerfile-check.log 2>&1 || {
  tail -30 target/dockerfile-check.log >&2
  echo "dockerfile-check: FAIL: docker build failed (log: target/dockerfile-check.log)" >&2
  exit 1
}
echo "dockerfile-check: docker build . took $(($(date +%s) - start)) s"
docker run --rm "$tag" --version
user=$(docker image inspect -f '{{.Config.User}}' "$tag")
[[ "$user" == 65532:65532 ]] || { echo "dockerfile-check: FAIL: runs as '$user'" >&2; exit 1; }
docker run -d --name locus-dockerfile-check -p 127.0.0.1:18300:8000 "$tag" >/dev/null
for _ in $(seq 1 300); do
  if curl -sf -m 5 -o /dev/null http://127.0.0.1:18300/generate -H 'content-type: application/json' \
    -d '{"text": "The capital of France is", "sampling_params": {"max_new_tokens": 4}}'; then
    size=$(docker image inspect -f '{{.Size}}' "$tag")
    echo "dockerfile-check: PASS: the image built from the Dockerfile serves ($((size / 1024 / 1024)) MiB, user $user)"
    exit 0
  fi
  sleep 0.2
done
echo "dockerfile-check: FAIL: the container did not answer /generate" >&2
docker logs locus-dockerfile-check >&2 || true
exit 1
