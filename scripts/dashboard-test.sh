#!/usr/bin/env bash
# Browser test of the producer's GET /dashboard (run by scripts/test.sh). Starts a stack of
# its own on free loopback ports (dev broker, one consumer, the producer; debug builds) with
# a fresh database, opens the page in headless Debian chromium through playwright-core,
# places orders through the API and checks that the page's numbers change. Saves the
# screenshot the README shows (docs/dashboard.png). Stops every process it started, by pid,
# and drops its database, also when it fails. Bounded: the browser part times out at 180 s.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

SCREENSHOT="${SCREENSHOT:-$ROOT/docs/dashboard.png}"
started=$SECONDS

ensure_node
ensure_dashboard_packages
ensure_chromium

DATABASE_URL="${TEST_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"
ensure_postgres
parse_db_url "$DATABASE_URL"
db_name="orderflow_dashboard_test_$$"
export DATABASE_URL="${DATABASE_URL%/*}/$db_name"

log "building the services (debug)"
cargo build --quiet -p orderflow-common -p orderflow-producer -p orderflow-consumer --bins
BIN="$ROOT/target/debug"

read -r broker_port consumer_port producer_port < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)

work="$(mktemp -d)"
pids=()
cleanup() {
    local status=$? i pid
    # Producer, then consumer, then broker (as down.sh): a consumer whose broker is already
    # gone can hang in its final offset commit. Each gets 30 s before SIGKILL.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid="${pids[$i]}"
        kill "$pid" 2>/dev/null || continue
        timeout 30 tail --pid="$pid" -f /dev/null 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        for f in "$work"/*.log; do
            echo "----- last 30 lines of $(basename "$f") -----" >&2
            tail -n 30 "$f" >&2 || true
        done
    fi
    psql -w -X -q -d "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$db_name\" WITH (FORCE)" >/dev/null 2>&1 || true
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

psql -w -X -q -v ON_ERROR_STOP=1 -d "$PG_ADMIN_URL" -c "CREATE DATABASE \"$db_name\"" >/dev/null
export KAFKA_BROKERS="127.0.0.1:$broker_port" LOG_FORMAT=text RUST_LOG=info

DEV_BROKER_ADDR="127.0.0.1:$broker_port" "$BIN/dev-broker" >"$work/dev-broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 30); do
    grep -q 'dev broker ready on' "$work/dev-broker.log" 2>/dev/null && break
    sleep 0.5
done
grep -q 'dev broker ready on' "$work/dev-broker.log" || die "dev broker did not start"
"$BIN/consumer" migrate >"$work/migrate.log" 2>&1
CONSUMER_ADMIN_ADDR="127.0.0.1:$consumer_port" "$BIN/consumer" >"$work/consumer.log" 2>&1 &
pids+=($!)
PRODUCER_ADDR="127.0.0.1:$producer_port" DASHBOARD_ASSETS_DIR="$DASHBOARD_DIR/node_modules/uplot/dist" \
    "$BIN/producer" >"$work/producer.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$consumer_port/ready" 60 || die "consumer not ready"
wait_http "http://127.0.0.1:$producer_port/ready" 60 || die "producer not ready"

mkdir -p "$(dirname "$SCREENSHOT")"
log "browser test: headless chromium on http://127.0.0.1:$producer_port/dashboard"
PRODUCER_URL="http://127.0.0.1:$producer_port" SCREENSHOT="$SCREENSHOT" NODE_PATH="$DASHBOARD_DIR/node_modules" \
    timeout 180 node --test "$DASHBOARD_DIR/test/"
log "dashboard browser test passed in $((SECONDS - started)) s; screenshot: ${SCREENSHOT#"$ROOT"/}"
