"""HTTP/2 from the application on a terminated TLS connection: loopback TLS, real clients
(the h2 library, ``curl --http2``), the real ``direct`` pool to a loopback h11 origin."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import shutil
import ssl
from dataclasses import replace

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from atlantic.forwarder.h2serve import serve_h2
from atlantic.forwarder.h2serve_core import (
    H2ServerCore,
    Rejected,
    RequestStarted,
    request_from_headers,
    response_fields,
)
from atlantic.forwarder.http1 import HttpCounters
from atlantic.pool.api import Endpoint, ResponseHead
from atlantic.pool.errors import UpstreamTimeoutError, UpstreamUnreachableError
from atlantic.pool.pool import UpstreamPool
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from http1_peers import Origin

NAME = "atl.test"
MB = 1 << 20


def run(coro, limit: float = 60.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


def pattern(n: int) -> bytes:
    """The body the origin's /sized route sends for ``n`` bytes."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for atl.test and 127.0.0.1: (cert path, key path)."""
    return make_cert(tmp_path_factory.mktemp("h2cert"))


def make_cert(d):
    """Write a self-signed certificate for atl.test and 127.0.0.1 to ``d``: (cert, key) paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.UTC)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
           .not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME), x509.IPAddress(
               ipaddress.ip_address("127.0.0.1"))]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(key, hashes.SHA256()))
    (d / "cert.pem").write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return str(d / "cert.pem"), str(d / "key.pem")


# ---- the pool side -------------------------------------------------------------------
class Recorded:
    """A pool response that counts what was read from it and whether it was closed."""

    def __init__(self, stream) -> None:
        self.stream, self.head, self.read_bytes, self.closed = stream, stream.head, 0, False

    async def read(self, max_bytes: int = 262144) -> bytes:
        data = await self.stream.read(max_bytes)
        self.read_bytes += len(data)
        return data

    async def aclose(self) -> None:
        self.closed = True
        await self.stream.aclose()


class OriginPool:
    """The real ``direct`` pool with every request routed to the loopback origin."""

    def __init__(self, pool: UpstreamPool, port: int) -> None:
        self.pool, self.port, self.heads, self.responses = pool, port, [], []

    async def request(self, head, body):
        self.heads.append(head)
        stream = await self.pool.request(replace(head, endpoint=Endpoint("http", "127.0.0.1", self.port)), body)
        self.responses.append(Recorded(stream))
        return self.responses[-1]


class FailingPool:
    """A pool whose requests fail with ``exc`` (the error paths only)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc, self.heads = exc, []

    async def request(self, head, body):
        self.heads.append(head)
        raise self.exc


# ---- the relay on a loopback TLS server ----------------------------------------------
class StreamConn:
    """asyncio streams as the application connection serve_h2 expects."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def recv(self, max_bytes: int) -> bytes:
        return await self.reader.read(max_bytes)

    async def sendall(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def aclose(self, mode: str = "close") -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def abort(self) -> None:
        self.writer.transport.abort()


class Relay:
    """serve_h2 behind a loopback TLS listener offering ALPN h2; records notes and tasks."""

    def __init__(self, pool, cert, *, idle_timeout: float = 10.0) -> None:
        self.pool, self.cert, self.idle_timeout = pool, cert, idle_timeout
        self.counters, self.notes, self.tasks, self.port = HttpCounters(), [], [], 0

    async def __aenter__(self) -> Relay:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*self.cert)
        ctx.set_alpn_protocols(["h2"])
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader, writer) -> None:
        self.tasks.append(asyncio.current_task())
        await serve_h2(StreamConn(reader, writer), (NAME, self.port), self.pool, counters=self.counters,
                       idle_timeout=self.idle_timeout, note_error=lambda m, k=None: self.notes.append((m, k)))

    async def __aexit__(self, *exc) -> None:
        await asyncio.wait(self.tasks or [asyncio.sleep(0)], timeout=5)
        self.server.close()

    def kinds(self) -> list[str]:
        return [k for _, k in self.notes]


@contextlib.asynccontextmanager
async def stack(cert, **kw):
    """Origin, real pool (routed to it) and the relay: yields (origin, pool, relay)."""
    async with Origin() as origin, UpstreamPool("direct", warm_tunnels=0) as upstream:
        pool = OriginPool(upstream, origin.port)
        async with Relay(pool, cert, **kw) as relay:
            yield origin, pool, relay


# ---- an h2 client (the application) --------------------------------------------------
class Answer:
    """One response as the client sees it."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.hash, self.received, self.unacked, self.reset = hashlib.sha256(), 0, 0, None
        self.body = bytearray()
        self.done, self.interim = asyncio.Event(), asyncio.Event()

    @property
    def status(self) -> int:
        return int(self.headers[":status"])


