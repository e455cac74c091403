#!/usr/bin/env bash
# Oversell check against a running stack (scripts/up.sh): give one product STOCK units,
# fire ORDERS concurrent single-unit orders at it, and verify in PostgreSQL that exactly
# min(ORDERS, STOCK) were reserved and the inventory still adds up.
#
# With --carts (CARTS=1): two products get STOCK units each, and the orders are a third
# single-unit orders for each product and a third carts of one unit of both, all at once.
# Verified: no oversell, every product's reserved stock is exactly the lines of its reserved
# orders (all or nothing), and a product that turned a line away is sold out.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

usage() {
    cat <<EOF
Usage: scripts/race-test.sh [--scenario oversell|lifecycle] [--product ID] [--stock S] [--orders N]
                           [--concurrency C] [--hold SECONDS] [--carts [--product2 ID]]

Scenarios:
  oversell   (default) ORDERS concurrent orders for STOCK units: exactly min(ORDERS, STOCK)
             reserved, the rest rejected, the inventory adds up. With --carts: carts over
             PRODUCT and PRODUCT2 race single-line orders, checked cart-aware.
  lifecycle  the same race with holds of HOLD seconds, then random confirms (CONFIRM_PCT)
             and cancels (CANCEL_PCT) from CONCURRENCY clients while the rest expire:
             sold = confirmed units, no hold left, available + sold = stock, every command
             decided, one final event per order in order-events (scripts/race-lifecycle.sh).

Each option can also be given as an environment variable:
  PRODUCT      product to race on                (default PROD001)
  CARTS        1: carts against single-line orders on PRODUCT and PRODUCT2 (default 0)
  PRODUCT2     the second product with --carts   (default PROD002)
  STOCK        stock the product is reset to     (default 50)
  ORDERS       number of single-unit orders      (default 200)
  CONCURRENCY  parallel curl requests            (default 50)
  SCENARIO     oversell or lifecycle             (default oversell)
  HOLD         lifecycle: hold_seconds of orders (default 5)
  CONFIRM_PCT  lifecycle: orders confirmed, %     (default 50)
  CANCEL_PCT   lifecycle: orders cancelled, %     (default 25)
  PRODUCER_URL producer base URL                 (default http://127.0.0.1:8080)
  DATABASE_URL database the consumer writes to   (default $DEFAULT_DATABASE_URL)

The products' stock is overwritten and their live holds end (expired, carts whole). Other
traffic for the same products during the
run will make the inventory checks fail.
EOF
}

SCENARIO="${SCENARIO:-oversell}"
PRODUCT="${PRODUCT:-PROD001}"
PRODUCT2="${PRODUCT2:-PROD002}"
CARTS="${CARTS:-0}"
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
        --product2) PRODUCT2="${2:?--product2 needs a value}"; shift 2 ;;
        --carts) CARTS=1; shift ;;
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
[[ "$CARTS" =~ ^[01]$ ]] || die "CARTS must be 0 or 1 (got: $CARTS)"
if [ "$CARTS" = 1 ]; then
    [[ "$PRODUCT2" =~ ^[A-Za-z0-9_.-]+$ ]] || die "PRODUCT2 must be a plain id (letters, digits, _ . -)"
    [ "$PRODUCT2" != "$PRODUCT" ] || die "PRODUCT2 must differ from PRODUCT"
fi

command -v curl >/dev/null 2>&1 || die "curl is required"
command -v psql >/dev/null 2>&1 || die "psql is required (apt-get install postgresql-client)"

sql() { psql -w -X -q -At -v ON_ERROR_STOP=1 -d "$DATABASE_URL" "$@"; }

curl -fsS -o /dev/null --max-time 5 "$PRODUCER_URL/health" ||
    die "producer not reachable at $PRODUCER_URL; start the stack with scripts/up.sh"
sql -c 'SELECT 1' >/dev/null || die "cannot connect to $DATABASE_URL"

