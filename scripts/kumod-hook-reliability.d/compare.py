#!/usr/bin/env python3
"""Compares what kumod logged with what Vigil counted, for scripts/kumod-hook-reliability.

Written for Vigil, Apache-2.0 (stdlib only).

Ground truth: the Reception and Delivery records in kumod's own local logs (decompressed JSON
lines). Records about the hook's own messages (reception_protocol "LogRecord", queue
"<name>.log_hook") are not ground truth; they are counted apart, as the hook's outcomes.
Each record is keyed per recipient by (record id, type, recipient), the identity of a Vigil
event (ingest/src/kumomta/normalise.rs makes one event per recipient, with message_id = the
record's id).

Vigil's side: every event of kind reception and delivered in GET /api/v1/events, paged with
its cursor. Vigil's data directory is fresh for each setup, so every such event came from this
run. Keys are compared as multisets:
- lost: for each key, how many times kumod logged it beyond what Vigil counted;
- duplicated: for each key, how many times Vigil counted it beyond what kumod logged (a key
  kumod never logged counts here too, and is reported on stderr).

Writes the details as JSON to --out and prints one markdown table row on stdout.
"""
import argparse
import collections
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

KIND_OF_TYPE = {"Reception": "reception", "Delivery": "delivered"}
TYPE_OF_KIND = {v: k for k, v in KIND_OF_TYPE.items()}


def recipients_of(record):
    r = record.get("recipient")
    if isinstance(r, list):
        return r
    return [r] if r is not None else []


def read_truth(paths):
    truth = collections.Counter()
    hook_outcomes = collections.Counter()
    other_types = collections.Counter()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError as err:
                    sys.exit(f"compare: {path}:{n}: not JSON ({err}); is a log segment truncated?")
                kind = record.get("type")
                if record.get("reception_protocol") == "LogRecord" or str(record.get("queue", "")).endswith(".log_hook"):
                    hook_outcomes[kind] += 1
                    continue
                if kind in KIND_OF_TYPE:
                    for rcpt in recipients_of(record):
                        truth[(record["id"], kind, rcpt)] += 1
                else:
                    other_types[kind] += 1
    return truth, hook_outcomes, other_types


def get_json(url, token):
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in range(6):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=300) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            # 503 means a dependency of Vigil's was slow; anything else is a real error.
            if err.code != 503 or attempt == 5:
                sys.exit(f"compare: GET {url}: {err.code} {err.read()[:300]!r}")
        except (urllib.error.URLError, TimeoutError) as err:
            if attempt == 5:
                sys.exit(f"compare: GET {url}: {err}")
        time.sleep(2 * (attempt + 1))


def read_vigil(base, token, frm, to):
    counted = collections.Counter()
    without_id = 0
    pages = 0
    for kind in KIND_OF_TYPE.values():
        cursor = None
        while True:
            params = {"kind": kind, "from": frm, "to": to, "limit": "1000"}
            if cursor:
                params["cursor"] = cursor
            page = get_json(f"{base}/api/v1/events?{urllib.parse.urlencode(params)}", token)
            pages += 1
            if pages % 50 == 0:
                print(f"compare: {pages} pages of Vigil events read", file=sys.stderr)
            for row in page["rows"]:
                if row.get("kind") != kind:
                    sys.exit(f"compare: asked for kind={kind}, Vigil answered a {row.get('kind')} event")
                if not row.get("message_id"):
                    without_id += 1
                    continue
                counted[(row["message_id"], TYPE_OF_KIND[kind], row.get("recipient"))] += 1
            cursor = page.get("next")
            if not cursor:
                break
    summary = get_json(f"{base}/api/v1/summary?{urllib.parse.urlencode({'group_by': 'kind', 'from': frm, 'to': to})}", token)
    summary_delivered = sum(int(r.get("delivered", 0)) for r in summary.get("rows", []))
    return counted, without_id, summary_delivered


