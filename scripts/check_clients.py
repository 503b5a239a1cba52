#!/usr/bin/env python3
"""Proves that real Segment SDKs' calls reach the gateway's local event log intact.

Drives the SDK harness in shared/clients (run-all.sh) against a running
gateway, one client at a time, through a recording pass-through proxy (the
"tap"), and after each client reads the gateway's local log and holds what
arrived against what the SDK sent:

    scripts/check_clients.py --base-url http://127.0.0.1:PORT --write-key KEY \\
        --log-dir DIR [--clients segment-python,beacon,...] [--wait SECONDS] \\
        [--refresh-cmd "SHELL COMMAND"] [--ignore-topic violations]
    scripts/check_clients.py --self-test     # checks the checker, no gateway

With the Kafka sink there is no local log; --refresh-cmd runs a shell command
before every read of DIR that writes the topics there in the local log's
layout, e.g. the gateway's kafka_dump example:

    --log-dir DIR --refresh-cmd "target/release/examples/kafka_dump \\
        --brokers 127.0.0.1:9092 --topic events --out DIR"

It must only ever append to the files it writes (kafka_dump writes one file
per partition, which only grows). Its output is shown only when it fails.

The local log: DIR holds one folder per topic; each holds segment files
*.ndjson (name order = write order); each line is one published event, a JSON
object with at least "type", "messageId" and, for track, "event". Topics named
by --ignore-topic (default: violations, where contract violation reports go)
are not events and are skipped.

The tap listens on 127.0.0.1 and forwards every request byte for byte to
--base-url and the answer back (hop-by-hop headers aside), keeping a copy of
each request body (gzip inflated) and of the answer. It never prints them.

Per client: note every messageId already in the log, run
`run-all.sh TAP_URL KEY CLIENT` (its output is streamed through), then look
only at records whose messageId is new. A client passes when run-all printed
"ok" and exited 0, and all of this holds:

1. Counts. The call script arrives as exactly these numbers of DISTINCT
   messageIds: identify 1, track "Order Completed" 1, page 1, screen 1,
   group 1, alias 1, track "Burst Event" 50 (56 in all). Fewer means lost
   events, more means distinct ids the SDK never sent twice (a bug). Browser
   modes also send "Unload Event" tracks: counted, not required. Records
   repeating a messageId (SDK retries) are counted as duplicates, for
   information only.
2. Delivery. Every message the SDK sent in a request the gateway answered 2xx
   (minus the batch summary's `errors`) is in the log, no message the SDK sent
   was refused for good, and nothing is in the log that the SDK never sent.
3. Content. Every record equals the message the SDK sent, as the gateway
   normalises it (README, "What the gateway does to each event"): same type
   (from the path on single-call paths), messageId, userId/anonymousId (a
   number as text; null or "" absent), event/groupId/previousId (null absent),
   every other member (properties, traits, name, category, integrations, ...)
   unchanged, null ones included; context unchanged except `ip` (the client's,
   else added); `writeKey` dropped; `sourceId` and `receivedAt` added;
   `timestamp` the client's (or, with a sentAt, receivedAt - (sentAt -
   timestamp)) or receivedAt when it sent none, with the client's value kept
   as `originalTimestamp`; `sentAt` kept when the message had one; no other
   member added.
4. The call script itself: userId "user-1" throughout, the traits and
   properties of the call script (SDKs may add properties, e.g. page URLs),
   Burst Event `i` 0..49 once each, and the library that client's SDK names
   in context.library.name.

Prints a table, the first problems of each failing client, and
`clients: N passed, M failed`; exits 1 if any failed or no client ran.
Standard library only.
"""

import argparse
import contextlib
import datetime
import gzip
import http.client
import http.server
import io
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from pathlib import Path

# shared/ sits beside the repo (here and in CI's clone): REPO/../shared.
SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_RUN_ALL = SHARED / "clients" / "run-all.sh"
DEFAULT_WIRE = SHARED / "clients" / "wire"

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
BURST = 50
TRACK_KINDS = {"Order Completed": "order", "Burst Event": "burst", "Unload Event": "unload"}
PLAIN_KINDS = {"identify", "page", "screen", "group", "alias"}

# What each call of the script must carry (shared/clients/README.md, "The call script").
# Dicts are matched as subsets (an SDK may add members, e.g. page URLs to properties), other
# values exactly. Every call is made as user "user-1".
USER = "user-1"
CALL_SCRIPT = {
    "identify": {"traits": {"name": "Ada Lovelace", "email": "ada@example.com", "plan": "pro"}},
    "order": {
        "event": "Order Completed",
        "properties": {"order_id": "o-1", "revenue": 42.5, "currency": "EUR", "products": [{"sku": "s-1", "qty": 2}]},
    },
    "page": {"name": "Home", "category": "Docs", "properties": {"section": "docs"}},
    "screen": {"name": "Dashboard", "properties": {"tab": "overview"}},
    "group": {"groupId": "g-1", "traits": {"name": "Acme", "plan": "enterprise"}},
    "alias": {"previousId": "anon-1"},
    "burst": {"event": "Burst Event"},
    "unload": {"event": "Unload Event"},
}
# context.library.name that each client's SDK sets, by run-all.sh name prefix.
LIBRARIES = [
    ("segment-python", "analytics-python"),
    ("segment-node", "@segment/analytics-node"),
    ("browser-", "analytics.js"),
    ("beacon", "harness-sendBeacon"),
]

