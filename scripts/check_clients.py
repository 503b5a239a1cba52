#!/usr/bin/env python3
"""Proves that real Segment SDKs' calls reach the gateway's local event log.

Drives the SDK harness in shared/clients (run-all.sh) against a running
gateway, one client at a time, and after each client reads the gateway's
local log to count what arrived:

    scripts/check_clients.py --base-url http://127.0.0.1:PORT --write-key KEY \\
        --log-dir DIR [--clients segment-python,beacon,...] [--wait SECONDS] \\
        [--refresh-cmd "SHELL COMMAND"]
    scripts/check_clients.py --self-test     # checks the counting, no gateway

With the Kafka sink there is no local log; --refresh-cmd runs a shell command
before every read of DIR that writes the topics there in the local log's
layout, e.g. the gateway's kafka_dump example:

    --log-dir DIR --refresh-cmd "target/release/examples/kafka_dump \\
        --brokers 127.0.0.1:9092 --topic events --out DIR"

It must only ever append to the files it writes (kafka_dump writes one file
per partition, which only grows). Its output is shown only when it fails.

The local log: DIR holds one folder per topic; each holds segment files
*.ndjson (name order = write order); each line is one published event, a JSON
object with at least "type", "messageId" and, for track, "event".

Per client: note every messageId already in the log, run
`run-all.sh BASE_URL KEY CLIENT` (its output is streamed through), then look
only at records whose messageId is new. The call script must arrive as exactly
these numbers of DISTINCT messageIds: identify 1, track "Order Completed" 1,
page 1, screen 1, group 1, alias 1, track "Burst Event" 50 (56 in all).
Fewer means lost events, more means distinct ids the SDK never sent twice
(a bug). Browser modes also send "Unload Event" tracks: counted, not required.
Records repeating a messageId (SDK retries) are counted as duplicates, for
information only. A client passes when run-all printed "ok" and exited 0 and
every count matches exactly.

Prints a table and `clients: N passed, M failed`; exits 1 if any failed.
Standard library only.
"""

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# shared/ sits beside the repo (here and in CI's clone): REPO/../shared.
DEFAULT_RUN_ALL = Path(__file__).resolve().parents[2] / "shared" / "clients" / "run-all.sh"

# (column, what the call script sends, expected distinct messageIds)
EXPECTED = [
    ("identify", 1),
    ("order", 1),  # track "Order Completed"
    ("page", 1),
    ("screen", 1),
    ("group", 1),
    ("alias", 1),
    ("burst", 50),  # track "Burst Event"
]
EXPECTED_TOTAL = sum(n for _, n in EXPECTED)  # 56
TRACK_KINDS = {"Order Completed": "order", "Burst Event": "burst", "Unload Event": "unload"}
PLAIN_KINDS = {"identify", "page", "screen", "group", "alias"}


def kind_of(record):
    """The call-script slot of one log record: a key of EXPECTED, "unload", or "other"."""
    typ = record.get("type")
    if typ == "track":
        return TRACK_KINDS.get(record.get("event"), "other")
    return typ if typ in PLAIN_KINDS else "other"


