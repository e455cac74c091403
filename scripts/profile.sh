#!/usr/bin/env bash
# Profiles the local stack under load: perf samples the whole machine while the load
# generator runs one workload, then writes a flame graph per component (producer, consumer,
# dev broker, PostgreSQL, load generator) and a table of each one's share of the CPU samples.
# This is how the throughput work in issue #3 found what to fix; see README "Performance".
#
#   scripts/profile.sh                      # flash-sale, 200,000 orders
#   WORKLOAD=catalog ORDERS=100000 scripts/profile.sh
#
# Output: bench-results/profile-<time>/ (git-ignored): *.svg, *.folded, shares.txt.
# The run is bounded (ORDERS), loopback only, and stops perf and the load generator it starts.
# It needs perf (Debian package linux-perf, installed if missing) and inferno (cargo install).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

WORKLOAD="${WORKLOAD:-flash-sale}"
ORDERS="${ORDERS:-200000}"
FREQUENCY="${FREQUENCY:-999}"

ensure_rust_tools
command -v perf >/dev/null 2>&1 || apt_install linux-perf
command -v inferno-flamegraph >/dev/null 2>&1 || cargo install --locked inferno
# Kernel frames and other users' processes are hidden from perf by default.
if [ "$(cat /proc/sys/kernel/perf_event_paranoid)" -gt -1 ]; then
    as_root sh -c 'echo -1 > /proc/sys/kernel/perf_event_paranoid'
fi

scripts/up.sh
cargo build --release -p orderflow-bench
out="bench-results/profile-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
loadgen=(target/release/loadgen --workloads "$WORKLOAD" --warmup 0 --open-loop-fraction 0 --skip-references --out "$out")

log "warm-up run (not profiled)"
"${loadgen[@]}" --orders 20000 >/dev/null

log "profiling $WORKLOAD, $ORDERS orders"
perf record -F "$FREQUENCY" -a -g -o "$out/perf.data" 2>"$out/perf-record.log" &
perf_pid=$!
trap 'kill -INT "$perf_pid" 2>/dev/null || true' EXIT
sleep 1 # perf needs a moment before it samples
"${loadgen[@]}" --orders "$ORDERS" 2>"$out/loadgen.log" &
loadgen_pid=$!
wait "$loadgen_pid"
kill -INT "$perf_pid"
wait "$perf_pid" || true
trap - EXIT

# component -> perf script filter
declare -A filters=(
    [producer]="--pid $(cat "$PID_DIR/producer.pid")"
    [consumer]="--pid $(cat "$PID_DIR/consumer.pid")"
    [loadgen]="--pid $loadgen_pid"
    [postgres]="--comms postgres"
)
if is_running dev-broker; then
    filters[dev-broker]="--pid $(cat "$PID_DIR/dev-broker.pid")"
fi

log "writing flame graphs"
perf script -i "$out/perf.data" 2>/dev/null | inferno-collapse-perf --all >"$out/all.folded"
total=$(awk '{s += $NF} END {print s + 0}' "$out/all.folded")
{
    printf '%-12s %10s %7s\n' component weight share
    for component in "${!filters[@]}"; do
        # shellcheck disable=SC2086 # the filter is two words on purpose
        perf script -i "$out/perf.data" ${filters[$component]} 2>/dev/null |
            inferno-collapse-perf --all >"$out/$component.folded"
        inferno-flamegraph --title "$component: $WORKLOAD, $ORDERS orders" \
            <"$out/$component.folded" >"$out/$component.svg" 2>/dev/null || true
        samples=$(awk '{s += $NF} END {print s + 0}' "$out/$component.folded")
        printf '%-12s %10d %6.1f%%\n' "$component" "$samples" "$(awk -v a="$samples" -v b="$total" 'BEGIN {print b ? 100 * a / b : 0}')"
    done | sort -k2 -nr
    printf '%-12s %10d  (whole machine, idle included)\n' total "$total"
} | tee "$out/shares.txt"
inferno-flamegraph --title "whole machine: $WORKLOAD, $ORDERS orders" <"$out/all.folded" >"$out/all.svg" 2>/dev/null || true
grep -E 'end-to-end/s' "$out/loadgen.log" || true
log "flame graphs in $out/"
