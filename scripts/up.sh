#!/usr/bin/env bash
# Builds and starts the local stack: PostgreSQL, a broker (unless KAFKA_BROKERS is set),
# consumer and producer. Safe to run again: only what is not running gets started.
#
# BROKER picks the local broker:
#   tansu (default)  tansu with SQLite storage in .run/tansu: keeps every message on disk
#                    until consumed, across broker restarts (built once, ~15 min).
#   mock             librdkafka's in-memory mock cluster: faster, but keeps only ~5 MiB per
#                    partition and nothing across a restart. What it drops unconsumed, the
#                    consumer reports as a gap and stops on (see README, Reliability).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

PRODUCER_ADDR="${PRODUCER_ADDR:-0.0.0.0:8080}"
CONSUMER_ADMIN_ADDR="${CONSUMER_ADMIN_ADDR:-0.0.0.0:8081}"
PRODUCER_PORT="$(addr_port "$PRODUCER_ADDR")"
CONSUMER_PORT="$(addr_port "$CONSUMER_ADMIN_ADDR")"
BIN="$ROOT/target/release"

mkdir -p "$LOG_DIR" "$PID_DIR"

ensure_rust_tools
log "building release binaries"
cargo build --release --bins

ensure_postgres
ensure_database
export DATABASE_URL

log "running migrations"
"$BIN/consumer" migrate

# start NAME [ARGS...]: background the built binary NAME with its output in .run/logs,
# unless it already runs. Returns 0 when it started it, 1 when it was already running.
start() {
    local name="$1"
    shift
    start_command "$name" "$BIN/$name" "$@"
}

# start_command NAME CMD [ARGS...]: the same for any command whose command line names NAME.
start_command() {
    local name="$1" cmd="$2"
    shift 2
    if is_running "$name"; then
        log "$name already running (pid $(cat "$(pid_file "$name")"))"
        # A running process keeps its old binary; say so rather than silently serving stale code.
        if [ "$cmd" -nt "$(pid_file "$name")" ]; then
            warn "$name was rebuilt after it started; run scripts/down.sh && scripts/up.sh to use the new build"
        fi
        return 1
    fi
    rm -f "$(pid_file "$name")"
    local logf="$LOG_DIR/$name.log"
    # Keep the previous run's log: it is often the one that explains a crash.
    [ -f "$logf" ] && mv -f "$logf" "$logf.prev"
    log "starting $name (log: $logf)"
    nohup "$cmd" "$@" </dev/null >"$logf" 2>&1 &
    echo $! >"$(pid_file "$name")"
    return 0
}

show_log_tail() {
    local logf="$LOG_DIR/$1.log"
    echo "----- last 40 lines of $logf -----" >&2
    tail -n 40 "$logf" >&2 2>/dev/null || true
    echo "-----" >&2
}

BROKER="${BROKER:-tansu}"
broker_note=""
consumer_kafka_config=""
if [ -n "${KAFKA_BROKERS:-}" ]; then
    log "using external Kafka at $KAFKA_BROKERS (no local broker started)"
    BROKER=external
elif [ "$BROKER" = "tansu" ]; then
    is_running dev-broker && die "the mock dev broker is running; stop the stack first (scripts/down.sh) to switch to BROKER=tansu"
    ensure_tansu
    TANSU_ADDR="${TANSU_ADDR:-127.0.0.1:9092}"
    TANSU_DIR="${TANSU_DIR:-$RUN_DIR/tansu}"
    mkdir -p "$TANSU_DIR"
    # SQLite storage paths are relative to the broker's working directory.
    mapfile -t tansu_cmd < <(tansu_command "$TANSU_ADDR")
    (cd "$TANSU_DIR" && start_command tansu "${tansu_cmd[@]}") || true
    tansu_wait "$TANSU_ADDR" 60 || {
        show_log_tail tansu
        die "tansu did not answer on $TANSU_ADDR within 60s"
    }
    tansu_ensure_topic "$TANSU_ADDR" "${KAFKA_TOPIC:-orders-placed}" "${KAFKA_TOPIC_PARTITIONS:-12}"
    tansu_ensure_topic "$TANSU_ADDR" "${DEAD_LETTER_TOPIC:-orders-dlq}" 1
    KAFKA_BROKERS="$TANSU_ADDR"
    # tansu answers a fetch only once it has read the whole response from SQLite. With
    # librdkafka's 50 MiB fetches a big backlog kept heartbeats waiting behind them until the
    # group fell apart; smaller fetches and a longer session drained a 3M backlog cleanly.
    consumer_kafka_config="fetch.max.bytes=4194304,max.partition.fetch.bytes=524288"
    export KAFKA_SESSION_TIMEOUT_MS="${KAFKA_SESSION_TIMEOUT_MS:-45000}"
