"""Real peers on loopback for the request-relay tests (not a test module).

- :class:`Origin`: an h11 origin server with a few routes (echo, sized and chunked
  bodies, 204/304, truncated bodies, a WebSocket-style upgrade that then echoes bytes).
- :class:`LoopbackPool`: a small but real implementation of the Pool protocol
  (``atlantic.pool.api``): keep-alive h11 connections to the origin, reused across
  requests; bodies streamed both ways; tunnels are TCP connections to the origin.
- :func:`app_flow`: a connected application socket pair with ``serve_http`` on one end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from urllib.parse import parse_qs, urlsplit

import h11

from atlantic.pool.errors import RemoteProtocolError, UpstreamUnreachableError
from atlantic.forwarder.http1 import HttpCounters, serve_http
from atlantic.pool.api import RequestHead, ResponseHead

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class Origin:
    """An h11 HTTP/1.1 origin on 127.0.0.1; records every request it serves."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            for _ in range(100000):  # bounded: requests per connection
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                if await self._respond(conn, request, body, reader, writer) == "switched":
                    return
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError):
            return
        except asyncio.CancelledError:  # loop shutdown: end quietly (3.11 logs cancelled handlers)
            return
        finally:
            writer.close()

    async def _read_request(self, conn, reader):
        request, body = None, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._record(request, bytes(body))
                return request, bytes(body)
            else:
                return None, b""

    def _record(self, request, body: bytes) -> None:
        self.requests.append(
            {
                "method": request.method.decode(),
                "target": request.target.decode(),
                "headers": [(n.decode(), v.decode()) for n, v in request.headers.raw_items()],
                "body": body,
            }
        )

    async def _respond(self, conn, request, body, reader, writer) -> str | None:
        url = urlsplit(request.target.decode())
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path

        async def send(*events):
            for event in events:
                writer.write(conn.send(event))
            await writer.drain()

        if path == "/ws":
            writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[("Upgrade", "echo"), ("Connection", "Upgrade")])))
            leftover, _ = conn.trailing_data
            if leftover:
                writer.write(b"echo:" + leftover)
            await writer.drain()
            for _ in range(100):
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(b"echo:" + data)
                await writer.drain()
            return "switched"
        if path == "/echo":
            info = {"method": request.method.decode(), "target": request.target.decode(),
                    "headers": [[n.decode(), v.decode()] for n, v in request.headers.raw_items()],
                    "body": body.decode("latin-1")}
            data = json.dumps(info).encode()
            await send(h11.Response(status_code=200, headers=[("Content-Length", str(len(data))), ("Content-Type", "application/json")]),
                       h11.Data(data=data), h11.EndOfMessage())
        elif path in ("/sized", "/chunked"):
            n, piece = int(q.get("n", "1000")), int(q.get("piece", "262144"))
            headers = [("Content-Length", str(n))] if path == "/sized" else []
            await send(h11.Response(status_code=200, headers=headers + [("X-Origin", "yes")]))
            sent = 0
            block = bytes(range(256)) * (piece // 256 + 1)
            while sent < n:
                k = min(piece, n - sent)
                if request.method != b"HEAD":
                    writer.write(conn.send(h11.Data(data=block[:k])))
                    await writer.drain()
                sent += k
                if request.method == b"HEAD":
                    break
            await send(h11.EndOfMessage())
        elif path == "/count":
            data = str(len(body)).encode()
            await send(h11.Response(status_code=200, headers=[("Content-Length", str(len(data)))]), h11.Data(data=data), h11.EndOfMessage())
        elif path in ("/204", "/304"):
            await send(h11.Response(status_code=int(path[1:]), headers=[("ETag", '"x"')]), h11.EndOfMessage())
        elif path == "/truncated":
            length = [] if q.get("chunked") else [("Content-Length", "100000")]
            writer.write(conn.send(h11.Response(status_code=200, headers=length)))
            writer.write(conn.send(h11.Data(data=b"x" * 1000)))
            await writer.drain()
            writer.transport.abort()
            return "switched"
        elif path == "/status":
            await send(h11.Response(status_code=int(q["code"]), headers=[("Content-Length", "2")]), h11.Data(data=b"ok"), h11.EndOfMessage())
        else:
            await send(h11.Response(status_code=404, headers=[("Content-Length", "0")]), h11.EndOfMessage())
        return None


class _OriginConn:
    """One keep-alive h11 client connection to the origin."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    async def next_event(self):
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(f"origin broke HTTP: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.reader.read(65536))


class LoopbackResponse:
    """The Pool's ResponseStream over an origin connection; counts what was pulled."""

    def __init__(self, pool: LoopbackPool, oc: _OriginConn, head: ResponseHead) -> None:
        self.pool, self.oc, self.head = pool, oc, head
        self.complete = False

    async def read(self, max_bytes: int = 262144) -> bytes:
        if self.complete:
            return b""
        event = await self.oc.next_event()
        if isinstance(event, h11.Data):
            data = bytes(event.data)
            self.pool.pulled += len(data)
            self.pool.max_read = max(self.pool.max_read, len(data))
            return data
        if isinstance(event, h11.EndOfMessage):
            self.complete = True
            return b""
        if isinstance(event, h11.ConnectionClosed):
            raise RemoteProtocolError("origin closed mid-body")
        raise RemoteProtocolError(f"unexpected {event!r}")

    async def aclose(self) -> None:
        oc = self.oc
        if self.complete and oc.conn.our_state is h11.DONE and oc.conn.their_state is h11.DONE:
            oc.conn.start_next_cycle()
            self.pool.idle.append(oc)
        else:
            oc.writer.close()


class LoopbackStream:
    """The Pool's ByteStream over a TCP connection."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer

    async def read(self, max_bytes: int = 262144) -> bytes:
        return await self.reader.read(max_bytes)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_eof(self) -> None:
        self.writer.write_eof()

    async def aclose(self, *, reset: bool = False) -> None:
        if reset:
            self.writer.transport.abort()
        else:
            self.writer.close()


class LoopbackPool:
    """A real Pool on loopback: every endpoint maps to the test origin, connections reused."""

    def __init__(self, origin_port: int) -> None:
        self.origin_port = origin_port
        self.idle: list[_OriginConn] = []
        self.heads: list[RequestHead] = []
        self.tunnels: list[tuple[str, int]] = []
        self.fail_with: BaseException | None = None
        self.ignore_body = False  # answer before the body: send the request bodiless, never pull it
        self.pulled = 0
        self.max_read = 0
        self.opened = 0

    async def _connect(self):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.origin_port)
        except OSError as exc:
            raise UpstreamUnreachableError(f"origin 127.0.0.1:{self.origin_port} unreachable: {exc}") from None
        self.opened += 1
        return reader, writer

    async def request(self, head: RequestHead, body) -> LoopbackResponse:
        self.heads.append(head)
        if self.fail_with is not None:
            raise self.fail_with
        oc = self.idle.pop() if self.idle else _OriginConn(*await self._connect())
        headers = list(head.headers)
        if self.ignore_body:
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            body = None
        elif head.body_length is None:
            headers.append(("Transfer-Encoding", "chunked"))
        elif head.body_length and not any(n.lower() == "content-length" for n, _ in headers):
            headers.append(("Content-Length", str(head.body_length)))
        oc.writer.write(oc.conn.send(h11.Request(method=head.method, target=head.target, headers=headers)))
        if body is not None:
            async for chunk in body:
                oc.writer.write(oc.conn.send(h11.Data(data=chunk)))
                await oc.writer.drain()
        oc.writer.write(oc.conn.send(h11.EndOfMessage()))
        await oc.writer.drain()
        while True:
            event = await oc.next_event()
            if isinstance(event, h11.Response):
                break
            if not isinstance(event, h11.InformationalResponse):
                raise RemoteProtocolError(f"origin sent {event!r} instead of a response")
        headers = tuple((n.decode(), v.decode()) for n, v in event.headers.raw_items() if n.lower().decode() not in HOP)
        length = None
        for n, v in event.headers:
            if n == b"content-length":
                length = int(v)
        if head.method == "HEAD" or event.status_code in (204, 304):
            length = 0
        return LoopbackResponse(self, oc, ResponseHead(event.status_code, event.reason.decode(), headers, length, "1.1"))

    async def open_tunnel(self, host: str, port: int) -> LoopbackStream:
        self.tunnels.append((host, port))
        if self.fail_with is not None:
            raise self.fail_with
        return LoopbackStream(*await self._connect())

    def counters(self) -> dict:
        return {"requests": len(self.heads), "connections_opened": self.opened}

    async def aclose(self) -> None:
        for oc in self.idle:
            oc.writer.close()
        self.idle.clear()


@contextlib.asynccontextmanager
async def app_flow(pool, *, first_bytes: bytes = b"", dst=("10.1.2.3", 80), counters=None, sndbuf: int | None = None):
    """An application connection (reader, writer) whose other end is served by serve_http.

    Yields (reader, writer, serve_task, counters); the served socket is closed by
    serve_http, the task awaited (bounded) on exit.
    """
    counters = counters or HttpCounters()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        connect = asyncio.ensure_future(asyncio.open_connection("127.0.0.1", listener.getsockname()[1]))
        sock, _ = await loop.sock_accept(listener)
        reader, writer = await connect
    finally:
        listener.close()
    sock.setblocking(False)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    task = asyncio.create_task(serve_http(sock, first_bytes, dst, pool, counters=counters, idle_timeout=5.0))
    try:
        yield reader, writer, task, counters
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        if not task.done():
            task.cancel()


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[int, dict, bytes, list]:
    """Parse one response from ``reader``: (status, lowercase headers, body, raw header list).

    Body by Content-Length, chunked, or to EOF; 1xx heads are returned as they come.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    raw = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
    headers = {n.lower(): v for n, v in raw}
    if method == "HEAD" or status in (204, 304) or status < 200:
        return status, headers, b"", raw
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"])), raw
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, headers, bytes(body), raw
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return status, headers, await reader.read(), raw
