#!/usr/bin/env bash
# Oversell check against a running stack (scripts/up.sh): give one product STOCK units,
# fire ORDERS concurrent single-unit orders at it, and verify in PostgreSQL that exactly
# min(ORDERS, STOCK) were reserved and the inventory still adds up.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

usage() {
    cat <<EOF
Usage: scripts/race-test.sh [--scenario oversell|lifecycle] [--product ID] [--stock S] [--orders N]
                           [--concurrency C] [--hold SECONDS]

Scenarios:
  oversell   (default) ORDERS concurrent orders for STOCK units: exactly min(ORDERS, STOCK)
             reserved, the rest rejected, the inventory adds up.
  lifecycle  the same race with holds of HOLD seconds, then random confirms (CONFIRM_PCT)
             and cancels (CANCEL_PCT) from CONCURRENCY clients while the rest expire:
             sold = confirmed units, no hold left, available + sold = stock, every command
             decided, one final event per order in order-events (scripts/race-lifecycle.sh).

Each option can also be given as an environment variable:
  PRODUCT      product to race on                (default PROD001)
  STOCK        stock the product is reset to     (default 50)
  ORDERS       number of single-unit orders      (default 200)
  CONCURRENCY  parallel curl requests            (default 50)
  SCENARIO     oversell or lifecycle             (default oversell)
  HOLD         lifecycle: hold_seconds of orders (default 5)
  CONFIRM_PCT  lifecycle: orders confirmed, %     (default 50)
  CANCEL_PCT   lifecycle: orders cancelled, %     (default 25)
  PRODUCER_URL producer base URL                 (default http://127.0.0.1:8080)
  DATABASE_URL database the consumer writes to   (default $DEFAULT_DATABASE_URL)

The product's stock is overwritten (lifecycle: and its live holds end). Other traffic for the same product during the
run will make the inventory checks fail.
EOF
}

SCENARIO="${SCENARIO:-oversell}"
PRODUCT="${PRODUCT:-PROD001}"
STOCK="${STOCK:-50}"
ORDERS="${ORDERS:-200}"
CONCURRENCY="${CONCURRENCY:-50}"
PRODUCER_URL="${PRODUCER_URL:-http://127.0.0.1:8080}"
PRODUCER_URL="${PRODUCER_URL%/}"
DATABASE_URL="${DATABASE_URL:-$DEFAULT_DATABASE_URL}"
WAIT_TIMEOUT=120

while [ $# -gt 0 ]; do
    case "$1" in
        --product) PRODUCT="${2:?--product needs a value}"; shift 2 ;;
        --stock) STOCK="${2:?--stock needs a value}"; shift 2 ;;
        --orders) ORDERS="${2:?--orders needs a value}"; shift 2 ;;
        --concurrency) CONCURRENCY="${2:?--concurrency needs a value}"; shift 2 ;;
        --scenario) SCENARIO="${2:?--scenario needs a value}"; shift 2 ;;
        --hold) HOLD="${2:?--hold needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

case "$SCENARIO" in
    oversell) ;;
    lifecycle)
        export PRODUCT STOCK ORDERS CONCURRENCY PRODUCER_URL DATABASE_URL
        [ -n "${HOLD:-}" ] && export HOLD
        exec scripts/race-lifecycle.sh
        ;;
    *) usage >&2; die "unknown scenario: $SCENARIO" ;;
esac

# STOCK is interpolated into SQL as a literal, so it must really be a number.
for v in STOCK ORDERS CONCURRENCY; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got: ${!v})"
done
((ORDERS > 0)) || die "ORDERS must be at least 1"
((CONCURRENCY > 0)) || die "CONCURRENCY must be at least 1"
[[ "$PRODUCT" =~ ^[A-Za-z0-9_.-]+$ ]] || die "PRODUCT must be a plain id (letters, digits, _ . -)"

command -v curl >/dev/null 2>&1 || die "curl is required"
command -v psql >/dev/null 2>&1 || die "psql is required (apt-get install postgresql-client)"

sql() { psql -w -X -q -At -v ON_ERROR_STOP=1 -d "$DATABASE_URL" "$@"; }

curl -fsS -o /dev/null --max-time 5 "$PRODUCER_URL/health" ||
    die "producer not reachable at $PRODUCER_URL; start the stack with scripts/up.sh"
sql -c 'SELECT 1' >/dev/null || die "cannot connect to $DATABASE_URL"

# One transaction under the product's row lock, as the consumer's own: live holds of earlier
# runs end (expired), so that no later expiry gives their units to this run's product.
log "resetting $PRODUCT to stock $STOCK (ending its live holds)"
updated="$(sql -v pid="$PRODUCT" -v s="$STOCK" <<<"
    BEGIN;
    SELECT product_id FROM inventory WHERE product_id = :'pid' FOR UPDATE \\g /dev/null
    UPDATE orders SET status = 'expired', reason = 'hold_expired', status_changed_at = now()
     WHERE product_id = :'pid' AND status = 'reserved';
    UPDATE inventory
       SET available_quantity = :s, reserved_quantity = 0, total_quantity = :s, sold_quantity = 0,
           received_quantity = :s, updated_at = now()
     WHERE product_id = :'pid'
    RETURNING product_id;
    COMMIT;")"
[ -n "$updated" ] || die "product $PRODUCT does not exist in the inventory table (run 'consumer migrate' to seed PROD001..PROD010)"

