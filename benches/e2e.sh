#!/usr/bin/env bash
# End-to-end load benchmark: wrk → gateway (release build) → sink, all on this machine.
#
#   benches/e2e.sh                         # Kafka sink (a fresh Tansu per scenario), all scenarios
#   SINK=local_log benches/e2e.sh          # the local log instead (fsync on)
#   SCENARIOS="batch64" DURATION=10 RUNS=3 benches/e2e.sh
#   EXTRA_TOML='[rate_limits] …' LABEL=x benches/e2e.sh   # appended to the gateway config
#   SOURCE_TOML='dedup = false' benches/e2e.sh              # added to the bench source
#   SERVER_TOML='worker_threads = 2' benches/e2e.sh         # added to [server]
#   UNIQUE_IDS=1 benches/e2e.sh      # every event gets a fresh client messageId (dedup on the path)
#   GATEWAY_BIN=/tmp/gateway-b LABEL=b benches/e2e.sh   # another build of the gateway (A/B runs)
#   PERF=1 benches/e2e.sh            # also `perf record` the gateway during the load
#                                    # (bench-results/perf-<scenario>.data; needs linux-perf);
#                                    # PERF_ARGS='--call-graph dwarf -F 300' for call stacks
#
# Scenarios: batch64 (100-event batches of ≈600 B events, 64 connections), track64 and
# track512 (single /v1/track calls, 64 and 512 connections). For each run it starts fresh
# processes, warms up for 2 s, loads for DURATION s, and reports events/s, p50/p99 latency and
# the CPU µs per event of the gateway, the broker and wrk (read from procfs), then the median
# over RUNS. Results are appended to bench-results/e2e.tsv. Needs wrk (Debian) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
SINK="${SINK:-kafka}"
SCENARIOS="${SCENARIOS:-batch64 track64 track512}"
DURATION="${DURATION:-15}"
RUNS="${RUNS:-1}"
LABEL="${LABEL:-$SINK}"
EXTRA_TOML="${EXTRA_TOML:-}"
SOURCE_TOML="${SOURCE_TOML:-}"
SERVER_TOML="${SERVER_TOML:-}"
UNIQUE_IDS="${UNIQUE_IDS:-0}"
PERF="${PERF:-}"
GATEWAY_BIN="${GATEWAY_BIN:-target/release/gateway}"
OUT="$REPO/bench-results"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ "$SINK" = kafka ] && scripts/tansu.sh stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install -y wrk" >&2; exit 1; }
[ "$GATEWAY_BIN" = target/release/gateway ] && cargo build --release -q -p gateway
cargo run --release -q -p gateway-benches --example gen_payloads "$WORK/payloads" >&2

cat >"$WORK/post.lua" <<'LUA'
-- wrk script: POST the body file given in BODY_FILE with the bench write key. With
-- UNIQUE_IDS=1 every event gets a fresh messageId (thread id + counter).
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Write-Key"] = "bench-key"
local unique = os.getenv("UNIQUE_IDS") == "1"
local template, n = nil, 0
if unique then
  template = body:gsub('"type":"track"', '"messageId":"MSGID","type":"track"')
end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
-- Only with UNIQUE_IDS: a `request` function makes wrk call Lua for every request, which costs
-- it ≈2× the CPU; without one, wrk sends its prebuilt request.
if unique then
  function request()
    local b = template:gsub("MSGID", function()
      n = n + 1
      return tostring(tid or 0) .. "-" .. tostring(n)
    end)
    return wrk.format(nil, nil, nil, b)
  end