class Client:
    """An asyncio h2 client over TLS; acknowledges data at once unless ``auto_ack`` is off."""

    def __init__(self, reader, writer, *, window: int | None, auto_ack: bool, keep: bool) -> None:
        self.reader, self.writer, self.auto_ack, self.keep = reader, writer, auto_ack, keep
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.answers: dict[int, Answer] = {}
        self.window = asyncio.Event()
        self.frames = bytearray()  # raw bytes received (for GOAWAY checks)
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.h2.initiate_connection()
        if window:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
            self.h2.increment_flow_control_window(window - 65535)
        self.flush()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, relay: Relay, *, window: int | None = None, auto_ack: bool = True, keep: bool = True):
        ctx = ssl.create_default_context(cafile=relay.cert[0])
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port, ssl=ctx, server_hostname=NAME)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        return cls(reader, writer, window=window, auto_ack=auto_ack, keep=keep)

    def flush(self) -> None:
        if data := self.h2.data_to_send():
            self.writer.write(data)

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            self.frames += data
            for ev in self.h2.receive_data(data):
                a = self.answers.get(getattr(ev, "stream_id", 0))
                if isinstance(ev, h2.events.ResponseReceived):
                    a.headers = dict(ev.headers)
                elif isinstance(ev, h2.events.InformationalResponseReceived):
                    a.interim.set()
                elif isinstance(ev, h2.events.DataReceived):
                    a.hash.update(ev.data)
                    a.received += len(ev.data)
                    if self.keep:
                        a.body += ev.data
                    if self.auto_ack:
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    else:
                        a.unacked += ev.flow_controlled_length
                elif isinstance(ev, h2.events.StreamEnded):
                    a.done.set()
                elif isinstance(ev, h2.events.StreamReset) and a is not None:
                    a.reset = ev.error_code
                    a.done.set()
                elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                    self.window.set()
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = ev
            self.flush()
        for a in self.answers.values():
            a.done.set()

    def start(self, path: str, method: str = "GET", authority: str | None = None, extra=(),
              end: bool = True) -> int:
        """HEADERS for a new stream; returns its id."""
        sid = self.h2.get_next_available_stream_id()
        headers = [(":method", method), (":authority", authority or f"{NAME}:{self.writer.get_extra_info('peername')[1]}")]
        if method != "CONNECT":
            headers += [(":scheme", "https"), (":path", path)]
        self.answers[sid] = Answer()
        self.h2.send_headers(sid, headers + list(extra), end_stream=end)
        self.flush()
        return sid

    async def upload(self, sid: int, body: bytes) -> None:
        """The request body within the server's windows, then END_STREAM."""
        view = memoryview(body)
        while view:
            n = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size, len(view))
            if n <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            self.h2.send_data(sid, view[:n].tobytes())
            view = view[n:]
            self.flush()
            await self.writer.drain()
        self.h2.end_stream(sid)
        self.flush()

    async def get(self, path: str, **kw) -> Answer:
        sid = self.start(path, **kw)
        await self.answers[sid].done.wait()
        return self.answers[sid]

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5)


def frame_types(data: bytes) -> list[int]:
    """The HTTP/2 frame types in ``data`` (server side: no preface)."""
    out, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        out.append(data[i + 3])
        i += 9 + length
    return out


