"""The request relay over the real shared pool (``direct`` upstream) to a loopback h11 origin."""

from __future__ import annotations

import asyncio
import json

from http1_peers import Origin, app_flow, read_response

from atlantic.pool.pool import UpstreamPool


def run(coro, limit: float = 30.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


def test_requests_on_new_app_connections_reuse_one_pool_connection():
    """Sequential app connections (one request each) ride one warm pooled connection."""

    async def go():
        async with Origin() as origin:
            dst = ("127.0.0.1", origin.port)
            async with UpstreamPool("direct", warm_tunnels=0) as pool:
                bodies = []
                for i in range(5):
                    async with app_flow(pool, dst=dst) as (reader, writer, task, _):
                        writer.write(f"POST /echo?i={i} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi".encode())
                        status, _, body, _ = await read_response(reader)
                        assert status == 200
                        bodies.append(json.loads(body))
                    writer.close()
                counters = pool.counters()
            return origin, bodies, counters

    origin, bodies, counters = run(go())
    assert [b["target"] for b in bodies] == [f"/echo?i={i}" for i in range(5)]
    assert all(b["body"] == "hi" for b in bodies)
    assert origin.connections == 1, counters


def test_chunked_upload_and_large_download_through_real_pool():
    """A chunked upload and an 8 MiB chunked download stream through the real pool."""

    async def go():
        async with Origin() as origin:
            dst = ("127.0.0.1", origin.port)
            async with UpstreamPool("direct", warm_tunnels=0) as pool:
                async with app_flow(pool, dst=dst) as (reader, writer, task, counters):
                    writer.write(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
                    up = await read_response(reader)
                    writer.write(b"GET /chunked?n=8388608 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    down = await read_response(reader)
                    writer.write(b"HEAD /sized?n=77 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    head = await read_response(reader, "HEAD")
            return up, down, head, counters

    up, down, head, counters = run(go())
    assert json.loads(up[2])["body"] == "abc"
    assert down[1]["transfer-encoding"] == "chunked" and len(down[2]) == 8388608
    assert head[1]["content-length"] == "77" and head[2] == b""
    assert counters.requests == 3 and counters.upstream_errors == 0


def test_unreachable_origin_through_real_pool_is_502():
    """The real pool's connection failure reaches the app as a one-line 502."""

    async def go():
        async with UpstreamPool("direct", warm_tunnels=0, connect_timeout=2.0) as pool:
            async with app_flow(pool, dst=("127.0.0.1", 1)) as (reader, writer, task, _):
                writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                return await read_response(reader)

    status, _, body, _ = run(go())
    assert status in (502, 504) and body.startswith(b"Atlantic: ") and body.count(b"\n") == 1


def test_upgrade_through_real_pool_tunnel():
    """An Upgrade request rides a real pool tunnel to the origin and echoes both ways."""

    async def go():
        async with Origin() as origin:
            async with UpstreamPool("direct", warm_tunnels=0) as pool:
                async with app_flow(pool, dst=("127.0.0.1", origin.port)) as (reader, writer, task, _):
                    writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                    status = (await read_response(reader))[0]
                    writer.write(b"ping")
                    echoed = await reader.readexactly(9)
            return status, echoed

    assert run(go()) == (101, b"echo:ping")
