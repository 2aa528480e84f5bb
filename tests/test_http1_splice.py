"""The request relay splices large Content-Length bodies from the real pool (``direct``, loopback)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from http1_peers import Origin, app_flow, read_response

from atlantic.pool.splice import abort_socket
from atlantic.pool.http11 import H1ResponseStream
from atlantic.pool.pool import UpstreamPool

MB = 1024 * 1024


def run(coro, limit: float = 30.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


def pattern(n: int) -> bytes:
    """The Origin's body: bytes 0..255 repeated."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


@pytest.fixture
def read_through_python(monkeypatch) -> list[int]:
    """Sizes of the body pieces that went through ``H1ResponseStream.read`` (not spliced)."""
    sizes: list[int] = []
    read = H1ResponseStream.read

    async def counting_read(self, max_bytes: int = 262144) -> bytes:
        data = await read(self, max_bytes)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(H1ResponseStream, "read", counting_read)
    return sizes


def test_large_bodies_are_spliced_intact_on_one_upstream_connection(read_through_python):
    """Two large GETs, a HEAD and a 304 on one app connection: bodies byte for byte, no body
    byte through Python, one upstream connection for all (kept alive across the splices)."""

    async def go():
        async with Origin() as origin, UpstreamPool("direct", warm_tunnels=0) as pool:
            async with app_flow(pool, dst=("127.0.0.1", origin.port)) as (reader, writer, _, counters):
                responses = []
                for method, target in [("GET", f"/sized?n={5 * MB}"), ("HEAD", f"/sized?n={MB}"),
                                       ("GET", "/304"), ("GET", f"/sized?n={MB}&piece=1024")]:
                    writer.write(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                    responses.append(await read_response(reader, method))
            return responses, counters, origin

    responses, counters, origin = run(go())
    (s1, h1, b1, _), (s2, h2, b2, _), (s3, _, b3, _), (s4, _, b4, _) = responses
    assert (s1, h1["content-length"], b1 == pattern(5 * MB)) == (200, str(5 * MB), True)
    assert (s2, h2["content-length"], b2) == (200, str(MB), b"")
    assert (s3, b3) == (304, b"")
    assert (s4, b4 == pattern(MB)) == (200, True)
    assert sum(read_through_python) == 0
    assert counters.bytes_down == 6 * MB and counters.aborted == 0
    assert origin.connections == 1


def test_http10_app_gets_a_spliced_body_with_content_length(read_through_python):
    """An HTTP/1.0 application: the same Content-Length framing, the body spliced, then close."""

    async def go():
        async with Origin() as origin, UpstreamPool("direct", warm_tunnels=0) as pool:
            async with app_flow(pool, dst=("127.0.0.1", origin.port)) as (reader, writer, _, _):
                writer.write(f"GET /sized?n={2 * MB} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
                response = await read_response(reader)
                rest = await reader.read()
            return response, rest

    (status, headers, body, _), rest = run(go())
    assert (status, headers["content-length"], body == pattern(2 * MB), rest) == (200, str(2 * MB), True, b"")
    assert sum(read_through_python) == 0


@contextlib.asynccontextmanager
async def cutting_origin(length: int, cut: int):
    """An origin announcing ``length`` body bytes that resets its connection after ``cut``."""
    async def handler(r, w):
        await r.readuntil(b"\r\n\r\n")
        w.write(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode() + pattern(cut))
        await w.drain()
        abort_socket(w.get_extra_info("socket").dup())  # SO_LINGER 0 on the shared socket
        w.transport.abort()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_upstream_dying_mid_spliced_body_resets_the_app_connection(read_through_python):
    """The upstream resets after 600 KB of 4 MB: the app sees a reset, never a clean end."""

    async def go():
        async with cutting_origin(4 * MB, 600_000) as port, UpstreamPool("direct", warm_tunnels=0) as pool:
            async with app_flow(pool, dst=("127.0.0.1", port)) as (reader, writer, task, counters):
                writer.write(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                received, outcome = 0, "clean-eof"
                try:
                    while data := await reader.read(65536):
                        received += len(data)
                except ConnectionResetError:
                    outcome = "reset"
                await asyncio.wait_for(task, 5)
            return head, received, outcome, counters, repr(pool)

    head, received, outcome, counters, pool = run(go())
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {4 * MB}".encode() in head
    assert outcome == "reset" and received < 4 * MB and sum(read_through_python) == 0
    assert counters.aborted == 1 and counters.upstream_errors == 1
    assert pool.endswith("connections: 0 active, 0 idle]>")


def test_app_vanishing_mid_spliced_body_closes_the_upstream_connection(read_through_python):
    """The app resets while a 64 MiB body is spliced: the flow ends quietly, the upstream is dropped."""

    async def go():
        async with Origin() as origin, UpstreamPool("direct", warm_tunnels=0) as pool:
            async with app_flow(pool, dst=("127.0.0.1", origin.port)) as (reader, writer, task, counters):
                writer.write(f"GET /sized?n={64 * MB} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                await reader.readexactly(500_000)
                writer.transport.abort()
                await asyncio.wait_for(task, 5)
            return task, counters, repr(pool)

    task, counters, pool = run(go())
    assert task.exception() is None and sum(read_through_python) == 0
    assert counters.aborted == 1 and counters.upstream_errors == 0
    assert pool.endswith("connections: 0 active, 0 idle]>")