# Ingest paths (README, "path (POST)"): single calls with the type their path gives, batches.
SINGLE_PATHS = {
    "/v1/track": "track", "/v1/t": "track",
    "/v1/identify": "identify", "/v1/i": "identify",
    "/v1/page": "page", "/v1/p": "page",
    "/v1/screen": "screen", "/v1/s": "screen",
    "/v1/group": "group", "/v1/g": "group",
    "/v1/alias": "alias", "/v1/a": "alias",
    "/api/v1/events": None,
}
BATCH_PATHS = {"/v1/batch", "/v1/b", "/v1/import", "/api/v1/events/batch"}
# Members the gateway interprets or sets; every other member is forwarded unchanged.
INTERPRETED = {
    "type", "messageId", "userId", "anonymousId", "event", "groupId", "previousId", "context",
    "timestamp", "originalTimestamp", "sentAt", "writeKey", "receivedAt", "sourceId",
}
# Problems shown per failing client (the rest are counted).
SHOWN_PROBLEMS = 8


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

    def __init__(self, log_dir, refresh_cmd=None, ignore_topics=()):
        self.log_dir = Path(log_dir)
        self.refresh_cmd = refresh_cmd  # shell command run before every read, or None
        self.ignore_topics = set(ignore_topics)  # topic folders that hold no events
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
        return sorted(p for p in self.log_dir.glob("*/*.ndjson")
                      if p.is_file() and p.parent.name not in self.ignore_topics)

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


# ------------------------------------------------------------------ the tap

# Headers that belong to one connection, not to the request: not forwarded. Host and
# Content-Length are set again for the next hop. The gateway sees the same peer (127.0.0.1)
# and the same request, on a connection of its own per request.
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
    "expect",  # the tap answers 100-continue itself
}


def inflate(body, encoding):
    """The decoded request body, or None when its Content-Encoding cannot be decoded."""
    encoding = (encoding or "").strip().lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
    except (OSError, EOFError, zlib.error):
        return None
    return body if encoding in ("", "identity") else None


class TapHandler(http.server.BaseHTTPRequestHandler):
    """Forwards one request to the tap's upstream and records the exchange."""

    protocol_version = "HTTP/1.1"  # keep-alive, as SDKs expect
    timeout = 60  # idle keep-alive connections are dropped after this
    tap = None  # set on the subclass Tap makes

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # never print requests: they carry keys and bodies

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length else b""

    def forward(self):
        tap = self.tap
        body = self.read_body()
        try:
            conn = http.client.HTTPConnection(tap.host, tap.port, timeout=60)
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", f"{tap.host}:{tap.port}")
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            if body or self.command in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            status, reason, headers, answer = resp.status, resp.reason, resp.getheaders(), resp.read()
            conn.close()
        except OSError as e:
            status, reason, headers = 502, "Bad Gateway", [("Content-Type", "text/plain")]
            answer = f"tap: the gateway did not answer: {e}".encode()
        tap.record({
            "method": self.command,
            "path": self.path,
            "status": status,
            "body": inflate(body, self.headers.get("Content-Encoding")),
            "answer": answer,
        })
        try:
            self.send_response_only(status, reason)
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            bodiless = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
            if not bodiless:
                self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if not bodiless:
                self.wfile.write(answer)
        except OSError:  # the client went away (e.g. a page that unloaded): it was recorded
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = forward


class Tap:
    """A recording pass-through proxy from 127.0.0.1:<free port> to `upstream`."""

    def __init__(self, upstream):
        u = urllib.parse.urlsplit(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"--base-url must be http://HOST:PORT, not {upstream!r}")
        self.host, self.port = u.hostname, u.port or 80
        self.lock = threading.Lock()
        self.exchanges = []
        handler = type("BoundTapHandler", (TapHandler,), {"tap": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, exchange):
        with self.lock:
            self.exchanges.append(exchange)

    def take(self):
        """The exchanges recorded since the last call."""
        with self.lock:
            out, self.exchanges = self.exchanges, []
        return out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------ what was sent

def parse_json(data):
    """`data` parsed, or None when it is empty or not JSON."""
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def sent_messages(exchanges):
    """Every message of the tapped ingest requests, with what the gateway answered for it.

    Returns dicts: "message" (as sent), "path_type" (the call type a single-call path gives),
    "batch_sent_at", "accepted" (answered 2xx and not in the summary's errors) and "refusal"
    (the code, when it was not accepted). Messages without a string messageId cannot be
    matched to a record and are left out (every SDK sets one).
    """
    out = []
    for ex in exchanges:
        path = urllib.parse.urlsplit(ex["path"]).path
        if ex["method"] != "POST" or ex["body"] is None or (path not in SINGLE_PATHS and path not in BATCH_PATHS):
            continue
        body, answer = parse_json(ex["body"]), parse_json(ex["answer"])
        if not isinstance(body, dict):
            continue
        ok = 200 <= ex["status"] < 300
        refused = {}  # index -> code, from a batch summary
        if isinstance(answer, dict):
            for e in answer.get("errors") or []:
                if isinstance(e, dict):
                    refused[e.get("index")] = e.get("code")
        whole = answer.get("code") if isinstance(answer, dict) else None
        if path in BATCH_PATHS:
            items, path_type, batch_sent_at = body.get("batch"), None, body.get("sentAt")
            if not isinstance(items, list):
                continue
        else:
            items, path_type, batch_sent_at = [body], SINGLE_PATHS[path], None
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("messageId"), str):
                continue
            accepted = ok and i not in refused
            if path in BATCH_PATHS:
                item = with_batch_members(item, body)
            out.append({
                "message": item,
                "path_type": path_type,
                "batch_sent_at": batch_sent_at,
                "accepted": accepted,
                "refusal": None if accepted else (refused.get(i) or whole or f"status {ex['status']}"),
            })
    return out


# ------------------------------------------------------------------ content