# ---- unit: the sans-I/O core ---------------------------------------------------------
def test_request_head_from_h2_fields():
    """Pseudo-headers become the pool request: Host from :authority, cookies joined, te dropped."""
    method, head = request_from_headers(
        [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"Atl.Test"), (b":path", b"/a?b"),
         (b"cookie", b"a=1"), (b"te", b"trailers"), (b"cookie", b"b=2"), (b"content-length", b"5")],
        (NAME, 443))
    assert method == "POST" and head.endpoint == Endpoint("https", NAME, 443) and head.target == "/a?b"
    assert head.headers == (("Host", NAME), ("content-length", "5"), ("cookie", "a=1; b=2"))
    assert head.body_length == 5


def test_other_authority_is_misdirected_and_connect_refused():
    """:authority for another name or port is a 421; CONNECT is a 501; neither reaches the pool."""
    base = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")]
    for authority in (b"other.test", b"atl.test:8443", b"atl.test.evil"):
        _, result = request_from_headers(base + [(b":authority", authority)], (NAME, 443))
        assert isinstance(result, Rejected) and result.reply.status == 421, authority
    _, result = request_from_headers([(b":method", b"CONNECT"), (b":authority", b"x:1")], (NAME, 443))
    assert isinstance(result, Rejected) and result.reply.status == 501


def test_response_fields_lowercase_end_to_end():
    """A pool response head becomes lowercase end-to-end fields with the known length."""
    head = ResponseHead(200, "OK", (("Content-Type", "text/plain"), ("Connection", "x"), ("X", "1")), 12, "1.1")
    assert response_fields(head, "GET") == [(b":status", b"200"), (b"content-type", b"text/plain"),
                                            (b"content-length", b"12")]


