#!/usr/bin/env bash
# Fault injection against the local stack, during a flash-sale run at a fixed rate:
#   - the consumer SIGKILLed KILLS times (default 5) and restarted by scripts/up.sh,
#   - extra consumers joining and leaving the group (rebalances),
#   - PostgreSQL restarted (local server only; CHAOS_PG_RESTART=0 to skip),
#   - the producer stopped with SIGTERM mid-run and restarted.
# The load generator sends every request with an Idempotency-Key and retries through the
# faults, then checks that every accepted order is in the database exactly once, nothing is
# oversold and every invariant holds. Bounded: ORDERS (100000) at RATE (2000/s), loopback
# only; every process it starts is stopped by pid. Prints a report table; exits non-zero on
# any violation.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ORDERS="${ORDERS:-100000}"
RATE="${RATE:-2000}"
KILLS="${KILLS:-5}"
CHAOS_PG_RESTART="${CHAOS_PG_RESTART:-1}"
OUT=bench-results/chaos
# The stack's own addresses (up.sh's PRODUCER_ADDR and CONSUMER_ADMIN_ADDR), so a run on
# other ports than 8080/8081 does not talk to someone else's stack.
PRODUCER_PORT="$(addr_port "${PRODUCER_ADDR:-0.0.0.0:8080}")"
CONSUMER_PORT="$(addr_port "${CONSUMER_ADMIN_ADDR:-0.0.0.0:8081}")"
PRODUCER_URL="http://127.0.0.1:$PRODUCER_PORT"
CONSUMER_URL="http://127.0.0.1:$CONSUMER_PORT"

scripts/up.sh >/dev/null
cargo build --release -p orderflow-bench
mkdir -p "$OUT" "$LOG_DIR" "$PID_DIR"

declare -a extra_pids=() recoveries=()
kills=0 rebalances=0 pg_restarts=0 producer_stops=0
started_at=$(date +%s)

# SIGTERM, then up to 30 s for the drain, then SIGKILL: an extra consumer from one run was
# found still alive an hour later (its log was overwritten by the next run, so why is not
# known); a SIGKILL here is reported, since a consumer should always stop on SIGTERM.
cleanup() {
    local pid
    for pid in "${extra_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    [ -n "${loadgen_pid:-}" ] && kill -TERM "$loadgen_pid" 2>/dev/null || true
    for pid in "${extra_pids[@]}" ${loadgen_pid:-}; do
        wait_or_kill "$pid" "a chaos process (logs in $LOG_DIR)"
    done
}
trap cleanup EXIT

at() { # at SECONDS: sleep until that many seconds after the start
    local now=$(( $(date +%s) - started_at ))
    [ "$1" -gt "$now" ] && sleep $(( $1 - now ))
    return 0
}

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

