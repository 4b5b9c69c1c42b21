"""The HTTP/2 engine spike (docs/performance.md, "HTTP/2: the engine"): one minimal asyncio
server per candidate engine, each answering every stream with the same hello response.

    python benchmarks/h2_engines.py serve ENGINE PORT    # then: h2load -c 64 -m 10 URL
    python benchmarks/h2_engines.py gen FILE BATCHES     # a client's bytes: preface, SETTINGS,
                                                         # BATCHES x 10 GET streams (h2 encodes)
    python benchmarks/h2_engines.py feed ENGINE FILE     # fed in memory, for callgrind:
    valgrind --tool=callgrind python benchmarks/h2_engines.py feed ENGINE FILE

Instructions per request are the difference of two `feed` runs (100 and 600 batches) over the
5,000 streams between them. Engines: `h2` (python-hyper, what hypercorn runs), `jh2`, `ngh2`
(libnghttp2 via Cython), `zttp` (Zig, what uvicorn 0.55 runs), and `own`: a frame loop of a
few dozen lines over aserve's HPACK (protocols/hpack.py), the prototype of what aserve runs
now; the spike compiled it and the HPACK module with mypyc (`mypyc` on copies of both) for the
"own, compiled" figure. pip installs the others: `pip install h2 jh2 ngh2 zttp`.
"""

import asyncio
import sys
import time
from email.utils import formatdate

BODY = b"Hello, world!"
DATE = formatdate(time.time(), usegmt=True).encode()
HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"text/plain"),
    (b"content-length", b"13"),
    (b"server", b"aserve"),
    (b"date", DATE),
]


class H2Proto(asyncio.Protocol):
    module = "h2"

    def __init__(self):
        if self.module == "h2":
            import h2.config
            import h2.connection
            import h2.events as ev
        else:
            import jh2.config as h2config
            import jh2.connection as h2conn
            import jh2.events as ev

            class _h2:
                config = h2config
                connection = h2conn

            h2 = _h2
        self.ev = ev
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding=None)
        )

    def connection_made(self, t):
        self.t = t
        self.conn.initiate_connection()
        t.write(self.conn.data_to_send())

    def data_received(self, data):
        ev = self.ev
        conn = self.conn
        for e in conn.receive_data(data):
            if isinstance(e, ev.RequestReceived):
                conn.send_headers(e.stream_id, HEADERS)
                conn.send_data(e.stream_id, BODY, end_stream=True)
            elif isinstance(e, ev.DataReceived):
                conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        self.t.write(conn.data_to_send())


class JH2Proto(H2Proto):
    module = "jh2"


class NGH2Proto(asyncio.Protocol):
    def __init__(self):
        import ngh2

        self.ngh2 = ngh2
        self.conn = ngh2.Connection(ngh2.Role.SERVER)

    def connection_made(self, t):
        self.t = t
        self.conn.initiate_connection()
        t.write(self.conn.data_to_send())

    def data_received(self, data):
        conn = self.conn
        conn.receive_data(data)
        RR = self.ngh2.RequestReceived
        for e in conn.events():
            if type(e) is RR:
                conn.send_response(e.stream_id, HEADERS)
                conn.send_data(e.stream_id, BODY, end_stream=True)
        self.t.write(conn.data_to_send())