elif [ "$BROKER" = "mock" ]; then
    is_running tansu && die "tansu is running; stop the stack first (scripts/down.sh) to switch to BROKER=mock"
    DEV_BROKER_ADDR="${DEV_BROKER_ADDR:-127.0.0.1:9092}"
    export DEV_BROKER_ADDR
    if start dev-broker; then
        if is_running consumer || is_running producer; then
            broker_note="The dev broker was (re)started while consumer/producer were running. It keeps everything in memory, so earlier unconsumed messages are gone; the services reconnect by themselves."
        fi
        ready_line=""
        for _ in $(seq 1 30); do
            ready_line="$(grep -m1 'dev broker ready on' "$LOG_DIR/dev-broker.log" 2>/dev/null || true)"
            [ -n "$ready_line" ] && break
            is_running dev-broker || break
            sleep 1
        done
        if [ -z "$ready_line" ]; then
            show_log_tail dev-broker
            die "dev broker did not report ready within 30s"
        fi
    fi
    # Connect via loopback even when the broker listens on all interfaces.
    KAFKA_BROKERS="${DEV_BROKER_ADDR/0.0.0.0/127.0.0.1}"
else
    die "BROKER must be tansu or mock (got: $BROKER)"
fi
export KAFKA_BROKERS

# The user's own KAFKA_CONFIG comes last, so it overrides the broker-specific defaults.
consumer_env="$RUN_DIR/consumer.env"
{
    printf 'KAFKA_BROKERS=%q\n' "$KAFKA_BROKERS"
    printf 'KAFKA_CONFIG=%q\n' "${consumer_kafka_config}${consumer_kafka_config:+${KAFKA_CONFIG:+,}}${KAFKA_CONFIG:-}"
    if [ -n "${KAFKA_SESSION_TIMEOUT_MS:-}" ]; then printf 'KAFKA_SESSION_TIMEOUT_MS=%q\n' "$KAFKA_SESSION_TIMEOUT_MS"; fi
} >"$consumer_env"
# Other scripts start more group members with the same settings (scripts/chaos.sh).
(set -a && source "$consumer_env" && start consumer) || true
start producer || true

check_ready() {
    local name="$1" url="$2"
    if ! wait_http "$url" 60 "$name"; then
        show_log_tail "$name"
        die "$name did not become ready at $url (waited up to 60s)"
    fi
    log "$name ready"
}
check_ready consumer "http://127.0.0.1:$CONSUMER_PORT/ready"
check_ready producer "http://127.0.0.1:$PRODUCER_PORT/ready"

cat <<EOF

orderflow is up.
  Producer API:   http://127.0.0.1:$PRODUCER_PORT   (/health, /ready, /order, /orders/batch, /orders/{id}, /inventory/{id})
  Consumer admin: http://127.0.0.1:$CONSUMER_PORT   (/health, /ready, /status)
  Kafka brokers:  $KAFKA_BROKERS ($BROKER)
  Database:       $DATABASE_URL
  Logs:           $LOG_DIR/{tansu,dev-broker,consumer,producer}.log
  Stop with:      scripts/down.sh

Try:
  curl -s -X POST http://127.0.0.1:$PRODUCER_PORT/order -H 'Content-Type: application/json' \\
       -d '{"customer_id":"CUST001","product_id":"PROD001","quantity":2,"amount":99.98}'
  curl -s http://127.0.0.1:$PRODUCER_PORT/inventory/PROD001
EOF
if [ -n "$broker_note" ]; then
    echo
    echo "Note: $broker_note"
fi