wait_ready() { # wait_ready URL: until 200, at most 60 s
    for _ in $(seq 1 600); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

kill_consumer() {
    local pid t0
    pid=$(cat "$(pid_file consumer)")
    t0=$(date +%s%N)
    kill -KILL "$pid"
    kills=$((kills + 1))
    log "fault: consumer (pid $pid) SIGKILLed ($kills/$KILLS); restarting with scripts/up.sh"
    # The extra members own partitions too, so up.sh must not wait for its own to own them all.
    UP_WAIT_SETTLED=0 scripts/up.sh >/dev/null 2>&1 || warn "up.sh failed after the kill"
    wait_ready "$CONSUMER_URL/ready"
    recoveries+=("consumer SIGKILL #$kills: $(ms_since "$t0") ms to ready again")
}

extra_consumer() { # extra_consumer N: another group member on admin port (consumer port + 100 + N), not one of up.sh's CONSUMERS
    # The broker settings up.sh gave its consumer (tansu wants smaller fetches).
    (set -a && source "$RUN_DIR/consumer.env" && CONSUMER_ADMIN_ADDR="127.0.0.1:$((CONSUMER_PORT + 100 + $1))" exec nohup target/release/consumer </dev/null >"$LOG_DIR/chaos-consumer-$1.log" 2>&1) &
    extra_pids+=("$!")
    rebalances=$((rebalances + 1))
    log "fault: consumer-$1 joins the group (pid $!)"
}

leave() { # leave INDEX: SIGTERM an extra consumer (it drains and leaves the group)
    kill -TERM "${extra_pids[$1]}" 2>/dev/null || true
    rebalances=$((rebalances + 1))
    log "fault: extra consumer pid ${extra_pids[$1]} leaves the group"
}

restart_postgres() {
    if [ "$CHAOS_PG_RESTART" = 0 ] || ! command -v pg_ctlcluster >/dev/null; then
        log "skipping the PostgreSQL restart"
        return
    fi
    local version t0 went_red=no
    version=$(ls /etc/postgresql | sort -V | tail -1)
    t0=$(date +%s%N)
    log "fault: restarting PostgreSQL $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main stop -m fast
    curl -fsS -o /dev/null "$PRODUCER_URL/ready" 2>/dev/null || went_red=yes
    sleep 2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    pg_restarts=1
    wait_ready "$PRODUCER_URL/ready"
    recoveries+=("PostgreSQL restart: producer /ready red while down: $went_red; green again after $(ms_since "$t0") ms")
}

stop_producer() {
    local pid t0
    pid=$(cat "$(pid_file producer)")
    t0=$(date +%s%N)
    log "fault: producer (pid $pid) stopped with SIGTERM mid-run; restarting with scripts/up.sh"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    producer_stops=1
    UP_WAIT_SETTLED=0 scripts/up.sh >/dev/null 2>&1 || warn "up.sh failed after the producer stop"
    recoveries+=("producer SIGTERM: $(ms_since "$t0") ms to ready again")
}

log "chaos run: $ORDERS flash-sale orders at $RATE/s, $KILLS consumer kills"
target/release/loadgen --workloads flash-sale --orders "$ORDERS" --rate "$RATE" --idempotency-keys \
    --warmup 0 --skip-references --open-loop-fraction 0 --timeout-seconds 300 --out "$OUT" \
    --producer-url "$PRODUCER_URL" >"$LOG_DIR/chaos-loadgen.log" 2>&1 &
loadgen_pid=$!

span=$(( ORDERS / RATE ))
step=$(( span / (KILLS + 5) ))
[ "$step" -lt 2 ] && step=2
t=$step
extra_consumer 2;                     at $((t += step))
kill_consumer;                        at $((t += step))
extra_consumer 3;                     at $((t += step))
restart_postgres;                     at $((t += step))
leave 0;                              at $((t += step))
stop_producer;                        at $((t += step))
while [ "$kills" -lt "$KILLS" ]; do
    kill_consumer;                    at $((t += step))
done
leave 1

log "waiting for the load generator to finish and check"
set +e
wait "$loadgen_pid"
verdict=$?
set -e
loadgen_pid=""

report=$(ls -t "$OUT"/bench-*.json 2>/dev/null | head -1)
echo
echo "Chaos report ($(date -u '+%Y-%m-%d %H:%M UTC'), command: ORDERS=$ORDERS RATE=$RATE KILLS=$KILLS scripts/chaos.sh)"
python3 - "$report" "$kills" "$rebalances" "$pg_restarts" "$producer_stops" <<'PY'
import json, sys
path, kills, rebalances, pg, producer = sys.argv[1:]
run = json.load(open(path))["runs"][0]
c = run["checks"]
rows = [
    ("faults injected", f"{kills} consumer SIGKILLs, {rebalances} group joins/leaves, {pg} PostgreSQL restart, {producer} producer SIGTERM"),
    ("orders accepted (202)", c["accepted"]),
    ("accepted orders in the database", c["accepted_and_present"]),
    ("orders not accounted for by a 202", c["unexpected"]),
    ("duplicates", "0 by construction (order_id primary key); see the line above for extra orders"),
    ("oversold units", c["oversold_units"]),
    ("invariant violations", c["invariant_violations"]),
    ("requests given up by the client", run["failed_orders"]),
]
print("| measure | value |\n|---|---|")
for name, value in rows:
    print(f"| {name} | {value} |")
PY
for line in "${recoveries[@]}"; do echo "- recovery: $line"; done
if [ "$verdict" -ne 0 ]; then
    echo "CHAOS RUN FAILED (see $LOG_DIR/chaos-loadgen.log)"
    exit 1
fi
echo "CHAOS RUN PASSED"