def same(a, b):
    """JSON equality that tells 1 from 1.0 and from true (the gateway copies values as bytes)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def short(v):
    text = json.dumps(v, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def diff(sent, got, path):
    """Where `got` differs from `sent`: one line per differing member."""
    if isinstance(sent, dict) and isinstance(got, dict):
        out = []
        for k in sent:
            if k not in got:
                out.append(f"{path}.{k}: sent {short(sent[k])}, missing")
            else:
                out += diff(sent[k], got[k], f"{path}.{k}")
        out += [f"{path}.{k}: not sent, delivered {short(got[k])}" for k in got if k not in sent]
        return out
    if isinstance(sent, list) and isinstance(got, list) and len(sent) == len(got):
        return [line for i, (x, y) in enumerate(zip(sent, got)) for line in diff(x, y, f"{path}[{i}]")]
    return [] if same(sent, got) else [f"{path}: sent {short(sent)}, delivered {short(got)}"]


def contains(expected, got, path):
    """Where `got` lacks what `expected` has (dicts as subsets, everything else exactly)."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [f"{path}: expected an object with {short(expected)}, got {short(got)}"]
        return [line for k, v in expected.items() for line in
                (contains(v, got[k], f"{path}.{k}") if k in got else [f"{path}.{k}: missing"])]
    return [] if same(expected, got) else [f"{path}: expected {short(expected)}, got {short(got)}"]


def with_batch_members(item, batch):
    """The call as the gateway reads it: the batch's own `context` and `integrations` apply to
    every call, member by member, and the call's own top-level members win whole."""
    out = dict(item)
    for name in ("context", "integrations"):
        shared = batch.get(name)
        if isinstance(shared, dict):
            own = item.get(name) if isinstance(item.get(name), dict) else {}
            merged = dict(shared)
            merged.update(own)
            out[name] = merged
    return out


def effective_sent_at(msg, batch_sent_at):
    """The `sentAt` a call is corrected with and published with: its own when it is a date-time,
    else the batch's when that is one; a `sentAt` that is not a date-time is ignored."""
    for v in (msg.get("sentAt"), batch_sent_at):
        if instant(v) is not None:
            return v
    return None


def device_time(msg):
    """The device's clock when the call happened: `originalTimestamp`, else `timestamp`."""
    return msg.get("originalTimestamp") if msg.get("originalTimestamp") is not None else msg.get("timestamp")


def instant(text):
    """An RFC 3339 date-time as an aware datetime, or None."""
    if not isinstance(text, str):
        return None
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else None


def compare(sent, record):
    """How `record` differs from the message `sent` after the gateway's normalisation."""
    msg = sent["message"]
    problems = []

    def expect(cond, what):
        if not cond:
            problems.append(what)

    allowed = {"type", "messageId", "sourceId", "receivedAt", "timestamp", "context"}
    typ = msg.get("type") if msg.get("type") is not None else sent["path_type"]
    expect(record.get("type") == typ, f"type: sent {short(typ)}, delivered {short(record.get('type'))}")
    expect(record.get("messageId") == msg["messageId"], "messageId changed")
    for name in ("userId", "anonymousId"):
        v = msg.get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            want = json.dumps(v)  # a number is forwarded as its text
        else:
            want = v if v != "" else None
        if want is None:
            expect(name not in record, f"{name}: not sent (or null/empty), delivered {short(record.get(name))}")
        else:
            allowed.add(name)
            expect(same(record.get(name), want), f"{name}: sent {short(v)}, delivered {short(record.get(name))}")
    for name in ("event", "groupId", "previousId"):
        v = msg.get(name)
        if v is None:
            expect(name not in record, f"{name}: not sent (or null), delivered {short(record.get(name))}")
        else:
            allowed.add(name)
            expect(same(record.get(name), v), f"{name}: sent {short(v)}, delivered {short(record.get(name))}")
    # Never print a key, not even one that leaked.
    expect("writeKey" not in record, "writeKey was not dropped")
    expect(isinstance(record.get("sourceId"), str) and record["sourceId"], "sourceId missing")

    # Timestamps.
    received = instant(record.get("receivedAt"))
    expect(received is not None, f"receivedAt is not an RFC 3339 date-time: {short(record.get('receivedAt'))}")
    ts_raw = device_time(msg)
    sent_at = effective_sent_at(msg, sent["batch_sent_at"])
    delivered_ts = instant(record.get("timestamp"))
    expect(delivered_ts is not None, f"timestamp is not an RFC 3339 date-time: {short(record.get('timestamp'))}")
    if ts_raw is not None:
        allowed.add("originalTimestamp")
        expect(same(record.get("originalTimestamp"), ts_raw),
               f"originalTimestamp: sent timestamp {short(ts_raw)}, delivered {short(record.get('originalTimestamp'))}")
        client_ts, client_sent = instant(ts_raw), instant(sent_at)
        if client_ts and client_sent and received:
            want = received - (client_sent - client_ts)  # clock skew corrected
        else:
            want = client_ts
        if want and delivered_ts and abs((delivered_ts - want).total_seconds()) > 0.005:
            problems.append(f"timestamp: {record.get('timestamp')}, expected {want.isoformat()}"
                            f" (sent timestamp {ts_raw}, sentAt {sent_at}, receivedAt {record.get('receivedAt')})")
    else:
        expect("originalTimestamp" not in record, "originalTimestamp: no timestamp was sent, yet one is delivered")
        expect(record.get("timestamp") == record.get("receivedAt"),
               "timestamp: none was sent, so it must be receivedAt")
    if sent_at is not None:
        allowed.add("sentAt")
        expect(same(record.get("sentAt"), sent_at),
               f"sentAt: sent {short(sent_at)}, delivered {short(record.get('sentAt'))}")
    else:
        expect("sentAt" not in record, "sentAt: none was sent with the message or its batch, yet one is delivered")

    # context: as sent, plus the client IP unless the client set one.
    ctx = record.get("context")
    sent_ctx = msg.get("context") if isinstance(msg.get("context"), dict) else {}
    if not isinstance(ctx, dict):
        problems.append(f"context is not an object: {short(ctx)}")
    else:
        client_ip = sent_ctx.get("ip")
        if client_ip is not None:
            expect(same(ctx.get("ip"), client_ip), f"context.ip: sent {short(client_ip)}, delivered {short(ctx.get('ip'))}")
        else:
            expect(isinstance(ctx.get("ip"), str) and ctx["ip"], "context.ip: the client IP was not added")
        rest_sent = {k: v for k, v in sent_ctx.items() if k != "ip"}
        rest_got = {k: v for k, v in ctx.items() if k != "ip"}
        if "consent" in rest_sent and isinstance(rest_got.get("consent"), dict):
            # Consent is enriched (derived categories): what was sent must still be there.
            problems += contains(rest_sent.pop("consent"), rest_got.pop("consent"), "context.consent")
        problems += diff(rest_sent, rest_got, "context")

    # Every other member: forwarded unchanged, null ones included.
    for name, v in msg.items():
        if name in INTERPRETED:
            continue
        allowed.add(name)
        if name not in record:
            problems.append(f"{name}: sent {short(v)}, missing")
        else:
            problems += diff(v, record[name], name)
    problems += [f"{name}: not sent, delivered {short(record[name])}" for name in record if name not in allowed]
    return problems


