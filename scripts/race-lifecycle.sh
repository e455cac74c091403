#!/usr/bin/env bash
# The lifecycle race (scripts/race-test.sh --scenario lifecycle): CONCURRENCY clients place
# ORDERS single-unit orders with short holds for STOCK units of one product, and each client
# at once confirms (CONFIRM_PCT) or cancels (CANCEL_PCT) its order or leaves it, rejected
# ones included; the other holds expire. Commands race their own orders, each other and the
# sweeper; units a hold gives back go to later orders. Afterwards: sold = confirmed units, reserved = 0,
# available + sold = stock, every command decided, and one final event per order in
# order-events whose type matches the order's status. Prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

PRODUCT="${PRODUCT:-PROD001}"
STOCK="${STOCK:-50}"
ORDERS="${ORDERS:-200}"
CONCURRENCY="${CONCURRENCY:-50}"
HOLD="${HOLD:-5}"
CONFIRM_PCT="${CONFIRM_PCT:-50}"
CANCEL_PCT="${CANCEL_PCT:-25}"
PRODUCER_URL="${PRODUCER_URL:-http://127.0.0.1:8080}"
PRODUCER_URL="${PRODUCER_URL%/}"
DATABASE_URL="${DATABASE_URL:-$DEFAULT_DATABASE_URL}"
CONSUMER_BIN="${CONSUMER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/consumer}"
WAIT_TIMEOUT=120

for v in STOCK ORDERS CONCURRENCY HOLD CONFIRM_PCT CANCEL_PCT; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got: ${!v})"
done
((ORDERS > 0 && CONCURRENCY > 0)) || die "ORDERS and CONCURRENCY must be at least 1"
((HOLD >= 1 && HOLD <= 86400)) || die "HOLD must be from 1 to 86400 seconds"
((CONFIRM_PCT + CANCEL_PCT <= 100)) || die "CONFIRM_PCT + CANCEL_PCT must be at most 100"
[[ "$PRODUCT" =~ ^[A-Za-z0-9_.-]+$ ]] || die "PRODUCT must be a plain id (letters, digits, _ . -)"
command -v curl >/dev/null 2>&1 || die "curl is required"
command -v psql >/dev/null 2>&1 || die "psql is required (apt-get install postgresql-client)"
command -v jq >/dev/null 2>&1 || apt_install jq
[ -x "$CONSUMER_BIN" ] || die "no consumer binary at $CONSUMER_BIN (cargo build --release, or set CONSUMER_BIN)"

sql() { psql -w -X -q -At -v ON_ERROR_STOP=1 -d "$DATABASE_URL" "$@"; }
curl -fsS -o /dev/null --max-time 5 "$PRODUCER_URL/health" ||
    die "producer not reachable at $PRODUCER_URL; start the stack with scripts/up.sh"

# One transaction under the product's row lock, as the consumer's own: live holds of earlier
# runs end (expired), so that nothing but this run moves the product's stock. Carts too (a
# `race-test.sh --carts` run leaves carts over this product): a cart ends whole, its units on
# other products given back. Ending only single-line holds left 151 carts reserved on a reset
# row; when they expired, releasing them broke the CHECK on reserved_quantity.
log "resetting $PRODUCT to stock $STOCK (ending its live holds)"
updated="$(sql -v pid="$PRODUCT" -v s="$STOCK" <<<"
    BEGIN;
    SELECT product_id FROM inventory WHERE product_id = :'pid' FOR UPDATE \\g /dev/null
    WITH ended AS (
        UPDATE orders SET status = 'expired', reason = 'hold_expired', status_changed_at = now()
         WHERE status = 'reserved' AND order_id IN (SELECT order_id FROM order_items WHERE product_id = :'pid')
        RETURNING order_id)
    UPDATE inventory i
       SET available_quantity = i.available_quantity + back.q, reserved_quantity = i.reserved_quantity - back.q,
           updated_at = now()
      FROM (SELECT l.product_id, sum(l.quantity) AS q FROM order_lines l JOIN ended USING (order_id)
             WHERE l.product_id <> :'pid' GROUP BY l.product_id) AS back
     WHERE i.product_id = back.product_id;
    UPDATE inventory
       SET available_quantity = :s, reserved_quantity = 0, total_quantity = :s, sold_quantity = 0,
           received_quantity = :s, updated_at = now()
     WHERE product_id = :'pid'
    RETURNING product_id;
    COMMIT;")"
