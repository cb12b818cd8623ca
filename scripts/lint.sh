#!/usr/bin/env bash
# The checks that run before the tests (README's test command, CI): formatting, clippy with
# warnings as errors, docs with broken links as errors, and the router-only build: `locus`
# without its default features (`worker`, `bench`) must build and must not link the model
# (candle) or the bench's plotting (plotters, indicatif).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }
step "cargo fmt --all --check"
cargo fmt --all --check
step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo doc --workspace --no-deps (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
step "router-only build: cargo clippy and cargo build -p locus --no-default-features"
cargo clippy -p locus --no-default-features --locked -- -D warnings
cargo build -p locus --no-default-features --locked
tree=$(cargo tree -p locus --no-default-features -e normal --prefix none --locked)
if bad=$(grep -E '^(candle-|plotters|indicatif|locus-engine)' <<<"$tree" | sort -u) && [ -n "$bad" ]; then
  echo "the router-only build links what it must not:" >&2
  echo "$bad" >&2
  exit 1
fi
distinct() { sed -e 's/ (\*)$//' -e 's/ (proc-macro)//' | sort -u | wc -l; }
full=$(cargo tree -p locus -e normal --prefix none --locked | distinct)
echo "router-only build: $(distinct <<<"$tree") crates (the full build: $full), none of candle, plotters, indicatif, locus-engine"
