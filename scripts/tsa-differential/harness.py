#!/usr/bin/env python3
"""Records KumoMTA tsa-daemon's answers to every scenario, as golden files Vigil is tested on.

For each testdata/tsa-differential/scenarios/<name>.json (written by scenarios.py) it starts a
fresh tsa-daemon on loopback with the scenario's shaping files and MX data, subscribes to
/subscribe_event_v1, posts the records one by one to /publish_log_v1 with their timestamps
set to T0 + offset (T0: a whole second just after the start), waits for the daemon's 100 ms
batches to settle, and reads /get_suspension_v1/suspended.json, /get_bounce_v1/bounced.json
and /get_config_v1/shaping.toml. Every time in the answers is written as seconds from T0, the
rule hashes are left out (each implementation hashes its own way) and the overlay is parsed
(tables, keys, values, and the reason and expiry of each key from its comments). The result
goes to testdata/tsa-differential/golden/<name>.json, and SHA256SUMS there records the digest
of each golden file and its scenario: tests/tsa_differential.rs fails if either was edited
by hand.

Usage: TSA_BIN=<tsa-daemon> KUMO_COMMIT=<commit it was built from> scripts/tsa-differential/harness.py [NAME...]
Needs python3 >= 3.11 only. About 4 s per scenario.
"""
import base64
import datetime
import glob
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DATA = os.path.join(REPO, "testdata/tsa-differential")
SETTLE = 1.5

POLICY = """local kumo = require 'kumo'
local tsa = require 'tsa'
kumo.dns.configure_test_resolver(%(zones)s)
kumo.on('tsa_init', function()
  tsa.configure_tsa_db_path(%(db)s)
  tsa.start_http_listener { listen = %(listen)s, trusted_hosts = { '127.0.0.1' } }
end)
kumo.on('tsa_load_shaping_data', function()
  return kumo.shaping.load(%(files)s, { dns_fail = 'Ignore', null_mx = 'Ignore', skip_remote = true })
end)
"""


def lua(value):
    if isinstance(value, list):
        return "{ " + ", ".join(lua(v) for v in value) + " }"
    return "[==[" + value + "]==]"


