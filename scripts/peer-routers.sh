#!/usr/bin/env bash
# Installs the peer routers that locus workers must stand behind (SGLang's and vLLM's,
# pinned: their forwarded bodies and probes change between releases) into a venv, and
# prints the venv's bin dir as the last line of stdout. Idempotent: pip runs only when a
# pin is missing. Used by host/tests/peer_routers.rs, which skips when this fails.
set -euo pipefail

PINS=(sglang-router==0.3.2 vllm-router==0.1.17)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LOCUS_PEER_VENV:-$root/target/peer-venv}"
py="${PYTHON:-python3}"

# Is every pin installed at exactly its version? (pip's exit code says nothing about versions.)
have_pins() {
    [[ -x "$venv/bin/python" ]] || return 1
    "$venv/bin/python" - "${PINS[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
EOF
}

# Parallel callers (tests run as separate processes) wait here instead of pip-ing into one
# venv at once.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if command -v flock >/dev/null; then flock 9; fi

if ! have_pins; then
    command -v "$py" >/dev/null || { echo "peer-routers: $py not found" >&2; exit 1; }
    # --clear: a venv left without pip by an interrupted run is rebuilt, not reused.
    [[ -x "$venv/bin/pip" ]] || "$py" -m venv --clear "$venv" >&2
    # pip's output goes to stderr: stdout carries only the bin dir. Few retries, so an
    # offline machine fails in seconds rather than minutes.
    if ! "$venv/bin/pip" install --disable-pip-version-check -q --retries 1 --timeout 15 \
        "${PINS[@]}" >&2; then
        echo "peer-routers: pip could not install ${PINS[*]} (is PyPI reachable?)" >&2
        exit 1
    fi
    have_pins || { echo "peer-routers: installed, but the pinned versions are not there" >&2; exit 1; }
fi

echo "$venv/bin"
