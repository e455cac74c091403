#!/usr/bin/env bash
# Stops what up.sh started. Producer first so no new orders arrive while the consumers drain,
# broker last so all of them can still flush/commit on the way down.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

stop_process producer
# Extra consumers (CONSUMERS=N scripts/up.sh), the last first, then the first one.
mapfile -t extra < <(extra_consumer_indexes | sort -rn)
for i in "${extra[@]}"; do
    stop_process "$(consumer_name "$i")"
done
for name in consumer dev-broker tansu; do
    stop_process "$name"
done
rm -f "$RUN_DIR/consumers"
log "all stopped"
