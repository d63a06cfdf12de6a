#!/usr/bin/python3
"""A small SIP user agent client for stg's interop tests over tcp, tls, ws and wss (SIPp
has no TLS and no WebSocket). Debian python3 + python3-websockets 10.4, asyncio API.

  sip_uac.py call    URL TARGET   INVITE/200/ACK/BYE/200 (route set from Record-Route)
  sip_uac.py cancel  URL TARGET   INVITE/1xx/CANCEL -> 200 + 487, ACK
  sip_uac.py options URL TARGET   OPTIONS -> prints the status
  sip_uac.py hold    URL TARGET   OPTIONS, then one more OPTIONS on the SAME connection for
                                  each line read on stdin (a connection kept across a reload)

URL: tcp://host:port, tls://host:port (TLS 1.2 only, like the Linphone SDK; certificate not
verified, its SHA-256 printed as 'cert <hex>'), ws://host:port, wss://host:port.
Prints one line per result ('status 200', 'call ok', ...); exits non-zero on failure.
"""
import asyncio, hashlib, random, ssl, sys

TIMEOUT = 10.0


class Conn:
    async def open(self, url):
        scheme, rest = url.split("://", 1)
        host, port = rest.rsplit(":", 1)
        self.scheme, self.host, self.port = scheme, host, int(port)
        ctx = None
        if scheme in ("tls", "wss"):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if scheme == "tls":
                ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if scheme in ("ws", "wss"):
            import websockets
            self.ws = await websockets.connect(f"{scheme}://{host}:{port}", subprotocols=["sip"], ssl=ctx, open_timeout=5)
            assert self.ws.subprotocol == "sip", self.ws.subprotocol
            sock = self.ws.transport.get_extra_info("socket")
            sslobj = self.ws.transport.get_extra_info("ssl_object")
        else:
            self.ws = None
            self.reader, self.writer = await asyncio.open_connection(host, int(port), ssl=ctx)
            sock = self.writer.get_extra_info("socket")
            sslobj = self.writer.get_extra_info("ssl_object")
        self.local = sock.getsockname()
        if sslobj is not None:
            der = sslobj.getpeercert(binary_form=True)
            print("cert", hashlib.sha256(der).hexdigest(), sslobj.version(), flush=True)
        self.buf = b""

    def via_transport(self):
        return {"tcp": "TCP", "tls": "TLS", "ws": "WS", "wss": "WSS"}[self.scheme]

    async def send(self, text):
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        if self.ws:
            await self.ws.send(data.decode())
        else:
            self.writer.write(data)
            await self.writer.drain()

    async def recv(self):
        if self.ws:
            m = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            return parse(m.encode() if isinstance(m, str) else m)
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end >= 0:
                head = self.buf[:head_end].decode("utf-8", "replace")
                cl = 0
                for line in head.split("\r\n")[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() in ("content-length", "l"):
                        cl = int(v.strip())
                total = head_end + 4 + cl
                if len(self.buf) >= total:
                    msg, self.buf = self.buf[:total], self.buf[total:]
                    return parse(msg)
            chunk = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk


def parse(raw):
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip().lower(), v.strip()))
    return {"start": lines[0], "headers": headers}


def hdr(msg, name):
    return [v for k, v in msg["headers"] if k == name]


def status(msg):
    parts = msg["start"].split(" ")
    return int(parts[1]) if parts[0] == "SIP/2.0" else None


async def final(conn, want_method=None):
    """Skips provisionals (and stray requests); returns the first final response."""
    while True:
        m = await conn.recv()
        s = status(m)
        if s is None:
            continue
        if s >= 200:
            return m
        print("provisional", s, flush=True)


def request(conn, method, ruri, call_id, cseq, tag, to_tag="", routes=(), extra=""):
    branch = "z9hG4bK" + "%08x" % random.getrandbits(32)
    host, port = conn.local[0], conn.local[1]
    route = "".join(f"Route: {r}\n" for r in routes)
    to = f"<{TARGET}>" + (f";tag={to_tag}" if to_tag else "")
    return (f"{method} {ruri} SIP/2.0\nVia: SIP/2.0/{conn.via_transport()} {host}:{port};branch={branch};rport\n"
            f"Max-Forwards: 70\n{route}From: <sip:alice@example.com>;tag={tag}\nTo: {to}\nCall-ID: {call_id}\n"
            f"CSeq: {cseq} {method}\nContact: <sip:alice@{host}:{port};transport={conn.scheme}>\n{extra}Content-Length: 0\n\n")


async def main(mode, url):
    conn = Conn()
    await conn.open(url)
    call_id = "%016x@uac" % random.getrandbits(64)
    tag = "%08x" % random.getrandbits(32)
    if mode in ("options", "hold"):
        n = 1
        while True:
            await conn.send(request(conn, "OPTIONS", TARGET, call_id, n, tag))
            print("status", status(await final(conn)), flush=True)
            if mode == "options":
                return
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            n += 1
    invite = request(conn, "INVITE", TARGET, call_id, 1, tag)
    await conn.send(invite)
    if mode == "cancel":
        while True:
            m = await conn.recv()
            if status(m) is not None and 100 < status(m) < 200:
                break
        cancel = invite.replace("INVITE " + TARGET, "CANCEL " + TARGET, 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        await conn.send(cancel)
        got = {}
        while 200 not in got or 487 not in got:
            m = await conn.recv()
            s = status(m)
            if s and s >= 200:
                got[s] = m
                print("status", s, hdr(m, "cseq")[0], flush=True)
        to = hdr(got[487], "to")[0]
        ack = invite.replace("INVITE " + TARGET, "ACK " + TARGET, 1).replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        ack = "\n".join(("To: " + to) if l.startswith("To:") else l for l in ack.split("\n"))
        await conn.send(ack)
        print("cancel ok", flush=True)
        return
    ok = await final(conn)
    if status(ok) != 200:
        sys.exit(f"INVITE answered {ok['start']}")
    to_tag = hdr(ok, "to")[0].split("tag=")[1].split(";")[0]
    rr = []
    for v in hdr(ok, "record-route"):
        rr.extend(x.strip() for x in v.split(","))
    routes = list(reversed(rr))
    contact = hdr(ok, "contact")[0].strip("<>").split(">")[0]
    await conn.send(request(conn, "ACK", contact, call_id, 1, tag, to_tag, routes))
    await asyncio.sleep(0.2)
    await conn.send(request(conn, "BYE", contact, call_id, 2, tag, to_tag, routes))
    bye = await final(conn)
    if status(bye) != 200:
        sys.exit(f"BYE answered {bye['start']}")
    print("call ok", flush=True)


if __name__ == "__main__":
    MODE, URL, TARGET = sys.argv[1], sys.argv[2], sys.argv[3]
    asyncio.run(asyncio.wait_for(main(MODE, URL), 30))
