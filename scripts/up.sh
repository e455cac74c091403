#!/usr/bin/env bash
# Builds and starts the local stack: PostgreSQL, a broker (unless KAFKA_BROKERS is set),
# consumer(s) and producer. Safe to run again: only what is not running gets started.
#
# CONSUMERS=N starts N consumer processes in one group, with admin ports 8081, 8082, ...
# (CONSUMER_ADMIN_ADDR's port and the next ones). Running it again with another N scales up,
# or down by stopping the last ones with SIGTERM. Unset: as many as the last run started (1
# on a fresh stack), so a plain rerun only restarts what died.
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
CONSUMER_HOST="${CONSUMER_ADMIN_ADDR%:*}"
BIN="$ROOT/target/release"

mkdir -p "$LOG_DIR" "$PID_DIR"

# How many consumers: CONSUMERS, else what the last up.sh started (.run/consumers), else 1.
consumers_file="$RUN_DIR/consumers"
if [ -z "${CONSUMERS:-}" ] && [ -f "$consumers_file" ]; then
    CONSUMERS="$(cat "$consumers_file")"
fi
CONSUMERS="${CONSUMERS:-1}"
[[ "$CONSUMERS" =~ ^[1-9][0-9]*$ ]] || die "CONSUMERS must be a whole number >= 1 (got: $CONSUMERS)"
if [ "$CONSUMERS" -gt "${KAFKA_TOPIC_PARTITIONS:-12}" ]; then
    warn "CONSUMERS=$CONSUMERS is more than the ${KAFKA_TOPIC_PARTITIONS:-12} partitions: the extra consumers get none and stay idle"
fi

ensure_rust_tools
log "building release binaries"
cargo build --release --bins

ensure_postgres
ensure_database
export DATABASE_URL

# The dashboard's chart library (npm, pinned by producer/dashboard/package-lock.json). The
# API does not need it: without npm the page still works, minus its charts, and says so.
ensure_dashboard_packages || warn "could not install the dashboard's npm packages; /dashboard will show no charts"

log "running migrations"
"$BIN/consumer" migrate

# start NAME [ARGS...]: background the built binary NAME with its output in .run/logs,
# unless it already runs. Returns 0 when it started it, 1 when it was already running.
start() {
    local name="$1"
    shift
    start_command "$name" "$BIN/$(process_binary "$name")" "$@"
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
    tansu_ensure_topic "$TANSU_ADDR" "${ORDER_EVENTS_TOPIC:-order-events}" "${KAFKA_TOPIC_PARTITIONS:-12}"
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
    printf 'DATABASE_URL=%q\n' "$DATABASE_URL"
    printf 'KAFKA_BROKERS=%q\n' "$KAFKA_BROKERS"
    printf 'KAFKA_CONFIG=%q\n' "${consumer_kafka_config}${consumer_kafka_config:+${KAFKA_CONFIG:+,}}${KAFKA_CONFIG:-}"
    if [ -n "${KAFKA_SESSION_TIMEOUT_MS:-}" ]; then printf 'KAFKA_SESSION_TIMEOUT_MS=%q\n' "$KAFKA_SESSION_TIMEOUT_MS"; fi
} >"$consumer_env"
check_ready() {
    local name="$1" url="$2"
    if ! wait_http "$url" 60 "$name"; then
        show_log_tail "$name"
        die "$name did not become ready at $url (waited up to 60s)"
    fi
    log "$name ready"
}

# Every consumer gets these settings; other scripts start more group members with them too
# (scripts/chaos.sh). Each consumer has its own admin port.
consumer_port() { echo $((CONSUMER_PORT + $1 - 1)); }

