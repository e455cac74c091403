#!/usr/bin/env bash
# Conformance run: the Kafka-facing tests, the crash test and the race test against a second,
# independent Kafka-protocol implementation (tansu, SQLite storage) instead of librdkafka's
# mock cluster. Everything runs on 127.0.0.1; every process started here is stopped by pid.
# Not part of CI: tansu takes ~15 min to build the first time. CONFORMANCE_BROKER=mock runs
# the same steps on the mock, for comparison. Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

usage() {
    cat <<EOF
Usage: scripts/conformance.sh [NEXTEST ARGS...]

Steps: the Kafka-facing tests (cargo nextest, ORDERFLOW_TEST_KAFKA_BROKERS set to tansu),
then scripts/race-test.sh against the consumer and producer binaries on tansu.

Environment:
  CONFORMANCE_BROKER        tansu (default), or mock: the same steps on librdkafka's mock
                            cluster (in-process per test; the dev-broker binary for the race)
  TANSU_BIN                 a tansu build with libsql to use (default: ~/.cargo/bin/tansu,
                            built when missing)
  CONFORMANCE_KAFKA_CONFIG  extra librdkafka properties (key=value,...) for the services
                            under test (default: none)
  NEXTEST_TIMEOUT_S         bound on the test step in seconds (default 2400); the race
                            step is bounded by race-test.sh's own waits
  CONFORMANCE_FILTER        a nextest filter expression that narrows the test selection
  RACE_ORDERS, RACE_STOCK   race-test.sh size (default 2000 orders for 300 units);
                            RACE_ORDERS=0 skips that step
  KEEP_WORK=1               keep the temp dir (tansu's SQLite file and logs; kept anyway
                            when a step fails)
EOF
}

# None by default: the run checks the client configuration we ship. For backlogs of several
# 100k orders, smaller fetches keep tansu answering heartbeats in time (README, Conformance):
# CONFORMANCE_KAFKA_CONFIG=fetch.max.bytes=4194304,max.partition.fetch.bytes=524288
KAFKA_CONFIG_FOR_TESTS="${CONFORMANCE_KAFKA_CONFIG:-}"
NEXTEST_TIMEOUT_S="${NEXTEST_TIMEOUT_S:-2400}"
RACE_ORDERS="${RACE_ORDERS:-2000}"
RACE_STOCK="${RACE_STOCK:-300}"
BROKER="${CONFORMANCE_BROKER:-tansu}"
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
case "$BROKER" in tansu | mock) ;; *) die "CONFORMANCE_BROKER must be tansu or mock (got: $BROKER)" ;; esac

# The Kafka-facing tests: every consumer flow test but the PostgreSQL-only plans test, and the
# producer API tests that publish. Tests of mock-only behaviour always run on a mock of their
# own, so they are left out here rather than run twice against the mock: the gap tests (the
# mock drops a partition's oldest data past 5 MiB) and the broker-restart test.
FILTER='(binary(flow) - test(/^plans::/) - test(/^gaps::/))
  | (binary(api) & (test(/^place_order::/) | test(/^place_batch::/) | test(/^idempotency::/) | test(/^health::/))
     - test(=place_order::the_api_recovers_by_itself_when_the_broker_returns))'
[ -n "${CONFORMANCE_FILTER:-}" ] && FILTER="($FILTER) & ($CONFORMANCE_FILTER)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/orderflow-conformance.XXXXXX")"
STARTED_PIDS=()
RACE_DB=""