def metric(path, name, label=None):
    """Sum of a metric's samples in a Prometheus/OpenMetrics text file (None if absent)."""
    total = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not (line.startswith(name + " ") or line.startswith(name + "{")):
                continue
            if label and label not in line:
                continue
            total = (total or 0) + float(line.rsplit(None, 1)[-1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", nargs="+", required=True, help="kumod's decompressed local logs (JSON lines)")
    ap.add_argument("--vigil", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--from", dest="frm", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--inject", required=True, help="inject.py's JSON output")
    ap.add_argument("--vigil-metrics", required=True, help="Vigil's /metrics, saved after the run")
    ap.add_argument("--queued-at-stop", required=True, help="messages still queued in kumod when it was stopped")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    truth, hook_outcomes, other_types = read_truth(a.records)
    counted, without_id, summary_delivered = read_vigil(a.vigil, a.token, a.frm, a.to)
    with open(a.inject, encoding="utf-8") as f:
        inject = json.load(f)

    lost = duplicated = unexpected = 0
    lost_by_type = collections.Counter()
    for key in truth.keys() | counted.keys():
        t, v = truth.get(key, 0), counted.get(key, 0)
        if t > v:
            lost += t - v
            lost_by_type[key[1]] += t - v
        elif v > t:
            duplicated += v - t
            if t == 0:
                unexpected += v
    receptions = sum(n for k, n in truth.items() if k[1] == "Reception")
    vigil_delivered = sum(n for k, n in counted.items() if k[1] == "Delivery")
    deduped = metric(a.vigil_metrics, "vigil_ingest_duplicate_events_total", 'source="kumomta-http"')

    warnings = []
    if receptions != inject["messages"]:
        warnings.append(f"kumod logged {receptions} Receptions but the injector counted {inject['messages']} accepted messages")
    if without_id:
        warnings.append(f"{without_id} Vigil events had no message_id and were not compared")
    if unexpected:
        warnings.append(f"{unexpected} Vigil events match no record in kumod's logs")
    if summary_delivered != vigil_delivered:
        warnings.append(f"Vigil's summary says delivered={summary_delivered}, its events list {vigil_delivered}")
    # Both hooks drop a record only with a Bounce (or, after max_age, an Expiration) of the hook
    # message that carried it. More lost records than that means records Vigil should have and
    # does not, or kumod stopped with a batch still in flight.
    dropped_by_hook = hook_outcomes.get("Bounce", 0) + hook_outcomes.get("Expiration", 0)
    if lost > dropped_by_hook:
        warnings.append(f"{lost} records lost but kumod's log shows only {dropped_by_hook} hook Bounce/Expiration records")
    if a.queued_at_stop not in ("0", ""):
        warnings.append(f"kumod still had {a.queued_at_stop} messages queued when stopped: those records count as lost here but were not dropped")
    for w in warnings:
        print(f"compare: WARNING: {w}", file=sys.stderr)

    details = {
        "setup": a.label,
        "inject": inject,
        "logged": sum(truth.values()),
        "logged_by_type": {t: sum(n for k, n in truth.items() if k[1] == t) for t in KIND_OF_TYPE},
        "counted": sum(counted.values()),
        "lost": lost,
        "lost_by_type": dict(lost_by_type),
        "duplicated": duplicated,
        "unexpected": unexpected,
        "hook_outcomes": dict(hook_outcomes),
        "other_record_types": dict(other_types),
        "vigil_deduped_events": deduped,
        "vigil_summary_delivered": summary_delivered,
        "queued_at_stop": a.queued_at_stop,
        "warnings": warnings,
    }
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(details, f, indent=1)

    deduped_text = "n/a" if deduped is None else str(int(deduped))
    print(f"| {a.label} | {inject['messages']} ({inject['rate_per_s']}/s) | {details['logged']} | {details['counted']} "
          f"| {lost} | {duplicated} | {hook_outcomes.get('Bounce', 0)} | {deduped_text} | {a.queued_at_stop} |")


if __name__ == "__main__":
    main()
