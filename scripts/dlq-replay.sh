#!/usr/bin/env bash
# Re-emits dead letters (topic orders-dlq) to orders-placed once their cause is fixed.
# Stops when the dead-letter topic has been quiet for 5 s. Pass --limit N to replay at most N.
# Uses KAFKA_BROKERS (default 127.0.0.1:9092) like the services.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
ensure_rust_tools
cargo build --release --bin consumer
exec target/release/consumer dlq-replay "$@"
