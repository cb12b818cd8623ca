#!/usr/bin/env bash
# Validates deploy/k8s/*.yaml against the Kubernetes API schemas, offline (the schemas
# ship inside the kubernetes-validate package), strictly (an unknown field fails), for
# the oldest and newest Kubernetes versions we claim. Also checks that the validator
# does reject a broken manifest, so that a pass means something. That the manifests'
# arguments and settings are ones `locus` accepts is checked by `cargo test`
# (deploy_files_use_flags_and_settings_the_cli_accepts).
#
#   scripts/k8s-validate.sh     (installs kubernetes-validate into target/k8s-venv once)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/k8s-venv
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
for version in 1.30.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" deploy/k8s/*.yaml
  echo "k8s-validate: deploy/k8s/*.yaml valid for Kubernetes $version"
done
broken=$(mktemp --suffix=.yaml)
trap 'rm -f "$broken"' EXIT
sed 's/terminationGracePeriodSeconds/terminationGracePeriod/' deploy/k8s/workers.yaml >"$broken"
if "$venv/bin/kubernetes-validate" --strict --quiet "$broken" >/dev/null 2>&1; then
  echo "k8s-validate: FAIL: a misspelled field was not rejected" >&2
  exit 1
fi
echo "k8s-validate: a misspelled field is rejected"
