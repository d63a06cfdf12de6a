#!/usr/bin/python3
"""Idle TLS devices for bench/idle.sh: opens N TLS connections to a SIP server, each from one
of SOURCES loopback addresses (127.1.x.y), sends one OPTIONS on each and reads its 200, then
keeps them all open and silent until SIGTERM.

    idle-clients.py HOST:PORT N [--sources 200] [--workers 0] [--inflight 200] [--limit 600]

Prints one line `READY open=N failed=F seconds=S` once every connection is open and
answered (or has failed), and `FAILED reason=count ...` when some did. Runs N/15000 worker
processes (rounded up; --workers overrides), each well below a 20,000-descriptor limit.
Every connection is bounded by --limit seconds overall. Plain selectors and non-blocking
ssl sockets: asyncio's TLS keeps a 256 KiB buffer per connection, which 100,000 would not
afford. The certificate is not verified (stg's is self-signed); the TLS handshake is real.
"""

import argparse
import collections
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import time

PER_WORKER = 15000


def source_ip(i, sources):
    j = i % sources
    return f"127.1.{j // 250}.{j % 250 + 1}"


def options(host, port, src, i):
    return (
        f"OPTIONS sip:{host}:{port};transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {src}:5061;branch=z9hG4bK-idle-{os.getpid()}-{i};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:dev{i}@example.com>;tag=t{i}\r\n"
        f"To: <sip:{host}:{port}>\r\n"
        f"Call-ID: idle-{os.getpid()}-{i}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        f"Contact: <sip:dev{i}@{src}:5061;transport=tls>\r\n"
        "User-Agent: idle-bench/1.0\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class Conn:
    __slots__ = ("sock", "state", "i", "got")

    def __init__(self, sock, i):
        self.sock, self.state, self.i, self.got = sock, "connect", i, b""


def worker(host, port, first, count, sources, inflight, limit):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sel = selectors.DefaultSelector()
    idle = []
    failed = collections.Counter()
    pending = 0
    nxt = first
    end = first + count
    deadline = time.monotonic() + limit

    def fail(c, reason):
        nonlocal pending
        failed[reason.replace(" ", "_")] += 1
        pending -= 1
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def advance(c):
        """Moves c on as far as it goes without blocking; re-registers it for what it waits on."""
        nonlocal pending
        while True:
            if c.state == "connect":
                err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    return fail(c, f"connect:{os.strerror(err)}")
                sel.unregister(c.sock)
                c.sock = ctx.wrap_socket(c.sock, do_handshake_on_connect=False)
                sel.register(c.sock, selectors.EVENT_WRITE, c)
                c.state = "handshake"
            elif c.state == "handshake":
                try:
                    c.sock.do_handshake()
                except ssl.SSLWantReadError:
                    return sel.modify(c.sock, selectors.EVENT_READ, c)
                except ssl.SSLWantWriteError:
                    return sel.modify(c.sock, selectors.EVENT_WRITE, c)
                except (ssl.SSLError, OSError) as e:
                    return fail(c, f"handshake:{type(e).__name__}")
                src = c.sock.getsockname()[0]
                try:
                    c.sock.send(options(host, port, src, c.i))
                except (ssl.SSLError, OSError) as e:
                    return fail(c, f"send:{type(e).__name__}")
                c.state = "answer"
                return sel.modify(c.sock, selectors.EVENT_READ, c)
            elif c.state == "answer":
                try:
                    data = c.sock.recv(4096)
                except ssl.SSLWantReadError:
                    return None
                except (ssl.SSLError, OSError) as e:
                    return fail(c, f"recv:{type(e).__name__}")
                if not data:
                    return fail(c, "closed_before_answer")
                c.got += data
                if b"\r\n\r\n" not in c.got:
                    continue
                if not c.got.startswith(b"SIP/2.0 200"):
                    return fail(c, "status:" + c.got[8:11].decode(errors="replace"))
                # Idle from now on: no longer watched, only kept open.
                sel.unregister(c.sock)
                c.got = b""
                idle.append(c.sock)
                pending -= 1
                return None

    while nxt < end or pending:
        if time.monotonic() > deadline:
            failed["timeout"] += pending
            break
        while nxt < end and pending < inflight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.bind((source_ip(nxt, sources), 0))
                s.connect_ex((host, port))
            except OSError as e:
                failed[f"socket:{e.strerror}".replace(" ", "_")] += 1
                s.close()
                nxt += 1
                continue
            c = Conn(s, nxt)
            sel.register(s, selectors.EVENT_WRITE, c)
            pending += 1
            nxt += 1
        for key, _ in sel.select(timeout=1.0):
            advance(key.data)
    reasons = " ".join(f"{k}={v}" for k, v in failed.most_common())
    print(f"WORKER open={len(idle)} failed={sum(failed.values())} {reasons}", flush=True)
    # Held open until the parent goes away (stdin closes).
    sys.stdin.read()
    for s in idle:
        s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("n", type=int)
    ap.add_argument("--sources", type=int, default=200)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--inflight", type=int, default=200)
    ap.add_argument("--limit", type=float, default=600.0)
    ap.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    port = int(port)
    if a.worker:
        worker(host, port, a.worker[0], a.worker[1], a.sources, a.inflight, a.limit)
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    workers = a.workers or max(1, -(-a.n // PER_WORKER))
    share = -(-a.n // workers)
    start = time.monotonic()
    procs = []
    for w in range(workers):
        first = w * share
        count = min(share, a.n - first)
        if count <= 0:
            break
        cmd = [sys.executable, __file__, a.target, str(a.n), "--sources", str(a.sources),
               "--inflight", str(max(1, a.inflight // workers)), "--limit", str(a.limit),
               "--worker", str(first), str(count)]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True))
    opened = failed = 0
    reasons = collections.Counter()
    for p in procs:
        line = p.stdout.readline().split()
        if not line or line[0] != "WORKER":
            failed += 1
            reasons["worker_died"] += 1
            continue
        fields = dict(f.split("=", 1) for f in line[1:])
        opened += int(fields.pop("open"))
        failed += int(fields.pop("failed"))
        for k, v in fields.items():
            reasons[k] += int(v)
    print(f"READY open={opened} failed={failed} seconds={time.monotonic() - start:.1f}",
          flush=True)
    if reasons:
        print("FAILED " + " ".join(f"{k}={v}" for k, v in reasons.most_common()), flush=True)
    try:
        while True:
            signal.pause()
    finally:
        # Closing their stdin ends the workers, which close their connections.
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(timeout=60)


if __name__ == "__main__":
    main()