class LogReader:
    """Reads DIR/<topic>/*.ndjson incrementally.

    Remembers how far each file was read, so every line is parsed once however
    often the log is polled. Only complete lines (ending in a newline) are
    consumed: a line the gateway is still writing is read on a later poll.
    """

    def __init__(self, log_dir, refresh_cmd=None):
        self.log_dir = Path(log_dir)
        self.refresh_cmd = refresh_cmd  # shell command run before every read, or None
        self.refreshes = 0  # times it ran
        self.offsets = {}  # path -> bytes consumed
        self.malformed = 0  # lines that are not a JSON object with a string messageId

    def refresh(self):
        """Runs --refresh-cmd (if any); a failure is reported, and the log read as it is."""
        if not self.refresh_cmd:
            return
        self.refreshes += 1
        proc = subprocess.run(self.refresh_cmd, shell=True, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"warning: --refresh-cmd exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}",
                  file=sys.stderr)

    def segment_files(self):
        if not self.log_dir.is_dir():
            return []
        return sorted(p for p in self.log_dir.glob("*/*.ndjson") if p.is_file())

    def poll(self):
        """Returns the (topic, record) pairs appended since the last poll."""
        self.refresh()
        out = []
        for path in self.segment_files():
            offset = self.offsets.get(path, 0)
            try:
                size = path.stat().st_size
                if size < offset:  # truncated or replaced: read it again
                    print(f"warning: {path} shrank; re-reading it", file=sys.stderr)
                    offset = 0
                if size == offset:
                    continue
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read(size - offset)
            except FileNotFoundError:  # removed between listing and reading
                self.offsets.pop(path, None)
                continue
            end = chunk.rfind(b"\n")
            if end < 0:
                continue
            self.offsets[path] = offset + end + 1
            for line in chunk[:end].split(b"\n"):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict) or not isinstance(record.get("messageId"), str):
                    self.malformed += 1
                    continue
                out.append((path.parent.name, record))
        return out


def tally(records):
    """Counts one client's new records (those with a messageId not seen before).

    Returns a dict: distinct messageIds per kind, "records" (lines), "distinct",
    "duplicates" (lines repeating an id), "topics" (lines per topic).
    """
    first = {}  # messageId -> kind of its first record
    topics = Counter()
    for topic, record in records:
        topics[topic] += 1
        first.setdefault(record["messageId"], kind_of(record))
    counts = Counter(first.values())
    counts["records"] = len(records)
    counts["distinct"] = len(first)
    counts["duplicates"] = len(records) - len(first)
    counts["topics"] = dict(sorted(topics.items()))
    return counts


def verdict(counts, run_all_ok):
    """PASS when run-all succeeded and every call-script count matches exactly."""
    exact = all(counts[k] == n for k, n in EXPECTED)
    return "PASS" if run_all_ok and exact else "FAIL"


def complete(counts):
    return all(counts[k] >= n for k, n in EXPECTED)


