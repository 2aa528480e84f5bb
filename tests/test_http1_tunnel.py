"""Requests that switch the flow to a byte tunnel (Upgrade, CONNECT), and the stream relay under them."""

from __future__ import annotations

import asyncio
import socket

from http1_peers import LoopbackPool, LoopbackStream, Origin, app_flow, read_response

from atlantic.pool.errors import UpstreamAuthError
from atlantic.forwarder.stream_relay import relay_stream


def run(coro, limit: float = 20.0):
    """Run ``coro`` bounded by ``limit`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, limit))


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: Chat.example:8080\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


def test_upgrade_replays_request_and_relays_both_ways():
    """An Upgrade request goes through a tunnel to Host:dst-port, replayed byte for byte."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool, dst=("10.0.0.5", 8080)) as (reader, writer, task, counters):
                writer.write(UPGRADE + b"early")  # bytes right after the head travel too
                status, headers, _, _ = await read_response(reader)
                early = await reader.readexactly(len(b"echo:early"))
                writer.write(b"ping")
                ping = await reader.readexactly(len(b"echo:ping"))
                writer.write_eof()
                tail = await asyncio.wait_for(reader.read(), 5)
                await asyncio.wait_for(task, 5)
            return origin, pool, counters, status, headers, early, ping, tail

    origin, pool, counters, status, headers, early, ping, tail = run(go())
    assert status == 101 and headers["upgrade"] == "echo"
    assert (early, ping, tail) == (b"echo:early", b"echo:ping", b"")
    assert pool.tunnels == [("chat.example", 8080)] and pool.heads == []
    # the origin saw the request exactly as the app sent it, Upgrade headers included
    assert origin.requests[0]["headers"] == [("Host", "Chat.example:8080"), ("Connection", "Upgrade"), ("Upgrade", "echo")]
    assert counters.tunnels == 1 and counters.bytes_up == len(UPGRADE) + 9


def test_upgrade_byte_by_byte_after_a_normal_request():
    """A keep-alive connection that upgrades on its second request replays only that request."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                first = await read_response(reader)
                for i in range(len(UPGRADE)):
                    writer.write(UPGRADE[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)
                second = await read_response(reader)
                writer.write(b"x")
                echoed = await reader.readexactly(6)
            return origin, first[0], second[0], echoed

    origin, s1, s2, echoed = run(go())
    assert (s1, s2, echoed) == (200, 101, b"echo:x")
    assert [r["target"] for r in origin.requests] == ["/echo", "/ws"]


def test_connect_from_app_is_tunnelled_to_destination():
    """CONNECT sent by the app goes, as sent, through a tunnel to the flow's destination."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            async with app_flow(pool, dst=("10.0.0.7", 3128)) as (reader, writer, task, counters):
                writer.write(b"CONNECT inner.example:443 HTTP/1.1\r\nHost: inner.example:443\r\n\r\n")
                status, _, _, _ = await read_response(reader)
            return origin, pool, status, counters

    origin, pool, status, counters = run(go())
    assert pool.tunnels == [("10.0.0.7", 3128)]
    assert origin.requests[0]["method"] == "CONNECT" and origin.requests[0]["target"] == "inner.example:443"
    assert status == 404  # the test origin declines CONNECT; the app sees its answer
    assert counters.tunnels == 1


def test_tunnel_open_failure_is_a_502():
    """If the pool cannot open the tunnel, the app gets 502 with the reason."""

    async def go():
        async with Origin() as origin:
            pool = LoopbackPool(origin.port)
            pool.fail_with = UpstreamAuthError("proxy p rejected the credentials (407)", 407)
            async with app_flow(pool) as (reader, writer, task, _):
                writer.write(UPGRADE)
                return await read_response(reader)

    status, _, body, _ = run(go())
    assert status == 502 and b"credentials" in body


async def _echo_tunnel(idle_timeout: float, app_actions):
    """relay_stream between a socketpair end and a TCP stream to an echo server."""
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    app, ours = socket.socketpair()
    app.setblocking(False)
    ours.setblocking(False)
    try:
        stream = LoopbackStream(*await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1]))
        relay = asyncio.create_task(relay_stream(ours, stream, first_up=b"first:", idle_timeout=idle_timeout))
        seen = await app_actions(asyncio.get_running_loop(), app)
        return await asyncio.wait_for(relay, 5), seen
    finally:
        app.close()
        ours.close()
        server.close()


def test_stream_relay_half_close_travels_both_ways():
    """App EOF reaches the upstream; the upstream's EOF then reaches the app; totals counted."""

    async def actions(loop, app):
        await loop.sock_sendall(app, b"hello")
        app.shutdown(socket.SHUT_WR)
        got = b""
        for _ in range(100):
            data = await loop.sock_recv(app, 65536)
            if not data:
                break
            got += data
        return got

    result, seen = run(_echo_tunnel(5.0, actions))
    assert seen == b"first:hello"
    assert (result.bytes_up, result.bytes_down, result.reason) == (11, 11, "closed")


def test_stream_relay_idle_timeout_ends_it():
    """Nothing moving for idle_timeout ends the relay with reason 'idle'."""

    async def actions(loop, app):
        return await loop.sock_recv(app, 6)

    result, seen = run(_echo_tunnel(0.2, actions))
    assert seen == b"first:" and result.reason == "idle"