# stop PID NAME: SIGTERM, up to 30 s to exit (the consumer drains for up to 20 s), then SIGKILL. Only pids this script started.
stop() {
    local pid="$1" name="$2" i
    kill -0 "$pid" 2>/dev/null || return 0
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    warn "$name (pid $pid) ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? entry i
    # Newest first: the services before the broker they talk to.
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        entry="${STARTED_PIDS[$i]}"
        stop "${entry%%:*}" "${entry#*:}"
    done
    if [ -n "$RACE_DB" ]; then
        psql -w -X -q -d "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $RACE_DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [ "${KEEP_WORK:-0}" = 1 ] || [ "$status" -ne 0 ]; then
        log "kept $WORK (logs, and tansu.db on tansu)"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spawn NAME LOG CMD...: starts CMD in the background, remembers its pid for cleanup.
spawn() {
    local name="$1" logf="$2"
    shift 2
    "$@" </dev/null >"$logf" 2>&1 &
    STARTED_PIDS+=("$!:$name")
    log "started $name (pid $!, log $logf)"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

ensure_rust_tools
DATABASE_URL="${TEST_DATABASE_URL:-${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}}"
ensure_postgres
TEST_DATABASE_URL="$DATABASE_URL"
export TEST_DATABASE_URL DATABASE_URL
parse_db_url "$DATABASE_URL"

# --- the broker --------------------------------------------------------------------------
if [ "$BROKER" = tansu ]; then
    ensure_tansu # lib.sh: sets TANSU; builds it (~15 min) when missing
    BROKER_NAME="$("$TANSU" --version 2>/dev/null || echo "$TANSU")"
    ADDR="127.0.0.1:$(free_port)"
    mkdir -p "$WORK/tansu"
    mapfile -t tansu_cmd < <(tansu_command "$ADDR")
    # SQLite paths are relative to the working directory: the file lands in $WORK/tansu.
    # env -u: tansu also reads its settings from these variables; the flags alone decide here.
    spawn tansu "$WORK/tansu.log" env -u CLUSTER_ID -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
        -C "$WORK/tansu" "${tansu_cmd[@]}"
    BROKER_PID="${STARTED_PIDS[-1]%%:*}"
    tansu_wait "$ADDR" 30 || {
        tail -n 40 "$WORK/tansu.log" >&2
        die "tansu did not answer on $ADDR within 30 s"
    }
    log "$BROKER_NAME listening on $ADDR (data in $WORK/tansu/tansu.db)"
    # The tests share this broker, each with topics and groups of its own.
    test_env=(env ORDERFLOW_TEST_KAFKA_BROKERS="$ADDR" ORDERFLOW_TEST_KAFKA_CONFIG="$KAFKA_CONFIG_FOR_TESTS")
else
    BROKER_NAME="librdkafka mock cluster"
    BROKER_PID="" # each test starts its own; the race step starts the dev-broker binary
    test_env=(env -u ORDERFLOW_TEST_KAFKA_BROKERS)
fi

declare -A RESULT TOOK
STEPS=()
record() { # record STEP STATUS SECONDS
    STEPS+=("$1")
    RESULT[$1]="$2"
    TOOK[$1]="$3"
}

# --- step 1: the Kafka-facing tests ----------------------------------------------------
log "building the test binaries"
cargo build --tests --bins -p orderflow-consumer -p orderflow-producer
[ "$BROKER" = mock ] && cargo build --bin dev-broker -p orderflow-common
log "cargo nextest run on $BROKER_NAME"
started=$SECONDS
# Each test is bounded by .config/nextest.toml (killed after 5 min); the step as a whole too.
if "${test_env[@]}" timeout --kill-after=30 "$NEXTEST_TIMEOUT_S" \
    cargo nextest run -p orderflow-consumer -p orderflow-producer --no-fail-fast -E "$FILTER" "$@" \
    2>&1 | tee "$WORK/nextest.log"; then
    record "nextest (flow + api tests)" PASS $((SECONDS - started))
else
    record "nextest (flow + api tests)" FAIL $((SECONDS - started))
fi
nextest_summary="$(grep -E '^ +Summary' "$WORK/nextest.log" | tail -n1 || true)"

# --- step 2: scripts/race-test.sh against the consumer and producer binaries -----------
# The services are the debug binaries just built, on free ports, with topics and a database
# of this run's own. Not scripts/up.sh: it builds release binaries (a second full build) and
# owns fixed ports, .run/ pid files and its own broker, which a developer's stack may be using.
race_fail() {
    warn "$1"
    local f
    for f in "$WORK"/{dev-broker,consumer,producer}.log; do
        [ -f "$f" ] && { echo "----- last 20 lines of $f"; tail -n 20 "$f"; }
    done
    return 1
}
race() {
    local suffix consumer_port producer_port race_url dead_letters events kafka
    suffix="conformance-$$"
    RACE_DB="orderflow_conformance_$$"
    psql -w -X -q -v ON_ERROR_STOP=1 -d "$PG_ADMIN_URL" -c "CREATE DATABASE $RACE_DB" >/dev/null || return 1
    race_url="$(printf '%s' "$DATABASE_URL" | sed -E "s#(://[^/]*)/[^?]*#\1/$RACE_DB#")"
    if [ "$BROKER" = tansu ]; then
        dead_letters="orders-dlq-$suffix"
        events="order-events-$suffix"
        tansu_ensure_topic "$ADDR" "orders-placed-$suffix" 16 || return 1
        tansu_ensure_topic "$ADDR" "$dead_letters" 1 || return 1
        tansu_ensure_topic "$ADDR" "$events" 16 || return 1
    else
        dead_letters="orders-dlq" # the dev broker's; it is this run's alone
        events="order-events"
        ADDR="127.0.0.1:$(free_port)"
        spawn dev-broker "$WORK/dev-broker.log" env DEV_BROKER_ADDR="$ADDR" KAFKA_TOPIC="orders-placed-$suffix" \
            KAFKA_TOPIC_PARTITIONS=16 "${CARGO_TARGET_DIR:-$ROOT/target}"/debug/dev-broker
        local i
        for ((i = 0; i < 30; i++)); do
            grep -q 'dev broker ready on' "$WORK/dev-broker.log" 2>/dev/null && break
            sleep 1
        done
        ((i < 30)) || race_fail "the dev broker did not report ready within 30 s" || return 1
    fi
    consumer_port="$(free_port)"
    producer_port="$(free_port)"
    kafka=(env DATABASE_URL="$race_url" KAFKA_BROKERS="$ADDR" KAFKA_TOPIC="orders-placed-$suffix"
        KAFKA_CONFIG="$KAFKA_CONFIG_FOR_TESTS" ORDER_EVENTS_TOPIC="$events" RUST_LOG=info)
    "${kafka[@]}" "${CARGO_TARGET_DIR:-$ROOT/target}"/debug/consumer migrate >"$WORK/migrate.log" 2>&1 || race_fail "consumer migrate failed" || return 1
    spawn consumer "$WORK/consumer.log" "${kafka[@]}" CONSUMER_ADMIN_ADDR="127.0.0.1:$consumer_port" \
        KAFKA_GROUP_ID="orderflow-consumer-$suffix" DEAD_LETTER_TOPIC="$dead_letters" "${CARGO_TARGET_DIR:-$ROOT/target}"/debug/consumer
    spawn producer "$WORK/producer.log" "${kafka[@]}" PRODUCER_ADDR="127.0.0.1:$producer_port" \
        RATE_LIMIT_PER_IP=0 RATE_LIMIT_GLOBAL=0 "${CARGO_TARGET_DIR:-$ROOT/target}"/debug/producer
    wait_http "http://127.0.0.1:$consumer_port/ready" 60 || race_fail "the consumer did not become ready" || return 1
    wait_http "http://127.0.0.1:$producer_port/ready" 60 || race_fail "the producer did not become ready" || return 1
    PRODUCER_URL="http://127.0.0.1:$producer_port" DATABASE_URL="$race_url" \
        scripts/race-test.sh --orders "$RACE_ORDERS" --stock "$RACE_STOCK" --concurrency 100
}
stop_services() {
    local entry i
    # Newest first: the services before the dev broker they talk to.
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        entry="${STARTED_PIDS[$i]}"
        case "${entry#*:}" in consumer | producer | dev-broker) stop "${entry%%:*}" "${entry#*:}" ;; esac
    done
}
if ((RACE_ORDERS > 0)); then
    log "scripts/race-test.sh on $BROKER_NAME ($RACE_ORDERS orders for $RACE_STOCK units)"
    started=$SECONDS
    # Not a pipeline: race must run in this shell, so that cleanup knows the pids it starts.
    if race > >(tee "$WORK/race.log") 2>&1; then
        record "race-test.sh (consumer + producer binaries)" PASS $((SECONDS - started))
    else
        record "race-test.sh (consumer + producer binaries)" FAIL $((SECONDS - started))
    fi
    stop_services
fi

# --- summary ---------------------------------------------------------------------------
if [ -n "$BROKER_PID" ] && ! kill -0 "$BROKER_PID" 2>/dev/null; then
    record "$BROKER_NAME still running at the end" FAIL 0
fi
echo
echo "Conformance summary ($BROKER_NAME)"
failed=0
for step in "${STEPS[@]}"; do
    printf '  %-4s  %-50s %5ss\n' "${RESULT[$step]}" "$step" "${TOOK[$step]}"
    [ "${RESULT[$step]}" = PASS ] || failed=$((failed + 1))
done
[ -n "$nextest_summary" ] && echo "  nextest:$nextest_summary"
if ((failed > 0)); then
    echo "CONFORMANCE FAILED: $failed step(s); logs in $WORK"
    exit 1
fi
echo "CONFORMANCE PASSED"