def list_clients(run_all):
    out = subprocess.run([str(run_all), "--list"], check=True, capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def run_client(run_all, base_url, key, client):
    """Runs run-all.sh for one client, echoing its output; returns (ok, summary)."""
    proc = subprocess.Popen(
        [str(run_all), base_url, key, client],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    status = None
    pattern = re.compile(r"^" + re.escape(client) + r"\s+(.*)$")
    assert proc.stdout is not None  # PIPE was asked for
    for line in proc.stdout:
        sys.stdout.write("  | " + line)
        sys.stdout.flush()
        match = pattern.match(line.rstrip("\n"))
        if match and status is None:
            status = match.group(1).strip()
    rc = proc.wait()
    ok = rc == 0 and status == "ok"
    if ok:
        return True, "ok"
    if status is None:
        return False, f"no status line (exit {rc})"
    # run-all's own line already says "failed (exit N)"; flag only a mismatch
    return False, status if status != "ok" else f"ok but exit {rc}"


def collect(reader, seen, wait_s, poll_s=0.25):
    """Polls the log after a client ran; returns its new records.

    Records whose messageId is in `seen` (the log before this client) are
    ignored. Polls until the call script is complete and one more poll adds
    nothing, or until `wait_s` seconds pass (then whatever arrived is judged).
    """
    records = []
    deadline = time.monotonic() + wait_s
    while True:
        fresh = [(t, r) for t, r in reader.poll() if r["messageId"] not in seen]
        records.extend(fresh)
        if complete(tally(records)) and not fresh:
            return records
        if time.monotonic() >= deadline:
            return records
        time.sleep(poll_s)


def fmt_count(found, expected):
    return f"{found}/{expected}"


def print_table(rows):
    head = ["client", "run-all"] + [k for k, _ in EXPECTED] + ["total", "unload", "dups", "other", "result"]
    body = []
    for client, status, counts, result in rows:
        body.append(
            [client, status]
            + [fmt_count(counts[k], n) for k, n in EXPECTED]
            + [fmt_count(sum(counts[k] for k, _ in EXPECTED), EXPECTED_TOTAL)]
            + [str(counts["unload"]), str(counts["duplicates"]), str(counts["other"]), result]
        )
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    for r in [head] + body:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def check(args):
    """Runs every client in turn; returns (exit code, table rows)."""
    run_all = Path(args.run_all)
    known = list_clients(run_all)
    clients = [c for c in args.clients.split(",") if c] if args.clients else known
    unknown = [c for c in clients if c not in known]
    if unknown:
        print(f"error: unknown client(s) {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2, []
    if not Path(args.log_dir).is_dir():
        print(f"warning: log dir {args.log_dir} does not exist (yet)", file=sys.stderr)

    reader = LogReader(args.log_dir, getattr(args, "refresh_cmd", None))
    seen = set()
    rows = []
    for client in clients:
        seen.update(r["messageId"] for _, r in reader.poll())
        print(f"== {client} (log holds {len(seen)} messageIds before it)", flush=True)
        started = time.monotonic()
        ok, status = run_client(run_all, args.base_url, args.write_key, client)
        records = collect(reader, seen, args.wait)
        counts = tally(records)
        result = verdict(counts, ok)
        rows.append((client, status, counts, result))
        seen.update(r["messageId"] for _, r in records)
        print(
            f"   {result}: {counts['distinct']} new messageIds in {counts['records']} records"
            f" ({counts['duplicates']} duplicates), topics {counts['topics']},"
            f" {time.monotonic() - started:.1f}s",
            flush=True,
        )

    print()
    print_table(rows)
    if reader.malformed:
        print(f"note: {reader.malformed} log lines were not JSON objects with a string messageId")
    passed = sum(1 for r in rows if r[3] == "PASS")
    failed = len(rows) - passed
    print(f"clients: {passed} passed, {failed} failed")
    return (1 if failed else 0), rows


# ------------------------------------------------------------------ self-test

def script_records(prefix, unload=0):
    """The records of one clean run of the call script, plus `unload` Unload Events."""
    recs = [
        {"type": "identify", "messageId": f"{prefix}-identify", "userId": "user-1"},
        {"type": "track", "event": "Order Completed", "messageId": f"{prefix}-order"},
        {"type": "page", "name": "Home", "messageId": f"{prefix}-page"},
        {"type": "screen", "name": "Dashboard", "messageId": f"{prefix}-screen"},
        {"type": "group", "groupId": "g-1", "messageId": f"{prefix}-group"},
        {"type": "alias", "previousId": "anon-1", "messageId": f"{prefix}-alias"},
    ]
    recs += [{"type": "track", "event": "Burst Event", "messageId": f"{prefix}-burst-{i}"} for i in range(50)]
    recs += [{"type": "track", "event": "Unload Event", "messageId": f"{prefix}-unload-{i}"} for i in range(unload)]
    return recs


# What the fake run-all.sh of the self-test writes for each client, and the
# verdict and counts the checker must reach. Each case's records are split
# over two topics and two segment files.
def self_test_cases():
    def without(recs, mid):
        return [r for r in recs if r["messageId"] != mid]

    clean = script_records("clean")
    return {
        # name: (records written, run-all exit code, expected result, expected counts)
        "clean": (clean, 0, "PASS", {"burst": 50, "duplicates": 0}),
        "lost-burst": (without(script_records("lost"), "lost-burst-7"), 0, "FAIL", {"burst": 49}),
        "lost-alias": (without(script_records("noalias"), "noalias-alias"), 0, "FAIL", {"alias": 0}),
        "extra-order": (
            script_records("extra") + [{"type": "track", "event": "Order Completed", "messageId": "extra-order-2"}],
            0, "FAIL", {"order": 2},
        ),
        "retried": (
            script_records("retry") + script_records("retry")[:10] + script_records("retry")[-3:],
            0, "PASS", {"duplicates": 13, "distinct": 56},
        ),
        "unload": (script_records("unl", unload=3), 0, "PASS", {"unload": 3}),
        # ids already in the log (from before the run, or from an earlier
        # client) re-appearing are not this client's events
        "replayed-old": (
            script_records("replay") + clean[:5] + script_records("old")[:3],
            0, "PASS", {"distinct": 56, "records": 56},
        ),
        "other-event": (script_records("oth") + [{"type": "track", "event": "Surprise", "messageId": "oth-x"}],
                        0, "PASS", {"other": 1}),
        "runall-failed": (script_records("rf"), 1, "FAIL", {"burst": 50}),
        "nothing": ([], 0, "FAIL", {"distinct": 0}),
    }


FAKE_RUN_ALL = r"""#!/usr/bin/env python3
# Fake run-all.sh for check_clients.py --self-test: appends a case's records
# to the fake log and prints a run-all style status line.
import json, sys
from pathlib import Path
cases = json.loads(Path(sys.argv[0] + ".json").read_text())
if sys.argv[1] == "--list":
    print("\n".join(cases))
    sys.exit(0)
base, key, client = sys.argv[1:4]
log = Path(cases[client]["log_dir"])
recs, rc = cases[client]["records"], cases[client]["rc"]
half = len(recs) // 2
parts = [("events", recs[:half // 2]), ("identifies", recs[half // 2:half]), ("events", recs[half:])]
for i, (topic, part) in enumerate(parts):
    d = log / topic
    d.mkdir(parents=True, exist_ok=True)
    seg = d / ("00000002.ndjson" if i == 2 else "00000001.ndjson")  # a new segment too
    with seg.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in part))
print(f"{client:<22} " + ("ok" if rc == 0 else f"failed (exit {rc})"))
sys.exit(rc)
"""


def self_test():
    """Checks the counting on fake logs; prints `self-test: N passed, M failed`."""
    failures = []
    checks = [0]

    def expect(cond, what):
        checks[0] += 1
        if not cond:
            failures.append(what)

    # 1. kind_of and tally on hand-made records
    expect(kind_of({"type": "track", "event": "Burst Event"}) == "burst", "kind_of burst")
    expect(kind_of({"type": "track", "event": "x"}) == "other", "kind_of other track")
    expect(kind_of({"type": "Track", "event": "Burst Event"}) == "other", "kind_of is case-sensitive")
    c = tally([("t", r) for r in script_records("a")])
    expect(verdict(c, True) == "PASS" and c["distinct"] == 56, "clean tally passes")
    expect(verdict(c, False) == "FAIL", "run-all failure fails")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log_dir = tmp / "log"

        # 2. LogReader: partial trailing line, garbage lines, old records
        (log_dir / "events").mkdir(parents=True)
        seg = log_dir / "events" / "00000001.ndjson"
        seg.write_text(json.dumps({"type": "page", "messageId": "m1"}) + "\nnot json\n[1]\n{\"type\": \"page\"")
        reader = LogReader(log_dir)
        got = reader.poll()
        expect([r["messageId"] for _, r in got] == ["m1"], "reader reads complete lines only")
        expect(reader.malformed == 2, f"reader counts malformed lines (got {reader.malformed})")
        with seg.open("a") as f:
            f.write(', "messageId": "m2"}\n')
        got = reader.poll()
        expect([r["messageId"] for _, r in got] == ["m2"], "reader finishes the partial line later")
        expect(reader.poll() == [], "reader returns nothing new")
        seg.unlink()

        # 2b. --refresh-cmd runs before every read, and what it writes is read
        refreshed = log_dir / "dumped" / "00000000000000000000.ndjson"
        cmd = (f"mkdir -p {refreshed.parent} && printf '%s\\n' "
               "'{\"type\": \"page\", \"messageId\": \"r1\"}' >> " + str(refreshed))
        reader = LogReader(log_dir, refresh_cmd=cmd)
        got = reader.poll()
        expect([r["messageId"] for _, r in got] == ["r1"], f"refresh output is read (got {got})")
        got = reader.poll()
        expect([r["messageId"] for _, r in got] == ["r1"] and reader.refreshes == 2,
               "refresh runs before every read")
        reader = LogReader(log_dir, refresh_cmd="exit 3")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            reader.poll()
        expect("exited 3" in err.getvalue(), "a failing refresh is reported")
        refreshed.unlink()
        refreshed.parent.rmdir()

        # 3. the whole loop, against a fake run-all.sh writing a fake log
        cases = self_test_cases()
        fake = tmp / "run-all.sh"
        fake.write_text(FAKE_RUN_ALL)
        fake.chmod(0o755)
        Path(str(fake) + ".json").write_text(json.dumps(
            {name: {"records": recs, "rc": rc, "log_dir": str(log_dir)} for name, (recs, rc, _, _) in cases.items()}
        ))
        # content from before the run; "replayed-old" re-sends some of it
        (log_dir / "events" / "00000000.ndjson").write_text(
            "".join(json.dumps(r) + "\n" for r in script_records("old"))
        )
        args = argparse.Namespace(
            run_all=str(fake), base_url="http://127.0.0.1:9", write_key="k",
            log_dir=str(log_dir), clients=None, wait=0.5, refresh_cmd=None,
        )
        # the loop's own report (table, "clients: 5 passed, 5 failed") is
        # shown only when a check fails, so it is not mistaken for ours
        report = io.StringIO()
        with contextlib.redirect_stdout(report):
            rc, rows = check(args)
        expect(rc == 1, f"check exits 1 when a client fails (got {rc})")
        by_name = {client: (status, counts, result) for client, status, counts, result in rows}
        expect(list(by_name) == list(cases), f"every case ran in order (got {list(by_name)})")
        for name, (_, _, want_result, want_counts) in cases.items():
            if name not in by_name:
                continue
            _, counts, result = by_name[name]
            expect(result == want_result, f"{name}: result {result}, want {want_result}")
            for key, want in want_counts.items():
                expect(counts[key] == want, f"{name}: {key} {counts[key]}, want {want}")

    if failures:
        print(report.getvalue())
    for f in failures:
        print(f"self-test FAILED: {f}")
    print("checked: kind_of/tally, LogReader (partial and malformed lines, --refresh-cmd),"
          " the whole loop over a fake run-all")
    print(f"self-test: {checks[0] - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", help="the gateway's origin, e.g. http://127.0.0.1:8080")
    p.add_argument("--write-key", help="a write key the gateway accepts")
    p.add_argument("--log-dir", help="the gateway's local log: DIR/<topic>/*.ndjson")
    p.add_argument("--clients", help="comma-separated run-all.sh names (default: all of --list)")
    p.add_argument("--wait", type=float, default=10.0,
                   help="seconds to wait after a client for missing events to reach the log (default 10)")
    p.add_argument("--refresh-cmd",
                   help="shell command run before every read of --log-dir (e.g. kafka_dump for the Kafka sink)")
    p.add_argument("--run-all", default=str(DEFAULT_RUN_ALL), help=argparse.SUPPRESS)
    p.add_argument("--self-test", action="store_true", help="check the counting on a fake log and exit")
    args = p.parse_args()
    if args.self_test:
        return self_test()
    missing = [f"--{n.replace('_', '-')}" for n in ("base_url", "write_key", "log_dir") if not getattr(args, n)]
    if missing:
        p.error("missing " + ", ".join(missing))
    return check(args)[0]


if __name__ == "__main__":
    sys.exit(main())
