#!/usr/bin/env bash
# The README's benchmark table: benches/e2e.sh in interleaved rounds, so that every variant sees
# the same machine conditions (the machine is shared; identical runs vary by up to ±25 %).
#
#   benches/battery.sh            # ROUNDS=3 DURATION=10 → ≈ 12 minutes
#
# Per round: 100-event batches plain, with contracts on `block`, with rate limits on (never
# triggering), with a fresh messageId per event and dedup on / off; then single /v1/track at 64
# and 512 connections. Rows land in bench-results/e2e.tsv under the labels below; the medians per
# label are printed at the end, over valid runs only (benches/e2e.sh marks a run with any non-2xx
# answer or socket error valid=no); the battery then exits 1 if any run was invalid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
export DURATION="${DURATION:-10}"
START="$(date +%Y-%m-%dT%H:%M:%S)"
cargo build --release -q -p gateway

CONTRACTS='contracts = { plan = "example", unplanned_events = "block", violations = "block" }'
LIMITS='rate_limits = { short = { limit = 1000000000, period_s = 1 }, medium = { limit = 1000000000, period_s = 3600 } }'
PER_IP=$'[rate_limits]\nper_ip = { limit = 1000000000, period_s = 1 }'

# One e2e.sh call. An invalid run (e2e.sh exits 3) is remembered and the battery goes on; any
# other failure stops it.
INVALID=0
e2e() {
  local rc=0
  benches/e2e.sh | grep label= || rc=$?
  case "$rc" in
    0) ;;
    3) INVALID=1 ;;
    *) exit "$rc" ;;
  esac
}

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS"
  SCENARIOS=batch64 LABEL=kafka e2e
  SCENARIOS=batch64 LABEL=kafka+contracts-block SOURCE_TOML="$CONTRACTS" e2e
  SCENARIOS=batch64 LABEL=kafka+ratelimit SOURCE_TOML="$LIMITS" EXTRA_TOML="$PER_IP" e2e
  SCENARIOS=batch64 LABEL=kafka+ids+dedup-on UNIQUE_IDS=1 e2e
  SCENARIOS=batch64 LABEL=kafka+ids+dedup-off UNIQUE_IDS=1 SOURCE_TOML='dedup = false' e2e
  SCENARIOS="track64 track512" LABEL=kafka e2e
done

echo "== medians since $START (bench-results/e2e.tsv)"
python3 - "$START" <<'PY'
import csv, statistics, sys
start = sys.argv[1]
rows = [r for r in csv.DictReader(open("bench-results/e2e.tsv"), delimiter="\t") if r["date"] >= start]
invalid = [r for r in rows if r.get("valid") != "yes"]
groups = {}
for r in rows:
    if r.get("valid") == "yes":
        groups.setdefault((r["label"], r["scenario"]), []).append(r)
for (label, scenario), rs in groups.items():
    eps = sorted(int(r["events_per_s"]) for r in rs)
    med = lambda k: statistics.median(float(r[k]) for r in rs)
    print(f"{label:24} {scenario:9} events/s median {statistics.median(eps):>9,.0f} "
          f"(range {eps[0]:,}–{eps[-1]:,}, n={len(eps)})  p99 {med('p99_ms'):.1f} ms  "
          f"gateway {med('gw_cpu_us_per_event'):.2f} µs/event")
for r in invalid:
    print(f"INVALID (not in the medians): {r['date']} {r['label']} {r['scenario']}: non-2xx {r['non2xx']}, "
          f"socket errors {r['socket_errors']}")
PY
[ "$INVALID" = 0 ] || { echo "battery: some runs were invalid (see above)" >&2; exit 1; }
