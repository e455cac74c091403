#!/usr/bin/env bash
# The backlog run: the consumer is paused while ORDERS orders (default 10,000,000) go through
# POST /orders/batch; then it is resumed, and the run passes only when every order that got a
# 202 is in PostgreSQL exactly once, with nothing oversold. Starts the stack (scripts/up.sh,
# the default broker unless BROKER or KAFKA_BROKERS say otherwise) with an admin token.
# RESTART_BROKER=1 SIGKILLs the broker while it holds the whole backlog and starts it again
# (scripts/up.sh) before the consumer resumes. Results land in bench-results/backlog/. Extra
# arguments go to loadgen.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ORDERS="${ORDERS:-10000000}"
CONSUMER_ADMIN_URL="${CONSUMER_ADMIN_URL:-http://127.0.0.1:8081}"
export ADMIN_TOKEN="${ADMIN_TOKEN:-backlog-test}"

# --pause-consumer pauses one consumer; others in the group would drain the backlog.
for i in $(extra_consumer_indexes); do
    if is_running "$(consumer_name "$i")"; then
        die "$(consumer_name "$i") runs too: the backlog run pauses one consumer; scale down first (CONSUMERS=1 scripts/up.sh)"
    fi
done
if is_running consumer; then
    code="$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $ADMIN_TOKEN" "$CONSUMER_ADMIN_URL/resume" || true)"
    [ "$code" = 200 ] || die "the running consumer does not take ADMIN_TOKEN (HTTP $code); restart the stack: scripts/down.sh && ADMIN_TOKEN=... $0"
fi
scripts/up.sh
cargo build --release -p orderflow-bench
extra=()
if [ "${RESTART_BROKER:-0}" = 1 ]; then
    broker=""
    for name in tansu dev-broker; do
        if [ -z "$broker" ] && is_running "$name"; then broker="$name"; fi
    done
    [ -n "$broker" ] || die "RESTART_BROKER=1 needs a local broker started by up.sh"
    extra=(--before-resume "kill -KILL \$(cat '$(pid_file "$broker")') && sleep 1 && scripts/up.sh")
fi
# Orders are generated and serialised up front: about 250 bytes of memory each.
exec target/release/loadgen --workloads flash-sale --orders "$ORDERS" --warmup 0 --open-loop-fraction 0 \
    --skip-references --pause-consumer "$CONSUMER_ADMIN_URL" --timeout-seconds 7200 \
    --out bench-results/backlog "${extra[@]}" "$@"
