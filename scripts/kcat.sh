#!/usr/bin/env bash
# Debian's kcat against the local stack: `scripts/kcat.sh -L`, `scripts/kcat.sh -C -t orders-placed -e`.
# Without -b it talks to KAFKA_BROKERS (default 127.0.0.1:9092).
#
# Debian's kcat 1.7.1 is built against librdkafka 2.0.2, whose ApiVersions parsing fails
# against tansu ("Read underflow"). The same kcat works when it loads a current librdkafka, so
# this wrapper gives it the one that PyPI's confluent-kafka wheel ships (kept under target/).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

CONFLUENT_KAFKA_VERSION=2.16.1
venv="$ROOT/target/kcat-venv"
libdir="$ROOT/target/kcat-librdkafka-$CONFLUENT_KAFKA_VERSION"

command -v kcat >/dev/null 2>&1 || apt_install kcat
if [ ! -e "$libdir/librdkafka.so.1" ]; then
    log "fetching librdkafka from the confluent-kafka $CONFLUENT_KAFKA_VERSION wheel into $libdir"
    command -v python3 >/dev/null 2>&1 || apt_install python3
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q "confluent-kafka==$CONFLUENT_KAFKA_VERSION"
    found="$(find "$venv" -path '*confluent_kafka.libs/librdkafka*.so*' | head -n1)"
    [ -n "$found" ] || die "the confluent-kafka wheel carries no librdkafka"
    mkdir -p "$libdir"
    ln -sfn "$found" "$libdir/librdkafka.so.1"
fi

args=("$@")
has_broker=""
for arg in "${args[@]}"; do
    case "$arg" in -b | -b*) has_broker=1 ;; esac
done
[ -n "$has_broker" ] || args=(-b "${KAFKA_BROKERS:-127.0.0.1:9092}" "${args[@]}")
LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec kcat "${args[@]}"
