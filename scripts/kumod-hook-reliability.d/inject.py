#!/usr/bin/env python3
"""Injects mail into one or more kumod nodes through POST /api/inject/v1 for a fixed time, as
fast as they accept it (closed loop), or paced to --rate messages per second.

Written for Vigil's scripts/kumod-hook-reliability, Apache-2.0 (stdlib only). The request
shape is the one /work/shared/tools/kumod/run.sh uses. kumod makes one message (and so one
Reception record) per recipient, so one request with --batch recipients gives --batch
messages. Each message has its own recipient (w<worker>-<n>@<domain>).

Prints one JSON object: messages kumod accepted (the sum of success_count), failed recipients,
requests, requests that errored, elapsed seconds and the rate.

usage: inject.py --targets URL[,URL...] --domain D [--workers N] [--batch N] [--duration S]
                 [--rate MSGS_PER_S]
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse

CONTENT = ("From: <sender@harness.test>\r\nTo: <rcpt@sink.test>\r\n"
           "Subject: vigil hook reliability\r\n\r\nHello from kumod.\r\n")


def worker(idx, target, args, deadline, totals, lock):
    url = urllib.parse.urlsplit(target)
    conn = None
    seq = 0
    interval = 0.0
    if args.rate > 0:
        interval = args.batch / (args.rate / args.workers)
    next_at = time.monotonic()
    accepted = failed = requests = errors = 0
    while time.monotonic() < deadline:
        if interval:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
        rcpts = [{"email": f"w{idx}-{seq + i}@{args.domain}"} for i in range(args.batch)]
        seq += args.batch
        body = json.dumps({"envelope_sender": "sender@harness.test", "content": CONTENT,
                           "recipients": rcpts})
        try:
            if conn is None:
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
            conn.request("POST", "/api/inject/v1", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            requests += 1
            if resp.status == 200:
                answer = json.loads(data)
                accepted += int(answer.get("success_count", 0))
                failed += int(answer.get("fail_count", 0))
            else:
                errors += 1
                print(f"inject: {target} answered {resp.status}: {data[:200]!r}", file=sys.stderr)
                time.sleep(0.5)
        except (OSError, http.client.HTTPException, ValueError) as err:
            # The recipients of a request that failed in transit may or may not have been
            # accepted; the comparison counts kumod's Reception records, not these totals.
            errors += 1
            print(f"inject: {target}: {err}", file=sys.stderr)
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.5)
    if conn is not None:
        conn.close()
    with lock:
        totals["messages"] += accepted
        totals["failed_recipients"] += failed
        totals["requests"] += requests
        totals["request_errors"] += errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", required=True, help="kumod HTTP base URLs, comma-separated")
    ap.add_argument("--domain", required=True)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100, help="recipients (messages) per request")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--rate", type=float, default=0, help="messages/s in all; 0 = as fast as accepted")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    totals = {"messages": 0, "failed_recipients": 0, "requests": 0, "request_errors": 0}
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + args.duration
    threads = [threading.Thread(target=worker, args=(i, targets[i % len(targets)], args, deadline, totals, lock))
               for i in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    totals["elapsed_s"] = round(elapsed, 1)
    totals["rate_per_s"] = round(totals["messages"] / elapsed, 1) if elapsed > 0 else 0
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