[ -n "$updated" ] || die "product $PRODUCT does not exist in the inventory table"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# One client: places its order, then at once (the order may still be in Kafka, so it names
# its customer) confirms it, cancels it, or leaves it to expire, at random.
fire_order() {
    local i="$1" body code id roll kind=""
    body="$(printf '{"customer_id":"LIFE-CUST-%s","product_id":"%s","quantity":1,"amount":9.99,"hold_seconds":%s}' "$i" "$RACE_PRODUCT" "$RACE_HOLD")"
    code="$(curl -sS -o "$RACE_TMP/body.$i" -w '%{http_code}' --max-time 30 \
        -H 'Content-Type: application/json' -d "$body" "$RACE_URL/order" 2>/dev/null)" || true
    printf '%s\n' "${code:-000}" >"$RACE_TMP/code.$i"
    [ "$code" = 202 ] || return 0
    roll=$((RANDOM % 100))
    if ((roll < RACE_CONFIRM_PCT)); then kind=confirm; elif ((roll < RACE_CONFIRM_PCT + RACE_CANCEL_PCT)); then kind=cancel; else return 0; fi
    id="$(sed -nE 's/.*"order_id"[[:space:]]*:[[:space:]]*"([0-9a-fA-F-]{36})".*/\1/p' "$RACE_TMP/body.$i" | head -n1)"
    code="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 -H 'Content-Type: application/json' \
        -d "{\"customer_id\":\"LIFE-CUST-$i\"}" "$RACE_URL/orders/$id/$kind" 2>/dev/null)" || true
    printf '%s %s %s\n' "$id" "$kind" "${code:-000}" >"$RACE_TMP/command.$i"
}
export -f fire_order
export RACE_TMP="$TMP" RACE_PRODUCT="$PRODUCT" RACE_URL="$PRODUCER_URL" RACE_HOLD="$HOLD" \
    RACE_CONFIRM_PCT="$CONFIRM_PCT" RACE_CANCEL_PCT="$CANCEL_PCT"

log "firing $ORDERS orders (hold ${HOLD}s) for $PRODUCT from $CONCURRENCY clients, each followed at once by a confirm ($CONFIRM_PCT%), a cancel ($CANCEL_PCT%) or nothing"
fire_start=$(date +%s%N)
# shellcheck disable=SC2016
seq 1 "$ORDERS" | xargs -P "$CONCURRENCY" -n 1 bash -c 'fire_order "$1"' _
fire_ms=$((($(date +%s%N) - fire_start) / 1000000))
: >"$TMP/ids"
for i in $(seq 1 "$ORDERS"); do
    [ "$(cat "$TMP/code.$i" 2>/dev/null)" = 202 ] || continue
    # Through a variable: the body has no final newline, and sed keeps it that way.
    id="$(sed -nE 's/.*"order_id"[[:space:]]*:[[:space:]]*"([0-9a-fA-F-]{36})".*/\1/p' "$TMP/body.$i" | head -n1)"
    [ -n "$id" ] && echo "$id" >>"$TMP/ids"
done
accepted="$(wc -l <"$TMP/ids")"
ids="{$(paste -sd, "$TMP/ids")}"
log "accepted $accepted/$ORDERS in ${fire_ms} ms; waiting for them to be processed"
wait_until() { # wait_until SQL EXPECTED: polls until the count query returns EXPECTED
    local start=$SECONDS
    while (($(sql -v ids="$ids" <<<"$1") != $2)); do
        ((SECONDS - start < WAIT_TIMEOUT)) || return 1
        sleep 0.5
    done
}
wait_until "SELECT count(*) FROM orders WHERE order_id = ANY(:'ids'::uuid[]);" "$accepted" || warn "not every accepted order was processed in time"

cat "$TMP"/command.* >"$TMP/command-codes" 2>/dev/null || : >"$TMP/command-codes"
commands="$(wc -l <"$TMP/command-codes")"
commands_accepted="$(awk '$3 == 202' "$TMP/command-codes" | wc -l)"
log "$commands_accepted/$commands commands accepted"

log "waiting for every hold to end (holds of ${HOLD}s) and every command to be decided"
wait_start=$SECONDS
wait_until "SELECT count(*) FROM orders WHERE order_id = ANY(:'ids'::uuid[]) AND status = 'reserved';" 0 || warn "holds still live after ${WAIT_TIMEOUT}s"
wait_until "SELECT count(*) FROM order_commands WHERE order_id = ANY(:'ids'::uuid[]) AND outcome = 'pending';" 0 || warn "commands still pending"
wait_until "SELECT count(*) FROM order_commands WHERE order_id = ANY(:'ids'::uuid[]);" "$commands_accepted" || warn "not every accepted command was recorded"
wait_s=$((SECONDS - wait_start))

read -r n_reserved n_rejected n_confirmed n_cancelled n_expired confirmed_units <<<"$(sql -F ' ' -v ids="$ids" <<<"
    SELECT count(*) FILTER (WHERE status = 'reserved'), count(*) FILTER (WHERE status = 'rejected'),
           count(*) FILTER (WHERE status = 'confirmed'), count(*) FILTER (WHERE status = 'cancelled'),
           count(*) FILTER (WHERE status = 'expired'), coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0)
      FROM orders WHERE order_id = ANY(:'ids'::uuid[]);")"
