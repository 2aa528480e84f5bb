"""The health monitor against real pools and small proxies on loopback: a refused primary
fails over to the standby, all down fails closed with the reason, passive signals from
flows trigger probes, the origin's own errors never count, the exit address is read."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest

from atlantic.health.monitor import HealthMonitor, MonitorSettings
from atlantic.health.state import HealthConfig
from atlantic.pool.errors import UpstreamUnreachableError
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.upstreams import AllUpstreamsDownError, FlowFailure, Signal, UpstreamSet
from test_health_probe import ScriptedProxy

FAST = HealthConfig(active_interval_s=0.2, standby_interval_s=0.2, retry_after_failure_s=0.05,
                    recover_successes=2, failback_hold_s=0.3, passive_spacing_s=0.05)
SETTINGS = MonitorSettings(probe_url="http://probe.test/", expected_status=200, probe_timeout_s=1.0,
                           echo_url="http://echo.test/ip", echo_interval_s=60)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def until(predicate, limit=10.0):
    """Wait (bounded) until predicate() holds; the bound only keeps a broken test from hanging."""
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def monitored(ports, settings=SETTINGS):
    pools = [UpstreamPool(f"http://u:pw@127.0.0.1:{p}", warm_tunnels=0) for p in ports]
    ups = UpstreamSet(pools, names=[f"p{i + 1}" for i in range(len(pools))])
    exits = []
    mon = HealthMonitor([p.proxy for p in pools], ups, settings=settings, config=FAST, on_exit=exits.append)
    ups.on_signal = mon.signal
    task = asyncio.create_task(mon.run())
    try:
        yield mon, ups, exits
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await ups.aclose()


def test_refused_primary_fails_over_to_the_standby():
    """Primary refuses: it goes down and new flows go to the standby; status says so."""
    async def main():
        async with ScriptedProxy() as p2:
            async with monitored([free_port(), p2.port]) as (mon, ups, _):
                await until(lambda: ups.choice.index == 1)
                return mon.status(), ups.failovers
    status, failovers = asyncio.run(main())
    assert status["active"] == "p2" and failovers == 1
    assert status["upstreams"][0]["state"] == "down" and "127.0.0.1" in status["upstreams"][0]["last_result"]


def test_all_down_fails_closed_with_the_reason():
    """Every upstream refused: the set refuses flows at once with a one-line reason."""
    async def main():
        async with monitored([free_port(), free_port()]) as (mon, ups, _):
            await until(lambda: ups.choice.index is None)
            with pytest.raises(AllUpstreamsDownError) as info:
                await ups.open_tunnel("origin.test", 443)
            return mon.status(), str(info.value)
    status, message = asyncio.run(main())
    assert status["all_down"] is True and status["active"] is None
    assert "every upstream is down" in message and "p1" in message and "\n" not in message


def test_exit_address_is_read_through_the_active_upstream():
    """Once the active upstream is up, the echo URL's answer shows in status and reaches on_exit."""
    async def main():
        async with ScriptedProxy() as p1:
            async with monitored([p1.port]) as (mon, ups, exits):
                await until(lambda: exits)
                return mon.status(), exits
    status, exits = asyncio.run(main())
    assert exits[0] == "203.0.113.7"
    assert status["upstreams"][0]["exit_ip"] == "203.0.113.7" and status["upstreams"][0]["exit_country"] == "DE"


def test_origin_errors_never_count_and_provider_errors_trigger_a_probe():
    """A 503 without provider headers is ignored; one with x-brd-err-code asks for a probe."""
    async def main():
        async with ScriptedProxy() as p1:
            async with monitored([p1.port]) as (mon, ups, _):
                await until(lambda: mon.status()["upstreams"][0]["state"] == "up")
                before = len(p1.requests)
                for _ in range(20):
                    mon.signal(Signal(0, FlowFailure.RESPONSE, "503", 503, (("Server", "nginx"),)))
                await asyncio.sleep(0.1)
                quiet = len(p1.requests) - before
                mon.signal(Signal(0, FlowFailure.RESPONSE, "502", 502, (("x-brd-err-code", "server_10000"),)))
                await until(lambda: len(p1.requests) > before + quiet)
                return quiet
    quiet = asyncio.run(main())
    assert quiet <= 1  # at most the regular probe that was due anyway


def test_probe_url_answering_otherwise_keeps_the_proxy_up():
    """The proxy answers but the probe URL gives 404 (origin's answer): up, with the reason."""
    async def main():
        async with ScriptedProxy(status=404, body=b"no") as p1:
            async with monitored([p1.port], MonitorSettings(probe_url="http://probe.test/",
                                                            expected_status=200, echo_url=None)) as (mon, ups, _):
                await until(lambda: mon.status()["upstreams"][0]["last_result"] is not None)
                return mon.status()
    status = asyncio.run(main())
    up = status["upstreams"][0]
    assert up["state"] == "up" and "probe URL gave 404" in up["last_result"]


def test_a_refused_flow_is_reported_as_a_signal():
    """A flow that meets a refused proxy reports it to the monitor (which then probes)."""
    async def main():
        got = []
        port = free_port()
        ups = UpstreamSet([UpstreamPool(f"http://u:pw@127.0.0.1:{port}", warm_tunnels=0)], on_signal=got.append)
        with pytest.raises(UpstreamUnreachableError):
            await ups.open_tunnel("origin.test", 443)
        await ups.aclose()
        return got
    got = asyncio.run(main())
    assert got and got[0].failure is FlowFailure.REFUSED and got[0].index == 0


def test_a_silent_proxy_is_signalled_while_the_flow_still_waits():
    """A proxy that accepts and never answers: SLOW is signalled after slow_after, before the
    flow gives up (a blackholed proxy would otherwise be noticed only at the connect timeout)."""
    async def main():
        got = []
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel accepts; nobody ever answers
        try:
            pool = UpstreamPool(f"http://u:pw@127.0.0.1:{silent.getsockname()[1]}", warm_tunnels=0)
            ups = UpstreamSet([pool], on_signal=got.append, slow_after=0.1)
            flow = asyncio.create_task(ups.open_tunnel("origin.test", 443))
            await until(lambda: got)
            assert not flow.done()  # the signal came while the flow still waits
            flow.cancel()
            with contextlib.suppress(asyncio.CancelledError, UpstreamUnreachableError):
                await flow
            await ups.aclose()
        finally:
            silent.close()
        return got
    got = asyncio.run(main())
    assert [(s.index, s.failure) for s in got] == [(0, FlowFailure.SLOW)]
    assert "no answer within 0.1 s" in got[0].detail


def test_a_proxy_that_connects_but_never_answers_the_probe_stays_up():
    """Connected, then silence (the probe URL unreachable from the exit, Squid waiting on its
    DNS): the upstream stays up with the reason; only a failed connect takes it down."""
    async def main():
        async with ScriptedProxy(silent=True) as p1:
            settings = MonitorSettings(probe_url="http://probe.test/", expected_status=200, probe_timeout_s=0.2,
                                       echo_url=None)
            async with monitored([p1.port], settings) as (mon, ups, _):
                await until(lambda: (mon.status()["upstreams"][0]["last_result"] or "").startswith("the proxy"))
                return mon.status(), ups.choice.index
    status, chosen = asyncio.run(main())
    up = status["upstreams"][0]
    assert up["state"] == "up" and chosen == 0
    assert up["last_result"] == "the proxy accepted the probe; the probe URL gave no answer within 0.2 s"