def library_of(client):
    return next((lib for prefix, lib in LIBRARIES if client.startswith(prefix)), None)


def script_problems(client, firsts):
    """How one client's records (first record per messageId) depart from the call script."""
    problems = []
    library = library_of(client)
    burst_i = []
    for record in firsts:
        kind = kind_of(record)
        label = f"{kind} {record['messageId']}"
        if kind == "other":
            continue
        if record.get("userId") != USER:
            problems.append(f"{label}: userId {short(record.get('userId'))}, the script calls as {USER!r}")
        problems += [f"{label}: {p}" for p in contains(CALL_SCRIPT[kind], record, kind)]
        if library is not None:
            got = (record.get("context") or {}).get("library") if isinstance(record.get("context"), dict) else None
            name = got.get("name") if isinstance(got, dict) else None
            if name != library:
                problems.append(f"{label}: context.library.name {short(name)}, {client} sends {library!r}")
        if kind == "burst":
            i = (record.get("properties") or {}).get("i") if isinstance(record.get("properties"), dict) else None
            burst_i.append(i)
    if burst_i and sorted(burst_i, key=repr) != sorted(range(BURST), key=repr):
        missing = sorted(set(range(BURST)) - set(i for i in burst_i if isinstance(i, int)))
        problems.append(f"burst: properties.i should be 0..{BURST - 1} once each; missing {missing},"
                        f" got {len(burst_i)} values")
    return problems


def judge(client, records, sent, seen):
    """The delivery and content problems of one client's records, given what it sent."""
    problems = []
    by_id = {}
    for s in sent:
        if s["message"]["messageId"] not in seen:
            by_id.setdefault(s["message"]["messageId"], []).append(s)
    delivered = {}
    for _, record in records:
        delivered.setdefault(record["messageId"], []).append(record)
    for mid, copies in by_id.items():
        if mid in delivered:
            continue
        if any(s["accepted"] for s in copies):
            problems.append(f"{mid}: answered 2xx but never reached the log")
        else:
            problems.append(f"{mid}: refused by the gateway ({copies[-1]['refusal']})")
    for mid, recs in delivered.items():
        copies = by_id.get(mid)
        if not copies:
            problems.append(f"{mid}: in the log, but the client never sent it")
            continue
        for record in recs:
            # Retries send the same message again; the record must match one of the copies.
            attempts = [compare(s, record) for s in copies]
            best = min(attempts, key=len)
            problems += [f"{kind_of(record)} {mid}: {p}" for p in best]
    problems += script_problems(client, [recs[0] for recs in delivered.values()])
    return problems


def verdict(counts, run_all_ok, problems=()):
    """PASS when run-all succeeded, every call-script count matches exactly and nothing is wrong."""
    exact = all(counts[k] == n for k, n in EXPECTED)
    return "PASS" if run_all_ok and exact and not problems else "FAIL"


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


def collect(reader, seen, wait_s, expected_ids=(), poll_s=0.25):
    """Polls the log after a client ran; returns its new records.

    Records whose messageId is in `seen` (the log before this client) are
    ignored. Polls until the call script is complete, every id of
    `expected_ids` (answered 2xx) is there, and one more poll adds nothing, or
    until `wait_s` seconds pass (then whatever arrived is judged).
    """
    records = []
    pending = set(expected_ids) - seen
    deadline = time.monotonic() + wait_s
    while True:
        fresh = [(t, r) for t, r in reader.poll() if r["messageId"] not in seen]
        records.extend(fresh)
        pending -= {r["messageId"] for _, r in fresh}
        if complete(tally(records)) and not pending and not fresh:
            return records
        if time.monotonic() >= deadline:
            return records
        time.sleep(poll_s)


def fmt_count(found, expected):
    return f"{found}/{expected}"


