#!/usr/bin/env bash
# The model checker (model/, issue #14) with deeper bounds than the test suite's, in release
# mode: per bound and per property set (safety = the `always` properties, liveness = the
# `eventually` ones), the states explored, the maximum depth and the time; then every
# mutation, which must be caught. Exits non-zero if a property fails or a mutation is missed.
#
#   scripts/model-check.sh                 # the bounds below
#   scripts/model-check.sh 1 2 1 0 2       # one run: crashes rebalances conflicts redeliveries max_clock
#   scripts/model-check.sh 1 1 1 0 0 --contended   # the same in the partial-commit world
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

log "cargo build --release -p orderflow-model --bin model-check"
cargo build --release -q -p orderflow-model --bin model-check
bin=target/release/model-check

run() {
    # One line per run: the bounds, the property set, and the checker's summary line.
    local out
    out="$("$bin" "$@" | grep -v '^        |')" || { printf '%s\n' "$out"; return 1; }
    printf '%-44s %s\n' "$(head -n1 <<<"$out" | sed 's/^budget Budget { \(.*\) }, max_clock \([0-9]*\), properties \([A-Za-z]*\).*/\1, clock \2, \3/')" "$(sed -n 2p <<<"$out")"
    if grep -q '^violated' <<<"$out"; then printf '%s\n' "$out"; return 1; fi
}

if [ "$#" -gt 0 ]; then
    "$bin" "$@"
    exit
fi

failed=0
log "issue #14 world (2 partitions, 2 members, 3 orders incl. a duplicate and a cart, 2 commands, clock 0..2)"
for bounds in "1 0 1 1 2" "0 2 0 0 2" "1 1 0 0 2"; do
    for set in safety liveness; do
        # shellcheck disable=SC2086  # the bounds are separate arguments
        run $bounds --properties "$set" || failed=1
    done
done

log "partial-commit world (one worker, a part of several components; SKIP LOCKED attempts commit the free ones)"
for bounds in "1 0 2 1 0" "1 1 2 0 0" "0 2 2 0 0"; do
    for set in safety liveness; do
        # shellcheck disable=SC2086
        run $bounds --contended --properties "$set" || failed=1
    done
done

log "mutations: each must be caught"
for mutation in OffsetsBeforeDb EventsBeforeCommit NoDedup ExpiryWithoutLock CancelBeforeOrder CartPartByPart StaleBatchOffsets GoAheadPerLine; do
    # A partial commit spends the conflict budget: GoAheadPerLine needs one.
    bounds="1 2 0 0 1"
    [ "$mutation" = GoAheadPerLine ] && bounds="1 2 1 0 1"
    # shellcheck disable=SC2086
    out="$("$bin" $bounds --mutation "$mutation" | grep -v '^        |')"
    if grep -q '^violated' <<<"$out"; then
        printf '%-20s caught: %s (%s)\n' "$mutation" "$(grep -m1 '^violated' <<<"$out" | sed 's/^violated: //')" "$(sed -n 2p <<<"$out")"
    else
        printf '%-20s MISSED\n' "$mutation"
        failed=1
    fi
done
exit "$failed"
