#!/usr/bin/env bash
# The engine beside llama.cpp (pinned) and PyTorch on the same weights, 2 threads, one run
# (issue 26). Makes a Python environment with PyTorch, transformers and cmake (from PyPI),
# builds locus's engine examples, then runs engine/scripts/bench_llamacpp.py, which builds
# llama.cpp's tools from llama-cpp-python's sdist once (kept in target/llamacpp) and prints
# the tables (also in bench-out/engine/). Don't run it beside a build: it measures the CPU.
#
#   scripts/bench-engine.sh [--reps 5] [--threads 2] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-target/anchor-venv}
if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q torch==2.15.0 transformers==5.25.0 safetensors numpy pyyaml tqdm \
  regex sentencepiece cmake==4.4.5
cargo build --release --locked -p locus-engine \
  --example bench_engine --example batch_decode --example machine_limits --example quant_fidelity
exec "$venv/bin/python" engine/scripts/bench_llamacpp.py "$@"
