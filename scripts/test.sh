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

# Test targets that need the broker (gateway/tests/NAME.rs); kafka_tls starts its own Tansu
# brokers behind nginx TLS listeners.
REAL_BROKER_TESTS=(kafka_tansu kafka_tls)

# What the tests need beyond cargo and Python, from Debian's packages when missing: openssl
# (each TLS test makes its own CA and certificates) and nginx with its stream module (the TLS
# listener in front of Tansu, see gateway/tests/kafka_tls.rs).
need=()
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
if [ "${#need[@]}" -gt 0 ]; then
    echo "test.sh: installing ${need[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
GATEWAY_TEST_NGINX_BIN="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"
export GATEWAY_TEST_NGINX_BIN

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
GATEWAY_TEST_TANSU_BIN="$(scripts/tansu.sh bin)"
export GATEWAY_TEST_TANSU_BIN
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
