# Sourced by compose-test.sh and chaos-test.sh (not run on its own).
#
# need_compose NAME: sets `compose` to the Compose command (`docker compose` or
# `docker-compose`), or prints "NAME: SKIPPED: why" and exits 0 where no Docker Engine
# answers or Compose is not installed: the tests skip, they do not fail, without Docker.
need_compose() {
  if ! docker info >/dev/null 2>&1; then
    echo "$1: SKIPPED: no Docker Engine answers (docker info failed)"
    exit 0
  fi
  if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
  else
    echo "$1: SKIPPED: neither 'docker compose' nor 'docker-compose' is installed"
    exit 0
  fi
}
