#!/usr/bin/env bash
# The README's test command (CI runs it too): every test of the workspace, including the
# Kafka sink's tests against a real Kafka-protocol broker.
#
#   scripts/test.sh [extra cargo test args, e.g. -p gateway kafka -- --nocapture]
#
# Starts one throwaway Tansu broker with scripts/tansu.sh (installing it on first use), stops
# it on exit whatever happens, and runs
#   cargo test --workspace --features gateway/kafka-tests "$@"
# with GATEWAY_TEST_KAFKA_BROKERS set to the broker's HOST:PORT. Each real-broker test creates
# its own topics. Exits with cargo's status.
set -euo pipefail
cd "$(dirname "$0")/.."

broker=""
stop_broker() {
    if [ -n "$broker" ]; then
        scripts/tansu.sh stop "${broker##*:}" || true
    fi
}
trap stop_broker EXIT

# The last stdout line of `start` is HOST:PORT; progress goes to stderr.
broker="$(scripts/tansu.sh start | tail -n 1)"
export GATEWAY_TEST_KAFKA_BROKERS="$broker"
echo "test.sh: Kafka-protocol broker (Tansu) at $broker" >&2

status=0
cargo test --workspace --features gateway/kafka-tests "$@" || status=$?
exit "$status"
