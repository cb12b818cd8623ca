#!/usr/bin/env bash
# Builds the image locus:latest without pulling a base image: the Dockerfile's build stage
# runs here (a static musl binary, built with this machine's toolchain) and its runtime
# stage runs as written (FROM scratch). On a machine that can pull rust:1.95-bookworm,
# `docker build -t locus:latest .` (or `docker compose build`) gives the same image.
#
#   scripts/image.sh [TAG]        (default locus:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-locus:latest}
target=x86_64-unknown-linux-musl

rustup target add wasm32-wasip2 "$target" >/dev/null
# The binary is stripped below, so its line tables (the release profile's) would only fill
# the disk: CI builds this after the whole test suite.
CARGO_PROFILE_RELEASE_DEBUG=false cargo build --release --locked -p locus --target "$target"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/out/data"
cp "${CARGO_TARGET_DIR:-target}/$target/release/locus" "$ctx/out/locus"
strip "$ctx/out/locus"
# The runtime stage, with the build stage's /out read from the context.
sed -n '/^FROM scratch/,$p' Dockerfile | sed -e 's#--from=build ##' -e 's# /out/# out/#' >"$ctx/Dockerfile"
grep -q '^COPY out/locus /locus' "$ctx/Dockerfile" || {
  echo "image.sh: the Dockerfile's runtime stage no longer copies /out/locus; update this script" >&2
  exit 1
}
docker build -q -t "$tag" "$ctx" >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "built $tag ($((size / 1024 / 1024)) MiB)"
