#!/usr/bin/env bash
# The README's test command, and the only documented one (CI runs it too): every test of the
# workspace, including the Kafka sink's tests against a real Kafka-protocol broker.
#
#   scripts/test.sh [extra cargo test args, e.g. -p gateway kafka -- --nocapture]
#
# Starts one throwaway Tansu broker with scripts/tansu.sh (installing it on first use), stops
# it on exit whatever happens, and runs
#   cargo test --workspace --features gateway/kafka-tests "$@"
# with GATEWAY_TEST_KAFKA_BROKERS set to the broker's HOST:PORT. Each real-broker test creates
# its own topics.
#
# A green cargo run is not enough: without the feature the real-broker tests compile to
# nothing and "pass". So the output is checked too, and the script fails when
#   - a real-broker test binary (REAL_BROKER_TESTS) ran no test at all (0 passed, none
#     filtered out: it was compiled without its tests), or
#   - on a full run (no extra args), a real-broker test binary did not run, or passed none.
# Exits with cargo's status when cargo fails, else 1 when that check fails, else 0.
set -euo pipefail
cd "$(dirname "$0")/.."

# Test targets that need the broker (gateway/tests/NAME.rs).
REAL_BROKER_TESTS=(kafka_tansu)

broker=""
log=""
cleanup() {
    if [ -n "$broker" ]; then
        scripts/tansu.sh stop "${broker##*:}" || true
    fi
    [ -n "$log" ] && rm -f "$log"
}
trap cleanup EXIT

# The last stdout line of `start` is HOST:PORT; progress goes to stderr.
broker="$(scripts/tansu.sh start | tail -n 1)"
export GATEWAY_TEST_KAFKA_BROKERS="$broker"
echo "test.sh: Kafka-protocol broker (Tansu) at $broker" >&2

log="$(mktemp)"
status=0
# cargo prints "Running tests/NAME.rs (…)" on stderr and the binary's "test result:" line on
# stdout; both go through one pipe so that they stay in order.
cargo test --workspace --features gateway/kafka-tests "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
    exit "$status"
fi

# "PASSED FILTERED" of the first "test result:" line after NAME's "Running" line, or nothing
# when NAME did not run.
result_of() {
    awk -v target="tests/$1.rs" '
        index($0, "Running " target " ") || $0 ~ ("Running " target "$") { found = 1; next }
        found && /test result:/ {
            match($0, /[0-9]+ passed/); passed = substr($0, RSTART, RLENGTH - 7)
            match($0, /[0-9]+ filtered out/); filtered = substr($0, RSTART, RLENGTH - 13)
            print passed, filtered; exit
        }' "$log"
}

failed=0
for name in "${REAL_BROKER_TESTS[@]}"; do
    read -r passed filtered <<<"$(result_of "$name")" || true
    if [ -z "${passed:-}" ]; then
        if [ "$#" -eq 0 ]; then
            echo "test.sh: FAILED: the real-broker tests tests/$name.rs did not run" >&2
            failed=1
        fi
    elif [ "$passed" -eq 0 ] && { [ "$#" -eq 0 ] || [ "$filtered" -eq 0 ]; }; then
        echo "test.sh: FAILED: tests/$name.rs ran 0 tests ($filtered filtered out):" \
            "were they compiled without --features gateway/kafka-tests?" >&2
        failed=1
    else
        echo "test.sh: tests/$name.rs: $passed real-broker tests passed" >&2
    fi
    passed="" filtered=""
done
exit "$failed"
