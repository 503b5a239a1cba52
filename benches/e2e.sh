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
#
# Only 2xx answers count as events (wrk's Lua `response` hook counts them per thread; this
# costs wrk ≈1.5–2 µs of CPU per response). A run with any non-2xx answer or socket error
# (connect, read, write, timeout) is still written, with valid=no, and the script exits after
# its last run with status 3 (other failures exit with another status): such a row measures a gateway that refused
# or dropped work, not its throughput.
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
INVALID=0
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
-- UNIQUE_IDS=1 every event gets a fresh messageId (RUN_ID + thread id + counter; RUN_ID differs
-- per wrk process, so the measured run never repeats the warm-up's ids). Counts the 2xx
-- answers per thread and prints one E2E_SUMMARY line at the end.
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
local run_id = os.getenv("RUN_ID") or "run"
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
-- Per thread (each has its own Lua state): answers with a 2xx status.
ok_2xx = 0
function response(status, headers, body)
  if status >= 200 and status < 300 then
    ok_2xx = ok_2xx + 1
  end
end
function done(summary, latency, requests)
  local ok = 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("ok_2xx")
  end
  local e = summary.errors
  io.write(string.format("E2E_SUMMARY duration_us=%d requests=%d ok_2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.duration, summary.requests, ok, e.connect, e.read, e.write, e.timeout))
end
-- Only with UNIQUE_IDS: a `request` function makes wrk call Lua for every request, which costs
-- it ≈2× the CPU; without one, wrk sends its prebuilt request.
if unique then
  function request()
    local b = template:gsub("MSGID", function()
      n = n + 1
      return run_id .. "-" .. tostring(tid or 0) .. "-" .. tostring(n)
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
  BODY_FILE="$body" RUN_ID="warm-$RANDOM$RANDOM" wrk -t2 -c"$conns" -d2s -s "$WORK/post.lua" \
    "http://127.0.0.1:$port$path" >/dev/null
  local g0 b0=0 g1 b1=0
  g0="$(cpu_ticks "$gw")"; [ -n "$broker_pid" ] && b0="$(cpu_ticks "$broker_pid")"
  local wrk_out="$WORK/wrk.txt" perf_pid=""
  if [ -n "$PERF" ]; then
    perf record -q -e cpu-clock ${PERF_ARGS:--F 1999} -p "$gw" -o "$OUT/perf-$scenario.data" -- sleep "$DURATION" 2>/dev/null &
    perf_pid=$!
  fi
  /usr/bin/time -f "%U %S" -o "$WORK/wrk.time" env BODY_FILE="$body" UNIQUE_IDS="$UNIQUE_IDS" RUN_ID="run-$RANDOM$RANDOM" \
    wrk -t2 -c"$conns" -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$port$path" >"$wrk_out"
  g1="$(cpu_ticks "$gw")"; [ -n "$broker_pid" ] && b1="$(cpu_ticks "$broker_pid")"
  [ -n "$perf_pid" ] && wait "$perf_pid" 2>/dev/null || true
  local hz; hz="$(getconf CLK_TCK)"
  local rc=0
  python3 - "$wrk_out" "$WORK/wrk.time" "$per_req" "$g0" "$g1" "$b0" "$b1" "$hz" "$scenario" "$LABEL" "$OUT/e2e.tsv" <<'PY' || rc=$?
import os, re, sys, time
wrk_out, wrk_time, per_req, g0, g1, b0, b1, hz, scenario, label, tsv = sys.argv[1:]
text = open(wrk_out).read()
per_req = int(per_req); hz = float(hz)
m = re.search(r"^E2E_SUMMARY (.*)$", text, re.M)
if not m:
    sys.exit(f"no E2E_SUMMARY line in the wrk output:\n{text}")
s = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
# Only 2xx answers are events; everything else makes the row invalid.
non2xx = s["requests"] - s["ok_2xx"]
socket = {k: s[k] for k in ("connect", "read", "write", "timeout")}
socket_errors = ", ".join(f"{k} {v}" for k, v in socket.items()) if any(socket.values()) else "none"
valid = non2xx == 0 and socket_errors == "none"
def lat(p):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
events = s["ok_2xx"] * per_req
gw_cpu = (int(g1) - int(g0)) / hz
br_cpu = (int(b1) - int(b0)) / hz
wu, ws = map(float, open(wrk_time).read().split()[-2:])
row = dict(label=label, scenario=scenario, events_per_s=round(events / (s["duration_us"] / 1e6)), p50_ms=lat(50),
           p99_ms=lat(99), gw_cpu_us_per_event=round(gw_cpu / events * 1e6, 2) if events else "",
           broker_cpu_s=round(br_cpu, 1), wrk_cpu_s=round(wu + ws, 1), non2xx=non2xx, socket_errors=socket_errors,
           valid="yes" if valid else "no")
print("\t".join(f"{k}={v}" for k, v in row.items()))
header = "date\t" + "\t".join(row) + "\n"
if os.path.exists(tsv):
    lines = open(tsv).read().splitlines(keepends=True)
    if lines and lines[0] != header and lines[0].rstrip("\n") + "\tvalid\n" == header:
        # Rows from before the valid column: valid when they had no non-2xx and no socket error.
        cols = lines[0].rstrip("\n").split("\t")
        def mark(line):
            r = dict(zip(cols, line.rstrip("\n").split("\t")))
            ok = r.get("non2xx") == "0" and r.get("socket_errors") == "none"
            return line.rstrip("\n") + ("\tyes\n" if ok else "\tno\n")
        lines = [header] + [mark(l) for l in lines[1:] if l.strip()]
        with open(tsv, "w") as f:
            f.writelines(lines)
    elif lines and lines[0] != header:
        sys.exit(f"{tsv} has other columns than {header.split()}: move it away")
with open(tsv, "a") as f:
    if f.tell() == 0:
        f.write(header)
    f.write(time.strftime("%Y-%m-%dT%H:%M:%S") + "\t" + "\t".join(str(v) for v in row.values()) + "\n")
if not valid:
    print(f"INVALID run: {non2xx} non-2xx answers of {s['requests']}, socket errors: {socket_errors} "
          "(written with valid=no; events/s counts 2xx only)", file=sys.stderr)
    sys.exit(3)
PY
  case "$rc" in
    0) ;;
    3) INVALID=1 ;;
    *) exit "$rc" ;;
  esac
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
if [ "$INVALID" != 0 ]; then
  echo "e2e: some runs had non-2xx answers or socket errors (valid=no in $OUT/e2e.tsv); their figures are not throughput" >&2
  exit 3
fi
