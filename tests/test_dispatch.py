"""forwarder/dispatch.py on loopback: a real listener, a real ``direct`` pool, real peers.

The NAT lookup is a function of the test: every accepted flow "was going to" the peer
the test names, as the system stack would say.
"""

from __future__ import annotations

import asyncio
import socket

from dispatch_peers import client_hello, dispatching, echo_server, to
from http1_peers import Origin

from atlantic.forwarder.dispatch import Dispatcher
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.upstream import parse_upstream

TIMEOUT = 15


def run(coro):
    """Run one test coroutine, bounded in time."""
    async def bounded():
        async with asyncio.timeout(TIMEOUT):
            return await coro
    return asyncio.run(bounded())


def refused_port() -> int:
    """A loopback port nothing listens on."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


async def until(predicate, steps: int = 500) -> None:
    """Let the loop run until ``predicate()`` holds (bounded)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def read_to_end(r: asyncio.StreamReader) -> bytes | ConnectionResetError:
    """Everything until EOF, or the reset that ended it."""
    try:
        return await r.read()
    except ConnectionResetError as exc:
        return exc


async def http_get(port: int, path: str) -> bytes:
    """One HTTP/1.1 request through the dispatcher; the whole answer (the flow closes after)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: origin.test\r\nConnection: close\r\n\r\n".encode())
    await w.drain()
    data = await r.read()
    w.close()
    return data


def test_http_flow_goes_to_the_request_relay():
    """An HTTP request is served by the request relay, through the pool, to the destination."""
    async def main():
        async with Origin() as origin, dispatching(to(origin.port)) as (d, port):
            answer = await http_get(port, "/echo")
            await until(lambda: d.flows_open == 0)
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert [r["target"] for r in origin.requests] == ["/echo"]
            assert d.kinds["http"] == 1 and d.http_counters.requests == 1
            assert d.counters()["pool"]["requests"] == 1

    run(main())


def test_tls_client_hello_becomes_a_tunnel():
    """A ClientHello opens a tunnel to the destination: its bytes arrive there untouched."""
    hello = client_hello()

    async def main():
        async with echo_server() as echo, dispatching(to(echo)) as (d, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(hello)
            await w.drain()
            assert await r.readexactly(len(hello)) == hello
            w.close()
            await until(lambda: d.flows_open == 0)
            c = d.counters()
            assert c["flow_kinds"]["tls"] == 1 and c["pool"]["tunnels_cold"] == 1
            assert c["bytes_up"] == len(hello) and c["flows_failed"] == 0

    run(main())


def test_upstream_error_resets_the_app_and_is_counted():
    """No way to the destination: the application sees a reset; status counts it with the reason."""
    async def main():
        async with dispatching(to(refused_port())) as (d, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(client_hello())
            await w.drain()
            assert isinstance(await read_to_end(r), ConnectionResetError)
            w.close()
            await until(lambda: d.flows_open == 0)
            c = d.counters()
            assert c["flows_failed"] == 1 and "cannot connect" in c["last_error"]["message"]

    run(main())


def test_flow_without_nat_entry_is_reset_and_counted():
    """A flow the NAT does not know is reset at once and counted."""
    async def main():
        async with dispatching(lambda nat_port: None) as (d, port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert isinstance(await read_to_end(r), ConnectionResetError)
            w.close()
            await until(lambda: d.flows_open == 0)
            assert d.counters()["flows_failed"] == 1 and "no NAT entry" in d.counters()["last_error"]["message"]

    run(main())


def test_a_connection_made_straight_to_the_redirect_listener_is_reset():
    """A local process connecting to the redirect listener itself (no kernel redirect behind
    it) is reset at once and counted: carrying it would loop back to the listener."""
    async def main():
        async with dispatching(lambda nat_port: None, redirected=True) as (d, port):
            for _ in range(3):  # one at a time, and the listener keeps accepting
                r, w = await asyncio.open_connection("127.0.0.1", port)
                assert isinstance(await read_to_end(r), ConnectionResetError)
                w.close()
            await until(lambda: d.flows_open == 0)
            c = d.counters()
            assert c["flows_failed"] == 3 and "not redirected" in c["last_error"]["message"]
            assert c["flows_captured"] == {"redirect": 0, "tun": 0}

    run(main())


def test_a_burst_of_connections_is_accepted_in_batches():
    """More connections at once than one accept batch: every one is accepted and answered."""
    async def main():
        async with dispatching(lambda nat_port: None) as (d, port):
            socks = [socket.socket() for _ in range(150)]
            for s in socks:  # all SYNs out before the loop runs the accept loop once
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
            await until(lambda: d.counters()["flows_failed"] == 150)
            for s in socks:
                s.close()
            assert d.flows_open == 0

    run(main())


def test_a_bug_in_one_flow_costs_that_flow_only():
    """An error escaping one flow resets it and is counted; the next flow is served as usual."""
    async def main():
        async with Origin() as origin:
            calls = []

            def lookup(nat_port):
                calls.append(nat_port)
                if len(calls) == 1:
                    raise RuntimeError("lookup broke")
                return to(origin.port)(nat_port)

            async with dispatching(lookup) as (d, port):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                assert isinstance(await read_to_end(r), ConnectionResetError)
                w.close()
                assert (await http_get(port, "/echo")).startswith(b"HTTP/1.1 200 ")
                await until(lambda: d.flows_open == 0)
                c = d.counters()
                assert c["flows_total"] == 2 and c["flows_failed"] == 1
                assert any("RuntimeError: lookup broke" in m for m in d.errors)

    run(main())


def test_aclose_cuts_flows_that_outlive_the_drain():
    """aclose gives open flows its timeout, then ends them: the app's connection ends, none stay open."""
    async def main():
        async with echo_server() as echo:
            listener = socket.create_server(("127.0.0.1", 0))
            listener.setblocking(False)
            async with UpstreamPool("direct", warm_tunnels=0) as pool:
                d = Dispatcher(parse_upstream("direct"), to(echo), pool, idle_timeout=30.0)
                await d.serve(listener)
                r, w = await asyncio.open_connection(*listener.getsockname())
                w.write(client_hello())
                await w.drain()
                await r.readexactly(len(client_hello()))  # the tunnel is up, and would stay up
                assert d.flows_open == 1
                await d.aclose(0.1)
                assert d.flows_open == 0
                ended = await read_to_end(r)
                assert ended == b"" or isinstance(ended, ConnectionResetError)
                w.close()
            listener.close()

    run(main())