def zone_texts(zones):
    """One zone text per origin (the test resolver keeps one zone per origin): each domain's MX
    records and an address for each MX host."""
    by_origin = {}
    for domain, hosts in zones.items():
        by_origin.setdefault(domain, []).extend(f"@ 3600 IN MX {10 * (i + 1)} {h}." for i, h in enumerate(hosts))
    for host in sorted({h for hosts in zones.values() for h in hosts}):
        label, _, parent = host.partition(".")
        by_origin.setdefault(parent, []).append(f"{label} 3600 IN A 127.0.0.1")
    return ["\n".join([f"$ORIGIN {origin}."] + lines) + "\n" for origin, lines in by_origin.items()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


class Frames(threading.Thread):
    """A minimal websocket client (RFC 6455, text frames from the server) collecting frames."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /subscribe_event_v1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket upgrade refused: {head!r}")
        self.sock.settimeout(None)
        self.frames = []

    def read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    def run(self):
        try:
            while True:
                first, second = self.read(2)
                opcode, length = first & 0x0F, second & 0x7F
                if length == 126:
                    length = struct.unpack(">H", self.read(2))[0]
                elif length == 127:
                    length = struct.unpack(">Q", self.read(8))[0]
                payload = self.read(length)
                if opcode == 1:
                    self.frames.append(json.loads(payload))
                elif opcode == 8:
                    return
        except (EOFError, OSError):
            return


def seconds_from(t0, text):
    at = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(at.timestamp() - t0, 3)


def relative(t0, item):
    """`item` with `expires` as seconds from T0 and without the rule hash."""
    item = dict(item)
    item.pop("rule_hash", None)
    if "expires" in item:
        item["expires"] = seconds_from(t0, item["expires"])
    return item


def parse_overlay(t0, text):
    """The overlay as {count, domains: {domain: mx_rollup}, entries: [...]}."""
    count = None
    for line in text.splitlines():
        if line.startswith("# Number of entries:"):
            count = int(line.split(":")[1])
            break
    entries, path, reason, expires = [], None, None, None
    domains = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            parsed = tomllib.loads(stripped + "\n")
            path = []
            while isinstance(parsed, dict) and len(parsed) == 1:
                key = next(iter(parsed))
                path.append(key)
                parsed = parsed[key]
        elif stripped.startswith("# reason:"):
            reason = stripped[len("# reason:"):].strip()
        elif stripped.startswith("# expires:"):
            expires = seconds_from(t0, stripped[len("# expires:"):].strip())
        elif "=" in stripped and not stripped.startswith("#") and path is not None:
            value = tomllib.loads(stripped + "\n")
            (key, val), = value.items()
            if len(path) == 1 and key == "mx_rollup":
                domains[path[0]] = val
            elif len(path) == 3 and path[1] == "sources":
                entries.append({"domain": path[0], "source": path[2], "name": key, "value": val,
                                "reason": reason, "expires": expires})
            reason = expires = None
    entries.sort(key=lambda e: (e["domain"], e["source"], e["name"]))
    return {"count": count, "domains": domains, "entries": entries}


def record_scenario(tsa_bin, path):
    scenario = json.load(open(path))
    work = tempfile.mkdtemp(prefix=f"tsa-{scenario['name']}.")
    port = free_port()
    files = [os.path.join(REPO, f) for f in scenario["shaping_files"]]
    with open(f"{work}/init.lua", "w") as f:
        f.write(POLICY % {"zones": lua(zone_texts(scenario["zones"])), "db": lua(f"{work}/tsa.db"),
                          "listen": lua(f"127.0.0.1:{port}"), "files": lua(files)})
    daemon = subprocess.Popen([tsa_bin, "--policy", f"{work}/init.lua"], stdout=open(f"{work}/tsa.log", "w"),
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                http("GET", base + "/get_suspension_v1/suspended.json")
                break
            except OSError:
                if time.time() > deadline or daemon.poll() is not None:
                    sys.exit(f"tsa-daemon did not start for {scenario['name']}: see {work}/tsa.log")
                time.sleep(0.2)
        frames = Frames(port)
        frames.start()
        t0 = float(int(time.time()) + 1)
        time.sleep(max(0.0, t0 - time.time()))
        for item in scenario["records"]:
            record = dict(item["record"])
            record["timestamp"] = int(t0 + item["offset"])
            record["created"] = record["timestamp"]
            status, _ = http("POST", base + "/publish_log_v1", record)
            assert status == 200, status
        time.sleep(SETTLE)
        suspended = json.loads(http("GET", base + "/get_suspension_v1/suspended.json")[1])
        bounced = json.loads(http("GET", base + "/get_bounce_v1/bounced.json")[1])
        overlay = http("GET", base + "/get_config_v1/shaping.toml")[1]
        answered = time.time() - t0
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    live = []
    for frame in frames.frames:
        (kind, body), = frame.items()
        live.append({kind: relative(t0, body)})
    return {
        "scenario": scenario["name"],
        "about": scenario["about"],
        "answered_at": round(answered, 1),
        "ready_q": [relative(t0, s) for s in suspended.get("ready_q", [])],
        "sched_q": [relative(t0, s) for s in suspended.get("sched_q", [])],
        "bounces": [relative(t0, b) for b in bounced],
        "overlay": parse_overlay(t0, overlay),
        "frames": live,
    }


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main():
    tsa_bin = os.environ.get("TSA_BIN") or sys.exit("set TSA_BIN to a tsa-daemon binary (see README.md)")
    commit = os.environ.get("KUMO_COMMIT") or sys.exit("set KUMO_COMMIT to the KumoMTA commit it was built from")
    wanted = set(sys.argv[1:])
    os.makedirs(f"{DATA}/golden", exist_ok=True)
    for path in sorted(glob.glob(f"{DATA}/scenarios/*.json")):
        name = os.path.basename(path)[:-5]
        if wanted and name not in wanted:
            continue
        answer = record_scenario(tsa_bin, path)
        answer["kumomta_commit"] = commit
        with open(f"{DATA}/golden/{name}.json", "w") as f:
            json.dump(answer, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"{name}: {len(answer['ready_q'])} ready_q, {len(answer['sched_q'])} sched_q, "
              f"{len(answer['bounces'])} bounces, {len(answer['overlay']['entries'])} overlay entries, "
              f"{len(answer['frames'])} frames", file=sys.stderr)
    with open(f"{DATA}/golden/SHA256SUMS", "w") as sums:
        for path in sorted(glob.glob(f"{DATA}/golden/*.json")):
            name = os.path.basename(path)
            sums.write(f"{digest(path)}  golden/{name}\n")
            sums.write(f"{digest(f'{DATA}/scenarios/{name}')}  scenarios/{name}\n")


if __name__ == "__main__":
    main()