read -r c_applied c_refused c_pending refusals <<<"$(sql -F ' ' -v ids="$ids" <<<"
    SELECT count(*) FILTER (WHERE outcome = 'applied'), count(*) FILTER (WHERE outcome = 'refused'),
           count(*) FILTER (WHERE outcome = 'pending'),
           coalesce(string_agg(DISTINCT kind || ':' || reason, ',') FILTER (WHERE outcome = 'refused'), '-')
      FROM order_commands WHERE order_id = ANY(:'ids'::uuid[]);")"
read -r avail reserved total sold received <<<"$(sql -F ' ' -v pid="$PRODUCT" <<<"
    SELECT available_quantity, reserved_quantity, total_quantity, sold_quantity, received_quantity
      FROM inventory WHERE product_id = :'pid';")"

# Events: the run's orders' events from order-events; per order the distinct final event ids.
log "reading order-events"
RUST_LOG=error "$CONSUMER_BIN" events-dump --order-ids "$TMP/ids" 2>"$TMP/dump.err" | grep '^{' >"$TMP/events" ||
    { cat "$TMP/dump.err" >&2; warn "events-dump failed"; }
sql -F ' ' -v ids="$ids" <<<"SELECT order_id, status FROM orders WHERE order_id = ANY(:'ids'::uuid[]);" | sort >"$TMP/statuses"
jq -r 'select(.type | IN("rejected","confirmed","cancelled","expired")) | "\(.order_id) \(.type) \(.event_id)"' "$TMP/events" |
    sort -u | awk '{n[$1]++; t[$1]=$2} END {for (o in n) print o, n[o], t[o]}' | sort >"$TMP/finals"
events_total="$(wc -l <"$TMP/events")"
orders_with_one_final="$(awk '$2 == 1' "$TMP/finals" | wc -l)"
finals_matching="$(join "$TMP/statuses" "$TMP/finals" | awk '$2 == $4 && $3 == 1' | wc -l)"

printf '\nLifecycle race summary (%s, stock %s, holds %ss)\n' "$PRODUCT" "$STOCK" "$HOLD"
printf '  %-26s %s\n' "orders sent / accepted" "$ORDERS / $accepted (in ${fire_ms} ms, with the commands)" \
    "commands sent / accepted" "$commands / $commands_accepted" \
    "waited for the end" "${wait_s}s"
printf '\n  %-12s %8s\n' status orders
printf '  %-12s %8s\n' reserved "$n_reserved" rejected "$n_rejected" confirmed "$n_confirmed" cancelled "$n_cancelled" expired "$n_expired"
printf '\n  %-12s %8s\n' commands count
printf '  %-12s %8s\n' applied "$c_applied" refused "$c_refused" pending "$c_pending"
printf '  refusals: %s\n' "$refusals"
printf '\n  %-12s %8s\n' inventory units
printf '  %-12s %8s\n' available "$avail" reserved "$reserved" total "$total" sold "$sold" received "$received"
printf '\n  events read: %s; orders with exactly one final event id: %s, matching their status: %s\n\n' \
    "$events_total" "$orders_with_one_final" "$finals_matching"

violations=0
check() {
    local name="$1"
    shift
    if "$@"; then echo "PASS  $name"; else echo "FAIL  $name"; violations=$((violations + 1)); fi
}
check "every order answered 202 ($accepted/$ORDERS)" test "$accepted" -eq "$ORDERS"
check "every command answered 202 ($commands_accepted/$commands)" test "$commands_accepted" -eq "$commands"
check "no hold left (reserved orders $n_reserved, reserved units $reserved)" test $((n_reserved + reserved)) -eq 0
check "no more sold than stock ($sold <= $STOCK)" test "$sold" -le "$STOCK"
check "sold = confirmed units ($sold = $confirmed_units)" test "$sold" -eq "$confirmed_units"
check "available + sold = stock ($avail + $sold = $STOCK)" test $((avail + sold)) -eq "$STOCK"
check "received = available + reserved + sold ($received)" test "$received" -eq $((avail + reserved + sold))
check "every command decided ($c_pending pending, $((c_applied + c_refused))/$commands_accepted recorded)" test "$c_pending" -eq 0 -a $((c_applied + c_refused)) -eq "$commands_accepted"
check "applied commands = confirmed + cancelled orders ($c_applied = $((n_confirmed + n_cancelled)))" test "$c_applied" -eq $((n_confirmed + n_cancelled))
check "one final event per order, matching its status ($finals_matching/$accepted)" test "$finals_matching" -eq "$accepted"
echo
if ((violations > 0)); then
    echo "LIFECYCLE RACE FAILED: $violations check(s) violated"
    exit 1
fi
echo "LIFECYCLE RACE PASSED"
