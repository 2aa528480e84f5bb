"""Large bodies through the request relay: streamed with backpressure, never buffered whole."""

from __future__ import annotations

import asyncio
import hashlib
import socket

from http1_peers import LoopbackPool, Origin, app_flow

SIZE = 32 * 1024 * 1024
PATTERN = bytes(range(256)) * 1024  # the origin's body repeats bytes 0..255
BOUND = 2 * 1024 * 1024  # one relay buffer + small socket buffers on both ends, with margin


def run(coro, limit: float = 60.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


def test_32mib_response_streams_with_bounded_memory():
    """While the app stops reading, the relay stops pulling: at most a few buffers in flight."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool, sndbuf=65536) as (reader, writer, task, counters):
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                writer.write(f"GET /sized?n={SIZE} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                received = 0
                digest = hashlib.sha256()
                gaps = []
                for pause_at in (1, 8, 20):  # MiB: stop reading there for a while
                    while received < pause_at * 1024 * 1024:
                        data = await reader.read(65536)
                        assert data
                        digest.update(data)
                        received += len(data)
                    before = -1
                    for _ in range(50):  # until the relay stops pulling (bounded: 5 s)
                        await asyncio.sleep(0.1)
                        if pool.pulled == before:
                            break
                        before = pool.pulled
                    assert pool.pulled == before  # the relay stalls while the app is not reading
                    gaps.append(pool.pulled - received)
                while received < SIZE:
                    data = await reader.read(262144)
                    assert data
                    digest.update(data)
                    received += len(data)
                writer.close()
                await asyncio.wait_for(task, 10)
            await pool.aclose()
            return head, received, digest.hexdigest(), gaps, pool, counters

    head, received, digest, gaps, pool, counters = run(go())
    expected = hashlib.sha256(PATTERN * (SIZE // len(PATTERN))).hexdigest()
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {SIZE}".encode() in head
    assert received == SIZE and digest == expected
    assert max(gaps) < BOUND, gaps
    assert pool.max_read <= 262144  # pulled in pieces, never the whole body
    assert counters.bytes_down == SIZE


def test_16mib_upload_streams_through():
    """A 16 MiB Content-Length upload reaches the origin whole, pulled chunk by chunk."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, counters):
                n = 16 * 1024 * 1024
                writer.write(f"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n".encode())
                block = b"u" * 1048576
                for _ in range(16):
                    writer.write(block)
                    await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(len(str(n)))
            await pool.aclose()
            return head, body, counters

    head, body, counters = run(go())
    assert head.startswith(b"HTTP/1.1 200") and body == str(16 * 1024 * 1024).encode()
    assert counters.bytes_up == 16 * 1024 * 1024
