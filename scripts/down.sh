#!/usr/bin/env bash
# Stops what up.sh started. Producer first so no new orders arrive while the consumer drains,
# broker last so both can still flush/commit on the way down.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

stop() {
    local name="$1" f pid
    f="$(pid_file "$name")"
    if ! is_running "$name"; then
        [ -f "$f" ] && log "$name not running (removing stale pid file)"
        rm -f "$f"
        return 0
    fi
    pid="$(cat "$f")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # SIGTERM triggers a graceful drain; give it time before forcing.
    local i
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "$name did not stop within 30s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    rm -f "$f"
    log "$name stopped"
}

for name in producer consumer dev-broker tansu; do
    stop "$name"
done
log "all stopped"