class ZttpProto(asyncio.Protocol):
    def __init__(self):
        import zttp

        self.zttp = zttp
        self.conn = zttp.Connection(zttp.SERVER, protocol=zttp.HTTP2)

    def connection_made(self, t):
        self.t = t
        self.conn.initiate_connection()
        t.write(self.conn.data_to_send())

    def data_received(self, data):
        zttp = self.zttp
        conn = self.conn
        conn.receive_data(data)
        NEED = zttp.NEED_DATA
        Req = zttp.Request
        hdrs = HEADERS[1:]
        while True:
            e = conn.next_event()
            if e is NEED:
                break
            if type(e) is Req:
                s = conn.stream(e.stream_id)
                s.send_response(200, hdrs)
                s.send_data(BODY)
                s.end_message()
        self.t.write(conn.data_to_send())


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, sid, payload):
    n = len(payload)
    return (
        bytes((n >> 16, (n >> 8) & 255, n & 255, ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


class OwnProto(asyncio.Protocol):
    """Own frame layer + aserve.protocols.hpack (the prototype)."""

    def __init__(self):
        from aserve.protocols import hpack

        self.hpack = hpack
        self.dec = hpack.Decoder()
        self.buf = b""
        self.preface = False
        self.block = hpack.encode_status(200) + b"".join(
            hpack.encode_field(n, v) for n, v in HEADERS[1:]
        )
        self.pending = None

    def connection_made(self, t):
        self.t = t
        settings = (3).to_bytes(2, "big") + (128).to_bytes(4, "big")
        t.write(frame(4, 0, 0, settings) + frame(8, 0, 0, (2**24).to_bytes(4, "big")))

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        i = 0
        if not self.preface:
            if len(buf) < 24:
                self.buf = buf
                return
            assert buf[:24] == PREFACE
            i = 24
            self.preface = True
        out = []
        n = len(buf)
        block = self.block
        hb = frame(1, 4, 0, block)[:5]
        while n - i >= 9:
            length = (buf[i] << 16) | (buf[i + 1] << 8) | buf[i + 2]
            if n - i - 9 < length:
                break
            ftype = buf[i + 3]
            flags = buf[i + 4]
            sid = int.from_bytes(buf[i + 5 : i + 9], "big") & 0x7FFFFFFF
            start = i + 9
            i = start + length
            if ftype == 1:
                payload = buf[start:i]
                if flags & 8:
                    pad = payload[0]
                    payload = payload[1 : len(payload) - pad]
                if flags & 0x20:
                    payload = payload[5:]
                if flags & 4:
                    headers = self.dec.decode(payload)
                    assert headers
                    sidb = sid.to_bytes(4, "big")
                    out.append(hb + sidb + block)
                    out.append(b"\x00\x00\x0d\x00\x01" + sidb + BODY)
            elif ftype == 4:
                if not flags & 1:
                    out.append(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
            elif ftype == 6 and not flags & 1:
                out.append(frame(6, 1, 0, buf[start:i]))
        self.buf = buf[i:] if i < n else b""
        if out:
            self.t.write(b"".join(out))


ENGINES = {"h2": H2Proto, "jh2": JH2Proto, "ngh2": NGH2Proto, "zttp": ZttpProto, "own": OwnProto}


def serve(engine, port):
    import uvloop

    async def main():
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(ENGINES[engine], "127.0.0.1", port, backlog=1024)
        print("ready", flush=True)
        await srv.serve_forever()

    uvloop.run(main())


def gen(path, batches):
    import h2.config
    import h2.connection
    import h2.settings

    c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**30 - 1})
    c.increment_flow_control_window(2**30)
    chunks = [c.data_to_send() + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"]
    sid = 1
    hdrs = [
        (":method", "GET"),
        (":path", "/"),
        (":scheme", "http"),
        (":authority", "127.0.0.1:8000"),
        ("user-agent", "h2load nghttp2/1.52.0"),
    ]
    for _ in range(batches):
        for _ in range(10):
            c.send_headers(sid, hdrs, end_stream=True)
            sid += 2
        chunks.append(c.data_to_send())
    import pickle

    with open(path, "wb") as f:
        pickle.dump(chunks, f)


class T:
    def __init__(self):
        self.n = 0

    def write(self, d):
        self.n += len(d)

    def get_extra_info(self, *a):
        return None


def feed(engine, path):
    import pickle

    import uvloop

    with open(path, "rb") as f:
        chunks = pickle.load(f)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    p = ENGINES[engine]()
    t = T()
    p.connection_made(t)
    for c in chunks:
        p.data_received(c)
    print(engine, len(chunks) - 1, "batches", t.n, "bytes out")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif cmd == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    else:
        feed(sys.argv[2], sys.argv[3])