# One transaction under the products' row locks, as the consumer's own: live holds of earlier
# runs end (expired; a cart whole, its units on other products given back), so that no later
# expiry gives their units to this run's products.
reset_stock() {
    local products="$1" updated
    log "resetting $products to stock $STOCK (ending their live holds)"
    updated="$(sql -v plist="$products" -v s="$STOCK" <<<"
        BEGIN;
        SELECT product_id FROM inventory WHERE product_id = ANY(string_to_array(:'plist', ','))
         ORDER BY product_id FOR UPDATE \\g /dev/null
        WITH ended AS (
            UPDATE orders SET status = 'expired', reason = 'hold_expired', status_changed_at = now()
             WHERE status = 'reserved'
               AND order_id IN (SELECT order_id FROM order_items WHERE product_id = ANY(string_to_array(:'plist', ',')))
            RETURNING order_id)
        UPDATE inventory i
           SET available_quantity = i.available_quantity + back.q, reserved_quantity = i.reserved_quantity - back.q,
               updated_at = now()
          FROM (SELECT l.product_id, sum(l.quantity) AS q FROM order_lines l JOIN ended USING (order_id)
                 WHERE NOT l.product_id = ANY(string_to_array(:'plist', ',')) GROUP BY l.product_id) AS back
         WHERE i.product_id = back.product_id;
        UPDATE inventory
           SET available_quantity = :s, reserved_quantity = 0, total_quantity = :s, sold_quantity = 0,
               received_quantity = :s, updated_at = now()
         WHERE product_id = ANY(string_to_array(:'plist', ','))
        RETURNING product_id;
        COMMIT;")"
    [ "$(wc -w <<<"$updated")" = "$(tr ',' ' ' <<<"$products" | wc -w)" ] ||
        die "not every product of $products exists in the inventory table (run 'consumer migrate' to seed PROD001..PROD010)"
}
if [ "$CARTS" = 1 ]; then
    reset_stock "$PRODUCT,$PRODUCT2"
else
    reset_stock "$PRODUCT"
fi

start_ts="$(sql -c 'SELECT now()')"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Runs in xargs' children, so it gets its inputs from exported variables.
fire_one() {
    local i="$1" body code
    if [ "$RACE_CARTS" = 1 ]; then
        # A third single-line orders for each product, a third carts of both.
        case $((i % 3)) in
            0) body="$(printf '{"customer_id":"RACE-CUST-%s","product_id":"%s","quantity":1,"amount":9.99}' "$i" "$RACE_PRODUCT")" ;;
            1) body="$(printf '{"customer_id":"RACE-CUST-%s","product_id":"%s","quantity":1,"amount":9.99}' "$i" "$RACE_PRODUCT2")" ;;
            *) body="$(printf '{"customer_id":"RACE-CUST-%s","lines":[{"product_id":"%s","quantity":1,"amount":9.99},{"product_id":"%s","quantity":1,"amount":4.99}]}' "$i" "$RACE_PRODUCT" "$RACE_PRODUCT2")" ;;
        esac
    else
        body="$(printf '{"customer_id":"RACE-CUST-%s","product_id":"%s","quantity":1,"amount":9.99}' "$i" "$RACE_PRODUCT")"
    fi
    code="$(curl -sS -o "$RACE_TMP/body.$i" -w '%{http_code}' --max-time 30 \
        -H 'Content-Type: application/json' -d "$body" "$RACE_URL/order" 2>"$RACE_TMP/err.$i")" || true
    printf '%s\n' "${code:-000}" >"$RACE_TMP/code.$i"
}
export -f fire_one
export RACE_TMP="$TMP" RACE_PRODUCT="$PRODUCT" RACE_PRODUCT2="$PRODUCT2" RACE_CARTS="$CARTS" RACE_URL="$PRODUCER_URL"

if [ "$CARTS" = 1 ]; then
    log "firing $ORDERS orders (single-line for $PRODUCT, for $PRODUCT2, and carts of both) with concurrency $CONCURRENCY"
else
    log "firing $ORDERS orders for $PRODUCT with concurrency $CONCURRENCY"
fi
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

