#!/usr/bin/env bash
# Runs each fuzz target of fuzz/ for SECONDS (default 60) with cargo-fuzz (libFuzzer),
# adding what it finds worth keeping to fuzz/corpus/<target>/ (commit those files: the
# stable test host/tests/fuzz_corpus.rs replays them). A crash stops the run with the
# input under fuzz/artifacts/<target>/; add it to the corpus once fixed.
#
# cargo-fuzz needs nightly flags; this machine has one stable toolchain, so the build runs
# with RUSTC_BOOTSTRAP=1 (the stable compiler accepting them) and without a sanitizer
# (`-s none`: AddressSanitizer needs a nightly standard library). Installs cargo-fuzz
# into target/fuzz-tools once.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     (targets: all of fuzz/fuzz_targets/)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
tools=$PWD/target/fuzz-tools
if [[ ! -x $tools/bin/cargo-fuzz ]]; then
  cargo install --locked --root "$tools" cargo-fuzz
fi
targets=("$@")
if ((${#targets[@]} == 0)); then
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  (cd fuzz && RUSTC_BOOTSTRAP=1 "$tools/bin/cargo-fuzz" run -s none "$t" "corpus/$t" \
    -- -max_total_time="$secs" -max_len=65536 -rss_limit_mb=4096)
done
