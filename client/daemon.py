"""The Atlantic daemon: wires the TUN system stack, routing, the forwarder and the control socket.

Start-up order matters for failing safe: the TUN and the listener exist before routing
points at them, and the state file records what routing will change *before* it is
changed, so ``atlantic down`` can undo a crash at any point. Shutdown is an event
followed by a bounded drain, then routing is restored in a ``finally``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
import time

from atlantic import __version__
from atlantic.client.config import Config
from atlantic.client.control import serve_control
from atlantic.client.state import StatePaths, remove_state, write_state
from atlantic.forwarder.dispatch import Dispatcher
from atlantic.forwarder.upstream import parse_upstream
from atlantic.interceptor import routing
from atlantic.pool.pool import UpstreamPool
from atlantic.pool.proxyurl import ProxyConfig

log = logging.getLogger("atlantic")

DRAIN_TIMEOUT_S = 3.0
LISTEN_BACKLOG = 4096
IP_FREEBIND = 15  # <linux/in.h>; not exported by the socket module


def run_daemon(cfg: Config, upstream_url: str) -> None:
    """Run until stopped; raises only for start-up failures (already logged as one line)."""
    logging.basicConfig(
        level=getattr(logging, cfg.daemon.log_level.upper()),
        format="%(asctime)s atlantic[%(process)d] %(levelname)s %(message)s",
    )
    asyncio.run(Daemon(cfg, upstream_url).run())


def make_pool(cfg: Config, upstream_url: str) -> UpstreamPool:
    """The shared upstream pool, as the config describes it."""
    up = cfg.upstream
    proxy = ProxyConfig(upstream_url, up.username_template,
                        {"country": up.country} if up.country else {}, up.session_minutes)
    return UpstreamPool(
        proxy, mark=cfg.routing.fwmark, ca_file=str(up.ca_file) if up.ca_file else None,
        connect_timeout=up.connect_timeout_s, idle_timeout=cfg.pool.idle_timeout_s,
        max_per_key=cfg.pool.max_per_endpoint, max_total=cfg.pool.max_connections,
        warm_tunnels=cfg.pool.warm_tunnels, ping_interval=cfg.pool.ping_interval_s,
    )


class Daemon:
    """One running instance in the current network namespace."""

    def __init__(self, cfg: Config, upstream_url: str):
        self.cfg = cfg
        self.upstream_url = upstream_url
        self.upstream = parse_upstream(upstream_url)
        self.paths = StatePaths.for_namespace(cfg.daemon.state_dir)
        self.started = time.monotonic()
        self.stopping = asyncio.Event()
        iface = ipaddress.IPv4Interface(cfg.tun.address)
        self.inet_addr = str(iface.ip)
        # The NAT's "virtual client": the other host address of the TUN's own prefix.
        hosts = [h for h in iface.network.hosts() if h != iface.ip]
        self.virtual_client = str(hosts[0])
        self.prefixlen = iface.network.prefixlen
        self.stack = None
        self.pool: UpstreamPool | None = None
        self.dispatcher: Dispatcher | None = None
        self.ready = False  # routing applied: `up` returns only then

    async def run(self) -> None:
        """Bring capture up, serve until asked to stop, then put everything back."""
        from atlantic.interceptor.stack import SystemStack

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        cfg = self.cfg
        plan = routing.plan_routing(cfg.tun.name, cfg.routing.table, cfg.routing.fwmark, cfg.routing.rule_priority)
        record = routing.prepare(plan)
        state = {
            "pid": os.getpid(),
            "version": __version__,
            "upstream": self.upstream.redacted(),
            "tun": cfg.tun.name,
            "routing": record.to_json(),
            "started_at": time.time(),
        }
        listener = servers = None
        try:
            write_state(self.paths, state)
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # The TUN (and so this address) only exists once the stack starts, and the
            # stack needs the port: FREEBIND lets the bind come first.
            listener.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            listener.bind((self.inet_addr, 0))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
            listen_port = listener.getsockname()[1]
            self.stack = SystemStack(
                cfg.tun.name, self.inet_addr, self.virtual_client, listen_port, cfg.tun.mtu, cfg.tun.offload,
                prefixlen=self.prefixlen,
            )
            self.stack.start()
            self.pool = make_pool(cfg, self.upstream_url)
            await self.pool.start()
            self.dispatcher = Dispatcher(self.upstream, self.stack.lookup, self.pool,
                                         idle_timeout=cfg.daemon.idle_timeout_s)
            servers = [
                await self.dispatcher.serve(listener),
                await serve_control(self.paths.control_socket, {
                    "status": lambda _req: self.status(),
                    "stop": lambda _req: self._stop(),
                }, privileged={"stop"}),
            ]
            # pyroute2's synchronous API runs its own event loop: keep it off ours.
            await asyncio.to_thread(routing.apply, plan)
            self.ready = True
            log.info("up: every TCP flow of this namespace goes via %s to %s (listener %s:%d, MTU %d, offload %s)",
                     cfg.tun.name, self.upstream.redacted(), self.inet_addr, listen_port, cfg.tun.mtu, cfg.tun.offload)
            await self.stopping.wait()
            log.info("stopping: draining %d open flows", self.dispatcher.flows_open)
        except Exception as exc:  # start-up failure: one line, then put everything back
            log.error("cannot bring Atlantic up: %s", exc)
            raise SystemExit(1) from None
        finally:
            for server in servers or ():
                server.close()
            if self.dispatcher is not None:
                await self.dispatcher.aclose(DRAIN_TIMEOUT_S)
            if self.pool is not None:
                await self.pool.aclose()
            if listener is not None:
                listener.close()
            failures = await asyncio.to_thread(routing.restore, record)
            for line in failures:
                log.error("restore: %s", line)
            if self.stack is not None:
                self.stack.stop()
            await asyncio.to_thread(routing.delete_link, cfg.tun.name)
            remove_state(self.paths)
            log.info("down: routing restored")

    def _stop(self) -> dict:
        self.stopping.set()
        return {"state": "stopping", "pid": os.getpid()}

    def status(self) -> dict:
        """The status report (the control socket's ``status``)."""
        d = self.dispatcher
        report = {
            "state": "stopping" if self.stopping.is_set() else "up" if self.ready else "starting",
            "pid": os.getpid(),
            "version": __version__,
            "upstream": self.upstream.redacted(),
            "tun": self.cfg.tun.name,
            "mtu": self.cfg.tun.mtu,
            "offload": self.cfg.tun.offload,
            "uptime_s": round(time.monotonic() - self.started, 3),
        }
        if d is not None:
            report.update(d.counters())
        if self.stack is not None:
            report["stack"] = self.stack.counters()
        return report