def print_table(rows):
    head = ["client", "run-all"] + [k for k, _ in EXPECTED] + ["total", "unload", "dups", "other", "content", "result"]
    body = []
    for client, status, counts, problems, result in rows:
        body.append(
            [client, status]
            + [fmt_count(counts[k], n) for k, n in EXPECTED]
            + [fmt_count(sum(counts[k] for k, _ in EXPECTED), EXPECTED_TOTAL)]
            + [str(counts["unload"]), str(counts["duplicates"]), str(counts["other"])]
            + ["ok" if not problems else f"{len(problems)} problems", result]
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
    if not clients:
        print(f"error: no clients to run ({run_all} --list named none)", file=sys.stderr)
        return 1, []
    if not Path(args.log_dir).is_dir():
        print(f"warning: log dir {args.log_dir} does not exist (yet)", file=sys.stderr)

    reader = LogReader(args.log_dir, getattr(args, "refresh_cmd", None), getattr(args, "ignore_topic", None) or ())
    tap = Tap(args.base_url)
    seen = set()
    rows = []
    try:
        for client in clients:
            seen.update(r["messageId"] for _, r in reader.poll())
            malformed = reader.malformed
            print(f"== {client} (log holds {len(seen)} messageIds before it)", flush=True)
            started = time.monotonic()
            tap.take()
            ok, status = run_client(run_all, tap.url, args.write_key, client)
            sent = sent_messages(tap.take())
            accepted = {s["message"]["messageId"] for s in sent if s["accepted"]}
            records = collect(reader, seen, args.wait, accepted)
            counts = tally(records)
            problems = judge(client, records, sent, seen)
            if reader.malformed > malformed:
                problems.append(f"{reader.malformed - malformed} log lines are not JSON objects with a string messageId")
            result = verdict(counts, ok, problems)
            rows.append((client, status, counts, problems, result))
            seen.update(r["messageId"] for _, r in records)
            print(
                f"   {result}: {counts['distinct']} new messageIds in {counts['records']} records"
                f" ({counts['duplicates']} duplicates), {len(sent)} messages sent, topics {counts['topics']},"
                f" {time.monotonic() - started:.1f}s",
                flush=True,
            )
            for p in problems[:SHOWN_PROBLEMS]:
                print(f"   problem: {p}")
            if len(problems) > SHOWN_PROBLEMS:
                print(f"   ... and {len(problems) - SHOWN_PROBLEMS} more problems")
    finally:
        tap.close()

    print()
    print_table(rows)
    if reader.malformed:
        print(f"note: {reader.malformed} log lines were not JSON objects with a string messageId")
    passed = sum(1 for r in rows if r[4] == "PASS")
    failed = len(rows) - passed
    print(f"clients: {passed} passed, {failed} failed")
    return (1 if failed or not rows else 0), rows


# ------------------------------------------------------------------ self-test

def script_calls(prefix, unload=0):
    """One clean run of the call script as an SDK sends it, plus `unload` Unload Events."""
    ctx = {"library": {"name": "self-test", "version": "0"}}
    ts = "2026-11-22T23:58:33.627Z"

    def msg(kind, **fields):
        return {"messageId": f"{prefix}-{kind}", "userId": USER, "timestamp": ts, "context": ctx, **fields}

    recs = [
        msg("identify", type="identify", traits=CALL_SCRIPT["identify"]["traits"]),
        msg("order", type="track", **CALL_SCRIPT["order"]),
        msg("page", type="page", **CALL_SCRIPT["page"]),
        msg("screen", type="screen", **CALL_SCRIPT["screen"]),
        msg("group", type="group", **CALL_SCRIPT["group"]),
        msg("alias", type="alias", **CALL_SCRIPT["alias"]),
    ]
    recs += [msg(f"burst-{i}", type="track", event="Burst Event", properties={"i": i}) for i in range(BURST)]
    recs += [msg(f"unload-{i}", type="track", event="Unload Event", properties={"i": i}) for i in range(unload)]
    return recs


def batch_request(messages):
    return {"path": "/v1/batch", "body": json.dumps({"batch": messages, "sentAt": "2026-11-22T23:58:34.000Z"})}


def wire_requests(wire_dir, client, prefix):
    """The requests a real SDK sent (shared/clients/wire/CLIENT.jsonl), with messageIds
    prefixed so that every replay is new to the log."""
    out = []
    for line in (Path(wire_dir) / f"{client}.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["method"] != "POST" or not isinstance(r.get("body"), str):
            continue
        headers = {k.lower(): v for k, v in r["headers"]}
        body = r["body"]
        if r["path"] != "/v1/m":
            doc = json.loads(body)
            for m in doc.get("batch", [doc]) if isinstance(doc, dict) else []:
                if isinstance(m, dict) and isinstance(m.get("messageId"), str):
                    m["messageId"] = f"{prefix}-{m['messageId']}"
            body = json.dumps(doc)
        out.append({
            "path": r["path"],
            "body": body,
            "content_type": headers.get("content-type", "application/json"),
            "gzip": (r.get("content_encoding") or "") == "gzip",
        })
    return out


FAKE_RUN_ALL = r"""#!/usr/bin/env python3
# Fake run-all.sh for check_clients.py --self-test: sends a case's requests to
# BASE_URL (the checker's tap) and prints a run-all style status line.
import gzip, http.client, json, sys, urllib.parse
from pathlib import Path
cases = json.loads(Path(sys.argv[0] + ".json").read_text())
if sys.argv[1] == "--list":
    print("\n".join(cases))
    sys.exit(0)
base, key, client = sys.argv[1:4]
case = cases[client]
u = urllib.parse.urlsplit(base)
for req in case["requests"]:
    body = req["body"].encode()
    headers = {"Content-Type": req.get("content_type", "application/json"), "X-Write-Key": key,
               "X-Self-Test-Fault": case["fault"]}
    if req.get("gzip"):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("POST", req["path"], body=body, headers=headers)
    conn.getresponse().read()
    conn.close()
print(f"{client:<22} " + ("ok" if case["rc"] == 0 else f"failed (exit {case['rc']})"))
sys.exit(case["rc"])
"""


def fake_normalise(msg, path_type, batch_sent_at, received):
    """What the gateway writes for `msg` (README, "What the gateway does to each event")."""
    out = {"type": msg.get("type") or path_type, "messageId": msg["messageId"], "sourceId": "self-test"}
    for name in ("userId", "anonymousId"):
        v = msg.get(name)
        if v not in (None, ""):
            out[name] = v if isinstance(v, str) else json.dumps(v)
    for name in ("event", "groupId", "previousId"):
        if msg.get(name) is not None:
            out[name] = msg[name]
    out.update({k: v for k, v in msg.items() if k not in INTERPRETED})
    ctx = dict(msg.get("context") or {})
    if ctx.get("ip") is None:
        ctx["ip"] = "127.0.0.1"
    out["context"] = ctx
    ts_raw = device_time(msg)
    sent_at_raw = effective_sent_at(msg, batch_sent_at)
    sent_at = instant(sent_at_raw)
    if ts_raw is None:
        out["timestamp"] = received
    else:
        ts = instant(ts_raw)
        if sent_at:
            ts = instant(received) - (sent_at - ts)
        out["timestamp"] = ts.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out["originalTimestamp"] = ts_raw
    if sent_at_raw is not None:
        out["sentAt"] = sent_at_raw
    out["receivedAt"] = received
    return out


def apply_fault(fault, ev):
    """The events a faulty gateway writes for `ev`: each fault breaks one promise."""
    kind = kind_of(ev)
    props = ev.get("properties") if isinstance(ev.get("properties"), dict) else {}
    if fault == "alter-property" and kind == "order":
        ev["properties"]["revenue"] = 42.6
    elif fault == "drop-trait" and kind == "identify":
        del ev["traits"]["email"]
    elif fault == "alter-library" and kind == "page":
        ev["context"]["library"]["version"] += "-x"
    elif fault == "drop-context-field" and kind == "group":
        ev["context"].pop("library")
    elif fault == "extra-field" and kind == "screen":
        ev["injected"] = True
    elif fault == "keep-writekey" and kind == "alias":
        ev["writeKey"] = "k"
    elif fault == "drop-null":
        for k in [k for k, v in ev.items() if v is None]:
            del ev[k]
    elif fault == "stringify" and kind == "burst" and props.get("i") == 7:
        props["i"] = "7"
    elif fault == "original-timestamp" and kind == "identify":
        ev["originalTimestamp"] = ev["receivedAt"]
    elif fault == "skew" and kind == "order":
        ev["timestamp"] = ev["originalTimestamp"]  # the client's clock, sentAt ignored
    elif fault == "lose-one" and kind == "burst" and props.get("i") == 7:
        return []
    elif fault == "invent" and kind == "alias":
        return [ev, dict(ev, messageId="invented-" + ev["messageId"])]
    elif fault == "refuse-one" and kind == "screen":
        return None
    return [ev]


class FakeGateway(http.server.ThreadingHTTPServer):
    """A stand-in for the gateway: normalises what it gets into a local log, with the fault
    its client names in X-Self-Test-Fault."""

    daemon_threads = True

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.lock = threading.Lock()
        self.requests = 0
        super().__init__(("127.0.0.1", 0), FakeGatewayHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def write(self, events):
        # identify to its own topic, and a new segment every other request: the reader must
        # follow both.
        with self.lock:
            self.requests += 1
            for ev in events:
                d = self.log_dir / ("identifies" if ev.get("type") == "identify" else "events")
                d.mkdir(parents=True, exist_ok=True)
                with (d / f"{1 + self.requests % 2:08d}.ndjson").open("a") as f:
                    f.write(json.dumps(ev) + "\n")


class FakeGatewayHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def answer(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = inflate(raw, self.headers.get("Content-Encoding"))
        path = urllib.parse.urlsplit(self.path).path
        fault = self.headers.get("X-Self-Test-Fault", "none")
        if path == "/v1/m":
            return self.answer(200, {"success": True})
        doc = json.loads(body)
        batch = path in BATCH_PATHS
        items = doc["batch"] if batch else [doc]
        received = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        events, errors = [], []
        for i, item in enumerate(items):
            written = apply_fault(fault, fake_normalise(with_batch_members(item, doc) if batch else item, SINGLE_PATHS.get(path), doc.get("sentAt") if batch else None,
                                                        received))
            if written is None:
                errors.append({"index": i, "code": "invalid_event", "message": "refused by the self-test"})
            else:
                events += written
        self.server.write(events)
        if not batch:
            return self.answer(400, {"success": False, "code": "invalid_event", "message": "x"}) if errors \
                else self.answer(200, {"success": True})
        n = len(items)
        return self.answer(200, {"success": True, "received": n, "accepted": n - len(errors),
                                 "rejected": len(errors), "errors": errors})


def self_test_cases(wire_dir):
    """name: (requests, fault, run-all exit code, expected result, expected counts, problem
    substring the report must show)."""
    def script(prefix, unload=0):
        return [batch_request(script_calls(prefix, unload))]

    def without(prefix, kind):
        return [batch_request([m for m in script_calls(prefix) if m["messageId"] != f"{prefix}-{kind}"])]

    cases = {}
    # Real SDK traffic, as recorded, through a faithful gateway.
    wire_clients = sorted(p.stem for p in Path(wire_dir).glob("*.jsonl"))
    for client in wire_clients:
        cases[client] = (wire_requests(wire_dir, client, client), "none", 0, "PASS", {}, None)
    # The same traffic through a gateway that breaks one promise each: every one must fail.
    faults = [
        ("segment-node", "alter-property", "properties.revenue: sent 42.5, delivered 42.6"),
        ("segment-python", "drop-trait", "traits.email: sent \"ada@example.com\", missing"),
        ("browser-default", "alter-library", "context.library.version"),
        ("segment-node", "drop-context-field", "context.library: sent"),
        ("beacon", "extra-field", "injected: not sent"),
        ("browser-batching", "keep-writekey", "writeKey was not dropped"),
        ("segment-python-sync", "drop-null", "category: sent null, missing"),
        ("segment-python-gzip", "stringify", "properties.i: sent 7, delivered \"7\""),
        ("browser-keepalive", "original-timestamp", "originalTimestamp: sent timestamp"),
        ("segment-python", "skew", "timestamp: "),
        ("segment-node", "lose-one", "answered 2xx but never reached the log"),
        ("segment-python", "invent", "in the log, but the client never sent it"),
        ("segment-node", "refuse-one", "refused by the gateway (invalid_event)"),
    ]
    for client, fault, needle in faults:
        if client in wire_clients:
            name = f"{client}+{fault}"
            cases[name] = (wire_requests(wire_dir, client, name), fault, 0, "FAIL", {}, needle)
    # The counting, on hand-made calls.
    cases.update({
        "clean": (script("clean"), "none", 0, "PASS", {"burst": 50, "duplicates": 0}, None),
        "lost-burst": (without("lost", "burst-7"), "none", 0, "FAIL", {"burst": 49}, "properties.i should be"),
        "lost-alias": (without("noalias", "alias"), "none", 0, "FAIL", {"alias": 0}, None),
        "extra-order": (
            script("extra") + [batch_request([dict(script_calls("extra")[1], messageId="extra-order-2")])],
            "none", 0, "FAIL", {"order": 2}, None,
        ),
        "retried": (
            script("retry") + [batch_request(script_calls("retry")[:10] + script_calls("retry")[-3:])],
            "none", 0, "PASS", {"duplicates": 13, "distinct": 56}, None,
        ),
        "unload": (script("unl", unload=3), "none", 0, "PASS", {"unload": 3}, None),
        # ids already in the log (from before the run, or from an earlier client) re-appearing
        # are not this client's events
        "replayed-old": (
            [batch_request(script_calls("replay") + script_calls("clean")[:5] + script_calls("old")[:3])],
            "none", 0, "PASS", {"distinct": 56, "records": 56}, None,
        ),
        "other-event": (
            [batch_request(script_calls("oth") + [dict(script_calls("oth")[1], event="Surprise", messageId="oth-x")])],
            "none", 0, "PASS", {"other": 1}, None,
        ),
        "wrong-traits": (
            [batch_request([dict(m, traits={"name": "Grace"}) if m["type"] == "identify" else m
                            for m in script_calls("wt")])],
            "none", 0, "FAIL", {"identify": 1}, "identify.traits.email: missing",
        ),
        "runall-failed": (script("rf"), "none", 1, "FAIL", {"burst": 50}, None),
        "nothing": ([], "none", 0, "FAIL", {"distinct": 0}, None),
    })
    return cases


def write_fake_run_all(path, cases):
    path.write_text(FAKE_RUN_ALL)
    path.chmod(0o755)
    Path(str(path) + ".json").write_text(json.dumps(
        {name: {"requests": reqs, "fault": fault, "rc": rc} for name, (reqs, fault, rc, *_) in cases.items()}
    ))


def self_test(wire_dir=DEFAULT_WIRE):
    """Checks the checker on fake logs; prints `self-test: N passed, M failed`."""
    failures = []
    checks = [0]

    def expect(cond, what):
        checks[0] += 1
        if not cond:
            failures.append(what)

    if not Path(wire_dir).is_dir() or not any(Path(wire_dir).glob("*.jsonl")):
        print(f"self-test FAILED: no SDK recordings in {wire_dir} (shared/clients/wire)")
        return 1

    # 1. kind_of, tally, compare on hand-made records
    expect(kind_of({"type": "track", "event": "Burst Event"}) == "burst", "kind_of burst")
    expect(kind_of({"type": "track", "event": "x"}) == "other", "kind_of other track")
    expect(kind_of({"type": "Track", "event": "Burst Event"}) == "other", "kind_of is case-sensitive")
    recs = [fake_normalise(m, None, None, "2026-11-22T23:58:35.000Z") for m in script_calls("a")]
    c = tally([("t", r) for r in recs])
    expect(verdict(c, True) == "PASS" and c["distinct"] == 56, "clean tally passes")
    expect(verdict(c, False) == "FAIL", "run-all failure fails")
    expect(verdict(c, True, ["x"]) == "FAIL", "a content problem fails")
    expect(script_problems("x", recs) == [], f"the call script passes its own check: {script_problems('x', recs)}")
    sent = {"message": script_calls("a")[1], "path_type": None, "batch_sent_at": None}
    expect(compare(sent, recs[1]) == [], f"a faithful record matches: {compare(sent, recs[1])}")
    expect(not same(1, 1.0) and not same(1, True) and same({"a": [1]}, {"a": [1]}), "same() is strict")
    num = {"message": {"type": "track", "messageId": "n", "userId": 42, "event": "e"}, "path_type": None,
           "batch_sent_at": None}
    expect(compare(num, fake_normalise(num["message"], None, None, "2026-11-22T23:58:35.000Z")) == [],
           "a numeric userId is delivered as text")
    single = {"message": {"messageId": "s", "anonymousId": "a", "name": "Home"}, "path_type": "page",
              "batch_sent_at": None}
    expect(compare(single, fake_normalise(single["message"], "page", None, "2026-11-22T23:58:35.000Z")) == [],
           "a single-call path gives the type")
    skewed = {"message": {"type": "track", "messageId": "k", "userId": "u", "event": "e",
                          "timestamp": "2026-11-22T23:00:00.000Z", "sentAt": "2026-11-22T23:00:10.000Z"},
              "path_type": None, "batch_sent_at": None}
    good = fake_normalise(skewed["message"], None, None, "2026-11-22T23:58:35.000Z")
    expect(good["timestamp"] == "2026-11-22T23:58:25.000Z" and compare(skewed, good) == [],
           f"clock skew is corrected: {good['timestamp']} {compare(skewed, good)}")
    expect(any("timestamp" in p for p in compare(skewed, dict(good, timestamp=good["receivedAt"]))),
           "an uncorrected timestamp is a problem")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log_dir = tmp / "log"

        # 2. LogReader: partial trailing line, garbage lines, old records, ignored topics
        (log_dir / "events").mkdir(parents=True)
        seg = log_dir / "events" / "00000001.ndjson"
        seg.write_text(json.dumps({"type": "page", "messageId": "m1"}) + "\nnot json\n[1]\n{\"type\": \"page\"")
        (log_dir / "violations").mkdir()
        (log_dir / "violations" / "00000001.ndjson").write_text(json.dumps({"messageId": "v1"}) + "\n")
        reader = LogReader(log_dir, ignore_topics=["violations"])
        got = reader.poll()
        expect([r["messageId"] for _, r in got] == ["m1"], f"reader reads complete lines only (got {got})")
        expect(reader.malformed == 2, f"reader counts malformed lines (got {reader.malformed})")
        with seg.open("a") as f:
            f.write(', "messageId": "m2"}\n')
        got = reader.poll()
        expect([r["messageId"] for _, r in got] == ["m2"], "reader finishes the partial line later")
        expect(reader.poll() == [], "reader returns nothing new")
        seg.unlink()
        (log_dir / "violations" / "00000001.ndjson").unlink()
        (log_dir / "violations").rmdir()

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

        # 3. the whole loop: a fake run-all sends through the tap to a fake gateway
        gateway = FakeGateway(log_dir)
        cases = self_test_cases(wire_dir)
        fake = tmp / "run-all.sh"
        write_fake_run_all(fake, cases)
        # content from before the run; "replayed-old" re-sends some of it
        (log_dir / "events").mkdir(exist_ok=True)
        (log_dir / "events" / "00000000.ndjson").write_text("".join(
            json.dumps(fake_normalise(m, None, None, "2026-11-22T23:00:00.000Z")) + "\n" for m in script_calls("old")
        ))
        args = argparse.Namespace(
            run_all=str(fake), base_url=gateway.url, write_key="k",
            log_dir=str(log_dir), clients=None, wait=0.5, refresh_cmd=None, ignore_topic=["violations"],
        )
        # the loop's own report is shown only when a check fails, so it is not mistaken for ours
        report = io.StringIO()
        with contextlib.redirect_stdout(report):
            rc, rows = check(args)
        expect(rc == 1, f"check exits 1 when a client fails (got {rc})")
        by_name = {client: (status, counts, problems, result) for client, status, counts, problems, result in rows}
        expect(list(by_name) == list(cases), f"every case ran in order (got {list(by_name)})")
        for name, (_, _, _, want_result, want_counts, needle) in cases.items():
            if name not in by_name:
                continue
            _, counts, problems, result = by_name[name]
            expect(result == want_result, f"{name}: result {result}, want {want_result}: {problems[:3]}")
            for key, want in want_counts.items():
                expect(counts[key] == want, f"{name}: {key} {counts[key]}, want {want}")
            if needle is not None:
                expect(any(needle in p for p in problems), f"{name}: no problem mentions {needle!r}: {problems[:5]}")
            elif want_result == "PASS":
                expect(problems == [], f"{name}: unexpected problems {problems[:5]}")

        # 4. zero clients is a failure, not an empty success
        empty = tmp / "empty-run-all.sh"
        write_fake_run_all(empty, {})
        args.run_all = str(empty)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            rc, rows = check(args)
        expect(rc != 0 and rows == [] and "no clients" in err.getvalue(), f"zero clients fail (got {rc})")
        gateway.shutdown()
        gateway.server_close()

    if failures:
        print(report.getvalue())
    for f in failures:
        print(f"self-test FAILED: {f}")
    print("checked: kind_of/tally/compare, LogReader (partial and malformed lines, ignored topics,"
          " --refresh-cmd), the whole loop over a fake run-all, the tap and a fake gateway"
          " (real SDK recordings, faithful and with one fault each), zero clients")
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
    p.add_argument("--ignore-topic", action="append",
                   help="a topic folder of --log-dir that holds no events (repeatable; default: violations)")
    p.add_argument("--run-all", default=str(DEFAULT_RUN_ALL), help=argparse.SUPPRESS)
    p.add_argument("--wire-dir", default=str(DEFAULT_WIRE), help=argparse.SUPPRESS)
    p.add_argument("--self-test", action="store_true", help="check the checker on fake logs and exit")
    args = p.parse_args()
    if args.ignore_topic is None:
        args.ignore_topic = ["violations"]
    if args.self_test:
        return self_test(args.wire_dir)
    missing = [f"--{n.replace('_', '-')}" for n in ("base_url", "write_key", "log_dir") if not getattr(args, n)]
    if missing:
        p.error("missing " + ", ".join(missing))
    return check(args)[0]


if __name__ == "__main__":
    sys.exit(main())