if [ "$CARTS" = 1 ]; then
    n_total="$(sql -v ids="$ids" <<<"$count_sql")"
    # Per product: the reserved lines of the race's orders (carts through the order_items
    # view), the lines turned away (a rejected single-line order, or a cart line marked
    # short), and the inventory row.
    per_product="$(sql -F ' ' -v ids="$ids" -v p1="$PRODUCT" -v p2="$PRODUCT2" <<<"
        WITH race AS (SELECT i.*, o.line_count FROM order_items i JOIN orders o USING (order_id)
                       WHERE i.order_id = ANY(:'ids'::uuid[]))
        SELECT inv.product_id,
               (SELECT coalesce(sum(quantity), 0) FROM race r WHERE r.product_id = inv.product_id AND r.status = 'reserved'),
               (SELECT count(*) FROM race r WHERE r.product_id = inv.product_id AND r.status = 'rejected'
                  AND (r.problem = 'insufficient_stock' OR (r.line_count = 1 AND r.reason = 'insufficient_stock'))),
               inv.available_quantity, inv.reserved_quantity, inv.total_quantity
          FROM inventory inv WHERE inv.product_id IN (:'p1', :'p2') ORDER BY inv.product_id;")"
    cart_row="$(sql -F ' ' -v ids="$ids" <<<"
        WITH race AS (SELECT * FROM orders WHERE order_id = ANY(:'ids'::uuid[]))
        SELECT (SELECT count(*) FROM race WHERE line_count > 1),
               (SELECT count(*) FROM race WHERE line_count > 1 AND status = 'reserved'),
               (SELECT count(*) FROM race WHERE status = 'rejected' AND reason IS DISTINCT FROM 'insufficient_stock'),
               (SELECT count(*) FROM race o WHERE o.line_count > 1 AND o.status = 'rejected' AND NOT EXISTS
                  (SELECT 1 FROM order_lines l WHERE l.order_id = o.order_id AND l.problem IS NOT NULL));")"
    read -r n_carts n_carts_reserved n_other_rejected n_unnamed <<<"$cart_row"
    cat <<EOF

Race test summary (carts)
  products           $PRODUCT, $PRODUCT2 (stock reset to $STOCK each at $start_ts)
  orders sent        $ORDERS (concurrency $CONCURRENCY) in ${fire_ms} ms, $n_carts of them carts
  accepted (202)     $accepted    failed: $failed
  processed in DB    $n_total/$accepted (waited ${wait_s}s)
  carts reserved     $n_carts_reserved of $n_carts
  per product        product reserved_lines turned_away available reserved total
$(sed 's/^/                     /' <<<"$per_product")

EOF
    check "every request answered 202 with an order_id ($failed failed)" test "$failed" -eq 0
    check "all accepted orders processed within ${WAIT_TIMEOUT}s ($n_total/$accepted)" test "$n_total" -eq "$accepted"
    check "no order rejected for another reason than insufficient_stock (got $n_other_rejected)" test "$n_other_rejected" -eq 0
    check "every rejected cart names its short line(s) (unnamed: $n_unnamed)" test "$n_unnamed" -eq 0
    while read -r product lines_reserved turned_away avail reserved total; do
        check "$product: reserved_quantity = its reserved lines ($reserved = $lines_reserved)" test "$reserved" -eq "$lines_reserved"
        check "$product: available + reserved = total ($avail + $reserved = $total)" test $((avail + reserved)) -eq "$total"
        check "$product: total_quantity unchanged ($total = $STOCK)" test "$total" -eq "$STOCK"
        check "$product: available_quantity >= 0 ($avail)" test "$avail" -ge 0
        # Every line is one unit: a line turned away means the product had run out.
        if ((turned_away > 0)); then
            check "$product: turned $turned_away line(s) away, so it is sold out (available $avail)" test "$avail" -eq 0
        fi
    done <<<"$per_product"
    echo
    if ((violations > 0)); then
        echo "RACE TEST FAILED: $violations check(s) violated"
        exit 1
    fi
    echo "RACE TEST PASSED"
    exit 0
fi

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