def test_core_parses_a_request_fed_byte_by_byte():
    """The core yields one RequestStarted when a client's HEADERS arrive one byte at a time."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", NAME), (":path", "/x")],
                        end_stream=True)
    core = H2ServerCore((NAME, 443))
    core.start()
    data, events = client.data_to_send(), []
    for i in range(len(data)):
        events += core.receive_data(data[i:i + 1])
    started = [e for e in events if isinstance(e, RequestStarted)]
    assert len(started) == 1 and started[0].head.target == "/x" and started[0].end_stream


# ---- loopback: real clients, real pool -----------------------------------------------
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


@needs_curl
def test_curl_twenty_parallel_streams_on_one_connection(cert, tmp_path):
    """curl --http2 --parallel: 20 downloads multiplexed on one connection, every body intact."""
    sizes = [1 + i * 97_001 for i in range(20)]

    async def go():
        async with stack(cert) as (_origin, pool, relay):
            args = ["curl", "--http2", "-sS", "--fail", "--parallel", "--parallel-max", "20", "--cacert", cert[0],
                    "--resolve", f"{NAME}:{relay.port}:127.0.0.1"]
            for i, n in enumerate(sizes):
                args += [f"https://{NAME}:{relay.port}/sized?n={n}&piece=65536", "-o", str(tmp_path / f"f{i}")]
            proc = await asyncio.create_subprocess_exec(*args, stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            return proc.returncode, err, relay

    rc, err, relay = run(go())
    assert rc == 0, (err, relay.notes)
    for i, n in enumerate(sizes):
        assert hashlib.sha256((tmp_path / f"f{i}").read_bytes()).digest() == hashlib.sha256(pattern(n)).digest(), i
    assert relay.counters.connections == 1 and relay.counters.requests == 20
    assert relay.counters.bytes_down == sum(sizes) and relay.notes == []


@needs_curl
def test_curl_upload_five_megabytes(cert, tmp_path):
    """curl --http2 POSTs 5 MB: the origin gets every byte, with the Content-Length framing."""
    body = hashlib.sha256(b"seed").digest() * (5 * MB // 32)
    (tmp_path / "up").write_bytes(body)

    async def go():
        async with stack(cert) as (origin, pool, relay):
            proc = await asyncio.create_subprocess_exec(
                "curl", "--http2", "-sS", "--fail", "--cacert", cert[0], "--resolve", f"{NAME}:{relay.port}:127.0.0.1",
                "--data-binary", f"@{tmp_path / 'up'}", f"https://{NAME}:{relay.port}/count",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            return proc.returncode, out, err, origin, pool, relay

    rc, out, err, origin, pool, relay = run(go())
    assert rc == 0 and out == str(len(body)).encode(), err
    assert origin.requests[-1]["body"] == body and pool.heads[0].body_length == len(body)
    assert relay.counters.bytes_up == len(body)


def test_h2_client_upload_without_length_and_head(cert):
    """A body without length, after our 100 Continue, arrives whole; HEAD keeps the length, no body."""
    body = bytes(range(256)) * 8000

    async def go():
        async with stack(cert) as (origin, pool, relay):
            client = await Client.open(relay)
            sid = client.start("/count", method="PUT", end=False, extra=[("expect", "100-continue")])
            await client.answers[sid].interim.wait()
            await client.upload(sid, body)
            await client.answers[sid].done.wait()
            head = await client.get("/sized?n=5000", method="HEAD")
            await client.aclose()
            return client.answers[sid], head, pool, origin

    up, head, pool, origin = run(go())
    assert up.status == 200 and bytes(up.body) == str(len(body)).encode()
    assert pool.heads[0].body_length is None and origin.requests[0]["body"] == body
    assert not any(n.lower() == "expect" for n, _ in origin.requests[0]["headers"])
    assert head.status == 200 and head.headers["content-length"] == "5000" and head.received == 0


def test_slow_reader_backpressures_the_pool_read(cert):
    """A slow reader of 20 MB: the pool is read at most a window (1 MiB) + one read ahead of it."""
    n, window = 20 * MB, MB

    async def go():
        async with stack(cert) as (_origin, pool, relay):
            client = await Client.open(relay, window=window, auto_ack=False, keep=False)
            sid = client.start(f"/sized?n={n}")
            a, consumed, gap = client.answers[sid], 0, 0
            while not (a.done.is_set() and not a.unacked):
                await asyncio.sleep(0.002)
                if pool.responses:
                    gap = max(gap, pool.responses[0].read_bytes - consumed)
                take = min(a.unacked, 256 * 1024)
                if take:
                    consumed += take
                    a.unacked -= take
                    client.h2.acknowledge_received_data(take, sid)
                    client.flush()
            await client.aclose()
            return a, gap

    a, gap = run(go())
    assert a.received == n and a.hash.digest() == hashlib.sha256(pattern(n)).digest()
    assert gap <= window + 256 * 1024 + 65536, gap


def test_wrong_authority_is_421_and_connect_501(cert):
    """Another name on the terminated connection: 421; CONNECT: 501; the pool sees neither."""

    async def go():
        async with stack(cert) as (_origin, pool, relay):
            client = await Client.open(relay)
            other = await client.get("/", authority="other.test")
            connect = await client.get("", method="CONNECT", authority="example.com:443")
            ok = await client.get("/sized?n=10")
            await client.aclose()
            return other, connect, ok, pool, relay

    other, connect, ok, pool, relay = run(go())
    assert other.status == 421 and b"serves atl.test" in other.body
    assert connect.status == 501 and b"CONNECT" in connect.body
    assert ok.status == 200 and len(pool.heads) == 1
    assert relay.counters.bad_requests == 2


@pytest.mark.parametrize(("exc", "status", "words"), [
    (UpstreamUnreachableError("proxy p:1 refused the connection"), 502, b"upstream unreachable: proxy p:1"),
    (UpstreamTimeoutError("no answer from p:1 in 10 s"), 504, b"upstream timed out"),
])
def test_pool_failure_is_a_one_line_reply(cert, exc, status, words):
    """A pool failure before the response head: 502/504 with a one-line plain-text reason."""

    async def go():
        async with Relay(FailingPool(exc), cert) as relay:
            client = await Client.open(relay)
            a = await client.get("/x")
            await client.aclose()
            return a, relay

    a, relay = run(go())
    assert a.status == status and words in a.body and a.body.count(b"\n") == 1
    assert a.headers["content-type"].startswith("text/plain")
    assert relay.counters.upstream_errors == 1 and len(relay.notes) == 1


def test_failure_mid_body_resets_the_stream(cert):
    """The origin dies mid-body: RST_STREAM(INTERNAL_ERROR), and the connection serves on."""

    async def go():
        async with stack(cert) as (_origin, pool, relay):
            client = await Client.open(relay)
            broken = await client.get("/truncated")
            ok = await client.get("/sized?n=100")
            await client.aclose()
            return broken, ok, relay

    broken, ok, relay = run(go())
    assert broken.reset == h2.errors.ErrorCodes.INTERNAL_ERROR and broken.received == 1000
    assert ok.status == 200 and len(ok.body) == 100
    assert relay.counters.aborted == 1 and relay.counters.upstream_errors == 1


def test_client_reset_closes_the_pool_stream(cert):
    """RST_STREAM from the app mid-download closes its pool response; other streams go on."""

    async def go():
        async with stack(cert) as (_origin, pool, relay):
            client = await Client.open(relay, keep=False)
            sid = client.start(f"/sized?n={200 * MB}")
            while client.answers[sid].received < MB:
                await asyncio.sleep(0.01)
            client.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            client.flush()
            for _ in range(200):
                if pool.responses[0].closed:
                    break
                await asyncio.sleep(0.01)
            ok = await client.get("/sized?n=100")
            await client.aclose()
            return pool, ok, relay

    pool, ok, relay = run(go())
    assert pool.responses[0].closed and pool.responses[0].read_bytes < 50 * MB
    assert ok.status == 200 and relay.notes == []


def test_garbage_gets_goaway_and_close_without_traceback(cert):
    """An application that speaks no HTTP/2 on h2: GOAWAY, the connection closes, one note."""
    errors = []

    async def go():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        async with Relay(FailingPool(AssertionError()), cert) as relay:
            ctx = ssl.create_default_context(cafile=cert[0])
            ctx.set_alpn_protocols(["h2"])
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port, ssl=ctx, server_hostname=NAME)
            writer.write(b"GET / HTTP/1.1\r\nHost: atl.test\r\n\r\n")
            data = await reader.read()  # to EOF: the relay closed
            writer.close()
        return data, relay

    data, relay = run(go())
    assert 7 in frame_types(data)  # GOAWAY
    assert relay.kinds() == ["h2: the application broke HTTP/2"] and "\n" not in relay.notes[0][0]
    assert all(t.done() and t.exception() is None for t in relay.tasks) and errors == []


def test_goaway_from_app_lets_open_streams_finish_then_closes(cert):
    """The app's GOAWAY: the open stream still completes, then the relay closes the connection."""

    async def go():
        async with stack(cert) as (_origin, pool, relay):
            client = await Client.open(relay)
            sid = client.start(f"/sized?n={4 * MB}")
            client.h2.close_connection()
            client.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN  # h2#1181
            client.flush()
            await asyncio.wait_for(client.task, 10)  # EOF from the relay
            return client.answers[sid]

    a = run(go())
    assert a.done.is_set() and a.received == 4 * MB and a.reset is None


def test_idle_connection_gets_goaway_and_closes(cert):
    """No traffic for idle_timeout: GOAWAY(NO_ERROR), then the connection closes."""

    async def go():
        async with stack(cert, idle_timeout=0.3) as (_origin, pool, relay):
            client = await Client.open(relay)
            ok = await client.get("/sized?n=10")
            await asyncio.wait_for(client.task, 5)
            return ok, client

    ok, client = run(go())
    assert ok.status == 200 and client.goaway is not None and client.goaway.error_code == 0
