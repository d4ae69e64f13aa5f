#!/usr/bin/env python3
"""Tiny fake receiving MTA (asyncio, stdlib only).

Provenance: copied from Vigil's shared kumod harness, /work/shared/tools/kumod/fake_mta.py,
for scripts/kumod-hook-reliability; the changes are --quiet and --save (below). Apache-2.0.

Accepts every recipient except those whose local part starts with "defer": those get
Yahoo's TSS04 deferral (421, then the connection is closed, as Yahoo does).
Each accepted message is counted; one JSON line per SMTP event goes to stdout. With --quiet,
only a stats line every 5 s: at thousands of messages a second the per-message lines would
cost the sink more CPU than the SMTP itself.

With --save DIR, each accepted message is also written to DIR/<n>.eml as received
(scripts/kumod-feedback-fixture returns one in a feedback report).

usage: fake_mta.py [--listen HOST] [--port PORT] [--quiet] [--save DIR]
"""
import argparse, asyncio, json, sys, time

TSS04 = ("421 4.7.0 [TSS04] Messages from {peer} temporarily deferred due to unexpected "
         "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes")

STATS = {"connections": 0, "accepted_rcpt": 0, "deferred_rcpt": 0, "messages": 0}
QUIET = False
SAVE = None


def log(**kw):
    kw["t"] = round(time.time(), 3)
    print(json.dumps(kw), flush=True)


async def handle(reader, writer):
    peer = writer.get_extra_info("peername")[0]
    STATS["connections"] += 1
    async def send(line):
        writer.write((line + "\r\n").encode())
        await writer.drain()
    await send("220 fake-yahoo.localhost ESMTP ready")
    rcpts = []
    try:
        while True:
            raw = await reader.readline()
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                if verb == "EHLO":
                    await send("250-fake-yahoo.localhost\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 41943040")
                else:
                    await send("250 fake-yahoo.localhost")
            elif verb == "MAIL":
                rcpts = []
                await send("250 2.1.0 Sender ok")
            elif verb == "RCPT":
                addr = line.split(":", 1)[1].strip().strip("<>").split(">")[0]
                local = addr.split("@")[0].lower()
                if local.startswith("defer"):
                    STATS["deferred_rcpt"] += 1
                    log(event="rcpt_deferred", rcpt=addr, peer=peer)
                    await send(TSS04.format(peer=peer))
                    break  # 421: close the connection
                rcpts.append(addr)
                STATS["accepted_rcpt"] += 1
                await send("250 2.1.5 Recipient ok")
            elif verb == "DATA":
                if not rcpts:
                    await send("554 5.5.1 No valid recipients")
                    continue
                await send("354 Go ahead")
                size = 0
                body = [] if SAVE else None
                while True:
                    d = await reader.readline()
                    if not d or d in (b".\r\n", b".\n"):
                        break
                    size += len(d)
                    if body is not None:
                        body.append(d[1:] if d.startswith(b"..") else d)
                STATS["messages"] += 1
                if body is not None:
                    with open(f"{SAVE}/{STATS['messages']}.eml", "wb") as f:
                        f.write(b"".join(body))
                if not QUIET:
                    log(event="message_accepted", rcpts=rcpts, size=size, peer=peer, stats=STATS)
                await send("250 2.0.0 OK accepted")
                rcpts = []
            elif verb == "RSET":
                rcpts = []
                await send("250 2.0.0 OK")
            elif verb == "NOOP":
                await send("250 2.0.0 OK")
            elif verb == "QUIT":
                await send("221 2.0.0 Bye")
                break
            else:
                await send("502 5.5.2 Command not implemented")
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def report_stats():
    while True:
        await asyncio.sleep(5)
        log(event="stats", stats=STATS)


async def main():
    global QUIET, SAVE
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--save")
    a = ap.parse_args()
    QUIET = a.quiet
    SAVE = a.save
    srv = await asyncio.start_server(handle, a.listen, a.port)
    log(event="listening", addr=f"{a.listen}:{a.port}")
    # Keep a reference: the event loop holds tasks only weakly.
    stats_task = asyncio.get_running_loop().create_task(report_stats()) if QUIET else None
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
