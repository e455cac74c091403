#!/usr/bin/env bash
# Benchmark orderflow: starts the local stack (scripts/up.sh) unless PRODUCER_URL is given,
# then runs the Rust load generator. Every argument goes to it; `scripts/bench.sh --help`
# lists them (workloads, order counts, batch size, clients, seed, references, ...).
# Results (JSON, Markdown, PNG chart) land in bench-results/ (git-ignored).
# It creates products of its own (BENCH-<run id>-...), measures only their orders, and deletes
# them afterwards (--keep-data keeps them); stock and orders already there are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ensure_rust_tools
# The chart's text needs a font file; this package ships DejaVu Sans.
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || apt_install fonts-dejavu-core

# --help only prints the options: no stack needed for that.
wants_help=false
for arg in "$@"; do
    case "$arg" in -h|--help) wants_help=true ;; esac
done
if [ -z "${PRODUCER_URL:-}" ] && ! $wants_help; then
    scripts/up.sh
fi
cargo build --release -p orderflow-bench
exec target/release/loadgen "$@"