start_ts="$(sql -c 'SELECT now()')"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Runs in xargs' children, so it gets its inputs from exported variables.
fire_one() {
    local i="$1" body code
    body="$(printf '{"customer_id":"RACE-CUST-%s","product_id":"%s","quantity":1,"amount":9.99}' "$i" "$RACE_PRODUCT")"
    code="$(curl -sS -o "$RACE_TMP/body.$i" -w '%{http_code}' --max-time 30 \
        -H 'Content-Type: application/json' -d "$body" "$RACE_URL/order" 2>"$RACE_TMP/err.$i")" || true
    printf '%s\n' "${code:-000}" >"$RACE_TMP/code.$i"
}
export -f fire_one
export RACE_TMP="$TMP" RACE_PRODUCT="$PRODUCT" RACE_URL="$PRODUCER_URL"

log "firing $ORDERS orders for $PRODUCT with concurrency $CONCURRENCY"
fire_start=$(date +%s%N)
# shellcheck disable=SC2016  # $1 is expanded by the child bash, not here
seq 1 "$ORDERS" | xargs -P "$CONCURRENCY" -n 1 bash -c 'fire_one "$1"' _
fire_ms=$((($(date +%s%N) - fire_start) / 1000000))

accepted=0
failed=0
: >"$TMP/ids"
for i in $(seq 1 "$ORDERS"); do
    code="$(cat "$TMP/code.$i" 2>/dev/null || echo 000)"
    id="$(sed -nE 's/.*"order_id"[[:space:]]*:[[:space:]]*"([0-9a-fA-F-]{36})".*/\1/p' "$TMP/body.$i" 2>/dev/null | head -n1)"
    if [ "$code" = "202" ] && [ -n "$id" ]; then
        echo "$id" >>"$TMP/ids"
        accepted=$((accepted + 1))
    else
        failed=$((failed + 1))
        if ((failed <= 5)); then
            warn "request $i: HTTP $code $(head -c 200 "$TMP/body.$i" 2>/dev/null) $(head -c 200 "$TMP/err.$i" 2>/dev/null)"
        fi
    fi
done
log "accepted $accepted/$ORDERS in ${fire_ms} ms ($failed failed)"

# One Postgres array literal of all ids; fine for the sizes this test is meant for.
ids="{$(paste -sd, "$TMP/ids")}"
count_sql="SELECT count(*) FROM orders WHERE order_id = ANY(:'ids'::uuid[]);"

log "waiting up to ${WAIT_TIMEOUT}s for $accepted orders to be processed"
wait_start=$SECONDS
processed=0
while :; do
    processed="$(sql -v ids="$ids" <<<"$count_sql")"
    ((processed >= accepted)) && break
    ((SECONDS - wait_start >= WAIT_TIMEOUT)) && break
    sleep 1
done
wait_s=$((SECONDS - wait_start))

row="$(sql -F ' ' -v ids="$ids" -v pid="$PRODUCT" <<<"
    WITH race AS (SELECT * FROM orders WHERE order_id = ANY(:'ids'::uuid[]))
    SELECT (SELECT count(*) FROM race),
           (SELECT count(*) FROM race WHERE status = 'reserved'),
           (SELECT count(*) FROM race WHERE status = 'rejected' AND reason = 'insufficient_stock'),
           (SELECT count(*) FROM race WHERE status = 'rejected' AND reason IS DISTINCT FROM 'insufficient_stock'),
           (SELECT coalesce(sum(quantity), 0) FROM race WHERE status = 'reserved'),
           i.available_quantity, i.reserved_quantity, i.total_quantity
      FROM inventory i WHERE i.product_id = :'pid';")"
[ -n "$row" ] || die "product $PRODUCT disappeared from the inventory table"
read -r n_total n_reserved n_insufficient n_other_rejected reserved_sum avail reserved total <<<"$row"

expected_reserved=$((accepted < STOCK ? accepted : STOCK))
expected_rejected=$((accepted - expected_reserved))

cat <<EOF

Race test summary
  product            $PRODUCT (stock reset to $STOCK at $start_ts)
  orders sent        $ORDERS (concurrency $CONCURRENCY) in ${fire_ms} ms
  accepted (202)     $accepted    failed: $failed
  processed in DB    $n_total/$accepted (waited ${wait_s}s)
  reserved           $n_reserved (expected $expected_reserved)
  rejected           $n_insufficient insufficient_stock, $n_other_rejected other (expected $expected_rejected insufficient_stock)
  inventory          available=$avail reserved=$reserved total=$total

EOF

violations=0
check() {
    local name="$1"
    shift
    if "$@"; then
        echo "PASS  $name"
    else
        echo "FAIL  $name"
        violations=$((violations + 1))
    fi
}
check "every request answered 202 with an order_id ($failed failed)" test "$failed" -eq 0
check "all accepted orders processed within ${WAIT_TIMEOUT}s ($n_total/$accepted)" test "$n_total" -eq "$accepted"
check "exactly min(accepted, stock) = $expected_reserved reserved (got $n_reserved)" test "$n_reserved" -eq "$expected_reserved"
check "the other $expected_rejected rejected with insufficient_stock (got $n_insufficient)" test "$n_insufficient" -eq "$expected_rejected"
check "no order rejected for another reason (got $n_other_rejected)" test "$n_other_rejected" -eq 0
check "available + reserved = total ($avail + $reserved = $total)" test $((avail + reserved)) -eq "$total"
check "reserved_quantity = reserved orders' quantity ($reserved = $reserved_sum)" test "$reserved" -eq "$reserved_sum"
check "total_quantity unchanged ($total = $STOCK)" test "$total" -eq "$STOCK"
check "available_quantity >= 0 ($avail)" test "$avail" -ge 0

echo
if ((violations > 0)); then
    echo "RACE TEST FAILED: $violations check(s) violated"
    exit 1
fi
echo "RACE TEST PASSED"
