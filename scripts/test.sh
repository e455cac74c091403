#!/usr/bin/env bash
# The whole test suite: Rust tests (with a real PostgreSQL), the dashboard's browser test
# (scripts/dashboard-test.sh) and the compose file check.
# Extra arguments go to `cargo nextest run`, e.g. scripts/test.sh -p consumer.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ensure_rust_tools

# Tests create and drop their own orderflow_test_* databases on this server.
DATABASE_URL="${TEST_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"
ensure_postgres
TEST_DATABASE_URL="$DATABASE_URL"
export TEST_DATABASE_URL DATABASE_URL

if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

# The OpenAPI test runs schemathesis (PyPI); keep it in a venv under target/, pinned.
SCHEMATHESIS_VERSION=4.32.5
st_venv=target/schemathesis-venv
if ! "$st_venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $st_venv"
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 -m venv "$st_venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$st_venv"; }
    "$st_venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
export SCHEMATHESIS="$ROOT/$st_venv/bin/st"

failed_steps=()

log "cargo nextest run --workspace --no-fail-fast $*"
cargo nextest run --workspace --no-fail-fast "$@" || failed_steps+=("cargo nextest")

# Installs chromium (apt) and the pinned npm packages when missing; ~15 s once installed.
log "scripts/dashboard-test.sh (headless chromium)"
bash scripts/dashboard-test.sh || failed_steps+=("dashboard browser test")

if [ -f docker-compose.yml ]; then
    if ! command -v docker-compose >/dev/null 2>&1; then
        # Recommends would pull in the whole Docker engine, which config -q does not need.
        apt_install --no-install-recommends docker-compose
    fi
    # Parses and validates the file only; needs no Docker daemon.
    log "docker-compose config -q"
    docker-compose -f docker-compose.yml config -q || failed_steps+=("docker-compose config")
    # Content checks (services, scale-safe consumer, topics, replication). Debian's python3,
    # because docker-compose depends on its python3-yaml.
    log "scripts/check-compose.py"
    /usr/bin/python3 scripts/check-compose.py || failed_steps+=("compose content")
else
    log "no docker-compose.yml at the repo root; skipping the compose check"
fi

if [ "${#failed_steps[@]}" -gt 0 ]; then
    echo "test.sh: FAILED steps: ${failed_steps[*]}" >&2
    exit 1
fi
echo "test.sh: all steps succeeded"