end
LUA

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run_one() {  # $1 scenario
  local scenario="$1" path body conns per_req
  case "$scenario" in
    batch64) path=/v1/batch; body="$WORK/payloads/batch.json"; conns=64; per_req=100 ;;
    track64) path=/v1/track; body="$WORK/payloads/track.json"; conns=64; per_req=1 ;;
    track512) path=/v1/track; body="$WORK/payloads/track.json"; conns=512; per_req=1 ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
  local broker_pid="" sink_toml
  if [ "$SINK" = kafka ]; then
    scripts/tansu.sh stop >/dev/null 2>&1 || true
    local broker; broker="$(scripts/tansu.sh start | tail -n1)"
    broker_pid="$(cat "target/tansu/tansu-${broker##*:}.pid")"
    scripts/tansu.sh topic-create "$broker" events 3 >/dev/null
    sink_toml="[sink]
kind = \"kafka\"
[kafka]
brokers = \"$broker\""
  else
    sink_toml="[sink]
kind = \"local_log\""
  fi
  local port; port="$(free_port)"
  cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
$SERVER_TOML
[log]
level = "warn"
$sink_toml
$EXTRA_TOML
[[sources]]
id = "bench"
$SOURCE_TOML
keys = [{ key = "bench-key" }]
EOF
  # Fresh state per run: usage counts and the dedup snapshot must not carry over.
  rm -rf "$WORK/state"
  GATEWAY_DATA_DIR="$WORK/state" "$GATEWAY_BIN" --config "$WORK/gateway.toml" 2>"$WORK/gateway.log" &
  local gw=$!
  PIDS+=("$gw")
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break; sleep 0.05; done
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null || { echo "gateway not ready"; cat "$WORK/gateway.log"; exit 1; }
  # Warm-up (also pays the idempotent producer's first-delivery cost).
  BODY_FILE="$body" wrk -t2 -c"$conns" -d2s -s "$WORK/post.lua" "http://127.0.0.1:$port$path" >/dev/null
  local g0 b0=0 g1 b1=0
  g0="$(cpu_ticks "$gw")"; [ -n "$broker_pid" ] && b0="$(cpu_ticks "$broker_pid")"
  local wrk_out="$WORK/wrk.txt" perf_pid=""
  if [ -n "$PERF" ]; then
    perf record -q -e cpu-clock ${PERF_ARGS:--F 1999} -p "$gw" -o "$OUT/perf-$scenario.data" -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
  fi
  /usr/bin/time -f "%U %S" -o "$WORK/wrk.time" env BODY_FILE="$body" UNIQUE_IDS="$UNIQUE_IDS" \
    wrk -t2 -c"$conns" -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$port$path" >"$wrk_out"
  g1="$(cpu_ticks "$gw")"; [ -n "$broker_pid" ] && b1="$(cpu_ticks "$broker_pid")"
  [ -n "$perf_pid" ] && wait "$perf_pid" 2>/dev/null || true
  local hz; hz="$(getconf CLK_TCK)"
  python3 - "$wrk_out" "$WORK/wrk.time" "$per_req" "$g0" "$g1" "$b0" "$b1" "$hz" "$scenario" "$LABEL" "$OUT/e2e.tsv" <<'PY'
import re, sys, time
wrk_out, wrk_time, per_req, g0, g1, b0, b1, hz, scenario, label, tsv = sys.argv[1:]
text = open(wrk_out).read()
per_req = int(per_req); hz = float(hz)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
reqs = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
errors = re.search(r"Socket errors: (.*)", text)
def lat(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
events = reqs * per_req
gw_cpu = (int(g1) - int(g0)) / hz
br_cpu = (int(b1) - int(b0)) / hz
wu, ws = map(float, open(wrk_time).read().split()[-2:])
row = dict(label=label, scenario=scenario, events_per_s=round(rps * per_req), p50_ms=lat(50), p99_ms=lat(99),
           gw_cpu_us_per_event=round(gw_cpu / events * 1e6, 2), broker_cpu_s=round(br_cpu, 1),
           wrk_cpu_s=round(wu + ws, 1), non2xx=non2xx, socket_errors=errors.group(1) if errors else "none")
print("\t".join(f"{k}={v}" for k, v in row.items()))
new = not __import__("os").path.exists(tsv)
with open(tsv, "a") as f:
    if new:
        f.write("date\t" + "\t".join(row) + "\n")
    f.write(time.strftime("%Y-%m-%dT%H:%M:%S") + "\t" + "\t".join(str(v) for v in row.values()) + "\n")
PY
  kill "$gw" 2>/dev/null || true
  wait "$gw" 2>/dev/null || true
  [ "$SINK" = kafka ] && scripts/tansu.sh stop >/dev/null 2>&1 || true
}

for scenario in $SCENARIOS; do
  for run in $(seq 1 "$RUNS"); do
    printf '%s run %s/%s: ' "$scenario" "$run" "$RUNS"
    run_one "$scenario"
  done
done