# settled COUNT QUIET: true when consumers 1..COUNT own every partition of the topic exactly
# once, each with at least one (when there are enough partitions); unless QUIET, prints them.
settled() {
    local count="$1" quiet="$2" ports=() i
    for ((i = 1; i <= count; i++)); do ports+=("$(consumer_port "$i")"); done
    PARTITIONS="${KAFKA_TOPIC_PARTITIONS:-12}" QUIET="$quiet" python3 - "${ports[@]}" <<'PY'
import json, os, sys, urllib.request
partitions, ports = int(os.environ["PARTITIONS"]), sys.argv[1:]
owned = {}
try:
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as response:
            owned[port] = sorted(p["partition"] for p in json.load(response)["partitions"])
except OSError:
    sys.exit(1)
every = [p for ps in owned.values() for p in ps]
ok = sorted(every) == list(range(partitions)) and all(owned[p] for p in ports[:partitions])
if ok and os.environ["QUIET"] != "1":
    for i, port in enumerate(ports, 1):
        name = "consumer" if i == 1 else f"consumer-{i}"
        print(f"==> {name} (:{port}): partitions {','.join(map(str, owned[port])) or 'none'}", file=sys.stderr)
sys.exit(0 if ok else 1)
PY
}

# Ready is not assigned: a new group's first join waits (the mock: 3 s of
# group.initial.rebalance.delay.ms), and so does every rebalance. Orders placed meanwhile
# wait in the broker, and a benchmark started right away would count that wait. So up.sh
# waits until the group has settled. wait_settled COUNT TIMEOUT_S.
wait_settled() {
    local count="$1" timeout="$2" deadline
    [ "$BROKER" = external ] && return 0 # partition count unknown here
    # UP_WAIT_SETTLED=0: scripts that add group members of their own (chaos.sh) restart
    # through up.sh; its own consumers can never own every partition then.
    [ "${UP_WAIT_SETTLED:-1}" = 0 ] && return 0
    deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        settled "$count" 1 && return 0
        sleep 0.5
    done
    return 1
}

# Scale down first: the last consumers leave the group (SIGTERM: drain, commit, leave).
mapfile -t extra < <(extra_consumer_indexes | sort -rn)
for i in "${extra[@]}"; do
    if [ "$i" -gt "$CONSUMERS" ]; then stop_process "$(consumer_name "$i")"; fi
done
# Then start the missing ones one at a time, each after the group settled with the one
# before: on tansu, three members joining a new group at once left it unsettled, with no
# partition consumed, for more than 90 s (its JoinGroup answers each member at once).
for ((i = 1; i <= CONSUMERS; i++)); do
    name="$(consumer_name "$i")"
    if (set -a && source "$consumer_env" && CONSUMER_ADMIN_ADDR="$CONSUMER_HOST:$(consumer_port "$i")" && start "$name"); then
        check_ready "$name" "http://127.0.0.1:$(consumer_port "$i")/ready"
        wait_settled "$i" 60 || warn "the group did not settle within 60s after $name joined"
    fi
done
echo "$CONSUMERS" >"$consumers_file"
start producer || true

for ((i = 1; i <= CONSUMERS; i++)); do
    check_ready "$(consumer_name "$i")" "http://127.0.0.1:$(consumer_port "$i")/ready"
done
check_ready producer "http://127.0.0.1:$PRODUCER_PORT/ready"
if [ "$BROKER" = external ]; then
    log "external Kafka: not waiting for the group's assignment (partition count unknown here)"
elif [ "${UP_WAIT_SETTLED:-1}" = 0 ]; then
    log "not waiting for the group's assignment (UP_WAIT_SETTLED=0)"
elif wait_settled "$CONSUMERS" 90; then
    settled "$CONSUMERS" 0 || true
    log "consumer group settled: ${KAFKA_TOPIC_PARTITIONS:-12} partitions over $CONSUMERS consumer(s)"
else
    warn "the consumer group did not settle within 90s (see each consumer's /status and log)"
fi
consumer_ports="$CONSUMER_PORT"
[ "$CONSUMERS" -gt 1 ] && consumer_ports="$CONSUMER_PORT-$(consumer_port "$CONSUMERS") ($CONSUMERS consumers, one group)"

cat <<EOF

orderflow is up.
  Producer API:   http://127.0.0.1:$PRODUCER_PORT   (/health, /ready, /order, /orders/batch, /orders/{id}, /inventory/{id})
  Dashboard:      http://127.0.0.1:$PRODUCER_PORT/dashboard
  Consumer admin: http://127.0.0.1:$consumer_ports   (/health, /ready, /status)
  Kafka brokers:  $KAFKA_BROKERS ($BROKER)
  Database:       $DATABASE_URL
  Logs:           $LOG_DIR/{tansu,dev-broker,consumer,consumer-N,producer}.log
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
